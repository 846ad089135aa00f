"""``<encryption format='luks'>`` of a disk or a storage volume (libvirt's
``virStorageEncryption``): which secret holds the passphrase.

::

    <encryption format='luks'>
      <secret type='passphrase' uuid='c7a5fdbd-edaf-9455-926a-d65c16db1809'/>
    </encryption>

The secret is named by ``uuid=`` or by ``usage=`` (a secret of usage type ``volume`` whose id
is that string). libvirt 9 accepts the element inside the disk's ``<source>`` and directly in
``<disk>``; it is written back where it was found. Only LUKS is honoured: QEMU dropped the
legacy qcow AES encryption (``format='qcow'``) for running guests in 5.0.
"""

from __future__ import annotations

import dataclasses

from ..errors import ConfigUnsupportedError, XMLError
from .names import canonical_uuid
from .xmlnode import Node, XElem


@dataclasses.dataclass
class Encryption:
    """An encrypted image's format and the secret of its passphrase."""

    format: str = "luks"
    secret_uuid: str | None = None
    #: The secret's usage id (a ``volume`` secret), when named by usage.
    secret_usage: str | None = None
    #: ``engine='qemu'`` as written (libvirt 9's only engine for disks QEMU opens).
    engine: str | None = None
    #: Found in the disk's ``<source>`` (written back there), else in ``<disk>``.
    in_source: bool = False

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("encryption", {"format": self.format, "engine": self.engine})
        el.add(
            "secret", {"type": "passphrase", "uuid": self.secret_uuid, "usage": self.secret_usage}
        )


def parse_encryption(
    node: Node, *, in_source: bool = False, for_volume: bool = False
) -> Encryption:
    """Parse ``<encryption>``; XMLError or ConfigUnsupportedError naming what is wrong.

    ``for_volume``: a storage volume's, which may name no secret when it is created without
    one (refused later, where a secret is needed)."""
    fmt = node.required("format")
    if fmt == "qcow":
        raise ConfigUnsupportedError(
            f"unsupported configuration: format='qcow' of {node.where}: QEMU no longer opens "
            "qcow-encrypted images for guests (removed in QEMU 5.0); use format='luks'"
        )
    if fmt != "luks":
        raise node.unsupported_value("format", fmt, ["luks"])
    enc = Encryption(format=fmt, in_source=in_source)
    enc.engine = node.choice("engine", ("qemu",))
    secrets = node.children("secret")
    if len(secrets) > 1:
        raise XMLError(f"{node.where} has more than one <secret>")
    if secrets:
        sec = secrets[0]
        kind = sec.required("type")
        if kind != "passphrase":
            raise XMLError(f"unrecognized volume encryption secret type '{kind}'")
        uuid = sec.attr("uuid")
        usage = sec.attr("usage")
        if (uuid is None) == (usage is None):
            raise XMLError(f"{sec.where} needs either uuid= or usage=")
        if uuid is not None:
            enc.secret_uuid = canonical_uuid(uuid, what="secret UUID", error=XMLError)
        enc.secret_usage = usage
        sec.finish()
    elif not for_volume:
        raise XMLError(f"{node.where} needs a <secret type='passphrase'>")
    node.finish()
    return enc


__all__ = ["Encryption", "parse_encryption"]
