"""Where a node's drivers keep their files: one rule for every driver.

A node's files live under its top directories: all under ``root`` for an embed root
(``ROOT/etc``, ``ROOT/run``, ``ROOT/lib``, ``ROOT/log``, ``ROOT/cache``), or spread over the
system's directories for ``asvirtd --system`` (``/etc/asvirt``, ``/run/asvirt``,
``/var/lib/asvirt``...). Each driver keeps a directory of its own under each top
(``etc/qemu``, ``etc/network``, ``etc/storage``...), as libvirt's drivers do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class NodeDirs:
    """A node's top directories."""

    root: Path
    #: Top directories that are not under ``root``: ("etc", path), ("run", path), ("log",
    #: path), ("lib", path), ("cache", path). They may be shared with others (``/run/asvirt``
    #: holds the daemon's read-only socket): asvirt checks them but does not narrow them.
    tops: tuple[tuple[str, Path], ...] = ()

    def top(self, name: str) -> Path:
        """The top directory ``name`` (``etc``, ``run``, ``lib``, ``log``, ``cache``)."""
        return dict(self.tops).get(name, self.root / name)


__all__ = ["NodeDirs"]
