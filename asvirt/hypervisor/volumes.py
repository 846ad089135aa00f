"""Domain disks that name storage volumes (``<disk type='volume'>``), resolved at start.

A persistent definition keeps ``<source pool='p' volume='v'/>``; when the domain starts, its
live definition gets the volume's path (a ``file`` or ``block`` disk) and, unless the disk
names one, the volume's format, from the node's storage driver. The live XML therefore shows
where the disk really is. A volume that cannot be used stops the start with the storage
driver's error (no such pool, pool not active, no such volume, an unsafe backing chain).
"""

from __future__ import annotations

from ..conf.devices import DISK_FORMATS, Disk
from ..conf.domain import DomainDef
from ..drivers.base import StorageDriver
from ..errors import ConfigUnsupportedError, OperationUnsupportedError


def uses_volumes(defn: DomainDef) -> bool:
    return any(disk.type == "volume" for disk in defn.disks)


async def resolve_volumes(defn: DomainDef, storage: StorageDriver | None) -> None:
    """Make every ``type='volume'`` disk of ``defn`` (a live definition) the file it names."""
    for disk in defn.disks:
        await resolve_disk(disk, storage)


async def resolve_disk(disk: Disk, storage: StorageDriver | None) -> None:
    """Make a ``type='volume'`` disk (of a live definition) the file it names."""
    if disk.type == "volume":
        assert disk.source_pool is not None and disk.source_volume is not None
        if storage is None:
            raise OperationUnsupportedError(
                f"disk '{disk.target}' names a storage volume, but this node has no storage driver"
            )
        src = await storage.storage_vol_source(disk.source_pool, disk.source_volume)
        where = f"disk '{disk.target}' (volume '{disk.source_volume}' of pool '{disk.source_pool}')"
        fmt = disk.format or src.format
        if fmt not in DISK_FORMATS:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where} is in format '{fmt}' "
                f"(disks can be {', '.join(DISK_FORMATS)})"
            )
        if disk.shareable and fmt != "raw":
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: <shareable/> needs a raw image, not {fmt}"
            )
        disk.type = src.type
        disk.source = src.path
        disk.format = fmt
        disk.source_pool = disk.source_volume = None


__all__ = ["resolve_disk", "resolve_volumes", "uses_volumes"]
