"""The network commands of the CLI (virsh's names and output): ``net-*`` and ``domifaddr``.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments to
the main parser.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.drivers.base import InterfaceAddressSource, IPAddrType

from . import render, vsh
from .main import _domain, _read_file, command


async def _network(conn: ConnectionCalls, ident: str) -> asvirt.Network:
    """By UUID (when it looks like one), else by name, as virsh does."""
    if len(ident) == 36:
        try:
            return await conn.lookup_network_by_uuid(ident)
        except (asvirt.NoNetworkError, asvirt.InvalidArgError):
            pass
    try:
        return await conn.lookup_network_by_name(ident)
    except asvirt.NoNetworkError:
        raise asvirt.NoNetworkError(f"failed to get network '{ident}'") from None


@command("net-define", "define an inactive persistent virtual network from an XML file")
async def cmd_net_define(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await conn.network_define_xml(_read_file(args.file))
    print(f"Network {net.name} defined from {args.file}\n")
    return 0


@command("net-undefine", "undefine a persistent network")
async def cmd_net_undefine(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    await net.undefine()
    print(f"Network {net.name} has been undefined\n")
    return 0


@command("net-start", "start a (previously defined) inactive network")
async def cmd_net_start(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    await net.create()
    print(f"Network {net.name} started\n")
    return 0


@command("net-destroy", "destroy (stop) a network")
async def cmd_net_destroy(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    await net.destroy()
    print(f"Network {net.name} destroyed\n")
    return 0


@command("net-autostart", "autostart a network")
async def cmd_net_autostart(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    await net.set_autostart(not args.disable)
    verb = "unmarked" if args.disable else "marked"
    print(f"Network {net.name} {verb} as autostarted\n")
    return 0


@command("net-info", "network information")
async def cmd_net_info(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    rows = [
        ("Name:", net.name),
        ("UUID:", net.uuid),
        ("Active:", "yes" if await net.is_active() else "no"),
        ("Persistent:", "yes" if await net.is_persistent() else "no"),
        ("Autostart:", "yes" if await net.autostart() else "no"),
    ]
    try:
        rows.append(("Bridge:", await net.bridge_name()))
    except asvirt.OperationInvalidError:
        pass  # virsh leaves the line out for a network without a bridge
    for key, value in rows:
        print(f"{key:<15} {value}")
    print()
    return 0


@command("net-dumpxml", "network information in XML")
async def cmd_net_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    sys.stdout.write(render.xml_document(await net.xml_desc(inactive=args.inactive)))
    return 0


def _expiry(seconds: int) -> str:
    if not seconds:
        return "never"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


@command("net-dhcp-leases", "print lease info for a given network")
async def cmd_net_dhcp_leases(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    net = await _network(conn, args.network)
    mac = args.mac.lower() if args.mac else None
    rows = []
    for lease in sorted(await net.dhcp_leases(mac), key=lambda x: (x.mac, x.ip_addr)):
        rows.append(
            (
                _expiry(lease.expiry_time),
                lease.mac or "-",
                "ipv6" if lease.type is IPAddrType.IPV6 else "ipv4",
                f"{lease.ip_addr}/{lease.prefix}",
                lease.hostname or "-",
                lease.client_id or "-",
            )
        )
    header = ("Expiry Time", "MAC address", "Protocol", "IP address", "Hostname")
    print(render.table((*header, "Client ID or DUID"), rows))
    return 0


_SOURCES = {
    "lease": InterfaceAddressSource.LEASE,
    "agent": InterfaceAddressSource.AGENT,
    "arp": InterfaceAddressSource.ARP,
}


@command("domifaddr", "get network interfaces' addresses for a running domain")
async def cmd_domifaddr(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    source = _SOURCES.get(args.source or "lease")
    if source is None:
        raise asvirt.InvalidArgError(f"Unknown data source '{args.source}'")
    dom = await _domain(conn, args.domain)
    ifaces = await dom.interface_addresses(source)
    # virsh's own layout (printf widths), not a table.
    print(f" {'Name':<10} {'MAC address':<20} {'Protocol':<8}     Address")
    print("-" * 49 + "-" * 30)
    for iface in ifaces:
        if args.interface and iface.name != args.interface:
            continue
        if not iface.addrs:
            print(f" {iface.name:<10} {iface.hwaddr or 'N/A':<17}    {'N/A':<12} N/A")
            continue
        for j, addr in enumerate(iface.addrs):
            kind = "ipv6" if addr.type is IPAddrType.IPV6 else "ipv4"
            text = f"{kind:<12} {addr.addr}/{addr.prefix}"
            if args.full or j == 0:
                print(f" {iface.name:<10} {iface.hwaddr:<17}    {text}")
            else:
                print(f" {'-':<10} {'-':<17}    {text}")
    print()
    return 0


@command("net-event", "network events", needs_loop=True)
async def cmd_net_event(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    if args.list:
        print("lifecycle")
        return 0
    if args.event and args.event != "lifecycle":
        raise asvirt.InvalidArgError(f"unknown network event type '{args.event}'")
    net = await _network(conn, args.network) if args.network else None
    return await vsh.print_events(conn, net, asvirt.EventKind.NETWORK_LIFECYCLE, args)


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the network commands' arguments (``add(name, *positional)`` makes a subparser)."""
    add("net-define", "file")
    add("net-undefine", "network")
    add("net-start", "network")
    add("net-destroy", "network")
    p = add("net-autostart", "network")
    p.add_argument("--disable", action="store_true", help="disable autostarting")
    add("net-info", "network")
    p = add("net-dumpxml", "network")
    p.add_argument("--inactive", action="store_true", help="the persistent configuration")
    p = add("net-dhcp-leases", "network")
    p.add_argument("--mac", help="only the leases of this MAC address")
    p = add("domifaddr", "domain")
    p.add_argument("--interface", help="only this interface")
    p.add_argument("--full", action="store_true", help="always show names and MACs")
    p.add_argument("--source", help="lease (the default), agent or arp")
    p = add("net-event")
    p.add_argument("--network", help="only events of this network")
    p.add_argument("--event", help="only this event type (lifecycle)")
    p.add_argument("--loop", action="store_true", help="keep receiving events")
    p.add_argument("--timeout", help="stop after this many seconds")
    p.add_argument("--timestamp", action="store_true", help="prefix events with a timestamp")
    p.add_argument("--list", action="store_true", help="list the event types")
