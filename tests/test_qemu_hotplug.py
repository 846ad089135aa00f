"""Devices attached, detached and updated on running domains, against real QEMU.

The booted test guest (TCG, i440FX with ACPI PCI hotplug) says on its serial port when a
disk appears or goes (``ASVIRT-DISK-add vdb``), so a test sees what the guest sees; tests
that need no guest use a paused VM (KVM where it works).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from lxml import etree

import asvirt

from .contract import drain
from .guest import (
    PAUSED_DOMAIN_TYPE,
    SharedGuest,
    TestGuest,
    define,
    paused_xml,
    shared_guest,
    wait_for_serial,
)
from .helpers import (
    collect_until,
    disk_xml,
    embed_uri,
    monitor_path,
    qemu_img,
    raw_qmp,
    vhost_user_backend,
)

pytestmark = [pytest.mark.qemu]

K = asvirt.EventKind


def image(path: Path, size: str = "16M") -> Path:
    qemu_img("create", "-q", "-f", "qcow2", path, size)
    return path


def targets(xml: str) -> list[str]:
    return [t.get("dev") for t in etree.fromstring(xml.encode()).iterfind("devices/disk/target")]


def disk_el(xml: str, target: str) -> etree._Element | None:
    for disk in etree.fromstring(xml.encode()).iterfind("devices/disk"):
        if disk.find("target").get("dev") == target:
            return disk
    return None


def nic_els(xml: str) -> list[etree._Element]:
    return list(etree.fromstring(xml.encode()).iterfind("devices/interface"))


async def node_names(dom: asvirt.Domain, prefix: str) -> list[str]:
    """QEMU's block nodes whose names start with ``prefix``."""
    nodes = await dom.qmp("query-named-block-nodes", None)
    return [n["node-name"] for n in nodes if n["node-name"].startswith(prefix)]


async def removed(events: asvirt.Subscription, kind: asvirt.EventKind) -> asvirt.DomainEvent:
    seen = await collect_until(events, lambda s: bool(s) and s[-1].kind is kind)
    return seen[-1]


@pytest.fixture(scope="module")
def guest(test_guest: TestGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGuest]:
    """The booted guest the tests that need no config of their own share."""
    with shared_guest(test_guest, tmp_path_factory.mktemp("hotplug-guest")) as shared:
        yield shared


@pytest.mark.guest
async def test_disk_attached_and_detached_in_a_booted_guest(guest, tmp_path):
    added, gone = guest.said("ASVIRT-DISK-add vda"), guest.said("ASVIRT-DISK-remove vda")
    path = image(tmp_path / "data.qcow2")
    async with (
        guest.connect() as (conn, dom),
        conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events,
    ):
        await dom.attach_device(disk_xml(path, "vdb"))
        await wait_for_serial(guest.serial, "ASVIRT-DISK-add vda", times=added + 1)
        live = await dom.xml_desc()
        disk = disk_el(live, "vdb")
        assert disk is not None
        assert disk.find("alias").get("name") == "virtio-disk1"
        assert disk.find("address").get("type") == "pci"
        assert disk.find("source").get("file") == str(path)
        # Only the running guest has it: the configuration is as it was.
        assert "vdb" not in targets(await dom.xml_desc(inactive=True))

        assert await dom.detach_device(disk_xml(path, "vdb")) is True
        ev = await removed(events, K.DEVICE_REMOVED)
        assert ev.data is not None and ev.data["device"] == "virtio-disk1"
        # Its nodes went before the event: the same file goes in again at once.
        assert await node_names(dom, "libvirt-") == []
        await dom.attach_device(disk_xml(path, "vdb"))
        await wait_for_serial(guest.serial, "ASVIRT-DISK-add vda", times=added + 2)
        assert guest.said("ASVIRT-DISK-remove vda") == gone + 1
        assert "vdb" in targets(await dom.xml_desc())
        # As it was found, for the next test.
        assert await dom.detach_device(disk_xml(path, "vdb")) is True
        assert targets(await dom.xml_desc()) == []


ROOT_PORTS = "<controller type='pci' model='pcie-root-port'/>" * 2


