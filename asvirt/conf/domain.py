"""The domain definition: libvirt's domain XML parsed into dataclasses, and written back.

:func:`parse_domain_xml` reads the XML strictly: every element and attribute is either
understood or reported with :class:`~asvirt.errors.ConfigUnsupportedError` naming it.
A driver then fills in what libvirt fills in at define time (the QEMU driver's
:func:`~asvirt.drivers.qemu.postparse.prepare_domain`: machine type, default and implicit
devices, addresses, aliases); its result is what asvirt stores and what ``dumpxml`` shows,
and :meth:`DomainDef.to_xml` of it validates against libvirt's own schema.

Nothing in :mod:`asvirt.conf` knows about any driver: it is libvirt's generic XML model.
"""

from __future__ import annotations

import bisect
import copy as _copy
import dataclasses
import functools
import re
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lxml import etree

from ..errors import ConfigUnsupportedError, XMLError
from . import devices as dev
from . import extdevices as xdev
from . import otherdevices as odev
from .devices import (
    RNG,
    Audio,
    Chardev,
    Controller,
    Disk,
    Graphics,
    Hub,
    Input,
    Interface,
    Memballoon,
    Panic,
    Video,
    Watchdog,
)
from .extdevices import TPM, Filesystem, Hostdev, Redirdev, Sound
from .memory import (
    MemoryDevice,
    NUMACell,
    NUMATune,
    parse_memory_device,
    parse_numa,
    parse_numatune,
)
from .moredevices import Crypto, Pstore, parse_crypto, parse_pstore
from .names import canonical_uuid, validate_name
from .otherdevices import IOMMU, RedirFilter, Shmem, Smartcard, Vsock
from .sysinfo import SysInfo, parse_iothreads, parse_sysinfo
from .tuning import (
    BlkioTune,
    CPUTune,
    MemTune,
    SecLabel,
    format_cpuset,
    parse_blkiotune,
    parse_cputune,
    parse_memtune,
    parse_seclabel,
)
from .units import parse_kib
from .vcpus import VcpuState, format_vcpus, parse_vcpus
from .xmlnode import InvalidValueError, Node, XElem
from .xmlsafe import parse_xml

LIFECYCLE_ACTIONS = ("destroy", "restart", "preserve", "rename-restart")
CRASH_ACTIONS = (*LIFECYCLE_ACTIONS, "coredump-destroy", "coredump-restart")
BOOT_DEVICES = ("hd", "cdrom", "network", "fd")
CPU_MODES = ("custom", "host-model", "host-passthrough", "maximum")
TIMER_NAMES = ("rtc", "pit", "hpet", "kvmclock", "hypervclock", "tsc")
#: ``<hyperv>`` features that are just on or off, in libvirt's order (QEMU 7.2 knows them all).
HYPERV_FLAGS = (
    "relaxed",
    "vapic",
    "vpindex",
    "runtime",
    "synic",
    "reset",
    "frequencies",
    "reenlightenment",
    "ipi",
    "evmcs",
    "avic",
    "emsr_bitmap",
    "xmm_input",
)
#: Every ``<hyperv>`` feature, in the order libvirt writes them.
HYPERV_FEATURES = (
    "relaxed",
    "vapic",
    "spinlocks",
    "vpindex",
    "runtime",
    "synic",
    "stimer",
    "reset",
    "vendor_id",
    "frequencies",
    "reenlightenment",
    "tlbflush",
    "ipi",
    "evmcs",
    "avic",
    "emsr_bitmap",
    "xmm_input",
)
KVM_FEATURES = ("hidden", "hint-dedicated", "poll-control", "pv-ipi")
FIRMWARE_FEATURES = ("enrolled-keys", "secure-boot")


# ---------------------------------------------------------------------------------------------
# pieces of the definition


@dataclass(slots=True)
class Loader:
    """``<os><loader>``: the firmware image (a ROM, or a pflash for UEFI)."""

    path: str | None = None
    readonly: bool | None = None
    type: str | None = None  # rom | pflash
    secure: bool | None = None
    stateless: bool | None = None
    format: str | None = None  # raw (the only format QEMU 7.2 maps to pflash here)


@dataclass(slots=True)
class NVRam:
    """``<os><nvram>``: the per-domain copy of UEFI's variable store, and its template."""

    path: str | None = None
    template: str | None = None
    format: str | None = None
    template_format: str | None = None


@dataclass(slots=True)
class OSDef:
    """``<os>``: firmware, machine, boot order and direct kernel boot."""

    type: str = "hvm"
    arch: str = ""
    machine: str | None = None
    #: ``<os firmware=...>``: 'efi' or 'bios' asks the driver to pick the firmware itself.
    firmware: str | None = None
    #: ``<os><firmware><feature name=... enabled=.../>``: what the picked firmware must do.
    firmware_features: dict[str, bool] = field(default_factory=dict)
    loader: Loader | None = None
    nvram: NVRam | None = None
    boot_devices: list[str] = field(default_factory=list)
    bootmenu: bool | None = None
    bootmenu_timeout: int | None = None
    reboot_timeout: int | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    #: ``<smbios mode=...>``: 'sysinfo' gives the guest the domain's ``<sysinfo>``.
    smbios_mode: str | None = None


@dataclass(slots=True)
class HyperV:
    """``<features><hyperv>``: the Hyper-V enlightenments Windows guests use."""

    mode: str = "custom"  # custom | passthrough
    #: feature name -> 'on' | 'off' (``HYPERV_FEATURES``)
    features: dict[str, str] = field(default_factory=dict)
    spinlock_retries: int | None = None
    stimer_direct: str | None = None
    vendor_id: str | None = None
    tlbflush_direct: str | None = None
    tlbflush_extended: str | None = None

    def on(self, name: str) -> bool:
        return self.features.get(name) == "on"


@dataclass(slots=True)
class Features:
    """``<features>``: each is None (absent), 'on' or 'off'."""

    acpi: str | None = None
    apic: str | None = None
    apic_eoi: str | None = None
    pae: str | None = None
    hap: str | None = None
    vmport: str | None = None
    smm: str | None = None
    #: ``<smm><tseg unit=...>`` in KiB.
    smm_tseg_kib: int | None = None
    hyperv: HyperV | None = None
    #: ``<kvm>``: feature name -> 'on' | 'off' (``KVM_FEATURES``).
    kvm: dict[str, str] = field(default_factory=dict)
    pvspinlock: str | None = None
    vmcoreinfo: str | None = None
    pmu: str | None = None
    ioapic: str | None = None  # driver: kvm | qemu
    msrs_unknown: str | None = None  # ignore | fault
    #: ``<tcg><tb-cache unit=...>`` in KiB.
    tcg_tb_cache_kib: int | None = None

    def is_empty(self) -> bool:
        simple = (self.acpi, self.apic, self.pae, self.hap, self.vmport, self.smm)
        more = (self.hyperv, self.pvspinlock, self.vmcoreinfo, self.pmu, self.ioapic)
        return (
            all(v is None for v in (*simple, *more, self.msrs_unknown, self.tcg_tb_cache_kib))
            and not self.kvm
        )


@dataclass(slots=True)
class CPUTopology:
    sockets: int
    dies: int | None
    clusters: int | None
    cores: int
    threads: int

    @property
    def total(self) -> int:
        return self.sockets * (self.dies or 1) * (self.clusters or 1) * self.cores * self.threads


