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
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
from collections.abc import Awaitable, Callable, Iterable

import trio

from .config import Config
from .domain import Domain
from .drivers import registry
from .drivers.base import NetworkDriver, StorageDriver
from .errors import InvalidArgError, OperationInvalidError, OperationUnsupportedError
from .events import DomainEvent, EventKind, Subscription
from .events.bus import DomainFilter
from .hypervisor.domain_driver import DomainDriver
from .hypervisor.node import Node, NodeLease
from .log import get_logger
from .network import Network
from .storage import StoragePool, StorageVol
from .uri import ConnectURI, parse_uri

log = get_logger("asvirt.connection")

EventCallback = Callable[[DomainEvent], Awaitable[None] | None]


def default_uri() -> str:
    """``$ASVIRT_DEFAULT_URI``, else an embedded root under the user's state directory."""
    uri = os.environ.get("ASVIRT_DEFAULT_URI")
    if uri:
        return uri
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return f"qemu:///embed?root={os.path.join(state_home, 'asvirt')}"


def open(uri: str | None = None, *, config: Config | None = None) -> Connection:
    """A connection to the driver that ``uri`` names; use it with ``async with``.

    ``uri`` defaults to :func:`default_uri`. ``config`` overrides the configuration the driver
    would otherwise read (for the embedded QEMU driver, ``ROOT/etc/asvirt.toml``).
    """
    return Connection(parse_uri(uri or default_uri()), config=config)


