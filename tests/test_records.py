"""asvirt.records: the driver API's records behave as the frozen, slotted dataclasses they
replaced (equality, hashing, repr, immutability, copying, pattern matching)."""

from __future__ import annotations

import copy
import pickle

import pytest

from asvirt import records
from asvirt.drivers.base import DomainInfo, DomainRef
from asvirt.records import record
from asvirt.states import DomainState


@record
class Point:
    x: int
    y: int = 0


@record
class Single:
    value: bytes


def test_a_record_is_made_from_its_fields_by_position_or_name():
    assert Point(1, 2) == Point(x=1, y=2) == Point(1, y=2)
    assert Point(3).y == 0  # a default
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, 2, 3)
    with pytest.raises(TypeError):
        Point(1, z=2)
    assert records.fields(Point) == records.fields(Point(1)) == ("x", "y")
    assert Point.__match_args__ == ("x", "y")


def test_records_compare_and_hash_by_type_and_values():
    a = DomainRef("vm1", "u1")
    assert a == DomainRef("vm1", "u1")
    assert a != DomainRef("vm1", "u2")
    assert a != ("vm1", "u1")
    assert hash(a) == hash(DomainRef("vm1", "u1"))
    assert {a: 1}[DomainRef("vm1", "u1")] == 1
    assert Single(b"x") == Single(b"x") and hash(Single(b"x")) == hash(Single(b"x"))
    assert Single(b"x") != Single(b"y")


def test_a_record_is_immutable_and_has_no_dict():
    a = DomainRef("vm1", "u1")
    with pytest.raises(AttributeError):
        a.name = "vm2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.name  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]
    assert not hasattr(a, "__dict__")
    assert a.name == "vm1"


def test_repr_copy_pickle_and_replace():
    info = DomainInfo(DomainState.RUNNING, 1024, 512, 2, 7)
    assert repr(info) == (
        "DomainInfo(state=<DomainState.RUNNING: 1>, max_memory_kib=1024, memory_kib=512, "
        "vcpus=2, cpu_time_ns=7)"
    )
    assert copy.copy(info) == info and copy.deepcopy(info) == info
    assert pickle.loads(pickle.dumps(info)) == info
    changed = records.replace(info, vcpus=4)
    assert changed.vcpus == 4 and changed.memory_kib == 512 and info.vcpus == 2
    with pytest.raises(TypeError):
        records.replace(info, cpus=4)
    with pytest.raises(TypeError):
        records.fields(object())


def test_records_match_by_position():
    match DomainRef("vm1", "u1"):
        case DomainRef(name, uuid):
            assert (name, uuid) == ("vm1", "u1")
        case _:
            pytest.fail("no match")


def test_a_record_is_a_dataclass_to_dataclasses_and_msgspec():
    # Code that reads records as the dataclasses they were (dataclasses' functions, msgspec's
    # encoder and typed decoder) reads them alike: the fields are made when first asked for.
    import dataclasses

    import msgspec

    from asvirt.drivers.base import DomainInterface, InterfaceAddress, IPAddrType

    info = DomainInfo(DomainState.PAUSED, 1024, 512, 2, 7)
    assert dataclasses.is_dataclass(info) and dataclasses.is_dataclass(DomainInfo)
    assert [f.name for f in dataclasses.fields(info)] == list(records.fields(info))
    assert dataclasses.asdict(DomainRef("vm1", "u1")) == {"name": "vm1", "uuid": "u1"}
    assert dataclasses.replace(info, vcpus=4) == records.replace(info, vcpus=4)
    assert [f.default for f in dataclasses.fields(Point)] == [dataclasses.MISSING, 0]
    assert msgspec.json.encode(info) == (
        b'{"state":3,"max_memory_kib":1024,"memory_kib":512,"vcpus":2,"cpu_time_ns":7}'
    )
    iface = DomainInterface(
        "eth0", "52:54:00:00:00:01", (InterfaceAddress(IPAddrType.IPV4, "10.0.0.2", 24),)
    )
    for value in (info, iface, [DomainRef("a", "u1"), DomainRef("b", "u2")]):
        kind = type(value) if not isinstance(value, list) else list[DomainRef]
        assert msgspec.json.Decoder(kind).decode(msgspec.json.encode(value)) == value
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.Decoder(DomainRef).decode(b'{"name":"vm1"}')
    assert Point(1) == msgspec.json.Decoder(Point).decode(b'{"x":1}')
