"""The event codec and the per-node event journal, against real files in tmp_path."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import asvirt
from asvirt.config import JournalConfig
from asvirt.events import (
    DomainEvent,
    EventKind,
    FileJournal,
    Journal,
    LifecycleEvent,
    MemoryJournal,
    NetworkLifecycleEvent,
    SecretLifecycleEvent,
    StartedDetail,
    StoppedDetail,
    event_from_dict,
    event_to_dict,
)
from asvirt.events import journal as journal_module
from asvirt.events.bus import DEFAULT_KINDS
from asvirt.events.journal import _SEGMENT_NAME

from .guest import REPO

UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
# Now: retention by age compares event timestamps with the (real, unless a test passes its
# own) clock.
T0 = float(int(time.time()))

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
    elif kind is EventKind.NETWORK_LIFECYCLE:
        type_ = draw(st.sampled_from(list(NetworkLifecycleEvent)))
        data = None
    elif kind is EventKind.SECRET_LIFECYCLE:
        type_ = draw(st.sampled_from(list(SecretLifecycleEvent)))
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


def lifecycle(seq: int, ts: float | None = None, domain: str = "vm1") -> DomainEvent:
    return DomainEvent(
        seq=seq,
        timestamp=T0 if ts is None else ts,
        domain=domain,
        uuid=UUID,
        kind=EventKind.LIFECYCLE,
        type=LifecycleEvent.STARTED,
        detail=StartedDetail.BOOTED,
    )


# -- codec -----------------------------------------------------------------------------------------


def test_gap_is_delivered_by_default_and_described():
    assert EventKind.GAP in DEFAULT_KINDS
    assert set(EventKind) - DEFAULT_KINDS == {
        EventKind.QMP,
        EventKind.NETWORK_LIFECYCLE,
        EventKind.SECRET_LIFECYCLE,
        EventKind.SECRET_VALUE_CHANGED,
    }
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


def test_network_events_round_trip_and_are_checked():
    ev = DomainEvent(
        7,
        1.5,
        "default",
        "dd8fe884-6c02-601e-7551-cca97df1c5df",
        EventKind.NETWORK_LIFECYCLE,
        NetworkLifecycleEvent.STOPPED,
    )
    d = event_to_dict(ev)
    assert (d["kind"], d["type"], d["detail"]) == ("network-lifecycle", 3, None)
    back = event_from_dict(json.loads(json.dumps(d)))
    assert back == ev and type(back.type) is NetworkLifecycleEvent
    for change, match in (
        ({"type": 4}, "unknown network lifecycle event type 4"),
        ({"type": None}, "needs a network type"),
        ({"detail": 0}, "network lifecycle event has no detail"),
    ):
        with pytest.raises(ValueError, match=match):
            event_from_dict({**d, **change})
    # A domain lifecycle type on a network event (and the reverse) is refused both ways.
    with pytest.raises(ValueError, match="needs a network type"):
        event_to_dict(dataclasses.replace(ev, type=LifecycleEvent.STOPPED))
    with pytest.raises(ValueError, match="needs a type and a detail"):
        event_to_dict(dataclasses.replace(ev, kind=EventKind.LIFECYCLE))


def test_secret_events_round_trip_and_are_checked():
    ev = DomainEvent(8, 1.5, UUID, UUID, EventKind.SECRET_LIFECYCLE, SecretLifecycleEvent.UNDEFINED)
    d = event_to_dict(ev)
    assert (d["kind"], d["type"], d["detail"]) == ("secret-lifecycle", 1, None)
    back = event_from_dict(json.loads(json.dumps(d)))
    assert back == ev and type(back.type) is SecretLifecycleEvent
    for change, match in (
        ({"type": 2}, "unknown secret lifecycle event type 2"),
        ({"type": None}, "needs a secret type"),
        ({"detail": 0}, "secret lifecycle event has no detail"),
    ):
        with pytest.raises(ValueError, match=match):
            event_from_dict({**d, **change})
    with pytest.raises(ValueError, match="needs a secret type"):
        event_to_dict(dataclasses.replace(ev, type=NetworkLifecycleEvent.DEFINED))
    changed = DomainEvent(9, 1.5, UUID, UUID, EventKind.SECRET_VALUE_CHANGED)
    assert event_from_dict(json.loads(json.dumps(event_to_dict(changed)))) == changed


# -- helpers for the journals ----------------------------------------------------------------------


class Clock:
    """A wall clock the test moves by hand (segment and retention ages)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(**overrides: Any) -> JournalConfig:
    return JournalConfig(**overrides)


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".events"))


