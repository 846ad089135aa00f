"""``qemu+ssh://``: the system's OpenSSH client, a real sshd on 127.0.0.1, a real asvirtd.

"The far host" is 127.0.0.1, reached through an sshd of the test's own (:mod:`tests.sshd`),
with keys made by the test; the far command is this checkout's ``asvirtd --stdio-bridge``,
joined to a daemon the test started on a state directory (``socket=``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.remote import client
from asvirt.drivers.remote.transport import SshTransport
from asvirt.uri import parse_uri

from . import sshd as sshd_helper
from .daemon import Daemon
from .guest import TestGuest, paused_xml
from .helpers import (
    children,
    collect_until,
    destroy_all,
    lifecycle,
    lifecycle_until,
    pid_alive,
    run_cli,
    wait_for,
)
from .sshd import Sshd

pytestmark = pytest.mark.skipif(
    sshd_helper.missing() is not None, reason=str(sshd_helper.missing())
)

#: The far command, as an installed asvirtd (this checkout's, in its venv)...
ASVIRTD = str(Path(sys.executable).parent / "asvirtd")
#: ... and as a Python module run by the venv's interpreter (a command with arguments).
ASVIRTD_MODULE = f"{sys.executable} -m asvirt.daemon"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    server = Sshd(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def daemon(tmp_path: Path, caps_cache: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "state", caps_cache=caps_cache).start()
    try:
        yield d
    finally:
        leftovers = d.stop_and_reap()
        assert not leftovers, f"the test left QEMUs running in the daemon: {leftovers}"


def ssh_uri(
    sshd: Sshd,
    socket_path: Path | None,
    *,
    path: str = "/system",
    port: int | None = None,
    **params: object,
) -> str:
    """``qemu+ssh://USER@127.0.0.1:PORT/system?...``, with the test's key, known_hosts and
    far command unless ``params`` say otherwise; no ``socket=`` when ``socket_path`` is None."""
    query: dict[str, object] = {} if socket_path is None else {"socket": socket_path}
    query.update(keyfile=sshd.key, known_hosts=sshd.known_hosts, command=ASVIRTD)
    query.update(params)
    return (
        f"qemu+ssh://{sshd.user}@127.0.0.1:{port or sshd.port}{path}?"
        f"{urllib.parse.urlencode({k: str(v) for k, v in query.items()})}"
    )


@pytest.fixture
async def over_ssh(sshd: Sshd, daemon: Daemon) -> AsyncIterator[asvirt.Connection]:
    """A connection to the test's daemon through the test's sshd; destroys what still runs."""
    async with asvirt.open(ssh_uri(sshd, daemon.socket)) as conn:
        try:
            yield conn
        finally:
            await destroy_all(conn)
    # Closing the connection ends ssh, and what it ran on the far host.
    assert not ssh_clients()
    await wait_for(lambda: not sshd.far_processes())


def ssh_clients() -> list[int]:
    """The ssh processes this test process runs (the transport's)."""
    return [pid for pid in children(b"ssh") if pid_alive(pid)]


def far_commands(sshd: Sshd) -> list[str]:
    """The command lines run in sshd's sessions."""
    return [_cmdline(pid) for pid in sshd.sessions()]


# -- through ssh, end to end -------------------------------------------------------------------


async def test_a_paused_vm_through_ssh(over_ssh, sshd, daemon, test_guest: TestGuest, tmp_path):
    conn = over_ssh
    # The connection is the test's ssh, logged in to the test's sshd, running the bridge.
    assert len(ssh_clients()) == 1
    assert any(f"{ASVIRTD} --stdio-bridge --system --socket" in c for c in far_commands(sshd))
    assert "Accepted publickey for" in sshd.log_text()
    async with conn.subscribe(kinds=asvirt.EventKind.LIFECYCLE) as events:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
        await dom.start(paused=True)
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        # The same daemon, straight to its socket, has the same domain in the same state.
        async with asvirt.open(daemon.uri) as direct:
            assert await (await direct.lookup_by_name("vm1")).state() == (
                S.PAUSED,
                asvirt.PausedReason.USER,
            )
        await dom.destroy()
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        # Events come over ssh, in order.
        assert await lifecycle_until(
            events,
            ("DEFINED", "ADDED"),
            ("STARTED", "BOOTED"),
            ("SUSPENDED", "PAUSED"),
            ("STOPPED", "DESTROYED"),
        ) == [
            ("DEFINED", "ADDED"),
            ("STARTED", "BOOTED"),
            ("SUSPENDED", "PAUSED"),
            ("STOPPED", "DESTROYED"),
        ]


def test_an_asyncio_program_through_ssh_rides_out_a_cut(sshd, daemon, test_guest, tmp_path):
    """The ssh transport (a child process, through anyio) under asyncio: calls, events, and
    a killed ssh client replaced by a new one with every event delivered once."""

    async def main() -> tuple[list[asvirt.DomainEvent], list[asvirt.DomainEvent]]:
        uri = ssh_uri(sshd, daemon.socket)
        async with asvirt.open(uri) as conn, conn.subscribe(since=0) as events:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
            await dom.start(paused=True)
            assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
            got = await collect_until(
                events, lambda seen: ("SUSPENDED", "PAUSED") in map(lifecycle, seen)
            )
            old = _cut_ssh_client(sshd)
            # Once the connection has seen ssh die, it runs a new one (nothing announces it).
            while not set(ssh_clients()) - set(old):
                await asyncio.sleep(0.02)
            await dom.destroy()  # waits for the new link
            assert ssh_clients() and set(ssh_clients()).isdisjoint(old)
            got += await collect_until(
                events, lambda seen: ("STOPPED", "DESTROYED") in map(lifecycle, seen)
            )
            await dom.undefine()
        async with asvirt.open(daemon.uri) as direct, direct.subscribe(since=0) as replay:
            journal = await collect_until(
                replay, lambda seen: bool(seen) and seen[-1].seq == got[-1].seq
            )
        return got, journal

    got, journal = asyncio.run(main())
    assert [ev.seq for ev in got] == [ev.seq for ev in journal]
    assert [ev.describe() for ev in got] == [ev.describe() for ev in journal]
    assert not ssh_clients()


def _cut_ssh_client(sshd: Sshd) -> list[int]:
    (pid,) = ssh_clients()
    os.kill(pid, signal.SIGKILL)
    return [pid]


def _cut_sshd_session(sshd: Sshd) -> list[int]:
    killed = sshd.kill_sessions()
    assert killed, "no sshd session to kill"
    return ssh_clients()  # the ssh client ends when its session does


@pytest.mark.parametrize("cut", [_cut_ssh_client, _cut_sshd_session], ids=["ssh", "sshd"])
async def test_reconnects_through_ssh_and_replays(cut, sshd, daemon, test_guest, tmp_path):
    """The link is cut (the ssh client killed, or its sshd session) and stays down while
    another connection makes events; once ssh gets in again, the subscribers of the ssh
    connection have every event exactly once, in order: the same as a subscriber on the
    daemon's own socket, which was never cut."""
    async with (
        asvirt.open(daemon.uri) as direct,
        asvirt.open(ssh_uri(sshd, daemon.socket)) as conn,
    ):
        try:
            called: list[asvirt.DomainEvent] = []
            conn.register_event_callback(called.append)
            async with (
                conn.subscribe(since=0) as over_ssh,
                direct.subscribe(since=0) as reference,
            ):
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
                await dom.start(paused=True)
                got = await collect_until(
                    over_ssh, lambda seen: ("SUSPENDED", "PAUSED") in map(lifecycle, seen)
                )

                sshd.refuse_keys()  # so that ssh cannot get in again until the test says
                old = cut(sshd)
                await wait_for(lambda: not any(pid_alive(pid) for pid in old))
                # While the ssh connection is down, events come from elsewhere.
                other = await direct.define_xml(paused_xml(test_guest, tmp_path, "vm2"))
                await other.undefine()
                meanwhile = await collect_until(
                    reference, lambda seen: ("UNDEFINED", "REMOVED") in map(lifecycle, seen)
                )
                meanwhile_seqs = [ev.seq for ev in meanwhile if ev.domain == "vm2"]
                assert len(meanwhile_seqs) == 2
                sshd.accept_keys()

                # A call through the ssh connection waits for it to come back.
                await dom.destroy()
                assert ssh_clients() and set(ssh_clients()).isdisjoint(old)
                log = sshd.log.read_text()
                assert log.count("Accepted publickey") == 2, "not one new ssh connection"

                def destroyed(seen: list[asvirt.DomainEvent]) -> bool:
                    return ("STOPPED", "DESTROYED") in map(lifecycle, seen)

                got += await collect_until(over_ssh, destroyed)
                expected = meanwhile + await collect_until(reference, destroyed)
                await wait_for(lambda: destroyed(called))
        finally:
            sshd.accept_keys()  # whatever failed, let ssh in to destroy what runs
            await destroy_all(conn)
    seqs = [ev.seq for ev in got]
    assert seqs == [ev.seq for ev in expected], "the ssh subscriber's events are not the daemon's"
    assert [ev.seq for ev in called] == seqs, "the callback's events are not the daemon's"
    assert [ev.describe() for ev in got] == [ev.describe() for ev in expected]
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)
    assert set(meanwhile_seqs) <= set(seqs)


