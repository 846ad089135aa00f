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
import signal
import sys
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.process import find_qemus

from .daemon import Daemon
from .guest import REPO, paused_xml
from .helpers import pid_alive, wait_for

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
