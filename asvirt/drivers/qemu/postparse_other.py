"""QEMU post-parse of the rarer x86 devices: vsock, IOMMUs, ivshmem, panic models, EGD RNGs,
USB redirection filters.

Called by :func:`~asvirt.drivers.qemu.postparse.prepare_domain`. What is refused here is what
QEMU cannot do (and the message says so), or XML that contradicts itself.
"""

from __future__ import annotations

from ...conf.addresses import CCIDAddress, DimmAddress, ISAAddress, PCIAddress, USBAddress
from ...conf.devices import Controller
from ...conf.domain import DomainDef
from ...errors import ConfigUnsupportedError, XMLError
from .capabilities import QemuCapabilities

#: An ivshmem's size when the XML gives none (libvirt's default).
SHMEM_DEFAULT_KIB = 4096
#: Where an ivshmem-doorbell's server listens when the XML names no path (libvirt's place).
SHMEM_SERVER_DIR = "/var/lib/libvirt"
#: QEMU device of each ``<rng model>``.
RNG_DEVICE = {
    "virtio": "virtio-rng-pci",
    "virtio-transitional": "virtio-rng-pci-transitional",
    "virtio-non-transitional": "virtio-rng-pci-non-transitional",
}
#: QEMU device of each ``<vsock model>``.
VSOCK_DEVICE = {"virtio": "vhost-vsock-pci", "virtio-non-transitional": "vhost-vsock-pci"}


def _need(caps: QemuCapabilities, device: str, what: str) -> None:
    if not caps.has_device(device):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} needs QEMU device '{device}', which "
            f"{caps.binary} (QEMU {caps.version_string}) does not have"
        )


def shmem_server_path(name: str) -> str:
    return f"{SHMEM_SERVER_DIR}/shmem-{name}-sock"


def prepare_other(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    """Defaults and checks of the devices this module is about (in place)."""
    _vsock(d, caps)
    _iommu(d, caps, q35)
    _shmems(d, caps)
    _panics(d, caps)
    _rngs(d, caps)
    _memory_devices(d, caps)
    _system(d, caps)
    _smartcards(d, caps)
    if d.redirfilter is not None and not d.redirdevs:
        raise XMLError("a <redirfilter> filters <redirdev> devices, and there is none")


def _vsock(d: DomainDef, caps: QemuCapabilities) -> None:
    vs = d.vsock
    if vs is None:
        return
    vs.model = vs.model or "virtio"
    if vs.model == "virtio-transitional":
        raise ConfigUnsupportedError(
            "unsupported configuration: QEMU has no transitional vhost-vsock device "
            "(virtio sockets are virtio 1.0 only); use model='virtio'"
        )
    if vs.cid_auto is None:
        vs.cid_auto = vs.cid is None
    _need(caps, VSOCK_DEVICE[vs.model], "<vsock>")


def _iommu(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    io = d.iommu
    if io is None:
        return
    if io.model == "smmuv3":
        raise ConfigUnsupportedError(
            "unsupported configuration: QEMU emulates the SMMUv3 IOMMU on ARM 'virt' machines "
            "only; x86 guests use model='intel' or model='virtio'"
        )
    if io.model == "intel":
        if not q35:
            raise ConfigUnsupportedError(
                "unsupported configuration: QEMU's intel-iommu needs a q35 machine"
            )
        _need(caps, "intel-iommu", "<iommu model='intel'>")
        kvm_ioapic = d.domain_type == "kvm" and d.features.ioapic != "qemu"
        if io.driver.get("intremap") == "on" and kvm_ioapic:
            raise ConfigUnsupportedError(
                "unsupported configuration: IOMMU interrupt remapping under KVM needs the split "
                "I/O APIC (<features><ioapic driver='qemu'/>): QEMU refuses intremap with KVM's "
                "own"
            )
        if io.driver.get("eim") == "on" and io.driver.get("intremap") != "on":
            raise ConfigUnsupportedError(
                "unsupported configuration: IOMMU eim needs intremap='on' (QEMU refuses it "
                "otherwise)"
            )
        if io.driver.get("eim") == "on" and (d.domain_type != "kvm" or kvm_ioapic):
            raise ConfigUnsupportedError(
                "unsupported configuration: IOMMU eim needs KVM with the split I/O APIC "
                "(<domain type='kvm'> and <ioapic driver='qemu'/>): QEMU cannot emulate it"
            )
        if io.aw_bits is not None and io.aw_bits not in (39, 48):
            raise ConfigUnsupportedError(
                f"unsupported configuration: QEMU {caps.version_string}'s intel-iommu supports "
                f"aw_bits 39 or 48, not {io.aw_bits}"
            )
    else:  # virtio
        _need(caps, "virtio-iommu-pci", "<iommu model='virtio'>")
        if io.driver or io.aw_bits is not None:
            raise ConfigUnsupportedError(
                "unsupported configuration: <driver> settings are for model='intel'; QEMU's "
                "virtio-iommu has none of them"
            )
    if io.model == "intel" and io.address is not None:
        raise XMLError("an intel IOMMU is part of the machine and has no address")


def _shmems(d: DomainDef, caps: QemuCapabilities) -> None:
    names: set[str] = set()
    for sh in d.shmems:
        if sh.name in names:
            raise XMLError(f"two <shmem> devices have the name '{sh.name}'")
        names.add(sh.name)
        sh.model = sh.model or "ivshmem-plain"
        where = f"shmem '{sh.name}'"
        if sh.model == "ivshmem":
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: QEMU 4.0 removed the legacy 'ivshmem' "
                "device; use model 'ivshmem-plain' or 'ivshmem-doorbell'"
            )
        _need(caps, sh.model, where)
        sh.size_kib = sh.size_kib or SHMEM_DEFAULT_KIB
        size = sh.size_kib * 1024
        if size & (size - 1) or size < (1 << 20):
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: QEMU maps shared memory as a PCI BAR, "
                "whose size is a power of two of at least 1 MiB"
            )
        if sh.model == "ivshmem-plain" and (sh.server or sh.msi):
            raise XMLError(
                f"{where}: ivshmem-plain has no server and no interrupts (that is ivshmem-doorbell)"
            )
        if sh.model == "ivshmem-doorbell":
            if not sh.server:
                raise XMLError(f"{where}: ivshmem-doorbell needs an ivshmem <server>")
            sh.server_path = sh.server_path or shmem_server_path(sh.name)
        if sh.address is not None and not isinstance(sh.address, PCIAddress):
            raise XMLError(f"{where} needs a PCI address")


