"""Validation of object names (domains, and anything else that becomes a file name).

A domain's name becomes part of paths under the embed root (``ROOT/etc/qemu/NAME.xml``,
``ROOT/log/qemu/NAME.log``, sockets under ``ROOT/run/qemu/``), so a name must never be
able to climb out of its directory or confuse the tools that read those files.
"""

from __future__ import annotations

from ..errors import XMLError

#: The longest name accepted. libvirt has no hard limit, but a name is a file name
#: component (255 bytes on most file systems) with suffixes added to it.
MAX_NAME_LENGTH = 200


class InvalidNameError(XMLError):
    """A name is empty, too long, or would be unsafe as a file name."""


def validate_name(name: str, *, what: str = "domain") -> None:
    """Raise :class:`InvalidNameError` unless ``name`` is safe to use as a file name.

    Rejected: empty names, names over :data:`MAX_NAME_LENGTH` characters (or whose UTF-8
    form is over 255 bytes), names containing ``/``, NUL or other control characters,
    ``.`` and ``..``, and names starting with ``-`` (they would read as options to tools).
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"{what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if len(name.encode("utf-8", errors="surrogatepass")) > 255:
        raise InvalidNameError(f"{what} name is longer than 255 bytes in UTF-8")
    if name in (".", ".."):
        raise InvalidNameError(f"{what} name must not be '{name}'")
    if "/" in name:
        raise InvalidNameError(f"{what} name '{name}' must not contain '/'")
    for ch in name:
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            raise InvalidNameError(f"{what} name must not contain control characters")
    if name.startswith("-"):
        raise InvalidNameError(f"{what} name '{name}' must not start with '-'")