@pytest.mark.guest
async def test_q35_disks_go_on_free_root_ports(conn, test_guest, tmp_path):
    serial = tmp_path / "vm1.serial"
    # TCG on a loaded host can be too slow for the kernel's IO-APIC timer check.
    xml = test_guest.xml("vm1", serial, devices=ROOT_PORTS, cmdline="no_timer_check")
    dom = await conn.define_xml(xml.replace("machine='pc'", "machine='q35'"))
    await dom.start()
    await wait_for_serial(serial, timeout=120)
    paths = [image(tmp_path / f"{n}.qcow2") for n in ("b", "c")]
    await dom.attach_device(disk_xml(paths[0], "vdb"))
    await wait_for_serial(serial, "ASVIRT-DISK-add vda")
    address = disk_el(await dom.xml_desc(), "vdb").find("address")
    assert address.get("bus") != "0x00"  # a root port, not the root bus
    # Every root port is taken now: none is plugged in on a disk's behalf.
    before = await dom.xml_desc()
    with pytest.raises(asvirt.OperationUnsupportedError, match="controller"):
        await dom.attach_device(disk_xml(paths[1], "vdc"))
    assert await dom.xml_desc() == before
    async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
        assert await dom.detach_device(disk_xml(paths[0], "vdb")) is True
        ev = await removed(events, K.DEVICE_REMOVED)
        assert ev.data is not None and ev.data["device"] == "virtio-disk1"
    await wait_for_serial(serial, "ASVIRT-DISK-remove vda")
    assert targets(await dom.xml_desc()) == []


@pytest.mark.guest
async def test_a_guest_that_does_not_release_gets_removal_failed(guest, tmp_path):
    added, gone = guest.said("ASVIRT-DISK-add vda"), guest.said("ASVIRT-DISK-remove vda")
    path = image(tmp_path / "data.qcow2")
    async with guest.connect(unplug_timeout=0.5) as (conn, dom):
        await dom.attach_device(disk_xml(path, "vdb"))
        await wait_for_serial(guest.serial, "ASVIRT-DISK-add vda", times=added + 1)
        await dom.suspend()  # a paused guest cannot answer the unplug request
        try:
            async with conn.subscribe(
                dom, kinds={K.DEVICE_REMOVED, K.DEVICE_REMOVAL_FAILED}
            ) as events:
                with trio.fail_after(10):
                    assert await dom.detach_device(disk_xml(path, "vdb")) is False
                ev = await removed(events, K.DEVICE_REMOVAL_FAILED)
                assert ev.data == {"device": "virtio-disk1"}
                assert ev.describe() == (
                    "event 'device-removal-failed' for domain 'vm1': virtio-disk1"
                )
                assert "vdb" in targets(await dom.xml_desc())
                # Once the guest runs, it releases the disk: it goes then.
                await dom.resume()
                ev = await removed(events, K.DEVICE_REMOVED)
                assert ev.data is not None and ev.data["device"] == "virtio-disk1"
        finally:
            if (await dom.state())[0] is asvirt.DomainState.PAUSED:
                await dom.resume()  # as it was found, for the next test
        assert "vdb" not in targets(await dom.xml_desc())
        await wait_for_serial(guest.serial, "ASVIRT-DISK-remove vda", times=gone + 1)


async def paused(conn: asvirt.Connection, guest: TestGuest, tmp_path: Path, **kw: object):
    kw.setdefault("domain_type", PAUSED_DOMAIN_TYPE)
    dom, _ = await define(conn, guest, tmp_path, **kw)
    await dom.start(paused=True)
    return dom


