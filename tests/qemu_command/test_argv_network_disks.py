"""The ``-blockdev`` storage node of each network disk protocol: QEMU's driver with the
properties libvirt gives it (libvirt's qemuxmlconfdata ``disk-network-*`` cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.netdisk import check_network_disks, missing_module
from asvirt.errors import OperationFailedError
from tests.caps import Caps
from tests.helpers import NET_DISK_SOURCES as SOURCES
from tests.helpers import argv_of, blockdevs, device, dom, dumpxml_roundtrip, net_disk, opts

#: What a source's <auth> adds (tests.helpers' iscsi and rbd sources name a user).
AUTH = {
    "iscsi": {"user": "myname", "password-secret": "libvirt-1-storage-auth-secret0"},
    "rbd": {
        "user": "admin",
        "key-secret": "libvirt-1-storage-auth-secret0",
        "auth-client-required": ["cephx", "none"],
    },
}


def storage(caps: Caps, source: str, **kw: Any) -> dict[str, Any]:
    nodes = blockdevs(argv_of(caps, net_disk(source, **kw)))
    assert len(nodes) == 1, nodes  # raw: the storage node is the disk's only node
    node = nodes[0]
    assert node.pop("node-name") == "libvirt-1-storage"
    return node


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "nbd-tcp",
            {
                "driver": "nbd",
                "server": {"type": "inet", "host": "127.0.0.1", "port": "10809"},
                "export": "export",
            },
        ),
        ("nbd-unix", {"driver": "nbd", "server": {"type": "unix", "path": "/run/nbd.sock"}}),
        (
            "http",
            {
                "driver": "http",
                "url": "http://example.org:80/img/a.iso?x=1&y=2",
                "readahead": 65536,
                "timeout": 10,
            },
        ),
        (
            "https",
            {"driver": "https", "url": "https://example.org:8443/a.img", "sslverify": False},
        ),
        ("ftp", {"driver": "ftp", "url": "ftp://example.org:21/a.img"}),
        ("ftps", {"driver": "ftps", "url": "ftps://example.org:990/a.img"}),
        (
            "iscsi",
            {
                "driver": "iscsi",
                "portal": "example.org:3260",
                "target": "iqn.1992-01.com.example",
                "lun": 1,
                "transport": "tcp",
                "initiator-name": "iqn.2013-07.com.example:c",
            },
        ),
        (
            "rbd",
            {
                "driver": "rbd",
                "pool": "pool",
                "image": "image",
                "server": [{"host": "mon1", "port": "6322"}, {"host": "mon2", "port": "6789"}],
                "snapshot": "s",
                "conf": "/etc/ceph/ceph.conf",
            },
        ),
        (
            "gluster",
            {
                "driver": "gluster",
                "volume": "Volume",
                "path": "Image.qcow2",
                "server": [
                    {"type": "inet", "host": "example.org", "port": "24007"},
                    {"type": "unix", "path": "/run/gl.sock"},
                ],
            },
        ),
        (
            "ssh",
            {
                "driver": "ssh",
                "path": "/test.img",
                "server": {"host": "example.org", "port": "2222"},
            },
        ),
        (
            "nfs",
            {
                "driver": "nfs",
                "server": {"type": "inet", "host": "example.org"},
                "path": "/foo/bar.img",
            },
        ),
    ],
)
def test_storage_node_of_each_protocol(caps: Caps, name: str, expected: dict[str, Any]) -> None:
    node = storage(caps, SOURCES[name])
    assert node.pop("read-only") is True  # net_disk marks them <readonly/>
    assert node == {**expected, **AUTH.get(name, {})}


def test_an_iscsi_lun_is_passed_through_by_scsi_block(caps: Caps) -> None:
    # libvirt's disk-network-iscsi case: the iscsi node itself under a scsi-block device.
    xml = dom(
        "<disk type='network' device='lun'><driver name='qemu' type='raw'/>"
        f"{SOURCES['iscsi']}<target dev='sda' bus='scsi'/></disk>"
        "<controller type='scsi' index='0' model='virtio-scsi'/>"
    )
    argv = argv_of(caps, xml)
    nodes = blockdevs(argv)
    assert [n["driver"] for n in nodes] == ["iscsi"]
    assert nodes[0]["lun"] == 1 and nodes[0]["user"] == "myname"
    # Addressed as a block LUN is (test_argv_more_devices), on the iscsi node.
    lun = device(argv, "scsi0-0-0-0")
    assert (lun["driver"], lun["drive"]) == ("scsi-block", "libvirt-1-storage")
    assert "<disk type='network' device='lun'>" in dumpxml_roundtrip(caps, xml)


@pytest.mark.parametrize("name", ["iscsi", "rbd"])
def test_credentials_are_a_secret_object_read_from_a_pipe(caps: Caps, name: str) -> None:
    argv = argv_of(caps, net_disk(SOURCES[name]))
    secret = '{"qom-type":"secret","id":"libvirt-1-storage-auth-secret0","format":"raw",'
    objects = [o for o in opts(argv, "-object") if o.startswith(secret)]
    assert objects == [secret + '"file":"/proc/self/fd/N"}']
    assert argv.index(objects[0]) < argv.index(opts(argv, "-blockdev")[0])


def test_cookies_go_to_curl_through_a_secret_object_never_the_command_line(caps: Caps) -> None:
    from asvirt.drivers.qemu.secrets import needed_secrets

    argv = argv_of(caps, net_disk(SOURCES["https-cookies"]))
    [node] = blockdevs(argv)
    assert node["driver"] == "https"
    assert node["cookie-secret"] == "libvirt-1-storage-httpcookie-secret0"
    sid = '{"qom-type":"secret","id":"libvirt-1-storage-httpcookie-secret0","format":"raw",'
    [obj] = [o for o in opts(argv, "-object") if o.startswith(sid)]
    assert obj == sid + '"file":"/proc/self/fd/N"}'
    assert argv.index(obj) < argv.index(opts(argv, "-blockdev")[0])
    assert not any("s3cr3t" in a for a in argv)
    # The pipe QEMU reads holds the Cookie: header curl sends (no secret driver asked).
    d = parse_domain_xml(net_disk(SOURCES["https-cookies"]))
    d.disks[0].node_index = 1

    def no_lookup(*args: object) -> tuple[str, bytes]:
        raise AssertionError(f"cookies are no secret driver's: {args}")

    assert needed_secrets(d, no_lookup) == {
        "libvirt-1-storage-httpcookie-secret0": b'session=s3cr3t-v4lue; lang="en"'
    }


def test_luks_image_over_nbd_is_opened_by_a_luks_layer_with_its_secret(caps: Caps) -> None:
    argv = argv_of(caps, net_disk(SOURCES["nbd-luks"], readonly=False))
    storage_node, fmt = blockdevs(argv)
    assert storage_node["driver"] == "nbd" and storage_node["node-name"] == "libvirt-1-storage"
    assert fmt == {
        "node-name": "libvirt-1-format",
        "read-only": False,
        "driver": "luks",
        "key-secret": "libvirt-1-format-encryption-secret0",
        "file": "libvirt-1-storage",
    }
    sid = '{"qom-type":"secret","id":"libvirt-1-format-encryption-secret0","format":"raw",'
    assert [o for o in opts(argv, "-object") if o.startswith(sid)] == [
        sid + '"file":"/proc/self/fd/N"}'
    ]


def test_the_secret_values_are_looked_up_and_a_ceph_key_is_given_in_base64() -> None:
    from asvirt.drivers.base import SecretUsageType
    from asvirt.drivers.qemu.secrets import needed_secrets
    from asvirt.errors import NoSecretError

    asked = []

    def lookup(uuid: str | None, kind: SecretUsageType, usage: str | None) -> tuple[str, bytes]:
        asked.append((uuid, kind, usage))
        if kind is SecretUsageType.ISCSI and usage == "libvirtiscsi":
            return "u", b"pass"
        if uuid == "6a4c2f4e-6f0d-4d35-9d2c-0f5e8f1e7a11" and kind is SecretUsageType.CEPH:
            return uuid, b"\x01\x02key"
        raise NoSecretError("none")

    iscsi = parse_domain_xml(net_disk(SOURCES["iscsi"]))
    iscsi.disks[0].node_index = 1
    assert needed_secrets(iscsi, lookup) == {"libvirt-1-storage-auth-secret0": b"pass"}
    rbd = parse_domain_xml(net_disk(SOURCES["rbd"]))
    rbd.disks[0].node_index = 2
    assert needed_secrets(rbd, lookup) == {"libvirt-2-storage-auth-secret0": b"AQJrZXk="}
    assert asked == [
        (None, SecretUsageType.ISCSI, "libvirtiscsi"),
        ("6a4c2f4e-6f0d-4d35-9d2c-0f5e8f1e7a11", SecretUsageType.CEPH, None),
    ]


def test_writable_nbd_qcow2_has_a_format_layer(caps: Caps) -> None:
    xml = net_disk(SOURCES["nbd-tcp"], readonly=False).replace("type='raw'", "type='qcow2'")
    argv = argv_of(caps, xml)
    store, fmt = blockdevs(argv)
    assert store["driver"] == "nbd" and store["auto-read-only"] is True
    assert fmt == {
        "node-name": "libvirt-1-format",
        "read-only": False,
        "driver": "qcow2",
        "file": "libvirt-1-storage",
    }
    assert device(argv, "virtio-disk1")["drive"] == "libvirt-1-format"


def test_ipv6_hosts_are_bracketed_in_urls_and_portals(caps: Caps) -> None:
    http = "<source protocol='http' name='a.iso'><host name='::1' port='8080'/></source>"
    assert storage(caps, http)["url"] == "http://[::1]:8080/a.iso"
    iscsi = "<source protocol='iscsi' name='iqn.x/0'><host name='fe80::1'/></source>"
    assert storage(caps, iscsi)["portal"] == "[fe80::1]:3260"


def test_a_missing_qemu_module_is_refused_naming_the_package(tmp_path: Path) -> None:
    (tmp_path / "block-curl.so").write_bytes(b"")
    assert missing_module("http", str(tmp_path)) is None
    assert missing_module("nbd", str(tmp_path)) is None  # built into QEMU
    why = missing_module("rbd", str(tmp_path))
    assert why is not None and "qemu-block-extra" in why and "block-rbd.so" in why
    # No module directory at all: a QEMU with its drivers built in.
    assert missing_module("rbd", str(tmp_path / "none")) is None


def test_start_check_names_disk_and_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QEMU_MODULE_DIR", str(tmp_path))  # an empty module directory
    d = parse_domain_xml(net_disk(SOURCES["iscsi"]))
    with pytest.raises(OperationFailedError, match=r"disk 'vdb'.*qemu-block-extra"):
        check_network_disks(d)
    check_network_disks(parse_domain_xml(net_disk(SOURCES["nbd-tcp"])))
