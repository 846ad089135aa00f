"""Typed domain events and the bus that delivers them."""

from .bus import DEFAULT_KINDS, EventBus, Subscription
from .codec import event_from_dict, event_to_dict
from .types import (
    CrashedDetail,
    DefinedDetail,
    DomainEvent,
    EventDetail,
    EventKind,
    LifecycleEvent,
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
    "LifecycleEvent",
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