async def test_config_only_changes_leave_the_running_guest_alone(conn, test_guest, tmp_path):
    dom = await paused(conn, test_guest, tmp_path)
    path = image(tmp_path / "data.qcow2")
    live_before = await dom.xml_desc()
    await dom.attach_device(disk_xml(path, "vdb"), config=True)
    assert await dom.xml_desc() == live_before
    assert "vdb" in targets(await dom.xml_desc(inactive=True))
    # Both at once; then live only: the configuration keeps it.
    await dom.attach_device(disk_xml(path, "vdc"), live=True, config=True)
    assert "vdc" in targets(await dom.xml_desc())
    assert "vdc" in targets(await dom.xml_desc(inactive=True))
    assert await dom.detach_device(disk_xml(path, "vdb"), config=True) is True
    assert "vdb" not in targets(await dom.xml_desc(inactive=True))
    # The configuration survives a restart of the supervisor (it is on disk).
    await dom.destroy()
    await dom.start(paused=True)
    assert targets(await dom.xml_desc()) == ["vdc"]


async def test_bad_input_changes_nothing(conn, test_guest, tmp_path):
    dom = await paused(conn, test_guest, tmp_path, devices=disk_xml(image(tmp_path / "a.qcow2")))
    live, config = await dom.xml_desc(), await dom.xml_desc(inactive=True)
    path = image(tmp_path / "b.qcow2")
    with pytest.raises(asvirt.XMLError):
        await dom.attach_device("<disk type='file'><source file='/x'/></disk>")
    with pytest.raises(asvirt.XMLError):
        await dom.attach_device("<disk")
    with pytest.raises(asvirt.ConfigUnsupportedError):
        await dom.attach_device("<watchdog model='i6300esb'/>")
    with pytest.raises(asvirt.OperationInvalidError, match="target vda already exists"):
        await dom.attach_device(disk_xml(path, "vda"), live=True, config=True)
    with pytest.raises(asvirt.DeviceMissingError, match="disk vdq not found"):
        await dom.detach_device(disk_xml(path, "vdq"), live=True, config=True)
    # QEMU refuses what it cannot open: the configuration is not changed either.
    with pytest.raises(asvirt.AsvirtError):
        await dom.attach_device(disk_xml(tmp_path / "missing.qcow2", "vdb"), live=True, config=True)
    assert await dom.xml_desc() == live
    assert await dom.xml_desc(inactive=True) == config
    # ...and QEMU has no leftover node: the same disk, made, goes in.
    image(tmp_path / "missing.qcow2")
    await dom.attach_device(disk_xml(tmp_path / "missing.qcow2", "vdb"))
    assert "vdb" in targets(await dom.xml_desc())


async def test_transient_domain_has_no_configuration_to_change(conn, test_guest, tmp_path):

    dom = await conn.create_xml(paused_xml(test_guest, tmp_path), paused=True)
    path = image(tmp_path / "b.qcow2")
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.attach_device(disk_xml(path, "vdb"), config=True)
    await dom.attach_device(disk_xml(path, "vdb"))
    assert "vdb" in targets(await dom.xml_desc())


async def test_scsi_disks_and_the_ids_survive_a_new_supervisor(
    root, fast_config, test_guest, tmp_path
):
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    first = image(tmp_path / "a.qcow2")
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await paused(conn, test_guest, tmp_path, devices=scsi + disk_xml(first, "vda"))
        await dom.attach_device(disk_xml(image(tmp_path / "b.qcow2"), "sdb", bus="scsi"))
        await dom.attach_device(disk_xml(image(tmp_path / "c.qcow2"), "vdc"))
        live = await dom.xml_desc()
        assert disk_el(live, "sdb").find("alias").get("name") == "scsi0-0-0-1"
        indexes = {t: disk_el(live, t).find("source").get("index") for t in ("vda", "sdb", "vdc")}
        assert indexes == {"vda": "1", "sdb": "2", "vdc": "3"}
    # A new supervisor reads the live XML back with QEMU's ids, not recomputed ones.
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert await dom.xml_desc() == live
        info = {b["device"] or b["qdev"]: b for b in await dom.qmp("query-block")}
        assert any(
            b.get("inserted", {}).get("node-name") == "libvirt-3-format" for b in info.values()
        )
        async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
            # A SCSI disk goes at once (no guest involved).
            assert await dom.detach_device(disk_xml(first, "sdb", bus="scsi")) is True
            ev = await removed(events, K.DEVICE_REMOVED)
            assert ev.data is not None and ev.data["device"] == "scsi0-0-0-1"
            # Its nodes went before the event: the same file could go in again at once.
            assert await node_names(dom, "libvirt-2-") == []
        assert targets(await dom.xml_desc()) == ["vda", "vdc"]
        await dom.destroy()


