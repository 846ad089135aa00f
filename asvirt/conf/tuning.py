"""Resource tuning in libvirt's domain XML, parsed and written as libvirt does.

``<cputune>`` (CPU pinning of the vCPU, emulator and I/O threads, and the cgroup CPU
bandwidth), ``<memtune>``, ``<blkiotune>``, ``<seclabel>``, and a disk's ``<iotune>``,
``<blockio>``, ``<geometry>``. The driver decides how each is honoured (the QEMU driver:
:mod:`asvirt.drivers.qemu.tuning`); this module knows only the XML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigUnsupportedError, XMLError
from .units import parse_kib
from .xmlnode import Node, XElem

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1

#: ``<cputune>`` bandwidth elements: name -> (minimum, maximum) as libvirt's schema has them.
CPU_BANDWIDTH = {
    "shares": (0, 262144),
    "global_period": (1000, 1000000),
    "global_quota": (-1, 17592186044415),
    "period": (1000, 1000000),
    "quota": (-1, 17592186044415),
    "emulator_period": (1000, 1000000),
    "emulator_quota": (-1, 17592186044415),
    "iothread_period": (1000, 1000000),
    "iothread_quota": (-1, 17592186044415),
}


@dataclass(slots=True)
class CPUTune:
    """``<cputune>``: CPU bandwidth (cgroup cpu controller) and thread pinning."""

    #: name in :data:`CPU_BANDWIDTH` -> value
    bandwidth: dict[str, int] = field(default_factory=dict)
    #: vCPU id -> cpuset
    vcpupin: dict[int, str] = field(default_factory=dict)
    emulatorpin: str | None = None
    #: I/O thread id -> cpuset
    iothreadpin: dict[int, str] = field(default_factory=dict)

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("cputune")
        for name in CPU_BANDWIDTH:
            if name in self.bandwidth:
                el.add(name, text=str(self.bandwidth[name]))
        for vcpu in sorted(self.vcpupin):
            el.add("vcpupin", {"vcpu": vcpu, "cpuset": self.vcpupin[vcpu]})
        if self.emulatorpin is not None:
            el.add("emulatorpin", {"cpuset": self.emulatorpin})
        for tid in sorted(self.iothreadpin):
            el.add("iothreadpin", {"iothread": tid, "cpuset": self.iothreadpin[tid]})


def _parse_pins(
    node: Node,
    tag: str,
    attr: str,
    bounds: tuple[int, int],
    into: dict[int, str],
    parse_cpuset: Callable[[str], set[int]],
) -> None:
    """``<vcpupin vcpu= cpuset=>``-like children of ``<cputune>``: each thread's CPU set."""
    for pin in node.children(tag):
        which = pin.integer(attr, minimum=bounds[0], maximum=bounds[1])
        if which is None:
            raise XMLError(f"missing attribute '{attr}' of <cputune><{tag}>")
        if which in into:
            raise XMLError(f"duplicate {tag} for {attr} {which}")
        cpuset = pin.required("cpuset")
        parse_cpuset(cpuset)
        into[which] = cpuset
        pin.finish()


def parse_cputune(node: Node, parse_cpuset: Callable[[str], set[int]]) -> CPUTune:
    tune = CPUTune()
    for name, (lo, hi) in CPU_BANDWIDTH.items():
        text = node.child_text(name)
        if text is not None:
            tune.bandwidth[name] = node.to_int(text, f"<{name}>", minimum=lo, maximum=hi)
    _parse_pins(node, "vcpupin", "vcpu", (0, 4095), tune.vcpupin, parse_cpuset)
    emu = node.child("emulatorpin")
    if emu is not None:
        tune.emulatorpin = emu.required("cpuset")
        parse_cpuset(tune.emulatorpin)
        emu.finish()
    _parse_pins(node, "iothreadpin", "iothread", (1, _U32), tune.iothreadpin, parse_cpuset)
    for tag in ("vcpusched", "iothreadsched", "emulatorsched", "cachetune", "memorytune"):
        if node.children(tag):
            raise ConfigUnsupportedError(
                f"unsupported configuration: <cputune><{tag}> is not supported by asvirt "
                "(real-time scheduling and resctrl cache/memory allocation are not implemented)"
            )
    node.finish()
    return tune


