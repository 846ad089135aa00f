"""Connection URIs: asvirt.uri splits them as urllib.parse does (it does not import urllib,
which a one-shot command-line client would pay for), and refuses what is no URI."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asvirt
from asvirt.uri import parse_uri

EXAMPLES = [
    "qemu:///system",
    "qemu:///session",
    "QEMU:///System",
    "qemu:///embed?root=/var/tmp/vms",
    "qemu:///embed?root=/var/tmp/my%20vms",
    "qemu:///embed?root=/var/tmp/a+b&x",
    "qemu+unix:///system?socket=/run/asvirt/asvirt-sock",
    "qemu+ssh://user@far.example:2222/system?keyfile=/k&no_verify=1",
    "qemu+ssh://far.example/session#fragment",
    "qemu+ssh://host?x=1",
    "qemu:///p%C3%A9th?k%3D=v%26w",
    "qemu:///bad%zz%4?a=%",
    "test:///default",
    "  qemu:///system\n",
    "qemu:///sys\ttem",
]


def urllib_parts(uri: str) -> tuple[str, str, str, str, list[tuple[str, str]]]:
    parts = urllib.parse.urlsplit(uri)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    scheme, _, transport = parts.scheme.partition("+")
    return scheme.lower(), transport, parts.netloc, urllib.parse.unquote(parts.path), pairs


def check(uri: str) -> None:
    """parse_uri(uri) holds urllib's parts, or refuses what has no driver name or repeats a
    parameter."""
    scheme, transport, host, path, pairs = urllib_parts(uri)
    if not scheme or len({k for k, _ in pairs}) < len(pairs):
        with pytest.raises(asvirt.NoConnectError):
            parse_uri(uri)
        return
    parsed = parse_uri(uri)
    got = (parsed.scheme, parsed.transport or "", parsed.host, parsed.path, parsed.params)
    assert got == (scheme, transport, host, path, dict(pairs))


@pytest.mark.parametrize("uri", EXAMPLES)
def test_uris_split_as_urllib_splits_them(uri):
    check(uri)


# URI-ish text: the delimiters, escapes (valid and not), non-ASCII and control characters.
uri_text = st.lists(
    st.sampled_from([*"qemu+ssh:/?#&=%@.-_ aé€\t\n", "%2F", "%C3", "%A9", "%zz"]),
    max_size=30,
).map("".join)


@given(st.sampled_from(["qemu://", "qemu+ssh://", "test:///", "x://", "://", " 1q://"]), uri_text)
def test_any_uri_splits_as_urllib_splits_it(head, rest):
    uri = head + rest
    if "[" in uri or "]" in uri:
        return  # urllib checks bracketed IPv6 hosts; no driver of ours takes one
    check(uri)


def test_a_repeated_parameter_is_refused():
    with pytest.raises(asvirt.NoConnectError, match="given twice"):
        parse_uri("qemu:///embed?root=/a&root=/b")


@pytest.mark.parametrize("bad", ["", "qemu", "/var/tmp/vms", "://system", "1qemu:///system"])
def test_what_is_no_uri_is_refused(bad):
    with pytest.raises(asvirt.NoConnectError):
        parse_uri(bad)
