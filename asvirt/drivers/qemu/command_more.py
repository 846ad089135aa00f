"""The command line of what virt-install and virt-manager write, beyond the basics.

:mod:`asvirt.drivers.qemu.command` calls these for UEFI firmware (pflash -blockdev nodes,
Secure Boot), guest memory backends, Hyper-V and KVM CPU flags, SPICE and its channels,
USB redirection, sound cards, TPMs, shared folders and host devices. The arguments follow
libvirt's (its ids, its JSON ``-device`` objects), so a command line can be compared with
``virsh domxml-to-native``'s.

Sockets of the helper programs (swtpm, virtiofsd) are placed in the runtime directory by
:func:`swtpm_socket` and :func:`virtiofs_socket`, which the helpers' supervisor uses too.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
from typing import TYPE_CHECKING, Any

from ...conf.devices import Graphics
from ...conf.domain import DomainDef
from ...conf.extdevices import Filesystem, Hostdev
from ...errors import ConfigUnsupportedError
from .command_other import needs_ram_object, numa_args, ram_backend, redir_filter
from .displays import has_password
from .postparse_more import CODEC_DEVICE, SOUND_DEVICE

if TYPE_CHECKING:
    from .command import _Builder

#: sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
#: QEMU's audiodev driver of each ``<audio type>``.
AUDIO_DRIVER = {
    "none": "none",
    "spice": "spice",
    "file": "wav",
    "alsa": "alsa",
    "oss": "oss",
    "pulseaudio": "pa",
    "sdl": "sdl",
    "dbus": "dbus",
    "jack": "jack",
}
#: ``<audio>`` attributes -> QEMU's -audiodev keys (the backend's and each direction's).
AUDIO_KEYS = {
    "path": "path",
    "serverName": "server",
    "driver": "driver",
    "dev": "dev",
    "name": "name",
    "streamName": "stream-name",
    "latency": "latency",
    "clientName": "client-name",
    "connectPorts": "connect-ports",
}
#: Hyper-V features -> QEMU's CPU property.
HV_PROPS = {
    "relaxed": "hv-relaxed",
    "vapic": "hv-vapic",
    "vpindex": "hv-vpindex",
    "runtime": "hv-runtime",
    "synic": "hv-synic",
    "stimer": "hv-stimer",
    "reset": "hv-reset",
    "frequencies": "hv-frequencies",
    "reenlightenment": "hv-reenlightenment",
    "tlbflush": "hv-tlbflush",
    "ipi": "hv-ipi",
    "evmcs": "hv-evmcs",
    "avic": "hv-avic",
    "emsr_bitmap": "hv-emsr-bitmap",
    "xmm_input": "hv-xmm-input",
}
KVM_PROPS = {
    "hint-dedicated": "kvm-hint-dedicated",
    "poll-control": "kvm-poll-control",
    "pv-ipi": "kvm-pv-ipi",
}
#: SPICE option -> (QEMU's -spice key, how a value is spelled there).
_SPICE_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "image": ("image-compression", {}),
    "jpeg": ("jpeg-wan-compression", {}),
    "zlib": ("zlib-glz-wan-compression", {}),
    "playback": ("playback-compression", {}),
    "streaming": ("streaming-video", {}),
    "mouse": ("agent-mouse", {"client": "on", "server": "off"}),
    "clipboard": ("disable-copy-paste", {"yes": "off", "no": "on"}),
    "filetransfer": ("disable-agent-file-xfer", {"yes": "off", "no": "on"}),
}


def _json(props: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in props.items() if v is not None}, separators=(",", ":"))


def _kv(value: str) -> str:
    return value.replace(",", ",,")


def socket_path(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigUnsupportedError(
            f"unsupported configuration: socket path '{path}' is longer than a unix socket "
            "address allows"
        )
    return path


def swtpm_socket(runtime_dir: str, uuid: str) -> str:
    """Where a domain's swtpm listens for QEMU (its control channel)."""
    return socket_path(runtime_dir, f"{uuid[:8]}-swtpm.sock")


