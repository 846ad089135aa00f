"""libvirt's generic post-parse: what it fills in and checks for every hypervisor.

:func:`postparse_domain` is libvirt's ``virDomainDefPostParse`` without the hypervisor
driver's callbacks (``src/conf/domain_postparse.c``, with the few defaults and checks of
``domain_conf.c`` and ``domain_validate.c`` that depend on no hypervisor either). Both
drivers run it: the test driver alone, the QEMU driver first and then its own
(:func:`asvirt.drivers.qemu.postparse.prepare_domain`), so ``dumpxml`` of the same XML
agrees between them on everything here. Nothing here needs capabilities or probes anything.

What it does (libvirt's function in brackets):

* ``<currentMemory>`` missing, zero or above ``<memory>`` becomes ``<memory>``
  (``virDomainDefPostParseMemory``); the current vCPU count must not exceed the maximum;
* a ``<cpu><topology>`` gets ``dies`` and ``clusters`` of 1 and must multiply out to the
  vCPU count (``virCPUDefParseXML``, ``virDomainDefValidate``);
* per-device ``<boot order>`` values are unique and not mixed with ``<os><boot>``
  (``virDomainDefBootOrderPostParse``);
* no two controllers of one type share an index, USB excepted (companions share one)
  (``virDomainDefRejectDuplicateControllers``);
* a mouse or keyboard without a bus is PS/2 on x86, anything else USB
  (``virDomainInputDefPostParse``);
* disk targets are unique and a disk without a bus gets the one its name says: ``hd*`` IDE,
  ``sd*`` SCSI, ``vd*`` virtio (``virDomainDiskDefPostParse``);
* an interface without a MAC gets a random ``52:54:00:xx:xx:xx`` one, libvirt's default
  prefix (``virDomainNetGenerateMAC``), and MACs are unique; a tap name libvirt would have
  made up (``vnetN``...) is not kept, nor the bridge a network interface was plugged into
  (both are facts of a run, shown in the live XML);
* serial ports without a target port take the lowest free one, ports are unique
  (``virDomainChrIsaSerialDefPostParse``, ``virDomainChrDefPostParse``), and the console
  compatibility: the first console without a target type is a serial console, later ones
  virtio, and a serial console is another view of serial port 0 -- one is added when there
  is a serial port, and a serial port when there is only the console
  (``virDomainDefAddConsoleCompat``);
* video: at most one primary, moved first; the first one is marked primary, ``none`` must
  be alone, ``heads`` defaults to 1 and VRAM (and QXL's RAM) to libvirt's size for the
  model (``virDomainDefPostParseVideo``, ``virDomainVideoDefPostParse``);
* a watchdog's action defaults to ``reset``, a ``random`` RNG backend to ``/dev/random``
  (``virDomainRNGDefPostParse``), a VNC display to ``<listen type='address'/>`` and an
  automatic port (``virDomainGraphicsDefParseXML``);
* ``<audio>`` ids and user aliases (``ua-...``) are unique (``virDomainDefValidate``).

Everything that depends on QEMU is the QEMU driver's: the machine type, CPU model, device
models, implicit controllers and devices, addresses of every kind, and aliases.
"""

from __future__ import annotations

import random

from ..errors import ConfigUnsupportedError, XMLError
from .devices import Chardev, DeviceBase, Disk, GraphicsListen, Interface, default_disk_bus
from .domain import DomainDef, parse_cpuset

#: libvirt's default MAC prefix (QEMU's too) for addresses it generates.
MAC_PREFIX = "52:54:00"
#: libvirt's default VRAM (KiB) of each video model that has one (virDomainVideoDefaultRAM).
DEFAULT_VRAM = {"vga": 16384, "cirrus": 16384, "bochs": 16384, "qxl": 65536, "vmvga": 16384}
#: ... and QXL's RAM bar.
DEFAULT_QXL_RAM = 65536


def postparse_domain(defn: DomainDef) -> DomainDef:
    """The definition with libvirt's hypervisor-independent defaults and checks (a new object).

    Running it again changes nothing. Raises :class:`~asvirt.errors.XMLError` when the
    definition is inconsistent in a way no hypervisor would accept.
    """
    d = defn.copy()
    _memory(d)
    _vcpus(d)
    _boot_orders(d)
    _controllers(d)
    _inputs(d)
    _disks(d)
    _interfaces(d)
    _chardevs(d)
    _videos(d)
    _misc_devices(d)
    _user_aliases(d)
    return d