def seqs(events: list[DomainEvent]) -> list[int]:
    return [ev.seq for ev in events]


def fill(journal: Journal, upto: int, *, ts: float = T0) -> list[DomainEvent]:
    out = []
    for seq in range(journal.last_seq + 1, upto + 1):
        ev = lifecycle(seq, ts)
        journal.append(ev)
        out.append(ev)
    return out


def journal_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asvirt.journal"]


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


# -- MemoryJournal ---------------------------------------------------------------------------------


async def test_memory_journal_keeps_the_newest():
    j = MemoryJournal(capacity=3)
    assert (j.first_seq, j.last_seq) == (1, 0)
    assert j.read(0, 10) == []
    fill(j, 5)
    assert (j.first_seq, j.last_seq) == (3, 5)
    assert seqs(j.read(0, 10)) == [3, 4, 5]
    assert seqs(j.read(3, 1)) == [4]
    assert j.read(5, 10) == []
    with pytest.raises(asvirt.InvalidArgError, match="out of order"):
        j.append(lifecycle(7))
    await j.sync()
    async with trio.open_nursery() as nursery:
        await nursery.start(j.run)  # nothing to do, until cancelled
        nursery.cancel_scope.cancel()
    j.close()
    with pytest.raises(asvirt.OperationInvalidError):
        j.append(lifecycle(6))


def test_last_lifecycle_per_domain_within_the_window():
    j = MemoryJournal(capacity=100)
    other = "00000000-0000-4000-8000-000000000001"
    stopped = {"type": LifecycleEvent.STOPPED, "detail": StoppedDetail.DESTROYED}
    reboot = {"kind": EventKind.REBOOT, "type": None, "detail": None}
    for seq, changes in [
        (1, {}),
        (2, {"uuid": other}),
        (3, stopped),
        (4, reboot),  # not a lifecycle event: not what subscribers were last told
        (5, {"uuid": "someone-else"}),
    ]:
        j.append(dataclasses.replace(lifecycle(seq), **changes))
    found = journal_module.last_lifecycle(j, [UUID, other, "never-seen"])
    assert {u: e.seq for u, e in found.items()} == {UUID: 3, other: 2}
    assert found[UUID].type is LifecycleEvent.STOPPED
    # Only the newest events are looked at: a domain told nothing lately is left out.
    assert journal_module.last_lifecycle(j, [UUID, other], window=3) == {UUID: found[UUID]}
    assert journal_module.last_lifecycle(j, []) == {}
    assert journal_module.last_lifecycle(MemoryJournal(), [UUID]) == {}


# -- FileJournal: the basics -----------------------------------------------------------------------


def test_append_and_read_ranges(jdir: Path):
    with FileJournal.open(jdir, cfg(cache_events=4)) as j:
        assert (j.first_seq, j.last_seq) == (1, 0)
        written = fill(j, 50)
        assert j.read(0, 100) == written
        assert seqs(j.read(10, 5)) == [11, 12, 13, 14, 15]
        assert seqs(j.read(45, 100)) == [46, 47, 48, 49, 50]  # from the cache
        assert seqs(j.read(44, 3)) == [45, 46, 47]  # disk, then the cache
        assert j.read(50, 10) == [] and j.read(7, 0) == []
        assert seqs(j.read(-5, 2)) == [1, 2]
        assert (j.first_seq, j.last_seq) == (1, 50)
    assert segments(jdir) == ["00000000000000000001.events"]


def test_recent_history_is_read_from_memory(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg(cache_events=10)) as j:
        written = fill(j, 50)
        (jdir / "00000000000000000001.events").rename(jdir.parent / "moved")
        assert j.read(40, 100) == written[40:]  # no file needed
        assert not journal_log(caplog)
        assert j.read(30, 100) == written[40:]  # older ones are gone with the file
        assert any("cannot read journal segment" in m for m in journal_log(caplog))
    # After a restart, the newest events are loaded into memory once, when opening.
    (jdir.parent / "moved").rename(jdir / "00000000000000000001.events")
    with FileJournal.open(jdir, cfg(cache_events=10)) as j:
        (jdir / "00000000000000000001.events").rename(jdir.parent / "moved")
        assert j.read(40, 100) == written[40:]


