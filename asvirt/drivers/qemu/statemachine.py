"""From QMP events to domain states and typed events: the supervisor's state machine.

QEMU is the authority on what its guest is doing; the API only asks. So a domain's state
changes only here, in reaction to QEMU's own events (and to QEMU's exit), and an API call that
expects a change (``suspend()`` expects STOP) first states its *intent* through one of the
machine's methods (:meth:`~DomainStateMachine.expect_pause`), so that the event that follows
is attributed correctly (PAUSED/USER rather than PAUSED/UNKNOWN). Whoever sends ``stop`` —
the API, ``qmp("stop")``, or another QMP client — the domain is paused when QEMU says so, and
only then.

The machine is a closed type: its fields are private, and every change goes through an intent
method (``begin_boot``, ``expect_pause``, ``begin_reboot``, ``begin_destroy``, ``follow_up``,
...) or a reaction to QEMU (``on_qmp_event``, ``reconcile``, ``exited``). Each reaction returns
what to publish and what the supervisor must do next; the machine itself never acts.

The mapping follows libvirt's QEMU driver (``qemuProcessHandle*``), with two deliberate
differences: a reboot asked through ``reboot()`` keeps the domain RUNNING throughout (the
ACPI power-off that libvirt turns into a reset is an implementation detail, reported only
through REBOOT events); and after SHUTDOWN or a panic, the pause QEMU then enters is not
reported as a separate SUSPENDED event.

REBOOT events are QEMU's RESET events, one for one, as in libvirt (which ignores only those
of a domain still starting up). A reboot under SeaBIOS makes QEMU report two: the reset the
supervisor (or the guest) asked for, then, a few milliseconds later, the firmware resetting
the machine again because it cannot re-run its initialisation after a warm reset (QEMU
reports that one with ``reason: guest-reset``). Both reach subscribers, with QEMU's data.

The test driver's simulated QEMU feeds the same machine, so both drivers agree by construction.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from ...events.types import (
    CrashedDetail,
    EventDetail,
    EventKind,
    LifecycleEvent,
    PMSuspendedDetail,
    ResumedDetail,
    ShutdownDetail,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
)
from ...hypervisor.lifecycle import FollowUpAction, GuestEvent, LifecyclePolicy
from ...states import (
    CrashedReason,
    DomainState,
    PausedReason,
    PMSuspendedReason,
    RunningReason,
    ShutdownReason,
    ShutoffReason,
    StateReason,
    reason_for,
)
from .blockjob_names import job_of


@dataclasses.dataclass(frozen=True, slots=True)
class EventSpec:
    """An event to publish (the node adds sequence number, domain and UUID)."""

    kind: EventKind
    type: LifecycleEvent | None = None
    detail: EventDetail | None = None
    data: dict[str, Any] | None = None
    timestamp: float | None = None


@dataclasses.dataclass(slots=True)
class Reaction:
    """What a transition produced: events to publish, and a guest event to follow up."""

    events: list[EventSpec] = dataclasses.field(default_factory=list)
    follow_up: GuestEvent | None = None

    def lifecycle(self, type_: LifecycleEvent, detail: EventDetail, ts: float | None) -> None:
        self.events.append(EventSpec(EventKind.LIFECYCLE, type_, detail, None, ts))


@dataclasses.dataclass(frozen=True, slots=True)
class DiskInfo:
    """What an I/O error event says about a disk: libvirt reports the target and alias."""

    target: str
    alias: str
    source: str | None


class StopCause(enum.Enum):
    """Why the supervisor itself ended a QEMU (decides the STOPPED detail)."""

    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    DESTROYED = "destroyed"
    #: Its state was saved to an image (STOPPED/SAVED).
    SAVED = "saved"
    #: A snapshot asked it (reverting to a shut-off snapshot, or a snapshot that halts).
    FROM_SNAPSHOT = "from-snapshot"


class StartKind(enum.Enum):
    """How a guest comes to run: booted, restored from a save image, or from a snapshot.

    It decides the STARTED detail and the state's reason (libvirt's BOOTED, RESTORED and
    FROM_SNAPSHOT), and the SUSPENDED event of a start that leaves the guest paused.
    """

    BOOT = "boot"
    RESTORE = "restore"
    SNAPSHOT = "snapshot"


#: Per start kind: the STARTED detail and RUNNING reason, then the SUSPENDED detail and
#: PAUSED reason of a guest left paused.
_STARTS: dict[StartKind, tuple[StartedDetail, RunningReason, SuspendedDetail, PausedReason]] = {
    StartKind.BOOT: (
        StartedDetail.BOOTED,
        RunningReason.BOOTED,
        SuspendedDetail.PAUSED,
        PausedReason.USER,
    ),
    StartKind.RESTORE: (
        StartedDetail.RESTORED,
        RunningReason.RESTORED,
        SuspendedDetail.RESTORED,
        PausedReason.USER,
    ),
    StartKind.SNAPSHOT: (
        StartedDetail.FROM_SNAPSHOT,
        RunningReason.FROM_SNAPSHOT,
        SuspendedDetail.FROM_SNAPSHOT,
        PausedReason.FROM_SNAPSHOT,
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class MachineSnapshot:
    """What a status file keeps of the machine, so that a later supervisor can go on."""

    state: int
    reason: int
    shutdown_seen: bool = False
    rebooting: bool = False
    #: The supervisor had begun to stop QEMU, and why (None: it had not).
    stop_cause: str | None = None


class DomainStateMachine:
    """The state of one active domain, driven by QMP events and QEMU's exit."""

    __slots__ = (
        "_balloon_kib",
        "_booting",
        "_disk_for_node",
        "_fresh",
        "_pause_hint",
        "_reason",
        "_rebooting",
        "_restarting",
        "_resume_hint",
        "_shutdown_seen",
        "_state",
        "_stop_cause",
        "_stopped_told",
    )

    def __init__(self, *, disk_for_node: Callable[[str], DiskInfo | None] | None = None) -> None:
        #: A new machine is QEMU started with -S, before the guest has run.
        self._state: DomainState = DomainState.PAUSED
        self._reason: StateReason = PausedReason.STARTING_UP
        self._disk_for_node = disk_for_node or (lambda node: None)
        # begin_boot() before ``cont`` at start: the RESUME that follows means STARTED (with
        # the detail of how the guest came to run).
        self._booting: StartKind | None = None
        # Reason to use for the next STOP (USER when we asked, IOERROR/WATCHDOG when QEMU said).
        self._pause_hint: PausedReason | None = None
        # reboot() in progress: the next SHUTDOWN is turned into a reset.
        self._rebooting = False
        # QEMU reported SHUTDOWN: an exit now is a clean stop.
        self._shutdown_seen = False
        # The supervisor is ending QEMU, and why: QEMU's own events no longer change anything.
        self._stop_cause: StopCause | None = None
        # The supervisor reset a shut-down or crashed guest (on_poweroff/on_crash=restart):
        # the next RESUME means STARTED/BOOTED.
        self._restarting = False
        # Reason and detail to use for the next RESUME (None: UNPAUSED), as _pause_hint.
        self._resume_hint: tuple[RunningReason, ResumedDetail] | None = None
        # Balloon size last reported, KiB (None: never reported).
        self._balloon_kib: int | None = None
        # A re-attached domain whose end subscribers were already told (STOPPED, with this
        # detail): its previous supervisor died before removing the status file.
        self._stopped_told: StoppedDetail | None = None
        # The guest has neither run nor been given a saved state since QEMU started (see
        # :attr:`fresh`).
        self._fresh = True

    @classmethod
    def restore(
        cls,
        snapshot: MachineSnapshot,
        *,
        disk_for_node: Callable[[str], DiskInfo | None] | None = None,
        told: tuple[LifecycleEvent, EventDetail] | None = None,
    ) -> DomainStateMachine:
        """The machine of a QEMU that a previous supervisor left running (from its status).

        ``told``: the last lifecycle event subscribers were given for the domain (the
        newest in the journal), if any. The journal is written when an event is published
        and the status file after it, so a supervisor killed in between leaves a status one
        pause or resume behind what everyone was told. The machine then starts from what
        was told, so that :meth:`reconcile` reports only what changed since (no RESUMED,
        SHUTDOWN or CRASHED told twice, no pause left untold), and :meth:`exited` does not
        tell again a STOPPED that was told before the status file could go.
        """
        machine = cls(disk_for_node=disk_for_node)
        machine._fresh = False  # what happened before this supervisor is not known
        state = DomainState(snapshot.state)
        machine._state, machine._reason = state, reason_for(state, snapshot.reason)
        machine._shutdown_seen = snapshot.shutdown_seen
        machine._rebooting = snapshot.rebooting
        if told is not None and told[0] is LifecycleEvent.STOPPED:
            machine._stopped_told = StoppedDetail(told[1])
        if snapshot.stop_cause is not None:
            machine._stop_cause = StopCause(snapshot.stop_cause)
        elif told is not None:
            machine._catch_up(*told)
        return machine

    def snapshot(self) -> MachineSnapshot:
        return MachineSnapshot(
            state=int(self._state),
            reason=int(self._reason),
            shutdown_seen=self._shutdown_seen,
            rebooting=self._rebooting,
            stop_cause=None if self._stop_cause is None else self._stop_cause.value,
        )

    # -- what others may read --------------------------------------------------------------------

    @property
    def state(self) -> DomainState:
        return self._state

    @property
    def reason(self) -> StateReason:
        return self._reason

    @property
    def balloon_kib(self) -> int | None:
        """The balloon size QEMU last reported, in KiB (None: never reported)."""
        return self._balloon_kib

    @property
    def fresh(self) -> bool:
        """The guest has not run since QEMU started (with -S), nor been given a saved state
        (a restore, a snapshot): what QEMU says of it is what a new machine says (its
        balloon holds no statistics from a guest driver), and stays so until it runs."""
        return self._fresh

    @property
    def destroying(self) -> bool:
        return self._stop_cause is StopCause.DESTROYED

    @property
    def stopping(self) -> bool:
        """The supervisor is ending QEMU (destroy, or a follow-up that stops it)."""
        return self._stop_cause is not None

    # -- intents: the supervisor says what it is about to do ------------------------------------

    def begin_boot(self, kind: StartKind = StartKind.BOOT) -> None:
        """``cont`` is about to run the guest for the first time: its RESUME is STARTED
        (BOOTED; RESTORED or FROM_SNAPSHOT for a guest whose state was loaded)."""
        self._booting = kind

    def started_paused(
        self, kind: StartKind = StartKind.BOOT, *, detail: SuspendedDetail | None = None
    ) -> Reaction:
        """A start that leaves the guest paused completed (QEMU never ran it): STARTED, then
        SUSPENDED (``detail``: PAUSED for a restore asked to stay paused, as libvirt)."""
        started, _, suspended, reason = _STARTS[kind]
        self._set(DomainState.PAUSED, reason)
        r = Reaction()
        r.lifecycle(LifecycleEvent.STARTED, started, None)
        r.lifecycle(LifecycleEvent.SUSPENDED, detail or suspended, None)
        return r

    def expect_resume(self, reason: RunningReason, detail: ResumedDetail) -> None:
        """A ``cont`` is about to be sent for ``reason`` (a snapshot loaded in place, a
        cancelled save): the next RESUME is RESUMED/``detail``."""
        self._resume_hint = (reason, detail)

    def reverted_paused(self) -> Reaction:
        """A snapshot was loaded into the paused guest, which stays paused."""
        self._set(DomainState.PAUSED, PausedReason.FROM_SNAPSHOT)
        r = Reaction()
        r.lifecycle(LifecycleEvent.SUSPENDED, SuspendedDetail.FROM_SNAPSHOT, None)
        return r

    def load_state(self) -> None:
        """A saved state (a save image, a snapshot) is about to be loaded into the guest."""
        self._fresh = False

    def expect_pause(self, reason: PausedReason) -> None:
        """A ``stop`` is about to be sent for ``reason``: the next STOP is attributed to it."""
        self._pause_hint = reason

    def begin_reboot(self) -> None:
        """reboot(): the power button is about to be pressed; its SHUTDOWN becomes a reset."""
        self._rebooting = True

    def abort_reboot(self) -> None:
        """The power button press for reboot() failed: a later SHUTDOWN is a real one."""
        self._rebooting = False

    def begin_destroy(self) -> None:
        """destroy(): QEMU is about to be killed; nothing it says changes the outcome now."""
        self._stop_cause = StopCause.DESTROYED

    def begin_stop(self, cause: StopCause) -> None:
        """The supervisor is about to end QEMU itself (unless a destroy already is)."""
        if self._stop_cause is not StopCause.DESTROYED:
            self._stop_cause = cause

    def follow_up(self, event: GuestEvent, policy: LifecyclePolicy) -> FollowUpAction:
        """What to do after ``event``, by the domain's on_* policy; records the intent."""
        action = policy.decide(event, rebooting=self._rebooting)
        if action is FollowUpAction.RESTART:
            self._restarting = True
        elif action is FollowUpAction.STOP_SHUTDOWN:
            self.begin_stop(StopCause.SHUTDOWN)
        elif action is FollowUpAction.STOP_CRASHED:
            self.begin_stop(StopCause.CRASHED)
        return action

    # -- reactions: QEMU said or did something ----------------------------------------------------

    def exited(self) -> tuple[ShutoffReason, Reaction]:
        """QEMU's process is gone: the final state and the STOPPED event (none if it was
        told already, by a supervisor that died before it could remove the status file)."""
        cause = self._stop_cause
        if self._stopped_told is not None:
            detail = self._stopped_told
        elif cause is StopCause.DESTROYED:
            detail = StoppedDetail.DESTROYED
        elif cause is StopCause.SAVED:
            detail = StoppedDetail.SAVED
        elif cause is StopCause.FROM_SNAPSHOT:
            detail = StoppedDetail.FROM_SNAPSHOT
        elif cause is StopCause.CRASHED or self._state is DomainState.CRASHED:
            detail = StoppedDetail.CRASHED
        elif cause is StopCause.SHUTDOWN or self._shutdown_seen:
            detail = StoppedDetail.SHUTDOWN
        else:
            # Died without saying why: killed from outside, or QEMU itself crashed.
            detail = StoppedDetail.FAILED
        reason = _SHUTOFF_REASON.get(detail, ShutoffReason.UNKNOWN)
        self._set(DomainState.SHUTOFF, reason)
        r = Reaction()
        if self._stopped_told is None:
            r.lifecycle(LifecycleEvent.STOPPED, detail, None)
        return reason, r

    def reconcile(self, status: str, running: bool, *, attaching: bool = False) -> Reaction:
        """Bring the state in line with ``query-status`` after events may have been missed.

        ``attaching``: this supervisor has just taken over a QEMU that ran unsupervised. A
        guest that is shut down or panicked then still awaits its follow-up even if the
        previous supervisor saw it happen: it may have died before it could act.
        """
        r = Reaction()
        if attaching:
            # QEMU answers: this run goes on, whatever ended before (a STOPPED in the journal
            # is an earlier run's), and its end is to be told.
            self._stopped_told = None
        if self._stop_cause is not None:
            return r
        if running:
            # As the RESUME that was missed: it ends a boot, restart or reboot too.
            self._on_resume({}, None, r)
        elif status == "shutdown":
            new = self._state is not DomainState.SHUTDOWN and not self._rebooting
            if new:
                self._set(DomainState.SHUTDOWN, ShutdownReason.USER)
                r.lifecycle(LifecycleEvent.SHUTDOWN, ShutdownDetail.FINISHED, None)
            if new or attaching or not self._shutdown_seen:
                r.follow_up = GuestEvent.SHUTDOWN
            self._shutdown_seen = True
        elif status == "guest-panicked":
            new = self._state is not DomainState.CRASHED
            if new:
                self._rebooting = False  # as GUEST_PANICKED
                self._set(DomainState.CRASHED, CrashedReason.PANICKED)
                r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.PANICKED, None)
            if new or attaching:
                r.follow_up = GuestEvent.PANICKED
        elif status == "suspended" and self._state is not DomainState.PMSUSPENDED:
            self._set(DomainState.PMSUSPENDED, PMSuspendedReason.UNKNOWN)
            r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.MEMORY, None)
        elif (
            not running
            and status not in ("shutdown", "guest-panicked", "suspended")
            and self._pause_shows()
        ):
            reason = _PAUSED_STATUS.get(status, PausedReason.UNKNOWN)
            self._set(DomainState.PAUSED, reason)
            r.lifecycle(LifecycleEvent.SUSPENDED, _SUSPEND_DETAIL[reason], None)
        return r

    def on_qmp_event(self, event: dict[str, Any]) -> Reaction:
        """React to one QMP event (a dict as QEMU sent it)."""
        name = event.get("event", "")
        data = event.get("data") or {}
        ts = _timestamp(event)
        r = Reaction()
        r.events.append(EventSpec(EventKind.QMP, data=event, timestamp=ts))
        if self._stop_cause is not None:
            return r  # QEMU is being stopped; its last words change nothing
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, data, ts, r)
        return r

    # -- internals ------------------------------------------------------------------------------

    def _set(self, state: DomainState, reason: StateReason) -> None:
        if not isinstance(reason, state.reasons):
            raise TypeError(f"{reason!r} is not a reason of {state.name}")
        if state is DomainState.RUNNING:
            self._fresh = False
        self._state, self._reason = state, reason

    def _catch_up(self, type_: LifecycleEvent, detail: EventDetail) -> None:
        """Take the state a later event than the status file told: running or paused, shut
        down, or panicked (as the SHUTDOWN or GUEST_PANICKED handlers would have left it)."""
        active = (DomainState.RUNNING, DomainState.PAUSED)
        if type_ in (LifecycleEvent.STARTED, LifecycleEvent.RESUMED):
            if self._state is DomainState.PAUSED:
                self._set(DomainState.RUNNING, _RUNNING_TOLD.get(detail, RunningReason.UNPAUSED))
        elif type_ is LifecycleEvent.SUSPENDED and self._state is DomainState.RUNNING:
            self._set(DomainState.PAUSED, _PAUSED_TOLD.get(detail, PausedReason.USER))
        elif type_ is LifecycleEvent.SHUTDOWN and self._state in active:
            self._shutdown_seen = True
            self._set(DomainState.SHUTDOWN, ShutdownReason.USER)
        elif (
            type_ is LifecycleEvent.CRASHED
            and detail is CrashedDetail.PANICKED
            and self._state in active
        ):
            self._rebooting = False
            self._set(DomainState.CRASHED, CrashedReason.PANICKED)

    def _pause_shows(self) -> bool:
        """A STOP now pauses the domain (rather than being part of a SHUTDOWN or a panic)."""
        # After SHUTDOWN (a reboot's too, and the one a guest reset becomes with
        # on_reboot=destroy) or a panic QEMU pauses; that pause is part of what was reported.
        # A reboot whose SHUTDOWN has not come yet hides nothing (libvirt: pausedShutdown,
        # set by SHUTDOWN).
        return self._state is DomainState.RUNNING and not self._shutdown_seen

    def _on_stop(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        # Whatever this STOP is, it is the one an expected reason was for (libvirt's
        # qemuProcessHandleStop takes pausedReason even when it reports nothing).
        reason = self._pause_hint or PausedReason.UNKNOWN
        self._pause_hint = None
        if not self._pause_shows():
            return
        self._set(DomainState.PAUSED, reason)
        r.lifecycle(LifecycleEvent.SUSPENDED, _SUSPEND_DETAIL[reason], ts)

    def _on_resume(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        hint, self._resume_hint = self._resume_hint, None
        if self._booting is not None or self._restarting:
            started, running, _, _ = _STARTS[self._booting or StartKind.BOOT]
            self._booting, self._restarting = None, False
            self._shutdown_seen = False
            self._set(DomainState.RUNNING, running)
            r.lifecycle(LifecycleEvent.STARTED, started, ts)
            return
        if self._rebooting and self._shutdown_seen:
            # The supervisor reset and continued the guest that shut down for reboot().
            self._rebooting = False
            self._shutdown_seen = False
            if self._state is DomainState.RUNNING:
                self._set(DomainState.RUNNING, RunningReason.BOOTED)
                return  # it stayed RUNNING throughout: the REBOOT event said it all
        if self._state is DomainState.RUNNING:
            return
        if self._state in (DomainState.SHUTDOWN, DomainState.CRASHED):
            # Someone continued a guest that had shut down or panicked (e.g. after a reset).
            self._shutdown_seen = False
            self._set(DomainState.RUNNING, RunningReason.BOOTED)
        elif hint is not None:
            self._set(DomainState.RUNNING, hint[0])
            r.lifecycle(LifecycleEvent.RESUMED, hint[1], ts)
            return
        else:
            self._set(DomainState.RUNNING, RunningReason.UNPAUSED)
        r.lifecycle(LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED, ts)

    def _on_shutdown(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if data.get("reason") == "guest-reset":
            # set-action reboot=shutdown (on_reboot=destroy): the guest rebooted.
            self._shutdown_seen = True
            r.events.append(EventSpec(EventKind.REBOOT, data=data, timestamp=ts))
            r.follow_up = GuestEvent.REBOOT_DESTROY
            return
        if self._state is DomainState.SHUTDOWN:
            return  # already reported
        self._shutdown_seen = True
        if self._rebooting:
            r.follow_up = GuestEvent.SHUTDOWN
            return
        guest = data.get("guest")
        detail = (
            ShutdownDetail.GUEST
            if guest is True
            else ShutdownDetail.HOST
            if guest is False
            else ShutdownDetail.FINISHED
        )
        self._set(DomainState.SHUTDOWN, ShutdownReason.USER)
        r.lifecycle(LifecycleEvent.SHUTDOWN, detail, ts)
        r.follow_up = GuestEvent.SHUTDOWN

    def _on_reset(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self._state is DomainState.PAUSED and self._reason is PausedReason.STARTING_UP:
            return  # a reset while starting up is part of the start (libvirt ignores it too)
        if self._rebooting and not self._shutdown_seen:
            # The guest reset itself before shutting down for reboot(): the reboot asked for
            # has happened (libvirt's qemuProcessHandleReset ends a fake reboot too).
            self._rebooting = False
        r.events.append(EventSpec(EventKind.REBOOT, data=data, timestamp=ts))

    def _on_panic(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self._state is DomainState.CRASHED:
            return
        self._rebooting = False
        self._set(DomainState.CRASHED, CrashedReason.PANICKED)
        r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.PANICKED, ts)
        r.follow_up = GuestEvent.PANICKED

    def _on_crashloaded(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        # A crash kernel took over; the guest keeps running (libvirt: CRASHED/CRASHEDLOADED).
        r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.CRASHEDLOADED, ts)

    def _on_suspend(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        self._set(DomainState.PMSUSPENDED, PMSuspendedReason.UNKNOWN)
        r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.MEMORY, ts)

    def _on_suspend_disk(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        # The guest saved itself to disk and will power off; QEMU's exit follows.
        r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.DISK, ts)

    def _on_wakeup(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self._state is DomainState.PMSUSPENDED:
            self._set(DomainState.RUNNING, RunningReason.WAKEUP)
            r.lifecycle(LifecycleEvent.STARTED, StartedDetail.WAKEUP, ts)

    def _on_rtc_change(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        r.events.append(
            EventSpec(EventKind.RTC_CHANGE, data={"offset": data.get("offset", 0)}, timestamp=ts)
        )

    def _on_watchdog(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        action = data.get("action", "")
        if action == "pause" and self._pause_shows():
            # Not when already paused: no STOP follows (libvirt: only a RUNNING domain).
            self._pause_hint = PausedReason.WATCHDOG
        r.events.append(EventSpec(EventKind.WATCHDOG, data={"action": action}, timestamp=ts))

    def _on_block_io_error(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        node = data.get("node-name", "")
        disk = self._disk_for_node(node) if node else None
        payload = {
            "device": disk.target if disk else data.get("device", ""),
            "alias": disk.alias if disk else "",
            "path": disk.source if disk else None,  # the path, or a network disk's name
            "node-name": node,
            "operation": data.get("operation", ""),
            "action": data.get("action", ""),
            "reason": data.get("reason", ""),
            "nospace": bool(data.get("nospace", False)),
        }
        if payload["action"] == "stop" and self._pause_shows():
            # Not when already paused (requests failing while QEMU drains after its STOP):
            # no STOP follows (libvirt: only a RUNNING domain).
            self._pause_hint = PausedReason.IOERROR
        r.events.append(EventSpec(EventKind.IO_ERROR, data=payload, timestamp=ts))

    def _on_device_deleted(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        device = data.get("device")
        # Devices without an id are QEMU-internal, and vCPUs (``vcpuN``) are no devices to
        # libvirt's DEVICE_REMOVED: it ignores both.
        if device and not (device.startswith("vcpu") and device[4:].isdigit()):
            r.events.append(
                EventSpec(
                    EventKind.DEVICE_REMOVED,
                    data={"device": device, "path": data.get("path")},
                    timestamp=ts,
                )
            )

    def _on_balloon_change(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        actual = int(data.get("actual", 0)) // 1024
        self._balloon_kib = actual
        r.events.append(
            EventSpec(EventKind.BALLOON_CHANGE, data={"actual_kib": actual}, timestamp=ts)
        )

    def _on_block_job(
        self, data: dict[str, Any], ts: float | None, r: Reaction, status: str
    ) -> None:
        job, disk = job_of(str(data.get("device", "")), str(data.get("type", "")))
        payload = {
            "device": data.get("device", ""),
            "type": data.get("type", ""),
            # libvirt's BLOCK_JOB_2: the disk's target and the job in libvirt's words.
            "disk": disk,
            "job": job,
            "status": "failed" if status == "completed" and data.get("error") else status,
            "offset": data.get("offset"),
            "len": data.get("len"),
            "error": data.get("error"),
        }
        r.events.append(EventSpec(EventKind.BLOCK_JOB, data=payload, timestamp=ts))


#: Why QEMU is paused, by its query-status (libvirt's qemuMonitorVMStatusToPausedReason;
#: any other status: UNKNOWN).
_PAUSED_STATUS: dict[str, PausedReason] = {
    "io-error": PausedReason.IOERROR,
    "watchdog": PausedReason.WATCHDOG,
    "paused": PausedReason.USER,
    "prelaunch": PausedReason.USER,
    "inmigrate": PausedReason.MIGRATION,
    "postmigrate": PausedReason.MIGRATION,
    "finish-migrate": PausedReason.MIGRATION,
    "save-vm": PausedReason.SAVE,
}

_SUSPEND_DETAIL: dict[PausedReason, SuspendedDetail] = {
    PausedReason.IOERROR: SuspendedDetail.IOERROR,
    PausedReason.WATCHDOG: SuspendedDetail.WATCHDOG,
    PausedReason.MIGRATION: SuspendedDetail.MIGRATED,
    PausedReason.FROM_SNAPSHOT: SuspendedDetail.FROM_SNAPSHOT,
}
for _reason in PausedReason:
    _SUSPEND_DETAIL.setdefault(_reason, SuspendedDetail.PAUSED)

#: The state reason a STARTED or RESUMED event's detail stands for (see ``_catch_up``).
_RUNNING_TOLD: dict[EventDetail, RunningReason] = {
    StartedDetail.BOOTED: RunningReason.BOOTED,
    StartedDetail.MIGRATED: RunningReason.MIGRATED,
    StartedDetail.RESTORED: RunningReason.RESTORED,
    StartedDetail.FROM_SNAPSHOT: RunningReason.FROM_SNAPSHOT,
    StartedDetail.WAKEUP: RunningReason.WAKEUP,
    ResumedDetail.MIGRATED: RunningReason.MIGRATED,
    ResumedDetail.FROM_SNAPSHOT: RunningReason.FROM_SNAPSHOT,
}
#: The paused reason a SUSPENDED event's detail stands for (the inverse of _SUSPEND_DETAIL).
_PAUSED_TOLD: dict[EventDetail, PausedReason] = {
    detail: reason
    for reason, detail in _SUSPEND_DETAIL.items()
    if detail is not SuspendedDetail.PAUSED
}

#: The shut-off reason of each way a domain ends (what :meth:`DomainStateMachine.exited`
#: reports; FAILED, a QEMU that died saying nothing, counts as a crash, as in libvirt).
_SHUTOFF_REASON: dict[StoppedDetail, ShutoffReason] = {
    StoppedDetail.DESTROYED: ShutoffReason.DESTROYED,
    StoppedDetail.SAVED: ShutoffReason.SAVED,
    StoppedDetail.FROM_SNAPSHOT: ShutoffReason.FROM_SNAPSHOT,
    StoppedDetail.CRASHED: ShutoffReason.CRASHED,
    StoppedDetail.SHUTDOWN: ShutoffReason.SHUTDOWN,
    StoppedDetail.FAILED: ShutoffReason.CRASHED,
}

_Handler = Callable[[DomainStateMachine, dict[str, Any], float | None, Reaction], None]

_HANDLERS: dict[str, _Handler] = {
    "STOP": DomainStateMachine._on_stop,
    "RESUME": DomainStateMachine._on_resume,
    "SHUTDOWN": DomainStateMachine._on_shutdown,
    "RESET": DomainStateMachine._on_reset,
    "GUEST_PANICKED": DomainStateMachine._on_panic,
    "GUEST_CRASHLOADED": DomainStateMachine._on_crashloaded,
    "SUSPEND": DomainStateMachine._on_suspend,
    "SUSPEND_DISK": DomainStateMachine._on_suspend_disk,
    "WAKEUP": DomainStateMachine._on_wakeup,
    "RTC_CHANGE": DomainStateMachine._on_rtc_change,
    "WATCHDOG": DomainStateMachine._on_watchdog,
    "BLOCK_IO_ERROR": DomainStateMachine._on_block_io_error,
    "DEVICE_DELETED": DomainStateMachine._on_device_deleted,
    "BALLOON_CHANGE": DomainStateMachine._on_balloon_change,
    "BLOCK_JOB_COMPLETED": lambda m, d, t, r: m._on_block_job(d, t, r, "completed"),
    "BLOCK_JOB_CANCELLED": lambda m, d, t, r: m._on_block_job(d, t, r, "canceled"),
    # No BLOCK_JOB_ERROR: it does not end the job (per on-error, the job pauses, goes on, or
    # ends in a BLOCK_JOB_COMPLETED that carries the error), and libvirt ignores it too.
    "BLOCK_JOB_READY": lambda m, d, t, r: m._on_block_job(d, t, r, "ready"),
}


def _timestamp(event: dict[str, Any]) -> float | None:
    ts = event.get("timestamp")
    if not isinstance(ts, dict):
        return None
    try:
        return int(ts["seconds"]) + int(ts["microseconds"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return None


__all__ = [
    "DiskInfo",
    "DomainStateMachine",
    "EventSpec",
    "MachineSnapshot",
    "Reaction",
    "StartKind",
    "StopCause",
]
