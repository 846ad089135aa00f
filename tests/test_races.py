"""Random interleavings of every mutating call on a few domains, from many tasks at once.

Whatever the order, the supervisor must never lose a QEMU: at the end every QEMU running for
these domains is one the table shows as active (and vice versa), each domain's state agrees
with what QEMU itself says, and every exception a caller saw is an ``asvirt.AsvirtError``.
"""

from __future__ import annotations

import os
import random
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S

from .guest import PAUSED_DOMAIN_TYPE, TestGuest
from .helpers import embed_uri, qemus_naming

pytestmark = [pytest.mark.qemu]

#: Operations in all (ASVIRT_RACE_OPS overrides).
OPS = int(os.environ.get("ASVIRT_RACE_OPS", "3000"))
TASKS = 24
NAMES = ("r0", "r1", "r2", "r3")

#: How QEMU's run state reads as a domain state (query-status -> DomainState).
QEMU_STATES = {"running": S.RUNNING, "paused": S.PAUSED, "prelaunch": S.PAUSED}


async def test_random_interleavings_lose_no_qemu(
    root: Path, fast_config: Path, test_guest: TestGuest, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    rng = random.Random(seed)
    xml = {
        name: test_guest.xml(
            name,
            tmp_path / f"{name}.serial",
            domain_type=PAUSED_DOMAIN_TYPE,
            uuid=f"00000000-0000-4000-8000-00000000000{i}",
        )
        for i, name in enumerate(NAMES)
    }
    uuids = {f"00000000-0000-4000-8000-00000000000{i}" for i in range(len(NAMES))}
    foreign: list[BaseException] = []
    outcomes: Counter[str] = Counter()
    async with asvirt.open(embed_uri(root)) as conn:

        async def lookup(name: str) -> asvirt.Domain:
            return await conn.lookup_by_name(name)

        def op_on(name: str, what: str) -> Callable[[], Awaitable[object]]:
            async def run() -> object:
                if what == "define":
                    return await conn.define_xml(xml[name])
                if what == "create":
                    return await conn.create_xml(xml[name], paused=True)
                dom = await lookup(name)
                if what == "start":
                    return await dom.start(paused=True)
                if what == "xml":
                    return await dom.xml_desc()
                if what == "qmp":
                    return await dom.qmp("query-status")
                return await getattr(dom, what)()

            return run

        whats = ["define", "undefine", "create", "start", "destroy", "suspend", "resume"]
        whats += ["xml", "state", "info", "qmp", "reset"]
        plan = [op_on(rng.choice(NAMES), rng.choice(whats)) for _ in range(OPS)]
        queue = iter(enumerate(plan))

        async def worker() -> None:
            for _, op in queue:
                try:
                    await op()
                    outcomes["ok"] += 1
                except asvirt.AsvirtError as err:
                    outcomes[type(err).__name__] += 1
                except BaseException as err:  # what the test is about: none may come here
                    foreign.append(err)
                    outcomes[type(err).__name__] += 1

        with trio.fail_after(600):
            async with trio.open_nursery() as nursery:
                for _ in range(TASKS):
                    nursery.start_soon(worker)
        print(f"outcomes: {dict(outcomes)}")
        active = {d.uuid: d for d in await conn.list_all_domains(active=True)}
        running = qemus_naming(uuids)
        try:
            assert not foreign, "foreign exceptions:\n" + "\n".join(
                "".join(traceback.format_exception(err)) for err in foreign[:3]
            )
            # The table, QEMU and the process table agree.
            assert set(running) == set(active), (running, active)
            assert all(len(pids) == 1 for pids in running.values()), running
            for dom in active.values():
                state, _ = await dom.state()
                status = await dom.qmp("query-status")
                assert QEMU_STATES[status["status"]] is state, (dom.name, status, state)
        finally:
            for dom in active.values():
                await dom.destroy()
    assert qemus_naming(uuids) == {}