def _panics(d: DomainDef, caps: QemuCapabilities) -> None:
    if len(d.panics) > 1:
        raise ConfigUnsupportedError("unsupported configuration: more than one <panic> device")
    for panic in d.panics:
        panic.model = panic.model or "isa"
        if panic.model in ("pseries", "s390"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: the '{panic.model}' panic device belongs to "
                f"{'POWER' if panic.model == 'pseries' else 's390'} machines; QEMU has none on x86"
            )
        if panic.model == "isa":
            _need(caps, "pvpanic", "the ISA panic device")
            if panic.address is not None and not isinstance(panic.address, ISAAddress):
                raise XMLError("the ISA panic device needs an ISA address")
        elif panic.model == "pvpanic":
            _need(caps, "pvpanic-pci", "the PCI panic device")
            if panic.address is not None and not isinstance(panic.address, PCIAddress):
                raise XMLError("the PCI panic device needs a PCI address")
        elif panic.address is not None:  # hyperv: MSRs of the vCPUs
            raise XMLError("the Hyper-V panic notifier is part of the CPU and has no address")


def _rngs(d: DomainDef, caps: QemuCapabilities) -> None:
    for rng in d.rngs:
        _need(caps, RNG_DEVICE[rng.model], f"rng model '{rng.model}'")
        if rng.backend == "egd" and rng.egd_type == "tcp" and rng.egd_host is None:
            rng.egd_host = "localhost" if rng.egd_mode == "connect" else None


#: virtio-mem's block size when the XML gives none: QEMU's own default on x86 (a THP).
VIRTIO_MEM_BLOCK_KIB = 2048


