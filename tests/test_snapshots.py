"""Snapshots, save and restore: the shared suite (test driver, QEMU in this process, QEMU
through a daemon), then what only a real QEMU shows (disks, files, a booted guest).

The domains here are paused (KVM when usable) with one qcow2 disk made by qemu-img in the
test's directory; a paused guest's memory is snapshotted and saved like any other's.
"""

from __future__ import annotations

import os

import pytest

import asvirt
from asvirt import DomainState as S
from asvirt import PausedReason, RunningReason, ShutoffReason

from .contract import Backend, drain_lifecycle
from .guest import define, wait_for_serial
from .helpers import disk_snapshots, disk_xml, embed_uri, lifecycle_until, qemu_img, run_cli

LC = asvirt.EventKind.LIFECYCLE


def disk_image(api: Backend, name: str = "d.qcow2", fmt: str = "qcow2") -> str:
    """A disk image in the test's directory (made with qemu-img on QEMU; only a path on the
    test driver, which reads no disk)."""
    path = api.tmp / name
    if not api.simulated:
        qemu_img("create", "-f", fmt, path, "64M")
    return str(path)


async def paused_vm(api: Backend, *disks: str, name: str = "vm1") -> asvirt.Domain:
    devices = "".join(
        disk_xml(p, target=f"vd{chr(ord('a') + i)}", fmt="raw" if p.endswith(".img") else "qcow2")
        for i, p in enumerate(disks)
    )
    dom = await api.define(name, devices=devices)
    await dom.start(paused=True)
    return dom


# -- the shared suite ---------------------------------------------------------------------------


async def test_snapshot_tree_revert_and_delete(api):
    disk = disk_image(api)
    dom = await paused_vm(api, disk)
    async with api.conn.subscribe(dom, kinds=LC) as events:
        s1 = await dom.snapshot_create_xml(
            "<domainsnapshot><name>s1</name><description>first</description></domainsnapshot>"
        )
        # A paused guest is snapshotted as it is: no event.
        assert drain_lifecycle(events) == []
        await dom.resume()
        drain_lifecycle(events)
        s2 = await dom.snapshot_create_xml("<domainsnapshot><name>s2</name></domainsnapshot>")
        # A running one is paused meanwhile, as libvirt does.
        assert drain_lifecycle(events) == [("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED")]
        assert await dom.state() == (S.RUNNING, RunningReason.UNPAUSED)

        assert [s.name for s in await dom.list_all_snapshots()] == ["s1", "s2"]
        assert await dom.snapshot_current() == s2 and await dom.has_current_snapshot()
        assert await s2.get_parent() == s1
        with pytest.raises(asvirt.NoDomainSnapshotError):
            await s1.get_parent()
        info = await s1.info()
        assert (info.state, info.memory, info.current, info.children) == ("paused", True, False, 1)
        xml = await s1.xml_desc()
        for part in (
            "<name>s1</name>",
            "<description>first</description>",
            "<state>paused</state>",
            "<memory snapshot='internal'/>",
            "<disk name='vda' snapshot='internal'/>",
            f"<uuid>{dom.uuid}</uuid>",
        ):
            assert part in xml
        assert "<parent>" not in xml and "<name>s1</name>" in await s2.xml_desc()
        assert [s.name for s in await dom.list_all_snapshots(roots=True)] == ["s1"]
        assert [s.name for s in await dom.list_all_snapshots(leaves=True)] == ["s2"]
        assert [s.name for s in await s1.list_all_children()] == ["s2"]

        # Back to the paused guest of s1, then to the running one of s2, in place.
        await s1.revert()
        assert drain_lifecycle(events) == [("SUSPENDED", "FROM_SNAPSHOT")]
        assert await dom.state() == (S.PAUSED, PausedReason.FROM_SNAPSHOT)
        assert await dom.snapshot_current() == s1
        await dom.revert_to_snapshot("s2")
        assert drain_lifecycle(events) == [("RESUMED", "FROM_SNAPSHOT")]
        assert await dom.state() == (S.RUNNING, RunningReason.FROM_SNAPSHOT)
        # Asked to: paused, whatever the snapshot was.
        await s2.revert(paused=True)
        assert drain_lifecycle(events) == [("SUSPENDED", "FROM_SNAPSHOT")]

        # A branch: s3 after reverting to s1.
        await s1.revert()
        s3 = await dom.snapshot_create_xml("<domainsnapshot><name>s3</name></domainsnapshot>")
        assert sorted(s.name for s in await s1.list_all_children()) == ["s2", "s3"]
        await s1.delete()
        # Its children are roots now; s3 stays current.
        assert [s.name for s in await dom.list_all_snapshots(roots=True)] == ["s2", "s3"]
        assert await dom.snapshot_current() == s3
        await s3.delete()
        assert not await dom.has_current_snapshot()
        with pytest.raises(asvirt.NoDomainSnapshotError):
            await dom.snapshot_current()
        with pytest.raises(asvirt.NoDomainSnapshotError):
            await dom.snapshot_lookup_by_name("s1")
        if not api.simulated:
            assert disk_snapshots(disk) == ["s2"]
        await s2.delete()
        assert await dom.list_all_snapshots() == []
        if not api.simulated:
            assert disk_snapshots(disk) == []


