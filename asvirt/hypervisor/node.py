"""Nodes: what a supervisor owns (domain table, event bus and journal, supervising tasks).

A :class:`Node` is one supervised root: the QEMU driver's embed root, or the test driver's
in-memory node. It owns every piece of state; a :class:`~asvirt.Connection` is only a view on
it (its subscriptions and callbacks). Within one trio run, every connection to the same root
shares one node, so they see the same domains and the same event numbers; the node is opened
by the first connection and closed when the last one leaves.

A node's tasks (one per QEMU process, timers, the journal's flusher) run in a nursery that
belongs to the node, not to the connection that happened to open it: the node runs in a trio
*system task* of its own, so connections may close in any order. A node that fails to open
reports why to every connection waiting for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

import trio

from ..config import Config
from ..errors import InternalError, OperationInvalidError
from ..events import EventBus
from ..events.journal import Journal
from ..log import get_logger
from .domains import DomainTable

if TYPE_CHECKING:
    from ..drivers.base import NetworkDriver, SecretDriver, StorageDriver
    from .domain_driver import DomainDriver

log = get_logger("asvirt.node")


@dataclasses.dataclass(frozen=True, slots=True)
class SupervisorCounters:
    """The supervisor's own figures for one node (the daemon's /metrics shows them)."""

    #: Events numbered and journaled since the node opened.
    events_published: int
    #: Subscriptions open now.
    event_subscribers: int
    #: Events subscribers lost because they did not keep up (their buffers were full).
    events_lost: int
    #: Replays that found events older than the journal retains (GAP events).
    event_gaps: int
    #: QMP commands QEMU did not answer within their deadline.
    qmp_timeouts: int


class Node:
    """The state of one supervised root, shared by every connection to it.

    Drivers subclass it: :meth:`lifetime` holds what the node keeps for its whole life (a
    lock, an event loop), :meth:`load` reads what exists, :meth:`shutdown` leaves (VMs keep
    running unless a driver says otherwise).
    """

    def __init__(self, *, name: str, config: Config, journal: Journal) -> None:
        #: What the node is, for messages ("qemu:///embed?root=/x", "test:///default").
        self.name = name
        self.config = config
        self.journal = journal
        self.bus = EventBus(journal, buffer=config.events.subscriber_buffer)
        self.table = DomainTable()
        self._network: NetworkDriver | None = None
        self._storage: StorageDriver | None = None
        self._secrets: SecretDriver | None = None
        self._domains: DomainDriver | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # -- what connections use --------------------------------------------------------------------

    @property
    def domains(self) -> DomainDriver:
        if self._domains is None or self._closed:
            raise OperationInvalidError(f"the node '{self.name}' is closed")
        return self._domains

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def network(self) -> NetworkDriver | None:
        """The node's network driver (the domain driver reads interface leases from it)."""
        return self._network

    @network.setter
    def network(self, driver: NetworkDriver | None) -> None:
        self._network = driver
        if self._domains is not None:
            self._domains.network = driver

    @property
    def storage(self) -> StorageDriver | None:
        """The node's storage driver (the domain driver resolves volume disks with it)."""
        return self._storage

    @storage.setter
    def storage(self, driver: StorageDriver | None) -> None:
        self._storage = driver
        if self._domains is not None:
            self._domains.storage = driver

    @property
    def secrets(self) -> SecretDriver | None:
        """The node's secret driver (the domain driver reads disks' and TPMs' secrets)."""
        return self._secrets

    @secrets.setter
    def secrets(self, driver: SecretDriver | None) -> None:
        self._secrets = driver
        if self._domains is not None:
            self._domains.secrets = driver

    @property
    def nursery(self) -> trio.Nursery:
        """Where the node's long-lived tasks run (available from :meth:`load` on)."""
        if self._nursery is None:
            raise OperationInvalidError(f"the node '{self.name}' is not running")
        return self._nursery

    def counters(self) -> SupervisorCounters:
        """The supervisor's own figures: events, subscribers, losses, QMP deadlines missed."""
        bus = self.bus
        return SupervisorCounters(
            events_published=bus.published,
            event_subscribers=bus.subscribers,
            events_lost=bus.lost,
            event_gaps=bus.gaps,
            qmp_timeouts=self.qmp_timeouts(),
        )

    def qmp_timeouts(self) -> int:
        """QMP commands that missed their deadline (drivers that speak QMP count them)."""
        return 0

    async def client_closed(self, client: object) -> None:
        """A connection left: end its volume transfers, destroy what it started with
        autodestroy."""
        if self._storage is not None:
            self._storage.client_closed(client)
        if self._domains is not None and not self._closed:
            await self._domains.client_closed(client)

    # -- what drivers provide --------------------------------------------------------------------

    def lifetime(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Resources held while the node exists (entered in the node's own task)."""
        return contextlib.nullcontext()

    async def load(self) -> None:
        """Read the persistent state and take over what runs (the nursery is available)."""
        await trio.lowlevel.checkpoint()

    async def shutdown(self) -> None:
        """The last connection has left: stop supervising (runs shielded)."""
        await trio.lowlevel.checkpoint()

    def set_domain_driver(self, driver: DomainDriver) -> None:
        self._domains = driver
        driver.network = self._network
        driver.storage = self._storage
        driver.secrets = self._secrets

    def use_journal(self, journal: Journal) -> None:
        """Replace the node's journal before anything is published (from :meth:`lifetime`)."""
        self.bus.use_journal(journal)
        self.journal = journal


class DeferredDriver:
    """A node's secondary driver (network, storage), made and loaded at its first use.

    A root without a network (none defined, none running) has nothing for a network driver
    to take up or autostart when the node opens, and likewise for pools: the driver is made
    and loaded when something first needs it (a network or pool call, a domain started on a
    network, a disk naming a pool's volume), so that an embedded one-shot command (``asvirt
    -c qemu:///embed?root=DIR list``) does not import and load every driver. Until then
    calls go through here; ``load`` makes the driver (and puts it in the node's place).
    """

    def __init__(self, load: Callable[[], Awaitable[Any]]) -> None:
        self._load = load
        self._driver: Any = None
        self._lock = trio.Lock()

    @property
    def loaded(self) -> Any:
        """The driver, if made (else None)."""
        return self._driver

    async def get(self) -> Any:
        """The driver, made and loaded if it is not yet (once, whoever asks meanwhile)."""
        async with self._lock:
            if self._driver is None:
                self._driver = await self._load()
        return self._driver

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self.get(), name)(*args, **kwargs)

        return call

    def client_closed(self, client: object) -> None:
        """A client left: nothing of its can be in a driver not made yet."""
        if self._driver is not None:
            self._driver.client_closed(client)


@dataclasses.dataclass(eq=False)
class _Entry:
    key: Hashable | None
    node: Node
    refs: int = 0
    closing: bool = False
    error: BaseException | None = None
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)
    close_requested: trio.Event = dataclasses.field(default_factory=trio.Event)
    closed: trio.Event = dataclasses.field(default_factory=trio.Event)


