"""The monitoring commands of the CLI, with virsh's names and output: ``domstats``,
``domblkstat``, ``domifstat``, ``dommemstat``, ``domblkinfo``, ``vncdisplay`` (``domdisplay``
is in :mod:`.main`).

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments to
the main parser. Like every virsh command, each ends its output with an empty line.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections.abc import Callable

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.drivers.base import StatsGroup

from . import render
from .main import _domain, command

#: ``domstats``' group options, as virsh spells them.
_GROUP_OPTIONS = (
    ("state", StatsGroup.STATE),
    ("cpu_total", StatsGroup.CPU_TOTAL),
    ("balloon", StatsGroup.BALLOON),
    ("vcpu", StatsGroup.VCPU),
    ("interface", StatsGroup.INTERFACE),
    ("block", StatsGroup.BLOCK),
)

#: ``domblkstat``'s fields in virsh's order: the API's name, the legacy name virsh prints
#: (None: the API's), and the --human explanation.
_BLKSTAT_FIELDS = (
    ("rd_operations", "rd_req", "number of read operations:"),
    ("rd_bytes", "rd_bytes", "number of bytes read:"),
    ("wr_operations", "wr_req", "number of write operations:"),
    ("wr_bytes", "wr_bytes", "number of bytes written:"),
    ("errs", "errs", "error count:"),
    ("flush_operations", None, "number of flush operations:"),
    ("rd_total_times", None, "total duration of reads (ns):"),
    ("wr_total_times", None, "total duration of writes (ns):"),
    ("flush_total_times", None, "total duration of flushes (ns):"),
)

_IFSTAT_FIELDS = (
    ("rx_bytes", "rx_bytes"),
    ("rx_packets", "rx_packets"),
    ("rx_errs", "rx_errs"),
    ("rx_drop", "rx_drop"),
    ("tx_bytes", "tx_bytes"),
    ("tx_packets", "tx_packets"),
    ("tx_errs", "tx_errs"),
    ("tx_drop", "tx_drop"),
)


@command("domstats", "get statistics about one or multiple domains")
async def cmd_domstats(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    groups = StatsGroup(0)
    for option, group in _GROUP_OPTIONS:
        if getattr(args, option):
            groups |= group
    active = persistent = None
    if args.list_active != args.list_inactive:
        active = args.list_active
    if args.list_persistent != args.list_transient:
        persistent = args.list_persistent
    domains = [await _domain(conn, d) for d in args.domains] if args.domains else None
    records = await conn.get_all_domain_stats(
        groups, domains=domains, active=active, persistent=persistent
    )
    blocks = []
    for dom, params in records:
        lines = [f"Domain: '{dom.name}'"]
        lines += [f"  {key}={render.typed_value(value)}" for key, value in params.items()]
        blocks.append("\n".join(lines) + "\n")
    print("\n".join(blocks))
    return 0


@command("domblkstat", "get device block stats for a domain")
async def cmd_domblkstat(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    device = args.device or ""
    stats = await dom.block_stats(device)
    lines = []
    if args.human:
        lines.append(f"Device: {device}")
        device = ""
    for field, legacy, human in _BLKSTAT_FIELDS:
        if field not in stats:
            continue
        if args.human:
            lines.append(f"{device} {human:<31} {stats[field]}")
        else:
            lines.append(f"{device} {legacy or field} {stats[field]}")
    known = {f for f, _, _ in _BLKSTAT_FIELDS}
    lines += [f"{device} {k} {v}" for k, v in stats.items() if k not in known]
    print("\n".join([*lines, ""]))
    return 0


@command("domifstat", "get network interface stats for a domain")
async def cmd_domifstat(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    stats = await dom.interface_stats(args.interface)
    lines = [
        f"{args.interface} {name} {getattr(stats, attr)}"
        for name, attr in _IFSTAT_FIELDS
        if getattr(stats, attr) >= 0
    ]
    print("\n".join([*lines, ""]))
    return 0


@command("dommemstat", "get memory statistics for a domain")
async def cmd_dommemstat(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if args.current and (args.live or args.config):
        raise asvirt.InvalidArgError("--current is exclusive with --live and --config")
    if args.period is not None:
        if args.period < 0:
            raise asvirt.InvalidArgError(f"Invalid collection period value '{args.period}'")
        await dom.set_memory_stats_period(args.period, live=args.live, config=args.config)
        print()
        return 0
    if args.live or args.config or args.current:
        raise asvirt.InvalidArgError("--live, --config and --current need --period")
    stats = await dom.memory_stats()
    print("\n".join([*(f"{name} {value}" for name, value in stats.items()), ""]))
    return 0


def _block_info_cells(info: asvirt.BlockInfo | None, human: bool) -> tuple[str, str, str]:
    if info is None or (info.capacity == 0 and info.allocation == 0 and info.physical == 0):
        return "-", "-", "-"
    show = render.pretty_capacity if human else str
    return show(info.capacity), show(info.allocation), show(info.physical)


@command("domblkinfo", "domain block device size information")
async def cmd_domblkinfo(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if args.all and args.device:
        raise asvirt.InvalidArgError("Options --all and --device are mutually exclusive")
    if args.all:
        rows = []
        for disk in _xml(await dom.xml_desc()).findall("./devices/disk"):
            target = disk.find("target")
            name = target.get("dev", "") if target is not None else ""
            info = await dom.block_info(name) if disk.find("source") is not None else None
            rows.append((name, *_block_info_cells(info, args.human)))
        print(render.table(("Target", "Capacity", "Allocation", "Physical"), rows))
        return 0
    if not args.device:
        raise asvirt.InvalidArgError("command 'domblkinfo' requires <device> option")
    cap, alloc, phys = _block_info_cells(await dom.block_info(args.device), args.human)
    print(f"{'Capacity:':<15} {cap}\n{'Allocation:':<15} {alloc}\n{'Physical:':<15} {phys}\n")
    return 0


def _xml(text: str) -> ET.Element:
    return ET.fromstring(text)


def _listen_address(gfx: ET.Element) -> str | None:
    address = gfx.get("listen")
    if not address:
        listen = gfx.find("listen")
        address = listen.get("address") if listen is not None else None
    return address or None


async def _live_graphics(dom: asvirt.Domain) -> list[ET.Element]:
    if not await dom.is_active():
        raise asvirt.OperationInvalidError("Domain is not running")
    return _xml(await dom.xml_desc()).findall("./devices/graphics")


@command("vncdisplay", "vnc display")
async def cmd_vncdisplay(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    vnc = [g for g in await _live_graphics(dom) if g.get("type") == "vnc"]
    port = vnc[0].get("port") if vnc else None
    if port is None or not port.lstrip("-").isdigit() or int(port) < 0:
        raise asvirt.OperationFailedError("Failed to get VNC port. Is this domain using VNC?")
    address = _listen_address(vnc[0])
    display = int(port) - 5900
    print(f":{display}\n" if address in (None, "0.0.0.0") else f"{address}:{display}\n")
    return 0


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the monitoring commands' arguments (``add(name, *positional)`` makes a subparser)."""
    p = add("domstats")
    for option, _ in _GROUP_OPTIONS:
        p.add_argument("--" + option.replace("_", "-"), action="store_true", dest=option)
    for which in ("active", "inactive", "persistent", "transient"):
        p.add_argument(f"--list-{which}", action="store_true", help=f"only {which} domains")
    p.add_argument("--raw", action="store_true", help="do not pretty-print the fields")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")
    p = add("domblkstat", "domain")
    p.add_argument("device", nargs="?", help="block device (all of them summed if none)")
    p.add_argument("--human", action="store_true", help="a more human readable output")
    add("domifstat", "domain", "interface")
    p = add("dommemstat", "domain")
    p.add_argument("--period", type=int, help="period in seconds to set collection")
    p.add_argument("--config", action="store_true", help="affect next boot")
    p.add_argument("--live", action="store_true", help="affect running domain")
    p.add_argument("--current", action="store_true", help="affect current domain")
    p = add("domblkinfo", "domain")
    p.add_argument("device", nargs="?", help="block device")
    p.add_argument("--human", action="store_true", help="human readable output")
    p.add_argument("--all", action="store_true", help="display all block devices info")
    add("vncdisplay", "domain")
