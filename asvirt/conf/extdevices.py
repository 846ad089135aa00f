"""More devices of libvirt's domain schema: shared folders, host devices, sound, USB
redirection and TPMs.

The same conventions as :mod:`asvirt.conf.devices`: one dataclass per element, a strict
``parse_*`` function (what is not understood is reported, never dropped) and a ``format_xml``
method that writes the element back as libvirt does. Defaults that depend on the hypervisor
(models, addresses, aliases, socket paths) are the driver's post-parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigUnsupportedError, XMLError
from .addresses import PCIAddress, USBAddress, parse_address
from .devices import CHARDEV_TYPES, Chardev, DeviceBase, _parse_alias, _parse_boot, parse_chardev
from .names import canonical_uuid
from .xmlnode import Node, XElem

# ---------------------------------------------------------------------------------------------
# <filesystem>: a host directory shared with the guest (virtiofs or 9p)

FS_ACCESS_MODES = ("passthrough", "mapped", "squash")
FS_DRIVERS = ("path", "handle", "virtiofs")
FS_CACHE_MODES = ("none", "always", "auto")


@dataclass(slots=True)
class Filesystem(DeviceBase):
    """``<filesystem type='mount'>``: ``driver`` 'virtiofs' (a virtiofsd per share) or 9p."""

    type: str = "mount"
    accessmode: str | None = None
    driver: str | None = None  # path (9p) | handle (9p, gone from QEMU) | virtiofs
    queue: int | None = None
    multidevs: str | None = None
    fmode: str | None = None
    dmode: str | None = None
    source_dir: str | None = None
    #: ``<source socket=...>``: a virtiofsd somebody else runs (asvirt starts none).
    source_socket: str | None = None
    target: str = ""
    readonly: bool = False
    binary_path: str | None = None
    binary_xattr: str | None = None
    cache_mode: str | None = None
    sandbox_mode: str | None = None
    lock_posix: str | None = None
    lock_flock: str | None = None
    thread_pool_size: int | None = None
    boot_order: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "filesystem",
            {
                "type": self.type,
                "accessmode": self.accessmode,
                "multidevs": self.multidevs,
                "fmode": self.fmode,
                "dmode": self.dmode,
            },
        )
        el.add_if("driver", {"type": self.driver, "queue": self.queue})
        binary_attrs = {"path": self.binary_path, "xattr": self.binary_xattr}
        has_binary_children = any(
            v is not None
            for v in (
                self.cache_mode,
                self.sandbox_mode,
                self.lock_posix,
                self.lock_flock,
                self.thread_pool_size,
            )
        )
        if has_binary_children or any(v is not None for v in binary_attrs.values()):
            binary = el.add("binary", binary_attrs)
            if self.cache_mode is not None:
                binary.add("cache", {"mode": self.cache_mode})
            if self.sandbox_mode is not None:
                binary.add("sandbox", {"mode": self.sandbox_mode})
            binary.add_if("lock", {"posix": self.lock_posix, "flock": self.lock_flock})
            if self.thread_pool_size is not None:
                binary.add("thread_pool", {"size": self.thread_pool_size})
        if self.source_socket is not None:
            el.add("source", {"socket": self.source_socket})
        else:
            el.add("source", {"dir": self.source_dir})
        el.add("target", {"dir": self.target})
        if self.boot_order is not None:
            el.add("boot", {"order": self.boot_order})
        if self.readonly:
            el.add("readonly")
        self._format_tail(el, live)


def parse_filesystem(node: Node) -> Filesystem:
    kind = node.attr("type", "mount") or "mount"
    if kind != "mount":
        raise ConfigUnsupportedError(
            f"unsupported configuration: <filesystem type='{kind}'> is not supported "
            "(asvirt shares host directories: type='mount')"
        )
    fs = Filesystem(type=kind)
    fs.accessmode = node.choice("accessmode", FS_ACCESS_MODES)
    fs.multidevs = node.choice("multidevs", ("default", "remap", "forbid", "warn"))
    for key in ("fmode", "dmode"):
        value = node.attr(key)
        if value is not None and not re.fullmatch(r"0?[0-7]{3}", value):
            raise XMLError(f"invalid {key} '{value}' of {node.where}: an octal mode")
        setattr(fs, key, value)
    drv = node.child("driver")
    if drv is not None:
        fs.driver = drv.choice("type", FS_DRIVERS)
        fs.queue = drv.integer("queue", minimum=1, maximum=32768)
        drv.ignore("format")
        if drv.attr("format") not in (None, "raw"):
            raise drv.unsupported_value("format", drv.attr("format") or "", ["raw"])
        if drv.attr("wrpolicy") is not None:
            raise drv.unsupported_value("wrpolicy", drv.attr("wrpolicy") or "")
        drv.finish()
    binary = node.child("binary")
    if binary is not None:
        fs.binary_path = binary.attr("path")
        if fs.binary_path is not None and not fs.binary_path.startswith("/"):
            raise XMLError(f"virtiofsd binary '{fs.binary_path}' must be an absolute path")
        fs.binary_xattr = binary.onoff("xattr")
        cache = binary.child("cache")
        if cache is not None:
            fs.cache_mode = cache.choice("mode", FS_CACHE_MODES)
            cache.finish()
        sandbox = binary.child("sandbox")
        if sandbox is not None:
            fs.sandbox_mode = sandbox.choice("mode", ("namespace", "chroot"))
            sandbox.finish()
        lock = binary.child("lock")
        if lock is not None:
            fs.lock_posix = lock.onoff("posix")
            fs.lock_flock = lock.onoff("flock")
            lock.finish()
        pool = binary.child("thread_pool")
        if pool is not None:
            fs.thread_pool_size = pool.integer("size", minimum=1, maximum=1 << 16)
            pool.finish()
        binary.finish()
    src = node.child("source")
    if src is None:
        raise XMLError("missing <source> of <filesystem>")
    fs.source_dir = src.attr("dir")
    fs.source_socket = src.attr("socket")
    src.finish()
    if (fs.source_dir is None) == (fs.source_socket is None):
        raise XMLError("<filesystem><source> needs either dir= or socket=")
    for path in (fs.source_dir, fs.source_socket):
        if path is not None and not path.startswith("/"):
            raise XMLError(f"<filesystem> source '{path}' must be an absolute path")
    tgt = node.child("target")
    if tgt is None:
        raise XMLError("missing <target> of <filesystem>")
    fs.target = tgt.required("dir")
    if len(fs.target) > 36 or "," in fs.target:
        raise XMLError(
            f"filesystem target '{fs.target}' must be at most 36 characters, without commas"
        )
    tgt.finish()
    ro = node.child("readonly")
    if ro is not None:
        ro.finish()
        fs.readonly = True
    fs.boot_order = _parse_boot(node)
    _parse_alias(node, fs)
    fs.address = parse_address(node, (PCIAddress,))
    node.finish()
    if fs.source_socket is not None and fs.driver != "virtiofs":
        raise XMLError("<filesystem><source socket=...> needs <driver type='virtiofs'/>")
    return fs


# ---------------------------------------------------------------------------------------------
# <hostdev>: a host PCI or USB device given to the guest


@dataclass(slots=True)
class HostPCIAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass(slots=True)
class Hostdev(DeviceBase):
    """``<hostdev mode='subsystem' type='pci'|'usb'>``."""

    type: str = "pci"
    managed: bool | None = None
    driver_name: str | None = None  # pci: vfio
    pci: HostPCIAddress | None = None
    usb_vendor: int | None = None
    usb_product: int | None = None
    usb_bus: int | None = None
    usb_device: int | None = None
    startup_policy: str | None = None
    rom_bar: str | None = None
    rom_file: str | None = None
    boot_order: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "hostdev", {"mode": "subsystem", "type": self.type, "managed": self.managed}
        )
        if self.driver_name is not None:
            el.add("driver", {"name": self.driver_name})
        src = el.add("source", {"startupPolicy": self.startup_policy})
        if self.pci is not None:
            src.add(
                "address",
                {
                    "domain": f"{self.pci.domain:#06x}",
                    "bus": f"{self.pci.bus:#04x}",
                    "slot": f"{self.pci.slot:#04x}",
                    "function": f"{self.pci.function:#x}",
                },
            )
        if self.usb_vendor is not None:
            src.add("vendor", {"id": f"{self.usb_vendor:#06x}"})
        if self.usb_product is not None:
            src.add("product", {"id": f"{self.usb_product:#06x}"})
        if self.usb_bus is not None:
            src.add("address", {"bus": self.usb_bus, "device": self.usb_device})
        if self.boot_order is not None:
            el.add("boot", {"order": self.boot_order})
        el.add_if("rom", {"bar": self.rom_bar, "file": self.rom_file})
        self._format_tail(el, live)


def parse_hostdev(node: Node) -> Hostdev:
    mode = node.attr("mode", "subsystem")
    if mode != "subsystem":
        raise ConfigUnsupportedError(
            f"unsupported configuration: <hostdev mode='{mode}'> is not supported "
            "(only mode='subsystem': PCI and USB devices)"
        )
    kind = node.required("type")
    if kind not in ("pci", "usb"):
        raise node.unsupported_value("type", kind, ["pci", "usb"])
    hd = Hostdev(type=kind, managed=node.yesno("managed"))
    drv = node.child("driver")
    if drv is not None:
        if kind != "pci":
            raise node.unsupported("<driver> (only PCI host devices have one)")
        hd.driver_name = drv.choice("name", ("vfio",))
        drv.finish()
    src = node.child("source")
    if src is None:
        raise XMLError(f"missing <source> of {node.where}")
    hd.startup_policy = src.choice("startupPolicy", ("mandatory", "requisite", "optional"))
    if hd.startup_policy is not None and kind != "usb":
        raise XMLError("startupPolicy is only for USB host devices")
    addr = src.child("address")
    if kind == "pci":
        if addr is None:
            raise XMLError("a PCI <hostdev> needs <source><address .../>")
        if addr.attr("type") not in (None, "pci"):
            raise addr.unsupported_value("type", addr.attr("type") or "", ["pci"])
        hd.pci = HostPCIAddress(
            domain=addr.integer("domain", minimum=0, maximum=0xFFFF, hex_ok=True) or 0,
            bus=_required_int(addr, "bus", 0xFF),
            slot=_required_int(addr, "slot", 0x1F),
            function=_required_int(addr, "function", 7),
        )
        addr.finish()
    else:
        for tag in ("vendor", "product"):
            sub = src.child(tag)
            if sub is not None:
                setattr(hd, f"usb_{tag}", _required_int(sub, "id", 0xFFFF))
                sub.finish()
        if addr is not None:
            hd.usb_bus = _required_int(addr, "bus", 0xFFFF)
            hd.usb_device = _required_int(addr, "device", 0xFFFF)
            addr.finish()
        if hd.usb_vendor is None and hd.usb_bus is None:
            raise XMLError("a USB <hostdev> needs <vendor>/<product> or <address bus device>")
        if (hd.usb_vendor is None) != (hd.usb_product is None):
            raise XMLError("a USB <hostdev> needs both <vendor> and <product>")
    src.finish()
    hd.boot_order = _parse_boot(node)
    rom = node.child("rom")
    if rom is not None:
        if kind != "pci":
            raise node.unsupported("<rom> (only PCI host devices have one)")
        hd.rom_bar = rom.onoff("bar")
        hd.rom_file = rom.attr("file")
        if hd.rom_file is not None and not hd.rom_file.startswith("/"):
            raise XMLError(f"<rom file='{hd.rom_file}'> must be an absolute path")
        rom.finish()
    _parse_alias(node, hd)
    hd.address = parse_address(node, (PCIAddress,) if kind == "pci" else (USBAddress,))
    node.finish()
    return hd


def _required_int(node: Node, name: str, maximum: int) -> int:
    value = node.integer(name, minimum=0, maximum=maximum, hex_ok=True)
    if value is None:
        raise XMLError(f"missing attribute '{name}' of {node.where}")
    return value


# ---------------------------------------------------------------------------------------------
# <sound>

SOUND_MODELS = ("ich6", "ich9", "ac97", "es1370", "sb16", "usb")
SOUND_CODECS = ("duplex", "micro", "output")


@dataclass(slots=True)
class Sound(DeviceBase):
    """``<sound model=...>``: a sound card, its HDA codecs and the ``<audio>`` backend it uses."""

    model: str = "ich9"
    codecs: list[str] | None = None
    audio_id: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("sound", {"model": self.model})
        for codec in self.codecs or []:
            el.add("codec", {"type": codec})
        if self.audio_id is not None:
            el.add("audio", {"id": self.audio_id})
        self._format_tail(el, live)


def parse_sound(node: Node) -> Sound:
    model = node.attr("model")
    if model is None:
        raise XMLError("missing attribute 'model' of <sound>")
    if model not in SOUND_MODELS:
        raise node.unsupported_value("model", model, SOUND_MODELS)
    snd = Sound(model=model)
    codecs = node.children("codec")
    if codecs:
        if model not in ("ich6", "ich9"):
            raise XMLError(f"a '{model}' sound card has no HDA codecs")
        snd.codecs = []
        for c in codecs:
            codec = c.choice("type", SOUND_CODECS)
            if codec is None:
                raise XMLError(f"missing attribute 'type' of {c.where}")
            c.finish()
            snd.codecs.append(codec)
    audio = node.child("audio")
    if audio is not None:
        snd.audio_id = audio.integer("id", minimum=1, maximum=65535)
        if snd.audio_id is None:
            raise XMLError(f"missing attribute 'id' of {audio.where}")
        audio.finish()
    _parse_alias(node, snd)
    snd.address = parse_address(node, (USBAddress,) if model == "usb" else (PCIAddress,))
    node.finish()
    return snd


# ---------------------------------------------------------------------------------------------
# <redirdev>: a USB device redirected into the guest over usbredir's protocol


@dataclass(slots=True)
class Redirdev(DeviceBase):
    """``<redirdev bus='usb' type=...>``: a SPICE client's USB device (``spicevmc``), or a
    usbredir peer at the other end of a character device (``tcp``, ``unix``... any
    chardev type: ``source`` is its host side)."""

    bus: str = "usb"
    type: str = "spicevmc"
    boot_order: int | None = None
    #: The chardev of a non-spicevmc redirection (its source, protocol, log).
    source: Chardev | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("redirdev", {"bus": self.bus, "type": self.type})
        if self.source is not None:
            self.source.format_source(el, live)
        if self.boot_order is not None:
            el.add("boot", {"order": self.boot_order})
        self._format_tail(el, live)


def parse_redirdev(node: Node) -> Redirdev:
    bus = node.choice("bus", ("usb",), "usb") or "usb"
    kind = node.attr("type")
    if kind is None:
        raise XMLError(f"missing attribute 'type' of {node.where}")
    rd = Redirdev(bus=bus, type=kind)
    rd.boot_order = _parse_boot(node)
    if kind == "spicevmc":
        _parse_alias(node, rd)
        rd.address = parse_address(node, (USBAddress,))
        node.finish()
        return rd
    if kind not in CHARDEV_TYPES:
        raise node.unsupported_value("type", kind, ("spicevmc", *CHARDEV_TYPES))
    # The rest is a character device's (libvirt's schema: any chardev source).
    chr_ = parse_chardev(node, "redirdev")
    if chr_.type == "unix" and chr_.source_path is None:
        raise XMLError(f"{node.where} of type 'unix' needs a <source path=...>")
    rd.user_alias, rd.alias, rd.address = chr_.user_alias, chr_.alias, chr_.address
    chr_.alias, chr_.address = None, None
    rd.source = chr_
    return rd


# ---------------------------------------------------------------------------------------------
# <tpm>

TPM_MODELS = ("tpm-tis", "tpm-crb")
PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")


@dataclass(slots=True)
class TPM(DeviceBase):
    """``<tpm>``: an emulated TPM (a ``swtpm`` per domain) or the host's, passed through."""

    model: str | None = None
    backend: str = "emulator"  # emulator | passthrough
    version: str | None = None  # 1.2 | 2.0
    persistent_state: bool | None = None
    device_path: str | None = None  # passthrough
    pcr_banks: list[str] | None = None
    #: ``<encryption secret='UUID'/>``: the state is encrypted with a key derived from that
    #: secret's value (a ``vtpm`` secret).
    encryption_secret: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("tpm", {"model": self.model})
        be = el.add(
            "backend",
            {
                "type": self.backend,
                "version": self.version,
                "persistent_state": self.persistent_state,
            },
        )
        if self.device_path is not None:
            be.add("device", {"path": self.device_path})
        if self.encryption_secret is not None:
            be.add("encryption", {"secret": self.encryption_secret})
        if self.pcr_banks is not None:
            banks = be.add("active_pcr_banks")
            for bank in self.pcr_banks:
                banks.add(bank)
        self._format_tail(el, live)