async def test_the_far_session_daemon_starts_on_demand(sshd, tmp_path):
    """``/session`` without ``socket=``: the bridge reaches the far user's session daemon,
    starting it when none runs (as libvirt's helper does), in that user's runtime directory
    (here the test's: :attr:`Sshd.far_env`)."""
    socket_path = Path(sshd.far_env["XDG_RUNTIME_DIR"]) / "asvirt" / "asvirt-sock"
    uri = ssh_uri(sshd, None, path="/session")
    started: list[int] = []
    try:
        async with asvirt.open(uri) as conn:
            assert await conn.list_all_domains() == []
            started = [
                pid
                for pid in sshd.far_processes()
                if "--session" in _cmdline(pid) and "--stdio-bridge" not in _cmdline(pid)
            ]
            assert len(started) == 1, f"not one session daemon on the far host: {started}"
            assert socket_path.is_socket()
        # It outlives the connection, as a session daemon does; a second one finds it.
        async with asvirt.open(uri) as conn:
            assert await conn.list_all_domains() == []
        await wait_for(lambda: sshd.far_processes() == started)
    finally:
        for pid in started:
            os.kill(pid, signal.SIGTERM)
        await wait_for(lambda: not any(pid_alive(pid) for pid in started), timeout=60)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# -- what goes wrong, and says so ---------------------------------------------------------------


