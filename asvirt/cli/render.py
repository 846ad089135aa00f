"""Text layouts in virsh's shapes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


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
