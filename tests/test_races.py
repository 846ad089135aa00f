"""Random interleavings of every mutating call on a few domains, from many tasks at once.

Whatever the order, the supervisor must never lose a QEMU: at the end every QEMU running for
these domains is one the table shows as active (and vice versa), each domain's state agrees
with what QEMU itself says, and every exception a caller saw is an ``asvirt.AsvirtError``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from lxml import etree

import asvirt
from asvirt import DomainState as S

from .guest import PAUSED_DOMAIN_TYPE, TestGuest
from .helpers import (
    disk_xml,
    embed_uri,
    pid_exists,
    qemu_img,
    qemu_pid,
    qemus_naming,
    write_config,
)

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


#: The calls added since the test above was written, with destroy racing each of them.
DEVICE_OPS = int(os.environ.get("ASVIRT_RACE_DEVICE_OPS", "400"))
DEVICE_TASKS = 12
#: No call may take longer (a hang): the slowest, a save, writes a paused 128 MiB guest.
CALL_DEADLINE = 120
SCSI = "<controller type='scsi' model='virtio-scsi'/>"


def _holder(qdev: str) -> str:
    """The id of the device a QEMU block backend is attached to (``query-block``'s qdev: the
    id, or a QOM path below /machine/peripheral/ID)."""
    prefix = "/machine/peripheral/"
    return qdev[len(prefix) :].split("/")[0] if qdev.startswith(prefix) else qdev


async def _what_asvirt_and_qemu_say(dom: asvirt.Domain) -> None:
    """The live XML agrees with QEMU: the same disks (alias -> file), as many vCPUs, the
    same balloon size, and the state matches QEMU's run state."""
    state, _ = await dom.state()
    status = await dom.qmp("query-status")
    assert QEMU_STATES[status["status"]] is state, (dom.name, status, state)
    live = etree.fromstring((await dom.xml_desc()).encode())
    disks = {
        d.find("alias").get("name"): d.find("source").get("file")
        for d in live.iterfind("devices/disk")
        if d.find("source") is not None
    }
    blocks = {
        _holder(b["qdev"]): b["inserted"]["file"]
        for b in await dom.qmp("query-block")
        if b.get("qdev") and "inserted" in b
    }
    assert disks == blocks, (dom.name, disks, blocks)
    vcpu = live.find("vcpu")
    assert int(vcpu.get("current", vcpu.text)) == len(await dom.qmp("query-cpus-fast")), dom.name
    balloon = await dom.qmp("query-balloon")
    assert int(live.findtext("currentMemory")) == balloon["actual"] // 1024, (dom.name, balloon)


def _qemus_by_pgrep(uuids: set[str]) -> dict[str, list[int]]:
    """What pgrep finds of QEMU for ``uuids``, by UUID (the process table's word, not
    asvirt's)."""
    proc = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    found: dict[str, list[int]] = {}
    for line in proc.stdout.splitlines():
        pid, _, cmdline = line.partition(" ")
        for uuid in uuids:
            if uuid in cmdline:
                found.setdefault(uuid, []).append(int(pid))
    return found