#: ``<memtune>`` elements asvirt honours, in libvirt's order.
MEMTUNE_LIMITS = ("hard_limit", "soft_limit", "swap_hard_limit")


@dataclass(slots=True)
class MemTune:
    """``<memtune>``: limits in KiB (cgroup memory controller)."""

    limits_kib: dict[str, int] = field(default_factory=dict)

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("memtune")
        for name in MEMTUNE_LIMITS:
            if name in self.limits_kib:
                el.add(name, {"unit": "KiB"}, text=str(self.limits_kib[name]))


def parse_memtune(node: Node) -> MemTune:
    tune = MemTune()
    for name in MEMTUNE_LIMITS:
        sub = node.child(name)
        if sub is not None:
            tune.limits_kib[name] = parse_kib(sub.text(), sub.attr("unit"), what=name)
            sub.finish()
    if node.child("min_guarantee") is not None:
        # libvirt's QEMU driver refuses it too: no cgroup knob guarantees memory.
        raise ConfigUnsupportedError(
            "unsupported configuration: Parameter 'min_guarantee' not supported by QEMU."
        )
    node.finish()
    hard = tune.limits_kib.get("hard_limit")
    swap = tune.limits_kib.get("swap_hard_limit")
    if hard is not None and swap is not None and swap < hard:
        raise XMLError(
            "memory hard_limit tunable value must be lower than or equal to swap_hard_limit"
        )
    return tune


#: ``<blkiotune><device>`` throttles, in libvirt's order.
BLKIO_DEVICE_LIMITS = (
    "read_iops_sec",
    "write_iops_sec",
    "read_bytes_sec",
    "write_bytes_sec",
)


@dataclass(slots=True)
class BlkioDevice:
    path: str
    weight: int | None = None
    limits: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class BlkioTune:
    """``<blkiotune>``: I/O weight and per-device throttles (cgroup io/blkio controller)."""

    weight: int | None = None
    devices: list[BlkioDevice] = field(default_factory=list)

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("blkiotune")
        if self.weight is not None:
            el.add("weight", text=str(self.weight))
        for dev in self.devices:
            d = el.add("device")
            d.add("path", text=dev.path)
            if dev.weight is not None:
                d.add("weight", text=str(dev.weight))
            for name in BLKIO_DEVICE_LIMITS:
                if name in dev.limits:
                    d.add(name, text=str(dev.limits[name]))


def parse_blkiotune(node: Node) -> BlkioTune:
    tune = BlkioTune()
    text = node.child_text("weight")
    if text is not None:
        tune.weight = node.to_int(text, "<weight>", minimum=100, maximum=1000)
    for dn in node.children("device"):
        path = dn.child_text("path")
        if path is None or not path.startswith("/"):
            raise XMLError("<blkiotune><device> needs an absolute <path>")
        dev = BlkioDevice(path=path)
        wt = dn.child_text("weight")
        if wt is not None:
            dev.weight = dn.to_int(wt, "<weight>", minimum=100, maximum=1000)
        for name in BLKIO_DEVICE_LIMITS:
            value = dn.child_text(name)
            if value is not None:
                top = _U32 if "iops" in name else _U64
                dev.limits[name] = dn.to_int(value, f"<{name}>", minimum=0, maximum=top)
        dn.finish()
        if any(d.path == path for d in tune.devices):
            raise XMLError(f"duplicate blkio device path '{path}'")
        tune.devices.append(dev)
    node.finish()
    return tune


# ---------------------------------------------------------------------------------------------
# <seclabel>


