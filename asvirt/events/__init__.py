"""Typed domain events, the bus that delivers them, and the journal that keeps them."""

from .bus import DEFAULT_KINDS, EventBus, Subscription
from .codec import event_from_dict, event_to_dict
from .journal import FileJournal, Journal, MemoryJournal
from .types import (
    CrashedDetail,
    DefinedDetail,
    DomainEvent,
    EventDetail,
    EventKind,
    LifecycleEvent,
    NetworkLifecycleEvent,
    PMSuspendedDetail,
    ResumedDetail,
    ShutdownDetail,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
    UndefinedDetail,
)

__all__ = [
    "DEFAULT_KINDS",
    "CrashedDetail",
    "DefinedDetail",
    "DomainEvent",
    "EventBus",
    "EventDetail",
    "EventKind",
    "FileJournal",
    "Journal",
    "LifecycleEvent",
    "MemoryJournal",
    "NetworkLifecycleEvent",
    "PMSuspendedDetail",
    "ResumedDetail",
    "ShutdownDetail",
    "StartedDetail",
    "StoppedDetail",
    "Subscription",
    "SuspendedDetail",
    "UndefinedDetail",
    "event_from_dict",
    "event_to_dict",
]