async def test_device_memory_vcpu_snapshot_and_save_calls_racing_lose_nothing(
    root: Path, test_guest: TestGuest, tmp_path: Path
) -> None:
    # Unplugs the paused guest cannot acknowledge (vCPUs) give up quickly.
    write_config(root, "[qemu]\ndestroy_grace = 2.0\nqmp_timeout = 10.0\nunplug_timeout = 0.5\n")
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    rng = random.Random(seed)
    uuids = {name: f"00000000-0000-4000-8000-00000000001{i}" for i, name in enumerate(NAMES)}
    xml, hot = {}, {}
    for name in NAMES:
        base = tmp_path / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", base, "16M")
        qemu_img("create", "-q", "-f", "qcow2", tmp_path / f"{name}-hot.qcow2", "16M")
        hot[name] = disk_xml(tmp_path / f"{name}-hot.qcow2", "sdb", bus="scsi")
        xml[name] = test_guest.xml(
            name,
            tmp_path / f"{name}.serial",
            domain_type=PAUSED_DOMAIN_TYPE,
            uuid=uuids[name],
            vcpus=1,
            max_vcpus=2,
            memballoon="virtio",
            devices=SCSI + disk_xml(base, "vda"),
        )
    foreign: list[BaseException] = []
    outcomes: Counter[str] = Counter()
    async with asvirt.open(embed_uri(root)) as conn:

        async def run(name: str, what: str) -> object:
            if what == "define":
                return await conn.define_xml(xml[name])
            if what == "restore":
                return await conn.restore(str(tmp_path / f"{name}.save"))
            dom = await conn.lookup_by_name(name)
            if what == "start":
                return await dom.start(paused=True)
            if what == "attach":
                return await dom.attach_device(hot[name])
            if what == "detach":
                return await dom.detach_device(hot[name])
            if what == "set_vcpus":
                return await dom.set_vcpus(rng.choice((1, 2)), live=True)
            if what == "set_memory":
                return await dom.set_memory(rng.choice((96, 112, 128)) * 1024, live=True)
            snap = f"s{rng.randrange(3)}"
            if what == "snapshot":
                xml_ = f"<domainsnapshot><name>{snap}</name></domainsnapshot>"
                return await dom.snapshot_create_xml(xml_)
            if what == "revert":
                return await dom.revert_to_snapshot(snap, paused=True)
            if what == "snapshot_delete":
                return await (await dom.snapshot_lookup_by_name(snap)).delete()
            if what == "save":
                return await dom.save(str(tmp_path / f"{name}.save"))
            return await getattr(dom, what)()

        for name in NAMES:  # all running to begin with: every call has something to do
            await (await conn.define_xml(xml[name])).start(paused=True)
        whats = ["attach", "detach", "set_vcpus", "set_memory", "snapshot", "revert"]
        whats += ["snapshot_delete", "save", "restore", "managed_save"]
        # destroy races each of them; define/start bring the domains back.
        whats += ["destroy"] * 3 + ["define", "start", "start", "suspend", "resume"]
        plan = [(rng.choice(NAMES), rng.choice(whats)) for _ in range(DEVICE_OPS)]
        queue = iter(plan)

        async def worker() -> None:
            for name, what in queue:
                try:
                    with trio.fail_after(CALL_DEADLINE):
                        await run(name, what)
                    outcomes[f"{what} ok"] += 1
                except asvirt.AsvirtError as err:
                    outcomes[f"{what} {type(err).__name__}"] += 1
                    if not isinstance(err.code, asvirt.ErrorCode) or (
                        err.code is asvirt.ErrorCode.INTERNAL_ERROR
                    ):
                        foreign.append(err)  # a bug let out, not an error of the call
                    elif "monitor connection" in str(err) or "has no monitor" in str(err):
                        # A call that lost QEMU to a racing destroy fails as libvirt's:
                        # "domain is not running" (OPERATION_INVALID), not a QMP error.
                        foreign.append(err)
                except BaseException as err:  # what the test is about: none may come here
                    foreign.append(err)
                    outcomes[f"{what} {type(err).__name__}"] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(DEVICE_TASKS):
                nursery.start_soon(worker)
        print(f"outcomes: {dict(sorted(outcomes.items()))}")
        active = {d.uuid: d for d in await conn.list_all_domains(active=True)}
        try:
            assert not foreign, "foreign exceptions:\n" + "\n".join(
                "".join(traceback.format_exception(err)) for err in foreign[:3]
            )
            # The table, QEMU and the process table agree: no QEMU asvirt cannot see.
            running = _qemus_by_pgrep(set(uuids.values()))
            assert set(running) == set(active), (running, active)
            assert all(len(pids) == 1 for pids in running.values()), running
            for dom in active.values():
                await _what_asvirt_and_qemu_say(dom)
        finally:
            for dom in active.values():
                await dom.destroy()
    assert _qemus_by_pgrep(set(uuids.values())) == {}


async def test_a_call_that_loses_qemu_to_a_destroy_says_the_domain_is_not_running(
    root: Path, fast_config: Path, test_guest: TestGuest, tmp_path: Path
) -> None:
    """A call whose QEMU a destroy ends while it waits for the answer fails as libvirt's
    would: "domain is not running" (OPERATION_INVALID), not "lost the monitor connection"."""
    xml = test_guest.xml(
        "vm1", tmp_path / "vm1.serial", domain_type=PAUSED_DOMAIN_TYPE, memballoon="virtio"
    )
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.create_xml(xml, paused=True)
        pid = qemu_pid(root, "vm1")
        seen: list[BaseException] = []

        async def set_memory() -> None:
            try:
                await dom.set_memory(96 * 1024, live=True)
            except asvirt.AsvirtError as err:
                seen.append(err)

        os.kill(pid, signal.SIGSTOP)  # QEMU answers nothing: the balloon call waits
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(set_memory)
                await trio.testing.wait_all_tasks_blocked()  # it waits for QEMU's answer
                await dom.destroy()  # SIGTERM waits while QEMU is stopped; SIGKILL does not
        finally:
            if pid_exists(pid):
                os.kill(pid, signal.SIGCONT)
        assert len(seen) == 1 and isinstance(seen[0], asvirt.OperationInvalidError), seen
        assert seen[0].code is asvirt.ErrorCode.OPERATION_INVALID
        assert str(seen[0]) == "domain 'vm1' is not running"
