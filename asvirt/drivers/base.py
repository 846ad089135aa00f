"""What the public API asks of drivers, and the plain records they answer with.

As in libvirt, the public objects (:class:`asvirt.Connection`, :class:`asvirt.Domain`, ...)
hold no logic of their own: every call is delegated to the node the connection URI names —
its domain driver (:class:`asvirt.hypervisor.domain_driver.DomainDriver`, shared by every
hypervisor) and, where the driver family provides them, its network and storage drivers.
Drivers identify objects by UUID.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from ..config import Config
from ..states import DomainState
from ..uri import ConnectURI

if TYPE_CHECKING:
    from ..hypervisor.node import NodeLease


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


@dataclasses.dataclass(frozen=True, slots=True)
class StorageVolSource:
    """Where a domain disk ``<source pool= volume=>`` is, resolved at start."""

    path: str
    #: The disk type it becomes: ``file`` or ``block``.
    type: str
    #: The volume's format (``raw``, ``qcow2``), for a disk that names none.
    format: str


#: Told how far a long storage operation has come: a fraction from 0.0 to 1.0. Called in the
#: task doing the work, so it must not block.
ProgressCallback = Callable[[float], object]


class StorageVolStream(Protocol):
    """A volume's bytes being read (a download): what a driver hands the public API."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes, at most ``max_bytes``; ``b""`` at the end."""
        ...

    async def aclose(self) -> None:
        """Stop reading (the volume is no longer in use)."""
        ...


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

    async def storage_pool_xml_desc(self, uuid: str, *, inactive: bool = False) -> str: ...

    async def storage_pool_list_volumes(self, uuid: str) -> list[StorageVolRef]: ...

    async def storage_vol_lookup_by_name(self, pool_uuid: str, name: str) -> StorageVolRef: ...

    async def storage_vol_create_xml(
        self, pool_uuid: str, xml: str, *, prealloc_metadata: bool = False
    ) -> StorageVolRef: ...

    async def storage_vol_delete(self, pool_uuid: str, name: str) -> None: ...

    async def storage_vol_info(self, pool_uuid: str, name: str) -> StorageVolInfo: ...

    async def storage_vol_xml_desc(self, pool_uuid: str, name: str) -> str: ...

    # What the handles gained with the QEMU node's storage driver (both drivers have them).

    async def storage_pool_build(self, uuid: str) -> None: ...

    async def storage_pool_refresh(self, uuid: str) -> None: ...

    async def storage_pool_delete(self, uuid: str) -> None: ...

    async def storage_pool_is_persistent(self, uuid: str) -> bool: ...

    async def storage_pool_get_autostart(self, uuid: str) -> bool: ...

    async def storage_pool_set_autostart(self, uuid: str, autostart: bool) -> None: ...

    async def storage_vol_lookup_by_path(self, path: str) -> StorageVolRef: ...

    async def storage_vol_create_xml_from(
        self,
        pool_uuid: str,
        xml: str,
        source_pool_uuid: str,
        source_name: str,
        *,
        prealloc_metadata: bool,
        progress: ProgressCallback | None,
    ) -> StorageVolRef: ...

    async def storage_vol_resize(
        self, pool_uuid: str, name: str, capacity: int, *, allocate: bool, delta: bool, shrink: bool
    ) -> None: ...

    async def storage_vol_wipe(self, pool_uuid: str, name: str) -> None: ...

    async def storage_vol_upload(
        self,
        pool_uuid: str,
        name: str,
        source: AsyncIterable[bytes],
        *,
        offset: int,
        length: int,
        progress: ProgressCallback | None,
    ) -> int: ...

    async def storage_vol_download(
        self, pool_uuid: str, name: str, *, offset: int, length: int
    ) -> StorageVolStream: ...

    async def storage_vol_source(self, pool_name: str, vol_name: str) -> StorageVolSource:
        """Resolve a domain disk's ``<source pool= volume=>`` (at start)."""
        ...


#: A driver family's opener: given the URI (and a configuration overriding the node's own),
#: a lease on the node the URI names, opening the node if no connection holds it yet.
DriverOpener = Callable[[ConnectURI, Config | None], Awaitable["NodeLease"]]

__all__ = [
    "DomainInfo",
    "DomainRef",
    "DriverOpener",
    "NetworkDriver",
    "NetworkRef",
    "ProgressCallback",
    "StorageDriver",
    "StoragePoolInfo",
    "StoragePoolRef",
    "StorageVolInfo",
    "StorageVolRef",
    "StorageVolSource",
    "StorageVolStream",
]
