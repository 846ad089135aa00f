"""The QEMU driver's define-time completion of a domain definition (libvirt's post-parse).

:func:`prepare_domain` returns a copy of a parsed definition with everything libvirt's QEMU
driver would fill in before storing it. It runs libvirt's generic post-parse first
(:func:`asvirt.conf.postparse.postparse_domain`: current memory, serial ports and the
console that mirrors serial port 0, input buses, MACs, video sizes...), then what only QEMU
decides: the emulator, architecture and canonical machine type, the default CPU model and
its checks, implicit devices (PCI root, USB and SATA controllers, disk and virtio-serial
controllers, PS/2 input, the balloon, the audio backend, the iTCO watchdog, the video for a
display), device models, drive, virtio-serial, USB and PCI addresses, and aliases (QEMU's
ids for the devices). Its output is what ``dumpxml`` shows and what the command line is
built from, and preparing it again changes nothing.

Nothing here probes the host: the only input besides the XML is the probed capabilities.
"""

from __future__ import annotations

from typing import Any

from ...conf.addresses import DriveAddress, PCIAddress, USBAddress, VirtioSerialAddress
from ...conf.devices import (
    Audio,
    Controller,
    Disk,
    Hub,
    Input,
    Memballoon,
    Video,
    Watchdog,
    disk_name_index,
)
from ...conf.domain import CPUDef, DomainDef, parse_domain_xml
from ...conf.postparse import postparse_domain, video_defaults
from ...errors import ConfigUnsupportedError, XMLError
from .capabilities import QemuCapabilities
from .firmware import select_firmware
from .membacking import require_shared_memory
from .nodenames import number_disks
from .pci import USB2_FUNCTION, assign_pci_addresses
from .postparse_extra import check_guestfwd, prepare_extra
from .postparse_more import default_audio, prepare_more
from .postparse_other import prepare_other

#: The CPU model QEMU gives x86 guests when none is named.
DEFAULT_X86_CPU = "qemu64"
#: Ports of each USB controller model when ``ports`` is not given (libvirt's numbers).
USB_PORTS = {
    "piix3-uhci": 2,
    "piix4-uhci": 2,
    "ehci": 6,
    "ich9-ehci1": 6,
    "nec-xhci": 4,
    "qemu-xhci": 4,
}
USB_HUB_PORTS = 8
VIRTIO_SERIAL_PORTS = 31
#: How many IDE/SATA/SCSI controllers asvirt adds by itself for disks' drive addresses.
MAX_DISK_CONTROLLERS = 32
#: QEMU device names of the models asvirt checks against the probed capabilities.
USB_DEVICE = {
    "piix3-uhci": "piix3-usb-uhci",
    "piix4-uhci": "piix4-usb-uhci",
    "ehci": "usb-ehci",
    "ich9-ehci1": "ich9-usb-ehci1",
    "ich9-uhci1": "ich9-usb-uhci1",
    "ich9-uhci2": "ich9-usb-uhci2",
    "ich9-uhci3": "ich9-usb-uhci3",
    "nec-xhci": "nec-usb-xhci",
    "qemu-xhci": "qemu-xhci",
}
SCSI_DEVICE = {
    "lsilogic": "lsi",  # the alias of lsi53c895a, as libvirt writes it
    "virtio-scsi": "virtio-scsi-pci",
    "lsisas1068": "mptsas1068",
    "lsisas1078": "megasas-gen2",
    "vmpvscsi": "pvscsi",
}
NIC_DEVICE = {
    "virtio": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
    "ne2k_pci": "ne2k_pci",
    "pcnet": "pcnet",
    "vmxnet3": "vmxnet3",
    "igb": "igb",
}
VIDEO_DEVICE = {
    "vga": ("VGA", "VGA"),
    "cirrus": ("cirrus-vga", "cirrus-vga"),
    "virtio": ("virtio-vga", "virtio-gpu-pci"),
    "bochs": ("bochs-display", "bochs-display"),
    "qxl": ("qxl-vga", "qxl"),
    "vmvga": ("vmware-svga", "vmware-svga"),
    "ramfb": ("ramfb", "ramfb"),
}


def machine_family(machine: str | None) -> str | None:
    """'pc' for i440FX machine types, 'q35' for Q35 ones, None for anything else."""
    if not machine:
        return None
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    if machine == "pc" or machine.startswith("pc-i440fx") or machine[:4] in ("pc-0", "pc-1"):
        return "pc"
    return None


def prepare_domain(
    defn: DomainDef, caps: QemuCapabilities, *, nvram_dir: str | None = None
) -> DomainDef:
    """The definition libvirt would store for ``defn`` on this QEMU (a new object).

    The generic post-parse, then QEMU's: the one function the driver, the command-line
    builder (:func:`~asvirt.drivers.qemu.command.domxml_to_native`) and tests call.

    Raises :class:`~asvirt.errors.ConfigUnsupportedError` when the configuration needs
    something this QEMU (or asvirt) lacks, e.g. an unknown machine type or device model,
    and :class:`~asvirt.errors.XMLError` when it is inconsistent.

    UEFI firmware is chosen here, from QEMU's firmware descriptors (the one host input
    besides the capabilities, read as libvirt reads them at define time); a per-domain
    NVRAM file goes in ``nvram_dir`` (None: its path is left for the command line builder).
    """
    d = postparse_domain(defn)
    q35 = _machine(d, caps)
    select_firmware(d, nvram_dir=nvram_dir)
    _cpu(d, caps)
    default_audio(d)
    _default_devices(d, caps, q35)
    _disks(d, caps, q35)
    _interfaces(d, caps)
    _chardevs(d, caps)
    _videos(d, caps)
    _misc_devices(d, caps, q35)
    prepare_more(d, caps, q35)
    prepare_other(d, caps, q35)
    prepare_extra(d, caps, q35)
    _check_controllers(d, caps, q35)
    _assign_virtio_serial(d)
    _assign_usb(d)
    assign_pci_addresses(d, q35=q35, has_pcie_pci_bridge=caps.has_device("pcie-pci-bridge"))
    assign_aliases(d)
    return d


