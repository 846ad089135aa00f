"""Domain statistics, once for every hypervisor: libvirt's records from what a runtime measured.

A running domain's runtime (a QEMU runner, a simulated VM) measures what it can — CPU times,
vCPU threads, the balloon, block and interface counters — into a :class:`RuntimeSample`,
asking its hypervisor at most once per group (one ``query-blockstats``, one
``query-cpus-fast``, one ``qom-get`` of the balloon's statistics). This module turns a sample
and the domain's definition into what libvirt's API returns, with libvirt's field names and
in libvirt's order, so that ``virsh domstats`` habits, scripts and exporters carry over:

* :func:`record_params`: one domain's record of ``virConnectGetAllDomainStats``
  (``state.state``, ``cpu.time``, ``balloon.current``, ``vcpu.0.time``, ``net.0.rx.bytes``,
  ``block.0.rd.reqs``...);
* :func:`memory_stats`: ``virDomainMemoryStats`` (``actual``, ``swap_in``..., ``rss``);
* :func:`block_stats`: ``virDomainBlockStatsFlags`` (``rd_operations``, ``rd_bytes``...).

Sizes in KiB where libvirt uses KiB (memory), bytes for block devices, nanoseconds for times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..conf.devices import Disk
from ..conf.domain import DomainDef
from ..drivers.base import BlockInfo, InterfaceStats, StatsGroup
from ..errors import AsvirtError
from ..states import DomainState, StateReason

#: Every group a driver supports (what ``stats=0`` asks for, as in libvirt).
ALL_GROUPS = (
    StatsGroup.STATE
    | StatsGroup.CPU_TOTAL
    | StatsGroup.BALLOON
    | StatsGroup.VCPU
    | StatsGroup.INTERFACE
    | StatsGroup.BLOCK
)


class GroupBits:
    """:class:`StatsGroup`'s bits as plain ints, for code that runs per domain per call: a
    Flag's ``&`` costs microseconds, an int's does not."""

    STATE = int(StatsGroup.STATE)
    CPU_TOTAL = int(StatsGroup.CPU_TOTAL)
    BALLOON = int(StatsGroup.BALLOON)
    VCPU = int(StatsGroup.VCPU)
    INTERFACE = int(StatsGroup.INTERFACE)
    BLOCK = int(StatsGroup.BLOCK)


#: libvirt's ``virVcpuState``: an online vCPU is RUNNING, whatever the domain's state.
VCPU_RUNNING = 1

#: The guest's balloon statistics, in the order libvirt reports them (``memoryStats()`` keys);
#: ``actual`` comes before them and ``rss`` after.
GUEST_MEMORY_STATS = (
    "swap_in",
    "swap_out",
    "major_fault",
    "minor_fault",
    "unused",
    "available",
    "usable",
    "last_update",
    "disk_caches",
    "hugetlb_pgalloc",
    "hugetlb_pgfail",
)


@dataclasses.dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU time used by the whole hypervisor process, in nanoseconds."""

    total_ns: int
    user_ns: int
    system_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class VcpuSample:
    """One online vCPU: its state, and the time its thread ran, waited and was delayed (ns)."""

    state: int
    time_ns: int
    wait_ns: int
    delay_ns: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BlockCounters:
    """A disk's counters as the hypervisor sees its guest use them (None: not measured)."""

    rd_reqs: int | None = None
    rd_bytes: int | None = None
    rd_times: int | None = None
    wr_reqs: int | None = None
    wr_bytes: int | None = None
    wr_times: int | None = None
    fl_reqs: int | None = None
    fl_times: int | None = None
    errs: int | None = None


@dataclasses.dataclass(slots=True)
class RuntimeSample:
    """What a runtime measured for the groups asked of it; None: not asked, or not measured
    (the hypervisor did not answer in time, say)."""

    cpu: CpuTimes | None = None
    vcpus: list[VcpuSample] | None = None
    #: The balloon's current size (KiB).
    balloon_kib: int | None = None
    #: The guest's balloon statistics, named and ordered as :data:`GUEST_MEMORY_STATS`.
    guest_memory: dict[str, int] | None = None
    #: Resident set size of the hypervisor process (KiB).
    rss_kib: int | None = None
    #: By disk target (``vda``).
    blocks: dict[str, BlockCounters] | None = None
    #: By interface name (the tap, ``vnet0``), from the guest's side.
    nets: dict[str, InterfaceStats] | None = None