@dataclass(slots=True)
class CPUFeature:
    name: str
    policy: str  # force | require | optional | disable | forbid


@dataclass(slots=True)
class CPUDef:
    """``<cpu>``."""

    mode: str | None = None
    match: str | None = None
    check: str | None = None
    migratable: str | None = None
    model: str | None = None
    fallback: str | None = None
    topology: CPUTopology | None = None
    features: list[CPUFeature] = field(default_factory=list)
    #: ``<numa>``: the guest's NUMA cells (empty: one node, as QEMU makes it).
    numa: list[NUMACell] = field(default_factory=list)


@dataclass(slots=True)
class Timer:
    name: str
    present: bool | None = None
    tickpolicy: str | None = None
    track: str | None = None
    catchup: dict[str, int] = field(default_factory=dict)
    #: tsc only: the guest's TSC frequency in Hz, and libvirt's mode.
    frequency: int | None = None
    mode: str | None = None


@dataclass(slots=True)
class MemoryBacking:
    """``<memoryBacking>``: where guest RAM comes from and whether others may map it."""

    source: str | None = None  # anonymous | memfd | file
    access: str | None = None  # shared | private
    allocation: str | None = None  # immediate | ondemand
    #: ``<allocation threads=>``: threads QEMU preallocates with (``prealloc-threads``).
    allocation_threads: int | None = None
    nosharepages: bool = False
    locked: bool = False
    discard: bool = False
    #: ``<hugepages>``: guest RAM on hugetlbfs, of ``hugepage_size_kib`` pages (None: the
    #: host's default size).
    hugepages: bool = False
    hugepage_size_kib: int | None = None
    #: ``<page size= nodeset=>``: the page size of the guest NUMA nodes named, in order.
    node_pages: list[NodePages] = field(default_factory=list)
    #: Whether nodes no ``node_pages`` names get huge pages too: a ``<page>`` without
    #: nodeset, or a bare ``<hugepages/>``.
    default_page: bool = True

    def page_kib_for(self, node: int | None) -> int | None:
        """The huge page size (KiB) backing guest NUMA node ``node`` (None: the RAM of a
        domain without NUMA cells, which is node 0), 0 for the host's default size, or None
        for ordinary memory.

        As libvirt chooses: the ``<page>`` whose nodeset names the node, else the one
        without a nodeset; a node no ``<page>`` names gets no huge pages.
        """
        if not self.hugepages:
            return None
        for pages in self.node_pages:
            if (node or 0) in pages.nodes:
                return pages.size_kib
        if not self.default_page:
            return None
        return self.hugepage_size_kib or 0


@dataclass(slots=True, frozen=True)
class NodePages:
    """One ``<hugepages><page nodeset=...>``: guest NUMA nodes backed by pages of a size."""

    size_kib: int
    nodeset: str
    nodes: frozenset[int]


@dataclass(slots=True)
class Clock:
    """``<clock>``."""

    offset: str = "utc"
    adjustment: str | None = None  # seconds, or 'reset'
    basis: str | None = None
    start: int | None = None  # offset='absolute'
    timers: list[Timer] = field(default_factory=list)

    def timer(self, name: str) -> Timer | None:
        for t in self.timers:
            if t.name == name:
                return t
        return None


# ---------------------------------------------------------------------------------------------
# the definition