async def test_a_device_removed_while_nobody_supervised_is_reported(
    root, fast_config, test_guest, tmp_path
):
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await paused(conn, test_guest, tmp_path, devices=scsi)
        async with conn.subscribe(dom) as events:
            await dom.attach_device(disk_xml(image(tmp_path / "b.qcow2"), "sdb", bus="scsi"))
            await dom.qmp("query-status", None)  # a round trip: every event is in
            cursor = max((ev.seq for ev in drain(events)), default=0)
    # Another tool (or a guest, for a PCI device) removes the disk while nobody watches.
    await raw_qmp(
        monitor_path(root, "vm1"), {"execute": "device_del", "arguments": {"id": "scsi0-0-0-1"}}
    )
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm1")
        try:
            async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}, since=cursor) as events:
                ev = await removed(events, K.DEVICE_REMOVED)
            assert ev.data is not None and ev.data["device"] == "scsi0-0-0-1"
            assert targets(await dom.xml_desc()) == []
            # DEVICE_REMOVED comes after its nodes are gone (as libvirt's, after its cleanup).
            assert await node_names(dom, "libvirt-1-") == []
        finally:
            await dom.destroy()


async def test_cdrom_media_change_and_eject(conn, test_guest, tmp_path):
    iso = tmp_path / "media.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    empty_cd = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
    dom = await paused(conn, test_guest, tmp_path, devices=empty_cd)
    cd = disk_xml(iso, "hdc", device="cdrom", bus="ide", fmt="raw", extra="<readonly/>")
    await dom.update_device(cd)
    assert disk_el(await dom.xml_desc(), "hdc").find("source").get("file") == str(iso)
    assert disk_el(await dom.xml_desc(inactive=True), "hdc").find("source") is None
    blocks = {b["qdev"]: b for b in await dom.qmp("query-block")}
    assert blocks["ide0-1-0"]["inserted"]["file"] == str(iso)
    # Eject: no source.
    await dom.update_device(empty_cd, live=True, config=True)
    assert disk_el(await dom.xml_desc(), "hdc").find("source") is None
    blocks = {b["qdev"]: b for b in await dom.qmp("query-block")}
    assert "inserted" not in blocks["ide0-1-0"]
    with pytest.raises(asvirt.DeviceMissingError):
        await dom.update_device(disk_xml(iso, "hdd", device="cdrom", bus="ide", fmt="raw"))
    # The drive itself cannot come or go while QEMU runs (IDE has no hotplug): refused
    # before QEMU is asked; the configuration can change.
    with pytest.raises(asvirt.OperationUnsupportedError, match="ide"):
        await dom.detach_device(empty_cd)
    with pytest.raises(asvirt.OperationUnsupportedError, match="ide"):
        await dom.attach_device(cd.replace("hdc", "hdd"))
    assert await dom.detach_device(empty_cd, config=True) is True
    assert targets(await dom.xml_desc()) == ["hdc"]
    assert targets(await dom.xml_desc(inactive=True)) == []


async def test_a_throttled_cdrom_takes_media_into_an_empty_drive(conn, test_guest, tmp_path):
    """A medium's throttle group lives while the drive has a medium: an empty drive with
    <iotune> has none in QEMU, so the first medium makes it (QEMU refused the medium's
    throttle node, naming a group that did not exist), and an eject removes it."""
    iso = tmp_path / "media.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    tune = "<readonly/><iotune><total_iops_sec>100</total_iops_sec></iotune>"
    empty_cd = f"<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/>{tune}</disk>"
    dom = await paused(conn, test_guest, tmp_path, devices=empty_cd)

    async def groups() -> set[str]:
        objects = await dom.qmp("qom-list", {"path": "/objects"})
        return {o["name"] for o in objects if o["type"] == "child<throttle-group>"}

    assert await groups() == set()
    cd = disk_xml(iso, "hdc", device="cdrom", bus="ide", fmt="raw", extra=tune)
    await dom.update_device(cd)
    blocks = {b["qdev"]: b for b in await dom.qmp("query-block")}
    assert str(iso) in blocks["ide0-1-0"]["inserted"]["file"]  # json:{...} under a throttle
    assert await groups() == {"throttle-ide0-1-0"}
    limits = await dom.qmp("qom-get", {"path": "/objects/throttle-ide0-1-0", "property": "limits"})
    assert limits["iops-total"] == 100
    await dom.update_device(empty_cd)
    assert await groups() == set()
    await dom.update_device(cd)  # and again
    assert await groups() == {"throttle-ide0-1-0"}


