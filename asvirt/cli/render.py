"""Text layouts in virsh's shapes."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A virsh-style table: a header, a dashed rule, left-aligned columns, a blank last line."""
    rows = [tuple(r) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))).rstrip()

    head = line(header)
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1) + 2)
    return "\n".join([head, rule, *(line(r) for r in rows), ""])


def pairs(items: Iterable[tuple[str, str]]) -> str:
    """virsh's "Key:    value" listing, values aligned, with a blank last line."""
    items = list(items)
    width = max(len(k) for k, _ in items) + 2
    return "\n".join([*(f"{(k + ':').ljust(width)}{v}" for k, v in items), ""])


def padded_pairs(items: Iterable[tuple[str, str]]) -> str:
    """virsh's ``Name:           value`` lines (the key padded to 15 columns)."""
    return "".join(f"{key + ':':<15} {value}\n" for key, value in items)


def display_uri(live_xml: str) -> str | None:
    """What ``virsh domdisplay`` prints for a running domain's XML: ``spice://HOST:PORT``,
    ``vnc://HOST:DISPLAY`` or ``spice+unix:///PATH``; None without a display."""
    from lxml import etree

    root = etree.fromstring(live_xml.encode())
    for gfx in root.iterfind("devices/graphics"):
        kind = gfx.get("type")
        if kind not in ("spice", "vnc"):
            continue
        listen = gfx.find("listen")
        if listen is not None and listen.get("type") == "socket":
            return f"{kind}+unix://{listen.get('socket')}"
        port = gfx.get("port")
        if port is None or not port.isdigit():
            continue
        host = gfx.get("listen") or (listen.get("address") if listen is not None else None)
        if host in (None, "", "0.0.0.0", "::"):
            host = "localhost"
        elif ":" in str(host):
            host = f"[{host}]"
        number = int(port) - 5900 if kind == "vnc" else int(port)
        return f"{kind}://{host}:{number}"
    return None


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
