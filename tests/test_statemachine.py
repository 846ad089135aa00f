"""The supervisor's state machine and its follow-up policy, without QEMU and without trio.

Both the QEMU runner and the test driver's simulated QEMU feed :class:`DomainStateMachine`
and publish what comes out, so what these tests assert is what users see: the domain's state
and reason, the events published (kind, lifecycle type and detail, data, timestamp), and the
follow-up the supervisor carries out. Only the machine's public methods are used.

The expectations follow libvirt's QEMU driver (``qemuProcessHandle*`` in
src/qemu/qemu_process.c, ``qemuMonitorVMStatusToPausedReason`` in qemu_monitor.c), except for
the differences the module documents (a reboot() keeps the domain RUNNING; the pause after
SHUTDOWN or a panic is no separate SUSPENDED) and those the API contract tests pin (a shut-down
domain's reason is USER; a restarted guest is STARTED/BOOTED again). Event payloads are those
QEMU 7.2 sends.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asvirt.drivers.qemu.statemachine import (
    DiskInfo,
    DomainStateMachine,
    EventSpec,
    MachineSnapshot,
    Reaction,
    StartKind,
    StopCause,
)
from asvirt.events.types import (
    CrashedDetail,
    DefinedDetail,
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
from asvirt.hypervisor.lifecycle import FollowUpAction, GuestEvent, LifecyclePolicy
from asvirt.states import (
    CrashedReason,
    DomainState,
    PausedReason,
    PMSuspendedReason,
    RunningReason,
    ShutdownReason,
    ShutoffReason,
    StateReason,
)

L = LifecycleEvent
K = EventKind
S = DomainState
A = FollowUpAction
G = GuestEvent

#: What every QMP event in these tests carries, and the timestamp it must become.
QEMU_TS = {"seconds": 1_700_000_000, "microseconds": 250_000}
TS = 1_700_000_000.25

#: What a test sees of one published event (the timestamp is checked on the way).
Published = tuple[EventKind, LifecycleEvent | None, EventDetail | None, dict[str, Any] | None]

#: libvirt's lifecycle actions (conf: LIFECYCLE_ACTIONS, CRASH_ACTIONS).
POWEROFF_ACTIONS = ("destroy", "restart", "preserve", "rename-restart")
CRASH_ACTIONS = (*POWEROFF_ACTIONS, "coredump-destroy", "coredump-restart")

#: Every run state QEMU 7.2's query-status can report (qapi/run-state.json, RunState).
QEMU_STATUSES = (
    "running",
    "paused",
    "prelaunch",
    "inmigrate",
    "postmigrate",
    "finish-migrate",
    "io-error",
    "watchdog",
    "shutdown",
    "guest-panicked",
    "suspended",
    "restore-vm",
    "save-vm",
    "internal-error",
    "debug",
    "colo",
)

#: QEMU's WatchdogAction values.
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi")


def qmp(
    name: str, data: dict[str, Any] | None = None, *, timestamp: Any = QEMU_TS
) -> dict[str, Any]:
    """A QMP event as QEMU sends it (events without data have no "data" member)."""
    event: dict[str, Any] = {"event": name, "timestamp": timestamp}
    if data is not None:
        event["data"] = data
    return event


def life(type_: LifecycleEvent, detail: EventDetail) -> Published:
    return (K.LIFECYCLE, type_, detail, None)


@dataclasses.dataclass
class Seen:
    """What a reaction published after the raw QMP event, and the follow-up it asks for."""

    events: list[Published]
    follow_up: GuestEvent | None


def send(m: DomainStateMachine, name: str, data: dict[str, Any] | None = None) -> Seen:
    """Feed one QMP event; check that the raw event comes first and QEMU's time is kept."""
    event = qmp(name, data)
    r = m.on_qmp_event(event)
    first, *rest = r.events
    assert first == EventSpec(K.QMP, data=event, timestamp=TS)
    assert [spec.timestamp for spec in rest] == [TS] * len(rest)
    return Seen([(s.kind, s.type, s.detail, s.data) for s in rest], r.follow_up)


def seen(r: Reaction) -> Seen:
    """A reaction that did not come from QEMU (reconcile, exited): its events have no time."""
    assert [spec.timestamp for spec in r.events] == [None] * len(r.events)
    return Seen([(s.kind, s.type, s.detail, s.data) for s in r.events], r.follow_up)


NOTHING = Seen([], None)


def state_of(m: DomainStateMachine) -> tuple[DomainState, StateReason]:
    return m.state, m.reason


# -- machines in each state, reached the way QEMU and the supervisor reach them ------------------


def starting() -> DomainStateMachine:
    """QEMU started with -S; the guest has not run yet."""
    return DomainStateMachine()


def running() -> DomainStateMachine:
    m = DomainStateMachine()
    m.begin_boot()
    send(m, "RESUME")
    return m


def paused() -> DomainStateMachine:
    m = running()
    m.expect_pause(PausedReason.USER)
    send(m, "STOP")
    return m


def shut_down() -> DomainStateMachine:
    """The guest powered off; -no-shutdown keeps QEMU, paused (on_poweroff=preserve)."""
    m = running()
    send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    send(m, "STOP")
    return m


def crashed() -> DomainStateMachine:
    """The guest panicked; QEMU paused it (set-action panic=pause)."""
    m = running()
    send(m, "GUEST_PANICKED", {"action": "pause"})
    send(m, "STOP")
    return m


def pmsuspended() -> DomainStateMachine:
    m = running()
    send(m, "SUSPEND")
    return m


def rebooting_after_shutdown() -> DomainStateMachine:
    """reboot(): the guest has shut down; the supervisor is about to reset and continue it."""
    m = running()
    m.begin_reboot()
    send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    send(m, "STOP")
    return m


MACHINES: dict[str, Callable[[], DomainStateMachine]] = {
    "starting": starting,
    "running": running,
    "paused": paused,
    "shutdown": shut_down,
    "crashed": crashed,
    "pmsuspended": pmsuspended,
}

STATE_OF: dict[str, tuple[DomainState, StateReason]] = {
    "starting": (S.PAUSED, PausedReason.STARTING_UP),
    "running": (S.RUNNING, RunningReason.BOOTED),
    "paused": (S.PAUSED, PausedReason.USER),
    "shutdown": (S.SHUTDOWN, ShutdownReason.USER),
    "crashed": (S.CRASHED, CrashedReason.PANICKED),
    "pmsuspended": (S.PMSUSPENDED, PMSuspendedReason.UNKNOWN),
}


@pytest.mark.parametrize("name", MACHINES)
def test_machines_reach_their_states(name: str) -> None:
    m = MACHINES[name]()
    assert state_of(m) == STATE_OF[name]
    assert not m.stopping and not m.destroying
    assert m.balloon_kib is None


def test_a_new_machine_is_qemu_started_paused() -> None:
    m = DomainStateMachine()
    assert state_of(m) == (S.PAUSED, PausedReason.STARTING_UP)


def test_a_guest_is_fresh_until_it_runs_or_is_given_a_saved_state() -> None:
    # Fresh: QEMU's balloon can hold no statistics from a guest driver (the statistics ask
    # QEMU for them once, then not again while the guest stays fresh).
    m = DomainStateMachine()
    m.started_paused()
    assert m.fresh
    send(m, "STOP")
    assert m.fresh
    send(m, "RESUME")
    assert not m.fresh
    send(m, "STOP")
    assert not m.fresh  # paused again, but it ran

    m = DomainStateMachine()
    m.load_state()  # a restore, a snapshot loaded: the guest's state is not a new one
    m.started_paused(StartKind.RESTORE)
    assert not m.fresh
    snapshot = MachineSnapshot(state=int(S.PAUSED), reason=int(PausedReason.USER))
    # Re-attached: what happened before this supervisor is not known.
    assert not DomainStateMachine.restore(snapshot).fresh


# -- the raw event and QEMU's timestamp ----------------------------------------------------------

#: One of each QMP event the machine knows, with QEMU 7.2's data, plus ones it does not know.
ALL_EVENTS: list[tuple[str, dict[str, Any] | None]] = [
    ("STOP", None),
    ("RESUME", None),
    ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
    ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}),
    ("SHUTDOWN", {}),
    ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}),
    ("RESET", {"guest": True, "reason": "guest-reset"}),
    ("GUEST_PANICKED", {"action": "pause"}),
    ("GUEST_CRASHLOADED", {"action": "run"}),
    ("SUSPEND", None),
    ("SUSPEND_DISK", None),
    ("WAKEUP", None),
    ("RTC_CHANGE", {"offset": 3600, "qom-path": "/machine/unattached/device[11]"}),
    *(("WATCHDOG", {"action": action}) for action in WATCHDOG_ACTIONS),
    (
        "BLOCK_IO_ERROR",
        {
            "device": "",
            "node-name": "libvirt-1-format",
            "operation": "write",
            "action": "stop",
            "nospace": False,
            "reason": "Input/output error",
        },
    ),
    ("DEVICE_DELETED", {"device": "net1", "path": "/machine/peripheral/net1"}),
    ("DEVICE_DELETED", {"path": "/machine/peripheral-anon/device[3]"}),
    ("BALLOON_CHANGE", {"actual": 512 * 1024 * 1024}),
    ("BLOCK_JOB_COMPLETED", {"type": "mirror", "device": "j", "len": 9, "offset": 9, "speed": 0}),
    ("BLOCK_JOB_CANCELLED", {"type": "mirror", "device": "j", "len": 9, "offset": 3, "speed": 0}),
    ("BLOCK_JOB_READY", {"type": "mirror", "device": "j", "len": 9, "offset": 9, "speed": 0}),
    ("POWERDOWN", None),
    ("NIC_RX_FILTER_CHANGED", {"name": "net0", "path": "/machine/peripheral/net0/virtio-backend"}),
]


