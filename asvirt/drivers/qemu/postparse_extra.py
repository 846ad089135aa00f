"""QEMU post-parse of the devices :mod:`~asvirt.drivers.qemu.command_extra` builds: socket
and vhost-user NICs, NVDIMM/virtio-pmem/SGX memory, virtio-crypto, pstore, guestfwd
channels, and the local displays (egl-headless, SDL, D-Bus).

Called by :func:`~asvirt.drivers.qemu.postparse.prepare_domain`. What is refused here is
what QEMU cannot do (the message says so), or XML that contradicts itself.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from ...conf.devices import TAP_NIC_TYPES, Chardev, Graphics, Interface
from ...conf.domain import DomainDef
from ...errors import ConfigUnsupportedError, OperationFailedError, XMLError
from .capabilities import QemuCapabilities
from .membacking import require_shared_memory

#: The network of QEMU's user-mode stack (slirp's default), its host and its DNS server.
SLIRP_NET = ipaddress.IPv4Network("10.0.2.0/24")
SLIRP_HOST_AND_DNS = ("10.0.2.2", "10.0.2.3")


def check_guestfwd(chr_: Chardev) -> None:
    """A guestfwd channel's address must be one the user-mode network can answer for."""
    addr = chr_.target_address or ""
    if ipaddress.IPv4Address(addr) not in SLIRP_NET or addr in SLIRP_HOST_AND_DNS:
        raise ConfigUnsupportedError(
            f"unsupported configuration: guestfwd address {addr}: QEMU's user-mode network "
            f"forwards connections to addresses of its network {SLIRP_NET} only, other than "
            f"its host and DNS server ({', '.join(SLIRP_HOST_AND_DNS)})"
        )


def _need(caps: QemuCapabilities, device: str, what: str) -> None:
    if not caps.has_device(device):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} needs QEMU device '{device}', which "
            f"{caps.binary} (QEMU {caps.version_string}) does not have"
        )


def prepare_extra(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    """Defaults and checks of the devices this module is about (in place)."""
    _interfaces(d)
    for i, nic in enumerate(d.interfaces):
        _virtio_net_driver(i, nic, q35)
    _acpi_indexes(d)
    _hidden_roms(d)
    for nic in d.interfaces:
        _host_side(nic)
    _memory_devices(d, caps)
    _crypto_and_pstore(d, caps)


def _interfaces(d: DomainDef) -> None:
    for i, nic in enumerate(d.interfaces):
        if (nic.queues or 1) > 1 and nic.model != "virtio":
            # As libvirt: only virtio-net has queues to spread over the tap's.
            raise ConfigUnsupportedError(
                f"unsupported configuration: interface {i}: multiqueue (<driver queues="
                f"'{nic.queues}'>) is only supported for virtio NICs, not '{nic.model}'"
            )
        if nic.driver_name == "vhost" and nic.model != "virtio":
            # libvirt's refusal: vhost-net moves virtio rings, nothing else.
            raise ConfigUnsupportedError(
                f"unsupported configuration: interface {i}: vhost-net (<driver name='vhost'>) "
                f"is only supported for virtio network interfaces, not '{nic.model}'"
            )
        if nic.type != "vhostuser":
            continue
        if nic.model != "virtio":
            raise ConfigUnsupportedError(
                f"unsupported configuration: interface {i}: a vhost-user backend serves "
                f"virtio queues; QEMU cannot put a '{nic.model}' NIC on it"
            )
        require_shared_memory(d, f"interface {i}", "vhost-user")


#: The NIC types asvirt makes a tap of the tun device for (a macvtap is a device of its own).
TUN_NIC_TYPES = ("network", "bridge", "ethernet")
#: The NIC types whose MTU asvirt sets (on the tap; a vhost-user backend is told by QEMU).
MTU_NIC_TYPES = ("network", "bridge", "ethernet", "vhostuser")


def _host_side(nic: Interface) -> None:
    """What a NIC's host side can be told: an MTU, a tap's send buffer."""
    if nic.mtu is not None and nic.type not in MTU_NIC_TYPES:
        raise ConfigUnsupportedError(  # libvirt's words
            f"unsupported configuration: setting MTU on interface type {nic.type} is not "
            "supported yet"
        )
    if nic.mtu is not None and nic.target_managed is False:
        raise ConfigUnsupportedError(
            f"unsupported configuration: interface {nic.mac}: <mtu> of a tap that exists "
            "already (<target managed='no'>): that tap is its owner's to configure"
        )
    if nic.backend_tap is not None and nic.type not in TUN_NIC_TYPES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: interface {nic.mac}: <backend tap=> is where the "
            f"tun device is, and an interface of type '{nic.type}' has no tun tap"
        )
    if nic.backend_vhost is not None and not (nic.type in TAP_NIC_TYPES and nic.model == "virtio"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: interface {nic.mac}: <backend vhost=> is where "
            "vhost-net is, which serves virtio NICs on a tap or macvtap only"
        )
    if nic.backend_vhost is not None and nic.driver_name == "qemu":
        raise ConfigUnsupportedError(
            f"unsupported configuration: interface {nic.mac}: <backend vhost=> names "
            "vhost-net's device, and <driver name='qemu'> leaves vhost-net out"
        )
    if nic.coalesce_rx_frames is not None and nic.type not in ("network", "bridge"):
        raise ConfigUnsupportedError(  # libvirt's words
            f"unsupported configuration: coalesce settings on interface type {nic.type} are "
            "not supported"
        )
    if nic.sndbuf is not None and nic.type not in TAP_NIC_TYPES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <tune><sndbuf> is a tap's send buffer; an interface "
            f"of type '{nic.type}' has no tap"
        )


