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

The target (from the issue) is to be no slower than ``virsh net-start``/``net-destroy``.
libvirt's daemon runs in the host's namespace, so its networks would be made on the host:
it is measured only when ``virsh`` exists *and* ``ASVIRT_BENCH_LIBVIRT=1`` says the host may
be used; otherwise the script says why it was not.
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
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asvirt  # noqa: E402
from asvirt.drivers.network.model import DEFAULT_NETWORK_XML as DEFAULT_NET  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<24} median {ms(statistics.median(values))}   "
        f"min {ms(min(values))}   max {ms(max(values))}"
    )


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


async def inside(rounds: int) -> None:
    """The measurement, run inside the namespace."""
    sh("ip", "link", "set", "lo", "up")
    with tempfile.TemporaryDirectory(prefix="asvirt-bench-net-") as tmp:
        async with asvirt.open(f"qemu:///embed?root={tmp}/root") as conn:
            net = await conn.network_define_xml(DEFAULT_NET)
            # One warm-up round: the first start also imports the netlink library.
            await net.create()
            await net.destroy()
            starts, leases, stops = [], [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                await net.create()
                t1 = time.perf_counter()
                sh("ip", "link", "add", "bench0", "type", "veth", "peer", "name", "bench1")
                sh("ip", "link", "set", "bench1", "master", "virbr0", "up")
                sh("ip", "link", "set", "bench0", "up")
                client = await trio.run_process(
                    [
                        "busybox",
                        "udhcpc",
                        "-i",
                        "bench0",
                        "-n",
                        "-q",
                        "-f",
                        "-t",
                        "20",
                        "-T",
                        "1",
                        "-s",
                        "/bin/true",
                    ],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                t2 = time.perf_counter()
                if client.returncode != 0:
                    raise SystemExit(f"no DHCP lease: {client.stderr.decode()}")
                sh("ip", "link", "del", "bench0")
                t3 = time.perf_counter()
                await net.destroy()
                t4 = time.perf_counter()
                starts.append(t1 - t0)
                leases.append(t2 - t0)
                stops.append(t4 - t3)
            await net.undefine()
    print(f"asvirt, {rounds} rounds (default NAT network, one DHCP client):")
    print(summary("start()", starts))
    print(summary("start -> DHCP lease", leases))
    print(summary("destroy()", stops))
    print(
        "(Most of 'start -> DHCP lease' is dnsmasq's check that an address is free - a ping it"
        " waits up to 3 s for - and STP on the bridge: libvirt's defaults, kept.)"
    )


def libvirt_note() -> str:
    if shutil.which("virsh") is None:
        return "libvirt: virsh is not installed here, so net-start was not measured."
    if os.environ.get("ASVIRT_BENCH_LIBVIRT") != "1":
        return (
            "libvirt: virsh is installed, but libvirtd makes its networks in the host's own "
            "namespace; set ASVIRT_BENCH_LIBVIRT=1 to allow that and measure it."
        )
    return measure_libvirt()


def measure_libvirt(rounds: int = 5) -> str:
    xml = DEFAULT_NET.replace("default", "asvirtbench").replace("virbr0", "asvbench0")
    xml = xml.replace("192.168.122", "192.168.251")
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(xml)
        f.flush()
        subprocess.run(["virsh", "net-define", f.name], check=True, capture_output=True)
    starts, stops = [], []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run(["virsh", "net-start", "asvirtbench"], check=True, capture_output=True)
            t1 = time.perf_counter()
            subprocess.run(["virsh", "net-destroy", "asvirtbench"], check=True, capture_output=True)
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
    finally:
        subprocess.run(["virsh", "net-undefine", "asvirtbench"], capture_output=True)
    return "\n".join(
        [
            "libvirt (virsh, includes virsh's own start-up):",
            summary("virsh net-start", starts),
            summary("virsh net-destroy", stops),
        ]
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
    print(libvirt_note())


if __name__ == "__main__":
    main()
