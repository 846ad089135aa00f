"""Command-line pieces of the devices issue 12 brought in last: socket and vhost-user
network backends, NVDIMM/virtio-pmem/SGX memory, virtio-crypto, the ACPI ERST pstore,
guestfwd channels, and the displays without a network listener (egl-headless, SDL, D-Bus).

Called by :class:`~asvirt.drivers.qemu.command._Builder`, each as libvirt 9 builds it for
QEMU 7.2 (its ``tests/qemuxml2argvdata`` are the reference).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ...conf.devices import Chardev, Graphics, Interface, virtio_props
from ...conf.domain import DomainDef
from ...conf.memory import MemoryDevice

if TYPE_CHECKING:
    from .capabilities import QemuCapabilities
    from .command import _Builder


def _json(props: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in props.items() if v is not None}, separators=(",", ":"))


def _kv(value: str) -> str:
    return value.replace(",", ",,")


# -- network backends -------------------------------------------------------------------------


def reconnect_option(caps: QemuCapabilities, seconds: int) -> str:
    """A client socket chardev's retry interval: ``reconnect-ms`` from QEMU 9.2 (which
    deprecates ``reconnect``), seconds before."""
    return f"reconnect-ms={seconds * 1000}" if caps.at_least(9, 2) else f"reconnect={seconds}"


def vhost_user_chardev_id(nic: Interface) -> str:
    """The id of a vhost-user interface's socket chardev (``charnet0``, as libvirt)."""
    return f"char{nic.alias}"


