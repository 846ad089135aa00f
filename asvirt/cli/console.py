"""virsh console: the terminal attached to a guest's serial console."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable

import trio

from asvirt.calls import ConnectionCalls

from .main import _domain, command

#: Ctrl+]: detaches, as in virsh.
ESCAPE = b"\x1d"


async def _write_out(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # stdout shares stdin's (non-blocking) terminal
            await trio.lowlevel.wait_writable(fd)


@command("console", "connect to the guest console", needs_loop=True)
async def cmd_console(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    console = await dom.open_console(args.devname, force=args.force)
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        # Raw before the banner (so what is typed once it shows goes to the guest as it
        # is), and without flushing what was typed already.
        tty.setraw(fd, termios.TCSANOW)
    banner = f"Connected to domain '{dom.name}'\r\nEscape character is ^] (Ctrl + ])\r\n"
    await _write_out(sys.stdout.fileno(), banner.encode())
    stdin = trio.lowlevel.FdStream(os.dup(fd))
    try:
        async with console, trio.open_nursery() as nursery:

            async def guest_to_terminal() -> None:
                while data := await console.receive_some():
                    await _write_out(sys.stdout.fileno(), data)
                nursery.cancel_scope.cancel()  # taken over, or the guest stopped

            nursery.start_soon(guest_to_terminal)
            while data := await stdin.receive_some():
                if ESCAPE in data:
                    before = data.split(ESCAPE, 1)[0]
                    if before:
                        await console.send_all(before)
                    break
                await console.send_all(data)
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(OSError):
            await stdin.aclose()
        os.set_blocking(fd, True)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    print(flush=True)
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("console", "domain")
    p.add_argument("devname", nargs="?", help="the serial or console alias (default: the first)")
    p.add_argument("--force", action="store_true", help="take the console over from another")
