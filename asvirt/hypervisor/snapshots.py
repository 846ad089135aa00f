"""Internal snapshots of a domain's qcow2 disks (and memory), once for every hypervisor.

What a snapshot is and which rules it follows is decided here, with libvirt's semantics:

* **Create.** A running or paused domain's snapshot holds its memory state and every
  snapshotted disk, taken together while the guest is paused (``memory snapshot='internal'``,
  state ``running`` or ``paused``). A shut-off domain's holds its disks only (state
  ``shutoff``). Which disks: every one, except read-only, shareable and media-less ones, or
  those the request (or the disk's own ``snapshot='no'``) leaves out; a disk that is asked for
  and cannot have an internal snapshot (raw, not a file or block device, shared, read-only) is
  refused before anything is made. A snapshot exists on every disk or on none.
* **Metadata.** Each domain has a tree of snapshots (parents and children) and at most one
  *current* snapshot: the newest one taken, or the one last reverted to. A new snapshot's
  parent is the current one. The backend keeps it durably (the QEMU driver in
  ``ROOT/lib/qemu/snapshot/DOMAIN/NAME.xml``, as libvirt does).
* **Revert.** To a snapshot with memory: the guest runs (or is paused) in the state it had
  — loaded in place when the running QEMU has the snapshot's configuration, else QEMU is
  restarted with it. To a shut-off snapshot: the domain stops and its disks go back. The
  domain's persistent configuration becomes the snapshot's. Events as libvirt's:
  STOPPED/FROM_SNAPSHOT, STARTED/FROM_SNAPSHOT, SUSPENDED/FROM_SNAPSHOT,
  RESUMED/FROM_SNAPSHOT, DEFINED/FROM_SNAPSHOT.
* **Delete.** One snapshot (its children move to its parent; if it was current, its parent
  becomes current), or with all its descendants, or only its descendants; ``metadata_only``
  forgets them without touching the disks.

A driver supplies what touches disks and guests: its runtime's
:class:`~.guest_state.StatefulRuntime` methods for an active domain, and its backend's
``snapshot_disks`` for a shut-off one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..conf.devices import Disk
from ..conf.domain import DomainDef
from ..conf.snapshot import SnapshotDef, SnapshotDisk, parse_snapshot_xml
from ..drivers.base import DomainSnapshotInfo, ProgressCallback
from ..errors import (
    ConfigUnsupportedError,
    InvalidArgError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
)
from ..events import DefinedDetail, LifecycleEvent
from ..log import get_logger
from ..states import DomainState
from .driver_base import DomainDriverBase
from .guest_state import FromSnapshot, SnapshotTarget, StopCause, stateful
from .secrets import encryption_secret
from .volumes import resolve_volumes

if TYPE_CHECKING:
    from .domains import DomainObj

log = get_logger("asvirt.snapshot")

#: What a backend does to the disks of a shut-off domain.
DiskOp = Literal["create", "apply", "delete"]


# -- which disks ------------------------------------------------------------------------------


def default_disk_mode(disk_readonly: bool, shareable: bool, device: str, has_media: bool) -> str:
    """A disk the request says nothing about is snapshotted unless it is read-only, shared,
    a CD-ROM or floppy, or empty (libvirt's defaults)."""
    if disk_readonly or shareable or device in ("cdrom", "floppy") or not has_media:
        return "no"
    return "internal"


def plan_disks(
    defn: DomainDef,
    requested: Sequence[SnapshotDisk],
    *,
    domain: str,
    unnamed_format: str | None = None,
) -> tuple[list[SnapshotDisk], list[SnapshotTarget]]:
    """Each disk of ``defn`` (volumes resolved) with what the snapshot does with it, and the
    disks it is taken in. Refuses (before anything is made) a request for an external
    snapshot, a disk it does not know, and a disk that cannot hold an internal snapshot.
    ``unnamed_format``: the format of a disk whose XML names none (the test driver's
    simulated disks: qcow2; a real one's is not known)."""
    by_name = {d.target: d for d in defn.disks}
    for d in defn.disks:
        if d.source is not None:
            by_name.setdefault(d.source, d)
    asked: dict[str, str] = {}
    for req in requested:
        disk = by_name.get(req.name)
        if disk is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: no disk named '{req.name}' in domain '{domain}'"
            )
        if req.snapshot:
            asked[disk.target] = req.snapshot
    plan: list[SnapshotDisk] = []
    targets: list[SnapshotTarget] = []
    for disk in defn.disks:
        mode = (
            asked.get(disk.target)
            or disk.snapshot
            or default_disk_mode(disk.readonly, disk.shareable, disk.device, disk.has_media)
        )
        where = f"disk '{disk.target}' of domain '{domain}'"
        if mode in ("external", "manual"):
            raise OperationUnsupportedError(
                f"{mode} snapshots are not supported ({where}): asvirt takes internal "
                "snapshots of qcow2 disks"
            )
        if mode == "internal":
            why = None
            if disk.net is not None:
                why = (
                    f"it is a network disk ({disk.net.protocol}): its image is on a server "
                    "asvirt does not manage"
                )
            elif disk.source is None:
                why = "it has no media"
            elif disk.readonly or disk.device in ("cdrom", "floppy"):
                why = "it is read-only"
            elif disk.shareable:
                why = "it is shared with other domains"
            elif disk.type not in ("file", "block"):
                why = f"it is a '{disk.type}' disk, not a file or block device"
            elif (disk.format or unnamed_format) != "qcow2":
                why = f"its format is {disk.format or 'not known'}; that needs qcow2"
            if why is not None:
                raise OperationUnsupportedError(
                    f"cannot take an internal snapshot of {where}: {why} (leave the disk out "
                    "with snapshot='no')"
                )
            targets.append(_target(disk))
        plan.append(SnapshotDisk(disk.target, mode))
    return plan, targets