async def test_shut_off_snapshots_and_reverts(api):
    disk = disk_image(api)
    dom = await api.define("vm1", devices=disk_xml(disk))
    async with api.conn.subscribe(dom, kinds=LC) as events:
        off = await dom.snapshot_create_xml("<domainsnapshot><name>off</name></domainsnapshot>")
        info = await off.info()
        assert (info.state, info.memory) == ("shutoff", False)
        assert "<memory snapshot='no'/>" in await off.xml_desc()
        if not api.simulated:
            assert disk_snapshots(disk) == ["off"]
        await dom.start(paused=True)
        on = await dom.snapshot_create_xml("<domainsnapshot><name>on</name></domainsnapshot>")
        drain_lifecycle(events)
        # To a shut-off snapshot: the domain stops and its disks go back.
        await off.revert()
        assert drain_lifecycle(events) == [("STOPPED", "FROM_SNAPSHOT")]
        assert await dom.state() == (S.SHUTOFF, ShutoffReason.FROM_SNAPSHOT)
        # From shut off to a snapshot with memory: a new QEMU runs the saved guest.
        await on.revert()
        assert drain_lifecycle(events) == [
            ("STARTED", "FROM_SNAPSHOT"),
            ("SUSPENDED", "FROM_SNAPSHOT"),
        ]
        assert await dom.state() == (S.PAUSED, PausedReason.FROM_SNAPSHOT)
        await on.revert(running=True)
        assert drain_lifecycle(events) == [("RESUMED", "FROM_SNAPSHOT")]
        # To a shut-off snapshot, then boot: --running.
        await off.revert(running=True)
        assert drain_lifecycle(events) == [
            ("STOPPED", "FROM_SNAPSHOT"),
            ("STARTED", "FROM_SNAPSHOT"),
        ]
        assert await dom.state() == (S.RUNNING, RunningReason.FROM_SNAPSHOT)
        # halt: the snapshot, then the domain stops.
        await dom.snapshot_create_xml("<domainsnapshot><name>h</name></domainsnapshot>", halt=True)
        assert drain_lifecycle(events)[-1] == ("STOPPED", "FROM_SNAPSHOT")
        assert await dom.snapshot_current() == await dom.snapshot_lookup_by_name("h")


async def test_what_cannot_be_snapshotted_is_refused_and_changes_nothing(api):
    good = disk_image(api, "good.qcow2")
    raw = disk_image(api, "raw.img", fmt="raw")
    dom = await paused_vm(api, good, raw)
    with pytest.raises(asvirt.OperationUnsupportedError, match=r"vdb.*format is raw"):
        await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    with pytest.raises(asvirt.OperationUnsupportedError, match="external memory state"):
        await dom.snapshot_create_xml(
            "<domainsnapshot><memory snapshot='external' file='/m'/></domainsnapshot>",
            disk_only=True,
        )
    with pytest.raises(asvirt.OperationUnsupportedError, match="memory"):
        await dom.snapshot_create_xml("<domainsnapshot><memory snapshot='no'/></domainsnapshot>")
    with pytest.raises(asvirt.ConfigUnsupportedError, match="no disk named 'vdz'"):
        await dom.snapshot_create_xml(
            "<domainsnapshot><disks><disk name='vdz' snapshot='no'/></disks></domainsnapshot>"
        )
    for bad in ("a/b", "-x", ".."):
        with pytest.raises(asvirt.XMLError):
            await dom.snapshot_create_xml(f"<domainsnapshot><name>{bad}</name></domainsnapshot>")
    assert await dom.list_all_snapshots() == []
    if not api.simulated:
        assert disk_snapshots(good) == []
    # Leaving the raw disk out is fine; the snapshot says so.
    snap = await dom.snapshot_create_xml(
        "<domainsnapshot><name>s</name><disks><disk name='vdb' snapshot='no'/></disks>"
        "</domainsnapshot>"
    )
    assert "<disk name='vdb' snapshot='no'/>" in await snap.xml_desc()
    with pytest.raises(asvirt.OperationInvalidError, match="already exists"):
        await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    # A domain with snapshots is undefined only when asked to forget them.
    with pytest.raises(asvirt.OperationInvalidError, match="snapshot"):
        await dom.undefine()
    assert await dom.is_persistent()
    await dom.undefine(snapshots_metadata=True)
    assert not await dom.is_persistent()
    await dom.destroy()


