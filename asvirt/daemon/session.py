"""One client of the daemon: its requests, its subscriptions, its keepalive, its backlog.

Each client's task waits for its socket; the one that wakes reads the other clients that
have something to say too (:class:`Readers`). Requests are dispatched to the node as they
arrive: a call of high priority (lookups, state, info, destroy) that is done as soon as it
is made is answered there and then, and every other call gets a task of its own, so that a
call waiting on a hung QEMU holds up nothing else; calls of normal priority share a few
workers per client, calls of high priority never wait for one. Subscriptions and their
replay from the journal are the node's own (:class:`~asvirt.events.Subscription`); a task
per subscription moves its events to the client. Everything the daemon sends goes through
one bounded queue: a client that stops reading is disconnected once its backlog is full,
instead of growing the daemon's memory. Nothing a client sends can end the daemon: a bad
message gets a JSON-RPC error and the session goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from .. import __version__, protocol
from ..drivers.local import begin, method_for
from ..errors import AsvirtError, InvalidArgError, OperationDeniedError
from ..events import DomainEvent, EventKind, Subscription
from ..events.codec import event_to_dict
from ..hypervisor.node import Node
from ..log import get_logger
from ..rpc import wire

log = get_logger("asvirt.daemon")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may take of the daemon (``[daemon]`` in asvirtd.toml)."""

    max_message: int = 4 * 1024 * 1024
    max_backlog: int = 10_000
    max_workers: int = 8
    keepalive_interval: float = 5.0
    keepalive_count: int = 5


