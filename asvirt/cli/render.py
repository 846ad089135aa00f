"""Text layouts in virsh's shapes."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterable, Sequence

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import TextIO


def typed_value(value: object) -> str:
    """A typed parameter's value as virsh prints it (``vshGetTypedParamValue``): booleans
    yes/no, doubles with six decimals (domstats, guestinfo)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """virsh's table (libvirt's ``vshTablePrint``): the header, a dashed rule, the rows.

    Each cell is printed as ``" " + cell``, every column but the last padded to its widest
    cell plus two spaces (the last is never padded); the rule is each column's width plus
    three dashes. Cells are measured as the terminal shows them (wide characters count
    two) and control characters are printed as ``\\xNN``, as virsh does. The text ends with
    the blank line virsh prints after every command (:func:`print` it).
    """
    cells = [[_safe_cell(c) for c in header]]
    cells += [[_safe_cell(c) for c in row] for row in rows]
    for row in cells[1:]:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells, the header {len(header)}")
    widths = [max(width for _, width in column) for column in zip(*cells, strict=True)]

    def line(row: Sequence[tuple[str, int]]) -> str:
        out = []
        for i, (text, width) in enumerate(row):
            out.append(" " + text)
            if i < len(row) - 1:
                out.append(" " * (widths[i] - width + 2))
        return "".join(out)

    rule = "".join("-" * (w + 3) for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:]), ""])


def _safe_cell(text: str) -> tuple[str, int]:
    """A cell as virsh prints it, and its width in terminal columns (``vshTableSafeEncode``)."""
    out: list[str] = []
    width = 0
    for i, ch in enumerate(text):
        if (ch == "\\" and text[i + 1 : i + 2] == "x") or (ord(ch) < 0x20 or ord(ch) == 0x7F):
            out.append(f"\\x{ord(ch):02x}")
            width += 4
        elif not ch.isprintable():
            for byte in ch.encode():
                out.append(f"\\x{byte:02x}")
                width += 4
        else:
            out.append(ch)
            if unicodedata.combining(ch):
                pass
            elif unicodedata.east_asian_width(ch) in ("W", "F"):
                width += 2
            else:
                width += 1
    return "".join(out), width


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """virsh's "Key:    value" listing, values aligned, with a blank last line."""
    items = list(items)
    width = max(len(k) for k, _ in items) + 2
    return "\n".join([*(f"{(k + ':').ljust(width)}{v}" for k, v in items), ""])


def xml_document(xml: str) -> str:
    """An XML document as virsh's ``*dumpxml`` commands print it: the document (ending in a
    newline), then the blank line virsh prints after every command. Write it as it is."""
    return xml + ("\n" if xml.endswith("\n") else "\n\n")


def padded_pairs(items: Iterable[tuple[str, str]], width: int = 15) -> str:
    """virsh's ``Name:           value`` lines: ``"%-15s %s\\n"`` (``dominfo``, ``pool-info``;
    ``nodeinfo`` pads to 20). :func:`print` it for the blank line after the command."""
    return "".join(f"{key + ':':<{width}} {value}\n" for key, value in items)


def display_uri(live_xml: str) -> str | None:
    """What ``virsh domdisplay`` prints for a running domain's XML: ``spice://HOST:PORT``
    (``?tls-port=N`` added for a SPICE TLS port; ``spice://HOST?tls-port=N`` with only
    that), ``vnc://HOST:DISPLAY`` or ``spice+unix:///PATH``; None without a display. A
    secure XML's password is in it as virsh's ``--include-password`` puts it
    (``vnc://:PASSWORD@HOST:DISPLAY``)."""
    from lxml import etree

    root = etree.fromstring(live_xml.encode())
    for gfx in root.iterfind("devices/graphics"):
        kind = gfx.get("type")
        if kind not in ("spice", "vnc"):
            continue
        listen = gfx.find("listen")
        if listen is not None and listen.get("type") == "socket":
            return f"{kind}+unix://{listen.get('socket')}"
        port = _positive(gfx.get("port"))
        tls_port = _positive(gfx.get("tlsPort")) if kind == "spice" else None
        if port is None and tls_port is None:
            continue
        host = gfx.get("listen") or (listen.get("address") if listen is not None else None)
        if host in (None, "", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in str(host):
            host = f"[{host}]"
        passwd = gfx.get("passwd")
        uri = f"{kind}://{host}" if passwd is None else f"{kind}://:{passwd}@{host}"
        if port is not None:
            uri += f":{port - 5900 if kind == 'vnc' else port}"
        if tls_port is not None:
            uri += f"?tls-port={tls_port}"
        return uri
    return None


def _positive(value: str | None) -> int | None:
    """A port of the live XML, or None for none (absent, or -1: not allocated)."""
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None


class ProgressBar:
    """``[#########               ]  38 %`` on a terminal; nothing anywhere else."""

    def __init__(self, what: str, stream: TextIO | None = None, *, width: int = 40) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._what = what
        self._width = width
        self._shown = -1

    def line(self, fraction: float) -> str:
        fraction = min(1.0, max(0.0, fraction))
        done = round(fraction * self._width)
        return f"{self._what} [{'#' * done}{' ' * (self._width - done)}] {int(fraction * 100):3d} %"

    def __call__(self, fraction: float) -> None:
        percent = int(min(1.0, max(0.0, fraction)) * 100)
        if not self._tty or percent == self._shown:
            return
        self._shown = percent
        self._stream.write("\r" + self.line(fraction))
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._shown >= 0:
            self._stream.write("\n")
            self._stream.flush()


def pretty_capacity(value: int) -> str:
    """virsh's ``%.3lf UNIT`` with binary units."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.3f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
