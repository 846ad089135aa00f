"""The driver registry: driver families add themselves here; a connection URI picks one.

A driver family registers an opener under the URI scheme it serves (``qemu``, ``test``) and
says which URIs it accepts, so that a wrong URI gets an error naming the ones that exist.
Built-in families are imported (and so registered) lazily, the first time a URI is resolved.
"""

from __future__ import annotations

import dataclasses
import importlib

from ..errors import NoConnectError
from ..uri import ConnectURI
from .base import DriverOpener

# Modules whose import registers the built-in driver families.
_BUILTIN = ("asvirt.drivers.qemu", "asvirt.drivers.test")


@dataclasses.dataclass(frozen=True)
class _Family:
    scheme: str
    opener: DriverOpener
    examples: tuple[str, ...]


_families: dict[str, _Family] = {}
_loaded = False


def register(scheme: str, opener: DriverOpener, *, examples: tuple[str, ...]) -> None:
    """Register ``opener`` as the driver family for URIs with this scheme.

    ``examples`` are the URI forms the family accepts, shown to users who get a URI wrong.
    """
    if scheme in _families and _families[scheme].opener is not opener:
        raise ValueError(f"a driver is already registered for '{scheme}'")
    _families[scheme] = _Family(scheme, opener, examples)


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN:
            importlib.import_module(module)
        _loaded = True


def known_uris() -> list[str]:
    _load_builtin()
    return [uri for family in _families.values() for uri in family.examples]


def resolve(uri: ConnectURI) -> DriverOpener:
    """The opener of the driver family for ``uri``; NoConnectError naming the choices if none."""
    _load_builtin()
    family = _families.get(uri.scheme)
    if family is None:
        raise NoConnectError(f"no driver for URI '{uri.uri}'; available: {', '.join(known_uris())}")
    return family.opener
