"""Hostile and broken XML: every case is a specific XMLError subclass, and nothing is read."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from asvirt.conf.domain import parse_domain_xml
from asvirt.conf.names import InvalidNameError, validate_name
from asvirt.conf.units import UnitError
from asvirt.conf.xmlnode import InvalidValueError
from asvirt.conf.xmlsafe import (
    MalformedXMLError,
    UnsafeXMLError,
    XMLTooLargeError,
    parse_xml,
)
from asvirt.errors import ConfigUnsupportedError, ErrorCode, XMLError

MINIMAL = (
    "<domain type='qemu'><name>{name}</name><memory unit='{unit}'>{mem}</memory>"
    "<os><type arch='x86_64'>hvm</type></os></domain>"
)


def domain(name: str = "vm1", mem: str = "128", unit: str = "MiB") -> str:
    return MINIMAL.format(name=name, mem=mem, unit=unit)


def test_minimal_domain_parses() -> None:
    d = parse_domain_xml(domain())
    assert d.name == "vm1"
    assert d.memory_kib == 128 * 1024


@pytest.mark.parametrize(
    "text",
    [
        "<domain><name>x</domain>",
        "<domain",
        "not xml at all",
        "<domain></domain><domain/>",
        "",
        "   \n",
        "<domain>\x00</domain>",
        "<domain>&undefined;</domain>",
    ],
)
def test_malformed_xml(text: str) -> None:
    with pytest.raises(MalformedXMLError) as info:
        parse_domain_xml(text)
    assert info.value.code == ErrorCode.XML_ERROR
    assert "\n" not in str(info.value)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type='qemu'><name>&lol9;</name><memory>1</memory><os><type>hvm</type></os></domain>"""


def test_billion_laughs_is_rejected_quickly() -> None:
    # CPU time of this process, not wall time: what the parser spends expanding entities is
    # what a hostile document costs, and other processes on a loaded machine don't count.
    start = time.process_time()
    with pytest.raises(UnsafeXMLError):
        parse_domain_xml(BILLION_LAUGHS)
    assert time.process_time() - start < 0.5


def _xxe(url: str) -> str:
    return (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "{url}">]>'
        "<domain type='qemu'><name>&x;</name><memory>1</memory><os><type>hvm</type></os></domain>"
    )


def test_external_entity_passwd_is_not_read() -> None:
    with pytest.raises(UnsafeXMLError) as info:
        parse_domain_xml(_xxe("file:///etc/passwd"))
    assert "root:" not in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        '<!DOCTYPE d [<!ENTITY x SYSTEM "file://{path}">]><domain>&x;</domain>',
        '<!DOCTYPE d [<!ENTITY % p SYSTEM "file://{path}"> %p;]><domain/>',
        '<!DOCTYPE d SYSTEM "file://{path}"><domain/>',
    ],
    ids=["entity", "parameter-entity", "external-dtd"],
)
def test_external_resources_are_never_opened(tmp_path: Path, template: str) -> None:
    # A FIFO with no writer: opening it for reading blocks forever, so a parser that even
    # tries to read it never returns. The parse must come back (with an error) at once.
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def parse() -> None:
        try:
            parse_xml(template.format(path=fifo))
            result.append(None)
        except BaseException as err:
            result.append(err)

    thread = threading.Thread(target=parse, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():
        # Unblock the parser so the test process can exit, then fail.
        with open(fifo, "wb"):
            pass
        pytest.fail("the parser tried to open the external resource")
    assert isinstance(result[0], UnsafeXMLError)


def test_fifty_megabytes_are_rejected_before_parsing() -> None:
    big = "<domain>" + "x" * (50 * 1024 * 1024) + "</domain>"
    start = time.process_time()
    with pytest.raises(XMLTooLargeError):
        parse_domain_xml(big)
    with pytest.raises(XMLTooLargeError):
        parse_domain_xml(big.encode())
    assert time.process_time() - start < 0.2


def test_size_limit_is_adjustable() -> None:
    with pytest.raises(XMLTooLargeError):
        parse_xml("<domain/>", max_bytes=4)
    assert parse_xml("<domain/>", max_bytes=9).tag == "domain"


def test_doctype_without_entities_is_refused_too() -> None:
    with pytest.raises(UnsafeXMLError):
        parse_domain_xml("<!DOCTYPE domain>" + domain())


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "", "x" * 201, ".", "..", "-rf", "tab\there", "nl\nx", "del\x7f"],
    ids=["dotdot-x", "slash", "empty", "201-chars", "dot", "dotdot", "dash", "tab", "nl", "del"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)
    with pytest.raises(InvalidNameError):
        parse_domain_xml(domain(name=name.replace("\n", "&#10;").replace("\t", "&#9;")))


