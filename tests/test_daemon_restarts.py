"""The daemon dies; nothing else does: VMs run on, clients reconnect, no event is lost.

A real asvirtd is killed with SIGKILL 20 times while VMs change state and an agent process
(``tests/remote_agent.py``) follows the events; each time a new daemon re-attaches to the
VMs. The VMs survive every kill, and what the agent recorded, across all of them, is the
journal: every event, in order, none twice.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.process import find_qemus

from .daemon import Daemon
from .guest import REPO, TestGuest, paused_xml
from .helpers import collect_until, lifecycle, pid_alive, wait_for

pytestmark = [pytest.mark.qemu]

KILLS = 20
VMS = 4


def recorded(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for r in map(json.loads, lines) if "seq" in r]


@pytest.fixture
def daemon(root: Path, fast_config: Path, caps_cache: Path):
    d = Daemon(root, caps_cache=caps_cache).start()
    yield d
    d.stop()
    for qemus in find_qemus(str(root)).values():  # what the test could not destroy
        for qemu in qemus:
            os.kill(qemu.pid, signal.SIGKILL)


async def test_killing_the_daemon_loses_no_vm_and_no_event(daemon, root, test_guest, tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    rng = random.Random(seed)
    log = tmp_path / "agent.log"
    agent = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.remote_agent", daemon.uri, str(log)], cwd=REPO
    )
    try:
        await wait_for(lambda: log.exists() and b"ready" in log.read_bytes())
        async with asvirt.open(daemon.uri) as conn:
            doms = []
            for i in range(VMS):
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path, f"k{i}"))
                await dom.start(paused=True)
                doms.append(dom)
            pids = {d.name: find_qemus(str(root))[d.uuid][0].pid for d in doms}
            for _ in range(KILLS):
                # Some transitions, then the daemon dies and a new one takes over.
                for dom in rng.sample(doms, 2):
                    state, _ = await dom.state()
                    await (dom.resume() if state is S.PAUSED else dom.suspend())
                await trio.to_thread.run_sync(daemon.kill)
                await trio.to_thread.run_sync(daemon.start)
                # Calls made now wait for the reconnection instead of failing.
                assert len(await conn.list_all_domains(active=True)) == VMS
            for dom in doms:
                assert (await dom.state())[0] in (S.RUNNING, S.PAUSED)
            assert {d.name: find_qemus(str(root))[d.uuid][0].pid for d in doms} == pids
            # A last event marks the end; a fresh replay of the whole journal up to it ...
            async with conn.subscribe(kinds=asvirt.EventKind.LIFECYCLE) as marks:
                await conn.define_xml(paused_xml(test_guest, tmp_path, "marker"))
                last = (await marks.receive()).seq
            async with conn.subscribe(since=0) as events:
                journal = [await events.receive()]
                while journal[-1].seq < last:
                    journal.append(await events.receive())
            # ... is what the agent recorded while the daemon died 20 times.
            await wait_for(lambda: any(r["seq"] == last for r in recorded(log)), timeout=30)
            seen = recorded(log)
            assert [r["seq"] for r in seen] == [ev.seq for ev in journal]
            assert [(r["kind"], r["domain"], r["type"]) for r in seen] == [
                (ev.kind.value, ev.domain, ev.type.name if ev.type else None) for ev in journal
            ]
            assert len([r for r in seen if r["kind"] == "lifecycle"]) >= 2 * KILLS
            # Each daemon re-attached without telling again what the one before had told:
            # a VM's lifecycle events alternate (suspend, resume), never one twice in a row.
            for dom in doms:
                told = [ev.type for ev in journal if ev.domain == dom.name and ev.type]
                assert all(a is not b for a, b in itertools.pairwise(told)), (dom.name, told)
            for dom in doms:
                await dom.destroy()
        assert all(not pid_alive(pid) for pid in pids.values())
    finally:
        agent.send_signal(signal.SIGTERM)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await agent.wait()
        if agent.returncode is None:
            agent.kill()


async def test_a_call_in_flight_when_the_daemon_dies_fails_clearly(
    daemon, root, test_guest, tmp_path
):
    async with asvirt.open(daemon.uri) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "hung"))
        await dom.start(paused=True)
        pid = find_qemus(str(root))[dom.uuid][0].pid
        os.kill(pid, signal.SIGSTOP)  # its QMP calls now hang in the daemon
        try:
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await dom.qmp("query-status")
                except asvirt.AsvirtError as err:
                    outcome.append(err)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await trio.testing.wait_all_tasks_blocked()
                await trio.to_thread.run_sync(daemon.kill)
            assert len(outcome) == 1 and isinstance(outcome[0], asvirt.OperationFailedError)
            assert "lost" in str(outcome[0])
        finally:
            os.kill(pid, signal.SIGCONT)
        await trio.to_thread.run_sync(daemon.start)
        assert (await dom.state())[0] is S.PAUSED  # re-attached; the call waited for it
        await dom.destroy()


async def test_the_daemon_starts_autostart_domains_when_it_starts(
    root, fast_config, caps_cache, test_guest, tmp_path
):
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "early"))
        await dom.set_autostart(True)
        await conn.define_xml(paused_xml(test_guest, tmp_path, "late"))
    daemon = Daemon(root, caps_cache=caps_cache).start()
    try:
        async with asvirt.open(daemon.uri) as conn:
            assert await (await conn.lookup_by_name("early")).is_active()
            assert not await (await conn.lookup_by_name("late")).is_active()
            await (await conn.lookup_by_name("early")).destroy()
    finally:
        daemon.stop()


async def journaled_lifecycle(
    conn: asvirt.Connection, dom: asvirt.Domain, guest: TestGuest, tmp_path: Path
) -> list[tuple[str, str]]:
    """Every lifecycle event the journal holds for ``dom``, in order: a replay from the
    start up to an event published after them all (a domain defined to mark the end)."""
    async with conn.subscribe(kinds=asvirt.EventKind.LIFECYCLE, since=0) as events:
        marker = await conn.define_xml(paused_xml(guest, tmp_path, "end"))
        seen = await collect_until(events, lambda s: bool(s) and s[-1].domain == "end")
    await marker.undefine()
    return [lc for ev in seen if ev.uuid == dom.uuid and (lc := lifecycle(ev)) is not None]


@pytest.mark.guest
@pytest.mark.parametrize(
    ("action", "policy", "moment"),
    [
        ("poweroff", "destroy", "SHUTDOWN"),
        ("poweroff", "destroy", "STOPPED"),
        ("poweroff", "preserve", "SHUTDOWN"),
        ("panic", "destroy", "STOPPED"),
        ("panic", "preserve", "CRASHED"),
    ],
)
async def test_a_daemon_killed_while_a_vm_stops_tells_each_step_once(
    daemon, root, test_guest, tmp_path, action, policy, moment
):
    """The guest powers off (or panics); the daemon is killed as its step is told. The
    journal is written before the status file: a daemon killed between the two leaves the
    status as it was before the step, which the test reinstates (the copy the daemon wrote
    when the guest started) to make that window certain. The next daemon tells what
    followed, and nothing twice."""
    first = "SHUTDOWN" if action == "poweroff" else "CRASHED"
    xml = test_guest.xml(
        "vm1", tmp_path / "vm1.serial", action=action, on_poweroff=policy, on_crash=policy
    )
    async with asvirt.open(daemon.uri) as conn:
        dom = await conn.define_xml(xml)
        async with conn.subscribe(dom, kinds=asvirt.EventKind.LIFECYCLE) as events:
            await dom.start()
            status = next((root / "run" / "qemu").glob("*.status"))
            before = shutil.copy2(status, tmp_path / "vm1.status.before")
            assert json.loads(before.read_bytes())["state"] == S.RUNNING
            await collect_until(events, lambda s: bool(s) and s[-1].type.name == moment)
            await trio.to_thread.run_sync(daemon.kill)
        shutil.copy2(before, status)
        await trio.to_thread.run_sync(daemon.start)
        if policy == "preserve":
            assert (await dom.state())[0] is (S.SHUTDOWN if action == "poweroff" else S.CRASHED)
            await dom.destroy()
        else:
            assert (await dom.state())[0] is S.SHUTOFF
        told = await journaled_lifecycle(conn, dom, test_guest, tmp_path)
        stopped = {
            "destroy": "SHUTDOWN" if action == "poweroff" else "CRASHED",
            "preserve": "DESTROYED",
        }[policy]
        assert [t for t, _ in told] == ["DEFINED", "STARTED", first, "STOPPED"], told
        assert told[-1] == ("STOPPED", stopped)
        assert not status.exists()
        assert not find_qemus(str(root))
