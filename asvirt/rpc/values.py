"""Values of the driver API's calls on the wire, and their checked decoding, without
:mod:`typing`.

A call's arguments and results travel as plain JSON values: records (DomainRef, DomainInfo...)
are objects with their fields, enums their values, a state and its reason a pair, bytes base64.
:func:`encode` makes the plain value of anything a call takes or returns.

Decoding checks a plain value against what the call declares and makes the typed value back,
after a *spec*: the declared type as plain data, worked out from the type hints by
:mod:`asvirt.protocol` (``protocol.spec_of``). A spec is one of

* ``"any"``, ``"null"``, ``"bool"``, ``"int"``, ``"float"``, ``"str"``, ``"bytes"``,
  ``"object"`` (a JSON object, as it is), ``"state"`` (a ``[state, reason]`` pair);
* ``("list", ITEM)``, ``("tuple", ITEM)``, ``("union", (OPTION, ...))``;
* ``("enum", CLASS)``, ``("record", CLASS, ((FIELD, SPEC), ...))``, where CLASS is the class
  or its ``"module:Name"`` (imported when a value is first decoded);
* ``("unknown", TEXT)``: a type the protocol cannot carry (decoding it is a bug).

Everything here runs without :mod:`typing` (and what it imports): a one-shot command-line
client decodes its answers with the specs of :mod:`.calls_table`, generated from the
declaration, instead of importing the declaration itself.
"""

from __future__ import annotations

import enum
import math
import sys

from ..records import fields, is_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    #: Decodes a JSON value to a declared type (``what`` names it in errors).
    Decoder = Callable[[Any, str], Any]


def encode(value: Any) -> Any:
    """An argument or result as a plain JSON value (TypeError if it cannot travel)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        import base64  # on first use: most calls carry no bytes

        return base64.b64encode(value).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if is_record(value) and not isinstance(value, type):
        return {name: encode(getattr(value, name)) for name in fields(value)}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    raise TypeError(f"cannot send a {type(value).__name__}")


def encode_args(
    params: Mapping[str, Any], progress: str | None
) -> tuple[dict[str, Any], Callable[[float], object] | None]:
    """A call's arguments as plain JSON values, and the progress callback they held under
    the name ``progress`` (None if none): a callback stays with the client, the daemon is
    only told it is wanted."""
    args: dict[str, Any] = {}
    callback = None
    for name, value in params.items():
        if name == progress:
            callback = value
            args[name] = value is not None
        elif type(value) is str:  # most arguments (names, UUIDs, XML) are as they go
            args[name] = value
        else:
            args[name] = encode(value)
    return args, callback


_DECODERS: dict[Any, Decoder] = {}


def decoder(spec: Any) -> Decoder:
    """The decoder of ``spec``, made once per spec: every call's arguments (in the daemon)
    and result (in a client) are decoded, and walking the spec each time cost more than the
    call. Its ValueError says what the value is not."""
    found = _DECODERS.get(spec)
    if found is None:
        found = _DECODERS[spec] = _make(spec)
    return found


def _make(spec: Any) -> Decoder:
    if isinstance(spec, str):
        simple = _SIMPLE.get(spec)
        if simple is None:
            raise TypeError(f"no such value spec: {spec!r}")
        return simple
    kind = spec[0]
    if kind == "list":
        return _list_decoder(decoder(spec[1]), list)
    if kind == "tuple":
        return _list_decoder(decoder(spec[1]), tuple)
    if kind == "union":
        return _union_decoder(spec[1])
    if kind == "enum":
        return _enum_decoder(spec[1])
    if kind == "record":
        return _record_decoder(spec[1], spec[2])
    if kind == "unknown":
        text = spec[1]

        def unknown(value: Any, what: str) -> Any:
            raise TypeError(f"{what}: the protocol has no encoding for {text}")

        return unknown
    raise TypeError(f"no such value spec: {spec!r}")


def _resolve(cls: type | str) -> Any:
    """A spec's class: itself, or imported from its ``"module:Name"``."""
    if not isinstance(cls, str):
        return cls
    module, _, name = cls.partition(":")
    __import__(module)  # not importlib's import_module, which imports warnings (issue 9)
    return getattr(sys.modules[module], name)


