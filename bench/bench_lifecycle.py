"""Lifecycle latencies and memory: raw QEMU against asvirt (and libvirt, when installed).

    .venv/bin/python bench/bench_lifecycle.py [--rounds N] [--domains M] [--type qemu|kvm]
                                              [--user NAME]

Everything is measured in the same run, on the same QEMU command line (the one asvirt builds
for the test guest), so the ratios compare like with like:

    raw QEMU                          asvirt
    spawn -> QMP negotiated           start() -> RUNNING
    'stop' -> STOP event read         suspend() -> SUSPENDED event received by a subscriber
    SIGTERM -> process reaped         destroy() -> STOPPED event received by a subscriber

plus the delivery latency of events (QEMU's event timestamp -> a subscriber holds the
DomainEvent) and the supervisor's memory per running domain (Python heap via tracemalloc,
and resident set size).

With libvirt installed, a private libvirtd (bench/libvirt_peer.py) runs the same guest XML in
the same run, its rounds interleaved with the others: create() -> returns (running),
suspend() -> SUSPENDED callback, destroy() -> STOPPED callback, and libvirtd's resident set
size per running (paused) domain. libvirt builds its own QEMU command line from the XML
(it adds a USB controller and a few flags), so its figures compare the supervisors, not the
command lines.

``--user NAME`` runs asvirt's QEMUs as that user (``[qemu] user``; needs root): compare its
start figure with a run without it to see what confinement costs (setpriv, access checks,
chowns). The raw side always runs QEMU directly.

Targets (from the core issue): start within 1.3x raw QEMU; event delivery under 1 ms median;
destroy -> STOPPED under 50 ms; under 256 KiB of supervisor memory per running domain.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asvirt  # noqa: E402
from asvirt.conf.domain import parse_domain_xml  # noqa: E402
from asvirt.config import Config, QemuConfig  # noqa: E402
from asvirt.drivers.qemu import process  # noqa: E402
from asvirt.drivers.qemu.capabilities import CapabilitiesCache, find_emulator, kvm_usable  # noqa: E402
from asvirt.drivers.qemu.command import MonitorSpec, build_command  # noqa: E402
from asvirt.drivers.qemu.monitor import monitor_host  # noqa: E402
from asvirt.drivers.qemu.postparse import prepare_domain  # noqa: E402
from bench.libvirt_peer import LibvirtPeer, LifecycleEvents, domain_xml, libvirt_peer  # noqa: E402
from bench.proc import rss_kib  # noqa: E402
from tests.guest import GUEST_DIR, TestGuest  # noqa: E402
from tests.helpers import destroy_all  # noqa: E402

LC = asvirt.EventKind.LIFECYCLE
#: Seconds the guest runs between start and suspend, on both sides.
SETTLE = 0.05


def ms(seconds: float) -> float:
    return seconds * 1000


# -- raw QEMU ------------------------------------------------------------------------------------


class RawQMP:
    """The least a client can do: blocking socket, newline-delimited JSON."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, cmd: str) -> None:
        self.sock.sendall(json.dumps({"execute": cmd}).encode() + b"\n")


