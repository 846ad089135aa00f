"""How a client reaches a daemon: a unix socket (starting the session daemon if need be), or
SSH to another host, where ``asvirtd --stdio-bridge`` joins the daemon's socket.

A transport only makes byte streams (anyio's, so that they work under trio and asyncio): the
client (:mod:`.client`) reconnects through it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ... import fsutil
from ...daemon import autostart, layout
from ...errors import NoConnectError
from ...uri import ConnectURI


class Transport(Protocol):
    """Something that opens a new stream to the daemon on each call."""

    #: What to say in errors ("the daemon at /run/asvirt/asvirt-sock").
    description: str

    async def open(self) -> anyio.abc.ByteStream: ...


class UnixTransport:
    """A unix socket; for ``qemu:///session``, the daemon is started when none listens."""

    def __init__(self, path: Path, *, autostart: bool = False) -> None:
        self.path = path
        self.autostart = autostart
        self.description = f"the daemon at {path}"
        self._started = False

    async def open(self) -> anyio.abc.ByteStream:
        try:
            return await _connect_unix(self.path)
        except OSError:
            if not self.autostart or self._started:
                raise
        # No session daemon: start one (it outlives this client), then wait for its socket.
        self._started = True
        await anyio.to_thread.run_sync(autostart.spawn_session_daemon)
        with anyio.move_on_after(autostart.START_DEADLINE):
            while True:
                try:
                    return await _connect_unix(self.path)
                except OSError:
                    await anyio.sleep(0.02)  # its socket appears when it is ready
        raise NoConnectError(f"the session daemon did not start (see {autostart.session_log()})")


async def _connect_unix(path: Path) -> anyio.abc.ByteStream:
    with fsutil.short_socket_path(path) as addr:
        return await anyio.connect_unix(addr)


