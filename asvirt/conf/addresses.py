"""Device addresses: where a device sits on its bus (``<address type='...'/>``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import XMLError
from .xmlnode import Node, XElem


@dataclass(slots=True)
class PCIAddress:
    """``<address type='pci'/>``. All zeros means "not assigned yet", as in libvirt."""

    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: str | None = None  # 'on' | 'off' | None (default)

    def is_unset(self) -> bool:
        return not (self.domain or self.bus or self.slot or self.function)

    @property
    def qemu_addr(self) -> str:
        """The ``addr=`` property QEMU takes: ``0x2`` or ``0x1.0x2``."""
        if self.function:
            return f"{self.slot:#x}.{self.function:#x}"
        return f"{self.slot:#x}"

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass(slots=True)
class DriveAddress:
    """``<address type='drive'/>``: a disk on an IDE, SATA or SCSI controller."""

    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0


@dataclass(slots=True)
class VirtioSerialAddress:
    """``<address type='virtio-serial'/>``: a port of a virtio-serial controller."""

    controller: int = 0
    bus: int = 0
    port: int | None = None


@dataclass(slots=True)
class USBAddress:
    """``<address type='usb'/>``: ``port`` is a dotted path through hubs, e.g. ``1.2``."""

    bus: int = 0
    port: str | None = None


@dataclass(slots=True)
class ISAAddress:
    """``<address type='isa'/>``."""

    iobase: int | None = None
    irq: int | None = None


@dataclass(slots=True)
class DimmAddress:
    """``<address type='dimm' slot=... base=.../>``: a memory module's slot and where it maps."""

    slot: int | None = None
    base: int | None = None


@dataclass(slots=True)
class CCIDAddress:
    """``<address type='ccid' controller=... slot=.../>``: a smartcard's reader slot."""

    controller: int = 0
    slot: int = 0


Address = (
    PCIAddress | DriveAddress | VirtioSerialAddress | USBAddress | ISAAddress | DimmAddress
) | CCIDAddress

_TYPES: dict[str, type] = {
    "pci": PCIAddress,
    "drive": DriveAddress,
    "virtio-serial": VirtioSerialAddress,
    "usb": USBAddress,
    "isa": ISAAddress,
    "dimm": DimmAddress,
    "ccid": CCIDAddress,
}


def parse_address(parent: Node, allowed: tuple[type, ...]) -> Address | None:
    """The ``<address>`` child of ``parent`` if any, which must be one of ``allowed`` types."""
    node = parent.child("address")
    if node is None:
        return None
    kind = node.required("type")
    cls = _TYPES.get(kind)
    if cls is None or cls not in allowed:
        names = [k for k, v in _TYPES.items() if v in allowed]
        raise node.unsupported_value("type", kind, names or None)
    addr: Address
    if cls is PCIAddress:
        addr = PCIAddress(
            domain=node.integer("domain", minimum=0, maximum=0xFFFF, hex_ok=True) or 0,
            bus=node.integer("bus", minimum=0, maximum=0xFF, hex_ok=True) or 0,
            slot=node.integer("slot", minimum=0, maximum=0x1F, hex_ok=True) or 0,
            function=node.integer("function", minimum=0, maximum=7, hex_ok=True) or 0,
            multifunction=node.onoff("multifunction"),
        )
        if addr.domain != 0:
            raise node.unsupported_value("domain", node.attr("domain") or "", ["0"])
    elif cls is DriveAddress:
        addr = DriveAddress(
            controller=node.integer("controller", minimum=0, maximum=255) or 0,
            bus=node.integer("bus", minimum=0, maximum=255) or 0,
            target=node.integer("target", minimum=0, maximum=65535) or 0,
            unit=node.integer("unit", minimum=0, maximum=65535) or 0,
        )
    elif cls is VirtioSerialAddress:
        addr = VirtioSerialAddress(
            controller=node.integer("controller", minimum=0, maximum=255) or 0,
            bus=node.integer("bus", minimum=0, maximum=255) or 0,
            port=node.integer("port", minimum=0, maximum=30),
        )
    elif cls is USBAddress:
        port = node.attr("port")
        if port is not None:
            parts = port.split(".")
            if not all(p.isdigit() and 1 <= int(p) <= 255 for p in parts) or len(parts) > 5:
                raise XMLError(f"invalid USB port '{port}' in {node.where}")
            port = ".".join(str(int(p)) for p in parts)
        addr = USBAddress(bus=node.integer("bus", minimum=0, maximum=255) or 0, port=port)
    elif cls is CCIDAddress:
        addr = CCIDAddress(
            controller=node.integer("controller", minimum=0, maximum=255) or 0,
            slot=node.integer("slot", minimum=0, maximum=0) or 0,
        )
    elif cls is DimmAddress:
        addr = DimmAddress(
            slot=node.integer("slot", minimum=0, maximum=255),
            base=node.integer("base", minimum=0, maximum=(1 << 64) - 1, hex_ok=True),
        )
    else:
        addr = ISAAddress(
            iobase=node.integer("iobase", minimum=0, maximum=0xFFFF, hex_ok=True),
            irq=node.integer("irq", minimum=0, maximum=255, hex_ok=True),
        )
    node.finish()
    return addr


def format_address(parent: XElem, addr: Address | None) -> None:
    """Append ``addr`` to ``parent`` the way libvirt formats it."""
    if addr is None:
        return
    if isinstance(addr, PCIAddress):
        parent.add(
            "address",
            {
                "type": "pci",
                "domain": f"{addr.domain:#06x}",
                "bus": f"{addr.bus:#04x}",
                "slot": f"{addr.slot:#04x}",
                "function": f"{addr.function:#x}",
                "multifunction": addr.multifunction,
            },
        )
    elif isinstance(addr, DriveAddress):
        parent.add(
            "address",
            {
                "type": "drive",
                "controller": addr.controller,
                "bus": addr.bus,
                "target": addr.target,
                "unit": addr.unit,
            },
        )
    elif isinstance(addr, VirtioSerialAddress):
        parent.add(
            "address",
            {
                "type": "virtio-serial",
                "controller": addr.controller,
                "bus": addr.bus,
                "port": addr.port,
            },
        )
    elif isinstance(addr, USBAddress):
        parent.add("address", {"type": "usb", "bus": addr.bus, "port": addr.port})
    elif isinstance(addr, CCIDAddress):
        parent.add("address", {"type": "ccid", "controller": addr.controller, "slot": addr.slot})
    elif isinstance(addr, DimmAddress):
        base = None if addr.base is None else f"{addr.base:#x}"
        parent.add("address", {"type": "dimm", "slot": addr.slot, "base": base})
    else:
        parent.add(
            "address",
            {
                "type": "isa",
                "iobase": None if addr.iobase is None else f"{addr.iobase:#x}",
                "irq": None if addr.irq is None else f"{addr.irq:#x}",
            },
        )
