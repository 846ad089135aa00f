"""The storage calls every driver shares: libvirt's rules, once, over a :class:`PoolTable`.

:class:`StorageDriverBase` implements :class:`~asvirt.drivers.base.StorageDriver`: every
lookup, list and check (which state a call needs, which names are taken, which volume is in
use, where a backing file may be), every error and its wording. A driver supplies only what
touches its storage, through the ``_`` methods at the end: the test driver keeps volumes in
memory (:mod:`asvirt.drivers.test.storage`), a QEMU node's ``dir`` pools keep them in files
(:mod:`asvirt.drivers.storage.driver`). Both therefore refuse the same things the same way.

Long operations (creating, copying, streaming a volume) do not hold a lock while they run:
as in libvirt, the volume's name is marked *building* (taken, not yet listed) or the volume
*in use* (it cannot be deleted), and the pool counts its *asynchronous jobs* (it cannot be
stopped, refreshed or removed meanwhile). Checks and marks happen with no checkpoint in
between, so trio's scheduling makes each one atomic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterator

import trio

from ...conf.names import canonical_uuid
from ...errors import (
    InvalidArgError,
    NoStoragePoolError,
    NoStorageVolError,
    OperationFailedError,
    OperationInvalidError,
    StorageVolExistsError,
)
from ...log import get_logger
from ..base import (
    MAX_TRANSFER,
    ProgressCallback,
    StoragePoolInfo,
    StoragePoolRef,
    StorageVolInfo,
    StorageVolRef,
    StorageVolSource,
)
from .pool import (
    MAX_BACKING_DEPTH,
    POOL_INACTIVE,
    POOL_RUNNING,
    VOL_TYPES,
    PoolDef,
    PoolObj,
    PoolTable,
    VolDef,
    parse_pool_xml,
    parse_vol_xml,
)

log = get_logger("asvirt.storage")


class StorageDriverBase:
    """libvirt's storage driver rules over a table of pools; subclasses do the storage."""

    def __init__(self, table: PoolTable) -> None:
        self.table = table
        #: Held across the steps of pool-level changes (define, start, stop, build...).
        self._lock = trio.Lock()
        #: Uploads and downloads in progress, by id: each holds its volume in use.
        self._transfers: dict[int, _Transfer] = {}
        self._transfer_ids = itertools.count(1)

    # -- finding things ------------------------------------------------------------------------

    def _obj(self, uuid: str) -> PoolObj:
        obj = self.table.pools.get(uuid)
        if obj is None:
            raise NoStoragePoolError(f"no storage pool with matching uuid '{uuid}'")
        return obj

    def _active(self, uuid: str) -> PoolObj:
        obj = self._obj(uuid)
        if not obj.active:
            raise OperationInvalidError(f"storage pool '{obj.name}' is not active")
        return obj

    def _vol(self, pool_uuid: str, name: str) -> tuple[PoolObj, VolDef]:
        obj = self._active(pool_uuid)
        vol = obj.volumes.get(name) if isinstance(name, str) else None
        if vol is None:
            raise NoStorageVolError(
                f"no storage volume with matching name '{name}' in pool '{obj.name}'"
            )
        return obj, vol

    @staticmethod
    def _no_jobs(obj: PoolObj) -> None:
        if obj.asyncjobs:
            raise OperationInvalidError(f"storage pool '{obj.name}' has asynchronous jobs running")

    def _check_chain(self, vol: VolDef, *, what: str) -> None:
        """Every backing file under ``vol`` must be a volume of an active pool of this node.

        A qcow2 header names its backing file, and whoever wrote the header chose it: a
        volume uploaded or placed by someone else could name ``/etc/shadow``. Reading such a
        chain (booting it, copying it) would hand that file to a guest, so it is refused.
        """
        cur, depth = vol, 0
        while cur.backing_path is not None:
            depth += 1
            found = self.table.volume_by_path(cur.backing_path)
            if found is None:
                raise OperationFailedError(
                    f"{what}: backing file '{cur.backing_path}' of volume '{cur.name}' is not a "
                    "volume of an active storage pool of this node; refusing to use it"
                )
            if depth > MAX_BACKING_DEPTH:
                raise OperationFailedError(
                    f"{what}: the backing chain of volume '{vol.name}' is deeper than "
                    f"{MAX_BACKING_DEPTH} (a loop?)"
                )
            cur = found[1]

    @contextlib.contextmanager
    def _building(self, obj: PoolObj, name: str) -> Iterator[None]:
        """Take ``name`` in ``obj`` for a volume being created (StorageVolExistsError if taken)."""
        if obj.name_taken(name):
            raise StorageVolExistsError(
                f"storage volume '{name}' already exists in pool '{obj.name}'"
            )
        obj.building.add(name)
        obj.asyncjobs += 1
        try:
            yield
        finally:
            obj.building.discard(name)
            obj.asyncjobs -= 1

    @contextlib.contextmanager
    def _using(self, obj: PoolObj, vol: VolDef) -> Iterator[None]:
        """Mark ``vol`` in use (it cannot be deleted) for the block's duration."""
        obj.in_use[vol.name] += 1
        obj.asyncjobs += 1
        try:
            yield
        finally:
            obj.in_use[vol.name] -= 1
            if obj.in_use[vol.name] <= 0:
                del obj.in_use[vol.name]
            obj.asyncjobs -= 1

    # -- pools ---------------------------------------------------------------------------------

    async def list_all_storage_pools(self, *, active: bool | None) -> list[StoragePoolRef]:
        return [obj.ref for obj in self.table if active is None or obj.active == active]

    async def lookup_storage_pool_by_name(self, name: str) -> StoragePoolRef:
        obj = self.table.by_name(name) if isinstance(name, str) else None
        if obj is None:
            raise NoStoragePoolError(f"no storage pool with matching name '{name}'")
        return obj.ref

    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePoolRef:
        return self._obj(canonical_uuid(uuid)).ref

    async def storage_pool_define_xml(self, xml: str) -> StoragePoolRef:
        """Define (or redefine) a persistent pool; a new one is inactive. A running pool's
        new definition applies once it is stopped."""
        await trio.lowlevel.checkpoint()
        defn = parse_pool_xml(xml)
        self._check_pool_def(defn)
        async with self._lock:
            obj = self.table.conflicts(defn)
            await self._save_pool(defn)
            if obj is None:
                obj = self.table.add(defn, active=False)
                obj.built = False
            elif obj.active:
                obj.new_defn = defn
            else:
                obj.defn = defn
            obj.persistent = True
        log.info("storage pool defined", pool=defn.name, uuid=defn.uuid)
        return obj.ref

    async def storage_pool_create(self, uuid: str) -> None:
        """Start the pool: its directory must exist; its volumes are read."""
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._obj(uuid)
            if obj.active:
                raise OperationInvalidError(f"storage pool '{obj.name}' is already active")
            await self._start_pool(obj)
            obj.active = True
        log.info("storage pool started", pool=obj.name, volumes=len(obj.volumes))

    async def storage_pool_destroy(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._active(uuid)
            self._no_jobs(obj)
            await self._stop_pool(obj)
            obj.active = False
            if obj.new_defn is not None:
                obj.defn, obj.new_defn = obj.new_defn, None
            if not obj.persistent:
                del self.table.pools[uuid]
        log.info("storage pool stopped", pool=obj.name)

    async def storage_pool_undefine(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._obj(uuid)
            if obj.active:
                raise OperationInvalidError(f"storage pool '{obj.name}' is still active")
            self._no_jobs(obj)
            await self._forget_pool(obj)
            del self.table.pools[uuid]
        log.info("storage pool undefined", pool=obj.name)

    async def storage_pool_build(self, uuid: str) -> None:
        """Create the pool's directory (with its parents); a directory already there is kept."""
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._obj(uuid)
            if obj.active:
                raise OperationInvalidError(f"storage pool '{obj.name}' is already active")
            await self._build_pool(obj)
            obj.built = True

    async def storage_pool_delete(self, uuid: str) -> None:
        """Remove the pool's (empty) directory; the definition stays."""
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._obj(uuid)
            if obj.active:
                raise OperationInvalidError(f"storage pool '{obj.name}' is still active")
            await self._delete_pool(obj)
            obj.built = False

    async def storage_pool_refresh(self, uuid: str) -> None:
        """Read the pool's volumes again (files others created or removed are seen)."""
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._active(uuid)
            self._no_jobs(obj)
            try:
                await self._refresh_pool(obj)
            except BaseException:
                # As libvirt: a pool that cannot be read is no longer running.
                with trio.CancelScope(shield=True):
                    await self._stop_pool(obj)
                obj.active = False
                if not obj.persistent:
                    del self.table.pools[uuid]
                raise

    async def storage_pool_is_active(self, uuid: str) -> bool:
        return self._obj(uuid).active

    async def storage_pool_is_persistent(self, uuid: str) -> bool:
        return self._obj(uuid).persistent

    async def storage_pool_get_autostart(self, uuid: str) -> bool:
        return self._obj(uuid).autostart

    async def storage_pool_set_autostart(self, uuid: str, autostart: bool) -> None:
        await trio.lowlevel.checkpoint()
        async with self._lock:
            obj = self._obj(uuid)
            if not obj.persistent:
                raise OperationInvalidError(
                    f"cannot set autostart for transient storage pool '{obj.name}'"
                )
            if obj.autostart != bool(autostart):
                await self._save_autostart(obj, bool(autostart))
                obj.autostart = bool(autostart)

    async def storage_pool_info(self, uuid: str) -> StoragePoolInfo:
        obj = self._obj(uuid)
        if not obj.active:
            return StoragePoolInfo(POOL_INACTIVE, 0, 0, 0)
        capacity, allocation, available = await self._pool_sizes(obj)
        return StoragePoolInfo(POOL_RUNNING, capacity, allocation, available)

    async def storage_pool_xml_desc(self, uuid: str, *, inactive: bool = False) -> str:
        obj = self._obj(uuid)
        if inactive:
            return (obj.new_defn or obj.defn).to_xml()
        sizes = await self._pool_sizes(obj) if obj.active else (0, 0, 0)
        return obj.defn.to_xml(sizes)

    # -- volumes -------------------------------------------------------------------------------

    async def storage_pool_list_volumes(self, uuid: str) -> list[StorageVolRef]:
        obj = self._active(uuid)
        return [obj.volumes[name].ref(obj.name) for name in sorted(obj.volumes)]

    async def storage_vol_lookup_by_name(self, pool_uuid: str, name: str) -> StorageVolRef:
        obj, vol = self._vol(pool_uuid, name)
        return vol.ref(obj.name)

    async def storage_vol_lookup_by_path(self, path: str) -> StorageVolRef:
        found = self.table.volume_by_path(path) if isinstance(path, str) else None
        if found is None:
            raise NoStorageVolError(f"no storage volume with matching path '{path}'")
        obj, vol = found
        return vol.ref(obj.name)

    async def storage_vol_info(self, pool_uuid: str, name: str) -> StorageVolInfo:
        obj, vol = self._vol(pool_uuid, name)
        vol = await self._refresh_vol(obj, vol)
        return StorageVolInfo(
            type=VOL_TYPES[vol.vol_type], capacity=vol.capacity, allocation=vol.allocation
        )

    async def storage_vol_xml_desc(self, pool_uuid: str, name: str) -> str:
        obj, vol = self._vol(pool_uuid, name)
        return (await self._refresh_vol(obj, vol)).to_xml()

    async def storage_vol_create_xml(
        self, pool_uuid: str, xml: str, *, prealloc_metadata: bool = False
    ) -> StorageVolRef:
        """Create a volume from libvirt volume XML (with a ``<backingStore>``: an overlay)."""
        await trio.lowlevel.checkpoint()
        obj = self._active(pool_uuid)
        vol = parse_vol_xml(xml, obj.defn)
        self._check_new_vol(obj, vol)
        if vol.backing_path is not None:
            backing = self._backing_volume(vol)
            vol.backing_format = vol.backing_format or backing.format
            if vol.capacity == 0:
                vol.capacity = vol.allocation = backing.capacity
        with self._building(obj, vol.name):
            created = await self._create_vol(obj, vol, prealloc_metadata=prealloc_metadata)
            obj.volumes[created.name] = created
        log.info("storage volume created", pool=obj.name, volume=vol.name, format=vol.format)
        return created.ref(obj.name)

    async def storage_vol_create_xml_from(
        self,
        pool_uuid: str,
        xml: str,
        source_pool_uuid: str,
        source_name: str,
        *,
        prealloc_metadata: bool = False,
        progress: ProgressCallback | None = None,
    ) -> StorageVolRef:
        """Create a volume holding a copy of another's data (virsh vol-clone), converting
        between formats when the new volume's XML names another one. Its capacity is at least
        the source's."""
        await trio.lowlevel.checkpoint()
        obj = self._active(pool_uuid)
        src_obj, src = self._vol(source_pool_uuid, source_name)
        vol = parse_vol_xml(xml, obj.defn)
        self._check_new_vol(obj, vol)
        self._check_chain(src, what=f"cannot copy volume '{src.name}'")
        # The copy holds all the data: it has no backing file of its own.
        vol.backing_path = vol.backing_format = None
        vol.capacity = max(vol.capacity, src.capacity)
        vol.allocation = min(vol.allocation, vol.capacity)
        told = _Progress(progress)
        with self._using(src_obj, src), self._building(obj, vol.name):
            created = await self._clone_vol(
                obj,
                vol,
                src_obj,
                src,
                prealloc_metadata=prealloc_metadata,
                progress=told,
            )
            obj.volumes[created.name] = created
        told.finish()
        log.info(
            "storage volume copied",
            pool=obj.name,
            volume=vol.name,
            source=src.path,
            format=vol.format,
        )
        return created.ref(obj.name)

    async def storage_vol_delete(self, pool_uuid: str, name: str) -> None:
        await trio.lowlevel.checkpoint()
        obj, vol = self._vol(pool_uuid, name)
        if obj.in_use[vol.name]:
            raise OperationInvalidError(f"storage volume '{vol.name}' is still in use")
        # Taken while it goes, so that nobody creates it again half-way.
        obj.building.add(vol.name)
        try:
            await self._delete_vol(obj, vol)
            del obj.volumes[vol.name]
        finally:
            obj.building.discard(vol.name)
        log.info("storage volume deleted", pool=obj.name, volume=vol.name)

    async def storage_vol_resize(
        self,
        pool_uuid: str,
        name: str,
        capacity: int,
        *,
        allocate: bool = False,
        delta: bool = False,
        shrink: bool = False,
    ) -> None:
        """Change the capacity (libvirt's rules: shrinking needs ``shrink``; with ``delta``,
        ``capacity`` is added to the current one, or taken away when shrinking)."""
        await trio.lowlevel.checkpoint()
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
            raise InvalidArgError(f"invalid capacity {capacity!r}: a size in bytes is needed")
        obj, vol = self._vol(pool_uuid, name)
        vol = await self._refresh_vol(obj, vol)
        if delta:
            new = vol.capacity - capacity if shrink else vol.capacity + capacity
        else:
            new = capacity
        if new < 0:
            raise InvalidArgError(f"cannot shrink volume '{vol.name}' below zero")
        if new < vol.capacity and not shrink:
            raise InvalidArgError(
                f"cannot shrink volume '{vol.name}' below its current capacity unless "
                "shrinking is asked for explicitly"
            )
        if new > vol.capacity and shrink and not delta:
            raise InvalidArgError(f"cannot shrink volume '{vol.name}' to a larger capacity")
        if allocate and new > vol.capacity:
            _, _, available = await self._pool_sizes(obj)
            if new - vol.capacity > available:
                raise OperationFailedError(
                    f"not enough free space in pool '{obj.name}' to allocate "
                    f"{new - vol.capacity} bytes for volume '{vol.name}'"
                )
        with self._using(obj, vol):
            obj.volumes[vol.name] = await self._resize_vol(obj, vol, new, allocate=allocate)
        log.info("storage volume resized", pool=obj.name, volume=vol.name, capacity=new)

    async def storage_vol_wipe(self, pool_uuid: str, name: str) -> None:
        """Erase the volume's data: a raw volume reads as zeros, a qcow2 one as new."""
        await trio.lowlevel.checkpoint()
        obj, vol = self._vol(pool_uuid, name)
        with self._using(obj, vol):
            obj.volumes[vol.name] = await self._wipe_vol(obj, vol)
        log.info("storage volume wiped", pool=obj.name, volume=vol.name)

    # -- transfers: a volume's bytes, a chunk per call ------------------------------------------
    #
    # An upload or a download is begun (the volume is then in use: it cannot be deleted, nor
    # its pool stopped), carried out a chunk at a time, and ended; a client that leaves ends
    # its transfers. Chunks are small calls, so a transfer goes through a daemon as it goes
    # in-process.

    async def storage_vol_upload_begin(
        self, pool_uuid: str, name: str, *, client: object = None
    ) -> int:
        """Begin an upload into a volume; the transfer's id."""
        return await self._begin(pool_uuid, name, upload=True, client=client)

    async def storage_vol_download_begin(
        self, pool_uuid: str, name: str, *, client: object = None
    ) -> int:
        """Begin a download of a volume's bytes; the transfer's id."""
        return await self._begin(pool_uuid, name, upload=False, client=client)

    async def _begin(self, pool_uuid: str, name: str, *, upload: bool, client: object) -> int:
        await trio.lowlevel.checkpoint()
        obj, vol = self._vol(pool_uuid, name)
        hold = contextlib.ExitStack()
        hold.enter_context(self._using(obj, vol))
        transfer_id = next(self._transfer_ids)
        self._transfers[transfer_id] = _Transfer(obj, vol, upload, client, hold)
        return transfer_id

    async def storage_vol_upload(
        self, transfer: int, *, offset: int, data: bytes, client: object = None
    ) -> int:
        """Write ``data`` at ``offset`` of an upload's volume; how many bytes were written."""
        await trio.lowlevel.checkpoint()
        _check_window(offset, len(data))
        t = self._transfer(transfer, client)
        if not t.upload:
            raise OperationInvalidError("this transfer is a download")
        return await self._write(t.pool, t.vol, offset, data, sync=False)

    async def storage_vol_download(
        self, transfer: int, *, offset: int, length: int, client: object = None
    ) -> bytes:
        """At most ``length`` bytes of a download's volume from ``offset``; fewer only at
        the end of the file, none past it."""
        await trio.lowlevel.checkpoint()
        _check_window(offset, length)
        if length > MAX_TRANSFER:
            raise InvalidArgError(f"a download chunk is at most {MAX_TRANSFER} bytes")
        t = self._transfer(transfer, client)
        if t.upload:
            raise OperationInvalidError("this transfer is an upload")
        return await self._read(t.pool, t.vol, offset, length)

    async def storage_vol_transfer_end(self, transfer: int, *, client: object = None) -> None:
        """End a transfer: an upload's data is made durable and its volume read again; the
        volume is no longer in use."""
        t = self._transfer(transfer, client)
        del self._transfers[transfer]
        with t.hold:
            if t.upload:
                await self._write(t.pool, t.vol, 0, b"", sync=True)
                t.pool.volumes[t.vol.name] = await self._refresh_vol(t.pool, t.vol, force=True)
                log.info("storage volume uploaded", pool=t.pool.name, volume=t.vol.name)

    def client_closed(self, client: object) -> None:
        """A client left: its transfers end (unfinished uploads stay as written)."""
        for transfer_id, t in list(self._transfers.items()):
            if t.client is client:
                del self._transfers[transfer_id]
                t.hold.close()

    def _transfer(self, transfer: int, client: object) -> _Transfer:
        t = self._transfers.get(transfer)
        if t is None or t.client is not client:
            raise InvalidArgError(f"no transfer {transfer} of this connection")
        return t

    async def storage_vol_source(self, pool_name: str, vol_name: str) -> StorageVolSource:
        obj = self.table.by_name(pool_name)
        if obj is None:
            raise NoStoragePoolError(f"no storage pool with matching name '{pool_name}'")
        if not obj.active:
            raise OperationInvalidError(
                f"storage pool '{pool_name}' containing volume '{vol_name}' is not active"
            )
        vol = obj.volumes.get(vol_name)
        if vol is None:
            raise NoStorageVolError(
                f"no storage volume with matching name '{vol_name}' in pool '{pool_name}'"
            )
        vol = await self._refresh_vol(obj, vol)
        self._check_chain(vol, what=f"cannot use volume '{vol_name}' of pool '{pool_name}'")
        if vol.vol_type not in ("file", "block"):
            raise OperationFailedError(
                f"volume '{vol_name}' of pool '{pool_name}' is a {vol.vol_type}, not a disk image"
            )
        return StorageVolSource(path=vol.path, type=vol.vol_type, format=vol.format)

    # -- shared steps --------------------------------------------------------------------------

    def _check_new_vol(self, obj: PoolObj, vol: VolDef) -> None:
        if obj.name_taken(vol.name):
            raise StorageVolExistsError(
                f"storage volume '{vol.name}' already exists in pool '{obj.name}'"
            )
        if vol.backing_path is not None and vol.format == "raw":
            raise InvalidArgError(
                f"volume '{vol.name}': a raw volume cannot have a backing store (use qcow2)"
            )
        self._check_vol_def(obj, vol)

    def _backing_volume(self, vol: VolDef) -> VolDef:
        """The volume ``vol`` is to be an overlay on: a volume of an active pool, whose own
        chain is safe. InvalidArgError for a backing file that is not such a volume."""
        assert vol.backing_path is not None
        found = self.table.volume_by_path(vol.backing_path)
        if found is None:
            raise InvalidArgError(
                f"backing store '{vol.backing_path}' of volume '{vol.name}' is not a volume of "
                "an active storage pool of this node"
            )
        backing = found[1]
        if vol.backing_format is not None and vol.backing_format != backing.format:
            raise InvalidArgError(
                f"backing store '{backing.path}' is {backing.format}, not {vol.backing_format}"
            )
        self._check_chain(backing, what=f"cannot create volume '{vol.name}'")
        return backing

    # -- what a driver supplies ----------------------------------------------------------------

    def _check_pool_def(self, defn: PoolDef) -> None:
        """Refuse a pool definition this driver cannot serve (before anything changes)."""

    def _check_vol_def(self, obj: PoolObj, vol: VolDef) -> None:
        """Refuse a volume definition this driver cannot create (before anything changes)."""

    async def _save_pool(self, defn: PoolDef) -> None:
        await trio.lowlevel.checkpoint()

    async def _forget_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()

    async def _save_autostart(self, obj: PoolObj, autostart: bool) -> None:
        await trio.lowlevel.checkpoint()

    async def _start_pool(self, obj: PoolObj) -> None:
        raise NotImplementedError

    async def _stop_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()

    async def _build_pool(self, obj: PoolObj) -> None:
        raise NotImplementedError

    async def _delete_pool(self, obj: PoolObj) -> None:
        raise NotImplementedError

    async def _refresh_pool(self, obj: PoolObj) -> None:
        raise NotImplementedError

    async def _pool_sizes(self, obj: PoolObj) -> tuple[int, int, int]:
        raise NotImplementedError

    async def _refresh_vol(self, obj: PoolObj, vol: VolDef, *, force: bool = False) -> VolDef:
        await trio.lowlevel.checkpoint()
        return vol

    async def _create_vol(self, obj: PoolObj, vol: VolDef, *, prealloc_metadata: bool) -> VolDef:
        raise NotImplementedError

    async def _clone_vol(
        self,
        obj: PoolObj,
        vol: VolDef,
        src_obj: PoolObj,
        src: VolDef,
        *,
        prealloc_metadata: bool,
        progress: ProgressCallback | None,
    ) -> VolDef:
        raise NotImplementedError

    async def _delete_vol(self, obj: PoolObj, vol: VolDef) -> None:
        raise NotImplementedError

    async def _resize_vol(
        self, obj: PoolObj, vol: VolDef, capacity: int, *, allocate: bool
    ) -> VolDef:
        raise NotImplementedError

    async def _wipe_vol(self, obj: PoolObj, vol: VolDef) -> VolDef:
        raise NotImplementedError

    async def _write(
        self, obj: PoolObj, vol: VolDef, offset: int, data: bytes, *, sync: bool
    ) -> int:
        raise NotImplementedError

    async def _read(self, obj: PoolObj, vol: VolDef, offset: int, length: int) -> bytes:
        raise NotImplementedError


@dataclasses.dataclass
class _Transfer:
    """An upload or download in progress, and its hold on the volume."""

    pool: PoolObj
    vol: VolDef
    upload: bool
    client: object
    hold: contextlib.ExitStack


class _Progress:
    """A caller's progress callback, told only of progress (never twice the same fraction),
    and told 1.0 once the operation is done."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last = -1.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if self._callback is not None and fraction > self._last:
            self._last = fraction
            self._callback(fraction)

    def finish(self) -> None:
        self(1.0)


def _check_window(offset: int, length: int) -> None:
    for what, value in (("offset", offset), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgError(f"invalid {what} {value!r}: a number of bytes (0 or more)")


__all__ = ["StorageDriverBase"]