def _hidden_roms(d: DomainDef) -> None:
    """QEMU hands the firmware each ROM without a BAR (``<rom bar='off'>``) as a fw_cfg file
    named after the ROM's file, and refuses a second file of one name: two NICs cannot hide
    the same ROM (their model's own, or one ``file=``)."""
    seen: dict[str, int] = {}
    for i, nic in enumerate(d.interfaces):
        rom = nic.rom
        if rom is None or rom.bar != "off" or rom.enabled is False:
            continue
        key = os.path.basename(rom.file) if rom.file else f"the '{nic.model}' model's ROM"
        if key in seen:
            raise ConfigUnsupportedError(
                f"unsupported configuration: interfaces {seen[key]} and {i} both hide "
                f"{key if not rom.file else repr(key)} (<rom bar='off'>): QEMU gives the "
                "firmware each hidden ROM as a file of that name, and only one of each"
            )
        seen[key] = i


def _acpi_indexes(d: DomainDef) -> None:
    """No two devices may have one ACPI index: the guest names a device by it."""
    seen: set[int] = set()
    for nic in d.interfaces:
        if nic.acpi_index is None:
            continue
        if nic.acpi_index in seen:
            raise XMLError(f"ACPI index '{nic.acpi_index}' is given to more than one device")
        seen.add(nic.acpi_index)


#: The ring sizes QEMU's virtio-net takes (each a power of two).
VIRTIO_NET_RING_SIZES = (256, 1024)


