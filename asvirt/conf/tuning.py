"""Resource tuning in libvirt's domain XML, parsed and written as libvirt does.

``<cputune>`` (CPU pinning and scheduling policies of the vCPU, emulator and I/O threads,
the cgroup CPU bandwidth, and resctrl's cache and memory-bandwidth allocation),
``<memtune>``, ``<blkiotune>``, ``<seclabel>``, and a disk's ``<iotune>``, ``<blockio>``,
``<geometry>``. The driver decides how each is honoured (the QEMU driver:
:mod:`asvirt.drivers.qemu.tuning`); this module knows only the XML.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from ..errors import ConfigUnsupportedError, XMLError
from .units import parse_kib, parse_scaled
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


#: ``scheduler=`` values of libvirt's ``schedparam``; the real-time ones take a priority.
SCHED_POLICIES = ("batch", "idle", "fifo", "rr")
REALTIME_POLICIES = ("fifo", "rr")

#: ``<cache type=>`` of a ``<cachetune>``, in the order libvirt writes them.
CACHE_TYPES = ("both", "code", "data")

#: The units libvirt writes a cache size in: the largest that divides it.
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


@dataclass(frozen=True, slots=True)
class Sched:
    """``scheduler=`` and ``priority=`` of a ``<vcpusched>``/``<iothreadsched>``/
    ``<emulatorsched>``: the Linux scheduling policy of the threads it names."""

    policy: str  # one of SCHED_POLICIES
    priority: int | None = None  # the real-time policies only

    def attrs(self) -> dict[str, object]:
        return {"scheduler": self.policy, "priority": self.priority}


@dataclass(frozen=True, slots=True)
class CacheAlloc:
    """``<cachetune><cache>``: a share of one cache (``id``) of one level, in bytes."""

    id: int
    level: int
    type: str  # one of CACHE_TYPES
    size: int


@dataclass(slots=True)
class Resctrl:
    """One resctrl group of the domain: the vCPUs a ``<cachetune>`` and/or a
    ``<memorytune>`` (naming the same vCPUs, as libvirt allows) put together."""

    vcpus: frozenset[int]
    caches: list[CacheAlloc] = field(default_factory=list)
    #: ``<cachetune><monitor level= vcpus=>``: (level, vCPUs)
    cache_monitors: list[tuple[int, frozenset[int]]] = field(default_factory=list)
    #: ``<memorytune><node id= bandwidth=>``: memory controller id -> percent
    bandwidth: dict[int, int] = field(default_factory=dict)
    #: ``<memorytune><monitor vcpus=>``
    memory_monitors: list[frozenset[int]] = field(default_factory=list)
    cachetune: bool = False
    memorytune: bool = False

    @property
    def allocates(self) -> bool:
        """Whether the group has an allocation of its own (else its monitors watch vCPUs
        that stay in the host's default group, as in libvirt)."""
        return bool(self.caches or self.bandwidth)

    @property
    def name(self) -> str:
        """libvirt's id of the group: ``vcpus_0-1``."""
        return f"vcpus_{format_cpuset(self.vcpus)}"


def format_cpuset(cpus: set[int] | frozenset[int]) -> str:
    """A set of numbers as libvirt writes a bitmap: ``0-2,5``."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(cpus):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [n]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def _pretty_size(size: int) -> tuple[int, str]:
    unit = 0
    while unit + 1 < len(_SIZE_UNITS) and size and size % 1024 == 0:
        size //= 1024
        unit += 1
    return size, _SIZE_UNITS[unit]


@dataclass(slots=True)
class CPUTune:
    """``<cputune>``: CPU bandwidth (cgroup cpu controller), thread pinning and scheduling
    policies, and resctrl cache/memory-bandwidth allocation."""

    #: name in :data:`CPU_BANDWIDTH` -> value
    bandwidth: dict[str, int] = field(default_factory=dict)
    #: vCPU id -> cpuset
    vcpupin: dict[int, str] = field(default_factory=dict)
    emulatorpin: str | None = None
    #: I/O thread id -> cpuset
    iothreadpin: dict[int, str] = field(default_factory=dict)
    #: vCPU id -> its scheduler (``<vcpusched>``, kept per vCPU as libvirt does)
    vcpusched: dict[int, Sched] = field(default_factory=dict)
    #: I/O thread id -> its scheduler
    iothreadsched: dict[int, Sched] = field(default_factory=dict)
    emulatorsched: Sched | None = None
    #: ``<cachetune>``/``<memorytune>`` groups, in document order
    resctrl: list[Resctrl] = field(default_factory=list)

    def format_xml(self, parent: XElem, *, live: bool = False) -> None:
        """``live``: a running domain's XML, where libvirt names each resctrl group (``id``)."""
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
        if self.emulatorsched is not None:
            el.add("emulatorsched", self.emulatorsched.attrs())
        # One element per thread, as libvirt writes them back.
        for vcpu in sorted(self.vcpusched):
            el.add("vcpusched", {"vcpus": vcpu, **self.vcpusched[vcpu].attrs()})
        for tid in sorted(self.iothreadsched):
            el.add("iothreadsched", {"iothreads": tid, **self.iothreadsched[tid].attrs()})
        for group in self.resctrl:
            if not group.cachetune:
                continue
            ct = el.add(
                "cachetune",
                {"vcpus": format_cpuset(group.vcpus), "id": group.name if live else None},
            )
            # libvirt's order: by level, then type, then cache id.
            for cache in sorted(
                group.caches, key=lambda c: (c.level, CACHE_TYPES.index(c.type), c.id)
            ):
                size, unit = _pretty_size(cache.size)
                attrs = {"id": cache.id, "level": cache.level, "type": cache.type}
                ct.add("cache", {**attrs, "size": size, "unit": unit})
            for level, vcpus in group.cache_monitors:
                ct.add("monitor", {"level": level, "vcpus": format_cpuset(vcpus)})
        for group in self.resctrl:
            if not group.memorytune:
                continue
            mt = el.add("memorytune", {"vcpus": format_cpuset(group.vcpus)})
            for node_id in sorted(group.bandwidth):
                mt.add("node", {"id": node_id, "bandwidth": group.bandwidth[node_id]})
            for vcpus in group.memory_monitors:
                mt.add("monitor", {"vcpus": format_cpuset(vcpus)})


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


def _parse_sched(node: Node) -> Sched:
    """libvirt's ``schedparam``: a policy, and a priority for the real-time ones only."""
    policy = node.choice("scheduler", SCHED_POLICIES)
    if policy is None:
        raise XMLError(f"missing attribute 'scheduler' of {node.where}")
    if policy not in REALTIME_POLICIES:
        if node.attr("priority") is not None:
            raise XMLError(
                f"{node.where}: a priority is only for the fifo and rr schedulers, not '{policy}'"
            )
        return Sched(policy)
    priority = node.integer("priority", minimum=0, maximum=65535)
    if priority is None:
        raise XMLError(f"missing attribute 'priority' of {node.where} (scheduler='{policy}')")
    return Sched(policy, priority)


def _parse_scheds(
    node: Node,
    tag: str,
    attr: str,
    into: dict[int, Sched],
    known: Collection[int],
    what: str,
    parse_cpuset: Callable[[str], set[int]],
) -> None:
    """``<vcpusched vcpus=>``/``<iothreadsched iothreads=>``: the scheduler of each thread
    the set names; each thread may be named once."""
    for el in node.children(tag):
        ids = parse_cpuset(el.required(attr))
        sched = _parse_sched(el)
        el.finish()
        for ident in sorted(ids):
            if ident not in known:
                raise XMLError(f"<{tag} {attr}=> names {what} {ident}, which the domain lacks")
            if ident in into:
                raise XMLError(f"<{tag}> attributes '{attr}' must not overlap ({what} {ident})")
            into[ident] = sched


def _resctrl_vcpus(
    node: Node, max_vcpus: int, parse_cpuset: Callable[[str], set[int]]
) -> frozenset[int]:
    """A ``vcpus=`` of ``<cachetune>``/``<memorytune>``/``<monitor>``, cut to the vCPUs the
    domain has (libvirt shrinks the set the same way)."""
    return frozenset(c for c in parse_cpuset(node.required("vcpus")) if c < max_vcpus)


def _resctrl_group(tune: CPUTune, vcpus: frozenset[int], tag: str) -> Resctrl:
    """The group of ``vcpus``: a new one, or the one a ``<cachetune>`` or ``<memorytune>``
    of exactly those vCPUs made; vCPU sets that overlap otherwise are refused."""
    for group in tune.resctrl:
        if group.vcpus == vcpus:
            if getattr(group, tag):
                raise XMLError(f"identical vcpus in <{tag}>s found ({format_cpuset(vcpus)})")
            return group
        if group.vcpus & vcpus:
            raise XMLError(
                f"overlapping vcpus in resctrl groups: <{tag} vcpus='{format_cpuset(vcpus)}'> "
                f"and vcpus '{format_cpuset(group.vcpus)}'"
            )
    group = Resctrl(vcpus=vcpus)
    tune.resctrl.append(group)
    return group


def _check_monitor(group: Resctrl, vcpus: frozenset[int], others: list[frozenset[int]]) -> None:
    """libvirt's rules for a resctrl monitor: vCPUs of its group, not the same as another
    monitor's of its kind, and not sharing vCPUs with another unless one of them watches
    the whole (allocating) group."""
    if not vcpus:
        raise XMLError("a resctrl <monitor> names no vCPU of the domain")
    if not vcpus <= group.vcpus:
        raise XMLError(
            f"<monitor vcpus='{format_cpuset(vcpus)}'> names vCPUs outside its group "
            f"'{format_cpuset(group.vcpus)}'"
        )
    for other in others:
        if other == vcpus:
            raise XMLError(f"identical vcpus found in monitors ({format_cpuset(vcpus)})")
        whole = group.vcpus in (vcpus, other) and group.allocates
        if other & vcpus and not whole:
            raise XMLError(f"vcpus of resctrl monitors overlap ({format_cpuset(other & vcpus)})")


def _parse_cachetune(
    node: Node, tune: CPUTune, max_vcpus: int, parse_cpuset: Callable[[str], set[int]]
) -> None:
    vcpus = _resctrl_vcpus(node, max_vcpus, parse_cpuset)
    node.attr("id")  # the group's name in live XML: derived from vcpus, as libvirt's is
    caches: list[CacheAlloc] = []
    for cn in node.children("cache"):

        def need(name: str, cn: Node = cn) -> int:
            value = cn.integer(name, minimum=0, maximum=_U32)
            if value is None:
                raise XMLError(f"missing attribute '{name}' of <cachetune><cache>")
            return value

        cache_id, level = need("id"), need("level")
        kind = cn.choice("type", CACHE_TYPES)
        if kind is None:
            raise XMLError("missing attribute 'type' of <cachetune><cache>")
        size = parse_scaled(cn.attr("size"), cn.attr("unit"), what="cache size", default_unit="b")
        if size > _U64:
            raise XMLError("cache size is too large")
        cn.finish()
        for other in caches:
            if ((other.level, other.id) == (level, cache_id) and "both" in (other.type, kind)) or (
                (other.level, other.id, other.type) == (level, cache_id, kind)
            ):
                raise XMLError(
                    f"colliding cache allocations for cache level '{level}' id '{cache_id}', "
                    f"type '{kind}'"
                )
        caches.append(CacheAlloc(cache_id, level, kind, size))
    monitors = node.children("monitor")
    if not caches and not monitors:
        raise XMLError("<cachetune> needs a <cache> or a <monitor>")
    if not vcpus:
        node.ignore("monitor")
        node.finish()
        return  # none of the domain's vCPUs: libvirt drops the element
    group = _resctrl_group(tune, vcpus, "cachetune")
    group.cachetune = True
    group.caches = caches
    for mn in monitors:
        mon_level = mn.integer("level", minimum=0, maximum=_U32)
        if mon_level is None:
            raise XMLError("missing attribute 'level' of <cachetune><monitor>")
        if mon_level != 3:
            raise XMLError(f"invalid cache monitor level {mon_level}: resctrl monitors level 3")
        mvcpus = _resctrl_vcpus(mn, max_vcpus, parse_cpuset)
        mn.finish()
        _check_monitor(group, mvcpus, [v for _, v in group.cache_monitors])
        group.cache_monitors.append((mon_level, mvcpus))
    node.finish()


def _parse_memorytune(
    node: Node, tune: CPUTune, max_vcpus: int, parse_cpuset: Callable[[str], set[int]]
) -> None:
    vcpus = _resctrl_vcpus(node, max_vcpus, parse_cpuset)
    bandwidth: dict[int, int] = {}
    for nn in node.children("node"):
        node_id = nn.integer("id", minimum=0, maximum=_U32)
        percent = nn.integer("bandwidth", minimum=0, maximum=_U32)
        if node_id is None or percent is None:
            raise XMLError("<memorytune><node> needs 'id' and 'bandwidth'")
        nn.finish()
        if percent > 100:
            raise XMLError(f"memory bandwidth {percent} of node {node_id} exceeds 100 (percent)")
        if node_id in bandwidth:
            raise XMLError(f"memory bandwidth already defined for node {node_id}")
        bandwidth[node_id] = percent
    monitors = node.children("monitor")
    if not bandwidth and not monitors:
        raise XMLError("<memorytune> needs a <node> or a <monitor>")
    if not vcpus:
        node.ignore("monitor")
        node.finish()
        return
    group = _resctrl_group(tune, vcpus, "memorytune")
    group.memorytune = True
    group.bandwidth = bandwidth
    for mn in monitors:
        mvcpus = _resctrl_vcpus(mn, max_vcpus, parse_cpuset)
        mn.finish()
        _check_monitor(group, mvcpus, group.memory_monitors)
        group.memory_monitors.append(mvcpus)
    node.finish()


def parse_cputune(
    node: Node,
    parse_cpuset: Callable[[str], set[int]],
    *,
    max_vcpus: int,
    iothread_ids: Collection[int],
) -> CPUTune:
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
    for vcpu in tune.vcpupin:
        if vcpu >= max_vcpus:
            raise XMLError(f"vcpupin names vcpu {vcpu}, but the domain has {max_vcpus}")
    for tid in tune.iothreadpin:
        if tid not in iothread_ids:
            raise XMLError(f"iothreadpin names iothread {tid}, which the domain lacks")
    vcpus = range(max_vcpus)
    _parse_scheds(node, "vcpusched", "vcpus", tune.vcpusched, vcpus, "vcpu", parse_cpuset)
    _parse_scheds(
        node,
        "iothreadsched",
        "iothreads",
        tune.iothreadsched,
        iothread_ids,
        "iothread",
        parse_cpuset,
    )
    emu = node.child("emulatorsched")
    if emu is not None:
        tune.emulatorsched = _parse_sched(emu)
        emu.finish()
    for ct in node.children("cachetune"):
        _parse_cachetune(ct, tune, max_vcpus, parse_cpuset)
    for mt in node.children("memorytune"):
        _parse_memorytune(mt, tune, max_vcpus, parse_cpuset)
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


@dataclass(slots=True)
class DeviceSecLabel:
    """``<seclabel>`` in a disk's ``<source>``: how that one file is labelled, overriding the
    domain's (libvirt's per-device label). ``relabel='no'`` leaves the file as it is, even
    where the domain's files are given to QEMU's user."""

    model: str | None = None
    relabel: bool | None = None

    @property
    def dac_norelabel(self) -> bool:
        """Whether it keeps the DAC driver (the only one here) off the file."""
        return self.model in (None, "dac") and self.relabel is False

    def format_xml(self, parent: XElem) -> None:
        parent.add("seclabel", {"model": self.model, "relabel": self.relabel})


def parse_device_seclabels(src: Node) -> list[DeviceSecLabel]:
    """The ``<seclabel>`` elements of a device's ``<source>``, one per model."""
    out: list[DeviceSecLabel] = []
    for node in src.children("seclabel"):
        sl = DeviceSecLabel(model=node.attr("model"), relabel=node.yesno("relabel"))
        label = node.child_text("label")
        node.finish()
        if label is not None:
            if sl.relabel is False:
                raise XMLError(f"{node.where}: a label cannot go with relabel='no'")
            raise ConfigUnsupportedError(
                f"unsupported configuration: a <label> in {node.where}: asvirt gives a file "
                "to the user QEMU runs as, or with relabel='no' leaves it as it is"
            )
        if any(other.model == sl.model for other in out):
            raise XMLError(f"{src.where}: a security model may be named by one <seclabel> only")
        out.append(sl)
    return out


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
    problem = iotune_problem(tune)
    if problem is not None:
        raise XMLError(problem)
    return tune


def iotune_problem(tune: IOTune) -> str | None:
    """What is wrong with ``tune`` (libvirt's and QEMU's rules), or None: the one check of
    ``<iotune>`` in the XML and of a running disk's new limits (``blkdeviotune``)."""
    lim = tune.limits
    for what in ("bytes", "iops"):
        if lim.get(f"total_{what}_sec") and (
            lim.get(f"read_{what}_sec") or lim.get(f"write_{what}_sec")
        ):
            return f"total and read/write of {what}_sec cannot be set at the same time"
        if lim.get(f"total_{what}_sec_max") and (
            lim.get(f"read_{what}_sec_max") or lim.get(f"write_{what}_sec_max")
        ):
            return f"total and read/write of {what}_sec_max cannot be set at the same time"
        for kind in ("total", "read", "write"):
            base, peak = lim.get(f"{kind}_{what}_sec", 0), lim.get(f"{kind}_{what}_sec_max", 0)
            if peak and base and peak < base:
                return f"{kind}_{what}_sec_max cannot be lower than {kind}_{what}_sec"
            if peak and not base:
                return f"{kind}_{what}_sec_max needs {kind}_{what}_sec to be set as well"
            if lim.get(f"{kind}_{what}_sec_max_length") and not peak:
                return f"{kind}_{what}_sec_max_length needs {kind}_{what}_sec_max"
    if tune.size_iops_sec and not any(lim.get(f"{k}_iops_sec") for k in ("total", "read", "write")):
        return "size_iops_sec needs an iops limit"
    if tune.group_name is not None and not any(lim.values()):
        return "group_name needs at least one limit"
    return None


def iotune_params(tune: IOTune | None) -> dict[str, int | str]:
    """``tune`` as libvirt's ``virDomainGetBlockIoTune`` gives it: every parameter, in
    libvirt's order, 0 (or an empty group name) where none is set."""
    out: dict[str, int | str] = {}
    for name in IOTUNE_ORDER:
        if name == "group_name":
            out[name] = (tune.group_name if tune is not None else None) or ""
        elif name == "size_iops_sec":
            out[name] = (tune.size_iops_sec if tune is not None else None) or 0
        else:
            out[name] = tune.limits.get(name, 0) if tune is not None else 0
    return out


#: The parameters ``blkdeviotune`` sets together, as libvirt's ``SET_IOTUNE_DEFAULTS``:
#: setting one of a family's total/read/write clears the other two.
_IOTUNE_FAMILIES = tuple(
    tuple(f"{kind}_{what}_sec{suffix}" for kind in ("total", "read", "write"))
    for what in ("bytes", "iops")
    for suffix in ("", "_max", "_max_length")
)


def updated_iotune(current: IOTune | None, params: Mapping[str, int | str]) -> IOTune:
    """``current`` with libvirt's ``virDomainSetBlockIoTune`` parameters applied: a family
    given replaces the whole family (the others 0), one not given keeps its values, and a
    ``_max_length`` not given is dropped with its ``_max``. ValueError names a parameter
    that does not exist or a value out of range; :func:`iotune_problem` checks the rest."""
    old = iotune_params(current)
    for name, value in params.items():
        if name not in old:
            raise ValueError(f"unknown block I/O tuning parameter '{name}'")
        if name == "group_name":
            if not isinstance(value, str):
                raise ValueError("group_name must be a string")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a number of 0 or more")
        elif value > ((1 << 53) - 1 if name != "size_iops_sec" else _U32):
            raise ValueError(f"value '{value}' of '{name}' is too large")
    tune = IOTune()
    for family in _IOTUNE_FAMILIES:
        given = any(name in params for name in family)
        for name in family:
            value = params.get(name, 0) if given else old[name]
            assert isinstance(value, int)
            if value:
                tune.limits[name] = value
    for name in list(tune.limits):
        if name.endswith("_max_length") and name not in params and not tune.limits.get(name[:-7]):
            del tune.limits[name]
    size = params.get("size_iops_sec", old["size_iops_sec"])
    assert isinstance(size, int)
    tune.size_iops_sec = size or None
    group = params.get("group_name", old["group_name"])
    assert isinstance(group, str)
    tune.group_name = group or None
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
    "CACHE_TYPES",
    "CPU_BANDWIDTH",
    "IOTUNE_LIMITS",
    "MEMTUNE_LIMITS",
    "REALTIME_POLICIES",
    "SCHED_POLICIES",
    "BlkioDevice",
    "BlkioTune",
    "BlockIO",
    "CPUTune",
    "CacheAlloc",
    "DeviceSecLabel",
    "Geometry",
    "IOTune",
    "MemTune",
    "Resctrl",
    "Sched",
    "SecLabel",
    "format_cpuset",
    "iotune_params",
    "iotune_problem",
    "parse_blkiotune",
    "parse_blockio",
    "parse_cputune",
    "parse_device_seclabels",
    "parse_geometry",
    "parse_iotune",
    "parse_memtune",
    "parse_seclabel",
    "updated_iotune",
]
