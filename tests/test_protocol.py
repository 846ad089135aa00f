"""The driver API declaration (asvirt.protocol): complete, consistent, and what both sides use."""

from __future__ import annotations

import inspect

import pytest

import asvirt
from asvirt import protocol
from asvirt.drivers.network.core import NetworkDriverCore
from asvirt.drivers.secret import SecretDriver
from asvirt.drivers.storage.driver import DirStorageDriver
from asvirt.drivers.test.storage import TestStorageDriver
from asvirt.hypervisor.domain_driver import DomainDriver
from asvirt.rpc import wire as rpc_wire

IMPLEMENTATIONS = {
    protocol.Target.DOMAINS: [DomainDriver],
    protocol.Target.NETWORK: [NetworkDriverCore],
    protocol.Target.STORAGE: [TestStorageDriver, DirStorageDriver],
    protocol.Target.SECRET: [SecretDriver],
}


@pytest.mark.parametrize("name", sorted(protocol.CALLS))
def test_every_declared_call_is_served_with_its_declared_arguments(name):
    c = protocol.CALLS[name]
    for cls in IMPLEMENTATIONS[c.target]:
        method = getattr(cls, name, None)
        assert method is not None, f"{cls.__name__} does not serve '{name}'"
        args = {p: None for p, _ in c.params}
        if c.client:
            args["client"] = None
        # Bindable by keyword (how every call is made), with nothing else required.
        inspect.signature(method).bind(None, **args)


@pytest.mark.parametrize("name", sorted(protocol.CALLS))
def test_a_calls_arguments_are_read_as_inspect_reads_its_declaration(name):
    # Call reads the declaration's code object, not inspect.signature (too dear for a
    # one-shot client): both must agree on every call.
    import typing

    c = protocol.CALLS[name]
    fn = c._declaration
    signature = inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    assert [p for p, _ in c.params] == [p for p in signature if p != "self"]
    for p, t in c.params:
        assert t == hints[p]
    assert c.defaults == {
        p: v.default for p, v in signature.items() if v.default is not inspect.Parameter.empty
    }
    assert all(v.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p, v in signature.items()), (
        "the declarations take plain arguments only"
    )


def test_read_only_calls_are_exactly_those_that_change_nothing():
    changing = {
        name
        for name in protocol.CALLS
        if name.startswith(("domain_", "network_", "storage_"))
        and name.split("_", 1)[1].split("_")[0] in {"start", "suspend", "resume", "shutdown"}
    }
    assert all(protocol.CALLS[n].mutates for n in changing)
    assert not protocol.CALLS["domain_state"].mutates
    assert protocol.CALLS["domain_qmp"].mutates  # a QMP command can change anything


def test_arguments_are_checked_against_the_declaration():
    c = protocol.CALLS["domain_start"]
    good = {"uuid": "u", "paused": True, "autodestroy": False, "force_boot": False}
    assert protocol.decode_params(c, good) == good
    for bad in (
        [],
        {"uuid": "u", "paused": True},
        {**good, "paused": 1},
        {**good, "client": "me"},
        {**good, "uuid": 5},
    ):
        with pytest.raises(protocol.InvalidArgError):
            protocol.decode_params(c, bad)


def test_results_round_trip_through_plain_json():
    import json

    from asvirt import DomainState, PausedReason
    from asvirt.drivers.base import DomainInfo, DomainRef

    cases = {
        "domain_state": (DomainState.PAUSED, PausedReason.USER),
        "domain_info": DomainInfo(DomainState.RUNNING, 1024, 512, 2, 123),
        "list_all_domains": [DomainRef("a", "u1"), DomainRef("b", "u2")],
        "domain_id": None,
        "domain_qmp": {"return": [1, {"x": None}]},
    }
    for name, value in cases.items():
        c = protocol.CALLS[name]
        wire = json.loads(json.dumps(protocol.encode_result(c, value)))
        assert protocol.decode_result(c, wire) == value
        # As the daemon sends it and a client reads it: the wire's encoder given
        # wire_result, the text decoded straight to the declared type.
        text = rpc_wire.encode({"r": protocol.wire_result(c, value)})[len(b'{"r":') : -2]
        assert json.loads(text) == wire
        assert protocol.decode_result_json(c, text) == value


