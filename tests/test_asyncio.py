"""asyncio programs use asvirt through a daemon, as libvirt-python's users do through libvirtd.

Each test is a real asyncio program (``asyncio.run``) against a real asvirtd: the remote
driver runs on anyio, so the same connection, handles, events, reconnection and replay work
there as under trio. The in-process drivers, which run on trio, refuse asyncio in one sentence.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.process import find_qemus

from .daemon import Daemon, session_daemon, session_runtime_dir
from .guest import REPO, paused_xml
from .helpers import collect_until, embed_uri, lifecycle, lifecycle_until, peer_pid

pytestmark = [pytest.mark.qemu]

LIFECYCLE = asvirt.EventKind.LIFECYCLE
MiB = 1024 * 1024
DESTROYED = ("STOPPED", "DESTROYED")


@pytest.fixture
def daemon(root: Path, fast_config: Path, caps_cache: Path) -> Iterator[Daemon]:
    d = Daemon(root, caps_cache=caps_cache).start()
    try:
        yield d
    finally:
        leftovers = d.stop_and_reap()
        assert not leftovers, f"the test left QEMUs running in the daemon: {leftovers}"


def test_an_asyncio_program_drives_a_domain_through_the_session_daemon(
    root, fast_config, caps_cache, monkeypatch, test_guest, tmp_path
):
    async def main() -> None:
        async with asvirt.open("qemu:///session") as conn:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
            called: list[tuple[str, str] | None] = []
            conn.register_event_callback(lambda ev: called.append(lifecycle(ev)), dom, LIFECYCLE)
            async with conn.subscribe(domain=dom, kinds=LIFECYCLE) as events:
                await dom.start(paused=True)
                assert (await dom.state())[0] is S.PAUSED
                assert (await conn.lookup_by_name("vm1")).uuid == dom.uuid
                await dom.destroy()
                seen = await lifecycle_until(
                    events, ("STARTED", "BOOTED"), ("STOPPED", "DESTROYED")
                )
            assert seen[-1] == ("STOPPED", "DESTROYED")
            assert (await dom.state())[0] is S.SHUTOFF
            # The callback task runs on the connection's asyncio task group, in order.
            while len(called) < len(seen):
                await asyncio.sleep(0)
            assert called[: len(seen)] == seen
            await dom.undefine()
            assert await conn.list_all_domains() == []

    with session_daemon(root, tmp_path, caps_cache, monkeypatch):
        asyncio.run(main())


def test_qemu_session_from_asyncio_starts_the_session_daemon(tmp_path, monkeypatch):
    runtime = session_runtime_dir(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # A home's XDG directories (the daemon makes its own asvirt/ in each, not them).
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    sock = runtime / "asvirt" / "asvirt-sock"

    async def main() -> str:
        async with asvirt.open("qemu:///session") as conn:
            assert await conn.list_all_domains() == []
            return conn.hostname()

    try:
        assert asyncio.run(main()) == socket.gethostname()
        # The daemon outlives its client.
        assert "--session" in Path(f"/proc/{peer_pid(sock)}/cmdline").read_bytes().decode()
    finally:
        if sock.exists():
            pid = peer_pid(sock)
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)  # our child: it was spawned by this process
        shutil.rmtree(runtime, ignore_errors=True)


def test_an_asyncio_program_uses_networks_pools_and_volumes_with_progress(daemon, tmp_path):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    local = tmp_path / "local.img"
    local.write_bytes(os.urandom(3 * MiB + 5))
    net_xml = "<network><name>aionet</name><bridge name='aiobr0'/></network>"

    async def main() -> None:
        async with asvirt.open(daemon.uri) as conn:
            net = await conn.network_define_xml(net_xml)
            assert (await conn.lookup_network_by_name("aionet")).uuid == net.uuid
            assert "<name>aionet</name>" in await net.xml_desc()
            assert not await net.is_active()
            await net.undefine()

            pool = await conn.storage_pool_define_xml(
                f"<pool type='dir'><name>aio</name><target><path>{pool_dir}</path></target></pool>"
            )
            await pool.create()
            vol = await pool.create_volume_xml(
                "<volume><name>a.img</name><capacity unit='M'>16</capacity></volume>"
            )
            # From a local file (read through anyio), told the fraction written.
            uploaded: list[float] = []
            assert await vol.upload(local, progress=uploaded.append) == local.stat().st_size
            assert uploaded[-1] == 1.0 and uploaded == sorted(uploaded)
            # qemu-img's progress, reported by the daemon while the call runs.
            copied: list[float] = []
            copy = await vol.clone("b.img", progress=copied.append)
            assert copied[-1] == 1.0 and copied == sorted(copied)
            assert (await copy.info()).capacity == 16 * MiB
            out = tmp_path / "out.img"
            assert await vol.download_to(out, length=local.stat().st_size) == local.stat().st_size
            assert out.read_bytes() == local.read_bytes()
            for v in await pool.list_all_volumes():
                await v.delete()
            await pool.destroy()
            await pool.undefine()

    asyncio.run(main())


def test_an_asyncio_subscriber_sees_every_event_once_across_daemon_kills(
    daemon, root, test_guest, tmp_path
):
    kills = 4

    async def main() -> None:
        async with asvirt.open(daemon.uri) as watcher, asvirt.open(daemon.uri) as conn:
            async with watcher.subscribe(since=0) as events:
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
                await dom.start(paused=True)
                pid = find_qemus(str(root))[dom.uuid][0].pid
                for i in range(kills):
                    await (dom.resume() if i % 2 == 0 else dom.suspend())
                    await asyncio.to_thread(daemon.kill)
                    await asyncio.to_thread(daemon.start)
                    # A call made now waits for the reconnection instead of failing.
                    expected = S.RUNNING if i % 2 == 0 else S.PAUSED
                    assert (await dom.state())[0] is expected
                assert find_qemus(str(root))[dom.uuid][0].pid == pid  # the VM survived
                await dom.destroy()
                got = await collect_until(
                    events,
                    lambda seen: bool(seen) and lifecycle(seen[-1]) == ("STOPPED", "DESTROYED"),
                )
            # The journal, replayed whole by a fresh subscription, up to the same event.
            async with conn.subscribe(since=0) as replay:
                journal = await collect_until(
                    replay, lambda seen: bool(seen) and seen[-1].seq == got[-1].seq
                )
            await dom.undefine()
        assert [e.seq for e in got] == [e.seq for e in journal]
        assert len({e.seq for e in got}) == len(got)
        assert [lifecycle(e) for e in got] == [lifecycle(e) for e in journal]
        # What the daemon did, in order (a restarted daemon journals the state it finds the
        # VM in again: one transition may be reported twice, under distinct seqs).
        transitions = [lifecycle(e) for e in got if e.kind is LIFECYCLE]
        collapsed = [t for k, t in enumerate(transitions) if k == 0 or t != transitions[k - 1]]
        paused, unpaused = ("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED")
        assert collapsed == [
            ("DEFINED", "ADDED"),
            ("STARTED", "BOOTED"),
            *[paused, unpaused] * (kills // 2),
            paused,
            ("STOPPED", "DESTROYED"),
        ]

    asyncio.run(main())


@pytest.mark.parametrize(
    "uri_of", [embed_uri, lambda root: "test:///default"], ids=["embed", "test"]
)
def test_the_in_process_drivers_say_they_need_trio(uri_of, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    uri = uri_of(root)

    async def main() -> None:
        async with asvirt.open(uri):
            pass

    with pytest.raises(asvirt.NoConnectError) as err:
        asyncio.run(main())
    assert str(err.value) == (
        f"'{uri}' runs its driver in this process, on trio, so it cannot be opened under "
        "asyncio: open it from trio.run(), or from asyncio connect to a daemon "
        "(qemu:///session, or qemu+unix:///system?socket=PATH of an asvirtd)"
    )
    assert err.value.code is asvirt.ErrorCode.NO_CONNECT
    assert list(root.iterdir()) == []  # nothing was made


def test_an_asyncio_client_of_a_daemon_never_imports_trio(daemon):
    program = """
import asyncio, json, sys
import asvirt

async def main():
    async with asvirt.open(sys.argv[1]) as conn:
        async with conn.subscribe(since=0) as events:
            await conn.list_all_domains()
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "trio_asyncio"))))

asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", program, daemon.uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