@pytest.mark.guest
async def test_interface_attach_link_and_detach(guest):
    mac = "52:54:00:12:34:56"
    nic = f"<interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>"
    async with guest.connect() as (conn, dom):
        await dom.attach_device(nic)
        (el,) = nic_els(await dom.xml_desc())
        assert el.find("alias").get("name") == "net0"
        assert el.find("address").get("type") == "pci"
        down = nic.replace("</interface>", "<link state='down'/></interface>")
        await dom.update_device(down)
        (el,) = nic_els(await dom.xml_desc())
        assert el.find("link").get("state") == "down"
        async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
            assert await dom.detach_device(nic) is True
            ev = await removed(events, K.DEVICE_REMOVED)
            assert ev.data is not None and ev.data["device"] == "net0"
            # Its backend went before the event: the same interface goes in again at once.
            await dom.attach_device(nic)
            assert len(nic_els(await dom.xml_desc())) == 1
            assert await dom.detach_device(nic) is True  # as it was found
        assert nic_els(await dom.xml_desc()) == []


async def test_interface_driver_settings_plug_in_and_stay(conn, test_guest, tmp_path):
    """A virtio NIC plugged in later gets its <driver> settings, <rom> and <acpi index>
    as one started with them does; update_device may set its link, and refuses (as libvirt)
    to change its driver settings."""
    dom = await paused(conn, test_guest, tmp_path)
    driver = (
        "<driver name='qemu' txmode='timer' event_idx='off' rx_queue_size='512'>"
        "<host mrg_rxbuf='off'/><guest tso4='off'/></driver>"
    )
    nic = (
        "<interface type='user'><mac address='52:54:00:00:00:42'/><model type='virtio'/>"
        f"{driver}<rom enabled='no'/><acpi index='3'/></interface>"
    )
    # QEMU's own rule: a device plugged in with its ROM hidden (no BAR) must have no ROM.
    live = await dom.xml_desc()
    hidden = nic.replace("<rom enabled='no'/>", "<rom bar='off'/>")
    with pytest.raises(asvirt.AsvirtError, match=r"with its ROM hidden .* can have no ROM"):
        await dom.attach_device(hidden)
    assert await dom.xml_desc() == live
    await dom.attach_device(nic)
    path = "/machine/peripheral/net0"
    for prop, value in (
        ("romfile", ""),
        ("acpi-index", 3),
        ("tx", "timer"),
        ("event_idx", False),
        ("rx_queue_size", 512),
        ("mrg_rxbuf", False),
        ("guest_tso4", False),
        ("guest_csum", True),  # QEMU's default, left alone
    ):
        assert await dom.qmp("qom-get", {"path": path, "property": prop}) == value
    live = await dom.xml_desc()
    assert "<rom enabled='no'/>" in live
    # The guest names a device by its ACPI index: a second one with the same is refused.
    other = "<interface type='user'><mac address='52:54:00:00:00:43'/><acpi index='3'/></interface>"
    with pytest.raises(asvirt.AsvirtError, match="ACPI index '3' is given to more than one"):
        await dom.attach_device(other)
    assert await dom.xml_desc() == live
    with pytest.raises(asvirt.AsvirtError, match="cannot modify virtio network device driver"):
        await dom.update_device(nic.replace("rx_queue_size='512'", "rx_queue_size='1024'"))
    assert await dom.xml_desc() == live
    await dom.update_device(nic.replace("</interface>", "<link state='down'/></interface>"))
    (el,) = nic_els(await dom.xml_desc())
    assert el.find("link").get("state") == "down"
    assert el.find("driver").get("rx_queue_size") == "512"
    await dom.destroy()


