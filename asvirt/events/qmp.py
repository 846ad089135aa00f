"""From QMP events to domain states and typed events: the supervisor's state machine.

QEMU is the authority on what its guest is doing; the API only asks. So a domain's state
changes only here, in reaction to QEMU's own events (and to QEMU's exit), and an API call that
expects a change (``suspend()`` expects STOP) leaves a *hint* first, so that the event that
follows is attributed correctly (PAUSED/USER rather than PAUSED/UNKNOWN). Whoever sends
``stop`` — the API, ``qmp("stop")``, or another QMP client — the domain is paused when QEMU
says so, and only then.

The mapping follows libvirt's QEMU driver (``qemuProcessHandle*``), with two deliberate
differences: a reboot asked through ``reboot()`` keeps the domain RUNNING throughout (the
ACPI power-off that libvirt turns into a reset is an implementation detail, reported as one
REBOOT event); and after SHUTDOWN or a panic, the pause QEMU then enters is not reported as
a separate SUSPENDED event.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from ..states import (
    CrashedReason,
    DomainState,
    PausedReason,
    PMSuspendedReason,
    RunningReason,
    ShutdownReason,
    ShutoffReason,
    StateReason,
)
from .types import (
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


class FollowUp(enum.Enum):
    """What the supervisor must do after an event, beyond publishing it."""

    #: The guest has shut down (QEMU is paused, not gone): apply on_poweroff / finish a reboot.
    GUEST_SHUTDOWN = "guest-shutdown"
    #: The guest reset itself and on_reboot says destroy.
    GUEST_REBOOT_DESTROY = "guest-reboot-destroy"
    #: The guest panicked: apply on_crash.
    GUEST_PANICKED = "guest-panicked"


@dataclasses.dataclass(frozen=True, slots=True)
class EventSpec:
    """An event to publish (the bus adds sequence number, domain and UUID)."""

    kind: EventKind
    type: LifecycleEvent | None = None
    detail: EventDetail | None = None
    data: dict[str, Any] | None = None
    timestamp: float | None = None


@dataclasses.dataclass(slots=True)
class Reaction:
    events: list[EventSpec] = dataclasses.field(default_factory=list)
    follow_up: FollowUp | None = None

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


class DomainStateMachine:
    """The state of one active domain, driven by QMP events and QEMU's exit."""

    def __init__(
        self,
        state: DomainState = DomainState.PAUSED,
        reason: StateReason = PausedReason.STARTING_UP,
        *,
        disk_for_node: Callable[[str], DiskInfo | None] = lambda node: None,
    ) -> None:
        self.state = state
        self.reason = reason
        self._disk_for_node = disk_for_node
        #: Set before ``cont`` at start: the RESUME that follows means STARTED/BOOTED.
        self.starting = False
        #: Reason to use for the next STOP (USER when we asked, IOERROR/WATCHDOG when QEMU said).
        self.pause_hint: PausedReason | None = None
        #: reboot() in progress: the next SHUTDOWN is turned into a reset.
        self.fake_reboot = False
        #: QEMU reported SHUTDOWN: an exit now is a clean stop.
        self.shutdown_seen = False
        #: destroy() in progress: QEMU's own events no longer change anything.
        self.destroying = False
        #: Set when the supervisor itself ended QEMU after a guest shutdown or crash.
        self.stop_cause: StopCause | None = None
        #: The supervisor reset a shut-down or crashed guest (on_poweroff/on_crash=restart):
        #: the next RESUME means STARTED/BOOTED.
        self.restarting = False
        #: Balloon size last reported, KiB (None: never reported).
        self.balloon_kib: int | None = None

    # -- transitions driven by the supervisor ----------------------------------------------------

    def set_state(self, state: DomainState, reason: StateReason) -> None:
        if not isinstance(reason, state.reasons):
            raise TypeError(f"{reason!r} is not a reason of {state.name}")
        self.state, self.reason = state, reason

    def started_paused(self) -> Reaction:
        """start(paused=True) completed: QEMU never ran the guest."""
        self.set_state(DomainState.PAUSED, PausedReason.USER)
        r = Reaction()
        r.lifecycle(LifecycleEvent.STARTED, StartedDetail.BOOTED, None)
        r.lifecycle(LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED, None)
        return r

    def exited(self) -> tuple[ShutoffReason, Reaction]:
        """QEMU's process is gone: the final state and the STOPPED event."""
        if self.destroying:
            detail, reason = StoppedDetail.DESTROYED, ShutoffReason.DESTROYED
        elif self.stop_cause is StopCause.CRASHED or self.state is DomainState.CRASHED:
            detail, reason = StoppedDetail.CRASHED, ShutoffReason.CRASHED
        elif self.stop_cause is StopCause.SHUTDOWN or self.shutdown_seen:
            detail, reason = StoppedDetail.SHUTDOWN, ShutoffReason.SHUTDOWN
        else:
            # Died without saying why: killed from outside, or QEMU itself crashed.
            detail, reason = StoppedDetail.FAILED, ShutoffReason.CRASHED
        self.set_state(DomainState.SHUTOFF, reason)
        r = Reaction()
        r.lifecycle(LifecycleEvent.STOPPED, detail, None)
        return reason, r

    def reconcile(self, status: str, running: bool) -> Reaction:
        """Bring the state in line with ``query-status`` after events may have been missed."""
        r = Reaction()
        if self.destroying:
            return r
        if running and self.state is not DomainState.RUNNING:
            self.set_state(DomainState.RUNNING, RunningReason.UNPAUSED)
            r.lifecycle(LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED, None)
        elif status == "shutdown" and self.state is not DomainState.SHUTDOWN:
            self.shutdown_seen = True
            self.set_state(DomainState.SHUTDOWN, ShutdownReason.USER)
            r.lifecycle(LifecycleEvent.SHUTDOWN, ShutdownDetail.FINISHED, None)
            r.follow_up = FollowUp.GUEST_SHUTDOWN
        elif status == "guest-panicked" and self.state is not DomainState.CRASHED:
            self.set_state(DomainState.CRASHED, CrashedReason.PANICKED)
            r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.PANICKED, None)
            r.follow_up = FollowUp.GUEST_PANICKED
        elif status == "suspended" and self.state is not DomainState.PMSUSPENDED:
            self.set_state(DomainState.PMSUSPENDED, PMSuspendedReason.UNKNOWN)
            r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.MEMORY, None)
        elif (
            not running
            and status not in ("shutdown", "guest-panicked", "suspended")
            and self.state is DomainState.RUNNING
        ):
            reason = {
                "io-error": PausedReason.IOERROR,
                "watchdog": PausedReason.WATCHDOG,
                "paused": PausedReason.USER,
            }.get(status, PausedReason.UNKNOWN)
            self.set_state(DomainState.PAUSED, reason)
            r.lifecycle(LifecycleEvent.SUSPENDED, _SUSPEND_DETAIL[reason], None)
        return r

    # -- QMP events ------------------------------------------------------------------------------

    def on_qmp_event(self, event: dict[str, Any]) -> Reaction:
        """React to one QMP event (a dict as QEMU sent it)."""
        name = event.get("event", "")
        data = event.get("data") or {}
        ts = _timestamp(event)
        r = Reaction()
        r.events.append(EventSpec(EventKind.QMP, data=event, timestamp=ts))
        if self.destroying or self.stop_cause is not None:
            return r  # QEMU is being stopped; its last words change nothing
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, data, ts, r)
        return r

    def _on_stop(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self.state is not DomainState.RUNNING or self.fake_reboot or self.shutdown_seen:
            # After SHUTDOWN (including the one a guest reset becomes with on_reboot=destroy)
            # or a panic QEMU pauses; that pause is part of what was reported.
            return
        reason = self.pause_hint or PausedReason.UNKNOWN
        self.pause_hint = None
        self.set_state(DomainState.PAUSED, reason)
        r.lifecycle(LifecycleEvent.SUSPENDED, _SUSPEND_DETAIL[reason], ts)

    def _on_resume(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self.starting or self.restarting:
            self.starting = self.restarting = False
            self.shutdown_seen = False
            self.set_state(DomainState.RUNNING, RunningReason.BOOTED)
            r.lifecycle(LifecycleEvent.STARTED, StartedDetail.BOOTED, ts)
            return
        if self.fake_reboot:
            self.fake_reboot = False
            self.shutdown_seen = False
            self.set_state(DomainState.RUNNING, RunningReason.BOOTED)
            return
        if self.state is DomainState.RUNNING:
            return
        if self.state in (DomainState.SHUTDOWN, DomainState.CRASHED):
            # Someone continued a guest that had shut down or panicked (e.g. after a reset).
            self.shutdown_seen = False
            self.set_state(DomainState.RUNNING, RunningReason.BOOTED)
        else:
            self.set_state(DomainState.RUNNING, RunningReason.UNPAUSED)
        r.lifecycle(LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED, ts)

    def _on_shutdown(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if data.get("reason") == "guest-reset":
            # set-action reboot=shutdown (on_reboot=destroy): the guest rebooted.
            self.shutdown_seen = True
            r.events.append(EventSpec(EventKind.REBOOT, data=data, timestamp=ts))
            r.follow_up = FollowUp.GUEST_REBOOT_DESTROY
            return
        if self.state is DomainState.SHUTDOWN:
            return  # already reported
        self.shutdown_seen = True
        if self.fake_reboot:
            r.follow_up = FollowUp.GUEST_SHUTDOWN
            return
        guest = data.get("guest")
        detail = (
            ShutdownDetail.GUEST
            if guest is True
            else ShutdownDetail.HOST
            if guest is False
            else ShutdownDetail.FINISHED
        )
        self.set_state(DomainState.SHUTDOWN, ShutdownReason.USER)
        r.lifecycle(LifecycleEvent.SHUTDOWN, detail, ts)
        r.follow_up = FollowUp.GUEST_SHUTDOWN

    def _on_reset(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        r.events.append(EventSpec(EventKind.REBOOT, data=data, timestamp=ts))

    def _on_panic(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self.state is DomainState.CRASHED:
            return
        self.fake_reboot = False
        self.set_state(DomainState.CRASHED, CrashedReason.PANICKED)
        r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.PANICKED, ts)
        r.follow_up = FollowUp.GUEST_PANICKED

    def _on_crashloaded(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        # A crash kernel took over; the guest keeps running (libvirt: CRASHED/CRASHEDLOADED).
        r.lifecycle(LifecycleEvent.CRASHED, CrashedDetail.CRASHEDLOADED, ts)

    def _on_suspend(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        self.set_state(DomainState.PMSUSPENDED, PMSuspendedReason.UNKNOWN)
        r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.MEMORY, ts)

    def _on_suspend_disk(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        # The guest saved itself to disk and will power off; QEMU's exit follows.
        r.lifecycle(LifecycleEvent.PMSUSPENDED, PMSuspendedDetail.DISK, ts)

    def _on_wakeup(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        if self.state is DomainState.PMSUSPENDED:
            self.set_state(DomainState.RUNNING, RunningReason.WAKEUP)
            r.lifecycle(LifecycleEvent.STARTED, StartedDetail.WAKEUP, ts)

    def _on_rtc_change(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        r.events.append(
            EventSpec(EventKind.RTC_CHANGE, data={"offset": data.get("offset", 0)}, timestamp=ts)
        )

    def _on_watchdog(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        action = data.get("action", "")
        if action == "pause":
            self.pause_hint = PausedReason.WATCHDOG
        r.events.append(EventSpec(EventKind.WATCHDOG, data={"action": action}, timestamp=ts))

    def _on_block_io_error(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        node = data.get("node-name", "")
        disk = self._disk_for_node(node) if node else None
        payload = {
            "device": disk.target if disk else data.get("device", ""),
            "alias": disk.alias if disk else "",
            "path": disk.source if disk else None,
            "node-name": node,
            "operation": data.get("operation", ""),
            "action": data.get("action", ""),
            "reason": data.get("reason", ""),
            "nospace": bool(data.get("nospace", False)),
        }
        if payload["action"] == "stop":
            self.pause_hint = PausedReason.IOERROR
        r.events.append(EventSpec(EventKind.IO_ERROR, data=payload, timestamp=ts))

    def _on_device_deleted(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        device = data.get("device")
        if device:  # devices without an id are QEMU-internal; libvirt ignores them too
            r.events.append(
                EventSpec(
                    EventKind.DEVICE_REMOVED,
                    data={"device": device, "path": data.get("path")},
                    timestamp=ts,
                )
            )

    def _on_balloon_change(self, data: dict[str, Any], ts: float | None, r: Reaction) -> None:
        actual = int(data.get("actual", 0)) // 1024
        self.balloon_kib = actual
        r.events.append(
            EventSpec(EventKind.BALLOON_CHANGE, data={"actual_kib": actual}, timestamp=ts)
        )

    def _on_block_job(
        self, data: dict[str, Any], ts: float | None, r: Reaction, status: str
    ) -> None:
        payload = {
            "device": data.get("device", ""),
            "type": data.get("type", ""),
            "status": "failed" if status == "completed" and data.get("error") else status,
            "offset": data.get("offset"),
            "len": data.get("len"),
            "error": data.get("error"),
        }
        r.events.append(EventSpec(EventKind.BLOCK_JOB, data=payload, timestamp=ts))


_SUSPEND_DETAIL: dict[PausedReason, SuspendedDetail] = {
    PausedReason.IOERROR: SuspendedDetail.IOERROR,
    PausedReason.WATCHDOG: SuspendedDetail.WATCHDOG,
}
for _reason in PausedReason:
    _SUSPEND_DETAIL.setdefault(_reason, SuspendedDetail.PAUSED)

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
