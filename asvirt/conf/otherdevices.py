"""The rest of libvirt's x86 devices: ``<vsock>``, ``<iommu>``, ``<shmem>``, ``<redirfilter>``.

Parsed strictly and written back as libvirt writes them, like :mod:`asvirt.conf.devices`;
defaults and checks against the hypervisor are the driver's post-parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import XMLError
from .addresses import CCIDAddress, PCIAddress, format_address, parse_address
from .devices import DeviceBase, _parse_alias
from .units import parse_kib
from .xmlnode import Node, XElem

#: ``model`` of a virtio device that has transitional variants (vsock, rng...).
VIRTIO_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")

# ---------------------------------------------------------------------------------------------
# <vsock>: a virtio socket between host and guest


@dataclass(slots=True)
class Vsock(DeviceBase):
    """``<vsock model='virtio'><cid auto=... address=.../>``."""

    model: str | None = None
    #: ``<cid auto='yes'>``: the driver picks the guest's context id at start.
    cid_auto: bool | None = None
    cid: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("vsock", {"model": self.model})
        el.add_if(
            "cid",
            {
                "auto": None if self.cid_auto is None else ("yes" if self.cid_auto else "no"),
                "address": self.cid,
            },
        )
        self._format_tail(el, live)


def parse_vsock(node: Node) -> Vsock:
    vs = Vsock(model=node.choice("model", VIRTIO_MODELS))
    cid = node.child("cid")
    if cid is not None:
        vs.cid_auto = cid.yesno("auto")
        # 0-2 are the hypervisor's, the reserved one and the host's; 2^32-1 is VMADDR_CID_ANY.
        vs.cid = cid.integer("address", minimum=3, maximum=(1 << 32) - 2)
        cid.finish()
    if vs.cid_auto is False and vs.cid is None:
        raise XMLError("<vsock><cid auto='no'> needs an address")
    _parse_alias(node, vs)
    vs.address = parse_address(node, (PCIAddress,))
    node.finish()
    return vs


# ---------------------------------------------------------------------------------------------
# <iommu>

IOMMU_MODELS = ("intel", "virtio", "smmuv3")
IOMMU_SWITCHES = ("intremap", "caching_mode", "eim", "iotlb")


@dataclass(slots=True)
class IOMMU(DeviceBase):
    """``<iommu model=...><driver intremap=... aw_bits=.../>``: an emulated IOMMU."""

    model: str = "intel"
    #: ``<driver>`` switches (``IOMMU_SWITCHES``) -> 'on' | 'off'.
    driver: dict[str, str] = field(default_factory=dict)
    aw_bits: int | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("iommu", {"model": self.model})
        attrs: dict[str, object] = dict(self.driver)
        attrs["aw_bits"] = self.aw_bits
        el.add_if("driver", attrs)
        self._format_tail(el, live)


def parse_iommu(node: Node) -> IOMMU:
    model = node.choice("model", IOMMU_MODELS)
    if model is None:
        raise XMLError("missing attribute 'model' of <iommu>")
    iommu = IOMMU(model=model)
    drv = node.child("driver")
    if drv is not None:
        for name in IOMMU_SWITCHES:
            value = drv.onoff(name)
            if value is not None:
                iommu.driver[name] = value
        iommu.aw_bits = drv.integer("aw_bits", minimum=1, maximum=64)
        drv.finish()
    _parse_alias(node, iommu)
    iommu.address = parse_address(node, (PCIAddress,))
    node.finish()
    return iommu


# ---------------------------------------------------------------------------------------------
# <shmem>: inter-VM shared memory (ivshmem)

SHMEM_MODELS = ("ivshmem-plain", "ivshmem-doorbell", "ivshmem")
_SHMEM_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass(slots=True)
class Shmem(DeviceBase):
    """``<shmem name=...>``: a host shared memory object (or an ivshmem server's) as a PCI BAR."""

    name: str = ""
    model: str | None = None
    size_kib: int | None = None
    #: ``<server path=...>`` of ivshmem-doorbell (None with ``server``: the default path).
    server: bool = False
    server_path: str | None = None
    msi_vectors: int | None = None
    msi_ioeventfd: str | None = None
    msi: bool = False
    role: str | None = None  # master | peer

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("shmem", {"name": self.name, "role": self.role})
        el.add("model", {"type": self.model})
        if self.size_kib is not None:
            el.add("size", {"unit": "M"}, text=str(self.size_kib // 1024))
        if self.server:
            el.add("server", {"path": self.server_path})
        if self.msi:
            el.add("msi", {"vectors": self.msi_vectors, "ioeventfd": self.msi_ioeventfd})
        self._format_tail(el, live)


def parse_shmem(node: Node) -> Shmem:
    name = node.required("name")
    if not _SHMEM_NAME_RE.fullmatch(name) or name in (".", ".."):
        raise XMLError(f"invalid shared memory name '{name}'")
    sh = Shmem(name=name, role=node.choice("role", ("master", "peer")))
    model = node.child("model")
    if model is not None:
        sh.model = model.choice("type", SHMEM_MODELS)
        model.finish()
    size = node.child("size")
    if size is not None:
        sh.size_kib = parse_kib(size.text(), size.attr("unit"), what="shmem size")
        size.finish()
    server = node.child("server")
    if server is not None:
        sh.server = True
        sh.server_path = server.attr("path")
        if sh.server_path is not None and not sh.server_path.startswith("/"):
            raise XMLError(f"<shmem><server path='{sh.server_path}'> must be absolute")
        server.finish()
    msi = node.child("msi")
    if msi is not None:
        sh.msi = True
        sh.msi_vectors = msi.integer("vectors", minimum=1, maximum=1024)
        sh.msi_ioeventfd = msi.onoff("ioeventfd")
        msi.ignore("enabled")  # libvirt's own writes it; MSI is what doorbell uses anyway
        msi.finish()
    _parse_alias(node, sh)
    sh.address = parse_address(node, (PCIAddress,))
    node.finish()
    return sh


# ---------------------------------------------------------------------------------------------
# <redirfilter>: which USB devices SPICE clients may redirect


@dataclass(slots=True)
class USBFilterRule:
    """``<usbdev>``: None matches anything."""

    allow: bool
    usb_class: int | None = None
    vendor: int | None = None
    product: int | None = None
    #: BCD, as in the device descriptor (``version='2.56'`` is 0x0256).
    version: int | None = None

    def qemu(self) -> str:
        """The rule in usb-redir's ``filter`` syntax (``class:vendor:product:version:allow``)."""

        def part(value: int | None, width: int) -> str:
            return "-1" if value is None else f"0x{value:0{width}X}"

        return ":".join(
            [
                part(self.usb_class, 2),
                part(self.vendor, 4),
                part(self.product, 4),
                part(self.version, 4),
                "1" if self.allow else "0",
            ]
        )


@dataclass(slots=True)
class RedirFilter:
    """``<redirfilter>``: rules applied in order to every ``<redirdev>``."""

    rules: list[USBFilterRule] = field(default_factory=list)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("redirfilter")
        for r in self.rules:
            version = None
            if r.version is not None:
                version = f"{r.version >> 8:x}.{r.version & 0xFF:x}"
            el.add(
                "usbdev",
                {
                    "class": None if r.usb_class is None else f"0x{r.usb_class:02x}",
                    "vendor": None if r.vendor is None else f"0x{r.vendor:04x}",
                    "product": None if r.product is None else f"0x{r.product:04x}",
                    "version": version,
                    "allow": "yes" if r.allow else "no",
                },
            )


def _hex_or_any(node: Node, name: str, maximum: int) -> int | None:
    value = node.attr(name)
    if value is None or value == "-1":
        return None
    try:
        number = int(value, 16)
    except ValueError:
        raise XMLError(f"invalid {name} '{value}' in {node.where}") from None
    if not 0 <= number <= maximum:
        raise XMLError(f"{name} '{value}' in {node.where} is out of range")
    return number


def parse_redirfilter(node: Node) -> RedirFilter:
    out = RedirFilter()
    for ud in node.children("usbdev"):
        allow = ud.yesno("allow")
        if allow is None:
            raise XMLError(f"missing attribute 'allow' of {ud.where}")
        rule = USBFilterRule(
            allow=allow,
            usb_class=_hex_or_any(ud, "class", 0xFF),
            vendor=_hex_or_any(ud, "vendor", 0xFFFF),
            product=_hex_or_any(ud, "product", 0xFFFF),
        )
        version = ud.attr("version")
        if version is not None and version != "-1":
            m = re.fullmatch(r"(\d{1,2})\.(\d{1,2})", version)
            if m is None:
                raise XMLError(f"invalid USB version '{version}' in {ud.where}")
            rule.version = (int(m.group(1), 16) << 8) | int(m.group(2), 16)
        ud.finish()
        out.rules.append(rule)
    node.finish()
    return out


# ---------------------------------------------------------------------------------------------
# <smartcard>: a CCID card in a USB reader (a <controller type='ccid'>)

SMARTCARD_MODES = ("host", "host-certificates", "passthrough")


@dataclass(slots=True)
class Smartcard(DeviceBase):
    """``<smartcard mode=...>``: the host's card (NSS), three NSS certificates, or a card
    passed through a character device (a SPICE client's, or a TCP socket)."""

    mode: str = "host"
    certificates: list[str] = field(default_factory=list)
    database: str | None = None
    #: passthrough: 'spicevmc' or 'tcp' (with ``source_mode``, ``host``, ``service``).
    type: str | None = None
    source_mode: str | None = None
    host: str | None = None
    service: str | None = None

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("smartcard", {"mode": self.mode, "type": self.type})
        for cert in self.certificates:
            el.add("certificate", text=cert)
        if self.database is not None:
            el.add("database", text=self.database)
        if self.type == "tcp":
            el.add("source", {"mode": self.source_mode, "host": self.host, "service": self.service})
            el.add("protocol", {"type": "raw"})
        # libvirt's schema has no <alias> for smartcards: the live XML leaves it out.
        format_address(el, self.address)


def parse_smartcard(node: Node) -> Smartcard:
    mode = node.choice("mode", SMARTCARD_MODES)
    if mode is None:
        raise XMLError("missing attribute 'mode' of <smartcard>")
    sc = Smartcard(mode=mode)
    if mode == "host-certificates":
        for cert in node.children("certificate"):
            sc.certificates.append(cert.text())
            cert.finish()
        if len(sc.certificates) != 3:
            raise XMLError("<smartcard mode='host-certificates'> needs three <certificate>s")
        db = node.child("database")
        if db is not None:
            sc.database = db.text()
            if not sc.database.startswith("/"):
                raise XMLError(f"smartcard database '{sc.database}' must be an absolute path")
            db.finish()
    elif mode == "passthrough":
        sc.type = node.choice("type", ("spicevmc", "tcp"))
        if sc.type is None:
            raise node.unsupported_value("type", node.attr("type") or "", ["spicevmc", "tcp"])
        if sc.type == "tcp":
            src = node.child("source")
            if src is None:
                raise XMLError(f"{node.where} of type 'tcp' needs a <source>")
            sc.source_mode = src.choice("mode", ("bind", "connect"), "connect")
            sc.host = src.attr("host")
            sc.service = src.required("service")
            if not sc.service.isdigit() or int(sc.service) > 65535:
                raise XMLError(f"invalid service '{sc.service}' in {src.where}")
            if sc.host is not None and not re.fullmatch(r"[A-Za-z0-9.:_-]+", sc.host):
                raise XMLError(f"invalid host '{sc.host}' in {src.where}")
            src.finish()
            proto = node.child("protocol")
            if proto is not None:
                proto.choice("type", ("raw",))
                proto.finish()
    _parse_alias(node, sc)
    sc.address = parse_address(node, (CCIDAddress,))
    node.finish()
    return sc


__all__ = [
    "IOMMU",
    "RedirFilter",
    "Shmem",
    "Smartcard",
    "USBFilterRule",
    "Vsock",
    "parse_iommu",
    "parse_redirfilter",
    "parse_shmem",
    "parse_smartcard",
    "parse_vsock",
]
