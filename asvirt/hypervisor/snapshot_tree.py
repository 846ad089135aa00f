"""A domain's snapshot tree: its snapshots, how they descend, and the current one.

Kept on the domain (:attr:`asvirt.hypervisor.domains.DomainObj.snapshots`); the rules that
change it are in :mod:`asvirt.hypervisor.snapshots`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..conf.snapshot import SnapshotDef
from ..drivers.base import DomainSnapshotInfo
from ..errors import NoDomainSnapshotError


class SnapshotTree:
    """One domain's snapshots: their definitions, how they descend, and the current one."""

    __slots__ = ("_snaps", "current")

    def __init__(self) -> None:
        self._snaps: dict[str, SnapshotDef] = {}
        #: The name of the current snapshot, or None.
        self.current: str | None = None

    def __len__(self) -> int:
        return len(self._snaps)

    def __contains__(self, name: object) -> bool:
        return name in self._snaps

    def get(self, name: str, *, domain: str) -> SnapshotDef:
        """The snapshot ``name``; NoDomainSnapshotError if there is none."""
        snap = self._snaps.get(name) if isinstance(name, str) else None
        if snap is None:
            raise NoDomainSnapshotError(
                f"no domain snapshot with matching name '{name}' (domain '{domain}')"
            )
        return snap

    def add(self, snap: SnapshotDef) -> None:
        self._snaps[snap.name] = snap

    def load(self, snaps: Iterable[SnapshotDef], current: str | None) -> None:
        """Fill the tree from stored snapshots; parents that are gone make roots."""
        for snap in snaps:
            self._snaps[snap.name] = snap
        for snap in self._snaps.values():
            if snap.parent is not None and snap.parent not in self._snaps:
                snap.parent = None
        self.current = current if current in self._snaps else None

    def remove(self, name: str) -> None:
        del self._snaps[name]
        if self.current == name:
            self.current = None

    def children(self, name: str | None) -> list[SnapshotDef]:
        """The snapshots whose parent is ``name`` (None: the roots), oldest first."""
        return sorted(
            (s for s in self._snaps.values() if s.parent == name),
            key=lambda s: (s.creation_time, s.name),
        )

    def descendants(self, name: str | None) -> list[SnapshotDef]:
        """Everything below ``name`` (None: every snapshot), parents before their children."""
        out: list[SnapshotDef] = []
        todo = list(reversed(self.children(name)))
        while todo:
            snap = todo.pop()
            out.append(snap)
            todo.extend(reversed(self.children(snap.name)))
        return out

    def info(self, name: str, *, domain: str) -> DomainSnapshotInfo:
        snap = self.get(name, domain=domain)
        return DomainSnapshotInfo(
            name=snap.name,
            parent=snap.parent,
            state=snap.state,
            creation_time=snap.creation_time,
            current=self.current == snap.name,
            children=len(self.children(snap.name)),
            descendants=len(self.descendants(snap.name)),
            memory=snap.has_memory,
        )


__all__ = ["SnapshotTree"]
