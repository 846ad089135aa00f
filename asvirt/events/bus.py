"""A node's event bus: numbered at the source, journaled, fanned out to bounded subscriptions.

Every event a node publishes gets the node's next sequence number, is appended to the node's
:class:`~asvirt.events.journal.Journal`, and only then is offered to the subscriptions. Every
connection to the node sees the same number for the same event, and a client can resume from
the last number it saw (``since=``), even from another process after the node was reopened.

libvirt's event delivery is fire-and-forget: a slow client loses events without knowing. Here
every subscriber has a bounded buffer of its own (a slow subscriber never slows QEMU, the
supervisor or other subscribers), and a subscriber that falls behind drops its *oldest*
undelivered events and counts them in :attr:`Subscription.lost`; it can close and subscribe
again with ``since=`` its last seen ``seq`` to get them back from the journal. (A filtered
subscription also sees gaps in ``seq``: the numbers of events it did not ask for; ``lost`` is
what tells loss apart.)

A subscription with ``since=N`` first replays, from the journal, the retained events numbered
above N, then goes on with live events, with no gap and no duplicate at the seam: live events
published during the replay wait in its buffer. If events above N are no longer retained, the
first item it yields is an :data:`~asvirt.EventKind.GAP` event saying which numbers are gone.

Publishing is synchronous and never blocks, so producers (QMP listeners, API calls) can
publish from anywhere in the trio thread. A subscription waits through anyio, so the remote
driver's subscriptions work under asyncio as under trio.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

from .types import (
    DomainEvent,
    EventDetail,
    EventKind,
    EventType,
    LifecycleEvent,
    NetworkLifecycleEvent,
    SecretLifecycleEvent,
)

#: Kinds a subscription with ``kinds=None`` receives: everything but raw QMP pass-through,
#: which (like libvirt's qemu-monitor-event) must be asked for by name, and network events,
#: and secret events, which libvirt registers apart from domain events (and whose ``domain``
#: field names a network or secret: a program written for domain events must not mistake one
#: for a domain).
DEFAULT_KINDS: frozenset[EventKind] = frozenset(EventKind) - {
    EventKind.QMP,
    EventKind.NETWORK_LIFECYCLE,
    EventKind.SECRET_LIFECYCLE,
    EventKind.SECRET_VALUE_CHANGED,
}

#: Events read from the journal at a time while replaying.
_REPLAY_CHUNK = 256

if TYPE_CHECKING:
    from .journal import Journal


@functools.cache
def _stream_ends(with_trio: bool) -> tuple[type[Exception], type[Exception]]:
    """What :meth:`Subscription.receive_nowait` raises: (nothing yet, closed and drained).

    anyio's ``WouldBlock`` and ``EndOfStream``, which are also trio's ``WouldBlock`` and
    ``EndOfChannel`` once trio is loaded: code written for either library catches them, and an
    asyncio program never has to import trio for them.
    """
    would_block: tuple[type[Exception], ...] = (anyio.WouldBlock,)
    end: tuple[type[Exception], ...] = (anyio.EndOfStream,)
    if with_trio:
        trio = sys.modules["trio"]
        would_block += (trio.WouldBlock,)
        end += (trio.EndOfChannel,)
    return (
        type("WouldBlock", would_block, {"__module__": __name__}),
        type("EndOfSubscription", end, {"__module__": __name__}),
    )


def _ends() -> tuple[type[Exception], type[Exception]]:
    return _stream_ends("trio" in sys.modules)


class _HasUUID(Protocol):
    @property
    def uuid(self) -> str: ...

    @property
    def name(self) -> str: ...


DomainFilter = str | _HasUUID | None


class EventSource(Protocol):
    """Where a subscription's events come from: a node's bus, or a daemon's stream."""

    @property
    def last_seq(self) -> int: ...

    @property
    def journal(self) -> Journal: ...

    def gap_event(self, first: int, last: int) -> DomainEvent: ...

    def _remove(self, sub: Subscription) -> None: ...


