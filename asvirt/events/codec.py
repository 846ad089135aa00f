"""Domain events as plain JSON-able dicts, for the event journal and the daemon wire protocol.

A dict has exactly these keys::

    {"seq": 7, "timestamp": 1700000000.25, "domain": "vm1", "uuid": "...",
     "kind": "lifecycle", "type": 2, "detail": 0, "data": None}

``kind`` is the :class:`~asvirt.events.EventKind` value, ``type`` the
:class:`~asvirt.events.LifecycleEvent` integer and ``detail`` the integer of the detail enum of
that type (libvirt's numbers); both are ``None`` for other kinds, except network lifecycle
events, whose ``type`` is the :class:`~asvirt.events.NetworkLifecycleEvent` integer, and
secret lifecycle events, whose ``type`` is the :class:`~asvirt.events.SecretLifecycleEvent`
integer (their ``detail`` is ``None``). ``data`` is ``None`` or a
JSON object. ``seq`` comes first so that a reader can pick it out of encoded JSON cheaply.

:func:`event_from_dict` trusts nothing: it is what turns bytes from a disk or a socket back
into events, so anything malformed is a :class:`ValueError` that says what is wrong. A
well-formed event of a kind this code does not know (a newer daemon's) is an
:class:`UnknownEventKindError`, a ValueError that carries the event's ``seq`` and ``kind``:
the remote client skips such an event (one warning per kind) and counts it as delivered, so
that an older client keeps working beside a newer daemon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .types import (
    DomainEvent,
    EventDetail,
    EventKind,
    EventType,
    LifecycleEvent,
    NetworkLifecycleEvent,
    SecretLifecycleEvent,
)

_KEYS = ("seq", "timestamp", "domain", "uuid", "kind", "type", "detail", "data")
_KEYSET = frozenset(_KEYS)
_KINDS = {kind.value: kind for kind in EventKind}
# Dict lookups instead of enum calls: decoding is the cost of every replayed event.
_TYPES = {int(t): t for t in LifecycleEvent}
_NETWORK_TYPES = {int(t): t for t in NetworkLifecycleEvent}
_SECRET_TYPES = {int(t): t for t in SecretLifecycleEvent}
_DETAILS = {(t, int(detail)): detail for t in LifecycleEvent for detail in t.details}
# JSON nesting a record may have; deeper input is refused rather than recursed into.
_MAX_DEPTH = 64


class UnknownEventKindError(ValueError):
    """A well-formed event whose kind this code does not know (sent by a newer daemon)."""

    def __init__(self, kind: str, seq: int) -> None:
        super().__init__(f"unknown event kind {kind!r} (known: {', '.join(_KINDS)})")
        #: The unknown kind, as the daemon named it.
        self.kind = kind
        #: The event's sequence number (it was delivered, in order, only not understood).
        self.seq = seq


def event_to_dict(event: DomainEvent) -> dict[str, Any]:
    """The JSON-able dict of ``event`` (``data`` is shared, not copied).

    Raises :class:`ValueError` for an event that :func:`event_from_dict` would refuse in its
    shape (a lifecycle event without a matching type and detail, a type on another kind, a
    malformed gap marker); ``data`` must hold JSON values, which the JSON encoder checks.
    """
    _check_shape(event.kind, event.type, event.detail, event.data)
    timestamp = event.timestamp
    if not (_is_int(timestamp) or isinstance(timestamp, float)) or not math.isfinite(timestamp):
        raise ValueError(f"event timestamp must be a finite number, not {timestamp!r}")
    return {
        "seq": event.seq,
        "timestamp": event.timestamp,
        "domain": event.domain,
        "uuid": event.uuid,
        "kind": event.kind.value,
        "type": None if event.type is None else int(event.type),
        "detail": None if event.detail is None else int(event.detail),
        "data": event.data,
    }


def event_from_dict(d: Mapping[str, Any]) -> DomainEvent:
    """The event a dict from :func:`event_to_dict` (or its JSON round trip) describes.

    Raises :class:`ValueError` naming the problem for anything malformed: not a mapping,
    missing or unknown keys, wrong types, a lifecycle type or detail libvirt does not define,
    a detail that does not belong to the type, data that is not JSON; and
    :class:`UnknownEventKindError` for a kind this code does not know (checked after seq,
    timestamp, domain and uuid, before what depends on the kind).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"an event must be a JSON object, not {type(d).__name__}")
    if d.keys() != _KEYSET:
        missing = [key for key in _KEYS if key not in d]
        if missing:
            raise ValueError(f"event is missing {', '.join(missing)}")
        unknown = sorted(str(key) for key in d if key not in _KEYSET)
        raise ValueError(f"event has unknown key(s): {', '.join(unknown)}")

    seq = d["seq"]
    if not _is_int(seq) or seq < 0:
        raise ValueError(f"event seq must be a non-negative integer, not {seq!r}")
    timestamp = d["timestamp"]
    if not (_is_int(timestamp) or isinstance(timestamp, float)) or not math.isfinite(timestamp):
        raise ValueError(f"event timestamp must be a finite number, not {timestamp!r}")
    for key in ("domain", "uuid"):
        if not isinstance(d[key], str):
            raise ValueError(f"event {key} must be a string, not {d[key]!r}")

    kind_value = d["kind"]
    if not isinstance(kind_value, str):
        raise ValueError(f"unknown event kind {kind_value!r} (known: {', '.join(_KINDS)})")
    if kind_value not in _KINDS:
        raise UnknownEventKindError(kind_value, seq)
    kind = _KINDS[kind_value]

    type_value = d["type"]
    type_: EventType | None = None
    if type_value is not None:
        if not _is_int(type_value):
            raise ValueError(f"event type must be an integer or null, not {type_value!r}")
        if kind is EventKind.NETWORK_LIFECYCLE:
            type_ = _NETWORK_TYPES.get(type_value)
            if type_ is None:
                raise ValueError(f"unknown network lifecycle event type {type_value}")
        elif kind is EventKind.SECRET_LIFECYCLE:
            type_ = _SECRET_TYPES.get(type_value)
            if type_ is None:
                raise ValueError(f"unknown secret lifecycle event type {type_value}")
        else:
            type_ = _TYPES.get(type_value)
            if type_ is None:
                raise ValueError(f"unknown lifecycle event type {type_value}")

    detail_value = d["detail"]
    detail: EventDetail | None = None
    if detail_value is not None:
        if not _is_int(detail_value):
            raise ValueError(f"event detail must be an integer or null, not {detail_value!r}")
        if type_ is None:
            raise ValueError("event has a detail but no type")
        if not isinstance(type_, LifecycleEvent):
            what = "network" if kind is EventKind.NETWORK_LIFECYCLE else "secret"
            raise ValueError(f"a {what} lifecycle event has no detail")
        detail = _DETAILS.get((type_, detail_value))
        if detail is None:
            raise ValueError(
                f"detail {detail_value} is not a detail of lifecycle event {type_.name}"
            )

    data = d["data"]
    if data is not None:
        if not isinstance(data, dict):
            raise ValueError(f"event data must be a JSON object or null, not {data!r}")
        _check_json(data, "data", 0)
    _check_shape(kind, type_, detail, data)
    return DomainEvent(
        seq=seq,
        timestamp=float(timestamp),
        domain=d["domain"],
        uuid=d["uuid"],
        kind=kind,
        type=type_,
        detail=detail,
        data=data,
    )