@pytest.mark.parametrize(("name", "data"), ALL_EVENTS)
def test_every_event_is_published_raw_first_with_qemus_time(
    name: str, data: dict[str, Any] | None
) -> None:
    for machine in MACHINES.values():
        send(machine(), name, data)  # asserts the raw event first, and QEMU's time on all


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ({"seconds": 1_600_000_000, "microseconds": 5}, 1_600_000_000.000005),
        ({"seconds": 0, "microseconds": 0}, 0.0),
        (None, None),
        ("2023-11-14T22:13:20Z", None),
        ({"seconds": 1_600_000_000}, None),
        ({"microseconds": 5}, None),
        ({"seconds": None, "microseconds": 5}, None),
        ({"seconds": "soon", "microseconds": 5}, None),
    ],
)
def test_qemu_timestamps_become_event_timestamps(timestamp: Any, expected: float | None) -> None:
    m = running()
    event = qmp("STOP", timestamp=timestamp)
    r = m.on_qmp_event(event)
    # The raw event and the SUSPENDED it caused carry QEMU's time (None when malformed).
    assert [(s.kind, s.timestamp) for s in r.events] == [(K.QMP, expected), (K.LIFECYCLE, expected)]
    assert r.events[0].data is event


def test_an_event_without_a_timestamp_has_none() -> None:
    m = running()
    r = m.on_qmp_event({"event": "RESET", "data": {"guest": True, "reason": "guest-reset"}})
    assert [(s.kind, s.timestamp) for s in r.events] == [(K.QMP, None), (K.REBOOT, None)]


# -- state-changing events from each state -------------------------------------------------------

SHUTDOWN_STATE = (S.SHUTDOWN, ShutdownReason.USER)
CRASHED_STATE = (S.CRASHED, CrashedReason.PANICKED)
PMSUSPENDED_STATE = (S.PMSUSPENDED, PMSuspendedReason.UNKNOWN)
RESUMED = life(L.RESUMED, ResumedDetail.UNPAUSED)

#: (machine, event, data) -> (state and reason after, what is published, follow-up);
#: None for the state: unchanged.
TRANSITIONS: list[
    tuple[str, str, dict[str, Any] | None, tuple[DomainState, StateReason] | None, Seen]
] = [
    # STOP: only a running guest pauses; without a stated intent the reason is UNKNOWN.
    ("starting", "STOP", None, None, NOTHING),
    (
        "running",
        "STOP",
        None,
        (S.PAUSED, PausedReason.UNKNOWN),
        Seen([life(L.SUSPENDED, SuspendedDetail.PAUSED)], None),
    ),
    ("paused", "STOP", None, None, NOTHING),
    ("shutdown", "STOP", None, None, NOTHING),
    ("crashed", "STOP", None, None, NOTHING),
    ("pmsuspended", "STOP", None, None, NOTHING),
    # RESUME without an intent: someone ran ``cont``.
    ("starting", "RESUME", None, (S.RUNNING, RunningReason.UNPAUSED), Seen([RESUMED], None)),
    ("running", "RESUME", None, None, NOTHING),
    ("paused", "RESUME", None, (S.RUNNING, RunningReason.UNPAUSED), Seen([RESUMED], None)),
    ("shutdown", "RESUME", None, (S.RUNNING, RunningReason.BOOTED), Seen([RESUMED], None)),
    ("crashed", "RESUME", None, (S.RUNNING, RunningReason.BOOTED), Seen([RESUMED], None)),
    ("pmsuspended", "RESUME", None, (S.RUNNING, RunningReason.UNPAUSED), Seen([RESUMED], None)),
    # SHUTDOWN: the detail says who asked; a repeated one is ignored (libvirt too).
    *(
        (
            machine,
            "SHUTDOWN",
            data,
            SHUTDOWN_STATE,
            Seen([life(L.SHUTDOWN, detail)], G.SHUTDOWN),
        )
        for machine in ("starting", "running", "paused", "crashed", "pmsuspended")
        for data, detail in (
            ({"guest": True, "reason": "guest-shutdown"}, ShutdownDetail.GUEST),
            ({"guest": False, "reason": "host-qmp-system-powerdown"}, ShutdownDetail.HOST),
            ({}, ShutdownDetail.FINISHED),
        )
    ),
    ("shutdown", "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, None, NOTHING),
    ("shutdown", "SHUTDOWN", {"guest": False, "reason": "host-signal"}, None, NOTHING),
    # SHUTDOWN with reason guest-reset (set-action reboot=shutdown, on_reboot=destroy): the guest
    # rebooted; a REBOOT event and the on_reboot follow-up, the state stays.
    (
        "running",
        "SHUTDOWN",
        {"guest": True, "reason": "guest-reset"},
        None,
        Seen([(K.REBOOT, None, None, {"guest": True, "reason": "guest-reset"})], G.REBOOT_DESTROY),
    ),
    # GUEST_PANICKED: CRASHED, once.
    *(
        (
            machine,
            "GUEST_PANICKED",
            {"action": "pause"},
            CRASHED_STATE,
            Seen([life(L.CRASHED, CrashedDetail.PANICKED)], G.PANICKED),
        )
        for machine in ("starting", "running", "paused", "shutdown", "pmsuspended")
    ),
    ("crashed", "GUEST_PANICKED", {"action": "pause"}, None, NOTHING),
    # SUSPEND (S3) of a running guest.
    (
        "running",
        "SUSPEND",
        None,
        PMSUSPENDED_STATE,
        Seen([life(L.PMSUSPENDED, PMSuspendedDetail.MEMORY)], None),
    ),
    # WAKEUP: only a suspended guest wakes up (libvirt: "otherwise it can cause confusion").
    (
        "pmsuspended",
        "WAKEUP",
        None,
        (S.RUNNING, RunningReason.WAKEUP),
        Seen([life(L.STARTED, StartedDetail.WAKEUP)], None),
    ),
    *(
        (machine, "WAKEUP", None, None, NOTHING)
        for machine in ("starting", "running", "paused", "shutdown", "crashed")
    ),
]


@pytest.mark.parametrize(("machine", "name", "data", "after", "expected"), TRANSITIONS)
def test_state_changing_events(
    machine: str,
    name: str,
    data: dict[str, Any] | None,
    after: tuple[DomainState, StateReason] | None,
    expected: Seen,
) -> None:
    m = MACHINES[machine]()
    before = state_of(m)
    assert send(m, name, data) == expected
    assert state_of(m) == (before if after is None else after)
    assert not m.stopping


# -- events that change no state -----------------------------------------------------------------


def test_reset_is_a_reboot_event_with_qemus_data() -> None:
    data = {"guest": False, "reason": "host-qmp-system-reset"}
    for machine in MACHINES.values():
        m = machine()
        before = state_of(m)
        starting = before == (S.PAUSED, PausedReason.STARTING_UP)
        # A reset while the domain starts up is part of the start, as in libvirt.
        expected = Seen([], None) if starting else Seen([(K.REBOOT, None, None, data)], None)
        assert send(m, "RESET", data) == expected
        assert state_of(m) == before


def test_crashloaded_is_reported_and_the_guest_keeps_running() -> None:
    m = running()
    assert send(m, "GUEST_CRASHLOADED", {"action": "run"}) == Seen(
        [life(L.CRASHED, CrashedDetail.CRASHEDLOADED)], None
    )
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


def test_suspend_to_disk_is_reported_and_the_power_off_that_follows_ends_it() -> None:
    m = running()
    assert send(m, "SUSPEND_DISK") == Seen([life(L.PMSUSPENDED, PMSuspendedDetail.DISK)], None)
    # The guest saved itself and powers off: QEMU reports SHUTDOWN next.
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    assert send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}).follow_up is G.SHUTDOWN
    assert state_of(m) == SHUTDOWN_STATE


@pytest.mark.parametrize("offset", [0, 3600, -7200])
def test_rtc_change_carries_the_offset(offset: int) -> None:
    m = running()
    data = {"offset": offset, "qom-path": "/machine/unattached/device[11]"}
    assert send(m, "RTC_CHANGE", data) == Seen(
        [(K.RTC_CHANGE, None, None, {"offset": offset})], None
    )
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


def test_rtc_change_without_offset_says_zero() -> None:
    assert send(running(), "RTC_CHANGE", {}).events == [(K.RTC_CHANGE, None, None, {"offset": 0})]


@pytest.mark.parametrize("action", WATCHDOG_ACTIONS)
def test_watchdog_event_and_the_pause_it_causes(action: str) -> None:
    m = running()
    assert send(m, "WATCHDOG", {"action": action}) == Seen(
        [(K.WATCHDOG, None, None, {"action": action})], None
    )
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    # QEMU pauses the guest only for action=pause; any other STOP is not the watchdog's doing.
    stop = send(m, "STOP")
    if action == "pause":
        assert stop.events == [life(L.SUSPENDED, SuspendedDetail.WATCHDOG)]
        assert state_of(m) == (S.PAUSED, PausedReason.WATCHDOG)
    else:
        assert stop.events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
        assert state_of(m) == (S.PAUSED, PausedReason.UNKNOWN)


VDA = DiskInfo(target="vda", alias="virtio-disk0", source="/var/lib/images/vm.qcow2")


def io_error(action: str, *, node: str = "libvirt-1-format", **extra: Any) -> dict[str, Any]:
    return {
        "device": "",
        "node-name": node,
        "operation": "write",
        "action": action,
        "nospace": False,
        "reason": "Input/output error",
        **extra,
    }


def disks(found: dict[str, DiskInfo], asked: list[str]) -> Callable[[str], DiskInfo | None]:
    def lookup(node: str) -> DiskInfo | None:
        asked.append(node)
        return found.get(node)

    return lookup


