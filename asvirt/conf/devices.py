"""The devices of a domain: one dataclass per ``<devices>`` child, with its parser and writer.

Each ``parse_*`` function reads one element strictly (see :mod:`asvirt.conf.xmlnode`):
anything it does not understand is reported as unsupported, never dropped. Each ``format``
method writes the element back the way libvirt does; ``live=True`` adds the ``<alias>`` a
running domain's XML carries, and runtime facts such as a pty's path.

Defaults (models, addresses, aliases) are not filled in here but by the driver's
post-parse step (:mod:`asvirt.drivers.qemu.postparse`), as in libvirt.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigUnsupportedError, XMLError
from .addresses import (
    Address,
    DriveAddress,
    ISAAddress,
    PCIAddress,
    USBAddress,
    VirtioSerialAddress,
    format_address,
    parse_address,
)
from .encryption import Encryption, parse_encryption
from .names import validate_name
from .netdisk import NetworkSource, parse_network_source
from .tuning import (
    BlockIO,
    DeviceSecLabel,
    Geometry,
    IOTune,
    parse_blockio,
    parse_device_seclabels,
    parse_geometry,
    parse_iotune,
)
from .xmlnode import Node, XElem
from .xmlsafe import parse_xml

# ---------------------------------------------------------------------------------------------
# shared pieces


@dataclass(slots=True)
class DeviceBase:
    """What every device has: an alias (QEMU's id for it) and maybe an address."""

    alias: str | None = field(default=None, kw_only=True)
    #: True when the alias came from the user (``ua-`` prefix): it is kept and always shown.
    user_alias: bool = field(default=False, kw_only=True)
    address: Address | None = field(default=None, kw_only=True)

    def _format_tail(self, el: XElem, live: bool) -> None:
        if self.alias and (live or self.user_alias):
            el.add("alias", {"name": self.alias})
        format_address(el, self.address)


def _parse_alias(node: Node, dev: DeviceBase) -> None:
    """Read ``<alias name=...>``: user aliases (``ua-...``) are kept; others come from a live
    XML dump, and are kept only where the driver reads back its own live XML (a running
    domain's status: devices plugged while it ran keep their ids). Defining regenerates them."""
    alias = node.child("alias")
    if alias is None:
        return
    name = alias.required("name")
    alias.finish()
    if name.startswith("ua-"):
        if not re.fullmatch(r"ua-[A-Za-z0-9_-]+", name):
            raise XMLError(f"invalid user alias '{name}' in {node.where}")
        dev.alias = name
        dev.user_alias = True
    else:
        dev.alias = name


@dataclass(slots=True)
class Rom:
    """A PCI device's ``<rom enabled= bar= file=>``: whether it has an option ROM, whether
    the guest sees it in a BAR ('on'|'off'), and the file it is read from."""

    enabled: bool | None = None
    bar: str | None = None
    file: str | None = None

    def format_xml(self, parent: XElem) -> None:
        parent.add("rom", {"enabled": self.enabled, "bar": self.bar, "file": self.file})


def parse_rom(node: Node) -> Rom | None:
    """``node``'s ``<rom>``, if any."""
    el = node.child("rom")
    if el is None:
        return None
    rom = Rom(enabled=el.yesno("enabled"), bar=el.onoff("bar"), file=el.attr("file"))
    el.finish()
    if rom.file is not None and not rom.file.startswith("/"):
        raise XMLError(f"invalid ROM file '{rom.file}' of {el.where}: it must be an absolute path")
    if rom.enabled is False and (rom.bar is not None or rom.file is not None):
        raise XMLError("ROM tuning is not supported when ROM is disabled")  # libvirt's words
    return rom


#: The largest ``<acpi index=>`` (QEMU's limit, and libvirt's).
ACPI_INDEX_MAX = 16383


def parse_acpi_index(node: Node) -> int | None:
    """``node``'s ``<acpi index=>``: the index the guest's firmware names a PCI device by
    (what gives Linux's ``eno<index>`` interface names); None without one."""
    el = node.child("acpi")
    if el is None:
        return None
    index = el.integer("index", minimum=1, maximum=ACPI_INDEX_MAX)
    el.finish()
    return index


def _parse_boot(node: Node) -> int | None:
    boot = node.child("boot")
    if boot is None:
        return None
    order = boot.integer("order", minimum=1, maximum=65535)
    if order is None:
        raise XMLError(f"missing attribute 'order' of {boot.where}")
    boot.finish()  # loadparm (s390 only) is reported as unsupported here
    return order


# ---------------------------------------------------------------------------------------------
# disks

DISK_BUSES = ("ide", "sata", "scsi", "virtio", "usb", "fdc")
#: ``<disk device=...>``: a LUN is a host SCSI device passed through (QEMU's scsi-block).
DISK_DEVICES = ("disk", "cdrom", "floppy", "lun")
DISK_FORMATS = ("raw", "qcow2")
CACHE_MODES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
IO_MODES = ("native", "threads", "io_uring")
ERROR_POLICIES = ("stop", "report", "ignore", "enospace")

# At most four letters: vdzzzz is disk 475253, far beyond anything a guest can have.
_DISK_NAME_RE = re.compile(r"^(hd|sd|vd|xvd|ubd|fd)([a-z]{1,4})$")


def disk_name_index(name: str) -> int:
    """libvirt's index of a disk target name: ``vda`` is 0, ``vdz`` 25, ``vdaa`` 26."""
    m = _DISK_NAME_RE.match(name)
    if m is None:
        raise XMLError(f"invalid disk target name '{name}'")
    idx = 0
    for ch in m.group(2):
        idx = idx * 26 + (ord(ch) - ord("a") + 1)
    return idx - 1


def default_disk_bus(target: str) -> str:
    prefix = _DISK_NAME_RE.match(target)
    kind = prefix.group(1) if prefix else ""
    return {"hd": "ide", "sd": "scsi", "vd": "virtio", "fd": "fdc"}.get(kind, "")


@dataclass
class BackingStore:
    """One image below a disk's top in its backing chain, as the live XML's
    ``<backingStore>`` shows what QEMU has open."""

    source: str
    format: str | None = None
    type: str = "file"  # file | block
    #: The number of its nodes in QEMU (``libvirt-N-format``), when they have one:
    #: libvirt's ``<backingStore index='N'>`` (an image QEMU opened itself has none).
    index: int | None = None


@dataclass(slots=True)
class Disk(DeviceBase):
    """``<disk>``: a file or block device seen by the guest as a disk or CD-ROM.

    A ``type='volume'`` disk names a storage volume (``<source pool= volume=>``) instead of
    a path; the driver resolves it to the volume's path (and format) when the domain starts.
    A ``type='network'`` disk has no path (``source`` stays None): its media is ``net``, a
    server QEMU connects to; code that needs to know whether there is media at all asks
    :attr:`has_media`.
    """

    type: str = "file"  # file | block | volume | network
    device: str = "disk"  # disk | cdrom | floppy | lun
    target: str = ""
    bus: str = ""
    source: str | None = None
    #: ``<source pool= volume=>`` of a ``type='volume'`` disk.
    source_pool: str | None = None
    source_volume: str | None = None
    #: ``<source protocol=...>`` of a ``type='network'`` disk.
    net: NetworkSource | None = None
    startup_policy: str | None = None
    driver_name: str | None = None
    format: str | None = None
    cache: str | None = None
    io: str | None = None
    discard: str | None = None
    detect_zeroes: str | None = None
    copy_on_read: str | None = None
    error_policy: str | None = None
    rerror_policy: str | None = None
    readonly: bool = False
    #: ``<shareable/>``: other guests may use the image at the same time.
    shareable: bool = False
    #: ``<driver iothread=N>``: the I/O thread of a virtio disk.
    iothread: int | None = None
    serial: str | None = None
    wwn: str | None = None
    rotation_rate: int | None = None
    tray: str | None = None
    #: ``<target removable=...>`` of a USB disk: 'on' | 'off'.
    removable: str | None = None
    snapshot: str | None = None
    #: device='lun' only: ``rawio='yes'`` lets QEMU send raw SCSI commands (it keeps
    #: CAP_SYS_RAWIO); ``sgio='unfiltered'`` lets unprivileged SG_IO through the kernel's
    #: filter (the kernel's ``unpriv_sgio``, set at start).
    rawio: bool | None = None
    sgio: str | None = None  # filtered | unfiltered
    boot_order: int | None = None
    #: N in the ``libvirt-N-storage`` node names (assigned with the aliases).
    node_index: int | None = None
    #: ``<driver queues= queue_size=>`` of a virtio disk.
    queues: int | None = None
    queue_size: int | None = None
    #: ``<iotune>``, ``<blockio>``, ``<geometry>`` (:mod:`asvirt.conf.tuning`).
    iotune: IOTune | None = None
    blockio: BlockIO | None = None
    geometry: Geometry | None = None
    #: ``<encryption format='luks'>``: the image is LUKS-encrypted (a raw LUKS image, or a
    #: qcow2 with LUKS encryption), its passphrase in a secret.
    encryption: Encryption | None = None
    #: ``<source><seclabel>``: how its file is labelled, overriding the domain's.
    seclabels: list[DeviceSecLabel] = field(default_factory=list)
    #: The images below the top, top first, as QEMU has them open (``<backingStore>`` of
    #: the live XML; [] : none, None: not known, as in a configuration).
    backing_store: list[BackingStore] | None = None

    @property
    def norelabel(self) -> bool:
        """``<source><seclabel model='dac' relabel='no'/>``: its file is never given to
        QEMU's user (see :mod:`asvirt.drivers.qemu.security`)."""
        return any(sl.dac_norelabel for sl in self.seclabels)

    @property
    def has_format_node(self) -> bool:
        """Whether QEMU opens the media through a format node (``libvirt-N-format``): any
        format but raw, and raw LUKS (QEMU's ``luks`` driver)."""
        return self.format != "raw" or self.encryption is not None

    @property
    def has_media(self) -> bool:
        """Whether the disk has media: a host path, or a network source."""
        return self.source is not None or self.net is not None

    @property
    def shown_source(self) -> str | None:
        """The source as ``domblklist`` shows it: the path, or a network source's name."""
        return self.net.display() if self.net is not None else self.source

    @property
    def node_names(self) -> list[str]:
        """The -blockdev node names QEMU knows this disk's media by, top first (the order
        blockdev-del needs), then those of the images below it that have names of this
        scheme (``<backingStore index>``); empty if it has no media."""
        if not self.has_media or self.node_index is None:
            return []
        names = []
        if self.iotune is not None:
            names.append(f"libvirt-{self.node_index}-throttle")
        if self.copy_on_read == "on":
            names.append(f"libvirt-CoR-{self.target}")
        if self.has_format_node:
            names.append(f"libvirt-{self.node_index}-format")
        names.append(f"libvirt-{self.node_index}-storage")
        for layer in self.backing_store or ():
            if layer.index is not None:
                if layer.format != "raw":
                    names.append(f"libvirt-{layer.index}-format")
                names.append(f"libvirt-{layer.index}-storage")
        return names

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "disk",
            {
                "type": self.type,
                "device": self.device,
                "rawio": self.rawio,
                "sgio": self.sgio,
                "snapshot": self.snapshot,
            },
        )
        el.add_if(
            "driver",
            {
                "name": self.driver_name,
                "type": self.format,
                "cache": self.cache,
                "error_policy": self.error_policy,
                "rerror_policy": self.rerror_policy,
                "io": self.io,
                "discard": self.discard,
                "copy_on_read": self.copy_on_read,
                "iothread": self.iothread,
                "detect_zeroes": self.detect_zeroes,
                "queues": self.queues,
                "queue_size": self.queue_size,
            },
        )
        src: XElem | None = None
        if self.type == "volume":
            src = el.add(
                "source",
                {
                    "pool": self.source_pool,
                    "volume": self.source_volume,
                    "startupPolicy": self.startup_policy,
                },
            )
        elif self.net is not None:
            src = self.net.format_xml(el, self.node_index if live else None)
        elif self.source is not None or self.startup_policy is not None:
            key = "dev" if self.type == "block" else "file"
            # libvirt's live XML numbers the media's node (libvirt-N-storage): kept by the
            # status file, so that disks plugged while running keep their nodes' names.
            index = self.node_index if live and self.source is not None else None
            src = el.add(
                "source", {key: self.source, "startupPolicy": self.startup_policy, "index": index}
            )
        if src is not None:
            for label in self.seclabels:
                label.format_xml(src)
        if self.encryption is not None:
            self.encryption.format_xml(src if self.encryption.in_source and src else el)
        if live and self.backing_store is not None and self.source is not None:
            parent = el
            for layer in self.backing_store:
                parent = parent.add("backingStore", {"type": layer.type, "index": layer.index})
                parent.add_if("format", {"type": layer.format})
                parent.add("source", {"dev" if layer.type == "block" else "file": layer.source})
            parent.add("backingStore")
        if self.geometry is not None:
            self.geometry.format_xml(el)
        if self.blockio is not None:
            self.blockio.format_xml(el)
        el.add(
            "target",
            {
                "dev": self.target,
                "bus": self.bus or None,
                "tray": self.tray,
                "removable": self.removable,
                "rotation_rate": self.rotation_rate,
            },
        )
        if self.iotune is not None:
            self.iotune.format_xml(el)
        if self.boot_order is not None:
            el.add("boot", {"order": self.boot_order})
        if self.readonly:
            el.add("readonly")
        if self.shareable:
            el.add("shareable")
        if self.serial is not None:
            el.add("serial", text=self.serial)
        if self.wwn is not None:
            el.add("wwn", text=self.wwn)
        self._format_tail(el, live)


