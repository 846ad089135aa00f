"""External (disk-only) snapshots: libvirt's live-backup recipe, as backup tools drive it.

    snapshot-create-as DOM --disk-only --atomic --no-metadata --diskspec vda,file=OVERLAY
    (copy the now read-only base)
    blockcommit DOM vda --active --pivot

Images are real (qemu-img, qemu-io); most tests need no guest, a paused QEMU switches its
disks as a running one does. What a user checks: the images and their backing files, the
live and persistent XML, the snapshot's metadata, what a fresh supervisor shows, and that a
refusal leaves every file as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import trio
from lxml import etree

import asvirt

from .guest import AGENT_CHANNEL_XML, PAUSED_DOMAIN_TYPE, define, paused_xml, start_with_disk
from .helpers import (
    MiB,
    collect_until,
    disk_xml,
    embed_uri,
    image_with_data,
    overlay,
    run_cli,
)
from .test_qemu_blockjobs import backing_of, chain_in, cleaned_up, holds

pytestmark = [pytest.mark.qemu]

K = asvirt.EventKind
State = asvirt.AgentLifecycleState
DISK_ONLY = "<domainsnapshot><name>s1</name></domainsnapshot>"


def sources(xml: str) -> dict[str, tuple[str, str]]:
    """Each disk's image and format, as the XML names them."""
    out = {}
    for disk in etree.fromstring(xml.encode()).xpath("devices/disk"):
        out[disk.find("target").get("dev")] = (
            disk.find("source").get("file"),
            disk.find("driver").get("type"),
        )
    return out


def layers(xml: str, target: str = "vda") -> list[tuple[str, str]]:
    """The images below the disk ``target`` (its <backingStore> chain) and their formats."""
    [disk] = etree.fromstring(xml.encode()).xpath(f"devices/disk[target/@dev='{target}']")
    out = []
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        out.append((store.find("source").get("file"), store.find("format").get("type")))
        store = store.find("backingStore")
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_image(path: Path, size: int = 16 * MiB, at: int = 0, fill: bytes = b"\xab") -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(at)
        f.write(fill * 65536)
    return path


async def test_disk_only_snapshot_moves_the_disks_onto_overlays_and_back(
    root, fast_config, test_guest, tmp_path
):
    base = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    spare = raw_image(tmp_path / "spare.raw")
    devices = disk_xml(base) + disk_xml(spare, "vdb", fmt="raw")
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            before = digest(spare)
            async with conn.subscribe(dom, kinds={K.LIFECYCLE}) as events:
                snap = await dom.snapshot_create_xml(
                    "<domainsnapshot><name>s1</name><disks>"
                    "<disk name='vdb' snapshot='no'/></disks></domainsnapshot>",
                    disk_only=True,
                    atomic=True,
                )
                # No lifecycle event for it (libvirt sends none): the next one is the resume.
                await dom.resume()
                [first] = await collect_until(events, lambda seen: len(seen) >= 1)
                assert (first.type.name, first.detail.name) == ("RESUMED", "UNPAUSED")
            await dom.suspend()
            made = tmp_path / "disk.s1"  # libvirt's default name: IMAGE without .qcow2, .NAME
            assert snap.name == "s1" and made.exists()
            assert oct(made.stat().st_mode & 0o777) == "0o600"
            assert backing_of(made) == str(base)
            live = await dom.xml_desc()
            assert chain_in(live) == [str(made), str(base)]
            assert sources(live)["vdb"] == (str(spare), "raw"), "snapshot='no' left it"
            assert sources(await dom.xml_desc(inactive=True)) == {
                "vda": (str(made), "qcow2"),
                "vdb": (str(spare), "raw"),
            }, "the next boot uses the overlay"
            files = {
                b["inserted"]["file"] for b in await dom.qmp("query-block") if b.get("inserted")
            }
            assert str(made) in files and str(base) not in files
            # The metadata: listed, current, a disk snapshot of external disks.
            assert [s.name for s in await dom.list_all_snapshots()] == ["s1"]
            assert (await dom.snapshot_current()).name == "s1"
            info = await snap.info()
            assert (info.state, info.memory) == ("disk-snapshot", False)
            shown = etree.fromstring((await snap.xml_desc()).encode())
            assert shown.findtext("state") == "disk-snapshot"
            assert shown.find("memory").get("snapshot") == "no"
            [vda, vdb] = shown.find("disks")
            assert (vda.get("name"), vda.get("snapshot"), vda.get("type")) == (
                "vda",
                "external",
                "file",
            )
            assert vda.find("source").get("file") == str(made)
            assert vda.find("driver").get("type") == "qcow2"
            assert (vdb.get("name"), vdb.get("snapshot")) == ("vdb", "no")
            # Reverting to it and deleting it are refused as libvirt 9.0 refuses them.
            with pytest.raises(asvirt.ConfigUnsupportedError) as err:
                await snap.revert()
            assert "revert to external snapshot not supported yet" in str(err.value)
            with pytest.raises(asvirt.ConfigUnsupportedError) as err:
                await snap.delete()
            assert "deletion of 1 external disk snapshots not supported yet" in str(err.value)
            assert made.exists() and [s.name for s in await dom.list_all_snapshots()] == ["s1"]
            assert digest(spare) == before
        # A fresh supervisor shows the same chain, and commits the overlay back.
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert chain_in(await dom.xml_desc()) == [str(made), str(base)]
            async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
                await dom.block_commit("vda", active=True)
                assert (await events.receive()).data["status"] == "ready"
                await dom.block_job_abort("vda", pivot=True)
            assert chain_in(await dom.xml_desc()) == [str(base)]
            assert sources(await dom.xml_desc(inactive=True))["vda"] == (str(base), "qcow2")
            # The images are back where they were: the metadata goes alone.
            await (await dom.snapshot_lookup_by_name("s1")).delete(metadata_only=True)
            assert await dom.list_all_snapshots() == []
            # The next backup round: a new overlay over the base QEMU went back to (whose
            # nodes keep their names: the new ones get others).
            await dom.snapshot_create_xml(
                "<domainsnapshot><name>s2</name><disks><disk name='vdb' snapshot='no'/>"
                "</disks></domainsnapshot>",
                disk_only=True,
                no_metadata=True,
            )
            assert chain_in(await dom.xml_desc()) == [str(tmp_path / "disk.s2"), str(base)]
            await dom.destroy()


