"""Where a node's storage driver keeps its files: apart from the driver, so that a node can
tell whether it has any pool without importing the driver."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ... import fsutil
from ..layout import NodeDirs


@dataclasses.dataclass(frozen=True)
class StoragePaths(NodeDirs):
    """Where a node's storage driver keeps its files (see the module's description)."""

    @property
    def config_dir(self) -> Path:
        return self.top("etc") / "storage"

    @property
    def autostart_dir(self) -> Path:
        return self.config_dir / "autostart"

    @property
    def state_dir(self) -> Path:
        return self.top("run") / "storage"

    @property
    def lib_dir(self) -> Path:
        return self.top("lib") / "storage"

    def config(self, name: str) -> Path:
        return self.config_dir / f"{name}.xml"

    def autostart(self, name: str) -> Path:
        return self.autostart_dir / name

    def state(self, name: str) -> Path:
        return self.state_dir / f"{name}.xml"

    def volumes(self, name: str) -> Path:
        return self.lib_dir / f"{name}.volumes.json"

    def reserved(self) -> list[str]:
        """Directories no pool may be (or be inside): the node's own files. (A pool may be
        elsewhere under the root or its lib directory, ``ROOT/images`` or
        ``/var/lib/asvirt/images`` say, but not the root itself.)"""
        lib = self.top("lib")
        return [
            *(str(self.top(name)) for name in ("etc", "run", "log", "cache")),
            *(str(lib / name) for name in ("events", "qemu", "network", "storage")),
        ]

    def in_use(self) -> bool:
        """Whether the root holds a pool: a definition, or the state of one that runs (a
        node loads its storage driver at open only then, else at its first use)."""
        return any(self.config_dir.glob("*.xml")) or any(self.state_dir.glob("*.xml"))

    def create(self) -> None:
        # The top directories exist already (the node made them with its own).
        for d in (self.config_dir, self.autostart_dir, self.state_dir, self.lib_dir):
            fsutil.ensure_private_dir(d)


__all__ = ["StoragePaths"]