# ---------------------------------------------------------------------------------------------
# machine, CPU


def _machine(d: DomainDef, caps: QemuCapabilities) -> bool:
    if d.emulator is None:
        d.emulator = caps.binary
    if not d.os.arch:
        d.os.arch = caps.arch
    # Like libvirt, an x86_64 emulator also runs i686 guests.
    if d.os.arch != caps.arch and not (d.os.arch == "i686" and caps.arch == "x86_64"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: architecture '{d.os.arch}' is not supported by "
            f"{caps.binary} (it emulates {caps.arch})"
        )
    if d.os.arch not in ("x86_64", "i686"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: architecture '{d.os.arch}' is not supported"
        )
    name = d.os.machine
    if name is None:
        default = caps.default_machine()
        name = default.name if default is not None else "pc"
    machine = caps.machine(name)
    if machine is None:
        raise ConfigUnsupportedError(
            f"unsupported configuration: machine type '{name}' is not supported by "
            f"{caps.binary} (QEMU {caps.version_string})"
        )
    d.os.machine = machine.name
    family = machine_family(machine.name)
    if family is None:
        raise ConfigUnsupportedError(
            f"unsupported configuration: machine type '{name}' is not supported "
            "(asvirt supports the pc (i440FX) and q35 machine types)"
        )
    if d.max_vcpus > machine.max_cpus:
        raise ConfigUnsupportedError(
            f"unsupported configuration: machine type '{machine.name}' supports at most "
            f"{machine.max_cpus} vCPUs, not {d.max_vcpus}"
        )
    return family == "q35"


def _cpu(d: DomainDef, caps: QemuCapabilities) -> None:
    cpu = d.cpu
    if cpu is None:
        cpu = d.cpu = CPUDef(mode="custom")
    if cpu.mode is None:
        cpu.mode = "custom"
    if cpu.mode == "custom":
        if cpu.model is None:
            # libvirt names QEMU's default model explicitly and turns checks off: qemu64
            # may not be runnable everywhere, and QEMU just drops what the host lacks.
            cpu.model = DEFAULT_X86_CPU
            cpu.match = cpu.match or "exact"
            cpu.check = cpu.check or "none"
            cpu.fallback = cpu.fallback or "forbid"
        if cpu.model not in caps.cpu_models:
            raise ConfigUnsupportedError(
                f"unsupported configuration: CPU model '{cpu.model}' is not known to {caps.binary}"
            )
        cpu.match = cpu.match or "exact"
        cpu.fallback = cpu.fallback or "allow"
        cpu.check = cpu.check or ("none" if d.domain_type == "qemu" else "partial")
    elif cpu.mode == "host-passthrough":
        if d.domain_type != "kvm":
            raise ConfigUnsupportedError(
                "unsupported configuration: <cpu mode='host-passthrough'> needs "
                "<domain type='kvm'>; TCG cannot pass the host CPU through"
            )
        cpu.migratable = cpu.migratable or "on"
        cpu.check = cpu.check or "none"
    elif cpu.mode == "host-model":
        cpu.check = cpu.check or "partial"
    else:  # maximum
        cpu.check = cpu.check or "none"
    if cpu.mode != "custom" and cpu.match is not None:
        raise XMLError(f"<cpu mode='{cpu.mode}'> does not take a match attribute")
    # The topology is completed and checked against the vCPUs by the generic post-parse.
    topo = cpu.topology
    if topo is not None and (topo.clusters or 1) > 1 and not caps.at_least(7, 0):
        raise ConfigUnsupportedError(
            "unsupported configuration: CPU clusters need QEMU 7.0 or newer"
        )


# ---------------------------------------------------------------------------------------------
# default and implicit devices


