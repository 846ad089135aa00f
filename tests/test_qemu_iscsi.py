"""iSCSI disks opened by a real QEMU from a real target: a private ``tgtd`` (Debian's tgt,
:func:`tests.helpers.tgtd`) on 127.0.0.1 serving a file of the test, with and without CHAP.
The domains only need to be paused; what QEMU reads through its iscsi driver is checked with
qemu-io against a marker written into the target's backing file."""

from __future__ import annotations

from pathlib import Path

import pytest

import asvirt

from .guest import paused_xml
from .helpers import ISCSI_IQN, qemu_io_read, qemu_pid, qemus_naming, tgtd
from .test_qemu_network_disks import inserted, start_paused

pytestmark = [pytest.mark.qemu]

MARKER = b"asvirt-iscsi-marker"
CHAP_USER = "asvirt-initiator"
CHAP_PASSWORD = "chap-s3cret-16ch"  # tgtd (and most initiators) want 12 to 16 characters
SECRET_UUID = "3e2f7a51-0c4d-4b8e-9a1f-5d6c7b8a9e01"


def lun_image(tmp_path: Path) -> Path:
    """The target's backing file: 16 MiB with MARKER at offset 0."""
    image = tmp_path / "lun1.img"
    with image.open("wb") as f:
        f.write(MARKER)
        f.truncate(16 << 20)
    return image


def iscsi_disk(port: int, *, auth: bool = False) -> str:
    secret = (
        f"<auth username='{CHAP_USER}'><secret type='iscsi' usage='asvirt-iscsi'/></auth>"
        if auth
        else ""
    )
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='iscsi' name='{ISCSI_IQN}/1'>"
        f"<host name='127.0.0.1' port='{port}'/>{secret}</source>"
        "<target dev='vdb' bus='virtio'/></disk>"
    )


async def define_chap_secret(conn: asvirt.Connection, password: str) -> None:
    secret = await conn.secret_define_xml(
        f"<secret ephemeral='no' private='yes'><uuid>{SECRET_UUID}</uuid>"
        "<usage type='iscsi'><target>asvirt-iscsi</target></usage></secret>"
    )
    await secret.set_value(password.encode())


async def test_iscsi_disk_reads_the_targets_lun(conn, test_guest, tmp_path, root):
    with tgtd(tmp_path, lun_image(tmp_path)) as port:
        dom = await start_paused(conn, test_guest, tmp_path, iscsi_disk(port))
        image = await inserted(dom, "virtio-disk1")
        assert image["drv"] == "iscsi" and image["image"]["virtual-size"] == 16 << 20
        log = root / "log" / "qemu" / "vm1.log"
        assert await qemu_io_read(dom, image["node-name"], len(MARKER), log) == MARKER
        await dom.destroy()


async def test_iscsi_disk_logs_in_with_chap_from_the_secret(conn, test_guest, tmp_path, root):
    await define_chap_secret(conn, CHAP_PASSWORD)
    with tgtd(tmp_path, lun_image(tmp_path), chap=(CHAP_USER, CHAP_PASSWORD)) as port:
        # Without credentials the target lets nobody in.
        bare_xml = paused_xml(test_guest, tmp_path, name="vm2", devices=iscsi_disk(port))
        bare = await conn.define_xml(bare_xml)
        with pytest.raises(asvirt.OperationFailedError, match=r"iSCSI.*Failed to log in"):
            await bare.start(paused=True)
        assert not await bare.is_active()
        dom = await start_paused(conn, test_guest, tmp_path, iscsi_disk(port, auth=True))
        image = await inserted(dom, "virtio-disk1")
        log = root / "log" / "qemu" / "vm1.log"
        assert await qemu_io_read(dom, image["node-name"], len(MARKER), log) == MARKER
        cmdline = Path(f"/proc/{qemu_pid(root, 'vm1')}/cmdline").read_bytes()
        assert CHAP_PASSWORD.encode() not in cmdline
        await dom.destroy()


