"""Framing and encoding of messages, without I/O (the daemon and every client share it).

A message is one JSON object on one line (QMP's framing, so ``socat - UNIX-CONNECT:...``
works for debugging). Requests carry an ``id`` and get a response with the same ``id``;
notifications (events, keepalive) carry none. msgspec encodes and decodes: it is several
times faster than the standard library on this traffic, and checks shapes as it goes.
"""

from __future__ import annotations

import functools

from .. import errors
from ..errors import AsvirtError, ErrorCode
from ..records import record

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    import socket
    from typing import Any, Protocol

    class Incoming(Protocol):
        """A message from a daemon, its parts left as JSON text until their reader decodes
        them (a response's result is decoded to its call's type: see
        ``protocol.decode_result_json``)."""

        #: The request a response answers (None for a notification).
        id: Any
        #: A notification's method (None for a response).
        method: Any
        #: A notification's params: JSON text, bytes-like (``null`` if it had none).
        params: Any
        #: A response's result: JSON text, bytes-like (``null`` if it had none).
        result: Any
        #: A failed call's error object (None if it did not fail).
        error: Any


#: The protocol version a hello exchanges (bumped on incompatible changes).
PROTOCOL_VERSION = 1

# JSON-RPC 2.0's own error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


@functools.cache
def _codec() -> tuple[Any, Any, type[Exception]]:
    # Imported on first use: a one-shot command-line client never pays for it.
    import msgspec

    return msgspec.json.Encoder(), msgspec.json.Decoder(), msgspec.DecodeError


def encode(message: dict[str, Any]) -> bytes:
    """One message, framed (a line)."""
    return _codec()[0].encode(message) + b"\n"


def decode(line: bytes) -> Any:
    """The JSON value of one line; ValueError if it is not JSON (or nested too deeply)."""
    _, decoder, decode_error = _codec()
    try:
        return decoder.decode(line)
    except decode_error as err:
        raise ValueError(str(err)) from None
    except RecursionError:
        # msgspec recurses per level: "[[[[..." a thousand deep ends the interpreter's stack.
        raise ValueError("JSON nested too deeply") from None


@functools.cache
def _incoming_decoder() -> tuple[Any, type[Exception]]:
    from typing import Any

    import msgspec

    # Made, not declared: this module's annotations are strings, and msgspec (and typing)
    # are imported here only.
    null = msgspec.Raw(b"null")
    message = msgspec.defstruct(
        "Message",
        [
            ("id", Any, None),
            ("method", Any, None),
            ("params", msgspec.Raw, null),
            ("result", msgspec.Raw, null),
            ("error", Any, None),
        ],
    )
    return msgspec.json.Decoder(message).decode, msgspec.ValidationError


def decode_incoming(line: bytes) -> Incoming | None:
    """A daemon's message, in one pass of the decoder over its envelope; None if it is JSON
    but not a message (not an object, or fields of the wrong kind); ValueError if it is not
    JSON."""
    decoder, not_a_message = _incoming_decoder()
    try:
        msg = decoder(line)
    except not_a_message:
        return None
    except ValueError as err:  # msgspec's DecodeError
        raise ValueError(str(err)) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return msg


if TYPE_CHECKING:

    class Request(Protocol):
        """A message from a client, as the daemon reads it (see :func:`decode_request`)."""

        #: "2.0" in a JSON-RPC 2.0 message.
        jsonrpc: Any
        #: The request's id (None for a notification).
        id: Any
        #: The method asked for.
        method: Any
        #: Its arguments ({} when the message has none).
        params: Any


@functools.cache
def _request_decoder() -> tuple[Any, type[Exception]]:
    from typing import Any

    import msgspec

    # Fields of any type (the daemon checks them and says what is wrong); read into a
    # struct rather than a dict, which costs less to make and to look into.
    message = msgspec.defstruct(
        "Request",
        [
            ("jsonrpc", Any, None),
            ("id", Any, None),
            ("method", Any, None),
            ("params", Any, msgspec.field(default_factory=dict)),
        ],
    )
    return msgspec.json.Decoder(message).decode, msgspec.ValidationError