class SshTransport:
    """``ssh [-p PORT] [-l USER] HOST 'asvirtd --stdio-bridge ...'``: the system's OpenSSH client.

    Each :meth:`open` runs a new ``ssh``; the far host's shell runs ``COMMAND --stdio-bridge
    --system|--session [--socket PATH]`` (``COMMAND`` is ``asvirtd`` unless ``command=`` says
    otherwise), which joins ssh's stdin and stdout to that host's daemon socket. ssh never
    prompts (BatchMode) and checks the host's key as it always does (``known_hosts=`` names
    the file; ``no_verify=1`` turns the check off, as in libvirt). What ssh says on its stderr
    — its own errors and the far command's — is kept, and is the reason given when the stream
    ends in failure.
    """

    #: Seconds ssh may take to reach the host and complete its handshake (ssh's
    #: ConnectTimeout): an unreachable host fails, and says so, within this.
    CONNECT_TIMEOUT = 15

    def __init__(self, uri: ConnectURI) -> None:
        parts = urllib.parse.urlsplit(uri.uri)
        if not parts.hostname:
            raise NoConnectError(f"'{uri.uri}': an ssh URI names a host")
        self.host = parts.hostname
        self.user = urllib.parse.unquote(parts.username) if parts.username else None
        try:
            self.port = parts.port
        except ValueError:
            raise NoConnectError(f"'{uri.uri}': the port is not a number") from None
        if uri.path not in ("/system", "/session"):
            raise NoConnectError(f"'{uri.uri}': the path is /system or /session")
        mode = "--system" if uri.path == "/system" else "--session"
        # A shell fragment: the far host's shell splits it ("/venv/bin/python -m asvirt.daemon").
        remote = uri.param("command") or "asvirtd"
        self.ssh = uri.param("ssh") or shutil.which("ssh") or "ssh"
        self.keyfile = uri.param("keyfile")
        self.known_hosts = uri.param("known_hosts")
        no_verify = uri.param("no_verify", "0")
        if no_verify not in ("0", "1"):
            raise NoConnectError(f"'{uri.uri}': no_verify is 0 or 1")
        self.verify = no_verify == "0"
        self.remote_command = f"{remote} --stdio-bridge {mode}"
        socket_param = uri.param("socket")
        if socket_param:
            self.remote_command += f" --socket {shlex.quote(socket_param)}"
        who = f"{self.user}@" if self.user else ""
        where = f"[{self.host}]" if ":" in self.host else self.host
        self.description = f"{who}{where}{f':{self.port}' if self.port else ''} over ssh"

    def argv(self) -> list[str]:
        argv = [self.ssh, "-T", "-o", "BatchMode=yes", "-e", "none"]
        argv += ["-o", f"ConnectTimeout={self.CONNECT_TIMEOUT}"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.keyfile:
            argv += ["-i", self.keyfile]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if not self.verify:
            argv += ["-o", "StrictHostKeyChecking=no"]
        if self.user:
            argv += ["-l", self.user]
        # "--": a host name can never be read as an option.
        return [*argv, "--", self.host, self.remote_command]

    async def open(self) -> anyio.abc.ByteStream:
        # ssh's stderr goes to a file, not a pipe: nobody has to drain it for ssh to go on,
        # and it is all there when ssh has exited. The stream closes it.
        errors = tempfile.TemporaryFile(prefix="asvirt-ssh-")  # noqa: SIM115
        try:
            proc = await anyio.open_process(
                self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
            )
        except OSError as err:
            errors.close()
            raise OSError(err.errno, f"cannot run {self.ssh}: {err.strerror}") from None
        return _SshStream(proc, errors)


class _SshStream(anyio.abc.ByteStream):
    """An ssh child's stdin and stdout; when they break, ssh's stderr says why.

    Closing the stream ends the child. The end of its output is a clean end when ssh exits
    with status 0 (the far side closed the connection), else a BrokenResourceError carrying
    what ssh wrote on its stderr.
    """

    #: Seconds ssh may take to exit once its output has ended.
    EXIT_GRACE = 5.0

    def __init__(self, proc: anyio.abc.Process, errors: IO[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._errors = errors
        self._failure: str | None = None
        self._ended = False

    async def send(self, item: bytes) -> None:
        try:
            await self._stdin.send(item)
        except anyio.BrokenResourceError:
            raise anyio.BrokenResourceError(await self._why() or "ssh has exited") from None

    async def send_eof(self) -> None:
        await self._stdin.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._stdout.receive(max_bytes)
        except anyio.EndOfStream:
            why = await self._why()
            if why is not None:
                raise anyio.BrokenResourceError(why) from None
            raise

    async def _why(self) -> str | None:
        """None if ssh exited with status 0, else what it said (after it has exited)."""
        if not self._ended:
            with anyio.move_on_after(self.EXIT_GRACE):
                await self._proc.wait()
            if self._proc.returncode is None:
                self._proc.kill()
                with anyio.CancelScope(shield=True):
                    await self._proc.wait()
            self._ended = True
            assert self._proc.returncode is not None
            self._failure = _failure(self._proc.returncode, self._said())
        return self._failure

    def _said(self) -> str:
        """The last lines ssh wrote on its stderr, on one line."""
        try:
            self._errors.seek(0)
            text = self._errors.read()[-4096:].decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())

    async def aclose(self) -> None:
        # Shielded: even a forceful close (already cancelled) ends and reaps the child.
        with anyio.CancelScope(shield=True):
            try:
                await self._stdin.aclose()
                if self._proc.returncode is None:
                    self._proc.kill()
                await self._proc.wait()
                await self._stdout.aclose()
            finally:
                self._errors.close()
        await anyio.lowlevel.checkpoint()


def _failure(returncode: int, said: str) -> str | None:
    """Why ssh ended (None when it ended well): what it said, and its status."""
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            status = f"ssh was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"ssh was killed by signal {-returncode}"
    elif returncode == 255:
        status = "ssh exited with status 255"  # its own errors; other statuses are the far side's
    else:
        status = f"the far command exited with status {returncode}"
    return f"{said} ({status})" if said else status


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
