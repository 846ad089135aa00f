"""QEMU post-parse of the devices and features virt-install and virt-manager write.

Called by :func:`~asvirt.drivers.qemu.postparse.prepare_domain`: SPICE and its channels,
USB redirection, sound cards and the audio backend they play to, TPMs, shared folders
(virtiofs and 9p), host devices, Hyper-V enlightenments and the other ``<features>``,
timers and memory backing. Checks say whether it is QEMU or asvirt that cannot do
something. Nothing here probes the host: the capabilities are the only input.
"""

from __future__ import annotations

from ...conf.addresses import PCIAddress, USBAddress
from ...conf.devices import Audio, GraphicsListen
from ...conf.domain import DomainDef
from ...errors import ConfigUnsupportedError, XMLError
from .capabilities import QemuCapabilities
from .membacking import require_shared_memory
from .tuning import check_tuning

#: QEMU device of each ``<sound model>``.
SOUND_DEVICE = {
    "ich6": "intel-hda",
    "ich9": "ich9-intel-hda",
    "ac97": "AC97",
    "es1370": "ES1370",
    "sb16": "sb16",
    "usb": "usb-audio",
}
#: QEMU device of each HDA ``<codec type>``.
CODEC_DEVICE = {"duplex": "hda-duplex", "micro": "hda-micro", "output": "hda-output"}
#: The channel name a SPICE agent channel gets when the XML names none.
SPICE_AGENT_CHANNEL = "com.redhat.spice.0"


def _need(caps: QemuCapabilities, device: str, what: str) -> None:
    if not caps.has_device(device):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} needs QEMU device '{device}', which "
            f"{caps.binary} (QEMU {caps.version_string}) does not have"
        )


def has_spice(d: DomainDef) -> bool:
    return any(g.type == "spice" for g in d.graphics)


def default_audio(d: DomainDef) -> None:
    """The backend libvirt adds when there is none: SPICE's when the display is SPICE."""
    if not d.audios:
        d.audios.append(Audio(id=1, type="spice" if has_spice(d) else "none"))


def prepare_more(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    check_tuning(d)
    """Defaults and checks of everything this module is about (in place)."""
    _features(d, caps)
    _timers(d)
    _memory_backing(d)
    _graphics(d, caps)
    _spice_chardevs(d, caps)
    _sounds(d, caps, q35)
    _redirdevs(d, caps)
    _tpms(d, caps)
    _filesystems(d, caps)
    _hostdevs(d, caps)


# ---------------------------------------------------------------------------------------------
# features, timers, memory


def _features(d: DomainDef, caps: QemuCapabilities) -> None:
    f = d.features
    hv = f.hyperv
    if hv is not None and hv.mode == "custom":
        deps = (("synic", "vpindex"), ("stimer", "synic"), ("ipi", "vpindex"))
        for feature, needs in deps:
            if hv.on(feature) and not hv.on(needs):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: Hyper-V feature '{feature}' needs "
                    f"'{needs}' on (QEMU refuses it otherwise)"
                )
        if hv.on("stimer"):
            clock = d.clock.timer("hypervclock")
            if clock is None or clock.present is not True:
                raise ConfigUnsupportedError(
                    "unsupported configuration: Hyper-V feature 'stimer' needs "
                    "<timer name='hypervclock' present='yes'/> (QEMU refuses it otherwise)"
                )
        if hv.stimer_direct == "on" and not hv.on("stimer"):
            raise XMLError("<stimer><direct state='on'/> needs <stimer state='on'/>")
        if (hv.tlbflush_direct == "on" or hv.tlbflush_extended == "on") and not hv.on("tlbflush"):
            raise XMLError("<tlbflush> direct/extended need <tlbflush state='on'/>")
    if f.ioapic is not None and not (d.os.machine or "").startswith("pc-q35"):
        raise ConfigUnsupportedError(
            "unsupported configuration: <ioapic driver=...> needs a q35 machine"
        )
    if f.ioapic == "kvm" and d.domain_type != "kvm":
        raise ConfigUnsupportedError(
            "unsupported configuration: <ioapic driver='kvm'> needs <domain type='kvm'>"
        )
    if f.smm_tseg_kib is not None:
        if f.smm != "on" or not (d.os.machine or "").startswith("pc-q35"):
            raise ConfigUnsupportedError(
                "unsupported configuration: <smm><tseg> needs SMM on a q35 machine"
            )
        if f.smm_tseg_kib % 1024:
            raise XMLError("<smm><tseg> must be a whole number of MiB")
    if f.msrs_unknown is not None:
        raise ConfigUnsupportedError(
            "unsupported configuration: <msrs unknown=...> is not a QEMU setting (it is the "
            "KVM module's ignore_msrs parameter, which a VM's supervisor does not change)"
        )
    if f.tcg_tb_cache_kib is not None:
        if d.domain_type != "qemu":
            raise ConfigUnsupportedError(
                "unsupported configuration: <tcg><tb-cache> needs <domain type='qemu'>"
            )
        if f.tcg_tb_cache_kib % 1024:
            raise XMLError("<tcg><tb-cache> must be a whole number of MiB")
    if f.vmcoreinfo == "on":
        _need(caps, "vmcoreinfo", "<vmcoreinfo state='on'/>")


