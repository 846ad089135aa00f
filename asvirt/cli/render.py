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
