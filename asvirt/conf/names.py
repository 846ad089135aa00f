"""Names and UUIDs: how objects (domains, networks, pools) are identified.

A domain's name becomes part of paths under the embed root (``ROOT/etc/qemu/NAME.xml``,
``ROOT/log/qemu/NAME.log``, sockets under ``ROOT/run/qemu/``), so a name must never be
able to climb out of its directory or confuse the tools that read those files.

:func:`canonical_uuid` is the one reader of UUID strings, for XML and for lookups alike.
"""

from __future__ import annotations

import re

from ..errors import AsvirtError, InvalidArgError, XMLError

#: The longest name accepted. libvirt has no hard limit, but a name is a file name
#: component (255 bytes on most file systems) with suffixes added to it.
MAX_NAME_LENGTH = 200
#: Bytes of a name's UTF-8 form: files are named NAME + a suffix (".shutoff", ".status",
#: ".status.corrupt"), and a file name has at most 255 bytes.
MAX_NAME_BYTES = 240


class InvalidNameError(XMLError):
    """A name is empty, too long, or would be unsafe as a file name."""


def validate_name(name: str, *, what: str = "domain") -> None:
    """Raise :class:`InvalidNameError` unless ``name`` is safe to use as a file name.

    Rejected: empty names, names over :data:`MAX_NAME_LENGTH` characters (or whose UTF-8
    form is over :data:`MAX_NAME_BYTES` bytes), names containing ``/``, NUL or other control
    characters, ``.`` and ``..``, and names starting with ``-`` (they would read as options
    to tools).
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if len(name.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidNameError(f"{what} name is longer than {MAX_NAME_BYTES} bytes in UTF-8")
    if name in (".", ".."):
        raise InvalidNameError(f"{what} name must not be '{name}'")
    if "/" in name:
        raise InvalidNameError(f"{what} name '{name}' must not contain '/'")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            raise InvalidNameError(f"{what} name must not contain control characters")
    if name.startswith("-"):
        raise InvalidNameError(f"{what} name '{name}' must not start with '-'")


#: libvirt's ``genericName`` (basictypes.rng): what its schema allows in names such as an RBD
#: disk's ``<snapshot name=>`` or an ``<auth username=>``.
GENERIC_NAME_RE = re.compile(r"[a-zA-Z0-9_+\-]+")


def generic_name(value: str, what: str) -> str:
    """``value`` if libvirt's schema types it as a valid ``genericName``: letters, digits,
    ``_``, ``+`` and ``-`` (no ``.``, no blank); :class:`~asvirt.errors.XMLError` naming
    ``what`` otherwise, so that the XML written back stays valid under libvirt's schema."""
    if GENERIC_NAME_RE.fullmatch(value) is None:
        raise XMLError(
            f"invalid value '{value}' for {what}: only letters, digits, '_', '+' and '-' "
            "are allowed (libvirt's genericName)"
        )
    return value


# libvirt's virUUIDParse: 32 hex digits in pairs, with '-' or ' ' allowed between the pairs
# and blanks around the whole.
_UUID_RE = re.compile(r"[ \t\n\v\f\r]*((?:[- ]*[0-9A-Fa-f]{2}){16})[ \t\n\v\f\r]*")


def canonical_uuid(
    text: object, *, what: str = "UUID", error: type[AsvirtError] = InvalidArgError
) -> str:
    """The canonical lowercase ``8-4-4-4-12`` form of a UUID written any way libvirt accepts.

    libvirt accepts 32 hex digits in either case, with ``-`` or spaces between pairs of
    digits and blanks around them (``C7A5FDBD-EDAF-...``, ``c7a5fdbdedaf...``). Anything else
    raises ``error``: :class:`~asvirt.errors.InvalidArgError` by default (a UUID passed to a
    lookup); XML readers pass their own :class:`~asvirt.errors.XMLError` class.
    """
    m = _UUID_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        shown = text.strip() if isinstance(text, str) else repr(text)
        raise error(f"invalid {what} '{shown}'")
    hexdigits = m.group(1).replace("-", "").replace(" ", "").lower()
    return "-".join(hexdigits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))
