"""canonical_uuid: the one reader of UUID strings (domain XML, network/pool XML, lookups)."""

from __future__ import annotations

import pytest

from asvirt.conf.names import canonical_uuid
from asvirt.errors import InvalidArgError, XMLError

CANONICAL = "c7a5fdbd-edaf-9455-926a-d65c16db1809"


@pytest.mark.parametrize(
    "text",
    [
        CANONICAL,
        CANONICAL.upper(),
        CANONICAL.replace("-", ""),
        f"  {CANONICAL}\n",
        "c7 a5 fd bd ed af 94 55 92 6a d6 5c 16 db 18 09",  # libvirt allows ' ' between pairs
        "c7a5-fdbd-edaf-9455-926a-d65c-16db-1809",  # and '-' between any two pairs
    ],
)
def test_spellings_libvirt_accepts(text: str) -> None:
    assert canonical_uuid(text) == CANONICAL


@pytest.mark.parametrize(
    "text",
    [
        "not-a-uuid",
        "",
        CANONICAL[:-1],
        CANONICAL + "0",
        "c-7a5fdbd-edaf-9455-926a-d65c16db1809",  # a dash splitting a pair of digits
        "{" + CANONICAL + "}",  # Python's uuid.UUID takes these; libvirt does not
        "urn:uuid:" + CANONICAL,
        "0x" + "0" * 30,
        "c7a5fdbd_edaf_9455_926a_d65c16db1809",
    ],
)
def test_anything_else_is_an_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgError, match="invalid UUID"):
        canonical_uuid(text)


def test_non_strings_are_invalid() -> None:
    with pytest.raises(InvalidArgError):
        canonical_uuid(12345)


def test_xml_readers_choose_their_error_and_wording() -> None:
    with pytest.raises(XMLError, match="invalid network UUID 'x'"):
        canonical_uuid(" x ", what="network UUID", error=XMLError)
