"""The event codec and the per-node event journal, against real files in tmp_path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asvirt.events import (
    DomainEvent,
    EventKind,
    LifecycleEvent,
    StartedDetail,
    StoppedDetail,
    event_from_dict,
    event_to_dict,
)
from asvirt.events.bus import DEFAULT_KINDS

UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"

# -- strategies ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@st.composite
def events(draw: st.DrawFn, seq: int | None = None) -> DomainEvent:
    kind = draw(st.sampled_from(list(EventKind)))
    type_ = detail = None
    data: dict[str, Any] | None
    if kind is EventKind.LIFECYCLE:
        type_ = draw(st.sampled_from(list(LifecycleEvent)))
        detail = draw(st.sampled_from(list(type_.details)))
        data = draw(st.none() | json_objects)
    elif kind is EventKind.GAP:
        first = draw(st.integers(min_value=1, max_value=2**40))
        data = {"first": first, "last": first + draw(st.integers(min_value=0, max_value=10**6))}
    else:
        data = draw(st.none() | json_objects)
    return DomainEvent(
        seq=draw(st.integers(min_value=0, max_value=2**63)) if seq is None else seq,
        timestamp=draw(st.floats(min_value=0, max_value=2e9, allow_nan=False)),
        domain=draw(st.text(max_size=12)),
        uuid=draw(st.text(max_size=36)),
        kind=kind,
        type=type_,
        detail=detail,
        data=data,
    )


def lifecycle(seq: int, ts: float = 1700000000.0, domain: str = "vm1") -> DomainEvent:
    return DomainEvent(
        seq=seq,
        timestamp=ts,
        domain=domain,
        uuid=UUID,
        kind=EventKind.LIFECYCLE,
        type=LifecycleEvent.STARTED,
        detail=StartedDetail.BOOTED,
    )


# -- codec -----------------------------------------------------------------------------------------


def test_gap_is_delivered_by_default_and_described():
    assert EventKind.GAP in DEFAULT_KINDS
    assert set(EventKind) - DEFAULT_KINDS == {EventKind.QMP}
    gap = DomainEvent(1, 0.0, "", "", EventKind.GAP, data={"first": 5, "last": 120})
    assert gap.describe() == "event 'gap': events 5-120 are no longer retained"
    one = DomainEvent(1, 0.0, "", "", EventKind.GAP, data={"first": 7, "last": 7})
    assert one.describe() == "event 'gap': event 7 is no longer retained"


def test_codec_dict_shape():
    ev = DomainEvent(
        seq=3,
        timestamp=1.5,
        domain="vm1",
        uuid=UUID,
        kind=EventKind.LIFECYCLE,
        type=LifecycleEvent.STOPPED,
        detail=StoppedDetail.DESTROYED,
    )
    d = event_to_dict(ev)
    assert d == {
        "seq": 3,
        "timestamp": 1.5,
        "domain": "vm1",
        "uuid": UUID,
        "kind": "lifecycle",
        "type": 5,
        "detail": 1,
        "data": None,
    }
    assert next(iter(d)) == "seq"
    assert event_from_dict(json.loads(json.dumps(d))) == ev


@given(events())
def test_codec_round_trips_through_json(ev: DomainEvent):
    d = json.loads(json.dumps(event_to_dict(ev), allow_nan=False))
    back = event_from_dict(d)
    assert back == ev
    assert type(back.detail) is type(ev.detail)
    assert json.dumps(event_to_dict(back)) == json.dumps(event_to_dict(ev))


def _good() -> dict[str, Any]:
    return event_to_dict(lifecycle(1))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"kind": "lifecycles"}, "unknown event kind 'lifecycles'"),
        ({"kind": 1}, "unknown event kind"),
        ({"type": 99}, "unknown lifecycle event type 99"),
        ({"type": "2"}, "type must be an integer"),
        ({"type": True}, "type must be an integer"),
        ({"detail": 17}, "detail 17 is not a detail of lifecycle event STARTED"),
        ({"detail": None}, "needs a type and a detail"),
        ({"type": None}, "detail but no type"),
        ({"kind": "reboot"}, "has no lifecycle type or detail"),
        ({"seq": -1}, "seq must be a non-negative integer"),
        ({"seq": 1.0}, "seq must be a non-negative integer"),
        ({"seq": False}, "seq must be a non-negative integer"),
        ({"timestamp": "now"}, "timestamp must be a finite number"),
        ({"timestamp": float("nan")}, "timestamp must be a finite number"),
        ({"domain": None}, "domain must be a string"),
        ({"uuid": 5}, "uuid must be a string"),
        ({"data": [1]}, "data must be a JSON object"),
        ({"data": {"a": float("inf")}}, r"data\.a is inf"),
        ({"data": {"a": [1, (2,)]}}, r"data\.a\[1\] holds a tuple"),
        ({"data": {"a": {1: 2}}}, "non-string key 1"),
        ({"extra": 1}, "unknown key"),
    ],
)
def test_codec_refuses_malformed(change: dict[str, Any], match: str):
    d = _good()
    d.update(change)
    with pytest.raises(ValueError, match=match):
        event_from_dict(d)


@pytest.mark.parametrize(
    "d,match",
    [
        ([], "must be a JSON object, not list"),
        ({"seq": 1}, "missing timestamp, domain, uuid, kind, type, detail, data"),
    ],
)
def test_codec_refuses_non_events(d: Any, match: str):
    with pytest.raises(ValueError, match=match):
        event_from_dict(d)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"first": 5},
        {"first": 0, "last": 3},
        {"first": 9, "last": 3},
        {"first": True, "last": 2},
    ],
)
def test_codec_refuses_malformed_gaps(data: Any):
    d = {**_good(), "kind": "gap", "type": None, "detail": None, "data": data}
    with pytest.raises(ValueError, match="gap event needs"):
        event_from_dict(d)
    with pytest.raises(ValueError, match="gap event needs"):
        event_to_dict(DomainEvent(1, 0.0, "", "", EventKind.GAP, data=data))


def test_codec_refuses_to_encode_what_it_would_not_decode():
    bad_detail = DomainEvent(
        1, 0.0, "a", "u", EventKind.LIFECYCLE, LifecycleEvent.STARTED, StoppedDetail.DESTROYED
    )
    with pytest.raises(ValueError, match="not a detail of lifecycle event STARTED"):
        event_to_dict(bad_detail)
    with pytest.raises(ValueError, match="finite"):
        event_to_dict(DomainEvent(1, float("inf"), "a", "u", EventKind.REBOOT))
