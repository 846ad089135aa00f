"""Domain definition -> QEMU command line.

:func:`build_command` turns a prepared :class:`~asvirt.conf.domain.DomainDef` into the argv
that starts its QEMU, the way libvirt's QEMU driver does: ``-nodefaults`` and every device
spelled out with libvirt's ids (``virtio-disk0``, ``net0``, ``sata0-0-0``...), disks as
``-blockdev`` node graphs named ``libvirt-N-storage``/``libvirt-N-format``, devices as JSON
``-device`` objects, the QMP monitor on a unix socket, ``-S`` so the supervisor decides when
the guest runs, and ``-no-shutdown`` so a guest power-off leaves QEMU alive to report it.

The syntax is chosen from the probed capabilities, never by probing anything here. asvirt
needs QEMU 6.2 or newer (libvirt's own minimum), which accepts JSON ``-device``, ``-object``
and ``-audiodev``; ``-netdev`` and ``-chardev`` use the key=value syntax every version reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...conf.addresses import DriveAddress, PCIAddress, USBAddress, VirtioSerialAddress
from ...conf.devices import (
    LOCAL_DISPLAYS,
    SOCKET_NIC_TYPES,
    Chardev,
    Controller,
    Disk,
    GraphicsListen,
    Input,
    Interface,
    Rom,
    virtio_props,
)
from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.vcpus import boot_vcpus
from ...errors import ConfigUnsupportedError, OperationFailedError
from . import command_extra as extra
from . import command_more as more
from . import command_other as other
from . import command_tune as tune
from .capabilities import QemuCapabilities
from .displays import has_password
from .membacking import domain_memory_dir
from .netdisk import storage_node
from .postparse import (
    NIC_DEVICE,
    SCSI_DEVICE,
    USB_DEVICE,
    machine_family,
    prepare_domain,
    video_device,
)
from .secrets import (
    SHOWN_FILE,
    auth_props,
    cookie_secret_id,
    disk_secret_id,
    disk_secret_objects,
    secret_object,
)
from .tls import (
    VNC_CREDS_ID,
    TlsConfig,
    chardev_creds_id,
    creds_object,
    disk_creds_id,
    password_id,
)
from .vhostusergpu import chardev_id

#: The oldest QEMU asvirt drives (libvirt 11 has the same floor).
MIN_QEMU_VERSION = (6, 2, 0)
#: sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107


@dataclass(frozen=True)
class MonitorSpec:
    """Where the QMP monitor listens.

    ``fd``: a pre-opened *listening* unix socket passed to QEMU (QEMU accepts on it);
    ``path``: a path QEMU binds itself. Exactly one must be set.
    """

    fd: int | None = None
    path: str | None = None


def build_command(
    defn: DomainDef,
    caps: QemuCapabilities,
    *,
    monitor: MonitorSpec,
    log_path: str | None = None,
    runtime_dir: str | None = None,
    sandbox: bool = True,
    tap_fds: dict[str, list[int]] | None = None,
    vhost_fds: dict[str, list[int]] | None = None,
    memory_dir: str | None = None,
    tls: TlsConfig | None = None,
    secret_fds: dict[str, int] | None = None,
    vhost_user_fds: dict[str, int] | None = None,
) -> list[str]:
    """The QEMU argv for ``defn``, which must already be prepared (:func:`prepare_domain`).

    ``argv[0]`` is ``defn.emulator`` (else ``caps.binary``). ``log_path`` is accepted for
    interface stability and not used: QEMU's stdout and stderr go wherever the caller points
    them. ``runtime_dir`` is where unix sockets without a configured path are placed (a guest
    agent channel with ``<source mode='bind'/>``, a VNC socket); it defaults to the monitor
    socket's directory. ``sandbox`` turns on QEMU's seccomp sandbox where the binary has one.
    ``tap_fds`` maps the alias of a tap or macvtap interface (``network``, ``bridge``,
    ``ethernet``, ``direct``) to the descriptors of the tap made for it, one per queue,
    passed to QEMU as libvirt does (``-netdev tap,fd=N``, or ``fds=N:M:...`` for a
    multiqueue one); without them, QEMU is asked to create the tap itself (what
    ``domxml-to-native`` shows). ``vhost_fds`` maps the alias of such an interface to the
    ``/dev/vhost-net`` descriptors opened for it (:mod:`.vhostnet`), one per queue, passed
    as libvirt passes them (``vhost=on,vhostfd=N`` or ``vhostfds=N:M:...``).
    ``memory_dir`` is the domain's directory for ``<memoryBacking><source type='file'>``
    RAM (:func:`.membacking.domain_memory_dir`; default: libvirt's, for display).
    ``tls`` says which displays, NBD disks and TCP chardevs speak TLS, with which
    certificates (default: none does, as libvirt's default qemu.conf).
    ``secret_fds`` maps the id of each secret object (an encrypted disk's passphrase, a
    network disk's credentials or cookies, the password of an encrypted TLS key) to the
    read end of the pipe QEMU inherits holding its value (:mod:`.secrets`); without it, the
    argv names a placeholder (what ``domxml-to-native`` shows).
    ``vhost_user_fds`` maps the alias of a vhost-user video to QEMU's end of the socketpair
    of its vhost-user-gpu (:mod:`.vhostusergpu`); without it, ``fd=-1`` is shown.
    Raises :class:`ConfigUnsupportedError` for what this QEMU cannot do.
    """
    del log_path
    if (monitor.fd is None) == (monitor.path is None):
        raise ValueError("MonitorSpec needs exactly one of fd and path")
    if caps.version < MIN_QEMU_VERSION:
        raise ConfigUnsupportedError(
            f"unsupported configuration: QEMU {caps.version_string} is too old; asvirt needs "
            f"QEMU {'.'.join(map(str, MIN_QEMU_VERSION))} or newer"
        )
    if runtime_dir is None and monitor.path is not None:
        runtime_dir = os.path.dirname(monitor.path) or "."
    tls = tls or TlsConfig()
    # A start's live definition has its runtime paths and ports already (fill_runtime_paths):
    # they are kept, so that QEMU is given what the live XML says.
    if runtime_dir is not None and _needs_runtime_paths(defn, tls):
        defn = defn.copy()
        fill_runtime_paths(defn, runtime_dir, tls, reassign=False)
    builder = _Builder(defn, caps, sandbox=sandbox, tap_fds=tap_fds, tls=tls, vhost_fds=vhost_fds)
    builder.runtime_dir = runtime_dir
    builder.memory_dir = memory_dir
    builder.secret_fds = secret_fds or {}
    builder.vhost_user_fds = vhost_user_fds or {}
    return builder.build(monitor)


def domxml_to_native(
    xml_text: str,
    caps: QemuCapabilities,
    *,
    monitor_path: str,
    sandbox: bool = True,
    nvram_dir: str | None = None,
    memory_backing_dir: str | None = None,
    tls: TlsConfig | None = None,
) -> list[str]:
    """Parse, prepare and build: the argv ``start`` would run for ``xml_text``.

    A UEFI NVRAM file goes in ``nvram_dir`` (default: beside the monitor socket), file-backed
    RAM in a directory of the domain's under ``memory_backing_dir`` (default: libvirt's
    ``/var/lib/libvirt/qemu/ram``); this only names them, creating nothing (``start`` does).
    """
    nvram_dir = nvram_dir or os.path.dirname(monitor_path) or "."
    defn = prepare_domain(parse_domain_xml(xml_text), caps, nvram_dir=nvram_dir)
    memory_dir = None
    if memory_backing_dir is not None:
        memory_dir = str(domain_memory_dir(Path(memory_backing_dir), defn))
    return build_command(
        defn,
        caps,
        monitor=MonitorSpec(path=monitor_path),
        sandbox=sandbox,
        memory_dir=memory_dir,
        tls=tls,
    )


def fill_runtime_paths(
    defn: DomainDef, runtime_dir: str, tls: TlsConfig | None = None, *, reassign: bool = True
) -> None:
    """Give unix sockets that have no configured path one under ``runtime_dir`` (in place),
    and SPICE displays with automatic ports their ports (a TLS one too when ``tls`` has
    SPICE speak it); ``reassign=False`` keeps the ports a display already has.

    libvirt does the same when it starts a domain (the guest agent socket, a VNC socket),
    so the live XML names the socket a client should use.
    """
    for chr_ in defn.chardevs():
        if chr_.type == "unix" and chr_.source_path is None:
            name = chr_.target_name or chr_.alias or "chardev"
            chr_.source_path = _socket_path(runtime_dir, f"{defn.uuid[:8]}-{name}.sock")
    more.fill_spice(defn, runtime_dir, spice_tls=tls is not None and tls.spice, reassign=reassign)
    for gfx in defn.graphics:
        for lst in gfx.listens:
            if lst.type == "socket" and lst.socket is None:
                lst.socket = _socket_path(runtime_dir, f"{defn.uuid[:8]}-vnc.sock")


#: Where VNC listens when the XML names no address (libvirt's qemu.conf ``vnc_listen``).
VNC_DEFAULT_LISTEN = "127.0.0.1"


def fill_listen_addresses(defn: DomainDef) -> None:
    """Give VNC displays that listen on an unnamed address the default one (in place), as
    libvirt does when it starts a domain, so the live XML says where to connect
    (``virsh vncdisplay`` reads it there)."""
    for gfx in defn.graphics:
        if gfx.type != "vnc":
            continue
        if not gfx.listens:
            gfx.listens.append(GraphicsListen(type="address", address=VNC_DEFAULT_LISTEN))
        elif gfx.listens[0].type == "address" and not gfx.listens[0].address:
            gfx.listens[0].address = VNC_DEFAULT_LISTEN


def links_down(defn: DomainDef) -> list[str]:
    """Ids of the NICs configured with ``<link state='down'/>``.

    QEMU has no command-line switch for this: set each one down with QMP
    ``set_link {"name": ID, "up": false}`` before the guest runs, as libvirt does.
    """
    return [nic.alias for nic in defn.interfaces if nic.link_state == "down" and nic.alias]


def _needs_runtime_paths(defn: DomainDef, tls: TlsConfig) -> bool:
    if more.needs_runtime_paths(defn, spice_tls=tls.spice, reassign=False):
        return True
    return any(c.type == "unix" and c.source_path is None for c in defn.chardevs()) or any(
        lst.type == "socket" and lst.socket is None for g in defn.graphics for lst in g.listens
    )


def _socket_path(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ConfigUnsupportedError(
            f"unsupported configuration: socket path '{path}' is longer than a unix socket "
            "address allows; give the socket an explicit, shorter <source path=...>"
        )
    return path


def _sndbuf(nic: Interface) -> str:
    """A tap netdev's ``sndbuf=`` option, if the XML tunes it."""
    return f",sndbuf={nic.sndbuf}" if nic.sndbuf is not None else ""


def rom_props(rom: Rom | None) -> dict[str, Any]:
    """A PCI device's ``<rom>`` as QEMU's properties, as libvirt gives them: no ROM is an
    empty ``romfile``; ``bar`` is ``rombar`` (1 or 0)."""
    if rom is None:
        return {}
    if rom.enabled is False:
        return {"romfile": ""}
    props: dict[str, Any] = {}
    if rom.bar is not None:
        props["rombar"] = 1 if rom.bar == "on" else 0
    if rom.file is not None:
        props["romfile"] = rom.file
    return props


def netdev_id(nic: Interface, index: int | None = None) -> str:
    """QEMU's id for an interface's backend: ``host`` and its alias, as libvirt names it
    (``hostnet0``)."""
    if nic.alias:
        return f"host{nic.alias}"
    return f"hostnet{index}"


def tap_fds_arg(fds: Sequence[int | str], key: str = "fd") -> tuple[str, str]:
    """How ``-netdev tap`` (and ``netdev_add``) is given a tap's descriptors: ``fd`` for one,
    ``fds`` (``N:M:...``) for a multiqueue tap, a descriptor per queue pair, as libvirt
    passes them; ``key='vhostfd'``: vhost-net's, ``vhostfd``/``vhostfds`` likewise.
    Descriptors are numbers on the command line, ``getfd`` names over QMP."""
    if len(fds) == 1:
        return key, str(fds[0])
    return f"{key}s", ":".join(str(fd) for fd in fds)


def macvtap_fd_names(nic: Interface) -> list[str]:
    """What stands for the descriptors of a ``direct`` interface's macvtap on a command line
    built without them (domxml-to-native): QEMU cannot make a macvtap itself (an ``ifname=``
    tap would be a plain tap on no host interface), a start makes it on the host interface
    and passes its descriptors, one per queue. Shown as descriptor names (QEMU's syntax for
    a descriptor handed over the monitor) that say what they are: ``macvtap-eth0``, or
    ``macvtap-eth0-q0:...`` for a multiqueue one."""
    base = f"macvtap-{nic.source_dev or ''}"
    queues = nic.queues or 1
    return [base] if queues == 1 else [f"{base}-q{q}" for q in range(queues)]


def disk_hotplug(
    defn: DomainDef, caps: QemuCapabilities, disk: Disk, tls: TlsConfig | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What ``blockdev-add`` and ``device_add`` take to plug ``disk`` (prepared, and part of
    ``defn``) into a running QEMU: the same nodes and device the command line would have
    (an NBD node speaking TLS names its credentials object, :func:`disk_tls_object`)."""
    builder = _Builder(defn, caps, sandbox=False, tls=tls)
    nodes = builder.blockdev_nodes(disk) if disk.has_media else []
    props = builder._disk_device(disk, str(nodes[-1]["node-name"]) if nodes else None)
    return nodes, {k: v for k, v in props.items() if v is not None}


def media_nodes(
    defn: DomainDef, caps: QemuCapabilities, disk: Disk, tls: TlsConfig | None = None
) -> list[dict[str, Any]]:
    """The ``blockdev-add`` nodes of a removable disk's new media (bottom first)."""
    return _Builder(defn, caps, sandbox=False, tls=tls).blockdev_nodes(disk)


def disk_tls_object(disk: Disk, tls: TlsConfig) -> dict[str, Any] | None:
    """The ``tls-creds-x509`` object (``-object``, ``object-add``) of a disk whose NBD
    client speaks TLS, or None: the client credentials of ``nbd_tls_x509_cert_dir``."""
    if not tls.disk_tls(disk):
        return None
    obj_id = disk_creds_id(f"libvirt-{disk.node_index}-storage")
    password = password_id(obj_id, tls.nbd_secret)
    return creds_object(obj_id, tls.nbd_dir, server=False, verify=True, password_id=password)


def interface_hotplug(defn: DomainDef, caps: QemuCapabilities, nic: Interface) -> dict[str, Any]:
    """What ``device_add`` takes to plug ``nic`` (prepared, part of ``defn``), its backend
    (:func:`netdev_id`) being there already."""
    props = _Builder(defn, caps, sandbox=False).interface_device(nic, netdev_id(nic))
    return {k: v for k, v in props.items() if v is not None}


def usb_input_hotplug(defn: DomainDef, caps: QemuCapabilities, inp: Input) -> dict[str, Any]:
    """What ``device_add`` takes to plug the USB input ``inp`` (prepared, part of ``defn``):
    the device the command line would have."""
    props = {"driver": USB_INPUT_DEVICES[inp.type], "id": inp.alias}
    return _Builder(defn, caps, sandbox=False)._usb(props, inp.address, f"input {inp.alias}")


#: The QEMU device of each USB ``<input type>``.
USB_INPUT_DEVICES = {"mouse": "usb-mouse", "keyboard": "usb-kbd", "tablet": "usb-tablet"}


# ---------------------------------------------------------------------------------------------


def _is_cd_drive(disk: Disk) -> bool:
    """Whether a block-device cdrom is a real optical drive (QEMU's host_cdrom driver).

    libvirt asks the kernel; asvirt must not probe while building a command line, so it goes
    by the names Linux gives optical drives. Anything else is opened as a plain block device.
    """
    src = disk.source or ""
    return disk.device == "cdrom" and (
        src.startswith("/dev/cdrom") or re.fullmatch(r"/dev/(sr|scd)\d+", src) is not None
    )


def _kv(value: str) -> str:
    """Escape a value for QEMU's key=value option syntax (a comma is written twice)."""
    return value.replace(",", ",,")


def _json(props: dict[str, Any]) -> str:
    return json.dumps(props, separators=(",", ":"))


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


_CACHE = {  # cache mode -> (cache.direct, cache.no-flush, device write-cache)
    "none": (True, False, "on"),
    "writethrough": (False, False, "off"),
    "writeback": (False, False, "on"),
    "directsync": (True, False, "off"),
    "unsafe": (False, True, "on"),
}
_WATCHDOG_ACTION = {"dump": "pause"}  # QEMU has no 'dump'; libvirt pauses, then dumps
_ERROR_POLICY = {"enospace": "enospc"}


#: QEMU's seccomp sandbox settings, as libvirt sets them.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


class _Builder:
    def __init__(
        self,
        d: DomainDef,
        caps: QemuCapabilities,
        *,
        sandbox: bool,
        tap_fds: dict[str, list[int]] | None = None,
        tls: TlsConfig | None = None,
        vhost_fds: dict[str, list[int]] | None = None,
    ) -> None:
        self.d = d
        self.tls = tls or TlsConfig()
        self.tap_fds = tap_fds or {}
        self.vhost_fds = vhost_fds or {}
        self.caps = caps
        self.sandbox = sandbox
        self.argv: list[str] = []
        self.q35 = machine_family(d.os.machine) == "q35"
        if machine_family(d.os.machine) is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: machine type '{d.os.machine}' is not supported; "
                "was the definition prepared?"
            )
        self.bootindex = self._boot_indexes()
        #: Where helper programs' sockets are (see command_more); None: not known.
        self.runtime_dir: str | None = None
        #: The domain's directory of file-backed RAM (see membacking); None: libvirt's.
        self.memory_dir: str | None = None
        #: The pipes holding secrets' values, by secret object id (see build_command).
        self.secret_fds: dict[str, int] = {}
        self.vhost_user_fds: dict[str, int] = {}

    def runtime_dir_or_fail(self, what: str) -> str:
        if self.runtime_dir is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {what} needs a runtime directory to live in"
            )
        return self.runtime_dir

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def device(self, props: dict[str, Any]) -> None:
        self.add("-device", _json({k: v for k, v in props.items() if v is not None}))

    # -- the whole command line -------------------------------------------------------------------

    def build(self, monitor: MonitorSpec) -> list[str]:
        d = self.d
        self.add(d.emulator or self.caps.binary)
        self.add("-name", f"guest={_kv(d.name)},debug-threads=on")
        self.add("-S")
        more.firmware_args(self)
        self._machine()
        self.add("-accel", more.accel(self))
        self._cpu()
        self.add("-m", other.memory_size(d))
        self._smp()
        more.memory_args(self)
        self.add("-uuid", d.uuid)
        other.system_args(self)
        if not d.graphics:
            self.add("-display", "none")
        self.add("-no-user-config", "-nodefaults")
        if monitor.fd is not None:
            chardev = f"socket,id=charmonitor,fd={monitor.fd},server=on,wait=off"
        else:
            chardev = f"socket,id=charmonitor,path={_kv(monitor.path or '')},server=on,wait=off"
        self.add("-chardev", chardev)
        self.add("-mon", "chardev=charmonitor,id=monitor,mode=control")
        self._clock()
        self.add("-no-shutdown")
        more.feature_args(self)
        self._pm()
        self._boot()
        other.intel_iommu_args(self)
        self._controllers()
        other.virtio_iommu_args(self)
        other.memory_device_args(self)
        self._hubs()
        self._disks()
        more.filesystem_args(self)
        self._interfaces()
        self._serials()
        self._parallels()
        self._channels_and_consoles()
        self._inputs()
        other.smartcard_args(self)
        more.tpm_args(self)
        self._audio()
        self._graphics()
        more.spice_args(self)
        self._videos()
        more.sound_args(self)
        more.hostdev_args(self)
        more.redirdev_args(self)
        self._watchdogs()
        self._memballoon()
        other.rng_args(self)
        other.panic_args(self)
        other.shmem_args(self)
        other.vsock_args(self)
        extra.crypto_args(self)
        more.misc_args(self)
        extra.pstore_args(self)
        if self.sandbox and self.caps.has_option("sandbox"):
            # libvirt's default: QEMU's seccomp filter forbids what a confined emulator has no
            # business doing (obsolete syscalls, setuid, spawning programs, changing limits).
            self.add("-sandbox", SANDBOX)
        self.add("-msg", "timestamp=on")
        return self.argv

    # -- machine, CPU, memory ---------------------------------------------------------------------

    def _machine(self) -> None:
        d, f = self.d, self.d.features
        opts = [d.os.machine or "", "usb=off"]
        if f.vmport is not None:
            opts.append(f"vmport={f.vmport}")
        if f.smm is not None:
            opts.append(f"smm={f.smm}")
        opts.append(f"dump-guest-core={'on' if d.dump_core == 'on' else 'off'}")
        opts.extend(more.machine_options(self))
        opts.extend(extra.machine_options(d))
        hpet = d.clock.timer("hpet")
        if hpet is not None and hpet.present is False:
            if self.caps.at_least(7, 2):
                opts.append("hpet=off")
            else:
                self.add("-no-hpet")
        opts.append(f"acpi={_onoff(f.acpi == 'on')}")
        self.add("-machine", ",".join(opts))

    def _cpu(self) -> None:
        d = self.d
        cpu = d.cpu
        kvm = d.domain_type == "kvm"
        opts: list[str] = []
        if cpu is None or cpu.mode == "custom":
            opts.append(cpu.model if cpu is not None and cpu.model else "qemu64")
        elif cpu.mode == "host-passthrough":
            opts.append("host")
            if cpu.migratable is not None:
                opts.append(f"migratable={cpu.migratable}")
        elif cpu.mode == "host-model":
            # libvirt computes a named model from the host CPU; asvirt asks KVM for the host
            # CPU minus what cannot migrate, or TCG for everything it can emulate.
            opts.extend(["host", "migratable=on"] if kvm else ["max"])
        else:  # maximum
            opts.append("max")
        if cpu is not None:
            for feat in cpu.features:
                on = feat.policy in ("force", "require", "optional")
                opts.append(f"{feat.name}={_onoff(on)}")
        kvmclock = d.clock.timer("kvmclock")
        if kvmclock is not None and kvmclock.present is not None:
            opts.append(f"kvmclock={_onoff(kvmclock.present)}")
        if d.features.apic_eoi is not None:
            opts.append(f"kvm-pv-eoi={d.features.apic_eoi}")
        opts.extend(more.cpu_options(d))
        self.add("-cpu", ",".join(opts))

    def _smp(self) -> None:
        d = self.d
        # With <vcpus>, only the enabled vCPUs that are not hotpluggable boot; the runner
        # plugs the others as devices before the guest runs (or its saved state loads).
        booted = boot_vcpus(d.vcpu_states, d.vcpus)
        opts = [str(booted)]
        if booted != d.max_vcpus:
            opts.append(f"maxcpus={d.max_vcpus}")
        topo = d.cpu.topology if d.cpu is not None else None
        if topo is not None:
            opts.append(f"sockets={topo.sockets}")
            opts.append(f"dies={topo.dies or 1}")
            if self.caps.at_least(7, 0):
                opts.append(f"clusters={topo.clusters or 1}")
            opts.append(f"cores={topo.cores}")
            opts.append(f"threads={topo.threads}")
        else:
            opts.extend([f"sockets={d.max_vcpus}", "cores=1", "threads=1"])
        self.add("-smp", ",".join(opts))

    def _clock(self) -> None:
        c = self.d.clock
        if c.offset == "variable":
            now = time.time() + int(c.adjustment or 0)
            if c.basis == "localtime":
                base = _dt.datetime.fromtimestamp(now).strftime("%Y-%m-%dT%H:%M:%S")
            else:
                base = _dt.datetime.fromtimestamp(now, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        elif c.offset == "absolute":
            base = _dt.datetime.fromtimestamp(c.start or 0, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        else:
            base = c.offset  # utc | localtime
        opts = [f"base={base}"]
        rtc = c.timer("rtc")
        if rtc is not None:
            track = {"guest": "vm", "wall": "host", "realtime": "rt"}
            if rtc.track == "boot":
                raise ConfigUnsupportedError(
                    "unsupported configuration: <timer name='rtc' track='boot'> is not "
                    "supported by QEMU"
                )
            if rtc.track is not None:
                opts.append(f"clock={track[rtc.track]}")
            if rtc.tickpolicy == "catchup":
                opts.append("driftfix=slew")
            elif rtc.tickpolicy in ("merge", "discard"):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: rtc tickpolicy '{rtc.tickpolicy}'"
                )
            if rtc.present is False:
                raise ConfigUnsupportedError("unsupported configuration: a PC cannot lose its rtc")
        self.add("-rtc", ",".join(opts))
        pit = c.timer("pit")
        if pit is not None:
            if pit.tickpolicy in ("delay", "discard"):
                self.add("-global", f"kvm-pit.lost_tick_policy={pit.tickpolicy}")
            elif pit.tickpolicy == "merge":
                raise ConfigUnsupportedError("unsupported configuration: pit tickpolicy 'merge'")
            if pit.present is False:
                raise ConfigUnsupportedError("unsupported configuration: a PC cannot lose its pit")

    def _pm(self) -> None:
        d = self.d
        dev = "ICH9-LPC" if self.q35 else "PIIX4_PM"
        if d.suspend_to_mem is not None:
            self.add("-global", f"{dev}.disable_s3={0 if d.suspend_to_mem else 1}")
        if d.suspend_to_disk is not None:
            self.add("-global", f"{dev}.disable_s4={0 if d.suspend_to_disk else 1}")

    def _boot(self) -> None:
        os_ = self.d.os
        opts = []
        if os_.bootmenu is not None:
            opts.append(f"menu={_onoff(os_.bootmenu)}")
            if os_.bootmenu and os_.bootmenu_timeout is not None:
                opts.append(f"splash-time={os_.bootmenu_timeout}")
        if os_.reboot_timeout is not None:
            opts.append(f"reboot-timeout={os_.reboot_timeout}")
        opts.append("strict=on")
        self.add("-boot", ",".join(opts))
        root = self.d.controller("pci", 0)
        if root is not None and root.hotplug is not None:
            if self.q35:
                raise ConfigUnsupportedError(
                    "unsupported configuration: hotplug setting of pcie-root"
                )
            self.add("-global", f"PIIX4_PM.acpi-root-pci-hotplug={root.hotplug}")
        if os_.kernel is not None:
            self.add("-kernel", os_.kernel)
        if os_.initrd is not None:
            self.add("-initrd", os_.initrd)
        if os_.cmdline is not None:
            self.add("-append", os_.cmdline)

    def _boot_indexes(self) -> dict[int, int]:
        """id(device) -> bootindex, from <os><boot dev=...> or per-device <boot order>."""
        d = self.d
        out: dict[int, int] = {}
        bootable: list[Disk | Interface] = [*d.disks, *d.interfaces]
        for dev in bootable:
            if dev.boot_order is not None:
                out[id(dev)] = dev.boot_order
        if out:
            return out
        for n, kind in enumerate(d.os.boot_devices, start=1):
            if kind == "network":
                target: Any = d.interfaces[0] if d.interfaces else None
            else:
                want = {"cdrom": "cdrom", "fd": "floppy"}.get(kind, "disk")
                target = next((x for x in d.disks if x.device == want), None)
            if target is not None and id(target) not in out:
                out[id(target)] = n
        return out

    # -- PCI placement ----------------------------------------------------------------------------

    def _bus_name(self, index: int) -> str:
        ctl = self.d.controller("pci", index)
        if ctl is None or ctl.alias is None:
            raise ConfigUnsupportedError(f"unsupported configuration: PCI bus {index} is missing")
        return ctl.alias

    def _pci(self, props: dict[str, Any], addr: Any, what: str) -> dict[str, Any]:
        if not isinstance(addr, PCIAddress) or addr.is_unset():
            raise ConfigUnsupportedError(
                f"unsupported configuration: {what} has no PCI address; prepare the domain first"
            )
        props["bus"] = self._bus_name(addr.bus)
        if addr.multifunction is not None:
            props["multifunction"] = addr.multifunction == "on"
        props["addr"] = addr.qemu_addr
        return props

    # -- controllers ------------------------------------------------------------------------------

    def _controllers(self) -> None:
        order = ("pci", "usb", "scsi", "ide", "sata", "fdc", "virtio-serial")
        # CCID readers are USB devices: they come with their smartcards (command_other).
        ctls = [c for c in self.d.controllers if c.type != "ccid"]
        ctls = sorted(ctls, key=lambda c: order.index(c.type))
        ctls = self._parents_first(ctls)
        usb = [c for c in ctls if c.type == "usb"]
        for ctl in ctls:
            if ctl.type == "usb":
                if ctl is usb[0]:
                    self._usb_controllers(usb)
                continue
            self._controller(ctl)

    @staticmethod
    def _parents_first(ctls: list[Controller]) -> list[Controller]:
        """PCI controllers in index order, except that a bus always precedes what sits on it
        (QEMU resolves ``bus=`` when it reads each -device)."""
        pci = [c for c in ctls if c.type == "pci"]
        placed = {c.index for c in pci if c.model in ("pci-root", "pcie-root")}
        ordered = [c for c in pci if c.index in placed]
        pending = [c for c in pci if c.index not in placed]
        while pending:
            ready = [
                c for c in pending if isinstance(c.address, PCIAddress) and c.address.bus in placed
            ]
            if not ready:  # a cycle or a missing bus: let QEMU name the problem
                ordered.extend(pending)
                break
            for c in ready:
                ordered.append(c)
                placed.add(c.index)
                pending.remove(c)
        return ordered + [c for c in ctls if c.type != "pci"]

    def _controller(self, ctl: Controller) -> None:
        what = f"{ctl.type} controller {ctl.index}"
        if ctl.type == "pci":
            if ctl.model in ("pci-root", "pcie-root"):
                return
            props: dict[str, Any] = {"driver": ctl.model_name}
            if ctl.model == "pci-bridge":
                props["chassis_nr"] = ctl.chassis_nr
            elif ctl.model == "pcie-root-port":
                props["port"] = ctl.port
                props["chassis"] = ctl.chassis
                if ctl.hotplug is not None:
                    props["hotplug"] = ctl.hotplug == "on"
            props["id"] = ctl.alias
            self.device(self._pci(props, ctl.address, what))
        elif ctl.type == "scsi":
            props = {"driver": SCSI_DEVICE[ctl.model or ""], "id": ctl.alias}
            props["num_queues"] = ctl.queues
            props["cmd_per_lun"] = ctl.cmd_per_lun
            props["max_sectors"] = ctl.max_sectors
            if ctl.ioeventfd is not None:
                props["ioeventfd"] = ctl.ioeventfd == "on"
            if ctl.iothread is not None:
                props["iothread"] = f"iothread{ctl.iothread}"
            self.device(self._pci(props, ctl.address, what))
        elif ctl.type == "fdc":
            self._fdc()
        elif ctl.type == "sata":
            if self.q35 and ctl.index == 0:
                return  # the ICH9 AHCI controller is part of the machine
            self.device(self._pci({"driver": "ahci", "id": ctl.alias}, ctl.address, what))
        elif ctl.type == "virtio-serial":
            props = {
                "driver": "virtio-serial-pci",
                "id": ctl.alias,
                "max_ports": ctl.ports,
                "vectors": ctl.vectors,
            }
            self.device(self._pci(props, ctl.address, what))
        # ide 0 (PIIX3) and fdc 0 are part of the i440FX machine: nothing to add.

    def _fdc(self) -> None:
        """The ISA floppy controller: the PC's own (only its boot order is set), or one
        added to a Q35 machine, which has none. A floppy boots through its controller."""
        boot: dict[str, int] = {}
        for disk in self.d.disks:
            index = self.bootindex.get(id(disk))
            if disk.bus == "fdc" and index is not None and isinstance(disk.address, DriveAddress):
                boot["bootindexA" if disk.address.unit == 0 else "bootindexB"] = index
        if self.q35:
            self.device({"driver": "isa-fdc", **boot})
        else:
            for key, index in boot.items():
                self.add("-global", f"isa-fdc.{key}={index}")

    def _usb_controllers(self, usb: list[Controller]) -> None:
        # Per index, the controller that owns the bus goes first: companions name it.
        for index in sorted({c.index for c in usb}):
            group = [c for c in usb if c.index == index]
            group.sort(key=lambda c: c.model in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3"))
            for ctl in group:
                if ctl.model == "none":
                    continue
                what = f"USB controller {ctl.index}"
                props: dict[str, Any] = {"driver": USB_DEVICE[ctl.model or ""]}
                if ctl.master_startport is not None:
                    master = f"usb{ctl.index}" if ctl.index else "usb"
                    props["masterbus"] = f"{master}.0"
                    props["firstport"] = ctl.master_startport
                else:
                    if ctl.ports is not None:
                        props["p2"] = ctl.ports
                        props["p3"] = ctl.ports
                    props["id"] = ctl.alias
                self.device(self._pci(props, ctl.address, what))

    # -- disks ------------------------------------------------------------------------------------

    def _disks(self) -> None:
        tune.throttle_objects(self)
        for disk in self.d.disks:
            if disk.type == "volume":
                # Resolved to a file when the domain starts (see asvirt.hypervisor.volumes).
                raise OperationFailedError(
                    f"disk '{disk.target}' names volume '{disk.source_volume}' of pool "
                    f"'{disk.source_pool}', which has not been resolved to a path"
                )
            for sid in disk_secret_objects(disk, self.tls):
                self.secret(sid)
            top = self._blockdevs(disk) if disk.has_media else None
            self.device(self._disk_device(disk, top))

    def secret(self, sid: str) -> None:
        """Add the ``secret`` object ``sid``, reading the pipe QEMU inherits for it."""
        fd = self.secret_fds.get(sid)
        file = SHOWN_FILE if fd is None else f"/proc/self/fd/{fd}"
        self.add("-object", _json(secret_object(sid, file)))

    def _blockdevs(self, disk: Disk) -> str:
        creds = disk_tls_object(disk, self.tls)
        if creds is not None:
            self.add("-object", _json(creds))
        nodes = self.blockdev_nodes(disk)
        for node in nodes:
            self.add("-blockdev", _json(node))
        return str(nodes[-1]["node-name"])

    def blockdev_nodes(self, disk: Disk) -> list[dict[str, Any]]:
        """The ``-blockdev`` nodes of a disk's media, bottom (storage) first: the command
        line's and ``blockdev-add``'s (hotplug, media change) alike."""
        nodes: list[dict[str, Any]] = []
        n = disk.node_index
        storage_name = f"libvirt-{n}-storage"
        if disk.type == "block":
            driver = "host_cdrom" if _is_cd_drive(disk) else "host_device"
        else:
            driver = "file"
        readonly = disk.readonly or disk.device == "cdrom"
        layered = disk.has_format_node
        cache = None
        if disk.cache not in (None, "default"):
            direct, no_flush, _ = _CACHE[disk.cache]
            cache = {"direct": direct, "no-flush": no_flush}
        if disk.net is not None:
            storage: dict[str, Any] = storage_node(disk.net)
            if self.tls.disk_tls(disk):
                storage["tls-creds"] = disk_creds_id(storage_name)
                if disk.net.tls_hostname is not None:
                    storage["tls-hostname"] = disk.net.tls_hostname
            if disk.net.auth is not None:
                storage.update(auth_props(disk))
            if disk.net.cookies:
                storage["cookie-secret"] = cookie_secret_id(disk)
        else:
            storage = {"driver": driver, "filename": disk.source}
        if disk.io is not None:
            storage["aio"] = disk.io
        storage["node-name"] = storage_name
        if layered:
            storage["auto-read-only"] = True
            storage["discard"] = "unmap"
        else:
            storage["read-only"] = readonly
            if disk.discard is not None:
                storage["discard"] = disk.discard
            if disk.detect_zeroes is not None:
                storage["detect-zeroes"] = self._detect_zeroes(disk)
        if cache is not None:
            storage["cache"] = cache
        nodes.append(storage)
        top = storage_name
        if layered:
            fmt: dict[str, Any] = {"node-name": f"libvirt-{n}-format", "read-only": readonly}
            if disk.discard is not None:
                fmt["discard"] = disk.discard
            if cache is not None:
                fmt["cache"] = cache
            if disk.detect_zeroes is not None:
                fmt["detect-zeroes"] = self._detect_zeroes(disk)
            fmt["driver"] = disk.format
            if disk.encryption is not None:
                if disk.format == "raw":  # a raw LUKS image: QEMU's luks driver
                    fmt["driver"] = "luks"
                    fmt["key-secret"] = disk_secret_id(disk)
                else:  # qcow2's own LUKS encryption
                    fmt["encrypt"] = {"format": "luks", "key-secret": disk_secret_id(disk)}
            fmt["file"] = storage_name
            nodes.append(fmt)
            top = f"libvirt-{n}-format"
        if disk.copy_on_read == "on":
            cor = {
                "driver": "copy-on-read",
                "node-name": f"libvirt-CoR-{disk.target}",
                "file": top,
                "discard": "unmap",
            }
            nodes.append(cor)
            top = cor["node-name"]
        if disk.iotune is not None:
            nodes.append(tune.throttle_node(disk, top))
        return nodes

    @staticmethod
    def _detect_zeroes(disk: Disk) -> str:
        # 'unmap' only works when discards reach the storage; libvirt falls back to 'on'.
        if disk.detect_zeroes == "unmap" and disk.discard != "unmap":
            return "on"
        return disk.detect_zeroes or "off"

    def _disk_device(self, disk: Disk, drive: str | None) -> dict[str, Any]:
        cdrom = disk.device == "cdrom"
        addr = disk.address
        props: dict[str, Any] = {}
        if disk.bus == "virtio":
            props = self._pci({"driver": "virtio-blk-pci"}, addr, f"disk '{disk.target}'")
            if disk.iothread is not None:
                props["iothread"] = f"iothread{disk.iothread}"
        elif disk.bus == "usb":
            props = self._usb({"driver": "usb-storage"}, addr, f"disk '{disk.target}'")
        else:
            assert isinstance(addr, DriveAddress)
            ctl = self.d.controller(disk.bus, addr.controller)
            if ctl is None or ctl.alias is None:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: disk '{disk.target}' is on {disk.bus} "
                    f"controller {addr.controller}, which does not exist"
                )
            if disk.bus == "ide":
                props = {"driver": "ide-cd" if cdrom else "ide-hd"}
                props["bus"] = f"ide.{addr.bus}"
                props["unit"] = addr.unit
            elif disk.bus == "sata":
                props = {"driver": "ide-cd" if cdrom else "ide-hd"}
                props["bus"] = f"{ctl.alias}.{addr.unit}"
            elif disk.bus == "fdc":
                props = {"driver": "floppy", "unit": addr.unit}
            else:
                lun = disk.device == "lun"  # the host's SCSI device itself: scsi-block
                driver = "scsi-block" if lun else "scsi-cd" if cdrom else "scsi-hd"
                props = {"driver": driver, "bus": f"{ctl.alias}.0"}
                if ctl.model == "lsilogic":
                    props["scsi-id"] = addr.unit
                else:
                    props["channel"] = addr.bus
                    props["scsi-id"] = addr.target
                    props["lun"] = addr.unit
                if not lun:  # scsi-block reports the host device's own identity
                    props["device_id"] = disk.serial or f"drive-{disk.alias}"
        if drive is not None:
            props["drive"] = drive
            if disk.shareable:
                props["share-rw"] = True
        props["id"] = disk.alias
        if disk.bus == "usb":
            props["removable"] = disk.removable == "on"
        if disk.bus != "fdc":  # a floppy boots through its controller (_fdc)
            props["bootindex"] = self.bootindex.get(id(disk))
        if disk.cache not in (None, "default"):
            props["write-cache"] = _CACHE[disk.cache][2]
        if not cdrom:
            for key, policy in (("werror", disk.error_policy), ("rerror", disk.rerror_policy)):
                if policy is not None:
                    props[key] = _ERROR_POLICY.get(policy, policy)
            if disk.error_policy not in (None, "enospace") and disk.rerror_policy is None:
                props["rerror"] = disk.error_policy  # reads follow the write policy
        props["rotation_rate"] = disk.rotation_rate
        tune.disk_device_props(disk, props)
        if disk.wwn is not None:
            props["wwn"] = int(disk.wwn, 16)
        if disk.serial is not None:
            props["serial"] = disk.serial
        return props

    # -- network ----------------------------------------------------------------------------------

    def _interfaces(self) -> None:
        for i, nic in enumerate(self.d.interfaces):
            netdev = netdev_id(nic, i)
            fds = self.tap_fds.get(nic.alias or "")
            if nic.type == "user":
                self.add("-netdev", f"user,id={netdev}")
            elif nic.type in SOCKET_NIC_TYPES or nic.type == "vhostuser":
                self.add(*extra.netdev_args(nic, netdev, self.caps))
            elif fds or nic.type == "direct":
                key, value = tap_fds_arg(fds or macvtap_fd_names(nic))
                self.add(
                    "-netdev", f"tap,{key}={value}{_sndbuf(nic)}{self._vhost(nic)},id={netdev}"
                )
            else:
                ifname = _kv(nic.target_dev or "vnet%d")
                queues = f",queues={nic.queues}" if (nic.queues or 1) > 1 else ""
                self.add(
                    "-netdev",
                    f"tap,id={netdev},ifname={ifname},script=no,downscript=no{queues}"
                    f"{_sndbuf(nic)}{self._vhost(nic)}",
                )
            self.device(self.interface_device(nic, netdev))

    def _vhost(self, nic: Interface) -> str:
        """A tap netdev's vhost-net options: the descriptors a start opened for it, or, shown
        without them (domxml-to-native), ``vhost=on`` where the XML demands it."""
        fds = self.vhost_fds.get(nic.alias or "")
        if fds:
            key, value = tap_fds_arg(fds, "vhostfd")
            return f",vhost=on,{key}={value}"
        return ",vhost=on" if nic.driver_name == "vhost" else ""

    def interface_device(self, nic: Interface, netdev: str) -> dict[str, Any]:
        props: dict[str, Any] = {
            "driver": NIC_DEVICE[nic.model or "rtl8139"],
            "netdev": netdev,
            "id": nic.alias,
            "mac": nic.mac,
        }
        if nic.model == "virtio":
            props.update(extra.virtio_net_props(nic))
            props["host_mtu"] = nic.mtu
        if nic.queues is not None and nic.queues > 1:
            # As libvirt: multiqueue, with an MSI-X vector per queue and two more.
            props["mq"] = True
            props["vectors"] = 2 * nic.queues + 2
        props = self._pci(props, nic.address, f"interface '{nic.alias}'")
        props["bootindex"] = self.bootindex.get(id(nic))
        props.update(rom_props(nic.rom))
        props["acpi-index"] = nic.acpi_index
        return props

    # -- character devices ------------------------------------------------------------------------

    def _chardev(self, chr_: Chardev) -> str:
        cid = chr_.chardev_id or f"char{chr_.alias}"
        if chr_.type == "pty":
            opts = [f"pty,id={cid}"]
        elif chr_.type == "file":
            opts = [f"file,id={cid},path={_kv(chr_.source_path or '')}"]
            if chr_.source_append is not None:
                opts.append(f"append={chr_.source_append}")
        elif chr_.type == "unix":
            if chr_.source_path is None:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: {chr_.kind} '{chr_.alias}' has no socket path "
                    "and no runtime directory was given to place one"
                )
            opts = [f"socket,id={cid},path={_kv(chr_.source_path)}"]
            opts.extend(self._socket_mode(chr_))
        elif chr_.type == "tcp":
            opts = [f"socket,id={cid},host={chr_.host or ''},port={chr_.service}"]
            if chr_.protocol == "telnet":
                opts.append("telnet=on")
            opts += self.socket_tls(cid, chr_.tls, server=chr_.source_mode == "bind")
            opts.extend(self._socket_mode(chr_))
        elif chr_.type == "udp":
            opts = [f"udp,id={cid},host={chr_.host or ''},port={chr_.service}"]
            if chr_.bind_host is not None:
                opts.append(f"localaddr={chr_.bind_host}")
            if chr_.bind_service is not None:
                opts.append(f"localport={chr_.bind_service}")
        elif chr_.type == "pipe":
            opts = [f"pipe,id={cid},path={_kv(chr_.source_path or '')}"]
        elif chr_.type == "dev":
            # A parallel port's host device is a parport, anything else a tty (as libvirt).
            backend = "parport" if chr_.kind == "parallel" else "tty"
            opts = [f"{backend},id={cid},path={_kv(chr_.source_path or '')}"]
        elif chr_.type in ("spicevmc", "spiceport"):
            opts = more.spice_chardev(chr_, cid)
        else:  # vc | null | stdio
            opts = [f"{chr_.type},id={cid}"]
        if chr_.log_file is not None:
            opts.append(f"logfile={_kv(chr_.log_file)}")
            if chr_.log_append is not None:
                opts.append(f"logappend={chr_.log_append}")
        self.add("-chardev", ",".join(opts))
        return cid

    def socket_tls(self, cid: str, tls: bool | None, *, server: bool) -> list[str]:
        """The ``tls-creds=`` of TCP socket chardev ``cid`` if it speaks TLS (its ``<source
        tls=>`` being ``tls``), its credentials object added before it; else nothing."""
        if not self.tls.tcp_tls(tls):
            return []
        creds = chardev_creds_id(cid)
        password = password_id(cid, self.tls.chardev_secret)
        self.tls_creds(creds, self.tls.chardev_dir, server, self.tls.chardev_verify, password)
        return [f"tls-creds={creds}"]

    def tls_creds(
        self, obj_id: str, directory: str, server: bool, verify: bool, password: str | None
    ) -> None:
        """Add a ``tls-creds-x509`` object, after the ``secret`` object of its key's password
        (``password``: its id) when the key is encrypted."""
        if password is not None:
            self.secret(password)
        obj = creds_object(obj_id, directory, server=server, verify=verify, password_id=password)
        self.add("-object", _json(obj))

    def _socket_mode(self, chr_: Chardev) -> list[str]:
        """Listen, or connect (retrying): the options of a unix or TCP socket chardev."""
        opts = []
        if chr_.source_mode == "bind":
            opts.append("server=on,wait=off")
        elif chr_.reconnect is not False:
            # A client socket whose listener is not up yet would make QEMU refuse to
            # start. asvirt lets it retry instead (every second unless <reconnect> says
            # otherwise); <reconnect enabled='no'/> restores fail-at-start.
            opts.append(extra.reconnect_option(self.caps, chr_.reconnect_timeout or 1))
        return opts

    def _serials(self) -> None:
        for i, ser in enumerate(self.d.serials):
            cid = self._chardev(ser)
            if ser.target_type == "pci-serial":
                props = {"driver": "pci-serial", "chardev": cid, "id": ser.alias}
                self.device(self._pci(props, ser.address, f"serial {i}"))
            elif ser.target_type == "usb-serial":
                props = {"driver": "usb-serial", "chardev": cid, "id": ser.alias}
                self.device(self._usb(props, ser.address, f"serial {i}"))
            else:
                self.device(
                    {
                        "driver": "isa-serial",
                        "chardev": cid,
                        "id": ser.alias,
                        "index": ser.target_port,
                    }
                )

    def _parallels(self) -> None:
        for par in self.d.parallels:
            cid = self._chardev(par)
            self.device({"driver": "isa-parallel", "chardev": cid, "id": par.alias})

    def _channels_and_consoles(self) -> None:
        # Channels first: they name their ports; consoles then take what is left.
        for chr_ in self.d.channels:
            cid = self._chardev(chr_)
            if chr_.target_type == "guestfwd":
                self.add("-netdev", extra.guestfwd_netdev(chr_, cid))
                continue
            props = {"driver": "virtserialport", **self._vser(chr_), "chardev": cid}
            props["id"] = chr_.alias
            props["name"] = chr_.target_name
            self.device(props)
        for con in self.d.consoles:
            if con.target_type != "virtio":
                continue  # the serial console is serial port 0, already there
            cid = self._chardev(con)
            self.device(
                {"driver": "virtconsole", **self._vser(con), "chardev": cid, "id": con.alias}
            )

    def _vser(self, chr_: Chardev) -> dict[str, Any]:
        addr = chr_.address
        if not isinstance(addr, VirtioSerialAddress) or addr.port is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {chr_.kind} '{chr_.alias}' has no virtio-serial "
                "port; prepare the domain first"
            )
        ctl = self.d.controller("virtio-serial", addr.controller)
        if ctl is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: virtio-serial controller {addr.controller} is missing"
            )
        return {"bus": f"{ctl.alias}.0", "nr": addr.port}

    # -- input ------------------------------------------------------------------------------------

    def _usb(self, props: dict[str, Any], addr: Any, what: str) -> dict[str, Any]:
        if not isinstance(addr, USBAddress) or addr.port is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {what} has no USB port; prepare the domain first"
            )
        props["bus"] = f"{'usb' if addr.bus == 0 else f'usb{addr.bus}'}.0"
        props["port"] = addr.port
        return props

    def _hubs(self) -> None:
        # Before anything plugs into them (USB disks come next), as libvirt orders them.
        for i, hub in enumerate(self.d.hubs):
            self.device(self._usb({"driver": "usb-hub", "id": hub.alias}, hub.address, f"hub {i}"))

    def _inputs(self) -> None:
        for i, inp in enumerate(self.d.inputs):
            if inp.bus == "usb":
                props = {"driver": USB_INPUT_DEVICES[inp.type], "id": inp.alias}
                self.device(self._usb(props, inp.address, f"input {i}"))
            elif inp.type == "passthrough":
                props = {"driver": "virtio-input-host-pci", "id": inp.alias, "evdev": inp.evdev}
                self.device(self._pci(props, inp.address, f"input {i}"))
            elif inp.bus == "virtio":
                props = {"driver": f"virtio-{inp.type}-pci", "id": inp.alias}
                self.device(self._pci(props, inp.address, f"input {i}"))
            elif inp.type == "evdev":
                obj: dict[str, Any] = {"qom-type": "input-linux", "id": inp.alias}
                obj["evdev"] = inp.evdev
                if inp.repeat is not None:
                    obj["repeat"] = inp.repeat == "on"
                if inp.grab == "all":
                    obj["grab_all"] = True
                obj["grab-toggle"] = inp.grab_toggle
                self.add("-object", _json({k: v for k, v in obj.items() if v is not None}))

    # -- audio, graphics, video -------------------------------------------------------------------

    def _audio(self) -> None:
        keys = {
            "mixingEngine": "mixing-engine",
            "fixedSettings": "fixed-settings",
            "voices": "voices",
            "bufferLength": "buffer-length",
        }
        for audio in self.d.audios:
            props: dict[str, Any] = more.audio_props(audio)
            if audio.timer_period is not None:
                props["timer-period"] = audio.timer_period
            for direction, qkey in (("input", "in"), ("output", "out")):
                opts = audio.directions.get(direction)
                if not opts:
                    continue
                sub: dict[str, Any] = {}
                for key, value in opts.items():
                    if key == "settings" and isinstance(value, dict):
                        sub.update(value)
                    elif value in ("yes", "no"):
                        sub[keys[key]] = value == "yes"
                    else:
                        sub[keys.get(key) or more.AUDIO_KEYS[key]] = value
                props[qkey] = sub
            self.add("-audiodev", _json(props))

    def _graphics(self) -> None:
        for gfx in self.d.graphics:
            if gfx.type in LOCAL_DISPLAYS:
                self.add(*extra.local_display_args(gfx))
            if gfx.type != "vnc":
                continue  # SPICE: command_more
            lst = gfx.listens[0] if gfx.listens else None
            if lst is None or lst.type == "address":
                host = lst.address if lst is not None and lst.address else VNC_DEFAULT_LISTEN
                if ":" in host:
                    host = f"[{host}]"
                if gfx.autoport is not False and (gfx.port in (None, -1) or gfx.autoport):
                    opts = [f"{host}:0", "to=99"]  # QEMU picks the first free display
                else:
                    opts = [f"{host}:{(gfx.port or 5900) - 5900}"]
            elif lst.type == "socket":
                opts = [f"vnc=unix:{_kv(lst.socket or '')}"]
            else:
                opts = ["none"]
            if gfx.websocket is not None:
                opts.append("websocket=on" if gfx.websocket == -1 else f"websocket={gfx.websocket}")
            if gfx.share_policy is not None:
                opts.append(f"share={gfx.share_policy}")
            if has_password(gfx, self.tls):
                opts.append("password=on")  # the password itself: over the monitor
            if self.tls.vnc_tls(gfx):
                password = password_id(VNC_CREDS_ID, self.tls.vnc_secret)
                self.tls_creds(VNC_CREDS_ID, self.tls.vnc_dir, True, self.tls.vnc_verify, password)
                opts.append(f"tls-creds={VNC_CREDS_ID}")
            if self.d.audios:
                opts.append(f"audiodev=audio{self.d.audios[0].id}")
            self.add("-vnc", ",".join(opts))
            if gfx.keymap is not None:
                self.add("-k", gfx.keymap)

    def _videos(self) -> None:
        for i, video in enumerate(self.d.videos):
            if video.model == "none" or video.model is None:
                continue
            props: dict[str, Any] = {"driver": video_device(video, i)}
            props["id"] = video.alias
            if video.model in ("vga", "vmvga"):
                props["vgamem_mb"] = (video.vram or 16384) // 1024
            elif video.model == "ramfb":  # firmware framebuffer in guest RAM: no PCI
                self.device(props)
                continue
            elif video.model == "qxl":
                props["max_outputs"] = video.heads or 1
                props["ram_size"] = (video.ram or 65536) * 1024
                props["vram_size"] = (video.vram or 65536) * 1024
                props["vram64_size_mb"] = (video.vram64 or 0) // 1024
                props["vgamem_mb"] = (video.vgamem or 16384) // 1024
            elif video.model == "virtio":
                props["max_outputs"] = video.heads or 1
                if video.driver_name == "vhostuser":
                    # Its GPU is a vhost-user-gpu, on a socketpair QEMU inherits (libvirt's).
                    chardev = chardev_id(video.alias or f"video{i}")
                    fd = self.vhost_user_fds.get(video.alias or f"video{i}", -1)
                    self.add("-chardev", f"socket,id={chardev},fd={fd}")
                    props["chardev"] = chardev
                if video.blob is not None:
                    props["blob"] = video.blob == "on"
                props.update(virtio_props(video.virtio))
            elif video.model == "bochs":
                props["vgamem"] = (video.vram or 16384) * 1024
            if video.resolution is not None:
                props["xres"], props["yres"] = video.resolution
            self.device(self._pci(props, video.address, f"video {i}"))

    # -- the rest ---------------------------------------------------------------------------------

    def _watchdogs(self) -> None:
        wds = self.d.watchdogs
        for i, wd in enumerate(wds):
            if wd.model == "ib700":
                self.device({"driver": "ib700", "id": wd.alias})
            elif wd.model == "i6300esb":
                self.device(
                    self._pci({"driver": "i6300esb", "id": wd.alias}, wd.address, f"watchdog {i}")
                )
            else:  # itco: the TCO timer of the ICH9 LPC; let it reset the machine
                self.add("-global", "ICH9-LPC.noreboot=off")
        if wds:
            action = wds[0].action or "reset"
            self.add("-watchdog-action", _WATCHDOG_ACTION.get(action, action))

    def _memballoon(self) -> None:
        bal = self.d.memballoon
        if bal is None or bal.model == "none":
            return
        props: dict[str, Any] = {"driver": "virtio-balloon-pci", "id": bal.alias}
        if bal.autodeflate is not None:
            props["deflate-on-oom"] = bal.autodeflate == "on"
        if bal.free_page_reporting is not None:
            props["free-page-reporting"] = bal.free_page_reporting == "on"
        props.update(virtio_props(bal.virtio))
        self.device(self._pci(props, bal.address, "the memory balloon"))
