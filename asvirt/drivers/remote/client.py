"""The remote driver: every call of a connection sent to a daemon, events streamed back.

A :class:`RemoteDriver` keeps one link to the daemon at a time and replaces it when it breaks:
it reconnects with backoff, says hello again, and re-subscribes every open subscription from
the last ``seq`` it delivered, so subscribers see every event exactly once, in order —
including those published while the link was down (the daemon replays them from the node's
journal). A call in flight when the link breaks fails at once with a clear error (it may or
may not have been carried out); a call made while the link is down waits for it, up to a
deadline, then fails with NoConnectError.

Calls are those of :mod:`asvirt.protocol`, checked and encoded by it: nothing here knows one
call from another.

The I/O is anyio's, so that a connection to a daemon works under trio and under asyncio alike
(most programs that drive libvirt today run libvirt-python's event loop on asyncio): nothing
here imports either event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import anyio
import anyio.abc
import anyio.lowlevel

from ... import protocol
from ...config import Config
from ...errors import (
    AsvirtError,
    InternalError,
    NoConnectError,
    OperationFailedError,
)
from ...events import DomainEvent, EventKind, Subscription
from ...events.bus import DomainFilter
from ...events.codec import UnknownEventKindError, event_from_dict
from ...log import get_logger
from ...rpc import wire
from ...uri import ConnectURI
from .transport import Transport, transport_for

log = get_logger("asvirt.remote")

#: Seconds a call made while the daemon is unreachable waits for it to come back.
RECONNECT_DEADLINE = 30.0
#: Seconds a new link may take to answer "hello" (the first connection fails after this).
HELLO_DEADLINE = 30.0
#: Largest message accepted from a daemon.
MAX_MESSAGE = 64 * 1024 * 1024
#: Backoff between reconnection attempts: from the first to the longest, in seconds.
BACKOFF = (0.02, 1.0)
#: Reads the link makes of a daemon that always has more to say before it lets others run.
_READS_PER_YIELD = 16
#: Bytes the link asks of its socket per read.
_READ_SIZE = 65536
#: Seconds between looks of a link's reader task, stepped back for callers to read, at
#: whether none does (keepalive pings from the daemon wait this long at most then).
_IDLE_LOOK = 1.0
#: Seconds after a caller last read within which a call takes the link to be up unchecked.
_FRESH = 0.05
#: Seconds a caller of a call of high priority (answered at once: lookups, state, info)
#: keeps looking for its answer before it lets its event loop sleep: the answer comes
#: within tens of microseconds, and a CPU that went idle meanwhile takes about as long
#: again to wake (40 µs per wake-up in a VM, where it is a VM exit). Other tasks run
#: meanwhile (each look yields).
_SPIN = 200e-6
#: Calls of high priority that do not look before sleeping after one whose answer did not
#: come while it looked (the daemon is busy, or far: looking would only burn CPU).
_SPIN_BACKOFF = 32


class _LinkLost(Exception):
    """The link broke while a request was in flight."""


class _Link:
    """One stream to the daemon: requests by id, responses and notifications.

    Whoever waits reads: a caller whose answer is awaited reads the socket itself when
    nobody else does, handing on what comes for others, so that a call wakes one task, not
    the reader task and then its caller. The reader task reads when callers wait that no
    caller reads for, while subscriptions are open, and otherwise looks every _IDLE_LOOK
    seconds (for keepalive pings); a call made after the socket went unread for a while
    reads first what came meanwhile, so that a daemon gone unseen is found before the call
    is sent, and the call waits for the reconnection as it would have had it been seen.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        on_notice: Callable[[str, Any], None],
        wants_notices: Callable[[], bool] = lambda: True,
    ) -> None:
        self.stream = stream
        #: The non-blocking socket under the stream, to send on directly when nothing is
        #: queued: most requests are small and the socket takes them at once, without waking
        #: the writer task for each. None for an ssh stream (a pipe), and for a stream whose
        #: socket sits behind an asyncio transport (which keeps a buffer of its own: its
        #: extra attribute is then a TransportSocket).
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self._raw = raw if isinstance(raw, socket.socket) and not raw.getblocking() else None
        #: Messages queued for the writer and not yet written (none: a send may go direct).
        self._queued = 0
        #: Reads of the socket since the reader last let other tasks run.
        self._unyielded = 0
        #: Whether the last read emptied the socket (the next waits until it is readable).
        self._drained = False
        # The event loop's own Event class: anyio.Event() looks the loop up on every call.
        self._event_type = type(anyio.Event())
        #: The event loop's own wait for a readable socket, and what it raises when the
        #: socket is closed under the wait (see _readable_waiter).
        self._wait_readable, self._closed_errors = _readable_waiter()
        #: The event loop's own checkpoint (anyio's looks the loop up on every call).
        self._checkpoint = _checkpointer()
        #: Calls of high priority left that wait without looking first (see _SPIN_BACKOFF).
        self._spin_skip = 0
        #: What ends a caller's wait in request(): the socket closed or broken under it.
        self._read_ends: tuple[type[BaseException], ...] = (
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
            OSError,
            *self._closed_errors,
        )
        self._on_notice = on_notice
        #: Whether notices other than keepalive pings may come (open subscriptions): then
        #: the reader task reads whenever no caller does, so that they arrive at once.
        self._wants_notices = wants_notices
        #: What has been read of the daemon's messages (shared by whoever reads).
        self._lines = wire.LineReader(MAX_MESSAGE)
        #: Whether someone reads the socket now: the reader task, or a caller leading.
        self._reading = False
        #: Set to wake the reader task when it has stepped back for callers to lead.
        self._resume = self._event_type()
        #: Why reading must end (the stream ended: "", or the daemon sent nonsense): set
        #: by whoever met it, acted on by the reader task, which ends the link.
        self._end: BaseException | str | None = None
        #: Seconds between looks of the stepped-back reader task (see _IDLE_LOOK).
        self.idle_look = _IDLE_LOOK
        #: When a caller last stopped reading (time.monotonic()).
        self._read_at = 0.0
        self._ids = itertools.count(1)
        self._pending: dict[int, Callable[[wire.Incoming | None], None]] = {}
        #: Progress callbacks of requests in flight that asked for progress.
        self._progress: dict[int, Callable[[float], object]] = {}
        self._out_send, self._out_recv = anyio.create_memory_object_stream[bytes](1_000_000)
        self.broken = anyio.Event()
        #: Whether ``broken`` is set (asked on every call: a plain attribute is cheaper).
        self.is_broken = False
        #: Why the stream broke (what the transport said), if it did not just end.
        self.error: BaseException | None = None

    def send(self, data: bytes) -> None:
        """Send a message now if the socket takes it, else queue it for the writer."""
        if self._raw is not None and not self._queued:
            data = wire.send_now(self._raw, data)
            if not data:
                return
        try:
            self._out_send.send_nowait(data)
            self._queued += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def request_nowait(
        self,
        method: str,
        params: dict[str, Any],
        on_reply: Callable[[wire.Incoming | None], None],
        on_progress: Callable[[float], object] | None = None,
    ) -> None:
        """Send a request; ``on_reply`` gets the response (None if the link broke first),
        ``on_progress`` the progress the daemon reports for it meanwhile."""
        self._register(method, params, on_reply, on_progress)
        if not self._reading:
            self._resume.set()  # no caller waits to read it: the reader task does

    def _register(
        self,
        method: str,
        params: dict[str, Any],
        on_reply: Callable[[wire.Incoming | None], None],
        on_progress: Callable[[float], object] | None = None,
    ) -> None:
        if self.is_broken:
            on_reply(None)
            return
        msg_id = next(self._ids)
        self._pending[msg_id] = on_reply
        if on_progress is not None:
            self._progress[msg_id] = on_progress
        self.send(wire.request(msg_id, method, params))

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        on_progress: Callable[[float], object] | None = None,
        *,
        quick: bool = False,
    ) -> wire.Incoming:
        """Send a request and wait for its response.

        The caller reads the socket itself until its answer comes when nobody else reads,
        handing on what comes for others, instead of waiting for the reader task to wake
        it: a call that waits for its answer then wakes one task, not two (and the reading
        is done here, not in a coroutine of its own: each one between the caller and the
        wait is one more frame to step through twice per call). The reader task reads
        again once this is done if others wait or notices may come (subscriptions);
        otherwise it looks again after _IDLE_LOOK seconds (keepalive pings wait that long
        at most).

        The caller of a ``quick`` call (one the daemon answers at once) looks for its answer
        without sleeping for up to _SPIN seconds first (see there), unless such looks have
        lately come to nothing."""
        reply: list[wire.Incoming | None] = []
        # An event to wait on only if someone else reads the answer: a caller that reads
        # it itself (most) finds it in ``reply`` as soon as it is there.
        done: list[Any] = []

        def got(message: wire.Incoming | None) -> None:
            reply.append(message)
            if done:
                done[0].set()

        self._register(method, params, got, on_progress)
        raw = self._raw
        if not reply and not self._reading and raw is not None:
            wait_readable = self._wait_readable
            spin_until = 0.0
            if quick:
                if self._spin_skip:
                    self._spin_skip -= 1
                else:
                    spin_until = time.perf_counter() + _SPIN
            self._reading = True
            try:
                while not reply and self._end is None and not self.is_broken:
                    if spin_until and time.perf_counter() >= spin_until:
                        spin_until = 0.0  # nothing came while looking: wait, and look less
                        self._spin_skip = _SPIN_BACKOFF
                    if not spin_until:
                        try:
                            await wait_readable(raw)
                        except self._read_ends:
                            break  # closed under this caller: the link's end fails what was pending
                    try:
                        data = raw.recv(_READ_SIZE)
                    except BlockingIOError:
                        if spin_until:
                            await self._checkpoint()
                        continue
                    except OSError as err:
                        self._end = err
                        break
                    if not data:
                        self._end = ""  # the daemon closed the connection
                        break
                    reason = self._take(data)
                    if reason is not None:
                        self._end = reason
                        break
            finally:
                self._reading = False
                self._read_at = time.monotonic()
                if self._end is not None or self._pending or self._wants_notices():
                    self._resume.set()
        if not reply:
            done.append(self._event_type())
            await done[0].wait()
        if reply[0] is None:
            raise _LinkLost
        return reply[0]

    def wake_reader(self) -> None:
        """Have the reader task, if it stepped back, read now."""
        self._resume.set()

    def stale(self) -> bool:
        """Whether nobody has read the socket for a while: the daemon may have gone
        meanwhile, unseen (see :meth:`check`)."""
        return not self._reading and time.monotonic() - self._read_at > _FRESH

    def check(self) -> bool:
        """Read what the daemon sent while nobody read; whether the link is still up (if
        not, the reader task ends it: wait for ``broken``)."""
        raw = self._raw
        if raw is None or self._reading or self._end is not None:
            return self._end is None and not self.is_broken
        self._read_at = time.monotonic()
        try:
            data = raw.recv(_READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as err:
            self._end = err
        else:
            self._end = self._take(data) if data else ""
        if self._end is None:
            return True
        self._resume.set()
        return False

    def progress(self, params: Any) -> None:
        """A ``progress`` notification (its params decoded): tell the request's callback."""
        if not isinstance(params, dict):
            return
        callback = self._progress.get(params.get("id"))  # type: ignore[arg-type]
        fraction = params.get("fraction")
        if callback is not None and isinstance(fraction, int | float):
            callback(float(fraction))

    async def run(self) -> None:
        """Carry messages both ways until the stream ends; then fail what was pending."""
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write)
                await self._read()
                tasks.cancel_scope.cancel()
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as group:
            self.error = _first(group)
        finally:
            self.is_broken = True
            self.broken.set()
            self._out_send.close()
            self._out_recv.close()
            pending, self._pending = self._pending, {}
            self._progress.clear()
            for on_reply in pending.values():
                on_reply(None)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.stream)

    async def _write(self) -> None:
        async for data in self._out_recv:
            batch = [data]
            while len(batch) < 256:
                try:
                    batch.append(self._out_recv.receive_nowait())
                except anyio.WouldBlock:
                    break
            await self.stream.send(b"".join(batch))
            self._queued -= len(batch)

    async def _receive(self) -> bytes:
        """The next bytes from the daemon (b"" when the stream ends).

        A socket is read directly where there is one: the stream's receive yields to the
        event loop after every read, even one that found the answer waiting, and its
        wrappers cost more than decoding the answer. This waits only when there is nothing
        to read, and yields at least every _READS_PER_YIELD reads."""
        raw = self._raw
        if raw is None:
            try:
                return await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b""
        while True:
            if self._drained:
                try:
                    await self._wait_readable(raw)
                except self._closed_errors as err:
                    raise anyio.ClosedResourceError from err
                self._unyielded = 0
            try:
                data = raw.recv(_READ_SIZE)
            except BlockingIOError:
                self._drained = True
                continue
            # A read shorter than the buffer drained the socket: the next one waits for it
            # to be readable first, rather than trying a read that fails (a system call and
            # an exception per answer when one call waits for the next).
            self._drained = len(data) < _READ_SIZE
            self._unyielded += 1
            if self._unyielded >= _READS_PER_YIELD:
                await anyio.lowlevel.checkpoint()
                self._unyielded = 0
            return data

    async def _read(self) -> None:
        while True:
            if self._raw is not None and (
                self._reading or (not self._pending and not self._wants_notices())
            ):
                # A caller reads, or nothing is awaited and the next caller reads its
                # answer itself (see request).
                await self._step_back()
            if self._end is not None:
                break
            self._reading = True
            try:
                data = await self._receive()
            finally:
                self._reading = False
            if not data:
                return
            reason = self._take(data)
            if reason is not None:
                self._end = reason
                break
        if isinstance(self._end, BaseException):
            raise self._end
        if self._end:
            log.warning(self._end)

    async def _step_back(self) -> None:
        """Let callers read until one is done and others wait, or notices may come; look
        again every _IDLE_LOOK seconds (a caller may have left nothing to wake this)."""
        while True:
            self._resume = self._event_type()
            with anyio.move_on_after(self.idle_look):
                await self._resume.wait()
            if self._reading:
                continue
            return

    def _take(self, data: bytes) -> str | None:
        """Deliver the messages in ``data``: answers to their callers, notices to their
        handlers. Why the link must end, if the daemon sent something it must not."""
        for line in self._lines.feed(data):
            if isinstance(line, wire.Oversized):
                return "the daemon sent an oversized message; dropping the link"
            try:
                msg = wire.decode_incoming(line)
            except ValueError:
                return "the daemon sent something that is not JSON; dropping the link"
            if msg is not None:
                self._deliver(msg)
        return None

    def _deliver(self, msg: wire.Incoming) -> None:
        msg_id = msg.id
        if msg_id is None:
            params = wire.decode(msg.params)
            if msg.method == "progress":
                self.progress(params)
            else:
                self._on_notice(str(msg.method or ""), params)
            return
        on_reply = self._pending.pop(msg_id, None) if isinstance(msg_id, int) else None
        if self._progress and isinstance(msg_id, int):
            self._progress.pop(msg_id, None)
        if on_reply is not None:
            on_reply(msg)


