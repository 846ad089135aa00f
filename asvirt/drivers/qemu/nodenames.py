"""The numbers of a disk's QEMU block nodes (``libvirt-N-storage``, ``libvirt-N-format``,
``libvirt-N-throttle``): libvirt's ``<source index='N'>``, one owner for all of them.

The command line numbers the disks it starts with (post-parse); every node opened later (a
plugged disk, a new medium, an external snapshot's overlay) takes a number above the highest
the domain has: any disk's, and any node's QEMU still has open (the image a pivot left below
may keep its nodes, and their number, after its disk moved on). A disk that pivots onto
another image takes the number of the node it now runs on (:func:`index_of`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...conf.devices import Disk
    from ...conf.domain import DomainDef

_NODE = re.compile(r"libvirt-(\d+)-(?:storage|format|throttle)\b")


def number_disks(disks: Sequence[Disk], *, keep: bool = False) -> None:
    """Number the disks a command line opens (the first the highest, the last 1);
    ``keep``: a disk that has a number keeps it (a running domain's)."""
    for i, disk in enumerate(disks):
        if not (keep and disk.node_index is not None):
            disk.node_index = len(disks) - i


def index_of(node: object) -> int | None:
    """The number in a node's name (``libvirt-3-format``: 3); None for a name QEMU gave
    (``#block123``) or another's."""
    m = _NODE.match(str(node or ""))
    return int(m.group(1)) if m else None


async def fresh_index(
    call: Callable[[str, dict[str, Any] | None], Awaitable[Any]], defn: DomainDef
) -> int:
    """A node number neither a disk of ``defn`` nor a node QEMU has open uses (``call``:
    the runner's QMP call)."""
    named = await call("query-named-block-nodes", {"flat": True})
    used = [d.node_index or 0 for d in defn.disks]
    used += [b.index or 0 for d in defn.disks for b in d.backing_store or ()]
    used += [i for n in named if (i := index_of(n.get("node-name"))) is not None]
    return 1 + max(used, default=0)


__all__ = ["fresh_index", "index_of", "number_disks"]