T = TypeVar("T")


class PendingSample(Protocol):
    """A runtime's sample whose hypervisor queries are asked and not yet answered
    (:meth:`~.domains.DomainRuntime.begin_sample`)."""

    async def result(self) -> RuntimeSample:
        """The sample once answered (or once the runtime stopped waiting). May return
        without a checkpoint: whoever awaits many of them checkpoints."""
        ...


class ReadySample:
    """A sample with nothing to wait for."""

    __slots__ = ("sample",)

    def __init__(self, sample: RuntimeSample) -> None:
        self.sample = sample

    async def result(self) -> RuntimeSample:
        return self.sample


class SampleScope:
    """What one statistics request reads once for all of its domains (a host-wide table,
    such as the interface counters), however many runtimes ask for it."""

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, read: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = read()
        value: T = self._memo[key]
        return value


def current_memory_kib(defn: DomainDef) -> int:
    """The memory a shut-off domain will start with (``<currentMemory>``)."""
    return defn.current_memory_kib or defn.memory_kib


def record_params(
    groups: StatsGroup,
    *,
    state: tuple[DomainState, StateReason],
    defn: DomainDef,
    sample: RuntimeSample | None,
    block_info: Callable[[Disk], BlockInfo],
) -> dict[str, Any]:
    """One domain's ``get_all_domain_stats`` record: libvirt's fields for ``groups``.

    ``sample`` is what the runtime measured (None for a shut-off domain: then only what the
    definition says is reported, as libvirt does); ``block_info`` sizes a disk's image
    (AsvirtError if it cannot: the sizes are left out).
    """
    params: dict[str, Any] = {}
    active = sample is not None
    wanted = int(groups)  # a Flag's & costs microseconds; an int's does not
    if wanted & GroupBits.STATE:
        params["state.state"] = int(state[0])
        params["state.reason"] = int(state[1])
    if wanted & GroupBits.CPU_TOTAL and sample is not None and sample.cpu is not None:
        params["cpu.time"] = sample.cpu.total_ns
        params["cpu.user"] = sample.cpu.user_ns
        params["cpu.system"] = sample.cpu.system_ns
        # libvirt's resctrl cache monitors: asvirt has none.
        params["cpu.cache.monitor.count"] = 0
    if wanted & GroupBits.BALLOON:
        current = sample.balloon_kib if sample is not None else None
        params["balloon.current"] = current if current is not None else current_memory_kib(defn)
        params["balloon.maximum"] = defn.memory_kib
        if sample is not None:
            for key, value in (sample.guest_memory or {}).items():
                params["balloon." + ("last-update" if key == "last_update" else key)] = value
            if sample.rss_kib is not None:
                params["balloon.rss"] = sample.rss_kib
    if wanted & GroupBits.VCPU:
        params["vcpu.current"] = defn.vcpus
        params["vcpu.maximum"] = defn.max_vcpus
        for i, vcpu in enumerate((sample.vcpus or []) if sample is not None else []):
            params[f"vcpu.{i}.state"] = vcpu.state
            params[f"vcpu.{i}.time"] = vcpu.time_ns
            params[f"vcpu.{i}.wait"] = vcpu.wait_ns
            if vcpu.delay_ns is not None:
                params[f"vcpu.{i}.delay"] = vcpu.delay_ns
    if wanted & GroupBits.INTERFACE and sample is not None:
        nets = sample.nets or {}
        params["net.count"] = len(defn.interfaces)
        for i, nic in enumerate(defn.interfaces):
            name = nic.target_dev if nic.type != "user" else None
            if name is None:
                continue  # no host device to count on (libvirt leaves these out too)
            params[f"net.{i}.name"] = name
            nic_stats = nets.get(name)
            if nic_stats is None:
                continue
            for key, value in _net_fields(nic_stats):
                if value >= 0:
                    params[f"net.{i}.{key}"] = value
    if wanted & GroupBits.BLOCK:
        blocks = (sample.blocks or {}) if sample is not None else {}
        params["block.count"] = len(defn.disks)
        for i, disk in enumerate(defn.disks):
            prefix = f"block.{i}."
            params[prefix + "name"] = disk.target
            if disk.shown_source is not None:
                params[prefix + "path"] = disk.shown_source
            counters = blocks.get(disk.target) if active else None
            if counters is not None:
                for key, value in _block_fields(counters):
                    params[prefix + key] = value
            if disk.source is None:
                continue  # no media, or a network disk: no image on this host to measure
            try:
                info = block_info(disk)
            except AsvirtError:
                continue  # an image that cannot be read now: libvirt leaves the sizes out
            params[prefix + "allocation"] = info.allocation
            params[prefix + "capacity"] = info.capacity
            params[prefix + "physical"] = info.physical
    return params


