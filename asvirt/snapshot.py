"""Domain snapshots: handles to one snapshot of one domain (libvirt's ``virDomainSnapshotPtr``).

A snapshot is named within its domain. :meth:`asvirt.Domain.snapshot_create_xml` takes one,
:meth:`~asvirt.Domain.list_all_snapshots`, :meth:`~asvirt.Domain.snapshot_lookup_by_name`
and :meth:`~asvirt.Domain.snapshot_current` find them; see :mod:`asvirt.hypervisor.snapshots`
for what taking, reverting to and deleting one does.
"""

from __future__ import annotations

from .drivers.base import DomainSnapshotInfo, ProgressCallback
from .errors import NoDomainSnapshotError

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any

    from .domain import Domain


class DomainSnapshot:
    """One snapshot of a domain; equal handles name the same snapshot."""

    __slots__ = ("_domain", "_name")

    def __init__(self, domain: Domain, name: str) -> None:
        self._domain = domain
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def domain(self) -> Domain:
        """The domain it is a snapshot of."""
        return self._domain

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._domain._call(method, name=self._name, **params)

    async def xml_desc(self, *, secure: bool = False) -> str:
        """The snapshot's ``<domainsnapshot>`` XML (virsh snapshot-dumpxml); ``secure``:
        its domain's secrets too (display passwords, disk cookies), as
        :meth:`Domain.xml_desc`."""
        return await self._call("domain_snapshot_xml_desc", secure=secure)

    async def info(self) -> DomainSnapshotInfo:
        """Its parent, state, creation time, whether it is current, how many children."""
        return await self._call("domain_snapshot_info")

    async def get_parent(self) -> DomainSnapshot:
        """The snapshot it was taken after; NoDomainSnapshotError for a root."""
        parent = (await self.info()).parent
        if parent is None:
            raise NoDomainSnapshotError(f"snapshot '{self._name}' does not have a parent")
        return DomainSnapshot(self._domain, parent)

    async def is_current(self) -> bool:
        return (await self.info()).current

    async def has_metadata(self) -> bool:
        """Always True: asvirt knows every snapshot it lists by its metadata."""
        await self.info()
        return True

    async def list_all_children(
        self, *, descendants: bool = False, leaves: bool | None = None
    ) -> list[DomainSnapshot]:
        """Its children (every descendant with ``descendants``), parents first; ``leaves``
        True (False): only those without (with) children of their own."""
        names = await self._domain._call(
            "domain_snapshot_list",
            of=self._name,
            descendants=descendants,
            roots=False,
            leaves=leaves,
        )
        return [DomainSnapshot(self._domain, n) for n in names]

    async def num_children(self, *, descendants: bool = False) -> int:
        info = await self.info()
        return info.descendants if descendants else info.children

    async def revert(
        self,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Revert the domain to this snapshot (see :meth:`asvirt.Domain.revert_to_snapshot`)."""
        await self._domain.revert_to_snapshot(
            self, running=running, paused=paused, progress=progress
        )

    async def delete(
        self, *, children: bool = False, children_only: bool = False, metadata_only: bool = False
    ) -> None:
        """Delete this snapshot: its children then descend from its parent, which becomes
        current if this one was. ``children``: its descendants too; ``children_only``: only
        them. ``metadata_only``: forget them, leaving the data in the disks."""
        await self._call(
            "domain_snapshot_delete",
            children=children,
            children_only=children_only,
            metadata_only=metadata_only,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DomainSnapshot):
            return NotImplemented
        return self._domain == other._domain and self._name == other._name

    def __hash__(self) -> int:
        return hash((self._domain.uuid, self._name))

    def __repr__(self) -> str:
        return f"<asvirt.DomainSnapshot {self._name!r} of {self._domain.name!r}>"


__all__ = ["DomainSnapshot"]