async def test_vhost_user_interface_attach(conn, test_guest, tmp_path):
    # vhost-user maps the guest's memory into the backend: it must be shared. QEMU plugs
    # the NIC in only once the vhost-user handshake with the real backend is done, so a
    # paused guest is enough for the plugging. Its unplugging is the guest's to finish, and
    # this guest (under TCG, with testpmd as the backend, forwarding or not) stalls probing a
    # vhost-user NIC: its kernel logs "virtio-pci ... enabling device" and nothing more, and
    # never releases it. So detach is not tested here; a user-mode NIC's is, above.
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    xml = paused_xml(test_guest, tmp_path).replace("<vcpu>", f"{shared}<vcpu>", 1)
    with vhost_user_backend(tmp_path) as sock:
        dom = await conn.define_xml(xml)
        await dom.start(paused=True)
        nic = (
            "<interface type='vhostuser'><mac address='52:54:00:00:00:41'/>"
            f"<source type='unix' path='{sock}' mode='client'/><model type='virtio'/>"
            "<driver queues='2'/></interface>"
        )

        async def chardevs() -> dict[str, bool]:
            """QEMU's chardevs: whether a device has each open."""
            return {c["label"]: c["frontend-open"] for c in await dom.qmp("query-chardev")}

        # No backend at that path: QEMU's client socket cannot connect; nothing stays.
        gone = nic.replace(str(sock), str(tmp_path / "nobody.sock"))
        with pytest.raises(asvirt.AsvirtError, match=r"nobody\.sock"):
            await dom.attach_device(gone)
        assert nic_els(await dom.xml_desc()) == []
        assert "charnet0" not in await chardevs()
        # chardev-add, netdev_add (done once the vhost-user handshake is), device_add: a
        # NIC with the queues asked for, under the ids a start gives it.
        await dom.attach_device(nic)
        (el,) = nic_els(await dom.xml_desc())
        assert el.find("alias").get("name") == "net0"
        assert el.find("source").get("path") == str(sock)
        assert (await chardevs())["charnet0"] is True  # the netdev's
        path = "/machine/peripheral/net0"
        assert await dom.qmp("qom-get", {"path": path, "property": "vectors"}) == 6
        assert await dom.qmp("qom-get", {"path": path, "property": "netdev"}) == "hostnet0"
        await dom.destroy()


def usb_inputs(xml: str) -> dict[str, tuple[str, str]]:
    """The USB inputs of domain XML: alias -> (type, USB port)."""
    return {
        el.find("alias").get("name"): (el.get("type"), el.find("address").get("port"))
        for el in etree.fromstring(xml.encode()).iterfind("devices/input[@bus='usb']")
    }


async def test_usb_inputs_come_and_go_without_the_guest(conn, test_guest, tmp_path):
    # A USB device leaves at once (no guest involved): a paused VM is enough.
    dom = await paused(conn, test_guest, tmp_path)
    tablet, keyboard = "<input type='tablet' bus='usb'/>", "<input type='keyboard' bus='usb'/>"
    await dom.attach_device(tablet)
    await dom.attach_device(keyboard, live=True, config=True)
    # The PS/2 mouse and keyboard are input0 and input1.
    assert usb_inputs(await dom.xml_desc()) == {
        "input2": ("tablet", "1"),
        "input3": ("keyboard", "2"),
    }
    config = etree.fromstring((await dom.xml_desc(inactive=True)).encode())
    assert [el.get("type") for el in config.iterfind("devices/input[@bus='usb']")] == ["keyboard"]
    qom = {c["name"]: c["type"] for c in await dom.qmp("qom-list", {"path": "/machine/peripheral"})}
    assert qom["input2"] == "child<usb-tablet>" and qom["input3"] == "child<usb-kbd>"
    async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
        assert await dom.detach_device(tablet) is True
        ev = await removed(events, K.DEVICE_REMOVED)
        assert ev.data is not None and ev.data["device"] == "input2"
    assert usb_inputs(await dom.xml_desc()) == {"input3": ("keyboard", "2")}
    # Its port is free again; an input cannot be updated; only USB inputs are pluggable;
    # USB passthrough is refused clearly.
    await dom.attach_device(tablet)
    assert usb_inputs(await dom.xml_desc())["input2"] == ("tablet", "1")
    with pytest.raises(asvirt.OperationInvalidError, match="cannot be updated"):
        await dom.update_device(tablet)
    with pytest.raises(asvirt.OperationUnsupportedError, match="only USB input"):
        await dom.attach_device("<input type='mouse' bus='virtio'/>")
    hostdev = (
        "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
        "<product id='0xbeef'/></source></hostdev>"
    )
    with pytest.raises(asvirt.ConfigUnsupportedError, match="hostdev"):
        await dom.attach_device(hostdev)


