"""Internal snapshots of a shut-off domain's qcow2 disks, with ``qemu-img snapshot``.

Each run goes through the storage layer's supervised runner
(:func:`asvirt.drivers.storage.qemu_img.run`: a deadline, stderr in the error). Before any
disk is touched, every disk is checked with ``qemu-img info``: a create refuses a name a disk
already has (qcow2 would keep both) or that is another snapshot's ID; an apply or delete
needs the snapshot in every disk. A create that fails on one disk deletes what it made on
the others. An apply names the snapshot by its ID (``qemu-img snapshot -a`` looks IDs up
before names); a delete by its name (``-d`` looks names up).

An encrypted disk (LUKS in qcow2) is opened with its passphrase, which every run but
``info`` needs: the secret's value is looked up before any disk is touched, and each run
reads it from a pipe of its own (:func:`..storage.qemu_img.secret_objects`), never from its
argv or a file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...errors import AsvirtError, OperationFailedError, OperationInvalidError
from ...hypervisor.guest_state import SnapshotTarget
from ...hypervisor.secrets import SecretName
from ...hypervisor.snapshots import DiskOp
from ...log import get_logger
from ..storage import qemu_img

log = get_logger("asvirt.qemu.snapshot")

#: How the node gives the value of a secret (NoSecretError when it has none).
SecretValue = Callable[[SecretName], bytes]
#: The id of the ``secret`` object of a disk's passphrase, in one ``qemu-img`` run.
_KEY_ID = "sec0"


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
    op: DiskOp,
    name: str,
    disks: Sequence[SnapshotTarget],
    *,
    timeout: float,
    secret_value: SecretValue,
) -> None:
    """Create, apply or delete the internal snapshot ``name`` in ``disks`` (see the module
    docstring)."""
    keys = {d.target: secret_value(d.encryption) for d in disks if d.encryption is not None}
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
        try:
            await _snapshot(disk, flag, tag, keys.get(disk.target), what=what, timeout=timeout)
        except AsvirtError:
            if op == "create":
                await _undo(name, done, keys, timeout=timeout)
            raise
        done.append(disk)


async def _snapshot(
    disk: SnapshotTarget, flag: str, tag: str, key: bytes | None, *, what: str, timeout: float
) -> None:
    """``qemu-img snapshot FLAG TAG`` of one disk (``key``: its passphrase)."""
    with qemu_img.secret_objects({} if key is None else {_KEY_ID: key}) as (objects, fds):
        image = _image_opts(disk, None if key is None else _KEY_ID)
        args = ["snapshot", *objects, "--image-opts", flag, tag, "--", image]
        await qemu_img.run(args, what=what, timeout=timeout, pass_fds=fds)


async def _undo(
    name: str, disks: list[SnapshotTarget], keys: dict[str, bytes], *, timeout: float
) -> None:
    for disk in disks:
        try:
            what = f"undo snapshot '{name}' of disk '{disk.target}'"
            await _snapshot(disk, "-d", name, keys.get(disk.target), what=what, timeout=timeout)
        except AsvirtError as err:
            log.error("cannot undo a snapshot", disk=disk.source, snapshot=name, error=str(err))


def _image_opts(disk: SnapshotTarget, key_secret: str | None) -> str:
    """The disk as qcow2 on a file or block device: never probed (a raw image could hold a
    qcow2 header), the path's commas escaped; ``key_secret``: the id of the secret object
    that unlocks its encryption."""
    protocol = "host_device" if disk.type == "block" else "file"
    opts = f"driver=qcow2,file.driver={protocol},file.filename={disk.source.replace(',', ',,')}"
    return opts if key_secret is None else f"{opts},encrypt.key-secret={key_secret}"


_VERBS = {"create": "take", "apply": "revert to", "delete": "delete"}

__all__ = ["snapshot_disks"]
