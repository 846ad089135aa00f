"""What the supervisor promises beyond single calls: re-attach, autodestroy, reaping, deadlines."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu import process

from .contract import drain
from .guest import paused_xml
from .helpers import (
    collect_until,
    embed_uri,
    lifecycle,
    monitor_path,
    pid_alive,
    pid_exists,
    qemu_pid,
    raw_qmp,
    run_cli,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.qemu]

LC = asvirt.EventKind.LIFECYCLE


async def test_closing_leaves_vms_running_and_reopening_reattaches(
    root, fast_config, test_guest, tmp_path
):
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "keep"))
        await dom.start(paused=True)
        await dom.resume()
        uuid = dom.uuid
        pid = qemu_pid(root, "keep")
        live_xml = await dom.xml_desc()
    assert pid_alive(pid), "closing a connection must not stop running VMs"
    status = json.loads((root / "run" / "qemu" / "keep.status").read_text())
    assert status["pid"] == pid and status["uuid"] == uuid

    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("keep")
        assert dom.uuid == uuid
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        assert await dom.is_active()
        assert qemu_pid(root, "keep") == pid
        assert await dom.xml_desc() == live_xml  # same id, aliases, everything
        # The re-attached QEMU is fully supervised: commands, events, destroy.
        async with conn.subscribe(dom, kinds={LC}) as events:
            await dom.suspend()
            assert lifecycle(await events.receive()) == ("SUSPENDED", "PAUSED")
            await dom.destroy()
            assert lifecycle(await events.receive()) == ("STOPPED", "DESTROYED")
    assert not pid_exists(pid)


async def test_changes_while_nobody_watched_are_reported(root, fast_config, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        async with conn.subscribe(kinds={LC}) as events:
            a = await conn.define_xml(paused_xml(test_guest, tmp_path, "dies"))
            b = await conn.define_xml(paused_xml(test_guest, tmp_path, "pauses"))
            await a.start(paused=True)
            await b.start(paused=True)
            await a.resume()
            await b.resume()
            before = drain(events)
        cursor = before[-1].seq  # what a client stores: the last event it saw
        pid_a = qemu_pid(root, "dies")
    # Nobody supervises now. One QEMU dies, the other is paused by someone else.
    os.kill(pid_a, signal.SIGKILL)
    # With no connection open, no event can tell: /proc does.
    await wait_for(lambda: not pid_alive(pid_a))
    await pause_with_raw_qmp(monitor_path(root, "pauses"))

    async with asvirt.open(embed_uri(root)) as conn:
        # The re-attach journaled what it found, numbered after the cursor; since=cursor
        # gives exactly that, and since=0 everything, from the journal on disk.
        async with conn.subscribe(kinds={LC}, since=cursor) as events:
            with trio.fail_after(5):
                after = [await events.receive() for _ in range(2)]
            assert events.pending() == 0 and not events.replaying
        assert {ev.domain: lifecycle(ev) for ev in after} == {
            "dies": ("STOPPED", "FAILED"),
            "pauses": ("SUSPENDED", "PAUSED"),
        }
        assert [ev.seq for ev in after] == [cursor + 1, cursor + 2]
        async with conn.subscribe(kinds={LC}, since=0) as events:
            everything = [events.receive_nowait() for _ in range(len(before) + 2)]
        assert everything == before + after
        dies = await conn.lookup_by_name("dies")
        assert await dies.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)
        assert not (root / "run" / "qemu" / "dies.status").exists()
        pauses = await conn.lookup_by_name("pauses")
        assert (await pauses.state())[0] is S.PAUSED
        await pauses.destroy()


@pytest.mark.parametrize("meanwhile", ["nothing", "paused by another tool"])
async def test_reattach_journals_only_what_changed_since_the_last_event(
    root, fast_config, test_guest, tmp_path, meanwhile
):
    # A supervisor writes a domain's status file after it journals the event (the journal
    # first: a subscriber must never miss what the file says). Killed in between, it leaves
    # a status one transition behind the journal: here, "paused" after RESUMED was journaled.
    status = root / "run" / "qemu" / "vm.status"
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "vm"))
        await dom.start(paused=True)
        stale = status.read_bytes()
        async with conn.subscribe(dom, kinds={LC}) as events:
            await dom.resume()
            assert lifecycle(await events.receive()) == ("RESUMED", "UNPAUSED")
    status.write_bytes(stale)  # what the killed supervisor left
    if meanwhile != "nothing":
        await raw_qmp(monitor_path(root, "vm"), {"execute": "stop"})
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm")
        try:
            async with conn.subscribe(kinds={LC}, since=0) as events:
                await conn.define_xml(paused_xml(test_guest, tmp_path, "marker"))
                told = await collect_until(events, lambda seen: marker_in(seen))
            # Subscribers were told RESUMED: a re-attach repeats none of it, and journals
            # only what happened while nobody watched.
            assert [lifecycle(ev) for ev in told if ev.domain == "vm"] == [
                ("DEFINED", "ADDED"),
                ("STARTED", "BOOTED"),
                ("SUSPENDED", "PAUSED"),
                ("RESUMED", "UNPAUSED"),
                *([] if meanwhile == "nothing" else [("SUSPENDED", "PAUSED")]),
            ]
            if meanwhile == "nothing":
                assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
            else:
                assert (await dom.state())[0] is S.PAUSED
        finally:
            await dom.destroy()


def marker_in(seen: list[asvirt.DomainEvent]) -> bool:
    return any(ev.domain == "marker" for ev in seen)


async def pause_with_raw_qmp(monitor: Path) -> None:
    """Speak QMP on the monitor socket directly, as another tool would."""
    await raw_qmp(monitor, {"execute": "stop"})


async def test_reused_pid_is_not_mistaken_for_our_qemu(root, fast_config, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "vm"))
        await dom.start(paused=True)
        pid = qemu_pid(root, "vm")
    os.kill(pid, signal.SIGKILL)
    # With no connection open, no event can tell: /proc does.
    await wait_for(lambda: not pid_alive(pid))
    # Point the status file at a live process that is not our QEMU (this test process).
    path = root / "run" / "qemu" / "vm.status"
    status = json.loads(path.read_text())
    status["pid"] = os.getpid()
    status["start_time"] = process.read_start_time(os.getpid())
    path.write_text(json.dumps(status))
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm")
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)
    # ...and it was not signalled: we are still here.


async def test_qemu_outliving_its_connection_is_reaped(root, fast_config, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "orphan"))
        await dom.start(paused=True)
        pid = qemu_pid(root, "orphan")
    assert pid_alive(pid)
    os.kill(pid, signal.SIGKILL)
    # It is our child; with no connection left, the reaper thread must collect it. Nothing
    # announces that: /proc tells.
    await wait_for(lambda: not pid_exists(pid), timeout=5)


async def test_connections_in_one_process_share_the_root_another_process_is_refused(
    root, fast_config, test_guest, tmp_path
):
    async with asvirt.open(embed_uri(root)) as a:
        # Spelled differently, the same directory: the same node.
        async with asvirt.open(embed_uri(root / ".." / root.name)) as b:
            dom = await a.define_xml(paused_xml(test_guest, tmp_path, "both"))
            async with b.subscribe(kinds={LC}) as events:
                await (await b.lookup_by_name("both")).start(paused=True)
                assert lifecycle(await events.receive()) == ("STARTED", "BOOTED")
            assert await dom.is_active()
        # b's leaving changed nothing for a: the node lives while a connection is open.
        assert (await dom.state())[0] is S.PAUSED
        proc = await trio.to_thread.run_sync(lambda: run_cli(root, "list", check=False))
        assert proc.returncode == 1
        assert "in use by another process" in proc.stderr
        await dom.destroy()


async def test_hung_qemu_fails_only_its_own_commands(root, test_guest, tmp_path):
    write_config(root, "[qemu]\nqmp_timeout = 1.0\ndestroy_grace = 1.0\n")
    async with asvirt.open(embed_uri(root)) as conn:
        hung = await conn.define_xml(paused_xml(test_guest, tmp_path, "hung"))
        fine = await conn.define_xml(paused_xml(test_guest, tmp_path, "fine"))
        await hung.start(paused=True)
        await fine.start(paused=True)
        await hung.resume()
        pid = qemu_pid(root, "hung")
        os.kill(pid, signal.SIGSTOP)
        try:
            async with trio.open_nursery() as nursery:
                failures = []

                async def suspend_hung() -> None:
                    try:
                        await hung.suspend()
                    except asvirt.OperationTimeoutError as err:
                        failures.append(err)

                nursery.start_soon(suspend_hung)
                # Once every task here is blocked, suspend() has sent "stop" and waits for an
                # answer the stopped QEMU cannot give: the command is in flight.
                with trio.fail_after(5):
                    await trio.testing.wait_all_tasks_blocked()
                # While the hung QEMU holds its own command, everything else answers at once.
                with trio.fail_after(0.5):
                    assert await hung.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
                    assert len(await conn.list_all_domains()) == 2
                    await hung.info()
                    await fine.resume()
                    assert (await fine.state())[0] is S.RUNNING
            assert len(failures) == 1
            assert failures[0].code == asvirt.ErrorCode.OPERATION_TIMEOUT
            # destroy() needs no QMP: SIGTERM is held while stopped, SIGKILL after the grace.
            with trio.fail_after(5):
                await hung.destroy()
            assert await hung.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
            await fine.destroy()
        finally:
            if pid_exists(pid):
                os.kill(pid, signal.SIGCONT)


async def test_event_burst_beyond_the_buffer_resynchronises(root, test_guest, tmp_path, caplog):
    # A one-event buffer, and one command that makes QEMU send 17 events at once (unplugging
    # a USB hub unplugs what hangs on it: 7 tablets and a second hub with 8 more). The burst
    # overflows; the supervisor must neither block QEMU's monitor nor get the state wrong: it
    # resynchronises from query-status.
    write_config(root, "[qemu]\nevent_buffer = 1\n")
    caplog.set_level(logging.WARNING, logger="asvirt")
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "burst"))
        await dom.start(paused=True)
        async with conn.subscribe(dom, kinds={asvirt.EventKind.DEVICE_REMOVED, LC}) as events:
            # QEMU writes the events one by one; on a busy machine asvirt may read each before
            # the next comes, and then nothing overflows: unplug again until something does.
            for _ in range(10):
                removed = await unplug_usb_burst(dom, events)
                if len(removed) < USB_BURST_SIZE:
                    break
            assert 1 <= len(removed) < USB_BURST_SIZE  # some of the burst was dropped...
            # ...so the supervisor asks QEMU its state: the query is sent once every task here
            # is blocked, answered before the reply to a later command, and applied once every
            # task is blocked again.
            await trio.testing.wait_all_tasks_blocked()
            await dom.qmp("query-status")
            await trio.testing.wait_all_tasks_blocked()
            assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
            await dom.resume()  # ...and events flow again afterwards
            assert [lifecycle(ev) for ev in drain(events)] == [("RESUMED", "UNPAUSED")]
        await dom.destroy()
    assert any("overflowed" in r.getMessage() for r in caplog.records)


#: What hangs on hub1 in :func:`unplug_usb_burst`, hub1 included: id -> (driver, port).
USB_BURST = {"hub1": ("usb-hub", "1"), "hub2": ("usb-hub", "1.8")}
USB_BURST |= {f"t{i}": ("usb-tablet", f"1.{i}") for i in range(1, 8)}
USB_BURST |= {f"u{i}": ("usb-tablet", f"1.8.{i}") for i in range(1, 9)}
USB_BURST_SIZE = len(USB_BURST)


async def unplug_usb_burst(dom: asvirt.Domain, events: asvirt.Subscription) -> list[str]:
    """Plug ``USB_BURST`` in, unplug hub1, and return the devices of the DEVICE_REMOVED
    events that reached ``events``: all of them, unless the burst overflowed."""
    for dev_id, (driver, port) in USB_BURST.items():
        device = {"driver": driver, "id": dev_id, "bus": "usb.0", "port": port}
        await dom.qmp("device_add", device)
    await dom.qmp("device_del", {"id": "hub1"})
    # QEMU sends the events one after the other once the devices are gone (after its reply to
    # device_del). The first one says the burst came; it is over before QEMU's reply to a
    # later command, and qmp() returns once what asvirt kept of it is delivered.
    with trio.fail_after(10):
        first = await events.receive()
    peripherals = await dom.qmp("qom-list", {"path": "/machine/peripheral"})
    assert not USB_BURST.keys() & {p["name"] for p in peripherals}
    return [ev.data["device"] for ev in [first, *drain(events)]]


@pytest.mark.parametrize("delay", [0, 0.01, 0.03])
async def test_destroy_while_starting(conn, test_guest, tmp_path, delay):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "racy"))
    outcome: list[object] = []

    async def start() -> None:
        try:
            await dom.start()
            outcome.append("started")
        except asvirt.AsvirtError as err:
            outcome.append(err)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        # The point of the test: destroy() at different moments of the start, by the clock.
        await trio.sleep(delay)
        with trio.fail_after(10):
            try:
                await dom.destroy()
            except asvirt.OperationInvalidError:
                pass  # destroy came first: nothing was running yet
    # Whoever won, nothing hangs and the domain ends shut off.
    if outcome == ["started"] and await dom.is_active():
        await dom.destroy()
    assert (await dom.state())[0] is S.SHUTOFF
    assert not await dom.is_active()
    assert len(outcome) == 1
    if outcome != ["started"]:
        assert isinstance(outcome[0], asvirt.OperationInvalidError), outcome
        assert "destroyed while starting" in str(outcome[0])
