"""One task per QEMU process: spawn or re-attach, speak QMP, turn events into state, see it die.

A :class:`QemuRunner` lives in the connection's nursery for as long as its QEMU runs (or
until the connection closes, which detaches it and leaves QEMU running). Inside it:

* the *pump* takes QMP events from a bounded buffer, feeds them to the domain's
  :class:`~asvirt.events.qmp.DomainStateMachine` and publishes what comes out;
* the *exit watcher* waits on QEMU's pidfd. QEMU's exit, not its socket closing, is the
  authority on death; before concluding, the runner lets the monitor read everything QEMU
  wrote before dying, because a SHUTDOWN event seen before the exit means a clean stop and
  none means a crash;
* the *status writer* keeps ``NAME.status`` current without blocking the pump.

Every QMP command has a deadline, and waits only on this QEMU: a QEMU that stops answering
fails its own commands with OperationTimeoutError, nothing else.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import os
import shlex
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from ... import fsutil
from ...conf.domain import DomainDef, parse_cpuset
from ...errors import (
    AsvirtError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    QMPError,
)
from ...events.qmp import DiskInfo, DomainStateMachine, FollowUp, Reaction, StopCause
from ...log import get_logger
from ...states import DomainState, PausedReason, ShutoffReason, StateReason, reason_for
from . import process
from .command import MonitorSpec, build_command, fill_runtime_paths, links_down
from .monitor import Monitor
from .status import StatusRecord

if TYPE_CHECKING:
    from .driver import DomainObject, QemuDriver


class RunMode(enum.Enum):
    LAUNCH = "launch"
    ATTACH = "attach"


class QemuRunner:
    """Supervises one QEMU process for one domain."""

    def __init__(
        self,
        driver: QemuDriver,
        obj: DomainObject,
        live_def: DomainDef,
        *,
        domain_id: int,
        autodestroy: bool,
    ) -> None:
        self.driver = driver
        self.obj = obj
        self.live_def = live_def
        self.domain_id = domain_id
        self.autodestroy = autodestroy
        self.log = get_logger("asvirt.qemu").bind(domain=obj.name, uuid=obj.uuid)
        self.machine = DomainStateMachine(disk_for_node=self._disk_for_node)
        self.pid: int | None = None
        self.identity: process.ProcessIdentity | None = None
        self._pidfd: int | None = None
        self._monitor: Monitor | None = None
        config = driver.config.qemu
        self._qmp_timeout = config.qmp_timeout
        send, recv = trio.open_memory_channel[dict[str, Any]](config.event_buffer)
        self._event_send = send
        self._event_recv = recv
        self._received = 0
        self._processed = 0
        self._overflowed = False
        self._progress = trio.lowlevel.ParkingLot()
        self._status_dirty = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self.exited = False
        self.exit_status: int | None = None
        #: Set once the runner has finished (QEMU gone, or detached).
        self.done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._mode = RunMode.LAUNCH
        self._live_xml: str | None = None

    # -- public surface used by the driver ------------------------------------------------------

    @property
    def state(self) -> tuple[DomainState, StateReason]:
        return self.machine.state, self.machine.reason

    def cancel(self) -> None:
        """Detach: stop supervising, leave QEMU running (it is re-attached on the next open)."""
        self._cancel_scope.cancel()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command on this QEMU, then wait until the events it caused are processed."""
        if self._monitor is None or self.exited:
            raise QMPError(f"domain '{self.obj.name}' has no monitor connection")
        result = await self._monitor.execute(command, arguments)
        await self.sync_events()
        return result

    async def sync_events(self) -> None:
        """Wait until every event QEMU sent before now has been processed.

        QEMU sends the events a command causes before the command's reply (RESUME before the
        reply to ``cont``), and the monitor hands events over in order, so after a reply this
        makes the state reflect the command.
        """
        target = self._received
        while self._processed < target and not self.exited:
            await self._progress.park()

    async def terminate(self, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns when the runner is done."""
        if self._pidfd is None:
            # Still starting and QEMU not spawned yet: stop the start-up instead.
            self._cancel_scope.cancel()
        elif not self.exited:
            process.signal_pidfd(self._pidfd, signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.done.wait()
            if not self.done.is_set() and not self.exited:
                self.log.warning("QEMU ignored SIGTERM; killing it", grace_s=grace)
                process.signal_pidfd(self._pidfd, signal.SIGKILL)
        await self.done.wait()

    def mark_dirty(self) -> None:
        self._status_dirty.set()

    # -- the task -----------------------------------------------------------------------------

    async def run(
        self,
        mode: RunMode,
        *,
        paused: bool = False,
        record: StatusRecord | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        self._mode = mode
        try:
            with self._cancel_scope, _unwrap_single_error():
                if mode is RunMode.LAUNCH:
                    await self._launch()
                else:
                    assert record is not None
                    await self._attach(record)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._pump)
                    nursery.start_soon(self._watch_exit, nursery.cancel_scope)
                    nursery.start_soon(self._write_status_when_dirty)
                    if mode is RunMode.LAUNCH:
                        await self._boot(paused=paused)
                    else:
                        await self._reconcile_attached()
                    self.mark_dirty()
                    started = True
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(started=started)
        if not started:
            # QEMU went away (or destroy() was called) before start-up finished.
            if self.machine.destroying:
                raise OperationInvalidError(
                    f"domain '{self.obj.name}' was destroyed while starting"
                )
            raise OperationFailedError(
                f"QEMU exited while domain '{self.obj.name}' was starting: {self._log_tail()}"
            )

    # -- bringing QEMU up ---------------------------------------------------------------------

    async def _launch(self) -> None:
        paths = self.driver.paths
        name = self.obj.name
        caps = await self.driver.capabilities_for(self.live_def)
        monitor_path = paths.monitor(name)
        listener = fsutil.bind_unix_listener(monitor_path)
        client = None
        log_fd = os.open(
            paths.log(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            # Sockets the XML leaves unnamed (a guest agent channel) get a path under the run
            # directory, recorded in the live XML so clients know where to connect.
            fill_runtime_paths(self.live_def, str(paths.socket_dir))
            argv = build_command(
                self.live_def,
                caps,
                monitor=MonitorSpec(fd=listener.fileno()),
                runtime_dir=str(paths.socket_dir),
            )
            _write_log_header(log_fd, argv)
            # Connect before QEMU exists: the kernel queues the connection on the listening
            # socket and QEMU accepts it when ready, so there is nothing to poll for.
            client = fsutil.connect_unix(monitor_path)
            try:
                self.pid = process.spawn(argv, log_fd=log_fd, pass_fds=(listener.fileno(),))
            except OSError as err:
                raise OperationFailedError(f"cannot run '{argv[0]}': {err.strerror}") from err
        except BaseException:
            if client is not None:
                client.close()
            fsutil.remove(monitor_path)
            raise
        finally:
            listener.close()
            os.close(log_fd)
        self._pidfd = process.open_pidfd(self.pid)
        if self._pidfd is None:
            client.close()
            raise OperationFailedError(f"QEMU exited at once: {self._log_tail()}")
        self.log = self.log.bind(pid=self.pid)
        self.machine.set_state(DomainState.PAUSED, PausedReason.STARTING_UP)
        self._monitor = Monitor(
            self.driver.loop, name=name, on_event=self._on_qmp_event, timeout=self._qmp_timeout
        )
        try:
            await self._monitor.connect(client, timeout=self.driver.config.qemu.startup_timeout)
        except AsvirtError as err:
            if self.machine.destroying:
                raise OperationInvalidError(
                    f"domain '{name}' was destroyed while starting"
                ) from None
            # Most often QEMU refused the configuration and exited; its stderr says why.
            with trio.move_on_after(1):
                await process.wait_exit(self._pidfd)
            raise OperationFailedError(
                f"QEMU failed to start domain '{name}': {self._log_tail() or err}"
            ) from None
        # Read after the handshake: while QEMU is still in execve, /proc/PID/stat blocks.
        start_time = process.read_start_time(self.pid)
        if start_time is None:
            raise OperationFailedError(f"QEMU exited during start-up: {self._log_tail()}")
        self.identity = process.ProcessIdentity(self.pid, start_time)
        self.log.info("QEMU started", argv0=argv[0])

    async def _boot(self, *, paused: bool) -> None:
        # The status file must be on disk before start() returns, so that a supervisor that
        # dies from then on leaves what the next one needs to re-attach; it is written while
        # QEMU is being set up.
        async with trio.open_nursery() as saving:
            saving.start_soon(self._save_status)
            await self._set_up_and_run(paused=paused)

    async def _set_up_and_run(self, *, paused: bool) -> None:
        caps = await self.driver.capabilities_for(self.live_def)
        if caps.has_command("set-action"):
            await self._call(
                "set-action",
                {
                    # -no-shutdown already pauses on shutdown; the supervisor then decides.
                    "shutdown": "pause",
                    "reboot": "shutdown" if self.live_def.on_reboot == "destroy" else "reset",
                    "panic": "pause",
                },
            )
        await self._record_pty_paths()
        await self._record_vnc_port()
        for nic in links_down(self.live_def):
            # QEMU has no command-line switch for a NIC whose link starts down.
            await self._call("set_link", {"name": nic, "up": False})
        self._apply_cpuset()
        if paused:
            self._publish(self.machine.started_paused())
            return
        self.machine.starting = True
        await self._call("cont")
        await self.sync_events()
        if self.machine.state is not DomainState.RUNNING:
            # RESUME should have come before cont's reply; if it was lost, ask QEMU.
            await self._resync()

    async def _attach(self, record: StatusRecord) -> None:
        self.pid = record.pid
        self.identity = process.ProcessIdentity(record.pid, record.start_time)
        self.log = self.log.bind(pid=self.pid)
        pidfd = process.open_pidfd(record.pid)
        # The pidfd pins the process, so checking identity after opening it is race-free.
        if pidfd is not None and not self.identity.matches(self.obj.uuid):
            os.close(pidfd)  # the pid now belongs to someone else: never signal it
            pidfd = None
        if pidfd is None:
            raise ProcessLookupError(record.pid)
        self._pidfd = pidfd
        state = DomainState(record.state)
        self.machine.set_state(state, reason_for(state, record.reason))
        self.machine.shutdown_seen = record.shutdown_seen
        self.machine.fake_reboot = record.fake_reboot
        self._monitor = Monitor(
            self.driver.loop,
            name=self.obj.name,
            on_event=self._on_qmp_event,
            timeout=self._qmp_timeout,
        )
        sock = fsutil.connect_unix(record.monitor)
        await self._monitor.connect(sock, timeout=self.driver.config.qemu.startup_timeout)
        self.log.info("re-attached to running QEMU")

    async def _reconcile_attached(self) -> None:
        await self._resync()

    async def _record_pty_paths(self) -> None:
        wanted = set(self.live_def.chardev_ids())
        if not wanted:
            return
        try:
            chardevs = await self._call("query-chardev")
        except QMPError:
            return
        for dev in chardevs:
            label, filename = dev.get("label"), dev.get("filename", "")
            if label in wanted and filename.startswith("pty:"):
                self.live_def.set_pty_path(label, filename[4:])
                self._live_xml = None
                self.mark_dirty()

    async def _record_vnc_port(self) -> None:
        graphics = [g for g in self.live_def.graphics if g.type == "vnc"]
        if not graphics or not any(g.autoport or g.port in (None, -1) for g in graphics):
            return
        try:
            vnc = await self._call("query-vnc")
        except QMPError:
            return
        service = vnc.get("service")
        if vnc.get("enabled") and isinstance(service, str) and service.isdigit():
            graphics[0].port = int(service)
            self._live_xml = None

    def _apply_cpuset(self) -> None:
        """Pin QEMU's threads to <vcpu cpuset=...> (all of them, as libvirt's default does)."""
        cpuset = self.live_def.cpuset
        if not cpuset or self.pid is None:
            return
        allowed = parse_cpuset(cpuset) & os.sched_getaffinity(0)
        if not allowed:
            self.log.warning("cpuset names no CPU this host has; not pinning", cpuset=cpuset)
            return
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except OSError:
            return
        for tid in tids:
            try:
                os.sched_setaffinity(tid, allowed)
            except OSError:
                pass  # the thread ended meanwhile

    # -- events ---------------------------------------------------------------------------------

    def _on_qmp_event(self, event: dict[str, Any]) -> None:
        # Called synchronously by the monitor's reader; must never block or await.
        try:
            self._event_send.send_nowait(event)
        except trio.WouldBlock:
            # A burst beyond the buffer: drop, and resynchronise from query-status instead.
            self._overflowed = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        else:
            self._received += 1

    async def _pump(self) -> None:
        async for event in self._event_recv:
            reaction = self.machine.on_qmp_event(event)
            self._publish(reaction)
            self._processed += 1
            self._progress.unpark_all()
            if self._overflowed and self._event_recv.statistics().current_buffer_used == 0:
                self._overflowed = False
                self.log.warning("QMP event burst overflowed the buffer; resynchronising")
                assert self._nursery is not None
                self._nursery.start_soon(self._resync)

    def _publish(self, reaction: Reaction) -> None:
        lifecycle_changed = False
        for spec in reaction.events:
            self.driver.bus.publish(
                domain=self.obj.name,
                uuid=self.obj.uuid,
                kind=spec.kind,
                type=spec.type,
                detail=spec.detail,
                data=spec.data,
                timestamp=spec.timestamp,
            )
            lifecycle_changed = lifecycle_changed or spec.type is not None
        if lifecycle_changed:
            self.mark_dirty()
        if reaction.follow_up is not None and self._nursery is not None:
            self._nursery.start_soon(self._follow_up, reaction.follow_up)

    async def _resync(self) -> None:
        try:
            status = await self._call("query-status")
        except (QMPError, OperationTimeoutError) as err:
            self.log.warning("cannot resynchronise state", error=str(err))
            return
        self._publish(self.machine.reconcile(status.get("status", ""), bool(status.get("running"))))

    async def _follow_up(self, what: FollowUp) -> None:
        """Apply the domain's on_poweroff / on_reboot / on_crash policy."""
        d = self.live_def
        if what is FollowUp.GUEST_SHUTDOWN:
            if self.machine.fake_reboot:
                await self._reset_and_continue()
            elif d.on_poweroff == "restart":
                self.machine.restarting = True
                await self._reset_and_continue()
            elif d.on_poweroff == "preserve":
                pass
            else:
                await self._stop(StopCause.SHUTDOWN)
        elif what is FollowUp.GUEST_REBOOT_DESTROY:
            await self._stop(StopCause.SHUTDOWN)
        elif what is FollowUp.GUEST_PANICKED:
            if d.on_crash in ("restart", "coredump-restart", "rename-restart"):
                self.machine.restarting = True
                await self._reset_and_continue()
            elif d.on_crash == "preserve":
                pass
            else:
                await self._stop(StopCause.CRASHED)

    async def _reset_and_continue(self) -> None:
        try:
            await self._call("system_reset")
            await self._call("cont")
        except (QMPError, OperationTimeoutError) as err:
            self.log.error("cannot restart the guest; stopping QEMU", error=str(err))
            await self._stop(StopCause.SHUTDOWN)

    async def _stop(self, cause: StopCause) -> None:
        self.machine.stop_cause = cause
        await self.terminate(grace=self.driver.config.qemu.destroy_grace)

    async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self._monitor is not None
        return await self._monitor.execute(command, arguments)

    # -- death ----------------------------------------------------------------------------------

    async def _watch_exit(self, scope: trio.CancelScope) -> None:
        assert self._pidfd is not None
        await process.wait_exit(self._pidfd)
        # QEMU is gone. Let the monitor read whatever QEMU wrote before dying (a SHUTDOWN
        # there makes this a clean stop), and the pump process it, before concluding.
        if self._monitor is not None:
            with trio.move_on_after(1):
                await self._monitor.wait_closed()
        self._event_send.close()
        with trio.move_on_after(1):
            while self._processed < self._received:
                await self._progress.park()
        self.exited = True
        self._progress.unpark_all()
        scope.cancel()

    async def _finish(self, *, started: bool) -> None:
        """Tidy up after QEMU's exit, a failed start, or a detach (connection closing)."""
        try:
            await self._tidy_up(started=started)
        finally:
            # Even if tidying up failed (a bug: it propagates), nobody may wait forever.
            self.done.set()
            self._progress.unpark_all()

    async def _tidy_up(self, *, started: bool) -> None:
        if self._monitor is not None:
            await self._monitor.close()
        if not started:
            # Start or re-attach failed: QEMU must not outlive the failure unsupervised.
            if self._pidfd is not None and not self.exited:
                process.signal_pidfd(self._pidfd, signal.SIGKILL)
                with trio.move_on_after(5):
                    await process.wait_exit(self._pidfd)
            self.exited = True
            await self._conclude_exit(started=False)
        elif self.exited:
            await self._conclude_exit(started=True)
        else:
            self._detach()

    async def _conclude_exit(self, *, started: bool) -> None:
        if self._pidfd is not None:
            self.exit_status = process.try_reap(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        paths = self.driver.paths
        fsutil.remove(paths.status(self.obj.name))
        fsutil.remove(paths.monitor(self.obj.name))
        if started:
            reason, reaction = self.machine.exited()
        elif self._mode is RunMode.ATTACH:
            # It was running when the last connection left; now it is not.
            self.machine.stop_cause = None
            reason, reaction = self.machine.exited()
        else:
            # A failed start: the caller gets the error; there is no STARTED to balance.
            reason, reaction = ShutoffReason.FAILED, Reaction()
        self.log.info("QEMU exited", exit_status=self.exit_status, reason=reason.name.lower())
        self._publish(reaction)
        self.driver.domain_stopped(self.obj, self, reason)

    def _detach(self) -> None:
        try:
            self.status_record().save(self.driver.paths.status(self.obj.name))
        except OSError as err:
            self.log.error("cannot save status; QEMU will not be re-attached", error=str(err))
        if self._pidfd is not None:
            if self.pid is not None and process.is_child(self.pid):
                process.adopt_orphan(self._pidfd)  # reaped whenever it exits
            else:
                os.close(self._pidfd)
            self._pidfd = None
        self.log.info("detached from running QEMU")

    # -- status -------------------------------------------------------------------------------

    def status_record(self) -> StatusRecord:
        assert self.identity is not None
        return StatusRecord(
            name=self.obj.name,
            uuid=self.obj.uuid,
            domain_id=self.domain_id,
            pid=self.identity.pid,
            start_time=self.identity.start_time,
            monitor=str(self.driver.paths.monitor(self.obj.name)),
            live_xml=self.live_xml(),
            persistent=self.obj.persistent_def is not None,
            autodestroy=self.autodestroy,
            state=int(self.machine.state),
            reason=int(self.machine.reason),
            shutdown_seen=self.machine.shutdown_seen,
            fake_reboot=self.machine.fake_reboot,
        )

    def live_xml(self) -> str:
        """The live XML (cached: the live definition changes only when QEMU tells us a pty
        path or a VNC port)."""
        if self._live_xml is None:
            self._live_xml = self.live_def.to_xml(live=True, domain_id=self.domain_id)
        return self._live_xml

    async def _save_status(self) -> None:
        record = self.status_record()
        try:
            await trio.to_thread.run_sync(record.save, self.driver.paths.status(self.obj.name))
        except OSError as err:
            self.log.error("cannot save status", error=str(err))

    async def _write_status_when_dirty(self) -> None:
        # State changes are saved in the background so that they never delay events.
        while True:
            await self._status_dirty.wait()
            self._status_dirty = trio.Event()
            await self._save_status()

    # -- helpers --------------------------------------------------------------------------------

    def _disk_for_node(self, node: str) -> DiskInfo | None:
        for disk in self.live_def.disks:
            if node in disk.node_names:
                return DiskInfo(target=disk.target, alias=disk.alias or "", source=disk.source)
        return None

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines QEMU wrote to its log (its error messages), on one line."""
        try:
            with open(self.driver.paths.log(self.obj.name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        # Skip our own header lines; QEMU's messages follow them.
        tail = [ln for ln in tail if not ln.startswith(("LC_ALL=", "asvirt:"))]
        return " ".join(tail)


@contextlib.contextmanager
def _unwrap_single_error() -> Iterator[None]:
    """Let a start-up failure inside the runner's nursery reach the caller as itself.

    Before ``started()`` only the start-up code can fail (the pump and watchers do not), so a
    group of one is that failure; start() callers get OperationFailedError, not a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(errors) == 1:
            raise errors[0] from None
        raise


def _write_log_header(fd: int, argv: list[str]) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    header = f"asvirt: {now}: starting up\nLC_ALL=C {shlex.join(argv)}\n"
    with contextlib.suppress(OSError):
        os.write(fd, header.encode())
