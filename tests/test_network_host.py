"""Real networks on a QEMU node: bridges, taps, dnsmasq, nftables, and a booted guest.

Every test runs asvirt (its CLI, as a user does: a process per command, so every command
also re-attaches to what the previous one left running) inside a network namespace it
creates, with a second namespace behind a veth pair as the outside world (tests/netns.py).
Nothing is created in the host's own namespace, and nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from asvirt.drivers.network.model import DEFAULT_NETWORK_XML as DEFAULT_NET

from .daemon import Daemon
from .guest import TestGuest, wait_for_serial
from .helpers import NO_PIDFD, run_cli, wait_for
from .netns import OUTSIDE, UPLINK, Lab, lab, sh

pytestmark = pytest.mark.qemu

ROUTED_NET = """<network>
  <name>routed</name>
  <forward mode='route' dev='up0'/>
  <bridge name='rtbr0'/>
  <ip address='192.168.150.1' prefix='24'>
    <dhcp>
      <range start='192.168.150.10' end='192.168.150.20'/>
    </dhcp>
  </ip>
</network>
"""

NIC = "<interface type='network'><source network='{net}'/><model type='virtio'/></interface>"


@pytest.fixture
def net_lab() -> Lab:  # type: ignore[misc]
    with lab() as the_lab:
        yield the_lab


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def state_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "run" / "network").glob("*"))


def assert_network_gone(lab: Lab, root: Path, bridge: str) -> None:
    """What a user checks after net-destroy: no bridge, tap, dnsmasq, nft table, state."""
    links = lab.links()
    assert bridge not in links
    assert not [n for n, kind in links.items() if kind == "tun"], links
    assert lab.processes("dnsmasq") == []
    assert [t for t in lab.nft_tables() if t.startswith("asvirt_")] == []
    assert state_files(root) == []


def guest_xml(guest: TestGuest, tmp_path: Path, name: str, net: str, cmdline: str) -> str:
    return guest.xml(
        name,
        tmp_path / f"{name}.serial",
        domain_type="qemu",
        devices=NIC.format(net=net),
        # On a loaded host, TCG can be too slow for the kernel's IO-APIC timer check, which
        # then panics at boot; the check proves nothing here.
        cmdline=f"no_timer_check {cmdline}",
    )


def serial_line(path: Path, marker: str) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(marker):
            return line
    raise AssertionError(f"no {marker} line in {path}")


# -- NAT and route modes with a booted guest ---------------------------------------------------


@pytest.mark.guest
def test_nat_network_leases_routes_and_masquerades(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    out = cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET)).stdout
    assert out.startswith("Network default defined from ")
    assert "virbr0" not in net_lab.links()  # defining creates nothing
    assert cli(root, "net-start", "default").stdout == "Network default started\n\n"
    assert net_lab.links()["virbr0"] == "bridge"
    assert net_lab.addresses("virbr0") == ["192.168.122.1/24"]
    assert dnsmasq_pid(root, "default") in net_lab.processes("dnsmasq")
    [table] = [t for t in net_lab.nft_tables() if t.startswith("asvirt_")]
    assert "masquerade" in net_lab.run("nft", "list", "table", "inet", table).stdout
    info = cli(root, "net-info", "default").stdout
    assert re.search(r"^Active:\s+yes$", info, re.M) and re.search(
        r"^Bridge:\s+virbr0$", info, re.M
    )

    listener = net_lab.listen_outside(7777)
    cmdline = f"asvirt.net=dhcp asvirt.ping=192.168.122.1 asvirt.send={OUTSIDE}:7777"
    cli(
        root,
        "define",
        write(tmp_path, "vm.xml", guest_xml(test_guest, tmp_path, "vm", "default", cmdline)),
    )
    cli(root, "start", "vm")
    serial = tmp_path / "vm.serial"
    trio_run(wait_for_serial(serial, "ASVIRT-SENT", timeout=120))

    # The guest got an address in the range, with the network's address as its router...
    up = serial_line(serial, "ASVIRT-NET-UP").split()
    addr = ipaddress.ip_interface(up[1])
    assert addr.network == ipaddress.ip_network("192.168.122.0/24")
    assert (
        ipaddress.ip_address("192.168.122.2") <= addr.ip <= ipaddress.ip_address("192.168.122.254")
    )
    assert up[3] == "192.168.122.1"
    # ...reached the gateway, and what it sent outside arrived from the uplink's address.
    assert serial_line(serial, "ASVIRT-PING") == "ASVIRT-PING 192.168.122.1 ok"
    assert serial_line(serial, "ASVIRT-SENT") == f"ASVIRT-SENT {OUTSIDE}:7777 ok"
    peer, said = listener.communicate(timeout=30)[0].split()
    assert (peer, said) == (UPLINK, "asvirt-guest-says-hello")

    # The lease, as net-dhcp-leases and domifaddr show it.
    xml = cli(root, "dumpxml", "vm").stdout
    mac = re.search(r"<mac address='([0-9a-f:]+)'/>", xml).group(1)  # type: ignore[union-attr]
    tap = re.search(r"<target dev='(vnet\d+)'/>", xml).group(1)  # type: ignore[union-attr]
    assert "<source network='default' bridge='virbr0'/>" in xml
    assert net_lab.links()[tap] == "tun"
    assert "master virbr0" in net_lab.run("ip", "link", "show", tap).stdout

    def leased() -> bool:
        return str(addr.ip) in cli(root, "net-dhcp-leases", "default").stdout

    trio_run(wait_for(leased, timeout=30))
    leases = cli(root, "net-dhcp-leases", "default").stdout.splitlines()
    header = ["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname"]
    assert re.split(r"\s{2,}", leases[0].strip()) == [*header, "Client ID or DUID"]
    row = leases[2].split()
    assert row[2:6] == [mac, "ipv4", f"{addr.ip}/24", "asvirt-guest"]
    ifaddr = cli(root, "domifaddr", "vm").stdout.splitlines()
    assert ifaddr[2].split() == [tap, mac, "ipv4", f"{addr.ip}/24"]
    # The host name the guest gave the DHCP server (libvirt's lease source).
    assert cli(root, "domhostname", "vm", "--source", "lease").stdout == "asvirt-guest\n\n"

    cli(root, "destroy", "vm")
    assert tap not in net_lab.links()  # the tap went with QEMU
    assert cli(root, "net-destroy", "default").stdout == "Network default destroyed\n\n"
    assert_network_gone(net_lab, root, "virbr0")
    cli(root, "undefine", "vm")
    cli(root, "net-undefine", "default")
    assert "default" not in cli(root, "net-list", "--all").stdout


@pytest.mark.guest
def test_route_mode_forwards_guest_traffic_unmasqueraded(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    # The outside world knows the way back to the guests: nothing needs rewriting.
    net_lab.outside_run("ip", "route", "add", "192.168.150.0/24", "via", UPLINK)
    cli(root, "net-define", write(tmp_path, "routed.xml", ROUTED_NET))
    cli(root, "net-start", "routed")
    ruleset = net_lab.run("nft", "list", "ruleset").stdout
    assert "masquerade" not in ruleset and 'oifname "up0"' in ruleset
    listener = net_lab.listen_outside(7778)
    cmdline = f"asvirt.net=dhcp asvirt.send={OUTSIDE}:7778"
    cli(
        root,
        "create",
        write(tmp_path, "vm.xml", guest_xml(test_guest, tmp_path, "rvm", "routed", cmdline)),
    )
    serial = tmp_path / "rvm.serial"
    trio_run(wait_for_serial(serial, "ASVIRT-SENT", timeout=120))
    addr = ipaddress.ip_interface(serial_line(serial, "ASVIRT-NET-UP").split()[1])
    assert (
        ipaddress.ip_address("192.168.150.10") <= addr.ip <= ipaddress.ip_address("192.168.150.20")
    )
    assert serial_line(serial, "ASVIRT-SENT").endswith(" ok")
    peer, _ = listener.communicate(timeout=30)[0].split()
    assert peer == str(addr.ip)  # the guest's own address: routed, not masqueraded
    cli(root, "destroy", "rvm")
    cli(root, "net-destroy", "routed")
    assert_network_gone(net_lab, root, "rtbr0")


# -- supervision, crashes, autostart ----------------------------------------------------------


SUPERVISOR = (
    "import sys, trio, asvirt\n"
    "async def main():\n"
    "    async with asvirt.open(sys.argv[1]):\n"
    "        print('ready', flush=True)\n"
    "        await trio.sleep_forever()\n"
    "trio.run(main)\n"
)


def dnsmasq_pid(root: Path, name: str) -> int | None:
    try:
        text = (root / "run" / "network" / f"{name}.pid").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_dnsmasq_is_restarted_and_networks_outlive_their_supervisor(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    import sys

    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    cli(root, "net-start", "default")
    # The CLI process is gone: the network runs on, unsupervised.
    first = dnsmasq_pid(root, "default")
    # The daemon, and the helper it forks to run the lease script.
    assert alive(first) and first in net_lab.processes("dnsmasq")

    # A dnsmasq that dies while nobody supervises is started again by the next open.
    os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
    trio_run(wait_for(lambda: not alive(first)))
    assert "Active:         yes" in cli(root, "net-info", "default").stdout
    second = dnsmasq_pid(root, "default")
    assert second != first and alive(second)

    # A supervisor that stays: it restarts a dnsmasq that dies under it.
    sup = net_lab.spawn(sys.executable, "-c", SUPERVISOR, f"qemu:///embed?root={root}")
    assert sup.stdout is not None and sup.stdout.readline().strip() == "ready"
    os.kill(second, signal.SIGKILL)  # type: ignore[arg-type]
    trio_run(
        wait_for(
            lambda: alive(dnsmasq_pid(root, "default")) and dnsmasq_pid(root, "default") != second,
            timeout=15,
        )
    )
    third = dnsmasq_pid(root, "default")
    log = (root / "log" / "network" / "default.log").read_text()
    assert log.count("started, version") == 3
    sup.send_signal(signal.SIGKILL)  # the supervisor dies too; the network still runs
    sup.wait(timeout=10)
    assert alive(third) and net_lab.links()["virbr0"] == "bridge"

    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


@pytest.mark.parametrize("phase", ["starting", "stopping", "starting, dnsmasq unrecorded"])
def test_an_interrupted_start_or_stop_is_taken_down_at_open(
    net_lab: Lab, root: Path, tmp_path: Path, phase: str
) -> None:
    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    cli(root, "net-start", "default")
    # As a supervisor killed between two steps leaves it: the intent, and what it made.
    state_path = root / "run" / "network" / "default.state"
    state = json.loads(state_path.read_text())
    state["phase"] = phase.split(",")[0]
    if "unrecorded" in phase:
        # Killed after launching dnsmasq, before recording it: only its pid file knows it.
        assert dnsmasq_pid(root, "default") in net_lab.processes("dnsmasq")
        state["dnsmasq_pid"] = state["dnsmasq_start_time"] = None
    state_path.write_text(json.dumps(state))
    listing = cli(root, "net-list", "--all").stdout
    assert re.search(r"^ default\s+inactive\s+no\s+yes$", listing, re.M), listing
    assert_network_gone(net_lab, root, "virbr0")
    # And it starts cleanly again.
    cli(root, "net-start", "default")
    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


#: A supervisor that starts the network ARGV[2] and is killed by the kernel the moment its
#: bridge exists: after the request that creates it, before the one that sets its alias (the
#: kernel takes none in the first). Only the timing of its death is arranged; the bridge,
#: the state file and the netlink requests are real.
KILLED_AT_BRIDGE = """
import os, signal, sys, trio, asvirt, pyroute2
real = pyroute2.IPRoute
class IPRoute(real):
    def link(self, command, **kw):
        out = real.__getattr__(self, "link")(command, **kw)
        if command == "add" and kw.get("kind") == "bridge":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