async def test_save_restore_and_managed_save(api):
    disk = disk_image(api)
    dom = await paused_vm(api, disk)
    image = str(api.tmp / "vm1.save")
    told: list[float] = []
    async with api.conn.subscribe(dom, kinds=LC) as events:
        await dom.resume()
        drain_lifecycle(events)
        await dom.save(image, progress=told.append)
        assert drain_lifecycle(events) == [("SUSPENDED", "PAUSED"), ("STOPPED", "SAVED")]
        assert await dom.state() == (S.SHUTOFF, ShutoffReason.SAVED)
        assert told and told[-1] == 1.0
        assert f"<uuid>{dom.uuid}</uuid>" in await api.conn.save_image_get_xml_desc(image)
        # It ran: it runs again.
        again = await api.conn.restore(image)
        assert again == dom
        assert drain_lifecycle(events) == [("STARTED", "RESTORED")]
        assert await dom.state() == (S.RUNNING, RunningReason.RESTORED)
        # Saved paused: restored paused; or asked to stay paused.
        await dom.suspend()
        await dom.save(image)
        drain_lifecycle(events)
        await api.conn.restore(image)
        assert drain_lifecycle(events) == [("STARTED", "RESTORED"), ("SUSPENDED", "RESTORED")]
        await dom.save(image, running=True)
        await api.conn.restore(image, paused=True)
        drain = drain_lifecycle(events)
        assert drain[-2:] == [("STARTED", "RESTORED"), ("SUSPENDED", "PAUSED")]
        with pytest.raises(asvirt.OperationInvalidError, match="already running"):
            await api.conn.restore(image)

        # Managed save: start restores it, and the image goes.
        await dom.managed_save()
        assert drain_lifecycle(events)[-1] == ("STOPPED", "SAVED")
        assert await dom.has_managed_save_image()
        with pytest.raises(asvirt.OperationInvalidError, match="managed save"):
            await dom.undefine()
        await dom.start()
        assert drain_lifecycle(events) == [("STARTED", "RESTORED"), ("SUSPENDED", "RESTORED")]
        assert not await dom.has_managed_save_image()
        # force_boot throws it away and boots; managed_save_remove too.
        await dom.managed_save()
        await dom.start(paused=True, force_boot=True)
        assert drain_lifecycle(events)[-2:] == [("STARTED", "BOOTED"), ("SUSPENDED", "PAUSED")]
        await dom.managed_save()
        await dom.managed_save_remove()
        assert not await dom.has_managed_save_image()
        await dom.start(paused=True)
        assert drain_lifecycle(events)[-2:] == [("STARTED", "BOOTED"), ("SUSPENDED", "PAUSED")]
        await dom.managed_save()
        await dom.undefine(managed_save=True)
        with pytest.raises(asvirt.NoDomainError):
            await dom.state()


async def test_save_refuses_symlinks_and_what_is_not_an_image(api):
    dom = await paused_vm(api)
    target = api.tmp / "elsewhere"
    target.write_text("precious")
    link = api.tmp / "link.save"
    link.symlink_to(target)
    with pytest.raises(asvirt.OperationInvalidError, match="symbolic link"):
        await dom.save(str(link))
    assert target.read_text() == "precious"
    assert await dom.state() == (S.PAUSED, PausedReason.USER)
    with pytest.raises(asvirt.OperationInvalidError, match="symbolic link"):
        await api.conn.restore(str(link))
    with pytest.raises(asvirt.OperationInvalidError, match="not an asvirt save image"):
        await api.conn.restore(str(target))
    with pytest.raises(asvirt.InvalidArgError, match="absolute"):
        await dom.save("relative.save")
    assert not list(api.tmp.glob(".*.tmp"))


# -- QEMU only ----------------------------------------------------------------------------------


