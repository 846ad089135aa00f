"""libvirt's scaled integers: ``<memory unit='GiB'>2</memory>`` and friends.

libvirt's schema spells units as ``b``/``bytes``, or a power letter (``k m g t p e``)
optionally followed by ``B`` (decimal: ``KB`` is 1000) or ``iB`` (binary: ``KiB`` is 1024),
all case-insensitively; a bare letter is binary (``k`` is 1024).
"""

from __future__ import annotations

import re

from .xmlnode import InvalidValueError

_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_UNIT_RE = re.compile(r"^(?:(?P<bytes>b(?:ytes?)?)|(?P<p>[kmgtpe])(?P<suffix>ib|b)?)$")
_NUMBER_RE = re.compile(r"^\s*\+?(\d+)\s*$")

#: The largest memory size libvirt accepts, in KiB (it keeps sizes in 53 bits so they
#: survive a trip through JSON doubles).
MAX_MEMORY_KIB = (1 << 53) - 1


class UnitError(InvalidValueError):
    """A size has an unknown unit or is not a number."""


def unit_multiplier(unit: str, *, what: str) -> int:
    """Bytes per ``unit``; raises :class:`UnitError` for a unit libvirt does not know."""
    m = _UNIT_RE.match(unit.strip().lower())
    if m is None:
        raise UnitError(f"unknown unit '{unit}' for {what}")
    if m.group("bytes"):
        return 1
    base = 1000 if m.group("suffix") == "b" else 1024
    return base ** _POWERS[m.group("p")]


def parse_scaled(text: str | None, unit: str | None, *, what: str, default_unit: str) -> int:
    """The size in bytes of ``text`` given in ``unit`` (``default_unit`` when absent)."""
    if text is None or not _NUMBER_RE.match(text):
        raise UnitError(f"invalid {what} value '{(text or '').strip()}': not a whole number")
    number = int(_NUMBER_RE.match(text).group(1))  # type: ignore[union-attr]
    return number * unit_multiplier(unit if unit is not None else default_unit, what=what)


def parse_kib(text: str | None, unit: str | None, *, what: str) -> int:
    """A memory-like size in KiB, rounded up as libvirt does (default unit KiB)."""
    size = parse_scaled(text, unit, what=what, default_unit="KiB")
    kib = -(-size // 1024)
    if kib > MAX_MEMORY_KIB:
        raise UnitError(f"{what} size is too large")
    return kib


_SIZE_ARG_RE = re.compile(r"^\s*\+?(\d+)\s*([A-Za-z]*)\s*$")


def parse_size_arg(text: str, *, what: str, default_unit: str = "b") -> int:
    """Bytes in a size written on a command line, virsh's way: ``10G``, ``512MiB``, ``4096``.

    The number is a whole one; the unit is any :func:`unit_multiplier` knows,
    ``default_unit`` (bytes, unless said) when there is none. Raises :class:`UnitError`
    naming ``what`` otherwise.
    """
    m = _SIZE_ARG_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise UnitError(f"invalid {what} '{text}': expected a whole number and a unit (10G)")
    return int(m.group(1)) * unit_multiplier(m.group(2) or default_unit, what=what)
