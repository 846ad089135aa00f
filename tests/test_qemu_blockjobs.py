"""Block resize and block jobs on running domains, as virsh and libvirt-python users drive them.

Chains are real qcow2 images made by qemu-img, their data written and read back by qemu-io;
the jobs run in a paused QEMU (they need no guest). What a user checks: the events, in
order, the live XML, what a fresh supervisor shows, and the images once the domain stopped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lxml import etree

import asvirt

from .guest import PAUSED_DOMAIN_TYPE, define, paused_xml, start_with_disk
from .helpers import (
    MiB,
    destroy_all,
    disk_xml,
    embed_uri,
    image_with_data,
    overlay,
    qemu_img,
    run_cli,
)

pytestmark = [pytest.mark.qemu]

K = asvirt.EventKind
J = asvirt.BlockJobType


def write_data(image: Path, pattern: int, offset: int) -> Path:
    """Write 64 KiB of byte ``pattern`` at ``offset`` of the qcow2 ``image`` (qemu-io)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", str(image)],
        check=True,
        capture_output=True,
    )
    return image


def holds(image: Path, pattern: int, offset: int) -> bool:
    """Whether ``image`` reads 64 KiB of ``pattern`` at ``offset`` (with its backing chain,
    if it still has one)."""
    out = subprocess.run(
        ["qemu-io", "-r", "-f", "qcow2", "-c", f"read -P {pattern} {offset} 64k", str(image)],
        capture_output=True,
        text=True,
    )
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout


def backing_of(image: Path) -> str | None:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out).get("backing-filename")


def chain(tmp_path: Path) -> tuple[Path, Path]:
    """base.qcow2 (0xab at 0) <- top.qcow2 (0xcd at 1 MiB), 16 MiB."""
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top = write_data(overlay(tmp_path / "top.qcow2", base), 0xCD, MiB)
    return base, top


def chain_in(xml: str, target: str = "vda") -> list[str] | None:
    """The images of the disk ``target`` as the XML shows them, top first, by following its
    ``<backingStore>`` to the empty one that ends it (None: it shows no chain)."""
    [disk] = etree.fromstring(xml.encode()).xpath(f"devices/disk[target/@dev='{target}']")
    images = [str(disk.find("source").get("file"))]
    store = disk.find("backingStore")
    if store is None:
        return None
    while store.find("source") is not None:
        assert store.get("type") == "file" and store.find("format").get("type") == "qcow2"
        images.append(str(store.find("source").get("file")))
        store = store.find("backingStore")
    assert len(store) == 0 and not store.attrib, "an empty <backingStore/> ends the chain"
    return images


async def stop(dom: asvirt.Domain) -> None:
    """Stop the domain: its images can then be read as they are."""
    await dom.destroy()


@contextlib.asynccontextmanager
async def cleaned_up(root: Path) -> AsyncIterator[None]:
    """Whatever a test that opens supervisors of its own leaves running is destroyed."""
    try:
        yield
    finally:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)


# -- resize --------------------------------------------------------------------------------------


async def test_block_resize_grows_what_the_guest_sees(conn, test_guest, tmp_path):
    image = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    dom = await start_with_disk(conn, test_guest, tmp_path, image)
    await dom.block_resize("vda", 32 * MiB + 1)  # qcow2: rounded up to 512, as libvirt
    assert (await dom.block_info("vda")).capacity == 32 * MiB + 512
    [block] = await dom.qmp("query-block")
    assert block["inserted"]["image"]["virtual-size"] == 32 * MiB + 512
    with pytest.raises(asvirt.InvalidArgError, match="smaller than its current size"):
        await dom.block_resize("vda", 16 * MiB, extend=True)
    with pytest.raises(asvirt.InvalidArgError, match="invalid path: vdz"):
        await dom.block_resize("vdz", 64 * MiB)
    assert (await dom.block_info("vda")).capacity == 32 * MiB + 512, "refusals changed nothing"
    await stop(dom)
    with pytest.raises(asvirt.OperationInvalidError, match="is not running"):
        await dom.block_resize("vda", 64 * MiB)
    assert (await dom.block_info("vda")).capacity == 32 * MiB + 512


# -- pull ----------------------------------------------------------------------------------------