def _virtio_net_driver(i: int, nic: Interface, q35: bool) -> None:
    """What QEMU can do of a NIC's virtio-net ``<driver>`` settings, saying why not (libvirt's
    words where it has them); the model is known by now."""
    where = f"unsupported configuration: interface {i}"
    settings = nic.virtio_net_settings()
    if not settings:
        return
    if nic.model != "virtio":
        names = ", ".join(settings)
        raise ConfigUnsupportedError(
            f"{where}: <driver> settings {names} are virtio-net's; QEMU's '{nic.model}' NIC "
            "has none of them"
        )
    for name in ("rx_queue_size", "tx_queue_size"):
        size = settings.get(name)
        if size is None:
            continue
        assert isinstance(size, int)
        if size & (size - 1):
            raise ConfigUnsupportedError(f"{where}: {name} has to be a power of two")
        low, high = VIRTIO_NET_RING_SIZES
        if not low <= size <= high:
            raise ConfigUnsupportedError(
                f"{where}: {name}='{size}': QEMU's virtio-net rings hold {low} to {high} entries"
            )
    if nic.tx_queue_size is not None and nic.type != "vhostuser":
        # QEMU holds the transmit ring of any other backend to 256 entries, whatever it is told.
        raise ConfigUnsupportedError(
            f"{where}: tx_queue_size is only honoured by QEMU for vhost-user interfaces; the "
            f"transmit ring of a '{nic.type}' interface stays at {VIRTIO_NET_RING_SIZES[0]}"
        )
    if nic.txmode is not None:
        if nic.type == "vhostuser":
            raise ConfigUnsupportedError(
                f"{where}: txmode='{nic.txmode}' is how QEMU transmits; on a vhost-user "
                "interface the backend does"
            )
        if nic.type in TAP_NIC_TYPES and nic.driver_name != "qemu":
            raise ConfigUnsupportedError(
                f"{where}: txmode='{nic.txmode}' is how QEMU transmits, and on a tap the "
                "kernel's vhost-net does instead; use <driver name='qemu'> with txmode"
            )
    rss = [k for k in ("rss", "rss_hash_report") if k in nic.driver_switches]
    if rss and nic.type == "vhostuser":
        raise ConfigUnsupportedError(
            f"{where}: {' and '.join(rss)} steer packets in QEMU; on a vhost-user interface "
            "the backend fills the queues"
        )
    if nic.virtio.get("iommu") == "on" and not q35:
        raise ConfigUnsupportedError(
            f"{where}: <driver iommu='on'> needs a modern-only virtio device, and on a "
            "conventional PCI bus (machine 'pc') QEMU's virtio-net-pci is transitional"
        )


#: The smallest namespace label area QEMU gives an NVDIMM.
NVDIMM_MIN_LABEL_KIB = 128
#: Where a host's SGX lends enclave memory to guests.
SGX_VEPC = "/dev/sgx_vepc"


def _memory_devices(d: DomainDef, caps: QemuCapabilities) -> None:
    for i, md in enumerate(d.memory_devices):
        where = f"memory device {i}"
        if md.model == "nvdimm":
            # The slot, and the device itself: postparse_other, with the DIMMs.
            if md.label_kib is not None and md.label_kib < NVDIMM_MIN_LABEL_KIB:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: QEMU's NVDIMM label area is at "
                    f"least {NVDIMM_MIN_LABEL_KIB} KiB"
                )
            if md.label_kib is not None and md.label_kib >= md.size_kib:
                raise XMLError(f"{where}: the label takes all of the NVDIMM")
        elif md.model == "virtio-pmem":
            _need(caps, "virtio-pmem-pci", "virtio-pmem memory")
            if md.node is not None:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: QEMU's virtio-pmem has no NUMA node"
                )
        elif md.model == "sgx-epc":
            if md.address is not None:
                raise XMLError(f"{where}: an SGX EPC section has no address")
            if md.access is not None or md.discard is not None:
                raise XMLError(f"{where}: an SGX EPC section takes no access or discard")


#: Where a pstore's records go when the XML names no file (libvirt's place, under its
#: per-domain directory, is the driver's; asvirt names it by the domain).
PSTORE_DIR = "/var/lib/libvirt/qemu/nvram"


def _crypto_and_pstore(d: DomainDef, caps: QemuCapabilities) -> None:
    for crypto in d.cryptos:
        qom = f"cryptodev-backend-{crypto.backend}"
        if not caps.has_object(qom):
            raise ConfigUnsupportedError(
                f"unsupported configuration: <crypto><backend model='{crypto.backend}'> needs "
                f"QEMU object '{qom}', which {caps.binary} (QEMU {caps.version_string}) does "
                "not have" + (" (it came in QEMU 8.0)" if crypto.backend == "lkcf" else "")
            )
        _need(caps, "virtio-crypto-pci", "a virtio crypto device")
        if crypto.backend == "builtin" and (crypto.queues or 1) > 1:
            raise ConfigUnsupportedError(
                "unsupported configuration: QEMU's builtin crypto backend has one queue; "
                f"it cannot serve queues='{crypto.queues}'"
            )
    ps = d.pstore
    if ps is not None:
        _need(caps, "acpi-erst", "<pstore backend='acpi-erst'>")
        if d.features.acpi != "on":
            raise ConfigUnsupportedError(
                "unsupported configuration: <pstore backend='acpi-erst'> is an ACPI table, and "
                "this domain turns ACPI off (add <features><acpi/></features>)"
            )
        if ps.path is None:
            ps.path = f"{PSTORE_DIR}/{d.name}_acpi_erst"


