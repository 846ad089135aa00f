"""Network disks in QEMU's terms: the ``-blockdev`` storage node of a ``<disk type='network'>``
(QEMU's nbd, curl, iscsi, rbd, gluster, ssh and nfs drivers, with the properties libvirt
gives them), and the check at start that the QEMU module of the protocol is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ...conf.devices import Disk
from ...conf.domain import DomainDef
from ...conf.netdisk import DEFAULT_PORTS, NetHost, NetworkSource, iscsi_target_lun
from ...errors import OperationFailedError

#: Where Debian's QEMU loads its block modules from (``QEMU_MODULE_DIR`` overrides it, as
#: it does for QEMU).
MODULE_DIR = "/usr/lib/x86_64-linux-gnu/qemu"
#: The loadable module of each protocol QEMU does not have built in, and Debian's package
#: of it.
_MODULES = {
    "http": "block-curl",
    "https": "block-curl",
    "ftp": "block-curl",
    "ftps": "block-curl",
    "iscsi": "block-iscsi",
    "rbd": "block-rbd",
    "gluster": "block-gluster",
    "ssh": "block-ssh",
    "nfs": "block-nfs",
}
_PACKAGE = "qemu-block-extra"


def _port(src: NetworkSource, host: NetHost) -> int:
    return host.port if host.port is not None else DEFAULT_PORTS[src.protocol]


def _inet(src: NetworkSource, host: NetHost, *, typed: bool = True) -> dict[str, Any]:
    """A QAPI socket address: ``InetSocketAddressBase`` (port as a string, as QAPI has it)
    or, typed, a ``SocketAddress`` (inet or unix)."""
    if host.is_unix:
        return {"type": "unix", "path": host.socket}
    base = {"host": host.name, "port": str(_port(src, host))}
    return {"type": "inet", **base} if typed else base


def _url_host(name: str | None) -> str:
    assert name is not None
    return f"[{name}]" if ":" in name else name  # an IPv6 address


def _url(src: NetworkSource) -> str:
    host = src.hosts[0]
    path = (src.name or "").lstrip("/")
    url = f"{src.protocol}://{_url_host(host.name)}:{_port(src, host)}/{quote(path, safe='/')}"
    return f"{url}?{src.query}" if src.query else url


def storage_node(src: NetworkSource) -> dict[str, Any]:
    """The protocol's part of the storage node (driver and where the data is); the caller
    adds the node name and the generic properties."""
    p = src.protocol
    if p == "nbd":
        node: dict[str, Any] = {"driver": "nbd", "server": _inet(src, src.hosts[0])}
        if src.name:
            node["export"] = src.name
        return node
    if src.is_curl:
        node = {"driver": p, "url": _url(src)}
        if src.readahead is not None:
            node["readahead"] = src.readahead
        if src.timeout is not None:
            node["timeout"] = src.timeout
        if src.ssl_verify is not None:
            node["sslverify"] = src.ssl_verify
        return node
    if p == "iscsi":
        target, lun = iscsi_target_lun(src.name or "")
        host = src.hosts[0]
        node = {
            "driver": "iscsi",
            "portal": f"{_url_host(host.name)}:{_port(src, host)}",
            "target": target,
            "lun": lun,
            "transport": "tcp",
        }
        if src.initiator_iqn is not None:
            node["initiator-name"] = src.initiator_iqn
        return node
    if p == "rbd":
        pool, image = (src.name or "/").split("/", 1)
        node = {"driver": "rbd", "pool": pool, "image": image}
        if src.hosts:
            node["server"] = [_inet(src, h, typed=False) for h in src.hosts]
        if src.rbd_snapshot is not None:
            node["snapshot"] = src.rbd_snapshot
        if src.rbd_config is not None:
            node["conf"] = src.rbd_config
        return node
    if p == "gluster":
        volume, path = (src.name or "").strip("/").split("/", 1)
        return {
            "driver": "gluster",
            "volume": volume,
            "path": path,
            "server": [_inet(src, h) for h in src.hosts],
        }
    if p == "ssh":
        return {
            "driver": "ssh",
            "path": src.name,
            "server": _inet(src, src.hosts[0], typed=False),
        }
    if p == "nfs":
        return {
            "driver": "nfs",
            "server": {"type": "inet", "host": src.hosts[0].name},
            "path": src.name,
        }
    raise AssertionError(f"protocol {p} passed the parser")  # pragma: no cover


def missing_module(protocol: str, module_dir: str | None = None) -> str | None:
    """Why QEMU cannot open ``protocol`` here (its module is not installed), or None.

    A QEMU built without modules (no module directory) is taken to have them built in."""
    module = _MODULES.get(protocol)
    if module is None:
        return None
    where = Path(module_dir or os.environ.get("QEMU_MODULE_DIR") or MODULE_DIR)
    if not where.is_dir() or (where / f"{module}.so").exists():
        return None
    return (
        f"QEMU's {protocol} driver ({where / module}.so) is not installed: install Debian's "
        f"{_PACKAGE} package"
    )


def check_network_disk(disk: Disk, domain: str) -> None:
    """Refuse a network disk whose protocol needs a QEMU module that is not installed,
    naming the package (QEMU itself would only say the driver is unknown)."""
    why = missing_module(disk.net.protocol) if disk.net is not None else None
    if why is not None:
        raise OperationFailedError(f"disk '{disk.target}' of domain '{domain}': {why}")


def check_network_disks(defn: DomainDef) -> None:
    """:func:`check_network_disk` for every disk of a domain about to start."""
    for disk in defn.disks:
        check_network_disk(disk, defn.name)
