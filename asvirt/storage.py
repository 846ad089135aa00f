"""Storage pools and volumes: handles forwarded to the connection's storage driver."""

from __future__ import annotations

from typing import Any

from .drivers.base import StoragePoolInfo, StoragePoolRef, StorageVolInfo, StorageVolRef
from .handle import Handle


class StoragePool(Handle):
    """A storage pool known to a connection (libvirt's ``virStoragePoolPtr``)."""

    __slots__ = ()
    _ref: StoragePoolRef

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._conn._call(method, uuid=self.uuid, **params)

    async def create(self) -> None:
        """Start (activate) the pool."""
        await self._call("storage_pool_create")

    async def destroy(self) -> None:
        """Stop (deactivate) the pool; its volumes are kept."""
        await self._call("storage_pool_destroy")

    async def undefine(self) -> None:
        await self._call("storage_pool_undefine")

    async def is_active(self) -> bool:
        return await self._call("storage_pool_is_active")

    async def info(self) -> StoragePoolInfo:
        return await self._call("storage_pool_info")

    async def xml_desc(self) -> str:
        return await self._call("storage_pool_xml_desc")

    async def list_all_volumes(self) -> list[StorageVol]:
        refs = await self._call("storage_pool_list_volumes")
        return [StorageVol(self, ref) for ref in refs]

    async def lookup_volume_by_name(self, name: str) -> StorageVol:
        ref = await self._conn._call("storage_vol_lookup_by_name", pool_uuid=self.uuid, name=name)
        return StorageVol(self, ref)

    async def create_volume_xml(self, xml: str) -> StorageVol:
        """Create a volume in this pool from libvirt volume XML."""
        ref = await self._conn._call("storage_vol_create_xml", pool_uuid=self.uuid, xml=xml)
        return StorageVol(self, ref)


class StorageVol:
    """A volume in a storage pool (libvirt's ``virStorageVolPtr``)."""

    __slots__ = ("_pool", "_ref")

    def __init__(self, pool: StoragePool, ref: StorageVolRef) -> None:
        self._pool = pool
        self._ref = ref

    @property
    def pool(self) -> StoragePool:
        return self._pool

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def key(self) -> str:
        return self._ref.key

    @property
    def path(self) -> str:
        return self._ref.path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorageVol):
            return NotImplemented
        return self._pool == other._pool and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<asvirt.StorageVol {self.name!r} in {self._pool.name!r}>"

    async def _call(self, method: str) -> Any:
        conn = self._pool.connection
        return await conn._call(method, pool_uuid=self._pool.uuid, name=self.name)

    async def delete(self) -> None:
        await self._call("storage_vol_delete")

    async def info(self) -> StorageVolInfo:
        return await self._call("storage_vol_info")

    async def xml_desc(self) -> str:
        return await self._call("storage_vol_xml_desc")
