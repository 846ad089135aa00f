"""A running QEMU's guest state: internal snapshots, save to a file, restore from one.

:class:`GuestStateOps` is the part of :class:`~.runner.QemuRunner` that implements
:class:`~asvirt.hypervisor.guest_state.StatefulRuntime`, with QMP:

* internal snapshots are QEMU jobs (QEMU 6.0 and later): ``snapshot-save`` (memory state in
  the first unencrypted disk's qcow2, see :func:`vmstate_node`; every listed disk
  snapshotted), ``snapshot-load``,
  ``snapshot-delete``. A job's end is its ``JOB_STATUS_CHANGE`` event to ``concluded``; its
  error, if any, is then read with ``query-jobs`` and the job dismissed. ``snapshot-save``
  runs in QEMU's main loop and blocks the monitor meanwhile: nothing polls it; progress is
  the job's own (started, done);
* a save is a migration to the image's descriptor (passed with ``getfd``), with QEMU's
  bandwidth limit lifted and migration events on; its end is the ``MIGRATION`` event, its
  progress QEMU's RAM counters (``query-migrate``), read every few tenths of a second while
  a caller wants progress;
* a restore starts QEMU with ``-incoming defer``, the image's descriptor inherited, and asks
  ``migrate-incoming`` from it; its progress is how far QEMU has read the file (the file
  position QEMU's copy of the descriptor shares with ours).

The guest is paused while its state is written or loaded, with the reasons libvirt gives
(creating a snapshot, saving, from snapshot), and run again afterwards if it ran.

QEMU finds an internal snapshot to load by ID before name: a snapshot called ``3`` would be
confused with the snapshot whose ID is 3. Such names are refused when the confusion exists.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from ...drivers.base import ProgressCallback
from ...errors import (
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
    QMPError,
)
from ...events.types import ResumedDetail
from ...hypervisor.guest_state import FromImage, SnapshotTarget
from ...hypervisor.guest_state import StopCause as StateStopCause
from ...states import DomainState, PausedReason, RunningReason
from ..groups import unwrap_single_error
from .statemachine import StopCause

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from ...conf.devices import Disk
    from ...conf.domain import DomainDef
    from .monitor import Monitor
    from .statemachine import DomainStateMachine, Reaction

#: A marker the runner sends to watchers when QMP events may have been lost.
RESYNC_EVENT = "ASVIRT_RESYNC"
#: QEMU's ``max-bandwidth`` for a save: as fast as the disk takes it (libvirt lifts the
#: 32 MiB/s default too).
UNLIMITED_BANDWIDTH = 1 << 53
#: Seconds between progress reports of a save or restore.
PROGRESS_INTERVAL = 0.25
#: The name the save image's descriptor has in QEMU.
SAVE_FD_NAME = "asvirt-save"

_job_ids = itertools.count(1)


def vmstate_node(disks: Sequence[SnapshotTarget], nodes: Sequence[str]) -> str:
    """The node (of ``nodes``, one per disk) that holds a snapshot's memory state: the first
    disk's that is not encrypted. QEMU writes the state into a qcow2 image in pieces of any
    size, past the block layer that aligns requests, and qcow2's encryption asserts that
    they are whole sectors: QEMU 7.2 aborts (``qcow2_co_encdec``) when the state goes into
    an encrypted image. So a domain whose disks are all encrypted is refused, before the
    guest is touched."""
    for disk, node in zip(disks, nodes, strict=True):
        if disk.encryption is None:
            return node
    raise OperationUnsupportedError(
        "cannot keep the memory state of a running domain in an encrypted disk "
        f"({', '.join(d.target for d in disks)}): QEMU aborts writing it there; add an "
        "unencrypted qcow2 disk to hold it, or take the snapshot while the domain is shut off"
    )


class GuestStateOps:
    """Snapshots, save and restore of a QEMU runner's guest (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        # What it uses of the runner.
        machine: DomainStateMachine
        exited: bool
        log: BoundLogger
        _name: str
        _live_def: DomainDef
        _monitor: Monitor | None

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _backend(self, disk: Disk) -> dict[str, Any]: ...

        async def send_fd(self, fd: int, name: str) -> None: ...

        def watch_events(
            self, *names: str
        ) -> contextlib.AbstractContextManager[trio.MemoryReceiveChannel[dict[str, Any]]]: ...

        def _handle(self, reaction: Reaction, *, follow_up: bool = True) -> None: ...

        async def _terminate(self) -> None: ...

        def _log_tail(self, lines: int = 5) -> str: ...

    # -- internal snapshots ---------------------------------------------------------------------

    async def snapshot_create(
        self,
        name: str,
        disks: Sequence[SnapshotTarget],
        *,
        progress: ProgressCallback | None,
    ) -> None:
        nodes = await self._format_nodes(disks)
        vmstate = vmstate_node(disks, nodes)
        existing = await self._snapshots_by_node(nodes)
        for target, node in zip(disks, nodes, strict=True):
            names = {s.get("name") for s in existing.get(node, [])}
            ids = {s.get("id") for s in existing.get(node, [])}
            if name in names:
                raise OperationInvalidError(
                    f"disk '{target.target}' ({target.source}) already has an internal "
                    f"snapshot named '{name}'"
                )
            if name in ids:
                raise OperationInvalidError(
                    f"cannot name a snapshot '{name}': it is the ID of another internal "
                    f"snapshot in disk '{target.target}', and QEMU would confuse them"
                )
        was_running = self.machine.state is DomainState.RUNNING
        if was_running:
            # libvirt pauses the guest itself, so that QEMU's own pause and resume during
            # the save are not taken for the user's.
            self.machine.expect_pause(PausedReason.SNAPSHOT)
            await self.execute("stop")
        try:
            await self._run_job(
                "snapshot-save",
                {"tag": name, "vmstate": vmstate, "devices": nodes},
                what=f"take snapshot '{name}' of domain '{self._name}'",
                progress=progress,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                # Never half a snapshot: whatever QEMU made of it goes.
                await self._quietly_delete(name, nodes)
            raise
        finally:
            if was_running and not self.exited:
                with trio.CancelScope(shield=True):
                    await self.execute("cont")

    async def snapshot_load(
        self,
        name: str,
        disks: Sequence[SnapshotTarget],
        *,
        running: bool,
        progress: ProgressCallback | None,
    ) -> None:
        nodes = await self._format_nodes(disks)
        vmstate = vmstate_node(disks, nodes)
        await self._check_loadable(name, disks, nodes)
        was_paused = self.machine.state is not DomainState.RUNNING
        if not was_paused:
            self.machine.expect_pause(PausedReason.FROM_SNAPSHOT)
            await self.execute("stop")
        self.machine.load_state()
        await self._run_job(
            "snapshot-load",
            {"tag": name, "vmstate": vmstate, "devices": nodes},
            what=f"revert domain '{self._name}' to snapshot '{name}'",
            progress=progress,
        )
        if running:
            self.machine.expect_resume(RunningReason.FROM_SNAPSHOT, ResumedDetail.FROM_SNAPSHOT)
            await self.execute("cont")
        elif was_paused:
            self._handle(self.machine.reverted_paused())

    async def load_snapshot_stopped(
        self,
        name: str,
        disks: Sequence[SnapshotTarget],
        progress: ProgressCallback | None,
    ) -> None:
        """Load the snapshot ``name`` into a QEMU that is starting (never run yet)."""
        nodes = await self._format_nodes(disks)
        vmstate = vmstate_node(disks, nodes)
        await self._check_loadable(name, disks, nodes)
        self.machine.load_state()
        await self._run_job(
            "snapshot-load",
            {"tag": name, "vmstate": vmstate, "devices": nodes},
            what=f"revert domain '{self._name}' to snapshot '{name}'",
            progress=progress,
        )

    async def snapshot_delete(self, name: str, disks: Sequence[SnapshotTarget]) -> None:
        nodes = await self._format_nodes(disks)
        await self._run_job(
            "snapshot-delete",
            {"tag": name, "devices": nodes},
            what=f"delete snapshot '{name}' of domain '{self._name}'",
            progress=None,
        )

    async def _quietly_delete(self, name: str, nodes: list[str]) -> None:
        if self.exited:
            return
        try:
            await self._run_job(
                "snapshot-delete", {"tag": name, "devices": nodes}, what="undo", progress=None
            )
        except (QMPError, OperationFailedError) as err:
            self.log.error("cannot remove a failed snapshot", snapshot=name, error=str(err))

    async def _format_nodes(self, disks: Sequence[SnapshotTarget]) -> list[str]:
        """QEMU's qcow2 node of each disk (by target, in this QEMU): the one its number
        names, or for a disk that pivoted onto a node QEMU named, the node it runs on."""
        nodes = []
        for target in disks:
            disk = next((d for d in self._live_def.disks if d.target == target.target), None)
            if disk is None or disk.source != target.source:
                raise OperationInvalidError(
                    f"disk '{target.target}' ({target.source}) is not a disk of the running "
                    f"domain '{self._name}'"
                )
            if disk.node_index is not None:
                nodes.append(f"libvirt-{disk.node_index}-format")
            else:
                nodes.append(str((await self._backend(disk)).get("node-name")))
        if not nodes:
            raise OperationInvalidError("a snapshot needs at least one disk")
        return nodes

    async def _snapshots_by_node(self, nodes: list[str]) -> dict[str, list[Any]]:
        """The internal snapshots QEMU sees in each of ``nodes`` (``id``, ``name``...)."""
        found: dict[str, list[Any]] = {}
        for node in await self._call("query-named-block-nodes", {"flat": True}):
            if node.get("node-name") in nodes:
                found[node["node-name"]] = (node.get("image") or {}).get("snapshots") or []
        return found

    async def _check_loadable(
        self, name: str, disks: Sequence[SnapshotTarget], nodes: list[str]
    ) -> None:
        existing = await self._snapshots_by_node(nodes)
        for target, node in zip(disks, nodes, strict=True):
            snaps = existing.get(node, [])
            if not any(s.get("name") == name for s in snaps):
                raise OperationFailedError(
                    f"disk '{target.target}' ({target.source}) has no internal snapshot "
                    f"named '{name}'"
                )
            if any(s.get("id") == name and s.get("name") != name for s in snaps):
                raise OperationFailedError(
                    f"snapshot '{name}' of disk '{target.target}' cannot be loaded by QEMU: "
                    "another internal snapshot has that ID"
                )

    async def _run_job(
        self,
        command: str,
        arguments: dict[str, Any],
        *,
        what: str,
        progress: ProgressCallback | None,
    ) -> None:
        """Run a QEMU job to its end; OperationFailedError with QEMU's reason if it failed."""
        job_id = f"asvirt-{command}-{next(_job_ids)}"
        with self.watch_events("JOB_STATUS_CHANGE") as events:
            await self._call(command, {"job-id": job_id, **arguments})
            if progress is not None:
                progress(0.0)
            concluded = False
            async for event in events:
                if event.get("event") == RESYNC_EVENT:
                    status = await self._job_status(job_id)
                else:
                    data = event.get("data") or {}
                    if data.get("id") != job_id:
                        continue
                    status = data.get("status")
                if status in ("concluded", "null", None):
                    concluded = True
                    break
            if not concluded:
                raise OperationFailedError(f"cannot {what}: QEMU exited")
        error = None
        for job in await self._call("query-jobs"):
            if job.get("id") == job_id:
                error = job.get("error")
                await self._call("job-dismiss", {"id": job_id})
        if error:
            raise OperationFailedError(f"cannot {what}: {error}")
        if progress is not None:
            progress(1.0)

    async def _job_status(self, job_id: str) -> str | None:
        for job in await self._call("query-jobs"):
            if job.get("id") == job_id:
                return str(job.get("status"))
        return None

    # -- save ---------------------------------------------------------------------------------

    async def save_state(self, fd: int, *, progress: ProgressCallback | None) -> None:
        was_running = self.machine.state is DomainState.RUNNING
        if was_running:
            self.machine.expect_pause(PausedReason.SAVE)
            await self.execute("stop")
        try:
            await self._call(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "events", "state": True}]},
            )
            await self._call("migrate-set-parameters", {"max-bandwidth": UNLIMITED_BANDWIDTH})
            await self.send_fd(fd, SAVE_FD_NAME)
            with self.watch_events("MIGRATION") as events:
                await self._call("migrate", {"uri": f"fd:{SAVE_FD_NAME}"})
                # The nursery only reports progress: a QEMU that exits mid-way is an
                # OperationFailedError to the caller, not a group.
                with unwrap_single_error():
                    async with trio.open_nursery() as nursery:
                        if progress is not None:
                            nursery.start_soon(self._report_save_progress, progress)
                        status = await self._migration_end(events)
                        nursery.cancel_scope.cancel()
            if status != "completed":
                info = await self._call("query-migrate")
                raise OperationFailedError(
                    f"cannot save domain '{self._name}': "
                    f"{info.get('error-desc') or f'the migration {status}'}"
                )
        except BaseException:
            if was_running and not self.exited:
                with trio.CancelScope(shield=True):
                    await self._resume(RunningReason.SAVE_CANCELED)
            raise
        if progress is not None:
            progress(1.0)

    async def resume_after_save(self, *, running: bool) -> None:
        if running and not self.exited:
            await self._resume(RunningReason.SAVE_CANCELED)

    async def _resume(self, reason: RunningReason) -> None:
        try:
            self.machine.expect_resume(reason, ResumedDetail.UNPAUSED)
            await self.execute("cont")
        except (QMPError, OperationFailedError) as err:
            self.log.error("cannot resume the guest after a failed save", error=str(err))

    async def _migration_end(self, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> str:
        """The status a migration ended with (``completed``, ``failed``, ``cancelled``)."""
        async for event in events:
            if event.get("event") == RESYNC_EVENT:
                status = (await self._call("query-migrate")).get("status")
            else:
                status = (event.get("data") or {}).get("status")
            if status in ("completed", "failed", "cancelled"):
                return str(status)
        raise OperationFailedError(f"QEMU of domain '{self._name}' exited during the migration")

    async def _report_save_progress(self, progress: ProgressCallback) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            with contextlib.suppress(QMPError):
                ram = (await self._call("query-migrate")).get("ram") or {}
                total, remaining = ram.get("total"), ram.get("remaining")
                if isinstance(total, int) and isinstance(remaining, int) and total > 0:
                    # Not quite done until the stream is complete.
                    progress(min(0.99, (total - remaining) / total))

    async def stop(self, cause: StateStopCause) -> None:
        """Stop QEMU: its guest was saved, or a snapshot asked it (STOPPED/SAVED,
        STOPPED/FROM_SNAPSHOT); returns once it is gone."""
        self.machine.begin_stop(
            StopCause.SAVED if cause is StateStopCause.SAVED else StopCause.FROM_SNAPSHOT
        )
        await self._terminate()

    # -- restore ------------------------------------------------------------------------------

    async def load_image(self, origin: FromImage) -> None:
        """Load the saved state into a QEMU started with ``-incoming defer`` (and the
        image's descriptor)."""
        self.machine.load_state()
        os.lseek(origin.fd, origin.offset, os.SEEK_SET)
        await self._call(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        with self.watch_events("MIGRATION") as events:
            await self._call("migrate-incoming", {"uri": f"fd:{origin.fd}"})
            with unwrap_single_error():  # as for a save
                async with trio.open_nursery() as nursery:
                    if origin.progress is not None:
                        nursery.start_soon(_report_read_progress, origin, origin.progress)
                    status = await self._migration_end(events)
                    nursery.cancel_scope.cancel()
        if status != "completed":
            raise OperationFailedError(
                f"cannot restore domain '{self._name}': QEMU could not load the saved state "
                f"({status}): {self._log_tail()}"
            )
        if origin.progress is not None:
            origin.progress(1.0)


async def _report_read_progress(origin: FromImage, progress: ProgressCallback) -> None:
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        with contextlib.suppress(OSError):
            done = os.lseek(origin.fd, 0, os.SEEK_CUR) - origin.offset
            if origin.size > 0:
                progress(min(0.99, max(0.0, done / origin.size)))


__all__ = ["PROGRESS_INTERVAL", "RESYNC_EVENT", "GuestStateOps"]