def _parse_disk_tuning(node: Node, disk: Disk) -> None:
    sub = node.child("iotune")
    if sub is not None:
        disk.iotune = parse_iotune(sub)
    sub = node.child("blockio")
    if sub is not None:
        disk.blockio = parse_blockio(sub)
    sub = node.child("geometry")
    if sub is not None:
        disk.geometry = parse_geometry(sub)


def _parse_source_encryption(src: Node, disk: Disk) -> None:
    disk.seclabels = parse_device_seclabels(src)
    enc = src.child("encryption")
    if enc is not None:
        disk.encryption = parse_encryption(enc, in_source=True)


def _parse_backing_store(node: Node) -> list[BackingStore] | None:
    """The chain of ``<backingStore>`` in ``node`` (a live XML's, kept in status files):
    None without one. What QEMU has open replaces it while the domain runs; a
    configuration keeps none (the images name their own backing files)."""
    chain: list[BackingStore] = []
    store = node.child("backingStore")
    if store is None:
        return None
    while store is not None:
        src = store.child("source")
        if src is None:  # <backingStore/>: the end of the chain
            store.finish()
            return chain
        kind = store.choice("type", ("file", "block"), "file") or "file"
        path = src.attr("dev" if kind == "block" else "file")
        if path is None or not path.startswith("/"):
            raise XMLError(f"{src.where} needs an absolute path")
        src.ignore("index")
        src.finish()
        fmt = store.child("format")
        layer = BackingStore(path, fmt.choice("type", DISK_FORMATS) if fmt else None, kind)
        if fmt is not None:
            fmt.finish()
        layer.index = store.integer("index", minimum=1, maximum=2**31 - 1)
        chain.append(layer)
        following = store.child("backingStore")
        store.finish()
        store = following
    return chain


def parse_disk(node: Node) -> Disk:
    disk = Disk(
        type=node.choice("type", ("file", "block", "volume", "network"), "file") or "file",
        device=node.choice("device", DISK_DEVICES, "disk") or "disk",
        snapshot=node.choice("snapshot", ("internal", "external", "no", "manual")),
        rawio=node.yesno("rawio"),
        sgio=node.choice("sgio", ("filtered", "unfiltered")),
    )
    drv = node.child("driver")
    if drv is not None:
        disk.driver_name = drv.choice("name", ("qemu",))
        disk.format = drv.choice("type", DISK_FORMATS)
        disk.cache = drv.choice("cache", CACHE_MODES)
        disk.io = drv.choice("io", IO_MODES)
        disk.discard = drv.choice("discard", ("unmap", "ignore"))
        disk.detect_zeroes = drv.choice("detect_zeroes", ("off", "on", "unmap"))
        disk.copy_on_read = drv.onoff("copy_on_read")
        disk.error_policy = drv.choice("error_policy", ERROR_POLICIES)
        disk.rerror_policy = drv.choice("rerror_policy", ("stop", "report", "ignore"))
        disk.iothread = drv.integer("iothread", minimum=1, maximum=(1 << 31) - 1)
        disk.queues = drv.integer("queues", minimum=1, maximum=1024)
        disk.queue_size = drv.integer("queue_size", minimum=2, maximum=1024)
        drv.finish()
    src = node.child("source")
    if src is not None and disk.type == "volume":
        disk.source_pool = src.required("pool")
        disk.source_volume = src.required("volume")
        validate_name(disk.source_pool, what="storage pool")
        validate_name(disk.source_volume, what="storage volume")
        disk.startup_policy = src.choice("startupPolicy", ("mandatory", "requisite", "optional"))
        _parse_source_encryption(src, disk)
        src.finish()
    elif disk.type == "volume":
        raise XMLError(f"{node.where} of type 'volume' needs <source pool=... volume=...>")
    elif disk.type == "network" and src is not None:
        disk.net = parse_network_source(src)
        disk.node_index = src.integer("index", minimum=1, maximum=2**31 - 1)
        _parse_source_encryption(src, disk)
        if disk.encryption is not None and disk.net.protocol == "nfs":
            # (libvirt's schema has none there; dumpxml would not validate)
            raise XMLError(f"{src.where}: an nfs source takes no <encryption>; give it in <disk>")
        src.finish()
    elif disk.type == "network" and disk.device not in ("cdrom", "floppy"):
        raise XMLError(f"{node.where} of type 'network' needs <source protocol=...>")
    elif src is not None:
        key = "dev" if disk.type == "block" else "file"
        disk.source = src.attr(key)
        if disk.source is not None and not disk.source.startswith("/"):
            raise XMLError(f"disk source '{disk.source}' in {node.where} must be an absolute path")
        disk.startup_policy = src.choice("startupPolicy", ("mandatory", "requisite", "optional"))
        disk.node_index = src.integer("index", minimum=1, maximum=2**31 - 1)
        _parse_source_encryption(src, disk)
        src.finish()
    disk.backing_store = _parse_backing_store(node)
    enc = node.child("encryption")
    if enc is not None:
        if disk.encryption is not None:
            raise XMLError(f"{node.where} has <encryption> both in <source> and in <disk>")
        disk.encryption = parse_encryption(enc)
    _parse_disk_tuning(node, disk)
    tgt = node.child("target")
    if tgt is None:
        raise XMLError("missing <target> of <disk>")
    disk.target = tgt.required("dev")
    disk_name_index(disk.target)  # validates the name
    if tgt.attr("bus") == "nvme":
        raise ConfigUnsupportedError(
            "unsupported configuration: <target bus='nvme'> is not in libvirt 9's domain schema "
            "(an emulated NVMe controller came to libvirt later); put the disk on virtio, "
            "scsi or sata"
        )
    disk.bus = tgt.choice("bus", DISK_BUSES) or default_disk_bus(disk.target)
    disk.tray = tgt.choice("tray", ("open", "closed"))
    if disk.tray == "open":
        raise tgt.unsupported_value("tray", "open", ["closed"])
    disk.removable = tgt.onoff("removable")
    disk.rotation_rate = tgt.integer("rotation_rate", minimum=1, maximum=65534)
    tgt.finish()
    disk.boot_order = _parse_boot(node)
    ro = node.child("readonly")
    if ro is not None:
        ro.finish()
        disk.readonly = True
    sh = node.child("shareable")
    if sh is not None:
        sh.finish()
        disk.shareable = True
    disk.serial = node.child_text("serial")
    if disk.serial is not None and not re.fullmatch(r"[A-Za-z0-9_. +-]*", disk.serial):
        raise XMLError(f"disk serial '{disk.serial}' has characters QEMU does not accept")
    wwn = node.child_text("wwn")
    if wwn is not None:
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]{16}", wwn):
            raise XMLError(f"invalid <wwn> '{wwn}': expected 16 hex digits")
        disk.wwn = wwn
    _parse_alias(node, disk)
    disk.address = parse_address(node, (DriveAddress, PCIAddress, USBAddress))
    node.finish()
    _check_disk_bus(disk)
    return disk


def _check_disk_bus(disk: Disk) -> None:
    """The device kinds each bus carries (what QEMU has a device for)."""
    where = f"disk '{disk.target}'"
    if disk.encryption is not None and disk.format not in (None, "raw", "qcow2"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: QEMU opens LUKS encryption in raw and qcow2 "
            f"images only, not in {disk.format}"
        )
    if disk.device == "cdrom" and disk.bus == "virtio":
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: a cdrom cannot be on the virtio bus"
        )
    if (disk.device == "floppy") != (disk.bus == "fdc"):
        raise XMLError(f"{where}: a floppy is on the fdc bus, and only a floppy is")
    if disk.device == "lun" and disk.bus != "scsi":
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: QEMU passes a host SCSI device (device='lun') "
            "through to a SCSI controller only (its virtio-blk lost SCSI passthrough in 5.0)"
        )
    for attr in ("rawio", "sgio"):
        if getattr(disk, attr) is not None and disk.device != "lun":
            raise XMLError(f"{where}: {attr} can be used only with device='lun'")  # libvirt's
    if disk.net is not None and disk.device == "lun" and disk.net.protocol != "iscsi":
        # QEMU's iscsi driver alone speaks SCSI to its LUN (scsi-block over it, as libvirt).
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: disk device='lun' is not supported for "
            f"protocol='{disk.net.protocol}' (only an iSCSI LUN is passed through)"
        )
    if disk.net is not None and disk.net.is_curl and not disk.readonly and disk.device == "disk":
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: QEMU opens {disk.net.protocol} media "
            "read-only; add <readonly/>"
        )
    if disk.device == "lun" and disk.type not in ("block", "network"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: device='lun' passes a host SCSI device "
            "(or an iSCSI LUN) through and needs type='block' with <source dev=...> (or "
            "type='network' with protocol='iscsi')"
        )
    if disk.removable is not None and disk.bus != "usb":
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: removable= is for USB disks only"
        )
    if disk.bus == "usb" and disk.device not in ("disk", "cdrom"):
        raise XMLError(f"{where}: a USB disk is a disk or a cdrom")


# ---------------------------------------------------------------------------------------------
# controllers

CONTROLLER_MODELS: dict[str, tuple[str, ...]] = {
    "pci": (
        "pci-root",
        "pcie-root",
        "pci-bridge",
        "dmi-to-pci-bridge",
        "pcie-root-port",
        "pcie-to-pci-bridge",
    ),
    "usb": (
        "piix3-uhci",
        "piix4-uhci",
        "ehci",
        "ich9-ehci1",
        "ich9-uhci1",
        "ich9-uhci2",
        "ich9-uhci3",
        "nec-xhci",
        "qemu-xhci",
        "none",
    ),
    "scsi": ("lsilogic", "virtio-scsi", "lsisas1068", "lsisas1078", "vmpvscsi", "auto"),
    "ide": (),
    "sata": (),
    "ccid": (),
    "virtio-serial": ("virtio",),
    "fdc": (),
}