class Connection:
    """A connection to a node: its hypervisor driver, and its network and storage drivers."""

    def __init__(self, uri: ConnectURI, *, config: Config | None = None) -> None:
        self._uri = uri
        self._config = config
        self._lease: NodeLease | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._subscriptions: list[Subscription] = []
        self._callback_ids = itertools.count(1)
        self._callbacks: dict[int, tuple[Subscription, trio.CancelScope]] = {}
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
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(self._nursery.cancel_scope.cancel)
            self._lease = await opener(self._uri, self._config)
            stack.push_async_callback(self._leave)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        log.debug("connection opened", uri=self._uri.uri)
        return self

    async def _leave(self) -> None:
        assert self._lease is not None
        with trio.CancelScope(shield=True):
            try:
                await self._lease.node.client_closed(self)
            finally:
                await self._lease.release()

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
        return self._lease is not None and not self._closed and not self._lease.node.closed

    def _node(self) -> Node:
        if self._lease is None or self._closed:
            raise OperationInvalidError("the connection is not open")
        return self._lease.node

    def _hv(self) -> DomainDriver:
        return self._node().domains

    # -- domains -------------------------------------------------------------------------------

    async def define_xml(self, xml: str) -> Domain:
        """Define (or redefine) a persistent domain; emits DEFINED/ADDED or DEFINED/UPDATED."""
        return Domain(self, await self._hv().define_xml(xml))

    async def create_xml(
        self, xml: str, *, paused: bool = False, autodestroy: bool = False
    ) -> Domain:
        """Create and start a transient domain, which vanishes when it stops.

        ``autodestroy=True`` destroys it when this connection closes (or, should this
        process die, when the node is next opened).
        """
        return Domain(
            self,
            await self._hv().create_xml(xml, paused=paused, owner=self if autodestroy else None),
        )

    async def lookup_by_name(self, name: str) -> Domain:
        """The domain called ``name``; raises NoDomainError if there is none."""
        return Domain(self, await self._hv().lookup_by_name(name))

    async def lookup_by_uuid(self, uuid: str) -> Domain:
        """The domain with this UUID (any usual spelling); raises NoDomainError if there is none."""
        return Domain(self, await self._hv().lookup_by_uuid(uuid))

    async def list_all_domains(
        self, *, active: bool | None = None, persistent: bool | None = None
    ) -> list[Domain]:
        """All domains, optionally only (in)active or (non-)persistent ones; sorted by name."""
        refs = await self._hv().list_all_domains(active=active, persistent=persistent)
        return [Domain(self, ref) for ref in refs]

    async def capabilities(self) -> str:
        """The host and guest capabilities as libvirt's capabilities XML."""
        return await self._hv().capabilities_xml()

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        """What the driver would run for ``xml`` (``"qemu-argv"``: the QEMU command line)."""
        return await self._hv().domxml_to_native(native_format, xml)

    async def domain_xml_normalize(self, xml: str) -> str:
        """The XML that ``define_xml(xml)`` would store, without defining anything.

        Defaults are filled in, implicit devices added and addresses assigned, as on define;
        errors are those define would raise. Handy to see what a driver makes of your XML.
        """
        return await self._hv().domain_xml_normalize(xml)

    def hostname(self) -> str:
        return self._hv().hostname()

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
        node = self._node()
        if buffer is not None and (not isinstance(buffer, int) or buffer < 1):
            raise InvalidArgError("buffer must be a positive integer")
        if since is not None and (not isinstance(since, int) or since < 0):
            raise InvalidArgError("since must be a sequence number (an integer >= 0)")
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        sub = node.bus.subscribe(domain=domain, kinds=_kinds(kinds), since=since, buffer=buffer)
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
        node = self._node()
        if not callable(callback):
            raise InvalidArgError("the event callback is not callable")
        assert self._nursery is not None
        sub = node.bus.subscribe(domain=domain, kinds=_kinds(kinds))
        scope = trio.CancelScope()
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

    # -- networks and storage -----------------------------------------------------------------

    def _net(self) -> NetworkDriver:
        network = self._node().network
        if network is None:
            raise OperationUnsupportedError(f"'{self._uri.uri}' has no network driver")
        return network

    def _storage(self) -> StorageDriver:
        storage = self._node().storage
        if storage is None:
            raise OperationUnsupportedError(f"'{self._uri.uri}' has no storage driver")
        return storage

    async def list_all_networks(self, *, active: bool | None = None) -> list[Network]:
        return [Network(self, ref) for ref in await self._net().list_all_networks(active=active)]

    async def lookup_network_by_name(self, name: str) -> Network:
        return Network(self, await self._net().lookup_network_by_name(name))

    async def lookup_network_by_uuid(self, uuid: str) -> Network:
        return Network(self, await self._net().lookup_network_by_uuid(uuid))

    async def network_define_xml(self, xml: str) -> Network:
        return Network(self, await self._net().network_define_xml(xml))

    async def list_all_storage_pools(self, *, active: bool | None = None) -> list[StoragePool]:
        refs = await self._storage().list_all_storage_pools(active=active)
        return [StoragePool(self, ref) for ref in refs]

    async def lookup_storage_pool_by_name(self, name: str) -> StoragePool:
        return StoragePool(self, await self._storage().lookup_storage_pool_by_name(name))

    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePool:
        return StoragePool(self, await self._storage().lookup_storage_pool_by_uuid(uuid))

    async def storage_pool_define_xml(self, xml: str) -> StoragePool:
        """Define (or redefine) a persistent storage pool from libvirt pool XML."""
        return StoragePool(self, await self._storage().storage_pool_define_xml(xml))

    async def lookup_storage_vol_by_path(self, path: str) -> StorageVol:
        """The volume whose file is ``path``, in any active pool; NoStorageVolError if none."""
        storage = self._storage()
        ref = await storage.storage_vol_lookup_by_path(path)
        pool = StoragePool(self, await storage.lookup_storage_pool_by_name(ref.pool))
        return StorageVol(pool, ref)

    async def lookup_storage_vol_by_key(self, key: str) -> StorageVol:
        """The volume with this key (a volume's key is its path, as in libvirt's dir pools)."""
        return await self.lookup_storage_vol_by_path(key)

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
    callback: EventCallback, sub: Subscription, scope: trio.CancelScope, cb_id: int
) -> None:
    with scope:
        async for event in sub:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event callback failed", callback_id=cb_id, seq=event.seq)