@dataclass(slots=True)
class DomainDef:
    """A domain's configuration.

    Mutable and copyable (:meth:`copy`). Devices live in one list per kind, in the order
    libvirt keeps them. ``memballoon`` is a :class:`~asvirt.conf.devices.Memballoon` or None
    (``model='none'`` is kept as an object, as libvirt does); :attr:`has_memballoon` says
    whether the guest has a working balloon.
    """

    name: str
    uuid: str
    domain_type: str = "qemu"
    title: str | None = None
    description: str | None = None
    metadata: list[str] = field(default_factory=list)
    memory_kib: int = 0
    current_memory_kib: int = 0  # 0 (as parsed without one) means all of memory_kib
    dump_core: str | None = None
    vcpus: int = 1
    max_vcpus: int = 1
    #: ``<vcpus>``: each vCPU's state (enabled, hotpluggable, order), or None when the XML
    #: has none (libvirt's ``individualvcpus``); a running domain gets one once a vCPU is
    #: plugged, so a restore plugs the same devices.
    vcpu_states: list[VcpuState] | None = None
    cpuset: str | None = None
    #: ``<vcpu placement='auto'>``: the vCPUs go where numad advises at start (the CPUs of
    #: the nodes it names become ``cpuset`` in the running definition, not shown).
    placement_auto: bool = False
    os: OSDef = field(default_factory=OSDef)
    features: Features = field(default_factory=Features)
    cpu: CPUDef | None = None
    clock: Clock = field(default_factory=Clock)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    memory_backing: MemoryBacking | None = None
    #: ``<maxMemory slots=...>``: the most memory devices may bring the guest to.
    max_memory_kib: int | None = None
    max_memory_slots: int | None = None
    numatune: NUMATune | None = None
    sysinfos: list[SysInfo] = field(default_factory=list)
    #: ``<genid>``: the VM generation id (a UUID the guest sees change on snapshots' reverts).
    genid: str | None = None
    #: The I/O thread ids (``<iothreads>``, ``<iothreadids>``), and whether ids were given.
    iothread_ids: list[int] = field(default_factory=list)
    iothread_ids_given: bool = False
    suspend_to_mem: bool | None = None
    suspend_to_disk: bool | None = None
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    serials: list[Chardev] = field(default_factory=list)
    parallels: list[Chardev] = field(default_factory=list)
    consoles: list[Chardev] = field(default_factory=list)
    channels: list[Chardev] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    graphics: list[Graphics] = field(default_factory=list)
    audios: list[Audio] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)
    hubs: list[Hub] = field(default_factory=list)
    watchdogs: list[Watchdog] = field(default_factory=list)
    memballoon: Memballoon | None = None
    rngs: list[RNG] = field(default_factory=list)
    panics: list[Panic] = field(default_factory=list)
    filesystems: list[Filesystem] = field(default_factory=list)
    hostdevs: list[Hostdev] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    redirdevs: list[Redirdev] = field(default_factory=list)
    tpms: list[TPM] = field(default_factory=list)
    redirfilter: RedirFilter | None = None
    shmems: list[Shmem] = field(default_factory=list)
    iommu: IOMMU | None = None
    vsock: Vsock | None = None
    memory_devices: list[MemoryDevice] = field(default_factory=list)
    smartcards: list[Smartcard] = field(default_factory=list)
    cryptos: list[Crypto] = field(default_factory=list)
    pstore: Pstore | None = None
    #: ``<cputune>``, ``<memtune>``, ``<blkiotune>`` (see :mod:`asvirt.conf.tuning`).
    cputune: CPUTune | None = None
    memtune: MemTune | None = None
    blkiotune: BlkioTune | None = None
    seclabels: list[SecLabel] = field(default_factory=list)

    # -- convenience views ------------------------------------------------------------------------

    @property
    def arch(self) -> str:
        """``<os><type arch=...>`` (the host's architecture once prepared)."""
        return self.os.arch

    @arch.setter
    def arch(self, value: str) -> None:
        self.os.arch = value

    @property
    def machine(self) -> str | None:
        """``<os><type machine=...>`` as written, or canonical once prepared."""
        return self.os.machine

    @machine.setter
    def machine(self, value: str | None) -> None:
        self.os.machine = value

    @property
    def initial_memory_kib(self) -> int:
        """The memory the guest boots with: ``<memory>`` less what memory devices bring."""
        return self.memory_kib - sum(m.size_kib for m in self.memory_devices if m.in_ram)

    @property
    def has_memballoon(self) -> bool:
        return self.memballoon is not None and self.memballoon.model != "none"

    def controller(self, kind: str, index: int) -> Controller | None:
        """The first controller of type ``kind`` with ``index`` (USB companions share one)."""
        for ctl in self.controllers:
            if ctl.type == kind and ctl.index == index:
                return ctl
        return None

    def add_controller(self, ctl: Controller) -> None:
        """Add ``ctl`` where libvirt would: with its type's others, in index order."""
        insert_controller(self.controllers, ctl)

    def chardevs(self) -> list[Chardev]:
        return [*self.serials, *self.parallels, *self.consoles, *self.channels]

    def chardev_ids(self) -> list[str]:
        """The QEMU chardev ids (``charserial0``...) of the pty-backed character devices.

        QMP's ``query-chardev`` reports each one's ``/dev/pts/N``; pass it to
        :meth:`set_pty_path` to have the live XML show it, as libvirt does.
        """
        seen: list[str] = []
        for chr_ in self.chardevs():
            if chr_.type == "pty" and chr_.chardev_id and chr_.chardev_id not in seen:
                seen.append(chr_.chardev_id)
        return seen

    def set_pty_path(self, chardev_id: str, path: str) -> None:
        """Record the pty QEMU allocated for ``chardev_id`` (a console sharing it gets it too)."""
        found = False
        for chr_ in self.chardevs():
            if chr_.chardev_id == chardev_id and chr_.type == "pty":
                chr_.source_path = path
                found = True
        if not found:
            raise KeyError(chardev_id)

    def copy(self) -> DomainDef:
        """A deep copy (several times faster than :func:`copy.deepcopy` on these classes)."""
        return _clone(self)

    # -- writing ----------------------------------------------------------------------------------

    def to_xml(
        self, *, live: bool = False, domain_id: int | None = None, secure: bool = True
    ) -> str:
        """The libvirt-format XML of this definition.

        ``live=True`` writes what a running domain's XML holds in addition: device aliases,
        pty paths, and ``id='N'`` on ``<domain>`` when ``domain_id`` is given.
        ``secure=False`` leaves out what is secret (display passwords, disk cookies): what
        clients see unless they ask for a secure XML (libvirt's ``VIR_DOMAIN_XML_SECURE``);
        the node's own files keep everything.
        """
        root = XElem("domain", {"type": self.domain_type})
        if live and domain_id is not None:
            root.set("id", domain_id)
        root.add("name", text=self.name)
        root.add("uuid", text=self.uuid)
        if self.genid is not None:
            root.add("genid", text=self.genid)
        if self.title is not None:
            root.add("title", text=self.title)
        if self.description is not None:
            root.add("description", text=self.description)
        if self.metadata:
            md = root.add("metadata")
            md.raw.extend(self.metadata)
        if self.max_memory_kib is not None:
            root.add(
                "maxMemory",
                {"slots": self.max_memory_slots, "unit": "KiB"},
                text=str(self.max_memory_kib),
            )
        root.add("memory", {"unit": "KiB", "dumpCore": self.dump_core}, text=str(self.memory_kib))
        root.add("currentMemory", {"unit": "KiB"}, text=str(self.current_memory_kib))
        if self.blkiotune is not None:
            self.blkiotune.format_xml(root)
        if self.memtune is not None:
            self.memtune.format_xml(root)
        self._format_memory_backing(root)
        root.add(
            "vcpu",
            {
                "placement": "auto" if self.placement_auto else "static",
                "cpuset": None if self.placement_auto else self.cpuset,
                "current": self.vcpus if self.vcpus != self.max_vcpus else None,
            },
            text=str(self.max_vcpus),
        )
        format_vcpus(root, self.vcpu_states)
        if self.iothread_ids:
            root.add("iothreads", text=str(len(self.iothread_ids)))
            if self.iothread_ids_given:
                ids = root.add("iothreadids")
                for tid in self.iothread_ids:
                    ids.add("iothread", {"id": tid})
        if self.cputune is not None:
            self.cputune.format_xml(root, live=live)
        if self.numatune is not None:
            self.numatune.format_xml(root)
        for info in self.sysinfos:
            info.format_xml(root)
        self._format_os(root)
        self._format_features(root)
        self._format_cpu(root)
        self._format_clock(root)
        root.add("on_poweroff", text=self.on_poweroff)
        root.add("on_reboot", text=self.on_reboot)
        root.add("on_crash", text=self.on_crash)
        if self.suspend_to_mem is not None or self.suspend_to_disk is not None:
            pm = root.add("pm")
            if self.suspend_to_mem is not None:
                pm.add("suspend-to-mem", {"enabled": self.suspend_to_mem})
            if self.suspend_to_disk is not None:
                pm.add("suspend-to-disk", {"enabled": self.suspend_to_disk})
        devs = root.add("devices")
        if self.emulator is not None:
            devs.add("emulator", text=self.emulator)
        groups: list[list] = [
            self.disks,
            self.controllers,
            self.filesystems,
            self.interfaces,
            self.smartcards,
            self.serials,
            self.parallels,
            self.consoles,
            self.channels,
            self.inputs,
            self.tpms,
            self.graphics,
            self.sounds,
            self.audios,
            self.videos,
            self.hostdevs,
            self.redirdevs,
            [self.redirfilter] if self.redirfilter is not None else [],
            self.hubs,
            self.watchdogs,
            [self.memballoon] if self.memballoon is not None else [],
            self.rngs,
            self.panics,
            self.shmems,
            self.memory_devices,
            [self.iommu] if self.iommu is not None else [],
            [self.vsock] if self.vsock is not None else [],
            self.cryptos,
            [self.pstore] if self.pstore is not None else [],
        ]
        for group in groups:
            for device in group:
                device.format_xml(devs, live)
        for label in self.seclabels:
            label.format_xml(root)
        return root.serialize(secure=secure)

    def _format_memory_backing(self, root: XElem) -> None:
        mb = self.memory_backing
        if mb is None:
            return
        el = root.add("memoryBacking")
        if mb.hugepages:
            hp = el.add("hugepages")
            if mb.hugepage_size_kib is not None:
                hp.add("page", {"size": mb.hugepage_size_kib, "unit": "KiB"})
            for pages in mb.node_pages:
                hp.add("page", {"size": pages.size_kib, "unit": "KiB", "nodeset": pages.nodeset})
        if mb.nosharepages:
            el.add("nosharepages")
        if mb.locked:
            el.add("locked")
        if mb.source is not None:
            el.add("source", {"type": mb.source})
        if mb.access is not None:
            el.add("access", {"mode": mb.access})
        if mb.allocation is not None or mb.allocation_threads is not None:
            el.add("allocation", {"mode": mb.allocation, "threads": mb.allocation_threads})
        if mb.discard:
            el.add("discard")

    def _format_os(self, root: XElem) -> None:
        os_ = root.add("os", {"firmware": self.os.firmware})
        os_.add(
            "type", {"arch": self.os.arch or None, "machine": self.os.machine}, text=self.os.type
        )
        if self.os.firmware_features:
            fw = os_.add("firmware")
            for name in sorted(self.os.firmware_features):
                fw.add("feature", {"enabled": self.os.firmware_features[name], "name": name})
        ld = self.os.loader
        if ld is not None:
            os_.add(
                "loader",
                {
                    "readonly": ld.readonly,
                    "secure": ld.secure,
                    "type": ld.type,
                    "stateless": ld.stateless,
                    "format": ld.format,
                },
                text=ld.path,
            )
        nv = self.os.nvram
        if nv is not None:
            os_.add(
                "nvram",
                {
                    "template": nv.template,
                    "templateFormat": nv.template_format,
                    "format": nv.format,
                },
                text=nv.path,
            )
        if self.os.kernel is not None:
            os_.add("kernel", text=self.os.kernel)
        if self.os.initrd is not None:
            os_.add("initrd", text=self.os.initrd)
        if self.os.cmdline is not None:
            os_.add("cmdline", text=self.os.cmdline)
        for boot in self.os.boot_devices:
            os_.add("boot", {"dev": boot})
        if self.os.bootmenu is not None:
            os_.add("bootmenu", {"enable": self.os.bootmenu, "timeout": self.os.bootmenu_timeout})
        if self.os.smbios_mode is not None:
            os_.add("smbios", {"mode": self.os.smbios_mode})
        if self.os.reboot_timeout is not None:
            os_.add("bios", {"rebootTimeout": self.os.reboot_timeout})

    def _format_features(self, root: XElem) -> None:
        f = self.features
        if f.is_empty():
            return
        el = root.add("features")
        if f.acpi == "on":
            el.add("acpi")
        if f.apic == "on":
            el.add("apic", {"eoi": f.apic_eoi})
        if f.pae == "on":
            el.add("pae")
        if f.hap is not None:
            el.add("hap", {"state": "off" if f.hap == "off" else None})
        hv = f.hyperv
        if hv is not None:
            hel = el.add("hyperv", {"mode": hv.mode})
            for name in HYPERV_FEATURES:
                state = hv.features.get(name)
                if state is None:
                    continue
                if name == "spinlocks":
                    hel.add(name, {"state": state, "retries": hv.spinlock_retries})
                elif name == "vendor_id":
                    hel.add(name, {"state": state, "value": hv.vendor_id})
                elif name == "stimer":
                    sub = hel.add(name, {"state": state})
                    if hv.stimer_direct is not None:
                        sub.add("direct", {"state": hv.stimer_direct})
                elif name == "tlbflush":
                    sub = hel.add(name, {"state": state})
                    if hv.tlbflush_direct is not None:
                        sub.add("direct", {"state": hv.tlbflush_direct})
                    if hv.tlbflush_extended is not None:
                        sub.add("extended", {"state": hv.tlbflush_extended})
                else:
                    hel.add(name, {"state": state})
        if f.kvm:
            kel = el.add("kvm")
            for name in KVM_FEATURES:
                if name in f.kvm:
                    kel.add(name, {"state": f.kvm[name]})
        if f.pvspinlock is not None:
            el.add("pvspinlock", {"state": f.pvspinlock})
        if f.pmu is not None:
            el.add("pmu", {"state": f.pmu})
        if f.vmport is not None:
            el.add("vmport", {"state": f.vmport})
        if f.smm is not None:
            smm = el.add("smm", {"state": f.smm})
            if f.smm_tseg_kib is not None:
                smm.add("tseg", {"unit": "KiB"}, text=str(f.smm_tseg_kib))
        if f.ioapic is not None:
            el.add("ioapic", {"driver": f.ioapic})
        if f.vmcoreinfo is not None:
            el.add("vmcoreinfo", {"state": f.vmcoreinfo})
        if f.msrs_unknown is not None:
            el.add("msrs", {"unknown": f.msrs_unknown})
        if f.tcg_tb_cache_kib is not None:
            tcg = el.add("tcg")
            tcg.add("tb-cache", {"unit": "KiB"}, text=str(f.tcg_tb_cache_kib))

    def _format_cpu(self, root: XElem) -> None:
        cpu = self.cpu
        if cpu is None:
            return
        el = root.add(
            "cpu",
            {
                "mode": cpu.mode,
                "match": cpu.match,
                "check": cpu.check,
                "migratable": cpu.migratable,
            },
        )
        if cpu.model is not None:
            el.add("model", {"fallback": cpu.fallback}, text=cpu.model)
        if cpu.topology is not None:
            t = cpu.topology
            el.add(
                "topology",
                {
                    "sockets": t.sockets,
                    "dies": t.dies,
                    "clusters": t.clusters,
                    "cores": t.cores,
                    "threads": t.threads,
                },
            )
        for feat in cpu.features:
            el.add("feature", {"policy": feat.policy, "name": feat.name})
        if cpu.numa:
            numa = el.add("numa")
            for cell in cpu.numa:
                cell.format_xml(numa)

    def _format_clock(self, root: XElem) -> None:
        c = self.clock
        el = root.add(
            "clock",
            {"offset": c.offset, "adjustment": c.adjustment, "basis": c.basis, "start": c.start},
        )
        for t in c.timers:
            timer = el.add(
                "timer",
                {
                    "name": t.name,
                    "tickpolicy": t.tickpolicy,
                    "track": t.track,
                    "frequency": t.frequency,
                    "mode": t.mode,
                    "present": t.present,
                },
            )
            if t.catchup:
                timer.add("catchup", dict(t.catchup))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _clone(value: Any) -> Any:
    """Deep copy of the definition's plain data: dataclasses, lists, dicts and scalars."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, list):
        return [_clone(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        new = object.__new__(cls)
        for name in _field_names(cls):
            object.__setattr__(new, name, _clone(getattr(value, name)))
        return new
    return _copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# parsing


#: The secrets of a domain XML this module wrote (see DomainDef.to_xml), as text: a
#: display's ``passwd`` (on its one-line start tag; quotes in values are escaped) and an
#: http(s) disk's ``<cookies>`` element.
_SECRET_ATTR = re.compile(r"^(\s*<graphics\b[^\n]*?) passwd='[^']*'", re.M)
_SECRET_ELEMENT = re.compile(r"^([ ]*)<cookies>\n.*?^\1</cookies>\n", re.M | re.S)


def hide_secrets(xml: str) -> str:
    """``DomainDef.to_xml()``'s text as ``to_xml(secure=False)`` writes it: for the copies
    of a domain's XML kept as text (a snapshot's), which are shown without being parsed
    again (a test holds the two to the same result)."""
    return _SECRET_ELEMENT.sub("", _SECRET_ATTR.sub(r"\1", xml))


def parse_domain_xml(text: str | bytes) -> DomainDef:
    """Parse libvirt domain XML into a :class:`DomainDef`.

    Raises :class:`~asvirt.errors.XMLError` for malformed, hostile or invalid XML and
    :class:`~asvirt.errors.ConfigUnsupportedError` (a subclass) for well-formed XML asking
    for something asvirt does not support, naming the element. A missing UUID is generated.
    """
    root = parse_xml(text)
    if root.tag != "domain":
        raise XMLError(f"expected a <domain> document, not <{root.tag}>")
    node = Node(root, ())
    try:
        return _parse_domain(node)
    except RecursionError:  # pathological nesting deep inside metadata
        raise XMLError("XML document is nested too deeply") from None


def _parse_domain(node: Node) -> DomainDef:
    dtype = node.attr("type")
    if dtype is None:
        raise XMLError("missing attribute 'type' of <domain>")
    if dtype not in ("kvm", "qemu"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: <domain type='{dtype}'> is not supported "
            "(use 'kvm' or 'qemu')"
        )
    node.ignore("id")  # present in live dumps; a running domain gets a new one
    name = node.child_text("name")
    if name is None:
        raise XMLError("missing <name> of <domain>")
    validate_name(name)
    uuid_text = node.child_text("uuid")
    if uuid_text is None:
        uuid = str(_uuid.uuid4())
    else:
        uuid = canonical_uuid(uuid_text, error=InvalidValueError)
    d = DomainDef(name=name, uuid=uuid, domain_type=dtype)

    title = node.child("title")
    if title is not None:
        d.title = title.el.text or None  # an empty title is no title, as in libvirt
        title.finish()
    if d.title is not None and "\n" in d.title:
        raise XMLError("domain title must not contain newlines")
    desc = node.child("description")
    if desc is not None:
        d.description = desc.el.text or ""
        desc.finish()
    md = node.child("metadata")
    if md is not None:
        d.metadata = _parse_metadata(md)

    _parse_memory(node, d)
    _parse_memory_backing(node, d)
    _parse_vcpu(node, d)
    d.iothread_ids, d.iothread_ids_given = parse_iothreads(node)
    d.sysinfos = [parse_sysinfo(n) for n in node.children("sysinfo")]
    if len({i.type for i in d.sysinfos}) != len(d.sysinfos):
        raise XMLError("at most one <sysinfo> of each type")
    genid = node.child("genid")
    if genid is not None:
        text = genid.el.text
        d.genid = canonical_uuid(text, error=InvalidValueError) if text else str(_uuid.uuid4())
        genid.finish()
    _parse_os(node, d)
    _parse_features(node, d)
    _parse_cpu(node, d)
    _parse_clock(node, d)
    d.on_poweroff = _lifecycle(node, "on_poweroff", LIFECYCLE_ACTIONS, "destroy")
    d.on_reboot = _lifecycle(node, "on_reboot", LIFECYCLE_ACTIONS, "restart")
    d.on_crash = _lifecycle(node, "on_crash", CRASH_ACTIONS, "destroy")
    if d.on_poweroff == "rename-restart" or d.on_reboot == "rename-restart":
        raise ConfigUnsupportedError(
            "unsupported configuration: rename-restart is only valid for <on_crash>"
        )
    _parse_pm(node, d)
    nt = node.child("numatune")
    if nt is not None:
        d.numatune = parse_numatune(nt, parse_cpuset)
    elif d.placement_auto:
        # libvirt's default: memory goes where the vCPUs do, numad's advice.
        d.numatune = NUMATune(mode="strict", placement_auto=True)
    _parse_tuning(node, d)
    devices = node.child("devices")
    if devices is not None:
        _parse_devices(devices, d)
    node.finish()
    return d


def _parse_tuning(node: Node, d: DomainDef) -> None:
    ct = node.child("cputune")
    if ct is not None:
        d.cputune = parse_cputune(
            ct, parse_cpuset, max_vcpus=d.max_vcpus, iothread_ids=d.iothread_ids
        )
    mt = node.child("memtune")
    if mt is not None:
        d.memtune = parse_memtune(mt)
    bt = node.child("blkiotune")
    if bt is not None:
        d.blkiotune = parse_blkiotune(bt)
    d.seclabels = [parse_seclabel(sl) for sl in node.children("seclabel")]
    models = [sl.model for sl in d.seclabels]
    if len(set(models)) != len(models):
        raise XMLError("a security model may be named by one <seclabel> only")


def _parse_metadata(md: Node) -> list[str]:
    """Keep one namespaced element per namespace, as libvirt's metadata rules say."""
    out: list[str] = []
    seen: set[str] = set()
    for _tag, el in md.tags_in_order():
        ns = etree.QName(el).namespace
        if ns is None or ns in seen:
            continue  # libvirt drops metadata without a namespace, and duplicates of one
        seen.add(ns)
        clean = _copy.deepcopy(el)
        for sub in clean.iter():
            if isinstance(sub.tag, str):
                if sub.text is not None and not sub.text.strip() and len(sub):
                    sub.text = None
                if sub.tail is not None and not sub.tail.strip():
                    sub.tail = None
        clean.tail = None
        etree.cleanup_namespaces(clean)
        out.append(etree.tostring(clean, encoding="unicode", pretty_print=True).rstrip("\n"))
    md.ignore(*(tag for tag, _ in md.tags_in_order()))
    md.finish()
    return out