@dataclasses.dataclass(frozen=True)
class Peer:
    """Who is at the other end of a unix socket (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return cls(-1, -1, -1)
        pid, uid, gid = struct.unpack("3i", raw)
        return cls(pid, uid, gid)


class _Backlogged(Exception):
    """The client does not read what it is sent."""


_ids = itertools.count(1)

#: Bytes a session asks of its socket per read.
_READ_SIZE = 65536
#: Seconds the daemon first looks after a client was heard, when looking starts to
#: pay off (see Readers).
_POLL_GROW_START = 25e-6
#: Answers a read's messages may hold back to send together, at most.
_BATCH_MAX = 64


class Readers:
    """The sockets of every client, to read those that have something to say at once.

    Each session's task waits for its own socket (the kernel then wakes the daemon as it
    wakes any reader of a unix socket: at once, on the sender's CPU). Once awake, a session
    reads its client, then every other client that has something to say at that moment:
    all sockets sit level-triggered in an epoll of their own, registered once, and one look
    at it (a system call that never waits) finds them. Under load most messages are read
    that way, without a wake-up and a re-registration of a task for each (which cost the
    scheduler more than the lookup the message asks for); the task of a client read for
    finds nothing and waits again. What a message asks is done in
    :meth:`Session._received`; a call that has to wait gets a task of its own there, so no
    client waits for another's slow call.

    After a client has been heard, the daemon keeps looking for a while before it lets its
    event loop sleep (:meth:`keep_polling`): a client that makes one call after the other
    sends its next request within microseconds of its answer, and a CPU that went idle in
    between takes longer than that to wake (tens of µs on bare metal from a deep C-state,
    about 40 µs per wake-up in a VM, where it is a VM exit). The looking yields to every
    other task each time (QEMU's monitors, other clients), so it delays nothing. How long it
    looks adapts as the kernel's haltpoll governor does for idle vCPUs: a request that came
    while the daemon slept, but within ``busy_poll`` seconds of the one before, doubles the
    time (up to ``busy_poll``); one that came later halves it, down to nothing. A client
    calling now and then thus costs no looking; an idle daemon sleeps as before.
    """

    def __init__(self, busy_poll: float = 0.0) -> None:
        self._epoll = select.epoll()
        self._sessions: dict[int, Session] = {}
        #: Longest time to keep looking after a client was heard (0: never look without
        #: waiting), in seconds.
        self.busy_poll = busy_poll
        #: How long to look now (see the class's docstring).
        self.window = 0.0
        #: When (time.perf_counter()) a client was last heard.
        self._heard_at = 0.0
        #: Until when to keep looking.
        self._poll_until = 0.0
        #: Whether keep_polling() is looking now (else it waits for _kick).
        self._polling = False
        self._kick = trio.Event()

    def add(self, session: Session) -> None:
        fd = session.fileno
        self._epoll.register(fd, select.EPOLLIN)
        self._sessions[fd] = session

    def remove(self, session: Session) -> None:
        fd = session.fileno
        if self._sessions.get(fd) is session:
            del self._sessions[fd]
            self._epoll.unregister(fd)

    def heard(self) -> None:
        """A client said something: keep looking for a while (see the class's docstring)."""
        if not self.busy_poll:
            return
        now = time.perf_counter()
        if not self._polling:
            # It slept: would a longer look have caught this? Then look longer from now on.
            if now - self._heard_at <= self.busy_poll:
                self.window = min(self.busy_poll, max(2 * self.window, _POLL_GROW_START))
            else:
                self.window = self.window / 2 if self.window > _POLL_GROW_START else 0.0
            if self.window:
                self._kick.set()
        self._heard_at = now
        self._poll_until = now + self.window

    async def keep_polling(self) -> None:
        """Look for clients without sleeping for a while after one was heard (see the
        class's docstring); runs until cancelled."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            self._polling = True
            try:
                while time.perf_counter() < self._poll_until:
                    self.sweep(None)
                    # Other tasks run, and the event loop looks at its own descriptors
                    # without waiting (something is runnable: this task).
                    await trio.lowlevel.checkpoint()
            finally:
                self._polling = False

    def sweep(self, current: Session | None) -> None:
        """Read once every client but ``current`` that has something to say now."""
        sessions = self._sessions
        for fd, _ in self._epoll.poll(0):
            session = sessions.get(fd)
            if session is None or session is current:
                continue
            try:
                session._received()
            except Exception:  # a bug: it ends that client only
                session.log.exception("client session failed")
                session._end()

    def close(self) -> None:
        self._epoll.close()


class Session:
    """One connected client."""

    def __init__(
        self,
        node: Node,
        sock: socket.socket,
        *,
        read_only: bool,
        peer: Peer,
        limits: Limits,
        readers: Readers,
    ) -> None:
        self.id = next(_ids)
        self.node = node
        self.read_only = read_only
        self.peer = peer
        self.limits = limits
        # The stream reads and writes through trio; what is sent when nothing is queued
        # goes straight to the (non-blocking) socket: most answers are small and the socket
        # takes them at once, without waking a writer task for each.
        self._sock = sock
        self.fileno = sock.fileno()
        self._readers = readers
        self._reader = wire.LineReader(limits.max_message)
        #: Whether the client has gone, or its socket failed.
        self._ended = False
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](limits.max_backlog)
        #: Messages queued for the writer and not yet written (none: a send may go direct).
        self._queued = 0
        #: While the messages of one read are handled, what they have to send: sent in one
        #: write once they all are (None: each message is sent as it comes).
        self._batch: list[bytes] | None = None
        self._workers = trio.CapacityLimiter(limits.max_workers)
        self._subscriptions: dict[int, Subscription] = {}
        #: The driver method of each call the client has made.
        self._methods: dict[protocol.Call, Callable[..., Any]] = {}
        self._heard = False
        self._nursery: trio.Nursery | None = None
        self.log = log.bind(client=self.id, uid=peer.uid, pid=peer.pid)

    def __repr__(self) -> str:
        return f"<client {self.id} uid={self.peer.uid} pid={self.peer.pid}>"

    # -- the session's life ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the client until it leaves, is dropped, or the daemon stops."""
        self.log.info("client connected", read_only=self.read_only)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write)
                nursery.start_soon(self._keepalive)
                try:
                    await self._read()
                finally:
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, _Backlogged, OSError):
            pass
        finally:
            for sub in self._subscriptions.values():
                sub.close()
            with trio.CancelScope(shield=True):
                try:
                    await self.node.client_closed(self)
                except AsvirtError as err:
                    self.log.warning(
                        "cannot destroy the client's autodestroy domains", error=str(err)
                    )
                await trio.aclose_forcefully(self._stream)
            self.log.info("client disconnected")

    def send(self, data: bytes) -> None:
        """Send a message to the client now if the socket takes it, else queue it; drops the
        client if its backlog is full. While the messages of a read are handled, what they
        answer (and the events they cause) waits to be sent with the rest."""
        batch = self._batch
        if batch is None:
            self._send_now(data)
        else:
            batch.append(data)
            if len(batch) >= _BATCH_MAX:
                self._batch = []
                self._send_now(b"".join(batch))

    def _send_now(self, data: bytes) -> None:
        """Send now what the socket takes, after what is queued already; queue the rest."""
        if not self._queued:
            data = wire.send_now(self._sock, data)
            if not data:
                return
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        """Queue a message for the writer (after what is queued already); drops the client
        if its backlog is full."""
        try:
            self._out_send.send_nowait(data)
            self._queued += 1
        except trio.WouldBlock:
            self.log.warning("client does not read; disconnecting", backlog=self.limits.max_backlog)
            # Nothing more is queued for it, nor said again for each message that follows.
            self._out_send.close()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _write(self) -> None:
        async for data in self._out_recv:
            # Send what has piled up in one write: fewer system calls under load.
            batch = [data]
            while len(batch) < 256:
                try:
                    batch.append(self._out_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._stream.send_all(b"".join(batch))
            self._queued -= len(batch)

    async def _keepalive(self) -> None:
        """Ping a client that has been silent for an interval, every interval; drop it
        once ``keepalive_count`` pings have each had an interval to be answered and none
        was: after ``interval * (count + 1)`` seconds of silence, as libvirt does."""
        unanswered = 0
        while True:
            await trio.sleep(self.limits.keepalive_interval)
            if self._heard:
                self._heard, unanswered = False, 0
                continue
            if unanswered >= self.limits.keepalive_count:
                self.log.warning("client stopped answering keepalives; disconnecting")
                assert self._nursery is not None
                self._nursery.cancel_scope.cancel()
                return
            self.send(wire.notification("keepalive.ping", {}))
            unanswered += 1

    async def _read(self) -> None:
        """Read the client until it leaves (see :class:`Readers`)."""
        sock = self._sock
        readers = self._readers
        readers.add(self)
        try:
            while not self._ended:
                await trio.lowlevel.wait_readable(sock)
                self._received()
                readers.sweep(self)
        finally:
            readers.remove(self)

    def _received(self) -> None:
        """The socket has something to say: read it once, and handle what it completes.
        The answers to what one read brought go out together, in one write (a client that
        sends several requests at once gets them with one system call)."""
        if self._ended:
            return
        try:
            data = self._sock.recv(_READ_SIZE)
        except BlockingIOError:
            return  # read already, by another session's sweep
        except OSError:
            self._end()
            return
        if not data:
            self._end()
            return
        self._heard = True
        self._readers.heard()
        self._batch = []
        try:
            for line in self._reader.feed(data):
                if isinstance(line, wire.Oversized):
                    self.send(
                        wire.error(
                            None,
                            wire.INVALID_REQUEST,
                            f"message larger than {self.limits.max_message} bytes",
                        )
                    )
                    continue
                self._handle(line)
        finally:
            batch, self._batch = self._batch, None
            if batch:
                self._send_now(b"".join(batch))

    def _end(self) -> None:
        """The client has gone, or its socket failed: the session ends (its task may be
        waiting for the socket while another session read it)."""
        self._ended = True
        self._readers.remove(self)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- messages --------------------------------------------------------------------------------

    def _handle(self, line: bytes) -> None:
        try:
            self._dispatch(line)
        except Exception as err:  # a bug; the client gets an error, the daemon goes on
            self.log.exception("message failed unexpectedly")
            self.send(
                wire.error(None, wire.INTERNAL_ERROR, f"internal error: {type(err).__name__}")
            )

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = wire.decode_request(line)
        except ValueError as err:
            self.send(wire.error(None, wire.PARSE_ERROR, f"not JSON: {err}"))
            return
        if msg is None or msg.jsonrpc != "2.0":
            self.send(wire.error(None, wire.INVALID_REQUEST, "not a JSON-RPC 2.0 message"))
            return
        method = msg.method
        msg_id = msg.id
        if (
            msg_id is not None
            and type(msg_id) is not int  # most: checked first, without building a tuple
            and (isinstance(msg_id, bool) or not isinstance(msg_id, (int, str)))
        ):
            self.send(wire.error(None, wire.INVALID_REQUEST, "an id is a number or a string"))
            return
        if not isinstance(method, str):
            self.send(wire.error(msg_id, wire.INVALID_REQUEST, "no method"))
            return
        params = msg.params
        if msg_id is None:
            return  # notifications from clients (keepalive.pong) only say they are alive
        try:
            c = protocol.CALLS.get(method)
            if c is not None:
                self._start_call(msg_id, c, params)
            elif method == "hello":
                self.send(wire.result(msg_id, self._hello()))
            elif method == "events.subscribe":
                try:
                    self.send(wire.result(msg_id, self._subscribe(params)))
                except InvalidArgError as err:
                    self._invalid_params(msg_id, err)
            elif method == "bye":
                assert self._nursery is not None
                self._nursery.start_soon(self._bye, msg_id)
            elif method == "events.unsubscribe":
                try:
                    self._unsubscribe(params)
                except InvalidArgError as err:
                    self._invalid_params(msg_id, err)
                    return
                self.send(wire.result(msg_id, None))
            else:
                self.send(wire.error(msg_id, wire.METHOD_NOT_FOUND, f"no such method: {method!r}"))
        except AsvirtError as err:
            self.send(wire.error_from(msg_id, err))

    def _invalid_params(self, msg_id: int | str, err: InvalidArgError) -> None:
        """JSON-RPC's answer to arguments that do not fit the method (the client raises
        InvalidArgError): the same for declared calls and the session's own methods."""
        self.send(wire.error(msg_id, wire.INVALID_PARAMS, str(err), {"error": "InvalidArgError"}))

    async def _bye(self, msg_id: int | str) -> None:
        """The client is leaving: end what it started with autodestroy before it goes, so
        that they are gone when its close() returns, as they are in-process."""
        try:
            await self.node.client_closed(self)
        except AsvirtError as err:
            self.send(wire.error_from(msg_id, err))
            return
        self.send(wire.result(msg_id, None))

    def _hello(self) -> dict[str, Any]:
        return {
            "protocol": wire.PROTOCOL_VERSION,
            "version": __version__,
            "node": self.node.name,
            "hostname": self.node.domains.hostname(),
            "read_only": self.read_only,
            "last_seq": self.node.bus.last_seq,
            # How often a silent client is pinged: a client that does not always read may
            # look for pings at this pace.
            "keepalive": self.limits.keepalive_interval,
        }

    def _start_call(self, msg_id: int | str, c: protocol.Call, params: object) -> None:
        if self.read_only and not c.read_only_ok:
            # Who tried, as for the calls that are made: SO_PEERCRED's uid and pid.
            self.log.warning("call refused", method=c.name, reason="read-only connection")
            what = "changes state" if c.mutates else "may reveal secrets"
            raise OperationDeniedError(f"'{c.name}' {what}; this connection is read-only")
        try:
            args = protocol.decode_params(c, params)
        except InvalidArgError as err:
            self._invalid_params(msg_id, err)
            return
        secure_arg = c.secure_given(args) if self.read_only else None
        if secure_arg is not None:
            self.log.warning("call refused", method=c.name, reason="read-only connection")
            raise OperationDeniedError(
                f"'{c.name}' with '{secure_arg}' may reveal secrets; this connection is read-only"
            )
        if c.progress is not None:
            args[c.progress] = self._progress_sender(msg_id) if args[c.progress] else None
        if c.mutates or c.secure or c.secure_given(args):
            # who changed or read what read-only clients may not
            self.log.info("call", method=c.name, **_loggable(args))
        if c.priority is protocol.Priority.HIGH:
            # Most of these (lookups, state, info) are done as soon as they are made: they
            # are answered here, and only one that has to wait gets a task of its own.
            try:
                done, value = begin(self.node, c, args, client=self, method=self._method(c))
            except Exception as err:
                self.send(self._failure(msg_id, c, err))
                return
            if done:
                self.send(self._success(msg_id, c, value))
                return
        else:
            value = None
        assert self._nursery is not None
        self._nursery.start_soon(self._call, msg_id, c, args, value)

    def _method(self, c: protocol.Call) -> Callable[..., Any]:
        """The node's driver method for ``c``, found once per session (see begin)."""
        method = self._methods.get(c)
        if method is None:
            method = self._methods[c] = method_for(self.node, c)
        return method

    def _progress_sender(self, msg_id: int | str) -> Callable[[float], None]:
        """A progress callback that tells the client, for its request ``msg_id``."""

        def tell(fraction: float) -> None:
            self.send(wire.notification("progress", {"id": msg_id, "fraction": fraction}))

        return tell

    async def _call(
        self,
        msg_id: int | str,
        c: protocol.Call,
        args: dict[str, Any],
        started: Awaitable[Any] | None,
    ) -> None:
        """Finish a call that waits: ``started`` is what :func:`begin` left of a call of high
        priority; a call of normal priority starts once a worker is free."""
        try:
            if started is not None:
                value = await started
            else:
                async with self._workers:
                    done, value = begin(self.node, c, args, client=self, method=self._method(c))
                    if not done:
                        value = await value
            reply = self._success(msg_id, c, value)
        except Exception as err:
            reply = self._failure(msg_id, c, err)
        self.send(reply)

    def _success(self, msg_id: int | str, c: protocol.Call, value: Any) -> bytes:
        try:
            return wire.result(msg_id, protocol.wire_result(c, value))
        except Exception as err:
            return self._failure(msg_id, c, err)

    def _failure(self, msg_id: int | str, c: protocol.Call, err: Exception) -> bytes:
        if isinstance(err, AsvirtError):
            return wire.error_from(msg_id, err)
        # A bug; the client gets an error, the daemon goes on.
        self.log.error("call failed unexpectedly", method=c.name, exc_info=err)
        return wire.error(msg_id, wire.INTERNAL_ERROR, f"internal error: {type(err).__name__}")

    # -- events ------------------------------------------------------------------------------

    def _subscribe(self, params: object) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise InvalidArgError("events.subscribe: params must be an object")
        unknown = set(params) - {"sub", "domain", "kinds", "since"}
        if unknown:
            raise InvalidArgError(
                f"events.subscribe: unknown argument(s): {', '.join(sorted(map(str, unknown)))}"
            )
        sub_id = params.get("sub")
        if isinstance(sub_id, bool) or not isinstance(sub_id, int) or sub_id in self._subscriptions:
            raise InvalidArgError("events.subscribe: 'sub' must be a new integer id")
        domain = params.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise InvalidArgError("events.subscribe: 'domain' is a name or a UUID")
        since = params.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            raise InvalidArgError("events.subscribe: 'since' is a sequence number")
        kinds = params.get("kinds")
        if kinds is not None:
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise InvalidArgError("events.subscribe: 'kinds' is a list of event kinds")
            try:
                kinds = [EventKind(k) for k in kinds]
            except ValueError as err:
                raise InvalidArgError(f"events.subscribe: {err}") from None
        cursor = self.node.bus.last_seq if since is None else since
        sub = self.node.bus.subscribe(domain=domain, kinds=kinds, since=since, buffer=None)
        self._subscriptions[sub_id] = sub
        if sub.replaying:
            assert self._nursery is not None
            self._nursery.start_soon(self._replay, sub_id, sub)
        else:
            sub.deliver_directly(lambda event: self._send_event(sub_id, event))
        return {"sub": sub_id, "cursor": cursor}

    def _unsubscribe(self, params: object) -> None:
        sub_id = params.get("sub") if isinstance(params, dict) else None
        sub = self._subscriptions.pop(sub_id, None) if isinstance(sub_id, int) else None
        if sub is None:
            raise InvalidArgError(f"events.unsubscribe: no subscription {sub_id!r}")
        sub.close()

    def _send_event(self, sub_id: int, event: DomainEvent) -> None:
        # Live events go out as they are published: the events a call causes are queued
        # before the call's answer, so the client has them when its call returns.
        self.send(wire.notification("event", {"sub": sub_id, "event": event_to_dict(event)}))

    async def _replay(self, sub_id: int, sub: Subscription) -> None:
        """Send the retained events a subscription asked for, at the client's pace (never
        dropping the client for a long replay); then switch it to live delivery."""
        sent = 0
        while not sub.closed:
            try:
                event = sub.receive_nowait()
            except trio.WouldBlock:
                sub.deliver_directly(lambda event: self._send_event(sub_id, event))
                return
            except trio.EndOfChannel:
                return
            data = event_to_dict(event)
            message = wire.notification("event", {"sub": sub_id, "event": data})
            # Queued without yielding while there is room, so that the writer finds many
            # and sends them in one write (a yield per event woke it for each one); when the
            # backlog is full, this waits for the client to read.
            self._queued += 1
            try:
                self._out_send.send_nowait(message)
            except trio.WouldBlock:
                try:
                    await self._out_send.send(message)
                except BaseException:
                    self._queued -= 1
                    raise
            sent += 1
            if sent % 256 == 0:
                await trio.lowlevel.checkpoint()


#: Characters of one argument the log shows: a client's arguments may be as long as a
#: message, and nested as deep as the JSON parser goes (deeper than a log formatter can).
_LOG_VALUE_MAX = 256


def _loggable(args: dict[str, Any]) -> dict[str, Any]:
    """A call's arguments as its log line shows them: no XML (it may hold secrets), data or
    callbacks; flags and numbers as they are, anything else as compact JSON, cut at
    _LOG_VALUE_MAX."""
    shown: dict[str, Any] = {}
    for key, value in args.items():
        if key == "xml" or isinstance(value, bytes) or callable(value):
            continue
        if (
            value is None
            or isinstance(value, bool)
            or (isinstance(value, int | float) and abs(value) < 2**63)
        ):
            shown[key] = value
            continue
        try:
            text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        except (RecursionError, ValueError, TypeError):
            text = "(nested too deeply)"
        shown[key] = text if len(text) <= _LOG_VALUE_MAX else text[:_LOG_VALUE_MAX] + "..."
    return shown


__all__ = ["Limits", "Peer", "Session"]
