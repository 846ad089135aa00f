"""Property tests of the XML parser (hypothesis).

* Random well-formed domain documents round-trip: what asvirt writes, it reads back to the
  same XML, before and after libvirt's post-parse (define -> dumpxml -> define).
* Random junk, and random damage to valid documents, never raises anything but XMLError.
"""

from __future__ import annotations

import os

import pytest
from domain_strategies import domains
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.command import MonitorSpec, build_command
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import XMLError
from tests.caps import CONFORMANCE, Caps

#: Set ASVIRT_HYPOTHESIS_EXAMPLES (e.g. 3000) for a deeper search than the default run.
EXAMPLES = int(os.environ.get("ASVIRT_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- properties -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG | None:
    path = CONFORMANCE / "schemas" / "domain.rng"
    return etree.RelaxNG(file=str(path)) if path.exists() else None


@SETTINGS
@given(domains())
def test_parsed_domains_round_trip(xml: str) -> None:
    first = parse_domain_xml(xml).to_xml()
    assert parse_domain_xml(first).to_xml() == first


@SETTINGS
@given(domains())
def test_prepared_domains_round_trip_and_validate(
    caps: Caps, schema: etree.RelaxNG | None, xml: str
) -> None:
    prepared = prepare_domain(parse_domain_xml(xml), caps)
    argv = build_command(prepared, caps, monitor=MonitorSpec(path="/run/x/m.sock"))
    assert argv[0] == caps.binary and "-S" in argv
    out = prepared.to_xml()
    assert prepare_domain(parse_domain_xml(out), caps).to_xml() == out
    assert parse_domain_xml(out).to_xml() == out
    if schema is not None:
        for live in (False, True):
            doc = etree.fromstring(prepared.to_xml(live=live, domain_id=7).encode())
            assert schema.validate(doc), str(schema.error_log.last_error)


@SETTINGS
@given(st.one_of(st.binary(max_size=3000), st.text(max_size=3000)))
def test_junk_raises_only_xml_errors(junk: bytes | str) -> None:
    try:
        parse_domain_xml(junk)
    except XMLError:
        pass


@SETTINGS
@given(domains(), st.data())
def test_damaged_documents_raise_only_xml_errors(xml: str, data: st.DataObject) -> None:
    text = xml
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "duplicate"]))
        if action == "delete":
            end = data.draw(st.integers(pos, min(len(text), pos + 20)))
            text = text[:pos] + text[end:]
        elif action == "insert":
            text = text[:pos] + data.draw(st.text(max_size=8)) + text[pos:]
        else:
            end = data.draw(st.integers(pos, min(len(text), pos + 40)))
            text = text[:end] + text[pos:end] + text[end:]
    try:
        d = parse_domain_xml(text)
    except XMLError:
        return
    out = d.to_xml()  # whatever parsed must be writable and readable again
    assert parse_domain_xml(out).to_xml() == out


@SETTINGS
@given(domains(), st.data())
def test_random_attribute_values_raise_only_xml_errors(
    caps: Caps, xml: str, data: st.DataObject
) -> None:
    root = etree.fromstring(xml.encode())
    elements = [el for el in root.iter() if el.attrib]
    assume(elements)
    el = data.draw(st.sampled_from(elements))
    key = data.draw(st.sampled_from(sorted(el.attrib)))
    el.set(key, data.draw(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)))
    try:
        d = prepare_domain(parse_domain_xml(etree.tostring(root)), caps)
    except XMLError:
        return
    assert parse_domain_xml(d.to_xml()).to_xml() == d.to_xml()


def test_every_conformance_case_round_trips(caps: Caps) -> None:
    cases = sorted((CONFORMANCE / "libvirt-xml").glob("*.xml"))
    if not cases:
        pytest.skip(f"the conformance cases are not available ({CONFORMANCE} is missing)")
    for path in cases:
        try:
            first = prepare_domain(parse_domain_xml(path.read_bytes()), caps)
        except XMLError:
            continue  # an unsupported case; the conformance test checks there are few
        out = first.to_xml()
        assert prepare_domain(parse_domain_xml(out), caps).to_xml() == out, path.name
