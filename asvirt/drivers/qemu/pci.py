"""PCI address assignment, following libvirt's rules so the same XML gives the same hardware.

The rules, as libvirt applies them:

* Explicit ``<address type='pci'>`` elements are honoured (and checked for clashes); an
  address of all zeros means "assign one".
* The chipset's own functions are reserved first: on i440FX the PIIX3 in slot 1 (ISA bridge,
  the IDE controller at 1.1, the first USB controller at 1.2); on Q35 slot 0x1f (LPC, the
  AHCI controller at 1f.2, SMBus) and the first two sets of ICH9 USB2 controllers at slots
  0x1d and 0x1a. The primary video card goes to slot 2 (i440FX) or 1 (Q35) when free.
* Everything else takes the lowest free slot of the first bus that accepts it, in a fixed
  device order: PCI controllers, network interfaces, other controllers, virtio disks, the
  balloon, RNGs, a PCI watchdog, secondary video cards, virtio input devices.
* When a bus fills up, bridges are added. A first "dry run" counts how many (libvirt keeps
  one slot spare on i440FX for a future bridge); the new controllers are added to the
  definition and a second pass assigns the real addresses, bridges first. On Q35 every PCIe
  device gets its own ``pcie-root-port``, and when asvirt had to add ports it adds one more,
  empty, for hotplug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ...conf.addresses import PCIAddress
from ...conf.devices import Controller
from ...conf.domain import DomainDef
from ...errors import ConfigUnsupportedError, XMLError

# How a device connects; a bus accepts a set of these for automatic placement.
PCI_DEV = 1  # conventional PCI endpoint
PCIE_DEV = 2  # PCI Express endpoint
ROOT_PORT = 4
DMI_BRIDGE = 8
PCI_BRIDGE = 16
PCIE_PCI_BRIDGE = 32

#: model -> (first slot, last slot, connect types placed there automatically)
BUS_MODELS: dict[str, tuple[int, int, int]] = {
    "pci-root": (1, 31, PCI_DEV | PCI_BRIDGE),
    "pci-bridge": (1, 31, PCI_DEV | PCI_BRIDGE),
    "pcie-root": (1, 31, ROOT_PORT | DMI_BRIDGE),
    "pcie-root-port": (0, 0, PCIE_DEV | PCIE_PCI_BRIDGE),
    "dmi-to-pci-bridge": (0, 31, PCI_BRIDGE),
    "pcie-to-pci-bridge": (1, 31, PCI_DEV),
}

#: PCI bus numbers are 8 bits.
MAX_BUSES = 256

#: The QEMU device behind each PCI controller model (``<model name=...>``).
CONTROLLER_DEVICE = {
    "pci-bridge": "pci-bridge",
    "dmi-to-pci-bridge": "i82801b11-bridge",
    "pcie-root-port": "pcie-root-port",
    "pcie-to-pci-bridge": "pcie-pci-bridge",
}

_CONTROLLER_CTYPE = {
    "pci-bridge": PCI_BRIDGE,
    "dmi-to-pci-bridge": DMI_BRIDGE,
    "pcie-root-port": ROOT_PORT,
    "pcie-to-pci-bridge": PCIE_PCI_BRIDGE,
}

#: Function of each ICH9 USB2 controller in its shared slot.
USB2_FUNCTION = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}


@dataclass(slots=True)
class _Slot:
    functions: set[int] = field(default_factory=set)
    aggregate: bool = False  # holds pcie-root-ports, which may share it function by function


class _Bus:
    __slots__ = ("accepts", "hint", "index", "max_slot", "min_slot", "model", "slots")

    def __init__(self, index: int, model: str) -> None:
        self.index = index
        self.model = model
        self.min_slot, self.max_slot, self.accepts = BUS_MODELS[model]
        self.slots: dict[int, _Slot] = {}
        #: No slot below this one is free (slots are never released), so searches start here.
        self.hint = self.min_slot

    def slot(self, n: int) -> _Slot:
        s = self.slots.get(n)
        if s is None:
            s = self.slots[n] = _Slot()
        return s

    def used(self, n: int) -> bool:
        s = self.slots.get(n)
        return s is not None and bool(s.functions)

    def fully_reserved(self) -> bool:
        return all(self.slots.get(n) and self.slots[n].functions for n in self._range())

    def _range(self) -> range:
        return range(self.min_slot, self.max_slot + 1)


@dataclass(slots=True)
class _Client:
    """A device that wants a PCI address."""

    obj: object  # anything with an ``address`` attribute
    ctype: int
    what: str


class _AddressSet:
    def __init__(self, buses: list[_Bus], *, dry_run: bool, grow: Callable[[int], str]) -> None:
        self.buses = buses
        self.dry_run = dry_run
        self._grow_model = grow
        #: Buses added for a pcie-to-pci-bridge whose own slot was reserved with them.
        self.preplaced: set[int] = set()

    def bus(self, index: int, what: str, *, ctype: int) -> _Bus:
        while index >= len(self.buses):
            if not self.dry_run:
                raise XMLError(f"{what} is on PCI bus {index:#04x}, which does not exist")
            self._append(self._grow_model(ctype), what)
        return self.buses[index]

    def _append(self, model: str, what: str) -> _Bus:
        if len(self.buses) >= MAX_BUSES:
            raise ConfigUnsupportedError(
                f"unsupported configuration: no free PCI slot for {what}: a guest has at most "
                f"{MAX_BUSES} PCI buses"
            )
        bus = _Bus(len(self.buses), model)
        self.buses.append(bus)
        return bus

    def reserve(self, addr: PCIAddress, ctype: int, what: str) -> None:
        bus = self.bus(addr.bus, what, ctype=ctype)
        low = 0 if bus.model in ("pci-root", "pcie-root") else bus.min_slot
        if not low <= addr.slot <= bus.max_slot:
            raise XMLError(
                f"{what}: PCI slot {addr.slot:#04x} is not usable on bus {addr.bus:#04x} "
                f"({bus.model}, slots {low:#x}-{bus.max_slot:#x})"
            )
        if addr.bus == 0 and addr.slot == 0:
            raise XMLError(f"{what}: PCI slot 0 of bus 0 belongs to the host bridge")
        slot = bus.slot(addr.slot)
        if addr.function in slot.functions:
            raise XMLError(f"{what}: PCI address {addr} is already in use")
        slot.functions.add(addr.function)
        if ctype & ROOT_PORT:
            slot.aggregate = True

    def find_free(self, ctype: int, what: str) -> tuple[int, int, int]:
        """(bus, slot, function) of the first free place for a ``ctype`` device."""
        for bus in self.buses:
            if not bus.accepts & ctype:
                continue
            if ctype & ROOT_PORT:  # may share a slot with other root ports
                for n in range(bus.min_slot, bus.max_slot + 1):
                    slot = bus.slots.get(n)
                    if slot is None or not slot.functions:
                        return bus.index, n, 0
                    if slot.aggregate and len(slot.functions) < 8:
                        return bus.index, n, min(set(range(8)) - slot.functions)
                continue
            while bus.hint <= bus.max_slot and bus.used(bus.hint):
                bus.hint += 1
            if bus.hint <= bus.max_slot:
                return bus.index, bus.hint, 0
        if not self.dry_run:
            raise ConfigUnsupportedError(f"unsupported configuration: no free PCI slot for {what}")
        model = self._grow_model(ctype)
        if model == "pcie-to-pci-bridge":
            # The bridge needs a root port to sit in: add that first (so it gets the lower
            # index, like a parent should) and keep its slot for the bridge.
            port = self._append("pcie-root-port", what)
            port.slot(0).functions.add(0)
            self.preplaced.add(port.index + 1)
        bus = self._append(model, what)
        return bus.index, bus.min_slot, 0

    def reserve_next(self, ctype: int, what: str) -> PCIAddress:
        b, s, f = self.find_free(ctype, what)
        addr = PCIAddress(bus=b, slot=s, function=f)
        self.reserve(addr, ctype, what)
        return addr


# ---------------------------------------------------------------------------------------------


def assign_pci_addresses(d: DomainDef, *, q35: bool, has_pcie_pci_bridge: bool) -> None:
    """Give every PCI device of ``d`` an address, adding bridges/root ports as needed."""
    pci_ctls = [c for c in d.controllers if c.type == "pci"]
    max_idx = max((c.index for c in pci_ctls), default=-1)
    if max_idx < 0:
        return

    def grow(ctype: int) -> str:
        if not q35:
            return "pci-bridge"
        if ctype & (PCIE_DEV | PCIE_PCI_BRIDGE):
            return "pcie-root-port"
        if ctype & PCI_BRIDGE:
            return "dmi-to-pci-bridge"
        if ctype & PCI_DEV:
            if not has_pcie_pci_bridge:
                raise ConfigUnsupportedError(
                    "unsupported configuration: this QEMU has no pcie-pci-bridge for "
                    "conventional PCI devices on a Q35 machine"
                )
            return "pcie-to-pci-bridge"
        raise ConfigUnsupportedError("unsupported configuration: no free slot on pcie.0")

    # 1st pass: find out how many buses are needed. It assigns addresses as it goes; they
    # are thrown away (the spare slot it keeps would shift everything after it).
    saved = [(c.obj, c.obj.address) for c in _all_pci_devices(d, q35)]  # type: ignore[attr-defined]
    aset = _new_set(d, max_idx + 1, dry_run=True, grow=grow)
    _collect_explicit(d, aset, q35)
    _chipset(d, aset, q35)
    if not q35 and not all(b.fully_reserved() for b in aset.buses):
        # Keep one slot for a bridge to plug into later, as libvirt does.
        aset.reserve_next(PCI_DEV, "a spare slot")
    _assign(d, aset, q35)
    if q35 and max_idx <= 0 and len(aset.buses) > max_idx + 1:
        aset.reserve_next(PCIE_DEV, "a spare hotplug port")  # adds an empty root port
    i = 1
    while i < len(aset.buses):
        if _find_pci(d, i) is None:
            ctl = Controller(type="pci", index=i, model=aset.buses[i].model)
            d.add_controller(ctl)
            if i not in aset.preplaced:
                aset.reserve_next(_CONTROLLER_CTYPE[ctl.model or ""], f"PCI controller {i}")
        i += 1
    for obj, addr in saved:
        obj.address = addr  # type: ignore[attr-defined]

    # 2nd pass: the real thing.
    aset = _new_set(d, len(aset.buses), dry_run=False, grow=grow)
    _collect_explicit(d, aset, q35)
    _chipset(d, aset, q35)
    _assign(d, aset, q35)
    _set_multifunction(d, q35)
    _controller_defaults(d)


def _new_set(d: DomainDef, nbuses: int, *, dry_run: bool, grow: Callable[[int], str]):
    buses: list[_Bus] = []
    for i in range(nbuses):
        ctl = _find_pci(d, i)
        # An index nobody defined is filled with the machine's default bridge.
        model = ctl.model if ctl is not None and ctl.model else grow(PCIE_DEV)
        buses.append(_Bus(i, model))
    return _AddressSet(buses, dry_run=dry_run, grow=grow)


def _find_pci(d: DomainDef, index: int) -> Controller | None:
    for c in d.controllers:
        if c.type == "pci" and c.index == index:
            return c
    return None


def _wanted(obj: object) -> bool:
    addr = obj.address  # type: ignore[attr-defined]
    return addr is None or (isinstance(addr, PCIAddress) and addr.is_unset())


def _clients(d: DomainDef, q35: bool) -> Iterator[_Client]:
    """Every device that needs a PCI address, in libvirt's assignment order."""

    def pcie(is_pcie: bool) -> int:
        return PCIE_DEV if (q35 and is_pcie) else PCI_DEV

    for c in d.controllers:
        if c.type == "pci" and c.model not in ("pci-root", "pcie-root"):
            yield _Client(c, _CONTROLLER_CTYPE[c.model or ""], f"PCI controller {c.index}")
    for i, nic in enumerate(d.interfaces):
        yield _Client(nic, pcie(nic.model in ("virtio", "e1000e", "igb")), f"interface {i}")
    for c in d.controllers:
        if c.type in ("pci", "fdc", "ccid"):
            continue
        if c.type == "usb" and c.model == "none":
            continue
        if c.type == "ide" and c.index == 0:
            continue
        if c.type == "sata" and c.index == 0 and q35:
            continue
        is_pcie = (
            (c.type == "usb" and c.model in ("qemu-xhci", "nec-xhci"))
            or (c.type == "scsi" and c.model == "virtio-scsi")
            or c.type == "virtio-serial"
        )
        yield _Client(c, pcie(is_pcie), f"{c.type} controller {c.index}")
    for disk in d.disks:
        if disk.bus == "virtio":
            yield _Client(disk, pcie(True), f"disk '{disk.target}'")
    if d.has_memballoon:
        yield _Client(d.memballoon, pcie(True), "the memory balloon")
    for i, rng in enumerate(d.rngs):
        # A transitional device keeps the legacy I/O BARs: conventional PCI, as in libvirt.
        yield _Client(rng, pcie(rng.model != "virtio-transitional"), f"rng {i}")
    for i, wd in enumerate(d.watchdogs):
        if wd.model == "i6300esb":
            yield _Client(wd, PCI_DEV, f"watchdog {i}")
    for i, video in enumerate(d.videos[1:], start=1):
        yield _Client(video, pcie(video.model in ("virtio", "bochs")), f"video {i}")
    for i, inp in enumerate(d.inputs):
        if inp.bus == "virtio":
            yield _Client(inp, pcie(True), f"input {i}")
    for i, ser in enumerate(d.serials):
        if ser.target_type == "pci-serial":
            yield _Client(ser, PCI_DEV, f"serial {i}")
    for i, snd in enumerate(d.sounds):
        if snd.model not in ("sb16", "usb"):
            yield _Client(snd, PCI_DEV, f"sound {i}")
    for i, fs in enumerate(d.filesystems):
        yield _Client(fs, pcie(True), f"filesystem {i}")
    for i, hd in enumerate(d.hostdevs):
        if hd.type == "pci":
            yield _Client(hd, pcie(True), f"host device {i}")
    for i, md in enumerate(d.memory_devices):
        if md.model in ("virtio-mem", "virtio-pmem"):
            yield _Client(md, pcie(True), f"memory device {i}")
    for i, sh in enumerate(d.shmems):
        yield _Client(sh, PCI_DEV, f"shmem {i}")
    if d.vsock is not None:
        yield _Client(d.vsock, pcie(True), "the vsock device")
    for panic in d.panics:
        if panic.model == "pvpanic":
            yield _Client(panic, PCI_DEV, "the PCI panic device")
    for i, crypto in enumerate(d.cryptos):
        yield _Client(crypto, pcie(True), f"crypto device {i}")
    if d.pstore is not None:
        yield _Client(d.pstore, PCI_DEV, "the pstore device")


