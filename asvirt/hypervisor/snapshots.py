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

import contextlib
import os
import stat
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..conf.devices import Disk
from ..conf.domain import DomainDef
from ..conf.snapshot import SnapshotDef, SnapshotDisk, parse_snapshot_xml
from ..drivers.base import DomainSnapshotInfo, ProgressCallback
from ..errors import (
    AsvirtError,
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
from .guest_state import ExternalTarget, FromSnapshot, SnapshotTarget, StopCause, stateful
from .secrets import encryption_secret
from .volumes import resolve_volumes

if TYPE_CHECKING:
    from .domains import DomainObj, DomainRuntime

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


def requested_disks(
    defn: DomainDef, requested: Sequence[SnapshotDisk], domain: str
) -> dict[str, SnapshotDisk]:
    """What the request says of each disk of ``defn`` it names (by target or by image),
    by target; a name no disk has is refused."""
    by_name = {d.target: d for d in defn.disks}
    for d in defn.disks:
        if d.source is not None:
            by_name.setdefault(d.source, d)
    asked: dict[str, SnapshotDisk] = {}
    for req in requested:
        disk = by_name.get(req.name)
        if disk is None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: no disk named '{req.name}' in domain '{domain}'"
            )
        asked[disk.target] = req
    return asked


def plan_disks(
    defn: DomainDef,
    requested: Sequence[SnapshotDisk],
    *,
    domain: str,
    unnamed_format: str | None = None,
) -> tuple[list[SnapshotDisk], list[SnapshotTarget]]:
    """Each disk of ``defn`` (volumes resolved) with what the snapshot does with it, and the
    disks it is taken in. Refuses (before anything is made) a disk left to an external
    snapshot, a disk it does not know, and a disk that cannot hold an internal snapshot.
    ``unnamed_format``: the format of a disk whose XML names none (the test driver's
    simulated disks: qcow2; a real one's is not known)."""
    asked = {t: r.snapshot for t, r in requested_disks(defn, requested, domain).items()}
    plan: list[SnapshotDisk] = []
    targets: list[SnapshotTarget] = []
    for disk in defn.disks:
        mode = (
            asked.get(disk.target)
            or disk.snapshot
            or default_disk_mode(disk.readonly, disk.shareable, disk.device, disk.has_media)
        )
        where = f"disk '{disk.target}' of domain '{domain}'"
        if mode == "external":
            raise ConfigUnsupportedError(
                "unsupported configuration: mixing internal and external targets for a "
                f"snapshot is not yet supported ({where} is 'external': take an external "
                "snapshot with disk_only)"
            )
        if mode == "manual":
            raise OperationUnsupportedError(
                f"manual snapshots are not supported ({where}): asvirt takes internal "
                "snapshots of qcow2 disks, or external ones"
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


def overlay_name(source: str, snapshot: str) -> str:
    """libvirt's default name of a disk's external snapshot: its image's path without the
    extension, then ``.SNAPSHOT`` (``/vm/disk.qcow2`` -> ``/vm/disk.s1``)."""
    head, tail = os.path.split(source)
    stem = tail[: tail.rfind(".")] if "." in tail else tail
    return os.path.join(head, f"{stem}.{snapshot}")


def plan_external(
    defn: DomainDef,
    requested: Sequence[SnapshotDisk],
    *,
    domain: str,
    name: str,
    reuse: bool,
    unnamed_format: str | None = None,
) -> tuple[list[SnapshotDisk], list[ExternalTarget]]:
    """Each disk of ``defn`` (volumes resolved) with what an external (disk-only) snapshot
    ``name`` does with it, and the disks it moves onto overlays (libvirt's defaults: every
    disk with writable media, its overlay ``IMAGE.NAME`` beside its image). Refuses, before
    anything is made, what cannot be: another mode for a disk, an overlay asvirt cannot
    make or that is there already (unless ``reuse``), or that is a symbolic link."""
    asked = requested_disks(defn, requested, domain)
    plan: list[SnapshotDisk] = []
    targets: list[ExternalTarget] = []
    for disk in defn.disks:
        req = asked.get(disk.target)
        mode = (req.snapshot if req is not None else "") or disk.snapshot or ""
        if not mode:
            default = default_disk_mode(disk.readonly, disk.shareable, disk.device, disk.has_media)
            mode = "external" if default == "internal" else default
        where = f"disk '{disk.target}' of domain '{domain}'"
        if mode in ("internal", "manual"):
            raise ConfigUnsupportedError(
                "unsupported configuration: mixing internal and external targets for a "
                f"snapshot is not yet supported ({where} is '{mode}')"
            )
        if mode != "external":
            plan.append(SnapshotDisk(disk.target, mode))
            continue
        driver = req.driver if req is not None else None
        why = None
        if disk.net is not None:
            why = f"it is a network disk ({disk.net.protocol})"
        elif disk.source is None:
            why = "it has no media"
        elif disk.type != "file":
            why = f"it is a '{disk.type}' disk; asvirt makes overlays of image files"
        elif disk.readonly or disk.device in ("cdrom", "floppy"):
            why = "it is read-only"
        elif disk.shareable:
            why = "it is shared with other domains"
        elif disk.encryption is not None:
            why = "it is encrypted, and asvirt would make its overlay in the clear"
        elif (disk.format or unnamed_format) is None:
            why = "its format is not known"
        elif driver not in (None, "qcow2"):
            why = f"its overlay's format would be '{driver}'; asvirt makes qcow2 overlays"
        if why is not None:
            raise OperationUnsupportedError(
                f"cannot take an external snapshot of {where}: {why} (leave the disk out "
                "with snapshot='no')"
            )
        assert disk.source is not None
        overlay = req.source if req is not None else None
        if overlay is None:
            if not _is_regular_file(disk.source):
                raise ConfigUnsupportedError(
                    f"unsupported configuration: source for disk '{disk.target}' is not a "
                    "regular file; refusing to generate external snapshot name"
                )
            overlay = overlay_name(disk.source, name)
        if not os.path.isabs(overlay):
            raise InvalidArgError(
                f"external snapshot file for disk '{disk.target}' must be an absolute path: "
                f"{overlay}"
            )
        for other in targets:
            if other.overlay == overlay:
                raise ConfigUnsupportedError(
                    "unsupported configuration: cannot generate external snapshot name for "
                    f"disk '{disk.target}': collision with disk '{other.target}'"
                )
        if overlay == disk.source:
            raise InvalidArgError(
                f"external snapshot file for disk '{disk.target}' is its own image: {overlay}"
            )
        _check_overlay_file(disk.target, overlay, reuse)
        fmt = disk.format or unnamed_format
        assert fmt is not None
        targets.append(ExternalTarget(disk.target, disk.source, fmt, overlay, reuse))
        plan.append(SnapshotDisk(disk.target, "external", overlay, "qcow2"))
    return plan, targets


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _check_overlay_file(target: str, path: str, reuse: bool) -> None:
    """An overlay asvirt makes must not exist yet; one it reuses must, as a file of its own
    (never through a symbolic link)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise InvalidArgError(
            f"cannot check external snapshot file for disk '{target}' ({path}): {err.strerror}"
        ) from None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise InvalidArgError(
            f"external snapshot file for disk '{target}' is a symbolic link: {path}"
        )
    if reuse and (st is None or not stat.S_ISREG(st.st_mode)):
        raise InvalidArgError(
            f"missing external snapshot file for disk '{target}' to reuse: {path}"
        )
    if not reuse and st is not None:
        raise OperationInvalidError(
            f"external snapshot file for disk '{target}' already exists: {path} (asvirt "
            "overwrites no file: reuse_external takes it as it is)"
        )


def moved_config(cfg: DomainDef, moves: dict[str, tuple[str, str, str | None]]) -> DomainDef | None:
    """``cfg`` with each disk ``TARGET`` of ``moves`` that is on image ``OLD`` moved onto
    ``NEW`` (in format ``FMT``, if known), as libvirt rewrites a configuration after a pivot
    or an external snapshot; None if no disk of ``cfg`` is concerned."""
    if not any(d.target in moves and d.source == moves[d.target][0] for d in cfg.disks):
        return None
    updated = cfg.copy()
    for disk in updated.disks:
        move = moves.get(disk.target)
        if move is not None and disk.source == move[0]:
            disk.source = move[1]
            if move[2] is not None:
                disk.format = move[2]
    return updated


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
        no_metadata: bool = False,
        reuse_external: bool = False,
        quiesce: bool = False,
    ) -> str:
        """Take a snapshot as ``xml`` describes it (see the module docstring); its name."""
        request, _ = parse_snapshot_xml(xml)
        if request.memory == "external":
            raise OperationUnsupportedError(
                "an external memory state (memspec) is not supported: asvirt takes external "
                "snapshots of disks only (disk_only), or internal ones with the memory state"
            )
        if disk_only or request.is_external:
            return await self._create_external(
                uuid, request, disk_only, halt, no_metadata, reuse_external, quiesce
            )
        if no_metadata or reuse_external or quiesce:
            which = (
                "no_metadata" if no_metadata else "reuse_external" if reuse_external else "quiesce"
            )
            raise OperationUnsupportedError(
                f"{which} applies to external (disk-only) snapshots: asvirt takes internal "
                "ones with their metadata"
            )
        async with self.table.job(self.table.get(uuid)) as obj:
            if not obj.persistent:
                raise OperationUnsupportedError(
                    f"cannot take a snapshot of transient domain '{obj.name}': define it first"
                )
            now, name = _new_snapshot_name(obj, request)
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

    async def _create_external(
        self,
        uuid: str,
        request: SnapshotDef,
        disk_only: bool,
        halt: bool,
        no_metadata: bool,
        reuse: bool,
        quiesce: bool,
    ) -> str:
        """An external snapshot: each disk moves onto a new qcow2 image over the one it had,
        which stays as it was from then on (libvirt's disk-only snapshot)."""
        if request.memory == "internal":
            raise ConfigUnsupportedError(
                "unsupported configuration: mixing internal and external targets for a "
                "snapshot is not yet supported"
            )
        if halt:
            raise OperationUnsupportedError(
                "halt after an external snapshot is not supported by asvirt"
            )
        async with self.table.job(self.table.get(uuid)) as obj:
            if not obj.persistent and not no_metadata:
                raise OperationUnsupportedError(
                    f"cannot keep a snapshot of transient domain '{obj.name}': define it "
                    "first, or take it with no_metadata"
                )
            now, name = _new_snapshot_name(obj, request)
            runtime = obj.runtime
            if runtime is None:
                if quiesce:
                    raise OperationInvalidError(
                        f"domain '{obj.name}' is not running: its filesystems cannot be quiesced"
                    )
                state = "disk-snapshot" if disk_only else "shutoff"
                defn = obj.definition()
            else:
                run_state = runtime.state[0]
                if run_state not in (DomainState.RUNNING, DomainState.PAUSED):
                    raise OperationInvalidError(
                        f"cannot take a snapshot of domain '{obj.name}': it is {run_state.label}"
                    )
                if not disk_only and request.memory != "no":
                    raise OperationUnsupportedError(
                        f"an external snapshot of running domain '{obj.name}' holds its disks "
                        "only: ask for disk_only (or memory snapshot='no')"
                    )
                if quiesce and run_state is not DomainState.RUNNING:
                    raise OperationInvalidError(
                        f"domain '{obj.name}' is not running: the guest agent cannot quiesce it"
                    )
                state = "disk-snapshot"
                defn = runtime.live_def
            resolved = defn.copy()
            await resolve_volumes(resolved, self.storage)
            disks, targets = plan_external(
                resolved,
                request.disks,
                domain=obj.name,
                name=name,
                reuse=reuse,
                unnamed_format=self.backend.unnamed_disk_format,
            )
            if not targets:
                raise OperationUnsupportedError(
                    f"domain '{obj.name}' has no disk to take an external snapshot of"
                )
            snap = SnapshotDef(
                name=name,
                description=request.description,
                state=state,
                creation_time=now,
                memory="no",
                disks=disks,
                parent=obj.snapshots.current,
                domain_xml=defn.to_xml(),
            )
            if runtime is None:
                await self.backend.make_overlays(targets)
            else:
                await self._switch_live(obj, runtime, targets, quiesce)
            await self._config_onto_overlays(obj, targets, strict=runtime is None)
            if not no_metadata:
                await self._keep_snapshot(obj, snap, current=True)
            # (libvirt publishes no lifecycle event for a disk-only snapshot)
            log.info(
                "external snapshot created",
                domain=obj.name,
                snapshot=name,
                disks=[t.target for t in targets],
                metadata=not no_metadata,
            )
            return name

    async def _switch_live(
        self,
        obj: DomainObj,
        runtime: DomainRuntime,
        targets: list[ExternalTarget],
        quiesce: bool,
    ) -> None:
        """Move the running guest's disks onto their overlays, its filesystems frozen
        meanwhile through the guest agent if ``quiesce``."""
        if quiesce:
            await runtime.agent_command("guest-fsfreeze-freeze", None, None)
        try:
            await stateful(runtime).snapshot_external(targets)
        finally:
            if quiesce:
                try:
                    await runtime.agent_command("guest-fsfreeze-thaw", None, None)
                except AsvirtError as err:
                    log.error(
                        "cannot thaw the guest's filesystems", domain=obj.name, error=str(err)
                    )

    async def _config_onto_overlays(
        self, obj: DomainObj, targets: list[ExternalTarget], *, strict: bool
    ) -> None:
        """The persistent configuration's disks follow them onto their overlays (``strict``:
        a failure to save it removes the overlays made and fails; else it is logged, the
        guest running on them already)."""
        if obj.persistent_def is None:
            return
        moves: dict[str, tuple[str, str, str | None]] = {
            t.target: (t.base, t.overlay, "qcow2") for t in targets
        }
        updated = moved_config(obj.persistent_def, moves)
        if updated is None:
            return
        try:
            await self.backend.save_config(updated)
        except AsvirtError as err:
            if strict:
                for t in targets:
                    if not t.reuse:
                        with contextlib.suppress(OSError):
                            os.unlink(t.overlay)
                raise
            log.error(
                "cannot save the configuration after an external snapshot",
                domain=obj.name,
                error=str(err),
            )
            return
        obj.persistent_def = updated

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
            if snap.is_external:
                raise ConfigUnsupportedError(
                    "unsupported configuration: revert to external snapshot not supported yet"
                )
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
            external = sum(1 for s in doomed if s.is_external)
            if external and not metadata_only:
                # libvirt before 9.0: its images stay; a block commit merges them first,
                # then the metadata goes (snapshot-delete --metadata).
                raise ConfigUnsupportedError(
                    f"unsupported configuration: deletion of {external} external disk "
                    "snapshots not supported yet"
                )
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


def _new_snapshot_name(obj: DomainObj, request: SnapshotDef) -> tuple[int, str]:
    """The creation time of a new snapshot of ``obj`` and its name: the one asked for, else
    the time in seconds, as libvirt names it; refused if the domain has one of that name."""
    now = int(time.time())
    name = request.name or str(now)
    if name in obj.snapshots:
        raise OperationInvalidError(
            f"domain snapshot '{name}' already exists (domain '{obj.name}')"
        )
    return now, name


__all__ = [
    "DiskOp",
    "SnapshotCalls",
    "default_disk_mode",
    "moved_config",
    "overlay_name",
    "plan_disks",
    "plan_external",
    "snapshot_targets",
]