def booted(disk_for_node: Callable[[str], DiskInfo | None]) -> DomainStateMachine:
    m = DomainStateMachine(disk_for_node=disk_for_node)
    m.begin_boot()
    send(m, "RESUME")
    return m


@pytest.mark.parametrize(
    ("action", "stop_detail", "stop_reason"),
    [
        ("stop", SuspendedDetail.IOERROR, PausedReason.IOERROR),
        ("report", SuspendedDetail.PAUSED, PausedReason.UNKNOWN),
        ("ignore", SuspendedDetail.PAUSED, PausedReason.UNKNOWN),
    ],
)
def test_io_error_on_a_known_disk(
    action: str, stop_detail: SuspendedDetail, stop_reason: PausedReason
) -> None:
    asked: list[str] = []
    m = booted(disks({"libvirt-1-format": VDA}, asked))
    assert send(m, "BLOCK_IO_ERROR", io_error(action)) == Seen(
        [
            (
                K.IO_ERROR,
                None,
                None,
                {
                    "device": "vda",
                    "alias": "virtio-disk0",
                    "path": "/var/lib/images/vm.qcow2",
                    "node-name": "libvirt-1-format",
                    "operation": "write",
                    "action": action,
                    "reason": "Input/output error",
                    "nospace": False,
                },
            )
        ],
        None,
    )
    assert asked == ["libvirt-1-format"]
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)  # the STOP, if any, pauses it
    assert send(m, "STOP").events == [life(L.SUSPENDED, stop_detail)]
    assert state_of(m) == (S.PAUSED, stop_reason)


def test_io_error_on_a_disk_not_found_keeps_qemus_names() -> None:
    asked: list[str] = []
    m = booted(disks({}, asked))
    data = io_error("report", node="#block123", device="drive-ide0-0-0", nospace=True)
    assert send(m, "BLOCK_IO_ERROR", data).events == [
        (
            K.IO_ERROR,
            None,
            None,
            {
                "device": "drive-ide0-0-0",
                "alias": "",
                "path": None,
                "node-name": "#block123",
                "operation": "write",
                "action": "report",
                "reason": "Input/output error",
                "nospace": True,
            },
        )
    ]
    assert asked == ["#block123"]


def test_io_error_without_a_node_name_looks_up_nothing() -> None:
    asked: list[str] = []
    m = booted(disks({"": VDA}, asked))
    data = {"device": "ide0-hd0", "operation": "read", "action": "stop", "reason": "No space"}
    assert send(m, "BLOCK_IO_ERROR", data).events == [
        (
            K.IO_ERROR,
            None,
            None,
            {
                "device": "ide0-hd0",
                "alias": "",
                "path": None,
                "node-name": "",
                "operation": "read",
                "action": "stop",
                "reason": "No space",
                "nospace": False,
            },
        )
    ]
    assert asked == []


def test_io_error_without_a_disk_lookup() -> None:
    m = running()  # no disk_for_node: every disk is unknown
    assert send(m, "BLOCK_IO_ERROR", io_error("stop")).events[0][3] == {
        "device": "",
        "alias": "",
        "path": None,
        "node-name": "libvirt-1-format",
        "operation": "write",
        "action": "stop",
        "reason": "Input/output error",
        "nospace": False,
    }


def test_device_deleted_with_an_id_is_reported() -> None:
    m = running()
    data = {"device": "hostdev0", "path": "/machine/peripheral/hostdev0"}
    assert send(m, "DEVICE_DELETED", data) == Seen(
        [(K.DEVICE_REMOVED, None, None, {"device": "hostdev0", "path": data["path"]})], None
    )


@pytest.mark.parametrize(
    "data",
    [{"path": "/machine/peripheral-anon/device[3]/virtio-backend"}, {"device": "", "path": "/x"}],
)
def test_device_deleted_without_an_id_is_qemu_internal(data: dict[str, Any]) -> None:
    assert send(running(), "DEVICE_DELETED", data) == NOTHING


def test_balloon_change_in_kib_and_remembered() -> None:
    m = running()
    assert send(m, "BALLOON_CHANGE", {"actual": 1073741824}) == Seen(
        [(K.BALLOON_CHANGE, None, None, {"actual_kib": 1048576})], None
    )
    assert m.balloon_kib == 1048576
    send(m, "BALLOON_CHANGE", {"actual": 536870912 + 1023})
    assert m.balloon_kib == 524288
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


def job(**extra: Any) -> dict[str, Any]:
    return {
        "type": "mirror",
        "device": "copy-vda",
        "len": 1048576,
        "offset": 524288,
        "speed": 0,
        **extra,
    }


@pytest.mark.parametrize(
    ("name", "data", "status", "error"),
    [
        ("BLOCK_JOB_COMPLETED", job(), "completed", None),
        ("BLOCK_JOB_COMPLETED", job(error="Input/output error"), "failed", "Input/output error"),
        ("BLOCK_JOB_CANCELLED", job(), "canceled", None),
        ("BLOCK_JOB_READY", job(), "ready", None),
    ],
)
def test_block_job_events(name: str, data: dict[str, Any], status: str, error: str | None) -> None:
    m = running()
    assert send(m, name, data) == Seen(
        [
            (
                K.BLOCK_JOB,
                None,
                None,
                {
                    "device": "copy-vda",
                    "type": "mirror",
                    "disk": "vda",
                    "job": "copy",
                    "status": status,
                    "offset": 524288,
                    "len": 1048576,
                    "error": error,
                },
            )
        ],
        None,
    )
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


@pytest.mark.parametrize(
    ("device", "qemu_type", "disk", "kind"),
    [
        ("active-commit-vda", "commit", "vda", "active-commit"),  # QEMU says only "commit"
        ("commit-sdb", "commit", "sdb", "commit"),
        ("pull-hdc", "stream", "hdc", "pull"),
        ("j", "stream", None, "pull"),  # a job asvirt did not name: QEMU's type says what
        ("pull-", "backup", None, "backup"),
    ],
)
def test_block_job_events_name_the_disk_and_libvirts_job_type(
    device: str, qemu_type: str, disk: str | None, kind: str
) -> None:
    [(_, _, _, data)] = send(
        running(), "BLOCK_JOB_READY", {**job(), "device": device, "type": qemu_type}
    ).events
    assert (data["device"], data["disk"], data["job"]) == (device, disk, kind)


def test_block_job_error_is_not_an_end() -> None:
    # BLOCK_JOB_ERROR does not end the job; libvirt ignores it too.
    data = {"device": "copy-vda", "operation": "write", "action": "report"}
    assert send(running(), "BLOCK_JOB_ERROR", data) == NOTHING


@pytest.mark.parametrize("machine", MACHINES)
@pytest.mark.parametrize(
    ("name", "data"),
    [("POWERDOWN", None), ("SOMETHING_NEW", {"x": 1}), ("", None)],
)
def test_unknown_events_are_only_passed_on(
    machine: str, name: str, data: dict[str, Any] | None
) -> None:
    m = MACHINES[machine]()
    before = state_of(m)
    assert send(m, name, data) == NOTHING
    assert state_of(m) == before


# -- intents: pauses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "detail"),
    [
        (PausedReason.USER, SuspendedDetail.PAUSED),
        (PausedReason.IOERROR, SuspendedDetail.IOERROR),
        (PausedReason.WATCHDOG, SuspendedDetail.WATCHDOG),
    ],
)
def test_expect_pause_attributes_the_next_stop(
    reason: PausedReason, detail: SuspendedDetail
) -> None:
    m = running()
    m.expect_pause(reason)
    assert send(m, "STOP") == Seen([life(L.SUSPENDED, detail)], None)
    assert state_of(m) == (S.PAUSED, reason)
    # Only the next one: a later unexplained pause is UNKNOWN again.
    assert send(m, "RESUME").events == [RESUMED]
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert state_of(m) == (S.PAUSED, PausedReason.UNKNOWN)


def test_paused_and_resumed_by_the_user() -> None:
    m = running()
    m.expect_pause(PausedReason.USER)
    send(m, "STOP")
    assert send(m, "RESUME") == Seen([RESUMED], None)
    assert state_of(m) == (S.RUNNING, RunningReason.UNPAUSED)


# -- intents: boot -------------------------------------------------------------------------------


def test_begin_boot_makes_the_next_resume_a_boot() -> None:
    m = starting()
    m.begin_boot()
    assert send(m, "RESUME") == Seen([life(L.STARTED, StartedDetail.BOOTED)], None)
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    # Once: pausing and continuing later is no new boot.
    send(m, "STOP")
    assert send(m, "RESUME").events == [RESUMED]


