"""A client that stores its cursor gets every event exactly once across its own deaths.

The agent (``tests/journal_agent.py``) is the supervisor of the embed root and a subscriber
at once; it drives a VM through its transitions and is killed with SIGKILL at random points
— inside start(), between an event and its record, during a destroy — and started again with
the cursor it stored. Together, its records must be the node's journal: every event, in
order, none twice, whatever the kills interrupted. And no QEMU may be left that the root does
not show.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import asvirt

from .guest import REPO, TestGuest
from .helpers import embed_uri, qemus_naming, wait_for

pytestmark = [pytest.mark.qemu]


def log_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def run_agent(argv: list[str], log: Path, lines: int, extra: float) -> tuple[int, str]:
    """Run the agent until it has recorded ``lines`` lines (then ``extra`` seconds more, so
    that the kill lands anywhere: mid-call, mid-write, mid-start) and SIGKILL it, or until it
    exits by itself; returns its exit status and stderr."""
    agent = await trio.lowlevel.open_process(argv, cwd=REPO, stderr=subprocess.PIPE)
    assert agent.stderr is not None
    err = bytearray()
    async with trio.open_nursery() as nursery:

        async def collect_stderr() -> None:
            assert agent.stderr is not None
            async for chunk in agent.stderr:
                err.extend(chunk)

        nursery.start_soon(collect_stderr)
        try:
            await wait_for(lambda: log_lines(log) >= lines or agent.poll() is not None, timeout=60)
            await trio.sleep(extra)
        finally:
            if agent.poll() is None:
                agent.kill()
            with trio.CancelScope(shield=True):
                await agent.wait()
    return agent.returncode, err.decode(errors="replace")


async def test_an_agent_killed_at_random_points_sees_every_event_once(
    root: Path, fast_config: Path, test_guest: TestGuest, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    print(f"random seed: {seed}")  # shown when the test fails
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(test_guest.xml("agentvm", tmp_path / "s.log"))
        uuid = dom.uuid
    log = tmp_path / "agent.log"
    argv = [sys.executable, "-m", "tests.journal_agent", str(root), "agentvm", str(log)]
    kills = 0
    try:
        for _round in range(40):
            target = log_lines(log) + rng.randint(1, 3)
            returncode, err = await run_agent(argv, log, target, rng.random() * 0.05)
            if returncode == 0:
                break
            assert returncode == -signal.SIGKILL, err
            kills += 1
        else:
            pytest.fail("the agent never finished its transitions")
        assert kills >= 1
        print(f"agent killed {kills} times")

        # The union of what the agent recorded is the journal, in order, without duplicates.
        recorded = [json.loads(line) for line in log.read_text().splitlines()]
        async with asvirt.open(embed_uri(root)) as conn, conn.subscribe(since=0) as events:
            journal = []
            while events.replaying or events.pending():
                journal.append(events.receive_nowait())
            assert [r["seq"] for r in recorded] == [ev.seq for ev in journal]
            assert [r["seq"] for r in recorded] == list(range(1, len(journal) + 1))
            for rec, ev in zip(recorded, journal, strict=True):
                assert rec["kind"] == ev.kind.value and rec["domain"] == ev.domain
                assert rec["type"] == (ev.type.name if ev.type else None)
                assert rec["detail"] == (ev.detail.name if ev.detail else None)
            transitions = [r for r in recorded if r["kind"] == "lifecycle"]
            assert len(transitions) >= 12
            # And the root sees every QEMU there is for its domain.
            dom = await conn.lookup_by_name("agentvm")
            active = await dom.is_active()
            assert len(qemus_naming([uuid]).get(uuid, [])) == (1 if active else 0)
            if active:
                await dom.destroy()
    finally:
        # Whatever happened, no QEMU of this test outlives it.
        for pid in qemus_naming([uuid]).get(uuid, []):
            os.kill(pid, signal.SIGKILL)
    assert qemus_naming([uuid]).get(uuid, []) == []