def raw_round(argv_for_fd, workdir: Path) -> dict[str, float]:
    listener = socket.socket(socket.AF_UNIX)
    path = workdir / "raw.monitor"
    if path.exists():
        path.unlink()
    listener.bind(str(path))
    listener.listen(1)
    argv = argv_for_fd(listener.fileno())
    log = os.open(workdir / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    pid = process.spawn(argv, log_fd=log, pass_fds=(listener.fileno(),))
    os.close(log)
    listener.close()
    try:
        return raw_steps(client, pid, t0)
    except BaseException:
        # Interrupted (Ctrl-C): no QEMU of ours outlives the run.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        client.close()


def raw_steps(client: socket.socket, pid: int, t0: float) -> dict[str, float]:
    qmp = RawQMP(client)
    qmp.read()  # greeting
    qmp.execute("qmp_capabilities")
    qmp.read()
    t_ready = time.perf_counter() - t0
    qmp.execute("cont")
    while qmp.read().get("return") is None:
        pass
    time.sleep(SETTLE)  # as long as the asvirt round lets the guest run before suspending
    t0 = time.perf_counter()
    qmp.execute("stop")
    while qmp.read().get("event") != "STOP":
        pass
    t_stop = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    t_term = time.perf_counter() - t0
    return {"start": t_ready, "suspend": t_stop, "destroy": t_term}


# -- libvirt ---------------------------------------------------------------------------------------


def libvirt_round(peer: LibvirtPeer, dom: Any, events: LifecycleEvents) -> dict[str, float]:
    """The raw round's three steps through libvirt: create() returns with the domain running;
    suspend() and destroy() until their lifecycle callbacks run. "cpu": the CPU seconds
    libvirtd and this process (libvirt-python) spent on the round."""
    import libvirt  # type: ignore[import-not-found]

    c0 = peer.cpu_seconds() + time.process_time()
    t0 = time.perf_counter()
    dom.create()
    t_start = time.perf_counter() - t0
    time.sleep(SETTLE)
    events.clear()
    t0 = time.perf_counter()
    dom.suspend()
    t_stop = events.wait_for(libvirt.VIR_DOMAIN_EVENT_SUSPENDED) - t0
    t0 = time.perf_counter()
    dom.destroy()
    t_destroy = events.wait_for(libvirt.VIR_DOMAIN_EVENT_STOPPED) - t0
    cpu = peer.cpu_seconds() + time.process_time() - c0
    return {"start": t_start, "suspend": t_stop, "destroy": t_destroy, "cpu": cpu}


def libvirt_memory(peer: LibvirtPeer, xml_for: Callable[[str], str], count: int) -> float:
    """libvirtd's resident set size per running (paused) domain, KiB."""
    import libvirt  # type: ignore[import-not-found]

    conn = peer.open()
    conn.createXML(xml_for("lv-warm"), libvirt.VIR_DOMAIN_START_PAUSED).destroy()
    rss0 = peer.rss_kib()
    doms = [
        conn.createXML(xml_for(f"lv-m{i}"), libvirt.VIR_DOMAIN_START_PAUSED) for i in range(count)
    ]
    rss1 = peer.rss_kib()
    for dom in doms:
        dom.destroy()
    return (rss1 - rss0) / count


# -- asvirt ----------------------------------------------------------------------------------------


class Arrivals:
    """Notes when each event reaches a subscriber that is waiting for it."""

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[tuple[asvirt.DomainEvent, float, float]](
            100
        )

    async def consume(self, events: asvirt.Subscription) -> None:
        async for ev in events:
            self._send.send_nowait((ev, time.perf_counter(), time.time()))

    async def next(self) -> tuple[asvirt.DomainEvent, float, float]:
        return await self._recv.receive()


async def rounds_interleaved(
    xml: str,
    root: Path,
    rounds: int,
    raw_round_fn,
    config: Config | None = None,
    libvirt_round_fn: Callable[[], dict[str, float]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """Alternate raw, libvirt and asvirt rounds, so that drift in the machine's speed hits
    all three."""
    raw: dict[str, list[float]] = {"start": [], "suspend": [], "destroy": []}
    theirs: dict[str, list[float]] = {"start": [], "suspend": [], "destroy": [], "cpu": []}
    out: dict[str, list[float]] = {
        "start": [],
        "suspend": [],
        "destroy": [],
        "delivery": [],
        "cpu": [],
    }
    async with asvirt.open(f"qemu:///embed?root={root}", config=config) as conn:
        dom = await conn.define_xml(xml)
        for _ in range(rounds):
            # Blocking on purpose: the raw side has no event loop; nothing else needs to run.
            for key, value in raw_round_fn().items():
                raw[key].append(value)
            if libvirt_round_fn is not None:
                # Blocking too: libvirt-python's calls are; its events arrive on their thread.
                for key, value in libvirt_round_fn().items():
                    theirs[key].append(value)
            # This process's CPU over the round: asvirt's supervisor and its client (embedded).
            c0 = time.process_time()
            t0 = time.perf_counter()
            await dom.start()
            out["start"].append(time.perf_counter() - t0)
            async with conn.subscribe(dom, kinds={LC}) as events, trio.open_nursery() as nursery:
                arrivals = Arrivals()
                nursery.start_soon(arrivals.consume, events)
                await trio.sleep(SETTLE)
                t0 = time.perf_counter()
                await dom.suspend()
                ev, at, wall = await arrivals.next()
                assert ev.type is asvirt.LifecycleEvent.SUSPENDED
                out["suspend"].append(at - t0)
                # The event carries QEMU's own timestamp of the STOP event it came from.
                out["delivery"].append(wall - ev.timestamp)
                t0 = time.perf_counter()
                await dom.destroy()
                ev, at, _ = await arrivals.next()
                assert ev.type is asvirt.LifecycleEvent.STOPPED
                out["destroy"].append(at - t0)
                out["cpu"].append(time.process_time() - c0)
                nursery.cancel_scope.cancel()
    return raw, out, theirs


async def memory_per_domain(
    xml_for, root: Path, count: int, config: Config | None = None
) -> tuple[float, float]:
    async with asvirt.open(f"qemu:///embed?root={root}", config=config) as conn:
        # Warm up: the first domain pays for imports, caches and thread pools.
        warm = await conn.create_xml(xml_for("warm"), paused=True)
        await warm.destroy()
        gc.collect()
        tracemalloc.start()
        heap0, rss0 = tracemalloc.get_traced_memory()[0], rss_kib()
        doms = [await conn.create_xml(xml_for(f"m{i}"), paused=True) for i in range(count)]
        gc.collect()
        heap1, rss1 = tracemalloc.get_traced_memory()[0], rss_kib()
        tracemalloc.stop()
        for dom in doms:
            await dom.destroy()
    return (heap1 - heap0) / 1024 / count, (rss1 - rss0) / count


def report(
    name: str,
    raw: list[float] | None,
    ours: list[float],
    target: str,
    theirs: list[float] | None = None,
) -> None:
    ours_ms = statistics.median(ours) * 1000
    if raw:
        raw_ms = statistics.median(raw) * 1000
        line = (
            f"  {name:<28} raw {raw_ms:8.2f} ms   asvirt {ours_ms:8.2f} ms   "
            f"ratio {ours_ms / raw_ms:5.2f}x"
        )
    else:
        line = f"  {name:<28} asvirt {ours_ms:8.3f} ms"
    if theirs:
        theirs_ms = statistics.median(theirs) * 1000
        line += f"   libvirt {theirs_ms:8.2f} ms   asvirt/libvirt {ours_ms / theirs_ms:5.2f}x"
    print(f"{line}   [{target}]" if target else line)


async def main(rounds: int, domains: int, domain_type: str | None, user: str) -> None:
    guest = TestGuest(GUEST_DIR)
    if not guest.exists():
        sys.exit("the test guest is missing: run scripts/setup")
    work = Path(tempfile.mkdtemp(prefix="asvirt-bench-"))
    try:
        with libvirt_peer() as peer:
            await run(peer, guest, work, rounds, domains, domain_type, user)
    finally:
        # An embedded node leaves its domains running when it closes (as it should): an
        # interrupted run (Ctrl-C) destroys what it started.
        with trio.CancelScope(shield=True):
            for root in (work / "root", work / "root-mem"):
                if root.exists():
                    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
                        await destroy_all(conn)
        shutil.rmtree(work, ignore_errors=True)


async def run(
    peer: LibvirtPeer | str,
    guest: TestGuest,
    work: Path,
    rounds: int,
    domains: int,
    domain_type: str | None,
    user: str,
) -> None:
    if domain_type is None:
        domain_type = "kvm" if kvm_usable()[0] else "qemu"
    config = None
    if user:
        # QEMU's user must reach the guest and the serial files: a directory open to all.
        config = Config(qemu=QemuConfig(user=user))
        os.chmod(work, 0o755)
        for name in ("vmlinuz", "initrd.cpio", "VERSION"):
            shutil.copy(guest.dir / name, work / name)
        guest = TestGuest(work)
    xml = guest.xml("bench", work / "bench.serial", domain_type=domain_type)

    async with monitor_host() as host:
        caps = await CapabilitiesCache(work / "caps", host, timeout=30).get(find_emulator("x86_64"))
    (work / "caps").mkdir(exist_ok=True)
    prepared = prepare_domain(parse_domain_xml(xml), caps)

    def argv_for_fd(fd: int) -> list[str]:
        return build_command(prepared, caps, monitor=MonitorSpec(fd=fd))

    print(
        f"QEMU {caps.version_string}, domain type '{domain_type}', {rounds} rounds, "
        f"{os.cpu_count()} CPUs, asvirt's QEMUs run as {f'user {user!r}' if user else 'we do'}"
    )
    libvirt_round_fn = None
    events = None
    if isinstance(peer, LibvirtPeer):
        print(peer.describe())
        lv_conn = peer.open()
        lv_dom = lv_conn.defineXML(domain_xml(xml, "bench-lv"))
        events = LifecycleEvents(lv_conn, lv_dom)
        # Warm-up: libvirtd probes QEMU's capabilities first.
        libvirt_round(peer, lv_dom, events)

        def libvirt_round_fn() -> dict[str, float]:
            assert isinstance(peer, LibvirtPeer) and events is not None
            return libvirt_round(peer, lv_dom, events)

    # One raw round first, to warm the page cache for both sides.
    raw_round(argv_for_fd, work)
    raw, ours, theirs = await rounds_interleaved(
        xml,
        work / "root",
        rounds,
        lambda: raw_round(argv_for_fd, work),
        config,
        libvirt_round_fn,
    )

    heap_kib, rss_per = await memory_per_domain(
        lambda n: guest.xml(n, work / f"{n}.serial", domain_type=domain_type),
        work / "root-mem",
        domains,
        config,
    )
    lv_rss = None
    if isinstance(peer, LibvirtPeer):
        assert events is not None
        events.close()
        lv_rss = libvirt_memory(
            peer,
            lambda n: guest.xml(n, work / f"{n}.serial", domain_type=domain_type),
            domains,
        )

    print(f"\nmedians (load average {os.getloadavg()[0]:.1f}):")
    report("start -> running", raw["start"], ours["start"], "target <= 1.3x raw", theirs["start"])
    report("suspend -> SUSPENDED event", raw["suspend"], ours["suspend"], "", theirs["suspend"])
    report(
        "destroy -> STOPPED event",
        raw["destroy"],
        ours["destroy"],
        "target < 50 ms",
        theirs["destroy"],
    )
    report("QEMU event -> subscriber", None, ours["delivery"], "target < 1 ms")
    # Load-insensitive: CPU time rather than wall (means: libvirtd's counts 10 ms ticks).
    cpu_line = f"  {'CPU per round, mean':<28} asvirt {ms(statistics.mean(ours['cpu'])):8.2f} ms"
    if theirs["cpu"]:
        lv_cpu = statistics.mean(theirs["cpu"])
        cpu_line += (
            f"   libvirt {ms(lv_cpu):8.2f} ms"
            f"   asvirt/libvirt {statistics.mean(ours['cpu']) / lv_cpu:5.2f}x"
            "   (this process; libvirt: libvirtd + libvirt-python)"
        )
    print(cpu_line)
    print(
        f"  {'memory per running domain':<28} {heap_kib:8.1f} KiB Python heap, "
        f"{rss_per:8.1f} KiB RSS   [target < 256 KiB]  ({domains} domains)"
    )
    if isinstance(peer, str):
        print(f"\nlibvirt: {peer}")
    else:
        assert lv_rss is not None
        print(
            f"  {'':<28} libvirtd {lv_rss:8.1f} KiB RSS per domain"
            f"   asvirt/libvirt (RSS) {rss_per / lv_rss if lv_rss > 0 else float('nan'):5.2f}x"
            "\n  (libvirt: its events carry no QEMU timestamp, so no delivery figure)"
        )
    start_ratio = statistics.median(ours["start"]) / statistics.median(raw["start"])
    ok = (
        start_ratio <= 1.3
        and statistics.median(ours["delivery"]) < 0.001
        and statistics.median(ours["destroy"]) < 0.050
        and heap_kib < 256
    )
    print("targets:", "all met" if ok else "NOT all met")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--type", choices=["kvm", "qemu"], help="default: kvm if usable")
    parser.add_argument("--user", default="", help="run asvirt's QEMUs as this user")
    args = parser.parse_args()
    trio.run(main, args.rounds, args.domains, args.type, args.user)
