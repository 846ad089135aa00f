"""A long-running client that keeps its cursor, for the journal tests (run as a process).

    python -m tests.journal_agent ROOT DOMAIN LOG

It opens the embed root ROOT, resumes its subscription after the last event recorded in LOG
(one JSON line per event; the log *is* its cursor: the seq of its last complete line), and
drives DOMAIN through a cycle of transitions — start paused, resume, suspend, resume,
destroy — writing each event it receives to LOG with one ``write`` per line. It exits with
status 0 once it has recorded ``--transitions`` lifecycle events of DOMAIN and the domain is
shut off. The test kills it with SIGKILL at random points and starts it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import trio

import asvirt
from asvirt import DomainState as S

LC = asvirt.EventKind.LIFECYCLE


def read_log(path: Path) -> list[dict[str, object]]:
    """The complete lines of the log (a line cut short by a kill is dropped, and cut off)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return [json.loads(line) for line in complete.splitlines()]


def record(ev: asvirt.DomainEvent) -> dict[str, object]:
    return {
        "seq": ev.seq,
        "domain": ev.domain,
        "kind": ev.kind.value,
        "type": ev.type.name if ev.type else None,
        "detail": ev.detail.name if ev.detail else None,
    }


async def main(root: str, name: str, log: Path, transitions: int) -> int:
    seen = read_log(log)
    cursor = int(seen[-1]["seq"]) if seen else 0  # type: ignore[call-overload]
    lifecycle_seen = sum(1 for r in seen if r["kind"] == "lifecycle" and r["domain"] == name)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        dom = await conn.lookup_by_name(name)
        async with conn.subscribe(since=cursor) as events:

            def take(ev: asvirt.DomainEvent) -> None:
                nonlocal lifecycle_seen
                os.write(fd, (json.dumps(record(ev)) + "\n").encode())
                if ev.kind is LC and ev.domain == name:
                    lifecycle_seen += 1

            resumed_since_start = 0
            while True:
                # Record everything delivered so far (the replay first), then act.
                while events.pending() or events.replaying:
                    take(events.receive_nowait())
                state, _ = await dom.state()
                if lifecycle_seen >= transitions and state is S.SHUTOFF:
                    return 0
                try:
                    if state is S.SHUTOFF:
                        resumed_since_start = 0
                        await dom.start(paused=True)
                    elif state is S.PAUSED:
                        await dom.resume()
                        resumed_since_start += 1
                    elif state is S.RUNNING and resumed_since_start < 2:
                        await dom.suspend()
                    else:
                        await dom.destroy()
                except asvirt.AsvirtError as err:
                    print(f"agent: {err}", file=sys.stderr)
                    continue
                take(await events.receive())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("domain")
    ap.add_argument("log", type=Path)
    ap.add_argument("--transitions", type=int, default=12)
    args = ap.parse_args()
    sys.exit(trio.run(main, args.root, args.domain, args.log, args.transitions))
