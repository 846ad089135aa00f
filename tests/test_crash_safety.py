"""A supervisor killed at any point never leaves a QEMU that asvirt cannot see.

The supervisor (``tests/crash_supervisor.py``, a process of its own) defines, undefines,
creates, starts and destroys a few domains at random and is killed with SIGKILL at random
moments, 50 times over, each time reopening the root its predecessor left. Then: every QEMU
of the root is one the table lists as active (and each active domain has exactly one), every
domain's state agrees with what its QEMU says, every config on disk is intact, and no
half-written file is left.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.process import find_qemus

from .guest import PAUSED_DOMAIN_TYPE, REPO, TestGuest
from .helpers import embed_uri, qemus_naming

pytestmark = [pytest.mark.qemu]

KILLS = 50
QEMU_STATES = {"running": S.RUNNING, "paused": S.PAUSED, "prelaunch": S.PAUSED}


async def run_and_kill(argv: list[str], *, during_open: bool, after: float) -> list[str]:
    """Run the supervisor and SIGKILL it ``after`` seconds after it started (``during_open``:
    while it opens the root, taking over what its predecessor left) or after it said the
    root is open (in the middle of its work); the operations it finished."""
    proc = await trio.lowlevel.open_process(argv, cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = bytearray()
    try:
        if not during_open:
            # However slow the machine, the kill lands in the work, not before it.
            with trio.fail_after(120):
                async for chunk in proc.stdout:
                    out.extend(chunk)
                    if b"open\n" in out:
                        break
        with trio.move_on_after(after):
            async for chunk in proc.stdout:
                out.extend(chunk)
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
    return [line for line in out.decode().splitlines() if line != "open"]


async def test_a_supervisor_killed_at_random_points_loses_nothing(
    root: Path, fast_config: Path, test_guest: TestGuest, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    rng = random.Random(seed)
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    names = [f"c{i}" for i in range(3)]
    for name in names:
        (xml_dir / f"{name}.xml").write_text(
            test_guest.xml(name, tmp_path / f"{name}.serial", domain_type=PAUSED_DOMAIN_TYPE)
        )
    ops = while_opening = 0
    try:
        for _ in range(KILLS):
            argv = [sys.executable, "-m", "tests.crash_supervisor", str(root), str(xml_dir)]
            argv.append(str(rng.randrange(1 << 30)))
            # One kill in five lands while the root is being opened (and recovered).
            during_open = rng.random() < 0.2
            while_opening += during_open
            done = await run_and_kill(argv, during_open=during_open, after=rng.random() * 0.9)
            ops += len(done)
        print(f"{KILLS} kills ({while_opening} while opening), {ops} operations between them")
        assert ops >= KILLS // 2  # the kills landed in the middle of work, not before it

        async with asvirt.open(embed_uri(root)) as conn:
            active = {d.uuid: d for d in await conn.list_all_domains(active=True)}
            running = find_qemus(str(root))
            assert {u: len(q) for u, q in running.items()} == dict.fromkeys(active, 1)
            # The same from the process table alone (not asvirt's own way of finding them):
            # every QEMU writing to one of these serial files is an active domain's.
            seen = qemus_naming(str(tmp_path / f"{name}.serial") for name in names)
            assert {Path(s).stem: len(pids) for s, pids in seen.items()} == {
                d.name: 1 for d in active.values()
            }
            for dom in active.values():
                status = await dom.qmp("query-status")
                assert QEMU_STATES[status["status"]] is (await dom.state())[0], dom.name
            for path in (root / "etc" / "qemu").glob("*.xml"):
                parse_domain_xml(path.read_bytes())  # intact: it parses
                assert (await conn.lookup_by_name(path.stem)).uuid
            for dom in active.values():
                await dom.destroy()
        # Once nothing writes any more: no half-written file, nothing kept aside as corrupt.
        leftovers = [p.name for d in ("etc/qemu", "run/qemu") for p in (root / d).glob(".*")]
        assert leftovers == []
        assert list((root / "run" / "qemu").glob("*.corrupt")) == []
    finally:
        for qemus in find_qemus(str(root)).values():
            for qemu in qemus:
                os.kill(qemu.pid, 9)


async def test_a_rename_interrupted_after_its_new_config_is_completed_at_the_next_open(
    root: Path, test_guest: TestGuest, tmp_path: Path
):
    """A rename records its intent, then writes the new configuration: a supervisor killed
    after that leaves both configurations (and the intent); the next open finishes the
    rename. One killed before the new configuration was written leaves the old name."""
    async with asvirt.open(embed_uri(root)) as conn:
        xml = test_guest.xml("vm1", tmp_path / "vm1.serial", domain_type=PAUSED_DOMAIN_TYPE)
        dom = await conn.define_xml(xml)
        await dom.set_autostart(True)
    etc, run = root / "etc" / "qemu", root / "run" / "qemu"
    # What a rename had written when it was killed: its intent and the new configuration.
    (run / f"{dom.uuid}.rename").write_text("vm1\nvm2\n")
    (etc / "vm2.xml").write_text(
        (etc / "vm1.xml").read_text().replace("<name>vm1</name>", "<name>vm2</name>")
    )
    async with asvirt.open(embed_uri(root)) as conn:
        renamed = await conn.lookup_by_name("vm2")
        assert renamed.uuid == dom.uuid and await renamed.autostart()
        with pytest.raises(asvirt.NoDomainError):
            await conn.lookup_by_name("vm1")
    assert sorted(p.name for p in etc.glob("*.xml")) == ["vm2.xml"]
    assert sorted(p.name for p in (etc / "autostart").glob("*.xml")) == ["vm2.xml"]
    assert not list(run.glob("*.rename"))
    # Killed before the new configuration was written: nothing was renamed.
    (run / f"{dom.uuid}.rename").write_text("vm2\nvm3\n")
    async with asvirt.open(embed_uri(root)) as conn:
        assert (await conn.lookup_by_name("vm2")).uuid == dom.uuid
        await (await conn.lookup_by_name("vm2")).rename("vm3")  # and a whole one works
    assert sorted(p.name for p in etc.glob("*.xml")) == ["vm3.xml"]
    assert not list(run.glob("*.rename"))