def _default_devices(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    # PS/2 mouse and keyboard: part of the i8042 on both machine types.
    # (A mouse or keyboard written without a bus already is PS/2: the generic post-parse.)
    for kind in ("mouse", "keyboard"):
        if not any(i.type == kind and i.bus == "ps2" for i in d.inputs):
            d.inputs.append(Input(type=kind, bus="ps2"))
    root_model = "pcie-root" if q35 else "pci-root"
    root = d.controller("pci", 0)
    if root is None:
        d.add_controller(Controller(type="pci", index=0, model=root_model))
    elif root.model is None:
        root.model = root_model
    elif root.model != root_model:
        raise XMLError(
            f"the PCI controller with index 0 must be model '{root_model}' on this machine "
            f"type, not '{root.model}'"
        )
    for ctl in d.controllers:
        if ctl.type == "usb" and ctl.model is None:
            ctl.model = _default_usb_model(caps, q35)
        elif ctl.type == "scsi" and ctl.model in (None, "auto"):
            ctl.model = _default_scsi_model(caps)
        elif ctl.type == "pci" and ctl.model is None:
            raise XMLError(f"PCI controller {ctl.index} needs a model")
    if d.controller("usb", 0) is None:
        d.add_controller(Controller(type="usb", index=0, model=_default_usb_model(caps, q35)))
    for ctl in d.controllers:
        companion = ctl.type == "usb" and ctl.model in USB2_FUNCTION and ctl.model != "ich9-ehci1"
        if companion and ctl.master_startport is None:
            ctl.master_startport = 2 * USB2_FUNCTION[ctl.model or ""]
        if ctl.type == "usb" and ctl.model == "none" and ctl.address is not None:
            raise XMLError("a USB controller of model 'none' cannot have an address")
    if q35 and d.controller("sata", 0) is None:
        d.add_controller(Controller(type="sata", index=0))
    if d.memballoon is None:
        d.memballoon = Memballoon(model="virtio")
    if not d.audios:
        d.audios.append(Audio(id=1, type="none"))


def _default_scsi_model(caps: QemuCapabilities) -> str:
    return "lsilogic" if caps.has_device("lsi53c895a") else "virtio-scsi"


def _default_usb_model(caps: QemuCapabilities, q35: bool) -> str:
    if q35 and caps.has_device("qemu-xhci"):
        return "qemu-xhci"
    return "piix3-uhci"


def _check_controllers(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    # Other types were checked for duplicates by the generic post-parse; USB companions share
    # an index, so only now that every model is known can two of one model be told apart.
    seen: set[tuple[int, str | None]] = set()
    for ctl in d.controllers:
        if ctl.type == "usb":
            if (ctl.index, ctl.model) in seen:
                raise XMLError(f"there is more than one usb controller with index {ctl.index}")
            seen.add((ctl.index, ctl.model))
        if ctl.type == "usb" and ctl.model in USB_DEVICE:
            _need_device(caps, USB_DEVICE[ctl.model or ""], f"USB controller model '{ctl.model}'")
            if ctl.ports is not None and ctl.model not in ("nec-xhci", "qemu-xhci"):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: USB controller model '{ctl.model}' has a "
                    "fixed number of ports"
                )
        elif ctl.type == "scsi":
            _need_device(caps, SCSI_DEVICE[ctl.model or ""], f"SCSI controller '{ctl.model}'")
            tuned = (ctl.queues, ctl.cmd_per_lun, ctl.max_sectors, ctl.ioeventfd)
            if ctl.model != "virtio-scsi" and any(v is not None for v in tuned):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: <driver> of SCSI controller {ctl.index}: "
                    f"only virtio-scsi controllers take queues/cmd_per_lun/max_sectors/ioeventfd, "
                    f"not model '{ctl.model}'"
                )
        elif ctl.type == "virtio-serial":
            _need_device(caps, "virtio-serial-pci", "virtio-serial")
        elif ctl.type == "ide":
            if q35:
                raise ConfigUnsupportedError(
                    "unsupported configuration: IDE controllers are not available on q35 "
                    "machines (use bus='sata' for disks)"
                )
            if ctl.index != 0:
                raise ConfigUnsupportedError(
                    "unsupported configuration: i440FX machines have one IDE controller"
                )
        elif ctl.type == "sata" and not (q35 and ctl.index == 0):
            _need_device(caps, "ahci", "SATA controllers")
        elif ctl.type == "fdc" and ctl.index != 0:
            raise ConfigUnsupportedError(
                "unsupported configuration: a PC has one ISA floppy controller (index 0); "
                "QEMU has no second one"
            )
        elif ctl.type == "pci":
            _check_pci_controller(ctl, caps, q35)
    owners: dict[int, str] = {}  # USB index -> the controller that owns the bus
    for c in d.controllers:
        if c.type == "usb" and c.model not in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3"):
            if c.index in owners:
                raise XMLError(
                    f"USB controllers '{owners[c.index]}' and '{c.model}' both have index "
                    f"{c.index}; only ich9-uhci companions may share an ich9-ehci1's index"
                )
            owners[c.index] = c.model or ""
    masters = {c.index for c in d.controllers if c.type == "usb" and c.model == "ich9-ehci1"}
    for ctl in d.controllers:
        companion = ctl.model in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3")
        if ctl.type == "usb" and companion and ctl.index not in masters:
            raise ConfigUnsupportedError(
                f"unsupported configuration: USB companion controller '{ctl.model}' "
                f"(index {ctl.index}) has no ich9-ehci1 master with the same index"
            )


def _check_pci_controller(ctl: Controller, caps: QemuCapabilities, q35: bool) -> None:
    pcie_only = ("pcie-root", "pcie-root-port", "dmi-to-pci-bridge", "pcie-to-pci-bridge")
    if not q35 and ctl.model in pcie_only:
        raise ConfigUnsupportedError(
            f"unsupported configuration: PCI controller model '{ctl.model}' needs a q35 "
            "machine type"
        )
    if ctl.model in ("pci-root", "pcie-root") and ctl.index != 0:
        raise XMLError("pci-root and pcie-root controllers must have index 0")
    if ctl.hotplug is not None and ctl.model not in ("pci-root", "pcie-root-port"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: hotplug setting on a '{ctl.model}' controller"
        )
    expected = {
        "pci-bridge": ("pci-bridge",),
        "dmi-to-pci-bridge": ("i82801b11-bridge",),
        "pcie-root-port": ("pcie-root-port", "ioh3420"),
        "pcie-to-pci-bridge": ("pcie-pci-bridge",),
    }.get(ctl.model or "", ())
    if ctl.model_name is not None and ctl.model_name not in expected:
        raise XMLError(
            f"PCI controller model name '{ctl.model_name}' does not fit model '{ctl.model}'"
        )
    if ctl.model_name is not None:
        _need_device(caps, ctl.model_name, f"PCI controller '{ctl.model_name}'")
    if (
        ctl.model == "pcie-root-port"
        and ctl.model_name is None
        and not caps.has_device("pcie-root-port")
    ):
        ctl.model_name = "ioh3420"
    if ctl.chassis_nr is not None and ctl.model != "pci-bridge":
        raise XMLError("chassisNr is only valid for pci-bridge controllers")
    if (ctl.chassis is not None or ctl.port is not None) and ctl.model != "pcie-root-port":
        raise XMLError("chassis and port are only valid for pcie-root-port controllers")


#: Command-line aliases QEMU accepts for devices whose type has another name.
_QEMU_DEVICE_ALIASES = {"lsi": "lsi53c895a", "ahci": "ich9-ahci"}


def _need_device(caps: QemuCapabilities, device: str, what: str) -> None:
    if not caps.has_device(_QEMU_DEVICE_ALIASES.get(device, device)):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} needs QEMU device '{device}', which "
            f"{caps.binary} does not have"
        )


