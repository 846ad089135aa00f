"""``<disk type='network'>``: what libvirt's schema allows and QEMU 7.2 can open is parsed
and written back as given (valid under libvirt's schema); the rest is refused with why."""

from __future__ import annotations

import pytest
from lxml import etree

from asvirt.conf.domain import parse_domain_xml
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests.caps import CONFORMANCE
from tests.helpers import NET_DISK_SOURCES as SOURCES
from tests.helpers import dom, net_disk

SCHEMA = CONFORMANCE / "schemas" / "domain.rng"


def _shape(el: etree._Element) -> list[tuple[str, dict[str, str]]]:
    """Each element's tag and attributes, in document order (whitespace aside)."""
    return [(str(e.tag), dict(e.attrib)) for e in el.iter()]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_protocol_round_trips_valid(name: str) -> None:
    d = parse_domain_xml(net_disk(SOURCES[name]))
    disk = d.disks[0]
    assert disk.net is not None and disk.source is None and disk.has_media
    out = d.to_xml()
    written = etree.fromstring(out.encode()).find("devices/disk/source")
    assert written is not None
    assert _shape(written) == _shape(etree.fromstring(SOURCES[name]))
    if SCHEMA.exists():
        rng = etree.RelaxNG(file=str(SCHEMA))
        assert rng.validate(etree.fromstring(out.encode())), rng.error_log
    again = parse_domain_xml(out)
    assert again.disks[0].net == disk.net
    assert again.to_xml() == out


def test_fields_and_what_domblklist_shows() -> None:
    disk = parse_domain_xml(net_disk(SOURCES["rbd"])).disks[0]
    assert disk.net is not None
    assert [(h.name, h.port) for h in disk.net.hosts] == [("mon1", 6322), ("mon2", None)]
    assert (disk.net.rbd_snapshot, disk.net.rbd_config) == ("s", "/etc/ceph/ceph.conf")
    assert disk.shown_source == "pool/image"
    nbd = parse_domain_xml(net_disk(SOURCES["nbd-unix"])).disks[0]
    assert nbd.net is not None and nbd.net.hosts[0].socket == "/run/nbd.sock"
    assert nbd.shown_source == "nbd"  # no export name: the server's default export


def test_cookies_and_encryption_in_a_network_source() -> None:
    net = parse_domain_xml(net_disk(SOURCES["https-cookies"])).disks[0].net
    assert net is not None
    assert net.cookies == [("session", "s3cr3t-v4lue"), ("lang", '"en"')]
    assert net.cookie_header() == 'session=s3cr3t-v4lue; lang="en"'  # as curl sends it
    disk = parse_domain_xml(net_disk(SOURCES["nbd-luks"])).disks[0]
    assert disk.encryption is not None and disk.encryption.in_source
    assert disk.encryption.secret_usage == "luks-export"


def test_live_xml_numbers_the_node() -> None:
    d = parse_domain_xml(net_disk(SOURCES["nbd-tcp"]))
    d.disks[0].node_index = 3
    assert "<source protocol='nbd' name='export' index='3'>" in d.to_xml(live=True, domain_id=1)
    assert "index=" not in d.to_xml()


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("<source protocol='sheepdog' name='x'><host name='h'/></source>", "sheepdog driver"),
        ("<source protocol='vxhs' name='x'><host name='h'/></source>", "vxhs driver"),
        ("<source protocol='tftp' name='x'><host name='h'/></source>", "http, https, ftp"),
        (
            "<source protocol='nbd' name='p'><host name='h'/><auth username='u'>"
            "<secret type='iscsi' usage='x'/></auth></source>",
            "only iscsi and rbd disks take credentials",
        ),
        (
            "<source protocol='https' name='a' tls='yes'><host name='h'/></source>",
            "takes no TLS credentials",
        ),
        (
            "<source protocol='gluster' name='v/p'><host transport='rdma' name='h'/></source>",
            "RDMA",
        ),
        (
            "<source protocol='http' name='p'><host transport='unix' socket='/s'/></source>",
            "no unix socket",
        ),
        (
            "<source protocol='nfs' name='/p'><host name='h'/><identity user='u'/></source>",
            "<identity>",
        ),
        ("<source protocol='nfs' name='/p'><host name='h' port='1'/></source>", "no port"),
        (
            "<source protocol='ftp' name='p'><host name='h'/><cookies>"
            "<cookie name='a'>b</cookie></cookies></source>",
            "cookies are HTTP's",
        ),
    ],
)
def test_what_qemu_cannot_do_is_refused_with_why(source: str, named: str) -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        parse_domain_xml(net_disk(source))
    assert named in str(info.value), str(info.value)


