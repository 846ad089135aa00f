"""What the public API asks of drivers, and the plain records they answer with.

As in libvirt, the public objects (:class:`asvirt.Connection`, :class:`asvirt.Domain`, ...)
hold no logic of their own: every call is delegated to the node the connection URI names —
its domain driver (:class:`asvirt.hypervisor.domain_driver.DomainDriver`, shared by every
hypervisor) and, where the driver family provides them, its network and storage drivers.
Drivers identify objects by UUID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from ..states import DomainState

if TYPE_CHECKING:
    from ..config import Config
    from ..events import EventKind, Subscription
    from ..events.bus import DomainFilter
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


class ClientDriver(Protocol):
    """What a connection holds: a way to make the declared calls of :mod:`asvirt.protocol`
    on a node, and to follow its events. In this process (:class:`~.local.LocalDriver`) or
    through a daemon (the remote driver)."""

    @property
    def closed(self) -> bool: ...

    def hostname(self) -> str: ...

    async def call(self, method: str, /, **params: Any) -> Any: ...

    def subscribe(
        self,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
        since: int | None,
        buffer: int | None,
    ) -> Subscription: ...


#: A driver family's opener: given the URI, a configuration overriding the node's own, and
#: the connection (the client, for autodestroy), the client driver of the node the URI
#: names, for as long as the ``async with`` lasts.
DriverOpener = Callable[
    ["ConnectURI", "Config | None", object], AbstractAsyncContextManager[ClientDriver]
]

__all__ = [
    "ClientDriver",
    "DomainInfo",
    "DomainRef",
    "DriverOpener",
    "NetworkDriver",
    "NetworkRef",
    "StorageDriver",
    "StoragePoolInfo",
    "StoragePoolRef",
    "StorageVolInfo",
    "StorageVolRef",
]