def snapshot_targets(snap: SnapshotDef, defn: DomainDef) -> list[SnapshotTarget]:
    """The disks ``snap`` was taken in, found in ``defn`` (volumes resolved)."""
    out = []
    for disk in defn.disks:
        if snap.disk_mode(disk.target) == "internal" and disk.source is not None:
            out.append(_target(disk))
    return out


def _target(disk: Disk) -> SnapshotTarget:
    assert disk.source is not None
    secret = encryption_secret(disk) if disk.encryption is not None else None
    return SnapshotTarget(disk.target, disk.source, disk.type, secret)


# -- the calls --------------------------------------------------------------------------------


class SnapshotCalls(DomainDriverBase):
    """The snapshot calls of the shared domain driver (a mixin of :class:`DomainDriver`)."""

    async def domain_snapshot_create_xml(
        self,
        uuid: str,
        xml: str,
        *,
        disk_only: bool = False,
        halt: bool = False,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Take a snapshot as ``xml`` describes it (see the module docstring); its name."""
        request, _ = parse_snapshot_xml(xml)
        if disk_only or request.memory == "external":
            raise OperationUnsupportedError(
                "external (disk-only) snapshots are not supported: asvirt takes internal "
                "snapshots of qcow2 disks, with the memory state of a running domain"
            )
        async with self.table.job(self.table.get(uuid)) as obj:
            if not obj.persistent:
                raise OperationUnsupportedError(
                    f"cannot take a snapshot of transient domain '{obj.name}': define it first"
                )
            now = int(time.time())
            name = request.name or str(now)
            if name in obj.snapshots:
                raise OperationInvalidError(
                    f"domain snapshot '{name}' already exists (domain '{obj.name}')"
                )
            runtime = obj.runtime
            if runtime is None:
                state = "shutoff"
                if request.memory == "internal":
                    raise OperationUnsupportedError(
                        f"domain '{obj.name}' is not running: there is no memory state to "
                        "save (use memory snapshot='no')"
                    )
                defn = obj.definition()
            else:
                run_state = runtime.state[0]
                if run_state not in (DomainState.RUNNING, DomainState.PAUSED):
                    raise OperationInvalidError(
                        f"cannot take a snapshot of domain '{obj.name}': it is {run_state.label}"
                    )
                if request.memory == "no":
                    raise OperationUnsupportedError(
                        "an internal snapshot of a running domain must include its memory state"
                    )
                state = "running" if run_state is DomainState.RUNNING else "paused"
                defn = runtime.live_def
            resolved = defn.copy()
            await resolve_volumes(resolved, self.storage)
            disks, targets = plan_disks(
                resolved,
                request.disks,
                domain=obj.name,
                unnamed_format=self.backend.unnamed_disk_format,
            )
            if not targets:
                raise OperationUnsupportedError(
                    f"domain '{obj.name}' has no disk that can hold an internal snapshot "
                    "(a qcow2 disk)"
                )
            snap = SnapshotDef(
                name=name,
                description=request.description,
                state=state,
                creation_time=now,
                memory="no" if runtime is None else "internal",
                disks=disks,
                parent=obj.snapshots.current,
                domain_xml=defn.to_xml(),
            )
            if runtime is not None and obj.persistent_def is not None:
                inactive = obj.persistent_def.to_xml()
                if inactive != snap.domain_xml:
                    snap.inactive_xml = inactive
            if runtime is None:
                await self.backend.snapshot_disks("create", name, targets)
            else:
                await stateful(runtime).snapshot_create(name, targets, progress=progress)
            try:
                await self._keep_snapshot(obj, snap, current=True)
            except BaseException:
                await self._undo_disk_snapshot(obj, name, targets)
                raise
            log.info("snapshot created", domain=obj.name, snapshot=name, state=state)
            if halt and obj.runtime is not None:
                await stateful(obj.runtime).stop(StopCause.FROM_SNAPSHOT)
            return name

    async def _undo_disk_snapshot(
        self, obj: DomainObj, name: str, targets: list[SnapshotTarget]
    ) -> None:
        try:
            if obj.runtime is not None:
                await stateful(obj.runtime).snapshot_delete(name, targets)
            else:
                await self.backend.snapshot_disks("delete", name, targets)
        except Exception as err:
            log.error("cannot undo a snapshot", domain=obj.name, snapshot=name, error=str(err))

    async def _keep_snapshot(self, obj: DomainObj, snap: SnapshotDef, *, current: bool) -> None:
        """Record ``snap`` (durably, then in the tree); ``current``: it becomes current."""
        previous = obj.snapshots.current
        await self.backend.save_snapshot(obj, snap, current=current)
        obj.snapshots.add(snap)
        if current:
            await self._make_current(obj, snap.name, previous=previous, saved=True)

    async def _make_current(
        self, obj: DomainObj, name: str | None, *, previous: str | None, saved: bool = False
    ) -> None:
        """``name`` is the current snapshot now (its file is rewritten to say so, unless
        ``saved`` says it does); the previous current one's file stops saying so."""
        tree = obj.snapshots
        tree.current = name
        if name is not None and previous != name and not saved:
            await self.backend.save_snapshot(obj, tree.get(name, domain=obj.name), current=True)
        if previous is not None and previous != name and previous in tree:
            await self.backend.save_snapshot(
                obj, tree.get(previous, domain=obj.name), current=False
            )

    async def domain_snapshot_list(
        self,
        uuid: str,
        *,
        of: str | None = None,
        descendants: bool = False,
        roots: bool = False,
        leaves: bool | None = None,
    ) -> list[str]:
        """Names of the domain's snapshots, parents before children.

        ``of``: only the children of that snapshot (every descendant with ``descendants``);
        ``roots``: only those without a parent; ``leaves`` True (False): only those without
        (with) children."""
        obj = self.table.get(uuid)
        tree = obj.snapshots
        if of is not None:
            tree.get(of, domain=obj.name)
            found = tree.descendants(of) if descendants else tree.children(of)
        elif roots:
            found = tree.children(None)
        else:
            found = tree.descendants(None)
        if leaves is not None:
            found = [s for s in found if (not tree.children(s.name)) == leaves]
        return [s.name for s in found]

    async def domain_snapshot_info(self, uuid: str, name: str) -> DomainSnapshotInfo:
        obj = self.table.get(uuid)
        return obj.snapshots.info(name, domain=obj.name)

    async def domain_snapshot_current(self, uuid: str) -> str | None:
        return self.table.get(uuid).snapshots.current

    async def domain_snapshot_xml_desc(self, uuid: str, name: str, secure: bool = False) -> str:
        obj = self.table.get(uuid)
        return obj.snapshots.get(name, domain=obj.name).to_xml(secure=secure)

    async def domain_snapshot_revert(
        self,
        uuid: str,
        name: str,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Revert the domain to the snapshot ``name`` (see the module docstring)."""
        if running and paused:
            raise InvalidArgError("running and paused are mutually exclusive")
        async with self.table.job(self.table.get(uuid)) as obj:
            snap = obj.snapshots.get(name, domain=obj.name)
            if snap.domain_xml is None:
                raise OperationFailedError(
                    f"snapshot '{name}' of domain '{obj.name}' does not say what the domain "
                    "was; it cannot be reverted to"
                )
            snap_def = await self.backend.parse(snap.domain_xml)
            await resolve_volumes(snap_def, self.storage)
            targets = snapshot_targets(snap, snap_def)
            previous = obj.snapshots.current
            if snap.has_memory:
                await self._revert_with_memory(
                    obj, snap, snap_def, targets, running, paused, progress
                )
            else:
                await self._revert_disks(obj, snap, snap_def, targets, running, paused)
            await self._make_current(obj, name, previous=previous)
            log.info("reverted to snapshot", domain=obj.name, snapshot=name)

    async def _revert_with_memory(
        self,
        obj: DomainObj,
        snap: SnapshotDef,
        snap_def: DomainDef,
        targets: list[SnapshotTarget],
        running: bool,
        paused: bool,
        progress: ProgressCallback | None,
    ) -> None:
        want_running = running or (not paused and snap.state == "running")
        runtime = obj.runtime
        if runtime is not None:
            state = runtime.state[0]
            if state in (DomainState.RUNNING, DomainState.PAUSED) and (
                runtime.live_def.to_xml() == snap.domain_xml
            ):
                await stateful(runtime).snapshot_load(
                    snap.name, targets, running=want_running, progress=progress
                )
                await self._revert_config(obj, snap)
                return
            # Another configuration (or a guest that shut down or crashed): a new QEMU.
            await stateful(runtime).stop(StopCause.FROM_SNAPSHOT)
        await self._revert_config(obj, snap)
        new = self._new_runtime(obj, snap_def, owner=None)
        await self._start(
            obj,
            new,
            paused=not want_running,
            origin=FromSnapshot(snap.name, tuple(targets), progress),
        )

    async def _revert_disks(
        self,
        obj: DomainObj,
        snap: SnapshotDef,
        snap_def: DomainDef,
        targets: list[SnapshotTarget],
        running: bool,
        paused: bool,
    ) -> None:
        if obj.runtime is not None:
            await stateful(obj.runtime).stop(StopCause.FROM_SNAPSHOT)
        await self.backend.snapshot_disks("apply", snap.name, targets)
        await self._revert_config(obj, snap)
        if running or paused:
            # libvirt's transitions to a running (paused) domain from a shut-off snapshot:
            # it boots from the reverted disks (STARTED/FROM_SNAPSHOT).
            new = self._new_runtime(obj, snap_def, owner=None)
            await self._start(obj, new, paused=paused, origin=FromSnapshot(None))

    async def _revert_config(self, obj: DomainObj, snap: SnapshotDef) -> None:
        """The persistent configuration becomes the snapshot's (DEFINED/FROM_SNAPSHOT when
        it changes)."""
        if obj.persistent_def is None or snap.domain_xml is None:
            return
        xml = snap.inactive_xml or snap.domain_xml
        if obj.persistent_def.to_xml() == xml:
            return
        defn = await self.backend.parse(xml)
        await self.backend.save_config(defn)
        obj.persistent_def = defn
        if obj.runtime is not None:
            obj.runtime.persistence_changed()
        self._publish_lifecycle(obj, LifecycleEvent.DEFINED, DefinedDetail.FROM_SNAPSHOT)

    async def domain_snapshot_delete(
        self,
        uuid: str,
        name: str,
        *,
        children: bool = False,
        children_only: bool = False,
        metadata_only: bool = False,
    ) -> None:
        """Delete the snapshot ``name`` (and/or its descendants; see the module docstring)."""
        if children and children_only:
            raise InvalidArgError("children and children_only are mutually exclusive")
        async with self.table.job(self.table.get(uuid)) as obj:
            tree = obj.snapshots
            snap = tree.get(name, domain=obj.name)
            below = tree.descendants(name) if children or children_only else []
            doomed = [*reversed(below), *([] if children_only else [snap])]
            if not metadata_only:
                for victim in doomed:
                    await self._delete_from_disks(obj, victim)
            # Reparent before forgetting: children of a deleted snapshot go to its parent.
            previous = tree.current
            survivors = []
            gone = {s.name for s in doomed}
            for child in tree.children(name):
                if child.name not in gone:
                    child.parent = snap.parent
                    survivors.append(child)
            new_current = previous
            if previous in gone:
                new_current = snap.parent if not children_only else name
            for child in survivors:
                await self.backend.save_snapshot(obj, child, current=child.name == new_current)
            await self.backend.delete_snapshots(obj, [s.name for s in doomed])
            for victim in doomed:
                tree.remove(victim.name)
            await self._make_current(
                obj, new_current, previous=previous if previous in tree else None
            )
            log.info("snapshot deleted", domain=obj.name, snapshot=name, deleted=len(doomed))

    async def _delete_from_disks(self, obj: DomainObj, snap: SnapshotDef) -> None:
        """Delete ``snap`` from the disks it was taken in: through the running QEMU for
        those it has open, with the backend's tools for the others."""
        if snap.domain_xml is None:
            return
        defn = await self.backend.parse(snap.domain_xml)
        await resolve_volumes(defn, self.storage)
        targets = snapshot_targets(snap, defn)
        live: list[SnapshotTarget] = []
        if obj.runtime is not None:
            held = {(d.target, d.source) for d in obj.runtime.live_def.disks}
            live = [t for t in targets if (t.target, t.source) in held]
            if live:
                await stateful(obj.runtime).snapshot_delete(snap.name, live)
        offline = [t for t in targets if t not in live]
        if offline:
            await self.backend.snapshot_disks("delete", snap.name, offline)


__all__ = [
    "DiskOp",
    "SnapshotCalls",
    "default_disk_mode",
    "plan_disks",
    "snapshot_targets",
]