def test_curl_media_must_be_read_only() -> None:
    with pytest.raises(ConfigUnsupportedError, match="read-only; add <readonly/>"):
        parse_domain_xml(net_disk(SOURCES["http"], readonly=False))
    parse_domain_xml(net_disk(SOURCES["nbd-tcp"], readonly=False))  # NBD writes


def test_a_network_lun_is_an_iscsi_one() -> None:
    def lun(source: str) -> str:
        return dom(
            f"<disk type='network' device='lun'>{source}<target dev='sda' bus='scsi'/></disk>"
        )

    assert parse_domain_xml(lun(SOURCES["iscsi"])).disks[0].device == "lun"
    # libvirt's words: no other protocol speaks SCSI to its server.
    with pytest.raises(
        ConfigUnsupportedError, match="disk device='lun' is not supported for protocol='nbd'"
    ):
        parse_domain_xml(lun(SOURCES["nbd-tcp"]))


def _cookies(jar: str) -> str:
    return f"<source protocol='http' name='p'><host name='h'/><cookies>{jar}</cookies></source>"


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (
            "<source protocol='rbd' name='p/i'><auth username='u'>"
            "<secret type='iscsi' usage='x'/></auth></source>",
            "secret has type 'ceph', not 'iscsi'",
        ),
        (
            "<source protocol='iscsi' name='iqn.x/1'><host name='h'/><auth username='u'>"
            "<secret type='iscsi'/></auth></source>",
            "either uuid= or usage=",
        ),
        ("<source protocol='rbd' name='noslash'/>", "'pool/image'"),
        # libvirt's schema types these as genericName: [a-zA-Z0-9_+-]+ (no '.', no blank)
        (
            "<source protocol='rbd' name='p/i'><snapshot name='0.'/></source>",
            r"invalid value '0\.' for name of <disk><source><snapshot>: only letters",
        ),
        ("<source protocol='rbd' name='p/i'><snapshot name='a b'/></source>", "genericName"),
        (
            "<source protocol='rbd' name='p/i'><auth username='client.admin'>"
            "<secret type='ceph' usage='x'/></auth></source>",
            r"invalid value 'client\.admin' for username of <disk><source><auth>",
        ),
        ("<source protocol='gluster' name='v/p'/>", "at least one <host>"),
        ("<source protocol='gluster' name='vol'><host name='h'/></source>", "'volume/path'"),
        ("<source protocol='iscsi' name='iqn/x'><host name='h'/></source>", "'IQN/LUN'"),
        ("<source protocol='nbd' name='e'/>", "exactly one <host>"),
        ("<source protocol='http'><host name='h'/></source>", "missing attribute 'name'"),
        ("<source protocol='nbd'><host name='a/b'/></source>", "invalid host name"),
        ("<source protocol='nbd'><host transport='unix' socket='rel'/></source>", "absolute"),
        (_cookies("<cookie name='a b'>v</cookie>"), "cookie name 'a b' contains invalid"),
        (_cookies("<cookie name='a=b'>v</cookie>"), "cookie name 'a=b' contains invalid"),
        (_cookies("<cookie name='a'>x;y</cookie>"), "value of cookie 'a' contains invalid"),
        (_cookies("<cookie name='a'>\"x</cookie>"), "value of cookie 'a' contains invalid"),
        (_cookies("<cookie name='a'>1</cookie><cookie name='a'>2</cookie>"), "duplicate cookie"),
        (_cookies(""), "at least one <cookie"),
        (
            "<source protocol='nbd'><host name='h'/><encryption format='luks'><secret "
            "type='passphrase' usage='x'/></encryption></source><encryption format='luks'>"
            "<secret type='passphrase' usage='x'/></encryption>",
            "both in <source> and in <disk>",
        ),
        (
            "<source protocol='nfs' name='/p'><host name='h'/><encryption format='luks'>"
            "<secret type='passphrase' usage='x'/></encryption></source>",
            "an nfs source takes no <encryption>",
        ),
    ],
)
def test_bad_sources_are_xml_errors(source: str, match: str) -> None:
    with pytest.raises(XMLError, match=match):
        parse_domain_xml(net_disk(source))


def test_network_disk_needs_a_source_but_a_cdrom_may_be_empty() -> None:
    with pytest.raises(XMLError, match="needs <source protocol"):
        parse_domain_xml(dom("<disk type='network'><target dev='vda'/></disk>"))
    d = parse_domain_xml(
        dom("<disk type='network' device='cdrom'><target dev='hdc' bus='ide'/></disk>")
    )
    assert not d.disks[0].has_media
