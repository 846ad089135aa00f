"""Typed domain events, the bus that delivers them, and the journal that keeps them."""

import importlib as _importlib
import typing as _typing

# Loaded on first use: event types are light, the bus and the journal bring trio along.
_LAZY: dict[str, str] = {
    "CrashedDetail": ".types",
    "DEFAULT_KINDS": ".bus",
    "DefinedDetail": ".types",
    "DomainEvent": ".types",
    "EventBus": ".bus",
    "EventDetail": ".types",
    "EventKind": ".types",
    "FileJournal": ".journal",
    "Journal": ".journal",
    "LifecycleEvent": ".types",
    "MemoryJournal": ".journal",
    "NetworkLifecycleEvent": ".types",
    "PMSuspendedDetail": ".types",
    "ResumedDetail": ".types",
    "SecretLifecycleEvent": ".types",
    "ShutdownDetail": ".types",
    "StartedDetail": ".types",
    "StoppedDetail": ".types",
    "Subscription": ".bus",
    "SuspendedDetail": ".types",
    "UndefinedDetail": ".types",
    "event_from_dict": ".codec",
    "event_to_dict": ".codec",
}

if _typing.TYPE_CHECKING:
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
        SecretLifecycleEvent,
        ShutdownDetail,
        StartedDetail,
        StoppedDetail,
        SuspendedDetail,
        UndefinedDetail,
    )


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asvirt.events' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "SecretLifecycleEvent",
    "ShutdownDetail",
    "StartedDetail",
    "StoppedDetail",
    "Subscription",
    "SuspendedDetail",
    "UndefinedDetail",
    "event_from_dict",
    "event_to_dict",
]
