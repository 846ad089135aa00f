"""A domain's ``<title>``, ``<description>`` and ``<metadata>``, changed and read as libvirt's
``virDomainSetMetadata``/``virDomainGetMetadata`` do (``virDomainDefSetMetadata``).

``<metadata>`` holds at most one element per namespace (:attr:`DomainDef.metadata`, each
kept as its XML text). Setting an element gives its root the namespace ``uri`` with the
prefix ``key`` and replaces whatever element had that namespace; reading one gives it back
without its namespace, as virsh shows it.
"""

from __future__ import annotations

import copy
import re

from lxml import etree

from ..errors import InvalidArgError, NoDomainMetadataError, XMLError
from .domain import DomainDef
from .metadata_type import MetadataType
from .xmlsafe import parse_xml


def _namespace(element_xml: str) -> str | None:
    return etree.QName(parse_xml(element_xml)).namespace


def set_metadata(
    defn: DomainDef, kind: MetadataType, value: str | None, key: str | None, uri: str | None
) -> None:
    """Change ``defn`` in place; ``value`` None or empty removes the item."""
    kind = MetadataType(kind)
    if kind is not MetadataType.ELEMENT and (key is not None or uri is not None):
        raise InvalidArgError("a title or description takes no key or uri")
    if kind is MetadataType.TITLE:
        if value and "\n" in value:
            raise InvalidArgError("metadata title can't contain newlines")
        defn.title = value or None
        return
    if kind is MetadataType.DESCRIPTION:
        defn.description = value or None
        return
    if not uri:
        raise InvalidArgError("a metadata element needs its namespace URI")
    kept = [m for m in defn.metadata if _namespace(m) != uri]
    if value:
        if not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key) or key.lower() == "xml":
            raise InvalidArgError(f"invalid metadata key '{key or ''}' (an XML name prefix)")
        try:
            root = parse_xml(value)
        except XMLError as err:
            raise XMLError(f"(metadata_xml): {err}") from None
        element = etree.Element(etree.QName(uri, etree.QName(root).localname), nsmap={key: uri})
        element.attrib.update(root.attrib)
        element.text = root.text
        element.extend(copy.deepcopy(child) for child in root)
        etree.cleanup_namespaces(element)
        kept.append(etree.tostring(element, encoding="unicode"))
    defn.metadata = kept


def adopt_metadata(target: DomainDef, source: DomainDef) -> None:
    """Give ``target`` the title, description and metadata elements of ``source``."""
    target.title, target.description = source.title, source.description
    target.metadata = list(source.metadata)


def get_metadata(defn: DomainDef, kind: MetadataType, uri: str | None) -> str:
    """The item's text (an element: its XML, without its namespace);
    NoDomainMetadataError when it is not there."""
    kind = MetadataType(kind)
    found: str | None
    if kind is MetadataType.TITLE:
        found = defn.title
    elif kind is MetadataType.DESCRIPTION:
        found = defn.description
    else:
        if not uri:
            raise InvalidArgError("a metadata element needs its namespace URI")
        found = None
        for text in defn.metadata:
            root = parse_xml(text)
            if etree.QName(root).namespace != uri:
                continue
            for el in root.iter():
                if isinstance(el.tag, str) and etree.QName(el).namespace == uri:
                    el.tag = etree.QName(el).localname
            etree.cleanup_namespaces(root)
            found = etree.tostring(root, encoding="unicode")
    if found is None:
        raise NoDomainMetadataError("Requested metadata element is not present")
    return found


__all__ = ["MetadataType", "adopt_metadata", "get_metadata", "set_metadata"]