class _RemoteSubscription:
    """A subscription of this client, as the daemon knows it."""

    def __init__(self, sub: Subscription, domain: str | None, kinds: list[str] | None) -> None:
        self.sub = sub
        self.domain = domain
        self.kinds = kinds
        #: The last seq delivered (or the one the daemon started from); None until known.
        self.cursor: int | None = None


class _Source:
    """The event source of a remote subscription: the daemon replays, nothing here does."""

    def __init__(self, driver: RemoteDriver, sub_id: int) -> None:
        self._driver = driver
        self._sub_id = sub_id

    @property
    def last_seq(self) -> int:
        return 0

    @property
    def journal(self) -> NoReturn:
        raise AssertionError("a remote subscription never replays by itself")

    def gap_event(self, first: int, last: int) -> DomainEvent:
        raise AssertionError("a remote subscription never replays by itself")

    def _remove(self, sub: Subscription) -> None:
        self._driver._unsubscribe(self._sub_id)


class RemoteDriver:
    """A connection's driver when the node is served by a daemon."""

    def __init__(self, uri: ConnectURI, transport: Transport, nursery: anyio.abc.TaskGroup) -> None:
        self._uri = uri
        self._transport = transport
        self._nursery = nursery
        self._link: _Link | None = None
        self._link_up = anyio.Event()
        self._closed = False
        self._hello: dict[str, Any] = {}
        self._subs: dict[int, _RemoteSubscription] = {}
        self._sub_ids = itertools.count(1)
        #: The newest seq this client knows of (a cursor for subscriptions made while down).
        self._known_seq = 0
        #: Event kinds a newer daemon sent that this client does not know (warned once each).
        self._unknown_kinds: set[str] = set()
        self.reconnects = 0

    # -- the link -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """The first link: NoConnectError if the daemon cannot be reached now."""
        try:
            link = await self._open_link()
        except (OSError, anyio.BrokenResourceError, _LinkLost) as err:
            raise NoConnectError(
                f"cannot connect to {self._transport.description}: {_reason(err)}"
            ) from None
        self._nursery.start_soon(self._maintain, link)

    async def _open_link(self) -> _Link:
        stream = await self._transport.open()
        link = _Link(stream, self._on_notice, lambda: bool(self._subs))
        self._nursery.start_soon(link.run)
        try:
            with anyio.fail_after(HELLO_DEADLINE):
                reply = await link.request(
                    "hello", {"protocol": wire.PROTOCOL_VERSION, "client": "asvirt"}
                )
        except TimeoutError:
            await anyio.aclose_forcefully(stream)
            raise _LinkLost(f"no answer in {HELLO_DEADLINE:g} s") from None
        except _LinkLost:
            why = _reason(link.error) if link.error is not None else "the connection was closed"
            raise _LinkLost(why) from None
        if reply.error is not None:
            raise wire.exception_from(reply.error)
        hello = wire.decode(reply.result)
        if not isinstance(hello, dict) or hello.get("protocol") != wire.PROTOCOL_VERSION:
            raise NoConnectError(f"{self._transport.description} speaks another protocol")
        self._hello = hello
        interval = hello.get("keepalive")
        if isinstance(interval, int | float) and interval > 0:
            # Looked for at least twice per ping interval: the daemon drops a client that
            # has not answered for an interval after its ping.
            link.idle_look = min(_IDLE_LOOK, interval / 2)
            link.wake_reader()  # it may have stepped back for longer
        if isinstance(hello.get("last_seq"), int):
            self._known_seq = max(self._known_seq, hello["last_seq"])
        for sub_id, rsub in self._subs.items():
            self._send_subscribe(link, sub_id, rsub)
        # In use from now on: no checkpoint between re-subscribing and this, so that a
        # subscription made meanwhile cannot fall between the two.
        self._link = link
        self._link_up.set()
        return link

    async def _maintain(self, link: _Link) -> None:
        """Keep a link up: when one breaks, reconnect with backoff until closed."""
        while not self._closed:
            await link.broken.wait()
            self._link = None
            self._link_up = anyio.Event()
            if self._closed:
                return
            log.warning("lost the daemon; reconnecting", daemon=self._transport.description)
            delay = BACKOFF[0]
            while not self._closed:
                try:
                    link = await self._open_link()
                    break
                except (OSError, anyio.BrokenResourceError, _LinkLost, AsvirtError) as err:
                    log.debug("cannot reconnect yet", error=_reason(err), retry_in=delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
            self.reconnects += 1
            log.info("reconnected to the daemon", daemon=self._transport.description)

    def _on_notice(self, method: str, params: Any) -> None:
        if method == "event" and isinstance(params, dict):
            rsub = self._subs.get(params.get("sub"))  # type: ignore[arg-type]
            if rsub is None:
                return
            try:
                event = event_from_dict(params.get("event"))  # type: ignore[arg-type]
            except UnknownEventKindError as err:
                # A newer daemon's kind: skipped, but counted as delivered (a replay after a
                # reconnect resumes after it). One warning per kind, not one per event.
                if err.kind not in self._unknown_kinds:
                    self._unknown_kinds.add(err.kind)
                    log.warning(
                        "the daemon sent events of a kind this client does not know; "
                        "skipping them (a newer daemon: upgrade the client to receive them)",
                        kind=err.kind,
                        seq=err.seq,
                    )
                if rsub.cursor is None or err.seq > rsub.cursor:
                    rsub.cursor = err.seq
                self._known_seq = max(self._known_seq, err.seq)
                return
            except ValueError as err:
                log.warning("the daemon sent a malformed event", error=str(err))
                return
            if rsub.cursor is not None and event.seq <= rsub.cursor:
                return  # replayed after a reconnect, but already delivered
            rsub.cursor = event.seq
            self._known_seq = max(self._known_seq, event.seq)
            rsub.sub._offer(event)
        elif method == "keepalive.ping" and self._link is not None:
            self._link.send(wire.notification("keepalive.pong", {}))

    # -- what a connection uses ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def hostname(self) -> str:
        return str(self._hello.get("hostname", ""))

    @property
    def read_only(self) -> bool:
        return bool(self._hello.get("read_only"))

    async def call(self, method: str, /, **params: Any) -> Any:
        c = protocol.CALLS.get(method) or protocol.lookup(method)
        args, on_progress = protocol.encode_params(c, params)
        link = self._link
        if self._closed or link is None or link.is_broken or (link.stale() and not link.check()):
            link = await self._wait_link(method)
        try:
            reply = await link.request(
                method, args, on_progress, quick=c.priority is protocol.Priority.HIGH
            )
        except _LinkLost:
            raise OperationFailedError(
                f"the connection to {self._transport.description} was lost during '{method}' "
                "(it may or may not have been done)"
            ) from None
        if reply.error is not None:
            raise wire.exception_from(reply.error)
        try:
            return protocol.decode_result_json(c, reply.result)
        except ValueError as err:
            raise InternalError(f"the daemon answered '{method}' with {err}") from None

    async def _wait_link(self, method: str) -> _Link:
        """The link to send a call on once it is up (a call finds an open one itself)."""
        if self._closed:
            raise NoConnectError("the connection is closed")
        link = self._link
        if link is not None and not link.is_broken:
            # Not stale() first: a check() that just found the daemon gone counts as a read.
            if link.check():
                return link  # up: no deadline to set up
            # The daemon went while nobody read: wait for the reconnection, as if seen.
            await link.broken.wait()
        with anyio.move_on_after(RECONNECT_DEADLINE):
            while self._link is None or self._link.is_broken:
                await self._link_up.wait()
            return self._link
        raise NoConnectError(
            f"{self._transport.description} is unreachable: '{method}' waited "
            f"{RECONNECT_DEADLINE:g} s for it"
        )

    def subscribe(
        self,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
        since: int | None,
        buffer: int | None,
    ) -> Subscription:
        sub_id = next(self._sub_ids)
        sub = Subscription(
            _Source(self, sub_id), domain=domain, kinds=kinds, since=None, buffer=buffer or 1024
        )
        name = domain if isinstance(domain, str) or domain is None else domain.uuid
        kind_names = None if kinds is None else [k.value for k in kinds]
        rsub = _RemoteSubscription(sub, name, kind_names)
        rsub.cursor = since
        self._subs[sub_id] = rsub
        if self._link is not None:
            self._send_subscribe(self._link, sub_id, rsub)
        elif since is None:
            rsub.cursor = self._known_seq  # subscribed while down: from what we know
        return sub

    def _send_subscribe(self, link: _Link, sub_id: int, rsub: _RemoteSubscription) -> None:
        params = {"sub": sub_id, "domain": rsub.domain, "kinds": rsub.kinds, "since": rsub.cursor}

        def on_reply(reply: wire.Incoming | None) -> None:
            if reply is None:
                return  # the link broke: the next one subscribes again
            if reply.error is not None:
                log.warning("the daemon refused a subscription", error=str(reply.error))
                rsub.sub.close()
                return
            result = wire.decode(reply.result)
            if isinstance(result, dict) and rsub.cursor is None:
                rsub.cursor = result.get("cursor")

        link.request_nowait("events.subscribe", params, on_reply)

    def _unsubscribe(self, sub_id: int) -> None:
        if self._subs.pop(sub_id, None) is not None and self._link is not None:
            self._link.request_nowait("events.unsubscribe", {"sub": sub_id}, lambda reply: None)

    async def aclose(self) -> None:
        self._closed = True
        for rsub in list(self._subs.values()):
            rsub.sub.close()
        link = self._link
        if link is not None:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(RECONNECT_DEADLINE), contextlib.suppress(_LinkLost):
                    await link.request("bye", {})
                await anyio.aclose_forcefully(link.stream)


def _running_trio() -> Any:
    """The trio module when trio runs this task (None under asyncio): the loop's own calls
    are then used directly, since anyio's look the event loop up on every call."""
    trio = sys.modules.get("trio")
    if trio is not None:
        import sniffio  # trio's own dependency

        try:
            if sniffio.current_async_library() == "trio":
                return trio
        except sniffio.AsyncLibraryNotFoundError:
            pass
    return None


def _readable_waiter() -> tuple[
    Callable[[socket.socket], Awaitable[None]], tuple[type[BaseException], ...]
]:
    """How the running event loop waits for a socket to be readable, and what it raises
    when the socket is closed under the wait, or before it (besides anyio's errors: a
    socket already closed has no descriptor, -1, and either loop's registration raises
    ValueError for it). Under trio, trio's own wait: a client that waits for each answer
    waits once per call."""
    trio = _running_trio()
    if trio is not None:
        return trio.lowlevel.wait_readable, (
            trio.ClosedResourceError,
            trio.BusyResourceError,
            ValueError,
        )
    return anyio.wait_readable, (ValueError,)


def _checkpointer() -> Callable[[], Awaitable[None]]:
    """The running event loop's checkpoint: trio's own under trio."""
    trio = _running_trio()
    return trio.lowlevel.checkpoint if trio is not None else anyio.lowlevel.checkpoint


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    err: BaseException = group
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    return err


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if not str(err) and err.__cause__ is not None:
        # anyio's BrokenResourceError says nothing; the OSError it stands for does.
        return _reason(err.__cause__)
    return str(err) or type(err).__name__


@contextlib.asynccontextmanager
async def open_remote(
    uri: ConnectURI, config: Config | None, client: object
) -> AsyncIterator[RemoteDriver]:
    """A remote driver for ``uri`` for as long as the ``async with`` lasts."""
    del config, client  # the daemon has its own; the link is the client
    transport = transport_for(uri)
    failure: AsvirtError | None = None
    async with anyio.create_task_group() as nursery:
        driver = RemoteDriver(uri, transport, nursery)
        try:
            await driver.connect()
        except AsvirtError as err:
            # Raised once out of the nursery, which would wrap it in an ExceptionGroup.
            failure = err
            nursery.cancel_scope.cancel()
        else:
            try:
                yield driver
            finally:
                await driver.aclose()
                nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


__all__ = ["RemoteDriver", "open_remote"]
