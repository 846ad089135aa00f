"""The QMP client: one session with one QEMU, in trio, over the monitor's unix socket.

QMP is JSON each way: QEMU greets, the client negotiates capabilities, then sends commands
and reads replies and events in the order QEMU wrote them. One reader task per session (in
the :class:`MonitorHost`'s nursery) parses every line as it arrives: events go synchronously
to a callback, replies wake the command that waits for them.

Commands carry no ``id`` and no line end: QEMU answers a session's commands one at a time,
in the order it read them, so the n-th reply is the n-th command's (a queue of waiters, in
the order their commands were written). The bytes matter: QEMU 7.2's monitor reads its
socket one byte per iteration of its I/O thread's loop (``monitor_can_read`` allows 1; six
system calls a byte), which costs it 2-8 us of CPU per byte sent (as loaded as the machine
is) — about as much as the rest of a small query. A statistics query's
``"id":12345`` and newline were ~10% of what QEMU spent answering it (bench_stats).
What keeps the order safe: only what :func:`json.dumps` writes goes out (no NaN, nothing
QEMU's lexer could split into several errors), within QEMU's parser limits, and a command
is queued exactly when its bytes are (see :meth:`Monitor._send`).

Why not ``qemu.qmp``: it is asyncio, and through trio-asyncio every command cost 1.0-1.4 ms of
CPU on the (loaded, 2-core) development machine: each asyncio callback a trio task switch, a
writer task and a reply queue per command. Here one costs 0.3-0.5 ms there, most of it the
kernel's socket work, and a domain's statistics queries go out in one write
(:meth:`Monitor.execute_many`): 100 domains' statistics took 241 ms of supervisor CPU before,
78 ms after. Statistics now ask every QEMU from one task before reading any answer
(:meth:`Monitor.ask`, with commands encoded once: :meth:`Monitor.prepare`): 23-27 ms.
What it kept from the asyncio adapter, each measured then:

* Events are handed to ``on_event`` without awaiting, in order, before the reply of any
  command QEMU sent after them (QEMU sends ``RESUME`` *before* the reply to ``cont``), and
  nothing keeps them (no history that grows).
* Closing never waits for the peer: a QEMU that stopped reading cannot hang it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from ...errors import OperationTimeoutError, QMPError

#: Bytes asked of the socket at once: most replies fit, big ones (schemas) take several.
_READ_SIZE = 65536

#: The longest command written: QEMU's parser refuses more than 2M tokens or 64 MiB in one
#: message, and would answer such a message with several errors — which would shift every
#: later reply onto the wrong command. Nothing asvirt sends comes near this.
_MAX_COMMAND = 1 << 20

EventCallback = Callable[[dict[str, Any]], None]

_msgspec_decode = msgspec.json.Decoder().decode


def _decode(line: bytes) -> Any:
    """A message QEMU wrote. msgspec parses a reply 3-6x faster than :func:`json.loads`
    (a blockstats answer: 27 us instead of 82 on the loaded development machine), and the
    statistics of a hundred domains parse two hundred of them; what it refuses and
    :mod:`json` takes (a float beyond a double's range, a lone surrogate: QEMU writes
    neither) still goes through :mod:`json`. ValueError if neither can read it."""
    try:
        return _msgspec_decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return json.loads(line)


@dataclasses.dataclass
class MonitorCounters:
    """What the monitors of one node count together (the daemon's /metrics shows them)."""

    #: Commands (and handshakes) QEMU did not answer within their deadline.
    timeouts: int = 0


class MonitorHost:
    """Where the monitors of one node (or one probe) run their reader tasks."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery


@asynccontextmanager
async def monitor_host() -> AsyncIterator[MonitorHost]:
    """A host for monitors for as long as the block lasts; sessions still open at its end
    are dropped (their QEMUs keep running, for the next supervisor to re-attach)."""
    async with trio.open_nursery() as nursery:
        try:
            yield MonitorHost(nursery)
        finally:
            nursery.cancel_scope.cancel()


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    """A command encoded once (:meth:`Monitor.prepare`), for a caller that asks it again and
    again (statistics): encoding is a good part of what a query costs the supervisor."""

    command: str
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """Commands written together (:meth:`Monitor.ask`), their bytes joined once."""

    commands: tuple[str, ...]
    data: bytes

    @classmethod
    def of(cls, commands: Sequence[Prepared]) -> Batch:
        return cls(tuple(c.command for c in commands), b"".join(c.data for c in commands))


class _Reply:
    """A command waiting for its reply. The event to wait on is made only for a waiter that
    has to wait: statistics ask a hundred QEMUs twice each per call, and read most answers
    after they came."""

    __slots__ = ("_event", "answered", "command", "message")

    def __init__(self, command: str) -> None:
        self.command = command
        self.answered = False
        self.message: dict[str, Any] | None = None  # None once answered: the session ended
        self._event: trio.Event | None = None

    def finish(self, message: dict[str, Any] | None) -> None:
        self.message = message
        self.answered = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if not self.answered:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()


#: A command :meth:`Monitor.ask` wrote, waiting for its answer.
Pending = _Reply


class Monitor:
    """One QMP session with one QEMU, driven from trio.

    Events are delivered to ``on_event`` synchronously, in the order QEMU sent them, before the
    reply of any command QEMU sent after them. Deadlines that pass are counted in
    ``counters`` (the node's, shared by its monitors).
    """

    def __init__(
        self,
        host: MonitorHost,
        *,
        name: str,
        on_event: EventCallback,
        timeout: float,
        counters: MonitorCounters | None = None,
    ) -> None:
        self._host = host
        self._name = name
        self._on_event = on_event
        self._timeout = timeout
        self._counters = counters if counters is not None else MonitorCounters()
        self._sock: socket.socket | None = None
        self._greeting: dict[str, Any] | None = None
        self._buffer = b""
        #: Commands written and not answered yet, in the order they were written (QEMU's
        #: answers come in that order). Abandoned ones stay until their answer is read.
        self._waiting: collections.deque[_Reply] = collections.deque()
        self._send_lock = trio.Lock()
        #: Held from a descriptor's sending to the ``getfd`` that names it: QEMU keeps only
        #: the descriptor that came last, so another sent in between would be claimed by the
        #: first name, and the second ``getfd`` would find none.
        self._fd_lock = trio.Lock()
        self._reader_scope = trio.CancelScope()
        self._ended = trio.Event()  # the peer closed the session (or we did)
        self._closed = False
        self._running = False  # negotiated: commands may go out
        #: The rest of a write its caller abandoned (cancelled while the socket was full):
        #: sent before anything else, so that QEMU never reads half a command.
        self._unsent = b""

    @property
    def greeting(self) -> dict[str, Any] | None:
        return self._greeting

    @property
    def retained_events(self) -> int:
        """Events held for nobody: always 0 (every event goes to ``on_event`` at once)."""
        return 0

    async def connect(self, sock: socket.socket, *, timeout: float | None = None) -> None:
        """Negotiate QMP over an already connected socket (the monitor owns it afterwards)."""
        sock.setblocking(False)
        self._sock = sock
        try:
            with trio.fail_after(self._timeout if timeout is None else timeout):
                greeting = await self._read_message()
                if greeting is None or not isinstance(greeting.get("QMP"), dict):
                    raise QMPError("cannot connect to QEMU's monitor: it sent no QMP greeting")
                self._greeting = greeting
                await self._send(self._encode("qmp_capabilities", None), [])
                while True:
                    reply = await self._read_message()
                    if reply is None:
                        raise QMPError("QEMU's monitor closed during the QMP handshake")
                    if "event" in reply:
                        continue  # none before negotiation, but harmless if one comes
                    if "error" in reply:
                        desc = (reply.get("error") or {}).get("desc", "")
                        raise QMPError(f"cannot connect to QEMU's monitor: {desc}")
                    break
        except trio.TooSlowError:
            self._counters.timeouts += 1
            self._sock.close()
            raise OperationTimeoutError("QEMU did not complete the QMP handshake in time") from None
        except QMPError:
            self._sock.close()
            raise
        except (OSError, ValueError) as err:
            # The session ended (QEMU killed, the socket closed) or it is not QMP.
            self._sock.close()
            raise QMPError("QEMU's monitor closed during the QMP handshake") from err
        self._running = True
        self._host.nursery.start_soon(self._read_forever)

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises :class:`OperationTimeoutError` after ``timeout`` seconds (the monitor's default
        deadline if None; 0: none, the caller bounds the call), :class:`QMPError` if QEMU
        answers with an error or the session is gone.
        """
        (result,) = await self._deadline(command, timeout, self._exchange([(command, arguments)]))
        if isinstance(result, QMPError):
            raise result
        return result

    async def execute_many(
        self, commands: Sequence[tuple[str, dict[str, Any] | None]], *, timeout: float | None = None
    ) -> list[Any]:
        """Run several commands at once (written together, answered in one round trip): each
        one's ``return`` value, or the :class:`QMPError` QEMU answered it with. Raises as
        :meth:`execute` does if the session is gone or the deadline passes."""
        if not commands:
            return []
        return await self._deadline(commands[0][0], timeout, self._exchange(commands))

    @classmethod
    def prepare(cls, command: str, arguments: dict[str, Any] | None = None) -> Prepared:
        """``command`` encoded for :meth:`ask`. QMPError if it cannot be sent (not JSON)."""
        return Prepared(command, cls._encode(command, arguments))

    async def ask(self, commands: Sequence[Prepared] | Batch, *, deadline: float) -> list[Pending]:
        """Write ``commands`` (together) and return their pending replies, for :meth:`answers`
        to read later: the caller asks many QEMUs before it waits for any. No checkpoint when
        the socket takes it all at once (the usual case); else it waits for the socket until
        ``deadline`` (trio time), after which the commands are abandoned. QMPError if the
        session is gone."""
        batch = commands if isinstance(commands, Batch) else Batch.of(commands)
        self._check_usable(batch.commands[0])
        data = batch.data
        replies = [_Reply(command) for command in batch.commands]
        sock = self._sock
        assert sock is not None
        if not self._send_lock.locked() and not self._unsent:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as err:
                raise QMPError(
                    f"lost the monitor connection during '{replies[0].command}'"
                ) from err
            if sent:
                self._waiting.extend(replies)
                if sent == len(data):
                    return replies
                # The rest is owed before anything else; it goes out below.
                data, self._unsent, replies_to_queue = b"", data[sent:], []
            else:
                replies_to_queue = replies
        else:
            replies_to_queue = replies
        with trio.move_on_at(deadline):
            try:
                await self._send(data, replies_to_queue)
            except (OSError, trio.ClosedResourceError) as err:
                # ClosedResourceError: the session was closed (QEMU died and its runner
                # closed the monitor) while this waited for room in the socket.
                raise QMPError(
                    f"lost the monitor connection during '{replies[0].command}'"
                ) from err
        return replies

    @classmethod
    def answers(cls, replies: list[Pending]) -> list[Any]:
        """What :meth:`ask`'s commands were answered: each one's ``return`` value, the
        :class:`QMPError` QEMU answered it with, or None if it is not answered (yet)."""
        return [cls._result(r) if r.answered else None for r in replies]

    @staticmethod
    def answered(replies: list[Pending]) -> bool:
        return all(r.answered for r in replies)

    @staticmethod
    def lost(replies: list[Pending]) -> bool:
        """Whether the session ended before QEMU answered one of :meth:`ask`'s commands
        (QEMU died, or closed its monitor)."""
        return any(r.answered and r.message is None for r in replies)

    @property
    def ended(self) -> bool:
        """The session is over (the peer closed it, or we did): nothing more is answered."""
        return self._ended.is_set()

    @staticmethod
    async def wait_answered(replies: list[Pending]) -> None:
        """Wait until every one of :meth:`ask`'s commands is answered (or the session ended):
        the caller bounds the wait."""
        for reply in replies:
            await reply.wait()

    def _check_usable(self, command: str) -> None:
        if self._closed:
            raise QMPError("the monitor connection is closed")
        if self._ended.is_set():
            raise QMPError(f"lost the monitor connection during '{command}'")
        if not self._running:
            raise QMPError(f"QEMU's monitor is not connected yet for '{command}'")

    async def _deadline(self, command: str, timeout: float | None, exchange: Any) -> Any:
        deadline = self._timeout if timeout is None else timeout
        if deadline <= 0:
            return await exchange
        try:
            with trio.fail_after(deadline):
                return await exchange
        except trio.TooSlowError:
            self._counters.timeouts += 1
            raise OperationTimeoutError(
                f"QEMU did not answer '{command}' within {deadline:g} s"
            ) from None

    async def _exchange(self, commands: Sequence[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        self._check_usable(commands[0][0])
        data = b"".join(self._encode(command, arguments) for command, arguments in commands)
        replies = [_Reply(command) for command, _ in commands]
        try:
            await self._send(data, replies)
            results = []
            for reply in replies:
                await reply.wait()
                results.append(self._result(reply))
            return results
        except (OSError, trio.ClosedResourceError) as err:
            raise QMPError(f"lost the monitor connection during '{commands[0][0]}'") from err

    @staticmethod
    def _result(reply: _Reply) -> Any:
        message = reply.message
        if message is None:
            return QMPError(f"lost the monitor connection during '{reply.command}'")
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            return QMPError(
                f"QEMU refused '{reply.command}': {error.get('desc', '')}",
                error_class=error.get("class"),
            )
        return message.get("return")

    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` under ``name`` (SCM_RIGHTS, then QMP ``getfd``), for
        a command that names it (``migrate`` to ``fd:NAME``). ``fd`` stays ours too."""
        await self.pass_fd(fd, "getfd", {"fdname": name})

    async def add_fd(self, fd: int) -> dict[str, Any]:
        """Hand QEMU a copy of ``fd`` in a new fd set (SCM_RIGHTS, then QMP ``add-fd``);
        ``add-fd``'s answer: ``fdset-id``, and ``fd``, its number in QEMU's process (a
        ``secret`` object reads ``/proc/self/fd/N``). ``fd`` stays ours too."""
        result = await self.pass_fd(fd, "add-fd", {})
        if not isinstance(result, dict) or not isinstance(result.get("fd"), int):
            raise QMPError(f"add-fd answered {result!r}")
        return result

    async def pass_fd(self, fd: int, command: str, arguments: dict[str, Any]) -> Any:
        """Send ``fd`` (SCM_RIGHTS) and run ``command``, which claims it; its answer."""
        if self._closed:
            raise QMPError("the monitor connection is closed")
        sock = self._sock
        assert sock is not None
        try:
            with trio.fail_after(self._timeout if self._timeout > 0 else math.inf):
                async with self._fd_lock:
                    async with self._send_lock:
                        # The descriptor travels with a byte QEMU reads as whitespace, and must
                        # be there before the getfd that claims it (the lock keeps the order),
                        # after what an abandoned write still owes (not inside its command).
                        await self._write_locked(b"", [])
                        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("@i", fd))]
                        while True:
                            try:
                                sock.sendmsg([b" "], fds)
                                break
                            except BlockingIOError:
                                await trio.lowlevel.wait_writable(sock)
                    return await self.execute(command, arguments, timeout=0)
        except trio.TooSlowError:
            raise OperationTimeoutError(f"QEMU did not answer '{command}' in time") from None
        except OSError as err:
            raise QMPError("lost the monitor connection while passing a file") from err

    async def wait_closed(self) -> None:
        """Wait until the peer has closed the session.

        Once this returns, every event QEMU sent before closing has been handed to
        ``on_event``: the reader processes the stream in order and sees the end last.
        """
        await self._ended.wait()

    async def close(self) -> None:
        """End the session. Safe to call twice, while cancelled, and on a dead peer."""
        if self._closed:
            return
        self._closed = True
        self._reader_scope.cancel()
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        self._end()
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- the wire --------------------------------------------------------------------------------

    @staticmethod
    def _encode(command: str, arguments: dict[str, Any] | None) -> bytes:
        """A command as QEMU reads it: compact, without ``id`` or line end (QEMU parses a
        message as soon as its braces close; every byte costs it a main-loop iteration)."""
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as err:
            raise QMPError(f"cannot send '{command}' to QEMU: not plain JSON ({err})") from None
        if len(data) > _MAX_COMMAND:
            raise QMPError(f"cannot send '{command}' to QEMU: {len(data)} bytes is too long")
        return data

    async def _send(self, data: bytes, replies: list[_Reply]) -> None:
        """Write ``data`` (the commands ``replies`` wait for) after whatever an abandoned
        write still owes, and queue the waiters in the order of their bytes: under the lock,
        before the write, unqueued again if the write is abandoned before any of ``data``
        went out (QEMU will never answer those)."""
        # Straight to the socket, without a checkpoint when nobody else is writing and it
        # takes all (a task switch costs more than the write): statistics write to a
        # hundred monitors at once.
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            await self._write_locked(data, replies)
        finally:
            lock.release()

    async def _write_locked(self, data: bytes, replies: list[_Reply]) -> None:
        """:meth:`_send`'s work, the send lock held."""
        sock = self._sock
        assert sock is not None
        self._waiting.extend(replies)
        backlog, self._unsent = self._unsent, b""
        whole = backlog + data if backlog else data
        view = memoryview(whole)
        try:
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
        except BaseException:
            sent = len(whole) - len(view)
            if sent > len(backlog):
                # Part of this write went out: the rest must follow, and be answered.
                self._unsent = bytes(view)
            else:
                # None of it: the commands are dropped (their caller gave up), only an
                # earlier remainder is still owed. Ours are the newest waiters: the
                # lock kept anyone from queueing after them.
                self._unsent = whole[sent : len(backlog)]
                for _ in replies:
                    self._waiting.pop()
            raise

    async def _recv(self) -> bytes:
        sock = self._sock
        assert sock is not None
        while True:
            try:
                return sock.recv(_READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def _read_message(self) -> dict[str, Any] | None:
        """The next message (handshake only, before the reader runs); None at the end."""
        while b"\n" not in self._buffer:
            data = await self._recv()
            if not data:
                return None
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = _decode(line)
        return message if isinstance(message, dict) else {}

    async def _read_forever(self) -> None:
        pending = [self._buffer] if self._buffer else []
        self._buffer = b""
        try:
            with self._reader_scope:
                while True:
                    try:
                        data = await self._recv()
                    except (OSError, trio.ClosedResourceError):
                        data = b""  # reset, or closed by close(): the end all the same
                    if not data:
                        return
                    end = data.rfind(b"\n")
                    if end < 0:
                        pending.append(data)
                        continue
                    pending.append(data[: end + 1])
                    chunk = b"".join(pending)
                    pending = [data[end + 1 :]] if end + 1 < len(data) else []
                    for line in chunk.splitlines():
                        if line.strip():
                            self._dispatch(line)
        finally:
            self._end()

    def _dispatch(self, line: bytes) -> None:
        try:
            message = _decode(line)
        except ValueError:
            return  # not QMP; nothing waits for it
        if not isinstance(message, dict):
            return
        if "event" in message:
            # Never await here: the reply that follows must not wait for a listener.
            self._on_event(message)
            return
        if not self._waiting:
            return  # an answer nobody asked for: every command written has its waiter
        reply = self._waiting.popleft()  # abandoned or not, this answer is its command's
        reply.finish(message)

    def _end(self) -> None:
        """The session is over: whoever still waits for a reply is told so."""
        self._ended.set()
        for reply in self._waiting:
            reply.finish(None)
        self._waiting.clear()