# ---------------------------------------------------------------------------------------------
# disks


def _disks(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    for disk in d.disks:  # unique targets, each with a bus: the generic post-parse
        disk.driver_name = disk.driver_name or "qemu"
        if disk.type != "volume":
            # A volume's format is the volume's own, known when the domain starts (libvirt
            # leaves it unset as well).
            disk.format = disk.format or "raw"
        _check_disk(disk, q35)
        if disk.bus == "virtio":
            if disk.address is not None and not isinstance(disk.address, PCIAddress):
                raise XMLError(f"virtio disk '{disk.target}' needs a PCI address")
            _need_device(caps, "virtio-blk-pci", "virtio disks")
            continue
        if disk.bus == "usb":
            if disk.address is not None and not isinstance(disk.address, USBAddress):
                raise XMLError(f"USB disk '{disk.target}' needs a USB address")
            _need_device(caps, "usb-storage", "USB disks")
            continue  # its port comes with the other USB devices'
        if disk.address is not None and not isinstance(disk.address, DriveAddress):
            raise XMLError(f"{disk.bus} disk '{disk.target}' needs a drive address")
        if disk.address is None:
            disk.address = _default_drive_address(disk)
        if disk.device == "lun":
            _need_device(caps, "scsi-block", "a SCSI LUN passed through (device='lun')")
        if disk.bus == "fdc":
            _need_device(caps, "isa-fdc", "a floppy drive")
    _check_drive_addresses(d)
    # Controllers for every drive address, from index 0 up, as libvirt adds them.
    for bus in ("ide", "sata", "scsi", "fdc"):
        highest = max(
            (
                x.address.controller
                for x in d.disks
                if x.bus == bus and isinstance(x.address, DriveAddress)
            ),
            default=-1,
        )
        for index in range(highest + 1):
            if d.controller(bus, index) is None:
                ctl = Controller(type=bus, index=index)
                if bus == "scsi":
                    ctl.model = _default_scsi_model(caps)
                d.add_controller(ctl)


def _check_disk(disk: Disk, q35: bool) -> None:
    where = f"disk '{disk.target}'"
    if disk.bus == "ide" and q35:
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: q35 machines have no IDE bus; use bus='sata'"
        )
    if disk.startup_policy == "requisite" and disk.device not in ("cdrom", "floppy"):
        raise XMLError(f"{where}: setting disk 'requisite' is allowed only for cdrom or floppy")
    if disk.startup_policy is not None and disk.type == "block":
        # libvirt's rule: a policy for a file that may be missing, not for a host device.
        raise XMLError(f"{where}: startupPolicy is only valid for 'file' and 'volume' disks")
    if disk.device == "lun" and disk.format not in (None, "raw"):
        raise XMLError(f"{where}: a passed-through LUN is a raw host device, not {disk.format}")
    if disk.device == "lun" and (disk.serial or disk.wwn or disk.cache not in (None, "default")):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: QEMU's scsi-block shows the host LUN's own "
            "serial, WWN and cache; it takes no <serial>, <wwn> or cache mode"
        )
    if disk.bus == "fdc" and (disk.serial or disk.error_policy or disk.rerror_policy):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: QEMU's floppy drive has no serial number "
            "and no error policy"
        )
    if disk.readonly and disk.device == "disk" and disk.bus in ("ide", "sata"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: read-only IDE/SATA hard disks are not "
            "supported (use a cdrom or another bus)"
        )
    if disk.io == "native" and disk.cache not in ("none", "directsync"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: io='native' needs cache='none' or "
            "cache='directsync'"
        )
    if disk.rotation_rate is not None and disk.bus not in ("ide", "sata", "scsi"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: rotation_rate needs an IDE, SATA or SCSI disk"
        )
    if disk.wwn is not None and disk.bus not in ("ide", "sata", "scsi"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: <wwn> needs an IDE, SATA or SCSI disk"
        )
    if disk.shareable and disk.format not in (None, "raw"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: <shareable/> needs a raw image, not {disk.format}"
        )
    if disk.device == "cdrom" and disk.copy_on_read == "on":
        raise ConfigUnsupportedError(f"unsupported configuration: {where}: copy_on_read on a cdrom")
    if not disk.has_media and disk.type != "volume" and disk.device in ("disk", "lun"):
        raise XMLError(f"{where} has no source (only a cdrom or a floppy may be empty)")


