"""Statistics of real QEMUs, as a libvirt user reads them: domstats, domblkstat, domifstat,
dommemstat, domblkinfo, vncdisplay, domdisplay (the API's shape on every driver is in the
shared suite, test_api_contract.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt.cli.main import main as cli_main
from asvirt.conf.devices import Disk
from asvirt.drivers.qemu import stats as hoststats

from .guest import TestGuest, paused_xml, wait_for_serial
from .helpers import (
    disk_xml,
    embed_uri,
    lifecycle,
    qemu_img,
    qemu_pid,
    wait_for,
    write_config,
)
from .netns import lab

DISK_BYTES = 64 * 1024 * 1024
VNC = "<graphics type='vnc' autoport='yes'/>"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", path, str(DISK_BYTES))
    return path


def sizes(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"allocation": st.st_blocks * 512, "capacity": DISK_BYTES, "physical": st.st_size}


# -- what is read from the host, without QEMU -------------------------------------------------


def test_tap_counters_are_reported_from_the_guests_side():
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets"
        " errs drop fifo colls carrier compressed\n"
        "  vnet0:  1000  10  1  2  0  0  0  0   5000  50  3  4  0  0  0  0\n"
    )
    table = hoststats.parse_netdev(text)
    # What the host's tap received, the guest transmitted.
    assert hoststats.tap_stats(table["vnet0"]) == asvirt.InterfaceStats(
        rx_bytes=5000, rx_packets=50, rx_errs=3, rx_drop=4,
        tx_bytes=1000, tx_packets=10, tx_errs=1, tx_drop=2,
    )  # fmt: skip


def test_balloon_statistics_are_libvirts_names_and_units():
    unset = (1 << 64) - 1
    reply = {
        "stats": {
            "stat-swap-in": 4096,
            "stat-swap-out": 0,
            "stat-major-faults": 7,
            "stat-minor-faults": 9,
            "stat-free-memory": 2048 * 1024,
            "stat-total-memory": 4096 * 1024,
            "stat-available-memory": 3072 * 1024,
            "stat-disk-caches": 1024 * 1024,
            "stat-htlb-pgalloc": unset,
            "stat-htlb-pgfail": unset,
        },
        "last-update": 1700000000,
    }
    assert hoststats.guest_memory(reply) == {
        "swap_in": 4,
        "swap_out": 0,
        "major_fault": 7,
        "minor_fault": 9,
        "unused": 2048,
        "available": 4096,
        "usable": 3072,
        "last_update": 1700000000,
        "disk_caches": 1024,
    }


def test_image_sizes(image: Path, tmp_path: Path):
    disk = Disk(target="vda", source=str(image), format="qcow2")
    assert hoststats.image_info(disk) == asvirt.BlockInfo(**sizes(image))
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 8192)
    info = hoststats.image_info(Disk(target="vdb", source=str(raw), format="raw"))
    assert info.capacity == info.physical == 8192
    with pytest.raises(asvirt.SystemCallError):
        hoststats.image_info(Disk(target="vdc", source=str(tmp_path / "nope"), format="raw"))


def test_image_sizes_are_current_when_remembered(image: Path):
    # Remembered as soon as read (not only 2 s after the image's last change), to test
    # that a change is seen all the same: a resize writes the header (and the times).
    sizes_of = hoststats.ImageSizes(racy_ns=0)
    disk = Disk(target="vda", source=str(image), format="qcow2")
    assert sizes_of.info(disk) == asvirt.BlockInfo(**sizes(image))
    for size in (2 * DISK_BYTES, 3 * DISK_BYTES):
        qemu_img("resize", "-f", "qcow2", image, str(size))
        assert sizes_of.info(disk).capacity == size
    assert sizes_of.info(disk) == hoststats.image_info(disk)


# -- a paused QEMU ------------------------------------------------------------------------------


@pytest.mark.qemu
async def test_a_paused_domains_statistics(conn, test_guest, tmp_path, image):
    xml = paused_xml(
        test_guest, tmp_path, devices=disk_xml(image) + VNC, memballoon="virtio", balloon_period=5
    )
    dom = await conn.create_xml(xml, paused=True)
    ((found, params),) = await conn.get_all_domain_stats()
    assert found == dom
    expected = [
        "state.state", "state.reason",
        "cpu.time", "cpu.user", "cpu.system", "cpu.cache.monitor.count",
        "balloon.current", "balloon.maximum", "balloon.last-update", "balloon.rss",
        "vcpu.current", "vcpu.maximum", "vcpu.0.state", "vcpu.0.time", "vcpu.0.wait",
        "net.count",
        "block.count", "block.0.name", "block.0.path",
        "block.0.rd.reqs", "block.0.rd.bytes", "block.0.rd.times",
        "block.0.wr.reqs", "block.0.wr.bytes", "block.0.wr.times",
        "block.0.fl.reqs", "block.0.fl.times",
        "block.0.allocation", "block.0.capacity", "block.0.physical",
    ]  # fmt: skip
    assert [k for k in params if k != "vcpu.0.delay"] == expected
    assert params["cpu.time"] > 0
    assert params["balloon.last-update"] == 0  # the guest never ran to report anything
    assert params["vcpu.0.state"] == 1
    assert (params["block.0.name"], params["block.0.path"]) == ("vda", str(image))
    # The guest never ran: it read and wrote nothing.
    assert [params[f"block.0.{k}"] for k in ("rd.reqs", "rd.bytes", "wr.reqs", "fl.reqs")] == [
        0
    ] * 4
    assert {k: params[f"block.0.{k}"] for k in sizes(image)} == sizes(image)

    # One disk's counters, by target or source path; all disks summed.
    blk = await dom.block_stats("vda")
    assert list(blk) == [
        "rd_operations", "rd_bytes", "wr_operations", "wr_bytes",
        "flush_operations", "rd_total_times", "wr_total_times", "flush_total_times",
    ]  # fmt: skip
    assert await dom.block_stats(str(image)) == blk == await dom.block_stats("")
    assert await dom.block_info("vda") == asvirt.BlockInfo(**sizes(image))
    mem = await dom.memory_stats()
    assert list(mem) == ["actual", "last_update", "rss"] and mem["actual"] == 131072

    # <stats period> is QEMU's polling interval from the start, and follows the API.
    interval = {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"}
    assert await dom.qmp("qom-get", interval) == 5
    await dom.set_memory_stats_period(7)
    assert await dom.qmp("qom-get", interval) == 7

    # VNC: the live XML says where QEMU listens, as libvirt's does.
    vnc = await dom.qmp("query-vnc")
    port = int(vnc["service"])
    assert f"<graphics type='vnc' port='{port}' autoport='yes' listen='127.0.0.1'>" in (
        await dom.xml_desc()
    )
    assert "<listen type='address' address='127.0.0.1'/>" in await dom.xml_desc()


@pytest.mark.qemu
async def test_a_shut_off_domain_reports_its_definition(conn, test_guest, tmp_path, image):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=disk_xml(image)))
    params = await dom.stats()
    assert params == {
        "state.state": asvirt.DomainState.SHUTOFF,
        "state.reason": 0,
        "balloon.current": 131072,
        "balloon.maximum": 131072,
        "vcpu.current": 1,
        "vcpu.maximum": 1,
        "block.count": 1,
        "block.0.name": "vda",
        "block.0.path": str(image),
        **{f"block.0.{k}": v for k, v in sizes(image).items()},
    }
    assert await dom.block_info("vda") == asvirt.BlockInfo(**sizes(image))
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.block_stats("vda")


@pytest.mark.qemu
async def test_a_qemu_that_does_not_answer_holds_up_only_its_own_figures(
    root, test_guest, tmp_path, image
):
    write_config(root, "[qemu]\ndestroy_grace = 2.0\nstats_timeout = 0.5\n")
    async with asvirt.open(embed_uri(root)) as conn:
        hung = await conn.create_xml(
            paused_xml(test_guest, tmp_path, "hung", devices=disk_xml(image), memballoon="virtio"),
            paused=True,
        )
        fine = await conn.create_xml(paused_xml(test_guest, tmp_path, "fine"), paused=True)
        assert (await hung.stats())["balloon.last-update"] == 0  # QEMU's answer
        pid = qemu_pid(root, "hung")
        os.kill(pid, signal.SIGSTOP)
        try:
            with trio.fail_after(5):
                records = dict(await conn.get_all_domain_stats())
        finally:
            os.kill(pid, signal.SIGCONT)
        # What needs no answer from QEMU is there; its block counters are not.
        assert records[hung]["state.state"] == asvirt.DomainState.PAUSED
        assert records[hung]["block.0.capacity"] == DISK_BYTES
        assert "block.0.rd.reqs" not in records[hung]
        # Nor does the balloon of a guest that never ran: QEMU's answer cannot have changed.
        assert records[hung]["balloon.last-update"] == 0
        assert "balloon.unused" not in records[hung]
        assert "vcpu.0.time" in records[fine]
        await hung.destroy()
        await fine.destroy()


# -- the command line, as virsh prints it -------------------------------------------------------


def test_cli_on_the_test_driver(capsys):
    def run(*args: str) -> str:
        assert cli_main(["-c", "test:///default", *args]) == 0
        return capsys.readouterr().out

    assert run("domstats", "--state", "test") == (
        "Domain: 'test'\n  state.state=1\n  state.reason=1\n\n"
    )
    lines = run("domstats", "--state", "--balloon").splitlines()
    assert lines[:4] == ["Domain: 'test'", "  state.state=1", "  state.reason=1",
                         "  balloon.current=2097152"]  # fmt: skip
    assert lines[-2:] == ["  balloon.rss=1048576", ""]
    assert run("dommemstat", "test") == (
        "actual 2097152\nswap_in 0\nswap_out 0\nmajor_fault 0\nminor_fault 0\n"
        "unused 1048576\navailable 2097152\nusable 1048576\nlast_update 627319920\n"
        "disk_caches 262144\nhugetlb_pgalloc 0\nhugetlb_pgfail 0\nrss 1048576\n\n"
    )
    assert run("domblkinfo", "test", "vda") == (
        "Capacity:       1099506450432\n"
        "Allocation:     1099511627776\n"
        "Physical:       1099511627776\n\n"
    )
    assert run("domblkinfo", "test", "vda", "--human").splitlines()[:3] == [
        "Capacity:       1023.995 GiB",
        "Allocation:     1.000 TiB",
        "Physical:       1.000 TiB",
    ]
    blk = run("domblkstat", "test", "vda").splitlines()
    assert [line.split()[:2] for line in blk[:5]] == [
        ["vda", "rd_req"], ["vda", "rd_bytes"], ["vda", "wr_req"], ["vda", "wr_bytes"],
        ["vda", "errs"],
    ]  # fmt: skip
    human = run("domblkstat", "test", "vda", "--human").splitlines()
    assert human[0] == "Device: vda"
    assert human[1].startswith(" number of read operations:      ")
    assert cli_main(["-c", "test:///default", "domifstat", "test", "vnet0"]) == 1
    assert "not a known interface" in capsys.readouterr().err
    assert cli_main(["-c", "test:///default", "vncdisplay", "test"]) == 1
    assert "Is this domain using VNC?" in capsys.readouterr().err


# -- a booted guest: its balloon's statistics, its NIC's counters ------------------------------


@pytest.mark.qemu
@pytest.mark.guest
def test_a_booted_guest_reports_memory_and_traffic(root, tmp_path, test_guest: TestGuest):
    with lab() as net:
        net.run("ip", "link", "add", "statbr", "type", "bridge")
        net.run("ip", "link", "set", "statbr", "up")
        xml = tmp_path / "g.xml"
        serial = tmp_path / "g.serial"
        nic = (
            "<interface type='bridge'><source bridge='statbr'/><target dev='g-tap'/>"
            "<model type='virtio'/></interface>"
        )
        xml.write_text(
            test_guest.xml(
                "g",
                serial,
                memballoon="virtio",
                balloon_period=1,
                devices=nic,
                cmdline="asvirt.net=dhcp",
            )
        )

        def cli(*args: str) -> str:
            return net.cli(root, *args).stdout

        cli("create", str(xml))
        try:
            trio.run(wait_for_serial, serial)

            def memstats() -> dict[str, int]:
                lines = cli("dommemstat", "g").split("\n")
                return {k: int(v) for k, v in (ln.split() for ln in lines if ln)}

            # The guest's balloon driver reports within a period or two of booting.
            trio.run(lambda: wait_for(lambda: "unused" in memstats(), timeout=30, interval=0.5))
            mem = memstats()
            assert next(iter(mem)) == "actual" and list(mem)[-1] == "rss"
            assert 0 < mem["unused"] <= mem["available"] <= mem["actual"] == 131072
            assert mem["last_update"] > 0

            # udhcpc sends DHCP requests: the guest transmits, the host's tap receives.
            def host(counter: str) -> int:
                path = f"/sys/class/net/g-tap/statistics/{counter}"
                return int(net.run("cat", path).stdout)

            def ifstat() -> dict[str, int]:
                lines = cli("domifstat", "g", "g-tap").split("\n")
                return {ln.split()[1]: int(ln.split()[2]) for ln in lines if ln}

            trio.run(lambda: wait_for(lambda: ifstat()["tx_packets"] > 0, timeout=30))
            before = host("rx_packets")
            guest_tx = ifstat()["tx_packets"]
            after = host("rx_packets")
            assert before <= guest_tx <= after
            stats = cli("domstats", "--interface", "--balloon", "g")
            assert "  net.count=1\n  net.0.name=g-tap\n  net.0.rx.bytes=" in stats
            assert "  balloon.unused=" in stats and "  balloon.last-update=" in stats
        finally:
            net.cli(root, "destroy", "g", check=False)


@pytest.mark.qemu
@pytest.mark.guest
async def test_balloon_statistics_without_a_stats_period(conn, test_guest, tmp_path):
    # Without <stats period> QEMU never asks the guest for statistics, but the guest's
    # balloon driver reports once as it starts, and QEMU keeps that report: libvirt shows
    # it, and so does asvirt. Before the guest first runs, QEMU has nothing from it.
    serial = tmp_path / "g.serial"
    xml = test_guest.xml("g", serial, memballoon="virtio")
    dom = await conn.create_xml(xml, paused=True)
    balloon = asvirt.StatsGroup.BALLOON
    try:
        never_ran = {"balloon.current": 131072, "balloon.maximum": 131072, "balloon.last-update": 0}
        for _ in range(2):  # the second call is answered without asking QEMU again
            params = await dom.stats(balloon)
            assert {k: v for k, v in params.items() if k != "balloon.rss"} == never_ran
            assert params["balloon.rss"] > 0
        await dom.resume()
        await wait_for_serial(serial)  # the balloon driver is loaded by then
        with trio.fail_after(30):  # QEMU reads the report when it processes the queue
            while "balloon.unused" not in (params := await dom.stats(balloon)):
                await trio.sleep(0.1)
        assert 0 < params["balloon.unused"] <= params["balloon.available"] <= 131072
        assert params["balloon.last-update"] > 0
        # What QEMU itself answers (no period: the report stays what it was).
        stats = {"path": "/machine/peripheral/balloon0", "property": "guest-stats"}
        interval = {
            "path": "/machine/peripheral/balloon0",
            "property": "guest-stats-polling-interval",
        }
        assert await dom.qmp("qom-get", interval) == 0
        reported = hoststats.guest_memory(await dom.qmp("qom-get", stats))
        named = {("last-update" if k == "last_update" else k): v for k, v in reported.items()}
        assert {k: params[f"balloon.{k}"] for k in named} == named
        assert set(params) == {
            "balloon.current", "balloon.maximum", "balloon.rss", *(f"balloon.{k}" for k in named)
        }  # fmt: skip
        mem = await dom.memory_stats()
        assert {k: mem[k] for k in reported} == reported
    finally:
        await dom.destroy()


def _unread_monitor_bytes(pid: int) -> int:
    """What QEMU ``pid`` has not read yet of what its monitor's peer wrote (its end of the
    connected QMP socket's receive queue, as ``ss`` reports it)."""
    out = subprocess.run(
        ["ss", "-x", "-n", "-p", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    queued = 0
    for line in out.splitlines():
        if f",pid={pid}," in line:
            queued += int(line.split()[1])  # Netid, Recv-Q, ...
    return queued


@pytest.mark.qemu
async def test_a_qemu_killed_during_the_call_is_reported_as_libvirt_does(
    conn, root, test_guest, tmp_path, image
):
    # libvirt's getAllDomainStats neither fails nor waits for a domain whose QEMU dies
    # meanwhile: the monitor's end only leaves its figures out, and a domain found stopped
    # is reported as a shut off one (a persistent domain) or not at all (a transient one).
    dying = await conn.define_xml(
        paused_xml(test_guest, tmp_path, "dying", devices=disk_xml(image), memballoon="virtio")
    )
    await dying.start(paused=True)
    gone = await conn.create_xml(
        paused_xml(test_guest, tmp_path, "gone", memballoon="virtio"), paused=True
    )
    fine = await conn.create_xml(paused_xml(test_guest, tmp_path, "fine"), paused=True)
    pids = [qemu_pid(root, d.name) for d in (dying, gone)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # they read nothing from now on
    found: list[tuple[asvirt.Domain, dict]] = []

    async def call() -> None:
        found.extend(await conn.get_all_domain_stats())

    async with conn.subscribe(kinds={asvirt.EventKind.LIFECYCLE}) as events:
        with trio.fail_after(10):  # well under stats_timeout + the destroy grace
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                # The queries are written: QEMUs die with them unanswered.
                await wait_for(lambda: all(_unread_monitor_bytes(p) > 0 for p in pids))
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            stopped = set()
            async for ev in events:
                if (lifecycle(ev) or ("",))[0] == "STOPPED":
                    stopped.add(ev.domain)
                if stopped == {"dying", "gone"}:
                    break
    records = dict(found)
    assert set(records) == {dying, fine}  # a transient domain that stopped is gone
    assert (records[dying]["state.state"], records[dying]["state.reason"]) == (
        asvirt.DomainState.SHUTOFF,
        asvirt.ShutoffReason.CRASHED.value,
    )
    assert "cpu.time" not in records[dying] and "block.0.rd.reqs" not in records[dying]
    assert records[dying]["block.0.capacity"] == DISK_BYTES  # what the definition says
    assert "vcpu.0.time" in records[fine]