def test_a_reset_before_the_boot_changes_nothing() -> None:
    m = starting()
    m.begin_boot()
    send(m, "RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    assert send(m, "RESUME").events == [life(L.STARTED, StartedDetail.BOOTED)]


def test_started_paused() -> None:
    m = starting()
    assert seen(m.started_paused()) == Seen(
        [life(L.STARTED, StartedDetail.BOOTED), life(L.SUSPENDED, SuspendedDetail.PAUSED)], None
    )
    assert state_of(m) == (S.PAUSED, PausedReason.USER)
    # resume() later: the guest was started already, so RESUMED.
    assert send(m, "RESUME").events == [RESUMED]
    assert state_of(m) == (S.RUNNING, RunningReason.UNPAUSED)


# -- intents: reboot -----------------------------------------------------------------------------


@pytest.mark.parametrize("on_poweroff", POWEROFF_ACTIONS)
def test_reboot_keeps_the_domain_running_and_is_one_reboot_event(on_poweroff: str) -> None:
    m = paused()
    send(m, "RESUME")  # RUNNING/UNPAUSED: the reboot makes it BOOTED
    m.begin_reboot()
    published: list[Published] = []

    shutdown = send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    assert shutdown.follow_up is G.SHUTDOWN
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy(on_poweroff=on_poweroff)) is A.FINISH_REBOOT
    assert not m.stopping
    published += shutdown.events
    assert state_of(m) == (S.RUNNING, RunningReason.UNPAUSED)
    # QEMU pauses after SHUTDOWN (-no-shutdown); the supervisor resets and continues it.
    for name, data in [
        ("STOP", None),
        ("RESET", {"guest": False, "reason": "host-qmp-system-reset"}),
        ("RESUME", None),
    ]:
        step = send(m, name, data)
        assert step.follow_up is None
        published += step.events
        assert m.state is S.RUNNING
    assert published == [
        (K.REBOOT, None, None, {"guest": False, "reason": "host-qmp-system-reset"})
    ]
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)

    # The reboot is over: a pause is reported, and the next power-off is a real one.
    m.expect_pause(PausedReason.USER)
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    send(m, "RESUME")
    assert send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}) == Seen(
        [life(L.SHUTDOWN, ShutdownDetail.GUEST)], G.SHUTDOWN
    )
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.STOP_SHUTDOWN


def test_abort_reboot_makes_the_next_shutdown_real() -> None:
    m = running()
    m.begin_reboot()
    m.abort_reboot()
    assert send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}) == Seen(
        [life(L.SHUTDOWN, ShutdownDetail.GUEST)], G.SHUTDOWN
    )
    assert state_of(m) == SHUTDOWN_STATE
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.STOP_SHUTDOWN
    assert seen(m.exited()[1]).events == [life(L.STOPPED, StoppedDetail.SHUTDOWN)]


def test_a_panic_during_a_reboot_ends_the_reboot_even_without_a_reset() -> None:
    m = running()
    m.begin_reboot()
    send(m, "GUEST_PANICKED", {"action": "pause"})
    assert m.follow_up(G.PANICKED, LifecyclePolicy(on_crash="preserve")) is A.NOTHING
    # QEMU is then told to quit (SIGTERM): a shutdown, not the end of a reboot.
    assert send(m, "SHUTDOWN", {"guest": False, "reason": "host-signal"}) == Seen(
        [life(L.SHUTDOWN, ShutdownDetail.HOST)], G.SHUTDOWN
    )
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy(on_crash="preserve")) is A.STOP_SHUTDOWN


def test_a_panic_during_a_reboot_ends_the_reboot() -> None:
    m = running()
    m.begin_reboot()
    assert send(m, "GUEST_PANICKED", {"action": "pause"}).follow_up is G.PANICKED
    assert m.follow_up(G.PANICKED, LifecyclePolicy(on_crash="restart")) is A.RESTART
    send(m, "RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    assert send(m, "RESUME").events == [life(L.STARTED, StartedDetail.BOOTED)]
    # No reboot pending any more: the guest's next power-off is a power-off.
    assert send(m, "SHUTDOWN", {"guest": True}).events == [life(L.SHUTDOWN, ShutdownDetail.GUEST)]


# -- intents: destroy and stop -------------------------------------------------------------------


@pytest.mark.parametrize("machine", MACHINES)
def test_begin_destroy_makes_qemus_last_words_change_nothing(machine: str) -> None:
    m = MACHINES[machine]()
    before = state_of(m)
    m.begin_destroy()
    assert m.destroying and m.stopping
    for name, data in ALL_EVENTS:
        assert send(m, name, data) == NOTHING
        assert state_of(m) == before
    for status in QEMU_STATUSES:
        assert seen(m.reconcile(status, status == "running", attaching=True)) == NOTHING
    assert state_of(m) == before
    assert m.balloon_kib is None  # even the balloon event was only passed on
    reason, r = m.exited()
    assert reason is ShutoffReason.DESTROYED
    assert seen(r) == Seen([life(L.STOPPED, StoppedDetail.DESTROYED)], None)
    assert state_of(m) == (S.SHUTOFF, ShutoffReason.DESTROYED)


@pytest.mark.parametrize(
    ("cause", "reason", "detail"),
    [
        (StopCause.SHUTDOWN, ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN),
        (StopCause.CRASHED, ShutoffReason.CRASHED, StoppedDetail.CRASHED),
        (StopCause.DESTROYED, ShutoffReason.DESTROYED, StoppedDetail.DESTROYED),
    ],
)
def test_begin_stop_decides_the_outcome(
    cause: StopCause, reason: ShutoffReason, detail: StoppedDetail
) -> None:
    m = running()
    m.begin_stop(cause)
    assert m.stopping
    assert m.destroying is (cause is StopCause.DESTROYED)
    assert send(m, "SHUTDOWN", {"guest": True}) == NOTHING
    assert send(m, "STOP") == NOTHING
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    got, r = m.exited()
    assert (got, seen(r).events) == (reason, [life(L.STOPPED, detail)])


@pytest.mark.parametrize("cause", [StopCause.SHUTDOWN, StopCause.CRASHED])
def test_a_destroy_is_not_overridden_by_a_later_stop(cause: StopCause) -> None:
    m = running()
    m.begin_destroy()
    m.begin_stop(cause)
    assert m.destroying
    assert m.follow_up(G.PANICKED, LifecyclePolicy()) is A.STOP_CRASHED
    assert m.destroying
    assert m.exited()[0] is ShutoffReason.DESTROYED


def test_a_later_stop_cause_replaces_an_earlier_one() -> None:
    m = running()
    m.begin_stop(StopCause.SHUTDOWN)
    m.begin_stop(StopCause.CRASHED)
    assert m.exited()[0] is ShutoffReason.CRASHED


# -- exited() ------------------------------------------------------------------------------------


def _stopped_by(cause: StopCause) -> Callable[[], DomainStateMachine]:
    def make() -> DomainStateMachine:
        m = running()
        m.begin_stop(cause)
        return m

    return make


def _destroyed_after_shutdown() -> DomainStateMachine:
    m = shut_down()
    m.begin_destroy()
    return m


def _guest_reset_with_on_reboot_destroy() -> DomainStateMachine:
    m = running()
    send(m, "SHUTDOWN", {"guest": True, "reason": "guest-reset"})
    send(m, "STOP")
    return m


def _crashed_then_restart_failed() -> DomainStateMachine:
    # on_crash=restart, but the reset failed: the runner stops QEMU with cause SHUTDOWN.
    m = crashed()
    m.follow_up(G.PANICKED, LifecyclePolicy(on_crash="restart"))
    m.begin_stop(StopCause.SHUTDOWN)
    return m


EXITS: list[tuple[str, Callable[[], DomainStateMachine], ShutoffReason, StoppedDetail]] = [
    (
        "destroyed",
        _stopped_by(StopCause.DESTROYED),
        ShutoffReason.DESTROYED,
        StoppedDetail.DESTROYED,
    ),
    (
        "destroyed after shutdown",
        _destroyed_after_shutdown,
        ShutoffReason.DESTROYED,
        StoppedDetail.DESTROYED,
    ),
    (
        "stopped after shutdown",
        _stopped_by(StopCause.SHUTDOWN),
        ShutoffReason.SHUTDOWN,
        StoppedDetail.SHUTDOWN,
    ),
    (
        "stopped after crash",
        _stopped_by(StopCause.CRASHED),
        ShutoffReason.CRASHED,
        StoppedDetail.CRASHED,
    ),
    (
        "crashed state",
        crashed,
        ShutoffReason.CRASHED,
        StoppedDetail.CRASHED,
    ),
    (
        "crashed, restart failed",
        _crashed_then_restart_failed,
        ShutoffReason.CRASHED,
        StoppedDetail.CRASHED,
    ),
    (
        "shutdown seen",
        shut_down,
        ShutoffReason.SHUTDOWN,
        StoppedDetail.SHUTDOWN,
    ),
    (
        "guest reset, on_reboot=destroy",
        _guest_reset_with_on_reboot_destroy,
        ShutoffReason.SHUTDOWN,
        StoppedDetail.SHUTDOWN,
    ),
    (
        "reboot's shutdown seen",
        rebooting_after_shutdown,
        ShutoffReason.SHUTDOWN,
        StoppedDetail.SHUTDOWN,
    ),
    (
        "died while running",
        running,
        ShutoffReason.CRASHED,
        StoppedDetail.FAILED,
    ),
    (
        "died while paused",
        paused,
        ShutoffReason.CRASHED,
        StoppedDetail.FAILED,
    ),
    (
        "died while starting",
        starting,
        ShutoffReason.CRASHED,
        StoppedDetail.FAILED,
    ),
    (
        "died while pmsuspended",
        pmsuspended,
        ShutoffReason.CRASHED,
        StoppedDetail.FAILED,
    ),
]


@pytest.mark.parametrize(
    ("make", "reason", "detail"), [e[1:] for e in EXITS], ids=[e[0] for e in EXITS]
)
def test_exited(
    make: Callable[[], DomainStateMachine], reason: ShutoffReason, detail: StoppedDetail
) -> None:
    m = make()
    got, r = m.exited()
    assert got is reason
    assert seen(r) == Seen([life(L.STOPPED, detail)], None)
    assert state_of(m) == (S.SHUTOFF, reason)


# -- follow_up(): libvirt's on_poweroff / on_reboot / on_crash ------------------------------------

#: What libvirt does after a guest power-off, per on_poweroff (qemuProcessShutdownOrReboot:
#: only "restart" restarts; anything else kills QEMU).
AFTER_POWEROFF = {
    "destroy": A.STOP_SHUTDOWN,
    "restart": A.RESTART,
    "preserve": A.NOTHING,
    "rename-restart": A.STOP_SHUTDOWN,
}
#: After a panic, per on_crash (processGuestPanicEvent). asvirt takes no core dump and renames
#: nothing: coredump-X does X, rename-restart restarts.
AFTER_CRASH = {
    "destroy": A.STOP_CRASHED,
    "restart": A.RESTART,
    "preserve": A.NOTHING,
    "rename-restart": A.RESTART,
    "coredump-destroy": A.STOP_CRASHED,
    "coredump-restart": A.RESTART,
}


def expected_action(event: GuestEvent, policy: LifecyclePolicy, *, rebooting: bool) -> A:
    if event is G.SHUTDOWN:
        return A.FINISH_REBOOT if rebooting else AFTER_POWEROFF[policy.on_poweroff]
    if event is G.REBOOT_DESTROY:
        return A.STOP_SHUTDOWN  # only on_reboot=destroy makes QEMU report a reset as SHUTDOWN
    return AFTER_CRASH[policy.on_crash]


POLICIES = [
    LifecyclePolicy(on_poweroff=p, on_reboot=r, on_crash=c)
    for p, r, c in itertools.product(POWEROFF_ACTIONS, POWEROFF_ACTIONS, CRASH_ACTIONS)
]


def test_policy_table_covers_every_combination() -> None:
    assert len(POLICIES) == 4 * 4 * 6
    assert len(set(POLICIES)) == len(POLICIES)


@pytest.mark.parametrize("rebooting", [False, True])
@pytest.mark.parametrize("event", list(GuestEvent))
def test_policy_decide(event: GuestEvent, rebooting: bool) -> None:
    # on_reboot matters to no follow-up: on_reboot=destroy is QEMU's reboot action.
    wrong = {
        (p.on_poweroff, p.on_reboot, p.on_crash): got
        for p in POLICIES
        if (got := p.decide(event, rebooting=rebooting))
        is not expected_action(event, p, rebooting=rebooting)
    }
    assert wrong == {}


def test_default_policy_is_libvirts() -> None:
    policy = LifecyclePolicy()
    assert (policy.on_poweroff, policy.on_reboot, policy.on_crash) == (
        "destroy",
        "restart",
        "destroy",
    )
    assert policy.decide(G.SHUTDOWN, rebooting=False) is A.STOP_SHUTDOWN
    assert policy.decide(G.PANICKED, rebooting=False) is A.STOP_CRASHED


def _after(event: GuestEvent) -> DomainStateMachine:
    """A machine that has just reported ``event`` as its follow-up."""
    m = running()
    data = {
        G.SHUTDOWN: ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
        G.REBOOT_DESTROY: ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}),
        G.PANICKED: ("GUEST_PANICKED", {"action": "pause"}),
    }[event]
    assert send(m, *data).follow_up is event
    send(m, "STOP")
    return m


