"""Domain states and the reasons a domain is in them, with libvirt's names and values.

``state, reason = await dom.state()`` gives a :class:`DomainState` and a member of the reason
enum that belongs to that state (``RunningReason`` for RUNNING, ``ShutoffReason`` for SHUTOFF,
...). The integer values are libvirt's, so they can be compared with libvirt-python's
``VIR_DOMAIN_*`` constants.
"""

from __future__ import annotations

import enum


class DomainState(enum.IntEnum):
    """libvirt's ``virDomainState``."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @property
    def reasons(self) -> type[StateReason]:
        """The reason enum that goes with this state."""
        return _REASONS[self]

    @property
    def label(self) -> str:
        """virsh's wording for the state (``"running"``, ``"shut off"``)."""
        return STATE_LABELS[self]


class StateReason(enum.Enum):
    """Base of the per-state reason enums.

    Values are libvirt's integers (``int(reason)`` gives one), but members of different reason
    enums never compare equal: ``ShutoffReason.SHUTDOWN != RunningReason.BOOTED`` although both
    are 1, which plain integers would get wrong.
    """

    def __int__(self) -> int:
        return int(self.value)

    @property
    def label(self) -> str:
        """virsh's wording for the reason (``"booted"``, ``"destroyed"``, ``"unknown"``)."""
        return _REASON_LABELS.get(self, "unknown")


class NostateReason(StateReason):
    UNKNOWN = 0


class RunningReason(StateReason):
    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5
    MIGRATION_CANCELED = 6
    SAVE_CANCELED = 7
    WAKEUP = 8
    CRASHED = 9
    POSTCOPY = 10
    POSTCOPY_FAILED = 11


class BlockedReason(StateReason):
    UNKNOWN = 0


class PausedReason(StateReason):
    UNKNOWN = 0
    USER = 1
    MIGRATION = 2
    SAVE = 3
    DUMP = 4
    IOERROR = 5
    WATCHDOG = 6
    FROM_SNAPSHOT = 7
    SHUTTING_DOWN = 8
    SNAPSHOT = 9
    CRASHED = 10
    STARTING_UP = 11
    POSTCOPY = 12
    POSTCOPY_FAILED = 13
    API_ERROR = 14


class ShutdownReason(StateReason):
    UNKNOWN = 0
    USER = 1


class ShutoffReason(StateReason):
    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class CrashedReason(StateReason):
    UNKNOWN = 0
    PANICKED = 1


class PMSuspendedReason(StateReason):
    UNKNOWN = 0


_REASONS: dict[DomainState, type[StateReason]] = {
    DomainState.NOSTATE: NostateReason,
    DomainState.RUNNING: RunningReason,
    DomainState.BLOCKED: BlockedReason,
    DomainState.PAUSED: PausedReason,
    DomainState.SHUTDOWN: ShutdownReason,
    DomainState.SHUTOFF: ShutoffReason,
    DomainState.CRASHED: CrashedReason,
    DomainState.PMSUSPENDED: PMSuspendedReason,
}


def reason_for(state: DomainState, value: int) -> StateReason:
    """The reason enum member of ``state`` with integer ``value`` (UNKNOWN if out of range)."""
    enum_type = _REASONS[state]
    try:
        return enum_type(value)
    except ValueError:
        return enum_type(0)


# virsh prints states and reasons in these words (virshDomainStateToString and friends).
STATE_LABELS: dict[DomainState, str] = {
    DomainState.NOSTATE: "no state",
    DomainState.RUNNING: "running",
    DomainState.BLOCKED: "idle",
    DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "in shutdown",
    DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed",
    DomainState.PMSUSPENDED: "pmsuspended",
}

_REASON_LABELS: dict[StateReason, str] = {
    RunningReason.BOOTED: "booted",
    RunningReason.MIGRATED: "migrated",
    RunningReason.RESTORED: "restored",
    RunningReason.FROM_SNAPSHOT: "from snapshot",
    RunningReason.UNPAUSED: "unpaused",
    RunningReason.MIGRATION_CANCELED: "migration canceled",
    RunningReason.SAVE_CANCELED: "save canceled",
    RunningReason.WAKEUP: "event wakeup",
    RunningReason.CRASHED: "crashed",
    RunningReason.POSTCOPY: "post-copy",
    RunningReason.POSTCOPY_FAILED: "post-copy failed",
    PausedReason.USER: "user",
    PausedReason.MIGRATION: "migrating",
    PausedReason.SAVE: "saving",
    PausedReason.DUMP: "dumping",
    PausedReason.IOERROR: "I/O error",
    PausedReason.WATCHDOG: "watchdog",
    PausedReason.FROM_SNAPSHOT: "from snapshot",
    PausedReason.SHUTTING_DOWN: "shutting down",
    PausedReason.SNAPSHOT: "creating snapshot",
    PausedReason.CRASHED: "crashed",
    PausedReason.STARTING_UP: "starting up",
    PausedReason.POSTCOPY: "post-copy",
    PausedReason.POSTCOPY_FAILED: "post-copy failed",
    PausedReason.API_ERROR: "api error",
    ShutdownReason.USER: "user",
    ShutoffReason.SHUTDOWN: "shutdown",
    ShutoffReason.DESTROYED: "destroyed",
    ShutoffReason.CRASHED: "crashed",
    ShutoffReason.MIGRATED: "migrated",
    ShutoffReason.SAVED: "saved",
    ShutoffReason.FAILED: "failed",
    ShutoffReason.FROM_SNAPSHOT: "from snapshot",
    ShutoffReason.DAEMON: "daemon",
    CrashedReason.PANICKED: "panicked",
}
