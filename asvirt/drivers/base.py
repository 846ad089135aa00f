"""The driver protocols: what the public API asks of a driver.

As in libvirt, the public objects (:class:`asvirt.Connection`, :class:`asvirt.Domain`, ...)
hold no logic of their own: every call is delegated to the drivers the connection URI chose.
A connection has one hypervisor driver and, where the URI's driver family provides them, a
network and a storage driver.

Drivers identify domains by UUID. They publish events on the connection's
:class:`~asvirt.events.EventBus`, which they receive when they are opened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import trio

from ..config import Config
from ..events import EventBus
from ..states import DomainState, StateReason
from ..uri import ConnectURI


@dataclasses.dataclass(frozen=True, slots=True)
class DomainRef:
    """How a driver names a domain to the public API."""

    name: str
    uuid: str


@dataclasses.dataclass(frozen=True, slots=True)
class DomainInfo:
    """libvirt's ``virDomainInfo``: state, memory in KiB, vCPUs and CPU time used."""

    state: DomainState
    max_memory_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkRef:
    name: str
    uuid: str


@dataclasses.dataclass(frozen=True, slots=True)
class StoragePoolRef:
    name: str
    uuid: str


@dataclasses.dataclass(frozen=True, slots=True)
class StorageVolRef:
    pool: str
    name: str
    key: str
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class StoragePoolInfo:
    """libvirt's ``virStoragePoolInfo`` (state: 0 inactive, 2 running; sizes in bytes)."""

    state: int
    capacity: int
    allocation: int
    available: int


@dataclasses.dataclass(frozen=True, slots=True)
class StorageVolInfo:
    """libvirt's ``virStorageVolInfo`` (type: 0 file; sizes in bytes)."""

    type: int
    capacity: int
    allocation: int


@dataclasses.dataclass(frozen=True)
class DriverContext:
    """What a driver receives when a connection opens it."""

    uri: ConnectURI
    bus: EventBus
    #: The connection's nursery: drivers run their long-lived tasks here.
    nursery: trio.Nursery
    #: Overrides the configuration the driver would read itself (None: read it).
    config: Config | None = None


class HypervisorDriver(Protocol):
    """The domain half of a connection."""

    async def close(self) -> None: ...

    def hostname(self) -> str: ...

    async def capabilities_xml(self) -> str: ...

    async def domxml_to_native(self, native_format: str, xml: str) -> str: ...

    async def domain_xml_normalize(self, xml: str) -> str: ...

    async def define_xml(self, xml: str) -> DomainRef: ...

    async def create_xml(self, xml: str, *, paused: bool, autodestroy: bool) -> DomainRef: ...

    async def lookup_by_name(self, name: str) -> DomainRef: ...

    async def lookup_by_uuid(self, uuid: str) -> DomainRef: ...

    async def list_all_domains(
        self, *, active: bool | None, persistent: bool | None
    ) -> list[DomainRef]: ...

    async def domain_start(self, uuid: str, *, paused: bool, autodestroy: bool) -> None: ...

    async def domain_suspend(self, uuid: str) -> None: ...

    async def domain_resume(self, uuid: str) -> None: ...

    async def domain_shutdown(self, uuid: str) -> None: ...

    async def domain_reboot(self, uuid: str) -> None: ...

    async def domain_reset(self, uuid: str) -> None: ...

    async def domain_destroy(self, uuid: str) -> None: ...

    async def domain_undefine(self, uuid: str) -> None: ...

    async def domain_state(self, uuid: str) -> tuple[DomainState, StateReason]: ...

    async def domain_info(self, uuid: str) -> DomainInfo: ...

    async def domain_xml_desc(self, uuid: str, *, inactive: bool) -> str: ...

    async def domain_qmp(
        self, uuid: str, command: str, arguments: dict[str, Any] | None
    ) -> Any: ...

    async def domain_is_active(self, uuid: str) -> bool: ...

    async def domain_is_persistent(self, uuid: str) -> bool: ...

    async def domain_id(self, uuid: str) -> int | None: ...


class NetworkDriver(Protocol):
    """Virtual networks (libvirt's network driver)."""

    async def list_all_networks(self, *, active: bool | None) -> list[NetworkRef]: ...

    async def lookup_network_by_name(self, name: str) -> NetworkRef: ...

    async def lookup_network_by_uuid(self, uuid: str) -> NetworkRef: ...

    async def network_define_xml(self, xml: str) -> NetworkRef: ...

    async def network_create(self, uuid: str) -> None: ...

    async def network_destroy(self, uuid: str) -> None: ...

    async def network_undefine(self, uuid: str) -> None: ...

    async def network_is_active(self, uuid: str) -> bool: ...

    async def network_is_persistent(self, uuid: str) -> bool: ...

    async def network_xml_desc(self, uuid: str) -> str: ...

    async def network_autostart(self, uuid: str) -> bool: ...


class StorageDriver(Protocol):
    """Storage pools and volumes (libvirt's storage driver)."""

    async def list_all_storage_pools(self, *, active: bool | None) -> list[StoragePoolRef]: ...

    async def lookup_storage_pool_by_name(self, name: str) -> StoragePoolRef: ...

    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePoolRef: ...

    async def storage_pool_define_xml(self, xml: str) -> StoragePoolRef: ...

    async def storage_pool_create(self, uuid: str) -> None: ...

    async def storage_pool_destroy(self, uuid: str) -> None: ...

    async def storage_pool_undefine(self, uuid: str) -> None: ...

    async def storage_pool_is_active(self, uuid: str) -> bool: ...

    async def storage_pool_info(self, uuid: str) -> StoragePoolInfo: ...

    async def storage_pool_xml_desc(self, uuid: str) -> str: ...

    async def storage_pool_list_volumes(self, uuid: str) -> list[StorageVolRef]: ...

    async def storage_vol_lookup_by_name(self, pool_uuid: str, name: str) -> StorageVolRef: ...

    async def storage_vol_create_xml(self, pool_uuid: str, xml: str) -> StorageVolRef: ...

    async def storage_vol_delete(self, pool_uuid: str, name: str) -> None: ...

    async def storage_vol_info(self, pool_uuid: str, name: str) -> StorageVolInfo: ...

    async def storage_vol_xml_desc(self, pool_uuid: str, name: str) -> str: ...


@dataclasses.dataclass(frozen=True)
class OpenedDrivers:
    """The drivers a connection got from its driver family."""

    hypervisor: HypervisorDriver
    network: NetworkDriver | None = None
    storage: StorageDriver | None = None


#: A driver family's opener: given the context, yields its drivers for the connection's life.
DriverOpener = Callable[[DriverContext], AbstractAsyncContextManager[OpenedDrivers]]

__all__ = [
    "DomainInfo",
    "DomainRef",
    "DriverContext",
    "DriverOpener",
    "HypervisorDriver",
    "NetworkDriver",
    "NetworkRef",
    "OpenedDrivers",
    "StorageDriver",
    "StoragePoolInfo",
    "StoragePoolRef",
    "StorageVolInfo",
    "StorageVolRef",
]
