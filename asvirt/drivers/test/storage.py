"""Storage pools and volumes on the test driver, in memory, with the QEMU node's rules.

Every call is the shared :class:`~asvirt.drivers.storage.common.StorageDriverBase`, so it
accepts, refuses and reports exactly what a QEMU node's ``dir`` pools do; only the storage is
simulated, and nothing touches the disk:

* a pool has a capacity (100 GiB unless its XML says otherwise, as in libvirt's test driver);
  its allocation is the sum of its volumes' allocations and ``available`` is what is left.
  A volume that does not fit fails to be created;
* a pool's directory exists in memory only: pools of the node description exist, a pool
  defined later must be built (``build()``) before it can start, and ``delete()`` removes it
  (only when it holds no volume), as a real directory would behave;
* a volume's allocation defaults to its capacity (libvirt's rule); its bytes are kept in
  memory as far as anything was written (uploads), and read back as zeros beyond that, up to
  its capacity. A raw volume grows when an upload writes past its end, as a file does.
"""

from __future__ import annotations

import errno

import trio

from ...errors import OperationFailedError, StorageVolExistsError, SystemCallError
from ..base import ProgressCallback
from ..storage.common import StorageDriverBase
from ..storage.pool import (
    VOL_TYPES,
    PoolDef,
    PoolObj,
    PoolTable,
    VolDef,
    parse_pool_xml,
    parse_vol_xml,
)
from .state import TestNode

#: A pool's capacity when its XML gives none (libvirt's test driver uses the same).
DEFAULT_POOL_CAPACITY = 100 * 1024**3
#: ``virStoragePoolState`` values used by :class:`~asvirt.StoragePoolInfo`.
POOL_INACTIVE, POOL_RUNNING = 0, 2
#: Bytes a download hands out per step unless the reader asks for less.


def _capacity(obj: PoolObj) -> int:
    return DEFAULT_POOL_CAPACITY if obj.defn.capacity is None else obj.defn.capacity


def _allocation(obj: PoolObj) -> int:
    return sum(v.allocation for v in obj.volumes.values())


def _available(obj: PoolObj) -> int:
    return max(0, _capacity(obj) - _allocation(obj))


def add_pool(node: TestNode, defn: PoolDef, *, active: bool, persistent: bool = True) -> PoolObj:
    """Add a pool to the node; OperationFailedError if the name or UUID is taken (libvirt's)."""
    return PoolTable(node.pools).add(defn, active=active, persistent=persistent)


def add_volume(obj: PoolObj, vol: VolDef) -> None:
    """Put a volume in a pool (a node description's); errors as creating it would give."""
    if obj.name_taken(vol.name):
        raise StorageVolExistsError(
            f"storage volume '{vol.name}' already exists in pool '{obj.name}'"
        )
    _check_space(obj, vol)
    obj.volumes[vol.name] = vol


def _check_space(obj: PoolObj, vol: VolDef) -> None:
    available = _available(obj)
    if vol.allocation > available:
        raise OperationFailedError(
            f"not enough free space in pool '{obj.name}' for volume '{vol.name}' "
            f"({vol.allocation} bytes wanted, {available} available)"
        )


def _no_dir(obj: PoolObj, doing: str) -> SystemCallError:
    path = obj.defn.target_path
    return SystemCallError(
        f"cannot {doing} '{path}': No such file or directory", path=path, errno=errno.ENOENT
    )


class TestStorageDriver(StorageDriverBase):
    """The test driver's storage driver: the shared calls on pools and volumes in memory."""

    __test__ = False  # not a pytest test class

    def __init__(self, node: TestNode) -> None:
        super().__init__(PoolTable(node.pools))
        self.node = node
        #: The bytes written to each volume (by pool UUID and name); zeros beyond them.
        self._data: dict[tuple[str, str], bytearray] = {}

    def _bytes(self, obj: PoolObj, name: str) -> bytearray:
        return self._data.setdefault((obj.defn.uuid, name), bytearray())

    # -- pools ---------------------------------------------------------------------------------

    async def _start_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()
        if not obj.built:
            raise _no_dir(obj, "open directory")

    async def _build_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()

    async def _delete_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()
        if not obj.built:
            raise _no_dir(obj, "delete storage pool directory")
        if obj.volumes:
            path = obj.defn.target_path
            raise SystemCallError(
                f"cannot delete storage pool directory '{path}': Directory not empty",
                path=path,
                errno=errno.ENOTEMPTY,
            )

    async def _refresh_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()  # nobody else changes the test driver's volumes

    async def _forget_pool(self, obj: PoolObj) -> None:
        await trio.lowlevel.checkpoint()
        for key in [k for k in self._data if k[0] == obj.defn.uuid]:
            del self._data[key]

    async def _pool_sizes(self, obj: PoolObj) -> tuple[int, int, int]:
        await trio.lowlevel.checkpoint()
        return _capacity(obj), _allocation(obj), _available(obj)

    # -- volumes -------------------------------------------------------------------------------

    async def _create_vol(self, obj: PoolObj, vol: VolDef, *, prealloc_metadata: bool) -> VolDef:
        await trio.lowlevel.checkpoint()
        _check_space(obj, vol)
        self._data.pop((obj.defn.uuid, vol.name), None)
        return vol

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
        await trio.lowlevel.checkpoint()
        vol.allocation = min(vol.capacity, src.allocation)
        _check_space(obj, vol)
        self._data[(obj.defn.uuid, vol.name)] = bytearray(self._bytes(src_obj, src.name))
        return vol

    async def _delete_vol(self, obj: PoolObj, vol: VolDef) -> None:
        await trio.lowlevel.checkpoint()
        self._data.pop((obj.defn.uuid, vol.name), None)

    async def _resize_vol(
        self, obj: PoolObj, vol: VolDef, capacity: int, *, allocate: bool
    ) -> VolDef:
        await trio.lowlevel.checkpoint()
        if allocate and capacity > vol.capacity:
            vol.allocation += capacity - vol.capacity
        vol.capacity = capacity
        vol.allocation = min(vol.allocation, capacity)
        del self._bytes(obj, vol.name)[capacity:]
        return vol

    async def _wipe_vol(self, obj: PoolObj, vol: VolDef) -> VolDef:
        await trio.lowlevel.checkpoint()
        self._bytes(obj, vol.name).clear()
        return vol

    async def _write(
        self, obj: PoolObj, vol: VolDef, offset: int, data: bytes, *, sync: bool
    ) -> int:
        await trio.lowlevel.checkpoint()
        stored = self._bytes(obj, vol.name)
        if len(stored) < offset:
            stored.extend(bytes(offset - len(stored)))
        stored[offset : offset + len(data)] = data
        end = offset + len(data)
        if vol.format == "raw" and end > vol.capacity:
            vol.capacity = end  # a file grows when written past its end
        vol.allocation = max(vol.allocation, min(end, vol.capacity))
        return len(data)

    async def _read(self, obj: PoolObj, vol: VolDef, offset: int, length: int) -> bytes:
        """What was written, then zeros, up to the volume's capacity."""
        await trio.lowlevel.checkpoint()
        want = max(0, min(length, vol.capacity - offset))
        chunk = bytes(self._bytes(obj, vol.name)[offset : offset + want])
        return chunk + bytes(want - len(chunk))


__all__ = [
    "DEFAULT_POOL_CAPACITY",
    "VOL_TYPES",
    "PoolDef",
    "PoolObj",
    "TestStorageDriver",
    "VolDef",
    "add_pool",
    "add_volume",
    "parse_pool_xml",
    "parse_vol_xml",
]