def test_a_result_of_the_wrong_type_is_refused_from_the_text_too():
    for name, text in (
        (
            "domain_info",
            b'{"state":1,"max_memory_kib":1,"memory_kib":1,"vcpus":true,"cpu_time_ns":1}',
        ),
        ("domain_info", b'{"state":1,"max_memory_kib":1,"memory_kib":1,"vcpus":2}'),
        (
            "domain_info",
            b'{"state":99,"max_memory_kib":1,"memory_kib":1,"vcpus":2,"cpu_time_ns":1}',
        ),
        ("lookup_by_name", b'["a","u"]'),
        ("domain_state", b"[1]"),
        ("domain_id", b'"3"'),
        ("domain_is_active", b"1"),
    ):
        with pytest.raises(ValueError):
            protocol.decode_result_json(protocol.CALLS[name], text)


def test_the_method_table_documents_every_call():
    table = protocol.methods_markdown()
    for name in protocol.CALLS:
        assert f"`{name}`" in table


def test_docs_list_the_declared_calls_as_the_declaration_says():
    from .guest import REPO

    doc = (REPO / "docs" / "protocol.md").read_text()
    assert protocol.methods_markdown() in doc, "regenerate: python -m asvirt.protocol"


def test_the_one_shot_clients_call_table_is_generated_from_the_declaration():
    from asvirt.rpc import calls_table

    from .guest import REPO

    text = (REPO / "asvirt" / "rpc" / "calls_table.py").read_text()
    assert text == protocol.calls_table_source(), (
        "regenerate: python -m asvirt.protocol calls-table > asvirt/rpc/calls_table.py"
    )
    assert calls_table.CALLS.keys() == protocol.CALLS.keys()


@pytest.mark.parametrize("name", sorted(protocol.CALLS))
def test_the_call_tables_specs_name_the_declared_types(name):
    """A spec by name (the one-shot client's) and by class (the declaration's) describe the
    same type: resolving the names gives the declaration's spec back."""
    from asvirt.rpc import calls_table, values

    def resolve(spec):
        if isinstance(spec, str):
            return spec
        if spec[0] in ("list", "tuple"):
            return (spec[0], resolve(spec[1]))
        if spec[0] == "union":
            return ("union", tuple(map(resolve, spec[1])))
        if spec[0] == "enum":
            return ("enum", values._resolve(spec[1]))
        if spec[0] == "record":
            fields = tuple((n, resolve(s)) for n, s in spec[2])
            return ("record", values._resolve(spec[1]), fields)
        return spec

    c = protocol.CALLS[name]
    client, progress, result = calls_table.CALLS[name]
    assert (client, progress) == (c.client, c.progress)
    assert resolve(result) == protocol.spec_of(c.result)
    assert result[0] != "unknown" if isinstance(result, tuple) else True


def test_results_decode_alike_from_the_call_tables_specs():
    from asvirt import DomainState, PausedReason
    from asvirt.drivers.base import DomainInfo, DomainRef
    from asvirt.rpc import calls_table, values

    cases = {
        "domain_state": (DomainState.PAUSED, PausedReason.USER),
        "domain_info": DomainInfo(DomainState.RUNNING, 1024, 512, 2, 123),
        "list_all_domains": [DomainRef("a", "u1"), DomainRef("b", "u2")],
        "domain_id": 3,
    }
    for name, value in cases.items():
        plain = protocol.encode_result(protocol.CALLS[name], value)
        assert values.decoder(calls_table.CALLS[name][2])(plain, name) == value
    bad = {"state": 1, "max_memory_kib": 1, "memory_kib": 1, "vcpus": True, "cpu_time_ns": 1}
    with pytest.raises(ValueError):
        values.decoder(calls_table.CALLS["domain_info"][2])(bad, "domain_info")


def test_an_argument_declared_with_a_default_may_be_left_out():
    # An older client that does not know force_boot still starts domains; the ones without a
    # default stay required.
    c = protocol.CALLS["domain_start"]
    assert protocol.decode_params(c, {"uuid": "u", "paused": True, "autodestroy": False}) == {
        "uuid": "u",
        "paused": True,
        "autodestroy": False,
        "force_boot": False,
    }
    with pytest.raises(asvirt.InvalidArgError, match="missing argument 'paused'"):
        protocol.decode_params(c, {"uuid": "u", "autodestroy": False})


def test_a_float_argument_takes_any_json_number_and_nothing_else():
    c = protocol.CALLS["domain_agent_command"]
    base = {"uuid": "u", "command": "{}"}
    assert protocol.decode_params(c, {**base, "timeout": 1})["timeout"] == 1.0
    assert protocol.decode_params(c, {**base, "timeout": 0.5})["timeout"] == 0.5
    assert protocol.decode_params(c, {**base, "timeout": None})["timeout"] is None
    for bad in (True, "1", [1], 10**400):  # the last: an integer no float can hold
        with pytest.raises(asvirt.InvalidArgError, match="timeout"):
            protocol.decode_params(c, {**base, "timeout": bad})
