"""Small immutable records: what ``@dataclasses.dataclass(frozen=True, slots=True)`` gives the
plain records of the driver API, for a fraction of the cost of making them.

A one-shot command-line client (``asvirt list`` through a daemon) imports the driver API's
declaration and its twenty-odd records. As dataclasses they cost it more than its requests
did: :mod:`dataclasses` imports :mod:`inspect` (and :mod:`ast`, :mod:`dis`, ...), and each
class gets half a dozen methods generated, compiled and then the class made again for its
slots. A :func:`record` gets its ``__init__`` compiled when its first instance is made
(instances are made on every call's answer, so it must be as fast as a dataclass's; a client
makes few of the records it imports) and shares the rest (equality, hash, repr,
immutability, pickling) with every other record.

A record's fields are the names its class body annotates, in order; a field may have a
default (an immutable value: there is no ``default_factory``). Records do not inherit fields
from one another.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**kwargs: object) -> object:
        return lambda cls: cls


_MISSING = object()


@dataclass_transform(frozen_default=True)
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a record (as ``@dataclass(frozen=True, slots=True)`` would)."""
    body = dict(cls.__dict__)
    names = tuple(body.get("__annotations__", ()))
    defaults = {n: body.pop(n) for n in names if n in body}  # a slot cannot have a class value
    body.pop("__dict__", None)
    body.pop("__weakref__", None)
    body["__slots__"] = names
    body["__match_args__"] = names
    body["__record_fields__"] = names
    body["__dataclass_fields__"] = _DataclassFields(defaults)
    # A tuple of the values, in C: equality and hashing (records are dict keys) use it.
    body["_record_values"] = (
        attrgetter(*names)
        if len(names) > 1
        else staticmethod(lambda self: tuple(getattr(self, n) for n in names))
    )
    for name, method in _METHODS.items():
        body.setdefault(name, method)
    metaclass: Any = type(cls)  # the class is made again, with its slots
    made: type[T] = metaclass(cls.__name__, cls.__bases__, body)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # The first instance compiles the class's own __init__: compiling costs more than
        # making the class, and a client uses a few of the records it imports.
        init = _compile_init(made, names, defaults)
        made.__init__ = init  # type: ignore[method-assign]
        init(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    made.__init__ = __init__  # type: ignore[method-assign]
    return made


def _compile_init(cls: type, names: tuple[str, ...], defaults: dict[str, Any]) -> Any:
    """``cls``'s ``__init__``: each field set in turn, as a dataclass's does (a generic
    one, looping over the fields, took twice as long to make an instance)."""
    signature, lines = [], []
    for n in names:
        signature.append(f"{n}=_defaults[{n!r}]" if n in defaults else n)
        lines.append(f"    _set(self, {n!r}, {n})\n")
    source = f"def __init__(self, {', '.join(signature)}):\n{''.join(lines) or '    pass'}\n"
    scope: dict[str, Any] = {}
    exec(source, {"_set": object.__setattr__, "_defaults": defaults}, scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


class _DataclassFields:
    """A record's ``__dataclass_fields__``, made when first asked for (importing
    :mod:`dataclasses` then): what :mod:`dataclasses`' functions (``is_dataclass``,
    ``fields``, ``replace``, ``asdict``) and msgspec (which encodes and decodes dataclasses
    itself) read of a dataclass, so that a record is one to them. A one-shot client never
    asks."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self._defaults = defaults

    def __get__(self, rec: object, cls: type) -> dict[str, Any]:
        import dataclasses

        made = {}
        for name in cls.__record_fields__:  # type: ignore[attr-defined]
            field: Any = dataclasses.field(default=self._defaults.get(name, dataclasses.MISSING))
            # As dataclasses' own _get_field completes a field of a class it processes.
            field.name = name
            field.type = cls.__annotations__[name]
            field._field_type = dataclasses._FIELD  # type: ignore[attr-defined]
            made[name] = field
        type.__setattr__(cls, "__dataclass_fields__", made)  # once per class
        return made


def fields(rec: object) -> tuple[str, ...]:
    """The field names of a record or record class, in order."""
    names = getattr(rec, "__record_fields__", None)
    if names is None:
        raise TypeError(f"{rec!r} is not a record")
    return tuple(names)


def is_record(rec: object) -> bool:
    """Whether ``rec`` is a record or a record class."""
    return hasattr(rec, "__record_fields__")


def replace(rec: T, /, **changes: Any) -> T:
    """A copy of ``rec`` with some fields changed (``dataclasses.replace``)."""
    values = {n: getattr(rec, n) for n in fields(rec)}
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{type(rec).__name__} has no field(s) {', '.join(sorted(unknown))}")
    values.update(changes)
    return type(rec)(**values)


def _repr(self: Any) -> str:
    values = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__record_fields__)
    return f"{type(self).__qualname__}({values})"


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return bool(self._record_values(self) == self._record_values(other))


def _hash(self: Any) -> int:
    return hash(self._record_values(self))


def _setattr(self: Any, name: str, value: object) -> None:
    raise AttributeError(f"cannot assign to field '{name}' of a {type(self).__name__} record")


def _delattr(self: Any, name: str) -> None:
    raise AttributeError(f"cannot delete field '{name}' of a {type(self).__name__} record")


def _reduce(self: Any) -> tuple[Any, ...]:
    # copy and pickle make records through their __init__ (their slots are read-only).
    return (type(self), tuple(getattr(self, n) for n in self.__record_fields__))


_METHODS = {
    "__repr__": _repr,
    "__eq__": _eq,
    "__hash__": _hash,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__reduce__": _reduce,
}

__all__ = ["fields", "is_record", "record", "replace"]