def _memory_devices(d: DomainDef, caps: QemuCapabilities) -> None:
    used: set[int] = set()
    for md in d.memory_devices:
        if isinstance(md.address, DimmAddress) and md.address.slot is not None:
            if md.address.slot in used or md.address.slot >= (d.max_memory_slots or 0):
                raise XMLError(f"DIMM slot {md.address.slot} is used twice or does not exist")
            used.add(md.address.slot)
    for i, md in enumerate(d.memory_devices):
        where = f"memory device {i}"
        if md.model in ("dimm", "nvdimm"):  # both take a slot (nvdimm: postparse_extra)
            _need(caps, md.model if md.model == "nvdimm" else "pc-dimm", f"a {md.model.upper()}")
            if d.features.acpi != "on":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: QEMU hotplugs DIMMs through ACPI, "
                    "which this domain turns off (add <features><acpi/></features>)"
                )
            if md.address is None:
                md.address = DimmAddress()
            assert isinstance(md.address, DimmAddress)
            if md.address.slot is None:
                md.address.slot = min(set(range(len(used) + 1)) - used)
                used.add(md.address.slot)
            if md.size_kib % 2048 and md.model == "dimm":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: QEMU plugs DIMMs in 2 MiB steps "
                    "on x86; its size must be a multiple of 2 MiB"
                )
        elif md.model == "virtio-mem":
            _need(caps, "virtio-mem-pci", "virtio-mem memory")
            md.block_kib = md.block_kib or VIRTIO_MEM_BLOCK_KIB
            md.requested_kib = md.requested_kib or 0
            block = md.block_kib
            if block & (block - 1) or block < VIRTIO_MEM_BLOCK_KIB:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: QEMU's virtio-mem block size is a "
                    "power of two of at least 2 MiB"
                )
            if md.size_kib % block or md.requested_kib % block:
                raise XMLError(f"{where}: its size and requested size are whole blocks")
            if md.requested_kib > md.size_kib:
                raise XMLError(f"{where}: it cannot plug more than its size")


def _system(d: DomainDef, caps: QemuCapabilities) -> None:
    for disk in d.disks:
        if disk.iothread is not None:
            if disk.bus != "virtio":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: disk '{disk.target}': QEMU runs only virtio "
                    "disks in an I/O thread"
                )
            if disk.iothread not in d.iothread_ids:
                raise XMLError(f"disk '{disk.target}' uses I/O thread {disk.iothread}, not defined")
    for ctl in d.controllers:
        if ctl.iothread is not None:
            if ctl.model != "virtio-scsi":
                raise ConfigUnsupportedError(
                    "unsupported configuration: QEMU runs only virtio-scsi controllers in an "
                    "I/O thread"
                )
            if ctl.iothread not in d.iothread_ids:
                raise XMLError(
                    f"SCSI controller {ctl.index} uses I/O thread {ctl.iothread}, not defined"
                )
    mode = d.os.smbios_mode
    smbios = [i for i in d.sysinfos if i.type == "smbios"]
    if mode == "sysinfo" and not smbios:
        raise XMLError("<smbios mode='sysinfo'> needs a <sysinfo type='smbios'>")
    for info in smbios:
        for entries in info.tables.get("system", []):
            for name, value in entries:
                if name == "uuid" and value.lower() != d.uuid:
                    raise XMLError("the <sysinfo> system UUID differs from the domain's UUID")
    if d.genid is not None:
        _need(caps, "vmgenid", "<genid>")


#: QEMU device of each ``<smartcard mode>``.
SMARTCARD_DEVICE = {
    "host": "ccid-card-emulated",
    "host-certificates": "ccid-card-emulated",
    "passthrough": "ccid-card-passthru",
}


def _smartcards(d: DomainDef, caps: QemuCapabilities) -> None:
    readers = [c for c in d.controllers if c.type == "ccid"]
    for ctl in readers:
        _need(caps, "usb-ccid", "a CCID smartcard reader")
        if ctl.address is not None and not isinstance(ctl.address, USBAddress):
            raise XMLError("a CCID controller needs a USB address")
    taken: set[int] = set()
    for sc in d.smartcards:
        if isinstance(sc.address, CCIDAddress):
            if sc.address.controller in taken:
                raise XMLError(f"CCID controller {sc.address.controller} holds one smartcard")
            taken.add(sc.address.controller)
    for i, sc in enumerate(d.smartcards):
        _need(caps, SMARTCARD_DEVICE[sc.mode], f"smartcard mode '{sc.mode}'")
        if sc.type == "spicevmc" and not any(g.type == "spice" for g in d.graphics):
            raise ConfigUnsupportedError(
                "unsupported configuration: a spicevmc <smartcard> needs <graphics type='spice'>"
            )
        if sc.type == "tcp" and sc.source_mode == "connect" and sc.host is None:
            raise XMLError(f"smartcard {i} connects over TCP and needs a host")
        if sc.address is None:
            # As libvirt: the first reader without a card (usb-ccid has one slot).
            free = min(set(range(len(d.smartcards) + len(readers) + 1)) - taken)
            sc.address = CCIDAddress(controller=free, slot=0)
            taken.add(free)
        assert isinstance(sc.address, CCIDAddress)
        if d.controller("ccid", sc.address.controller) is None:
            d.add_controller(Controller(type="ccid", index=sc.address.controller))
            _need(caps, "usb-ccid", "a CCID smartcard reader")


__all__ = ["RNG_DEVICE", "SHMEM_DEFAULT_KIB", "prepare_other", "shmem_server_path"]