@dataclass(slots=True)
class SecLabel:
    """``<seclabel>``: the security label QEMU runs with (``model='dac'``: user:group)."""

    type: str = "dynamic"  # dynamic | static | none
    model: str | None = None
    relabel: bool | None = None
    label: str | None = None
    imagelabel: str | None = None
    baselabel: str | None = None

    def format_xml(self, parent: XElem) -> None:
        el = parent.add(
            "seclabel", {"type": self.type, "model": self.model, "relabel": self.relabel}
        )
        for tag in ("label", "imagelabel", "baselabel"):
            value = getattr(self, tag)
            if value is not None:
                el.add(tag, text=value)


def parse_seclabel(node: Node) -> SecLabel:
    kind = node.choice("type", ("dynamic", "static", "none"), "dynamic") or "dynamic"
    sl = SecLabel(type=kind, model=node.attr("model"), relabel=node.yesno("relabel"))
    for tag in ("label", "imagelabel", "baselabel"):
        value = node.child_text(tag)
        if value is not None:
            setattr(sl, tag, value)
    node.finish()
    if kind == "static" and sl.label is None:
        raise XMLError("security label is missing for static <seclabel>")
    if kind == "none" and sl.relabel:
        raise XMLError("<seclabel type='none'> cannot relabel")
    if kind == "dynamic" and sl.relabel is False:
        raise XMLError("<seclabel type='dynamic'> must relabel")
    if sl.baselabel is not None and kind != "dynamic":
        raise XMLError("only a dynamic <seclabel> has a <baselabel>")
    return sl


# ---------------------------------------------------------------------------------------------
# disks: <iotune>, <blockio>, <geometry>

#: ``<iotune>`` limits, in libvirt's order.
IOTUNE_LIMITS = tuple(
    f"{kind}_{what}_sec{suffix}"
    for kind in ("total", "read", "write")
    for what in ("bytes", "iops")
    for suffix in ("", "_max", "_max_length")
)
IOTUNE_ORDER = (
    *(f"{k}_{w}_sec" for w in ("bytes", "iops") for k in ("total", "read", "write")),
    *(f"{k}_{w}_sec_max" for w in ("bytes", "iops") for k in ("total", "read", "write")),
    "size_iops_sec",
    "group_name",
    *(f"{k}_{w}_sec_max_length" for w in ("bytes", "iops") for k in ("total", "read", "write")),
)


@dataclass(slots=True)
class IOTune:
    """A disk's ``<iotune>``: QEMU's throttling of its I/O."""

    limits: dict[str, int] = field(default_factory=dict)
    size_iops_sec: int | None = None
    group_name: str | None = None

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("iotune")
        for name in IOTUNE_ORDER:
            if name == "size_iops_sec":
                if self.size_iops_sec is not None:
                    el.add(name, text=str(self.size_iops_sec))
            elif name == "group_name":
                if self.group_name is not None:
                    el.add(name, text=self.group_name)
            elif self.limits.get(name):
                el.add(name, text=str(self.limits[name]))