#: The policy field each guest event is followed up by.
FIELD = {G.SHUTDOWN: "on_poweroff", G.REBOOT_DESTROY: "on_reboot", G.PANICKED: "on_crash"}


@pytest.mark.parametrize(
    ("event", "value"),
    [
        *((G.SHUTDOWN, v) for v in POWEROFF_ACTIONS),
        *((G.REBOOT_DESTROY, v) for v in POWEROFF_ACTIONS),
        *((G.PANICKED, v) for v in CRASH_ACTIONS),
    ],
)
def test_follow_up_records_what_it_decided(event: GuestEvent, value: str) -> None:
    # The field that decides, with every value of the two others.
    for policy in POLICIES:
        if getattr(policy, FIELD[event]) == value:
            _check_follow_up(event, policy)


def _check_follow_up(event: GuestEvent, policy: LifecyclePolicy) -> None:
    m = _after(event)
    before = state_of(m)
    action = m.follow_up(event, policy)
    assert action is expected_action(event, policy, rebooting=False), policy
    assert state_of(m) == before  # deciding changes no state; QEMU's events will
    if action is A.RESTART:
        # The supervisor resets and continues QEMU: the guest boots again.
        assert not m.stopping
        assert (
            send(m, "RESET", {"guest": False, "reason": "host-qmp-system-reset"}).follow_up is None
        )
        assert send(m, "RESUME") == Seen([life(L.STARTED, StartedDetail.BOOTED)], None)
        assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
        # A fresh guest: its pauses are reported, and QEMU dying now is a failure.
        assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
        reason, r = m.exited()
        assert (reason, seen(r).events) == (
            ShutoffReason.CRASHED,
            [life(L.STOPPED, StoppedDetail.FAILED)],
        )
    elif action is A.NOTHING:
        assert not m.stopping
        assert send(m, "STOP") == NOTHING
    else:
        assert m.stopping and not m.destroying
        assert send(m, "RESUME") == NOTHING  # QEMU's last words change nothing
        reason, r = m.exited()
        expected = {
            A.STOP_SHUTDOWN: (ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN),
            A.STOP_CRASHED: (ShutoffReason.CRASHED, StoppedDetail.CRASHED),
        }[action]
        assert (reason, seen(r).events) == (expected[0], [life(L.STOPPED, expected[1])])


@pytest.mark.parametrize("on_poweroff", POWEROFF_ACTIONS)
def test_follow_up_during_a_reboot_finishes_it(on_poweroff: str) -> None:
    m = rebooting_after_shutdown()
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy(on_poweroff=on_poweroff)) is A.FINISH_REBOOT
    assert not m.stopping
    assert send(m, "RESUME") == NOTHING
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


# -- reconcile() ---------------------------------------------------------------------------------

PAUSED_STATUSES = {
    # libvirt's qemuMonitorVMStatusToPausedReason.
    "paused": (PausedReason.USER, SuspendedDetail.PAUSED),
    "prelaunch": (PausedReason.USER, SuspendedDetail.PAUSED),
    "inmigrate": (PausedReason.MIGRATION, SuspendedDetail.MIGRATED),
    "postmigrate": (PausedReason.MIGRATION, SuspendedDetail.MIGRATED),
    "finish-migrate": (PausedReason.MIGRATION, SuspendedDetail.MIGRATED),
    "io-error": (PausedReason.IOERROR, SuspendedDetail.IOERROR),
    "watchdog": (PausedReason.WATCHDOG, SuspendedDetail.WATCHDOG),
    "save-vm": (PausedReason.SAVE, SuspendedDetail.PAUSED),
    "restore-vm": (PausedReason.UNKNOWN, SuspendedDetail.PAUSED),
    "internal-error": (PausedReason.UNKNOWN, SuspendedDetail.PAUSED),
    "debug": (PausedReason.UNKNOWN, SuspendedDetail.PAUSED),
    "colo": (PausedReason.UNKNOWN, SuspendedDetail.PAUSED),
}
assert set(PAUSED_STATUSES) | {"running", "shutdown", "guest-panicked", "suspended"} == set(
    QEMU_STATUSES
)


def expected_reconcile(
    machine: str, status: str, *, attaching: bool
) -> tuple[tuple[DomainState, StateReason], Seen]:
    before = STATE_OF[machine]
    if status == "running":
        if machine == "running":
            return before, NOTHING
        # As the RESUME that was missed: a guest shut down or crashed before has booted again.
        reason = (
            RunningReason.BOOTED if machine in ("shutdown", "crashed") else RunningReason.UNPAUSED
        )
        return (S.RUNNING, reason), Seen([RESUMED], None)
    if status == "shutdown":
        if machine == "shutdown":
            return before, Seen([], G.SHUTDOWN if attaching else None)
        return SHUTDOWN_STATE, Seen([life(L.SHUTDOWN, ShutdownDetail.FINISHED)], G.SHUTDOWN)
    if status == "guest-panicked":
        if machine == "crashed":
            return before, Seen([], G.PANICKED if attaching else None)
        return CRASHED_STATE, Seen([life(L.CRASHED, CrashedDetail.PANICKED)], G.PANICKED)
    if status == "suspended":
        return PMSUSPENDED_STATE, Seen([life(L.PMSUSPENDED, PMSuspendedDetail.MEMORY)], None)
    if machine == "running":
        reason, detail = PAUSED_STATUSES[status]
        return (S.PAUSED, reason), Seen([life(L.SUSPENDED, detail)], None)
    return before, NOTHING  # QEMU is paused, and so is the domain (or shut down, or crashed)


@pytest.mark.parametrize("attaching", [False, True])
@pytest.mark.parametrize("status", QEMU_STATUSES)
@pytest.mark.parametrize("machine", ["running", "paused", "shutdown", "crashed"])
def test_reconcile(machine: str, status: str, attaching: bool) -> None:
    m = MACHINES[machine]()
    after, expected = expected_reconcile(machine, status, attaching=attaching)
    assert seen(m.reconcile(status, status == "running", attaching=attaching)) == expected
    assert state_of(m) == after
    # Reconciling again with the same status changes nothing and asks no new follow-up,
    # unless a supervisor that just attached asks again.
    again = seen(m.reconcile(status, status == "running", attaching=attaching))
    assert again.events == []
    assert state_of(m) == after
    if not attaching:
        assert again.follow_up is None


@pytest.mark.parametrize("cause", list(StopCause))
@pytest.mark.parametrize("machine", MACHINES)
def test_a_stopping_machine_ignores_reconcile(machine: str, cause: StopCause) -> None:
    m = MACHINES[machine]()
    before = state_of(m)
    m.begin_stop(cause)
    for status, attaching in itertools.product(QEMU_STATUSES, (False, True)):
        assert seen(m.reconcile(status, status == "running", attaching=attaching)) == NOTHING
        assert state_of(m) == before


