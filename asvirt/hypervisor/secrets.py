"""The secrets a domain's definition names, and the check at start that each exists.

Encrypted disks name their passphrase (``<encryption><secret uuid=|usage=>``: a ``volume``
secret), iSCSI and RBD disks their credentials (``<auth><secret type='iscsi'|'ceph'>``), an
emulated TPM the passphrase of its state (``<encryption secret=...>``: a ``vtpm`` secret).
Every driver refuses to start a domain one of whose secrets is missing or has no value,
before anything exists (libvirt's ``NO_SECRET``), or is named by UUID but is for another
usage than its referrer's (libvirt's ``INVALID_ARG``); what a driver then does with the values
(the QEMU driver's pipes) is its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..conf.devices import Disk
from ..conf.domain import DomainDef
from ..conf.extdevices import TPM
from ..drivers.base import SecretDriver, SecretUsageType
from ..errors import OperationUnsupportedError

#: How a secret is named: (uuid or None, usage type, usage id or None).
SecretName = tuple[str | None, SecretUsageType, str | None]


def encryption_secret(disk: Disk) -> SecretName:
    """The secret of an encrypted disk's passphrase."""
    enc = disk.encryption
    assert enc is not None
    return enc.secret_uuid, SecretUsageType.VOLUME, enc.secret_usage


def auth_secret_name(disk: Disk) -> SecretName:
    """The secret of a network disk's password (iscsi) or key (ceph)."""
    assert disk.net is not None and disk.net.auth is not None
    auth = disk.net.auth
    kind = SecretUsageType.ISCSI if auth.secret_type == "iscsi" else SecretUsageType.CEPH
    return auth.secret_uuid, kind, auth.secret_usage


def tpm_secret(tpm: TPM) -> SecretName:
    """The secret of an emulated TPM's encrypted state."""
    assert tpm.encryption_secret is not None
    return tpm.encryption_secret, SecretUsageType.VTPM, None


def secret_names(defn: DomainDef) -> Iterator[SecretName]:
    """Every secret ``defn`` names."""
    for disk in defn.disks:
        if disk.net is not None and disk.net.auth is not None:
            yield auth_secret_name(disk)
        if disk.encryption is not None and disk.has_media:
            yield encryption_secret(disk)
    for tpm in defn.tpms:
        if tpm.backend == "emulator" and tpm.encryption_secret is not None:
            yield tpm_secret(tpm)


def check_secrets(defn: DomainDef, secrets: SecretDriver | None) -> None:
    """Refuse (NoSecretError) a start whose definition names a secret that does not exist or
    has no value, or (InvalidArgError, libvirt's ``secret with uuid ... is of type 'ceph' not
    expected 'volume' type``) one named by UUID whose usage type is not what the referrer
    needs; OperationUnsupportedError on a node without a secret driver."""
    for uuid, kind, usage in secret_names(defn):
        if secrets is None:
            raise OperationUnsupportedError(
                f"domain '{defn.name}' names secrets, but this node has no secret driver"
            )
        secrets.secret_value(uuid, kind, usage)


__all__ = [
    "SecretName",
    "auth_secret_name",
    "check_secrets",
    "encryption_secret",
    "secret_names",
    "tpm_secret",
]
