"""Event journals: where a node keeps the events it numbered (stand-in; see the journal branch)."""

from __future__ import annotations

import collections
from typing import Protocol

import trio

from .types import DomainEvent


class Journal(Protocol):
    """The events of one node, numbered from 1, oldest first."""

    @property
    def last_seq(self) -> int: ...

    @property
    def first_seq(self) -> int: ...

    def append(self, event: DomainEvent) -> None: ...

    def read(self, after: int, limit: int) -> list[DomainEvent]: ...

    async def sync(self) -> None: ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    def close(self) -> None: ...


class MemoryJournal:
    """The newest ``size`` events, in memory."""

    def __init__(self, size: int = 1024) -> None:
        self._events: collections.deque[DomainEvent] = collections.deque(maxlen=size)
        self._last = 0

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def first_seq(self) -> int:
        return self._events[0].seq if self._events else self._last + 1

    def append(self, event: DomainEvent) -> None:
        self._events.append(event)
        self._last = event.seq

    def read(self, after: int, limit: int) -> list[DomainEvent]:
        if not self._events or after >= self._last:
            return []
        start = max(0, after + 1 - self._events[0].seq)
        return [self._events[i] for i in range(start, min(len(self._events), start + limit))]

    async def sync(self) -> None:
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def close(self) -> None:
        pass