def test_reconcile_finds_a_shutdown_whose_event_was_lost_once() -> None:
    m = running()
    first = seen(m.reconcile("shutdown", False))
    assert first == Seen([life(L.SHUTDOWN, ShutdownDetail.FINISHED)], G.SHUTDOWN)
    assert seen(m.reconcile("shutdown", False)) == NOTHING
    assert m.exited()[0] is ShutoffReason.SHUTDOWN


def test_reconcile_of_a_reboot_whose_shutdown_was_lost() -> None:
    m = running()
    m.begin_reboot()
    # The SHUTDOWN event was lost: no SHUTDOWN is published, but the reboot is finished.
    r = seen(m.reconcile("shutdown", False))
    assert r == Seen([], G.SHUTDOWN)
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.FINISH_REBOOT
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    assert seen(m.reconcile("shutdown", False)) == NOTHING  # asked once
    assert seen(m.reconcile("shutdown", False, attaching=True)) == Seen([], G.SHUTDOWN)


def test_reconcile_during_a_reboot_after_its_shutdown() -> None:
    m = rebooting_after_shutdown()
    assert seen(m.reconcile("shutdown", False)) == NOTHING
    assert seen(m.reconcile("shutdown", False, attaching=True)) == Seen([], G.SHUTDOWN)
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)


def test_reconcile_during_a_reboot_between_reset_and_cont() -> None:
    # The supervisor has reset QEMU (prelaunch) and not yet continued it: the domain, which
    # stays RUNNING through a reboot, is not reported paused.
    m = rebooting_after_shutdown()
    send(m, "RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    assert seen(m.reconcile("prelaunch", False)) == NOTHING
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    assert send(m, "RESUME") == NOTHING
    m.expect_pause(PausedReason.USER)
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]


def test_reconcile_finishes_a_reboot_whose_resume_was_lost() -> None:
    m = rebooting_after_shutdown()
    assert seen(m.reconcile("running", True)) == NOTHING
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    # The reboot is over: pauses are reported, and a power-off is a power-off.
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    send(m, "RESUME")
    assert send(m, "SHUTDOWN", {"guest": True}).events == [life(L.SHUTDOWN, ShutdownDetail.GUEST)]


def test_reconcile_finishes_a_boot_whose_resume_was_lost() -> None:
    # The runner's start: begin_boot(), cont, and query-status if RESUME did not come.
    m = starting()
    m.begin_boot()
    assert seen(m.reconcile("running", True)) == Seen([life(L.STARTED, StartedDetail.BOOTED)], None)
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    # Booted once: the next pause and resume are just that.
    m.expect_pause(PausedReason.USER)
    send(m, "STOP")
    assert send(m, "RESUME").events == [RESUMED]


def test_reconcile_finishes_a_restart_whose_resume_was_lost() -> None:
    m = shut_down()
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy(on_poweroff="restart")) is A.RESTART
    assert seen(m.reconcile("running", True)) == Seen([life(L.STARTED, StartedDetail.BOOTED)], None)
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert m.exited()[0] is ShutoffReason.CRASHED  # no shutdown pending: QEMU's death is a failure


def test_reconcile_finds_a_panic_during_a_reboot() -> None:
    m = running()
    m.begin_reboot()
    assert seen(m.reconcile("guest-panicked", False)) == Seen(
        [life(L.CRASHED, CrashedDetail.PANICKED)], G.PANICKED
    )
    assert m.follow_up(G.PANICKED, LifecyclePolicy(on_crash="restart")) is A.RESTART
    send(m, "RESUME")
    # The reboot ended with the panic: the guest's next power-off is a power-off.
    assert send(m, "SHUTDOWN", {"guest": True}).events == [life(L.SHUTDOWN, ShutdownDetail.GUEST)]


# -- pending intents and pauses ------------------------------------------------------------------


def test_a_pause_while_a_reboot_is_pending_is_reported() -> None:
    # reboot() pressed the power button; before the guest reacts, the user suspends it.
    m = running()
    m.begin_reboot()
    m.expect_pause(PausedReason.USER)
    assert send(m, "STOP") == Seen([life(L.SUSPENDED, SuspendedDetail.PAUSED)], None)
    assert state_of(m) == (S.PAUSED, PausedReason.USER)
    assert send(m, "RESUME") == Seen([RESUMED], None)
    assert state_of(m) == (S.RUNNING, RunningReason.UNPAUSED)
    # The guest then handles the button: the reboot asked for goes on.
    assert send(m, "SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}) == Seen([], G.SHUTDOWN)
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.FINISH_REBOOT


def test_a_guest_that_resets_itself_ends_a_pending_reboot() -> None:
    # reboot() pressed the power button, but the guest rebooted on its own (libvirt's
    # qemuProcessHandleReset ends a fake reboot): its later power-off is a power-off.
    m = running()
    m.begin_reboot()
    assert send(m, "RESET", {"guest": True, "reason": "guest-reset"}).follow_up is None
    assert send(m, "SHUTDOWN", {"guest": True}) == Seen(
        [life(L.SHUTDOWN, ShutdownDetail.GUEST)], G.SHUTDOWN
    )
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.STOP_SHUTDOWN


def test_a_reboot_that_ends_on_a_paused_domain_announces_the_resume() -> None:
    # Whatever happens between the power button and the reset, a domain that was not running
    # when the reboot ends is announced running again.
    m = running()
    m.begin_reboot()
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert send(m, "SHUTDOWN", {"guest": False, "reason": "host-ui"}) == Seen([], G.SHUTDOWN)
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.FINISH_REBOOT
    assert send(m, "STOP") == NOTHING
    send(m, "RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    assert send(m, "RESUME") == Seen([RESUMED], None)
    assert m.state is S.RUNNING


def test_a_stop_that_is_not_reported_still_uses_up_the_expected_reason() -> None:
    # suspend() raced with the guest's power-off: QEMU's STOP is the shutdown's pause. After
    # on_poweroff=restart, a pause nobody asked for is not the user's.
    m = running()
    m.expect_pause(PausedReason.USER)
    send(m, "SHUTDOWN", {"guest": True})
    assert send(m, "STOP") == NOTHING
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy(on_poweroff="restart")) is A.RESTART
    send(m, "RESUME")
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert state_of(m) == (S.PAUSED, PausedReason.UNKNOWN)


@pytest.mark.parametrize(
    ("name", "data"),
    [("BLOCK_IO_ERROR", io_error("stop")), ("WATCHDOG", {"action": "pause"})],
)
def test_an_error_reported_while_already_paused_does_not_explain_a_later_pause(
    name: str, data: dict[str, Any]
) -> None:
    # QEMU drains in-flight requests after its STOP: more errors may follow the pause.
    m = running()
    send(m, name, data)
    send(m, "STOP")
    send(m, name, data)
    send(m, "RESUME")
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert state_of(m) == (S.PAUSED, PausedReason.UNKNOWN)


# -- snapshot() and restore() --------------------------------------------------------------------


def all_snapshots() -> Iterator[MachineSnapshot]:
    for state in DomainState:
        for reason in state.reasons:
            for seen_, rebooting, cause in itertools.product(
                (False, True), (False, True), (None, *(c.value for c in StopCause))
            ):
                yield MachineSnapshot(int(state), int(reason), seen_, rebooting, cause)


def test_snapshot_round_trips_every_field() -> None:
    count = 0
    for snap in all_snapshots():
        m = DomainStateMachine.restore(snap)
        assert m.snapshot() == snap
        state = DomainState(snap.state)
        assert state_of(m) == (state, state.reasons(snap.reason))
        assert m.stopping is (snap.stop_cause is not None)
        assert m.destroying is (snap.stop_cause == "destroyed")
        count += 1
    assert count > 300


def test_restore_of_an_unknown_reason_is_unknown() -> None:
    m = DomainStateMachine.restore(MachineSnapshot(int(S.RUNNING), 99))
    assert state_of(m) == (S.RUNNING, RunningReason.UNKNOWN)


def test_restore_keeps_the_disk_lookup() -> None:
    snap = running().snapshot()
    m = DomainStateMachine.restore(snap, disk_for_node=lambda node: VDA)
    assert send(m, "BLOCK_IO_ERROR", io_error("report")).events[0][3]["alias"] == "virtio-disk0"


def _reboot_pending() -> DomainStateMachine:
    m = running()
    m.begin_reboot()
    return m


def _stopping(cause: StopCause) -> Callable[[], DomainStateMachine]:
    def make() -> DomainStateMachine:
        m = shut_down()
        m.begin_stop(cause)
        return m

    return make


#: Machines with no intent pending that a snapshot would lose (boot, restart, pause reason).
SNAPSHOTTED: dict[str, Callable[[], DomainStateMachine]] = {
    **MACHINES,
    "reboot pending": _reboot_pending,
    "rebooting after shutdown": rebooting_after_shutdown,
    "guest reset": _guest_reset_with_on_reboot_destroy,
    "stopping: shutdown": _stopping(StopCause.SHUTDOWN),
    "stopping: crashed": _stopping(StopCause.CRASHED),
    "stopping: destroyed": _stopping(StopCause.DESTROYED),
}

CONTINUATIONS: list[list[tuple[str, dict[str, Any] | None]]] = [
    [],
    [("STOP", None), ("RESUME", None), ("STOP", None)],
    [("SHUTDOWN", {"guest": True}), ("STOP", None), ("RESET", {"guest": False}), ("RESUME", None)],
    [("RESET", {"guest": False}), ("RESUME", None), ("STOP", None)],
    [("GUEST_PANICKED", {"action": "pause"}), ("STOP", None)],
    [("SUSPEND", None), ("WAKEUP", None)],
]


def _play(
    m: DomainStateMachine, steps: list[tuple[str, dict[str, Any] | None]]
) -> list[tuple[Seen, tuple[DomainState, StateReason]]]:
    out = [(send(m, name, data), state_of(m)) for name, data in steps]
    for status in ("shutdown", "paused", "running"):
        out.append((seen(m.reconcile(status, status == "running", attaching=True)), state_of(m)))
    reason, r = m.exited()
    out.append((seen(r), (S.SHUTOFF, reason)))
    return out


@pytest.mark.parametrize("machine", SNAPSHOTTED)
def test_a_restored_machine_behaves_as_the_original(machine: str) -> None:
    for steps in CONTINUATIONS:
        original = SNAPSHOTTED[machine]()
        restored = DomainStateMachine.restore(original.snapshot())
        assert restored.snapshot() == original.snapshot()
        assert _play(restored, steps) == _play(original, steps), steps


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        ("shutdown", ShutoffReason.SHUTDOWN),
        ("crashed", ShutoffReason.CRASHED),
        ("destroyed", ShutoffReason.DESTROYED),
    ],
)
def test_a_restored_stop_cause_decides_the_outcome(cause: str, reason: ShutoffReason) -> None:
    # The previous supervisor had begun to stop a running guest and died.
    m = DomainStateMachine.restore(
        MachineSnapshot(int(S.RUNNING), int(RunningReason.BOOTED), stop_cause=cause)
    )
    assert send(m, "SHUTDOWN", {"guest": True}) == NOTHING
    assert seen(m.reconcile("shutdown", False, attaching=True)) == NOTHING
    assert m.exited()[0] is reason


