"""The per-connection event bus: ordered, numbered, bounded.

libvirt's event delivery is fire-and-forget: a slow client loses events without knowing. Here
every event gets the next sequence number of its connection, every subscriber has a bounded
buffer of its own (a slow subscriber never slows QEMU, the supervisor or other subscribers),
and a subscriber that falls behind drops its *oldest* undelivered events and counts them in
:attr:`Subscription.lost`. (A filtered subscription also sees gaps in ``seq``: the numbers
of events it did not ask for; ``lost`` is what tells loss apart.) A short history lets a
subscriber that arrives late, or reconnects, replay what it missed (``since=``).

Publishing is synchronous and never blocks, so producers (QMP listeners, API calls) can
publish from anywhere in the trio thread.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import time
from collections.abc import Iterable
from typing import Any, Protocol

import trio

from .types import DomainEvent, EventDetail, EventKind, LifecycleEvent

#: Kinds a subscription with ``kinds=None`` receives: everything but raw QMP pass-through,
#: which (like libvirt's qemu-monitor-event) must be asked for by name.
DEFAULT_KINDS: frozenset[EventKind] = frozenset(EventKind) - {EventKind.QMP}


class _HasUUID(Protocol):
    @property
    def uuid(self) -> str: ...

    @property
    def name(self) -> str: ...


DomainFilter = str | _HasUUID | None


class Subscription:
    """A stream of events from one connection, filtered by domain and kind.

    Use it as an async iterator, inside ``async with`` so that it is closed when you are done::

        async with conn.subscribe(kinds={asvirt.EventKind.LIFECYCLE}) as events:
            async for ev in events:
                ...

    The iterator ends when the subscription or its connection is closed.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
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
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        #: Events this subscriber lost because its buffer was full.
        self.lost = 0

    def matches(self, event: DomainEvent) -> bool:
        if event.kind not in self._kinds:
            return False
        if self._uuid is not None:
            return event.uuid == self._uuid
        if self._name is not None:
            return self._name in (event.domain, event.uuid)
        return True

    def _offer(self, event: DomainEvent) -> None:
        if self._closed or not self.matches(event):
            return
        if len(self._queue) == self._queue.maxlen:
            self.lost += 1  # the deque drops the oldest on append
        self._queue.append(event)
        self._lot.unpark_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        """How many events are buffered and not yet received."""
        return len(self._queue)

    def receive_nowait(self) -> DomainEvent:
        """The next buffered event; raises :class:`trio.WouldBlock` if there is none."""
        if self._queue:
            return self._queue.popleft()
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> DomainEvent:
        """Wait for the next event; raises :class:`trio.EndOfChannel` once closed and drained."""
        while True:
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.checkpoint()
            return event

    def close(self) -> None:
        """Stop receiving; wakes a waiting iterator, which then ends."""
        if not self._closed:
            self._closed = True
            self._bus._remove(self)
            self._lot.unpark_all()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> DomainEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Numbers events and hands them to subscriptions; one per connection."""

    def __init__(self, *, history: int = 1024, buffer: int = 1024) -> None:
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._history: collections.deque[DomainEvent] = collections.deque(maxlen=history)
        self._subs: list[Subscription] = []
        self._default_buffer = buffer
        self._closed = False

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._last_seq

    def publish(
        self,
        *,
        domain: str,
        uuid: str,
        kind: EventKind,
        type: LifecycleEvent | None = None,
        detail: EventDetail | None = None,
        data: dict[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> DomainEvent:
        """Number an event and deliver it to every matching subscription. Never blocks."""
        if kind is EventKind.LIFECYCLE and (type is None or not isinstance(detail, type.details)):
            raise TypeError(f"lifecycle event needs a type and a matching detail: {type} {detail}")
        seq = next(self._seq)
        event = DomainEvent(
            seq=seq,
            timestamp=time.time() if timestamp is None else timestamp,
            domain=domain,
            uuid=uuid,
            kind=kind,
            type=type,
            detail=detail,
            data=data,
        )
        self._last_seq = seq
        if self._closed:
            return event
        self._history.append(event)
        for sub in self._subs:
            sub._offer(event)
        return event

    def subscribe(
        self,
        *,
        domain: DomainFilter = None,
        kinds: Iterable[EventKind] | None = None,
        since: int | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """A new subscription; it receives every matching event published from now on.

        With ``since=N`` it first receives the matching events with ``seq > N`` that are still in
        the bus's history (the newest ``history`` events), so a client can resume after a
        reconnect or see what happened before it subscribed.
        """
        sub = Subscription(self, domain=domain, kinds=kinds, buffer=buffer or self._default_buffer)
        if since is not None:
            for event in self._history:
                if event.seq > since:
                    sub._offer(event)
        if self._closed:
            sub.close()
        else:
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def close(self) -> None:
        """End every subscription; later publications are numbered but not delivered."""
        self._closed = True
        for sub in list(self._subs):
            sub.close()