def _memory(d: DomainDef) -> None:
    # libvirt's sizes: NUMA cells are the initial memory, <memory> adds the memory devices.
    plugged = sum(m.size_kib for m in d.memory_devices if m.in_ram)
    cells = d.cpu.numa if d.cpu is not None else []
    if cells:
        d.memory_kib = sum(c.memory_kib for c in cells) + plugged
    elif plugged >= d.memory_kib:
        raise XMLError("the memory devices hold all of <memory>: nothing is left to boot with")
    if any(m.in_ram for m in d.memory_devices) and d.max_memory_kib is None:
        raise XMLError("memory devices need <maxMemory> (the region they are plugged into)")
    if d.max_memory_kib is not None:
        if d.max_memory_kib < d.memory_kib:
            raise XMLError(
                f"<maxMemory> ({d.max_memory_kib} KiB) is less than <memory> ({d.memory_kib} KiB)"
            )
        dimms = sum(1 for m in d.memory_devices if m.model in ("dimm", "nvdimm"))
        if dimms > (d.max_memory_slots or 0):
            raise XMLError(f"{dimms} DIMMs, but <maxMemory> has {d.max_memory_slots or 0} slots")
    for i, cell in enumerate(cells):
        for cpu in parse_cpuset(cell.cpus) if cell.cpus else ():
            if cpu >= d.max_vcpus:
                raise XMLError(f"NUMA cell {i} names vCPU {cpu}; the domain has {d.max_vcpus}")
    for dev in d.memory_devices:
        if cells and dev.node is not None and dev.node >= len(cells):
            raise XMLError(f"a memory device is on NUMA node {dev.node}, which does not exist")
    if d.numatune is not None:
        for mn in d.numatune.memnodes:
            if mn.cellid >= len(cells):
                raise XMLError(
                    f"<memnode cellid='{mn.cellid}'> names a NUMA cell that is not there"
                )
    if d.current_memory_kib == 0 or d.current_memory_kib > d.memory_kib:
        d.current_memory_kib = d.memory_kib


def _vcpus(d: DomainDef) -> None:
    if d.vcpus > d.max_vcpus:
        raise XMLError(f"current vcpu count {d.vcpus} exceeds the maximum {d.max_vcpus}")
    topo = d.cpu.topology if d.cpu is not None else None
    if topo is None:
        return
    topo.dies = topo.dies or 1
    topo.clusters = topo.clusters or 1
    if topo.total != d.max_vcpus:
        raise XMLError(
            f"CPU topology ({topo.sockets} sockets x {topo.dies} dies x {topo.clusters} "
            f"clusters x {topo.cores} cores x {topo.threads} threads = {topo.total}) "
            f"does not match the vcpu count {d.max_vcpus}"
        )


def _boot_orders(d: DomainDef) -> None:
    bootable: list[Disk | Interface] = [*d.disks, *d.interfaces]
    orders = [x.boot_order for x in bootable if x.boot_order is not None]
    if orders and d.os.boot_devices:
        raise XMLError("per-device <boot order> cannot be used together with <os><boot>")
    if len(orders) != len(set(orders)):
        raise XMLError("boot order values must be unique")


def _controllers(d: DomainDef) -> None:
    seen: set[tuple[str, int]] = set()
    for ctl in d.controllers:
        if ctl.type == "usb":
            continue  # USB2 companions share their master's index
        if (ctl.type, ctl.index) in seen:
            raise XMLError(f"there is more than one {ctl.type} controller with index {ctl.index}")
        seen.add((ctl.type, ctl.index))


def _inputs(d: DomainDef) -> None:
    x86 = d.os.arch in ("", "x86_64", "i686")  # no arch yet: the driver's default, x86 here
    for inp in d.inputs:
        if inp.bus is None and inp.type != "evdev":
            inp.bus = "ps2" if x86 and inp.type in ("mouse", "keyboard") else "usb"


def _disks(d: DomainDef) -> None:
    targets: set[str] = set()
    for disk in d.disks:
        if disk.target in targets:
            raise XMLError(f"there is more than one disk with target '{disk.target}'")
        targets.add(disk.target)
        if not disk.bus:
            disk.bus = default_disk_bus(disk.target)
            if not disk.bus:
                raise XMLError(f"cannot tell the bus of disk '{disk.target}'; set target bus")


#: Tap names libvirt makes up itself: a <target dev> that starts so (from a live XML dump) is
#: not kept, and a new one is given at each start.
RESERVED_TAP_PREFIXES = ("vnet", "vif", "macvtap", "macvlan")


def _interfaces(d: DomainDef) -> None:
    macs = {nic.mac for nic in d.interfaces if nic.mac is not None}
    seen: set[str] = set()
    for nic in d.interfaces:
        if nic.target_dev is not None and nic.target_dev.startswith(RESERVED_TAP_PREFIXES):
            nic.target_dev = None
        if nic.type == "network":
            nic.source_bridge = None  # live-only: where the last start plugged it
        if nic.mac is None:
            nic.mac = _random_mac(macs)
            macs.add(nic.mac)
        if nic.mac in seen:
            raise XMLError(f"MAC address {nic.mac} is used by more than one interface")
        seen.add(nic.mac)


def _random_mac(taken: set[str]) -> str:
    rng = random.SystemRandom()
    while True:
        mac = MAC_PREFIX + ":" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
        if mac not in taken:
            return mac


