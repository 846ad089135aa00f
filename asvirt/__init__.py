"""asvirt: an event-driven supervisor for QEMU/KVM virtual machines, on trio (a client of its
daemon runs under trio or asyncio).

::

    import asvirt, trio

    async def main():
        async with asvirt.open("qemu:///embed?root=/var/tmp/vms") as conn:
            dom = await conn.define_xml(open("vm1.xml").read())
            async with conn.subscribe(domain=dom) as events:
                await dom.start()
                async for ev in events:
                    print(ev.describe())

    trio.run(main)
"""

import sys as _sys

_TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)

# The public names load on first use: a command-line client that talks to a daemon imports
# what it needs (errors, handles), not the event loop, the drivers or QEMU support.
_LAZY: dict[str, str] = {
    "AgentLifecycleReason": ".events.types",
    "AgentLifecycleState": ".events.types",
    "InterfaceAddressSource": ".drivers.base",
    "IOThreadInfo": ".drivers.base",
    "ShutdownMode": ".drivers.base",
    "DomainFSInfo": ".drivers.base",
    "GuestInfoTypes": ".drivers.base",
    "HostnameSource": ".drivers.base",
    "KeycodeSet": ".keycodes",
    "NodeSuspendTarget": ".drivers.base",
    "ArgumentUnsupportedError": ".errors",
    "AgentUnresponsiveError": ".errors",
    "AsvirtError": ".errors",
    "BlockInfo": ".drivers.base",
    "BlockJobInfo": ".drivers.base",
    "BlockJobType": ".drivers.base",
    "BlockedReason": ".states",
    "VcpuInfo": ".drivers.base",
    "VcpuState": ".drivers.base",
    "Config": ".config",
    "ConfigUnsupportedError": ".errors",
    "Connection": ".connection",
    "CrashedDetail": ".events.types",
    "CrashedReason": ".states",
    "DefinedDetail": ".events.types",
    "Domain": ".domain",
    "DomainEvent": ".events.types",
    "DeviceMissingError": ".errors",
    "DomainExistsError": ".errors",
    "DomainInfo": ".drivers.base",
    "DomainSnapshot": ".snapshot",
    "DomainSnapshotInfo": ".drivers.base",
    "DomainState": ".states",
    "ErrorCode": ".errors",
    "EventDetail": ".events.types",
    "EventKind": ".events.types",
    "HypervisorVersion": ".drivers.base",
    "InterfaceStats": ".drivers.base",
    "InternalError": ".errors",
    "InvalidArgError": ".errors",
    "LifecycleEvent": ".events.types",
    "Network": ".network",
    "NetworkLifecycleEvent": ".events.types",
    "NetworkExistsError": ".errors",
    "NoConnectError": ".errors",
    "NoHostnameError": ".errors",
    "NoDomainMetadataError": ".errors",
    "MetadataType": ".conf.metadata_type",
    "NoDomainError": ".errors",
    "NoDomainSnapshotError": ".errors",
    "NoNetworkError": ".errors",
    "NoStoragePoolError": ".errors",
    "NoStorageVolError": ".errors",
    "NoSecretError": ".errors",
    "InvalidSecretError": ".errors",
    "Secret": ".secret",
    "SecretLifecycleEvent": ".events.types",
    "SecretUsageType": ".drivers.base",
    "NodeInfo": ".drivers.base",
    "NostateReason": ".states",
    "OperationDeniedError": ".errors",
    "OperationFailedError": ".errors",
    "OperationInvalidError": ".errors",
    "OperationTimeoutError": ".errors",
    "OperationUnsupportedError": ".errors",
    "PMSuspendedDetail": ".events.types",
    "PMSuspendedReason": ".states",
    "PausedReason": ".states",
    "QMPError": ".errors",
    "ResourceBusyError": ".errors",
    "ResumedDetail": ".events.types",
    "RunningReason": ".states",
    "SecurityLabel": ".drivers.base",
    "SecurityModel": ".drivers.base",
    "ShutdownDetail": ".events.types",
    "ShutdownReason": ".states",
    "ShutoffReason": ".states",
    "StartedDetail": ".events.types",
    "StateReason": ".states",
    "StatsGroup": ".drivers.base",
    "StoppedDetail": ".events.types",
    "StoragePool": ".storage",
    "StoragePoolInfo": ".drivers.base",
    "StorageVol": ".storage",
    "StorageVolExistsError": ".errors",
    "StorageVolInfo": ".drivers.base",
    "Subscription": ".events.bus",
    "SuspendedDetail": ".events.types",
    "SystemCallError": ".errors",
    "UndefinedDetail": ".events.types",
    "XMLError": ".errors",
    "default_uri": ".uri",
    "open": ".connection",
}

