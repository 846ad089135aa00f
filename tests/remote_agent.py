"""A long-running client of a daemon that records every event it gets (run as a process).

    python -m tests.remote_agent URI LOG

It subscribes to everything from the start of the journal and writes each event as a JSON
line to LOG, until SIGTERM. Its connection rides out daemon restarts by itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import trio

import asvirt


async def main(uri: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with asvirt.open(uri) as conn, conn.subscribe(since=0) as events:
            os.write(fd, b'{"ready": true}\n')
            async with trio.open_nursery() as nursery:

                async def stop() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop)
                async for ev in events:
                    line = {"seq": ev.seq, "kind": ev.kind.value, "domain": ev.domain}
                    line["type"] = ev.type.name if ev.type else None
                    os.write(fd, (json.dumps(line) + "\n").encode())


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