def _all_pci_devices(d: DomainDef, q35: bool) -> Iterator[_Client]:
    yield from _clients(d, q35)
    for c in d.controllers:
        if (c.type == "ide" and c.index == 0) or (c.type == "sata" and c.index == 0 and q35):
            yield _Client(c, PCI_DEV, f"{c.type} controller 0")
    if d.videos and d.videos[0].model not in ("none", "ramfb"):  # ramfb: no PCI device
        yield _Client(d.videos[0], PCI_DEV, "video 0")
    if d.iommu is not None and d.iommu.model == "virtio":
        yield _Client(d.iommu, PCI_DEV, "the virtio IOMMU")


def _collect_explicit(d: DomainDef, aset: _AddressSet, q35: bool) -> None:
    for client in _all_pci_devices(d, q35):
        addr = client.obj.address  # type: ignore[attr-defined]
        if addr is None:
            continue
        if not isinstance(addr, PCIAddress):
            raise XMLError(f"{client.what} needs a PCI address, not {type(addr).__name__}")
        if not addr.is_unset():
            aset.reserve(addr, client.ctype, client.what)


def _chipset(d: DomainDef, aset: _AddressSet, q35: bool) -> None:
    if not q35:
        _reserve_fixed(aset, 1, 0, "the PIIX3 ISA bridge")
        _reserve_fixed(aset, 1, 3, "the PIIX4 power management function")
        for c in d.controllers:
            if c.type == "ide" and c.index == 0:
                _fixed_controller(c, aset, 1, 1, "the IDE controller")
            elif c.type == "usb" and c.index == 0 and c.model == "piix3-uhci" and _wanted(c):
                _fixed_controller(c, aset, 1, 2, "the USB controller")
        primary_slot = 2
    else:
        _reserve_fixed(aset, 0x1F, 0, "the ICH9 LPC bridge")
        _reserve_fixed(aset, 0x1F, 3, "the ICH9 SMBus controller")
        for c in d.controllers:
            if c.type == "sata" and c.index == 0:
                _fixed_controller(c, aset, 0x1F, 2, "the SATA controller")
        for index, slot in ((0, 0x1D), (1, 0x1A)):
            group = [
                c
                for c in d.controllers
                if c.type == "usb" and c.index == index and c.model in USB2_FUNCTION
            ]
            if group and all(_wanted(c) for c in group) and not aset.buses[0].used(slot):
                for c in group:
                    c.address = PCIAddress(slot=slot, function=USB2_FUNCTION[c.model or ""])
                    aset.reserve(c.address, PCI_DEV, f"usb controller {index}")
        for c in d.controllers:
            dmi = c.type == "pci" and c.model == "dmi-to-pci-bridge"
            if dmi and _wanted(c) and not aset.buses[0].used(0x1E):
                c.address = PCIAddress(slot=0x1E)
                aset.reserve(c.address, DMI_BRIDGE, "the DMI-to-PCI bridge")
        primary_slot = 1
    if q35:
        # libvirt puts the first ICH9 HD Audio where real ICH9 chipsets have it.
        ich9 = next((s for s in d.sounds if s.model == "ich9"), None)
        if ich9 is not None and _wanted(ich9) and not aset.buses[0].used(0x1B):
            ich9.address = PCIAddress(slot=0x1B)
            aset.reserve(ich9.address, PCI_DEV, "the ICH9 sound card")
    if d.videos and d.videos[0].model not in ("none", "ramfb") and _wanted(d.videos[0]):
        video = d.videos[0]
        if not aset.buses[0].used(primary_slot):
            video.address = PCIAddress(slot=primary_slot)
            aset.reserve(video.address, PCI_DEV, "the primary video card")
        else:
            ctype = PCIE_DEV if q35 and video.model in ("virtio", "bochs") else PCI_DEV
            video.address = aset.reserve_next(ctype, "the primary video card")
    if d.iommu is not None and d.iommu.model == "virtio" and _wanted(d.iommu):
        # QEMU plugs a virtio-iommu only on the root bus: the first free slot there.
        free = [n for n in range(1, 32) if not aset.buses[0].used(n)]
        if not free:
            raise ConfigUnsupportedError(
                "unsupported configuration: no free slot on the root PCI bus for the "
                "virtio IOMMU (QEMU plugs it nowhere else)"
            )
        d.iommu.address = PCIAddress(slot=free[0])
        aset.reserve(d.iommu.address, PCI_DEV, "the virtio IOMMU")