pyroute2.IPRoute = IPRoute
async def main(root, name):
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        await (await conn.lookup_network_by_name(name)).create()
trio.run(main, *sys.argv[1:])
"""


def start_killed_at_bridge(lab: Lab, root: Path, name: str) -> None:
    import sys

    proc = subprocess.run(
        [*lab.prefix(), sys.executable, "-c", KILLED_AT_BRIDGE, str(root), name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_start_killed_before_its_bridge_was_marked_is_taken_down_at_open(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    mac = re.search(r"<mac address='([0-9a-f:]+)'", cli(root, "net-dumpxml", "default").stdout)
    assert mac is not None
    start_killed_at_bridge(net_lab, root, "default")
    # What it left: the intent, and a bridge with the network's MAC but no alias.
    assert json.loads((root / "run" / "network" / "default.state").read_text())["phase"] == (
        "starting"
    )
    shown = net_lab.run("ip", "-d", "link", "show", "virbr0").stdout
    assert mac.group(1) in shown and "alias" not in shown
    # The next open recognises the bridge as its own and removes it: the start succeeds.
    assert cli(root, "net-start", "default").stdout == "Network default started\n\n"
    assert "alias asvirt:" in net_lab.run("ip", "-d", "link", "show", "virbr0").stdout
    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")

    # The same, but a bridge of that name that is somebody else's (no alias, another MAC)
    # stands where the killed start's was: it is left alone, and the start refused.
    start_killed_at_bridge(net_lab, root, "default")
    net_lab.run("ip", "link", "del", "virbr0")
    net_lab.run("ip", "link", "add", "virbr0", "address", "02:00:00:00:00:01", "type", "bridge")
    err = cli(root, "net-start", "default", check=False)
    assert err.returncode == 1 and "'virbr0' already exists" in err.stderr
    assert "02:00:00:00:00:01" in net_lab.run("ip", "link", "show", "virbr0").stdout
    assert state_files(root) == []
    net_lab.run("ip", "link", "del", "virbr0")
    cli(root, "net-start", "default")
    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


def test_a_dnsmasq_its_supervisor_had_not_recorded_is_adopted(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    cli(root, "net-start", "default")
    running = dnsmasq_pid(root, "default")
    # As a supervisor killed right after restarting a dead dnsmasq leaves it: the state file
    # still names the dead one; only dnsmasq's own pid file names the one that runs.
    gone = subprocess.Popen(["true"])
    gone.wait()
    state_path = root / "run" / "network" / "default.state"
    state = json.loads(state_path.read_text())
    state["dnsmasq_pid"], state["dnsmasq_start_time"] = gone.pid, None
    state_path.write_text(json.dumps(state))
    # The next open adopts it: the network stays active, served by the same dnsmasq, and no
    # second one is started beside it (it would fail on the ports the first one holds).
    assert "Active:         yes" in cli(root, "net-info", "default").stdout
    assert dnsmasq_pid(root, "default") == running and alive(running)
    assert json.loads(state_path.read_text())["dnsmasq_pid"] == running
    cli(root, "net-destroy", "default")
    assert not alive(running)
    assert_network_gone(net_lab, root, "virbr0")


def test_autostart_networks_start_when_the_root_opens(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    out = cli(root, "net-autostart", "default").stdout
    assert out == "Network default marked as autostarted\n\n"
    assert "virbr0" not in net_lab.links()  # marked, not started
    listing = cli(root, "net-list").stdout  # this open starts it
    assert re.search(r"^ default\s+active\s+yes\s+yes$", listing, re.M), listing
    assert net_lab.links()["virbr0"] == "bridge"
    cli(root, "net-autostart", "default", "--disable")
    cli(root, "net-destroy", "default")
    assert "inactive" in cli(root, "net-list", "--all").stdout
    assert_network_gone(net_lab, root, "virbr0")


def ipv6_sysctls(lab: Lab, dev: str) -> dict[str, str]:
    keys = ("disable_ipv6", "accept_ra", "autoconf")
    return {k: lab.run("cat", f"/proc/sys/net/ipv6/conf/{dev}/{k}").stdout.strip() for k in keys}


def test_a_bridge_without_ipv6_addresses_has_ipv6_off(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    # As libvirt: no link-local address, no router solicitations from a bridge whose
    # network has no IPv6, even where the host turns IPv6 on for every new link.
    net_lab.run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0")
    net_lab.cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    net_lab.cli(root, "net-start", "default")
    assert ipv6_sysctls(net_lab, "virbr0") == {
        "disable_ipv6": "1",
        "accept_ra": "0",
        "autoconf": "0",
    }
    assert net_lab.addresses("virbr0") == ["192.168.122.1/24"]  # no fe80::
    net_lab.cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


def test_ipv6_and_isolated_networks(net_lab: Lab, root: Path, tmp_path: Path) -> None:
    cli = net_lab.cli
    xml = """<network><name>six</name><bridge name='sixbr'/>
      <domain name='six.test' localOnly='yes'/>
      <dns><host ip='10.66.0.7'><hostname>seven</hostname></host></dns>
      <ip address='10.66.0.1' prefix='24'><dhcp><range start='10.66.0.10' end='10.66.0.99'/>
        <host mac='52:54:00:66:00:07' name='seven' ip='10.66.0.7'/></dhcp></ip>
      <ip family='ipv6' address='fd66::1' prefix='64'><dhcp>
        <range start='fd66::100' end='fd66::1ff'/></dhcp></ip></network>"""
    cli(root, "net-define", write(tmp_path, "six.xml", xml))
    cli(root, "net-start", "six")
    assert net_lab.addresses("sixbr") == ["10.66.0.1/24", "fd66::1/64"]
    # IPv6 on (whatever the host's default), and no autoconfiguration from guests' adverts.
    assert ipv6_sysctls(net_lab, "sixbr") == {
        "disable_ipv6": "0",
        "accept_ra": "0",
        "autoconf": "0",
    }
    conf = (root / "run" / "network" / "six.conf").read_text()
    for line in (
        "enable-ra",
        "dhcp-range=fd66::100,fd66::1ff,64",
        "domain=six.test",
        "dhcp-host=52:54:00:66:00:07,10.66.0.7,seven",
        "host-record=seven,10.66.0.7",
    ):
        assert line in conf.splitlines()
    # Isolated: guests talk to each other only; nothing is forwarded either way.
    [table] = [t for t in net_lab.nft_tables() if t.startswith("asvirt_")]
    rules = net_lab.run("nft", "list", "table", "inet", table).stdout
    assert 'iifname "sixbr" reject' in rules and "accept" in rules and "masquerade" not in rules
    # DNS answers from the network's dnsmasq (a host of <dns>), on the bridge's address.
    answer = (
        net_lab.run("nslookup", "seven.six.test", "10.66.0.1", check=False).stdout
        if sh("sh", "-c", "command -v nslookup", check=False).returncode == 0
        else None
    )
    if answer is not None:
        assert "10.66.0.7" in answer
    cli(root, "net-destroy", "six")
    assert_network_gone(net_lab, root, "sixbr")


# -- bad input changes nothing ------------------------------------------------------------------


def test_a_network_that_cannot_start_changes_nothing(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    before_links, before_tables = net_lab.links(), net_lab.nft_tables()
    # Its subnet is the uplink's: libvirt's route collision check.
    clash = (
        "<network><name>default</name><forward/><bridge name='clashbr'/>"
        "<ip address='198.51.100.9' prefix='24'/></network>"
    )
    cli(root, "net-define", write(tmp_path, "clash.xml", clash))
    err = cli(root, "net-start", "default", check=False)
    assert err.returncode == 1 and "198.51.100.0/24 is already in use by up0" in err.stderr
    cli(root, "net-undefine", "default")
    # Its bridge name is taken by a link that is not ours.
    net_lab.run("ip", "link", "add", "virbr0", "type", "bridge")
    before_links = net_lab.links()
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    err = cli(root, "net-start", "default", check=False)
    assert err.returncode == 1 and "'virbr0' already exists" in err.stderr
    assert net_lab.links() == before_links and net_lab.nft_tables() == before_tables
    assert net_lab.processes("dnsmasq") == [] and state_files(root) == []
    # Bad XML: refused with a reason, nothing written.
    err = cli(
        root,
        "net-define",
        write(tmp_path, "bad.xml", "<network><name>x</name><forward mode='vepa'/></network>"),
        check=False,
    )
    assert err.returncode == 1 and "forward mode 'vepa'" in err.stderr
    assert not (root / "etc" / "network" / "x.xml").exists()


def test_a_network_whose_dnsmasq_cannot_start_leaves_nothing(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    import sys

    cli = net_lab.cli
    before_links, before_tables = net_lab.links(), net_lab.nft_tables()
    # Port 53 of every address is taken: dnsmasq cannot bind the bridge's, and says so,
    # while nft (run beside the bridge and dnsmasq) may have made the table already.
    squat = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
        "print('ready', flush=True); time.sleep(600)\n"
    )
    squatter = net_lab.spawn(sys.executable, "-c", squat)
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    err = cli(root, "net-start", "default", check=False)
    assert err.returncode == 1, err
    assert "dnsmasq failed to start" in err.stderr and "Address already in use" in err.stderr
    assert "Traceback" not in err.stderr and "ExceptionGroup" not in err.stderr
    assert net_lab.links() == before_links and net_lab.nft_tables() == before_tables
    assert net_lab.processes("dnsmasq") == [] and state_files(root) == []
    squatter.kill()
    squatter.wait(timeout=10)
    cli(root, "net-start", "default")
    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


#: Starts the network ARGV[2] and prints how it failed: the class, code and words of the
#: error a caller of the API sees.
START_REPORTING = """
import sys, trio, asvirt
async def main(root, name):
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        try:
            await (await conn.lookup_network_by_name(name)).create()
        except Exception as err:
            print(type(err).__name__, getattr(err, "code", None), err)