def _is_int(value: object) -> bool:
    # bool is an int subclass, but true is not a sequence number.
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_shape(
    kind: EventKind,
    type_: EventType | None,
    detail: EventDetail | None,
    data: object,
) -> None:
    """The rules that tie kind, type, detail and data together (both directions share them)."""
    if kind is EventKind.LIFECYCLE:
        if not isinstance(type_, LifecycleEvent) or detail is None:
            raise ValueError("a lifecycle event needs a type and a detail")
        if not isinstance(detail, type_.details):
            raise ValueError(f"{detail!r} is not a detail of lifecycle event {type_.name}")
    elif kind is EventKind.NETWORK_LIFECYCLE:
        if not isinstance(type_, NetworkLifecycleEvent) or detail is not None:
            raise ValueError("a network lifecycle event needs a network type and no detail")
    elif kind is EventKind.SECRET_LIFECYCLE:
        if not isinstance(type_, SecretLifecycleEvent) or detail is not None:
            raise ValueError("a secret lifecycle event needs a secret type and no detail")
    elif type_ is not None or detail is not None:
        raise ValueError(f"a {kind.value!r} event has no lifecycle type or detail")
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"event data must be a dict or None, not {type(data).__name__}")
    if kind is EventKind.GAP:
        first = _as_int(data.get("first")) if isinstance(data, dict) else None
        last = _as_int(data.get("last")) if isinstance(data, dict) else None
        if first is None or last is None or not 0 < first <= last:
            raise ValueError(
                f"a gap event needs data {{'first': int, 'last': int}} with 0 < first <= last, "
                f"not {data!r}"
            )


def _check_json(value: object, where: str, depth: int) -> None:
    """Refuse anything json.loads could not have produced (and NaN, which JSON lacks)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"event {where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"event {where} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"event {where} has a non-string key {key!r}")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    raise ValueError(f"event {where} holds a {type(value).__name__}, which JSON cannot hold")