def _reserve_fixed(aset: _AddressSet, slot: int, function: int, what: str) -> None:
    s = aset.buses[0].slot(slot)
    if function in s.functions:
        raise XMLError(f"PCI address 0000:00:{slot:02x}.{function} is reserved for {what}")
    s.functions.add(function)


def _fixed_controller(c: Controller, aset: _AddressSet, slot: int, fn: int, what: str) -> None:
    want = PCIAddress(slot=slot, function=fn)
    if _wanted(c):
        c.address = want
        aset.reserve(want, PCI_DEV, what)
    elif (c.address.bus, c.address.slot, c.address.function) != (0, slot, fn):  # type: ignore[union-attr]
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} must be at PCI address {want}"
        )


def _assign(d: DomainDef, aset: _AddressSet, q35: bool) -> None:
    usb2_slots: dict[int, tuple[int, int]] = {}
    for c in d.controllers:
        addr = c.address
        usb2 = c.type == "usb" and c.model in USB2_FUNCTION
        if usb2 and isinstance(addr, PCIAddress) and not addr.is_unset():
            usb2_slots.setdefault(c.index, (addr.bus, addr.slot))
    for client in _clients(d, q35):
        if not _wanted(client.obj):
            continue
        obj = client.obj
        if isinstance(obj, Controller) and obj.type == "usb" and obj.model in USB2_FUNCTION:
            fn = USB2_FUNCTION[obj.model or ""]
            if obj.index not in usb2_slots:
                b, s, _ = aset.find_free(client.ctype, client.what)
                usb2_slots[obj.index] = (b, s)
            b, s = usb2_slots[obj.index]
            obj.address = PCIAddress(bus=b, slot=s, function=fn)
            aset.reserve(obj.address, client.ctype, client.what)
            continue
        obj.address = aset.reserve_next(client.ctype, client.what)  # type: ignore[attr-defined]


