"""The command line's one-shot client of a daemon: one blocking socket, no event loop.

A one-shot command (``asvirt list``) talks to a daemon for a few milliseconds: starting an
event loop and importing what it needs would cost more than the work. This client speaks the
same protocol (:mod:`asvirt.protocol`, JSON-RPC lines) over a plain blocking socket, and the
command's code — ordinary ``async def`` functions written against the public API — runs
without a loop: nothing it awaits ever suspends, so :func:`run_sync` drives it to the end.
Commands that wait for events (``event``) use the full client instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .. import fsutil, protocol
from ..calls import ConnectionCalls
from ..errors import InternalError, NoConnectError
from ..rpc import wire

T = TypeVar("T")


class QuickConnection(ConnectionCalls):
    """A blocking connection to a daemon's socket, for one command."""

    def __init__(self, uri: str, path: str) -> None:
        self._uri = uri
        self._path = path
        self._sock = fsutil.connect_unix(path)
        self._buf = b""
        self._ids = 0
        hello = self._request("hello", {"protocol": wire.PROTOCOL_VERSION, "client": "asvirt"})
        self._hostname = str(hello.get("hostname", "")) if isinstance(hello, dict) else ""

    @property
    def uri(self) -> str:
        return self._uri

    def hostname(self) -> str:
        return self._hostname

    async def _call(self, method: str, /, **params: Any) -> Any:
        c = protocol.lookup(method)
        args, on_progress = protocol.encode_params(c, params)
        try:
            return protocol.decode_result(c, self._request(method, args, on_progress))
        except ValueError as err:
            raise InternalError(f"the daemon answered '{method}' with {err}") from None

    def _request(
        self,
        method: str,
        params: dict[str, Any],
        on_progress: Callable[[float], object] | None = None,
    ) -> Any:
        self._ids += 1
        msg = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params}
        try:
            self._sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            while True:
                reply = self._read()
                if reply.get("id") == self._ids:
                    break
                if reply.get("method") == "keepalive.ping":
                    self._sock.sendall(b'{"jsonrpc":"2.0","method":"keepalive.pong","params":{}}\n')
                elif reply.get("method") == "progress" and on_progress is not None:
                    fraction = reply.get("params", {}).get("fraction")
                    if isinstance(fraction, int | float):
                        on_progress(float(fraction))
        except OSError as err:
            raise NoConnectError(f"lost the daemon at {self._path}: {err.strerror}") from None
        if "error" in reply:
            raise wire.exception_from(reply["error"])
        return reply.get("result")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise OSError(0, "the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        value = json.loads(line)
        return value if isinstance(value, dict) else {}

    def close(self) -> None:
        try:
            self._request("bye", {})
        except Exception:  # leaving anyway; the daemon notices the closed socket too
            pass
        self._sock.close()


def socket_of(uri: str) -> str | None:
    """The daemon socket a one-shot client can use for ``uri``, or None (then the full client
    is needed: SSH, a session daemon that must first be started, an embedded driver)."""
    from ..uri import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme != "qemu" or parsed.host or parsed.transport not in (None, "unix"):
        return None
    socket_param = parsed.param("socket")
    if socket_param:
        return socket_param if os.path.isabs(socket_param) else None
    if parsed.path not in ("/system", "/session") or parsed.params:
        return None
    from ..daemon.layout import socket_path

    path = socket_path(parsed.path)
    return path if os.path.exists(path) else None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (everything it awaits completes at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a one-shot command waited for something; it needs the event loop")


__all__ = ["QuickConnection", "run_sync", "socket_of"]
