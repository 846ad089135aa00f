"""The in-process client driver: a connection's calls go straight to a node of this process.

Every call is one of :data:`asvirt.protocol.CALLS` and goes to the node's driver method of the
same name (the domain, network, storage or secret driver the declaration names), with the calling
connection as ``client`` where the declaration asks for it. The daemon dispatches the calls it
receives the same way, with its session as the client.
"""

from __future__ import annotations

import dis
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any

from .. import protocol
from ..errors import OperationUnsupportedError
from ..events import EventKind, Subscription
from ..events.bus import DomainFilter
from ..hypervisor.node import Node, NodeLease


def driver_for(node: Node, target: protocol.Target) -> Any:
    """The node's driver that serves calls of ``target`` (OperationUnsupportedError if none)."""
    if target is protocol.Target.DOMAINS:
        return node.domains
    found: Any
    if target is protocol.Target.NETWORK:
        found = node.network
    elif target is protocol.Target.STORAGE:
        found = node.storage
    else:
        found = node.secrets
    if found is None:
        raise OperationUnsupportedError(f"'{node.name}' has no {target.value} driver")
    return found


async def invoke(node: Node, name: str, params: dict[str, Any], *, client: object) -> Any:
    """Make the declared call ``name`` on ``node`` for ``client``."""
    done, value = begin(node, protocol.lookup(name), params, client=client)
    return value if done else await value


def method_for(node: Node, c: protocol.Call) -> Callable[..., Any]:
    """The driver method that serves the declared call ``c`` on ``node``
    (OperationUnsupportedError if the node has no driver for it)."""
    return getattr(driver_for(node, c.target), c.name)


def begin(
    node: Node,
    c: protocol.Call,
    params: dict[str, Any],
    *,
    client: object,
    method: Callable[..., Any] | None = None,
) -> tuple[bool, Any]:
    """Start the declared call ``c``: ``(True, result)`` when it is already done, as most
    calls that never wait are (lookups, info, state), ``(False, awaitable)`` when it has to
    wait for something, and its caller awaits the rest where it sees fit.

    The daemon answers the calls that are done at once as it reads them, and spawns a task
    only for those that wait: a task per call cost more than the call itself. It keeps the
    ``method`` it found with :func:`method_for` for each call and passes it.
    """
    if method is None:
        method = method_for(node, c)
    if c.client:
        params = {**params, "client": client}
    result = method(**params)
    if type(result) is not types.CoroutineType:  # inspect.iscoroutine's test, without a call
        if inspect.isawaitable(result):
            return False, result
        return True, result
    if not _never_suspends(result.cr_code):
        return False, result
    # An ``async def`` without a single await: its first step runs it to the end.
    try:
        result.send(None)
    except StopIteration as done:
        return True, done.value
    result.close()
    raise RuntimeError(f"{c.name} suspended, and its code has no yield")  # pragma: no cover


#: What _never_suspends found, by the id of the code (kept with it, so that the id stays
#: its own): a code object's hash is worked out from its bytecode and constants every time.
_NEVER_SUSPENDS: dict[int, tuple[types.CodeType, bool]] = {}


def _never_suspends(code: types.CodeType) -> bool:
    """Whether a coroutine of ``code`` always finishes at its first step: it suspends only
    at a YIELD_VALUE of its own (every await, async with and async for has one)."""
    found = _NEVER_SUSPENDS.get(id(code))
    if found is not None and found[0] is code:
        return found[1]
    never = not any(i.opname == "YIELD_VALUE" for i in dis.get_instructions(code))
    _NEVER_SUSPENDS[id(code)] = (code, never)
    return never


class LocalDriver:
    """A connection's hold on a node of this process."""

    def __init__(self, lease: NodeLease, client: object) -> None:
        self._lease = lease
        self._client = client

    @property
    def node(self) -> Node:
        return self._lease.node

    @property
    def closed(self) -> bool:
        return self._lease.node.closed

    def hostname(self) -> str:
        return self.node.domains.hostname()

    async def call(self, method: str, /, **params: Any) -> Any:
        return await invoke(self.node, method, params, client=self._client)

    def subscribe(
        self,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
        since: int | None,
        buffer: int | None,
    ) -> Subscription:
        return self.node.bus.subscribe(domain=domain, kinds=kinds, since=since, buffer=buffer)

    async def close(self) -> None:
        """Leave the node: destroy what this client started with autodestroy, release it."""
        try:
            await self.node.client_closed(self._client)
        finally:
            await self._lease.release()


__all__ = ["LocalDriver", "begin", "driver_for", "invoke"]
