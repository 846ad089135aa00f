"""virsh's keyboard, screen and power commands: send-key, inject-nmi, screenshot,
dompmsuspend, dompmwakeup."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from asvirt.calls import ConnectionCalls

from .main import _domain, command
from .vsh import CommandError, failing


@command("send-key", "Send keycodes to the guest")
async def cmd_send_key(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt.errors import InvalidArgError
    from asvirt.keycodes import MAX_KEYS, codeset, keycode

    try:
        codes = codeset(args.codeset)
    except InvalidArgError:
        raise CommandError(f"unknown codeset: '{args.codeset}'") from None
    if len(args.keycode) > MAX_KEYS:
        raise CommandError("too many keycodes")
    numbers = []
    for key in args.keycode:
        try:
            numbers.append(keycode(codes, key))
        except InvalidArgError:
            raise CommandError(f"invalid keycode: '{key}'") from None
    dom = await _domain(conn, args.domain)
    await dom.send_key(codes, args.holdtime, numbers)
    print()
    return 0


@command("inject-nmi", "Inject NMI to the guest")
async def cmd_inject_nmi(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    await dom.inject_nmi()
    print()
    return 0


@command("screenshot", "take a screenshot of a current domain console and store it into a file")
async def cmd_screenshot(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt.fsutil import atomic_write

    dom = await _domain(conn, args.domain)
    mime, image = await dom.screenshot(args.screen)
    path = args.file or f"{dom.name}-{time.strftime('%Y-%m-%d-%H:%M:%S')}.ppm"
    try:
        # Replaced whole (a symlink there is replaced, not followed); private: a screen
        # may show what was typed.
        atomic_write(path, image, durable=False)
    except OSError as err:
        raise CommandError(f"cannot create file {path}: {err.strerror}") from None
    print(f"Screenshot saved to {path}, with type of {mime}")
    return 0


@command("dompmsuspend", "suspend a domain gracefully using power management functions")
async def cmd_dompmsuspend(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt import NodeSuspendTarget

    targets = {"mem": NodeSuspendTarget.MEM, "disk": NodeSuspendTarget.DISK,
               "hybrid": NodeSuspendTarget.HYBRID}  # fmt: skip
    if args.target not in targets:
        raise CommandError("Invalid target")
    dom = await _domain(conn, args.domain)
    with failing(f"Domain '{dom.name}' could not be suspended"):
        await dom.pm_suspend_for_duration(targets[args.target], args.duration)
    print(f"Domain '{dom.name}' successfully suspended")
    return 0


@command("dompmwakeup", "wakeup a domain from pmsuspended state")
async def cmd_dompmwakeup(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    with failing(f"Domain '{dom.name}' could not be woken up"):
        await dom.pm_wakeup()
    print(f"Domain '{dom.name}' successfully woken up")
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("send-key", "domain")
    p.add_argument("--codeset", default="linux", help="the codeset of keycodes, default:linux")
    p.add_argument(
        "--holdtime", type=int, default=0, help="how long the keys are held, in milliseconds"
    )
    p.add_argument("keycode", nargs="+", help="the key code (a number, or a name: KEY_A)")
    add("inject-nmi", "domain")
    p = add("screenshot", "domain")
    p.add_argument("file", nargs="?", help="where to store the screenshot")
    p.add_argument("--screen", type=int, default=0, help="ID of a screen to take screenshot of")
    p = add("dompmsuspend", "domain")
    p.add_argument("target", help="mem(Suspend-to-RAM), disk(Suspend-to-Disk), hybrid")
    p.add_argument("--duration", type=int, default=0, help="duration in seconds")
    add("dompmwakeup", "domain")
