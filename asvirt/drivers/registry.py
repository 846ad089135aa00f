"""The driver registry: driver families add themselves here; a connection URI picks one.

A driver family registers an opener under the URI scheme it serves (``qemu``, ``test``) and
says which URIs it accepts, so that a wrong URI gets an error naming the ones that exist.
Built-in families are imported (and so registered) lazily, the first time a URI of theirs is
resolved: a client of a daemon never imports the QEMU or test drivers (nor trio, which they run
on).
"""

from __future__ import annotations

import dataclasses
import importlib

from ..errors import NoConnectError
from ..uri import ConnectURI
from .base import DriverOpener

# Modules whose import registers the built-in driver families, by the scheme they serve.
_BUILTIN = {"qemu": "asvirt.drivers.qemu", "test": "asvirt.drivers.test"}


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
        for module in _BUILTIN.values():
            importlib.import_module(module)
        _loaded = True


def known_uris() -> list[str]:
    _load_builtin()
    return [uri for family in _families.values() for uri in family.examples]


def resolve(uri: ConnectURI) -> DriverOpener:
    """The opener of the driver family for ``uri``; NoConnectError naming the choices if none."""
    module = _BUILTIN.get(uri.scheme)
    if module is not None:
        importlib.import_module(module)
    else:
        _load_builtin()
    family = _families.get(uri.scheme)
    if family is None:
        raise NoConnectError(f"no driver for URI '{uri.uri}'; available: {', '.join(known_uris())}")
    return family.opener


def require_trio(uri: ConnectURI) -> None:
    """NoConnectError unless the caller runs under trio: the in-process drivers (an embed root,
    the test node) supervise their node on trio. Under asyncio, a daemon serves the same node.
    """
    import sniffio  # how anyio and trio tell event loops apart; cheap

    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "an unknown event loop"
    if library != "trio":
        raise NoConnectError(
            f"'{uri.uri}' runs its driver in this process, on trio, so it cannot be opened "
            f"under {library}: open it from trio.run(), or from {library} connect to a daemon "
            "(qemu:///session, or qemu+unix:///system?socket=PATH of an asvirtd)"
        )