def vhost_user_hotplug(
    nic: Interface, netdev: str, caps: QemuCapabilities
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``chardev-add`` and ``netdev_add`` take to plug the vhost-user interface ``nic``
    into a running QEMU: the chardev and netdev :func:`netdev_args` gives at start.

    QMP's socket chardev is a server unless told otherwise, and one that does not wait for
    its client (the netdev waits for the backend, as at start)."""
    sock: dict[str, Any] = {
        "addr": {"type": "unix", "data": {"path": nic.vhost_path}},
        "server": nic.vhost_mode == "server",
    }
    if nic.vhost_mode == "server":
        sock["wait"] = False
    elif nic.vhost_reconnect and nic.vhost_reconnect_timeout is not None:
        key, value = reconnect_option(caps, nic.vhost_reconnect_timeout).split("=")
        sock[key] = int(value)
    cid = vhost_user_chardev_id(nic)
    chardev = {"id": cid, "backend": {"type": "socket", "data": sock}}
    net: dict[str, Any] = {"type": "vhost-user", "id": netdev, "chardev": cid}
    if nic.queues is not None:
        net["queues"] = nic.queues
    return chardev, net


#: ``<driver txmode=>`` -> virtio-net's ``tx=`` (QEMU's bottom half is libvirt's iothread).
VIRTIO_NET_TX = {"iothread": "bh", "timer": "timer"}
#: ``<driver>``'s switches, ``<host>`` and ``<guest>`` offloads -> virtio-net properties.
VIRTIO_NET_SWITCHES = {
    "ioeventfd": "ioeventfd",
    "event_idx": "event_idx",
    "rss": "rss",
    "rss_hash_report": "hash",
}
VIRTIO_NET_HOST = {
    "csum": "csum",
    "gso": "gso",
    "tso4": "host_tso4",
    "tso6": "host_tso6",
    "ecn": "host_ecn",
    "ufo": "host_ufo",
    "mrg_rxbuf": "mrg_rxbuf",
}
VIRTIO_NET_GUEST = {
    "csum": "guest_csum",
    "tso4": "guest_tso4",
    "tso6": "guest_tso6",
    "ecn": "guest_ecn",
    "ufo": "guest_ufo",
}


def virtio_net_props(nic: Interface) -> dict[str, Any]:
    """The virtio-net-pci properties of a virtio NIC's ``<driver>`` settings, as libvirt
    maps them (only those set: QEMU's defaults stay QEMU's)."""
    props: dict[str, Any] = {}
    if nic.txmode is not None:
        props["tx"] = VIRTIO_NET_TX[nic.txmode]
    for table, values in (
        (VIRTIO_NET_SWITCHES, nic.driver_switches),
        (VIRTIO_NET_HOST, nic.host_offloads),
        (VIRTIO_NET_GUEST, nic.guest_offloads),
    ):
        props.update({table[k]: v == "on" for k, v in values.items()})
    props["rx_queue_size"] = nic.rx_queue_size
    props["tx_queue_size"] = nic.tx_queue_size
    props.update(virtio_props(nic.virtio))
    return {k: v for k, v in props.items() if v is not None}


def netdev_args(nic: Interface, netdev: str, caps: QemuCapabilities) -> list[str]:
    """The ``-chardev``/``-netdev`` options of a socket or vhost-user interface."""
    if nic.type == "vhostuser":
        cid = vhost_user_chardev_id(nic)
        chardev = [f"socket,id={cid},path={_kv(nic.vhost_path or '')}"]
        if nic.vhost_mode == "server":
            chardev.append("server=on")
        elif nic.vhost_reconnect and nic.vhost_reconnect_timeout is not None:
            chardev.append(reconnect_option(caps, nic.vhost_reconnect_timeout))
        queues = f",queues={nic.queues}" if nic.queues is not None else ""
        return [
            "-chardev",
            ",".join(chardev),
            "-netdev",
            f"vhost-user,chardev={cid}{queues},id={netdev}",
        ]
    where = f"{nic.source_address or ''}:{nic.source_port}"
    if nic.type == "udp":
        opts = f"udp={where},localaddr={nic.local_address}:{nic.local_port}"
    elif nic.type == "mcast":
        opts = f"mcast={where}"
    elif nic.type == "server":
        opts = f"listen={where}"
    else:  # client
        opts = f"connect={where}"
    return ["-netdev", f"socket,{opts},id={netdev}"]


def guestfwd_netdev(chr_: Chardev, cid: str) -> str:
    """A guestfwd channel: a user-mode network of its own (QEMU's slirp), whose guest-side
    address:port leads to the channel's chardev, named by the channel's alias as libvirt
    names it."""
    rule = f"tcp:{chr_.target_address}:{chr_.target_port}-chardev:{cid}"
    return f"user,guestfwd={rule},id={chr_.alias}"


# -- displays ----------------------------------------------------------------------------------


def local_display_args(gfx: Graphics) -> list[str]:
    """``-display`` of an egl-headless, SDL or D-Bus display."""
    opts = [gfx.type]
    if gfx.type == "dbus":
        if gfx.dbus_p2p:
            opts.append("p2p=on")
        elif gfx.dbus_address is not None:
            opts.append(f"addr={_kv(gfx.dbus_address)}")
    if gfx.gl_enable is not None and gfx.type != "egl-headless":  # egl is always GL
        opts.append(f"gl={'on' if gfx.gl_enable else 'off'}")
    if gfx.gl_rendernode is not None:
        opts.append(f"rendernode={_kv(gfx.gl_rendernode)}")
    out = ["-display", ",".join(opts)]
    if gfx.fullscreen:
        out.append("-full-screen")
    return out


def display_env(d: DomainDef) -> dict[str, str]:
    """What QEMU's environment needs for an SDL window on the X display the XML names (as
    libvirt sets it); QEMU otherwise inherits the supervisor's DISPLAY."""
    env: dict[str, str] = {}
    for gfx in d.graphics:
        if gfx.type == "sdl":
            if gfx.x_display is not None:
                env["DISPLAY"] = gfx.x_display
            if gfx.xauth is not None:
                env["XAUTHORITY"] = gfx.xauth
    return env


# -- memory devices ----------------------------------------------------------------------------

#: QEMU maps memory devices in 2 MiB steps on x86: libvirt rounds their sizes up at start.
MEMORY_ALIGN_KIB = 2048


def aligned_kib(size_kib: int) -> int:
    return -(-size_kib // MEMORY_ALIGN_KIB) * MEMORY_ALIGN_KIB


def machine_options(d: DomainDef) -> list[str]:
    """``-machine`` options memory devices need: NVDIMM support, and the SGX EPC sections
    (QEMU takes those as machine properties, not devices)."""
    opts: list[str] = []
    if any(m.model == "nvdimm" for m in d.memory_devices):
        opts.append("nvdimm=on")
    for n, md in enumerate(m for m in d.memory_devices if m.model == "sgx-epc"):
        opts.append(f"sgx-epc.{n}.memdev=mem{md.alias}")
        opts.append(f"sgx-epc.{n}.node={md.node or 0}")
    return opts


def memory_device_args(b: _Builder, i: int, md: MemoryDevice) -> None:
    """The backend object and device of an nvdimm, virtio-pmem or SGX EPC section."""
    obj = f"mem{md.alias}"
    props: dict[str, Any] = {"qom-type": "memory-backend-file", "id": obj}
    if md.model == "sgx-epc":
        props = {"qom-type": "memory-backend-epc", "id": obj, "prealloc": True}
        props["size"] = md.size_kib * 1024
        b.add("-object", _json(props))
        return  # the section itself is a machine property (machine_options)
    props["mem-path"] = md.path
    access = md.access or ("shared" if md.model == "virtio-pmem" else None)
    if access is not None:
        props["share"] = access == "shared"
    if md.model == "nvdimm" and not md.pmem:
        props["prealloc"] = True  # a plain file: allocated up front, as libvirt does
    props["size"] = aligned_kib(md.size_kib) * 1024
    if md.align_kib is not None:
        props["align"] = md.align_kib * 1024
    if md.pmem:
        props["pmem"] = True
    b.add("-object", _json(props))
    if md.model == "nvdimm":
        dev: dict[str, Any] = {"driver": "nvdimm", "node": md.node}
        if md.label_kib is not None:
            dev["label-size"] = md.label_kib * 1024
        if md.readonly:
            dev["unarmed"] = True
        dev.update(memdev=obj, id=md.alias, slot=getattr(md.address, "slot", None))
        dev["addr"] = getattr(md.address, "base", None)
        b.device(dev)
    else:
        dev = {"driver": "virtio-pmem-pci", "memdev": obj, "memaddr": md.target_base}
        dev["id"] = md.alias
        b.device(b._pci(dev, md.address, f"memory device {i}"))


# -- crypto, pstore ----------------------------------------------------------------------------

#: QEMU's backend object of each ``<crypto><backend model>``.
CRYPTO_BACKEND = {"builtin": "cryptodev-backend-builtin", "lkcf": "cryptodev-backend-lkcf"}


def crypto_args(b: _Builder) -> None:
    for i, crypto in enumerate(b.d.cryptos):
        obj = f"obj{crypto.alias}"
        b.add(
            "-object",
            _json({"qom-type": CRYPTO_BACKEND[crypto.backend], "id": obj, "queues": crypto.queues}),
        )
        props: dict[str, Any] = {
            "driver": "virtio-crypto-pci",
            "cryptodev": obj,
            "id": crypto.alias,
        }
        props.update(virtio_props(crypto.virtio))
        b.device(b._pci(props, crypto.address, f"crypto device {i}"))


def pstore_args(b: _Builder) -> None:
    ps = b.d.pstore
    if ps is None:
        return
    obj = f"mem{ps.alias}"
    b.add(
        "-object",
        _json(
            {
                "qom-type": "memory-backend-file",
                "id": obj,
                "mem-path": ps.path,
                "size": ps.size_kib * 1024,
                "share": True,  # the records must reach the file, to outlive the guest
            }
        ),
    )
    b.device(b._pci({"driver": "acpi-erst", "id": ps.alias, "memdev": obj}, ps.address, "pstore"))


__all__ = [
    "aligned_kib",
    "crypto_args",
    "display_env",
    "guestfwd_netdev",
    "local_display_args",
    "machine_options",
    "memory_device_args",
    "netdev_args",
    "pstore_args",
    "reconnect_option",
    "vhost_user_chardev_id",
    "vhost_user_hotplug",
]