async def test_no_metadata_and_a_named_overlay_over_a_raw_base(conn, test_guest, tmp_path):
    base = raw_image(tmp_path / "base.img")
    dom = await start_with_disk(conn, test_guest, tmp_path, base, fmt="raw")
    top = tmp_path / "backup-overlay.qcow2"
    xml = (
        "<domainsnapshot><disks><disk name='vda' snapshot='external'>"
        f"<driver type='qcow2'/><source file='{top}'/></disk></disks></domainsnapshot>"
    )
    await dom.snapshot_create_xml(xml, disk_only=True, no_metadata=True)
    assert await dom.list_all_snapshots() == [], "no metadata"
    assert backing_of(top) == str(base)
    assert layers(await dom.xml_desc()) == [(str(base), "raw")]
    assert sources(await dom.xml_desc())["vda"] == (str(top), "qcow2")
    # QEMU writes into the overlay only: the base is a stable copy for the backup.
    before = digest(base)
    [qdev] = [
        b["qdev"]
        for b in await dom.qmp("query-block")
        if (b.get("inserted") or {}).get("file") == str(top)
    ]
    said = await dom.qmp(
        "human-monitor-command", {"command-line": f'qemu-io -d {qdev} "write -P 0xee 2M 64k"'}
    )
    assert said == "", said  # (what qemu-io prints goes to QEMU's own output)
    assert digest(base) == before
    await dom.destroy()
    assert holds(top, 0xEE, 2 * MiB)


async def test_a_failure_on_the_second_disk_leaves_the_first_untouched(conn, test_guest, tmp_path):
    first = image_with_data(tmp_path / "first.qcow2", 16 * MiB, at=0)
    second = image_with_data(tmp_path / "second.qcow2", 16 * MiB, at=0)
    devices = disk_xml(first) + disk_xml(second, "vdb")
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
    await dom.start(paused=True)
    live = await dom.xml_desc()
    nodes = len(await dom.qmp("query-named-block-nodes"))
    # The second overlay cannot be made (its directory does not exist): the first one,
    # made already, goes again.
    missing = tmp_path / "no-such-dir" / "second.s1"
    xml = (
        "<domainsnapshot><name>s1</name><disks>"
        f"<disk name='vdb'><source file='{missing}'/></disk></disks></domainsnapshot>"
    )
    with pytest.raises(asvirt.AsvirtError, match="external snapshot file"):
        await dom.snapshot_create_xml(xml, disk_only=True)
    assert not (tmp_path / "first.s1").exists(), "no overlay left behind"
    # QEMU refuses the second (reused) overlay: not a qcow2 image. The switch never happens.
    made = overlay(tmp_path / "first.ov", first)
    bogus = tmp_path / "second.ov"
    bogus.write_bytes(b"not an image" * 1000)
    xml = (
        "<domainsnapshot><name>s1</name><disks>"
        f"<disk name='vda'><source file='{made}'/></disk>"
        f"<disk name='vdb'><source file='{bogus}'/></disk></disks></domainsnapshot>"
    )
    with pytest.raises(asvirt.AsvirtError, match="not in qcow2 format"):
        await dom.snapshot_create_xml(xml, disk_only=True, reuse_external=True)
    assert await dom.xml_desc() == live
    assert len(await dom.qmp("query-named-block-nodes")) == nodes, "the new nodes went again"
    assert made.exists() and bogus.exists(), "files the caller made are left to the caller"
    assert await dom.list_all_snapshots() == []
    await dom.resume()
    await dom.suspend()
    assert sources(await dom.xml_desc(inactive=True))["vda"] == (str(first), "qcow2")