def _set_multifunction(d: DomainDef, q35: bool) -> None:
    by_slot: dict[tuple[int, int], list[PCIAddress]] = {}
    for client in _all_pci_devices(d, q35):
        addr = client.obj.address  # type: ignore[attr-defined]
        if isinstance(addr, PCIAddress):
            by_slot.setdefault((addr.bus, addr.slot), []).append(addr)
    for (bus, slot), addrs in by_slot.items():
        if len(addrs) > 1:
            for addr in addrs:
                if addr.function == 0 and addr.multifunction is None:
                    addr.multifunction = "on"
                elif addr.function == 0 and addr.multifunction == "off":
                    raise XMLError(
                        f"PCI slot {slot:#04x} of bus {bus:#04x} holds several functions, but "
                        "function 0 says multifunction='off'"
                    )


def _controller_defaults(d: DomainDef) -> None:
    for c in d.controllers:
        if c.type != "pci" or c.model in ("pci-root", "pcie-root"):
            continue
        if c.model_name is None:
            c.model_name = CONTROLLER_DEVICE[c.model or ""]
        addr = c.address
        assert isinstance(addr, PCIAddress)
        if c.model == "pci-bridge":
            if c.chassis_nr is None:
                c.chassis_nr = c.index
            if c.index <= addr.bus:
                raise XMLError(
                    f"PCI controller {c.index} is on bus {addr.bus:#04x}; a bridge's index "
                    "must be larger than the bus it is placed onto"
                )
        elif c.model == "pcie-root-port":
            if c.chassis is None:
                c.chassis = c.index
            if c.port is None:
                c.port = (addr.slot << 3) + addr.function
