"""The command line of the tuning elements (:mod:`asvirt.conf.tuning`): a disk's I/O throttle
(``<iotune>``: a ``throttle-group`` object and a ``throttle`` filter node above the disk's
media, which is what ``query-named-block-nodes`` then shows), its block sizes and geometry,
and virtio-blk queues."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ...conf.devices import Disk
from ...conf.tuning import IOTune

if TYPE_CHECKING:
    from .command import _Builder

#: ``<iotune>`` element -> QEMU's ThrottleLimits key.
_LIMIT_KEYS = {
    f"{kind}_{what}_sec{suffix}": f"{'bps' if what == 'bytes' else 'iops'}-{kind}{qsuffix}"
    for kind in ("total", "read", "write")
    for what in ("bytes", "iops")
    for suffix, qsuffix in (("", ""), ("_max", "-max"), ("_max_length", "-max-length"))
}


def throttle_group_id(disk: Disk) -> str:
    """The ``throttle-group`` object of a throttled disk: its ``group_name``'s (disks that
    name one group share its limits, as QEMU's groups do), else one of its own."""
    tune = disk.iotune
    assert tune is not None
    if tune.group_name is not None:
        return f"throttle-{tune.group_name}"
    return f"throttle-{disk.alias}"


def throttle_limits(tune: IOTune) -> dict[str, int]:
    """QEMU's ThrottleLimits of ``tune`` (zero means no limit, as in libvirt's XML)."""
    limits = {_LIMIT_KEYS[k]: v for k, v in tune.limits.items() if v}
    if tune.size_iops_sec:
        limits["iops-size"] = tune.size_iops_sec
    return limits


def throttle_limits_all(tune: IOTune) -> dict[str, int]:
    """Every ThrottleLimits key of ``tune``, those it leaves unset at QEMU's defaults (0; 1
    for a burst length): what ``qom-set`` of a running group's ``limits`` needs, since QEMU
    keeps the keys it is not given."""
    limits = {
        key: tune.limits.get(name) or (1 if name.endswith("_length") else 0)
        for name, key in _LIMIT_KEYS.items()
    }
    limits["iops-size"] = tune.size_iops_sec or 0
    return limits


def iotune_of_limits(limits: dict[str, Any]) -> dict[str, int]:
    """QEMU's ThrottleLimits (``qom-get`` of a group) as libvirt's parameters; a burst length
    counts only with its burst (QEMU reports its default of 1 for every bucket)."""
    out = {name: int(limits.get(key) or 0) for name, key in _LIMIT_KEYS.items()}
    for name in out:
        if name.endswith("_max_length") and not out[name[: -len("_length")]]:
            out[name] = 0
    out["size_iops_sec"] = int(limits.get("iops-size") or 0)
    return out


def throttle_object(disk: Disk) -> dict[str, Any]:
    """The ``object-add`` arguments (and ``-object`` JSON) of a disk's throttle group."""
    assert disk.iotune is not None
    return {
        "qom-type": "throttle-group",
        "id": throttle_group_id(disk),
        "limits": throttle_limits(disk.iotune),
    }


def throttle_node(disk: Disk, below: str) -> dict[str, Any]:
    """The ``throttle`` filter node of a disk, over its top node ``below``."""
    return {
        "driver": "throttle",
        "node-name": f"libvirt-{disk.node_index}-throttle",
        "throttle-group": throttle_group_id(disk),
        "file": below,
    }


def throttle_objects(b: _Builder) -> None:
    """``-object throttle-group`` for every throttled disk (once per group), before the
    ``-blockdev`` nodes that name them."""
    seen: set[str] = set()
    for disk in b.d.disks:
        if disk.iotune is None or not disk.has_media:
            continue
        obj = throttle_object(disk)
        if obj["id"] in seen:
            continue
        seen.add(obj["id"])
        b.add("-object", json.dumps(obj, separators=(",", ":")))


def disk_device_props(disk: Disk, props: dict[str, Any]) -> None:
    """``<blockio>``, ``<geometry>`` and virtio queues as the disk device's properties."""
    bio = disk.blockio
    if bio is not None:
        props["logical_block_size"] = bio.logical_block_size or None
        props["physical_block_size"] = bio.physical_block_size or None
        if bio.discard_granularity is not None:
            props["discard_granularity"] = bio.discard_granularity
    geo = disk.geometry
    if geo is not None:
        props["cyls"] = geo.cyls
        props["heads"] = geo.heads
        props["secs"] = geo.secs
        if geo.trans is not None and disk.bus in ("ide", "sata") and disk.device == "disk":
            props["bios-chs-trans"] = geo.trans
    if disk.bus == "virtio":
        props["num-queues"] = disk.queues
        props["queue-size"] = disk.queue_size


__all__ = [
    "disk_device_props",
    "iotune_of_limits",
    "throttle_group_id",
    "throttle_limits",
    "throttle_limits_all",
    "throttle_node",
    "throttle_object",
    "throttle_objects",
]
