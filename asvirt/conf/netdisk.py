"""The ``<source protocol=...>`` of a ``<disk type='network'>``: media QEMU reaches over the
network (NBD, HTTP(S)/FTP(S), iSCSI, Ceph RBD, Gluster, SSH) instead of a host path.

Only what QEMU 7.2 can open is accepted; the rest of libvirt's schema is refused with the
reason (protocols QEMU dropped). NBD disks may speak TLS with the node's certificates;
iSCSI and RBD disks may name their credentials: ``<auth username=...><secret type='iscsi'|
'ceph' uuid=|usage=/>``, a secret of the node's secret driver; http(s) disks may carry
cookies (``<cookies><cookie name=...>value</cookie></cookies>``), and any of them an
``<encryption>`` (written back in ``<source>``, where it was found). Generic: no QEMU
property names here, those are the command line's (:mod:`asvirt.drivers.qemu.netdisk`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigUnsupportedError, XMLError
from .names import canonical_uuid, generic_name
from .xmlnode import Node, XElem

#: The protocols asvirt accepts, each opened by a QEMU block driver of the same name.
NET_PROTOCOLS = ("nbd", "http", "https", "ftp", "ftps", "iscsi", "rbd", "gluster", "ssh", "nfs")
#: The curl-backed protocols (QEMU's curl driver).
CURL_PROTOCOLS = ("http", "https", "ftp", "ftps")
#: The default port of each protocol when ``<host>`` names none (what QEMU would use).
DEFAULT_PORTS = {
    "nbd": 10809,
    "http": 80,
    "https": 443,
    "ftp": 21,
    "ftps": 990,
    "iscsi": 3260,
    "gluster": 24007,
    "rbd": 6789,
    "ssh": 22,
}
#: libvirt's protocols that QEMU 7.2 cannot open, and why.
_REFUSED = {
    "sheepdog": "QEMU removed its sheepdog driver in 6.0",
    "vxhs": "QEMU removed its vxhs driver in 5.1",
    "tftp": "QEMU's curl driver opens http, https, ftp and ftps only",
}


@dataclass(slots=True)
class NetHost:
    """``<host>``: a server (name and port, over tcp) or a unix socket."""

    name: str | None = None
    port: int | None = None
    transport: str | None = None  # tcp | unix (rdma refused)
    socket: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.transport == "unix"


@dataclass(slots=True)
class DiskAuth:
    """``<auth username=...><secret type=... uuid=|usage=/></auth>`` of an iSCSI or RBD
    source: the user, and the secret holding its password (iscsi) or key (ceph)."""

    username: str
    secret_type: str  # iscsi | ceph
    secret_uuid: str | None = None
    secret_usage: str | None = None

    def format_xml(self, parent: XElem) -> None:
        auth = parent.add("auth", {"username": self.username})
        auth.add(
            "secret",
            {"type": self.secret_type, "uuid": self.secret_uuid, "usage": self.secret_usage},
        )


#: The secret type each protocol's ``<auth>`` names (libvirt's rule).
AUTH_SECRET_TYPES = {"iscsi": "iscsi", "rbd": "ceph"}


def _parse_auth(node: Node, protocol: str) -> DiskAuth:
    kind = AUTH_SECRET_TYPES.get(protocol)
    if kind is None:
        raise ConfigUnsupportedError(
            f"unsupported configuration: <auth> in {node.where}: only iscsi and rbd disks take "
            f"credentials, not {protocol}"
        )
    username = generic_name(node.required("username"), f"username of {node.where}")
    secrets = node.children("secret")
    if len(secrets) != 1:
        raise XMLError(f"{node.where} needs exactly one <secret>")
    sec = secrets[0]
    secret_type = sec.required("type")
    if secret_type != kind:
        raise XMLError(
            f"{node.where}: a {protocol} disk's secret has type '{kind}', not '{secret_type}'"
        )
    uuid, usage = sec.attr("uuid"), sec.attr("usage")
    if (uuid is None) == (usage is None):
        raise XMLError(f"{sec.where} needs either uuid= or usage=")
    auth = DiskAuth(username=username, secret_type=kind, secret_usage=usage)
    if uuid is not None:
        auth.secret_uuid = canonical_uuid(uuid, what="secret UUID", error=XMLError)
    sec.finish()
    node.finish()
    return auth


@dataclass(slots=True)
class NetworkSource:
    """The source of a network disk."""

    protocol: str
    #: The export (nbd), path (http...), ``iqn/lun`` (iscsi), ``pool/image`` (rbd),
    #: ``volume/path`` (gluster) or path (ssh).
    name: str | None = None
    #: ``query=`` of an http(s) URL.
    query: str | None = None
    hosts: list[NetHost] = field(default_factory=list)
    #: ``<ssl verify=>`` (https, ftps).
    ssl_verify: bool | None = None
    #: ``<readahead size=>`` (bytes) and ``<timeout seconds=>`` (curl protocols, ssh).
    readahead: int | None = None
    timeout: int | None = None
    #: ``<initiator><iqn name=>`` (iscsi).
    initiator_iqn: str | None = None
    #: ``<snapshot name=>`` and ``<config file=>`` (rbd).
    rbd_snapshot: str | None = None
    rbd_config: str | None = None
    #: nbd: ``tls='yes'|'no'`` (None: the driver's default, libvirt's ``nbd_tls``) and
    #: ``tlsHostname=``, the name the server's certificate must carry (default: the host's).
    tls: bool | None = None
    tls_hostname: str | None = None
    #: ``<auth>`` (iscsi, rbd): the user and the secret of its password or key.
    auth: DiskAuth | None = None
    #: ``<cookies><cookie name=...>value</cookie></cookies>`` (http, https): sent with every
    #: request, in their order. QEMU gets them from a ``secret`` object, never inline.
    cookies: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_curl(self) -> bool:
        return self.protocol in CURL_PROTOCOLS

    def cookie_header(self) -> str:
        """The cookies as an HTTP ``Cookie:`` header's value (``a=1; b=2``), what QEMU's curl
        driver sends."""
        return "; ".join(f"{name}={value}" for name, value in self.cookies)

    def display(self) -> str:
        """What ``domblklist`` shows as the source: the name, as virsh does (``pool/image``,
        ``export``), or the protocol when the source has none (an NBD server's default
        export)."""
        return self.name if self.name else self.protocol

    def format_xml(self, el: XElem, index: int | None) -> XElem:
        """Add ``<source>`` to ``el`` (and return it: an ``<encryption>`` found in it goes
        back there)."""
        src = el.add(
            "source",
            {
                "protocol": self.protocol,
                "name": self.name,
                "query": self.query,
                "tls": self.tls,
                "tlsHostname": self.tls_hostname,
                "index": index,
            },
        )
        for host in self.hosts:
            src.add(
                "host",
                {
                    "transport": host.transport,
                    "name": host.name,
                    "port": host.port,
                    "socket": host.socket,
                },
            )
        if self.rbd_snapshot is not None:
            src.add("snapshot", {"name": self.rbd_snapshot})
        if self.rbd_config is not None:
            src.add("config", {"file": self.rbd_config})
        if self.auth is not None:
            self.auth.format_xml(src)
        if self.ssl_verify is not None:
            src.add("ssl", {"verify": "yes" if self.ssl_verify else "no"})
        if self.cookies:
            # Only in a secure XML, like a display's passwd: a cookie is a credential. The
            # whole element, not names without values: redefining from a non-secure XML
            # then drops the cookies (as it drops a passwd) rather than sending empty ones.
            jar = src.add("cookies", secret=True)
            for name, value in self.cookies:
                jar.add("cookie", {"name": name}, text=value)
        if self.readahead is not None:
            src.add("readahead", {"size": self.readahead})
        if self.timeout is not None:
            src.add("timeout", {"seconds": self.timeout})
        if self.initiator_iqn is not None:
            src.add("initiator").add("iqn", {"name": self.initiator_iqn})
        return src


#: What RFC 6265 (section 4.1.1) keeps out of a cookie's value: controls, space, '"', ',',
#: ';' and '\\' (libvirt's rule); a name may not hold these nor the separators below.
_COOKIE_VALUE_BAD = frozenset(map(chr, range(1, 0x20))) | frozenset(' ",;\\')
_COOKIE_NAME_BAD = _COOKIE_VALUE_BAD | frozenset("()<>@:/[]?={}")


def _parse_cookies(node: Node, protocol: str) -> list[tuple[str, str]]:
    """``<cookies>`` of an http(s) source: (name, value) pairs, checked as libvirt checks
    them (a value may be quoted: ``"abc"``); XMLError naming the cookie."""
    if protocol not in ("http", "https"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: <cookies> in {node.where}: cookies are HTTP's; "
            f"QEMU's {protocol} driver sends none"
        )
    cookies: list[tuple[str, str]] = []
    for el in node.children("cookie"):
        name = el.required("name")
        value = el.text()
        if not name or any(c in _COOKIE_NAME_BAD for c in name):
            raise XMLError(f"cookie name '{name}' contains invalid characters")
        bare = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        if any(c in _COOKIE_VALUE_BAD for c in bare):
            raise XMLError(f"value of cookie '{name}' contains invalid characters")
        if any(name == seen for seen, _ in cookies):
            raise XMLError(f"duplicate cookie '{name}'")
        cookies.append((name, value))
        el.finish()
    if not cookies:
        raise XMLError(f"{node.where} needs at least one <cookie name=...>")
    node.finish()
    return cookies


def _parse_host(node: Node, protocol: str) -> NetHost:
    transport = node.choice("transport", ("tcp", "rdma", "unix"))
    if transport == "rdma":
        raise ConfigUnsupportedError(
            f"unsupported configuration: transport='rdma' of {node.where}: QEMU 7.2 dropped "
            "RDMA from its gluster driver"
        )
    if transport == "unix":
        if protocol not in ("nbd", "gluster"):
            raise ConfigUnsupportedError(
                f"unsupported configuration: {node.where}: protocol '{protocol}' has no unix "
                "socket transport (nbd and gluster do)"
            )
        sock = node.required("socket")
        if not sock.startswith("/"):
            raise XMLError(f"socket '{sock}' of {node.where} must be an absolute path")
        node.finish()
        return NetHost(transport="unix", socket=sock)
    name = node.required("name")
    if any(c in name for c in "/@ ,?#\0\n"):
        raise XMLError(f"invalid host name '{name}' in {node.where}")
    host = NetHost(transport=transport, name=name)
    host.port = node.integer("port", minimum=1, maximum=65535)
    node.finish()
    return host


def parse_network_source(node: Node) -> NetworkSource:
    """Parse ``<source protocol=...>`` of a ``<disk type='network'>``."""
    protocol = node.required("protocol")
    if protocol in _REFUSED:
        raise ConfigUnsupportedError(
            f"unsupported configuration: protocol '{protocol}' of {node.where}: "
            f"{_REFUSED[protocol]}"
        )
    if protocol not in NET_PROTOCOLS:
        raise node.unsupported_value("protocol", protocol, NET_PROTOCOLS)
    src = NetworkSource(protocol=protocol, name=node.attr("name"))
    if src.name is not None and ("\0" in src.name or "\n" in src.name):
        raise XMLError(f"invalid name of {node.where}")
    if protocol != "nbd" and protocol != "rbd" and not src.name:
        raise XMLError(f"missing attribute 'name' of {node.where} (protocol '{protocol}')")
    if protocol in ("http", "https"):
        src.query = node.attr("query")
    src.tls = node.yesno("tls")
    src.tls_hostname = node.attr("tlsHostname")
    if (src.tls is not None or src.tls_hostname is not None) and protocol != "nbd":
        # https and ftps have TLS of their own (<ssl verify=...>), with the system's CAs.
        raise ConfigUnsupportedError(
            f"unsupported configuration: tls= of {node.where}: QEMU's {protocol} driver takes "
            "no TLS credentials (its NBD driver does)"
        )
    if src.tls_hostname is not None and not re.fullmatch(r"[A-Za-z0-9.\-]+", src.tls_hostname):
        raise XMLError(f"invalid tlsHostname '{src.tls_hostname}' of {node.where}")
    auth = node.child("auth")
    if auth is not None:
        src.auth = _parse_auth(auth, protocol)
    for refused, why in (
        ("reconnect", "QEMU's nbd driver reconnect-delay is not offered yet"),
        ("knownHosts", "QEMU's ssh driver checks keys by its own host-key-check only"),
        ("identity", "QEMU runs as one user; asvirt does not map another onto it"),
        ("keyfile", "QEMU's ssh driver has no key file option"),
    ):
        if node.child(refused) is not None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: <{refused}> in {node.where}: {why}"
            )
    jar = node.child("cookies")
    if jar is not None:
        src.cookies = _parse_cookies(jar, protocol)
    src.hosts = [_parse_host(h, protocol) for h in node.children("host")]
    if protocol in ("rbd", "gluster"):
        if protocol == "gluster" and not src.hosts:
            raise XMLError(f"{node.where}: protocol 'gluster' needs at least one <host>")
    elif len(src.hosts) != 1:
        raise XMLError(f"{node.where}: protocol '{protocol}' needs exactly one <host>")
    if protocol == "rbd":
        if not src.name or src.name.count("/") != 1 or "@" in src.name:
            raise XMLError(f"name of {node.where} must be 'pool/image' (protocol 'rbd')")
        snap = node.child("snapshot")
        if snap is not None:
            src.rbd_snapshot = generic_name(snap.required("name"), f"name of {snap.where}")
            snap.finish()
        conf = node.child("config")
        if conf is not None:
            src.rbd_config = conf.required("file")
            if not src.rbd_config.startswith("/"):
                raise XMLError(f"<config file=...> of {node.where} must be an absolute path")
            conf.finish()
    if protocol == "gluster" and (not src.name or "/" not in src.name.strip("/")):
        raise XMLError(f"name of {node.where} must be 'volume/path' (protocol 'gluster')")
    if protocol == "iscsi":
        _check_iscsi_name(src.name or "", node.where)
        ini = node.child("initiator")
        if ini is not None:
            iqn = ini.child("iqn")
            if iqn is None:
                raise XMLError(f"<initiator> of {node.where} needs <iqn name=...>")
            src.initiator_iqn = iqn.required("name")
            iqn.finish()
            ini.finish()
    if protocol in ("https", "ftps"):
        ssl = node.child("ssl")
        if ssl is not None:
            src.ssl_verify = ssl.yesno("verify")
            ssl.finish()
    if src.is_curl or protocol == "ssh":
        ra = node.child("readahead")
        if ra is not None:
            src.readahead = ra.integer("size", minimum=1, maximum=2**63 - 1)
            ra.finish()
        to = node.child("timeout")
        if to is not None:
            src.timeout = to.integer("seconds", minimum=1, maximum=2**31 - 1)
            to.finish()
        if protocol == "ssh" and (src.readahead is not None or src.timeout is not None):
            raise ConfigUnsupportedError(
                f"unsupported configuration: {node.where}: QEMU's ssh driver has no readahead "
                "or timeout"
            )
    if protocol == "nfs" and src.hosts[0].port is not None:
        raise ConfigUnsupportedError(
            f"unsupported configuration: {node.where}: QEMU's nfs driver takes no port"
        )
    if protocol == "nbd" and src.hosts and not src.hosts[0].is_unix and not src.hosts[0].name:
        raise XMLError(f"{node.where}: the NBD server needs a name")
    return src


def _check_iscsi_name(name: str, where: str) -> None:
    target, _, lun = name.rpartition("/")
    if not target:
        target, lun = name, "0"
    if not target or not lun.isdigit() or int(lun) > 2**16 - 1:
        raise XMLError(f"name of {where} must be 'IQN/LUN' (protocol 'iscsi')")


def iscsi_target_lun(name: str) -> tuple[str, int]:
    """The target IQN and LUN of an iscsi source's ``name`` (LUN 0 when none is given)."""
    target, _, lun = name.rpartition("/")
    if not target:
        return name, 0
    return target, int(lun)
