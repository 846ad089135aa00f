"""Secrets handed to QEMU: the passphrases of encrypted disks, the credentials and cookies of
network disks, the passwords of encrypted TLS keys (and, for hotplug, over QMP).

QEMU reads a secret from a ``secret`` object, which takes its value inline (``data=``), or
from a file (``file=``). Inline on the command line, any user of the host could read it in
``/proc/PID/cmdline``; in a file, it would lie on disk. So the value goes through a pipe: the
supervisor writes it into the pipe and closes its end, QEMU inherits the read end and its
``secret`` object reads ``file=/proc/self/fd/N`` to the end when it is created, before the
guest runs. The value is then only in QEMU's memory (and the node's): nothing on disk,
nothing in the command line, nothing left in the pipe. (libvirt instead encrypts each
secret with a per-domain master key it keeps in a file beside the domain's state.)

A disk plugged into a running guest gets its secret the same way: the pipe's read end is
passed over the monitor (``add-fd``), and ``object-add`` creates the object reading it. Never
``object-add``'s ``data=``: QEMU answers ``qom-get`` of that property with the value, and any
read-write client may send QMP commands (``qemu-monitor-command``), private secret or not.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ...conf.devices import Disk
from ...conf.domain import DomainDef
from ...drivers.base import SecretUsageType
from ...errors import NoSecretError
from ...hypervisor.secrets import auth_secret_name, encryption_secret
from ..secret import secret_pipes
from .tls import Endpoint, TlsConfig, disk_endpoints, endpoints

#: How the node looks a secret up: (uuid, usage type, usage id) -> (uuid, value).
SecretLookup = Callable[[str | None, SecretUsageType, str | None], tuple[str, bytes]]

#: What ``domxml-to-native`` shows where a started domain has a pipe's descriptor.
SHOWN_FILE = "/proc/self/fd/N"


def disk_secret_id(disk: Disk) -> str:
    """The id of the ``secret`` object of an encrypted disk's passphrase (libvirt's name)."""
    return f"libvirt-{disk.node_index}-format-encryption-secret0"


def auth_secret_id(disk: Disk) -> str:
    """The id of the ``secret`` object of a network disk's password or key (libvirt's)."""
    return f"libvirt-{disk.node_index}-storage-auth-secret0"


def cookie_secret_id(disk: Disk) -> str:
    """The id of the ``secret`` object of an http(s) disk's cookies (libvirt's name)."""
    return f"libvirt-{disk.node_index}-storage-httpcookie-secret0"


def auth_props(disk: Disk) -> dict[str, Any]:
    """What a network disk's ``<auth>`` adds to its storage node: the user, and the secret
    of its iSCSI password (``password-secret``) or Ceph key (``key-secret``, cephx)."""
    assert disk.net is not None and disk.net.auth is not None
    sid = auth_secret_id(disk)
    if disk.net.protocol == "iscsi":
        return {"user": disk.net.auth.username, "password-secret": sid}
    return {
        "user": disk.net.auth.username,
        "key-secret": sid,
        "auth-client-required": ["cephx", "none"],
    }


def disk_secret_objects(disk: Disk, tls: TlsConfig | None = None) -> list[str]:
    """The ids of the secret objects a disk's nodes name (its passphrase, its credentials,
    its cookies) and, with the node's ``tls``, its TLS credentials (its key's password)."""
    ids = [e.password_id for e in _disk_tls(disk, tls) if e.password_id is not None]
    if disk.net is not None and disk.net.auth is not None:
        ids.append(auth_secret_id(disk))
    if disk.net is not None and disk.net.cookies:
        ids.append(cookie_secret_id(disk))
    if disk.encryption is not None and disk.has_media:
        ids.append(disk_secret_id(disk))
    return ids


def secret_object(secret_id: str, file: str) -> dict[str, Any]:
    """The ``-object`` of a secret QEMU reads from ``file`` (a pipe's ``/proc/self/fd/N``)."""
    return {"qom-type": "secret", "id": secret_id, "format": "raw", "file": file}


def disk_secret(disk: Disk, lookup: SecretLookup) -> bytes:
    """The passphrase of an encrypted disk, from the node's secrets (NoSecretError)."""
    return lookup(*encryption_secret(disk))[1]


def auth_secret(disk: Disk, lookup: SecretLookup) -> bytes:
    """The password (iscsi) or key (ceph) of a network disk's user. A Ceph key is kept as
    its bytes (what ``secret-set-value`` decodes from ``ceph auth get-key``'s base64) and
    handed to librados in base64 again, as libvirt does."""
    uuid, kind, usage = auth_secret_name(disk)
    value = lookup(uuid, kind, usage)[1]
    return base64.b64encode(value) if kind is SecretUsageType.CEPH else value


def _disk_tls(disk: Disk, tls: TlsConfig | None) -> list[Endpoint]:
    return disk_endpoints(disk, tls) if tls is not None and disk.has_media else []


def tls_password(end: Endpoint, domain: str, lookup: SecretLookup) -> bytes:
    """The password of a TLS endpoint's encrypted key, from the node's secrets (a ``tls``
    secret); NoSecretError naming the endpoint and the setting."""
    assert end.secret is not None
    try:
        return lookup(end.secret, SecretUsageType.TLS, None)[1]
    except NoSecretError as err:
        raise NoSecretError(
            f"{err}: the password of the TLS key of {end.what} of domain '{domain}' "
            f"([qemu] {end.setting}, else default_tls_x509_secret_uuid)"
        ) from None


def disk_secrets(
    disk: Disk, lookup: SecretLookup, tls: TlsConfig | None = None, domain: str = ""
) -> dict[str, bytes]:
    """A disk's secret objects by id, with their values (``tls``, ``domain``: as for
    :func:`disk_secret_objects`, and the domain's name for an error)."""
    found = {
        e.password_id: tls_password(e, domain, lookup)
        for e in _disk_tls(disk, tls)
        if e.password_id is not None
    }
    if disk.net is not None and disk.net.auth is not None:
        found[auth_secret_id(disk)] = auth_secret(disk, lookup)
    if disk.net is not None and disk.net.cookies:
        # From the definition itself, as libvirt has them: a secret object only keeps them
        # out of QEMU's command line.
        found[cookie_secret_id(disk)] = disk.net.cookie_header().encode()
    if disk.encryption is not None and disk.has_media:
        found[disk_secret_id(disk)] = disk_secret(disk, lookup)
    return found


def needed_secrets(
    defn: DomainDef, lookup: SecretLookup, tls: TlsConfig | None = None
) -> dict[str, bytes]:
    """The secret objects ``defn``'s QEMU needs, by id, with their values: every secret is
    looked up before anything is started (a missing one fails the start at once). With the
    node's ``tls``, the passwords of its encrypted TLS keys too."""
    found = {
        sid: value
        for d in defn.disks
        for sid, value in disk_secrets(d, lookup, tls, defn.name).items()
    }
    if tls is not None:
        for end in endpoints(defn, tls):
            if end.password_id is not None and end.password_id not in found:
                found[end.password_id] = tls_password(end, defn.name, lookup)
    return found


__all__ = [
    "SHOWN_FILE",
    "SecretLookup",
    "auth_props",
    "auth_secret",
    "auth_secret_id",
    "cookie_secret_id",
    "disk_secret",
    "disk_secret_id",
    "disk_secret_objects",
    "disk_secrets",
    "needed_secrets",
    "secret_object",
    "secret_pipes",
    "tls_password",
]