def check_more_host_devices(d: DomainDef) -> None:
    """Refuse a start whose host devices (of this module's kinds) are not there, saying why:
    the part of :func:`~asvirt.drivers.qemu.helpers.check_host_devices` for them."""
    for disk in d.disks:
        if disk.device == "lun" and disk.source is not None:
            _check_scsi_lun(d, disk.target, disk.source, disk.sgio)
    for gfx in d.graphics:
        _check_local_display(d, gfx)
    if any(m.model == "sgx-epc" for m in d.memory_devices):
        if d.domain_type != "kvm":
            raise OperationFailedError(
                f"the SGX enclave memory of domain '{d.name}' needs KVM (<domain type='kvm'>): "
                "QEMU cannot emulate SGX"
            )
        if not os.path.exists(SGX_VEPC):
            raise OperationFailedError(
                f"the SGX enclave memory of domain '{d.name}' needs a host with SGX "
                f"({SGX_VEPC} is missing: this CPU or kernel has no SGX to lend)"
            )


def _check_local_display(d: DomainDef, gfx: Graphics) -> None:
    """A display on the host itself needs what it draws with: QEMU inherits the
    supervisor's environment, so an X/Wayland display or session bus must be there."""
    where = f"the {gfx.type} display of domain '{d.name}'"
    if gfx.type == "egl-headless" or gfx.gl_rendernode is not None or gfx.gl_enable:
        if gfx.gl_rendernode is not None:
            if not os.path.exists(gfx.gl_rendernode):
                raise OperationFailedError(
                    f"{where} renders on {gfx.gl_rendernode}, which this host does not have"
                )
        elif not list(Path("/dev/dri").glob("renderD*")):
            raise OperationFailedError(
                f"{where} renders with OpenGL, and this host has no GPU render node "
                "(/dev/dri/renderD*)"
            )
    has_display = gfx.x_display or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if gfx.type == "sdl" and not has_display:
        raise OperationFailedError(
            f"{where} opens a window, and the supervisor has no X or Wayland display "
            "(DISPLAY and WAYLAND_DISPLAY are not set)"
        )
    if (
        gfx.type == "dbus"
        and not gfx.dbus_p2p
        and gfx.dbus_address is None
        and not os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    ):
        raise OperationFailedError(
            f"{where} joins the session bus, and the supervisor has none "
            "(DBUS_SESSION_BUS_ADDRESS is not set; use p2p='yes' or address=)"
        )


def _check_scsi_lun(d: DomainDef, target: str, path: str, sgio: str | None) -> None:
    """The LUN must be a whole host SCSI disk; ``sgio`` is set on it as libvirt does: the
    kernel's ``unpriv_sgio`` (a knob some kernels have) written 1 for 'unfiltered', 0 else;
    where the kernel has no such knob it always filters, so 'unfiltered' is refused."""
    where = f"disk '{target}' of domain '{d.name}'"
    try:
        st = os.stat(path)
    except OSError as e:
        raise OperationFailedError(
            f"{where} passes through the host SCSI device {path}, which cannot be opened "
            f"({e.strerror})"
        ) from None
    sysfs = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/device")
    if not stat.S_ISBLK(st.st_mode) or not (sysfs / "scsi_device").exists():
        raise OperationFailedError(
            f"{where}: {path} is not a whole SCSI disk, and QEMU's scsi-block passes SCSI "
            "commands (SG_IO) to one (use device='disk' for any other block device)"
        )
    knob = sysfs.parent / "queue" / "unpriv_sgio"
    if not knob.exists():
        if sgio == "unfiltered":
            raise OperationFailedError(
                f"{where} asks for sgio='unfiltered', and this kernel filters SG_IO always "
                f"(it has no unpriv_sgio setting: {knob} is missing)"
            )
        return
    try:
        knob.write_text("1" if sgio == "unfiltered" else "0")
    except OSError as e:
        raise OperationFailedError(f"{where}: cannot set {knob}: {e.strerror}") from None


__all__ = ["check_guestfwd", "check_more_host_devices", "prepare_extra"]