@dataclass(slots=True)
class Controller(DeviceBase):
    """``<controller>``: PCI buses and bridges, USB, IDE, SATA, SCSI, virtio-serial, FDC."""

    type: str = ""
    index: int = 0
    model: str | None = None
    ports: int | None = None
    vectors: int | None = None
    #: ``<model name=...>``: the QEMU device of a PCI controller (``pcie-root-port``).
    model_name: str | None = None
    chassis_nr: int | None = None
    chassis: int | None = None
    port: int | None = None
    hotplug: str | None = None
    #: ``<master startport=...>`` of a USB companion controller.
    master_startport: int | None = None
    #: ``<driver>`` tuning of a virtio-scsi controller.
    queues: int | None = None
    cmd_per_lun: int | None = None
    max_sectors: int | None = None
    ioeventfd: str | None = None
    iothread: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "controller",
            {
                "type": self.type,
                "index": self.index,
                "model": self.model,
                "ports": self.ports,
                "vectors": self.vectors,
            },
        )
        if self.model_name is not None:
            el.add("model", {"name": self.model_name})
        el.add_if(
            "target",
            {
                "chassisNr": self.chassis_nr,
                "chassis": self.chassis,
                "port": None if self.port is None else f"{self.port:#x}",
                "hotplug": self.hotplug,
            },
        )
        if self.alias and (live or self.user_alias):
            el.add("alias", {"name": self.alias})
        if self.master_startport is not None:
            el.add("master", {"startport": self.master_startport})
        el.add_if(
            "driver",
            {
                "queues": self.queues,
                "cmd_per_lun": self.cmd_per_lun,
                "max_sectors": self.max_sectors,
                "ioeventfd": self.ioeventfd,
                "iothread": self.iothread,
            },
        )
        format_address(el, self.address)


def parse_controller(node: Node) -> Controller:
    kind = node.required("type")
    if kind not in CONTROLLER_MODELS:
        raise node.unsupported_value("type", kind, list(CONTROLLER_MODELS))
    ctl = Controller(type=kind)
    index = node.integer("index", minimum=0, maximum=255)
    ctl.index = -1 if index is None else index  # -1: pick one (see domain._parse_devices)
    models = CONTROLLER_MODELS[kind]
    model = node.attr("model")
    if model is not None:
        if model not in models:
            raise node.unsupported_value("model", model, models or None)
        ctl.model = model
    if kind in ("usb", "virtio-serial"):
        ctl.ports = node.integer("ports", minimum=1, maximum=31 if kind == "virtio-serial" else 15)
    if kind == "virtio-serial":
        ctl.vectors = node.integer("vectors", minimum=1, maximum=65535)
    mnode = node.child("model")
    if mnode is not None:
        if kind != "pci":
            raise node.unsupported("<model> child (only PCI controllers have one)")
        ctl.model_name = mnode.choice(
            "name",
            ("pci-bridge", "i82801b11-bridge", "pcie-root-port", "ioh3420", "pcie-pci-bridge"),
        )
        mnode.finish()
    tnode = node.child("target")
    if tnode is not None:
        if kind != "pci":
            raise node.unsupported("<target> child (only PCI controllers have one)")
        ctl.chassis_nr = tnode.integer("chassisNr", minimum=1, maximum=255)
        ctl.chassis = tnode.integer("chassis", minimum=0, maximum=255)
        ctl.port = tnode.integer("port", minimum=0, maximum=255, hex_ok=True)
        ctl.hotplug = tnode.onoff("hotplug")
        tnode.finish()
    master = node.child("master")
    if master is not None:
        if kind != "usb":
            raise node.unsupported("<master> (only USB companion controllers have one)")
        ctl.master_startport = master.integer("startport", minimum=0, maximum=31)
        if ctl.master_startport is None:
            raise XMLError(f"missing attribute 'startport' of {master.where}")
        master.finish()
    drv = node.child("driver")
    if drv is not None:
        if kind != "scsi":
            raise node.unsupported("<driver> (only virtio-scsi controllers are tuned here)")
        ctl.queues = drv.integer("queues", minimum=1, maximum=1024)
        ctl.cmd_per_lun = drv.integer("cmd_per_lun", minimum=1, maximum=65535)
        ctl.max_sectors = drv.integer("max_sectors", minimum=1, maximum=65535)
        ctl.ioeventfd = drv.onoff("ioeventfd")
        ctl.iothread = drv.integer("iothread", minimum=1, maximum=(1 << 31) - 1)
        drv.finish()
    _parse_alias(node, ctl)
    # A CCID controller is a USB smartcard reader (usb-ccid), not a PCI device.
    ctl.address = parse_address(node, (USBAddress,) if kind == "ccid" else (PCIAddress,))
    node.finish()
    return ctl


# ---------------------------------------------------------------------------------------------
# network interfaces

NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet", "vmxnet3", "igb")
#: ``user``: QEMU's user-mode (slirp) network; ``network``: a tap on a virtual network's
#: bridge; ``bridge``: a tap on an existing host bridge.
#: ``mcast``/``udp``/``server``/``client``: QEMU's socket netdev, a link to other guests'
#: NICs without the host's network; ``vhostuser``: a vhost-user backend's unix socket;
#: ``ethernet``: a tap of its own, on no bridge (or, ``managed='no'``, one that exists);
#: ``direct``: a macvtap on a host interface.
NIC_TYPES = (
    "user",
    "network",
    "bridge",
    "ethernet",
    "direct",
    "mcast",
    "udp",
    "server",
    "client",
    "vhostuser",
)
#: The NIC types QEMU gets a tap (or macvtap) for.
TAP_NIC_TYPES = ("network", "bridge", "ethernet", "direct")
#: ``<interface><driver name=...>``: the kernel's vhost-net, or QEMU's own packet path.
NIC_DRIVER_NAMES = ("qemu", "vhost")
#: ``<interface><driver txmode=...>``: how virtio-net transmits (in a bottom half, or on a
#: timer), when QEMU itself moves the packets.
NIC_TXMODES = ("iothread", "timer")
#: ``<interface><driver>``'s on/off switches of a virtio NIC, in libvirt's order.
NIC_DRIVER_SWITCHES = ("ioeventfd", "event_idx", "rss", "rss_hash_report")
#: ``<interface><driver><host .../>``: the offloads the device offers the guest's driver for
#: what it sends (and mergeable receive buffers).
NIC_HOST_OFFLOADS = ("csum", "gso", "tso4", "tso6", "ecn", "ufo", "mrg_rxbuf")
#: ``<interface><driver><guest .../>``: the offloads the guest is offered for what it receives.
NIC_GUEST_OFFLOADS = ("csum", "tso4", "tso6", "ecn", "ufo")
#: ``<interface type='direct'><source mode=...>``: the macvtap modes (libvirt's default vepa).
DIRECT_MODES = ("vepa", "bridge", "private", "passthrough")
SOCKET_NIC_TYPES = ("mcast", "udp", "server", "client")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
#: A Linux interface name (at most 15 bytes; no '/', ':', '%' or blanks).
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,15}$")


@dataclass(slots=True)
class Interface(DeviceBase):
    """``<interface>``: a NIC on QEMU's user-mode network (``user``), on a virtual network
    (``network``) or on a host bridge (``bridge``); the last two through a tap."""

    type: str = "user"
    mac: str | None = None
    model: str | None = None
    link_state: str | None = None
    boot_order: int | None = None
    #: ``<source network=...>`` (type network).
    source_network: str | None = None
    #: ``<source bridge=...>``: the host bridge (type bridge); for type network, the
    #: network's bridge the tap was plugged into (live XML only).
    source_bridge: str | None = None
    #: ``<target dev=...>``: the tap's name (a user's choice, or the one given at start).
    target_dev: str | None = None
    #: direct: ``<source dev= mode=>``: the host interface the macvtap sits on, and how.
    source_dev: str | None = None
    direct_mode: str | None = None
    #: ethernet: ``<target managed='no'>``: the tap exists already (made by someone else);
    #: asvirt only opens it.
    target_managed: bool | None = None
    #: socket types: ``<source address= port=>`` and udp's ``<local address= port=>``.
    source_address: str | None = None
    source_port: int | None = None
    local_address: str | None = None
    local_port: int | None = None
    #: vhostuser: ``<source type='unix' path= mode='server'|'client'>``.
    vhost_path: str | None = None
    vhost_mode: str | None = None
    #: vhostuser, mode='client': ``<reconnect enabled= timeout=>`` (seconds between tries;
    #: None: libvirt's default, no reconnecting).
    vhost_reconnect: bool | None = None
    vhost_reconnect_timeout: int | None = None
    #: ``<driver queues=N>``: virtio queue pairs (multiqueue) of a vhost-user NIC, or of a
    #: tap or macvtap one (opened once per queue).
    queues: int | None = None
    #: ``<driver name=...>``: ``vhost`` demands the kernel's vhost-net for a virtio NIC on a
    #: tap or macvtap, ``qemu`` keeps the packets in QEMU; None: vhost-net where the host
    #: has it (libvirt's default).
    driver_name: str | None = None
    #: The rest of a virtio NIC's ``<driver>``: ``txmode=`` (``NIC_TXMODES``), the ring
    #: sizes, the on/off switches (``NIC_DRIVER_SWITCHES``: name -> 'on'|'off'), the virtio
    #: options (``VIRTIO_OPTIONS``) and the ``<host>``/``<guest>`` offloads
    #: (``NIC_HOST_OFFLOADS``, ``NIC_GUEST_OFFLOADS``: name -> 'on'|'off').
    txmode: str | None = None
    rx_queue_size: int | None = None
    tx_queue_size: int | None = None
    driver_switches: dict[str, str] = field(default_factory=dict)
    virtio: dict[str, str] = field(default_factory=dict)
    host_offloads: dict[str, str] = field(default_factory=dict)
    guest_offloads: dict[str, str] = field(default_factory=dict)
    #: ``<rom>`` and ``<acpi index=>`` of the NIC's PCI device.
    rom: Rom | None = None
    acpi_index: int | None = None
    #: ``<mtu size=>``: the MTU of the host side (the tap) and what a virtio NIC tells its
    #: guest (``host_mtu``); ``<tune><sndbuf>``: the tap's send buffer, in bytes.
    mtu: int | None = None
    sndbuf: int | None = None
    #: ``<backend tap= vhost=>``: where the kernel's tun and vhost-net devices are, when
    #: not at /dev/net/tun and /dev/vhost-net.
    backend_tap: str | None = None
    backend_vhost: str | None = None
    #: ``<coalesce><rx><frames max=N>``: received frames the host's tap may batch.
    coalesce_rx_frames: int | None = None

    def virtio_net_settings(self) -> dict[str, object]:
        """Every ``<driver>`` setting that only virtio-net has (set ones only), by XML name
        (the offloads as ``host.NAME``/``guest.NAME``): what another NIC model must not be
        given, and what a live update must leave as it is."""
        out: dict[str, object] = {
            "txmode": self.txmode,
            "rx_queue_size": self.rx_queue_size,
            "tx_queue_size": self.tx_queue_size,
            **self.driver_switches,
            **self.virtio,
            **{f"host.{k}": v for k, v in self.host_offloads.items()},
            **{f"guest.{k}": v for k, v in self.guest_offloads.items()},
        }
        return {k: v for k, v in out.items() if v is not None}

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("interface", {"type": self.type})
        if self.mac is not None:
            el.add("mac", {"address": self.mac})
        if self.type in SOCKET_NIC_TYPES:
            src = el.add("source", {"address": self.source_address, "port": self.source_port})
            src.add_if("local", {"address": self.local_address, "port": self.local_port})
        elif self.type == "vhostuser":
            src = el.add(
                "source", {"type": "unix", "path": self.vhost_path, "mode": self.vhost_mode}
            )
            if self.vhost_reconnect is not None:
                src.add(
                    "reconnect",
                    {"enabled": self.vhost_reconnect, "timeout": self.vhost_reconnect_timeout},
                )
        elif self.type == "network":
            bridge = self.source_bridge if live else None
            el.add("source", {"network": self.source_network, "bridge": bridge})
        elif self.type == "bridge":
            el.add("source", {"bridge": self.source_bridge})
        elif self.type == "direct":
            el.add("source", {"dev": self.source_dev, "mode": self.direct_mode})
        if self.target_dev is not None and self.type in TAP_NIC_TYPES:
            el.add("target", {"dev": self.target_dev, "managed": self.target_managed})
        if self.model is not None:
            el.add("model", {"type": self.model})
        el.add_if("backend", {"tap": self.backend_tap, "vhost": self.backend_vhost})
        self._format_driver(el)
        if self.link_state is not None:
            el.add("link", {"state": self.link_state})
        el.add_if("mtu", {"size": self.mtu})
        if self.coalesce_rx_frames is not None:
            el.add("coalesce").add("rx").add("frames", {"max": self.coalesce_rx_frames})
        if self.sndbuf is not None:
            el.add("tune").add("sndbuf", text=str(self.sndbuf))
        if self.boot_order is not None:
            el.add("boot", {"order": self.boot_order})
        if self.rom is not None:
            self.rom.format_xml(el)
        el.add_if("acpi", {"index": self.acpi_index})
        self._format_tail(el, live)

    def _format_driver(self, el: XElem) -> None:
        attrs: dict[str, object] = {
            "name": self.driver_name,
            "txmode": self.txmode,
            "ioeventfd": self.driver_switches.get("ioeventfd"),
            "event_idx": self.driver_switches.get("event_idx"),
            "queues": self.queues,
            "rx_queue_size": self.rx_queue_size,
            "tx_queue_size": self.tx_queue_size,
            "rss": self.driver_switches.get("rss"),
            "rss_hash_report": self.driver_switches.get("rss_hash_report"),
            **self.virtio,
        }
        if not self.host_offloads and not self.guest_offloads:
            el.add_if("driver", attrs)
            return
        drv = el.add("driver", attrs)
        drv.add_if("host", dict(self.host_offloads))
        drv.add_if("guest", dict(self.guest_offloads))


