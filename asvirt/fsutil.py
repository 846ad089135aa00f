"""Filesystem helpers: atomic writes, and unix socket paths longer than sun_path allows."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

# sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path`` and
    fsyncs the directory so the rename survives a crash. ``durable=False`` skips the fsyncs
    for facts that may be lost in a power cut (the rename is still atomic).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_nofollow(path: str | os.PathLike[str], *, limit: int = 64 * 1024 * 1024) -> bytes:
    """The contents of a regular file, refusing a symlink planted at ``path`` (ELOOP).

    Raises OSError like ``open``; ValueError if the file is larger than ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_size > limit:
            raise ValueError(f"{os.fspath(path)}: larger than {limit} bytes")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove(path: str | os.PathLike[str]) -> bool:
    """Unlink ``path`` if it exists; True if it did."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def short_socket_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A path to ``path`` that fits in ``sun_path``.

    Paths under deep directories (pytest's tmp dirs, users' home directories) exceed the 107
    bytes a unix socket address may have; ``/proc/self/fd/N/name``, through an open descriptor
    of the directory, names the same place in a few bytes.
    """
    path = os.fspath(path)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    dirname, name = os.path.split(path)
    dfd = os.open(dirname or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{dfd}/{name}"
        if len(os.fsencode(short)) > _SUN_PATH_MAX:
            raise OSError(f"socket name too long: {name}")
        yield short
    finally:
        os.close(dfd)


def bind_unix_listener(path: str | os.PathLike[str], *, backlog: int = 8) -> socket.socket:
    """A listening unix stream socket at ``path`` (replacing a stale socket file there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_socket_path(path) as addr:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)
            sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(path: str | os.PathLike[str]) -> socket.socket:
    """A connected unix stream socket to ``path`` (non-blocking connect is not needed:
    connecting to a listening unix socket completes at once or fails)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_socket_path(path) as addr:
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock
