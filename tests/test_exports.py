"""The public surface of ``asvirt`` is what ``asvirt.__all__`` says, and nothing slips in.

Changing it is a decision: this list is updated on purpose, in the same commit as the API.
"""

from __future__ import annotations

import types

import asvirt

PUBLIC = [
    "AgentLifecycleReason",
    "AgentLifecycleState",
    "AgentUnresponsiveError",
    "ArgumentUnsupportedError",
    "InterfaceAddressSource",
    "IOThreadInfo",
    "ShutdownMode",
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


def test_all_is_pinned():
    assert sorted(asvirt.__all__) == sorted(PUBLIC)
    assert len(set(asvirt.__all__)) == len(asvirt.__all__)


def test_every_exported_name_exists_and_nothing_else_is_public():
    for name in asvirt.__all__:
        assert hasattr(asvirt, name), name
    extra = {
        name
        for name, value in vars(asvirt).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    } - set(asvirt.__all__)
    assert extra == set(), f"public names outside __all__: {sorted(extra)}"


def test_every_public_error_is_an_asvirt_error():
    for name in asvirt.__all__:
        value = getattr(asvirt, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, asvirt.AsvirtError), name


def test_the_package_ships_its_types():
    from importlib.resources import files

    assert files("asvirt").joinpath("py.typed").is_file()
