"""The typed events asvirt delivers, following libvirt's event model.

Every event is a :class:`DomainEvent`. Its :attr:`~DomainEvent.kind` says which family it
belongs to (libvirt's event IDs); lifecycle events also carry a :class:`LifecycleEvent`
``type`` and a ``detail`` from the detail enum of that type (libvirt's
``virDomainEvent*DetailType``). Integer values are libvirt's.

Networks have events too, on the same bus and journal, numbered in the same sequence:
:data:`EventKind.NETWORK_LIFECYCLE`, whose ``type`` is a :class:`NetworkLifecycleEvent`
(libvirt's ``virNetworkEventLifecycleType``) and which has no ``detail`` (libvirt's is
always 0). Their ``domain`` and ``uuid`` fields carry the *network's* name and UUID: the
``kind`` tells which object an event is about. As in libvirt, where network events are
registered apart from domain events, they are opt-in: a subscription with ``kinds=None``
does not receive them. So are secrets' events: :data:`EventKind.SECRET_LIFECYCLE` (a
:class:`SecretLifecycleEvent` ``type``) and :data:`EventKind.SECRET_VALUE_CHANGED`, whose
``domain`` and ``uuid`` are both the secret's UUID (a secret has no name; virsh's
``secret-event`` names it by UUID) and whose ``data`` holds its ``usage_type`` and ``usage_id``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class EventKind(enum.Enum):
    """The families of domain events (libvirt's ``virDomainEventID``)."""

    LIFECYCLE = "lifecycle"
    REBOOT = "reboot"
    RTC_CHANGE = "rtc-change"
    WATCHDOG = "watchdog"
    IO_ERROR = "io-error"
    DEVICE_REMOVED = "device-removed"
    #: A device asked to go (``detach_device``) was not released by the guest in time; it
    #: stays, and a DEVICE_REMOVED follows if the guest releases it later.
    DEVICE_REMOVAL_FAILED = "device-removal-failed"
    BALLOON_CHANGE = "balloon-change"
    BLOCK_JOB = "block-job"
    #: The guest agent connected or disconnected (``data``: ``state``, an
    #: :class:`AgentLifecycleState`, and ``reason``, an :class:`AgentLifecycleReason`, as
    #: their integer values): libvirt's ``VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE``.
    AGENT_LIFECYCLE = "agent-lifecycle"
    #: The domain's title, description or a metadata element changed (``data``: ``type``, a
    #: :class:`~asvirt.MetadataType` value, and ``nsuri``, the element's namespace URI or
    #: None): libvirt's ``VIR_DOMAIN_EVENT_ID_METADATA_CHANGE``.
    METADATA_CHANGE = "metadata-change"
    #: Every QMP event QEMU sends, unchanged, in ``data`` (like libvirt's
    #: ``virConnectDomainQemuMonitorEventRegister``). Opt-in: subscriptions with
    #: ``kinds=None`` do not receive these.
    QMP = "qmp"
    #: Not about a domain: a marker that the events numbered ``data["first"]`` to
    #: ``data["last"]`` (inclusive) are no longer retained, so a client resuming from an
    #: older ``seq`` knows exactly what it cannot get back.
    GAP = "gap"
    #: About a network, not a domain: defined, undefined, started or stopped (``type`` is a
    #: :class:`NetworkLifecycleEvent`; ``domain`` and ``uuid`` are the network's). Opt-in.
    NETWORK_LIFECYCLE = "network-lifecycle"
    #: About a secret: defined or undefined (``type`` is a :class:`SecretLifecycleEvent`;
    #: ``domain`` and ``uuid`` are the secret's UUID). Opt-in.
    SECRET_LIFECYCLE = "secret-lifecycle"
    #: A secret's value was set (libvirt's ``VIR_SECRET_EVENT_ID_VALUE_CHANGED``). Opt-in.
    SECRET_VALUE_CHANGED = "secret-value-changed"


class AgentLifecycleState(enum.IntEnum):
    """libvirt's ``virConnectDomainEventAgentLifecycleState``."""

    CONNECTED = 1
    DISCONNECTED = 2

    @property
    def label(self) -> str:
        """virsh's wording (``"connected"``)."""
        return self.name.lower()


class AgentLifecycleReason(enum.IntEnum):
    """libvirt's ``virConnectDomainEventAgentLifecycleReason``."""

    UNKNOWN = 0
    #: The state was found when the domain started (or its supervisor attached).
    DOMAIN_STARTED = 1
    #: The guest opened or closed the agent's channel.
    CHANNEL = 2

    @property
    def label(self) -> str:
        """virsh's wording (``"domain started"``)."""
        return self.name.lower().replace("_", " ")


class NetworkLifecycleEvent(enum.IntEnum):
    """libvirt's ``virNetworkEventLifecycleType``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3

    @property
    def label(self) -> str:
        """virsh's wording (``"Started"``)."""
        return self.name.capitalize()


class SecretLifecycleEvent(enum.IntEnum):
    """libvirt's ``virSecretEventLifecycleType``."""

    DEFINED = 0
    UNDEFINED = 1

    @property
    def label(self) -> str:
        """virsh's wording (``"Defined"``)."""
        return self.name.capitalize()


class LifecycleEvent(enum.IntEnum):
    """libvirt's ``virDomainEventType``."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8

    @property
    def details(self) -> type[EventDetail]:
        """The detail enum that goes with this event type."""
        return _DETAILS[self]

    @property
    def label(self) -> str:
        """virsh's wording (``"Started"``)."""
        return self.name.capitalize() if self is not LifecycleEvent.PMSUSPENDED else "PMSuspended"


class EventDetail(enum.Enum):
    """Base of the per-type detail enums.

    Values are libvirt's integers (``int(detail)``), but details of different event types never
    compare equal to each other (``StoppedDetail.SHUTDOWN != StartedDetail.BOOTED``).
    """

    def __int__(self) -> int:
        return int(self.value)

    @property
    def label(self) -> str:
        """virsh's wording (``"Booted"``, ``"Finished"``)."""
        return _DETAIL_LABELS.get(self, self.name.replace("_", " ").capitalize())


class DefinedDetail(EventDetail):
    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class UndefinedDetail(EventDetail):
    REMOVED = 0
    RENAMED = 1


class StartedDetail(EventDetail):
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4
    RECREATED = 5


class SuspendedDetail(EventDetail):
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6
    POSTCOPY = 7
    POSTCOPY_FAILED = 8


class ResumedDetail(EventDetail):
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2
    POSTCOPY = 3
    POSTCOPY_FAILED = 4


class StoppedDetail(EventDetail):
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6
    RECREATED = 7


class ShutdownDetail(EventDetail):
    FINISHED = 0
    GUEST = 1
    HOST = 2


class PMSuspendedDetail(EventDetail):
    MEMORY = 0
    DISK = 1


class CrashedDetail(EventDetail):
    PANICKED = 0
    CRASHEDLOADED = 1


_DETAILS: dict[LifecycleEvent, type[EventDetail]] = {
    LifecycleEvent.DEFINED: DefinedDetail,
    LifecycleEvent.UNDEFINED: UndefinedDetail,
    LifecycleEvent.STARTED: StartedDetail,
    LifecycleEvent.SUSPENDED: SuspendedDetail,
    LifecycleEvent.RESUMED: ResumedDetail,
    LifecycleEvent.STOPPED: StoppedDetail,
    LifecycleEvent.SHUTDOWN: ShutdownDetail,
    LifecycleEvent.PMSUSPENDED: PMSuspendedDetail,
    LifecycleEvent.CRASHED: CrashedDetail,
}

# Where virsh's wording is not simply the capitalized name.
_DETAIL_LABELS: dict[EventDetail, str] = {
    SuspendedDetail.IOERROR: "I/O Error",
    SuspendedDetail.API_ERROR: "API error",
    SuspendedDetail.POSTCOPY: "Post-copy",
    SuspendedDetail.POSTCOPY_FAILED: "Post-copy Error",
    ResumedDetail.POSTCOPY: "Post-copy",
    ResumedDetail.POSTCOPY_FAILED: "Post-copy Error",
    DefinedDetail.FROM_SNAPSHOT: "Snapshot",
    StartedDetail.FROM_SNAPSHOT: "Snapshot",
    SuspendedDetail.FROM_SNAPSHOT: "Snapshot",
    ResumedDetail.FROM_SNAPSHOT: "Snapshot",
    StoppedDetail.FROM_SNAPSHOT: "Snapshot",
    StartedDetail.WAKEUP: "Event wakeup",
    StartedDetail.RECREATED: "Recreation",
    StoppedDetail.RECREATED: "Recreation",
    ShutdownDetail.GUEST: "Finished after guest request",
    ShutdownDetail.HOST: "Finished after host request",
    CrashedDetail.CRASHEDLOADED: "Crashloaded",
}

# QEMU's BLOCK_IO_ERROR actions in virsh's words (libvirt's virDomainEventIOErrorAction).
_IO_ERROR_ACTIONS = {"ignore": "none", "stop": "pause", "report": "report"}

#: QEMU's block job types (``type`` of its BLOCK_JOB_* events) by libvirt's names
#: (``virDomainBlockJobType``), for jobs whose id does not say more: QEMU reports an active
#: commit as "commit" too.
QEMU_BLOCK_JOB_TYPES = {"stream": "pull", "mirror": "copy", "commit": "commit", "backup": "backup"}

# libvirt's block job types in virsh's words.
_BLOCK_JOB_LABELS = {
    "pull": "Block Pull",
    "copy": "Block Copy",
    "commit": "Block Commit",
    "active-commit": "Active Block Commit",
    "backup": "Backup",
}


def _label(enum_: type[AgentLifecycleState] | type[AgentLifecycleReason], value: Any) -> str:
    try:
        return enum_(value).label
    except ValueError:
        return "unknown"


#: The ``type`` of a lifecycle event: a domain's, a network's or a secret's.
EventType = LifecycleEvent | NetworkLifecycleEvent | SecretLifecycleEvent


@dataclasses.dataclass(frozen=True, slots=True)
class DomainEvent:
    """One event about one domain (or, for :data:`EventKind.NETWORK_LIFECYCLE`, one network:
    then ``domain`` and ``uuid`` are the network's name and UUID).

    ``seq`` increases by one for every event a connection publishes (a filtered subscription
    sees gaps: the events it did not ask for; :attr:`asvirt.Subscription.lost` counts events
    it lost). ``timestamp`` is seconds since the epoch: QEMU's own timestamp for events that
    came from QEMU.
    """

    seq: int
    timestamp: float
    domain: str
    uuid: str
    kind: EventKind
    type: EventType | None = None
    detail: EventDetail | None = None
    data: dict[str, Any] | None = None

    def describe(self) -> str:
        """A one-line description in virsh's ``event`` (or ``net-event``) wording."""
        head = f"event '{self.kind.value}' for domain '{self.domain}'"
        data = self.data or {}
        match self.kind:
            case EventKind.LIFECYCLE:
                assert self.type is not None and self.detail is not None
                return f"{head}: {self.type.label} {self.detail.label}"
            case EventKind.REBOOT:
                return head
            case EventKind.RTC_CHANGE:
                return f"{head}: {data.get('offset', 0)}"
            case EventKind.WATCHDOG:
                return f"{head}: {data.get('action', '')}"
            case EventKind.IO_ERROR:
                # virsh's io-error-reason line: source path, alias, libvirt's action name.
                # libvirt's reason is "enospc" or nothing; QEMU's own reason is more telling.
                action = _IO_ERROR_ACTIONS.get(data.get("action", ""), "unknown")
                reason = "enospc" if data.get("nospace") else data.get("reason", "")
                line = f"{head}: {data.get('path') or ''} ({data.get('alias', '')}) {action}"
                return f"{line} due to {reason}" if reason else line
            case EventKind.DEVICE_REMOVED | EventKind.DEVICE_REMOVAL_FAILED:
                return f"{head}: {data.get('device', '')}"
            case EventKind.BALLOON_CHANGE:
                return f"{head}: {data.get('actual_kib', '')}KiB"
            case EventKind.BLOCK_JOB:
                # virsh's block-job-2 line: the job in libvirt's words, the disk's target
                # (the QEMU job's id for a job of no disk asvirt knows).
                kind = data.get("job") or QEMU_BLOCK_JOB_TYPES.get(data.get("type", ""), "")
                job = _BLOCK_JOB_LABELS.get(kind, "Unknown job")
                disk = data.get("disk") or data.get("device", "")
                return f"{head}: {job} for {disk} {data.get('status', '')}"
            case EventKind.AGENT_LIFECYCLE:
                # virsh: state: 'connected' reason: 'channel'
                state = _label(AgentLifecycleState, data.get("state"))
                reason = _label(AgentLifecycleReason, data.get("reason"))
                return f"{head}: state: '{state}' reason: '{reason}'"
            case EventKind.METADATA_CHANGE:
                # virsh: type title, uri <null>
                names: dict[Any, str] = {0: "description", 1: "title", 2: "element"}
                kind = names.get(data.get("type"), "unknown")
                return f"{head}: type {kind}, uri {data.get('nsuri') or '<null>'}"
            case EventKind.QMP:
                return f"event 'qemu-monitor' for domain '{self.domain}': {data.get('event', '')}"
            case EventKind.NETWORK_LIFECYCLE:
                assert self.type is not None
                return f"event 'lifecycle' for network {self.domain}: {self.type.label}"
            case EventKind.SECRET_LIFECYCLE:
                assert self.type is not None
                return f"event 'lifecycle' for secret {self.uuid}: {self.type.label}"
            case EventKind.SECRET_VALUE_CHANGED:
                return f"event 'value-changed' for secret {self.uuid}"
            case EventKind.GAP:
                first, last = data.get("first", "?"), data.get("last", "?")
                if first == last:
                    return f"event 'gap': event {first} is no longer retained"
                return f"event 'gap': events {first}-{last} are no longer retained"
        return head  # pragma: no cover - every kind is handled above