def _net_fields(s: InterfaceStats) -> tuple[tuple[str, int], ...]:
    return (
        ("rx.bytes", s.rx_bytes),
        ("rx.pkts", s.rx_packets),
        ("rx.errs", s.rx_errs),
        ("rx.drop", s.rx_drop),
        ("tx.bytes", s.tx_bytes),
        ("tx.pkts", s.tx_packets),
        ("tx.errs", s.tx_errs),
        ("tx.drop", s.tx_drop),
    )


def _block_fields(c: BlockCounters) -> list[tuple[str, int]]:
    fields = (
        ("rd.reqs", c.rd_reqs),
        ("rd.bytes", c.rd_bytes),
        ("rd.times", c.rd_times),
        ("wr.reqs", c.wr_reqs),
        ("wr.bytes", c.wr_bytes),
        ("wr.times", c.wr_times),
        ("fl.reqs", c.fl_reqs),
        ("fl.times", c.fl_times),
        ("errors", c.errs),
    )
    return [(k, v) for k, v in fields if v is not None]


def memory_stats(defn: DomainDef, sample: RuntimeSample) -> dict[str, int]:
    """``virDomainMemoryStats`` of a running domain, as libvirt-python's ``memoryStats()``
    returns it: the balloon's size (``actual``), the guest's statistics, QEMU's ``rss``."""
    stats: dict[str, int] = {}
    if defn.has_memballoon:
        if sample.balloon_kib is not None:
            stats["actual"] = sample.balloon_kib
        stats.update(sample.guest_memory or {})
    if sample.rss_kib is not None:
        stats["rss"] = sample.rss_kib
    return stats


#: ``virDomainBlockStatsFlags``' field names (VIR_DOMAIN_BLOCK_STATS_*), in virsh's order.
_BLOCK_STATS_FIELDS = (
    ("rd_operations", "rd_reqs"),
    ("rd_bytes", "rd_bytes"),
    ("wr_operations", "wr_reqs"),
    ("wr_bytes", "wr_bytes"),
    ("errs", "errs"),
    ("flush_operations", "fl_reqs"),
    ("rd_total_times", "rd_times"),
    ("wr_total_times", "wr_times"),
    ("flush_total_times", "fl_times"),
)


def block_stats(counters: list[BlockCounters]) -> dict[str, int]:
    """``virDomainBlockStatsFlags`` for one disk's counters, or the sum of several (the
    empty device name: the whole domain); fields nobody measured are left out."""
    stats: dict[str, int] = {}
    for name, attr in _BLOCK_STATS_FIELDS:
        values = [getattr(c, attr) for c in counters]
        if values and all(v is not None for v in values):
            stats[name] = sum(values)
    return stats


__all__ = [
    "ALL_GROUPS",
    "GUEST_MEMORY_STATS",
    "VCPU_RUNNING",
    "BlockCounters",
    "CpuTimes",
    "GroupBits",
    "PendingSample",
    "ReadySample",
    "RuntimeSample",
    "SampleScope",
    "VcpuSample",
    "block_stats",
    "current_memory_kib",
    "memory_stats",
    "record_params",
]
