"""Connection URIs, parsed the way libvirt reads them (``driver[+transport]://[host]/path?query``)."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

from .errors import NoConnectError


@dataclasses.dataclass(frozen=True)
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
    parts = urllib.parse.urlsplit(uri)
    scheme, _, transport = parts.scheme.partition("+")
    if not scheme:
        raise NoConnectError(f"'{uri}' has no driver name")
    try:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as err:
        raise NoConnectError(f"'{uri}': bad query string: {err}") from None
    params: dict[str, str] = {}
    for key, value in query:
        if key in params:
            raise NoConnectError(f"'{uri}': parameter '{key}' given twice")
        params[key] = value
    return ConnectURI(
        uri=uri,
        scheme=scheme.lower(),
        transport=transport or None,
        host=parts.netloc,
        path=urllib.parse.unquote(parts.path),
        params=params,
    )