trio.run(main, *sys.argv[1:])
"""


def test_a_planted_dnsmasq_log_symlink_is_refused_with_an_error_and_leaves_nothing(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    import sys

    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    before_links, before_tables = net_lab.links(), net_lab.nft_tables()
    victim = tmp_path / "victim"
    victim.write_text("not dnsmasq's\n")
    log = root / "log" / "network" / "default.log"
    log.symlink_to(victim)
    # What a program using the API sees: asvirt's own error, with a code, naming the path.
    said = net_lab.run(sys.executable, "-c", START_REPORTING, str(root), "default").stdout
    assert said.startswith("SystemCallError 38 ") and str(log) in said, said
    assert victim.read_text() == "not dnsmasq's\n" and log.is_symlink()
    assert net_lab.links() == before_links and net_lab.nft_tables() == before_tables
    assert net_lab.processes("dnsmasq") == [] and state_files(root) == []
    log.unlink()
    cli(root, "net-start", "default")
    cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names x86-64's syscall")
def test_a_kernel_without_pidfd_open_fails_a_network_start_leaving_nothing(
    net_lab: Lab, root: Path, tmp_path: Path
) -> None:
    # dnsmasq daemonizes: one that could not be watched could not be killed for sure either,
    # so the start is refused before it runs (as on a kernel older than 5.3).
    net_lab.cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    before_links, before_tables = net_lab.links(), net_lab.nft_tables()
    said = net_lab.run(
        sys.executable, "-c", NO_PIDFD + START_REPORTING, str(root), "default"
    ).stdout
    assert said.startswith("SystemCallError 38 cannot run dnsmasq: "), said
    assert "pidfd_open needs Linux 5.3" in said
    assert net_lab.links() == before_links and net_lab.nft_tables() == before_tables
    assert net_lab.processes("dnsmasq") == [] and state_files(root) == []
    net_lab.cli(root, "net-start", "default")
    net_lab.cli(root, "net-destroy", "default")
    assert_network_gone(net_lab, root, "virbr0")


def test_domain_interfaces_need_a_running_network_or_a_real_bridge(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "default.xml", DEFAULT_NET))
    xml = test_guest.xml(
        "vm",
        tmp_path / "vm.serial",
        domain_type=PAUSED_DOMAIN_TYPE,
        devices=NIC.format(net="default"),
    )
    cli(root, "define", write(tmp_path, "vm.xml", xml))
    err = cli(root, "start", "vm", "--paused", check=False)
    assert err.returncode == 1 and "network 'default' is not active" in err.stderr
    assert not [n for n, k in net_lab.links().items() if k == "tun"]
    # type='bridge': an existing host bridge, used as it is.
    net_lab.run("ip", "link", "add", "hostbr", "type", "bridge")
    bridged = test_guest.xml(
        "bvm",
        tmp_path / "bvm.serial",
        domain_type=PAUSED_DOMAIN_TYPE,
        devices="<interface type='bridge'><source bridge='hostbr'/>"
        "<target dev='bvm-tap'/></interface>",
    )
    cli(root, "create", "--paused", write(tmp_path, "bvm.xml", bridged))
    assert "master hostbr" in net_lab.run("ip", "link", "show", "bvm-tap").stdout
    cli(root, "destroy", "bvm")
    assert "bvm-tap" not in net_lab.links() and "hostbr" in net_lab.links()
    nobridge = bridged.replace("hostbr", "nosuchbr").replace("bvm", "cvm")
    err = cli(root, "create", "--paused", write(tmp_path, "cvm.xml", nobridge), check=False)
    assert err.returncode == 1 and "no such bridge" in err.stderr


def test_ethernet_interfaces_get_a_tap_of_their_own_or_open_an_existing_one(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    # Managed (the default): asvirt makes the tap, on no bridge, with the guest's MAC but
    # 0xfe first, up; it goes with QEMU.
    xml = test_guest.xml(
        "evm",
        tmp_path / "evm.serial",
        domain_type=PAUSED_DOMAIN_TYPE,
        devices="<interface type='ethernet'><mac address='52:54:00:12:34:56'/>"
        "<target dev='evm-tap'/><model type='virtio'/></interface>",
    )
    cli(root, "create", "--paused", write(tmp_path, "evm.xml", xml))
    shown = net_lab.run("ip", "-d", "link", "show", "evm-tap").stdout
    assert "fe:54:00:12:34:56" in shown and "master" not in shown and ",UP" in shown
    assert net_lab.links()["evm-tap"] == "tun"
    live = cli(root, "dumpxml", "evm").stdout
    assert "<target dev='evm-tap'/>" in live
    cli(root, "destroy", "evm")
    assert "evm-tap" not in net_lab.links()
    # managed='no': a tap someone else made (persistent), only opened; it stays after.
    net_lab.run("ip", "tuntap", "add", "dev", "own-tap", "mode", "tap")
    own = xml.replace("<target dev='evm-tap'/>", "<target dev='own-tap' managed='no'/>")
    cli(root, "create", "--paused", write(tmp_path, "own.xml", own))
    assert "<target dev='own-tap' managed='no'/>" in cli(root, "dumpxml", "evm").stdout
    shown = net_lab.run("ip", "-d", "link", "show", "own-tap").stdout
    assert "fe:54:00:12:34:56" not in shown  # its owner's to configure, not asvirt's
    cli(root, "destroy", "evm")
    assert "own-tap" in net_lab.links()
    gone = own.replace("own-tap", "no-such-tap")
    err = cli(root, "create", "--paused", write(tmp_path, "gone.xml", gone), check=False)
    assert err.returncode == 1 and "no such device" in err.stderr
    assert "no-such-tap" not in net_lab.links()


#: Prints an interface's rx-frames coalescing as the kernel reports it (ethtool's ioctl).
_RX_FRAMES = (
    sys.executable,
    "-c",
    "import sys; from asvirt.drivers.network.tap import rx_coalesce_frames; "
    "print(rx_coalesce_frames(sys.argv[1]))",
)


def host_mtu(lab: Lab, root: Path, domain: str, alias: str) -> int:
    """The MTU QEMU tells the guest through the virtio NIC ``alias`` (its ``host_mtu``,
    read with qom-get; 0: none)."""
    qom = {
        "execute": "qom-get",
        "arguments": {"path": f"/machine/peripheral/{alias}", "property": "host_mtu"},
    }
    out = lab.cli(root, "qemu-monitor-command", domain, json.dumps(qom)).stdout
    return int(json.loads(out)["return"])


def test_a_nics_mtu_is_set_on_its_tap_and_told_to_its_virtio_device(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    net_lab.run("ip", "link", "add", "mtubr", "type", "bridge")
    nics = (
        "<interface type='ethernet'><target dev='mtu-tap0'/><model type='virtio'/>"
        "<mtu size='4000'/><tune><sndbuf>1600</sndbuf></tune></interface>"
        "<interface type='bridge'><source bridge='mtubr'/><target dev='mtu-tap1'/>"
        "<model type='e1000'/><mtu size='9000'/>"
        "<coalesce><rx><frames max='32'/></rx></coalesce></interface>"
    )
    xml = test_guest.xml(
        "mvm", tmp_path / "mvm.serial", domain_type=PAUSED_DOMAIN_TYPE, devices=nics
    )
    cli(root, "create", "--paused", write(tmp_path, "mvm.xml", xml))
    assert net_lab.mtu("mtu-tap0") == 4000
    # The bridge's tap batches as many received frames as <coalesce> says (ethtool's
    # rx-frames, read back from the kernel in the lab's namespace).
    assert net_lab.run(*_RX_FRAMES, "mtu-tap1").stdout.strip() == "32"
    assert net_lab.mtu("mtu-tap1") == 9000
    assert host_mtu(net_lab, root, "mvm", "net0") == 4000
    live = cli(root, "dumpxml", "mvm").stdout
    assert "<mtu size='4000'/>" in live and "<sndbuf>1600</sndbuf>" in live
    cli(root, "destroy", "mvm")
    assert "mtu-tap0" not in net_lab.links()


JUMBO_NET = """<network>
  <name>jumbo</name>
  <bridge name='jumbobr'/>
  <mtu size='9000'/>
  <ip address='192.168.160.1' prefix='24'>
    <dhcp>
      <range start='192.168.160.10' end='192.168.160.20'/>
    </dhcp>
  </ip>
