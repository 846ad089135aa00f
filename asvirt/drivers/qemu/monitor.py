"""The QMP adapter: ``qemu.qmp`` (asyncio) made usable from trio.

This is the only module where asyncio appears. Each connection owns one trio-asyncio loop
(:func:`asyncio_loop`); every :class:`Monitor` runs its ``qemu.qmp`` client on that loop.

Traps of ``qemu.qmp`` this module deals with (each one measured, not guessed):

* Its default ``events`` listener keeps every event forever (a queue and a history list that
  nobody drains), and it refuses to be removed. Event dispatch is overridden instead: events
  skip the listeners and go, synchronously and without awaiting, to a callback that forwards
  them into a bounded buffer.
* A listener must never await: QEMU sends ``RESUME`` *before* the reply to ``cont``, and the
  client's reader task delivers events and replies in order, so a listener that blocks also
  blocks the reply that would unblock it.
* ``disconnect()`` can hang on a peer that stopped reading; it is shielded (so that closing
  also works while being cancelled) and bounded by a timeout.
* It logs at ERROR on ordinary cancellation and pretty-prints (``json.dumps(indent=2)``)
  every message even when DEBUG is off. Its logger is raised to CRITICAL and the message hooks
  are replaced by ones that do nothing unless DEBUG logging is on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_asyncio
from qemu.qmp import ExecuteError, QMPClient, Runstate
from qemu.qmp.message import Message
from qemu.qmp.protocol import ConnectError, StateError

from ...errors import OperationTimeoutError, QMPError

# qemu.qmp reports ordinary cancellations and disconnects at ERROR; asvirt reports what
# matters itself, with the domain bound to the log line.
_QMP_LOGGER = logging.getLogger("qemu.qmp")
_QMP_LOGGER.setLevel(logging.CRITICAL)

#: Seconds ``close()`` waits for qemu.qmp to tear a session down before abandoning it.
DISCONNECT_TIMEOUT = 2.0

EventCallback = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class MonitorCounters:
    """What the monitors of one node count together (the daemon's /metrics shows them)."""

    #: Commands (and handshakes) QEMU did not answer within their deadline.
    timeouts: int = 0


@asynccontextmanager
async def asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """Run an asyncio event loop inside trio for as long as the block lasts."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


class _QuietQMPClient(QMPClient):
    """QMPClient that hands events to one callback and does not pretty-print every message."""

    def __init__(self, name: str, on_event: EventCallback) -> None:
        super().__init__(name)
        self._on_event = on_event

    async def _event_dispatch(self, msg: Message) -> None:
        # Never await here (see the module docstring); no listener keeps a copy.
        self._on_event(dict(msg))

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", msg)
        return msg


class Monitor:
    """One QMP session with one QEMU, driven from trio.

    Events are delivered to ``on_event`` synchronously, in the order QEMU sent them, before the
    reply of any command QEMU sent after them. Deadlines that pass are counted in
    ``counters`` (the node's, shared by its monitors).
    """

    def __init__(
        self,
        loop: trio_asyncio.TrioEventLoop,
        *,
        name: str,
        on_event: EventCallback,
        timeout: float,
        counters: MonitorCounters | None = None,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._counters = counters if counters is not None else MonitorCounters()
        self._client = _QuietQMPClient(name, on_event)
        self._closed = False

    @property
    def greeting(self) -> dict[str, Any] | None:
        greeting = self._client.greeting
        return None if greeting is None else greeting._asdict()

    @property
    def retained_events(self) -> int:
        """Whether qemu.qmp holds events for listeners (their history, plus one if any is
        queued): always 0, as asvirt registers none — a guard against qemu.qmp's default
        listener, which would keep every event forever."""
        events = self._client.events
        return len(events.history) + (0 if events.empty() else 1)

    async def connect(self, sock: socket.socket, *, timeout: float | None = None) -> None:
        """Negotiate QMP over an already connected socket (the monitor owns it afterwards)."""
        sock.setblocking(False)
        try:
            with trio.fail_after(self._timeout if timeout is None else timeout):
                await self._loop.run_aio_coroutine(self._client.connect(sock))
        except trio.TooSlowError:
            self._counters.timeouts += 1
            sock.close()
            raise OperationTimeoutError("QEMU did not complete the QMP handshake in time") from None
        except ConnectError as err:
            sock.close()
            raise QMPError(f"cannot connect to QEMU's monitor: {err.exc or err}") from err
        except (AssertionError, StateError, ConnectionError, EOFError, OSError) as err:
            # qemu.qmp checks its state with assert: the session ended (QEMU killed, the
            # socket closed) between the handshake and the end of connect().
            sock.close()
            raise QMPError("QEMU's monitor closed during the QMP handshake") from err

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises :class:`OperationTimeoutError` after ``timeout`` seconds (the monitor's default
        deadline if None; 0: none, the caller bounds the call), :class:`QMPError` if QEMU
        answers with an error or the session is gone.
        """
        if self._closed:
            raise QMPError("the monitor connection is closed")
        deadline = self._timeout if timeout is None else timeout
        if deadline <= 0:
            return await self._execute(command, arguments)
        try:
            with trio.fail_after(deadline):
                return await self._execute(command, arguments)
        except trio.TooSlowError:
            self._counters.timeouts += 1
            raise OperationTimeoutError(
                f"QEMU did not answer '{command}' within {deadline:g} s"
            ) from None

    async def _execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        try:
            return await self._loop.run_aio_coroutine(self._client.execute(command, arguments))
        except ExecuteError as err:
            raise QMPError(f"QEMU refused '{command}': {err}", error_class=err.error_class) from err
        except (AssertionError, StateError, ConnectionError, EOFError, OSError) as err:
            # (qemu.qmp checks its own state with assert: a session that just ended.)
            raise QMPError(f"lost the monitor connection during '{command}'") from err
        except Exception as err:  # ExecInterruptedError and other session failures
            if type(err).__module__.startswith("qemu.qmp"):
                raise QMPError(f"'{command}' was interrupted: {err}") from err
            raise

    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` under ``name`` (SCM_RIGHTS, then QMP ``getfd``), for
        a command that names it (``migrate`` to ``fd:NAME``). ``fd`` stays ours too."""
        if self._closed:
            raise QMPError("the monitor connection is closed")
        client = self._client

        async def send() -> None:
            # In one asyncio task: the descriptor travels with a byte QEMU reads as
            # whitespace, and must be there before the getfd that claims it.
            client.send_fd_scm(fd)
            await client.execute("getfd", {"fdname": name})

        try:
            with trio.fail_after(self._timeout if self._timeout > 0 else math.inf):
                await self._loop.run_aio_coroutine(send())
        except trio.TooSlowError:
            raise OperationTimeoutError("QEMU did not answer 'getfd' in time") from None
        except ExecuteError as err:
            raise QMPError(f"QEMU refused 'getfd': {err}", error_class=err.error_class) from err
        except (AssertionError, StateError, ConnectionError, EOFError, OSError) as err:
            raise QMPError("lost the monitor connection while passing a file") from err

    async def wait_closed(self) -> None:
        """Wait until the peer has closed the session.

        Once this returns, every event QEMU sent before closing has been handed to
        ``on_event``: the reader processes a stream in order and sees the end last.
        """
        client = self._client

        async def not_running() -> None:
            # Check and wait inside one asyncio task: qemu.qmp signals a runstate change by
            # set() then clear() of an Event, so a waiter that is not yet waiting at that
            # moment (a check made from trio, then a wait scheduled later) misses it.
            while client.runstate is Runstate.RUNNING:
                await client.runstate_changed()

        await self._loop.run_aio_coroutine(not_running())

    async def close(self) -> None:
        """End the session. Safe to call twice, while cancelled, and on a dead peer."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(DISCONNECT_TIMEOUT):
            try:
                await self._loop.run_aio_coroutine(self._client.disconnect())
            except (Exception, asyncio.CancelledError):
                # The session failed before we closed it (EOF, reset): that is why we close.
                pass