def test_a_restored_shutdown_is_followed_up_at_attach_and_ends_as_shutdown() -> None:
    snap = shut_down().snapshot()
    assert snap == MachineSnapshot(int(S.SHUTDOWN), int(ShutdownReason.USER), shutdown_seen=True)
    m = DomainStateMachine.restore(snap)
    assert seen(m.reconcile("shutdown", False, attaching=True)) == Seen([], G.SHUTDOWN)
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.STOP_SHUTDOWN
    assert m.exited()[0] is ShutoffReason.SHUTDOWN


def test_a_restored_shut_down_guest_found_running_again_booted() -> None:
    # The previous supervisor restarted it (on_poweroff=restart) and died before the RESUME.
    m = DomainStateMachine.restore(shut_down().snapshot())
    assert seen(m.reconcile("running", True, attaching=True)) == Seen([RESUMED], None)
    assert state_of(m) == (S.RUNNING, RunningReason.BOOTED)
    assert send(m, "STOP").events == [life(L.SUSPENDED, SuspendedDetail.PAUSED)]
    assert m.exited()[0] is ShutoffReason.CRASHED


def test_snapshot_of_a_reboot_in_progress() -> None:
    snap = rebooting_after_shutdown().snapshot()
    assert snap == MachineSnapshot(
        int(S.RUNNING), int(RunningReason.BOOTED), shutdown_seen=True, rebooting=True
    )
    m = DomainStateMachine.restore(snap)
    assert seen(m.reconcile("shutdown", False, attaching=True)) == Seen([], G.SHUTDOWN)
    assert m.follow_up(G.SHUTDOWN, LifecyclePolicy()) is A.FINISH_REBOOT
    assert send(m, "RESUME") == NOTHING
    assert m.snapshot() == MachineSnapshot(int(S.RUNNING), int(RunningReason.BOOTED))


# -- any sequence: the machine's invariants ------------------------------------------------------

#: The state a lifecycle event announces (None: it announces no state).
ANNOUNCES: dict[tuple[LifecycleEvent, EventDetail], DomainState | None] = {
    **{(L.STARTED, d): S.RUNNING for d in StartedDetail},
    **{(L.SUSPENDED, d): S.PAUSED for d in SuspendedDetail},
    **{(L.RESUMED, d): S.RUNNING for d in ResumedDetail},
    **{(L.STOPPED, d): S.SHUTOFF for d in StoppedDetail},
    **{(L.SHUTDOWN, d): S.SHUTDOWN for d in ShutdownDetail},
    (L.PMSUSPENDED, PMSuspendedDetail.MEMORY): S.PMSUSPENDED,
    # The guest hibernates and powers off; QEMU's SHUTDOWN follows at once.
    (L.PMSUSPENDED, PMSuspendedDetail.DISK): None,
    (L.CRASHED, CrashedDetail.PANICKED): S.CRASHED,
    # A crash kernel took over: the guest runs on.
    (L.CRASHED, CrashedDetail.CRASHEDLOADED): None,
}

#: The events that change states or pause reasons, drawn more often than the others.
STATE_EVENTS: list[tuple[str, dict[str, Any] | None]] = [
    ("STOP", None),
    ("RESUME", None),
    ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
    ("SHUTDOWN", {"guest": False, "reason": "host-signal"}),
    ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}),
    ("RESET", {"guest": True, "reason": "guest-reset"}),
    ("RESET", {"guest": False, "reason": "host-qmp-system-reset"}),
    ("GUEST_PANICKED", {"action": "pause"}),
    ("SUSPEND", None),
    ("WAKEUP", None),
    ("WATCHDOG", {"action": "pause"}),
    ("BLOCK_IO_ERROR", io_error("stop")),
]
qmp_events = st.one_of(
    st.sampled_from(STATE_EVENTS), st.sampled_from(STATE_EVENTS), st.sampled_from(ALL_EVENTS)
).map(lambda e: ("qmp", e))
policies = st.builds(
    LifecyclePolicy,
    on_poweroff=st.sampled_from(POWEROFF_ACTIONS),
    on_reboot=st.sampled_from(POWEROFF_ACTIONS),
    on_crash=st.sampled_from(CRASH_ACTIONS),
)
intents = st.one_of(
    st.just(("begin_boot",)),
    st.tuples(st.just("begin_boot"), st.sampled_from(list(StartKind))),
    st.tuples(
        st.just("expect_resume"),
        st.sampled_from(list(RunningReason)),
        st.sampled_from(list(ResumedDetail)),
    ),
    st.tuples(st.just("expect_pause"), st.sampled_from(list(PausedReason))),
    st.just(("begin_reboot",)),
    st.just(("abort_reboot",)),
    st.just(("begin_destroy",)),
    st.tuples(st.just("begin_stop"), st.sampled_from(list(StopCause))),
    st.tuples(st.just("follow_up"), st.sampled_from(list(GuestEvent)), policies),
    st.tuples(st.just("reconcile"), st.sampled_from(QEMU_STATUSES), st.booleans()),
    st.just(("started_paused",)),
    st.tuples(st.just("started_paused"), st.sampled_from(list(StartKind))),
    st.just(("reverted_paused",)),
)
steps = st.lists(st.one_of(qmp_events, qmp_events, intents), max_size=40)


def _check(r: Reaction, m: DomainStateMachine, announced: DomainState) -> DomainState:
    for spec in r.events:
        if spec.kind is K.LIFECYCLE:
            assert spec.type is not None and spec.detail is not None
            assert isinstance(spec.detail, spec.type.details), spec
            state = ANNOUNCES[(spec.type, spec.detail)]
            if state is not None:
                announced = state
        else:
            assert spec.type is None and spec.detail is None, spec
    assert isinstance(m.reason, m.state.reasons)
    # Whoever follows the lifecycle events knows the domain's state.
    assert announced is m.state
    return announced


@settings(max_examples=500, deadline=None)
@given(steps=steps, start=st.sampled_from(sorted(SNAPSHOTTED)))
def test_any_sequence_keeps_the_machine_consistent(
    steps: list[tuple[Any, ...]], start: str
) -> None:
    """Any QMP events and intents, in any order: nothing raises; the reason is one of the
    state's; every lifecycle detail is one of its type's; a listener that follows the
    lifecycle events knows the state; and QEMU's exit leaves the domain SHUTOFF."""
    m = SNAPSHOTTED[start]()
    announced = m.state
    for step in steps:
        kind, *args = step
        if kind == "qmp":
            name, data = args[0]
            event = qmp(name, data)
            r = m.on_qmp_event(event)
            assert r.events[0] == EventSpec(K.QMP, data=event, timestamp=TS)
        elif kind == "follow_up":
            event_, policy = args
            m.follow_up(event_, policy)
            r = Reaction()
        elif kind == "reconcile":
            status, attaching = args
            r = m.reconcile(status, status == "running", attaching=attaching)
        elif kind == "started_paused":
            r = m.started_paused(*args)
        elif kind == "reverted_paused":
            r = m.reverted_paused()
        else:
            getattr(m, kind)(*args)
            r = Reaction()
        announced = _check(r, m, announced)
        # A snapshot taken at any point restores to the same state.
        assert DomainStateMachine.restore(m.snapshot()).snapshot() == m.snapshot()
    reason, r = m.exited()
    _check(r, m, announced)
    assert state_of(m) == (S.SHUTOFF, reason)
    assert (reason, r.events[-1].detail) in {
        (ShutoffReason.DESTROYED, StoppedDetail.DESTROYED),
        (ShutoffReason.SHUTDOWN, StoppedDetail.SHUTDOWN),
        (ShutoffReason.CRASHED, StoppedDetail.CRASHED),
        (ShutoffReason.CRASHED, StoppedDetail.FAILED),
        (ShutoffReason.SAVED, StoppedDetail.SAVED),
        (ShutoffReason.FROM_SNAPSHOT, StoppedDetail.FROM_SNAPSHOT),
    }


# -- snapshots, save and restore: how a guest whose state was loaded comes to run ----------


