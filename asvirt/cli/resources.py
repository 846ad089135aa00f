"""The CLI's memory and vCPU commands, with virsh's names, flags and output: ``setmem``,
``setmaxmem``, ``setvcpus``, ``vcpucount``.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments.
As in virsh, ``setmem`` and ``setvcpus`` without a flag act on the running domain
(libvirt's ``virDomainSetMemory``/``virDomainSetVcpus``), ``setmaxmem`` without one on
the current state's definition; sizes default to KiB (``512M``, ``1G`` also work).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.conf.units import UnitError, parse_size_arg

from .main import _domain, affect_options, command, exclusive


def _kib(text: str) -> int:
    """A size argument in KiB (KiB when no unit is given), rounded up as virsh does."""
    try:
        size = parse_size_arg(text, what="size", default_unit="KiB")
    except UnitError:
        raise asvirt.InvalidArgError(
            f"Scaled numeric value '{text}' for <size> option is malformed or out of range"
        ) from None
    return -(-size // 1024)


@command("setmem", "change memory allocation")
async def cmd_setmem(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    kib = _kib(args.size)
    dom = await _domain(conn, args.domain)
    # No flag (or --current): the running guest only, as virDomainSetMemory.
    live = args.live or not args.config
    await dom.set_memory(kib, live=live, config=args.config)
    print()
    return 0


@command("setmaxmem", "change maximum memory limit")
async def cmd_setmaxmem(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    kib = _kib(args.size)
    dom = await _domain(conn, args.domain)
    await dom.set_max_memory(kib, live=args.live, config=args.config)
    print()
    return 0


def _count(text: str) -> int:
    if not text.isdigit():
        raise asvirt.InvalidArgError(
            f"Numeric value '{text}' for <count> option is malformed or out of range"
        )
    return int(text)


@command("setvcpus", "change number of virtual CPUs")
async def cmd_setvcpus(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"), ("guest", "config"))
    if args.guest:
        raise asvirt.OperationUnsupportedError(
            "setting the vCPUs the guest uses (--guest) needs the guest agent, which asvirt "
            "does not drive for this"
        )
    count = _count(args.count)
    dom = await _domain(conn, args.domain)
    flagged = args.live or args.config or args.maximum or args.current
    # No flag at all: the running guest only, as virDomainSetVcpus.
    live = args.live or not flagged
    await dom.set_vcpus(count, live=live, config=args.config, maximum=args.maximum)
    print()
    return 0


@command("vcpucount", "domain vcpu counts")
async def cmd_vcpucount(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(
        args, ("current", "live"), ("current", "config"), ("active", "maximum"), ("guest", "config")
    )
    if args.guest:
        raise asvirt.OperationUnsupportedError(
            "the vCPUs the guest uses (--guest) need the guest agent, which asvirt does not "
            "drive for this"
        )
    dom = await _domain(conn, args.domain)
    if not (args.maximum or args.active or args.live or args.config or args.current):
        # Every count that exists: a shut-off domain has no live ones, a transient one no
        # config (virsh leaves those lines out).
        active, persistent = await dom.is_active(), await dom.is_persistent()
        lines = []
        for which, maximum in (("maximum", True), ("current", False)):
            for state, live, there in (("config", False, persistent), ("live", True, active)):
                if there:
                    count = await dom.vcpus_count(live=live, config=not live, maximum=maximum)
                    lines.append(f"{which:<12} {state:<12} {count:3d}")
        print("\n".join([*lines, ""]))
        return 0
    count = await dom.vcpus_count(live=args.live, config=args.config, maximum=args.maximum)
    print(f"{count}\n")
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the memory and vCPU commands' arguments (``add(name, *positional)``)."""

    for name in ("setmem", "setmaxmem"):
        p = add(name, "domain")
        p.add_argument("size", help="new size (KiB unless a unit is given: 512M, 2G)")
        affect_options(p)
    p = add("setvcpus", "domain")
    p.add_argument("count", help="number of virtual CPUs")
    p.add_argument("--maximum", action="store_true", help="set maximum limit (with --config)")
    p.add_argument("--guest", action="store_true", help="modify cpu state in the guest")
    affect_options(p)
    p = add("vcpucount", "domain")
    p.add_argument("--maximum", action="store_true", help="get maximum count of vcpus")
    p.add_argument("--active", action="store_true", help="get number of currently active vcpus")
    p.add_argument("--guest", action="store_true", help="count vcpus from the guest's view")
    affect_options(p)