if _TYPE_CHECKING:
    from typing import Any as _Any

    from .conf.metadata_type import MetadataType
    from .config import Config
    from .connection import Connection, open
    from .domain import Domain
    from .drivers.base import (
        BlockInfo,
        BlockJobInfo,
        BlockJobType,
        DomainFSInfo,
        DomainInfo,
        DomainSnapshotInfo,
        GuestInfoTypes,
        HostnameSource,
        HypervisorVersion,
        InterfaceAddressSource,
        InterfaceStats,
        IOThreadInfo,
        NodeInfo,
        NodeSuspendTarget,
        SecretUsageType,
        SecurityLabel,
        SecurityModel,
        ShutdownMode,
        StatsGroup,
        StoragePoolInfo,
        StorageVolInfo,
        VcpuInfo,
        VcpuState,
    )
    from .errors import (
        AgentUnresponsiveError,
        ArgumentUnsupportedError,
        AsvirtError,
        ConfigUnsupportedError,
        DeviceMissingError,
        DomainExistsError,
        ErrorCode,
        InternalError,
        InvalidArgError,
        InvalidSecretError,
        NetworkExistsError,
        NoConnectError,
        NoDomainError,
        NoDomainMetadataError,
        NoDomainSnapshotError,
        NoHostnameError,
        NoNetworkError,
        NoSecretError,
        NoStoragePoolError,
        NoStorageVolError,
        OperationDeniedError,
        OperationFailedError,
        OperationInvalidError,
        OperationTimeoutError,
        OperationUnsupportedError,
        QMPError,
        ResourceBusyError,
        StorageVolExistsError,
        SystemCallError,
        XMLError,
    )
    from .events.bus import Subscription
    from .events.types import (
        AgentLifecycleReason,
        AgentLifecycleState,
        CrashedDetail,
        DefinedDetail,
        DomainEvent,
        EventDetail,
        EventKind,
        LifecycleEvent,
        NetworkLifecycleEvent,
        PMSuspendedDetail,
        ResumedDetail,
        SecretLifecycleEvent,
        ShutdownDetail,
        StartedDetail,
        StoppedDetail,
        SuspendedDetail,
        UndefinedDetail,
    )
    from .keycodes import KeycodeSet
    from .network import Network
    from .secret import Secret
    from .snapshot import DomainSnapshot
    from .states import (
        BlockedReason,
        CrashedReason,
        DomainState,
        NostateReason,
        PausedReason,
        PMSuspendedReason,
        RunningReason,
        ShutdownReason,
        ShutoffReason,
        StateReason,
    )
    from .storage import StoragePool, StorageVol
    from .uri import default_uri


def __getattr__(name: str) -> "_Any":
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asvirt' has no attribute {name!r}")
    # __import__, not importlib's import_module: importlib imports warnings, a cost to a
    # one-shot command (issue 9) for nothing.
    __import__(__name__ + module)
    value = getattr(_sys.modules[__name__ + module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = [
    "AgentLifecycleReason",
    "AgentLifecycleState",
    "AgentUnresponsiveError",
    "ArgumentUnsupportedError",
    "AsvirtError",
    "BlockInfo",
    "BlockJobInfo",
    "BlockJobType",
    "BlockedReason",
    "Config",
    "ConfigUnsupportedError",
    "Connection",
    "CrashedDetail",
    "CrashedReason",
    "DefinedDetail",
    "DeviceMissingError",
    "Domain",
    "DomainEvent",
    "DomainExistsError",
    "DomainFSInfo",
    "DomainInfo",
    "DomainSnapshot",
    "DomainSnapshotInfo",
    "DomainState",
    "ErrorCode",
    "EventDetail",
    "EventKind",
    "GuestInfoTypes",
    "HostnameSource",
    "HypervisorVersion",
    "IOThreadInfo",
    "InterfaceAddressSource",
    "InterfaceStats",
    "InternalError",
    "InvalidArgError",
    "InvalidSecretError",
    "KeycodeSet",
    "LifecycleEvent",
    "MetadataType",
    "Network",
    "NetworkExistsError",
    "NetworkLifecycleEvent",
    "NoConnectError",
    "NoDomainError",
    "NoDomainMetadataError",
    "NoDomainSnapshotError",
    "NoHostnameError",
    "NoNetworkError",
    "NoSecretError",
    "NoStoragePoolError",
    "NoStorageVolError",
    "NodeInfo",
    "NodeSuspendTarget",
    "NostateReason",
    "OperationDeniedError",
    "OperationFailedError",
    "OperationInvalidError",
    "OperationTimeoutError",
    "OperationUnsupportedError",
    "PMSuspendedDetail",
    "PMSuspendedReason",
    "PausedReason",
    "QMPError",
    "ResourceBusyError",
    "ResumedDetail",
    "RunningReason",
    "Secret",
    "SecretLifecycleEvent",
    "SecretUsageType",
    "SecurityLabel",
    "SecurityModel",
    "ShutdownDetail",
    "ShutdownMode",
    "ShutdownReason",
    "ShutoffReason",
    "StartedDetail",
    "StateReason",
    "StatsGroup",
    "StoppedDetail",
    "StoragePool",
    "StoragePoolInfo",
    "StorageVol",
    "StorageVolExistsError",
    "StorageVolInfo",
    "Subscription",
    "SuspendedDetail",
    "SystemCallError",
    "UndefinedDetail",
    "VcpuInfo",
    "VcpuState",
    "XMLError",
    "default_uri",
    "open",
]