def _closed_port() -> tuple[socket.socket, int]:
    """A port on 127.0.0.1 bound by the test, not listening: connecting there is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections (the kernel does) and never says a word."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, s.getsockname()[1]


async def _refused(sshd: Sshd, uri: str, timeout: float = 30) -> str:
    """What NoConnectError says when ``uri`` is opened; it comes within ``timeout``, and
    leaves nothing running here or on the far host."""
    with trio.fail_after(timeout), pytest.raises(asvirt.NoConnectError) as info:
        async with asvirt.open(uri):
            pass
    assert not ssh_clients(), "ssh is still running after the failure"
    await wait_for(lambda: not sshd.far_processes())
    return str(info.value)


async def test_an_unreachable_host_is_named(sshd, tmp_path):
    holder, port = _closed_port()
    with holder:
        message = await _refused(sshd, ssh_uri(sshd, tmp_path / "sock", port=port))
    assert f"{sshd.user}@127.0.0.1" in message
    assert "Connection refused" in message


async def test_a_silent_host_fails_at_the_deadline(sshd, tmp_path, monkeypatch):
    monkeypatch.setattr(SshTransport, "CONNECT_TIMEOUT", 2)
    holder, port = _silent_port()
    with holder:
        message = await _refused(sshd, ssh_uri(sshd, tmp_path / "sock", port=port), timeout=15)
    assert "127.0.0.1" in message
    assert "timed out" in message


async def test_a_refused_key_is_named(sshd, tmp_path):
    message = await _refused(sshd, ssh_uri(sshd, tmp_path / "sock", keyfile=sshd.other_key))
    assert f"{sshd.user}@127.0.0.1" in message
    assert "Permission denied (publickey)" in message


async def test_an_unknown_host_key_is_refused(sshd, tmp_path):
    """Host keys are checked: a known_hosts file that does not know the host refuses it."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    message = await _refused(sshd, ssh_uri(sshd, tmp_path / "sock", known_hosts=empty))
    assert "127.0.0.1" in message
    assert "Host key verification failed" in message
    assert "Accepted publickey" not in sshd.log_text()


