"""The event journal: append cost, durable append throughput, replay throughput.

    .venv/bin/python bench/bench_journal.py [--events N] [--dir DIR]

Measured on real files (in DIR, default a temporary directory under /var/tmp; /tmp may be a
tmpfs, where fsync costs nothing):

    append cost          FileJournal.append() alone, per event (one write(2), no fsync)
    durable throughput   N lifecycle events appended from a trio task while run() batches the
                         fsyncs, until the last one is fsynced (wait_synced)
    replay, from disk    a fresh FileJournal (nothing in its cache) reading every event back
                         with read(after, 500), as a client resuming from seq 0 would; the
                         kernel's page cache is warm (dropping it would disturb the machine)
    replay, from memory  the same from the in-memory cache (the newest cache_events events)
    seek                 read(after, 1) and read(after, 100) at random seqs, from disk

Target (from the journal issue): appending must not slow event delivery: well under the
~1 ms median delivery latency bench_lifecycle.py measures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asvirt.config import JournalConfig  # noqa: E402
from asvirt.events import (  # noqa: E402
    DomainEvent,
    EventKind,
    FileJournal,
    LifecycleEvent,
    ResumedDetail,
    StartedDetail,
    StoppedDetail,
    SuspendedDetail,
    event_to_dict,
)

#: What a busy node mostly journals: guests starting, pausing, resuming, stopping.
TYPICAL = [
    (LifecycleEvent.STARTED, StartedDetail.BOOTED),
    (LifecycleEvent.SUSPENDED, SuspendedDetail.PAUSED),
    (LifecycleEvent.RESUMED, ResumedDetail.UNPAUSED),
    (LifecycleEvent.STOPPED, StoppedDetail.DESTROYED),
]


def typical_event(seq: int) -> DomainEvent:
    type_, detail = TYPICAL[seq % len(TYPICAL)]
    vm = seq % 50
    return DomainEvent(
        seq=seq,
        timestamp=time.time(),
        domain=f"guest-{vm:03d}",
        uuid=f"6f1c3a52-8d0e-4b7a-9c1d-{vm:012x}",
        kind=EventKind.LIFECYCLE,
        type=type_,
        detail=detail,
    )


def filesystem(path: Path) -> str:
    """The filesystem type ``path`` lives on (from /proc/self/mountinfo)."""
    best, kind = "", "?"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return kind
    real = os.path.realpath(path)
    for line in lines:
        fields = line.split()
        mount = fields[4]
        fstype = fields[fields.index("-") + 1]
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fstype
    return kind


def us(ns: float) -> float:
    return ns / 1000


def bench_append_cost(directory: Path, n: int) -> list[int]:
    """ns per append(), no fsync running (what the trio thread pays per event)."""
    events = [typical_event(seq) for seq in range(1, n + 1)]
    costs = []
    with FileJournal.open(directory, JournalConfig()) as journal:
        clock = time.perf_counter_ns
        for ev in events:
            t0 = clock()
            journal.append(ev)
            costs.append(clock() - t0)
    return costs


async def bench_durable(directory: Path, n: int, burst: int) -> tuple[float, int, list[int]]:
    """Seconds until n events, appended in bursts with run() in the background, are fsynced;
    the number of fsync rounds; the ns per append while fsyncs run."""
    events = [typical_event(seq) for seq in range(1, n + 1)]
    journal = FileJournal.open(directory, JournalConfig())
    costs: list[int] = []
    clock = time.perf_counter_ns
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.run)
            t0 = time.perf_counter()
            for i, ev in enumerate(events, 1):
                s = clock()
                journal.append(ev)
                costs.append(clock() - s)
                if i % burst == 0:
                    # Other tasks run between bursts, as in a node (and run() gets its turn).
                    await trio.lowlevel.checkpoint()
            await journal.wait_synced(n)
            elapsed = time.perf_counter() - t0
            rounds = journal._sync_rounds
            nursery.cancel_scope.cancel()
    finally:
        journal.close()
    return elapsed, rounds, costs


def bench_replay(directory: Path, n: int, chunk: int, cache: int) -> tuple[float, int]:
    """Seconds to read everything back with read(after, chunk) from a freshly opened journal."""
    with FileJournal.open(directory, JournalConfig(cache_events=cache)) as journal:
        t0 = time.perf_counter()
        after, count = 0, 0
        while batch := journal.read(after, chunk):
            count += len(batch)
            after = batch[-1].seq
        elapsed = time.perf_counter() - t0
    assert count == n, (count, n)
    return elapsed, count


def bench_seek(directory: Path, n: int, probes: int, count: int) -> list[float]:
    """Seconds per read(after, count) at random seqs, from disk."""
    rng = random.Random(1)
    out = []
    with FileJournal.open(directory, JournalConfig(cache_events=1)) as journal:
        for _ in range(probes):
            after = rng.randrange(0, n - count)
            t0 = time.perf_counter()
            got = journal.read(after, count)
            out.append(time.perf_counter() - t0)
            assert got[0].seq == after + 1 and len(got) == count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--burst", type=int, default=16, help="appends between checkpoints")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the journals")
    args = parser.parse_args()
    n = args.events
    base = args.dir or Path("/var/tmp")
    work = Path(tempfile.mkdtemp(prefix="asvirt-bench-journal-", dir=base))
    try:
        # 8 hex digits, a space, the JSON, a newline
        record = 10 + len(json.dumps(event_to_dict(typical_event(12345)), separators=(",", ":")))
        print(
            f"{n} typical lifecycle events (~{record} bytes a record), {work} on "
            f"{filesystem(work)}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )

        costs = bench_append_cost(work / "append", n)
        print("\nappend() alone (one write(2), no fsync in flight):")
        print(
            f"  mean {us(statistics.fmean(costs)):6.2f} us   median "
            f"{us(statistics.median(costs)):6.2f} us   p99 "
            f"{us(sorted(costs)[len(costs) * 99 // 100]):7.2f} us   "
            f"-> {n / (sum(costs) / 1e9):,.0f} appends/s"
        )

        elapsed, rounds, dcosts = trio.run(bench_durable, work / "durable", n, args.burst)
        print(
            f"\ndurable appends, run() batching fsyncs (fsync_interval 0.05 s, bursts of "
            f"{args.burst}):"
        )
        print(
            f"  {n / elapsed:,.0f} events/s until the last one was fsynced "
            f"({elapsed:.2f} s, {rounds} fsync rounds, {n / max(rounds, 1):,.0f} events each)"
        )
        print(
            f"  append() meanwhile: mean {us(statistics.fmean(dcosts)):6.2f} us   median "
            f"{us(statistics.median(dcosts)):6.2f} us   p99 "
            f"{us(sorted(dcosts)[len(dcosts) * 99 // 100]):7.2f} us"
        )

        size = sum(p.stat().st_size for p in (work / "durable").iterdir())
        elapsed, count = bench_replay(work / "durable", n, 500, cache=1)
        nsegs = len(os.listdir(work / "durable"))
        print(f"\nreplay of all {count} events with read(after, 500), {nsegs} segments:")
        print(
            f"  from disk (journal cache cold, page cache warm): {count / elapsed:,.0f} events/s, "
            f"{size / elapsed / 2**20:.1f} MiB/s ({elapsed * 1000:.0f} ms)"
        )
        cached = min(n, 4096)
        with FileJournal.open(work / "durable", JournalConfig(cache_events=cached)) as journal:
            t0 = time.perf_counter()
            after, got = n - cached, 0
            while batch := journal.read(after, 500):
                got += len(batch)
                after = batch[-1].seq
            elapsed = time.perf_counter() - t0
        print(
            f"  from memory (the newest {cached}): {got / elapsed:,.0f} events/s "
            f"({elapsed * 1e6:.0f} us)"
        )

        for count in (1, 100):
            seeks = bench_seek(work / "durable", n, 200, count)
            print(
                f"  read(random seq, {count:3}) from disk: median "
                f"{statistics.median(seeks) * 1e6:5.0f} us, max {max(seeks) * 1e6:5.0f} us"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