</network>
"""


@pytest.mark.guest
def test_a_networks_mtu_is_its_bridges_and_taps_and_reaches_its_guests_by_dhcp(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    cli(root, "net-define", write(tmp_path, "jumbo.xml", JUMBO_NET))
    cli(root, "net-start", "jumbo")
    assert net_lab.mtu("jumbobr") == 9000
    # As libvirt's dnsmasq: DHCP offers the network's MTU (option 26).
    conf = (root / "run" / "network" / "jumbo.conf").read_text().splitlines()
    assert "dhcp-option=option:mtu,9000" in conf

    xml = guest_xml(test_guest, tmp_path, "jvm", "jumbo", "asvirt.net=dhcp")
    cli(root, "create", write(tmp_path, "jvm.xml", xml))
    serial = tmp_path / "jvm.serial"
    trio_run(wait_for_serial(serial, "ASVIRT-NET-UP", timeout=120))
    # The guest's eth0 took the MTU its DHCP server offered.
    assert serial_line(serial, "ASVIRT-NET-UP").split()[4:] == ["mtu", "9000"]
    live = cli(root, "dumpxml", "jvm").stdout
    tap = re.search(r"<target dev='(vnet\d+)'/>", live).group(1)  # type: ignore[union-attr]
    assert net_lab.mtu(tap) == 9000
    # As libvirt: the network's MTU stays the network's. The interface has no <mtu> of its
    # own and its virtio device was told none (host_mtu is the guest's ABI: a saved guest
    # is restored with what its domain says, whatever its network says then).
    assert "<mtu" not in live
    assert host_mtu(net_lab, root, "jvm", "net0") == 0

    # An interface's own <mtu> wins, plugged in as at start: on its tap and told to its
    # virtio device. The bridge keeps the network's MTU while a smaller port is on it...
    nic = (
        "<interface type='network'><source network='jumbo'/><target dev='jumbo-own'/>"
        "<model type='virtio'/><mtu size='4000'/></interface>"
    )
    cli(root, "attach-device", "jvm", write(tmp_path, "own.xml", nic), "--live")
    assert net_lab.mtu("jumbo-own") == 4000
    assert host_mtu(net_lab, root, "jvm", "net1") == 4000
    assert "<mtu size='4000'/>" in cli(root, "dumpxml", "jvm").stdout
    assert net_lab.mtu("jumbobr") == 9000
    # ...and once the last guest has gone.
    cli(root, "destroy", "jvm")
    assert tap not in net_lab.links() and "jumbo-own" not in net_lab.links()
    assert net_lab.mtu("jumbobr") == 9000
    cli(root, "net-destroy", "jumbo")
    assert_network_gone(net_lab, root, "jumbobr")


def test_backend_tap_names_the_tun_device_and_nothing_else(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    # The kernel's tun device under another name (as a container's /dev may have it).
    tun = tmp_path / "tun"
    os.mknod(tun, 0o600 | stat.S_IFCHR, os.makedev(10, 200))
    os.symlink("/dev/net/tun", tmp_path / "tun-link")
    nic = (
        "<interface type='ethernet'><target dev='be-tap'/><model type='virtio'/>"
        "<backend tap='{}'/></interface>"
    )

    def xml(path: Path | str) -> str:
        return test_guest.xml(
            "bvm", tmp_path / "bvm.serial", domain_type=PAUSED_DOMAIN_TYPE, devices=nic.format(path)
        )

    cli(root, "create", "--paused", write(tmp_path, "bvm.xml", xml(tun)))
    assert net_lab.links()["be-tap"] == "tun"
    assert f"<backend tap='{tun}'/>" in cli(root, "dumpxml", "bvm").stdout
    cli(root, "destroy", "bvm")
    # Anything else is not opened (opening some devices acts): refused, nothing made.
    for other in ("/dev/null", tmp_path / "tun-link", tmp_path / "none"):
        err = cli(root, "create", "--paused", write(tmp_path, "b2.xml", xml(other)), check=False)
        assert err.returncode == 1, err.stdout
        assert "not the character device 10:200" in err.stderr or "No such file" in err.stderr
        assert "be-tap" not in net_lab.links()
    assert cli(root, "list", "--all", "--name").stdout.strip() == ""


def test_direct_interfaces_get_a_macvtap_that_goes_when_the_domain_stops(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    xml = test_guest.xml(
        "dvm",
        tmp_path / "dvm.serial",
        domain_type=PAUSED_DOMAIN_TYPE,
        devices="<interface type='direct'><mac address='52:54:00:ab:cd:ef'/>"
        "<source dev='up0' mode='bridge'/><model type='virtio'/></interface>",
    )
    cli(root, "create", "--paused", write(tmp_path, "dvm.xml", xml))
    live = cli(root, "dumpxml", "dvm").stdout
    assert "<source dev='up0' mode='bridge'/>" in live
    assert "<target dev='macvtap0'/>" in live
    shown = net_lab.run("ip", "-d", "link", "show", "macvtap0").stdout
    # On up0, in bridge mode, with the guest's own MAC (a macvtap is the guest's port).
    assert "@up0" in shown and "macvtap mode bridge" in shown
    assert "52:54:00:ab:cd:ef" in shown and ",UP" in shown
    cli(root, "destroy", "dvm")
    assert "macvtap0" not in net_lab.links()  # removed: it outlives QEMU's descriptor
    # A host interface that is not there: refused, nothing left behind.
    bad = xml.replace("dev='up0'", "dev='nosuch0'")
    err = cli(root, "create", "--paused", write(tmp_path, "bad.xml", bad), check=False)
    assert err.returncode == 1 and "no host interface named 'nosuch0'" in err.stderr
    assert not [n for n in net_lab.links() if n.startswith("macvtap")]


def vhost_held(pid: int) -> int:
    """How many /dev/vhost-net descriptors QEMU ``pid`` holds (by the end of the path, as
    :func:`qemu_queues`)."""
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            held += os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/vhost-net")
    return held


def test_vhost_net_where_the_host_has_it_and_a_clear_refusal_where_demanded_and_absent(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from asvirt.drivers.qemu.vhostnet import VHOST_NET

    from .guest import PAUSED_DOMAIN_TYPE

    cli = net_lab.cli
    present = os.path.exists(VHOST_NET)
    xml = test_guest.xml(
        "vh",
        tmp_path / "vh.serial",
        domain_type=PAUSED_DOMAIN_TYPE,
        devices="<interface type='ethernet'><mac address='52:54:00:00:00:31'/>"
        "<target dev='vh-tap'/><model type='virtio'/><driver queues='2'/></interface>",
    )
    # The default: vhost-net where the host has it (a descriptor per queue, opened by
    # asvirt), QEMU's own packet path where it does not; the start goes on either way.
    cli(root, "create", "--paused", write(tmp_path, "vh.xml", xml))
    [pid] = net_lab.processes("qemu-system-x86")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    netdev = cmdline[cmdline.index("-netdev") + 1]
    assert ("vhost=on" in netdev) == present, netdev
    assert vhost_held(pid) == (2 if present else 0)
    assert qemu_queues(pid) == {"vh-tap": 2}
    cli(root, "destroy", "vh")
    # Demanded: refused before QEMU exists where the host has no vhost-net, naming it,
    # and no tap is left behind.
    demanded = xml.replace("<driver queues='2'/>", "<driver name='vhost' queues='2'/>")
    out = cli(root, "create", "--paused", write(tmp_path, "vhd.xml", demanded), check=False)
    if present:
        assert out.returncode == 0, out.stderr
        [pid] = net_lab.processes("qemu-system-x86")
        assert vhost_held(pid) == 2
        cli(root, "destroy", "vh")
    else:
        assert out.returncode == 1
        assert f"{VHOST_NET} is unavailable" in out.stderr
        assert "load the vhost_net kernel module" in out.stderr
        assert net_lab.processes("qemu-system-x86") == []
    assert "vh-tap" not in net_lab.links()
    # name='qemu': never, host or not.
    off = xml.replace("<driver queues='2'/>", "<driver name='qemu' queues='2'/>")
    cli(root, "create", "--paused", write(tmp_path, "vhq.xml", off))
    [pid] = net_lab.processes("qemu-system-x86")
    assert vhost_held(pid) == 0
    assert "<driver name='qemu' queues='2'/>" in cli(root, "dumpxml", "vh").stdout
    if not present:
        # Plugged in while running, demanded: refused as at start, before any tap exists.
        nic = (
            "<interface type='ethernet'><mac address='52:54:00:00:00:32'/>"
            "<target dev='vh-hp'/><model type='virtio'/><driver name='vhost'/></interface>"
        )
        nic_file = write(tmp_path, "nic.xml", nic)
        err = cli(root, "attach-device", "vh", nic_file, "--live", check=False)
        assert err.returncode == 1 and f"{VHOST_NET} is unavailable" in err.stderr
        assert "vh-hp" not in net_lab.links()
        assert "52:54:00:00:00:32" not in cli(root, "dumpxml", "vh").stdout
    cli(root, "destroy", "vh")


def trio_run(coro: object) -> None:
    """Run one of the async wait helpers from a synchronous test."""
    import trio

    async def run() -> None:
        await coro  # type: ignore[misc]

    trio.run(run)


def test_the_system_daemon_defines_the_default_network_and_pool_once(
    net_lab: Lab, root: Path, caps_cache: Path
) -> None:
    # What distributions' libvirt packages do for qemu:///system: a 'default' NAT network on
    # virbr0 and a 'default' pool of images, autostarted. Here the daemon runs in the lab's
    # namespace with --define-defaults (which --system implies); its clients reach it over
    # its socket from anywhere.
    daemon = Daemon(
        root, caps_cache=caps_cache, args=("--define-defaults",), prefix=net_lab.prefix()
    ).start()
    try:

        def virsh(*args: str) -> str:
            return run_cli(root, "-c", daemon.uri, *args).stdout

        assert re.search(r"^ default\s+active\s+yes\s+yes$", virsh("net-list"), re.M)
        assert net_lab.links()["virbr0"] == "bridge"
        assert net_lab.addresses("virbr0") == ["192.168.122.1/24"]
        assert dnsmasq_pid(root, "default") in net_lab.processes("dnsmasq")
        assert re.search(r"^ default\s+active\s+yes$", virsh("pool-list"), re.M)
        images = root / "lib" / "images"
        assert f"<path>{images}</path>" in virsh("pool-dumpxml", "default")
        virsh("vol-create-as", "default", "disk.qcow2", "1M", "--format", "qcow2")
        assert (images / "disk.qcow2").is_file()
        # The admin removes them; a restarted daemon respects that rather than re-creating.
        virsh("net-destroy", "default")
        virsh("net-undefine", "default")
        virsh("vol-delete", "disk.qcow2", "--pool", "default")
        virsh("pool-destroy", "default")
        virsh("pool-undefine", "default")
        assert daemon.stop() == 0
        daemon.start()
        assert "default" not in virsh("net-list", "--all")
        assert "default" not in virsh("pool-list", "--all")
        assert "virbr0" not in net_lab.links()
    finally:
        daemon.stop()


def test_interfaces_plugged_into_a_running_domain_get_a_tap_on_their_bridge(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    from .guest import PAUSED_DOMAIN_TYPE
    from .helpers import write_config

    # A guest that never booted cannot release a PCI device: a short deadline.
    write_config(root, "[qemu]\ndestroy_grace = 2.0\nunplug_timeout = 0.5\n")
    cli = net_lab.cli
    net_lab.run("ip", "link", "add", "hotbr", "type", "bridge")
    xml = test_guest.xml("vm", tmp_path / "vm.serial", domain_type=PAUSED_DOMAIN_TYPE)
    cli(root, "define", write(tmp_path, "vm.xml", xml))
    cli(root, "start", "vm", "--paused")
    out = cli(
        root,
        "attach-interface",
        "vm",
        "bridge",
        "hotbr",
        "--target",
        "hp-tap",
        "--model",
        "virtio",
        "--mac",
        "52:54:00:01:02:03",
    ).stdout
    assert out == "Interface attached successfully\n\n"
    # Made as at start: a tap plugged into the bridge, its descriptor QEMU's alone.
    assert "master hotbr" in net_lab.run("ip", "link", "show", "hp-tap").stdout
    rows = cli(root, "domiflist", "vm").stdout.splitlines()[2].split()
    assert rows == ["hp-tap", "bridge", "hotbr", "virtio", "52:54:00:01:02:03"]
    # No such bridge: refused, and nothing is left behind.
    err = cli(root, "attach-interface", "vm", "bridge", "nosuchbr", check=False)
    assert err.returncode == 1 and "no such bridge" in err.stderr
    assert len(cli(root, "domiflist", "vm").stdout.splitlines()) == 4
    out = cli(root, "detach-interface", "vm", "bridge").stdout
    assert out == "Interface detach request sent successfully\n\n"
    assert "hp-tap" in net_lab.links()  # the guest holds it until it lets go
    cli(root, "destroy", "vm")
    assert "hp-tap" not in net_lab.links()


def qemu_queues(pid: int) -> dict[str, int]:
    """How many descriptors QEMU ``pid`` holds on each tap (by name, from the tun
    descriptor's fdinfo) and macvtap (``tapN``, its character device): one per queue.

    By the end of the path only: QEMU runs in a mount namespace of its own, where a
    descriptor opened by a process outside (a hotplug's) shows as ``/net/tun``."""
    held: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        name = re.search(r"^iff:\s*(\S+)$", info, re.M)
        macvtap = re.search(r"/(tap\d+)$", target)
        key = name.group(1) if target.endswith("/net/tun") and name else None
        key = key or (macvtap.group(1) if macvtap else None)
        if key is not None:
            held[key] = held.get(key, 0) + 1
    return held


def multi_queue(lab: Lab, dev: str) -> bool:
    """Whether the tap ``dev`` was made multiqueue (how many of its queues are attached is
    QEMU's choice: it detaches those the guest's driver does not use)."""
    return " multi_queue " in lab.run("ip", "-d", "link", "show", dev).stdout


@pytest.mark.guest
def test_multiqueue_nics_at_start_and_ethernet_and_direct_nics_plugged_in_and_out(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    cli = net_lab.cli
    xml = test_guest.xml(
        "mq",
        tmp_path / "mq.serial",
        domain_type="qemu",  # booted: a guest that releases what is unplugged
        devices="<interface type='ethernet'><mac address='52:54:00:00:00:01'/>"
        "<target dev='mq-tap'/><model type='virtio'/><driver queues='4'/></interface>",
        cmdline="no_timer_check",
    )
    cli(root, "define", write(tmp_path, "mq.xml", xml))
    cli(root, "start", "mq")
    trio_run(wait_for_serial(tmp_path / "mq.serial", timeout=120))
    [pid] = net_lab.processes("qemu-system-x86")
    # Four queues: a multiqueue tap opened four times, the descriptors all QEMU's.
    assert qemu_queues(pid) == {"mq-tap": 4}
    assert multi_queue(net_lab, "mq-tap")
    assert "<driver queues='4'/>" in cli(root, "dumpxml", "mq").stdout

    # Plugged into the running guest: an ethernet NIC (a tap of its own) and a direct one
    # (a macvtap on up0), two queues each.
    eth = (
        "<interface type='ethernet'><mac address='52:54:00:00:00:02'/>"
        "<target dev='hp-eth'/><model type='virtio'/><driver queues='2'/></interface>"
    )
    direct = (
        "<interface type='direct'><mac address='52:54:00:00:00:03'/>"
        "<source dev='up0' mode='bridge'/><target dev='hp-mvt'/><model type='virtio'/>"
        "<driver queues='2'/></interface>"
    )
    for name, nic in (("eth", eth), ("direct", direct)):
        out = cli(root, "attach-device", "mq", write(tmp_path, f"{name}.xml", nic), "--live")
        assert out.stdout == "Device attached successfully\n\n"
    # A macvtap's character device is /dev/tapIFINDEX.
    ifindex = net_lab.run("cat", "/sys/class/net/hp-mvt/ifindex").stdout.strip()
    assert qemu_queues(pid) == {"mq-tap": 4, "hp-eth": 2, f"tap{ifindex}": 2}
    assert multi_queue(net_lab, "hp-eth")
    shown = net_lab.run("ip", "-d", "link", "show", "hp-mvt").stdout
    assert "@up0" in shown and "macvtap mode bridge" in shown and "52:54:00:00:00:03" in shown
    live = cli(root, "dumpxml", "mq").stdout
    assert "<target dev='hp-eth'/>" in live and "<target dev='hp-mvt'/>" in live
    assert live.count("<driver queues='2'/>") == 2
    # A direct NIC on a host interface that is not there: refused, nothing left behind.
    bad = direct.replace("up0", "nosuch0").replace(":03", ":04").replace("hp-mvt", "hp-bad")
    err = cli(root, "attach-device", "mq", write(tmp_path, "bad.xml", bad), "--live", check=False)
    assert err.returncode == 1 and "no host interface named 'nosuch0'" in err.stderr
    assert "hp-bad" not in net_lab.links()

    # Unplugged: the guest releases each; its tap goes with QEMU's descriptors, the macvtap
    # (which outlives them) is removed, both before the detach returns.
    for name in ("eth", "direct"):
        out = cli(root, "detach-device", "mq", str(tmp_path / f"{name}.xml"), "--live")
        assert out.stdout == "Device detached successfully\n\n"
    links = net_lab.links()
    assert "hp-eth" not in links and "hp-mvt" not in links
    assert qemu_queues(pid) == {"mq-tap": 4}
    cli(root, "destroy", "mq")
    assert not [n for n in net_lab.links() if n.startswith(("mq-", "hp-", "macvtap"))]


#: A supervisor that creates a paused domain, says so, and on a line from stdin plugs the
#: direct NIC in the file it names (the test kills it while QEMU, stopped, cannot answer).
CUT_SHORT = """
import sys, trio, asvirt
async def main(root, xml, nic):
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        dom = await conn.create_xml(open(xml).read(), paused=True)
        print("started", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        await dom.attach_device(open(nic).read(), live=True)
trio.run(main, *sys.argv[1:])
"""


def test_a_direct_nic_whose_plugging_was_cut_short_leaves_no_macvtap(
    net_lab: Lab, test_guest: TestGuest, root: Path, tmp_path: Path
) -> None:
    import sys

    from .guest import PAUSED_DOMAIN_TYPE

    xml = test_guest.xml("cut", tmp_path / "cut.serial", domain_type=PAUSED_DOMAIN_TYPE)
    nic = (
        "<interface type='direct'><mac address='52:54:00:00:00:09'/>"
        "<source dev='up0'/><target dev='cut-mvt'/><model type='virtio'/></interface>"
    )
    files = [write(tmp_path, "cut.xml", xml), write(tmp_path, "nic.xml", nic)]
    supervisor = subprocess.Popen(
        [*net_lab.prefix(), sys.executable, "-c", CUT_SHORT, str(root), *files],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert supervisor.stdin is not None and supervisor.stdout is not None
    try:
        assert supervisor.stdout.readline() == "started\n"
        [pid] = net_lab.processes("qemu-system-x86")
        os.kill(pid, signal.SIGSTOP)  # QEMU answers no getfd: the plugging hangs there
        try:
            supervisor.stdin.write("go\n")
            supervisor.stdin.flush()
            [status] = root.rglob("cut.status")
            # The macvtap is made and recorded before QEMU is asked: the supervisor dies.
            trio_run(wait_for(lambda: b"cut-mvt" in status.read_bytes()))
            supervisor.kill()
            supervisor.wait()
            assert "cut-mvt" in net_lab.links()
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        supervisor.kill()
        supervisor.wait()
    # The next supervisor finds the NIC missing from QEMU and removes its macvtap.
    live = net_lab.cli(root, "dumpxml", "cut").stdout
    assert "cut-mvt" not in live and "cut-mvt" not in net_lab.links()
    net_lab.cli(root, "destroy", "cut")
