"""The ``dir`` pool backend: volumes are files in one directory (libvirt's storage_backend_fs).

Everything here is a plain function on paths and descriptors; the blocking ones are run in
threads by :mod:`.driver`, the ``async`` ones run ``qemu-img`` (:mod:`.qemu_img`).

How files are made safely:

* a pool's directory must be ours (or root's) and writable by nobody else: in a directory
  others can write to, a volume could be swapped for a symlink between two steps;
* a new volume is built under a hidden temporary name (``.asvirt-RANDOM.part``, created with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` and the volume's mode before ``qemu-img`` writes to it), then
  hard-linked to its name, which fails if that name exists: a volume never appears half
  made, and nothing that is there is ever overwritten. Hidden files are never volumes, so a
  leftover of a killed process is never listed; starting the pool removes them;
* volumes are opened relative to the directory with ``O_NOFOLLOW``: a symlink planted in a
  pool is not a volume and is never followed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator
from typing import Any

from .pool import DEFAULT_POOL_MODE, is_volume_name

#: Temporary files of volumes being built: hidden, so never taken for volumes.
TEMP_PREFIX = ".asvirt-"
TEMP_SUFFIX = ".part"
#: Bytes written per step when a file is zeroed or filled.
CHUNK = 8 * 1024 * 1024
_ZEROS = bytes(CHUNK)


def temp_name() -> str:
    return f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"


# -- the pool directory ------------------------------------------------------------------------


def build_dir(path: str, mode: int | None) -> None:
    """Create the pool's directory (and missing parents); an existing one is kept.

    ``mode`` (default :data:`DEFAULT_POOL_MODE`) is applied to a new directory, and to an
    existing one only when the definition asks for a mode.
    """
    os.makedirs(posixpath.dirname(path) or "/", 0o755, exist_ok=True)
    try:
        os.mkdir(path, DEFAULT_POOL_MODE if mode is None else mode)
    except FileExistsError:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "exists and is not a directory", path) from None
        if mode is None:
            return
    # mkdir's mode is filtered through the umask; the definition's mode is meant as given.
    os.chmod(path, DEFAULT_POOL_MODE if mode is None else mode)


def check_dir(path: str) -> None:
    """The pool's directory exists, is a directory, and nobody else can write to it.

    Raises OSError: a directory that others can write to (or that another user owns) could
    have a volume replaced by a symlink behind asvirt's back.
    """
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory", path)
    if st.st_uid not in (os.geteuid(), 0):
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by us", path)
    if st.st_mode & 0o022:
        raise OSError(
            errno.EPERM, f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})", path
        )


def delete_dir(path: str) -> None:
    """Remove the pool's directory, which must be empty (OSError ENOTEMPTY otherwise)."""
    os.rmdir(path)


@contextlib.contextmanager
def open_dir(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def scan(path: str, *, leftovers: list[str] | None = None) -> dict[str, os.stat_result]:
    """The pool's volumes: every regular file with a volume's name, and its ``lstat``.

    Hidden files (temporary ones), symlinks, directories and devices are not volumes. With
    ``leftovers`` (a pool being started), the temporary files of volumes a killed process
    never finished are removed in the same pass over the directory, and their names added
    to it.
    """
    found = {}
    with open_dir(path) as dfd:
        for entry in os.scandir(dfd):
            name = entry.name
            if not is_volume_name(name):
                if (
                    leftovers is not None
                    and name.startswith(TEMP_PREFIX)
                    and name.endswith(TEMP_SUFFIX)
                ):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dfd)
                        leftovers.append(name)
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode):
                found[name] = st
    return found


def lstat_volume(pool_path: str, name: str) -> os.stat_result:
    """The ``lstat`` of a volume's file; OSError if it is gone or no longer a regular file."""
    with open_dir(pool_path) as dfd:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", posixpath.join(pool_path, name))
    return st


def sizes(path: str) -> tuple[int, int, int]:
    """(capacity, allocation, available) of the file system holding ``path``, as libvirt
    reports them for directory pools."""
    sv = os.statvfs(path)
    capacity = sv.f_frsize * sv.f_blocks
    available = sv.f_frsize * sv.f_bfree
    return capacity, capacity - available, available


def usable(path: str) -> int:
    """Bytes an unprivileged writer may still allocate under ``path``."""
    sv = os.statvfs(path)
    return sv.f_frsize * sv.f_bavail


# -- volume files ------------------------------------------------------------------------------