async def test_refusals_change_nothing(conn, test_guest, tmp_path):
    base = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    dom = await start_with_disk(conn, test_guest, tmp_path, base)
    live = await dom.xml_desc()
    taken = tmp_path / "disk.s1"
    taken.write_bytes(b"mine")
    with pytest.raises(asvirt.OperationInvalidError, match="already exists"):
        await dom.snapshot_create_xml(DISK_ONLY, disk_only=True)
    assert taken.read_bytes() == b"mine"
    taken.unlink()
    os.symlink(tmp_path / "elsewhere", taken)
    with pytest.raises(asvirt.InvalidArgError, match="symbolic link"):
        await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, reuse_external=True)
    with pytest.raises(asvirt.InvalidArgError, match="symbolic link"):
        await dom.snapshot_create_xml(DISK_ONLY, disk_only=True)
    assert not (tmp_path / "elsewhere").exists()
    taken.unlink()
    with pytest.raises(asvirt.InvalidArgError, match="missing external snapshot file"):
        await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, reuse_external=True)
    with pytest.raises(asvirt.OperationUnsupportedError, match="memspec"):
        await dom.snapshot_create_xml(
            f"<domainsnapshot><memory snapshot='external' file='{tmp_path}/mem'/></domainsnapshot>",
            disk_only=True,
        )
    with pytest.raises(asvirt.ConfigUnsupportedError, match="mixing internal and external"):
        await dom.snapshot_create_xml(
            "<domainsnapshot><disks><disk name='vda' snapshot='internal'/></disks>"
            "</domainsnapshot>",
            disk_only=True,
        )
    with pytest.raises(asvirt.OperationUnsupportedError, match="disk_only"):
        await dom.snapshot_create_xml(
            f"<domainsnapshot><disks><disk name='vda'><source file='{taken}'/></disk>"
            "</disks></domainsnapshot>"
        )
    with pytest.raises(asvirt.InvalidArgError, match="absolute path"):
        await dom.snapshot_create_xml(
            "<domainsnapshot><disks><disk name='vda'><source file='rel.qcow2'/></disk>"
            "</disks></domainsnapshot>",
            disk_only=True,
        )
    with pytest.raises(asvirt.OperationUnsupportedError, match="qcow2 overlays"):
        await dom.snapshot_create_xml(
            "<domainsnapshot><disks><disk name='vda'><driver type='raw'/></disk>"
            "</disks></domainsnapshot>",
            disk_only=True,
        )
    with pytest.raises(asvirt.OperationInvalidError, match="not running"):
        await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, quiesce=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("disk")) == ["disk.qcow2"]
    assert await dom.xml_desc() == live
    assert await dom.list_all_snapshots() == []


async def test_a_shut_off_domain_is_pointed_at_its_overlays(conn, test_guest, tmp_path):
    base = raw_image(tmp_path / "base.img")
    dom, _ = await define(
        conn,
        test_guest,
        tmp_path,
        domain_type=PAUSED_DOMAIN_TYPE,
        devices=disk_xml(base, fmt="raw"),
    )
    snap = await dom.snapshot_create_xml(DISK_ONLY, disk_only=True)
    made = tmp_path / "base.s1"
    ran = await trio.run_process(
        ["qemu-img", "info", "--output=json", "-U", str(made)], capture_stdout=True
    )
    info = json.loads(ran.stdout)
    assert (info["format"], info["backing-filename"], info["backing-filename-format"]) == (
        "qcow2",
        str(base),
        "raw",
    )
    assert info["virtual-size"] == 16 * MiB
    assert sources(await dom.xml_desc())["vda"] == (str(made), "qcow2")
    assert (await snap.info()).state == "disk-snapshot"
    # It boots on the overlay, the base below it.
    await dom.start(paused=True)
    assert layers(await dom.xml_desc()) == [(str(base), "raw")]
    await dom.destroy()