def parse_iotune(node: Node) -> IOTune:
    tune = IOTune()
    for name in IOTUNE_LIMITS:
        text = node.child_text(name)
        if text is not None:
            tune.limits[name] = node.to_int(text, f"<{name}>", minimum=0, maximum=(1 << 53) - 1)
    size = node.child_text("size_iops_sec")
    if size is not None:
        tune.size_iops_sec = node.to_int(size, "<size_iops_sec>", minimum=0, maximum=_U32)
    tune.group_name = node.child_text("group_name")
    node.finish()
    lim = tune.limits
    for what in ("bytes", "iops"):
        if lim.get(f"total_{what}_sec") and (
            lim.get(f"read_{what}_sec") or lim.get(f"write_{what}_sec")
        ):
            raise XMLError(f"total and read/write {what} cannot be set at the same time")
        if lim.get(f"total_{what}_sec_max") and (
            lim.get(f"read_{what}_sec_max") or lim.get(f"write_{what}_sec_max")
        ):
            raise XMLError(f"total and read/write {what}_sec_max cannot be set at the same time")
        for kind in ("total", "read", "write"):
            base, peak = lim.get(f"{kind}_{what}_sec", 0), lim.get(f"{kind}_{what}_sec_max", 0)
            if peak and base and peak < base:
                raise XMLError(f"{kind}_{what}_sec_max cannot be lower than {kind}_{what}_sec")
            if peak and not base:
                raise XMLError(f"{kind}_{what}_sec_max needs {kind}_{what}_sec to be set as well")
            if lim.get(f"{kind}_{what}_sec_max_length") and not peak:
                raise XMLError(f"{kind}_{what}_sec_max_length needs {kind}_{what}_sec_max")
    if tune.size_iops_sec and not any(lim.get(f"{k}_iops_sec") for k in ("total", "read", "write")):
        raise XMLError("size_iops_sec needs an iops limit")
    if tune.group_name is not None and not any(lim.values()):
        raise XMLError("group_name needs at least one limit")
    return tune


@dataclass(slots=True)
class BlockIO:
    """``<blockio>``: the block sizes the guest sees."""

    logical_block_size: int | None = None
    physical_block_size: int | None = None
    discard_granularity: int | None = None

    def format_xml(self, parent: XElem) -> None:
        parent.add(
            "blockio",
            {
                "logical_block_size": self.logical_block_size,
                "physical_block_size": self.physical_block_size,
                "discard_granularity": self.discard_granularity,
            },
        )


def _block_size(node: Node, name: str) -> int | None:
    value = node.integer(name, minimum=0, maximum=_U32)
    if value is not None and value and (value < 512 or value & (value - 1)):
        raise XMLError(f"{name} of {node.where} must be a power of two of at least 512")
    return value


def parse_blockio(node: Node) -> BlockIO:
    bio = BlockIO(
        logical_block_size=_block_size(node, "logical_block_size"),
        physical_block_size=_block_size(node, "physical_block_size"),
        discard_granularity=node.integer("discard_granularity", minimum=0, maximum=_U32),
    )
    node.finish()
    lbs, pbs = bio.logical_block_size, bio.physical_block_size
    if lbs and pbs and pbs < lbs:
        raise XMLError("physical_block_size cannot be smaller than logical_block_size")
    return bio


@dataclass(slots=True)
class Geometry:
    """``<geometry>``: the disk's BIOS CHS geometry."""

    cyls: int
    heads: int
    secs: int
    trans: str | None = None  # auto | lba | none

    def format_xml(self, parent: XElem) -> None:
        parent.add(
            "geometry",
            {"cyls": self.cyls, "heads": self.heads, "secs": self.secs, "trans": self.trans},
        )


def parse_geometry(node: Node) -> Geometry:
    def need(name: str, top: int) -> int:
        value = node.integer(name, minimum=1, maximum=top)
        if value is None:
            raise XMLError(f"missing attribute '{name}' of {node.where}")
        return value

    geo = Geometry(
        cyls=need("cyls", _U32),
        heads=need("heads", 16),
        secs=need("secs", 255),
        trans=node.choice("trans", ("auto", "lba", "none")),
    )
    node.finish()
    return geo


__all__ = [
    "BLKIO_DEVICE_LIMITS",
    "CPU_BANDWIDTH",
    "IOTUNE_LIMITS",
    "MEMTUNE_LIMITS",
    "BlkioDevice",
    "BlkioTune",
    "BlockIO",
    "CPUTune",
    "Geometry",
    "IOTune",
    "MemTune",
    "SecLabel",
    "parse_blkiotune",
    "parse_blockio",
    "parse_cputune",
    "parse_geometry",
    "parse_iotune",
    "parse_memtune",
    "parse_seclabel",
]
