"""Save images: a saved domain's definition and memory state in one file.

``dom.save(path)`` and ``dom.managed_save()`` write one; ``conn.restore(path)`` and a start
after a managed save read it. asvirt's own format (libvirt's is its own too), in one
4096-byte header block, then the domain XML, then the hypervisor's state stream::

    offset  size  what
         0    16  magic b"AsvirtSaveImage\\n"
        16     4  format version (1), little-endian
        20     4  flags: bit 0, the guest was running (restore resumes it)
        24     4  length of the domain XML in bytes (UTF-8)
        28     4  room for the XML: the bytes between its start and the data (room for
                  a bigger XML, should images ever be edited in place as libvirt's are)
        32     8  offset of the state stream (a multiple of 4096)
        40    16  the driver that wrote the stream, NUL-padded (b"qemu", b"test")
        56    ..  zero
      4096    ..  the domain XML, then zeros up to the data offset
    offset    ..  the state stream (QEMU's migration stream), to the end of the file

Writes are atomic: an image is written to a temporary file beside its final name and renamed
over it once complete and synced (:class:`FileSink`). Planted symlinks are refused, both
when writing and when reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Protocol

from ..errors import InvalidArgError, OperationFailedError, OperationInvalidError

MAGIC = b"AsvirtSaveImage\n"
VERSION = 1
BLOCK = 4096
_HEADER = struct.Struct("<16sIIIIQ16s")
_RUNNING = 1
#: Room left after the XML for a bigger one.
XML_SPARE = 16 * 1024
#: The largest domain XML an image may hold (libvirt's XML limit).
MAX_XML = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SaveHeader:
    """What a save image says before its state stream."""

    xml: str
    #: The guest was running when saved: a restore resumes it (unless asked otherwise).
    running: bool
    #: Which driver wrote the state stream (a QEMU image cannot be restored by the test
    #: driver, nor the reverse).
    driver: str
    #: Where the state stream starts (set when read; computed when written).
    data_offset: int = 0
    xml_room: int = 0

    def encode(self) -> bytes:
        """The header block and the XML region, up to the state stream."""
        xml = self.xml.encode()
        room = self.xml_room or _round_up(len(xml) + XML_SPARE, BLOCK)
        if len(xml) > room:
            raise ValueError("the XML does not fit")
        offset = BLOCK + room
        driver = self.driver.encode()
        if len(driver) > 16:
            raise ValueError(f"driver name {self.driver!r} is too long")
        flags = _RUNNING if self.running else 0
        head = _HEADER.pack(MAGIC, VERSION, flags, len(xml), room, offset, driver)
        return head.ljust(BLOCK, b"\0") + xml.ljust(room, b"\0")


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def read_header(fd: int, *, what: str) -> SaveHeader:
    """The header of the image open at ``fd`` (read with pread: the position is kept).

    OperationInvalidError for anything that is not an asvirt save image of a version this
    asvirt reads, naming ``what`` (the file).
    """
    block = os.pread(fd, BLOCK, 0)
    if len(block) < _HEADER.size or not block.startswith(MAGIC):
        raise OperationInvalidError(f"{what} is not an asvirt save image")
    _, version, flags, xml_len, room, offset, driver = _HEADER.unpack_from(block)
    if version != VERSION:
        raise OperationInvalidError(
            f"{what} is a save image of format version {version}; this asvirt reads {VERSION}"
        )
    if xml_len > room or room > MAX_XML + XML_SPARE or offset != BLOCK + room:
        raise OperationInvalidError(f"{what} is a damaged save image (bad header)")
    raw = os.pread(fd, xml_len, BLOCK)
    if len(raw) != xml_len:
        raise OperationInvalidError(f"{what} is a truncated save image")
    try:
        xml = raw.decode()
    except UnicodeDecodeError:
        raise OperationInvalidError(f"{what} is a damaged save image (its XML)") from None
    return SaveHeader(
        xml=xml,
        running=bool(flags & _RUNNING),
        driver=driver.rstrip(b"\0").decode(errors="replace"),
        data_offset=offset,
        xml_room=room,
    )


def open_image(path: str) -> int:
    """A read-only descriptor on the save image ``path`` (a regular file; symlinks refused)."""
    _check_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise _open_error(err, path, "read") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OperationInvalidError(f"'{path}' is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_path(path: str) -> None:
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidArgError("a save image path must be a non-empty string")
    if not os.path.isabs(path):
        raise InvalidArgError(f"'{path}' is not an absolute path")


def _open_error(err: OSError, path: str, doing: str) -> Exception:
    if err.errno == errno.ELOOP:
        return OperationInvalidError(f"'{path}' is a symbolic link; refusing to {doing} it")
    if err.errno == errno.ENOENT:
        return OperationInvalidError(f"there is no save image at '{path}'")
    return OperationFailedError(f"cannot {doing} the save image '{path}': {err.strerror}")


class ImageSink(Protocol):
    """Where a save image is being written: a descriptor, then kept or thrown away."""

    @property
    def fd(self) -> int: ...

    def commit(self) -> None:
        """Make the image durable under its name (the previous one, if any, is replaced)."""
        ...

    def discard(self) -> None:
        """Throw away what was written; the previous image, if any, stays."""
        ...


class FileSink:
    """A save image written atomically to ``path``: a temporary file in the same directory,
    synced and renamed over ``path`` by :meth:`commit`. A symlink at ``path`` is refused, as
    is anything there that is not a regular file."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o600) -> None:
        path = os.fspath(path)
        _check_path(path)
        self.path = Path(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise _open_error(err, path, "write") from None
        else:
            if stat.S_ISLNK(st.st_mode):
                raise OperationInvalidError(f"'{path}' is a symbolic link; refusing to write it")
            if not stat.S_ISREG(st.st_mode):
                raise OperationInvalidError(f"'{path}' exists and is not a regular file")
        stem = os.fsencode(self.path.name)[:64].decode(errors="ignore")
        try:
            self._fd, self._tmp = tempfile.mkstemp(
                prefix=f".{stem}.", suffix=".tmp", dir=self.path.parent
            )
            os.fchmod(self._fd, mode)
        except OSError as err:
            raise OperationFailedError(
                f"cannot write the save image '{path}': {err.strerror}"
            ) from None
        self._done = False

    @property
    def fd(self) -> int:
        return self._fd

    def commit(self) -> None:
        try:
            os.fsync(self._fd)
            os.rename(self._tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as err:
            self.discard()
            raise OperationFailedError(
                f"cannot write the save image '{self.path}': {err.strerror}"
            ) from None
        self._close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            os.close(self._fd)


__all__ = [
    "BLOCK",
    "MAGIC",
    "FileSink",
    "ImageSink",
    "SaveHeader",
    "open_image",
    "read_header",
]
