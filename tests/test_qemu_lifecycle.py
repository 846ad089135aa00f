"""Lifecycle of real QEMU domains: every row of the core issue's table, against a real guest.

Guests run under TCG (type='qemu'): on these machines /dev/kvm is nested and Linux guests do
not boot on it. Tests that only need a paused VM use KVM when it is usable.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.capabilities import kvm_usable

from .guest import define, wait_for_serial
from .helpers import collect_until, lifecycle, lifecycle_until, pid_exists, qemu_pid

pytestmark = [pytest.mark.qemu]

LC = asvirt.EventKind.LIFECYCLE


async def test_define_redefine_undefine(conn, test_guest, tmp_path, root):
    async with conn.subscribe(kinds={LC}) as events:
        dom, _ = await define(conn, test_guest, tmp_path)
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.UNKNOWN)
        assert (root / "etc" / "qemu" / "vm1.xml").is_file()
        again, _ = await define(conn, test_guest, tmp_path, uuid=dom.uuid)
        assert again == dom
        await dom.undefine()
        seen = await lifecycle_until(
            events, ("DEFINED", "ADDED"), ("DEFINED", "UPDATED"), ("UNDEFINED", "REMOVED")
        )
    assert seen == [("DEFINED", "ADDED"), ("DEFINED", "UPDATED"), ("UNDEFINED", "REMOVED")]
    assert not (root / "etc" / "qemu" / "vm1.xml").exists()
    with pytest.raises(asvirt.NoDomainError):
        await conn.lookup_by_name("vm1")
    with pytest.raises(asvirt.NoDomainError):
        await dom.state()


@pytest.mark.guest
async def test_start_boots_and_runs(conn, test_guest, tmp_path, root):
    dom, serial = await define(conn, test_guest, tmp_path)
    async with conn.subscribe(dom) as events:
        await dom.start()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        assert await dom.is_active()
        seen = await lifecycle_until(events, ("STARTED", "BOOTED"))
    assert seen == [("STARTED", "BOOTED")]
    await wait_for_serial(serial)
    info = await dom.info()
    assert info.state is S.RUNNING
    assert info.max_memory_kib == 128 * 1024
    assert info.vcpus == 1
    assert info.cpu_time_ns > 0
    # QEMU's stderr goes to the per-domain log, which starts with the command line it ran.
    log = (root / "log" / "qemu" / "vm1.log").read_text()
    assert "qemu-system-x86_64" in log and dom.uuid in log
    status = await dom.qmp("query-status")
    assert status["running"] is True


async def test_start_paused(conn, test_guest, tmp_path):
    domain_type = "kvm" if kvm_usable()[0] else "qemu"
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=domain_type)
    async with conn.subscribe(dom) as events:
        await dom.start(paused=True)
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        seen = await lifecycle_until(events, ("STARTED", "BOOTED"), ("SUSPENDED", "PAUSED"))
    assert seen == [("STARTED", "BOOTED"), ("SUSPENDED", "PAUSED")]
    assert (await dom.qmp("query-status"))["running"] is False
    async with conn.subscribe(dom) as events:
        await dom.resume()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        assert await lifecycle_until(events, ("RESUMED", "UNPAUSED")) == [("RESUMED", "UNPAUSED")]


@pytest.mark.guest
async def test_suspend_resume(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path)
    await dom.start()
    async with conn.subscribe(dom, kinds={LC}) as events:
        await dom.suspend()
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        await dom.suspend()  # already paused: nothing to do, no error
        await dom.resume()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        seen = await lifecycle_until(events, ("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED"))
    assert seen == [("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED")]


@pytest.mark.guest
async def test_acpi_shutdown(conn, test_guest, tmp_path):
    dom, serial = await define(conn, test_guest, tmp_path)
    await dom.start()
    await wait_for_serial(serial)
    pid = qemu_pid(conn_root(conn), "vm1")
    async with conn.subscribe(dom) as events:
        await dom.shutdown()
        seen = await lifecycle_until(events, ("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN"))
    assert seen == [("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")]
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)
    assert not pid_exists(pid), "QEMU must be gone and reaped"


@pytest.mark.guest
async def test_poweroff_from_inside_the_guest(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, action="poweroff")
    async with conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(
            events, ("STARTED", "BOOTED"), ("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")
        )
    assert seen == [("STARTED", "BOOTED"), ("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")]
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)


@pytest.mark.guest
async def test_destroy(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path)
    await dom.start()
    pid = qemu_pid(conn_root(conn), "vm1")
    async with conn.subscribe(dom) as events:
        await dom.destroy()
        # destroy() returns once QEMU is gone and the state says so.
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        assert not pid_exists(pid)
        seen = await lifecycle_until(events, ("STOPPED", "DESTROYED"))
    assert seen == [("STOPPED", "DESTROYED")]
    assert not await dom.is_active()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.destroy()


@pytest.mark.guest
async def test_qemu_killed_from_outside(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path)
    await dom.start()
    pid = qemu_pid(conn_root(conn), "vm1")
    async with conn.subscribe(dom, kinds={LC}) as events:
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(1):  # the exit is seen through a pidfd, not by polling
            ev = await events.receive()
    assert lifecycle(ev) == ("STOPPED", "FAILED")
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)
    assert not pid_exists(pid), "the killed QEMU must be reaped"


@pytest.mark.guest
async def test_panic_destroys_by_default(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, action="panic", on_crash="destroy")
    async with conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(
            events, ("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STOPPED", "CRASHED")
        )
    assert seen == [("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STOPPED", "CRASHED")]
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)


@pytest.mark.guest
async def test_panic_preserve_keeps_the_crashed_guest(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, action="panic", on_crash="preserve")
    async with conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(events, ("CRASHED", "PANICKED"))
    assert seen == [("STARTED", "BOOTED"), ("CRASHED", "PANICKED")]
    assert await dom.state() == (S.CRASHED, asvirt.CrashedReason.PANICKED)
    assert await dom.is_active()
    assert (await dom.qmp("query-status"))["status"] == "guest-panicked"
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.resume()


@pytest.mark.guest
async def test_panic_restart_boots_again(conn, test_guest, tmp_path):
    # The guest panics 1 s after each boot; a restart shows as a second boot.
    dom, serial = await define(
        conn, test_guest, tmp_path, action="panic", delay=1, on_crash="restart"
    )
    async with conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(
            events, ("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STARTED", "BOOTED")
        )
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
    assert seen == [("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STARTED", "BOOTED")]
    await wait_for_serial(serial)


@pytest.mark.guest
async def test_reboot_keeps_running(conn, test_guest, tmp_path):
    dom, serial = await define(conn, test_guest, tmp_path)
    await dom.start()
    await wait_for_serial(serial)
    serial.write_text("")
    async with conn.subscribe(dom) as events:
        await dom.reboot()
        seen = await collect_until(
            events, lambda s: any(e.kind is asvirt.EventKind.REBOOT for e in s)
        )
        # The guest comes back: it prints its ready line again.
        await wait_for_serial(serial)
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
    assert not any(lifecycle(e) and lifecycle(e)[0] == "STOPPED" for e in seen)


@pytest.mark.guest
async def test_guest_reboot_is_reported(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, action="reboot", delay=1)
    async with conn.subscribe(dom, kinds={asvirt.EventKind.REBOOT}) as events:
        await dom.start()
        with trio.fail_after(30):
            ev = await events.receive()
    assert ev.kind is asvirt.EventKind.REBOOT
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@pytest.mark.guest
async def test_guest_reboot_with_on_reboot_destroy_stops(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, action="reboot", on_reboot="destroy")
    async with conn.subscribe(dom) as events:
        await dom.start()
        seen = await collect_until(
            events, lambda s: any(lifecycle(e) and lifecycle(e)[0] == "STOPPED" for e in s)
        )
    kinds = [e.kind for e in seen]
    assert asvirt.EventKind.REBOOT in kinds
    assert lifecycle(seen[-1]) == ("STOPPED", "SHUTDOWN")
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)


async def test_stop_behind_asvirts_back_is_seen(conn, test_guest, tmp_path):
    domain_type = "kvm" if kvm_usable()[0] else "qemu"
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=domain_type)
    await dom.start(paused=True)
    await dom.resume()
    async with conn.subscribe(dom, kinds={LC}) as events:
        await dom.qmp("stop")
        assert lifecycle(await events.receive()) == ("SUSPENDED", "PAUSED")
        state, _ = await dom.state()
        assert state is S.PAUSED
        await dom.qmp("cont")
        assert lifecycle(await events.receive()) == ("RESUMED", "UNPAUSED")
    assert (await dom.state())[0] is S.RUNNING


async def test_transient_domain_vanishes_when_it_stops(conn, test_guest, tmp_path, root):
    domain_type = "kvm" if kvm_usable()[0] else "qemu"
    xml = test_guest.xml("tvm", tmp_path / "tvm.serial", domain_type=domain_type)
    async with conn.subscribe(kinds={LC}) as events:
        dom = await conn.create_xml(xml, paused=True)
        assert not await dom.is_persistent()
        assert await dom.is_active()
        assert not (root / "etc" / "qemu" / "tvm.xml").exists()
        with pytest.raises(asvirt.OperationInvalidError):
            await dom.undefine()
        await dom.destroy()
        seen = await lifecycle_until(events, ("STARTED", "BOOTED"), ("STOPPED", "DESTROYED"))
    assert ("DEFINED", "ADDED") not in seen
    with pytest.raises(asvirt.NoDomainError):
        await conn.lookup_by_name("tvm")
    assert await conn.list_all_domains() == []


async def test_undefine_running_domain_makes_it_transient(conn, test_guest, tmp_path, root):
    domain_type = "kvm" if kvm_usable()[0] else "qemu"
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=domain_type)
    await dom.start(paused=True)
    await dom.undefine()
    assert await dom.is_active()
    assert not await dom.is_persistent()
    assert not (root / "etc" / "qemu" / "vm1.xml").exists()
    await dom.destroy()
    with pytest.raises(asvirt.NoDomainError):
        await conn.lookup_by_uuid(dom.uuid)


async def test_wrong_states_are_refused(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path)
    for call in (dom.suspend, dom.resume, dom.shutdown, dom.reboot, dom.reset, dom.destroy):
        with pytest.raises(asvirt.OperationInvalidError):
            await call()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.qmp("query-status")
    domain_type = "kvm" if kvm_usable()[0] else "qemu"
    dom2, _ = await define(conn, test_guest, tmp_path, name="vm2", domain_type=domain_type)
    await dom2.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom2.start()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom2.reboot()  # a paused guest cannot react to the power button


def conn_root(conn: asvirt.Connection) -> Path:
    return Path(conn.uri.split("root=", 1)[1])