def _default_drive_address(disk: Disk) -> DriveAddress:
    idx = disk_name_index(disk.target)
    if disk.bus == "ide":
        addr = DriveAddress(controller=idx // 4, bus=(idx % 4) // 2, unit=idx % 2)
    elif disk.bus == "sata":
        addr = DriveAddress(controller=idx // 6, unit=idx % 6)
    elif disk.bus == "fdc":
        addr = DriveAddress(controller=idx // 2, unit=idx % 2)
    else:
        # SCSI: 15 usable ids per controller, skipping 7 (the controller's own id).
        unit = idx % 15
        addr = DriveAddress(controller=idx // 15, unit=unit + 1 if unit >= 7 else unit)
    if addr.controller > MAX_DISK_CONTROLLERS - 1:
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}' would need {disk.bus} controller "
            f"{addr.controller}; asvirt adds at most {MAX_DISK_CONTROLLERS} (give it an "
            "<address>)"
        )
    return addr


def _check_drive_addresses(d: DomainDef) -> None:
    seen: dict[tuple[str, int, int, int, int], str] = {}
    for disk in d.disks:
        addr = disk.address
        if not isinstance(addr, DriveAddress):
            continue
        _check_drive_range(d, disk, addr)
        key = (disk.bus, addr.controller, addr.bus, addr.target, addr.unit)
        if key in seen:
            raise XMLError(
                f"disks '{seen[key]}' and '{disk.target}' have the same drive address "
                f"(controller {addr.controller}, bus {addr.bus}, target {addr.target}, "
                f"unit {addr.unit})"
            )
        seen[key] = disk.target


def _check_drive_range(d: DomainDef, disk: Disk, addr: DriveAddress) -> None:
    """Refuse drive addresses the emulated controller does not have (QEMU would)."""
    if disk.bus == "ide":
        limits = {"bus": 1, "target": 0, "unit": 1}
        hint = "an IDE controller has buses 0 and 1 with units 0 and 1"
    elif disk.bus == "sata":
        limits = {"bus": 0, "target": 0, "unit": 5}
        hint = "a SATA controller has ports (units) 0-5 on bus 0"
    elif disk.bus == "fdc":
        limits = {"controller": 0, "bus": 0, "target": 0, "unit": 1}
        hint = "the PC's one floppy controller has drives (units) 0 and 1"
    else:
        ctl = d.controller("scsi", addr.controller)
        if ctl is not None and ctl.model != "virtio-scsi":
            limits = {"bus": 0, "target": 0, "unit": 6}
            hint = f"a {ctl.model} controller has SCSI ids (units) 0-6 on bus 0, target 0"
        else:
            limits = {"bus": 0, "target": 255, "unit": 16383}
            hint = "a virtio-scsi controller has bus 0, targets 0-255 and units 0-16383"
    for key, limit in limits.items():
        if getattr(addr, key) > limit:
            raise ConfigUnsupportedError(
                f"unsupported configuration: disk '{disk.target}' has drive address "
                f"{key}={getattr(addr, key)}, which does not exist ({hint})"
            )


# ---------------------------------------------------------------------------------------------
# network interfaces, character devices, video


def _interfaces(d: DomainDef, caps: QemuCapabilities) -> None:
    for nic in d.interfaces:  # unique MACs, generated if missing: the generic post-parse
        if nic.model is None and nic.type == "vhostuser":
            nic.model = "virtio"  # vhost-user serves virtio queues only
        if nic.model is None:
            nic.model = next(
                (m for m in ("rtl8139", "e1000", "virtio") if caps.has_device(NIC_DEVICE[m])),
                "rtl8139",
            )
        _need_device(caps, NIC_DEVICE[nic.model], f"NIC model '{nic.model}'")


def _chardevs(d: DomainDef, caps: QemuCapabilities) -> None:
    # Ports, and the console that is serial port 0, come from the generic post-parse.
    for chr_ in d.serials:
        if chr_.target_type is None:
            chr_.target_type = chr_.target_model or "isa-serial"
        if chr_.target_model is None:
            chr_.target_model = chr_.target_type
        if chr_.target_model != chr_.target_type:
            raise XMLError("serial target model must match its target type")
        if (
            chr_.target_type == "pci-serial"
            and chr_.address is not None
            and not isinstance(chr_.address, PCIAddress)
        ):
            raise XMLError("a pci-serial port needs a PCI address")
        if chr_.target_type == "usb-serial":
            _need_device(caps, "usb-serial", "a USB serial port")
            if chr_.address is not None and not isinstance(chr_.address, USBAddress):
                raise XMLError("a usb-serial port needs a USB address")
        elif isinstance(chr_.address, USBAddress):
            raise XMLError(f"a {chr_.target_type} port cannot have a USB address")
    if d.parallels:
        _need_device(caps, "isa-parallel", "a parallel port")
    if any((c.target_port or 0) > 2 for c in d.parallels):
        raise ConfigUnsupportedError(
            "unsupported configuration: QEMU has at most 3 parallel ports (0-2)"
        )
    for chr_ in d.chardevs():
        if chr_.type == "tcp" and chr_.source_mode == "connect" and chr_.host is None:
            raise XMLError(f"a {chr_.kind} connecting over TCP needs a host")
    isa = [c for c in d.serials if c.target_type == "isa-serial"]
    if any((c.target_port or 0) > 3 for c in isa) or len(isa) > 4:
        raise ConfigUnsupportedError("unsupported configuration: at most 4 ISA serial ports (0-3)")
    for chr_ in d.channels:
        if chr_.target_type == "guestfwd":
            check_guestfwd(chr_)
            if chr_.address is not None:
                raise XMLError("a guestfwd channel is no guest device and has no address")
            if chr_.type in ("pty", "vc", "spicevmc", "spiceport"):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: a guestfwd channel of type '{chr_.type}': "
                    "QEMU's user-mode network forwards to a socket, pipe or file chardev"
                )


def _videos(d: DomainDef, caps: QemuCapabilities) -> None:
    if d.graphics and not d.videos:
        d.videos.append(Video())
    for video in d.videos:
        if video.model is None:
            video.model = "cirrus" if caps.has_device("cirrus-vga") else "vga"
    # The primary first, heads and VRAM: generic, again now that every model is known.
    video_defaults(d)
    for i, video in enumerate(d.videos):
        if video.model == "none":
            continue
        if i > 0 and video.model not in ("qxl", "virtio"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: a secondary video device must be qxl or virtio, "
                f"not '{video.model}'"
            )
        if video.model == "ramfb" and (video.address is not None or video.vram):
            raise XMLError("a ramfb display is firmware memory: it has no address nor vram")
        if video.model == "qxl":
            video.vgamem = video.vgamem or 16384  # QEMU's qxl default
        if video.blob is not None and video.model != "virtio":
            raise ConfigUnsupportedError("unsupported configuration: blob is only for virtio video")
        if video.model != "qxl" and (video.ram or video.vgamem or video.vram64):
            raise ConfigUnsupportedError(
                f"unsupported configuration: ram/vgamem/vram64 of a '{video.model}' video device"
            )
        _video_driver(d, video)
        device = video_device(video, i)
        _need_device(caps, device, f"video model '{video.model}'")


#: The models QEMU gives a preferred resolution (``xres``/``yres``, in their EDID).
RESOLUTION_VIDEO_MODELS = ("vga", "virtio", "qxl", "bochs")


def video_device(video: Video, index: int) -> str:
    """QEMU's device for ``video``, the ``index``-th one: its model's (the first one with
    VGA compatibility), or the virgl one of a virtio video with 3D acceleration."""
    device = VIDEO_DEVICE[video.model or ""][0 if index == 0 else 1]
    if video.model == "virtio" and video.driver_name == "vhostuser":
        # libvirt's choice: the VGA-compatible one for the primary video, as for virtio.
        device = "vhost-user-vga" if index == 0 else "vhost-user-gpu-pci"
    elif video.model == "virtio" and video.accel3d:
        device = "virtio-vga-gl" if index == 0 else "virtio-gpu-gl-pci"
    return device


def _video_driver(d: DomainDef, video: Video) -> None:
    """What QEMU can do of a video's ``<driver>`` and ``<acceleration>``, saying why not."""
    what = f"video model '{video.model}'"
    if video.virtio and video.model != "virtio":
        raise ConfigUnsupportedError(
            f"unsupported configuration: virtio options (iommu, ats, packed, page_per_vq) are "
            f"for virtio video, not {what}"
        )
    if video.driver_name == "vhostuser":
        # A vhost-user-gpu draws (.vhostusergpu); found and started with the domain.
        if video.model != "virtio":
            raise ConfigUnsupportedError(
                "unsupported configuration: 'vhostuser' driver is only supported with "
                f"'virtio' device, not {what}"
            )
        if video.blob is not None:
            raise ConfigUnsupportedError(
                "unsupported configuration: blob= is a switch of QEMU's own virtio GPU; "
                "a vhost-user-gpu has none"
            )
        require_shared_memory(d, f"video '{video.alias}'", "vhost-user-gpu")
    elif video.rendernode is not None:
        raise ConfigUnsupportedError(
            "unsupported configuration: unsupported rendernode accel attribute without "
            "'vhostuser': it is the render node of a vhost-user-gpu (<driver "
            "name='vhostuser'>); QEMU's own 3D video takes its render node from the "
            "display (<graphics><gl rendernode=...>)"
        )
    if video.accel2d:
        raise ConfigUnsupportedError(
            f"unsupported configuration: accel2d='yes' of {what}: QEMU has no 2D "
            "acceleration switch"
        )
    if video.accel3d and video.model != "virtio":
        raise ConfigUnsupportedError(
            f"unsupported configuration: accel3d='yes' of {what}: QEMU's 3D (virgl) video is "
            "virtio's only"
        )
    if (
        video.accel3d
        and video.driver_name != "vhostuser"
        and not any(g.type == "egl-headless" or g.gl_enable for g in d.graphics)
    ):
        raise ConfigUnsupportedError(
            f"unsupported configuration: accel3d='yes' of {what}: QEMU's virgl video draws "
            "with OpenGL, so it needs a display that has it (<graphics type='egl-headless'>, "
            "or <gl enable='yes'> of a spice, sdl or dbus display)"
        )
    if video.resolution is not None and video.model not in RESOLUTION_VIDEO_MODELS:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <resolution> of {what}: QEMU gives a preferred "
            f"resolution to {', '.join(RESOLUTION_VIDEO_MODELS)} video only"
        )