def parse_interface(node: Node) -> Interface:
    kind = node.required("type")
    if kind not in NIC_TYPES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <interface type='{kind}'> is not supported "
            f"(asvirt supports type {', '.join(repr(t) for t in NIC_TYPES)})"
        )
    nic = Interface(type=kind)
    mac = node.child("mac")
    if mac is not None:
        addr = mac.required("address")
        if not _MAC_RE.match(addr):
            raise XMLError(f"invalid MAC address '{addr}'")
        if int(addr[:2], 16) & 1:
            raise XMLError(f"MAC address '{addr}' is a multicast address")
        nic.mac = addr.lower()
        mac.finish()
    if kind in SOCKET_NIC_TYPES:
        _parse_socket_nic(node, nic)
    elif kind == "vhostuser":
        source = node.child("source")
        if source is None:
            raise XMLError("<interface type='vhostuser'> needs a <source type='unix' path=...>")
        source.choice("type", ("unix",))
        nic.vhost_path = source.required("path")
        if not nic.vhost_path.startswith("/"):
            raise XMLError(f"vhost-user socket '{nic.vhost_path}' must be an absolute path")
        nic.vhost_mode = source.choice("mode", ("server", "client"), "client")
        rec = source.child("reconnect")
        if rec is not None:
            if nic.vhost_mode != "client":
                # libvirt's words: QEMU listening has nothing to reconnect to.
                raise XMLError("'reconnect' attribute unsupported 'server' mode for <interface>")
            nic.vhost_reconnect, nic.vhost_reconnect_timeout = _parse_reconnect(rec)
        source.finish()
    elif kind == "ethernet":
        _parse_tap_target(node, nic)
    elif kind == "direct":
        source = node.child("source")
        if source is None:
            raise XMLError("<interface type='direct'> needs a <source dev=...>")
        nic.source_dev = _ifname(source.required("dev"), "source dev")
        nic.direct_mode = source.choice("mode", DIRECT_MODES, "vepa")
        source.finish()
        _parse_tap_target(node, nic)
        nic.target_managed = None
    elif kind != "user":
        source = node.child("source")
        if source is None:
            raise XMLError(f"<interface type='{kind}'> needs a <source>")
        if kind == "network":
            nic.source_network = source.required("network")
            bridge = source.attr("bridge")  # live XML: where the tap was plugged
            nic.source_bridge = _ifname(bridge, "source bridge") if bridge else None
        else:
            nic.source_bridge = _ifname(source.required("bridge"), "source bridge")
        source.ignore("portid")  # libvirt's live XML names the network port; asvirt has none
        source.finish()
        _parse_tap_target(node, nic)
        nic.target_managed = None  # a bridge's tap is always asvirt's
    model = node.child("model")
    if model is not None:
        nic.model = model.choice("type", NIC_MODELS)
        if nic.model is None:
            raise XMLError(f"missing attribute 'type' of {model.where}")
        model.finish()
    drv = node.child("driver")
    if drv is not None:
        nic.driver_name = drv.choice("name", NIC_DRIVER_NAMES)
        nic.queues = drv.integer("queues", minimum=1, maximum=1024)
        _parse_nic_driver(drv, nic)
        drv.finish()
        if nic.driver_name == "vhost" and kind not in TAP_NIC_TYPES:
            raise ConfigUnsupportedError(
                f"unsupported configuration: <driver name='vhost'> of <interface type='{kind}'>"
                ": QEMU's vhost-net serves tap and macvtap backends only (network, bridge, "
                "ethernet and direct interfaces)"
            )
        if nic.queues is not None and kind not in (*TAP_NIC_TYPES, "vhostuser"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: <driver queues=...> of <interface type='{kind}'>: "
                "QEMU's user and socket networks have no queues; multiqueue is for tap, "
                "macvtap and vhost-user interfaces"
            )
    link = node.child("link")
    if link is not None:
        nic.link_state = link.choice("state", ("up", "down"))
        link.finish()
    backend = node.child("backend")
    if backend is not None:
        if backend.choice("type", ("default", "passt")) == "passt":
            raise backend.unsupported("type='passt' (asvirt runs no passt: use type='user')")
        nic.backend_tap = _device_path(backend, "tap")
        nic.backend_vhost = _device_path(backend, "vhost")
        backend.finish()
    mtu = node.child("mtu")
    if mtu is not None:
        nic.mtu = mtu.integer("size", minimum=NIC_MTU_RANGE[0], maximum=NIC_MTU_RANGE[1])
        if nic.mtu is None:
            raise XMLError(f"missing attribute 'size' of {mtu.where}")
        mtu.finish()
    coalesce = node.child("coalesce")
    if coalesce is not None:
        rx = coalesce.child("rx")
        frames = rx.child("frames") if rx is not None else None
        if frames is not None:
            nic.coalesce_rx_frames = frames.integer("max", minimum=0, maximum=(1 << 32) - 1)
            frames.finish()
        if rx is not None:
            rx.finish()
        coalesce.finish()
    tune = node.child("tune")
    if tune is not None:
        sndbuf = tune.child_text("sndbuf")
        if sndbuf is not None:
            nic.sndbuf = _sndbuf(sndbuf)
        tune.finish()
    nic.boot_order = _parse_boot(node)
    nic.rom = parse_rom(node)
    nic.acpi_index = parse_acpi_index(node)
    _parse_alias(node, nic)
    nic.address = parse_address(node, (PCIAddress,))
    node.finish()
    return nic


#: The MTUs Linux gives an interface (a tap's at most 65535).
NIC_MTU_RANGE = (68, 65535)


def _device_path(node: Node, name: str) -> str | None:
    path = node.attr(name)
    if path is not None and not path.startswith("/"):
        raise XMLError(f"invalid {name}='{path}' of {node.where}: it must be an absolute path")
    return path


def _sndbuf(value: str) -> int:
    if not value.isdigit() or int(value) >= 1 << 32:
        raise XMLError(f"invalid <sndbuf> '{value}': a number of bytes (an unsigned int)")
    return int(value)


def _parse_nic_driver(drv: Node, nic: Interface) -> None:
    """The virtio-net settings of an interface's ``<driver>``: values checked here, what
    applies to which NIC in the driver's post-parse."""
    nic.txmode = drv.choice("txmode", NIC_TXMODES)
    nic.rx_queue_size = drv.integer("rx_queue_size", minimum=1, maximum=1 << 16)
    nic.tx_queue_size = drv.integer("tx_queue_size", minimum=1, maximum=1 << 16)
    for name in NIC_DRIVER_SWITCHES:
        value = drv.onoff(name)
        if value is not None:
            nic.driver_switches[name] = value
    nic.virtio = virtio_switches(drv)
    for tag, names, into in (
        ("host", NIC_HOST_OFFLOADS, nic.host_offloads),
        ("guest", NIC_GUEST_OFFLOADS, nic.guest_offloads),
    ):
        sub = drv.child(tag)
        if sub is None:
            continue
        for name in names:
            value = sub.onoff(name)
            if value is not None:
                into[name] = value
        sub.finish()


def _parse_reconnect(rec: Node) -> tuple[bool, int | None]:
    """A socket's ``<reconnect enabled= timeout=>``: whether it reconnects, and the seconds
    between tries (which enabled='yes' needs and enabled='no' refuses)."""
    enabled = rec.yesno("enabled")
    if enabled is None:
        raise XMLError(f"missing attribute 'enabled' of {rec.where}")
    timeout = rec.integer("timeout", minimum=1, maximum=1 << 31)
    if enabled and timeout is None:
        raise XMLError(f"{rec.where} with enabled='yes' needs a timeout")
    if not enabled and timeout is not None:
        raise XMLError(f"{rec.where} with enabled='no' takes no timeout")
    rec.finish()
    return enabled, timeout


def _parse_tap_target(node: Node, nic: Interface) -> None:
    target = node.child("target")
    if target is not None:
        nic.target_dev = _ifname(target.required("dev"), "target dev")
        nic.target_managed = target.yesno("managed")
        target.finish()


def _parse_socket_nic(node: Node, nic: Interface) -> None:
    """The ``<source address= port=>`` (and ``<local>``) of a socket-netdev interface."""
    source = node.child("source")
    if source is None:
        raise XMLError(f"<interface type='{nic.type}'> needs a <source port=...>")
    nic.source_address = _ip_address(source.attr("address"), source.where)
    nic.source_port = source.integer("port", minimum=1, maximum=65535)
    if nic.source_port is None:
        raise XMLError(f"missing attribute 'port' of {source.where}")
    local = source.child("local")
    if local is not None:
        if nic.type != "udp":
            raise XMLError(f"<local> in {source.where}: only udp has a local side")
        nic.local_address = _ip_address(local.attr("address"), local.where)
        nic.local_port = local.integer("port", minimum=0, maximum=65535)  # 0: any
        local.finish()
    source.finish()
    if nic.type in ("mcast", "udp", "client") and nic.source_address is None:
        raise XMLError(f"<interface type='{nic.type}'> needs <source address=...>")
    if nic.type == "udp" and (nic.local_address is None or nic.local_port is None):
        raise XMLError("<interface type='udp'> needs <local address=... port=...>")
    address = nic.source_address
    if nic.type == "mcast" and address and not ipaddress.ip_address(address).is_multicast:
        raise XMLError(f"'{address}' is not a multicast address")


