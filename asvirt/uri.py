"""Connection URIs, parsed the way libvirt reads them (``driver[+transport]://[host]/path?query``).

Parsed here rather than with :mod:`urllib.parse`, which costs a one-shot command-line client
more than the rest of its URI handling (it is split as :func:`urllib.parse.urlsplit` splits
it; tests/test_uri.py compares the two).
"""

from __future__ import annotations

import os

from .errors import NoConnectError
from .records import record


@record
class ConnectURI:
    """A parsed connection URI."""

    uri: str
    scheme: str  # the driver name: "qemu", "test"
    transport: str | None
    host: str
    path: str
    params: dict[str, str]

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


def default_uri() -> str:
    """``$ASVIRT_DEFAULT_URI``, else the daemon virsh would use: ``qemu:///system`` for root,
    ``qemu:///session`` for other users."""
    uri = os.environ.get("ASVIRT_DEFAULT_URI")
    if uri:
        return uri
    return "qemu:///system" if os.geteuid() == 0 else "qemu:///session"


def parse_uri(uri: str) -> ConnectURI:
    """Split ``uri`` into its parts; raises NoConnectError if it is not a URI at all."""
    if not isinstance(uri, str) or "://" not in uri:
        raise NoConnectError(
            f"'{uri}' is not a connection URI (expected e.g. qemu:///embed?root=DIR)"
        )
    scheme, netloc, path, query = _split(uri)
    scheme, _, transport = scheme.partition("+")
    if not scheme:
        raise NoConnectError(f"'{uri}' has no driver name")
    params: dict[str, str] = {}
    for key, value in _query_pairs(query):
        if key in params:
            raise NoConnectError(f"'{uri}': parameter '{key}' given twice")
        params[key] = value
    return ConnectURI(
        uri=uri,
        scheme=scheme.lower(),
        transport=transport or None,
        host=netloc,
        path=_unquote(path),
        params=params,
    )


_C0_AND_SPACE = "".join(map(chr, range(33)))
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def _split(uri: str) -> tuple[str, str, str, str]:
    """Scheme, network location, path and query, as urllib.parse.urlsplit finds them (the
    fragment is dropped)."""
    uri = uri.lstrip(_C0_AND_SPACE)
    for c in "\t\r\n":
        uri = uri.replace(c, "")
    scheme = ""
    colon = uri.find(":")
    first = uri[:1]
    if colon > 0 and first.isascii() and first.isalpha() and _SCHEME_CHARS.issuperset(uri[:colon]):
        scheme, uri = uri[:colon].lower(), uri[colon + 1 :]
    netloc = ""
    uri = uri.split("#", 1)[0]
    uri, _, query = uri.partition("?")
    if uri[:2] == "//":
        end = uri.find("/", 2)
        end = len(uri) if end < 0 else end
        netloc, uri = uri[2:end], uri[end:]
    return scheme, netloc, uri, query


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``a=1&b=x%20y``'s pairs, as urllib.parse.parse_qsl(keep_blank_values=True) reads them."""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((_unquote(name.replace("+", " ")), _unquote(value.replace("+", " "))))
    return pairs


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _unquote(text: str) -> str:
    """``%XX`` escapes decoded, as UTF-8 (invalid sequences become U+FFFD)."""
    if "%" not in text:
        return text
    raw = text.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        pair = raw[i + 1 : i + 3]
        if byte == 0x25 and len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode(errors="replace")
