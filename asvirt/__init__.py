"""asvirt: an event-driven supervisor for QEMU/KVM virtual machines, on trio.

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

from .config import Config
from .connection import Connection, default_uri, open
from .domain import Domain
from .drivers.base import DomainInfo, StoragePoolInfo, StorageVolInfo
from .errors import (
    AsvirtError,
    ConfigUnsupportedError,
    DomainExistsError,
    ErrorCode,
    InternalError,
    InvalidArgError,
    NetworkExistsError,
    NoConnectError,
    NoDomainError,
    NoNetworkError,
    NoStoragePoolError,
    NoStorageVolError,
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
from .events import (
    CrashedDetail,
    DefinedDetail,
    DomainEvent,
    EventDetail,
    EventKind,
    LifecycleEvent,
    NetworkLifecycleEvent,
    PMSuspendedDetail,
    ResumedDetail,
    ShutdownDetail,
    StartedDetail,
    StoppedDetail,
    Subscription,
    SuspendedDetail,
    UndefinedDetail,
)
from .network import Network
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

__version__ = "0.1.0"

__all__ = [
    "AsvirtError",
    "BlockedReason",
    "Config",
    "ConfigUnsupportedError",
    "Connection",
    "CrashedDetail",
    "CrashedReason",
    "DefinedDetail",
    "Domain",
    "DomainEvent",
    "DomainExistsError",
    "DomainInfo",
    "DomainState",
    "ErrorCode",
    "EventDetail",
    "EventKind",
    "InternalError",
    "InvalidArgError",
    "LifecycleEvent",
    "Network",
    "NetworkExistsError",
    "NetworkLifecycleEvent",
    "NoConnectError",
    "NoDomainError",
    "NoNetworkError",
    "NoStoragePoolError",
    "NoStorageVolError",
    "NostateReason",
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
    "ShutdownDetail",
    "ShutdownReason",
    "ShutoffReason",
    "StartedDetail",
    "StateReason",
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
    "XMLError",
    "default_uri",
    "open",
]