async def test_iscsi_disk_with_a_wrong_chap_secret_is_not_started(conn, test_guest, tmp_path):
    await define_chap_secret(conn, "wrong-password16")
    with tgtd(tmp_path, lun_image(tmp_path), chap=(CHAP_USER, CHAP_PASSWORD)) as port:
        dom = await conn.define_xml(
            paused_xml(test_guest, tmp_path, devices=iscsi_disk(port, auth=True))
        )
        # QEMU's own word, with the disk's node: the target refused the login.
        with pytest.raises(
            asvirt.OperationFailedError, match=r"iSCSI.*log in.*Authentication failure"
        ) as refused:
            await dom.start(paused=True)
        assert "wrong-password16" not in str(refused.value)
        assert not await dom.is_active()
        assert not qemus_naming([dom.uuid])
        # Nothing left of the attempt: the domain starts once the secret is right.
        await define_chap_secret(conn, CHAP_PASSWORD)
        await dom.start(paused=True)
        assert await dom.is_active()
        await dom.destroy()


async def test_iscsi_lun_is_passed_through_to_a_scsi_controller(conn, test_guest, tmp_path, root):
    # device='lun': QEMU's scsi-block over the iscsi node (libiscsi), which passes the
    # guest's SCSI commands to tgtd's LUN instead of emulating a disk (scsi-hd).
    await define_chap_secret(conn, CHAP_PASSWORD)
    with tgtd(tmp_path, lun_image(tmp_path), chap=(CHAP_USER, CHAP_PASSWORD)) as port:
        lun = (
            "<disk type='network' device='lun'><driver name='qemu' type='raw'/>"
            f"<source protocol='iscsi' name='{ISCSI_IQN}/1'>"
            f"<host name='127.0.0.1' port='{port}'/>"
            f"<auth username='{CHAP_USER}'><secret type='iscsi' usage='asvirt-iscsi'/></auth>"
            "</source><target dev='sdb' bus='scsi'/></disk>"
            "<controller type='scsi' index='0' model='virtio-scsi'/>"
        )
        dom = await start_paused(conn, test_guest, tmp_path, lun)
        image = await inserted(dom, "scsi0-0-0-1")
        assert image["drv"] == "iscsi" and image["image"]["virtual-size"] == 16 << 20
        path = "/machine/peripheral/scsi0-0-0-1"
        assert await dom.qmp("qom-get", {"path": path, "property": "type"}) == "scsi-block"
        log = root / "log" / "qemu" / "vm1.log"
        assert await qemu_io_read(dom, image["node-name"], len(MARKER), log) == MARKER
        live = await dom.xml_desc()
        assert "<disk type='network' device='lun'>" in live
        await dom.destroy()


async def test_iscsi_disk_hotplugged_after_a_refused_login(conn, test_guest, tmp_path, root):
    await define_chap_secret(conn, "wrong-password16")
    with tgtd(tmp_path, lun_image(tmp_path), chap=(CHAP_USER, CHAP_PASSWORD)) as port:
        dom = await start_paused(conn, test_guest, tmp_path, "")
        objects = await dom.qmp("qom-list", {"path": "/objects"})
        live = await dom.xml_desc()
        disk = iscsi_disk(port, auth=True)
        with pytest.raises(asvirt.QMPError, match=r"iSCSI.*Authentication failure") as refused:
            await dom.attach_device(disk)
        assert refused.value.code == asvirt.ErrorCode.OPERATION_FAILED
        # Nothing left of the attempt: no disk, no secret object in QEMU.
        assert await dom.xml_desc() == live
        assert await dom.qmp("qom-list", {"path": "/objects"}) == objects
        await define_chap_secret(conn, CHAP_PASSWORD)
        await dom.attach_device(disk)
        image = await inserted(dom, "virtio-disk1")
        log = root / "log" / "qemu" / "vm1.log"
        assert await qemu_io_read(dom, image["node-name"], len(MARKER), log) == MARKER
        assert f"port='{port}'" in await dom.xml_desc()
        await dom.destroy()
