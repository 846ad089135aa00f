"""What the QEMU driver says about domains: live and persistent XML, capabilities, QMP errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from lxml import etree

import asvirt

from .guest import REPO, paused_xml
from .helpers import qemu_pid

pytestmark = [pytest.mark.qemu]

SCHEMA = REPO.parent / "shared" / "conformance" / "schemas" / "domain.rng"


@pytest.fixture(scope="module")
def relaxng() -> etree.RelaxNG:
    if not SCHEMA.exists():
        pytest.skip(f"libvirt's domain schema is not here ({SCHEMA}): ../shared is absent")
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def assert_valid(schema: etree.RelaxNG, xml: str) -> None:
    doc = etree.fromstring(xml.encode())
    assert schema.validate(doc), schema.error_log.last_error


async def test_dumpxml_validates_against_libvirts_schema(conn, test_guest, tmp_path, relaxng):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
    inactive = await dom.xml_desc()
    assert_valid(relaxng, inactive)
    await dom.start(paused=True)
    live = await dom.xml_desc()
    assert_valid(relaxng, live)
    root = etree.fromstring(live.encode())
    assert root.get("id") == str(await dom.id())
    assert root.find("devices/serial/alias").get("name") == "serial0"
    # The persistent definition stays as it was defined.
    assert await dom.xml_desc(inactive=True) == inactive
    # define -> dumpxml -> define is stable.
    again = await conn.define_xml(inactive)
    assert again == dom and await dom.xml_desc(inactive=True) == inactive


async def test_pty_serial_path_appears_in_live_xml(conn, test_guest, tmp_path):
    xml = paused_xml(test_guest, tmp_path).replace(
        f"<serial type='file'>\n      <source path='{tmp_path / 'vm1.serial'}'/>",
        "<serial type='pty'>",
    )
    assert "<serial type='pty'>" in xml
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    serial = etree.fromstring((await dom.xml_desc()).encode()).find("devices/serial")
    path = serial.find("source").get("path")
    assert path.startswith("/dev/pts/") and Path(path).exists()
    # The pty QEMU allocated belongs to this run, not to the persistent definition.
    assert "/dev/pts/" not in await dom.xml_desc(inactive=True)


async def test_capabilities_are_probed_once_and_cached(conn, root):
    caps = etree.fromstring((await conn.capabilities()).encode())
    arch = caps.find("guest/arch")
    assert arch.get("name") == "x86_64"
    assert arch.findtext("emulator").endswith("qemu-system-x86_64")
    machines = {m.text for m in arch.findall("machine")}
    assert "pc" in machines and "q35" in machines
    assert {d.get("type") for d in arch.findall("domain")} >= {"qemu"}
    cached = list((root / "cache" / "qemu" / "capabilities").glob("*.json"))
    assert len(cached) == 1


async def test_qmp_errors_carry_qemus_error_class(conn, test_guest, tmp_path):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
    await dom.start(paused=True)
    with pytest.raises(asvirt.QMPError) as info:
        await dom.qmp("no-such-command")
    assert info.value.error_class == "CommandNotFound"
    with pytest.raises(asvirt.QMPError):
        await dom.qmp("device_del", {"id": "nonexistent"})
    assert (await dom.qmp("query-name"))["name"] == "vm1"


async def test_runtime_details_in_live_xml(conn, test_guest, tmp_path, root):
    """What only exists once QEMU runs: the VNC port, agent socket, NIC link, CPU pinning."""
    xml = (
        paused_xml(test_guest, tmp_path)
        .replace(
            "<devices>",
            """<vcpu cpuset='0'>1</vcpu><devices>
    <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/>
      <link state='down'/></interface>
    <channel type='unix'><source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>""",
        )
        .replace("<vcpu>1</vcpu>", "")
    )
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    live = etree.fromstring((await dom.xml_desc()).encode())
    port = int(live.find("devices/graphics").get("port"))
    assert port >= 5900
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(12).startswith(b"RFB ")
    agent = live.find("devices/channel/source").get("path")
    assert os.path.exists(agent) and len(agent) <= 107
    # (QEMU has no query for a NIC's link state; set_link failing would have failed start.)
    pid = qemu_pid(root, "vm1")
    for tid in os.listdir(f"/proc/{pid}/task"):
        assert os.sched_getaffinity(int(tid)) == {0}


async def test_normalize_shows_what_define_would_store(conn, test_guest, tmp_path, root):
    xml = paused_xml(test_guest, tmp_path)
    preview = await conn.domain_xml_normalize(xml)
    assert list((root / "etc" / "qemu").iterdir()) == []
    assert await conn.list_all_domains() == []
    uuid = etree.fromstring(preview.encode()).findtext("uuid")
    xml_with_uuid = xml.replace("<name>vm1</name>", f"<name>vm1</name><uuid>{uuid}</uuid>")
    dom = await conn.define_xml(xml_with_uuid)
    assert await dom.xml_desc() == preview