def create_temp(pool_path: str, name: str, mode: int) -> None:
    """Create the empty temporary file ``name`` in the pool, exclusively, with ``mode``."""
    with open_dir(pool_path) as dfd:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=dfd,
        )
        try:
            os.fchmod(fd, mode)  # the umask filtered it
        finally:
            os.close(fd)


def fill_raw(pool_path: str, name: str, capacity: int, allocation: int) -> None:
    """Make the (new, empty) file ``name`` a raw image: ``allocation`` bytes allocated,
    ``capacity`` long (sparse beyond the allocation)."""
    with open_dir(pool_path) as dfd:
        fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        if allocation:
            _allocate(fd, 0, allocation)
        os.ftruncate(fd, capacity)
    finally:
        os.close(fd)


def _allocate(fd: int, offset: int, length: int) -> None:
    """Allocate ``length`` bytes at ``offset``; by writing zeros where fallocate is missing."""
    try:
        os.posix_fallocate(fd, offset, length)
        return
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    pos, end = offset, offset + length
    while pos < end:
        pos += os.pwrite(fd, _ZEROS[: min(CHUNK, end - pos)], pos)


def publish(pool_path: str, temp: str, name: str) -> None:
    """Give the finished temporary file its volume name; FileExistsError if that is taken.

    A hard link fails when the name exists, so a file someone else made meanwhile is never
    overwritten. Where hard links are not supported, the name is checked, then renamed to.
    """
    with open_dir(pool_path) as dfd:
        try:
            os.link(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            try:
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                return
            raise FileExistsError(errno.EEXIST, "exists", posixpath.join(pool_path, name)) from None
        os.unlink(temp, dir_fd=dfd)


def replace(pool_path: str, temp: str, name: str) -> None:
    """Put the finished temporary file in place of the volume ``name`` (atomically)."""
    with open_dir(pool_path) as dfd:
        os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


def remove(pool_path: str, name: str) -> bool:
    """Unlink ``name`` in the pool if it exists (a symlink is removed, never followed)."""
    with open_dir(pool_path) as dfd:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
    return True


def open_volume(pool_path: str, name: str, *, write: bool) -> int:
    """A descriptor on the volume's regular file (OSError for a symlink or anything else)."""
    flags = (os.O_WRONLY if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    with open_dir(pool_path) as dfd:
        fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=dfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", posixpath.join(pool_path, name))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def resize_raw(pool_path: str, name: str, old: int, new: int, *, allocate: bool) -> None:
    fd = open_volume(pool_path, name, write=True)
    try:
        if allocate and new > old:
            _allocate(fd, old, new - old)
        os.ftruncate(fd, new)
    finally:
        os.close(fd)


def zero_step(fd: int, pos: int, end: int) -> int:
    """Write zeros from ``pos`` (one chunk at most); the new position."""
    return pos + os.pwrite(fd, _ZEROS[: min(CHUNK, end - pos)], pos)


def truncate_to_zeros(fd: int, size: int) -> None:
    """Make a sparse file read as zeros: cut it to nothing, then back to its size."""
    os.ftruncate(fd, 0)
    os.ftruncate(fd, size)
    os.fsync(fd)


# -- reading qemu-img info ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says of an image."""

    format: str
    capacity: int
    backing_path: str | None
    backing_format: str | None


def image_info(data: dict[str, Any], path: str) -> ImageInfo:
    """The parts of ``qemu-img info --output=json`` a volume needs."""
    backing = data.get("full-backing-filename") or data.get("backing-filename")
    if isinstance(backing, str) and backing and not backing.startswith(("/", "json:")):
        backing = posixpath.normpath(posixpath.join(posixpath.dirname(path), backing))
    size = data.get("virtual-size")
    return ImageInfo(
        format=str(data.get("format") or "raw"),
        capacity=size if isinstance(size, int) and size >= 0 else 0,
        backing_path=backing if isinstance(backing, str) and backing else None,
        backing_format=data.get("backing-filename-format") or None,
    )


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or written: inode, size, mtime and ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


__all__ = [
    "CHUNK",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "ImageInfo",
    "build_dir",
    "check_dir",
    "create_temp",
    "delete_dir",
    "fill_raw",
    "image_info",
    "lstat_volume",
    "open_volume",
    "publish",
    "remove",
    "replace",
    "resize_raw",
    "scan",
    "signature",
    "sizes",
    "temp_name",
    "truncate_to_zeros",
    "usable",
    "zero_step",
]