def _parse_memory(node: Node, d: DomainDef) -> None:
    mem = node.child("memory")
    if mem is None:
        raise XMLError("missing <memory> of <domain>")
    d.memory_kib = parse_kib(mem.text(), mem.attr("unit"), what="memory")
    d.dump_core = mem.onoff("dumpCore")
    mem.finish()
    if d.memory_kib == 0:
        raise InvalidValueError("memory size must be greater than zero")
    mx = node.child("maxMemory")
    if mx is not None:
        d.max_memory_kib = parse_kib(mx.text(), mx.attr("unit"), what="maxMemory")
        d.max_memory_slots = mx.integer("slots", minimum=0, maximum=255)
        mx.finish()
    cur = node.child("currentMemory")
    if cur is not None:
        d.current_memory_kib = parse_kib(cur.text(), cur.attr("unit"), what="currentMemory")
        cur.finish()
    # A missing, zero or too large currentMemory means "all of memory": the post-parse says so.


def _parse_vcpu(node: Node, d: DomainDef) -> None:
    vcpu = node.child("vcpu")
    if vcpu is None:
        d.vcpus = d.max_vcpus = 1
        return
    d.max_vcpus = vcpu.to_int(vcpu.text(), "vcpu count", minimum=1, maximum=4096)
    current = vcpu.integer("current", minimum=1, maximum=4096)
    if current is not None and current > d.max_vcpus:
        raise XMLError(f"current vcpu count {current} exceeds the maximum {d.max_vcpus}")
    d.vcpus = current if current is not None else d.max_vcpus
    d.placement_auto = vcpu.choice("placement", ("static", "auto")) == "auto"
    cpuset = vcpu.attr("cpuset")
    if cpuset is not None and not d.placement_auto:  # libvirt ignores it then
        parse_cpuset(cpuset)
        d.cpuset = cpuset
    vcpu.finish()
    d.vcpu_states = parse_vcpus(node, max_vcpus=d.max_vcpus, current=current)
    if d.vcpu_states is not None:
        d.vcpus = sum(1 for s in d.vcpu_states if s.enabled)


