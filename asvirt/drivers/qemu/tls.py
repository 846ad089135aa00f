"""QEMU's TLS credentials, as libvirt's QEMU driver gives them from qemu.conf: which
displays, disks and character devices speak TLS, the ``tls-creds-x509`` objects they use
(one directory of PEM files each: ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem``
for a server, ``client-cert.pem``/``client-key.pem`` for a client), and the check at start
that every file they need is there and readable.

The settings are the ``[qemu]`` section's (:class:`asvirt.config.QemuConfig`), read once
into a :class:`TlsConfig`; the command line asks it, never the configuration itself.

A private key may be encrypted: its password is then a secret of the secret driver (usage
type ``tls``) named by ``*_tls_x509_secret_uuid``, and each ``tls-creds-x509`` object names
a ``secret`` object holding it (``passwordid=``, libvirt's ``<creds id>-secret0`` or, for a
chardev, ``<chardev id>-secret0``), fed by a pipe as every secret QEMU gets
(:mod:`.secrets`). SPICE reads its key itself and takes no password, as in libvirt.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from ...conf.devices import Chardev, Disk, Graphics
from ...conf.domain import DomainDef
from ...conf.names import canonical_uuid
from ...config import QemuConfig
from ...errors import OperationFailedError
from .security import READ, QemuIdentity, describe_file, permits, unreachable

#: The files of a ``tls-creds-x509`` directory (QEMU's and SPICE's names alike).
CA_CERT = "ca-cert.pem"
SERVER_FILES = ("server-cert.pem", "server-key.pem")
CLIENT_FILES = ("client-cert.pem", "client-key.pem")


@dataclass(frozen=True)
class TlsConfig:
    """Where QEMU's certificates are and what uses them (all off by default, as libvirt)."""

    spice: bool = False
    spice_dir: str = "/etc/pki/qemu"
    vnc: bool = False
    vnc_dir: str = "/etc/pki/qemu"
    vnc_verify: bool = True
    #: The default of NBD disks whose ``<source>`` has no ``tls=``.
    nbd: bool = False
    nbd_dir: str = "/etc/pki/qemu"
    #: The default of TCP chardevs whose ``<source>`` has no ``tls=``.
    chardev: bool = False
    chardev_dir: str = "/etc/pki/qemu"
    chardev_verify: bool = True
    #: The UUIDs of the secrets holding the passwords of the encrypted keys (None: the keys
    #: are not encrypted).
    vnc_secret: str | None = None
    nbd_secret: str | None = None
    chardev_secret: str | None = None
    #: Whether the node gives VNC and SPICE displays a default password (``[qemu]
    #: vnc_password``, ``spice_password``): not TLS, but how the same displays are entered,
    #: which their command line must say (:mod:`.displays`). Never the passwords themselves.
    vnc_password: bool = False
    spice_password: bool = False

    @classmethod
    def from_qemu(cls, cfg: QemuConfig) -> TlsConfig:
        """The TLS settings of a ``[qemu]`` section (a directory left "" is the default's;
        so is a secret, unless the area has a directory of its own: libvirt's rule)."""
        default = cfg.default_tls_x509_cert_dir

        def secret(own: str, own_dir: str) -> str | None:
            uuid = own or ("" if own_dir else cfg.default_tls_x509_secret_uuid)
            return canonical_uuid(uuid) if uuid else None

        return cls(
            spice=cfg.spice_tls,
            spice_dir=cfg.spice_tls_x509_cert_dir or default,
            vnc=cfg.vnc_tls,
            vnc_dir=cfg.vnc_tls_x509_cert_dir or default,
            vnc_verify=cfg.vnc_tls_x509_verify,
            nbd=cfg.nbd_tls,
            nbd_dir=cfg.nbd_tls_x509_cert_dir or default,
            chardev=cfg.chardev_tls,
            chardev_dir=cfg.chardev_tls_x509_cert_dir or default,
            chardev_verify=cfg.chardev_tls_x509_verify,
            vnc_secret=secret(cfg.vnc_tls_x509_secret_uuid, cfg.vnc_tls_x509_cert_dir),
            nbd_secret=secret(cfg.nbd_tls_x509_secret_uuid, cfg.nbd_tls_x509_cert_dir),
            chardev_secret=secret(cfg.chardev_tls_x509_secret_uuid, cfg.chardev_tls_x509_cert_dir),
            vnc_password=bool(cfg.vnc_password),
            spice_password=bool(cfg.spice_password),
        )

    # -- what uses TLS ---------------------------------------------------------------------------

    def disk_tls(self, disk: Disk) -> bool:
        """Whether a disk's NBD client speaks TLS (its ``tls=``, else ``nbd_tls``)."""
        net = disk.net
        if net is None or net.protocol != "nbd":
            return False
        return net.tls if net.tls is not None else self.nbd

    def chardev_tls(self, chr_: Chardev) -> bool:
        """Whether a TCP character device speaks TLS (its ``tls=``, else ``chardev_tls``)."""
        return chr_.type == "tcp" and self.tcp_tls(chr_.tls)

    def tcp_tls(self, tls: bool | None) -> bool:
        """Whether a TCP socket chardev whose ``<source tls=>`` says ``tls`` speaks TLS (an
        EGD RNG's or a smartcard's have none: ``chardev_tls`` decides, as in libvirt)."""
        return tls if tls is not None else self.chardev

    def vnc_tls(self, gfx: Graphics) -> bool:
        """Whether a VNC display speaks TLS: ``vnc_tls``, on any listener but 'none'."""
        listens_none = bool(gfx.listens) and gfx.listens[0].type == "none"
        return gfx.type == "vnc" and self.vnc and not listens_none