def _chardevs(d: DomainDef) -> None:
    used = {c.target_port for c in d.serials if c.target_port is not None}
    for chr_ in d.serials:
        if chr_.target_port is None:
            port = 0
            while port in used:
                port += 1
            chr_.target_port = port
            used.add(port)
    ports = [c.target_port for c in d.serials]
    if len(ports) != len(set(ports)):
        raise XMLError("two serial ports have the same target port")
    used = {c.target_port for c in d.parallels if c.target_port is not None}
    for chr_ in d.parallels:
        if chr_.target_port is None:
            chr_.target_port = min(set(range(len(d.parallels) + 1)) - used)
            used.add(chr_.target_port)
    if len(used) != len(d.parallels):
        raise XMLError("two parallel ports have the same target port")

    # The console compatibility dance: on x86 the first console is serial port 0.
    if d.consoles and d.consoles[0].target_type is None:
        d.consoles[0].target_type = "serial"
    for i, con in enumerate(d.consoles):
        if con.target_type is None:
            con.target_type = "virtio"
        if con.target_type == "serial" and i > 0:
            raise ConfigUnsupportedError(
                "unsupported configuration: only the first <console> can be a serial console"
            )
    if d.serials:
        if not d.consoles or d.consoles[0].target_type != "serial":
            d.consoles.insert(0, Chardev(kind="console", type=d.serials[0].type))
        _mirror_serial(d.consoles[0], d.serials[0])
    elif d.consoles and d.consoles[0].target_type == "serial":
        con = d.consoles[0]
        serial = Chardev(kind="serial", target_port=con.target_port or 0)
        for name in Chardev.SOURCE_FIELDS:
            setattr(serial, name, getattr(con, name))
        d.serials.append(serial)
        _mirror_serial(con, serial)


def _mirror_serial(con: Chardev, serial: Chardev) -> None:
    """Make ``con`` show serial port ``serial``, the way libvirt's console compat does."""
    for name in Chardev.SOURCE_FIELDS:
        setattr(con, name, getattr(serial, name))
    con.target_type = "serial"
    con.target_port = serial.target_port
    con.address = None


def _videos(d: DomainDef) -> None:
    primaries = [v for v in d.videos if v.primary]
    if len(primaries) > 1:
        raise XMLError("only one video device can be primary")
    if primaries and d.videos[0] is not primaries[0]:
        d.videos.remove(primaries[0])
        d.videos.insert(0, primaries[0])
    video_defaults(d)


def video_defaults(d: DomainDef) -> None:
    """The defaults every driver gives the videos whose model is known.

    A driver that picks the model of a video written without one (or adds an implicit
    video) runs this again afterwards, as libvirt re-runs the video post-parse.
    """
    for i, video in enumerate(d.videos):
        if video.model == "none":
            if len(d.videos) > 1:
                raise XMLError("a video device of model 'none' must be the only one")
            continue
        if i == 0:
            video.primary = True
        video.heads = video.heads or 1
        if video.model in DEFAULT_VRAM:
            video.vram = video.vram or DEFAULT_VRAM[video.model]
        if video.model == "qxl":
            video.ram = video.ram or DEFAULT_QXL_RAM


def _misc_devices(d: DomainDef) -> None:
    ids = [a.id for a in d.audios]
    if len(ids) != len(set(ids)):
        raise XMLError("two <audio> elements have the same id")
    for wd in d.watchdogs:
        wd.action = wd.action or "reset"
    for rng in d.rngs:
        if rng.backend == "random" and rng.backend_path is None:
            rng.backend_path = "/dev/random"
    for gfx in d.graphics:
        if gfx.type not in ("vnc", "spice"):
            continue  # a local display: nothing to listen on
        # Without an address the display listens where the driver says (QEMU: 127.0.0.1,
        # chosen when the command line is built, as libvirt takes it from qemu.conf).
        if not gfx.listens:
            gfx.listens.append(GraphicsListen(type="address"))
        if gfx.port is None and gfx.autoport is None:
            gfx.port, gfx.autoport = -1, True


def all_devices(d: DomainDef) -> list[DeviceBase]:
    """Every device that can have an alias, in libvirt's order."""
    return [
        *d.disks,
        *d.controllers,
        *d.interfaces,
        *d.serials,
        *d.parallels,
        *d.consoles,
        *d.channels,
        *d.inputs,
        *d.videos,
        *d.hubs,
        *d.watchdogs,
        *d.rngs,
        *d.panics,
        *([d.memballoon] if d.memballoon is not None else []),
        *d.filesystems,
        *d.hostdevs,
        *d.sounds,
        *d.redirdevs,
        *d.tpms,
        *d.shmems,
        *d.memory_devices,
        *d.smartcards,
        *([d.iommu] if d.iommu is not None else []),
        *([d.vsock] if d.vsock is not None else []),
        *d.cryptos,
        *([d.pstore] if d.pstore is not None else []),
    ]


def _user_aliases(d: DomainDef) -> None:
    taken = [dev.alias for dev in all_devices(d) if dev.user_alias]
    if len(taken) != len(set(taken)):
        raise XMLError("two devices have the same user alias")


__all__ = ["DEFAULT_VRAM", "MAC_PREFIX", "all_devices", "postparse_domain", "video_defaults"]