@pytest.mark.guest
async def test_a_running_guest_backed_up_by_the_recipe(root, fast_config, test_guest, tmp_path):
    """The whole recipe on a booted guest that writes while its base is copied."""
    base = raw_image(tmp_path / "base.img")
    top = tmp_path / "backup.qcow2"
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom, _ = await define(
                conn, test_guest, tmp_path, devices=AGENT_CHANNEL_XML + disk_xml(base, fmt="raw")
            )
            async with conn.subscribe(dom, kinds={K.AGENT_LIFECYCLE}) as events:
                await dom.start()
                await collect_until(
                    events,
                    lambda seen: any(e.data["state"] == State.CONNECTED for e in seen),
                    timeout=120,
                )
            await guest_write(dom, 0xC1, MiB)
            snap = await dom.snapshot_create_xml(
                f"<domainsnapshot><disks><disk name='vda'><source file='{top}'/></disk>"
                "</disks></domainsnapshot>",
                disk_only=True,
                no_metadata=True,
                quiesce=True,  # (this guest's initramfs has nothing to freeze: it is asked)
            )
            assert snap.name and await dom.list_all_snapshots() == []
            assert (await dom.state())[0] is asvirt.DomainState.RUNNING
            copy = digest(base)  # (the backup tool's copy)
            assert base.read_bytes()[MiB : MiB + 65536] == b"\xc1" * 65536
            await guest_write(dom, 0xC2, 2 * MiB)
            assert digest(base) == copy, "the base does not change while the guest writes"
            async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
                await dom.block_commit("vda", active=True)
                assert (await events.receive()).data["status"] == "ready"
                await dom.block_job_abort("vda", pivot=True)
            assert sources(await dom.xml_desc())["vda"] == (str(base), "raw")
            assert layers(await dom.xml_desc()) == []
            assert sources(await dom.xml_desc(inactive=True))["vda"] == (str(base), "raw")
            assert base.read_bytes()[2 * MiB : 2 * MiB + 65536] == b"\xc2" * 65536
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert sources(await dom.xml_desc())["vda"] == (str(base), "raw")
            await guest_write(dom, 0xC3, 3 * MiB)  # the guest writes to its base again
            assert base.read_bytes()[3 * MiB : 3 * MiB + 65536] == b"\xc3" * 65536
            await dom.destroy()


async def guest_write(dom: asvirt.Domain, pattern: int, offset: int) -> None:
    """The guest writes 64 KiB of byte ``pattern`` at ``offset`` of its vda and syncs it
    (through its agent's guest-exec; waits until the command has exited)."""
    script = (
        f"busybox tr '\\000' '\\{pattern:03o}' < /dev/zero | "
        f"busybox dd of=/dev/vda bs=65536 count=1 seek={offset // 65536} conv=fsync "
        "iflag=fullblock"
    )
    run = {"path": "/bin/busybox", "arg": ["sh", "-c", script], "capture-output": True}
    reply = json.loads(
        await dom.agent_command(json.dumps({"execute": "guest-exec", "arguments": run}))
    )
    pid = reply["return"]["pid"]
    status: dict = {}
    for _ in range(600):  # guest-exec-status is how a caller learns the command ended
        status = json.loads(
            await dom.agent_command(
                json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            )
        )["return"]
        if status["exited"]:
            break
    assert status.get("exited") and status.get("exitcode") == 0, status


def test_cli_snapshot_create_as_disk_only(root, fast_config, test_guest, tmp_path):
    base = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    xml = tmp_path / "vm1.xml"
    xml.write_text(paused_xml(test_guest, tmp_path, devices=disk_xml(base)))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "vm1", "--paused")
    try:
        top = tmp_path / "cli.qcow2"
        out = run_cli(
            root,
            "snapshot-create-as",
            "vm1",
            "backup",
            "--disk-only",
            "--atomic",
            "--no-metadata",
            "--diskspec",
            f"vda,snapshot=external,file={top},driver=qcow2",
        ).stdout
        assert out == "Domain snapshot backup created\n"
        assert f" vda      {top}" in run_cli(root, "domblklist", "vm1").stdout
        assert run_cli(root, "snapshot-list", "vm1", "--name").stdout.strip() == ""
        out = run_cli(root, "snapshot-create", "vm1", "--disk-only").stdout
        name = out.removeprefix("Domain snapshot ").removesuffix(" created\n")
        assert out.endswith(" created\n") and name.isdigit()
        assert run_cli(root, "snapshot-list", "vm1", "--name").stdout.split() == [name]
        assert (tmp_path / f"cli.{name}").exists()
        out = run_cli(root, "blockcommit", "vm1", "vda", "--active", "--pivot").stdout
        assert out == "\nSuccessfully pivoted\n\n"
        assert f" vda      {base}" in run_cli(root, "domblklist", "vm1").stdout
    finally:
        run_cli(root, "destroy", "vm1", check=False)
    assert holds(base, 0xAB, 0)


async def test_the_test_driver_refuses_external_snapshots():
    async with asvirt.open("test:///default") as conn:
        dom = await conn.lookup_by_name("test")
        with pytest.raises(asvirt.AsvirtError) as err:
            await dom.snapshot_create_xml(DISK_ONLY, disk_only=True)
        assert "external" in str(err.value) or "simulate" in str(err.value)
        assert await dom.list_all_snapshots() == []