def test_name_limits_accept_reasonable_names() -> None:
    for name in ("x" * 200, "vm-1_a.b", "émoji-ünïcode", "a b"):
        validate_name(name)
    assert parse_domain_xml(domain(name="x" * 200)).name == "x" * 200


def test_missing_name() -> None:
    with pytest.raises(XMLError, match="missing <name>"):
        parse_domain_xml("<domain type='qemu'><memory>1</memory><os><type>hvm</type></os></domain>")


@pytest.mark.parametrize("unit", ["parsecs", "KiBB", "Ki", "kibibytes", "1", ""])
def test_unknown_units(unit: str) -> None:
    with pytest.raises(UnitError, match="unit"):
        parse_domain_xml(domain(unit=unit))


@pytest.mark.parametrize("mem", ["0", "-5", "1.5", "lots", " ", "0x10"])
def test_bad_memory_values(mem: str) -> None:
    with pytest.raises(InvalidValueError):
        parse_domain_xml(domain(mem=mem))


def test_memory_zero_message() -> None:
    with pytest.raises(InvalidValueError, match="greater than zero"):
        parse_domain_xml(domain(mem="0"))


def test_memory_too_large() -> None:
    with pytest.raises(UnitError, match="too large"):
        parse_domain_xml(domain(mem="99999999", unit="EiB"))


def test_bad_uuid() -> None:
    xml = domain().replace("<name>vm1</name>", "<name>vm1</name><uuid>not-a-uuid</uuid>")
    with pytest.raises(InvalidValueError, match="invalid UUID"):
        parse_domain_xml(xml)


def test_wrong_root_element() -> None:
    with pytest.raises(XMLError, match="<domain>"):
        parse_domain_xml("<network><name>x</name></network>")


def test_unsupported_is_an_xml_error_with_its_own_code() -> None:
    lxc_only = "<hostdev mode='capabilities' type='storage'/>"
    xml = domain().replace("</domain>", f"<devices>{lxc_only}</devices></domain>")
    with pytest.raises(ConfigUnsupportedError) as info:
        parse_domain_xml(xml)
    assert isinstance(info.value, XMLError)
    assert info.value.code == ErrorCode.CONFIG_UNSUPPORTED
    assert "<hostdev mode='capabilities'>" in str(info.value)


def test_deep_nesting_is_an_xml_error() -> None:
    deep = "<a>" * 100_000 + "</a>" * 100_000
    xml = domain().replace(
        "</domain>", f"<metadata><x:y xmlns:x='urn:x'>{deep}</x:y></metadata></domain>"
    )
    with pytest.raises(XMLError):
        parse_domain_xml(xml)


def test_a_document_full_of_devices_is_refused_quickly() -> None:
    disks = "<disk><source file='/a'/><target dev='vda'/></disk>" * 150_000
    xml = domain().replace("</domain>", f"<devices>{disks}</devices></domain>")
    assert len(xml) < 10 * 1024 * 1024
    start = time.process_time()
    with pytest.raises(ConfigUnsupportedError, match="at most"):
        parse_domain_xml(xml)
    assert time.process_time() - start < 3