def parse_tpm(node: Node) -> TPM:
    tpm = TPM(model=node.choice("model", TPM_MODELS))
    be = node.child("backend")
    if be is None:
        raise XMLError("missing <backend> of <tpm>")
    kind = be.required("type")
    if kind not in ("emulator", "passthrough"):
        raise be.unsupported_value("type", kind, ["emulator", "passthrough"])
    tpm.backend = kind
    if kind == "emulator":
        tpm.version = be.choice("version", ("1.2", "2.0"))
        tpm.persistent_state = be.yesno("persistent_state")
        enc = be.child("encryption")
        if enc is not None:
            tpm.encryption_secret = canonical_uuid(
                enc.required("secret"), what="secret UUID", error=XMLError
            )
            enc.finish()
        banks = be.child("active_pcr_banks")
        if banks is not None:
            tpm.pcr_banks = []
            for bank, _ in banks.tags_in_order():
                if bank not in PCR_BANKS:
                    raise banks.unsupported(f"<{bank}>")
                banks.child(bank)
                tpm.pcr_banks.append(bank)
            banks.finish()
    else:
        dev = be.child("device")
        tpm.device_path = "/dev/tpm0"
        if dev is not None:
            tpm.device_path = dev.required("path")
            dev.finish()
        if not re.fullmatch(r"/dev/tpm\d+", tpm.device_path):
            raise XMLError(f"TPM passthrough device '{tpm.device_path}' is not /dev/tpmN")
    be.finish()
    _parse_alias(node, tpm)
    node.finish()
    return tpm


__all__ = [
    "TPM",
    "Filesystem",
    "HostPCIAddress",
    "Hostdev",
    "Redirdev",
    "Sound",
    "parse_filesystem",
    "parse_hostdev",
    "parse_redirdev",
    "parse_sound",
    "parse_tpm",
]
