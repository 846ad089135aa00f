"""The test driver's node: every domain, network and pool, shared by the connections to it.

As in libvirt, all connections to ``test:///default`` share one node, so that an action on one
connection is seen (and its events delivered, with the same numbers) on every other; the node
is created by the first connection and freed when the last one closes, so a later open starts
from the default objects again. A node loaded from a file (``test:///path/to/node.xml``)
belongs to its connection alone.

"Shared" means: within one ``trio.run`` (trio objects cannot cross event loops). In a program
that runs trio once, that is the whole process, as with libvirt.

The simulated guests' timers live in a :class:`Scheduler` that runs in the node's own task.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ...config import Config
from ...events.journal import MemoryJournal
from ...hypervisor.node import Node, find_node
from ...log import get_logger

if TYPE_CHECKING:
    from .storage import PoolObj

log = get_logger("asvirt.test")


class Scheduler:
    """Timers for the simulated guests, run cooperatively by every attached connection."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after ``delay`` seconds (0: at the caller's next schedule point)."""
        heapq.heappush(self._heap, (trio.current_time() + delay, next(self._order), fn))
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Fire due timers forever; any number of tasks may run this concurrently."""
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, fn = heapq.heappop(self._heap)
                try:
                    fn()
                except Exception:  # a bug in a simulated guest must not end the connection
                    log.exception("simulated guest timer failed")
            deadline = self._heap[0][0] if self._heap else math.inf
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()


class TestNode(Node):
    """Everything one test node holds: the shared domain table and bus, networks, pools."""

    __test__ = False  # not a pytest test class

    def __init__(self, source: str, config: Config) -> None:
        name = source if source.startswith("test:") else f"test://{source}"
        super().__init__(name=name, config=config, journal=MemoryJournal(config.events.history))
        #: Where the node came from ("default", or the node file's path), for messages.
        self.source = source
        self.pools: dict[str, PoolObj] = {}  # by UUID
        self.scheduler = Scheduler()
        #: Called when the node goes (what it held outside Python objects is released).
        self.on_shutdown: list[Callable[[], None]] = []

    async def shutdown(self) -> None:
        for release in self.on_shutdown:
            release()
        await trio.lowlevel.checkpoint()

    async def load(self) -> None:
        # The simulated guests' timers fire in the node's own task, whoever is connected.
        self.nursery.start_soon(self.scheduler.run)
        await trio.lowlevel.checkpoint()


#: The key under which every connection of a trio run finds the default node.
DEFAULT_NODE_KEY = ("test", "default")


def current_default() -> TestNode | None:
    """The default node if a connection holds it (for tests and introspection)."""
    node = find_node(DEFAULT_NODE_KEY)
    return node if isinstance(node, TestNode) else None


__all__ = ["DEFAULT_NODE_KEY", "Scheduler", "TestNode", "current_default"]
