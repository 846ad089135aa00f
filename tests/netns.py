"""Network namespaces for tests that create real bridges, taps, dnsmasq and nftables rules.

Everything a network test makes lives in namespaces the test creates, never in the host's:
the *node* namespace, where asvirt runs (its CLI, the QEMUs it starts, their bridges, taps,
dnsmasq and nft tables), and an *outside* namespace joined to it by a veth pair, which plays
the rest of the world. Addresses are from the documentation ranges (198.51.100.0/24 for the
uplink), and the outside namespace routes nowhere, so no packet can leave the machine.

:class:`Lab` makes them and, at the end, kills every process left in them and deletes them
(the links and rules inside go with them).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import run_cli

UPLINK = "198.51.100.2"  # the node's address on the uplink
OUTSIDE = "198.51.100.1"  # the outside world's address (the node's default gateway)

_counter = itertools.count()


def missing_tools() -> str | None:
    """Why network tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft", "dnsmasq"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (scripts/setup installs it)"
    return None


def skip_unless_possible() -> None:
    why = missing_tools()
    if why is not None:
        pytest.skip(why)


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


class Lab:
    """A node namespace and an outside namespace joined by a veth pair."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{next(_counter)}"
        self.node = f"asvirt-node-{tag}"
        self.outside = f"asvirt-out-{tag}"
        self._procs: list[subprocess.Popen[str]] = []

    # -- making and unmaking -------------------------------------------------------------------

    def create(self) -> None:
        sh("ip", "netns", "add", self.node)
        sh("ip", "netns", "add", self.outside)
        # Created inside the node namespace, then one end moved out: the host never sees it.
        self.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0")
        self.run("ip", "link", "set", "out0", "netns", self.outside)
        self.run("ip", "addr", "add", f"{UPLINK}/24", "dev", "up0")
        self.run("ip", "link", "set", "up0", "up")
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "route", "add", "default", "via", OUTSIDE)
        self.outside_run("ip", "addr", "add", f"{OUTSIDE}/24", "dev", "out0")
        self.outside_run("ip", "link", "set", "out0", "up")
        self.outside_run("ip", "link", "set", "lo", "up")

    def destroy(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for ns in (self.node, self.outside):
            # Whatever still runs in it (QEMU, dnsmasq) holds it: end them first.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)

    # -- running things inside -----------------------------------------------------------------

    def prefix(self, ns: str | None = None) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns or self.node)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix(), *args, check=check)

    def outside_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.prefix(self.outside), *args, check=check)

    def cli(self, root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``asvirt ARGS`` on ``root``, run inside the node namespace."""
        return run_cli(root, *args, check=check, prefix=self.prefix())

    def spawn(self, *args: str, ns: str | None = None) -> subprocess.Popen[str]:
        """A long-running process in a namespace (killed by :meth:`destroy` at the latest)."""
        proc = subprocess.Popen(
            [*self.prefix(ns), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._procs.append(proc)
        return proc

    def listen_outside(self, port: int) -> subprocess.Popen[str]:
        """A TCP server in the outside namespace that prints, for its first connection, the
        peer's address and the line it sent, then exits."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{OUTSIDE}', {port})); s.listen(1)\n"
            "print('listening', flush=True)\n"
            "c, peer = s.accept(); c.settimeout(10)\n"
            "data = c.recv(200).decode(errors='replace').strip()\n"
            "print(peer[0], data, flush=True)\n"
        )
        proc = self.spawn(sys.executable, "-c", code, ns=self.outside)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return proc

    # -- what a user would look at -------------------------------------------------------------

    def links(self) -> dict[str, str]:
        """Link name -> kind ('bridge', 'tun', 'veth', '' for others) in the node namespace."""
        out = self.run("ip", "-d", "-o", "link", "show").stdout
        links = {}
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0]
            kind = ""
            for k in ("bridge", "tun", "veth"):
                if f" {k} " in line or line.rstrip().endswith(f" {k}"):
                    kind = k
                    break
            links[name] = kind
        return links

    def mtu(self, dev: str) -> int:
        """The MTU of the link ``dev`` in the node namespace, as ``ip link`` shows it."""
        return int(json.loads(self.run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["mtu"])

    def addresses(self, dev: str) -> list[str]:
        out = self.run("ip", "-o", "addr", "show", "dev", dev).stdout
        return [line.split()[3] for line in out.splitlines()]

    def nft_tables(self) -> list[str]:
        out = self.run("nft", "list", "tables").stdout
        return [line.split()[-1] for line in out.splitlines() if line.startswith("table")]

    def processes(self, comm: str) -> list[int]:
        """Live (not zombie) processes named ``comm`` in the node namespace."""
        found = []
        for pid in self.run("ip", "netns", "pids", self.node, check=False).stdout.split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            state = stat[stat.rindex(")") + 2]
            if name == comm and state != "Z":
                found.append(int(pid))
        return found


@contextmanager
def lab() -> Iterator[Lab]:
    skip_unless_possible()
    the_lab = Lab()
    try:
        the_lab.create()
        yield the_lab
    finally:
        the_lab.destroy()


__all__ = ["OUTSIDE", "UPLINK", "Lab", "lab", "missing_tools", "sh", "skip_unless_possible"]