def _ip_address(text: str | None, where: str) -> str | None:
    if text is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise XMLError(f"invalid IPv4 address '{text}' in {where}") from None


def _ifname(name: str, what: str) -> str:
    if not _IFNAME_RE.match(name) or name in (".", ".."):
        raise XMLError(
            f"invalid interface {what} '{name}': at most 15 letters, digits, '-', '_', '.', '+'"
        )
    return name


# ---------------------------------------------------------------------------------------------
# character devices: <serial>, <console>, <channel>

CHARDEV_TYPES = (
    "pty",
    "file",
    "unix",
    "vc",
    "null",
    "spicevmc",
    "spiceport",
    "tcp",
    "udp",
    "pipe",
    "dev",
    "stdio",
)
#: Chardev types whose ``<source path=...>`` is a host file, device or FIFO QEMU opens.
PATH_CHARDEVS = ("file", "unix", "pipe", "dev")
_HOST_RE = re.compile(r"^[A-Za-z0-9.:_-]{1,255}$")


@dataclass(slots=True)
class Chardev(DeviceBase):
    """A ``<serial>``, ``<console>`` or ``<channel>``: a guest port and its host backend."""

    kind: str = "serial"  # serial | console | channel
    type: str = "pty"
    source_path: str | None = None
    source_mode: str | None = None  # unix: bind | connect
    source_append: str | None = None  # file: on | off
    #: unix connect: ``<reconnect enabled=... timeout=...>`` (None: asvirt's default, see
    #: :mod:`asvirt.drivers.qemu.command`)
    reconnect: bool | None = None
    reconnect_timeout: int | None = None
    log_file: str | None = None
    log_append: str | None = None
    target_type: str | None = None
    target_port: int | None = None
    target_name: str | None = None
    target_state: str | None = None
    target_model: str | None = None
    #: A guestfwd channel: the address in the user-mode network that reaches this chardev
    #: (its port is ``target_port``).
    target_address: str | None = None
    #: The chardev id given to QEMU (``charserial0``), assigned with the aliases.
    chardev_id: str | None = None
    #: spiceport: ``<source channel=...>``, the SPICE port channel's name.
    spice_channel: str | None = None
    #: tcp: the address (``source_mode`` says whether QEMU listens or connects); udp: the
    #: address datagrams go to.
    host: str | None = None
    service: str | None = None
    #: udp: ``<source mode='bind'>``, the local address datagrams come from.
    bind_host: str | None = None
    bind_service: str | None = None
    #: tcp: ``<protocol type='raw'|'telnet'>``.
    protocol: str | None = None
    #: tcp: ``<source tls='yes'|'no'>`` (None: the driver's default, libvirt's chardev_tls).
    tls: bool | None = None

    #: What a console that shows serial port 0 copies from it.
    SOURCE_FIELDS: ClassVar[tuple[str, ...]] = (
        "type",
        "source_path",
        "source_mode",
        "source_append",
        "reconnect",
        "reconnect_timeout",
        "log_file",
        "log_append",
        "spice_channel",
        "host",
        "service",
        "bind_host",
        "bind_service",
        "protocol",
        "tls",
    )

    TARGET_TYPES: ClassVar[dict[str, tuple[str, ...]]] = {
        "serial": ("isa-serial", "pci-serial", "usb-serial"),
        "parallel": (),
        "console": ("serial", "virtio"),
        "channel": ("virtio", "guestfwd"),
        "redirdev": (),
    }

    def is_compat_console(self, serials: list[Chardev]) -> bool:
        """True for a console that is just another view of serial port 0."""
        return self.kind == "console" and self.target_type == "serial" and bool(serials)

    def _format_reconnect(self, src: XElem | None) -> None:
        if src is not None and self.reconnect is not None:
            src.add("reconnect", {"enabled": self.reconnect, "timeout": self.reconnect_timeout})

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(self.kind, {"type": self.type})
        self.format_source(el, live)
        target = el.add(
            "target",
            {
                "type": self.target_type,
                "name": self.target_name,
                "state": self.target_state,
                "address": self.target_address,
                "port": self.target_port,
            },
        )
        if self.target_model is not None:
            target.add("model", {"name": self.target_model})
        self._format_tail(el, live)

    def format_source(self, el: XElem, live: bool) -> None:
        """The host side's elements (``<source>``, ``<protocol>``, ``<log>``) into ``el``: a
        character device's, or a USB redirection's (:class:`~.extdevices.Redirdev`)."""
        if self.type == "pty":
            if live and self.source_path:
                el.set("tty", self.source_path)
                el.add("source", {"path": self.source_path})
        elif self.type == "unix" and self.source_path is None and not live:
            pass  # a socket asvirt places at start; libvirt writes no <source> for it either
        elif self.type == "spiceport":
            el.add("source", {"channel": self.spice_channel})
        elif self.type in ("file", "unix", "pipe", "dev"):
            src = el.add_if(
                "source",
                {"mode": self.source_mode, "path": self.source_path, "append": self.source_append},
            )
            self._format_reconnect(src)
        elif self.type == "tcp":
            src = el.add(
                "source",
                {
                    "mode": self.source_mode,
                    "host": self.host,
                    "service": self.service,
                    "tls": self.tls,
                },
            )
            self._format_reconnect(src)
            el.add("protocol", {"type": self.protocol or "raw"})
        elif self.type == "udp":
            el.add_if(
                "source", {"mode": "bind", "host": self.bind_host, "service": self.bind_service}
            )
            el.add("source", {"mode": "connect", "host": self.host, "service": self.service})
        el.add_if("log", {"file": self.log_file, "append": self.log_append})


def parse_chardev(node: Node, kind: str) -> Chardev:
    kind_type = node.attr("type", "pty") or "pty"
    if kind_type not in CHARDEV_TYPES:
        raise node.unsupported_value("type", kind_type, CHARDEV_TYPES)
    chr_ = Chardev(kind=kind, type=kind_type)
    node.ignore("tty")  # the pty path of a live dump; QEMU allocates a new one
    for src in node.children("source"):
        # libvirt allows several <source> elements (the first one wins); so do we.
        if chr_.type == "spiceport":
            chr_.spice_channel = chr_.spice_channel or src.attr("channel")
            if chr_.spice_channel is not None and not re.fullmatch(
                r"[A-Za-z0-9_.\-]+", chr_.spice_channel
            ):
                raise XMLError(f"invalid SPICE port channel '{chr_.spice_channel}'")
        if chr_.type in ("tcp", "udp"):
            _parse_socket_source(src, chr_)
        if chr_.type in ("file", "unix", "pty", "pipe", "dev"):
            path = src.attr("path")
            if path is not None and chr_.type != "pty":
                if not path.startswith("/"):
                    raise XMLError(f"chardev path '{path}' in {node.where} must be absolute")
                chr_.source_path = chr_.source_path or path
            elif chr_.type == "pty" and path is not None:
                chr_.source_path = chr_.source_path or path
            if chr_.type == "unix":
                chr_.source_mode = chr_.source_mode or src.choice("mode", ("bind", "connect"))
            if chr_.type == "file":
                chr_.source_append = src.onoff("append")
        rec = src.child("reconnect")
        if rec is not None:
            if chr_.type not in ("unix", "tcp"):
                raise src.unsupported("<reconnect> (only unix and TCP sockets reconnect)")
            chr_.reconnect, chr_.reconnect_timeout = _parse_reconnect(rec)
        src.finish()
    if chr_.type == "unix" and chr_.source_mode is None:
        # Without a mode libvirt's default is connect, unless there is no path to connect to.
        chr_.source_mode = "bind" if chr_.source_path is None else "connect"
    if chr_.type == "unix" and chr_.source_mode == "connect" and chr_.source_path is None:
        raise XMLError(f"{node.where} of type 'unix' in mode 'connect' needs a source path")
    if chr_.reconnect is not None and chr_.source_mode != "connect":
        raise XMLError(f"<reconnect> in {node.where} needs mode='connect'")
    if chr_.type in ("file", "pipe", "dev") and chr_.source_path is None:
        raise XMLError(f"{node.where} of type '{chr_.type}' needs <source path=...>")
    if chr_.type == "tcp":
        chr_.source_mode = chr_.source_mode or "connect"
        if chr_.service is None:
            raise XMLError(f"{node.where} of type 'tcp' needs <source service=...>")
        proto = node.child("protocol")
        if proto is not None:
            chr_.protocol = proto.choice("type", ("raw", "telnet"))
            proto.finish()
        chr_.protocol = chr_.protocol or "raw"
    if chr_.type == "udp" and chr_.service is None:
        raise XMLError(f"{node.where} of type 'udp' needs <source mode='connect' service=...>")
    if chr_.type == "spiceport" and chr_.spice_channel is None:
        raise XMLError(f"{node.where} of type 'spiceport' needs <source channel=...>")
    log = node.child("log")
    if log is not None:
        chr_.log_file = log.required("file")
        if not chr_.log_file.startswith("/"):
            raise XMLError(f"chardev log file '{chr_.log_file}' must be an absolute path")
        chr_.log_append = log.onoff("append")
        log.finish()
    target = node.child("target")
    if target is not None:
        chr_.target_type = target.choice("type", Chardev.TARGET_TYPES[kind])
        if kind == "channel":
            if chr_.target_type is None:
                raise XMLError(f"missing attribute 'type' of {target.where}")
            chr_.target_name = target.attr("name")
            if chr_.target_name is not None and not re.fullmatch(
                r"[A-Za-z0-9_.\-]+", chr_.target_name
            ):
                raise XMLError(f"invalid channel name '{chr_.target_name}'")
            chr_.target_state = target.choice("state", ("connected", "disconnected"))
            if chr_.target_type == "guestfwd":
                chr_.target_address = _ip_address(target.attr("address"), target.where)
                chr_.target_port = target.integer("port", minimum=1, maximum=65535)
                if chr_.target_address is None or chr_.target_port is None:
                    raise XMLError(f"a guestfwd {target.where} needs an address and a port")
                if chr_.target_name is not None or chr_.target_state is not None:
                    raise XMLError(f"a guestfwd {target.where} has no name or state")
        else:
            chr_.target_port = target.integer("port", minimum=0, maximum=255)
        if kind == "serial":
            model = target.child("model")
            if model is not None:
                chr_.target_model = model.choice("name", ("isa-serial", "pci-serial", "usb-serial"))
                model.finish()
        target.finish()
    elif kind == "channel":
        raise XMLError("missing <target> of <channel>")
    _parse_alias(node, chr_)
    allowed: tuple[type, ...] = {
        "serial": (PCIAddress, USBAddress),
        "parallel": (ISAAddress,),
        "redirdev": (USBAddress,),
    }.get(kind, (VirtioSerialAddress,))
    chr_.address = parse_address(node, allowed)
    node.finish()
    return chr_


