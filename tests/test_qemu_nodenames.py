"""QEMU's block node names after block jobs: a disk that pivoted (an active commit back onto
its base, the backup recipe's second half) still knows its nodes, and nothing that comes
after names a node QEMU already has.

A paused QEMU with real qcow2 images is enough; what a user checks: the live XML's
``<source index>``, QEMU's ``query-named-block-nodes`` and ``query-block``, and that the
calls on the pivoted disk work (hotplug, internal snapshot, resize, stats, another backup
round, detach), with this supervisor and with a fresh one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

import asvirt

from .helpers import MiB, disk_xml, embed_uri, image_with_data, overlay
from .test_qemu_blockjobs import chain_in, cleaned_up, copy_xml
from .test_qemu_extsnap import DISK_ONLY
from .test_qemu_hotplug import disk_el, image, node_names, paused

pytestmark = [pytest.mark.qemu]

K = asvirt.EventKind
SCSI = "<controller type='scsi' model='virtio-scsi'/>"


def source_index(xml: str, target: str) -> str | None:
    disk = disk_el(xml, target)
    assert disk is not None, f"no disk {target}"
    return disk.find("source").get("index")


async def root_node(dom: asvirt.Domain, target: str) -> str:
    """The node QEMU's device of disk ``target`` reads (query-block's inserted node)."""
    disk = disk_el(await dom.xml_desc(), target)
    assert disk is not None
    alias = disk.find("alias").get("name")
    for block in await dom.qmp("query-block"):
        qdev = block.get("qdev") or ""
        if qdev == alias or qdev.startswith(f"/machine/peripheral/{alias}/"):
            return str(block["inserted"]["node-name"])
    raise AssertionError(f"QEMU has no backend of {target}")


async def all_nodes(dom: asvirt.Domain) -> list[str]:
    return [str(n["node-name"]) for n in await dom.qmp("query-named-block-nodes")]


async def backup_round(conn: asvirt.Connection, dom: asvirt.Domain, name: str) -> None:
    """libvirt's recipe on sda: a disk-only snapshot onto an overlay, then the active commit
    back into the base and the pivot onto it."""
    others = [
        d.find("target").get("dev")
        for d in etree.fromstring((await dom.xml_desc()).encode()).iterfind("devices/disk")
    ]
    skip = "".join(f"<disk name='{t}' snapshot='no'/>" for t in others if t != "sda")
    await dom.snapshot_create_xml(
        f"<domainsnapshot><name>{name}</name><disks>{skip}</disks></domainsnapshot>",
        disk_only=True,
        no_metadata=True,
    )
    await commit_and_pivot(conn, dom)


async def commit_and_pivot(conn: asvirt.Connection, dom: asvirt.Domain) -> None:
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_commit("sda", active=True)
        assert (await events.receive()).data["status"] == "ready"
        await dom.block_job_abort("sda", pivot=True, wait=True)


async def check_the_pivoted_disk(
    conn: asvirt.Connection, dom: asvirt.Domain, base: Path, tmp_path: Path, round_: str
) -> None:
    """(a) to (e) on sda, which has just pivoted onto ``base``."""
    live = await dom.xml_desc()
    assert chain_in(live, "sda") == [str(base)]
    # The live XML numbers the node the disk runs on again, as libvirt's does.
    index = source_index(live, "sda")
    assert index is not None, "the pivoted disk knows its node"
    assert await root_node(dom, "sda") == f"libvirt-{index}-format"
    # (a) A plugged disk takes a number no open node has.
    other = image(tmp_path / f"other-{round_}.qcow2")
    before = set(await all_nodes(dom))
    await dom.attach_device(disk_xml(other, "sdb", bus="scsi"))
    live = await dom.xml_desc()
    plugged = source_index(live, "sdb")
    assert plugged is not None and plugged != index
    assert f"libvirt-{plugged}-format" not in before
    assert await root_node(dom, "sdb") == f"libvirt-{plugged}-format"
    # (b) An internal snapshot of both disks (QEMU finds the pivoted disk's qcow2 node).
    snap = await dom.snapshot_create_xml(f"<domainsnapshot><name>i{round_}</name></domainsnapshot>")
    nodes = {n["node-name"]: n for n in await dom.qmp("query-named-block-nodes")}
    taken = nodes[f"libvirt-{index}-format"]["image"].get("snapshots") or []
    assert [s["name"] for s in taken] == [f"i{round_}"]
    await snap.delete()
    # (c) Resize and statistics of the pivoted disk.
    await dom.block_resize("sda", 32 * MiB)
    assert (await dom.block_info("sda")).capacity == 32 * MiB
    stats = await dom.block_stats("sda")
    assert "rd_operations" in stats and await dom.block_stats(str(base)) == stats
    # (d) Another backup round: new overlay nodes, back on the base again.
    await backup_round(conn, dom, f"b{round_}")
    live = await dom.xml_desc()
    assert chain_in(live, "sda") == [str(base)]
    index = source_index(live, "sda")
    assert index is not None
    assert await root_node(dom, "sda") == f"libvirt-{index}-format"
    # (e) A detach closes every node of the disk's chain.
    assert await dom.detach_device(disk_xml(base, "sda", bus="scsi")) is True
    assert disk_el(await dom.xml_desc(), "sda") is None
    left = [n for n in await dom.qmp("query-named-block-nodes") if n.get("file") == str(base)]
    assert left == [], "no node of the detached disk's image is left open"
    assert await node_names(dom, f"libvirt-{index}-") == []
    # The disk goes in again (its image is no longer locked by a forgotten node).
    await dom.attach_device(disk_xml(base, "sda", bus="scsi"))
    assert await dom.detach_device(disk_xml(other, "sdb", bus="scsi")) is True


async def test_a_pivoted_disk_keeps_its_node_names(root, fast_config, test_guest, tmp_path):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await paused(
                conn, test_guest, tmp_path, devices=SCSI + disk_xml(base, "sda", bus="scsi")
            )
            await backup_round(conn, dom, "s1")
            await check_the_pivoted_disk(conn, dom, base, tmp_path, "1")
            await backup_round(conn, dom, "s2")
        # (f) A fresh supervisor finds the disk's node in the status file.
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            index = source_index(await dom.xml_desc(), "sda")
            assert index is not None
            assert await root_node(dom, "sda") == f"libvirt-{index}-format"
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            await check_the_pivoted_disk(conn, dom, base, tmp_path, "2")
            await dom.destroy()


async def test_a_commit_onto_a_backing_file_qemu_opened(root, fast_config, test_guest, tmp_path):
    """A chain the image itself names (QEMU opens its backing file): after the pivot the
    disk runs on a node QEMU named, which hotplug, snapshots and detach find all the same."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top = overlay(tmp_path / "top.qcow2", base)
    async with cleaned_up(root), asvirt.open(embed_uri(root)) as conn:
        dom = await paused(
            conn, test_guest, tmp_path, devices=SCSI + disk_xml(top, "sda", bus="scsi")
        )
        await commit_and_pivot(conn, dom)
        assert chain_in(await dom.xml_desc(), "sda") == [str(base)]
        other = image(tmp_path / "other.qcow2")
        await dom.attach_device(disk_xml(other, "sdb", bus="scsi"))
        assert await root_node(dom, "sdb") == (
            f"libvirt-{source_index(await dom.xml_desc(), 'sdb')}-format"
        )
        snap = await dom.snapshot_create_xml("<domainsnapshot><name>i1</name></domainsnapshot>")
        await snap.delete()
        await dom.block_resize("sda", 32 * MiB)
        assert (await dom.block_info("sda")).capacity == 32 * MiB
        assert await dom.detach_device(disk_xml(base, "sda", bus="scsi")) is True
        left = [n for n in await dom.qmp("query-named-block-nodes") if n.get("file") == str(base)]
        assert left == []
        await dom.destroy()


