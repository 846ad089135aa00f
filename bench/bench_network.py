"""Network start -> DHCP-ready, and stop: asvirt (and libvirt's net-start, when it can be run).

    .venv/bin/python bench/bench_network.py [--rounds N]

Needs root, ``ip``, ``dnsmasq``, ``nft`` and busybox. Everything runs inside a network
namespace this script creates (it re-runs itself there) and deletes at the end: the host's
interfaces, routes and firewall are never touched.

Measured for libvirt's default network (NAT, 192.168.122.0/24, DHCP), per round:

    start()                 net.create() returns: bridge, addresses, nft table, dnsmasq bound
    start -> DHCP lease     from calling create() until a DHCP client on the bridge (busybox
                            udhcpc on a veth plugged in as soon as create() returns) holds a
                            lease: the network really serves
    destroy()               net.destroy() returns: dnsmasq gone, table and bridge removed

The target (from the issue) is to be no slower than libvirt's net-start/net-destroy. With
libvirt installed, a private libvirtd (bench/libvirt_peer.py) is started *inside* the same
namespace, so its networks too are made there and never on the host; after asvirt's rounds,
the same rounds run through libvirt-python (create(), destroy()), each figure printed with
asvirt/libvirt. libvirt 9's network driver writes its firewall rules with iptables: on a
host without iptables (nft only) a NAT network cannot start under libvirt, and both sides
are then measured with the same network in ``<forward mode='open'/>`` (no firewall rules
from either), which the output says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asvirt  # noqa: E402
from asvirt.drivers.network.model import DEFAULT_NETWORK_XML as DEFAULT_NET  # noqa: E402
from bench.libvirt_peer import LibvirtPeer, libvirt_peer  # noqa: E402

#: A DHCP client on the veth plugged into the bridge: asks once a second, up to 20 times.
UDHCPC = ["busybox", "udhcpc", "-i", "bench0", "-n", "-q", "-f", "-t", "20", "-T", "1"]
UDHCPC += ["-s", "/bin/true"]

#: The default network without firewall rules, for hosts where libvirt cannot write them.
OPEN_NET = DEFAULT_NET.replace("<forward mode='nat'/>", "<forward mode='open'/>")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<24} median {ms(statistics.median(values))}   "
        f"min {ms(min(values))}   max {ms(max(values))}"
    )


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


async def net_rounds(
    create: Callable[[], Awaitable[object]],
    destroy: Callable[[], Awaitable[object]],
    rounds: int,
) -> dict[str, list[float]]:
    """``rounds`` of start, DHCP lease on the bridge, destroy, after one warm-up round."""
    await create()
    await destroy()
    out: dict[str, list[float]] = {"start()": [], "start -> DHCP lease": [], "destroy()": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        await create()
        t1 = time.perf_counter()
        sh("ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1")
        sh("ip", "link", "set", "bench1", "master", "virbr0", "up")
        sh("ip", "link", "set", "bench0", "up")
        client = await trio.run_process(
            UDHCPC,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        t2 = time.perf_counter()
        if client.returncode != 0:
            raise SystemExit(f"no DHCP lease: {client.stderr.decode()}")
        sh("ip", "link", "del", "bench0")
        t3 = time.perf_counter()
        await destroy()
        t4 = time.perf_counter()
        out["start()"].append(t1 - t0)
        out["start -> DHCP lease"].append(t2 - t0)
        out["destroy()"].append(t4 - t3)
    return out


async def asvirt_rounds(xml: str, rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="asvirt-bench-net-") as tmp:
        async with asvirt.open(f"qemu:///embed?root={tmp}/root") as conn:
            net = await conn.network_define_xml(xml)
            # The warm-up round also imports the netlink library.
            out = await net_rounds(net.create, net.destroy, rounds)
            await net.undefine()
    return out


async def libvirt_rounds(peer: LibvirtPeer, xml: str, rounds: int) -> dict[str, list[float]]:
    """The same rounds through libvirt-python (blocking calls: nothing else runs meanwhile)."""
    conn = peer.open()
    net = conn.networkDefineXML(xml)

    async def create() -> None:
        net.create()

    async def destroy() -> None:
        net.destroy()

    try:
        return await net_rounds(create, destroy, rounds)
    finally:
        if net.isActive():
            net.destroy()
        net.undefine()


def libvirt_can_nat(peer: LibvirtPeer) -> str | None:
    """Why libvirt cannot start a NAT network here (what it said), or None."""
    import libvirt  # type: ignore[import-not-found]

    conn = peer.open()
    net = conn.networkDefineXML(DEFAULT_NET)
    try:
        net.create()
        net.destroy()
        return None
    except libvirt.libvirtError as err:
        return " ".join(str(err).split())
    finally:
        net.undefine()


async def inside(rounds: int) -> None:
    """The measurement, run inside the namespace."""
    sh("ip", "link", "set", "lo", "up")
    with libvirt_peer() as peer:
        xml, why = DEFAULT_NET, None
        if isinstance(peer, LibvirtPeer):
            why = libvirt_can_nat(peer)
            if why is not None:
                xml = OPEN_NET
        ours = await asvirt_rounds(xml, rounds)
        theirs = await libvirt_rounds(peer, xml, rounds) if isinstance(peer, LibvirtPeer) else None
    kind = "default NAT network" if xml == DEFAULT_NET else "default network, forward mode 'open'"
    print(f"{rounds} rounds ({kind}, one DHCP client), load average {os.getloadavg()[0]:.1f}:")
    for name, values in ours.items():
        line = f"asvirt  {summary(name, values)}"
        if theirs is not None:
            ratio = statistics.median(values) / statistics.median(theirs[name])
            line += f"\nlibvirt {summary(name, theirs[name])}   asvirt/libvirt {ratio:5.2f}"
        print(line)
    if isinstance(peer, str):
        print(f"libvirt: {peer}")
    elif why is not None:
        print(f"(libvirt cannot start a NAT network here: {why}; both measured with 'open')")
    print(
        "(Most of 'start -> DHCP lease' is dnsmasq's check that an address is free - a ping it"
        " waits up to 3 s for - and STP on the bridge: libvirt's defaults, kept.)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        trio.run(inside, args.rounds)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench_network needs root (it creates a network namespace)")
    for tool in ("ip", "dnsmasq", "nft", "busybox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_network needs '{tool}'")
    ns = f"asvirt-bench-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                __file__,
                "--inside",
                "--rounds",
                str(args.rounds),
            ],
            check=True,
        )
    finally:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main()