async def test_block_pull_leaves_the_top_whole(conn, test_guest, tmp_path):
    base, top = chain(tmp_path)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    assert chain_in(await dom.xml_desc()) == [str(top), str(base)]
    # The live XML defines the domain again (virsh dumpxml | virsh define): the images
    # name their own backing files, so the configuration keeps no chain.
    await conn.define_xml(await dom.xml_desc())
    assert chain_in(await dom.xml_desc(inactive=True)) is None, "the configuration has none"
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_pull("vda")
        done = await events.receive()
    assert (done.data["disk"], done.data["job"], done.data["status"]) == (
        "vda",
        "pull",
        "completed",
    )
    assert done.describe() == "event 'block-job' for domain 'vm1': Block Pull for vda completed"
    assert await dom.block_job_info("vda") is None
    assert chain_in(await dom.xml_desc()) == [str(top)], "the top stands alone"
    await stop(dom)
    assert backing_of(top) is None
    base.unlink()  # the top needs it no more
    assert holds(top, 0xAB, 0) and holds(top, 0xCD, MiB)


async def test_a_partial_pull_stops_at_its_base(conn, test_guest, tmp_path):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    mid = write_data(overlay(tmp_path / "mid.qcow2", base), 0x11, 2 * MiB)
    top = overlay(tmp_path / "top.qcow2", mid)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    with pytest.raises(asvirt.InvalidArgError, match="could not find base image"):
        await dom.block_pull("vda", base=str(top))
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_pull("vda", base=str(base))  # mid's data into the top; base stays
        assert (await events.receive()).data["status"] == "completed"
    assert chain_in(await dom.xml_desc()) == [str(top), str(base)]
    await stop(dom)
    assert backing_of(top) == str(base) and holds(top, 0x11, 2 * MiB)


async def test_a_base_two_disks_share_is_found_in_the_right_chain(conn, test_guest, tmp_path):
    # QEMU opens the base once for each disk: the pull must name vdb's, not vda's.
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top_a = overlay(tmp_path / "a.qcow2", base)
    mid_b = write_data(overlay(tmp_path / "mid-b.qcow2", base), 0x11, 2 * MiB)
    top_b = overlay(tmp_path / "b.qcow2", mid_b)
    devices = disk_xml(top_a, "vda") + disk_xml(top_b, "vdb")
    dom, _ = await define(
        conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE, devices=devices
    )
    await dom.start(paused=True)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_pull("vdb", base=str(base))
        done = await events.receive()
    assert (done.data["disk"], done.data["status"]) == ("vdb", "completed")
    xml = await dom.xml_desc()
    assert chain_in(xml, "vdb") == [str(top_b), str(base)]
    assert chain_in(xml, "vda") == [str(top_a), str(base)]
    await stop(dom)
    assert holds(top_b, 0x11, 2 * MiB) and backing_of(top_b) == str(base)


async def test_block_pull_without_a_backing_file_is_refused(conn, test_guest, tmp_path):
    image = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    dom = await start_with_disk(conn, test_guest, tmp_path, image)
    with pytest.raises(asvirt.InvalidArgError, match="no backing file to pull from"):
        await dom.block_pull("vda")
    with pytest.raises(asvirt.InvalidArgError, match="has no backing file"):
        await dom.block_commit("vda", active=True)
    assert await dom.block_job_info("vda") is None
    assert await dom.qmp("query-block-jobs") == []


async def test_raw_disk_cannot_be_committed(conn, test_guest, tmp_path):
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-f", "raw", raw, "16M")
    dom = await start_with_disk(conn, test_guest, tmp_path, raw, fmt="raw")
    with pytest.raises(asvirt.InvalidArgError, match="has no backing file"):
        await dom.block_commit("vda", active=True)
    assert await dom.qmp("query-block-jobs") == []


# -- commit --------------------------------------------------------------------------------------