async def test_a_detach_on_an_overlay_closes_its_base_too(conn, test_guest, tmp_path):
    """A disk still on an external snapshot's overlay: its base's nodes (the command line's)
    go with it, and the base can be plugged in again at once."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    dom = await paused(conn, test_guest, tmp_path, devices=SCSI + disk_xml(base, "sda", bus="scsi"))
    await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, no_metadata=True)
    live = await dom.xml_desc()
    store = disk_el(live, "sda").find("backingStore")
    assert (source_index(live, "sda"), store.get("index")) == ("2", "1")
    assert store.find("source").get("file") == str(base)
    assert await dom.detach_device(disk_xml(tmp_path / "base.s1", "sda", bus="scsi")) is True
    assert await node_names(dom, "libvirt-") == []
    await dom.attach_device(disk_xml(base, "sda", bus="scsi"))
    index = source_index(await dom.xml_desc(), "sda")
    assert await root_node(dom, "sda") == f"libvirt-{index}-format"


async def test_a_block_copy_pivot_takes_a_number(root, fast_config, test_guest, tmp_path):
    """The copy a pivot moves the disk onto is a node with its number, in the live XML and
    for a fresh supervisor; another disk plugged afterwards takes the next."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    copy = tmp_path / "copy.qcow2"
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await paused(
                conn, test_guest, tmp_path, devices=SCSI + disk_xml(base, "sda", bus="scsi")
            )
            async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
                await dom.block_copy("sda", copy_xml(copy))
                assert (await events.receive()).data["status"] == "ready"
                await dom.block_job_abort("sda", pivot=True, wait=True)
            live = await dom.xml_desc()
            assert disk_el(live, "sda").find("source").get("file") == str(copy)
            assert source_index(live, "sda") == "2"
            assert await root_node(dom, "sda") == "libvirt-2-format"
            assert await node_names(dom, "libvirt-1-") == [], "the image it left is closed"
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert source_index(await dom.xml_desc(), "sda") == "2"
            await dom.attach_device(disk_xml(image(tmp_path / "b.qcow2"), "sdb", bus="scsi"))
            assert source_index(await dom.xml_desc(), "sdb") == "3"
            assert await dom.detach_device(disk_xml(copy, "sda", bus="scsi")) is True
            left = [n for n in await dom.qmp("query-named-block-nodes") if n["file"] == str(copy)]
            assert left == []
            await dom.destroy()


