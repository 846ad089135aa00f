"""How a client reaches a daemon: a unix socket (starting the session daemon if need be), or
SSH to another host, where ``asvirtd --stdio-bridge`` joins the daemon's socket.

A transport only makes byte streams: the client (:mod:`.client`) reconnects through it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Protocol

import trio

from ... import fsutil
from ...daemon import layout
from ...errors import NoConnectError
from ...uri import ConnectURI


class Transport(Protocol):
    """Something that opens a new stream to the daemon on each call."""

    #: What to say in errors ("the daemon at /run/asvirt/asvirt-sock").
    description: str

    async def open(self) -> trio.abc.Stream: ...


class UnixTransport:
    """A unix socket; for ``qemu:///session``, the daemon is started when none listens."""

    def __init__(self, path: Path, *, autostart: bool = False) -> None:
        self.path = path
        self.autostart = autostart
        self.description = f"the daemon at {path}"
        self._started = False

    async def open(self) -> trio.abc.Stream:
        try:
            return await _connect_unix(self.path)
        except OSError:
            if not self.autostart or self._started:
                raise
        # No session daemon: start one (it outlives this client), then wait for its socket.
        self._started = True
        await trio.to_thread.run_sync(_spawn_session_daemon)
        with trio.move_on_after(15):
            while True:
                try:
                    return await _connect_unix(self.path)
                except OSError:
                    await trio.sleep(0.02)  # its socket appears when it is ready
        raise NoConnectError(f"the session daemon did not start (see {_session_log()})")


async def _connect_unix(path: Path) -> trio.abc.Stream:
    with fsutil.short_socket_path(path) as addr:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(addr)
        except BaseException:
            sock.close()
            raise
    return trio.SocketStream(sock)


def _session_log() -> Path:
    return layout.runtime_dir() / "asvirt" / "asvirtd.log"


def _spawn_session_daemon() -> None:
    """Start ``asvirtd --session`` in a session of its own, detached from this client."""
    log_path = _session_log()
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "asvirt.daemon", "--session"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


class SshTransport:
    """``ssh [-p PORT] [USER@]HOST asvirtd --stdio-bridge ...``: the system's OpenSSH client."""

    def __init__(self, uri: ConnectURI) -> None:
        parts = urllib.parse.urlsplit(uri.uri)
        if not parts.hostname:
            raise NoConnectError(f"'{uri.uri}': an ssh URI names a host")
        self.host = parts.hostname
        self.user = parts.username
        self.port = parts.port
        if uri.path not in ("/system", "/session"):
            raise NoConnectError(f"'{uri.uri}': the path is /system or /session")
        mode = "--system" if uri.path == "/system" else "--session"
        remote = uri.param("command") or "asvirtd"
        self.ssh = uri.param("ssh") or shutil.which("ssh") or "ssh"
        self.keyfile = uri.param("keyfile")
        self.known_hosts = uri.param("known_hosts")
        self.remote_command = f"{remote} --stdio-bridge {mode}"
        socket_param = uri.param("socket")
        if socket_param:
            self.remote_command += f" --socket {shlex.quote(socket_param)}"
        self.description = f"{self.user + '@' if self.user else ''}{self.host} over ssh"

    def argv(self) -> list[str]:
        argv = [self.ssh, "-T", "-o", "BatchMode=yes", "-e", "none"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.keyfile:
            argv += ["-i", self.keyfile]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.user:
            argv += ["-l", self.user]
        return [*argv, self.host, self.remote_command]

    async def open(self) -> trio.abc.Stream:
        proc = await trio.lowlevel.open_process(
            self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdin is not None and proc.stdout is not None
        return trio.StapledStream(_ProcessStdin(proc), proc.stdout)


class _ProcessStdin(trio.abc.SendStream):
    """The ssh child's stdin; closing it also ends the child."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stdin is not None
        self._proc = proc
        self._stdin = proc.stdin

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stdin.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stdin.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stdin.aclose()
        if self._proc.returncode is None:
            self._proc.kill()
        with trio.CancelScope(shield=True):
            await self._proc.wait()


def transport_for(uri: ConnectURI) -> Transport:
    """The transport a URI asks for (NoConnectError for one asvirt cannot use)."""
    if uri.transport == "ssh":
        return SshTransport(uri)
    if uri.host and uri.transport not in (None, "unix"):
        raise NoConnectError(f"'{uri.uri}': unknown transport '{uri.transport}'")
    if uri.host and uri.transport is None:
        raise NoConnectError(f"'{uri.uri}': name a transport for remote hosts (qemu+ssh://...)")
    socket_param = uri.param("socket")
    if socket_param:
        if not os.path.isabs(socket_param):
            raise NoConnectError(f"'{uri.uri}': socket= must be an absolute path")
        return UnixTransport(Path(socket_param))
    if uri.path not in ("/system", "/session"):
        raise NoConnectError(
            f"'{uri.uri}': unknown QEMU driver path (use qemu:///system, qemu:///session or "
            "qemu:///embed?root=DIR)"
        )
    return UnixTransport(layout.socket_for(uri.path), autostart=uri.path == "/session")


__all__ = ["SshTransport", "Transport", "UnixTransport", "transport_for"]