async def test_a_missing_far_command_is_named(sshd, tmp_path):
    message = await _refused(sshd, ssh_uri(sshd, tmp_path / "sock", command="/nonexistent/asvirtd"))
    assert f"{sshd.user}@127.0.0.1" in message
    assert "/nonexistent/asvirtd: No such file or directory" in message
    assert "status 127" in message


async def test_no_daemon_on_the_far_host_is_named(sshd, tmp_path):
    message = await _refused(sshd, ssh_uri(sshd, tmp_path / "nothing-listens-here"))
    assert f"{sshd.user}@127.0.0.1" in message
    assert f"cannot reach the daemon at {tmp_path / 'nothing-listens-here'}" in message


async def test_a_far_command_that_never_answers_fails_at_the_deadline(sshd, tmp_path, monkeypatch):
    monkeypatch.setattr(client, "HELLO_DEADLINE", 2.0)
    # Reads the client's hello and never answers; it ends with its input ("#" drops the
    # bridge's arguments).
    message = await _refused(
        sshd, ssh_uri(sshd, tmp_path / "sock", command="exec cat >/dev/null #"), 15
    )
    assert f"{sshd.user}@127.0.0.1" in message
    assert "no answer in 2 s" in message


# -- the CLI, and the command line ssh is given -------------------------------------------------


async def test_the_cli_through_ssh(sshd, daemon, test_guest, tmp_path):
    """``asvirt -c qemu+ssh://...`` in a process of its own; the far command is a Python
    module run by an interpreter (a command= with arguments)."""
    uri = ssh_uri(sshd, daemon.socket, path="/session", command=ASVIRTD_MODULE)
    xml = tmp_path / "vm1.xml"
    xml.write_text(paused_xml(test_guest, tmp_path))
    assert "Domain 'vm1' defined" in run_cli(tmp_path, "-c", uri, "define", str(xml)).stdout
    listed = run_cli(tmp_path, "-c", uri, "list", "--all").stdout
    assert any(line.split()[1:] == ["vm1", "shut", "off"] for line in listed.splitlines()[2:])
    async with asvirt.open(daemon.uri) as direct:
        assert [d.name for d in await direct.list_all_domains()] == ["vm1"]
    failed = run_cli(
        tmp_path, "-c", ssh_uri(sshd, daemon.socket, keyfile=sshd.other_key), "list", check=False
    )
    assert failed.returncode != 0
    assert "Permission denied (publickey)" in failed.stderr


def test_the_ssh_command_line():
    uri = parse_uri(
        "qemu+ssh://ann@far.example:2222/session?keyfile=/k/id&known_hosts=/k/kh"
        "&command=/opt/venv/bin/python%20-m%20asvirt.daemon&socket=/run/my%20sock"
    )
    transport = SshTransport(uri)
    assert transport.description == "ann@far.example:2222 over ssh"
    argv = transport.argv()
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "ann"
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert "UserKnownHostsFile=/k/kh" in argv
    assert "BatchMode=yes" in argv
    assert not any("StrictHostKeyChecking" in a for a in argv)
    assert argv[-3:] == [
        "--",
        "far.example",
        "/opt/venv/bin/python -m asvirt.daemon --stdio-bridge --session --socket '/run/my sock'",
    ]
    plain = SshTransport(parse_uri("qemu+ssh://far.example/system?no_verify=1")).argv()
    assert plain[-1] == "asvirtd --stdio-bridge --system"
    assert "StrictHostKeyChecking=no" in plain
    assert "-p" not in plain and "-l" not in plain and "-i" not in plain
    for bad in ("qemu+ssh:///system", "qemu+ssh://h/embed", "qemu+ssh://h/system?no_verify=yes"):
        with pytest.raises(asvirt.NoConnectError):
            SshTransport(parse_uri(bad))