def _timers(d: DomainDef) -> None:
    tsc = d.clock.timer("tsc")
    if tsc is not None:
        if tsc.mode not in (None, "auto"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: <timer name='tsc' mode='{tsc.mode}'>: QEMU has "
                "no TSC mode setting (only a frequency)"
            )
        if tsc.present is False:
            raise ConfigUnsupportedError(
                "unsupported configuration: QEMU cannot remove the TSC of an x86 CPU"
            )
        if tsc.tickpolicy is not None:
            raise ConfigUnsupportedError("unsupported configuration: the tsc has no tickpolicy")
    hv = d.clock.timer("hypervclock")
    if hv is not None and hv.tickpolicy is not None:
        raise ConfigUnsupportedError("unsupported configuration: the hypervclock has no tickpolicy")


def _memory_backing(d: DomainDef) -> None:
    mb = d.memory_backing
    if mb is None:
        return
    cells = {c.id for c in d.cpu.numa} if d.cpu is not None and d.cpu.numa else {0}
    for pages in mb.node_pages:
        missing = sorted(pages.nodes - cells)
        if missing:
            # libvirt's words (a domain without NUMA cells has node 0 only).
            raise XMLError(f"hugepages: node {missing[0]} not found")
    if mb.discard and mb.source != "file" and not mb.hugepages:
        raise ConfigUnsupportedError(
            "unsupported configuration: <memoryBacking><discard/> only applies to file-backed "
            "memory (QEMU's discard-data)"
        )


# ---------------------------------------------------------------------------------------------
# graphics and their channels


def _graphics(d: DomainDef, caps: QemuCapabilities) -> None:
    kinds = [g.type for g in d.graphics]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ConfigUnsupportedError(
                f"unsupported configuration: more than one {kind.upper()} display"
            )
    for gfx in d.graphics:
        if gfx.type != "spice":
            continue
        if not caps.has_command("query-spice"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: {caps.binary} was built without SPICE"
            )
        if not gfx.listens:
            gfx.listens.append(GraphicsListen(type="address"))
        if gfx.port is None and gfx.autoport is None:
            gfx.port, gfx.autoport = -1, True
        if gfx.tls_port is None and gfx.autoport:
            gfx.tls_port = -1
        # TLS (a tlsPort, secure channels) is checked at start: it depends on the
        # driver's spice_tls, as libvirt's does on qemu.conf's (see command_more).
        if gfx.listens[0].type == "none":
            raise ConfigUnsupportedError(
                "unsupported configuration: SPICE with <listen type='none'/> is only for "
                "OpenGL displays, which asvirt does not set up"
            )
        if gfx.gl_enable:
            raise ConfigUnsupportedError(
                "unsupported configuration: SPICE OpenGL needs QEMU's OpenGL UI module and a "
                "render node, which asvirt does not set up; use <gl enable='no'/>"
            )
        if gfx.port is not None and gfx.port not in (-1, 0) and gfx.port < 1024:
            raise XMLError(f"SPICE port {gfx.port} is out of range (1024-65535)")


def _spice_chardevs(d: DomainDef, caps: QemuCapabilities) -> None:
    for chr_ in d.chardevs():
        if chr_.type not in ("spicevmc", "spiceport"):
            continue
        if not has_spice(d):
            raise ConfigUnsupportedError(
                f"unsupported configuration: a {chr_.type} {chr_.kind} needs "
                "<graphics type='spice'>"
            )
        if chr_.type == "spicevmc":
            if chr_.kind != "channel":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: a spicevmc {chr_.kind} is not supported "
                    "(spicevmc is the SPICE agent's channel)"
                )
            chr_.target_name = chr_.target_name or SPICE_AGENT_CHANNEL


# ---------------------------------------------------------------------------------------------
# sound, USB redirection, TPM


def _sounds(d: DomainDef, caps: QemuCapabilities, q35: bool) -> None:
    ids = {a.id for a in d.audios}
    for i, snd in enumerate(d.sounds):
        _need(caps, SOUND_DEVICE[snd.model], f"sound model '{snd.model}'")
        for codec in snd.codecs or []:
            _need(caps, CODEC_DEVICE[codec], f"sound codec '{codec}'")
        if snd.audio_id is not None and snd.audio_id not in ids:
            raise XMLError(f"sound {i} uses <audio id='{snd.audio_id}'>, which does not exist")
        if snd.model == "sb16" and snd.address is not None:
            raise XMLError("an ISA sb16 sound card has no address")
        if snd.model == "sb16" and q35:
            raise ConfigUnsupportedError(
                "unsupported configuration: the ISA sb16 sound card needs an i440FX machine"
            )