def test_files_and_records_on_disk(jdir: Path):
    with FileJournal.open(jdir, cfg()) as j:
        fill(j, 2)
    assert stat.S_IMODE(jdir.stat().st_mode) == 0o700
    seg = jdir / "00000000000000000001.events"
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    lines = seg.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    crc, payload = lines[0].split(b" ", 1)
    assert int(crc, 16) == zlib.crc32(payload)
    assert json.loads(payload) == event_to_dict(lifecycle(1))


def test_reopen_continues_numbering_and_reads_back(jdir: Path):
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        written = fill(j, 20)
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert (j.first_seq, j.last_seq) == (1, 20)
        assert j.read(0, 100) == written
        with pytest.raises(asvirt.InvalidArgError):
            j.append(lifecycle(1))
        written += fill(j, 25)
    # A restart starts a new segment: files are never appended to by a later run.
    assert segments(jdir) == ["00000000000000000001.events", "00000000000000000021.events"]
    with FileJournal.open(jdir, cfg()) as j:
        assert j.read(0, 100) == written


@settings(max_examples=25, deadline=None)
@given(evs=st.lists(events(), min_size=1, max_size=30))
def test_every_kind_round_trips_through_the_files(tmp_path_factory, evs: list[DomainEvent]):
    directory = tmp_path_factory.mktemp("journal")
    evs = [dataclasses.replace(ev, seq=i) for i, ev in enumerate(evs, 1)]
    with FileJournal.open(directory, cfg(cache_events=1, retain_age=1e12)) as j:
        for ev in evs:
            j.append(ev)
    with FileJournal.open(directory, cfg(cache_events=1, retain_age=1e12)) as j:
        assert j.read(0, len(evs)) == evs


def test_every_kind_and_detail_round_trips(jdir: Path):
    evs: list[DomainEvent] = []
    for type_ in LifecycleEvent:
        for detail in type_.details:
            evs.append(
                DomainEvent(len(evs) + 1, T0, "vm1", UUID, EventKind.LIFECYCLE, type_, detail)
            )
    for net_type in NetworkLifecycleEvent:
        evs.append(
            DomainEvent(len(evs) + 1, T0, "net1", UUID, EventKind.NETWORK_LIFECYCLE, net_type)
        )
    for secret_type in SecretLifecycleEvent:
        evs.append(
            DomainEvent(len(evs) + 1, T0, UUID, UUID, EventKind.SECRET_LIFECYCLE, secret_type)
        )
    nested = {"device": "virtio-disk0", "x": [1, 2.5, None, True, {"y": ["z", -3]}], "é": "ü"}
    for kind in EventKind:
        if kind not in (
            EventKind.LIFECYCLE,
            EventKind.NETWORK_LIFECYCLE,
            EventKind.SECRET_LIFECYCLE,
        ):
            data = {"first": 1, "last": 3} if kind is EventKind.GAP else nested
            evs.append(DomainEvent(len(evs) + 1, T0 + 0.125, "vm1", UUID, kind, data=data))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        for ev in evs:
            j.append(ev)
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        back = j.read(0, 1000)
    assert back == evs
    assert [type(ev.detail) for ev in back] == [type(ev.detail) for ev in evs]
    assert [type(ev.type) for ev in back] == [type(ev.type) for ev in evs]


