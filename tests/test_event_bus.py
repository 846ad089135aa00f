"""The event bus on its own: numbering, order, filters, bounded buffers, journal replay."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from asvirt.events import (
    EventBus,
    EventKind,
    LifecycleEvent,
    StartedDetail,
    StoppedDetail,
)
from asvirt.events.journal import MemoryJournal


def new_bus(*, retain: int = 1024, buffer: int = 1024) -> EventBus:
    return EventBus(MemoryJournal(retain), buffer=buffer)


def publish(bus: EventBus, domain: str = "a", kind: EventKind = EventKind.REBOOT) -> int:
    event = bus.publish(domain=domain, uuid=f"uuid-{domain}", kind=kind)
    assert event is not None
    return event.seq


def received(sub) -> list[int]:
    out = []
    while True:
        try:
            out.append(sub.receive_nowait().seq)
        except trio.WouldBlock:
            return out


async def test_sequence_numbers_and_order():
    bus = new_bus()
    sub = bus.subscribe()
    seqs = [publish(bus) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    got = [(await sub.receive()).seq for _ in range(5)]
    assert got == seqs


async def test_numbering_goes_on_from_the_journal():
    journal = MemoryJournal(10)
    first = EventBus(journal)
    publish(first)
    publish(first)
    again = EventBus(journal)  # the node reopened on the same journal
    assert publish(again) == 3


async def test_filters_by_domain_name_uuid_and_kind():
    bus = new_bus()
    by_name = bus.subscribe(domain="a")
    by_uuid = bus.subscribe(domain="uuid-b")
    lifecycle_only = bus.subscribe(kinds=[EventKind.LIFECYCLE])
    publish(bus, "a")
    publish(bus, "b")
    bus.publish(
        domain="b",
        uuid="uuid-b",
        kind=EventKind.LIFECYCLE,
        type=LifecycleEvent.STARTED,
        detail=StartedDetail.BOOTED,
    )
    assert by_name.pending() == 1
    assert by_uuid.pending() == 2
    assert lifecycle_only.pending() == 1


async def test_raw_qmp_events_only_when_asked_and_numbered_only_then():
    bus = new_bus()
    default = bus.subscribe()
    assert bus.publish(domain="a", uuid="u", kind=EventKind.QMP) is None  # nobody asked
    assert bus.last_seq == 0
    raw = bus.subscribe(kinds={EventKind.QMP})
    assert publish(bus, kind=EventKind.QMP) == 1
    assert default.pending() == 0 and raw.pending() == 1
    raw.close()
    assert bus.publish(domain="a", uuid="u", kind=EventKind.QMP) is None


async def test_slow_subscriber_loses_oldest_and_counts_them():
    bus = new_bus(buffer=3)
    slow = bus.subscribe()
    fast = bus.subscribe(buffer=100)
    for _ in range(10):
        publish(bus)
    assert slow.lost == 7 and slow.pending() == 3
    assert [(await slow.receive()).seq for _ in range(3)] == [8, 9, 10]
    assert fast.lost == 0 and fast.pending() == 10


async def test_a_subscriber_that_lost_events_gets_them_back_with_since():
    bus = new_bus(buffer=2)
    slow = bus.subscribe()
    for _ in range(6):
        publish(bus)
    last_seen = (await slow.receive()).seq  # 5: 1-4 were dropped
    assert slow.lost == 4
    slow.close()
    again = bus.subscribe(since=0, buffer=2)
    assert received(again) == [1, 2, 3, 4, 5, 6]
    assert again.lost == 0  # the replay comes from the journal, not the buffer
    assert last_seen == 5


async def test_since_replays_the_journal_then_goes_live():
    bus = new_bus()
    for _ in range(6):
        publish(bus)
    sub = bus.subscribe(since=3)
    assert sub.replaying
    publish(bus)  # live, while the replay has not been read yet
    assert received(sub) == [4, 5, 6, 7]
    assert not sub.replaying


async def test_since_older_than_the_journal_starts_with_a_gap_marker():
    bus = new_bus(retain=4)
    for _ in range(10):
        publish(bus)
    sub = bus.subscribe(since=2)
    gap = sub.receive_nowait()
    assert gap.kind is EventKind.GAP
    assert gap.data == {"first": 3, "last": 6}
    assert gap.seq == 6  # a cursor stored from it moves past what is gone
    assert "events 3-6 are no longer retained" in gap.describe()
    assert received(sub) == [7, 8, 9, 10]


async def test_filtered_replay_still_reports_the_gap():
    bus = new_bus(retain=2)
    for _ in range(5):
        publish(bus, "a")
    sub = bus.subscribe(domain="zzz", since=0)
    assert sub.receive_nowait().kind is EventKind.GAP
    assert received(sub) == []


async def test_replay_and_live_meet_without_gap_or_duplicate_under_concurrent_publishing():
    bus = new_bus(retain=100_000, buffer=100_000)
    for _ in range(1000):  # several replay chunks
        publish(bus)
    sub = bus.subscribe(since=10)
    got: list[int] = []

    async def publisher() -> None:
        for _ in range(500):
            publish(bus)
            await trio.lowlevel.checkpoint()

    async def consumer() -> None:
        while len(got) < 1490:
            got.append((await sub.receive()).seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        nursery.start_soon(consumer)
    assert got == list(range(11, 1501))


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("publish"), st.sampled_from(["a", "b"])),
            st.tuples(st.just("subscribe"), st.integers(min_value=0, max_value=40)),
            st.tuples(st.just("receive"), st.integers(min_value=0, max_value=5)),
        ),
        max_size=80,
    ),
    retain=st.integers(min_value=1, max_value=30),
)
def test_every_subscription_sees_exactly_what_followed_its_cursor(ops, retain):
    """Random interleavings: each subscriber receives, in order and once each, every event
    numbered after its cursor that the journal still held when it read it, and a gap marker
    for the ones it no longer held."""
    bus = new_bus(retain=retain, buffer=10_000)
    subs: list[tuple[int, object, list[int]]] = []
    for op, arg in ops:
        if op == "publish":
            publish(bus, arg)
        elif op == "subscribe":
            since = min(arg, bus.last_seq)
            subs.append((since, bus.subscribe(since=since), []))
        elif subs:
            since, sub, got = subs[arg % len(subs)]
            got.extend(_drain_with_gaps(sub))
    for since, sub, got in subs:
        got.extend(_drain_with_gaps(sub))
        # Each number after the cursor appears exactly once (as itself or inside a gap).
        assert got == list(range(since + 1, bus.last_seq + 1)), (since, got)


def _drain_with_gaps(sub) -> list[int]:
    out: list[int] = []
    while True:
        try:
            ev = sub.receive_nowait()
        except trio.WouldBlock:
            return out
        if ev.kind is EventKind.GAP:
            out.extend(range(ev.data["first"], ev.data["last"] + 1))
        else:
            out.append(ev.seq)


async def test_lifecycle_detail_must_match_type():
    bus = new_bus()
    with pytest.raises(TypeError):
        bus.publish(
            domain="a",
            uuid="u",
            kind=EventKind.LIFECYCLE,
            type=LifecycleEvent.STARTED,
            detail=StoppedDetail.DESTROYED,
        )


async def test_iterator_ends_when_closed_and_wakes_waiter():
    bus = new_bus()
    sub = bus.subscribe()
    got = []

    async def consume() -> None:
        async for ev in sub:
            got.append(ev.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        publish(bus)
        await trio.testing.wait_all_tasks_blocked()
        bus.close()
    assert got == [1]


async def test_details_of_different_types_never_compare_equal():
    # Both are libvirt's 0; enums of different event types must not be confused.
    assert StartedDetail.BOOTED != StoppedDetail.SHUTDOWN
    assert int(StartedDetail.BOOTED) == int(StoppedDetail.SHUTDOWN) == 0