def parse_cpuset(text: str) -> set[int]:
    """The CPUs of a libvirt cpuset string such as ``1-4,8-20,^10,525``."""
    cpus: set[int] = set()
    excluded: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        neg = part.startswith("^")
        if neg:
            part = part[1:]
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise XMLError(f"invalid cpuset '{text}'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo or hi > 8191:
            raise XMLError(f"invalid cpuset '{text}'")
        (excluded if neg else cpus).update(range(lo, hi + 1))
    cpus -= excluded
    if not cpus:
        raise XMLError(f"cpuset '{text}' selects no CPU")
    return cpus


def _parse_os(node: Node, d: DomainDef) -> None:
    osn = node.child("os")
    if osn is None:
        raise XMLError("missing <os> of <domain>")
    d.os.firmware = osn.choice("firmware", ("efi", "bios"))
    _parse_firmware(osn, d)
    t = osn.child("type")
    if t is None:
        raise XMLError("missing <type> of <os>")
    d.os.type = t.text()
    if d.os.type != "hvm":
        raise ConfigUnsupportedError(
            f"unsupported configuration: <os><type>{d.os.type}</type> is not supported (only 'hvm')"
        )
    d.os.arch = t.attr("arch") or ""
    d.os.machine = t.attr("machine")
    t.finish()
    for boot in osn.children("boot"):
        dev_ = boot.choice("dev", BOOT_DEVICES)
        if dev_ is None:
            raise XMLError("missing attribute 'dev' of <os><boot>")
        boot.finish()
        d.os.boot_devices.append(dev_)
    if len(d.os.boot_devices) > 4:
        raise XMLError("at most 4 <os><boot> elements are allowed")
    bm = osn.child("bootmenu")
    if bm is not None:
        d.os.bootmenu = bm.yesno("enable")
        if d.os.bootmenu is None:
            raise XMLError("missing attribute 'enable' of <os><bootmenu>")
        d.os.bootmenu_timeout = bm.integer("timeout", minimum=0, maximum=65535)
        bm.finish()
    smbios = osn.child("smbios")
    if smbios is not None:
        d.os.smbios_mode = smbios.choice("mode", ("emulate", "host", "sysinfo"))
        smbios.finish()
    bios = osn.child("bios")
    if bios is not None:
        d.os.reboot_timeout = bios.integer("rebootTimeout", minimum=-1, maximum=65535)
        if bios.attr("useserial") is not None:
            raise bios.unsupported_value("useserial", bios.attr("useserial") or "")
        bios.finish()
    for key in ("kernel", "initrd"):
        value = osn.child_text(key)
        if value is not None:
            if not value.startswith("/"):
                raise XMLError(f"<os><{key}> must be an absolute path")
            setattr(d.os, key, value)
    cmdline = osn.child("cmdline")
    if cmdline is not None:
        d.os.cmdline = cmdline.el.text or ""
        cmdline.finish()
    if (d.os.initrd is not None or d.os.cmdline is not None) and d.os.kernel is None:
        raise XMLError("<os><initrd> and <os><cmdline> need <os><kernel>")
    osn.finish()


def _parse_firmware(osn: Node, d: DomainDef) -> None:
    """``<firmware>``, ``<loader>`` and ``<nvram>`` of ``<os>``."""
    fw = osn.child("firmware")
    if fw is not None:
        for feat in fw.children("feature"):
            name = feat.choice("name", FIRMWARE_FEATURES)
            enabled = feat.yesno("enabled")
            if name is None or enabled is None:
                raise XMLError(f"{feat.where} needs a name and enabled='yes|no'")
            if name in d.os.firmware_features:
                raise XMLError(f"firmware feature '{name}' is given more than once")
            feat.finish()
            d.os.firmware_features[name] = enabled
        fw.finish()
        if d.os.firmware != "efi" and d.os.firmware_features:
            raise XMLError("<firmware><feature> needs <os firmware='efi'>")
    ln = osn.child("loader")
    if ln is not None:
        ld = Loader(
            path=ln.text() or None,
            readonly=ln.yesno("readonly"),
            type=ln.choice("type", ("rom", "pflash")),
            secure=ln.yesno("secure"),
            stateless=ln.yesno("stateless"),
            format=ln.choice("format", ("raw",)),
        )
        if ld.path is not None and not ld.path.startswith("/"):
            raise XMLError(f"<os><loader> '{ld.path}' must be an absolute path")
        ln.finish()
        d.os.loader = ld
    nn = osn.child("nvram")
    if nn is not None:
        nv = NVRam(
            path=nn.text() or None,
            template=nn.attr("template"),
            format=nn.choice("format", ("raw",)),
            template_format=nn.choice("templateFormat", ("raw",)),
        )
        for value in (nv.path, nv.template):
            if value is not None and not value.startswith("/"):
                raise XMLError(f"<os><nvram> path '{value}' must be absolute")
        if nn.child("source") is not None:
            raise nn.unsupported("<source> (network NVRAM)")
        nn.finish()
        d.os.nvram = nv
    loader = d.os.loader
    if d.os.firmware == "bios" and loader is not None and loader.type == "pflash":
        raise XMLError("<os firmware='bios'> cannot use a pflash <loader>")
    if d.os.nvram is not None and loader is not None and loader.type == "rom":
        raise XMLError("a ROM <loader> has no <nvram>")
    if loader is not None and loader.stateless and d.os.nvram is not None:
        raise XMLError("a stateless <loader> has no <nvram>")


_FEATURE_FLAGS = ("acpi", "pae")


def _parse_features(node: Node, d: DomainDef) -> None:
    fn = node.child("features")
    if fn is None:
        return
    f = d.features
    for name in _FEATURE_FLAGS:
        sub = fn.child(name)
        if sub is not None:
            sub.finish()
            setattr(f, name, "on")
    apic = fn.child("apic")
    if apic is not None:
        f.apic = "on"
        f.apic_eoi = apic.onoff("eoi")
        apic.finish()
    for name in ("hap", "vmport", "smm", "pvspinlock", "vmcoreinfo", "pmu"):
        sub = fn.child(name)
        if sub is None:
            continue
        state = sub.onoff("state")
        if name == "smm":
            tseg = sub.child("tseg")
            if tseg is not None:
                f.smm_tseg_kib = parse_kib(tseg.text(), tseg.attr("unit") or "MiB", what="tseg")
                tseg.finish()
        sub.finish()
        setattr(f, name, state or "on")
    ioapic = fn.child("ioapic")
    if ioapic is not None:
        f.ioapic = ioapic.choice("driver", ("kvm", "qemu"))
        ioapic.finish()
    msrs = fn.child("msrs")
    if msrs is not None:
        f.msrs_unknown = msrs.choice("unknown", ("ignore", "fault"))
        if f.msrs_unknown is None:
            raise XMLError(f"missing attribute 'unknown' of {msrs.where}")
        msrs.finish()
    tcg = fn.child("tcg")
    if tcg is not None:
        tb = tcg.child("tb-cache")
        if tb is not None:
            f.tcg_tb_cache_kib = parse_kib(tb.text(), tb.attr("unit"), what="tb-cache")
            tb.finish()
        tcg.finish()
    kvm = fn.child("kvm")
    if kvm is not None:
        for name in KVM_FEATURES:
            sub = kvm.child(name)
            if sub is not None:
                f.kvm[name] = sub.onoff("state") or "on"
                sub.finish()
        kvm.finish()
    hv = fn.child("hyperv")
    if hv is not None:
        f.hyperv = _parse_hyperv(hv)
    fn.finish()


def _parse_hyperv(hv: Node) -> HyperV:
    out = HyperV(mode=hv.choice("mode", ("custom", "passthrough"), "custom") or "custom")
    for name in HYPERV_FEATURES:
        sub = hv.child(name)
        if sub is None:
            continue
        state = sub.onoff("state")
        if state is None:
            raise XMLError(f"missing attribute 'state' of {sub.where}")
        out.features[name] = state
        if name == "spinlocks":
            out.spinlock_retries = sub.integer("retries", minimum=4095, maximum=(1 << 32) - 1)
            if state == "on" and out.spinlock_retries is None:
                raise XMLError("<hyperv><spinlocks state='on'> needs retries (4095 or more)")
        elif name == "vendor_id":
            out.vendor_id = sub.attr("value")
            if state == "on" and (
                out.vendor_id is None or not re.fullmatch(r"[A-Za-z0-9 _-]{1,12}", out.vendor_id)
            ):
                raise XMLError("<hyperv><vendor_id> needs a value of 1 to 12 plain characters")
        elif name == "stimer":
            direct = sub.child("direct")
            if direct is not None:
                out.stimer_direct = direct.onoff("state")
                direct.finish()
        elif name == "tlbflush":
            for tag in ("direct", "extended"):
                child = sub.child(tag)
                if child is not None:
                    setattr(out, f"tlbflush_{tag}", child.onoff("state"))
                    child.finish()
        sub.finish()
    hv.finish()
    return out


def _parse_cpu(node: Node, d: DomainDef) -> None:
    cn = node.child("cpu")
    if cn is None:
        return
    cpu = CPUDef()
    cpu.mode = cn.choice("mode", CPU_MODES)
    cpu.match = cn.choice("match", ("exact", "minimum", "strict"))
    cpu.check = cn.choice("check", ("none", "partial", "full"))
    cpu.migratable = cn.onoff("migratable")
    model = cn.child("model")
    if model is not None:
        cpu.model = model.text() or None
        cpu.fallback = model.choice("fallback", ("allow", "forbid"))
        if model.attr("vendor_id") is not None:
            raise model.unsupported_value("vendor_id", model.attr("vendor_id") or "")
        model.finish()
        if cpu.model is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", cpu.model):
            raise XMLError(f"invalid CPU model name '{cpu.model}'")
    if cpu.mode is None:
        cpu.mode = "custom"
    topo = cn.child("topology")
    if topo is not None:
        cpu.topology = CPUTopology(
            sockets=topo.integer("sockets", minimum=1, maximum=4096) or 0,
            dies=topo.integer("dies", minimum=1, maximum=4096),
            clusters=topo.integer("clusters", minimum=1, maximum=4096),
            cores=topo.integer("cores", minimum=1, maximum=4096) or 0,
            threads=topo.integer("threads", minimum=1, maximum=4096) or 0,
        )
        topo.finish()
        if not (cpu.topology.sockets and cpu.topology.cores and cpu.topology.threads):
            raise XMLError("<cpu><topology> needs sockets, cores and threads")
    for feat in cn.children("feature"):
        policy = feat.choice("policy", ("force", "require", "optional", "disable", "forbid"))
        fname = feat.required("name")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", fname):
            raise XMLError(f"invalid CPU feature name '{fname}'")
        feat.finish()
        cpu.features.append(CPUFeature(fname, policy or "require"))
    numa = cn.child("numa")
    if numa is not None:
        cpu.numa = parse_numa(numa, parse_cpuset)
    if cpu.mode != "custom" and cpu.model is not None and cpu.mode == "host-passthrough":
        raise XMLError("a <cpu mode='host-passthrough'> cannot name a <model>")
    cn.finish()
    d.cpu = cpu


def _parse_clock(node: Node, d: DomainDef) -> None:
    cn = node.child("clock")
    if cn is None:
        return
    c = d.clock
    offset = cn.attr("offset", "utc") or "utc"
    if offset not in ("utc", "localtime", "variable", "absolute"):
        raise cn.unsupported_value("offset", offset, ["utc", "localtime", "variable", "absolute"])
    c.offset = offset
    adj = cn.attr("adjustment")
    if adj is not None:
        if adj == "reset" and offset in ("utc", "localtime"):
            c.adjustment = adj
        elif offset == "variable" and re.fullmatch(r"[+-]?\d+", adj.strip()):
            c.adjustment = str(int(adj))
        else:
            raise XMLError(f"invalid clock adjustment '{adj}' for offset '{offset}'")
    if offset == "variable":
        c.adjustment = c.adjustment or "0"
        c.basis = cn.choice("basis", ("utc", "localtime"), "utc")
    if offset == "absolute":
        c.start = cn.integer("start", minimum=0, maximum=(1 << 63) - 1)
        if c.start is None:
            raise XMLError("<clock offset='absolute'> needs a start attribute")
    for tn in cn.children("timer"):
        name = tn.choice("name", TIMER_NAMES)
        if name is None:
            raise XMLError("missing attribute 'name' of <clock><timer>")
        if c.timer(name) is not None:
            raise XMLError(f"timer '{name}' is defined more than once")
        t = Timer(name=name, present=tn.yesno("present"))
        t.tickpolicy = tn.choice("tickpolicy", ("delay", "catchup", "merge", "discard"))
        if name == "rtc":
            t.track = tn.choice("track", ("boot", "guest", "wall", "realtime"))
        if name == "tsc":
            t.frequency = tn.integer("frequency", minimum=1, maximum=(1 << 63) - 1)
            t.mode = tn.choice("mode", ("auto", "native", "emulate", "paravirt", "smpsafe"))
        catchup = tn.child("catchup")
        if catchup is not None:
            for key in ("threshold", "slew", "limit"):
                value = catchup.integer(key, minimum=0, maximum=(1 << 32) - 1)
                if value is not None:
                    t.catchup[key] = value
            catchup.finish()
            if t.tickpolicy != "catchup":
                raise XMLError("<catchup> needs tickpolicy='catchup'")
        tn.finish()
        c.timers.append(t)
    cn.finish()


def _lifecycle(node: Node, tag: str, allowed: tuple[str, ...], default: str) -> str:
    value = node.child_text(tag)
    if value is None:
        return default
    if value not in allowed:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <{tag}>{value}</{tag}> is not supported "
            f"(supported: {', '.join(allowed)})"
        )
    return value