def floppy_xml(path: Path | None, target: str = "fda") -> str:
    source = f"<source file='{path}'/>" if path is not None else ""
    return (
        f"<disk type='file' device='floppy'><driver name='qemu' type='raw'/>{source}"
        f"<target dev='{target}'/></disk>"  # the bus follows from fdX
    )


def inserted(blocks: list[dict], alias: str) -> str | None:
    """The file QEMU has in the drive ``alias`` (None: empty); a USB disk's drive is its
    SCSI child's (``/machine/peripheral/ALIAS/ALIAS.0/legacy[0]``)."""
    child = f"/machine/peripheral/{alias}/"
    block = next(b for b in blocks if b.get("qdev") == alias or b["qdev"].startswith(child))
    return block["inserted"]["file"] if "inserted" in block else None


async def test_floppy_media_change_eject_and_insert(conn, test_guest, tmp_path):
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    for path in (one, two):
        qemu_img("create", "-q", "-f", "raw", path, "1440K")
    dom = await paused(conn, test_guest, tmp_path, devices=floppy_xml(one))
    alias = disk_el(await dom.xml_desc(), "fda").find("alias").get("name")
    # A new disk: the live XML and QEMU have it, the configuration keeps the old one.
    await dom.update_device(floppy_xml(two), live=True)
    assert disk_el(await dom.xml_desc(), "fda").find("source").get("file") == str(two)
    assert disk_el(await dom.xml_desc(inactive=True), "fda").find("source").get("file") == str(one)
    assert inserted(await dom.qmp("query-block"), alias) == str(two)
    # Eject, live and config.
    await dom.update_device(floppy_xml(None), live=True, config=True)
    assert disk_el(await dom.xml_desc(), "fda").find("source") is None
    assert disk_el(await dom.xml_desc(inactive=True), "fda").find("source") is None
    assert inserted(await dom.qmp("query-block"), alias) is None
    # Insert into the empty drive; the old media's nodes are gone (the same file goes in again).
    await dom.update_device(floppy_xml(two))
    assert inserted(await dom.qmp("query-block"), alias) == str(two)
    assert disk_el(await dom.xml_desc(inactive=True), "fda").find("source") is None
    # The drive itself cannot come or go while QEMU runs: refused before QEMU is asked.
    with pytest.raises(asvirt.OperationUnsupportedError, match="floppy drives"):
        await dom.detach_device(floppy_xml(None))
    with pytest.raises(asvirt.OperationUnsupportedError, match="floppy drives"):
        await dom.attach_device(floppy_xml(one, "fdb"))
    assert targets(await dom.xml_desc()) == ["fda"]
    assert await dom.detach_device(floppy_xml(None), config=True) is True
    assert targets(await dom.xml_desc(inactive=True)) == []
    # Only removable media change: a plain disk's source does not.
    await dom.attach_device(disk_xml(image(tmp_path / "d.qcow2"), "vdb"))
    with pytest.raises(asvirt.OperationInvalidError, match="cdrom or a floppy"):
        await dom.update_device(disk_xml(image(tmp_path / "e.qcow2"), "vdb"))