def _redirdevs(d: DomainDef, caps: QemuCapabilities) -> None:
    if d.redirdevs:
        if any(rd.type == "spicevmc" for rd in d.redirdevs) and not has_spice(d):
            raise ConfigUnsupportedError(
                "unsupported configuration: a spicevmc <redirdev> needs <graphics type='spice'>"
            )
        _need(caps, "usb-redir", "USB redirection")


def _tpms(d: DomainDef, caps: QemuCapabilities) -> None:
    if len(d.tpms) > 1:
        raise ConfigUnsupportedError("unsupported configuration: more than one <tpm>")
    for tpm in d.tpms:
        if tpm.model is None:
            tpm.model = "tpm-crb" if caps.has_device("tpm-crb") else "tpm-tis"
        _need(caps, tpm.model, f"TPM model '{tpm.model}'")
        if tpm.backend == "emulator":
            tpm.version = tpm.version or "2.0"
            if tpm.model == "tpm-crb" and tpm.version != "2.0":
                raise ConfigUnsupportedError(
                    "unsupported configuration: a tpm-crb is a TPM 2.0 interface; TPM 1.2 "
                    "needs model='tpm-tis'"
                )
            if tpm.pcr_banks is not None and tpm.version != "2.0":
                raise XMLError("<active_pcr_banks> are for TPM 2.0")


# ---------------------------------------------------------------------------------------------
# shared folders and host devices


def _filesystems(d: DomainDef, caps: QemuCapabilities) -> None:
    targets: set[str] = set()
    for fs in d.filesystems:
        if fs.target in targets:
            raise XMLError(f"two filesystems have the target '{fs.target}'")
        targets.add(fs.target)
        fs.driver = fs.driver or "path"
        fs.accessmode = fs.accessmode or "passthrough"
        where = f"filesystem '{fs.target}'"
        if fs.driver == "handle":
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: QEMU {caps.version_string} has no 'handle' "
                "9p backend (QEMU 6.0 removed it); use <driver type='path'/>"
            )
        tuning = (fs.cache_mode, fs.sandbox_mode, fs.lock_posix, fs.lock_flock)
        virtiofsd_only = (fs.binary_path, fs.binary_xattr, fs.thread_pool_size, *tuning)
        if fs.driver == "virtiofs":
            _need(caps, "vhost-user-fs-pci", "virtiofs")
            if fs.accessmode != "passthrough":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: virtiofs supports only "
                    "accessmode='passthrough'"
                )
            require_shared_memory(d, where, "virtiofs")
            if fs.readonly:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {where}: virtiofsd 7.2 cannot share "
                    "read-only; use 9p (<driver type='path'/>) for a read-only share"
                )
            if fs.multidevs is not None or fs.fmode or fs.dmode:
                raise XMLError(f"{where}: multidevs/fmode/dmode are 9p settings")
            if fs.source_socket is not None and any(v is not None for v in virtiofsd_only):
                raise XMLError(
                    f"{where}: a virtiofsd somebody else runs (<source socket>) takes no "
                    "<binary> settings"
                )
        else:
            _need(caps, "virtio-9p-pci", "9p shared folders")
            if fs.queue is not None or any(v is not None for v in virtiofsd_only):
                raise XMLError(f"{where}: queue and <binary> are virtiofs settings")
            if (fs.fmode or fs.dmode) and fs.accessmode != "mapped":
                raise XMLError(f"{where}: fmode/dmode need accessmode='mapped'")
        if fs.boot_order is not None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: booting from a shared folder needs "
                "firmware support QEMU's x86 firmware does not have"
            )


def _hostdevs(d: DomainDef, caps: QemuCapabilities) -> None:
    seen: set[str] = set()
    for i, hd in enumerate(d.hostdevs):
        if hd.type == "pci":
            _need(caps, "vfio-pci", "PCI device assignment")
            key = f"pci {hd.pci}"
        else:
            _need(caps, "usb-host", "USB device assignment")
            key = (
                f"usb {hd.usb_vendor}:{hd.usb_product}"
                if hd.usb_bus is None
                else f"usb {hd.usb_bus}.{hd.usb_device}"
            )
            if hd.address is not None and not isinstance(hd.address, USBAddress):
                raise XMLError(f"USB host device {i} needs a USB address")
        if hd.type == "pci" and hd.address is not None and not isinstance(hd.address, PCIAddress):
            raise XMLError(f"PCI host device {i} needs a PCI address")
        if key in seen:
            raise XMLError(f"host device {key} is assigned twice")
        seen.add(key)


__all__ = [
    "CODEC_DEVICE",
    "SOUND_DEVICE",
    "SPICE_AGENT_CHANNEL",
    "default_audio",
    "has_spice",
    "prepare_more",
]
