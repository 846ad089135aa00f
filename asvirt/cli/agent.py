"""virsh's guest agent commands: qemu-agent-command, domfsfreeze, domfsthaw, domtime.

(``domifaddr --source agent`` and ``shutdown --mode agent`` are with their commands.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from collections.abc import Callable

from asvirt.calls import ConnectionCalls

from .main import _domain, command


@command("qemu-agent-command", "QEMU Guest Agent Command")
async def cmd_qemu_agent_command(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    timeout: float | None = args.timeout
    if args.block:
        timeout = 24 * 3600.0  # virsh --block waits for ever; a day stands in for that
    reply = await dom.agent_command(" ".join(args.cmd), timeout=timeout)
    if args.pretty and reply:
        reply = json.dumps(json.loads(reply), indent=2)
    print(reply)
    return 0


@command("domfsfreeze", "Freeze domain's mounted filesystems.")
async def cmd_domfsfreeze(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    count = await dom.fs_freeze(args.mountpoint or None)
    print(f"Froze {count} filesystem(s)\n")
    return 0


@command("domfsthaw", "Thaw domain's mounted filesystems.")
async def cmd_domfsthaw(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    count = await dom.fs_thaw()
    print(f"Thawed {count} filesystem(s)\n")
    return 0


@command("domtime", "domain time")
async def cmd_domtime(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if args.now or args.sync or args.time is not None:
        if args.sync:
            await dom.set_time(sync=True)
        elif args.now:
            now = time.time_ns()
            await dom.set_time(now // 1_000_000_000, now % 1_000_000_000)
        else:
            await dom.set_time(args.time)
        return 0
    seconds, _ = await dom.get_time()
    if args.pretty:
        stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        print(f"Time: {stamp:%Y-%m-%d %H:%M:%S}")
    else:
        print(f"Time: {seconds}")
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("qemu-agent-command", "domain")
    p.add_argument(
        "cmd", nargs="+", help='agent command as JSON, e.g. \'{"execute":"guest-info"}\''
    )
    p.add_argument("--timeout", type=float, help="seconds to wait for the answer")
    p.add_argument("--block", action="store_true", help="wait however long it takes")
    p.add_argument("--pretty", action="store_true", help="pretty-print the reply")
    p = add("domfsfreeze", "domain")
    p.add_argument("--mountpoint", action="append", help="only this mount point (repeatable)")
    add("domfsthaw", "domain")
    p = add("domtime", "domain")
    p.add_argument("--now", action="store_true", help="set the guest's clock to the host's")
    p.add_argument("--pretty", action="store_true", help="print the time readably")
    p.add_argument("--sync", action="store_true", help="set the guest's clock from its RTC")
    p.add_argument("--time", type=int, help="set the guest's clock to these epoch seconds")