def virtiofs_socket(runtime_dir: str, uuid: str, alias: str) -> str:
    """Where the virtiofsd of a domain's share ``alias`` listens for QEMU."""
    return socket_path(runtime_dir, f"{uuid[:8]}-{alias}-fs.sock")


def nvram_blockdev_names() -> tuple[str, str]:
    return "libvirt-pflash0-format", "libvirt-pflash1-format"


# ---------------------------------------------------------------------------------------------
# ports and paths chosen when a domain starts


def needs_runtime_paths(d: DomainDef, *, spice_tls: bool = False, reassign: bool = True) -> bool:
    """Whether :func:`fill_spice` has something to fill in ``d`` (``reassign``: as there)."""
    if d.os.nvram is not None and d.os.nvram.path is None:
        return True
    return any(
        g.type == "spice"
        and (
            (
                g.listens
                and g.listens[0].type == "address"
                and g.autoport
                and (reassign or not _assigned(g.port))
            )
            or (g.listens and g.listens[0].type == "socket" and g.listens[0].socket is None)
            or (_wants_tls_port(g, spice_tls) and (reassign or not _assigned(g.tls_port)))
        )
        for g in d.graphics
    )


def _assigned(port: int | None) -> bool:
    return port is not None and port > 0


def _wants_tls_port(gfx: Graphics, spice_tls: bool) -> bool:
    """Whether a SPICE display on an address is given a TLS port at start: with SPICE TLS on,
    when it has an automatic port (unless every channel is plain) or ``tlsPort='-1'`` (as
    libvirt's allocator decides)."""
    if not spice_tls or not gfx.listens or gfx.listens[0].type != "address":
        return False
    if gfx.tls_port == -1 and not gfx.autoport:
        return True
    plain_only = gfx.default_mode == "insecure" and "secure" not in gfx.channels.values()
    return bool(gfx.autoport) and not plain_only


def fill_spice(
    d: DomainDef, runtime_dir: str, *, spice_tls: bool = False, reassign: bool = True
) -> None:
    """A SPICE display with an automatic port gets a free one (libvirt's allocator does the
    same, from 5900 up), and a TLS port too when ``spice_tls`` (SPICE TLS is on); a SPICE
    socket without a path gets one under ``runtime_dir``, and so does an NVRAM file of a
    definition prepared without an NVRAM directory.

    ``reassign=False`` keeps automatic ports already given (the live definition a start
    filled in: its argv must name the ports its live XML says, not probe again)."""
    if d.os.nvram is not None and d.os.nvram.path is None:
        # Prepared without an NVRAM directory (a conversion): beside the other runtime files.
        d.os.nvram.path = os.path.join(runtime_dir, f"{d.name}_VARS.fd")
    for gfx in d.graphics:
        if gfx.type != "spice" or not gfx.listens:
            continue
        lst = gfx.listens[0]
        if lst.type == "socket" and lst.socket is None:
            lst.socket = socket_path(runtime_dir, f"{d.uuid[:8]}-spice.sock")
        elif lst.type == "address" and gfx.autoport and (reassign or not _assigned(gfx.port)):
            gfx.port = free_tcp_port(lst.address or "127.0.0.1")
        if _wants_tls_port(gfx, spice_tls) and (reassign or not _assigned(gfx.tls_port)):
            host = lst.address or "127.0.0.1"
            port = free_tcp_port(host)
            if port == gfx.port:  # nothing listens on the plain port yet: the next one
                port = free_tcp_port(host, port + 1)
            gfx.tls_port = port


