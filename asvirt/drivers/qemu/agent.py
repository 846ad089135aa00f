"""The QEMU guest agent: one connection per domain to ``qemu-ga`` in the guest.

The agent speaks QMP-like JSON over the virtio-serial port ``org.qemu.guest_agent.0``, which
QEMU exposes on the host as the unix socket of the domain's agent channel (QEMU listens; only
one client at a time). Unlike the monitor, the agent is a guest program: it may not run yet,
may have died, or may still answer a question asked before. So, as libvirt does
(``qemu_agent.c``):

* every exchange starts with ``guest-sync-delimited`` and a fresh id, after a ``0xFF`` byte
  that resets the agent's parser; lines before the matching reply are stale and dropped;
* every exchange has a deadline: an agent that does not answer in time fails the call with
  AGENT_UNRESPONSIVE and the connection is dropped (a late reply must not be taken for the
  next one's);
* one exchange at a time (the socket is one stream);
* when QEMU has said that the guest closed the port (``VSERPORT_CHANGE``), calls fail at once
  with "not connected" rather than waiting for their deadline — unless the agent had it open
  since the domain started: then the port closed under a running agent (the guest's virtio
  console closes it as the guest suspends to RAM, and qemu-ga opens it again about a second
  after the wake-up; so do a reboot and a restart of qemu-ga), and a call waits for it to
  open again, within its deadline, where libvirt fails it at once.
"""

from __future__ import annotations

import json
import random
from typing import Any

import trio

from ...errors import (
    AgentCommandNotFoundError,
    AgentUnresponsiveError,
    InternalError,
    InvalidArgError,
)
from ...log import get_logger

#: The virtio-serial port name qemu-ga listens on.
AGENT_CHANNEL = "org.qemu.guest_agent.0"
#: The longest reply line accepted (guest-get-fsinfo on a big guest is a few hundred KiB).
MAX_REPLY = 16 * 1024 * 1024
#: Commands the agent never answers when they succeed (``'success-response': false``).
NO_REPLY = frozenset({"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram",
                      "guest-suspend-hybrid"})  # fmt: skip

log = get_logger("asvirt.qemu.agent")


def unresponsive(why: str) -> AgentUnresponsiveError:
    """libvirt's wording for an agent that cannot be reached."""
    return AgentUnresponsiveError(f"Guest agent is not responding: {why}")


class GuestAgent:
    """The host's end of one domain's guest agent channel."""

    def __init__(self, path: str, alias: str) -> None:
        #: The channel's unix socket (QEMU listens on it).
        self.path = path
        #: The channel's device id (``channel0``): what VSERPORT_CHANGE names.
        self.alias = alias
        self._connected: bool | None = None
        #: Whether the guest has had the port open since the domain started.
        self._was_open = False
        #: Set while the port is open (calls made while it is closed wait for it).
        self._opened = trio.Event()
        self._lock = trio.Lock()
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    @property
    def connected(self) -> bool | None:
        """Whether the guest has the port open (QEMU's VSERPORT_CHANGE); None: not known."""
        return self._connected

    @connected.setter
    def connected(self, open_: bool | None) -> None:
        self._connected = open_
        if open_:
            self._was_open = True
            self._opened.set()
        elif self._opened.is_set():
            self._opened = trio.Event()

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        self._buffer.clear()
        if stream is not None:
            await stream.aclose()

    async def command(self, execute: str, arguments: dict[str, Any] | None, timeout: float) -> Any:
        """Run ``execute`` and return the agent's whole reply (``{"return": ...}``), or None
        for a command the agent does not answer when it succeeds (``guest-shutdown``).

        Raises AgentUnresponsiveError when the agent is not connected or does not answer
        within ``timeout`` seconds, InternalError when it answers with an error.
        """
        if not isinstance(execute, str) or not execute:
            raise InvalidArgError("the agent command must be a non-empty string")
        if self.connected is False and not self._was_open:
            raise unresponsive("QEMU guest agent is not connected")
        request: dict[str, Any] = {"execute": execute}
        if arguments is not None:
            request["arguments"] = arguments
        reply: Any = None
        sent = False
        # The deadline covers waiting for another caller's exchange too.
        with trio.move_on_after(timeout) as scope:
            if self.connected is False:
                await self._opened.wait()  # the port closed under a running agent (see above)
            async with self._lock:
                finished = False
                try:
                    await self._sync()
                    await self._send(json.dumps(request).encode() + b"\n")
                    sent = True
                    if execute in NO_REPLY:
                        # It may still answer with an error, at once; give it that chance
                        # without waiting for a success it never sends.
                        with trio.move_on_after(min(timeout, 0.5)):
                            reply = await self._read()
                    else:
                        reply = await self._read()
                    finished = True
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as err:
                    with trio.CancelScope(shield=True):
                        await self.close()
                    if sent and execute in NO_REPLY:
                        finished = True  # the guest went down as asked (libvirt: EOF is success)
                    else:
                        raise unresponsive(f"cannot talk to the agent: {err}") from None
                finally:
                    if not finished:
                        # Dropped, before the next exchange: a late reply must not be taken
                        # for its own.
                        with trio.CancelScope(shield=True):
                            await self.close()
        if scope.cancelled_caught and not (execute in NO_REPLY and sent):
            if self.connected is False:
                raise unresponsive("QEMU guest agent is not connected")
            log.debug("guest agent timed out", command=execute, timeout=timeout)
            raise unresponsive("Guest agent not available for now")
        if isinstance(reply, dict) and "error" in reply:
            body = reply["error"] if isinstance(reply["error"], dict) else {}
            cls = AgentCommandNotFoundError if body.get("class") == "CommandNotFound" else None
            raise (cls or InternalError)(
                f"unable to execute QEMU agent command '{execute}': "
                f"{body.get('desc', 'unknown error')}"
            )
        return reply

    async def _connect(self) -> trio.SocketStream:
        if self._stream is None:
            self._stream = await trio.open_unix_socket(self.path)
            self._buffer.clear()
        return self._stream

    async def _send(self, data: bytes) -> None:
        stream = await self._connect()
        await stream.send_all(data)

    async def _sync(self) -> None:
        ident = random.randrange(1, 2**31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": ident}}
        # 0xFF first: whatever half-sent request the agent holds is dropped.
        await self._send(b"\xff" + json.dumps(request).encode() + b"\n")
        while True:
            reply = await self._read()
            if isinstance(reply, dict) and reply.get("return") == ident:
                return

    async def _read(self) -> Any:
        """The next JSON line the agent sends (0xFF delimiters and garbage skipped)."""
        stream = await self._connect()
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                line = line.rsplit(b"\xff", 1)[-1].strip()
                if not line:
                    continue
                try:
                    return json.loads(line)
                except ValueError:
                    log.debug("guest agent sent garbage", line=line[:200])
                    continue
            if len(self._buffer) > MAX_REPLY:
                raise OSError("the agent's reply is too long")
            data = await stream.receive_some(65536)
            if not data:
                raise OSError("the agent's socket closed")
            self._buffer += data