def _parse_memory_backing(node: Node, d: DomainDef) -> None:
    mb_node = node.child("memoryBacking")
    if mb_node is None:
        return
    mb = MemoryBacking()
    for tag in ("nosharepages", "locked", "discard"):
        sub = mb_node.child(tag)
        if sub is not None:
            sub.finish()
            setattr(mb, tag, True)
    src = mb_node.child("source")
    if src is not None:
        mb.source = src.choice("type", ("anonymous", "memfd", "file"))
        src.finish()
    acc = mb_node.child("access")
    if acc is not None:
        mb.access = acc.choice("mode", ("shared", "private"))
        acc.finish()
    alloc = mb_node.child("allocation")
    if alloc is not None:
        mb.allocation = alloc.choice("mode", ("immediate", "ondemand"))
        mb.allocation_threads = alloc.integer("threads", minimum=1, maximum=1024)
        alloc.finish()
    hp = mb_node.child("hugepages")
    if hp is not None:
        mb.hugepages = True
        pages = hp.children("page")
        mb.default_page = not pages
        seen: set[int] = set()
        for page in pages:
            page_kib = parse_kib(page.required("size"), page.attr("unit"), what="hugepage size")
            if page_kib < 4 or page_kib & (page_kib - 1):
                raise XMLError(f"invalid hugepage size {page_kib} KiB")
            nodeset = page.attr("nodeset")
            page.finish()
            if nodeset is None:
                if mb.default_page:
                    # libvirt's words: one size is the default, the others name their nodes.
                    raise XMLError("hugepages: default hugepage size can't be specified twice")
                mb.default_page = True
                mb.hugepage_size_kib = page_kib
                continue
            nodes = frozenset(parse_cpuset(nodeset))
            if nodes & seen:
                raise XMLError(f"hugepages: nodeset '{nodeset}' names a node another page names")
            seen |= nodes
            mb.node_pages.append(NodePages(page_kib, format_cpuset(nodes), nodes))
        hp.finish()
    mb_node.finish()
    d.memory_backing = mb