@pytest.mark.qemu
async def test_no_half_snapshot_when_a_disk_fails(conn, test_guest, tmp_path):
    one, two = tmp_path / "one.qcow2", tmp_path / "two.qcow2"
    for path in (one, two):
        qemu_img("create", "-f", "qcow2", path, "64M")
    dom, _ = await define(conn, test_guest, tmp_path, devices=disk_xml(one) + disk_xml(two, "vdb"))
    # Another domain holds the second disk: qemu-img cannot write it, after the first
    # disk's snapshot was made.
    holder, _ = await define(conn, test_guest, tmp_path, "holder", devices=disk_xml(two))
    await holder.start(paused=True)
    with pytest.raises(asvirt.OperationFailedError, match=r"two\.qcow2"):
        await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    assert disk_snapshots(str(one)) == [] and disk_snapshots(str(two)) == []
    assert await dom.list_all_snapshots() == []
    await holder.destroy()
    # A name a disk already has (made behind asvirt's back) is refused before anything.
    qemu_img("snapshot", "-c", "s", two)
    with pytest.raises(asvirt.OperationInvalidError, match="already has"):
        await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    assert disk_snapshots(str(one)) == []


@pytest.mark.qemu
async def test_snapshots_survive_a_restart_and_the_cli_lists_them(
    root, fast_config, test_guest, tmp_path
):
    disk = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", disk, "64M")
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(conn, test_guest, tmp_path, devices=disk_xml(disk))
        await dom.snapshot_create_xml("<domainsnapshot><name>base</name></domainsnapshot>")
        await dom.start(paused=True)
        await dom.snapshot_create_xml("<domainsnapshot><name>b1</name></domainsnapshot>")
        await dom.revert_to_snapshot("base", paused=True)
        await dom.snapshot_create_xml("<domainsnapshot><name>b2</name></domainsnapshot>")
        await dom.managed_save()
    assert sorted(p.name for p in (root / "lib" / "qemu" / "snapshot" / "vm1").iterdir()) == [
        "b1.xml",
        "b2.xml",
        "base.xml",
    ]
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert [s.name for s in await dom.list_all_snapshots()] == ["base", "b1", "b2"]
        assert (await dom.snapshot_current()).name == "b2"
        assert await dom.has_managed_save_image()
    listed = run_cli(root, "snapshot-list", "vm1").stdout.splitlines()
    assert listed[0].split() == ["Name", "Creation", "Time", "State"]
    assert [line.split()[0] for line in listed[2:] if line] == ["b1", "b2", "base"]
    assert [line.split()[-1] for line in listed[2:] if line] == ["paused", "paused", "shutoff"]
    tree = run_cli(root, "snapshot-list", "vm1", "--tree").stdout
    # virsh's tree: the last child's line is followed by its (blank) indentation.
    assert tree == "base\n  |\n  +- b1\n  +- b2\n    \n\n"
    assert run_cli(root, "snapshot-current", "vm1", "--name").stdout == "b2\n"
    assert run_cli(root, "snapshot-list", "vm1", "--name").stdout == "b1\nb2\nbase\n\n"
    assert "Managed save:   yes" in run_cli(root, "dominfo", "vm1").stdout
    assert " vm1    saved" in run_cli(root, "list", "--all", "--managed-save").stdout
    assert run_cli(root, "start", "vm1").stdout == "Domain 'vm1' started\n\n"
    out = run_cli(root, "snapshot-revert", "vm1", "b1").stdout
    assert out == "Domain snapshot b1 reverted\n\n"
    out = run_cli(root, "snapshot-delete", "vm1", "base", "--children-only").stdout
    assert out == "Domain snapshot base children deleted\n\n"
    assert run_cli(root, "snapshot-list", "vm1", "--name").stdout == "base\n\n"
    save = tmp_path / "vm1.save"
    assert run_cli(root, "save", "vm1", str(save)).stdout == f"\nDomain 'vm1' saved to {save}\n\n"
    assert run_cli(root, "restore", str(save)).stdout == f"Domain restored from {save}\n\n"
    assert run_cli(root, "destroy", "vm1").returncode == 0
    failed = run_cli(root, "snapshot-current", "vm1", check=False)
    assert failed.returncode == 0
    out = run_cli(
        root, "snapshot-create-as", "vm1", "s9", "ninth", "--diskspec", "vda,snapshot=internal"
    )
    assert out.stdout == "Domain snapshot s9 created\n"