def _parse_socket_source(src: Node, chr_: Chardev) -> None:
    """A ``<source mode=... host=... service=...>`` of a TCP or UDP character device."""
    mode = src.choice("mode", ("bind", "connect"))
    host = src.attr("host")
    service = src.attr("service")
    if host is not None and not _HOST_RE.fullmatch(host):
        raise XMLError(f"invalid host '{host}' in {src.where}")
    if service is not None and (not service.isdigit() or int(service) > 65535):
        raise XMLError(f"invalid service '{service}' in {src.where} (a port number)")
    if chr_.type == "udp" and mode == "bind":
        chr_.bind_host, chr_.bind_service = host, service
    elif chr_.type == "udp" or chr_.service is None:  # the first <source> wins
        chr_.host, chr_.service = host, service
        if chr_.type == "tcp":
            chr_.source_mode = mode
            chr_.tls = src.yesno("tls")


# ---------------------------------------------------------------------------------------------
# input devices

INPUT_TYPES = ("mouse", "keyboard", "tablet", "passthrough", "evdev")
INPUT_BUSES = ("ps2", "usb", "virtio")


@dataclass(slots=True)
class Input(DeviceBase):
    """``<input>``: a mouse, keyboard or tablet on the PS/2, USB or virtio bus; a host evdev
    device passed to a virtio input (``passthrough``) or shared by QEMU (``evdev``)."""

    type: str = "mouse"
    bus: str | None = None
    #: passthrough and evdev: the host's ``/dev/input/eventN``.
    evdev: str | None = None
    #: evdev: ``grab='all'``, ``grabToggle=...`` and ``repeat=...``.
    grab: str | None = None
    grab_toggle: str | None = None
    repeat: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("input", {"type": self.type, "bus": self.bus})
        if self.type == "passthrough":
            el.add("source", {"evdev": self.evdev})
        elif self.type == "evdev":
            el.add(
                "source",
                {
                    "dev": self.evdev,
                    "grab": self.grab,
                    "grabToggle": self.grab_toggle,
                    "repeat": self.repeat,
                },
            )
        self._format_tail(el, live)


#: ``grabToggle`` values (QEMU's input-linux grab-toggle keys).
GRAB_TOGGLES = ("ctrl-ctrl", "alt-alt", "shift-shift", "meta-meta", "scrolllock", "ctrl-scrolllock")


def parse_input(node: Node) -> Input:
    dev = Input(
        type=node.choice("type", INPUT_TYPES) or "",
        bus=node.choice("bus", INPUT_BUSES),
    )
    if not dev.type:
        raise XMLError("missing attribute 'type' of <input>")
    src = node.child("source")
    if dev.type in ("passthrough", "evdev"):
        if src is None:
            raise XMLError(f"{node.where} of type '{dev.type}' needs a <source>")
        dev.evdev = src.required("evdev" if dev.type == "passthrough" else "dev")
        if not dev.evdev.startswith("/"):
            raise XMLError(f"input device '{dev.evdev}' must be an absolute path")
        if dev.type == "evdev":
            dev.grab = src.choice("grab", ("all",))
            dev.grab_toggle = src.choice("grabToggle", GRAB_TOGGLES)
            dev.repeat = src.onoff("repeat")
        src.finish()
        if dev.type == "passthrough" and dev.bus != "virtio":
            raise XMLError("a passthrough input device is on the virtio bus")
        if dev.type == "evdev" and dev.bus is not None:
            raise XMLError("an evdev input is no guest device and has no bus")
    elif src is not None:
        raise node.unsupported("<source> (only passthrough and evdev inputs have one)")
    _parse_alias(node, dev)
    dev.address = parse_address(node, (USBAddress, PCIAddress))
    node.finish()
    if dev.bus == "ps2" and dev.type == "tablet":
        raise ConfigUnsupportedError("unsupported configuration: a tablet cannot be on the ps2 bus")
    return dev


@dataclass(slots=True)
class Hub(DeviceBase):
    """``<hub type='usb'>``: a USB hub (libvirt adds them when USB ports run out)."""

    type: str = "usb"

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("hub", {"type": self.type})
        self._format_tail(el, live)


def parse_hub(node: Node) -> Hub:
    hub = Hub(type=node.choice("type", ("usb",)) or "")
    if not hub.type:
        raise XMLError("missing attribute 'type' of <hub>")
    _parse_alias(node, hub)
    hub.address = parse_address(node, (USBAddress,))
    node.finish()
    return hub


# ---------------------------------------------------------------------------------------------
# graphics, video, audio


@dataclass(slots=True)
class GraphicsListen:
    type: str = "address"  # address | socket | none
    address: str | None = None
    socket: str | None = None


#: SPICE's ``<graphics>`` children that carry one attribute each: tag -> (attribute, values).
SPICE_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image": ("compression", ("auto_glz", "auto_lz", "quic", "glz", "lz", "off")),
    "jpeg": ("compression", ("auto", "never", "always")),
    "zlib": ("compression", ("auto", "never", "always")),
    "playback": ("compression", ("on", "off")),
    "streaming": ("mode", ("filter", "all", "off")),
    "clipboard": ("copypaste", ("yes", "no")),
    "mouse": ("mode", ("server", "client")),
    "filetransfer": ("enable", ("yes", "no")),
}
SPICE_CHANNELS = (
    "main",
    "display",
    "inputs",
    "cursor",
    "playback",
    "record",
    "smartcard",
    "usbredir",
)


@dataclass(slots=True)
class Graphics:
    """``<graphics type='vnc'|'spice'>``."""

    type: str = "vnc"
    port: int | None = None
    autoport: bool | None = None
    websocket: int | None = None
    share_policy: str | None = None
    keymap: str | None = None
    listens: list[GraphicsListen] = field(default_factory=list)
    #: SPICE only: the TLS port (-1: automatic, when the driver's SPICE TLS is on).
    tls_port: int | None = None
    default_mode: str | None = None
    #: SPICE's one-attribute options (``SPICE_OPTIONS``): tag -> value.
    options: dict[str, str] = field(default_factory=dict)
    #: SPICE ``<channel name=... mode=...>``: name -> secure | insecure | any.
    channels: dict[str, str] = field(default_factory=dict)
    gl_enable: bool | None = None
    gl_rendernode: str | None = None
    #: sdl: ``fullscreen='yes'``, and the X display and its authority file QEMU draws on
    #: (given to QEMU as DISPLAY and XAUTHORITY; else the supervisor's own).
    fullscreen: bool | None = None
    x_display: str | None = None
    xauth: str | None = None
    #: dbus: a private connection per client (``p2p='yes'``), or the bus QEMU joins.
    dbus_p2p: bool | None = None
    dbus_address: str | None = None
    #: VNC and SPICE: the password clients must give (``passwd``; only a secure XML shows
    #: it), when it expires (``passwdValidTo``: seconds since the epoch, UTC) and what a
    #: password change does to connected clients (``connected``: keep | disconnect | fail).
    passwd: str | None = field(default=None, repr=False)
    passwd_valid_to: int | None = None
    connected: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        if self.type in LOCAL_DISPLAYS:
            el = parent.add(
                "graphics",
                {
                    "type": self.type,
                    "display": self.x_display,
                    "xauth": self.xauth,
                    "fullscreen": self.fullscreen,
                    "address": self.dbus_address,
                    "p2p": self.dbus_p2p,
                },
            )
            if self.gl_enable is not None or self.gl_rendernode is not None:
                el.add("gl", {"enable": self.gl_enable, "rendernode": self.gl_rendernode})
            return
        el = parent.add(
            "graphics",
            {
                "type": self.type,
                "port": self.port,
                "tlsPort": self.tls_port,
                "autoport": self.autoport,
                "websocket": self.websocket,
                "listen": self.listens[0].address
                if self.listens and self.listens[0].type == "address"
                else None,
                "keymap": self.keymap,
                "defaultMode": self.default_mode,
                "sharePolicy": self.share_policy,
            },
        )
        if self.passwd is not None:  # as libvirt: the expiry and the policy go with it
            el.set_secret("passwd", self.passwd)
            if self.passwd_valid_to is not None:
                el.set("passwdValidTo", format_valid_to(self.passwd_valid_to))
            el.set("connected", self.connected)
        for lst in self.listens:
            el.add("listen", {"type": lst.type, "address": lst.address, "socket": lst.socket})
        for name, mode in self.channels.items():
            el.add("channel", {"name": name, "mode": mode})
        for tag, (attr, _) in SPICE_OPTIONS.items():
            if tag in self.options:
                el.add(tag, {attr: self.options[tag]})
        if self.gl_enable is not None:
            el.add("gl", {"enable": self.gl_enable, "rendernode": self.gl_rendernode})


def parse_graphics(node: Node) -> Graphics:
    kind = node.required("type")
    if kind not in ("vnc", "spice", *LOCAL_DISPLAYS):
        raise ConfigUnsupportedError(
            f"unsupported configuration: <graphics type='{kind}'> is not supported "
            "(QEMU on Linux has VNC, SPICE, egl-headless, SDL and D-Bus displays)"
        )
    gfx = Graphics(type=kind)
    if kind in LOCAL_DISPLAYS:
        _parse_local_display(node, gfx)
        return gfx
    gfx.port = node.integer("port", minimum=-1, maximum=65535)
    gfx.autoport = node.yesno("autoport")
    if kind == "vnc":
        gfx.websocket = node.integer("websocket", minimum=-1, maximum=65535)
        gfx.share_policy = node.choice("sharePolicy", ("allow-exclusive", "force-shared", "ignore"))
    else:
        _parse_spice(node, gfx)
    _parse_password(node, gfx)
    gfx.keymap = node.attr("keymap")
    if gfx.keymap is not None and not re.fullmatch(r"[a-z]{2}(-[a-z]{2,4})?", gfx.keymap):
        raise XMLError(f"invalid VNC keymap '{gfx.keymap}' (e.g. 'en-us', 'de', 'fr-ch')")
    listen_attr = node.attr("listen")
    for lnode in node.children("listen"):
        ltype = lnode.choice("type", ("address", "socket", "none"))
        if ltype is None:
            raise lnode.unsupported_value("type", lnode.attr("type") or "", ["address"])
        lst = GraphicsListen(type=ltype)
        if ltype == "address":
            lst.address = lnode.attr("address")
        elif ltype == "socket":
            lst.socket = lnode.attr("socket")
            if lst.socket is not None and not lst.socket.startswith("/"):
                raise XMLError(f"graphics socket '{lst.socket}' must be an absolute path")
        lnode.ignore("autoGenerated", "fromConfig")
        lnode.finish()
        gfx.listens.append(lst)
    if listen_attr is not None:
        if not gfx.listens:
            gfx.listens.append(GraphicsListen(type="address", address=listen_attr))
        elif gfx.listens[0].type == "address" and gfx.listens[0].address is None:
            gfx.listens[0].address = listen_attr
        elif gfx.listens[0].type != "address" or gfx.listens[0].address != listen_attr:
            raise XMLError("graphics listen attribute does not match its first <listen>")
    if (
        kind == "vnc"
        and gfx.port is not None
        and gfx.port != -1
        and gfx.port < 5900
        and gfx.autoport is not True
    ):
        raise XMLError(f"VNC port {gfx.port} is out of range (5900-65535)")
    if gfx.port == -1 and gfx.autoport is None:
        gfx.autoport = True
    node.finish()
    return gfx


#: The longest VNC password: the RFB protocol's DES key is its first 8 bytes, the rest would
#: be ignored (libvirt refuses longer ones since 8.0, with these words).
VNC_PASSWORD_MAX = 8

#: What ``connected`` may say: SPICE's three policies; VNC can only keep its clients.
_CONNECTED = {"vnc": ("keep",), "spice": ("fail", "disconnect", "keep")}


