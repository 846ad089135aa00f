"""libvirt's secret XML: parse, check, format (``virsecretconf.c``'s schema).

::

    <secret ephemeral='no' private='yes'>
      <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
      <description>the passphrase of vm1's disk</description>
      <usage type='volume'>
        <volume>/var/lib/asvirt/images/vm1.qcow2</volume>
      </usage>
    </secret>

``ephemeral``: never written to disk, gone when the node closes; ``private``: its value is
never given back to a client. A ``<usage>`` ties the secret to one use, and no two secrets
share one: ``volume`` (a volume's path), ``ceph`` and ``tls`` and ``vtpm`` (a ``<name>``),
``iscsi`` (a ``<target>``). The value is never part of the XML.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib

from lxml import etree

from ..errors import XMLError
from .names import canonical_uuid
from .secret_usage import SecretUsageType
from .xmlnode import Node, XElem
from .xmlsafe import parse_xml

#: The element holding a usage's id, by usage type (libvirt's names).
USAGE_ELEMENT = {
    SecretUsageType.VOLUME: "volume",
    SecretUsageType.CEPH: "name",
    SecretUsageType.ISCSI: "target",
    SecretUsageType.TLS: "name",
    SecretUsageType.VTPM: "name",
}

#: libvirt's words for a usage whose id is missing.
_USAGE_WORD = {
    SecretUsageType.VOLUME: ("volume", "volume path"),
    SecretUsageType.CEPH: ("Ceph", "name"),
    SecretUsageType.ISCSI: ("iSCSI", "target"),
    SecretUsageType.TLS: ("TLS", "name"),
    SecretUsageType.VTPM: ("vTPM", "name"),
}


@dataclasses.dataclass
class SecretDef:
    """One secret's definition (libvirt's ``virSecretDef``)."""

    uuid: str
    ephemeral: bool = False
    private: bool = False
    description: str | None = None
    usage_type: SecretUsageType = SecretUsageType.NONE
    #: The volume path, Ceph/TLS/vTPM name or iSCSI target ("" for NONE).
    usage_id: str = ""

    def to_xml(self) -> str:
        """The definition as libvirt formats it."""
        root = XElem("secret", {"ephemeral": self.ephemeral, "private": self.private})
        root.add("uuid", text=self.uuid)
        if self.description is not None:
            root.add("description", text=self.description)
        if self.usage_type is not SecretUsageType.NONE:
            usage = root.add("usage", {"type": self.usage_type.label})
            usage.add(USAGE_ELEMENT[self.usage_type], text=self.usage_id)
        return root.serialize()


def parse_secret_xml(text: str | bytes) -> SecretDef:
    """Parse and check libvirt secret XML; XMLError (or ConfigUnsupportedError) if it is
    not one, naming what is wrong. A secret without ``<uuid>`` gets a new one."""
    root: etree._Element = parse_xml(text)
    if root.tag != "secret":
        raise XMLError(f"expected a <secret> document, not <{root.tag}>")
    node = Node(root, ("secret",))
    defn = SecretDef(uuid="")
    defn.ephemeral = bool(node.yesno("ephemeral"))
    defn.private = bool(node.yesno("private"))
    uuid_text = node.child_text("uuid")
    defn.uuid = (
        str(uuidlib.uuid4())
        if uuid_text is None
        else canonical_uuid(uuid_text, what="secret UUID", error=XMLError)
    )
    desc = node.child("description")
    if desc is not None:
        defn.description = desc.el.text or ""
        desc.finish()
    usage = node.child("usage")
    if usage is not None:
        kind = usage.choice("type", [t.label for t in USAGE_ELEMENT])
        if kind is None:
            raise XMLError("unknown secret usage type (missing type of <secret><usage>)")
        defn.usage_type = SecretUsageType[kind.upper()]
        usage_id = usage.child_text(USAGE_ELEMENT[defn.usage_type])
        if not usage_id:
            what, part = _USAGE_WORD[defn.usage_type]
            raise XMLError(f"{what} usage specified, but {part} is missing")
        defn.usage_id = usage_id
        usage.finish()
    node.finish()
    return defn


__all__ = ["USAGE_ELEMENT", "SecretDef", "parse_secret_xml"]
