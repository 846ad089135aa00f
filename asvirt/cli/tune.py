"""The CLI's live tuning commands, with virsh's names, flags and output: ``vcpuinfo``,
``vcpupin``, ``emulatorpin``, ``iothreadinfo``, ``iothreadpin``, ``blkdeviotune``,
``cpu-stats``.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments.
CPU lists are virsh's (``0-3,^2``; ``r``: every host CPU), checked against the host's CPUs
before anything is asked of the domain.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.conf.tuning import IOTUNE_ORDER
from asvirt.conf.units import UnitError, parse_size_arg

from .main import _domain, affect_options, command, exclusive
from .render import table
from .vsh import CommandError, failing

#: virsh's names of libvirt's vCPU states.
_VCPU_STATES = {
    asvirt.VcpuState.OFFLINE: "offline",
    asvirt.VcpuState.RUNNING: "running",
    asvirt.VcpuState.BLOCKED: "blocked",
}


def _cpulist(cpus: Sequence[bool]) -> str:
    """A CPU map as virsh prints it in a list: ``0-3,6``."""
    out: list[str] = []
    n = 0
    while n < len(cpus):
        if not cpus[n]:
            n += 1
            continue
        last = n
        while last + 1 < len(cpus) and cpus[last + 1]:
            last += 1
        out.append(str(n) if last == n else f"{n}-{last}")
        n = last + 1
    return ",".join(out)


def _parse_cpulist(text: str, maxcpu: int) -> list[bool]:
    """virsh's CPU list (``virshParseCPUList``): ``N``, ``N-M``, ``^N`` after them, ``r``
    for every CPU; a CPU the host lacks, or an empty result, is refused."""
    if text == "r":
        return [True] * maxcpu
    wanted: set[int] = set()
    for part in text.split(","):
        neg = part.startswith("^")
        body = part[1:] if neg else part
        lo, sep, hi = body.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (neg and sep):
            raise asvirt.InvalidArgError(f"Invalid cpulist '{text}'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first > last:
            raise asvirt.InvalidArgError(f"Invalid cpulist '{text}'")
        if neg:
            wanted.discard(first)
            continue
        for cpu in (first, last):
            if cpu >= maxcpu:
                raise asvirt.InvalidArgError(
                    f"CPU {cpu} in cpulist '{text}' exceed the maxcpu {maxcpu}"
                )
        wanted.update(range(first, last + 1))
    if not wanted:
        raise asvirt.InvalidArgError(f"Invalid cpulist '{text}'")
    return [n in wanted for n in range(maxcpu)]


def _number(text: str, option: str) -> int:
    if not text.isdigit():
        raise asvirt.InvalidArgError(
            f"Numeric value '{text}' for <{option}> option is malformed or out of range"
        )
    return int(text)


def _affinity(cpumap: Sequence[bool], pretty: bool) -> str:
    if pretty:
        return f"{_cpulist(cpumap)} (out of {len(cpumap)})"
    return "".join("y" if used else "-" for used in cpumap)


@command("vcpuinfo", "detailed domain vcpu information")
async def cmd_vcpuinfo(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    blocks = []
    if await dom.is_active():
        for v in await dom.vcpus():
            lines = [
                f"{'VCPU:':<15} {v.number}",
                f"{'CPU:':<15} {v.cpu}",
                f"{'State:':<15} {_VCPU_STATES.get(v.state, 'no state')}",
            ]
            if v.cpu_time:
                lines.append(f"{'CPU time:':<15} {v.cpu_time / 1e9:.1f}s")
            lines.append(f"{'CPU Affinity:':<15} {_affinity(v.cpumap, args.pretty)}")
            blocks.append("\n".join(lines) + "\n")
    else:
        # As virsh: the configuration's pins of the vCPUs it boots with, nothing measured.
        count = (await dom.info()).vcpus
        pins = await dom.vcpu_pin_info(config=True)
        for n, cpumap in enumerate(pins[:count]):
            lines = [
                f"{'VCPU:':<15} {n}",
                f"{'CPU:':<15} N/A",
                f"{'State:':<15} N/A",
                f"{'CPU time':<15} N/A",
                f"{'CPU Affinity:':<15} {_affinity(cpumap, args.pretty)}",
            ]
            blocks.append("\n".join(lines) + "\n")
    print("\n".join(blocks))
    return 0


@command("vcpupin", "control or query domain vcpu affinity")
async def cmd_vcpupin(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    vcpu = None if args.vcpu is None else _number(args.vcpu, "vcpu")
    dom = await _domain(conn, args.domain)
    if vcpu is None or args.cpulist is None:
        exclusive(args, ("live", "config"))
        if args.live and not await dom.is_active():
            raise asvirt.OperationInvalidError("cannot get vcpupin for offline domain")
        pins = await dom.vcpu_pin_info(live=args.live, config=args.config)
        if vcpu is not None and vcpu >= len(pins):
            which = "live" if args.live or (not args.config and await dom.is_active()) else "config"
            raise asvirt.InvalidArgError(
                f"vcpu {vcpu} is out of range of {which} cpu count {len(pins)}"
            )
        rows = [
            [str(n), _cpulist(cpumap)] for n, cpumap in enumerate(pins) if vcpu is None or n == vcpu
        ]
        print(table(["VCPU", "CPU Affinity"], rows))
        return 0
    maxcpu = (await conn.node_info()).cpus
    cpumap = _parse_cpulist(args.cpulist, maxcpu)
    await dom.pin_vcpu_flags(vcpu, cpumap, live=args.live, config=args.config)
    print()
    return 0


@command("emulatorpin", "control or query domain emulator affinity")
async def cmd_emulatorpin(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    dom = await _domain(conn, args.domain)
    if args.cpulist is None:
        exclusive(args, ("live", "config"))
        cpumap = await dom.emulator_pin_info(live=args.live, config=args.config)
        print(f"emulator: CPU Affinity\n{'-' * 34}\n       *: {_cpulist(cpumap)}\n")
        return 0
    maxcpu = (await conn.node_info()).cpus
    cpumap = _parse_cpulist(args.cpulist, maxcpu)
    await dom.pin_emulator(cpumap, live=args.live, config=args.config)
    print()
    return 0


def _iotune_value(name: str, text: str) -> int:
    """A ``blkdeviotune`` option's number: bytes ones scaled as virsh scales them (``10M``),
    the others whole numbers."""
    scaled = "bytes" in name
    try:
        if scaled:
            return parse_size_arg(text, what=name)
        if text.isdigit():
            return int(text)
    except UnitError:
        pass
    option = name.replace("_", "-")
    raise asvirt.InvalidArgError(
        f"{'Scaled numeric' if scaled else 'Numeric'} value '{text}' for <{option}> option "
        "is malformed or out of range"
    )


@command("blkdeviotune", "Set or query a block device I/O tuning parameters.")
async def cmd_blkdeviotune(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    params: dict[str, int | str] = {
        name: _iotune_value(name, getattr(args, name))
        for name in IOTUNE_ORDER
        if name != "group_name" and getattr(args, name) is not None
    }
    if args.group_name is not None:
        params["group_name"] = args.group_name
    dom = await _domain(conn, args.domain)
    if params:
        with failing("Unable to change block I/O throttle"):
            await dom.set_block_io_tune(args.device, params, live=args.live, config=args.config)
        print()
        return 0
    exclusive(args, ("live", "config"))
    with failing("Unable to get block I/O throttle parameters"):
        tune = await dom.block_io_tune(args.device, live=args.live, config=args.config)
    print("".join(f"{name:<15}: {tune[name]}\n" for name in IOTUNE_ORDER))
    return 0


def _times(stats: dict[str, int]) -> str:
    """One CPU's (or the total's) figures as virsh prints them, in seconds."""
    return "".join(f"\t{name:<15} {ns / 1e9:16.9f} seconds\n" for name, ns in stats.items())


@command("cpu-stats", "show domain cpu statistics")
async def cmd_cpu_stats(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    start = None if args.start is None else _number(args.start, "start")
    count = None if args.count is None else _number(args.count, "count")
    per_cpu = start is not None or count is not None
    total = args.total or not per_cpu
    per_cpu = per_cpu or not args.total
    dom = await _domain(conn, args.domain)
    out = []
    host, first = (await conn.node_info()).cpus, start or 0
    if per_cpu and first >= host:
        raise CommandError(f"Start CPU {first} is out of range (min: 0, max: {host - 1})")
    with failing(f"Failed to retrieve CPU statistics for domain '{dom.name}'"):
        if per_cpu:
            wanted = host - first if count is None else min(count, host - first)
            for n, stats in enumerate(await dom.get_cpu_stats(False, start=first, count=wanted)):
                out.append(f"CPU{first + n}:\n{_times(stats)}")
        if total:
            (stats,) = await dom.get_cpu_stats(True)
            out.append(f"Total:\n{_times(stats)}")
    print("".join(out))
    return 0


@command("iothreadinfo", "view domain IOThreads")
async def cmd_iothreadinfo(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"), ("live", "config"))
    dom = await _domain(conn, args.domain)
    threads = await dom.iothread_info(live=args.live, config=args.config)
    if not threads:
        print("No IOThreads found for the domain")
        return 0
    rows = [[str(t.iothread_id), _cpulist(t.cpumap)] for t in threads]
    print(table(["IOThread ID", "CPU Affinity"], rows))
    return 0


@command("iothreadpin", "control domain IOThread affinity")
async def cmd_iothreadpin(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    exclusive(args, ("current", "live"), ("current", "config"))
    iothread = _number(args.iothread, "iothread")
    dom = await _domain(conn, args.domain)
    maxcpu = (await conn.node_info()).cpus
    cpumap = _parse_cpulist(args.cpulist, maxcpu)
    await dom.pin_iothread(iothread, cpumap, live=args.live, config=args.config)
    print()
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the tuning commands' arguments (``add(name, *positional)``)."""

    p = add("vcpuinfo", "domain")
    p.add_argument("--pretty", action="store_true", help="return human readable output")
    p = add("vcpupin", "domain")
    p.add_argument("vcpu", nargs="?", help="vcpu number")
    p.add_argument("cpulist", nargs="?", help="host cpu number(s) to set, or omit to query")
    affect_options(p)
    p = add("blkdeviotune", "domain", "device")
    for name in IOTUNE_ORDER:
        p.add_argument("--" + name.replace("_", "-"), dest=name, help=name.replace("_", " "))
    affect_options(p)
    p = add("cpu-stats", "domain")
    p.add_argument("--total", action="store_true", help="Show total statistics only")
    p.add_argument("--start", help="Show statistics from this CPU")
    p.add_argument("--count", help="Number of shown CPUs at most")
    p = add("iothreadinfo", "domain")
    affect_options(p)
    p = add("iothreadpin", "domain", "iothread", "cpulist")
    affect_options(p)
    p = add("emulatorpin", "domain")
    p.add_argument("cpulist", nargs="?", help="host cpu number(s) to set, or omit to query")
    affect_options(p)