def _parse_password(node: Node, gfx: Graphics) -> None:
    """``passwd``, ``passwdValidTo`` and ``connected`` of a VNC or SPICE display. As in
    libvirt, the last two mean nothing without a password and are dropped then (a non-secure
    XML shows them without its ``passwd``: redefined from it, the display has none)."""
    gfx.passwd = node.attr("passwd")
    if gfx.passwd is None:
        node.ignore("passwdValidTo", "connected")
        return
    check_vnc_password(gfx.type, gfx.passwd, "VNC password")
    valid_to = node.attr("passwdValidTo")
    if valid_to is not None:
        gfx.passwd_valid_to = parse_valid_to(valid_to)
    connected = node.attr("connected")
    if connected is not None:
        allowed = _CONNECTED[gfx.type]
        if connected not in allowed:
            if gfx.type == "vnc" and connected in _CONNECTED["spice"]:
                raise ConfigUnsupportedError(
                    "unsupported configuration: VNC supports connected='keep' only"
                )
            raise node.unsupported_value("connected", connected, allowed)
        gfx.connected = connected


def check_vnc_password(kind: str, password: str, what: str) -> None:
    """Refuse a VNC password QEMU would cut short (``what``: how the message names it)."""
    size = len(password.encode())
    if kind == "vnc" and size > VNC_PASSWORD_MAX:
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} is {size} characters long, only "
            f"{VNC_PASSWORD_MAX} permitted"
        )


_VALID_TO = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})")


def parse_valid_to(text: str) -> int:
    """``passwdValidTo`` (``YYYY-MM-DDTHH:MM:SS``, UTC) as seconds since the epoch."""
    import calendar
    import datetime

    m = _VALID_TO.fullmatch(text)
    try:
        if m is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        when = datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise XMLError(
            f"cannot parse password validity time '{text}', expect YYYY-MM-DDTHH:MM:SS"
        ) from None
    return calendar.timegm(when.timetuple())


def format_valid_to(seconds: int) -> str:
    """``passwdValidTo`` as libvirt writes it (UTC)."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _parse_spice(node: Node, gfx: Graphics) -> None:
    """SPICE's own attributes and children of ``<graphics type='spice'>``."""
    gfx.tls_port = node.integer("tlsPort", minimum=-1, maximum=65535)
    gfx.default_mode = node.choice("defaultMode", ("secure", "insecure", "any"))
    for tag, (attr, values) in SPICE_OPTIONS.items():
        sub = node.child(tag)
        if sub is not None:
            value = sub.choice(attr, values)
            if value is None:
                raise XMLError(f"missing attribute '{attr}' of {sub.where}")
            sub.finish()
            gfx.options[tag] = value
    for ch in node.children("channel"):
        name = ch.choice("name", SPICE_CHANNELS)
        mode = ch.choice("mode", ("secure", "insecure", "any"))
        if name is None or mode is None:
            raise XMLError(f"{ch.where} needs a name and a mode")
        ch.finish()
        gfx.channels[name] = mode
    _parse_gl(node, gfx)


def _parse_gl(node: Node, gfx: Graphics) -> None:
    gl = node.child("gl")
    if gl is not None:
        gfx.gl_enable = gl.yesno("enable")
        if gfx.gl_enable is None and gfx.type != "egl-headless":
            raise XMLError(f"missing attribute 'enable' of {gl.where}")
        gfx.gl_rendernode = gl.attr("rendernode")
        if gfx.gl_rendernode is not None and not gfx.gl_rendernode.startswith("/dev/"):
            raise XMLError(f"rendernode '{gfx.gl_rendernode}' must be a device under /dev")
        gl.finish()


#: Displays QEMU shows on the host itself (no network listener): egl-headless renders for
#: another display, SDL opens a window, D-Bus exports the console to local clients.
LOCAL_DISPLAYS = ("egl-headless", "sdl", "dbus")


def _parse_local_display(node: Node, gfx: Graphics) -> None:
    if gfx.type == "sdl":
        gfx.fullscreen = node.yesno("fullscreen")
        gfx.x_display = node.attr("display")
        if gfx.x_display is not None and not re.fullmatch(
            r"[A-Za-z0-9.\-]*:\d+(\.\d+)?", gfx.x_display
        ):
            raise XMLError(f"invalid X display '{gfx.x_display}' (e.g. ':0' or ':0.1')")
        gfx.xauth = node.attr("xauth")
        if gfx.xauth is not None and not gfx.xauth.startswith("/"):
            raise XMLError(f"X authority file '{gfx.xauth}' must be an absolute path")
    elif gfx.type == "dbus":
        gfx.dbus_p2p = node.yesno("p2p")
        gfx.dbus_address = node.attr("address")
        if gfx.dbus_address is not None and not re.fullmatch(r"[a-z]+:[^\s,]+", gfx.dbus_address):
            raise XMLError(f"invalid D-Bus address '{gfx.dbus_address}' (e.g. unix:path=/run/x)")
        if gfx.dbus_p2p and gfx.dbus_address is not None:
            raise XMLError("a D-Bus display is either p2p or on the bus at address=, not both")
    _parse_gl(node, gfx)
    node.finish()


VIDEO_MODELS = ("vga", "cirrus", "virtio", "bochs", "qxl", "vmvga", "ramfb", "none")


@dataclass(slots=True)
class Video(DeviceBase):
    """``<video><model type=.../></video>``."""

    model: str | None = None
    vram: int | None = None
    ram: int | None = None
    vgamem: int | None = None
    vram64: int | None = None
    heads: int | None = None
    primary: bool | None = None
    blob: str | None = None
    #: ``<model><acceleration accel3d= accel2d= rendernode=>``.
    accel3d: bool | None = None
    accel2d: bool | None = None
    rendernode: str | None = None
    #: ``<model><resolution x= y=>``: the display's preferred size (EDID), in pixels.
    resolution: tuple[int, int] | None = None
    #: ``<driver name=...>``: ``qemu`` (QEMU draws) or ``vhostuser`` (a vhost-user-gpu).
    driver_name: str | None = None
    #: ``<driver>``: virtio switches (``VIRTIO_OPTIONS``).
    virtio: dict[str, str] = field(default_factory=dict)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("video")
        el.add_if("driver", {"name": self.driver_name, **self.virtio})
        model = el.add(
            "model",
            {
                "type": self.model,
                "ram": self.ram,
                "vram": self.vram,
                "vram64": self.vram64,
                "vgamem": self.vgamem,
                "heads": self.heads,
                "primary": True if self.primary else None,
                "blob": self.blob,
            },
        )
        model.add_if(
            "acceleration",
            {"accel3d": self.accel3d, "accel2d": self.accel2d, "rendernode": self.rendernode},
        )
        if self.resolution is not None:
            model.add("resolution", {"x": self.resolution[0], "y": self.resolution[1]})
        self._format_tail(el, live)


def parse_video(node: Node) -> Video:
    video = Video()
    model = node.child("model")
    if model is not None:
        video.model = model.choice("type", VIDEO_MODELS)
        video.vram = model.integer("vram", minimum=0, maximum=1 << 32)
        video.ram = model.integer("ram", minimum=0, maximum=1 << 32)
        video.vgamem = model.integer("vgamem", minimum=0, maximum=1 << 32)
        video.vram64 = model.integer("vram64", minimum=0, maximum=1 << 40)
        video.heads = model.integer("heads", minimum=1, maximum=16)
        video.primary = model.yesno("primary")
        video.blob = model.onoff("blob")
        accel = model.child("acceleration")
        if accel is not None:
            video.accel3d = accel.yesno("accel3d")
            video.accel2d = accel.yesno("accel2d")
            video.rendernode = accel.attr("rendernode")
            if video.rendernode is not None and not video.rendernode.startswith("/"):
                raise XMLError(f"render node '{video.rendernode}' must be an absolute path")
            accel.finish()
        res = model.child("resolution")
        if res is not None:
            x = res.integer("x", minimum=1, maximum=1 << 16)
            y = res.integer("y", minimum=1, maximum=1 << 16)
            if x is None or y is None:
                raise XMLError(f"{res.where} needs x and y")
            video.resolution = (x, y)
            res.finish()
        model.finish()
    drv = node.child("driver")
    if drv is not None:
        video.driver_name = drv.choice("name", ("qemu", "vhostuser"))
        if drv.attr("vgaconf") is not None:
            raise drv.unsupported("vgaconf= (bhyve's VGA setting: QEMU has no such switch)")
        video.virtio = virtio_switches(drv)
        drv.finish()
    _parse_alias(node, video)
    video.address = parse_address(node, (PCIAddress,))
    node.finish()
    if video.model == "none" and video.address is not None:
        raise XMLError("a video device of model 'none' cannot have an address")
    return video


AUDIO_TYPES = ("none", "spice", "file", "alsa", "oss", "pulseaudio", "sdl", "dbus", "jack")
#: Per-backend attributes of ``<audio>`` itself.
_AUDIO_TYPE_ATTRS = {"file": ("path",), "pulseaudio": ("serverName",), "sdl": ("driver",)}
#: Per-backend attributes of its ``<input>``/``<output>``.
_AUDIO_DIR_TYPE_ATTRS = {
    "alsa": ("dev",),
    "oss": ("dev",),
    "pulseaudio": ("name", "streamName", "latency"),
    "jack": ("serverName", "clientName", "connectPorts"),
}


@dataclass(slots=True)
class Audio:
    """``<audio type=...>``: the audio backend (QEMU's -audiodev) sound cards play to."""

    id: int = 1
    type: str = "none"
    timer_period: int | None = None
    #: The backend's own attributes (``path`` of a file backend...).
    attrs: dict[str, str] = field(default_factory=dict)
    #: ``input``/``output`` direction settings: attribute name -> value, plus the
    #: ``<settings>`` child under the key ``settings``.
    directions: dict[str, dict[str, object]] = field(default_factory=dict)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "audio",
            {"id": self.id, "type": self.type, "timerPeriod": self.timer_period, **self.attrs},
        )
        for direction in ("input", "output"):
            opts = self.directions.get(direction)
            if opts is None:
                continue
            attrs = {k: v for k, v in opts.items() if k != "settings"}
            d = el.add(direction, attrs)
            settings = opts.get("settings")
            if isinstance(settings, dict) and settings:
                d.add("settings", settings)


_AUDIO_DIR_ATTRS = ("mixingEngine", "fixedSettings", "voices", "bufferLength")
_AUDIO_FORMATS = ("s8", "u8", "s16", "u16", "s32", "u32", "f32")


def parse_audio(node: Node) -> Audio:
    kind = node.required("type")
    if kind not in AUDIO_TYPES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <audio type='{kind}'> is not supported "
            f"(supported: {', '.join(AUDIO_TYPES)})"
        )
    audio = Audio(type=kind)
    audio.id = node.integer("id", minimum=1, maximum=65535) or 0
    if not audio.id:
        raise XMLError("missing attribute 'id' of <audio>")
    audio.timer_period = node.integer("timerPeriod", minimum=1, maximum=1 << 31)
    for name in _AUDIO_TYPE_ATTRS.get(kind, ()):
        value = node.attr(name)
        if value is not None:
            if name == "path" and not value.startswith("/"):
                raise XMLError(f"audio file '{value}' must be an absolute path")
            audio.attrs[name] = value
    for direction in ("input", "output"):
        dnode = node.child(direction)
        if dnode is None:
            continue
        opts: dict[str, object] = {}
        for name in _AUDIO_DIR_TYPE_ATTRS.get(kind, ()):
            text = dnode.attr(name)
            if text is not None:
                opts[name] = text
        for name in ("mixingEngine", "fixedSettings"):
            flag = dnode.yesno(name)
            if flag is not None:
                opts[name] = "yes" if flag else "no"
        for name in ("voices", "bufferLength"):
            number = dnode.integer(name, minimum=1, maximum=1 << 31)
            if number is not None:
                opts[name] = number
        snode = dnode.child("settings")
        if snode is not None:
            settings: dict[str, object] = {}
            for name in ("frequency", "channels"):
                number = snode.integer(name, minimum=1, maximum=1 << 31)
                if number is not None:
                    settings[name] = number
            fmt = snode.choice("format", _AUDIO_FORMATS)
            if fmt is not None:
                settings["format"] = fmt
            snode.finish()
            opts["settings"] = settings
        dnode.finish()
        audio.directions[direction] = opts
    node.finish()
    return audio


