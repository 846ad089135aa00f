"""Bad input to the QEMU driver: a clear asvirt error, and nothing written under the root."""

from __future__ import annotations

from pathlib import Path

import pytest

import asvirt

from .guest import TestGuest

pytestmark = [pytest.mark.qemu]


def tree(root: Path) -> dict[str, bytes]:
    """Every config and status file under the root, with contents."""
    files = {}
    for sub in ("etc/qemu", "run/qemu"):
        for p in sorted((root / sub).glob("*")):
            if p.name != "driver.lock":
                files[str(p.relative_to(root))] = p.read_bytes()
    return files


def with_name(guest: TestGuest, tmp_path: Path, name: str) -> str:
    return guest.xml("PLACEHOLDER", tmp_path / "s.log").replace(
        "<name>PLACEHOLDER</name>", f"<name>{name}</name>"
    )


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<domain type='qemu'><name>&lol4;</name><memory>131072</memory><vcpu>1</vcpu>
<os><type>hvm</type></os></domain>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>
<domain type='qemu'><name>x</name><description>&xxe;</description>
<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"""


@pytest.mark.parametrize(
    "xml",
    [
        pytest.param("<domain type='qemu'><name>x</name>", id="malformed"),
        pytest.param("", id="empty"),
        pytest.param("not xml at all", id="junk"),
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(EXTERNAL_ENTITY, id="external-entity"),
        pytest.param("<network><name>n</name></network>", id="not-a-domain"),
    ],
)
async def test_hostile_or_broken_xml(conn, root, xml):
    before = tree(root)
    with pytest.raises(asvirt.XMLError) as info:
        await conn.define_xml(xml)
    assert info.value.code in (asvirt.ErrorCode.XML_ERROR, asvirt.ErrorCode.CONFIG_UNSUPPORTED)
    assert tree(root) == before
    with pytest.raises(asvirt.XMLError):
        await conn.create_xml(xml)
    assert tree(root) == before
    assert await conn.list_all_domains() == []


async def test_huge_document_is_refused_before_parsing(conn, root, test_guest, tmp_path):
    xml = with_name(test_guest, tmp_path, "big").replace(
        "<devices>", "<description>" + "x" * (50 * 1024 * 1024) + "</description><devices>"
    )
    before = tree(root)
    with pytest.raises(asvirt.XMLError, match="large"):
        await conn.define_xml(xml)
    assert tree(root) == before


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 201, ".", "..", "a\x01b"])
async def test_bad_names(conn, root, test_guest, tmp_path, name):
    before = tree(root)
    with pytest.raises(asvirt.XMLError):
        await conn.define_xml(with_name(test_guest, tmp_path, name.replace("\x01", "&#1;")))
    assert tree(root) == before
    assert not (root.parent / "x.xml").exists()
    assert sorted(p.name for p in root.parent.iterdir()) == ["asvirt-root"]


@pytest.mark.parametrize(
    "old,new",
    [
        ("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>0</memory>"),
        ("<memory unit='MiB'>128</memory>", "<memory unit='furlongs'>128</memory>"),
        ("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>lots</memory>"),
        ("<vcpu>1</vcpu>", "<vcpu>0</vcpu>"),
        ("<name>vm</name>", "<name>vm</name><uuid>not-a-uuid</uuid>"),
    ],
)
async def test_bad_values(conn, root, test_guest, tmp_path, old, new):
    xml = test_guest.xml("vm", tmp_path / "s.log")
    assert old in xml
    before = tree(root)
    with pytest.raises(asvirt.XMLError):
        await conn.define_xml(xml.replace(old, new))
    assert tree(root) == before


async def test_unsupported_element_is_named(conn, root, test_guest, tmp_path):
    xml = test_guest.xml("vm", tmp_path / "s.log").replace(
        "<devices>",
        "<devices><hostdev mode='capabilities' type='storage'/>",
    )
    before = tree(root)
    with pytest.raises(asvirt.ConfigUnsupportedError, match="hostdev mode='capabilities'"):
        await conn.define_xml(xml)
    assert tree(root) == before


async def test_duplicate_name_or_uuid(conn, root, test_guest, tmp_path):
    dom = await conn.define_xml(test_guest.xml("vm", tmp_path / "s.log"))
    before = tree(root)
    with pytest.raises(asvirt.DomainExistsError):
        # same name, another UUID
        await conn.define_xml(
            test_guest.xml("vm", tmp_path / "s.log", uuid="11111111-2222-3333-4444-555555555555")
        )
    with pytest.raises(asvirt.DomainExistsError):
        # same UUID, another name
        await conn.define_xml(test_guest.xml("other", tmp_path / "s.log", uuid=dom.uuid))
    assert tree(root) == before
    assert [d.name for d in await conn.list_all_domains()] == ["vm"]


async def test_kvm_domain_without_kvm_says_so(conn, test_guest, tmp_path, monkeypatch):
    from asvirt.drivers.qemu import capabilities

    # A machine without KVM: the device node does not exist.
    monkeypatch.setattr(capabilities, "KVM_DEVICE", str(tmp_path / "no-such-kvm"))
    dom = await conn.define_xml(test_guest.xml("vm", tmp_path / "s.log", domain_type="kvm"))
    with pytest.raises(asvirt.ConfigUnsupportedError, match="KVM"):
        await dom.start()
    assert await dom.state() == (asvirt.DomainState.SHUTOFF, asvirt.ShutoffReason.UNKNOWN)


@pytest.mark.parametrize(
    "nic,why",
    [
        ("<model type='virtio'/><driver rx_queue_size='300'/>", "has to be a power of two"),
        ("<model type='virtio'/><driver tx_queue_size='512'/>", "only honoured by QEMU"),
        ("<model type='e1000'/><driver event_idx='off'/>", "are virtio-net's"),
        ("<model type='virtio'/><driver iommu='on'/>", "modern-only virtio device"),
        ("<mtu size='1400'/>", "setting MTU on interface type user"),
        ("<rom enabled='no' file='/x.rom'/>", "ROM tuning is not supported"),
    ],
)
async def test_bad_interface_settings_change_nothing(conn, root, test_guest, tmp_path, nic, why):
    xml = test_guest.xml("vm", tmp_path / "s.log").replace(
        "<devices>", f"<devices><interface type='user'>{nic}</interface>"
    )
    before = tree(root)
    with pytest.raises(asvirt.XMLError, match=why):  # ConfigUnsupportedError is one
        await conn.define_xml(xml)
    with pytest.raises(asvirt.XMLError, match=why):
        await conn.create_xml(xml)
    assert tree(root) == before
