"""The test driver's node: every domain, network and pool, shared by the connections to it.

As in libvirt, all connections to ``test:///default`` share one node, so that an action on one
connection is seen (and its events delivered) on every other; the node is created by the first
connection and freed when the last one closes, so a later open starts from the default objects
again. A node loaded from a file (``test:///path/to/node.xml``) belongs to its connection alone.

"Shared" means: within one ``trio.run`` (trio objects cannot cross event loops). In a program
that runs trio once, that is the whole process, as with libvirt.

The node holds no task of its own. The simulated guests' timers live in a :class:`Scheduler`
that every attached connection runs in its own nursery; whichever connection's runner wakes
first fires a due timer, so timers keep firing as long as any connection is open.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ...events import EventBus, EventDetail, EventKind, LifecycleEvent
from ...log import get_logger

if TYPE_CHECKING:
    from .driver import TestDomain
    from .network import NetworkObj
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


class Attachment:
    """One connection's presence on a node: where its events go."""

    __slots__ = ("bus", "label")

    def __init__(self, bus: EventBus, label: str) -> None:
        self.bus = bus
        self.label = label

    def __repr__(self) -> str:
        return f"<Attachment {self.label}>"


class NodeState:
    """Everything one test node holds."""

    def __init__(self, source: str) -> None:
        #: Where the node came from ("default", or the node file's path), for messages.
        self.source = source
        self.domains: dict[str, TestDomain] = {}  # by UUID
        self.domain_names: dict[str, str] = {}  # name -> UUID
        self.networks: dict[str, NetworkObj] = {}  # by UUID
        self.pools: dict[str, PoolObj] = {}  # by UUID
        self.next_domain_id = 1
        self.scheduler = Scheduler()
        self.attachments: list[Attachment] = []

    # -- connections ---------------------------------------------------------------------------

    def attach(self, bus: EventBus, label: str) -> Attachment:
        att = Attachment(bus, label)
        self.attachments.append(att)
        return att

    def detach(self, att: Attachment) -> None:
        self.attachments.remove(att)

    # -- events --------------------------------------------------------------------------------

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
    ) -> None:
        """Deliver an event to every connection attached to this node (each numbers it)."""
        if timestamp is None:
            timestamp = time.time()
        for att in self.attachments:
            att.bus.publish(
                domain=domain,
                uuid=uuid,
                kind=kind,
                type=type,
                detail=detail,
                data=data,
                timestamp=timestamp,
            )

    # -- domain table ----------------------------------------------------------------------------

    def add_domain(self, dom: TestDomain) -> None:
        self.domains[dom.uuid] = dom
        self.domain_names[dom.name] = dom.uuid

    def remove_domain(self, dom: TestDomain) -> None:
        if self.domains.get(dom.uuid) is dom:
            del self.domains[dom.uuid]
        if self.domain_names.get(dom.name) == dom.uuid:
            del self.domain_names[dom.name]

    def allocate_domain_id(self) -> int:
        dom_id = self.next_domain_id
        self.next_domain_id += 1
        return dom_id


# The default node of the current trio run, and how many connections use it.
_default_node: trio.lowlevel.RunVar[NodeState | None] = trio.lowlevel.RunVar(
    "asvirt_test_default_node", default=None
)


def acquire_default(factory: Callable[[], NodeState]) -> NodeState:
    """The shared default node, created with ``factory`` if no connection holds it."""
    node = _default_node.get()
    if node is None:
        node = factory()
        _default_node.set(node)
    return node


def release_default(node: NodeState) -> None:
    """Forget the default node once its last connection has detached."""
    if not node.attachments and _default_node.get() is node:
        _default_node.set(None)


def current_default() -> NodeState | None:
    """The default node if a connection holds it (for tests and introspection)."""
    return _default_node.get()


__all__ = ["Attachment", "NodeState", "Scheduler", "acquire_default", "current_default"]