async def test_a_commit_below_the_top_closes_the_layer_it_removes(conn, test_guest, tmp_path):
    """Two backup rounds left on their overlays: committing the middle one into the base
    takes it out of the chain, and its nodes are closed; the others keep their numbers."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    dom = await paused(conn, test_guest, tmp_path, devices=SCSI + disk_xml(base, "sda", bus="scsi"))
    await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, no_metadata=True)
    second = "<domainsnapshot><name>s2</name></domainsnapshot>"
    await dom.snapshot_create_xml(second, disk_only=True, no_metadata=True)
    assert await node_names(dom, "libvirt-2-") != []
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_commit("sda", top=str(tmp_path / "base.s1"))
        assert (await events.receive()).data["status"] == "completed"
    live = await dom.xml_desc()
    assert chain_in(live, "sda") == [str(tmp_path / "base.s2"), str(base)]
    store = disk_el(live, "sda").find("backingStore")
    assert (source_index(live, "sda"), store.get("index")) == ("3", "1")
    assert await node_names(dom, "libvirt-2-") == [], "the committed overlay is closed"
    assert await dom.detach_device(disk_xml(tmp_path / "base.s2", "sda", bus="scsi")) is True
    assert await node_names(dom, "libvirt-") == []


async def test_a_new_medium_after_a_pivot_takes_a_free_number(conn, test_guest, tmp_path):
    """A CD-ROM numbered below the disk at start gets a medium after the disk went through
    a backup round: its nodes take a number the base's nodes (still open) do not have."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    iso = image(tmp_path / "medium.qcow2")
    empty_cd = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
    devices = disk_xml(base, "vda") + empty_cd
    dom = await paused(conn, test_guest, tmp_path, devices=devices)
    await dom.snapshot_create_xml(DISK_ONLY, disk_only=True, no_metadata=True)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_commit("vda", active=True)
        assert (await events.receive()).data["status"] == "ready"
        await dom.block_job_abort("vda", pivot=True, wait=True)
    before = set(await all_nodes(dom))
    await dom.update_device(disk_xml(iso, "hdc", device="cdrom", bus="ide", extra="<readonly/>"))
    live = await dom.xml_desc()
    index = source_index(live, "hdc")
    assert index is not None and index != source_index(live, "vda")
    assert f"libvirt-{index}-format" not in before
    assert await root_node(dom, "hdc") == f"libvirt-{index}-format"
