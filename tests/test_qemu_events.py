"""Typed events beyond the lifecycle, each caused for real: QEMU 7.2 and the test guest.

What a user checks for each: the event's kind and data, its virsh wording, and the domain's
state where the event changes it. Disks are real image files made with qemu-img; the one
that fails is a qcow2 image damaged on purpose (an L1 entry pointing at an unaligned L2
table), which QEMU answers with EIO. Booted guests run under TCG; tests that need only a
paused VM use KVM where it works.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable

import pytest

import asvirt
from asvirt import DomainState as S

from .guest import PAUSED_DOMAIN_TYPE, define, start_with_disk, wait_for_serial
from .helpers import (
    MiB,
    collect_until,
    damaged_image,
    disk_xml,
    image_with_data,
    lifecycle,
    overlay,
)

pytestmark = [pytest.mark.qemu]

K = asvirt.EventKind


def kind_seen(kind: asvirt.EventKind, **data: object) -> Callable[[list[asvirt.DomainEvent]], bool]:
    """A ``collect_until`` condition: an event of ``kind`` whose data has ``data``."""

    def done(seen: list[asvirt.DomainEvent]) -> bool:
        return any(
            ev.kind is kind and all((ev.data or {}).get(k) == v for k, v in data.items())
            for ev in seen
        )

    return done


def of_kind(seen: list[asvirt.DomainEvent], kind: asvirt.EventKind) -> list[asvirt.DomainEvent]:
    return [ev for ev in seen if ev.kind is kind]


# -- I/O errors -----------------------------------------------------------------------------------


@pytest.mark.guest
async def test_io_error_with_error_policy_stop_pauses_the_domain(conn, test_guest, tmp_path):
    image = damaged_image(tmp_path / "data.qcow2")
    dom, _ = await define(
        conn,
        test_guest,
        tmp_path,
        action="readdisk",
        devices=disk_xml(image, error_policy="stop"),
    )
    async with conn.subscribe(dom, kinds={K.IO_ERROR, K.LIFECYCLE}) as events:
        await dom.start()
        seen = await collect_until(events, lambda s: ("SUSPENDED", "IOERROR") in map(lifecycle, s))
    # The guest's read may have been split: every part fails alike.
    io_error, *more = of_kind(seen, K.IO_ERROR)
    assert all(ev.data == io_error.data for ev in more)
    assert io_error.data == {
        "device": "vda",
        "alias": "virtio-disk0",
        "path": str(image),
        "node-name": io_error.data["node-name"],
        "operation": "read",
        "action": "stop",
        "reason": "Input/output error",
        "nospace": False,
    }
    assert io_error.data["node-name"].startswith("libvirt-")
    # QEMU reports the error, then stops the guest.
    assert [lifecycle(ev) or ev.kind for ev in seen if ev not in more] == [
        ("STARTED", "BOOTED"),
        K.IO_ERROR,
        ("SUSPENDED", "IOERROR"),
    ]
    assert await dom.state() == (S.PAUSED, asvirt.PausedReason.IOERROR)
    assert io_error.describe() == (
        f"event 'io-error' for domain 'vm1': {image} (virtio-disk0) pause due to Input/output error"
    )


@pytest.mark.guest
async def test_io_error_with_error_policy_report_keeps_running(conn, test_guest, tmp_path):
    image = damaged_image(tmp_path / "data.qcow2")
    dom, _ = await define(
        conn,
        test_guest,
        tmp_path,
        action="readdisk",
        devices=disk_xml(image, "vdb", error_policy="report"),
    )
    async with conn.subscribe(dom, kinds={K.IO_ERROR, K.LIFECYCLE}) as events:
        await dom.start()
        seen = await collect_until(events, kind_seen(K.IO_ERROR))
        # A QMP reply comes after every event QEMU sent before it: had QEMU stopped the
        # guest, the state would say so now.
        assert (await dom.qmp("query-status"))["running"] is True
    io_error = of_kind(seen, K.IO_ERROR)[0]
    assert io_error.data["device"] == "vdb" and io_error.data["alias"] == "virtio-disk1"
    assert io_error.data["action"] == "report" and io_error.data["operation"] == "read"
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
    assert io_error.describe().endswith(
        f": {image} (virtio-disk1) report due to Input/output error"
    )


# -- watchdog -------------------------------------------------------------------------------------


@pytest.mark.guest
@pytest.mark.parametrize(
    ("action", "then", "state"),
    [
        # libvirt: the domain pauses, SUSPENDED/WATCHDOG.
        ("pause", ("SUSPENDED", "WATCHDOG"), (S.PAUSED, asvirt.PausedReason.WATCHDOG)),
        # QEMU resets the machine: a reboot event; the domain keeps running.
        ("reset", K.REBOOT, (S.RUNNING, asvirt.RunningReason.BOOTED)),
        # QEMU exits at once without a SHUTDOWN event: libvirt reports STOPPED/FAILED and a
        # crashed shut-off domain, and so does asvirt.
        ("poweroff", ("STOPPED", "FAILED"), (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)),
    ],
    ids=["pause", "reset", "poweroff"],
)
async def test_watchdog_fires(conn, test_guest, tmp_path, action, then, state):
    dom, serial = await define(
        conn,
        test_guest,
        tmp_path,
        action="watchdog",
        devices=f"<watchdog model='i6300esb' action='{action}'/>",
    )

    def done(seen: list[asvirt.DomainEvent]) -> bool:
        return any(ev.kind is then or lifecycle(ev) == then for ev in seen)

    async with conn.subscribe(dom, kinds={K.WATCHDOG, K.LIFECYCLE, K.REBOOT}) as events:
        await dom.start()
        seen = await collect_until(events, done)
    # Started, then QEMU's WATCHDOG event, then what the action did.
    assert lifecycle(seen[0]) == ("STARTED", "BOOTED")
    watchdog, after = seen[1:3]
    assert watchdog.kind is K.WATCHDOG
    assert after.kind is then or lifecycle(after) == then
    assert watchdog.data == {"action": action}
    assert watchdog.describe() == f"event 'watchdog' for domain 'vm1': {action}"
    assert await dom.state() == state
    assert "ASVIRT-WATCHDOG-ARMED" in serial.read_text()


# -- memory balloon -------------------------------------------------------------------------------


@pytest.mark.guest
async def test_balloon_change(conn, test_guest, tmp_path):
    dom, serial = await define(conn, test_guest, tmp_path, memballoon="virtio")
    await dom.start()
    await wait_for_serial(serial)  # virtio_balloon is loaded
    async with conn.subscribe(dom, kinds={K.BALLOON_CHANGE}) as events:
        await dom.qmp("balloon", {"value": 96 * MiB})
        # QEMU sends at most one BALLOON_CHANGE a second: there may be steps on the way.
        seen = await collect_until(events, kind_seen(K.BALLOON_CHANGE, actual_kib=96 * 1024))
    sizes = [ev.data["actual_kib"] for ev in seen]
    assert sizes == sorted(sizes, reverse=True) and all(96 * 1024 <= s <= 128 * 1024 for s in sizes)
    assert (await dom.info()).memory_kib == 96 * 1024
    assert (await dom.qmp("query-balloon"))["actual"] == 96 * MiB
    assert seen[-1].describe() == "event 'balloon-change' for domain 'vm1': 98304KiB"


# -- RTC ------------------------------------------------------------------------------------------


@pytest.mark.guest
async def test_rtc_change(conn, test_guest, tmp_path):
    # The guest sets its clock to 2037-01-01 00:00:00 UTC and writes it to the RTC.
    dom, _ = await define(conn, test_guest, tmp_path, action="rtc")
    async with conn.subscribe(dom, kinds={K.RTC_CHANGE}) as events:
        await dom.start()
        [rtc] = await collect_until(events, kind_seen(K.RTC_CHANGE))
    # The offset is the guest's RTC against the host's UTC when QEMU sent the event (hwclock
    # may wait for the next second boundary before it writes).
    guest_time = calendar.timegm((2037, 1, 1, 0, 0, 0))
    assert -1 <= rtc.data["offset"] + rtc.timestamp - guest_time <= 3, rtc
    assert rtc.describe() == f"event 'rtc-change' for domain 'vm1': {rtc.data['offset']}"
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


# -- device removal -------------------------------------------------------------------------------


async def test_device_removed(conn, test_guest, tmp_path):
    # A USB device leaves at once, without the guest's help: a paused VM is enough.
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
    await dom.start(paused=True)
    await dom.qmp("device_add", {"driver": "usb-mouse", "bus": "usb.0"})  # no id
    await dom.qmp("device_add", {"driver": "usb-tablet", "id": "tablet1", "bus": "usb.0"})
    anonymous = await dom.qmp("qom-list", {"path": "/machine/peripheral-anon"})
    [mouse] = [c["name"] for c in anonymous if c["type"] == "child<usb-mouse>"]
    async with conn.subscribe(dom, kinds={K.DEVICE_REMOVED, K.LIFECYCLE}) as events:
        # A device without an id is QEMU's own business: no event (libvirt ignores it too).
        # It goes first, so that its event, if there were one, would come first.
        await dom.qmp("device_del", {"id": f"/machine/peripheral-anon/{mouse}"})
        await dom.qmp("device_del", {"id": "tablet1"})
        removed = await events.receive()
    assert removed.kind is K.DEVICE_REMOVED
    assert removed.data == {"device": "tablet1", "path": "/machine/peripheral/tablet1"}
    assert removed.describe() == "event 'device-removed' for domain 'vm1': tablet1"
    assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)


# -- block jobs -----------------------------------------------------------------------------------


async def test_block_job_stream_completed(conn, test_guest, tmp_path):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top = overlay(tmp_path / "top.qcow2", base)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        # With -blockdev, a job needs an id; QEMU reports it as the job's "device".
        await dom.qmp("block-stream", {"job-id": "pull-vda", "device": "libvirt-1-format"})
        job = await events.receive()
    assert job.data == {
        "device": "pull-vda",
        "type": "stream",
        "disk": "vda",
        "job": "pull",
        "status": "completed",
        "offset": 16 * MiB,
        "len": 16 * MiB,
        "error": None,
    }
    assert job.describe() == "event 'block-job' for domain 'vm1': Block Pull for vda completed"
    [disk] = await dom.qmp("query-block")
    assert "backing-image" not in disk["inserted"]["image"], "the data was pulled into top"


async def test_block_job_stream_canceled(conn, test_guest, tmp_path):
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=8 * MiB)
    top = overlay(tmp_path / "top.qcow2", base)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        arguments = {"job-id": "pull-vda", "device": "libvirt-1-format", "speed": 1}
        await dom.qmp("block-stream", arguments)  # 1 byte/s: it will not finish
        await dom.qmp("block-job-cancel", {"device": "pull-vda"})
        job = await events.receive()
    assert job.data["device"] == "pull-vda" and job.data["type"] == "stream"
    assert job.data["status"] == "canceled" and job.data["error"] is None
    assert job.data["offset"] < job.data["len"] == 16 * MiB
    assert job.describe().endswith(": Block Pull for vda canceled")


async def test_block_job_mirror_ready_then_completed(conn, test_guest, tmp_path):
    disk = image_with_data(tmp_path / "disk.qcow2", 16 * MiB, at=0)
    copy = tmp_path / "copy.qcow2"
    dom = await start_with_disk(conn, test_guest, tmp_path, disk)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        mirror = {"target": str(copy), "format": "qcow2", "sync": "full"}
        await dom.qmp(
            "drive-mirror", {"job-id": "copy-vda", "device": "libvirt-1-format", **mirror}
        )
        ready = await events.receive()
        assert (ready.data["type"], ready.data["status"]) == ("mirror", "ready")
        assert ready.describe().endswith(": Block Copy for vda ready")
        await dom.qmp("block-job-complete", {"device": "copy-vda"})
        done = await events.receive()
    assert (done.data["device"], done.data["type"], done.data["status"]) == (
        "copy-vda",
        "mirror",
        "completed",
    )
    assert done.data["offset"] == done.data["len"] and done.data["error"] is None
    [block] = await dom.qmp("query-block")
    assert block["inserted"]["file"] == str(copy), "the disk now runs on the copy"
    assert f"<source file='{copy}'" in await dom.xml_desc(), "and the live XML says so"


async def test_block_job_failed_once(conn, test_guest, tmp_path):
    base = damaged_image(tmp_path / "base.qcow2")
    top = overlay(tmp_path / "top.qcow2", base)
    dom = await start_with_disk(conn, test_guest, tmp_path, top)
    async with conn.subscribe(dom, kinds={K.BLOCK_JOB}) as events:
        await dom.qmp("block-stream", {"job-id": "pull-vda", "device": "libvirt-1-format"})
        job = await events.receive()
        await dom.qmp("query-block-jobs")  # every event QEMU sent so far has been processed
        assert events.pending() == 0, "one failure, one event (QEMU's BLOCK_JOB_ERROR is none)"
    assert (job.data["device"], job.data["type"], job.data["status"]) == (
        "pull-vda",
        "stream",
        "failed",
    )
    assert job.data["error"] == "Input/output error"
    assert job.describe().endswith(": Block Pull for vda failed")


# -- reboot -----------------------------------------------------------------------------------


@pytest.mark.guest
async def test_reboot_events_are_qemus_resets_one_for_one(conn, test_guest, tmp_path):
    # A reboot under SeaBIOS makes QEMU report two RESETs (the supervisor's reset, then the
    # firmware's own); asvirt, like libvirt, reports each as REBOOT, and nothing else.
    dom, serial = await define(conn, test_guest, tmp_path)
    await dom.start()
    await wait_for_serial(serial)
    serial.write_text("")
    async with conn.subscribe(dom, kinds={K.QMP, K.REBOOT, K.LIFECYCLE}) as events:
        await dom.reboot()
        await wait_for_serial(serial)  # booted again: every reset of this reboot is out
        await dom.suspend()  # a marker: everything before it has been delivered
        seen = await collect_until(events, lambda s: any(lifecycle(e) for e in s))
    resets = [e.data for e in seen if e.kind is K.QMP and e.data["event"] == "RESET"]
    reboots = [e.data for e in seen if e.kind is K.REBOOT]
    assert len(resets) >= 1
    assert reboots == [r["data"] for r in resets]
    assert reboots[0]["reason"] == "host-qmp-system-reset"  # the supervisor's, finishing it
    assert [lifecycle(e) for e in seen if lifecycle(e)] == [("SUSPENDED", "PAUSED")]