def test_unencodable_data_is_stored_as_text(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        j.append(DomainEvent(1, T0, "vm1", UUID, EventKind.WATCHDOG, data={"s": {1, 2}}))
        fill(j, 2)
    assert any("cannot encode" in m for m in journal_log(caplog))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        first, second = j.read(0, 10)
    assert first.data == {"unencodable": "{'s': {1, 2}}"} and second.seq == 2


def test_replay_from_disk_seeks_into_big_segments(jdir: Path):
    # Several segments of thousands of records, read back from arbitrary points, cold.
    config = cfg(cache_events=1, segment_bytes=400_000)
    with FileJournal.open(jdir, config) as j:
        written = fill(j, 9000)
    assert len(segments(jdir)) >= 3
    with FileJournal.open(jdir, config) as j:
        for after in (0, 1, 2500, 2501, 4999, 5000, 7777, 8998, 8999):
            assert j.read(after, 3) == written[after : after + 3], after
        # a replay in chunks, as a resuming client does it
        got, after = [], 100
        while chunk := j.read(after, 500):
            got += chunk
            after = chunk[-1].seq
        assert got == written[100:]


def test_not_our_files_are_ignored(jdir: Path, caplog: pytest.LogCaptureFixture):
    with FileJournal.open(jdir, cfg()) as j:
        fill(j, 3)
    (jdir / "README").write_text("not a segment")
    (jdir / "00000000000000000009.events.tmp").write_text("nor this")
    (jdir / "1.events").write_text("nor this")
    (jdir / "00000000000000000000.events").write_text("seqs start at 1")
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert j.last_seq == 3 and seqs(j.read(0, 10)) == [1, 2, 3]
        fill(j, 4)
    assert (jdir / "README").read_text() == "not a segment"


def test_second_open_is_refused(jdir: Path):
    with FileJournal.open(jdir, cfg()), pytest.raises(asvirt.ResourceBusyError):
        FileJournal.open(jdir, cfg())
    FileJournal.open(jdir, cfg()).close()  # free again once closed


def test_close_is_idempotent_and_final(jdir: Path):
    j = FileJournal.open(jdir, cfg())
    fill(j, 1)
    j.close()
    j.close()
    with pytest.raises(asvirt.OperationInvalidError):
        j.append(lifecycle(2))
    with pytest.raises(asvirt.OperationInvalidError):
        j.read(0, 1)


# -- rotation and retention ------------------------------------------------------------------------


def test_rotation_by_size(jdir: Path):
    record = _record_size()
    with FileJournal.open(jdir, cfg(segment_bytes=record * 4, cache_events=1)) as j:
        written = fill(j, 10)
        assert j.read(0, 100) == written
    assert segments(jdir) == [
        "00000000000000000001.events",
        "00000000000000000005.events",
        "00000000000000000009.events",
    ]
    assert all((jdir / name).stat().st_size <= record * 4 for name in segments(jdir))


def _record_size(seq: int = 1) -> int:
    """Bytes of the record of ``lifecycle(seq)``: 8 hex digits, a space, JSON, a newline."""
    payload = json.dumps(event_to_dict(lifecycle(seq)), separators=(",", ":")).encode()
    return len(payload) + 10


def test_rotation_by_age(jdir: Path):
    clock = Clock()
    with FileJournal.open(jdir, cfg(segment_age=3600.0), clock=clock) as j:
        fill(j, 3)
        clock.now += 3599
        fill(j, 4)
        clock.now += 1
        fill(j, 6)
        clock.now += 10 * 3600  # a long quiet time: the next event starts a new segment
        fill(j, 7)
        assert seqs(j.read(0, 10)) == list(range(1, 8))
    assert segments(jdir) == [
        "00000000000000000001.events",
        "00000000000000000005.events",
        "00000000000000000007.events",
    ]


def test_retention_by_size_removes_the_oldest_segments(jdir: Path):
    # Records 10-99 take `record` bytes, 1-9 one less: segments 1-10, 11-20, 21-30, ...
    record = _record_size(10)
    config = cfg(segment_bytes=record * 10, retain_bytes=record * 25, cache_events=5)
    with FileJournal.open(jdir, config) as j:
        fill(j, 30)
        assert j.first_seq == 1  # retention looks again when the next segment starts
        fill(j, 31)  # the 4th segment starts: 30 records are too many, the 1st segment goes
        assert j.first_seq == 11
        assert seqs(j.read(0, 3)) == [11, 12, 13]
        fill(j, 55)
        assert j.first_seq == 31
        assert seqs(j.read(0, 1)) == [31] and j.last_seq == 55
    assert segments(jdir) == [
        "00000000000000000031.events",
        "00000000000000000041.events",
        "00000000000000000051.events",
    ]
    with FileJournal.open(jdir, config) as j:
        assert (j.first_seq, j.last_seq) == (31, 55)


async def test_retention_unlinks_in_sync(jdir: Path):
    record = _record_size()
    j = FileJournal.open(jdir, cfg(segment_bytes=record * 2, retain_bytes=record * 2))
    fill(j, 6)  # segments 1-2, 3-4, 5-6: the first is one too many
    assert j.first_seq == 3
    # Given up already; the file goes with the next sync, in its worker thread.
    assert "00000000000000000001.events" in segments(jdir)
    await j.sync()
    assert segments(jdir) == ["00000000000000000003.events", "00000000000000000005.events"]
    j.close()


def test_retention_by_age_keeps_the_newest_segment(jdir: Path):
    clock = Clock()
    config = cfg(segment_age=100.0, retain_age=1000.0, cache_events=2)
    with FileJournal.open(jdir, config, clock=clock) as j:
        fill(j, 3, ts=clock.now)
        clock.now += 500
        fill(j, 6, ts=clock.now)
        clock.now += 600  # events 1-3 are 1100 s old now
        fill(j, 7, ts=clock.now)
        assert j.first_seq == 4 and seqs(j.read(0, 10)) == [4, 5, 6, 7]
    clock.now += 10_000  # everything has expired; the newest segment still carries the numbering
    with FileJournal.open(jdir, config, clock=clock) as j:
        assert segments(jdir) == ["00000000000000000007.events"]
        assert (j.first_seq, j.last_seq) == (7, 7)
        fill(j, 8, ts=clock.now)
        assert j.first_seq == 8  # the old newest segment went as soon as it was not the newest
    with FileJournal.open(jdir, config, clock=clock) as j:
        assert (j.first_seq, j.last_seq) == (8, 8)


# -- damage ----------------------------------------------------------------------------------------


def test_truncated_tail_is_skipped_and_appends_go_to_a_new_segment(
    jdir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        written = fill(j, 10)
    seg = jdir / "00000000000000000001.events"
    data = seg.read_bytes()
    last_line = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    seg.write_bytes(data[: len(data) - len(last_line) // 2])  # cut the last record in half
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert any("corrupt tail" in m and "partial record" in m for m in journal_log(caplog))
        assert j.last_seq == 9
        assert j.read(0, 100) == written[:9]
        again = fill(j, 12)
        assert j.read(0, 100) == written[:9] + again
    # the damaged file is left as it is; the new records are in a segment of their own
    assert seg.read_bytes() == data[: len(data) - len(last_line) // 2]
    assert segments(jdir) == [seg.name, "00000000000000000010.events"]
    caplog.clear()
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert j.read(0, 100) == written[:9] + again
        assert j.last_seq == 12


def test_zero_filled_tail_after_a_power_cut(jdir: Path, caplog: pytest.LogCaptureFixture):
    # Some filesystems show a file's new size before its data after a crash: zeros.
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        written = fill(j, 5)
    with (jdir / "00000000000000000001.events").open("ab") as f:
        f.write(bytes(100_000))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert any("corrupt tail" in m for m in journal_log(caplog))
        assert j.last_seq == 5 and j.read(0, 10) == written
        written += fill(j, 7)
        assert j.read(0, 10) == written


def test_directory_writable_by_others_is_reported(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    jdir.mkdir(mode=0o777)
    jdir.chmod(0o777)
    FileJournal.open(jdir, cfg()).close()
    assert any("writable by others" in m for m in journal_log(caplog))
    assert stat.S_IMODE(jdir.stat().st_mode) == 0o777  # reported, not changed


def test_corrupted_record_is_skipped_with_a_warning(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        written = fill(j, 10)
    seg = jdir / "00000000000000000001.events"
    data = bytearray(seg.read_bytes())
    lines = bytes(data).split(b"\n")
    fifth = sum(len(line) + 1 for line in lines[:4]) + 40  # a byte inside record 5's JSON
    data[fifth] ^= 0x01
    seg.write_bytes(bytes(data))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert j.last_seq == 10  # the tail is fine
        got = j.read(0, 100)
        assert got == written[:4] + written[5:]
        warnings = [m for m in journal_log(caplog) if "record skipped" in m]
        assert len(warnings) == 1 and "checksum mismatch" in warnings[0]
        j.read(0, 100)  # reported once, not at every read
        assert len([m for m in journal_log(caplog) if "record skipped" in m]) == 1
        fill(j, 11)
        assert j.read(9, 10) == [*written[9:], lifecycle(11)]


def test_corrupted_last_record(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        written = fill(j, 5)
    seg = jdir / "00000000000000000001.events"
    data = bytearray(seg.read_bytes())
    data[-20] ^= 0x20
    seg.write_bytes(bytes(data))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert any("corrupt tail" in m and "checksum" in m for m in journal_log(caplog))
        assert j.last_seq == 4 and j.read(0, 10) == written[:4]
        fill(j, 6)
        assert seqs(j.read(0, 10)) == [1, 2, 3, 4, 5, 6]
    assert segments(jdir)[-1] == "00000000000000000005.events"


def test_records_out_of_sequence_are_skipped(jdir: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        fill(j, 3)
    seg = jdir / "00000000000000000001.events"
    # A well-formed record with a seq that does not follow (copied, replayed, planted).
    payload = json.dumps(event_to_dict(lifecycle(2)), separators=(",", ":")).encode()
    with seg.open("ab") as f:
        f.write(b"%08x %s\n" % (zlib.crc32(payload), payload))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert any("does not increase" in m for m in journal_log(caplog))
        assert j.last_seq == 3 and seqs(j.read(0, 10)) == [1, 2, 3]


def test_empty_newest_segment_is_not_reused(jdir: Path):
    with FileJournal.open(jdir, cfg()) as j:
        fill(j, 3)
    # A crash between creating a segment and writing its first record leaves it empty.
    (jdir / "00000000000000000004.events").touch(mode=0o600)
    with FileJournal.open(jdir, cfg()) as j:
        assert j.last_seq == 4  # 4 may have been handed out already: never again
        fill(j, 5)
        assert seqs(j.read(0, 10)) == [1, 2, 3, 5]


# -- symlinks --------------------------------------------------------------------------------------


def test_journal_directory_symlink_is_refused(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(asvirt.AsvirtError, match="symlink"):
        FileJournal.open(tmp_path / "link", cfg())
    (tmp_path / "file").write_text("")
    with pytest.raises(asvirt.OperationFailedError, match="not a directory"):
        FileJournal.open(tmp_path / "file", cfg())
    assert list(real.iterdir()) == []


def test_symlink_at_an_existing_segment_is_not_followed(
    jdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg()) as j:
        fill(j, 3)
    elsewhere = tmp_path / "elsewhere.events"
    elsewhere.write_bytes((jdir / "00000000000000000001.events").read_bytes())
    (jdir / "00000000000000000001.events").unlink()
    (jdir / "00000000000000000001.events").symlink_to(elsewhere)
    os.mkfifo(jdir / "00000000000000000002.events")  # would hang a blocking open
    with FileJournal.open(jdir, cfg()) as j:
        ignored = [m for m in journal_log(caplog) if "symlinks are not followed" in m]
        assert len(ignored) == 2
        assert j.last_seq == 0 and j.read(0, 10) == []
        # Its name is taken by something that is not ours: no segment can start there.
        fill(j, 1)
        assert j.degraded
    assert elsewhere.read_bytes().count(b"\n") == 3


def test_symlink_planted_at_the_next_segment_is_refused(
    jdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    record = _record_size()
    target = tmp_path / "target"
    with FileJournal.open(jdir, cfg(segment_bytes=record * 2)) as j:
        written = fill(j, 2)
        (jdir / "00000000000000000003.events").symlink_to(target)
        written += fill(j, 5)
        # Nothing was written through the link; the events wait in memory.
        assert not target.exists()
        assert j.degraded and j.pending == 3
        assert j.read(0, 10) == written
        errors = [m for m in journal_log(caplog) if "write failed" in m]
        assert len(errors) == 1 and "did not create" in errors[0]
        # Once the link is gone, the backlog is written in order with the next append.
        (jdir / "00000000000000000003.events").unlink()
        written += fill(j, 6)
        assert not j.degraded and j.pending == 0
        assert any("work again" in m for m in journal_log(caplog))
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert j.read(0, 10) == written


def test_backlog_is_bounded(
    jdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    monkeypatch.setattr(journal_module, "_PENDING_LIMIT", 5)
    # Whatever segment the journal would start next is blocked by a planted symlink.
    blockers = [jdir / f"{seq:020d}.events" for seq in range(2, 12)]
    with FileJournal.open(jdir, cfg(cache_events=3)) as j:
        fill(j, 1)
        j._retire_active()  # the next append needs a new segment
        for blocker in blockers:
            blocker.symlink_to(jdir / "nowhere")
        fill(j, 9)
        assert j.pending == 5 and j.first_seq == 1
        assert seqs(j.read(0, 100)) == [1, 5, 6, 7, 8, 9]  # 2-4 are lost for good
        assert len([m for m in journal_log(caplog) if "backlog is full" in m]) == 1
        for blocker in blockers:
            blocker.unlink()
        fill(j, 10)
        assert j.pending == 0 and not j.degraded
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert seqs(j.read(0, 100)) == [1, 5, 6, 7, 8, 9, 10]


async def test_run_retries_failed_writes_by_itself(
    jdir: Path, autojump_clock: trio.testing.MockClock
):
    blocker = jdir / "00000000000000000002.events"
    j = FileJournal.open(jdir, cfg(fsync_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(j.run)
        fill(j, 1)
        await j.wait_synced(1)
        j._retire_active()
        blocker.symlink_to(jdir / "nowhere")
        fill(j, 3)
        with pytest.raises(asvirt.OperationFailedError, match="2 journal events are not on disk"):
            await j.sync()
        await trio.sleep(30)  # run() keeps trying, ever less often
        assert j.degraded and j.synced_seq == 1
        blocker.unlink()
        # No further append: run() writes the backlog on its own.
        await j.wait_synced(3)
        assert not j.degraded and j.pending == 0
        nursery.cancel_scope.cancel()
    j.close()
    assert segments(jdir) == ["00000000000000000001.events", "00000000000000000002.events"]


# -- durability ------------------------------------------------------------------------------------


async def test_sync_fsyncs_everything_appended_in_one_round(jdir: Path):
    j = FileJournal.open(jdir, cfg())
    fill(j, 500)
    assert j.synced_seq == 0
    await j.sync()
    assert j.synced_seq == 500 and j._sync_rounds == 1
    await j.sync()  # nothing new: no round at all
    assert j._sync_rounds == 1
    j.close()


async def test_run_batches_fsyncs(jdir: Path, autojump_clock: trio.testing.MockClock):
    j = FileJournal.open(jdir, cfg(fsync_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(j.run)
        t0 = trio.current_time()
        fill(j, 100)
        await j.wait_synced(100)
        # one fsync round, one interval after the first append (the clock is virtual)
        assert j._sync_rounds == 1
        assert trio.current_time() - t0 == pytest.approx(0.05)
        # appends spread over less than the interval share one round too
        for seq in range(101, 106):
            fill(j, seq)
            await trio.sleep(0.009)
        await j.wait_synced(105)
        assert j._sync_rounds == 2
        # quiet for a while: no rounds without appends
        await trio.sleep(3600)
        assert j._sync_rounds == 2
        fill(j, 106)
        await j.wait_synced(106)
        assert j._sync_rounds == 3
        nursery.cancel_scope.cancel()
    j.close()


async def test_run_with_the_real_clock(jdir: Path):
    j = FileJournal.open(jdir, cfg(fsync_interval=0.02))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(j.run)
            for _ in range(20):
                fill(j, j.last_seq + 50)
                await trio.lowlevel.checkpoint()
            await j.wait_synced(1000)
            assert 1 <= j._sync_rounds <= 20
            nursery.cancel_scope.cancel()
    j.close()


async def test_close_during_a_sync_in_flight(jdir: Path):
    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    before = open_fds()
    record = _record_size(10)
    j = FileJournal.open(jdir, cfg(segment_bytes=record * 3))
    fill(j, 20)  # several rotated segments, their descriptors waiting for the sync
    async with trio.open_nursery() as nursery:
        nursery.start_soon(j.sync)
        while not j._sync_running:  # until its worker thread holds the descriptors
            await trio.lowlevel.checkpoint()
        j.close()  # must not close what the thread is using...
    assert open_fds() == before  # ...and nothing is left open once the sync is done
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert seqs(j.read(0, 100)) == list(range(1, 21))


async def test_wait_synced_ends_with_close(jdir: Path):
    j = FileJournal.open(jdir, cfg())
    fill(j, 1)
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            with pytest.raises(asvirt.OperationInvalidError):
                await j.wait_synced(2)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        j.close()
    assert j.synced_seq == 1


# -- write failures, for real: RLIMIT_FSIZE in a child process -------------------------------------

_FSIZE_CHILD = r"""
import json, logging, os, resource, signal, sys, time
from asvirt.config import JournalConfig
from asvirt.events import DomainEvent, EventKind, FileJournal

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="LOG %(message)s")
# Past RLIMIT_FSIZE, write(2) fails with EFBIG (and SIGXFSZ, which would kill us).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
directory = sys.argv[1]
j = FileJournal.open(directory, JournalConfig(cache_events=2))
ev = lambda seq: DomainEvent(seq, time.time(), "vm1", "u", EventKind.REBOOT, data={"n": "x" * 40})
out = {}
j.append(ev(1))
segment = os.path.join(directory, "00000000000000000001.events")
size = os.path.getsize(segment)

# 1. Every write fails as a whole: the events wait in memory, one error for the streak.
resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
for seq in range(2, 6):
    j.append(ev(seq))
out["degraded"], out["pending"] = j.degraded, j.pending
out["read"] = [e.seq for e in j.read(0, 100)]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
j.append(ev(6))
out["recovered"], out["pending_after"] = not j.degraded, j.pending

# 2. A write that fits only in part: a partial record is on disk; the event goes to a new
# segment with the next append.
size = os.path.getsize(segment)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, hard))
j.append(ev(7))
out["short_degraded"] = j.degraded
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
j.append(ev(8))
out["short_recovered"] = not j.degraded
j.close()
print(json.dumps(out))
"""


def test_write_failures_keep_events_until_the_disk_takes_them(
    jdir: Path, caplog: pytest.LogCaptureFixture
):
    child = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(jdir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out == {
        "degraded": True,
        "pending": 4,
        "read": [1, 2, 3, 4, 5],
        "recovered": True,
        "pending_after": 0,
        "short_degraded": True,
        "short_recovered": True,
    }
    logged = [line for line in child.stderr.splitlines() if line.startswith("LOG")]
    failed = [line for line in logged if "write failed" in line]
    assert len(failed) == 2, logged  # once per streak
    assert "File too large" in failed[0]
    assert len([line for line in logged if "work again" in line]) == 2
    assert segments(jdir) == ["00000000000000000001.events", "00000000000000000007.events"]
    caplog.set_level(logging.WARNING, logger="asvirt.journal")
    with FileJournal.open(jdir, cfg(cache_events=1)) as j:
        assert seqs(j.read(0, 100)) == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [ev.data for ev in j.read(0, 100)] == [{"n": "x" * 40}] * 8
    # the partial record the short write left behind is reported, then skipped
    assert any("partial record" in m for m in journal_log(caplog))


# -- a random walk against a model ---------------------------------------------------------------


class JournalMachine(RuleBasedStateMachine):
    """Appends, reads, restarts and the passing of time, against a list of what was appended."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="asvirt-journal-"))
        self.clock = Clock()
        # Small segments and cache: most reads go to disk and cross segments.
        self.config = cfg(segment_bytes=700, segment_age=100.0, cache_events=3, retain_age=1e12)
        self.journal = FileJournal.open(self.tmp / "j", self.config, clock=self.clock)
        self.model: list[DomainEvent] = []

    @rule(evs=st.lists(events(), min_size=1, max_size=6))
    def append(self, evs: list[DomainEvent]) -> None:
        for ev in evs:
            ev = dataclasses.replace(ev, seq=len(self.model) + 1)
            self.journal.append(ev)
            self.model.append(ev)

    @rule()
    def reopen(self) -> None:
        self.journal.close()
        self.journal = FileJournal.open(self.tmp / "j", self.config, clock=self.clock)

    @rule(seconds=st.floats(min_value=0, max_value=150))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(after=st.integers(min_value=-1, max_value=80), limit=st.integers(0, 25))
    def read(self, after: int, limit: int) -> None:
        expected = [ev for ev in self.model if ev.seq > after][:limit]
        assert self.journal.read(after, limit) == expected

    @invariant()
    def numbering(self) -> None:
        assert self.journal.last_seq == len(self.model)
        assert self.journal.first_seq == 1
        assert not self.journal.degraded

    def teardown(self) -> None:
        self.journal.close()
        names = segments(self.tmp / "j") if (self.tmp / "j").exists() else []
        assert all(_SEGMENT_NAME.fullmatch(name) for name in names)
        shutil.rmtree(self.tmp)


JournalMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_journal_matches_a_model = JournalMachine.TestCase