@pytest.mark.parametrize(
    ("kind", "started", "reason"),
    [
        (StartKind.BOOT, StartedDetail.BOOTED, RunningReason.BOOTED),
        (StartKind.RESTORE, StartedDetail.RESTORED, RunningReason.RESTORED),
        (StartKind.SNAPSHOT, StartedDetail.FROM_SNAPSHOT, RunningReason.FROM_SNAPSHOT),
    ],
)
def test_a_loaded_guest_starts_with_its_origin(kind, started, reason):
    m = DomainStateMachine()
    m.begin_boot(kind)
    assert send(m, "RESUME") == Seen([life(L.STARTED, started)], None)
    assert state_of(m) == (S.RUNNING, reason)


def test_a_loaded_guest_left_paused_says_why():
    m = DomainStateMachine()
    assert seen(m.started_paused(StartKind.SNAPSHOT)) == Seen(
        [
            life(L.STARTED, StartedDetail.FROM_SNAPSHOT),
            life(L.SUSPENDED, SuspendedDetail.FROM_SNAPSHOT),
        ],
        None,
    )
    assert state_of(m) == (S.PAUSED, PausedReason.FROM_SNAPSHOT)
    m = DomainStateMachine()
    # Saved paused: SUSPENDED/RESTORED; asked to stay paused: SUSPENDED/PAUSED (libvirt's).
    assert seen(m.started_paused(StartKind.RESTORE)).events[1] == life(
        L.SUSPENDED, SuspendedDetail.RESTORED
    )
    m = DomainStateMachine()
    r = m.started_paused(StartKind.RESTORE, detail=SuspendedDetail.PAUSED)
    assert seen(r).events == [
        life(L.STARTED, StartedDetail.RESTORED),
        life(L.SUSPENDED, SuspendedDetail.PAUSED),
    ]


def test_a_snapshot_loaded_in_place():
    m = running()
    m.expect_pause(PausedReason.FROM_SNAPSHOT)
    assert send(m, "STOP") == Seen([life(L.SUSPENDED, SuspendedDetail.FROM_SNAPSHOT)], None)
    assert state_of(m) == (S.PAUSED, PausedReason.FROM_SNAPSHOT)
    m.expect_resume(RunningReason.FROM_SNAPSHOT, ResumedDetail.FROM_SNAPSHOT)
    assert send(m, "RESUME") == Seen([life(L.RESUMED, ResumedDetail.FROM_SNAPSHOT)], None)
    assert state_of(m) == (S.RUNNING, RunningReason.FROM_SNAPSHOT)
    # The hint is for one RESUME only.
    m.expect_pause(PausedReason.USER)
    send(m, "STOP")
    assert send(m, "RESUME") == Seen([life(L.RESUMED, ResumedDetail.UNPAUSED)], None)
    m = paused()
    assert seen(m.reverted_paused()) == Seen(
        [life(L.SUSPENDED, SuspendedDetail.FROM_SNAPSHOT)], None
    )
    assert state_of(m) == (S.PAUSED, PausedReason.FROM_SNAPSHOT)


@pytest.mark.parametrize(
    ("cause", "detail", "reason"),
    [
        (StopCause.SAVED, StoppedDetail.SAVED, ShutoffReason.SAVED),
        (StopCause.FROM_SNAPSHOT, StoppedDetail.FROM_SNAPSHOT, ShutoffReason.FROM_SNAPSHOT),
    ],
)
def test_a_guest_saved_or_halted_by_a_snapshot_stops_so(cause, detail, reason):
    m = paused()
    m.begin_stop(cause)
    # QEMU's SHUTDOWN on SIGTERM changes nothing.
    assert send(m, "SHUTDOWN", {"guest": False, "reason": "host-signal"}) == NOTHING
    stop_reason, r = m.exited()
    assert (stop_reason, seen(r)) == (reason, Seen([life(L.STOPPED, detail)], None))
    assert state_of(m) == (S.SHUTOFF, reason)
    # A status file keeps the cause: a supervisor that takes over finishes the same way.
    m = paused()
    m.begin_stop(cause)
    assert DomainStateMachine.restore(m.snapshot()).exited()[0] == reason


# -- restore from a status file that lags behind the journal -------------------------------------

RESUMED_TOLD = (LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED)
SUSPENDED_TOLD = (LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED)


@pytest.mark.parametrize(
    ("recorded", "told", "status", "after", "published"),
    [
        # Told RESUMED, the status still says paused, QEMU runs: nothing new to tell.
        (S.PAUSED, RESUMED_TOLD, "running", (S.RUNNING, RunningReason.UNPAUSED), []),
        # ... and QEMU was paused again while nobody watched: that pause is news.
        (
            S.PAUSED,
            RESUMED_TOLD,
            "paused",
            (S.PAUSED, PausedReason.USER),
            [life(LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED)],
        ),
        # Told STARTED (the status was written just before the boot's cont).
        (
            S.PAUSED,
            (LifecycleEvent.STARTED, StartedDetail.BOOTED),
            "running",
            (S.RUNNING, RunningReason.BOOTED),
            [],
        ),
        # Told SUSPENDED, the status still says running, QEMU is paused: nothing new.
        (S.RUNNING, SUSPENDED_TOLD, "paused", (S.PAUSED, PausedReason.USER), []),
        (
            S.RUNNING,
            (LifecycleEvent.SUSPENDED, SuspendedDetail.IOERROR),
            "io-error",
            (S.PAUSED, PausedReason.IOERROR),
            [],
        ),
        # ... and resumed meanwhile: that is news.
        (
            S.RUNNING,
            SUSPENDED_TOLD,
            "running",
            (S.RUNNING, RunningReason.UNPAUSED),
            [life(LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED)],
        ),
        # The status agrees with what was told: as without it.
        (S.RUNNING, RESUMED_TOLD, "running", (S.RUNNING, RunningReason.BOOTED), []),
    ],
)
def test_restore_starts_from_what_subscribers_were_last_told(
    recorded: DomainState,
    told: tuple[LifecycleEvent, EventDetail],
    status: str,
    after: tuple[DomainState, StateReason],
    published: list[Published],
) -> None:
    reason = RunningReason.BOOTED if recorded is S.RUNNING else PausedReason.USER
    m = DomainStateMachine.restore(MachineSnapshot(int(recorded), int(reason)), told=told)
    assert seen(m.reconcile(status, status == "running", attaching=True)) == Seen(published, None)
    assert state_of(m) == after


@pytest.mark.parametrize(
    "told",
    [
        (LifecycleEvent.STOPPED, StoppedDetail.DESTROYED),
        (LifecycleEvent.DEFINED, DefinedDetail.ADDED),
        (LifecycleEvent.CRASHED, CrashedDetail.CRASHEDLOADED),  # the guest runs on
    ],
)
def test_restore_ignores_what_is_not_a_state_of_a_running_qemu(
    told: tuple[LifecycleEvent, EventDetail],
):
    snapshot = MachineSnapshot(int(S.PAUSED), int(PausedReason.USER))
    m = DomainStateMachine.restore(snapshot, told=told)
    assert state_of(m) == (S.PAUSED, PausedReason.USER)


@pytest.mark.parametrize(
    ("told", "status", "after", "follow_up", "stopped"),
    [
        (
            (LifecycleEvent.SHUTDOWN, ShutdownDetail.GUEST),
            "shutdown",
            (S.SHUTDOWN, ShutdownReason.USER),
            GuestEvent.SHUTDOWN,
            StoppedDetail.SHUTDOWN,
        ),
        (
            (LifecycleEvent.CRASHED, CrashedDetail.PANICKED),
            "guest-panicked",
            (S.CRASHED, CrashedReason.PANICKED),
            GuestEvent.PANICKED,
            StoppedDetail.CRASHED,
        ),
    ],
)
def test_a_shutdown_or_panic_told_before_the_status_was_written_is_not_told_again(
    told: tuple[LifecycleEvent, EventDetail],
    status: str,
    after: tuple[DomainState, StateReason],
    follow_up: GuestEvent,
    stopped: StoppedDetail,
) -> None:
    # The supervisor journaled it and died before its status file said so.
    snapshot = MachineSnapshot(int(S.RUNNING), int(RunningReason.BOOTED))
    m = DomainStateMachine.restore(snapshot, told=told)
    # Still awaiting its follow-up (the supervisor may have died before it acted).
    assert seen(m.reconcile(status, False, attaching=True)) == Seen([], follow_up)
    assert state_of(m) == after
    # QEMU gone meanwhile (no reconcile): it ended as what was told, not as a failure.
    m = DomainStateMachine.restore(snapshot, told=told)
    assert seen(m.exited()[1]) == Seen([life(LifecycleEvent.STOPPED, stopped)], None)


def test_a_stop_told_before_the_status_file_went_is_not_told_again() -> None:
    snapshot = MachineSnapshot(int(S.RUNNING), int(RunningReason.BOOTED))
    m = DomainStateMachine.restore(snapshot, told=(LifecycleEvent.STOPPED, StoppedDetail.SHUTDOWN))
    reason, r = m.exited()
    assert seen(r) == NOTHING
    assert reason is ShutoffReason.SHUTDOWN and state_of(m) == (S.SHUTOFF, reason)
    # A QEMU that answers is a run of its own (the STOPPED was an earlier run's): its end
    # is told.
    m = DomainStateMachine.restore(snapshot, told=(LifecycleEvent.STOPPED, StoppedDetail.DESTROYED))
    assert seen(m.reconcile("running", True, attaching=True)) == NOTHING
    assert seen(m.exited()[1]) == Seen([life(LifecycleEvent.STOPPED, StoppedDetail.FAILED)], None)


def test_restore_of_a_stopping_machine_ignores_what_was_told() -> None:
    snapshot = MachineSnapshot(int(S.PAUSED), int(PausedReason.USER), stop_cause="destroyed")
    m = DomainStateMachine.restore(snapshot, told=RESUMED_TOLD)
    assert state_of(m) == (S.PAUSED, PausedReason.USER) and m.destroying