async def test_active_commit_then_pivot_moves_the_disk_onto_its_base(
    root, fast_config, test_guest, tmp_path
):
    base, top = chain(tmp_path)
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await start_with_disk(conn, test_guest, tmp_path, top)
            with pytest.raises(asvirt.InvalidArgError, match="active layer requires active flag"):
                await dom.block_commit("vda")
            async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
                await dom.block_commit("vda", active=True)
                ready = await events.receive()
                assert (ready.data["disk"], ready.data["job"], ready.data["status"]) == (
                    "vda",
                    "active-commit",
                    "ready",
                )
                assert ready.describe().endswith(": Active Block Commit for vda ready")
                info = await dom.block_job_info("vda")
                assert info is not None and info.type is J.ACTIVE_COMMIT and info.ready
                assert info.cur == info.end
                assert chain_in(await dom.xml_desc()) == [str(top), str(base)], "not yet"
                await dom.block_job_abort("vda", pivot=True)
                # Once the call returns, the live XML says where the disk is.
                assert chain_in(await dom.xml_desc()) == [str(base)]
                done = await events.receive()
            assert (done.data["job"], done.data["status"]) == ("active-commit", "completed")
            [block] = await dom.qmp("query-block")
            assert block["inserted"]["file"] == str(base)
            nodes = await dom.qmp("query-named-block-nodes", {"flat": True})
            assert str(top) not in {n["file"] for n in nodes}, "QEMU let the top go"
            # The next boot uses the base too (what the guest writes now goes there only).
            assert chain_in(await dom.xml_desc(inactive=True)) is None
            assert f"<source file='{base}'/>" in await dom.xml_desc(inactive=True)
        # A fresh supervisor, from the status file and QEMU, says the same.
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert chain_in(await dom.xml_desc()) == [str(base)]
            assert await dom.block_job_info("vda") is None
            await stop(dom)
        assert backing_of(base) is None
        assert holds(base, 0xCD, MiB) and holds(base, 0xAB, 0), "the base has the top's data"


async def test_commit_of_a_middle_layer_ends_by_itself(conn, test_guest, tmp_path):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    mid = write_data(overlay(tmp_path / "mid.qcow2", base), 0x11, 2 * MiB)
    top = write_data(overlay(tmp_path / "top.qcow2", mid), 0x22, 3 * MiB)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    with pytest.raises(asvirt.InvalidArgError, match="is not active"):
        await dom.block_commit("vda", top=str(mid), active=True)
    with pytest.raises(asvirt.InvalidArgError, match="could not find image"):
        await dom.block_commit("vda", top=str(tmp_path / "other.qcow2"))
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_commit("vda", top="vda[1]")  # mid, into the bottom (base)
        done = await events.receive()
    assert (done.data["disk"], done.data["job"], done.data["status"]) == (
        "vda",
        "commit",
        "completed",
    )
    assert done.describe().endswith(": Block Commit for vda completed")
    assert chain_in(await dom.xml_desc()) == [str(top), str(base)], "mid is gone"
    await stop(dom)
    assert backing_of(top) == str(base), "mid is out of the chain"
    assert holds(base, 0x11, 2 * MiB) and holds(top, 0x22, 3 * MiB) and holds(top, 0xAB, 0)


async def test_abort_of_a_ready_commit_leaves_everything_as_it_was(conn, test_guest, tmp_path):
    base, top = chain(tmp_path)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_commit("vda", active=True)
        assert (await events.receive()).data["status"] == "ready"
        await dom.block_job_abort("vda")
        ended = await events.receive()
    # QEMU says "completed" for a ready job cancelled; libvirt, and asvirt, "canceled".
    assert (ended.data["job"], ended.data["status"]) == ("active-commit", "canceled")
    assert chain_in(await dom.xml_desc()) == [str(top), str(base)]
    assert f"<source file='{top}'/>" in await dom.xml_desc(inactive=True)
    assert await dom.block_job_info("vda") is None
    await stop(dom)
    assert backing_of(top) == str(base)


# -- copy ----------------------------------------------------------------------------------------


def copy_xml(path: Path, fmt: str = "qcow2") -> str:
    return f"<disk type='file'><driver type='{fmt}'/><source file='{path}'/></disk>"