def creds_object(
    obj_id: str, directory: str, *, server: bool, verify: bool, password_id: str | None = None
) -> dict[str, Any]:
    """The ``tls-creds-x509`` object of a TLS endpoint (``-object`` or ``object-add``).

    A client always checks the server's certificate (libvirt gives ``verify-peer`` true);
    a server asks for its clients' certificates when ``verify`` says so. ``password_id``:
    the ``secret`` object holding the password of its encrypted key."""
    obj: dict[str, Any] = {
        "qom-type": "tls-creds-x509",
        "id": obj_id,
        "dir": directory,
        "endpoint": "server" if server else "client",
        "verify-peer": verify if server else True,
    }
    if password_id is not None:
        obj["passwordid"] = password_id
    return obj


def password_id(base: str, secret: str | None) -> str | None:
    """The id of the ``secret`` object of the password of an endpoint's key (libvirt's
    ``BASE-secret0``: BASE is the credentials object's id, a chardev's the chardev's), or
    None when its key is not encrypted (``secret``: the UUID of the node's secret)."""
    return f"{base}-secret0" if secret is not None else None


def disk_creds_id(storage_node: str) -> str:
    """The id of a disk's credentials object: libvirt's ``objlibvirt-N-storage_tls0``."""
    return f"obj{storage_node}_tls0"


def chardev_creds_id(chardev_id: str) -> str:
    """The id of a chardev's credentials object: libvirt's ``objcharserial0_tls0``."""
    return f"obj{chardev_id}_tls0"


#: The id of the VNC display's credentials object (libvirt's).
VNC_CREDS_ID = "vnc-tls-creds0"


# ---------------------------------------------------------------------------------------------
# the check at start


@dataclass(frozen=True)
class Endpoint:
    """A TLS endpoint of a domain: what it is, where its files are, which it needs."""

    what: str
    directory: str
    files: tuple[str, ...]
    client: bool
    #: The ``[qemu]`` setting naming the secret of its key's password.
    setting: str = ""
    #: The id of the ``secret`` object of its key's password, and the UUID of the node's
    #: secret holding it; None when the key is not encrypted.
    password_id: str | None = None
    secret: str | None = None