def _parse_pm(node: Node, d: DomainDef) -> None:
    pm = node.child("pm")
    if pm is None:
        return
    for tag, attr in (("suspend-to-mem", "suspend_to_mem"), ("suspend-to-disk", "suspend_to_disk")):
        sub = pm.child(tag)
        if sub is not None:
            setattr(d, attr, sub.yesno("enabled"))
            sub.finish()
    pm.finish()


#: No guest needs more devices; the cap keeps a 10 MB document of 10^5 disks from costing
#: minutes of address assignment.
MAX_DEVICES = 2048


def _parse_devices(node: Node, d: DomainDef) -> None:
    count = sum(1 for _ in node.tags_in_order())
    if count > MAX_DEVICES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: {count} devices; asvirt accepts at most {MAX_DEVICES}"
        )
    emulator = node.child_text("emulator")
    if emulator is not None:
        if not emulator.startswith("/"):
            raise XMLError("<emulator> must be an absolute path")
        d.emulator = emulator
    d.disks = _order_disks([dev.parse_disk(n) for n in node.children("disk")])
    parsed = [dev.parse_controller(n) for n in node.children("controller")]
    for ctl in parsed:
        if ctl.index < 0:
            ctl.index = _free_controller_index(parsed, ctl)
        insert_controller(d.controllers, ctl)
    d.interfaces = [dev.parse_interface(n) for n in node.children("interface")]
    d.serials = [dev.parse_chardev(n, "serial") for n in node.children("serial")]
    d.parallels = [dev.parse_chardev(n, "parallel") for n in node.children("parallel")]
    d.consoles = [dev.parse_chardev(n, "console") for n in node.children("console")]
    d.channels = [dev.parse_chardev(n, "channel") for n in node.children("channel")]
    d.inputs = [dev.parse_input(n) for n in node.children("input")]
    d.graphics = [dev.parse_graphics(n) for n in node.children("graphics")]
    d.audios = [dev.parse_audio(n) for n in node.children("audio")]
    d.videos = [dev.parse_video(n) for n in node.children("video")]
    d.hubs = [dev.parse_hub(n) for n in node.children("hub")]
    d.watchdogs = [dev.parse_watchdog(n) for n in node.children("watchdog")]
    balloons = node.children("memballoon")
    if len(balloons) > 1:
        raise XMLError("a domain can have only one <memballoon>")
    if balloons:
        d.memballoon = dev.parse_memballoon(balloons[0])
    d.rngs = [dev.parse_rng(n) for n in node.children("rng")]
    d.panics = [dev.parse_panic(n) for n in node.children("panic")]
    d.filesystems = [xdev.parse_filesystem(n) for n in node.children("filesystem")]
    d.hostdevs = [xdev.parse_hostdev(n) for n in node.children("hostdev")]
    d.sounds = [xdev.parse_sound(n) for n in node.children("sound")]
    d.redirdevs = [xdev.parse_redirdev(n) for n in node.children("redirdev")]
    d.tpms = [xdev.parse_tpm(n) for n in node.children("tpm")]
    d.shmems = [odev.parse_shmem(n) for n in node.children("shmem")]
    d.smartcards = [odev.parse_smartcard(n) for n in node.children("smartcard")]
    d.memory_devices = [parse_memory_device(n) for n in node.children("memory")]
    d.cryptos = [parse_crypto(n) for n in node.children("crypto")]
    for tag in ("redirfilter", "iommu", "vsock", "pstore"):
        found = node.children(tag)
        if len(found) > 1:
            raise XMLError(f"a domain can have only one <{tag}>")
        if found:
            parse = {
                "redirfilter": odev.parse_redirfilter,
                "iommu": odev.parse_iommu,
                "vsock": odev.parse_vsock,
                "pstore": parse_pstore,
            }[tag]
            setattr(d, tag, parse(found[0]))
    node.finish()


