"""The command line's one-shot client of a daemon: one blocking socket, no event loop.

A one-shot command (``asvirt list``) talks to a daemon for a few milliseconds: starting an
event loop and importing what it needs would cost more than the work. This client speaks the
same protocol (:mod:`asvirt.protocol`, JSON-RPC lines) over a plain blocking socket, and the
command's code — ordinary ``async def`` functions written against the public API — runs
without a loop: nothing it awaits ever suspends, so :func:`run_sync` drives it to the end.
Commands that wait for events (``event``) use the full client instead.
"""

from __future__ import annotations

import math
import os

from ..calls import ConnectionCalls
from ..errors import InternalError, InvalidArgError, NoConnectError
from ..rpc import values, wire
from ..rpc.calls_table import CALLS
from .vsh import ConnectFailed

# Not typing's: a one-shot client does not import typing (nor what it imports: re,
# contextlib...), mypy reads this name as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Coroutine
    from typing import Any, TypeVar

    T = TypeVar("T")


class QuickConnection(ConnectionCalls):
    """A blocking connection to a daemon's socket, for one command.

    Its "hello" goes out with the first request, in one write, and both answers come back
    in one read: a command that makes one call waits for the daemon once. A failed hello
    (another protocol, an error) fails that first call.
    """

    def __init__(self, uri: str, path: str) -> None:
        self._uri = uri
        self._path = path
        self._sock = _connect(path)
        self._buf = b""
        self._ids = 1
        #: Sent with the next request (see the class docstring).
        self._unsent = _line(1, "hello", {"protocol": wire.PROTOCOL_VERSION, "client": "asvirt"})
        self._hello: dict[str, Any] | None = None
        #: Whether the daemon may hold something of this client's (autodestroy domains,
        #: consoles) that "bye" must release before close() returns.
        self._owns = False

    @property
    def uri(self) -> str:
        return self._uri

    def hostname(self) -> str:
        return str(self._said_hello().get("hostname", ""))

    async def _call(self, method: str, /, **params: Any) -> Any:
        # The declaration's table (generated: asvirt.rpc.calls_table), not the declaration.
        entry = CALLS.get(method)
        if entry is None:
            raise InvalidArgError(f"no such call: {method!r}")
        client, progress, result = entry
        args, on_progress = values.encode_args(params, progress)
        self._owns = self._owns or client
        answer = self._request(method, args, on_progress)
        try:
            return values.decoder(result)(answer, f"result of {method}")
        except ValueError as err:
            raise InternalError(f"the daemon answered '{method}' with {err}") from None

    def _request(
        self,
        method: str,
        params: dict[str, Any],
        on_progress: Callable[[float], object] | None = None,
    ) -> Any:
        self._ids += 1
        return self._exchange(_line(self._ids, method, params), self._ids, on_progress)

    def _said_hello(self) -> dict[str, Any]:
        """The daemon's hello (sent now if no request has carried it yet)."""
        if self._hello is None:
            self._exchange(b"", None, None)
        assert self._hello is not None
        return self._hello

    def _exchange(
        self, line: bytes, msg_id: int | None, on_progress: Callable[[float], object] | None
    ) -> Any:
        """Send ``line`` (after the hello, if it is still unsent); read until the answers to
        the hello and to ``msg_id`` have come; the latter's result."""
        data, self._unsent = self._unsent + line, b""
        answer: dict[str, Any] | None = None if msg_id is not None else {}
        try:
            self._sock.sendall(data)
            while self._hello is None or answer is None:
                reply = self._read()
                if msg_id is not None and reply.get("id") == msg_id:
                    answer = reply
                elif reply.get("id") == 1 and self._hello is None:
                    self._hello = self._check_hello(reply)
                elif reply.get("method") == "keepalive.ping":
                    self._sock.sendall(b'{"jsonrpc":"2.0","method":"keepalive.pong","params":{}}\n')
                elif reply.get("method") == "progress" and on_progress is not None:
                    fraction = reply.get("params", {}).get("fraction")
                    if isinstance(fraction, int | float):
                        on_progress(float(fraction))
        except OSError as err:
            raise NoConnectError(f"lost the daemon at {self._path}: {err.strerror}") from None
        if "error" in answer:
            raise wire.exception_from(answer["error"])
        return answer.get("result")

    def _check_hello(self, reply: dict[str, Any]) -> dict[str, Any]:
        """The hello's result; ConnectFailed if the daemon refused it or speaks another
        protocol (the command that carried it did not fail: the connection did)."""
        if "error" in reply:
            raise ConnectFailed(wire.exception_from(reply["error"]))
        hello = reply.get("result")
        if not isinstance(hello, dict) or hello.get("protocol") != wire.PROTOCOL_VERSION:
            raise ConnectFailed(
                NoConnectError(f"the daemon at {self._path} speaks another protocol")
            )
        return hello

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise OSError(0, "the daemon closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        value = _loads(line)
        return value if isinstance(value, dict) else {}

    def close(self) -> None:
        """Close the connection; first, if the daemon may hold something of this client's,
        say "bye" and wait for it to be released (as the full client does). Otherwise the
        closed socket says it: waiting for a "bye" would cost a command one more wait."""
        try:
            if self._owns:
                self._request("bye", {})
        except Exception:  # leaving anyway; the daemon notices the closed socket too
            pass
        finally:
            self._sock.close()


def _line(msg_id: int, method: str, params: dict[str, Any]) -> bytes:
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}
    return "".join(_encoder()(msg, 0)).encode() + b"\n"


# JSON through the json package's C accelerator (_json) itself: the package's Python half
# compiles regular expressions at import (importing re) and costs a one-shot command more
# than its requests. Lines from a daemon are compact JSON, as msgspec writes them.


class _ScanContext:
    """What _json's scanner reads of a json.JSONDecoder (json.loads' defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.__getitem__
    memo: dict[str, str] = {}


def _loads(line: bytes) -> Any:
    """A line's JSON value (ValueError if it is not JSON)."""
    import _json

    text = line.decode().strip()
    try:
        value, end = _json.make_scanner(_ScanContext())(text, 0)  # type: ignore[arg-type]
    except StopIteration:
        end = -1
    if end != len(text):
        raise ValueError(f"not a JSON value: {text[:64]!r}")
    return value


def _encoder() -> Callable[[object, int], list[str]]:
    """json.dumps(separators=(",", ":"))'s C encoder, of the plain values that
    :func:`asvirt.rpc.values.encode` makes."""
    import _json

    return _json.make_encoder(
        None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )


def _unencodable(value: object) -> object:
    raise TypeError(f"cannot send a {type(value).__name__}")


def _connect(path: str) -> _socket.socket:
    """A unix socket connected to ``path``: made with :mod:`socket`'s C core, whose Python
    half (its enums and helpers) costs a one-shot command more than its requests; a path
    too long for an address goes through :func:`asvirt.fsutil.connect_unix`."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as err:
        sock.close()
        if err.errno is not None:
            raise  # not there, refused...
        from .. import fsutil  # "AF_UNIX path too long" (no errno)

        return fsutil.connect_unix(path)
    return sock


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