def decode_request(line: bytes) -> Request | None:
    """A client's message; None if it is JSON but not an object; ValueError if it is not
    JSON."""
    decoder, not_an_object = _request_decoder()
    try:
        return decoder(line)
    except not_an_object:
        # The typed decoder stops at the first value that is no object; the whole line
        # may still not be JSON (an array nested too deeply), which is said as such.
        decode(line)
        return None
    except ValueError as err:  # msgspec's DecodeError
        raise ValueError(str(err)) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def send_now(sock: socket.socket, data: bytes) -> bytes:
    """Write as much of ``data`` as the non-blocking ``sock`` takes at once; what is left (to
    queue for a writer task). Either side sends this way first: most messages fit, and no
    task needs waking for them. An error leaves it all: the writer meets it and says so."""
    try:
        sent = sock.send(data)
    except OSError:
        return data  # full (EAGAIN), or broken
    return data[sent:]


def request(msg_id: int, method: str, params: dict[str, Any]) -> bytes:
    message = {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}
    return _codec()[0].encode(message) + b"\n"


def notification(method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


def result(msg_id: object, value: Any) -> bytes:
    return _codec()[0].encode({"jsonrpc": "2.0", "id": msg_id, "result": value}) + b"\n"


def error(msg_id: object, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return encode({"jsonrpc": "2.0", "id": msg_id, "error": body})


def error_from(msg_id: object, err: AsvirtError) -> bytes:
    """The response for a call that raised ``err``: its libvirt code, its class (the
    nearest public one: a client raises the same ``asvirt`` class), its text."""
    public = next(c for c in type(err).__mro__ if c.__name__ in _ERROR_CLASSES)
    data: dict[str, Any] = {"error": public.__name__}
    for attr in _ATTRIBUTES.get(public.__name__, ()):
        data[attr] = getattr(err, attr, None)
    return error(msg_id, int(err.code), str(err), data)


#: Attributes of error classes that travel with them (a client's exception has them too).
_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "QMPError": ("error_class",),
    "SystemCallError": ("path", "errno"),
}

_ERROR_CLASSES: dict[str, type[AsvirtError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, AsvirtError)
}


def exception_from(body: object) -> AsvirtError:
    """The AsvirtError a daemon's error response stands for (the same class where known)."""
    if not isinstance(body, dict):
        return errors.InternalError(f"the daemon sent a malformed error: {body!r}")
    message = str(body.get("message", "unknown error"))
    data = body.get("data")
    name = data.get("error") if isinstance(data, dict) else None
    cls = _ERROR_CLASSES.get(name) if isinstance(name, str) else None
    code = body.get("code")
    if cls is None:
        unknown: AsvirtError = errors.OperationFailedError(message)
        if isinstance(code, int) and code in ErrorCode._value2member_map_:
            unknown.code = ErrorCode(code)
        return unknown
    # The class's own __init__ may take other arguments: build it as the base does.
    exc = cls.__new__(cls)
    AsvirtError.__init__(exc, message)
    for attr in _ATTRIBUTES.get(cls.__name__, ()):
        value = data.get(attr) if isinstance(data, dict) else None
        setattr(exc, attr, value if isinstance(value, str | int) else None)
    return exc


@record
class Oversized:
    """A line longer than the limit, skipped: its first bytes, for the error message."""

    head: bytes


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes.

    A longer line is not kept in memory: it is skipped up to its end and reported once as
    :class:`Oversized`, and the stream goes on with the next line.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._skipping: bytes | None = None

    def feed(self, data: bytes | bytearray) -> list[bytes | Oversized]:
        """The lines ``data`` completes, in order (without their newline; blank ones left
        out)."""
        if not self._buf and self._skipping is None and len(data) <= self._limit:
            # What one read brings mostly ends where a message ends, with nothing held
            # before it: split it where it is, without copying it through the buffer.
            # (No line in it can be over the limit.)
            lines = bytes(data).split(b"\n")
            rest = lines.pop()
            if rest:
                self._buf += rest
            return [line for line in lines if line.strip()]
        found: list[bytes | Oversized] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self._limit:
                    if self._skipping is None:
                        self._skipping = bytes(self._buf[:64])
                    del self._buf[:]
                return found
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping is not None:
                head, self._skipping = self._skipping, None
                found.append(Oversized(head))
            elif end > self._limit:
                found.append(Oversized(line[:64]))
            elif line.strip():
                found.append(line)

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held."""
        return len(self._buf)


__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PROTOCOL_VERSION",
    "Incoming",
    "LineReader",
    "Oversized",
    "decode",
    "decode_incoming",
    "decode_request",
    "encode",
    "error",
    "error_from",
    "exception_from",
    "notification",
    "request",
    "result",
]