class Subscription:
    """A stream of a node's events, filtered by domain and kind.

    Use it as an async iterator, inside ``async with`` so that it is closed when you are done::

        async with conn.subscribe(kinds={asvirt.EventKind.LIFECYCLE}) as events:
            async for ev in events:
                ...

    The iterator ends when the subscription or its connection is closed. Store ``ev.seq`` of
    the last event you handled: ``subscribe(since=that)`` resumes right after it.
    """

    def __init__(
        self,
        bus: EventSource,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
        since: int | None,
        buffer: int,
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self._bus = bus
        self._kinds = DEFAULT_KINDS if kinds is None else frozenset(kinds)
        self._uuid: str | None = None
        self._name: str | None = None
        if domain is not None and not isinstance(domain, str):
            self._uuid = domain.uuid
        elif isinstance(domain, str):
            # A string may be a name or a UUID; it matches either.
            self._name = domain
        self._queue: collections.deque[DomainEvent] = collections.deque(maxlen=buffer)
        #: Set when an event arrives or the subscription closes, if a receiver waits.
        self._wakeup: anyio.Event | None = None
        self._closed = False
        # Replay state: the journal is read from _cursor (exclusive) up to _replay_end
        # (inclusive); live events, all numbered above _replay_end, wait in _queue meanwhile.
        self._cursor = bus.last_seq if since is None else max(0, since)
        self._replay_end = bus.last_seq
        self._replayed: collections.deque[DomainEvent] = collections.deque()
        self._direct: Callable[[DomainEvent], None] | None = None
        #: Events this subscriber lost because its buffer was full.
        self.lost = 0

    @property
    def wants_qmp(self) -> bool:
        return EventKind.QMP in self._kinds

    def matches(self, event: DomainEvent) -> bool:
        if event.kind is EventKind.GAP:
            return True  # about the stream itself, whatever the filter
        if event.kind not in self._kinds:
            return False
        if self._uuid is not None:
            return event.uuid == self._uuid
        if self._name is not None:
            return self._name in (event.domain, event.uuid)
        return True

    def deliver_directly(self, deliver: Callable[[DomainEvent], None]) -> None:
        """From now on, hand each matching event to ``deliver`` as it is published, instead
        of buffering it (the daemon forwards a client's events this way, so that the events
        a call causes reach the client before the call's answer). Only once the buffer is
        empty and the replay done."""
        if self.replaying or self._queue:
            raise RuntimeError("deliver_directly() before the buffered events were received")
        self._direct = deliver

    def _offer(self, event: DomainEvent) -> bool:
        """Deliver or buffer ``event`` if it matches; True if an older one had to be dropped."""
        if self._closed or not self.matches(event):
            return False
        if self._direct is not None:
            self._direct(event)
            return False
        dropped = len(self._queue) == self._queue.maxlen
        if dropped:
            self.lost += 1  # the deque drops the oldest on append
        self._queue.append(event)
        self._wake()
        return dropped

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def replaying(self) -> bool:
        """True while retained events older than the subscription are still to be read."""
        return bool(self._replayed) or self._cursor < self._replay_end

    def pending(self) -> int:
        """How many live events are buffered and not yet received (replay not counted)."""
        return len(self._queue)

    def receive_nowait(self) -> DomainEvent:
        """The next event; raises ``WouldBlock`` (anyio's, and trio's under trio) if there is
        none yet, ``EndOfStream`` (anyio's; trio's ``EndOfChannel``) once closed and drained."""
        event = self._next_replayed()
        if event is not None:
            return event
        if self._queue:
            return self._queue.popleft()
        would_block, end = _ends()
        if self._closed:
            raise end
        raise would_block

    async def receive(self) -> DomainEvent:
        """Wait for the next event; raises ``EndOfStream`` (anyio's; trio's ``EndOfChannel``)
        once closed and drained."""
        while True:
            try:
                event = self.receive_nowait()
            except anyio.WouldBlock:
                if self._wakeup is None:
                    self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            await anyio.lowlevel.checkpoint()
            return event

    def _next_replayed(self) -> DomainEvent | None:
        while not self._replayed and self._cursor < self._replay_end:
            journal = self._bus.journal
            first = journal.first_seq
            if self._cursor + 1 < first:
                # Older than what the journal retains: say so, then go on from what it has.
                missing_to = min(first - 1, self._replay_end)
                gap = self._bus.gap_event(self._cursor + 1, missing_to)
                self._cursor = missing_to
                return gap
            chunk = journal.read(self._cursor, _REPLAY_CHUNK)
            if not chunk:
                self._cursor = self._replay_end  # nothing more retained (cannot happen)
                break
            for event in chunk:
                if event.seq > self._replay_end:
                    break
                if self.matches(event):
                    self._replayed.append(event)
            self._cursor = min(chunk[-1].seq, self._replay_end)
        if self._replayed:
            return self._replayed.popleft()
        return None

    def close(self) -> None:
        """Stop receiving; wakes a waiting iterator, which ends once the buffer is drained."""
        if not self._closed:
            self._closed = True
            self._replayed.clear()
            self._cursor = self._replay_end
            self._bus._remove(self)
            self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> DomainEvent:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Numbers a node's events, journals them, and hands them to subscriptions."""

    def __init__(self, journal: Journal, *, buffer: int = 1024) -> None:
        self.journal = journal
        self._subs: list[Subscription] = []
        self._qmp_subscribers = 0
        self._default_buffer = buffer
        self._closed = False
        #: Events published through this bus (raw QMP events nobody asked for not counted).
        self.published = 0
        #: Events subscribers lost because their buffers were full (see Subscription.lost).
        self.lost = 0
        #: Replays that found events no longer retained (each yielded a GAP event).
        self.gaps = 0

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subs)

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self.journal.last_seq

    def use_journal(self, journal: Journal) -> None:
        """Keep events in ``journal`` from now on (a node opens its durable journal with its
        other resources, before it publishes anything)."""
        if self.journal.last_seq or self._subs:
            raise RuntimeError("the journal can be chosen only before the bus is used")
        self.journal = journal

    def wants(self, kind: EventKind) -> bool:
        """False for raw QMP events while nobody subscribed to them: they are not even kept."""
        return kind is not EventKind.QMP or self._qmp_subscribers > 0

    def publish(
        self,
        *,
        domain: str,
        uuid: str,
        kind: EventKind,
        type: EventType | None = None,
        detail: EventDetail | None = None,
        data: dict[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> DomainEvent | None:
        """Number an event, journal it, deliver it to every matching subscription.

        Never blocks. Returns the event, or None for a raw QMP event nobody asked for.
        """
        if kind is EventKind.LIFECYCLE and (
            not isinstance(type, LifecycleEvent) or not isinstance(detail, type.details)
        ):
            raise TypeError(f"lifecycle event needs a type and a matching detail: {type} {detail}")
        if kind is EventKind.NETWORK_LIFECYCLE and not isinstance(type, NetworkLifecycleEvent):
            raise TypeError(f"network lifecycle event needs a NetworkLifecycleEvent: {type}")
        if kind is EventKind.SECRET_LIFECYCLE and not isinstance(type, SecretLifecycleEvent):
            raise TypeError(f"secret lifecycle event needs a SecretLifecycleEvent: {type}")
        if not self.wants(kind):
            return None
        event = DomainEvent(
            seq=self.journal.last_seq + 1,
            timestamp=time.time() if timestamp is None else timestamp,
            domain=domain,
            uuid=uuid,
            kind=kind,
            type=type,
            detail=detail,
            data=data,
        )
        self.journal.append(event)
        self.published += 1
        if not self._closed:
            for sub in self._subs:
                if sub._offer(event):
                    self.lost += 1
        return event

    def gap_event(self, first: int, last: int) -> DomainEvent:
        """The marker a replay yields for events ``first..last`` that are no longer kept."""
        self.gaps += 1
        return DomainEvent(
            seq=last,
            timestamp=time.time(),
            domain="",
            uuid="",
            kind=EventKind.GAP,
            data={"first": first, "last": last},
        )

    def subscribe(
        self,
        *,
        domain: DomainFilter = None,
        kinds: Iterable[EventKind] | None = None,
        since: int | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """A new subscription; it receives every matching event published from now on.

        With ``since=N`` it first receives the matching events with ``seq > N`` that the
        journal still holds (``since=0``: all of them), so a client can resume after a
        reconnect or a restart, or see what happened before it subscribed.
        """
        sub = Subscription(
            self, domain=domain, kinds=kinds, since=since, buffer=buffer or self._default_buffer
        )
        if self._closed:
            sub.close()
        else:
            self._subs.append(sub)
            if sub.wants_qmp:
                self._qmp_subscribers += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)
            if sub.wants_qmp:
                self._qmp_subscribers -= 1

    def close(self) -> None:
        """End every subscription; later publications are journaled but not delivered."""
        self._closed = True
        for sub in list(self._subs):
            sub.close()