async def test_block_copy_then_pivot_moves_the_disk_onto_the_copy(conn, test_guest, tmp_path):
    base, top = chain(tmp_path)
    copy = tmp_path / "copy.qcow2"
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_copy("vda", copy_xml(copy))
        ready = await events.receive()
        assert (ready.data["disk"], ready.data["job"], ready.data["status"]) == (
            "vda",
            "copy",
            "ready",
        )
        assert ready.describe().endswith(": Block Copy for vda ready")
        info = await dom.block_job_info("vda")
        assert info is not None and info.type is J.COPY and info.ready
        await dom.block_job_abort("vda", pivot=True)
        assert chain_in(await dom.xml_desc()) == [str(copy)], "a full copy stands alone"
        done = await events.receive()
    assert (done.data["job"], done.data["status"]) == ("copy", "completed")
    assert f"<source file='{copy}'/>" in await dom.xml_desc(inactive=True)
    await stop(dom)
    assert backing_of(copy) is None
    assert holds(copy, 0xAB, 0) and holds(copy, 0xCD, MiB)
    assert backing_of(top) == str(base), "the images it left are as they were"


async def test_block_copy_refuses_what_it_would_overwrite_and_shallow_keeps_the_base(
    conn, test_guest, tmp_path
):
    base, top = chain(tmp_path)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    taken = tmp_path / "taken.qcow2"
    taken.write_bytes(b"precious")
    with pytest.raises(asvirt.OperationInvalidError, match="exists"):
        await dom.block_copy("vda", copy_xml(taken))
    link = tmp_path / "link.qcow2"
    link.symlink_to(tmp_path / "nowhere.qcow2")
    with pytest.raises(asvirt.InvalidArgError, match="symbolic link"):
        await dom.block_copy("vda", copy_xml(link), reuse_ext=True)
    with pytest.raises(asvirt.InvalidArgError, match="missing destination file for disk vda"):
        await dom.block_copy("vda", copy_xml(tmp_path / "absent.qcow2"), reuse_ext=True)
    assert taken.read_bytes() == b"precious" and not (tmp_path / "nowhere.qcow2").exists()
    assert await dom.block_job_info("vda") is None
    shallow = tmp_path / "shallow.qcow2"
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.block_copy("vda", copy_xml(shallow), shallow=True)
        assert (await events.receive()).data["status"] == "ready"
        with pytest.raises(asvirt.OperationInvalidError, match="already in active block job"):
            await dom.block_pull("vda")
        await dom.block_job_abort("vda", pivot=True)
    assert chain_in(await dom.xml_desc()) == [str(shallow), str(base)]
    await stop(dom)
    assert backing_of(shallow) == str(base) and holds(shallow, 0xCD, MiB)


# -- one job per disk, speed, and a job that outlives its supervisor ------------------------------


async def test_a_running_job_is_visible_and_abortable_after_a_restart(
    root, fast_config, test_guest, tmp_path
):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=8 * MiB)
    write_data(base, 0xAB, 12 * MiB)  # two stretches to copy: at 1 byte/s, for days
    top = overlay(tmp_path / "top.qcow2", base)
    async with cleaned_up(root):
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await start_with_disk(conn, test_guest, tmp_path, top)
            await dom.block_pull("vda", bandwidth=1)
            with pytest.raises(asvirt.OperationInvalidError, match="already in active block job"):
                await dom.block_commit("vda", active=True)
            with pytest.raises(asvirt.OperationInvalidError, match="already in active block job"):
                await dom.block_pull("vda")
            info = await dom.block_job_info("vda")
            assert info is not None and (info.type, info.bandwidth, info.ready) == (
                J.PULL,
                1,
                False,
            )
            with pytest.raises(asvirt.OperationUnsupportedError, match="does not support pivot"):
                await dom.block_job_abort("vda", pivot=True)
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            info = await dom.block_job_info("vda")
            assert info is not None and info.type is J.PULL and info.cur < info.end
            await dom.block_job_set_speed("vda", 2)
            info = await dom.block_job_info("vda")
            assert info is not None and info.bandwidth == 2
            async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
                await dom.block_job_abort("vda")
                ended = await events.receive()
            assert (ended.data["disk"], ended.data["status"]) == ("vda", "canceled")
            assert await dom.block_job_info("vda") is None
            with pytest.raises(asvirt.OperationInvalidError, match="does not have an active block"):
                await dom.block_job_abort("vda")
            await stop(dom)
        assert backing_of(top) == str(base), "a cancelled pull leaves the chain"


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_vm(root: Path, fast_config: Path, test_guest, tmp_path: Path):
    """``vm1`` on the chain of :func:`chain` as its vda, started paused by the CLI."""

    base, top = chain(tmp_path)
    xml = tmp_path / "vm1.xml"
    xml.write_text(paused_xml(test_guest, tmp_path, devices=disk_xml(top)))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "vm1", "--paused")
    try:
        yield root, base, top
    finally:
        run_cli(root, "destroy", "vm1", check=False)


