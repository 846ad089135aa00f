"""Connections: the entry point of the public API.

::

    async with asvirt.open("qemu:///embed?root=/var/tmp/vms") as conn:
        dom = await conn.define_xml(xml)
        async with conn.subscribe(domain=dom) as events:
            await dom.start()
            async for ev in events:
                print(ev.describe())

A connection is a view on a *node* (an embed root, the test driver's node): the node owns the
domains, the event journal and the tasks that supervise QEMU; the connection holds only its
subscriptions and its event callbacks. Every connection to the same node in one trio run
shares it, sees the same domains and the same event numbers. Leaving the ``async with`` block
closes the connection; the node closes with its last connection, and running VMs keep running
unless they were started with ``autodestroy=True``.

A connection runs on anyio: under trio, and, for a node served by a daemon (``qemu:///system``,
``qemu:///session``, ``qemu+unix://``, ``qemu+ssh://``), under asyncio too. The in-process
drivers (``qemu:///embed``, ``test:///``) supervise their node on trio and say so, with a
:class:`~asvirt.NoConnectError`, when opened under another event loop.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import anyio
import anyio.abc

from .calls import ConnectionCalls
from .config import Config
from .drivers import registry
from .drivers.base import ClientDriver
from .errors import InvalidArgError, OperationInvalidError
from .events import DomainEvent, EventKind, Subscription
from .events.bus import DomainFilter
from .log import get_logger
from .uri import ConnectURI, default_uri, parse_uri

log = get_logger("asvirt.connection")

EventCallback = Callable[[DomainEvent], Awaitable[None] | None]


def open(uri: str | None = None, *, config: Config | None = None) -> Connection:
    """A connection to the driver that ``uri`` names; use it with ``async with``.

    ``uri`` defaults to :func:`default_uri`. ``config`` overrides the configuration the driver
    would otherwise read (for the embedded QEMU driver, ``ROOT/etc/asvirt.toml``).
    """
    return Connection(parse_uri(uri or default_uri()), config=config)


class Connection(ConnectionCalls):
    """A connection to a node: its hypervisor driver, and its network and storage drivers."""

    def __init__(self, uri: ConnectURI, *, config: Config | None = None) -> None:
        self._uri = uri
        self._config = config
        self._client: ClientDriver | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: anyio.abc.TaskGroup | None = None
        self._subscriptions: list[Subscription] = []
        self._callback_ids = itertools.count(1)
        self._callbacks: dict[int, tuple[Subscription, anyio.CancelScope]] = {}
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Connection:
        if self._stack is not None:
            raise OperationInvalidError("a connection can be opened only once")
        opener = registry.resolve(self._uri)
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            # Only the event callbacks run here; the node's tasks run in the node.
            self._nursery = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._nursery.cancel_scope.cancel)
            self._client = await stack.enter_async_context(opener(self._uri, self._config, self))
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        log.debug("connection opened", uri=self._uri.uri)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        self._closed = True
        for sub, scope in self._callbacks.values():
            sub.close()
            scope.cancel()
        self._callbacks.clear()
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions.clear()
        assert self._stack is not None
        # The caller's own exception is not handed to our nursery, which would wrap it in an
        # ExceptionGroup: it propagates unchanged once the connection has left the node.
        await self._stack.__aexit__(None, None, None)
        log.debug("connection closed", uri=self._uri.uri)
        return None

    @property
    def uri(self) -> str:
        """The URI this connection was opened with."""
        return self._uri.uri

    def is_alive(self) -> bool:
        return self._client is not None and not self._closed and not self._client.closed

    def _driver(self) -> ClientDriver:
        if self._client is None or self._closed:
            raise OperationInvalidError("the connection is not open")
        return self._client

    def _call(self, method: str, /, **params: Any) -> Coroutine[Any, Any, Any]:
        """Make the declared call ``method`` (:mod:`asvirt.protocol`) on this connection's
        node (await what this returns).

        The driver's own coroutine, not one that awaits it: a call through a daemon suspends
        while it waits for the answer, and each coroutine between the caller and the wait
        is one more frame to step through on the way out and back in."""
        return self._driver().call(method, **params)

    def hostname(self) -> str:
        """The host name of the node's machine."""
        return self._driver().hostname()

    # -- events --------------------------------------------------------------------------------

    def subscribe(
        self,
        domain: DomainFilter = None,
        kinds: Iterable[EventKind] | EventKind | None = None,
        *,
        since: int | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """A stream of the node's events (an async iterator and async context manager).

        ``domain`` is a :class:`Domain`, a name or a UUID; ``kinds`` a set of
        :class:`EventKind` (default: every kind except raw QMP). The subscription receives
        events published after this call; with ``since=SEQ`` it first replays the journaled
        events numbered above SEQ (``since=0``: everything still retained), then goes on
        live with no gap and no duplicate. If some of those events are no longer retained,
        the first item is an event of kind :data:`EventKind.GAP` whose ``data`` gives the
        ``first`` and ``last`` missing numbers. ``buffer`` bounds the undelivered live
        events (default from the node's configuration).
        """
        driver = self._driver()
        if buffer is not None and (not isinstance(buffer, int) or buffer < 1):
            raise InvalidArgError("buffer must be a positive integer")
        if since is not None and (not isinstance(since, int) or since < 0):
            raise InvalidArgError("since must be a sequence number (an integer >= 0)")
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        sub = driver.subscribe(domain=domain, kinds=_kinds(kinds), since=since, buffer=buffer)
        self._subscriptions.append(sub)
        return sub

    def register_event_callback(
        self,
        callback: EventCallback,
        domain: DomainFilter = None,
        kinds: Iterable[EventKind] | EventKind | None = None,
    ) -> int:
        """Call ``callback(event)`` for each matching event, in order; returns an id.

        The callback may be a plain function or a coroutine function. Calls for one
        callback never overlap: the next event waits until the previous call returned. An
        exception from the callback is logged and does not stop later calls.
        """
        driver = self._driver()
        if not callable(callback):
            raise InvalidArgError("the event callback is not callable")
        assert self._nursery is not None
        sub = driver.subscribe(domain=domain, kinds=_kinds(kinds), since=None, buffer=None)
        scope = anyio.CancelScope()
        cb_id = next(self._callback_ids)
        self._callbacks[cb_id] = (sub, scope)
        self._nursery.start_soon(_run_callback, callback, sub, scope, cb_id)
        return cb_id

    def deregister_event_callback(self, callback_id: int) -> None:
        """Stop calling the callback registered under ``callback_id``."""
        entry = self._callbacks.pop(callback_id, None)
        if entry is None:
            raise InvalidArgError(f"no event callback with id {callback_id}")
        sub, scope = entry
        sub.close()
        scope.cancel()

    def __repr__(self) -> str:
        return f"<asvirt.Connection {self._uri.uri!r}{'' if self.is_alive() else ' closed'}>"


def _kinds(kinds: Iterable[EventKind] | EventKind | None) -> Iterable[EventKind] | None:
    if kinds is None:
        return None
    if isinstance(kinds, EventKind):
        return (kinds,)
    kinds = tuple(kinds)
    for kind in kinds:
        if not isinstance(kind, EventKind):
            raise InvalidArgError(f"{kind!r} is not an asvirt.EventKind")
    return kinds


async def _run_callback(
    callback: EventCallback, sub: Subscription, scope: anyio.CancelScope, cb_id: int
) -> None:
    with scope:
        async for event in sub:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event callback failed", callback_id=cb_id, seq=event.seq)
