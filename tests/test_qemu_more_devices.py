"""Issue 12's last devices through the driver: defined, started (paused) under the real QEMU,
shown in the live XML libvirt's schema accepts; a start whose host device is missing is
refused, saying which, and leaves nothing running."""

from __future__ import annotations

import pytest
from lxml import etree

import asvirt

from .guest import REPO, paused_xml
from .helpers import qemu_img

pytestmark = [pytest.mark.qemu]

SCHEMA = REPO.parent / "shared" / "conformance" / "schemas" / "domain.rng"


async def test_last_devices_start_and_show_in_live_xml(conn, test_guest, tmp_path):
    floppy, stick = tmp_path / "floppy.img", tmp_path / "stick.img"
    qemu_img("create", "-f", "raw", floppy, "1440K")
    qemu_img("create", "-f", "raw", stick, "8M")
    extra = (
        f"<disk type='file' device='floppy'><source file='{floppy}'/><target dev='fda'/></disk>"
        f"<disk type='file' device='disk'><source file='{stick}'/>"
        "<target dev='sdz' bus='usb' removable='on'/></disk>"
        f"<channel type='unix'><source mode='bind' path='{tmp_path}/fwd.sock'/>"
        "<target type='guestfwd' address='10.0.2.1' port='4600'/></channel>"
        "<interface type='udp'><source address='127.0.0.1' port='9'>"
        "<local address='127.0.0.1' port='0'/></source></interface>"
        "<crypto model='virtio' type='qemu'><backend model='builtin'/></crypto>"
        f"<pstore backend='acpi-erst'><path>{tmp_path}/erst</path>"
        "<size unit='KiB'>64</size></pstore>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=extra))
    await dom.start(paused=True)
    live = await dom.xml_desc()
    root = etree.fromstring(live.encode())
    if SCHEMA.exists():
        schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
        assert schema.validate(root), schema.error_log.last_error
    aliases = {a.get("name") for a in root.iter("alias")}
    assert {"fdc0-0-0", "usb-disk25", "crypto0", "pstore0"} <= aliases
    peripherals = {p["name"] for p in await dom.qmp("qom-list", {"path": "/machine/peripheral"})}
    assert {"fdc0-0-0", "usb-disk25", "crypto0", "pstore0"} <= peripherals
    assert (tmp_path / "erst").stat().st_size == 64 << 10
    await dom.destroy()


async def test_a_missing_host_scsi_device_refuses_the_start(conn, test_guest, tmp_path):
    lun = (
        "<controller type='scsi' model='virtio-scsi'/>"
        f"<disk type='block' device='lun'><source dev='{tmp_path}/no-sg'/>"
        "<target dev='sdz' bus='scsi'/></disk>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=lun))
    with pytest.raises(asvirt.OperationFailedError, match="no-sg"):
        await dom.start(paused=True)
    assert not await dom.is_active()


async def test_startup_policy_drops_missing_optional_sources(conn, test_guest, tmp_path):
    present = tmp_path / "present.img"
    qemu_img("create", "-q", "-f", "raw", present, "1M")
    missing = tmp_path / "missing.iso"
    devices = (
        f"<disk type='file' device='cdrom'><source file='{missing}' startupPolicy='optional'/>"
        "<target dev='sda' bus='sata'/><readonly/></disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source "
        f"file='{tmp_path / 'gone.img'}' startupPolicy='optional'/>"
        "<target dev='vdb' bus='virtio'/></disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source "
        f"file='{present}' startupPolicy='optional'/><target dev='vdc' bus='virtio'/></disk>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
    await dom.start(paused=True)
    live = etree.fromstring((await dom.xml_desc()).encode())
    cdrom = live.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("source[@file]") is None  # left empty
    targets = [t.get("dev") for t in live.iterfind("devices/disk/target")]
    assert targets == ["sda", "vdc"]  # the missing disk is gone, the present one stays
    block = {b["device"] or b["qdev"]: b for b in await dom.qmp("query-block")}
    assert not any("inserted" in b for name, b in block.items() if "sata" in name or "sda" in name)
    # The definition is unchanged: the next start looks again.
    assert str(missing) in await dom.xml_desc(inactive=True)
    await dom.destroy()
    # 'mandatory' (the default): the start fails on the missing file.
    mandatory = devices.replace(" startupPolicy='optional'", "", 1)
    dom2 = await conn.define_xml(paused_xml(test_guest, tmp_path, name="vm2", devices=mandatory))
    with pytest.raises(asvirt.AsvirtError, match=r"missing\.iso"):
        await dom2.start(paused=True)
    with pytest.raises(asvirt.AsvirtError, match="allowed only for cdrom or floppy"):
        await conn.define_xml(
            paused_xml(
                test_guest,
                tmp_path,
                name="vm3",
                devices=devices.replace(
                    "startupPolicy='optional'/><target dev='vdc'",
                    "startupPolicy='requisite'/><target dev='vdc'",
                ),
            )
        )