def _order_disks(disks: list[Disk]) -> list[Disk]:
    """The disks in libvirt's order: each bus's disks kept in target order as they arrive.

    libvirt inserts a new disk before the first disk of its bus with a later target name,
    or right after the last disk of its bus (at the end if it is the first of its bus).
    Done with a linked list and a sorted index per bus, so 10^5 disks cost no more than
    a sort (a naive insertion is quadratic, a denial of service inside the size limit).
    """
    nxt: list[int] = []  # node -> next node (-1: none); node n is disks[n]
    prv: list[int] = []
    head = tail = -1
    per_bus: dict[str, tuple[list[int], list[int]]] = {}  # bus -> (sorted indexes, nodes)

    def link_after(node: int, ref: int) -> None:
        nonlocal tail
        nxt[node], prv[node] = nxt[ref], ref
        if nxt[ref] >= 0:
            prv[nxt[ref]] = node
        else:
            tail = node
        nxt[ref] = node

    for node, disk in enumerate(disks):
        nxt.append(-1)
        prv.append(-1)
        index = dev.disk_name_index(disk.target)
        keys, nodes = per_bus.setdefault(disk.bus, ([], []))
        pos = bisect.bisect_right(keys, index)
        if pos < len(keys):  # before the first same-bus disk with a later name
            before = nodes[pos]
            if prv[before] >= 0:
                link_after(node, prv[before])
            else:
                nxt[node], prv[before], head = before, node, node
        elif nodes:  # right after the last disk of this bus
            link_after(node, nodes[-1])
        elif tail >= 0:
            link_after(node, tail)
        else:
            head = tail = node
        keys.insert(pos, index)
        nodes.insert(pos, node)
    ordered = []
    node = head
    while node >= 0:
        ordered.append(disks[node])
        node = nxt[node]
    return ordered


_D = TypeVar("_D")


def order_disks(disks: list[Disk]) -> list[Disk]:
    """``disks`` in libvirt's order (a disk added to a domain goes where libvirt puts it)."""
    return _order_disks(disks)


def clone_device(dev: _D) -> _D:
    """A deep copy of one device."""
    copy: _D = _clone(dev)
    return copy


def _free_controller_index(controllers: list[Controller], ctl: Controller) -> int:
    """The index libvirt gives a controller written without one."""
    if ctl.type == "usb" or (ctl.type == "pci" and ctl.model in ("pci-root", "pcie-root")):
        return 0  # USB companions share their master's index; PCI roots are always 0
    used = {c.index for c in controllers if c.type == ctl.type}
    index = 1 if ctl.type == "pci" else 0
    while index in used:
        index += 1
    return index


def insert_controller(controllers: list[Controller], ctl: Controller) -> None:
    """Insert keeping controllers of one type together and sorted by index, as libvirt does."""
    pos = None
    last_same = None
    for i, other in enumerate(controllers):
        if other.type == ctl.type:
            if other.index > ctl.index and pos is None:
                pos = i
            last_same = i
    if pos is None:
        pos = len(controllers) if last_same is None else last_same + 1
    controllers.insert(pos, ctl)


__all__ = [
    "CPUDef",
    "Clock",
    "DomainDef",
    "Features",
    "HyperV",
    "Loader",
    "MemoryBacking",
    "NVRam",
    "OSDef",
    "clone_device",
    "insert_controller",
    "order_disks",
    "parse_cpuset",
    "parse_domain_xml",
]
