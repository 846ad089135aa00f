"""Filesystem helpers: atomic writes, and unix socket paths longer than sun_path allows."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator

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
    import tempfile  # here: a one-shot command-line client uses this module's socket helpers
    from pathlib import Path

    path = Path(path)
    # The temporary name starts with the file's (cut short: it must fit in 255 bytes too).
    stem = os.fsencode(path.name)[:64].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent)
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


def open_private_append(path: str | os.PathLike[str], *, mode: int = 0o600) -> int:
    """An append-only descriptor on a file only we control (a log), created if need be.

    Refuses (OSError) a symlink planted at ``path`` (``O_NOFOLLOW``), anything but a regular
    file, a file owned by someone else, and a hard link to a file elsewhere (a link count
    above one): each would let someone else choose what asvirt writes to.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    fd = os.open(path, flags, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by us", os.fspath(path))
        if st.st_nlink != 1:
            raise OSError(errno.EMLINK, "a hard link to another file", os.fspath(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_dir(
    path: str | os.PathLike[str], *, mode: int = 0o700, narrow: bool = True
) -> None:
    """Make ``path`` a directory only we can write to, or refuse (OSError) one that is not.

    An existing directory must be ours (not a symlink, owned by our user) and writable by
    nobody else; one readable by others is narrowed to ``mode`` unless ``narrow`` is False
    (a directory others must reach, such as the one holding a read-only socket).
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    where = os.fspath(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (or a symlink to one)", where)
    if st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by us", where)
    if st.st_mode & 0o022:
        raise OSError(
            errno.EPERM, f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})", where
        )
    if narrow and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def make_parents(path: str | os.PathLike[str], *, mode: int = 0o700) -> None:
    """Create the missing directories above ``path`` (not ``path`` itself), each with
    ``mode``; those that exist are left as they are.

    For the XDG base directories a session daemon puts its own under (``$XDG_STATE_HOME``,
    ``~/.config``...): the XDG spec has a missing one created with mode 0700, where
    ``mkdir -p`` (``Path.mkdir(parents=True)``) would give the parents the umask's mode.
    """
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, mode)


def create_once(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data``, whole, unless something (a file, a symlink) is
    there already: True if it was created. A temporary file is written, fsynced and
    hard-linked to ``path`` (``link`` never follows nor replaces what is at its target), so
    two writers racing never see half a file and the first one's stays."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)
    return True


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


def open_char_device(path: str, rdev: int) -> int:
    """Open the character device ``rdev`` (``os.makedev``) at ``path`` read-write, close-on-
    exec; a symlink, a file or another device there raises OSError (ENODEV) without being
    opened, as opening some devices acts (a watchdog's starts it)."""
    st = os.lstat(path)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != rdev:
        want = f"{os.major(rdev)}:{os.minor(rdev)}"
        raise OSError(errno.ENODEV, f"not the character device {want}", path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    if os.fstat(fd).st_rdev != rdev:  # replaced in between
        os.close(fd)
        raise OSError(errno.ENODEV, "the device changed while it was opened", path)
    return fd


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