@pytest.mark.qemu
@pytest.mark.guest
async def test_revert_brings_back_the_running_guest(conn, test_guest, tmp_path):
    """The guest powers itself off a few seconds after it is ready. Taken in that wait, a
    snapshot brings back the guest that is still waiting: it powers off again, without
    booting (no second READY on its console): its memory, not its disk, came back."""
    disk = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", disk, "64M")
    dom, serial = await define(
        conn, test_guest, tmp_path, action="poweroff", delay=4, devices=disk_xml(disk)
    )
    async with conn.subscribe(dom, kinds=LC) as events:
        await dom.start()
        await wait_for_serial(serial)
        await dom.snapshot_create_xml("<domainsnapshot><name>waiting</name></domainsnapshot>")
        await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)
        await dom.revert_to_snapshot("waiting")
        assert await dom.state() == (S.RUNNING, RunningReason.FROM_SNAPSHOT)
        seen = await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)
        assert seen == [
            ("STARTED", "FROM_SNAPSHOT"),
            ("SHUTDOWN", "GUEST"),
            ("STOPPED", "SHUTDOWN"),
        ]
    # The new QEMU's console (the file starts afresh) shows no boot: the guest went on.
    assert "ASVIRT-GUEST-READY" not in serial.read_text(errors="replace")


# -- pieces --------------------------------------------------------------------------------------


def test_the_tree_is_drawn_as_virsh_draws_it():
    from asvirt.cli.snapshot import tree
    from asvirt.drivers.base import DomainSnapshotInfo

    def info(name: str, parent: str | None) -> DomainSnapshotInfo:
        return DomainSnapshotInfo(name, parent, "running", 0, False, 0, 0, True)

    infos = [info("a", None), info("b", "a"), info("c", "b"), info("d", "a"), info("z", None)]
    assert tree(infos) == ("a\n  |\n  +- b\n  |   |\n  |   +- c\n  |     \n  +- d\n    \nz\n\n")


def test_snapshot_create_as_writes_virsh_xml():
    from asvirt.cli.snapshot import snapshot_xml
    from asvirt.conf.snapshot import parse_snapshot_xml

    xml = snapshot_xml("s<1>", "a & b", None, ["vda,snapshot=no", "vd,,b"])
    assert xml == (
        "<domainsnapshot>\n  <name>s&lt;1&gt;</name>\n  <description>a &amp; b</description>\n"
        "  <disks>\n    <disk name='vda' snapshot='no'/>\n    <disk name='vd,b'/>\n"
        "  </disks>\n</domainsnapshot>\n"
    )
    snap, _ = parse_snapshot_xml(snapshot_xml("s1", None, None, ["vda,snapshot=no"]))
    assert (snap.name, snap.disks[0].name, snap.disks[0].snapshot) == ("s1", "vda", "no")
    with pytest.raises(asvirt.InvalidArgError, match="diskspec"):
        snapshot_xml("s", None, None, ["vda,bogus=1"])


def test_a_save_image_header_round_trips_and_damage_is_refused(tmp_path):
    from asvirt.hypervisor.saveimage import FileSink, SaveHeader, open_image, read_header

    path = tmp_path / "x.save"
    sink = FileSink(path)
    os.write(sink.fd, SaveHeader(xml="<domain/>", running=True, driver="qemu").encode() + b"S")
    sink.commit()
    fd = open_image(str(path))
    try:
        header = read_header(fd, what="x")
        assert (header.xml, header.running, header.driver) == ("<domain/>", True, "qemu")
        assert os.pread(fd, 1, header.data_offset) == b"S" and header.data_offset % 4096 == 0
    finally:
        os.close(fd)
    data = bytearray(path.read_bytes())
    data[16] = 9  # a version from the future
    path.write_bytes(bytes(data))
    fd = open_image(str(path))
    try:
        with pytest.raises(asvirt.OperationInvalidError, match="version 9"):
            read_header(fd, what="x")
    finally:
        os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == ["x.save"]  # no temporary file left


async def test_rename_is_refused_with_snapshots_or_a_managed_save(api):
    """As libvirt: their metadata and image are kept by name, so a domain that has them keeps
    its name; once they are gone it can be renamed."""
    disk = disk_image(api)
    dom = await api.define("vm1", devices=disk_xml(disk))
    snap = await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    with pytest.raises(asvirt.OperationInvalidError, match="snapshots"):
        await dom.rename("vm2")
    await snap.delete()
    await dom.start(paused=True)
    await dom.managed_save()
    with pytest.raises(asvirt.OperationInvalidError, match="managed saved state"):
        await dom.rename("vm2")
    assert await dom.has_managed_save_image()
    await dom.managed_save_remove()
    await dom.rename("vm2")
    assert (await api.conn.lookup_by_name("vm2")).uuid == dom.uuid