def free_tcp_port(host: str, first: int = 5900, last: int = 65535) -> int:
    """The first TCP port from ``first`` nobody listens on at ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(first, last + 1):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    continue
                raise ConfigUnsupportedError(
                    f"unsupported configuration: cannot listen on '{host}': {err.strerror}"
                ) from None
            return port
    raise ConfigUnsupportedError(f"unsupported configuration: no free port on '{host}'")


# ---------------------------------------------------------------------------------------------
# machine, memory, CPU


def firmware_args(b: _Builder) -> None:
    """-blockdev nodes of a pflash firmware and its NVRAM, or -bios for a ROM."""
    loader = b.d.os.loader
    if loader is None or loader.path is None:
        return
    if loader.type != "pflash":
        b.add("-bios", loader.path)
        return
    code, vars_ = nvram_blockdev_names()
    b.add(
        "-blockdev",
        _json(
            {
                "driver": "file",
                "filename": loader.path,
                "node-name": "libvirt-pflash0-storage",
                "auto-read-only": True,
                "discard": "unmap",
            }
        ),
    )
    b.add(
        "-blockdev",
        _json(
            {
                "node-name": code,
                "read-only": bool(loader.readonly),
                "driver": "raw",
                "file": "libvirt-pflash0-storage",
            }
        ),
    )
    nvram = b.d.os.nvram
    if nvram is not None:
        if nvram.path is None:
            raise ConfigUnsupportedError(
                "unsupported configuration: the UEFI NVRAM has no path; prepare the domain "
                "with an NVRAM directory first"
            )
        b.add(
            "-blockdev",
            _json(
                {
                    "driver": "file",
                    "filename": nvram.path,
                    "node-name": "libvirt-pflash1-storage",
                    "auto-read-only": True,
                    "discard": "unmap",
                }
            ),
        )
        b.add(
            "-blockdev",
            _json(
                {
                    "node-name": vars_,
                    "read-only": False,
                    "driver": "raw",
                    "file": "libvirt-pflash1-storage",
                }
            ),
        )


def machine_options(b: _Builder) -> list[str]:
    d = b.d
    opts: list[str] = []
    loader = d.os.loader
    if loader is not None and loader.type == "pflash" and loader.path is not None:
        code, vars_ = nvram_blockdev_names()
        opts.append(f"pflash0={code}")
        if d.os.nvram is not None:
            opts.append(f"pflash1={vars_}")
    mb = d.memory_backing
    if mb is not None and mb.nosharepages:
        opts.append("mem-merge=off")
    if needs_ram_object(d):
        opts.append("memory-backend=pc.ram")
    if d.features.ioapic is not None:
        opts.append("kernel_irqchip=split" if d.features.ioapic == "qemu" else "kernel_irqchip=on")
    return opts


def memory_args(b: _Builder) -> None:
    d = b.d
    mb = d.memory_backing
    if needs_ram_object(d):
        props = ram_backend(b, "pc.ram", d.initial_memory_kib, node=None)
        props["x-use-canonical-path-for-ramblock-id"] = False
        size = props.pop("size")
        props["size"] = -(-size // (1 << 20)) * (1 << 20)  # whole MiB, as -m has it
        b.add("-object", _json(props))
    numa_args(b)
    if mb is not None and mb.locked:
        b.add("-overcommit", "mem-lock=on")


def accel(b: _Builder) -> str:
    kib = b.d.features.tcg_tb_cache_kib
    if b.d.domain_type == "kvm":
        return "kvm"
    return "tcg" if kib is None else f"tcg,tb-size={kib // 1024}"


def cpu_options(d: DomainDef) -> list[str]:
    """-cpu properties of Hyper-V enlightenments, KVM features and the TSC."""
    opts: list[str] = []
    f = d.features
    clock = d.clock.timer("hypervclock")
    hv = f.hyperv
    if hv is not None and hv.mode == "passthrough":
        opts.append("hv-passthrough=on")
    elif hv is not None:
        for name, state in hv.features.items():
            if name == "spinlocks":
                if state == "on":
                    opts.append(f"hv-spinlocks={hv.spinlock_retries or 0x1FFF:#x}")
            elif name == "vendor_id":
                if state == "on" and hv.vendor_id:
                    opts.append(f"hv-vendor-id={_kv(hv.vendor_id)}")
            else:
                opts.append(f"{HV_PROPS[name]}={state}")
        if hv.stimer_direct is not None:
            opts.append(f"hv-stimer-direct={hv.stimer_direct}")
        if hv.tlbflush_direct is not None:
            opts.append(f"hv-tlbflush-direct={hv.tlbflush_direct}")
        if hv.tlbflush_extended is not None:
            opts.append(f"hv-tlbflush-ext={hv.tlbflush_extended}")
    if clock is not None and clock.present is not None:
        opts.append(f"hv-time={'on' if clock.present else 'off'}")
    if f.kvm.get("hidden") is not None:
        opts.append(f"kvm={'off' if f.kvm['hidden'] == 'on' else 'on'}")
    for name, prop in KVM_PROPS.items():
        if name in f.kvm:
            opts.append(f"{prop}={f.kvm[name]}")
    if f.pvspinlock is not None:
        opts.append(f"kvm-pv-unhalt={f.pvspinlock}")
    if f.pmu is not None:
        opts.append(f"pmu={f.pmu}")
    if any(p.model == "hyperv" for p in d.panics):
        opts.append("hv-crash=on")
    tsc = d.clock.timer("tsc")
    if tsc is not None and tsc.frequency is not None:
        opts.append(f"tsc-frequency={tsc.frequency}")
    return opts


def feature_args(b: _Builder) -> None:
    f = b.d.features
    if f.smm_tseg_kib is not None:
        b.add("-global", f"mch.extended-tseg-mbytes={f.smm_tseg_kib // 1024}")
    loader = b.d.os.loader
    if loader is not None and loader.secure:
        b.add("-global", "driver=cfi.pflash01,property=secure,value=on")


# ---------------------------------------------------------------------------------------------
# devices


def tpm_args(b: _Builder) -> None:
    for tpm in b.d.tpms:
        tpmdev = f"tpm-{tpm.alias}"
        if tpm.backend == "emulator":
            path = swtpm_socket(b.runtime_dir_or_fail("the TPM emulator's socket"), b.d.uuid)
            b.add("-chardev", f"socket,id=chrtpm,path={_kv(path)}")
            b.add("-tpmdev", f"emulator,id={tpmdev},chardev=chrtpm")
        else:
            dev = tpm.device_path or "/dev/tpm0"
            cancel = f"/sys/class/tpm/{os.path.basename(dev)}/device/cancel"
            b.add("-tpmdev", f"passthrough,id={tpmdev},path={dev},cancel-path={cancel}")
        b.device({"driver": tpm.model, "tpmdev": tpmdev, "id": tpm.alias})


def filesystem_args(b: _Builder) -> None:
    for i, fs in enumerate(b.d.filesystems):
        if fs.driver == "virtiofs":
            _virtiofs(b, i, fs)
        else:
            _9p(b, i, fs)


def _virtiofs(b: _Builder, i: int, fs: Filesystem) -> None:
    chardev = f"chr-vu-{fs.alias}"
    path = fs.source_socket or virtiofs_socket(
        b.runtime_dir_or_fail("virtiofsd's socket"), b.d.uuid, fs.alias or f"fs{i}"
    )
    b.add("-chardev", f"socket,id={chardev},path={_kv(path)}")
    props: dict[str, Any] = {
        "driver": "vhost-user-fs-pci",
        "id": fs.alias,
        "chardev": chardev,
        "queue-size": fs.queue or 1024,
        "tag": fs.target,
    }
    b.device(b._pci(props, fs.address, f"filesystem '{fs.target}'"))


def _9p(b: _Builder, i: int, fs: Filesystem) -> None:
    model = {"passthrough": "passthrough", "mapped": "mapped", "squash": "none"}
    fsdev = f"fsdev-{fs.alias}"
    opts = [
        f"local,security_model={model[fs.accessmode or 'passthrough']}",
        f"id={fsdev}",
        f"path={_kv(fs.source_dir or '')}",
    ]
    if fs.readonly:
        opts.append("readonly=on")
    if fs.multidevs not in (None, "default"):
        opts.append(f"multidevs={fs.multidevs}")
    if fs.fmode:
        opts.append(f"fmode={fs.fmode}")
    if fs.dmode:
        opts.append(f"dmode={fs.dmode}")
    b.add("-fsdev", ",".join(opts))
    props = {"driver": "virtio-9p-pci", "id": fs.alias, "fsdev": fsdev, "mount_tag": fs.target}
    b.device(b._pci(props, fs.address, f"filesystem '{fs.target}'"))


def sound_args(b: _Builder) -> None:
    audio = b.d.audios[0].id if b.d.audios else None
    for i, snd in enumerate(b.d.sounds):
        audiodev = f"audio{snd.audio_id or audio}" if (snd.audio_id or audio) else None
        props: dict[str, Any] = {"driver": SOUND_DEVICE[snd.model], "id": snd.alias}
        if snd.model in ("ich6", "ich9"):
            b.device(b._pci(props, snd.address, f"sound {i}"))
            for n, codec in enumerate(snd.codecs or ["duplex"]):
                b.device(
                    {
                        "driver": CODEC_DEVICE[codec],
                        "id": f"{snd.alias}-codec{n}",
                        "bus": f"{snd.alias}.0",
                        "cad": n,
                        "audiodev": audiodev,
                    }
                )
        elif snd.model == "usb":
            props["audiodev"] = audiodev
            b.device(b._usb(props, snd.address, f"sound {i}"))
        elif snd.model == "sb16":
            props["audiodev"] = audiodev
            b.device(props)
        else:
            props["audiodev"] = audiodev
            b.device(b._pci(props, snd.address, f"sound {i}"))


def spice_args(b: _Builder) -> None:
    for gfx in b.d.graphics:
        if gfx.type != "spice":
            continue
        lst = gfx.listens[0]
        opts: list[str] = []
        tls_port = gfx.tls_port if gfx.tls_port not in (None, -1, 0) else None
        _check_spice_tls(gfx, tls_port, b.tls.spice)
        if lst.type == "socket":
            if lst.socket is None:
                raise ConfigUnsupportedError(
                    "unsupported configuration: the SPICE socket has no path and no runtime "
                    "directory was given to place one"
                )
            opts += ["unix=on", f"addr={_kv(lst.socket)}"]
        else:
            if gfx.port in (None, -1) and tls_port is None:
                raise ConfigUnsupportedError(
                    "unsupported configuration: the SPICE display has no port yet"
                )
            host = lst.address or "127.0.0.1"
            if gfx.port not in (None, -1, 0):
                opts.append(f"port={gfx.port}")
            if tls_port is not None:
                opts.append(f"tls-port={tls_port}")
            opts.append(f"addr={host}")
            if tls_port is not None:
                opts.append(f"x509-dir={_kv(b.tls.spice_dir)}")
        if gfx.default_mode in ("secure", "insecure"):
            kind = "tls" if gfx.default_mode == "secure" else "plaintext"
            opts.append(f"{kind}-channel=default")
        if not has_password(gfx, b.tls):
            opts.append("disable-ticketing=on")  # else the ticket comes over the monitor
        for tag, value in gfx.options.items():
            key, spelled = _SPICE_KEYS[tag]
            opts.append(f"{key}={spelled.get(value, value)}")
        for name, mode in gfx.channels.items():
            if mode in ("secure", "insecure"):
                kind = "tls" if mode == "secure" else "plaintext"
                opts.append(f"{kind}-channel={name}")
        opts.append("seamless-migration=on")
        b.add("-spice", ",".join(opts))


def _check_spice_tls(gfx: Graphics, tls_port: int | None, spice_tls: bool) -> None:
    """Refuse SPICE TLS the configuration does not give (libvirt's checks and words)."""
    secure = gfx.default_mode == "secure" or "secure" in gfx.channels.values()
    if not spice_tls:
        if tls_port is not None:
            raise ConfigUnsupportedError(
                "unsupported configuration: spice TLS port set in XML configuration, but TLS "
                "is disabled (asvirt's [qemu] spice_tls)"
            )
        if gfx.tls_port == -1 and not gfx.autoport:
            raise ConfigUnsupportedError(
                "unsupported configuration: auto allocation of spice TLS port requested but "
                "spice TLS is disabled (asvirt's [qemu] spice_tls)"
            )
        if secure:
            raise ConfigUnsupportedError(
                "unsupported configuration: spice secure channels set in XML configuration, "
                "but TLS is disabled (asvirt's [qemu] spice_tls)"
            )
    elif secure and tls_port is None:
        raise ConfigUnsupportedError(
            "unsupported configuration: spice secure channels set in XML configuration, but "
            "TLS port is not provided"
        )


def redirdev_args(b: _Builder) -> None:
    for i, rd in enumerate(b.d.redirdevs):
        cid = f"char{rd.alias}"
        if rd.source is None:
            b.add("-chardev", f"spicevmc,id={cid},name=usbredir")
        else:  # a usbredir peer behind a chardev of its own (libvirt's charredir0)
            b._chardev(dataclasses.replace(rd.source, chardev_id=cid))
        props: dict[str, Any] = {"driver": "usb-redir", "chardev": cid, "id": rd.alias}
        props["filter"] = redir_filter(b.d)
        props = b._usb(props, rd.address, f"redirdev {i}")
        props["bootindex"] = rd.boot_order
        b.device(props)


def hostdev_args(b: _Builder) -> None:
    for i, hd in enumerate(b.d.hostdevs):
        b.device(_hostdev(b, i, hd))


def _hostdev(b: _Builder, i: int, hd: Hostdev) -> dict[str, Any]:
    if hd.type == "pci":
        props: dict[str, Any] = {"driver": "vfio-pci", "host": str(hd.pci), "id": hd.alias}
        props = b._pci(props, hd.address, f"host device {i}")
        props["bootindex"] = hd.boot_order
        if hd.rom_bar is not None:
            props["rombar"] = 1 if hd.rom_bar == "on" else 0
        props["romfile"] = hd.rom_file
        return props
    props = {"driver": "usb-host", "id": hd.alias}
    if hd.usb_bus is not None:
        props["hostdevice"] = f"/dev/bus/usb/{hd.usb_bus:03d}/{hd.usb_device:03d}"
    else:
        props["vendorid"] = hd.usb_vendor
        props["productid"] = hd.usb_product
    props = b._usb(props, hd.address, f"host device {i}")
    props["bootindex"] = hd.boot_order
    return props


def misc_args(b: _Builder) -> None:
    if b.d.features.vmcoreinfo == "on":
        b.device({"driver": "vmcoreinfo"})


def spice_chardev(chr_: Any, cid: str) -> list[str]:
    """-chardev options of a spicevmc or spiceport character device."""
    if chr_.type == "spicevmc":
        return [f"spicevmc,id={cid},name=vdagent"]
    return [f"spiceport,id={cid},name={chr_.spice_channel}"]


def audio_props(audio: Any) -> dict[str, Any]:
    """The backend part of an -audiodev object."""
    props: dict[str, Any] = {"id": f"audio{audio.id}", "driver": AUDIO_DRIVER[audio.type]}
    for key, value in audio.attrs.items():
        props[AUDIO_KEYS[key]] = value
    return props


__all__ = [
    "AUDIO_DRIVER",
    "cpu_options",
    "fill_spice",
    "free_tcp_port",
    "needs_runtime_paths",
    "swtpm_socket",
    "virtiofs_socket",
]
