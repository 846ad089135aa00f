"""dnsmasq for a network: its configuration, and the process, started and watched like QEMU.

One dnsmasq per network that has an address (libvirt's choice): DNS for the guests, DHCP
where ``<dhcp>`` asks for it (static hosts included), IPv6 router advertisements where an
IPv6 ``<ip>`` is. It binds to the network's bridge only (``bind-dynamic``), so networks and
the host's own resolver never compete for a port.

dnsmasq is started in its usual daemon mode: the process asvirt spawns exits once the daemon
has bound its sockets and written its pid file (or with the reason it could not), which is
exactly the "ready" signal a start needs. The daemon is then watched through a pidfd, the
same way whether this process started it or a previous supervisor did; it is identified by
its pid, its start time, and the configuration file on its command line.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ... import fsutil
from ...errors import OperationFailedError, SystemCallError
from .model import NetworkDef

if TYPE_CHECKING:
    from types import ModuleType


def _process() -> ModuleType:
    """QEMU's process helpers (spawn, pidfds), which dnsmasq shares. Imported on use: the
    QEMU driver imports this package, so importing it at module level would be a cycle."""
    from ..qemu import process

    return process


def config(
    defn: NetworkDef,
    *,
    pid_file: Path,
    lease_script: Path,
    log_file: Path,
) -> str:
    """The dnsmasq configuration for ``defn`` (libvirt's ``networkDnsmasqConfContents``)."""
    assert defn.bridge is not None
    lines = [
        f"## Written by asvirt for network '{defn.name}': it is overwritten at each start.",
        "strict-order",
        f"pid-file={pid_file}",
        "except-interface=lo",
        "bind-dynamic",
        f"interface={defn.bridge}",
        f"log-facility={log_file}",
    ]
    if not defn.dns_enabled:
        lines.append("port=0")
    else:
        if defn.domain is not None:
            lines += [f"domain={defn.domain}", "expand-hosts"]
            if defn.domain_local_only:
                lines.append(f"local=/{defn.domain}/")
        if not defn.dns_forward_plain_names:
            lines.append("domain-needed")
            # Names without a dot are this network's or nobody's.
            lines.append("local=//")
        if any(f.domain is None and f.addr is not None for f in defn.dns_forwarders):
            lines.append("no-resolv")
        for fwd in defn.dns_forwarders:
            if fwd.domain is not None and fwd.addr is None:
                lines.append(f"local=/{fwd.domain}/")
            elif fwd.domain is not None:
                lines.append(f"server=/{fwd.domain}/{fwd.addr}")
            else:
                lines.append(f"server={fwd.addr}")
        for dns_host in defn.dns_hosts:
            lines.append(f"host-record={','.join(dns_host.hostnames)},{dns_host.ip}")
    leases = 0
    for ip in defn.dhcp_ips():
        if ip.is_v6:
            for rng in ip.ranges:
                lines.append(f"dhcp-range={rng.start},{rng.end},{ip.prefix}")
                leases += rng.size
        else:
            netmask = ip.network.netmask
            for rng in ip.ranges:
                lines.append(f"dhcp-range={rng.start},{rng.end},{netmask}")
                leases += rng.size
            if not ip.ranges and ip.hosts:
                # Static hosts only: a range of none, so dnsmasq serves this subnet.
                lines.append(f"dhcp-range={ip.network.network_address},static,{netmask}")
        for host in ip.hosts:
            who = host.mac if host.mac is not None else (f"id:{host.id}" if host.id else None)
            addr = f"[{host.ip}]" if ip.is_v6 else str(host.ip)
            parts = [p for p in (who, addr, host.name) if p]
            lines.append(f"dhcp-host={','.join(parts)}")
            leases += 1
    if defn.dhcp_ips():
        lines += [
            "dhcp-no-override",
            "dhcp-authoritative",
            f"dhcp-lease-max={min(leases, 1 << 24) or 1}",
            f"dhcp-script={lease_script}",
            "leasefile-ro",
        ]
    if defn.mtu is not None:
        # As libvirt: DHCP tells the guests the network's MTU (option 26). Only DHCP does:
        # a NIC's host_mtu comes from its own <mtu> (see asvirt.drivers.network.driver).
        lines.append(f"dhcp-option=option:mtu,{defn.mtu}")
    v6 = defn.ipv6()
    if v6:
        lines.append("enable-ra")
        for ip in v6:
            if not ip.ranges:
                lines.append(f"dhcp-range={ip.network.network_address},ra-only")
    return "\n".join(lines) + "\n"


def lease_script(python: str, helper: Path, database: Path) -> str:
    """The ``--dhcp-script`` wrapper: dnsmasq runs a program, not a command line."""
    db = _sh(str(database))
    return (
        "#!/bin/sh\n"
        "# Written by asvirt: dnsmasq reports lease changes here.\n"
        # dnsmasq runs 'init' before it serves, and waits for it: with no database (a
        # network's first start) the helper would print no lease, so Python, which costs
        # most of a start, is not run for it.
        f'if [ "$1" = init ] && [ ! -e {db} ]; then exit 0; fi\n'
        f'exec {_sh(python)} -I -S {_sh(str(helper))} {db} "$@"\n'
    )


def _sh(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def helper_path() -> Path:
    """The lease helper's file (it runs as a script, outside asvirt's package imports)."""
    return Path(__file__).resolve().with_name("leases.py")


def python() -> str:
    return sys.executable


@dataclasses.dataclass(frozen=True)
class DnsmasqProcess:
    pid: int
    start_time: int | None


def _matches(pid: int, start_time: int | None, conf_file: Path) -> bool:
    if start_time is not None and _process().read_start_time(pid) != start_time:
        return False
    return _process().cmdline_mentions(pid, f"--conf-file={conf_file}")


def find(pid: int, start_time: int | None, conf_file: Path) -> int | None:
    """A pidfd on the dnsmasq ``pid`` if it is still ours (else None)."""
    pidfd = _process().open_pidfd(pid)
    if pidfd is None:
        return None
    # The pidfd pins the process: the identity check cannot race with pid reuse.
    if not _matches(pid, start_time, conf_file):
        os.close(pidfd)
        return None
    return pidfd


def adopt(pid_file: Path, conf_file: Path) -> tuple[DnsmasqProcess, int] | None:
    """The dnsmasq that ``pid_file`` names, if it runs ``conf_file`` (and a pidfd on it).

    dnsmasq writes its pid file itself, before its supervisor records it: a supervisor killed
    in between leaves a dnsmasq only the pid file knows of."""
    pid = read_pid_file(pid_file)
    pidfd = find(pid, None, conf_file) if pid is not None else None
    if pid is None or pidfd is None:
        return None
    return DnsmasqProcess(pid, _process().read_start_time(pid)), pidfd


def read_pid_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


async def launch(
    binary: str,
    *,
    conf_file: Path,
    pid_file: Path,
    log_file: Path,
    timeout: float,
) -> tuple[DnsmasqProcess, int]:
    """Start dnsmasq with ``conf_file``; returns it (and a pidfd) once it serves.

    Raises OperationFailedError with dnsmasq's own words if it refuses to start;
    SystemCallError if its pid file or log cannot be prepared (a symlink planted there).
    """
    try:
        _process().require_pidfd()
    except SystemCallError as err:
        raise SystemCallError(f"cannot run dnsmasq: {err}", errno=err.errno) from None
    try:
        fsutil.remove(pid_file)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "remove the old pid file of dnsmasq") from None
    try:
        # Not fsutil.open_private_append: dnsmasq gives its log to the user it drops to.
        log_fd = os.open(
            log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as err:
        raise SystemCallError.from_oserror(err, "open the log of dnsmasq", log_file) from None
    start = os.lseek(log_fd, 0, os.SEEK_END)
    try:
        try:
            parent = _process().spawn([binary, f"--conf-file={conf_file}"], log_fd=log_fd)
        except OSError as err:
            raise OperationFailedError(f"cannot run '{binary}': {err.strerror or err}") from None
    finally:
        os.close(log_fd)
    parent_fd = _process().watch_child(parent, "dnsmasq")
    status: int | None = None
    if parent_fd is not None:
        try:
            with trio.move_on_after(timeout) as waited:
                await _process().wait_exit(parent_fd)
            if waited.cancelled_caught:
                _process().signal_pidfd(parent_fd, signal.SIGKILL)
                await _process().wait_exit(parent_fd)
            status = _process().try_reap(parent_fd)
        finally:
            os.close(parent_fd)
        if status is None or status != 0:
            why = _tail(log_file, start) or (
                f"it did not start within {timeout:g} s"
                if status is None or status < 0
                else f"exit status {status}"
            )
            raise OperationFailedError(f"dnsmasq failed to start: {why}")
    pid = read_pid_file(pid_file)
    pidfd = find(pid, None, conf_file) if pid is not None else None
    if pid is None or pidfd is None:
        raise OperationFailedError(
            f"dnsmasq exited right after starting: {_tail(log_file, start) or 'no reason given'}"
        )
    return DnsmasqProcess(pid, _process().read_start_time(pid)), pidfd


async def terminate(pidfd: int, *, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace``; returns once the process is gone."""
    if not _process().signal_pidfd(pidfd, signal.SIGTERM):
        return
    with trio.move_on_after(grace):
        await _process().wait_exit(pidfd)
        return
    _process().signal_pidfd(pidfd, signal.SIGKILL)
    with trio.move_on_after(grace):
        await _process().wait_exit(pidfd)


async def wait_exit(pidfd: int) -> None:
    """Until the process behind ``pidfd`` has exited."""
    await _process().wait_exit(pidfd)


def _tail(path: Path, start: int, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(8192).decode(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(kept[-lines:])


__all__ = [
    "DnsmasqProcess",
    "config",
    "find",
    "helper_path",
    "launch",
    "lease_script",
    "python",
    "read_pid_file",
    "terminate",
]