_registry: trio.lowlevel.RunVar[dict[Hashable, _Entry]] = trio.lowlevel.RunVar("asvirt_nodes")


def _nodes() -> dict[Hashable, _Entry]:
    try:
        return _registry.get()
    except LookupError:
        nodes: dict[Hashable, _Entry] = {}
        _registry.set(nodes)
        return nodes


class NodeLease:
    """A connection's hold on a node; the node closes when its last lease is released."""

    def __init__(self, entry: _Entry) -> None:
        self._entry = entry
        self._released = False

    @property
    def node(self) -> Node:
        return self._entry.node

    async def release(self) -> None:
        """Let go of the node; if it was the last hold, wait until the node has closed."""
        if self._released:
            return
        self._released = True
        await _release(self._entry)


def find_node(key: Hashable) -> Node | None:
    """The open node registered under ``key`` in this trio run, if any."""
    entry = _nodes().get(key)
    return None if entry is None or entry.closing else entry.node


async def open_node(key: Hashable | None, factory: Callable[[], Node]) -> NodeLease:
    """A lease on the node registered under ``key``, opening it with ``factory`` if needed.

    ``key=None`` opens a private node. Raises what the node's :meth:`Node.load` raised.
    """
    nodes = _nodes()
    while True:
        entry = nodes.get(key) if key is not None else None
        if entry is None or not entry.closing:
            break
        await entry.closed.wait()  # the previous node of this root is still leaving
    if entry is None:
        entry = _Entry(key, factory())
        if key is not None:
            nodes[key] = entry
        trio.lowlevel.spawn_system_task(_run_node, entry, name=f"asvirt node {entry.node.name}")
    entry.refs += 1
    try:
        await entry.ready.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            await _release(entry)
        raise
    if entry.error is not None:
        await _release(entry)
        raise entry.error
    return NodeLease(entry)


async def _release(entry: _Entry) -> None:
    entry.refs -= 1
    if entry.refs > 0:
        return
    entry.closing = True
    entry.close_requested.set()
    with trio.CancelScope(shield=True):
        await entry.closed.wait()


async def _run_node(entry: _Entry) -> None:
    """The node's own task: open, load, wait to be closed, shut down. Never raises."""
    node = entry.node
    try:
        async with node.lifetime(), trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(node.journal.run)
            await node.load()
            entry.ready.set()
            try:
                await entry.close_requested.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await node.shutdown()
                    await node.journal.sync()
                node._closed = True
                nursery.cancel_scope.cancel()
    except BaseException as exc:  # a system task must not raise: report, then end
        error = _single(exc)
        if not entry.ready.is_set():
            entry.error = error
        elif not isinstance(error, trio.Cancelled):
            log.error("node failed", node=node.name, error=repr(error), exc_info=error)
    finally:
        node._closed = True
        entry.closing = True
        node.bus.close()
        node.journal.close()
        nodes = _nodes()
        if entry.key is not None and nodes.get(entry.key) is entry:
            del nodes[entry.key]
        entry.ready.set()
        entry.closed.set()


def _single(exc: BaseException) -> BaseException:
    """The one real error inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(inner) != 1:
            return InternalError(f"several failures: {exc!r}") if inner else exc.exceptions[0]
        exc = inner[0]
    return exc


@contextlib.asynccontextmanager
async def leased(key: Hashable | None, factory: Callable[[], Node]) -> AsyncIterator[Node]:
    """``async with leased(key, factory) as node``: a lease for the block's duration."""
    lease = await open_node(key, factory)
    try:
        yield lease.node
    finally:
        await lease.release()


__all__ = ["Node", "NodeLease", "SupervisorCounters", "find_node", "leased", "open_node"]