@pytest.mark.guest
@pytest.mark.parametrize("machine", ["pc", "q35"])
async def test_usb_disk_is_seen_by_a_booted_guest(conn, usb_test_guest, tmp_path, machine):
    # A USB disk plugged into the machine's USB controller (no hub: the PC's UHCI, Q35's
    # xHCI): the guest's kernel finds a SCSI disk on it (usb-storage), and loses it at the
    # detach, which needs no guest.
    serial = tmp_path / "vm1.serial"
    # TCG on a loaded host can be too slow for the kernel's IO-APIC timer check.
    xml = usb_test_guest.xml("vm1", serial, cmdline="no_timer_check")
    dom = await conn.define_xml(xml.replace("machine='pc'", f"machine='{machine}'"))
    model = {"pc": "piix3-uhci", "q35": "qemu-xhci"}[machine]
    assert f"<controller type='usb' index='0' model='{model}'" in await dom.xml_desc()
    await dom.start()
    await wait_for_serial(serial, timeout=180)
    stick = image(tmp_path / "stick.qcow2")
    usb = disk_xml(stick, "sda", bus="usb")
    async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
        await dom.attach_device(usb)
        await wait_for_serial(serial, "ASVIRT-DISK-add sda")
        disk = disk_el(await dom.xml_desc(), "sda")
        assert disk is not None and disk.find("address").get("type") == "usb"
        alias = disk.find("alias").get("name")
        assert await dom.detach_device(usb) is True
        ev = await removed(events, K.DEVICE_REMOVED)
        assert ev.data is not None and ev.data["device"] == alias
    await wait_for_serial(serial, "ASVIRT-DISK-remove sda")
    assert targets(await dom.xml_desc()) == []
    peripherals = {p["name"] for p in await dom.qmp("qom-list", {"path": "/machine/peripheral"})}
    assert alias not in peripherals


async def test_usb_disk_attach_and_detach(conn, test_guest, tmp_path):
    dom = await paused(conn, test_guest, tmp_path)
    stick = image(tmp_path / "stick.qcow2")
    usb = disk_xml(stick, "sda", bus="usb")
    nodes_before = await node_names(dom, "")
    config_before = await dom.xml_desc(inactive=True)
    await dom.attach_device(usb)
    el = disk_el(await dom.xml_desc(), "sda")
    alias = el.find("alias").get("name")
    address = el.find("address")
    assert (address.get("type"), address.get("bus"), address.get("port")) == ("usb", "0", "1")
    peripherals = {p["name"] for p in await dom.qmp("qom-list", {"path": "/machine/peripheral"})}
    assert alias in peripherals
    assert inserted(await dom.qmp("query-block"), alias) == str(stick)
    assert await dom.xml_desc(inactive=True) == config_before
    # Detach: USB needs no guest; DEVICE_REMOVED comes, and the disk's nodes are gone.
    async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED}) as events:
        assert await dom.detach_device(usb) is True
        ev = await removed(events, K.DEVICE_REMOVED)
        assert ev.data is not None and ev.data["device"] == alias
    assert "sda" not in targets(await dom.xml_desc())
    assert await node_names(dom, "") == nodes_before
    # Live and config: both have it; the port it had is free again.
    await dom.attach_device(usb, live=True, config=True)
    assert disk_el(await dom.xml_desc(), "sda").find("address").get("port") == "1"
    assert "sda" in targets(await dom.xml_desc(inactive=True))
    # The PC's UHCI controller has two ports: a third USB device has none (the check
    # define makes: a hub would need a port too), and nothing changes.
    await dom.attach_device(disk_xml(image(tmp_path / "b.qcow2"), "sdb", bus="usb"))
    live = await dom.xml_desc()
    with pytest.raises(asvirt.ConfigUnsupportedError, match="no free USB port"):
        await dom.attach_device(disk_xml(image(tmp_path / "c.qcow2"), "sdc", bus="usb"))
    assert await dom.xml_desc() == live
    assert await dom.detach_device(usb, live=True, config=True) is True
    assert targets(await dom.xml_desc()) == ["sdb"]
    assert "sda" not in targets(await dom.xml_desc(inactive=True))