def test_cli_blockresize_and_blockpull(cli_vm):
    root, _, top = cli_vm
    out = run_cli(root, "blockresize", "vm1", "vda", "32M").stdout
    assert out == "Block device 'vda' is resized\n\n"
    assert "Capacity:       33554432" in run_cli(root, "domblkinfo", "vm1", "vda").stdout
    bad = run_cli(root, "blockresize", "vm1", "vda", "lots", check=False)
    assert bad.returncode == 1
    assert "Scaled numeric value 'lots' for <size> option is malformed" in bad.stderr
    out = run_cli(root, "blockjob", "vm1", "vda", "--info").stdout
    assert out == "No current block job for vda\n\n"
    pulled = run_cli(root, "blockpull", "vm1", str(top), "--wait", "--verbose")
    assert pulled.stdout == "\nPull complete\n\n"
    assert pulled.stderr.endswith("Block Pull: [100 %]")  # after a carriage return
    run_cli(root, "destroy", "vm1")
    assert backing_of(top) is None and holds(top, 0xAB, 0)


def test_cli_blockcommit_active_pivot(cli_vm):
    root, base, _ = cli_vm
    refused = run_cli(root, "blockcommit", "vm1", "vda", check=False)
    assert refused.returncode == 1
    assert "active layer requires active flag" in refused.stderr
    out = run_cli(root, "blockcommit", "vm1", "vda", "--active", "--pivot").stdout
    assert out == "\nSuccessfully pivoted\n\n"
    rows = run_cli(root, "domblklist", "vm1").stdout
    assert f" vda      {base}" in rows
    run_cli(root, "destroy", "vm1")
    assert holds(base, 0xCD, MiB)


def test_cli_blockjob_info_bandwidth_abort(cli_vm):
    root, _, top = cli_vm
    out = run_cli(root, "blockcommit", "vm1", "vda", "--active", "--bandwidth", "1", "--bytes")
    assert out.stdout == "Active Block Commit started\n\n"
    busy = run_cli(root, "blockpull", "vm1", "vda", check=False)
    assert busy.returncode == 1 and "already in active block job" in busy.stderr
    run_cli(root, "blockjob", "vm1", "vda", "--bandwidth", "2")
    info = run_cli(root, "blockjob", "vm1", "vda", "--info").stdout
    assert info.startswith("Active Block Commit: [")
    assert info.endswith("    Bandwidth limit: 2097152 bytes/s (2.000 MiB/s)\n\n")
    raw = run_cli(root, "blockjob", "vm1", "vda", "--raw").stdout
    assert raw.startswith(" type=active-commit\n bandwidth=2097152\n")
    assert run_cli(root, "blockjob", "vm1", "vda", "--abort").stdout == "\n"
    assert run_cli(root, "blockjob", "vm1", "vda").stdout == "No current block job for vda\n\n"
    assert f" vda      {top}" in run_cli(root, "domblklist", "vm1").stdout


def test_cli_blockcopy_pivot(cli_vm, tmp_path):
    root, base, _ = cli_vm
    copy = tmp_path / "copy.qcow2"
    out = run_cli(root, "blockcopy", "vm1", "vda", "--dest", str(copy), "--shallow", "--pivot")
    assert out.stdout == "\nSuccessfully pivoted\n\n"
    assert f" vda      {copy}" in run_cli(root, "domblklist", "vm1").stdout
    again = run_cli(root, "blockcopy", "vm1", "vda", "--dest", str(copy), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    run_cli(root, "destroy", "vm1")
    assert backing_of(copy) == str(base)


async def test_the_test_driver_refuses_block_jobs():
    async with asvirt.open("test:///default") as conn:
        dom = await conn.lookup_by_name("test")
        with pytest.raises(asvirt.OperationUnsupportedError, match="does not simulate disk"):
            await dom.block_pull("vda")
        with pytest.raises(asvirt.OperationUnsupportedError, match="does not simulate disk"):
            await dom.block_resize("vda", MiB)
