"""``asvirtd --stdio-bridge``: join stdin/stdout to a daemon's socket.

What an SSH client runs on the far host (libvirt's ``virt-ssh-helper`` plays this part): the
bytes are relayed untouched both ways until either side closes. It needs no event loop
library, so that it starts in a few milliseconds.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
from pathlib import Path

from .. import fsutil


def run_bridge(path: Path) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with fsutil.short_socket_path(path) as addr:  # deep paths exceed sun_path
            sock.connect(addr)
    except OSError as err:
        sock.close()
        sys.stderr.write(f"asvirtd: cannot reach the daemon at {path}: {err.strerror or err}\n")
        return 1
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


__all__ = ["run_bridge"]
