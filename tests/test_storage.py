"""The QEMU node's storage driver on real files, real qemu-img and real QEMU.

What both storage drivers must agree on is in the shared suite (test_api_contract.py); here
is what only real files can show: what others do to a pool's directory, what survives the
root being closed and opened again, what a hostile image cannot do, qemu-img's supervision,
a guest running on an overlay, and the CLI.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt.cli.render import ProgressBar
from asvirt.cli.storage import pretty_size
from asvirt.drivers.storage import qemu_img

from .guest import paused_xml, wait_for_serial
from .helpers import embed_uri, run_cli, wait_for

pytestmark = [pytest.mark.qemu]

MiB = 1024**2
QCOW2 = "<target><format type='qcow2'/></target>"


def vol_xml(name: str, size: str = "1M", *, extra: str = "") -> str:
    number, unit = size[:-1], size[-1]
    return f"<volume><name>{name}</name><capacity unit='{unit}'>{number}</capacity>{extra}</volume>"


def pool_xml(name: str, path: Path, *, extra: str = "") -> str:
    return f"<pool type='dir'><name>{name}</name><target><path>{path}</path>{extra}</target></pool>"


async def make_pool(conn: asvirt.Connection, path: Path, name: str = "p") -> asvirt.StoragePool:
    pool = await conn.storage_pool_define_xml(pool_xml(name, path))
    await pool.build()
    await pool.create()
    return pool


def qemu_img_create(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True)


def names(vols: list[asvirt.StorageVol]) -> list[str]:
    return [v.name for v in vols]


# -- what others do to a pool -------------------------------------------------------------------


async def test_refresh_finds_what_others_did(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    d = tmp_path / "pool"
    ours = await pool.create_volume_xml(vol_xml("ours.qcow2", extra=QCOW2))
    qemu_img_create("-f", "qcow2", str(d / "theirs.qcow2"), "1G")
    (d / "theirs.img").write_bytes(b"x" * 5000)
    (d / "link.img").symlink_to("/etc/passwd")  # a planted symlink is no volume
    (d / ".hidden.img").write_bytes(b"")
    (d / "subdir").mkdir()
    os.unlink(ours.path)
    assert names(await pool.list_all_volumes()) == ["ours.qcow2"]  # until refreshed
    await pool.refresh()
    assert names(await pool.list_all_volumes()) == ["theirs.img", "theirs.qcow2"]
    theirs = await pool.lookup_volume_by_name("theirs.qcow2")
    assert await theirs.info() == asvirt.StorageVolInfo(
        0, 1024**3, os.stat(theirs.path).st_blocks * 512
    )
    assert "<format type='qcow2'/>" in await theirs.xml_desc()
    raw = await pool.lookup_volume_by_name("theirs.img")
    assert (await raw.info()).capacity == 5000
    with pytest.raises(asvirt.NoStorageVolError):
        await pool.lookup_volume_by_name("link.img")
    with pytest.raises(asvirt.StorageVolExistsError):
        await pool.create_volume_xml(vol_xml("link.img"))
    assert os.readlink(d / "link.img") == "/etc/passwd"  # untouched


async def test_a_volume_removed_by_others_is_gone_when_asked(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    vol = await pool.create_volume_xml(vol_xml("v.img"))
    os.unlink(vol.path)
    with pytest.raises(asvirt.NoStorageVolError, match="gone"):
        await vol.info()
    assert await pool.list_all_volumes() == []


async def test_a_name_a_file_already_has_is_refused(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    (tmp_path / "pool" / "x.img").write_bytes(b"theirs")
    with pytest.raises(asvirt.StorageVolExistsError, match="exists"):
        await pool.create_volume_xml(vol_xml("x.img"))
    assert (tmp_path / "pool" / "x.img").read_bytes() == b"theirs"


async def test_unfinished_volumes_are_removed_at_start(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    await pool.destroy()
    leftover = tmp_path / "pool" / ".asvirt-0123456789abcdef.part"
    leftover.write_bytes(b"half a volume")
    await pool.create()
    assert not leftover.exists()


async def test_a_cancelled_copy_leaves_nothing(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    src = await pool.create_volume_xml(
        vol_xml("src.img", "64M", extra="<allocation>0</allocation>")
    )
    await src.upload(os.urandom(8 * MiB))
    with trio.CancelScope() as scope:
        # Cancelled as soon as qemu-img reports it runs: it is killed, its file removed.
        await src.clone("copy.img", progress=lambda _: scope.cancel())
    assert scope.cancelled_caught
    assert sorted(os.listdir(tmp_path / "pool")) == ["src.img"]
    assert names(await pool.list_all_volumes()) == ["src.img"]
    copy = await src.clone("copy.img")  # the name is free again
    assert (await copy.info()).capacity == 64 * MiB


# -- refused pools ------------------------------------------------------------------------------


async def test_refused_pools_change_nothing(conn, root, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    pool = await conn.storage_pool_define_xml(pool_xml("open", open_dir))
    with pytest.raises(asvirt.OperationFailedError, match="writable by others"):
        await pool.create()
    assert not await pool.is_active()
    bad = [
        (pool_xml("inroot", root / "etc" / "qemu"), asvirt.InvalidArgError, "node keeps"),
        (pool_xml("inroot2", root / "run"), asvirt.InvalidArgError, "node keeps"),
        (pool_xml("theroot", root), asvirt.InvalidArgError, "node's root"),
        (
            pool_xml("wide", tmp_path / "w", extra="<permissions><mode>0777</mode></permissions>"),
            asvirt.InvalidArgError,
            "others write",
        ),
        ("<pool type='logical'><name>lv</name></pool>", asvirt.ConfigUnsupportedError, "dir"),
    ]
    for xml, error, match in bad:
        with pytest.raises(error, match=match):
            await conn.storage_pool_define_xml(xml)
    assert sorted(p.name for p in (root / "etc" / "storage").glob("*.xml")) == ["open.xml"]
    # Elsewhere under the root is fine.
    images = await conn.storage_pool_define_xml(pool_xml("images", root / "images"))
    await images.build()
    await images.create()
    assert not (tmp_path / "w").exists()


async def test_volume_formats_a_dir_pool_cannot_make_are_refused(conn, tmp_path):
    pool = await make_pool(conn, tmp_path / "pool")
    with pytest.raises(asvirt.ConfigUnsupportedError, match="vmdk"):
        await pool.create_volume_xml(
            vol_xml("x.vmdk", extra="<target><format type='vmdk'/></target>")
        )
    assert os.listdir(tmp_path / "pool") == []


# -- across reopening the root ------------------------------------------------------------------


async def test_pools_come_back_as_they_were(root, fast_config, tmp_path):
    uri = embed_uri(root)
    async with asvirt.open(uri) as conn:
        running = await make_pool(conn, tmp_path / "running", "running")
        await running.create_volume_xml(vol_xml("v.qcow2", extra=QCOW2))
        auto = await make_pool(conn, tmp_path / "auto", "auto")
        await auto.set_autostart(True)
        await auto.destroy()
        stopped = await make_pool(conn, tmp_path / "stopped", "stopped")
        await stopped.destroy()
        await make_pool(conn, tmp_path / "gone", "gone")
    assert (root / "etc" / "storage" / "auto.xml").is_file()
    assert (root / "etc" / "storage" / "autostart" / "auto").exists()
    assert sorted(p.name for p in (root / "run" / "storage").glob("*.xml")) == [
        "gone.xml",
        "running.xml",
    ]
    (tmp_path / "gone").rmdir()  # its directory vanished while nobody watched

    async def states() -> dict[str, bool]:
        async with asvirt.open(uri) as conn:
            return {p.name: await p.is_active() for p in await conn.list_all_storage_pools()}

    # Opened again in the same boot: what ran runs; a pool someone stopped stays stopped.
    assert await states() == {"auto": False, "gone": False, "running": True, "stopped": False}
    async with asvirt.open(uri) as conn:
        pool = await conn.lookup_storage_pool_by_name("running")
        assert names(await pool.list_all_volumes()) == ["v.qcow2"]
    assert not (root / "run" / "storage" / "gone.xml").exists()
    # After the host rebooted, only autostart pools run (once: it is the boot's first open).
    (root / "run" / "storage" / "boot-id").write_text("an earlier boot")
    assert await states() == {"auto": True, "gone": False, "running": False, "stopped": False}


# -- hostile images -----------------------------------------------------------------------------


def hostile_qcow2(tmp_path: Path) -> bytes:
    """A qcow2 header naming /etc/passwd as its backing file: what a guest could write."""
    path = tmp_path / "evil.qcow2"
    qemu_img_create("-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", "-u", str(path), "1M")
    return path.read_bytes()


async def test_a_guest_cannot_turn_its_raw_volume_into_qcow2(conn, root, tmp_path, test_guest):
    pool = await make_pool(conn, tmp_path / "pool")
    vol = await pool.create_volume_xml(vol_xml("guest.img"))
    await vol.upload(hostile_qcow2(tmp_path))  # the guest writes a qcow2 header on its disk
    await pool.refresh()
    xml = await vol.xml_desc()
    assert "<format type='raw'/>" in xml and "backingStore" not in xml
    recorded = json.loads((root / "lib" / "storage" / "p.volumes.json").read_text())
    assert recorded["volumes"]["guest.img"]["format"] == "raw"
    assert recorded["volumes"]["guest.img"]["made"]
    disk = (
        "<disk type='volume'><source pool='p' volume='guest.img'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=disk))
    await dom.start(paused=True)
    assert "<driver name='qemu' type='raw'/>" in await dom.xml_desc()
    [block] = [b for b in await dom.qmp("query-block") if b.get("inserted")]
    assert block["inserted"]["image"]["format"] != "qcow2"  # QEMU opened it raw ('file')
    assert "backing-image" not in block["inserted"]["image"]
    await dom.destroy()


async def test_what_asvirt_made_stays_known_across_processes(root, fast_config, tmp_path):
    uri = embed_uri(root)
    async with asvirt.open(uri) as conn:
        pool = await make_pool(conn, tmp_path / "pool")
        made = await pool.create_volume_xml(vol_xml("made.img"))
        await made.upload(hostile_qcow2(tmp_path))
        await pool.create_volume_xml(vol_xml("replaced.img"))
    # Another file takes one volume's name (a new inode): it is not asvirt's, it is probed.
    planted = tmp_path / "planted"
    planted.write_bytes(hostile_qcow2(tmp_path))
    os.replace(planted, tmp_path / "pool" / "replaced.img")
    async with asvirt.open(uri) as conn:
        pool = await conn.lookup_storage_pool_by_name("p")
        made_xml = await (await pool.lookup_volume_by_name("made.img")).xml_desc()
        assert "<format type='raw'/>" in made_xml and "backingStore" not in made_xml
        replaced = await (await pool.lookup_volume_by_name("replaced.img")).xml_desc()
        assert "<format type='qcow2'/>" in replaced and "<path>/etc/passwd</path>" in replaced


async def test_a_planted_image_cannot_reach_outside_the_pools(conn, tmp_path, test_guest):
    pool = await make_pool(conn, tmp_path / "pool")
    (tmp_path / "pool" / "planted.qcow2").write_bytes(hostile_qcow2(tmp_path))
    await pool.refresh()
    planted = await pool.lookup_volume_by_name("planted.qcow2")
    assert "<path>/etc/passwd</path>" in await planted.xml_desc()  # listed for what it is
    with pytest.raises(asvirt.OperationFailedError, match="/etc/passwd"):
        await planted.clone("copy.img")  # a copy would hold /etc/passwd
    with pytest.raises(asvirt.OperationFailedError, match="/etc/passwd"):
        await pool.create_volume_xml(  # an overlay on it would read it too
            vol_xml(
                "top.qcow2",
                extra=QCOW2 + f"<backingStore><path>{planted.path}</path></backingStore>",
            )
        )
    disk = (
        "<disk type='volume'><source pool='p' volume='planted.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=disk))
    with pytest.raises(asvirt.OperationFailedError, match="/etc/passwd"):
        await dom.start(paused=True)
    assert not await dom.is_active()
    assert sorted(os.listdir(tmp_path / "pool")) == ["planted.qcow2"]


# -- qemu-img supervision -----------------------------------------------------------------------


def qemu_img_children() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if "(qemu-img)" in stat and ppid == os.getpid() and " Z " not in stat:
                found.append(int(entry))
    return found


async def test_qemu_img_is_killed_at_its_deadline(tmp_path):
    fifo = tmp_path / "never.img"
    os.mkfifo(fifo)  # qemu-img waits forever for its header
    with trio.fail_after(20), pytest.raises(asvirt.OperationTimeoutError, match=r"0\.5 seconds"):
        await qemu_img.info(str(fifo), fmt=None, what="read the fifo", timeout=0.5)
    await wait_for(lambda: not qemu_img_children())


async def test_qemu_img_is_killed_when_cancelled(tmp_path):
    fifo = tmp_path / "never.img"
    os.mkfifo(fifo)
    with trio.move_on_after(0.5) as scope:
        await qemu_img.info(str(fifo), fmt=None, what="read the fifo", timeout=60)
    assert scope.cancelled_caught
    await wait_for(lambda: not qemu_img_children())


async def test_qemu_img_errors_carry_its_message(tmp_path):
    with pytest.raises(asvirt.OperationFailedError, match="Could not open") as err:
        await qemu_img.info(str(tmp_path / "nope.img"), fmt=None, what="read nope", timeout=30)
    assert err.value.message.startswith("cannot read nope: qemu-img failed:")


async def test_qemu_img_progress_is_reported(tmp_path):
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(16 * MiB))
    seen: list[float] = []
    await qemu_img.run(
        ["convert", "-p", "-f", "raw", "-O", "qcow2", str(src), str(tmp_path / "dst.qcow2")],
        what="copy",
        timeout=60,
        progress=seen.append,
    )
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 2


# -- domains on volumes -------------------------------------------------------------------------


async def test_a_running_domain_on_a_volume_is_taken_up_again(
    root, fast_config, tmp_path, test_guest
):
    uri = embed_uri(root)
    disk = (
        "<disk type='volume'><source pool='p' volume='d.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )
    async with asvirt.open(uri) as conn:
        pool = await make_pool(conn, tmp_path / "pool")
        vol = await pool.create_volume_xml(vol_xml("d.qcow2", "64M", extra=QCOW2))
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=disk))
        await dom.start(paused=True)
    async with asvirt.open(uri) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert await dom.is_active()
        assert f"<source file='{vol.path}' index='1'/>" in await dom.xml_desc()
        blocks = await dom.qmp("query-block")
        assert [b["inserted"]["file"] for b in blocks if b.get("inserted")] == [vol.path]
        await dom.destroy()


@pytest.mark.guest
async def test_a_guest_runs_on_an_overlay_of_a_backing_volume(conn, root, tmp_path, test_guest):
    pool = await make_pool(conn, tmp_path / "pool")
    base = await pool.create_volume_xml(
        vol_xml("base.img", "64M", extra="<allocation>0</allocation>")
    )
    await base.upload(b"\x5a" * MiB)  # what the guest's disk starts with
    overlay = await pool.create_volume_xml(
        "<volume><name>vm1.qcow2</name><target><format type='qcow2'/></target>"
        f"<backingStore><path>{base.path}</path></backingStore></volume>"
    )
    serial = tmp_path / "vm1.serial"
    disk = (
        "<disk type='volume' device='disk'><source pool='p' volume='vm1.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )
    dom = await conn.define_xml(
        test_guest.xml("vm1", serial, domain_type="qemu", action="readdisk", devices=disk)
    )
    await dom.start()
    await wait_for_serial(serial)
    [block] = [b for b in await dom.qmp("query-block") if b.get("inserted")]
    image = block["inserted"]["image"]
    assert (image["filename"], image["format"]) == (overlay.path, "qcow2")
    assert image["backing-image"]["filename"] == base.path
    # The guest read its disk, through the overlay...
    [stats] = [s for s in (await dom.qmp("query-blockstats"))]
    assert stats["stats"]["rd_operations"] > 0
    # ... and the data it sees is the backing volume's (qemu-io, in QEMU itself, reads what
    # the guest reads and prints to QEMU's log).
    node = block["inserted"]["node-name"]
    log = root / "log" / "qemu" / "vm1.log"
    for pattern, length in (("0x5a", 65536), ("0x11", 4096)):
        await dom.qmp(
            "human-monitor-command",
            {"command-line": f'qemu-io {node} "read -P {pattern} 0 {length}"'},
        )
    await dom.destroy()  # QEMU exits, its output is flushed
    failures = [line for line in log.read_text().splitlines() if "verification failed" in line]
    # Only the read expecting 0x11 failed (it could: the check can tell them apart).
    assert failures == ["Pattern verification failed at offset 0, 4096 bytes"]
    assert "<source pool='p' volume='vm1.qcow2'/>" in await dom.xml_desc(inactive=True)


# -- the CLI ------------------------------------------------------------------------------------


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(root, *args, check=check)


def test_cli_pools_and_volumes_read_like_virsh(root, tmp_path):
    pool_dir = tmp_path / "images"
    assert run(root, "pool-define-as", "images", "dir", "--target", str(pool_dir)).stdout == (
        "Pool images defined\n\n"
    )
    assert run(root, "pool-build", "images").stdout == "Pool images built\n\n"
    assert run(root, "pool-start", "images").stdout == "Pool images started\n\n"
    assert run(root, "pool-autostart", "images").stdout == "Pool images marked as autostarted\n\n"
    listing = run(root, "pool-list").stdout.splitlines()
    assert listing[0].split() == ["Name", "State", "Autostart"]
    assert listing[2].split() == ["images", "active", "yes"]
    details = run(root, "pool-list", "--all", "--details").stdout.splitlines()
    assert details[0].split() == [
        "Name",
        "State",
        "Autostart",
        "Persistent",
        "Capacity",
        "Allocation",
        "Available",
    ]
    assert details[2].split()[:4] == ["images", "running", "yes", "yes"]
    info = run(root, "pool-info", "images").stdout.splitlines()
    assert info[0] == "Name:           images"
    assert info[2] == "State:          running"
    out = run(root, "vol-create-as", "images", "base.qcow2", "1G", "--format", "qcow2").stdout
    assert out == "Vol base.qcow2 created\n\n"
    run(
        root,
        "vol-create-as",
        "images",
        "vm.qcow2",
        "1G",
        "--format",
        "qcow2",
        "--backing-vol",
        "base.qcow2",
        "--backing-vol-format",
        "qcow2",
    )
    run(root, "vol-create-as", "images", "data.img", "10M", "--allocation", "0")
    vols = run(root, "vol-list", "images", "--details").stdout.splitlines()
    assert vols[0].split() == ["Name", "Path", "Type", "Capacity", "Allocation"]
    assert vols[2].split()[:5] == [
        "base.qcow2",
        str(pool_dir / "base.qcow2"),
        "file",
        "1.00",
        "GiB",
    ]
    assert vols[4].split() == [
        "vm.qcow2",
        str(pool_dir / "vm.qcow2"),
        "file",
        "1.00",
        "GiB",
        *vols[4].split()[5:],
    ]
    info = run(root, "vol-info", "data.img", "--pool", "images").stdout
    assert info == (
        "Name:           data.img\nType:           file\n"
        "Capacity:       10.00 MiB\nAllocation:     0.00 B\n\n"
    )
    assert run(root, "vol-info", str(pool_dir / "data.img"), "--bytes").stdout.splitlines()[2] == (
        "Capacity:       10485760 bytes"
    )
    assert (
        "<path>" + str(pool_dir / "base.qcow2")
        in run(root, "vol-dumpxml", "vm.qcow2", "--pool", "images").stdout
    )
    assert (
        run(root, "vol-path", "data.img", "--pool", "images").stdout == f"{pool_dir / 'data.img'}\n"
    )
    assert run(root, "vol-clone", "data.img", "copy.img", "--pool", "images").stdout == (
        "Vol copy.img cloned from data.img\n\n"
    )
    assert run(root, "vol-resize", "copy.img", "20M", "--pool", "images").stdout == (
        "Size of volume 'copy.img' successfully changed to 20M\n\n"
    )
    assert (
        run(root, "vol-resize", "copy.img", "--pool", "images", "--delta", "--", "-5M").returncode
        == 0
    )
    assert os.path.getsize(pool_dir / "copy.img") == 15 * MiB
    assert run(root, "vol-wipe", "copy.img", "--pool", "images").stdout == "Vol copy.img wiped\n\n"
    assert (
        run(root, "vol-delete", "copy.img", "--pool", "images").stdout == "Vol copy.img deleted\n\n"
    )
    assert not (pool_dir / "copy.img").exists()
    assert run(root, "pool-refresh", "images").stdout == "Pool images refreshed\n\n"
    assert "<capacity" not in run(root, "pool-dumpxml", "images", "--inactive").stdout
    assert run(root, "pool-destroy", "images").stdout == "Pool images destroyed\n\n"
    assert run(root, "pool-autostart", "images", "--disable").stdout == (
        "Pool images unmarked as autostarted\n\n"
    )
    assert run(root, "pool-list").stdout.splitlines()[2:] == [""]
    assert run(root, "pool-list", "--inactive").stdout.splitlines()[2].split() == [
        "images",
        "inactive",
        "no",
    ]


def test_cli_bad_input_is_one_line_and_creates_nothing(root, tmp_path):
    pool_dir = tmp_path / "images"
    run(root, "pool-define-as", "images", "dir", "--target", str(pool_dir))
    run(root, "pool-start", "images", "--build")
    for args, words in [
        (("vol-create-as", "images", "../escape", "1M"), "must not contain '/'"),
        (("vol-create-as", "images", "x.img", "twelve"), "invalid capacity"),
        (("vol-create-as", "images", "x.img", "1Q"), "unknown unit"),
        (("vol-create-as", "images", ".x", "1M"), "must not start with '.'"),
        (
            (
                "vol-create-as",
                "images",
                "x.qcow2",
                "1M",
                "--format",
                "qcow2",
                "--backing-vol",
                "/etc/passwd",
            ),
            "failed to get vol",
        ),
        (("pool-define-as", "bad", "dir", "--target", "/tmp/a/../b"), "'..'"),
        (("vol-info", "nope.img"), "specifying --pool might help"),
        (("vol-wipe", "nope.img", "--pool", "images"), "failed to get vol"),
    ]:
        proc = run(root, *args, check=False)
        assert proc.returncode == 1, args
        assert proc.stderr.startswith("error: ") and words in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1
    assert os.listdir(pool_dir) == []
    vol_file = tmp_path / "vol.xml"
    vol_file.write_text(vol_xml("fromfile.img"))
    assert run(root, "vol-create", "images", str(vol_file)).stdout == (
        f"Vol fromfile.img created from {vol_file}\n\n"
    )
    (pool_dir / "fromfile.img").unlink()
    pool_file = tmp_path / "pool.xml"
    pool_file.write_text(pool_xml("more", tmp_path / "more"))
    assert run(root, "pool-define", str(pool_file)).stdout == (
        f"Pool more defined from {pool_file}\n\n"
    )
    assert run(root, "pool-define-as", "x", "dir", "--target", "/srv/x", "--print-xml").stdout == (
        "<pool type='dir'>\n  <name>x</name>\n  <target>\n    <path>/srv/x</path>\n"
        "  </target>\n</pool>\n\n"  # and virsh's blank line after the command
    )
    assert not (root / "etc" / "storage" / "x.xml").exists()


def test_cli_upload_download_round_trip_with_a_progress_bar(root, tmp_path):
    pool_dir = tmp_path / "images"
    run(root, "pool-define-as", "images", "dir", "--target", str(pool_dir))
    run(root, "pool-start", "images", "--build")
    run(root, "vol-create-as", "images", "disk.img", "8M", "--allocation", "0")
    payload = os.urandom(5 * MiB + 7)
    (tmp_path / "in.bin").write_bytes(payload)
    # stderr on a terminal: the progress bar is drawn there.
    controller, terminal = pty.openpty()
    env = {**os.environ, "ASVIRT_DEFAULT_URI": embed_uri(root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "asvirt",
            "vol-upload",
            "disk.img",
            str(tmp_path / "in.bin"),
            "--pool",
            "images",
        ],
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
        timeout=120,
    )
    os.close(terminal)
    shown = os.read(controller, 65536).decode()
    os.close(controller)
    assert proc.returncode == 0 and proc.stdout == b""
    assert "Uploading [" in shown and "100 %" in shown
    run(
        root,
        "vol-download",
        "disk.img",
        str(tmp_path / "out.bin"),
        "--pool",
        "images",
        "--length",
        str(len(payload)),
    )
    assert (tmp_path / "out.bin").read_bytes() == payload
    run(root, "vol-download", "disk.img", str(tmp_path / "all.bin"), "--pool", "images")
    assert (tmp_path / "all.bin").read_bytes() == payload + bytes(8 * MiB - len(payload))


def test_cli_undefine_remove_all_storage(root, tmp_path, test_guest):
    pool_dir = tmp_path / "images"
    run(root, "pool-define-as", "images", "dir", "--target", str(pool_dir))
    run(root, "pool-start", "images", "--build")
    run(root, "vol-create-as", "images", "vm1.qcow2", "64M", "--format", "qcow2")
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"")
    devices = (
        "<disk type='volume'><source pool='images' volume='vm1.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
        f"<disk type='file'><source file='{outside}'/><target dev='vdb' bus='virtio'/></disk>"
    )
    xml = tmp_path / "vm1.xml"
    xml.write_text(paused_xml(test_guest, tmp_path, devices=devices))
    run(root, "define", str(xml))
    out = run(root, "undefine", "vm1", "--remove-all-storage").stdout
    assert out == (
        f"Storage volume 'vdb'({outside}) is not managed by asvirt. Remove it manually.\n"
        "Domain 'vm1' has been undefined\n"
        f"Volume 'vda'(vm1.qcow2) removed.\n\n"
    )
    assert not (pool_dir / "vm1.qcow2").exists() and outside.exists()


def test_pretty_sizes_and_the_progress_bar():
    assert [pretty_size(n) for n in (0, 1023, 1024, 1536 * 1024, 10 * 1024**3)] == [
        "0.00 B",
        "1023.00 B",
        "1.00 KiB",
        "1.50 MiB",
        "10.00 GiB",
    ]

    class Terminal:
        written = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.written += text

        def flush(self) -> None:
            pass

    term = Terminal()
    bar = ProgressBar("Cloning", term, width=10)  # type: ignore[arg-type]
    for f in (0.0, 0.5, 0.5, 1.0):
        bar(f)
    bar.close()
    assert term.written == (
        "\rCloning [          ]   0 %\rCloning [#####     ]  50 %\rCloning [##########] 100 %\n"
    )
