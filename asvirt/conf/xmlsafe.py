"""Parsing XML that comes from users, safely.

Domain XML arrives from files, the CLI and API callers, so it is hostile until proven
otherwise. :func:`parse_xml` is the only place asvirt turns bytes into an element tree:

* the size is checked before any parsing, so a 50 MB document costs a ``len()``;
* entities are never resolved, no DTD is loaded and nothing is fetched from the network,
  so ``<!ENTITY x SYSTEM "file:///etc/passwd">`` reads nothing;
* a document with a DOCTYPE is rejected before the parser sees it. Turning entity
  resolution off is not enough on its own: libxml2 still reads external *parameter*
  entities (``<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;``) with some parser options, and
  its error message then quotes the file. No legitimate libvirt XML has a DOCTYPE;
* every failure is an :class:`~asvirt.errors.XMLError` with a one-line message, never an
  lxml exception.
"""

from __future__ import annotations

from lxml import etree

from ..errors import XMLError

#: The default size limit; libvirt's own limit for XML documents is 10 MiB as well.
MAX_XML_BYTES = 10 * 1024 * 1024


class MalformedXMLError(XMLError):
    """The document is not well-formed XML (or is empty)."""


class UnsafeXMLError(XMLError):
    """The document has a DOCTYPE, entity declarations or entity references."""


class XMLTooLargeError(XMLError):
    """The document is larger than the size limit."""


def _parser(encoding: str | None) -> etree.XMLParser:
    # A new parser per call: lxml parsers must not be shared between threads, and
    # creating one costs microseconds.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
        encoding=encoding,
    )


def parse_xml(data: str | bytes, *, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse ``data`` into its root element, refusing anything malformed or hostile.

    Raises :class:`XMLError` when the document is larger than ``max_bytes`` (checked before
    parsing), is not well formed, is empty, or carries a DOCTYPE that declares entities.
    """
    if isinstance(data, str):
        # A character never takes less than one byte in UTF-8: check before encoding.
        if len(data) > max_bytes:
            raise _too_big(max_bytes)
        raw = data.encode("utf-8", errors="surrogatepass")
        # A str has already been decoded, so any encoding='...' in its declaration is stale.
        parser_encoding: str | None = "utf-8"
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        parser_encoding = None
    else:
        raise MalformedXMLError(f"XML must be text or bytes, not {type(data).__name__}")
    if len(raw) > max_bytes:
        raise _too_big(max_bytes)
    if not raw.strip():
        raise MalformedXMLError("XML document is empty")
    # Only ASCII-compatible encodings (UTF-8, as libvirt writes, or Latin-1 and the like) are
    # accepted: NUL cannot appear in XML text, and in UTF-16/32 it hides markup from the scan.
    if b"\0" in raw:
        raise MalformedXMLError("malformed XML: NUL byte (only UTF-8 XML is accepted)")
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise UnsafeXMLError("XML documents with a DOCTYPE or entity declarations are not accepted")

    try:
        root = etree.fromstring(raw, _parser(parser_encoding))
    except etree.XMLSyntaxError as err:
        raise MalformedXMLError(f"malformed XML: {_first_line(err)}") from None
    except (ValueError, LookupError) as err:  # e.g. an unknown encoding= in the declaration
        raise MalformedXMLError(f"malformed XML: {_first_line(err)}") from None
    if root is None:
        raise MalformedXMLError("XML document has no root element")

    # Belt and braces: the scan above should make these impossible.
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise UnsafeXMLError("XML documents with a DOCTYPE or entity declarations are not accepted")
    for node in root.iter(etree.Entity):
        raise UnsafeXMLError(f"XML entity reference {node.text} is not accepted")  # &name;
    return root


def _too_big(limit: int) -> XMLTooLargeError:
    return XMLTooLargeError(f"XML document is larger than the {limit // 1024} KiB limit")


def _first_line(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