def endpoints(defn: DomainDef, tls: TlsConfig) -> list[Endpoint]:
    """Every TLS endpoint of ``defn``: each ``tls-creds-x509`` object its command line has
    (and SPICE's TLS port)."""
    needs: list[Endpoint] = []
    server = (CA_CERT, *SERVER_FILES)
    for gfx in defn.graphics:
        if gfx.type == "spice" and tls.spice and gfx.tls_port not in (None, -1, 0):
            needs.append(Endpoint("the SPICE display (spice_tls)", tls.spice_dir, server, False))
        elif tls.vnc_tls(gfx):
            needs.append(
                Endpoint(
                    "the VNC display (vnc_tls)",
                    tls.vnc_dir,
                    server,
                    False,
                    "vnc_tls_x509_secret_uuid",
                    password_id(VNC_CREDS_ID, tls.vnc_secret),
                    tls.vnc_secret,
                )
            )
    for disk in defn.disks:
        needs += disk_endpoints(disk, tls)
    # (what, QEMU's chardev id, mode): the serial console is its serial port's chardev.
    sockets = [
        (f"{c.kind} '{c.alias}'", c.chardev_id or f"char{c.alias}", c.source_mode)
        for c in defn.chardevs()
        if tls.chardev_tls(c) and not (c.kind == "console" and c.target_type != "virtio")
    ]
    sockets += [
        (f"redirdev '{rd.alias}'", f"char{rd.alias}", rd.source.source_mode)
        for rd in defn.redirdevs
        if rd.source is not None and tls.chardev_tls(rd.source)
    ]
    if tls.chardev:
        sockets += [
            (f"rng '{r.alias}'", f"char{r.alias}", r.egd_mode)
            for r in defn.rngs
            if r.backend == "egd" and r.egd_type == "tcp"
        ]
        sockets += [
            (f"smartcard '{sc.alias}'", f"char{sc.alias}", sc.source_mode)
            for sc in defn.smartcards
            if sc.mode == "passthrough" and sc.type == "tcp"
        ]
    for what, cid, mode in sockets:
        bind = mode == "bind"
        needs.append(
            Endpoint(
                f"{what} (TCP)",
                tls.chardev_dir,
                server if bind else (CA_CERT,),
                not bind,
                "chardev_tls_x509_secret_uuid",
                password_id(cid, tls.chardev_secret),
                tls.chardev_secret,
            )
        )
    return needs


def disk_endpoints(disk: Disk, tls: TlsConfig) -> list[Endpoint]:
    """The TLS endpoint of a disk whose NBD client speaks TLS (none for another)."""
    if not tls.disk_tls(disk):
        return []
    creds = disk_creds_id(f"libvirt-{disk.node_index}-storage")
    return [
        Endpoint(
            f"NBD disk '{disk.target}'",
            tls.nbd_dir,
            (CA_CERT,),
            True,
            "nbd_tls_x509_secret_uuid",
            password_id(creds, tls.nbd_secret),
            tls.nbd_secret,
        )
    ]


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a certificate or key file, or None if it can."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        return err.strerror or str(err)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
    finally:
        os.close(fd)
    return None


def _unreadable_by(path: str, who: QemuIdentity) -> str | None:
    """Why QEMU running as ``who`` could not read ``path``, or None if it could."""
    blocked = unreachable(path, who)
    if blocked is not None:
        return f"QEMU runs as {who}, who may not enter '{blocked}' ({describe_file(blocked)})"
    if not permits(path, who, READ):
        return f"QEMU runs as {who}, who may not read it ({describe_file(path)})"
    return None


def check_tls_files(defn: DomainDef, tls: TlsConfig, who: QemuIdentity | None = None) -> None:
    """Refuse a start whose TLS needs a certificate or key that is missing or unreadable,
    naming the file (QEMU would fail later, saying less). A client's own certificate is
    optional, as QEMU has it, but not half of it: present, both files must be readable.

    ``who``: the user QEMU runs as (``[qemu] user``), who must be able to read them too.
    They are never given to that user, as disk images are: one key serves every domain."""
    _check(endpoints(defn, tls), defn.name, who)


def check_disk_tls_files(
    disk: Disk, tls: TlsConfig, domain: str, who: QemuIdentity | None = None
) -> None:
    """:func:`check_tls_files` for a disk plugged into the running ``domain`` (or media
    put into its drive)."""
    _check(disk_endpoints(disk, tls), domain, who)


def _check(needed: list[Endpoint], domain: str, who: QemuIdentity | None) -> None:
    for end in needed:
        what, directory = end.what, end.directory
        paths = [os.path.join(directory, name) for name in end.files]
        if end.client:
            own = [os.path.join(directory, name) for name in CLIENT_FILES]
            if any(os.path.lexists(p) for p in own):
                paths += own
        for path in paths:
            why = _unreadable(path)
            if why is None and who is not None:
                why = _unreadable_by(path, who)
            if why is not None:
                raise OperationFailedError(
                    f"TLS certificate file '{path}' of {what} of domain '{domain}': {why}"
                )
