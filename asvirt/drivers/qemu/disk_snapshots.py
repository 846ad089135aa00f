"""Internal snapshots of a shut-off domain's qcow2 disks, with ``qemu-img snapshot``.

Each run goes through the storage layer's supervised runner
(:func:`asvirt.drivers.storage.qemu_img.run`: a deadline, stderr in the error). Before any
disk is touched, every disk is checked with ``qemu-img info``: a create refuses a name a disk
already has (qcow2 would keep both) or that is another snapshot's ID; an apply or delete
needs the snapshot in every disk. A create that fails on one disk deletes what it made on
the others. An apply names the snapshot by its ID (``qemu-img snapshot -a`` looks IDs up
before names); a delete by its name (``-d`` looks names up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import AsvirtError, OperationFailedError, OperationInvalidError
from ...hypervisor.guest_state import SnapshotTarget
from ...hypervisor.snapshots import DiskOp
from ...log import get_logger
from ..storage import qemu_img

log = get_logger("asvirt.qemu.snapshot")


async def _snapshots(disk: SnapshotTarget, *, timeout: float) -> list[dict[str, Any]]:
    info = await qemu_img.info(
        disk.source,
        fmt="qcow2",
        what=f"read the snapshots of disk '{disk.target}' ({disk.source})",
        timeout=timeout,
    )
    found = info.get("snapshots") or []
    return [s for s in found if isinstance(s, dict)]


async def snapshot_disks(
    op: DiskOp, name: str, disks: Sequence[SnapshotTarget], *, timeout: float
) -> None:
    """Create, apply or delete the internal snapshot ``name`` in ``disks`` (see the module
    docstring)."""
    ids: list[str] = []
    for disk in disks:
        snaps = await _snapshots(disk, timeout=timeout)
        mine = [s for s in snaps if s.get("name") == name]
        where = f"disk '{disk.target}' ({disk.source})"
        if op == "create":
            if mine:
                raise OperationInvalidError(
                    f"{where} already has an internal snapshot named '{name}'"
                )
            if any(s.get("id") == name for s in snaps):
                raise OperationInvalidError(
                    f"cannot name a snapshot '{name}': it is the ID of another internal "
                    f"snapshot in {where}, and QEMU would confuse them"
                )
        elif not mine:
            raise OperationFailedError(f"{where} has no internal snapshot named '{name}'")
        else:
            ids.append(str(mine[0].get("id")))
    done: list[SnapshotTarget] = []
    for i, disk in enumerate(disks):
        what = f"{_VERBS[op]} snapshot '{name}' of disk '{disk.target}' ({disk.source})"
        if op == "create":
            flag, tag = "-c", name
        elif op == "apply":
            flag, tag = "-a", ids[i]
        else:
            flag, tag = "-d", name
        args = ["snapshot", "--image-opts", flag, tag, "--", _image_opts(disk)]
        try:
            await qemu_img.run(args, what=what, timeout=timeout)
        except AsvirtError:
            if op == "create":
                await _undo(name, done, timeout=timeout)
            raise
        done.append(disk)


async def _undo(name: str, disks: list[SnapshotTarget], *, timeout: float) -> None:
    for disk in disks:
        try:
            await qemu_img.run(
                ["snapshot", "--image-opts", "-d", name, "--", _image_opts(disk)],
                what=f"undo snapshot '{name}' of disk '{disk.target}'",
                timeout=timeout,
            )
        except AsvirtError as err:
            log.error("cannot undo a snapshot", disk=disk.source, snapshot=name, error=str(err))


def _image_opts(disk: SnapshotTarget) -> str:
    """The disk as qcow2 on a file or block device: never probed (a raw image could hold a
    qcow2 header), the path's commas escaped."""
    protocol = "host_device" if disk.type == "block" else "file"
    return f"driver=qcow2,file.driver={protocol},file.filename={disk.source.replace(',', ',,')}"


_VERBS = {"create": "take", "apply": "revert to", "delete": "delete"}

__all__ = ["snapshot_disks"]