def _decode_any(value: Any, what: str) -> Any:
    return value


def _decode_null(value: Any, what: str) -> None:
    if value is not None:
        raise ValueError(f"{what}: expected null")


def _union_decoder(options: tuple[Any, ...]) -> Decoder:
    nullable = "null" in options
    decoders = [decoder(option) for option in options if option != "null"]

    def decode(value: Any, what: str) -> Any:
        if value is None and nullable:
            return None
        for option in decoders:
            try:
                return option(value, what)
            except ValueError:
                continue
        raise ValueError(f"{what}: {value!r} is none of {' | '.join(map(_name, options))}")

    return decode


def _name(spec: Any) -> str:
    """A spec's name in error messages."""
    if isinstance(spec, str):
        return spec
    if spec[0] in ("list", "tuple"):
        return f"{spec[0]}[{_name(spec[1])}]"
    if spec[0] == "union":
        return " | ".join(map(_name, spec[1]))
    cls = spec[1]
    return cls.rpartition(":")[2] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))


def _decode_state(value: Any, what: str) -> Any:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
        raise ValueError(f"{what}: expected [state, reason]")
    from ..states import DomainState, reason_for

    state = DomainState(value[0])
    return state, reason_for(state, value[1])


def _list_decoder(item: Decoder, kind: type[list[Any]] | type[tuple[Any, ...]]) -> Decoder:
    def decode(value: Any, what: str) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"{what}: expected a list")
        return kind(item(v, what) for v in value)

    return decode


def _decode_object(value: Any, what: str) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object")
    return value


def _enum_decoder(cls: type | str) -> Decoder:
    resolved: list[Any] = []

    def decode(value: Any, what: str) -> Any:
        if not resolved:
            resolved.append(_resolve(cls))
        type_ = resolved[0]
        try:
            return type_(value)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is no {type_.__name__}") from None

    return decode


def _record_decoder(cls: type | str, field_specs: tuple[tuple[str, Any], ...]) -> Decoder:
    names = frozenset(name for name, _ in field_specs)
    decoders = {name: decoder(spec) for name, spec in field_specs}
    resolved: list[Any] = []

    def decode(value: Any, what: str) -> Any:
        if not resolved:
            resolved.append(_resolve(cls))
        if not isinstance(value, dict):
            raise ValueError(f"{what}: expected an object")
        if value.keys() != names:
            raise ValueError(f"{what}: expected the fields {sorted(names)}")
        return resolved[0](**{k: decoders[k](v, f"{what}.{k}") for k, v in value.items()})

    return decode


def _decode_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false")
    return value


def _decode_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected base64 bytes")
    import base64
    import binascii

    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"{what}: expected base64 bytes") from None


def _decode_int(value: Any, what: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{what}: expected an integer")
    return value


def _decode_float(value: Any, what: str) -> float:
    # JSON has one number type: an integer is a float's value too (never a bool, nor NaN or
    # an infinity, which JSON cannot say either).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: expected a number")
    try:
        number = float(value)  # an integer beyond a float's range overflows
    except OverflowError:
        raise ValueError(f"{what}: expected a number a float can hold") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}: expected a number")
    return number


def _decode_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SIMPLE: dict[str, Decoder] = {
    "any": _decode_any,
    "null": _decode_null,
    "bool": _decode_bool,
    "int": _decode_int,
    "float": _decode_float,
    "str": _decode_str,
    "bytes": _decode_bytes,
    "object": _decode_object,
    "state": _decode_state,
}

__all__ = ["decoder", "encode", "encode_args"]
