"""Snapshot, save and restore times: asvirt against raw QEMU (and libvirt, when installed).

    .venv/bin/python bench/bench_snapshot.py [--rounds N] [--memory MIB] [--type kvm|qemu]

A paused guest with one qcow2 disk (the test guest's kernel, never booted: the memory is
what QEMU allocated). Measured on the same QEMU command line:

    raw QEMU (QMP by hand)                     asvirt
    snapshot-save job -> concluded             snapshot_create_xml() returns
    snapshot-load job -> concluded             revert_to_snapshot() (in place) returns
    migrate to a file -> completed             save() returns (STOPPED/SAVED)
    -incoming defer + migrate-incoming         restore() returns (STARTED/RESTORED)

Median milliseconds and the ratio asvirt/raw. With libvirt installed, the same four through
a private libvirtd started for the run (bench/libvirt_peer.py), on the same XML with a disk
of its own: snapshotCreateXML(), revertToSnapshot(), save() and restore(), each returning;
printed beside them with the ratio asvirt/libvirt. (libvirt 9 reverts a running domain to an
internal snapshot by starting a new QEMU with ``-loadvm``: its revert includes a start.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asvirt
from bench.libvirt_peer import LibvirtPeer, domain_xml, libvirt_peer
from tests.guest import GUEST_DIR, TestGuest
from tests.helpers import disk_xml


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def bench_asvirt(tmp: Path, rounds: int, xml: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"snapshot": [], "revert": [], "save": [], "restore": []}
    async with asvirt.open(f"qemu:///embed?root={tmp / 'root'}") as conn:
        dom = await conn.define_xml(xml)
        await dom.start(paused=True)
        try:
            for i in range(rounds):
                t = time.perf_counter()
                await dom.snapshot_create_xml(f"<domainsnapshot><name>s{i}</name></domainsnapshot>")
                times["snapshot"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await dom.revert_to_snapshot(f"s{i}")
                times["revert"].append(time.perf_counter() - t)
                image = str(tmp / "vm.save")
                t = time.perf_counter()
                await dom.save(image)
                times["save"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await conn.restore(image)
                times["restore"].append(time.perf_counter() - t)
        finally:
            if await dom.is_active():
                await dom.destroy()
    return times


def bench_libvirt(tmp: Path, rounds: int, xml: str, peer: LibvirtPeer) -> dict[str, list[float]]:
    """The same four through libvirt-python: the domain defined and started paused, as on
    asvirt's side."""
    import libvirt  # type: ignore[import-not-found]

    times: dict[str, list[float]] = {"snapshot": [], "revert": [], "save": [], "restore": []}
    conn = peer.open()
    dom = conn.defineXML(xml)
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    try:
        for i in range(rounds):
            t = time.perf_counter()
            snap = dom.snapshotCreateXML(f"<domainsnapshot><name>s{i}</name></domainsnapshot>")
            times["snapshot"].append(time.perf_counter() - t)
            t = time.perf_counter()
            dom.revertToSnapshot(snap)
            times["revert"].append(time.perf_counter() - t)
            image = tmp / "lv.save"
            image.unlink(missing_ok=True)
            t = time.perf_counter()
            dom.save(str(image))
            times["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            conn.restore(str(image))
            times["restore"].append(time.perf_counter() - t)
    finally:
        if dom.isActive():
            dom.destroy()
    return times


def bench_raw(tmp: Path, rounds: int, argv: list[str]) -> dict[str, list[float]]:
    """The same operations with QMP by hand (qemu.qmp, asyncio), on the command line asvirt
    built. A restore's time includes spawning QEMU, as asvirt's does."""
    from qemu.qmp import EventListener, QMPClient

    times: dict[str, list[float]] = {"snapshot": [], "revert": [], "save": [], "restore": []}
    events_on = {"capabilities": [{"capability": "events", "state": True}]}

    async def session(extra: list[str], fds: tuple[int, ...], work: Any) -> None:
        a, b = socket.socketpair()
        monitor = ["-chardev", f"socket,id=bm,fd={b.fileno()}", "-mon", "chardev=bm,mode=control"]
        proc = subprocess.Popen(  # noqa: ASYNC220 (raw QEMU, as a user without asvirt)
            [*argv, *monitor, *extra], pass_fds=(b.fileno(), *fds), stderr=subprocess.DEVNULL
        )
        b.close()
        client = QMPClient("bench")
        await client.connect(a)
        try:
            await work(client)
        finally:
            await client.execute("quit")
            await client.disconnect()
            proc.wait()

    async def run_until(
        client: QMPClient, name: str, key: str, values: tuple[str, ...], cmd: str, arg: dict
    ) -> None:
        """Run ``cmd`` and wait for the event ``name`` whose ``key`` is one of ``values``."""
        listener = EventListener(name)
        client.register_listener(listener)
        try:
            await client.execute(cmd, arg)
            async for ev in listener:
                if (ev.get("data") or {}).get(key) in values:
                    return
        finally:
            client.remove_listener(listener)

    async def jobs(client: QMPClient) -> None:
        node = "libvirt-1-format"
        for i in range(rounds):
            for cmd, key in (("snapshot-save", "snapshot"), ("snapshot-load", "revert")):
                job = f"{cmd}{i}"
                arg = {"job-id": job, "tag": f"r{i}", "vmstate": node, "devices": [node]}
                t = time.perf_counter()
                await run_until(client, "JOB_STATUS_CHANGE", "status", ("concluded",), cmd, arg)
                await client.execute("query-jobs")
                times[key].append(time.perf_counter() - t)
                await client.execute("job-dismiss", {"id": job})

    async def save(client: QMPClient) -> None:
        fd = os.open(tmp / "raw.save", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            t = time.perf_counter()
            await client.execute("migrate-set-capabilities", events_on)
            await client.execute("migrate-set-parameters", {"max-bandwidth": 1 << 53})
            client.send_fd_scm(fd)
            await client.execute("getfd", {"fdname": "f"})
            done = ("completed", "failed")
            await run_until(client, "MIGRATION", "status", done, "migrate", {"uri": "fd:f"})
            os.fsync(fd)
            times["save"].append(time.perf_counter() - t)
        finally:
            os.close(fd)

    async def main() -> None:
        await session([], (), jobs)
        for _ in range(rounds):
            await session([], (), save)
            fd = os.open(tmp / "raw.save", os.O_RDONLY)
            t = time.perf_counter()

            async def restore(client: QMPClient, fd: int = fd, t: float = t) -> None:
                await client.execute("migrate-set-capabilities", events_on)
                done = ("completed", "failed")
                arg = {"uri": f"fd:{fd}"}
                await run_until(client, "MIGRATION", "status", done, "migrate-incoming", arg)
                await client.execute("cont")
                times["restore"].append(time.perf_counter() - t)

            try:
                await session(["-incoming", "defer"], (fd,), restore)
            finally:
                os.close(fd)

    asyncio.run(main())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory", type=int, default=128, help="guest memory, MiB")
    parser.add_argument("--type", default="kvm", choices=("kvm", "qemu"))
    args = parser.parse_args()
    guest = TestGuest(GUEST_DIR)
    if not guest.exists():
        sys.exit("build the test guest first: scripts/build-test-guest")
    tmp = Path(tempfile.mkdtemp(prefix="asvirt-bench-snap-"))
    try:
        with libvirt_peer() as peer:
            run(args, guest, tmp, peer)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, guest: TestGuest, tmp: Path, peer: LibvirtPeer | str) -> None:
    """asvirt, raw QEMU and (when ``peer`` runs) libvirt on the same guest; the table."""
    disk = tmp / "d.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(disk), "256M"],
        check=True,
        capture_output=True,
    )
    xml = guest.xml(
        "bench",
        tmp / "serial",
        domain_type=args.type,
        memory_mib=args.memory,
        devices=disk_xml(disk),
    )
    mine = trio.run(bench_asvirt, tmp, args.rounds, xml)
    argv_text = subprocess.run(
        [
            sys.executable,
            "-m",
            "asvirt",
            "-c",
            f"qemu:///embed?root={tmp / 'root'}",
            "domxml-to-native",
            "qemu-argv",
            "/dev/stdin",
        ],
        input=xml,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    argv = shlex.split(argv_text)
    # Its own monitor instead of asvirt's socket.
    i = argv.index("-chardev")
    del argv[i : i + 4]
    raw_disk = tmp / "raw.qcow2"
    shutil.copy(disk, raw_disk)
    argv = [a.replace(str(disk), str(raw_disk)) for a in argv]
    raw = bench_raw(tmp, args.rounds, argv)
    theirs = None
    if isinstance(peer, LibvirtPeer):
        print(peer.describe())
        lv_disk = tmp / "lv.qcow2"
        shutil.copy(disk, lv_disk)
        lv_xml = domain_xml(xml.replace(str(disk), str(lv_disk)), "bench-lv")
        theirs = bench_libvirt(tmp, args.rounds, lv_xml, peer)
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds")
    head = f"{'operation':<10} {'raw QEMU ms':>12} {'asvirt ms':>10} {'ratio':>6}"
    if theirs is not None:
        head += f" {'libvirt ms':>11} {'asvirt/libvirt':>15}"
    print(head)
    for op in ("snapshot", "revert", "save", "restore"):
        r, a = _ms(raw[op]), _ms(mine[op])
        line = f"{op:<10} {r:>12.1f} {a:>10.1f} {a / r:>6.2f}"
        if theirs is not None:
            lv = _ms(theirs[op])
            line += f" {lv:>11.1f} {a / lv:>15.2f}"
        print(line)
    if isinstance(peer, str):
        print(f"libvirt: {peer}")


if __name__ == "__main__":
    main()
