"""``asvirtd --stdio-bridge``: join stdin/stdout to a daemon's socket.

What an SSH client runs on the far host (libvirt's ``virt-ssh-helper`` plays this part): the
bytes are relayed untouched both ways until either side closes. It runs no event loop: plain
blocking I/O on two descriptors. Like libvirt's helper, ``--session`` (without ``--socket``)
starts the user's session daemon on that host when none listens.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time
from pathlib import Path

from .. import fsutil
from . import autostart


def run_bridge(path: Path, *, start_session: bool = False) -> int:
    """Relay until either side closes; 1 if the daemon cannot be reached. With
    ``start_session``, a session daemon is started when none listens at ``path`` (as a
    local ``qemu:///session`` client does; libvirt's helper does the same)."""
    try:
        sock = _connect(path)
    except OSError as err:
        if not start_session:
            return _unreachable(path, err)
        autostart.spawn_session_daemon()
        deadline = time.monotonic() + autostart.START_DEADLINE
        while True:
            try:
                sock = _connect(path)
                break
            except OSError as again:
                if time.monotonic() > deadline:
                    log = autostart.session_log()
                    return _unreachable(path, again, f" (the session daemon did not start: {log})")
                time.sleep(0.02)  # its socket appears when it is ready
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if not data:
                        sock.shutdown(socket.SHUT_WR)
                        sel.unregister(stdin)
                        continue
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return 0
                    _write_all(stdout, data)
    except (BrokenPipeError, ConnectionError):
        return 0
    finally:
        sock.close()


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with fsutil.short_socket_path(path) as addr:  # deep paths exceed sun_path
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _unreachable(path: Path, err: OSError, more: str = "") -> int:
    sys.stderr.write(f"asvirtd: cannot reach the daemon at {path}: {err.strerror or err}{more}\n")
    return 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


__all__ = ["run_bridge"]
