"""The event bus on its own: order, numbering, filters, bounded buffers, replay."""

from __future__ import annotations

import pytest
import trio

from asvirt.events import (
    EventBus,
    EventKind,
    LifecycleEvent,
    StartedDetail,
    StoppedDetail,
)


def publish(bus: EventBus, domain: str = "a", kind: EventKind = EventKind.REBOOT) -> int:
    return bus.publish(domain=domain, uuid=f"uuid-{domain}", kind=kind).seq


async def test_sequence_numbers_and_order():
    bus = EventBus()
    sub = bus.subscribe()
    seqs = [publish(bus) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    got = [(await sub.receive()).seq for _ in range(5)]
    assert got == seqs


async def test_filters_by_domain_name_uuid_and_kind():
    bus = EventBus()
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


async def test_raw_qmp_events_only_when_asked():
    bus = EventBus()
    default = bus.subscribe()
    raw = bus.subscribe(kinds={EventKind.QMP})
    publish(bus, kind=EventKind.QMP)
    assert default.pending() == 0 and raw.pending() == 1


async def test_slow_subscriber_loses_oldest_and_counts_them():
    bus = EventBus(buffer=3)
    slow = bus.subscribe()
    fast = bus.subscribe(buffer=100)
    for _ in range(10):
        publish(bus)
    assert slow.lost == 7 and slow.pending() == 3
    assert [(await slow.receive()).seq for _ in range(3)] == [8, 9, 10]
    assert fast.lost == 0 and fast.pending() == 10


async def test_since_replays_remembered_history():
    bus = EventBus(history=4)
    for _ in range(6):
        publish(bus)
    sub = bus.subscribe(since=3)
    assert [(await sub.receive()).seq for _ in range(sub.pending())] == [4, 5, 6]
    old = bus.subscribe(since=0)  # only the newest 4 are remembered
    assert old.pending() == 4


async def test_lifecycle_detail_must_match_type():
    bus = EventBus()
    with pytest.raises(TypeError):
        bus.publish(
            domain="a",
            uuid="u",
            kind=EventKind.LIFECYCLE,
            type=LifecycleEvent.STARTED,
            detail=StoppedDetail.DESTROYED,
        )


async def test_iterator_ends_when_closed_and_wakes_waiter():
    bus = EventBus()
    sub = bus.subscribe()
    received = []

    async def consume() -> None:
        async for ev in sub:
            received.append(ev.seq)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(0.01)
        publish(bus)
        await trio.sleep(0.01)
        bus.close()
    assert received == [1]


async def test_details_of_different_types_never_compare_equal():
    # Both are libvirt's 0; enums of different event types must not be confused.
    assert StartedDetail.BOOTED != StoppedDetail.SHUTDOWN
    assert int(StartedDetail.BOOTED) == int(StoppedDetail.SHUTDOWN) == 0