# ---------------------------------------------------------------------------------------------
# memballoon, rng, watchdog, panic

#: ``<driver>`` switches every virtio device has -> the QEMU property.
VIRTIO_OPTIONS = {
    "iommu": "iommu_platform",
    "ats": "ats",
    "packed": "packed",
    "page_per_vq": "page-per-vq",
}


def virtio_switches(drv: Node) -> dict[str, str]:
    """The virtio switches (``iommu= ats= packed= page_per_vq=``) of the ``<driver>`` element
    ``drv`` ('on'|'off'), leaving its other attributes to the caller."""
    out = {}
    for name in VIRTIO_OPTIONS:
        value = drv.onoff(name)
        if value is not None:
            out[name] = value
    return out


def parse_virtio_driver(node: Node) -> dict[str, str]:
    """The virtio ``<driver iommu= ats= packed= page_per_vq=>`` of ``node`` ('on'|'off')."""
    drv = node.child("driver")
    if drv is None:
        return {}
    out = virtio_switches(drv)
    drv.finish()
    return out


def virtio_props(options: dict[str, str]) -> dict[str, bool]:
    """QEMU properties of a virtio device's ``<driver>`` switches."""
    return {VIRTIO_OPTIONS[k]: v == "on" for k, v in options.items()}


@dataclass(slots=True)
class Memballoon(DeviceBase):
    """``<memballoon>``; ``model='none'`` is kept (it records that there is no balloon)."""

    model: str = "virtio"
    autodeflate: str | None = None
    free_page_reporting: str | None = None
    #: ``<stats period='N'/>``: seconds between the guest's statistics reports (0: none).
    stats_period: int | None = None
    #: ``<driver>``: virtio switches (``VIRTIO_OPTIONS``).
    virtio: dict[str, str] = field(default_factory=dict)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "memballoon",
            {
                "model": self.model,
                "autodeflate": self.autodeflate,
                "freePageReporting": self.free_page_reporting,
            },
        )
        if self.stats_period is not None:
            el.add("stats", {"period": self.stats_period})
        self._format_tail(el, live)
        el.add_if("driver", dict(self.virtio))


def parse_memballoon(node: Node) -> Memballoon:
    model = node.choice("model", ("virtio", "none"))
    if model is None:
        raise XMLError("missing attribute 'model' of <memballoon>")
    bal = Memballoon(model=model)
    bal.autodeflate = node.onoff("autodeflate")
    bal.free_page_reporting = node.onoff("freePageReporting")
    stats = node.child("stats")
    if stats is not None:
        bal.stats_period = stats.integer("period", minimum=0, maximum=(1 << 31) - 1)
        if bal.stats_period is None:
            raise XMLError("missing attribute 'period' of <stats> in <memballoon>")
        stats.finish()
    bal.virtio = parse_virtio_driver(node)
    _parse_alias(node, bal)
    bal.address = parse_address(node, (PCIAddress,))
    node.finish()
    if model == "none" and (
        bal.address
        or bal.autodeflate
        or bal.free_page_reporting
        or bal.stats_period is not None
        or bal.virtio
    ):
        raise XMLError("<memballoon model='none'> cannot have an address or options")
    return bal


@dataclass(slots=True)
class RNG(DeviceBase):
    """``<rng model='virtio'>`` backed by a host random device, QEMU's builtin source, or an
    EGD daemon's socket (``<backend model='egd' type='tcp'|'unix'>``)."""

    model: str = "virtio"
    backend: str = "random"  # random | builtin | egd
    backend_path: str | None = None
    rate_bytes: int | None = None
    rate_period: int | None = None
    #: egd: the socket (``type`` tcp | unix, ``mode`` connect | bind, host/service or path).
    egd_type: str | None = None
    egd_mode: str | None = None
    egd_host: str | None = None
    egd_service: str | None = None
    egd_path: str | None = None
    #: ``<driver>``: virtio switches (``VIRTIO_OPTIONS``).
    virtio: dict[str, str] = field(default_factory=dict)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("rng", {"model": self.model})
        el.add_if("driver", dict(self.virtio))
        el.add_if("rate", {"bytes": self.rate_bytes, "period": self.rate_period})
        if self.backend == "egd":
            be = el.add("backend", {"model": "egd", "type": self.egd_type})
            be.add(
                "source",
                {
                    "mode": self.egd_mode,
                    "host": self.egd_host,
                    "service": self.egd_service,
                    "path": self.egd_path,
                },
            )
            if self.egd_type == "tcp":
                be.add("protocol", {"type": "raw"})
        else:
            el.add("backend", {"model": self.backend}, text=self.backend_path)
        self._format_tail(el, live)


RNG_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")


def parse_rng(node: Node) -> RNG:
    rng = RNG(model=node.choice("model", RNG_MODELS) or "")
    if not rng.model:
        raise XMLError("missing attribute 'model' of <rng>")
    rate = node.child("rate")
    if rate is not None:
        rng.rate_bytes = rate.integer("bytes", minimum=1, maximum=(1 << 63) - 1)
        rng.rate_period = rate.integer("period", minimum=1, maximum=(1 << 32) - 1)
        if rng.rate_bytes is None:
            raise XMLError("missing attribute 'bytes' of <rng><rate>")
        rate.finish()
    backend = node.child("backend")
    if backend is None:
        raise XMLError("missing <backend> of <rng>")
    rng.backend = backend.choice("model", ("random", "builtin", "egd")) or ""
    if not rng.backend:
        raise XMLError("missing attribute 'model' of <rng><backend>")
    if rng.backend == "egd":
        _parse_egd(backend, rng)
    else:
        path = backend.text() or None
        if rng.backend == "random":
            if path is not None and not path.startswith("/"):
                raise XMLError(f"rng backend '{path}' must be an absolute path")
            rng.backend_path = path
        elif path:
            raise XMLError("the builtin rng backend takes no path")
    backend.finish()
    rng.virtio = parse_virtio_driver(node)
    _parse_alias(node, rng)
    rng.address = parse_address(node, (PCIAddress,))
    node.finish()
    return rng


def _parse_egd(backend: Node, rng: RNG) -> None:
    kind = backend.attr("type")
    if kind not in ("tcp", "unix"):
        raise backend.unsupported_value("type", kind or "", ["tcp", "unix"])
    rng.egd_type = kind
    src = backend.child("source")
    if src is None:
        raise XMLError(f"{backend.where} of model 'egd' needs a <source>")
    rng.egd_mode = src.choice("mode", ("connect", "bind"), "connect")
    if kind == "tcp":
        rng.egd_host = src.attr("host")
        rng.egd_service = src.required("service")
        lowest = 0 if rng.egd_mode == "bind" else 1  # binding to port 0 takes a free one
        if not rng.egd_service.isdigit() or not lowest <= int(rng.egd_service) < 65536:
            raise XMLError(f"invalid port '{rng.egd_service}' in {src.where}")
        if rng.egd_host is not None and not re.fullmatch(r"[A-Za-z0-9.:_-]+", rng.egd_host):
            raise XMLError(f"invalid host '{rng.egd_host}' in {src.where}")
        proto = backend.child("protocol")
        if proto is not None:
            proto.choice("type", ("raw",))
            proto.finish()
    else:
        rng.egd_path = src.required("path")
        if not rng.egd_path.startswith("/"):
            raise XMLError(f"the EGD socket '{rng.egd_path}' must be an absolute path")
    src.finish()


WATCHDOG_MODELS = ("i6300esb", "ib700", "itco")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")


@dataclass(slots=True)
class Watchdog(DeviceBase):
    """``<watchdog>``."""

    model: str = "i6300esb"
    action: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("watchdog", {"model": self.model, "action": self.action})
        self._format_tail(el, live)


def parse_watchdog(node: Node) -> Watchdog:
    model = node.choice("model", WATCHDOG_MODELS)
    if model is None:
        raise XMLError("missing attribute 'model' of <watchdog>")
    wd = Watchdog(model=model, action=node.choice("action", WATCHDOG_ACTIONS))
    _parse_alias(node, wd)
    wd.address = parse_address(node, (PCIAddress,))
    node.finish()
    return wd


PANIC_MODELS = ("isa", "pvpanic", "hyperv", "pseries", "s390")


@dataclass(slots=True)
class Panic(DeviceBase):
    """``<panic>``: a device that turns a guest kernel panic into a QMP event.

    ``isa`` and ``pvpanic`` (PCI) are QEMU's pvpanic devices, ``hyperv`` the Hyper-V crash MSRs.
    """

    model: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("panic", {"model": self.model})
        self._format_tail(el, live)


def parse_panic(node: Node) -> Panic:
    panic = Panic(model=node.choice("model", PANIC_MODELS))
    _parse_alias(node, panic)
    panic.address = parse_address(node, (ISAAddress, PCIAddress))
    node.finish()
    return panic


# ---------------------------------------------------------------------------------------------
# one device on its own (attach, detach, update)

#: The devices that can be attached to, detached from or updated in a domain.
HotplugDevice = Disk | Interface | Input


def parse_copy_destination(text: str | bytes) -> BackingStore:
    """The destination of a block copy: a ``<disk type='file'|'block'>`` with a
    ``<source file=|dev=>`` and maybe a ``<driver type=>`` (libvirt's ``blockCopy``
    destination XML; a target or anything else in it is not looked at, as in libvirt)."""
    root = parse_xml(text)
    if root.tag != "disk":
        raise XMLError(f"a block copy's destination is a <disk>, not <{root.tag}>")
    node = Node(root, ("disk",))
    kind = node.choice("type", ("file", "block"), "file") or "file"
    src = node.child("source")
    path = src.attr("dev" if kind == "block" else "file") if src is not None else None
    if path is None or not path.startswith("/"):
        raise XMLError("a block copy's destination needs a <source> with an absolute path")
    drv = node.child("driver")
    fmt = drv.choice("type", DISK_FORMATS) if drv is not None else None
    return BackingStore(path, fmt, kind)


def parse_device_xml(text: str | bytes) -> HotplugDevice:
    """Parse one device's XML (``<disk>``, ``<interface>`` or ``<input>``), as
    ``attach_device`` takes it."""
    root = parse_xml(text)
    if root.tag == "disk":
        return parse_disk(Node(root, ("devices", "disk")))
    if root.tag == "interface":
        return parse_interface(Node(root, ("devices", "interface")))
    if root.tag == "input":
        return parse_input(Node(root, ("devices", "input")))
    raise ConfigUnsupportedError(
        f"unsupported configuration: attaching, detaching or updating <{root.tag}> is not "
        "supported (asvirt hotplugs <disk>, <interface> and <input>, and updates a "
        "<graphics>' password)"
    )


def parse_update_xml(text: str | bytes) -> HotplugDevice | Graphics:
    """Parse one device's XML as ``update_device`` takes it: a hotplug device's, or a
    ``<graphics>`` (whose password, expiry and ``connected`` may change)."""
    root = parse_xml(text)
    if root.tag == "graphics":
        return parse_graphics(Node(root, ("devices", "graphics")))
    return parse_device_xml(text)