def _misc_devices(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    # Watchdog actions, RNG paths, VNC listens and ports have their generic defaults.
    for wd in d.watchdogs:
        if wd.model == "itco" and not q35:
            raise ConfigUnsupportedError(
                "unsupported configuration: the itco watchdog is part of q35 machines only"
            )
        if wd.model != "i6300esb" and wd.address is not None:
            raise XMLError(f"a {wd.model} watchdog cannot have an address")
        if wd.model in ("i6300esb", "ib700"):
            _need_device(caps, wd.model, f"watchdog '{wd.model}'")
    if q35 and not any(w.model == "itco" for w in d.watchdogs):
        action = d.watchdogs[0].action if d.watchdogs else "reset"
        d.watchdogs.append(Watchdog(model="itco", action=action))
    if len({w.action for w in d.watchdogs}) > 1:
        raise ConfigUnsupportedError(
            "unsupported configuration: all watchdogs must have the same action"
        )
    if len([w for w in d.watchdogs if w.model == "itco"]) > 1:
        raise XMLError("there can be only one itco watchdog")
    if d.has_memballoon:
        _need_device(caps, "virtio-balloon-pci", "the memory balloon")
    for inp in d.inputs:
        if inp.type == "evdev":
            if inp.address is not None:
                raise XMLError("an evdev input has no address")
            continue
        if inp.bus == "virtio":
            name = "input-host" if inp.type == "passthrough" else inp.type
            _need_device(caps, f"virtio-{name}-pci", f"virtio {inp.type}")
            if inp.address is not None and not isinstance(inp.address, PCIAddress):
                raise XMLError("a virtio input device needs a PCI address")
        elif inp.bus == "usb":
            names = {"mouse": "usb-mouse", "keyboard": "usb-kbd", "tablet": "usb-tablet"}
            _need_device(caps, names[inp.type], f"USB {inp.type}")
            if inp.address is not None and not isinstance(inp.address, USBAddress):
                raise XMLError("a USB input device needs a USB address")
        elif inp.address is not None:
            raise XMLError("a PS/2 input device cannot have an address")
    for gfx in d.graphics:
        if gfx.websocket not in (None, -1) and gfx.listens and gfx.listens[0].type != "address":
            raise ConfigUnsupportedError(
                "unsupported configuration: a VNC websocket needs a listen address"
            )


# ---------------------------------------------------------------------------------------------
# virtio-serial and USB ports


def _assign_virtio_serial(d: DomainDef) -> None:
    ports = [c for c in d.consoles if c.target_type == "virtio"]
    wanted = [*ports, *(c for c in d.channels if c.target_type == "virtio")]
    if not wanted:
        return
    for chr_ in wanted:
        index = chr_.address.controller if isinstance(chr_.address, VirtioSerialAddress) else 0
        if d.controller("virtio-serial", index) is None:
            d.add_controller(Controller(type="virtio-serial", index=index))
    used: dict[int, set[int]] = {}
    for chr_ in wanted:
        addr = chr_.address
        if isinstance(addr, VirtioSerialAddress):
            addr.bus = 0  # a virtio-serial controller has a single bus
            if addr.port is not None:
                ctl = d.controller("virtio-serial", addr.controller)
                limit = (ctl.ports if ctl and ctl.ports else VIRTIO_SERIAL_PORTS) - 1
                if addr.port > limit or (addr.port == 0 and chr_.kind == "channel"):
                    raise XMLError(
                        f"virtio-serial port {addr.port} is out of range for controller "
                        f"{addr.controller} (channels use ports 1-{limit})"
                    )
                taken = used.setdefault(addr.controller, set())
                if addr.port in taken:
                    raise XMLError(
                        f"virtio-serial port {addr.port} of controller {addr.controller} is "
                        "used twice"
                    )
                taken.add(addr.port)
    for chr_ in wanted:
        addr = chr_.address
        if isinstance(addr, VirtioSerialAddress) and addr.port is not None:
            continue
        first = 0 if chr_.kind == "console" else 1
        controllers = sorted(
            (c for c in d.controllers if c.type == "virtio-serial"), key=lambda c: c.index
        )
        if isinstance(addr, VirtioSerialAddress):
            controllers = [c for c in controllers if c.index == addr.controller]
        placed = False
        for ctl in controllers:
            taken = used.setdefault(ctl.index, set())
            for port in range(first, ctl.ports or VIRTIO_SERIAL_PORTS):
                if port not in taken:
                    taken.add(port)
                    chr_.address = VirtioSerialAddress(controller=ctl.index, port=port)
                    placed = True
                    break
            if placed:
                break
        if not placed:
            if isinstance(addr, VirtioSerialAddress):
                raise XMLError(f"virtio-serial controller {addr.controller} has no free port")
            index = max(c.index for c in d.controllers if c.type == "virtio-serial") + 1
            d.add_controller(Controller(type="virtio-serial", index=index))
            used[index] = {first}
            chr_.address = VirtioSerialAddress(controller=index, port=first)


def _usb_tree(d: DomainDef) -> dict[int, int]:
    """USB controller index -> number of root ports, for controllers that have a bus."""
    tree: dict[int, int] = {}
    for ctl in d.controllers:
        if ctl.type != "usb" or ctl.model == "none" or ctl.model not in USB_PORTS:
            continue
        tree[ctl.index] = ctl.ports or USB_PORTS[ctl.model or ""]
    return tree


def _assign_usb(d: DomainDef) -> None:
    # Input devices here stand for every USB device: they all take one port.
    usb_inputs: list[Any] = [i for i in d.inputs if i.bus == "usb"]
    usb_inputs += [*d.redirdevs, *(h for h in d.hostdevs if h.type == "usb")]
    usb_inputs += [s for s in d.sounds if s.model == "usb"]
    usb_inputs += [s for s in d.serials if s.target_type == "usb-serial"]
    usb_inputs += [c for c in d.controllers if c.type == "ccid"]
    # Disks come first in libvirt's walk over the devices, so they take the first ports.
    usb_inputs = [*(x for x in d.disks if x.bus == "usb"), *usb_inputs]
    if not d.hubs and not usb_inputs:
        return
    roots = _usb_tree(d)
    if not roots:
        raise ConfigUnsupportedError(
            "unsupported configuration: USB is disabled for this domain (USB controller "
            "model 'none'), but it has USB devices"
        )
    available = sum(roots.values()) + USB_HUB_PORTS * len(d.hubs)
    wanted = len(d.hubs) + len(usb_inputs)
    if wanted > available:
        # As libvirt: enough hubs for everything, each hub taking one port itself.
        extra = -(-(wanted - available + 1) // (USB_HUB_PORTS - 1))
        d.hubs.extend(Hub() for _ in range(extra))
    taken: dict[int, set[str]] = {index: set() for index in roots}  # used port paths
    hubs_at: dict[int, set[str]] = {index: set() for index in roots}  # paths holding a hub

    def reserve(addr: USBAddress, is_hub: bool) -> None:
        port = addr.port or ""
        if addr.bus not in roots:
            raise XMLError(f"USB port {port}: there is no USB bus {addr.bus}")
        parts = port.split(".")
        if int(parts[0]) > roots[addr.bus] or any(int(p) > USB_HUB_PORTS for p in parts[1:]):
            raise XMLError(f"USB port {port} does not exist on bus {addr.bus}")
        parent = port.rpartition(".")[0]
        if parent and parent not in hubs_at[addr.bus]:
            raise XMLError(f"USB port {port} of bus {addr.bus} is behind a hub that is not there")
        if port in taken[addr.bus]:
            raise XMLError(f"USB port {port} of bus {addr.bus} is used twice")
        taken[addr.bus].add(port)
        if is_hub:
            hubs_at[addr.bus].add(port)

    def explicit(dev: Any) -> USBAddress | None:
        """The device's USB address if it names a port, else None."""
        addr = dev.address
        return addr if isinstance(addr, USBAddress) and addr.port is not None else None

    # Explicit addresses first, hubs before what sits behind them (nearest the root first).
    hub_addrs = [addr for hub in d.hubs if (addr := explicit(hub)) is not None]
    for addr in sorted(hub_addrs, key=lambda a: (a.port or "").count(".")):
        reserve(addr, True)
    for inp in usb_inputs:
        if (addr := explicit(inp)) is not None:
            reserve(addr, False)

    def free_port(only_bus: int | None) -> USBAddress:
        for bus, nports in roots.items():
            if only_bus is not None and bus != only_bus:
                continue
            level = [str(p) for p in range(1, nports + 1)]
            while level:  # ports nearer the root first, then one hub level deeper
                for port in level:
                    if port not in taken[bus]:
                        return USBAddress(bus=bus, port=port)
                level = [
                    f"{hub}.{p}"
                    for hub in level
                    if hub in hubs_at[bus]
                    for p in range(1, USB_HUB_PORTS + 1)
                ]
        where = "" if only_bus is None else f" on USB bus {only_bus}"
        raise ConfigUnsupportedError(f"unsupported configuration: no free USB port{where}")

    usb_devices: list[Any] = [*d.hubs, *usb_inputs]
    for dev in usb_devices:
        if explicit(dev) is not None:
            continue
        only_bus = dev.address.bus if isinstance(dev.address, USBAddress) else None
        dev.address = free_port(only_bus)
        reserve(dev.address, isinstance(dev, Hub))


# ---------------------------------------------------------------------------------------------
# aliases


def parse_prepared_xml(text: str | bytes, *, live: bool = False) -> DomainDef:
    """Read back XML this driver prepared earlier: a config file, a status file's live XML.

    The shared parser, then the aliases: they are a pure function of the definition, so a
    definition read back names its devices (and QEMU's ids for them) like the one written.
    ``live``: the XML is a running domain's (a status file's), whose aliases and disk node
    numbers are QEMU's ids and are kept as written: devices plugged or unplugged while it
    ran make them differ from what the definition alone would give.
    No capabilities are needed, and nothing else is filled in: the XML already holds it.
    """
    d = parse_domain_xml(text)
    assign_aliases(d, keep=live)
    return d


def assign_aliases(d: DomainDef, *, keep: bool = False) -> None:
    """Give every device the alias libvirt would (``virtio-disk0``, ``net0``, ``usb``...).

    User aliases (``ua-...``) are kept (the generic post-parse checked they are unique);
    with ``keep``, so is every alias (and disk node number) the definition already has.
    Safe to call on any definition; devices whose alias depends on an address they do not
    have yet are left without one.
    """
    q35 = machine_family(d.os.machine) == "q35"
    scsi_models = {c.index: c.model for c in d.controllers if c.type == "scsi"}
    number_disks(d.disks, keep=keep)
    for disk in d.disks:
        if disk.user_alias or (keep and disk.alias):
            continue
        addr = disk.address
        if disk.bus == "virtio":
            disk.alias = f"virtio-disk{disk_name_index(disk.target)}"
        elif disk.bus == "usb":
            disk.alias = f"usb-disk{disk_name_index(disk.target)}"
        elif isinstance(addr, DriveAddress) and disk.bus in ("ide", "sata", "scsi", "fdc"):
            if disk.bus == "scsi" and scsi_models.get(addr.controller) != "lsilogic":
                disk.alias = f"scsi{addr.controller}-{addr.bus}-{addr.target}-{addr.unit}"
            else:
                disk.alias = f"{disk.bus}{addr.controller}-{addr.bus}-{addr.unit}"
        else:
            disk.alias = None
    for ctl in d.controllers:
        if ctl.user_alias or (keep and ctl.alias):
            continue
        if ctl.type == "pci":
            ctl.alias = {"pci-root": "pci.0", "pcie-root": "pcie.0"}.get(
                ctl.model or "", f"pci.{ctl.index}"
            )
        elif ctl.type == "usb":
            ctl.alias = "usb" if ctl.index == 0 else f"usb{ctl.index}"
        elif (ctl.type == "ide" and ctl.index == 0 and not q35) or (
            ctl.type == "sata" and ctl.index == 0 and q35
        ):
            ctl.alias = "ide"
        else:
            ctl.alias = f"{ctl.type}{ctl.index}"
    simple: list[tuple[list, str]] = [
        (d.interfaces, "net"),
        (d.serials, "serial"),
        (d.parallels, "parallel"),
        (d.channels, "channel"),
        (d.inputs, "input"),
        (d.videos, "video"),
        (d.hubs, "hub"),
        (d.watchdogs, "watchdog"),
        (d.rngs, "rng"),
        (d.filesystems, "fs"),
        (d.hostdevs, "hostdev"),
        (d.sounds, "sound"),
        (d.redirdevs, "redir"),
        (d.tpms, "tpm"),
        (d.shmems, "shmem"),
        (d.smartcards, "smartcard"),
        ([d.iommu] if d.iommu is not None else [], "iommu"),
        ([d.vsock] if d.vsock is not None else [], "vsock"),
        (d.cryptos, "crypto"),
        ([d.pstore] if d.pstore is not None else [], "pstore"),
    ]
    for items, prefix in simple:
        for i, item in enumerate(items):
            if not (item.user_alias or (keep and item.alias)):
                item.alias = f"{prefix}{i}"
    counters: dict[str, int] = {}
    for md in d.memory_devices:
        prefix = "epc" if md.model == "sgx-epc" else md.model.replace("-", "")
        if not md.user_alias:
            md.alias = f"{prefix}{counters.get(prefix, 0)}"
        counters[prefix] = counters.get(prefix, 0) + 1
    for i, con in enumerate(d.consoles):
        if con.user_alias or (keep and con.alias):
            continue
        if i == 0 and con.is_compat_console(d.serials):
            con.alias = d.serials[0].alias
        else:
            con.alias = f"console{i}"
    for chr_ in d.chardevs():
        chr_.chardev_id = f"char{chr_.alias}" if chr_.alias else None
    if d.memballoon is not None and d.memballoon.model != "none" and not d.memballoon.user_alias:
        d.memballoon.alias = "balloon0"
    if not keep:
        for panic in d.panics:  # no alias of its own, as in libvirt's live XML
            if not panic.user_alias:
                panic.alias = None
