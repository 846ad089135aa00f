"""The per-node event journal: every event, numbered at the source, appended before delivery.

A node numbers its events (``seq`` 1, 2, 3, ...) and appends each to its journal before any
connection sees it, so a client can resume from the last ``seq`` it saw, even after the node
restarted. Two implementations share the :class:`Journal` interface:

* :class:`MemoryJournal` keeps the newest N events in memory (the in-memory test driver).
* :class:`FileJournal` keeps them in a directory of append-only segment files.

On disk
-------
``DIR/00000000000000000001.events``, ``DIR/00000000000000004711.events``, ...: each segment is
named by the ``seq`` of its first record, zero-padded to 20 digits so names sort like numbers,
and holds consecutive events. One record per event, one line per record::

    3a1f09c2 {"seq":4711,"timestamp":1700000000.25,"domain":"vm1",...}\\n

eight hex digits of the CRC-32 of the payload, a space, the payload (the event as
:func:`~asvirt.events.event_to_dict` makes it, compact JSON, ASCII only, so it never holds a
newline), a newline. A record is valid only if the line is complete, the checksum matches, the
JSON decodes to an event, and its ``seq`` follows the previous valid record's by one (by more
only across records that were skipped as invalid). Other files in the directory are ignored.

Segments are written with one ``os.write`` per record on a descriptor opened
``O_APPEND|O_CLOEXEC|O_NOFOLLOW|O_CREAT|O_EXCL``, mode 0600, in a directory created 0700, and
are never modified once this process stops appending to them: after a restart, a corrupt or
truncated tail, or a failed write, appends go to a new segment. Readers skip invalid records
with a warning; a restarted journal numbers on after the newest valid record on disk (or the
name of an empty newest segment), so it never hands out again a ``seq`` that is on disk.

Symlinks are never followed: a symlink (or FIFO, device, directory) at a segment's name is
ignored when scanning. One planted at the name the next segment needs is refused by
``O_EXCL|O_NOFOLLOW``; as that name must be the segment's first ``seq``, the journal does not
pick another but reports the write failure (below) and retries, and continues once the name is
free. A symlink at the journal directory itself is refused when opening.

Durability
----------
:meth:`FileJournal.append` only writes (into the page cache); :meth:`FileJournal.run`, a task
in the node's nursery, fsyncs within ``fsync_interval`` of an append, in a worker thread, one
fsync for all the appends in between. A crash of the process loses nothing that was appended;
a crash of the machine can lose the events of the last interval (and their seqs are then
numbered again: clients may have seen them, as delivery does not wait for the fsync).

Failures
--------
``append`` never raises ``OSError``. When a write fails (ENOSPC, EIO, a file planted where the
next segment must go), the event stays in memory, :attr:`FileJournal.degraded` turns True, one
error is logged for the whole streak, and the events are written, in order, at the next
append or sync that succeeds; ``run()`` retries by itself with a backoff. A ``seq`` is never
reused. :meth:`FileJournal.sync` raises :class:`~asvirt.OperationFailedError` while events
cannot be made durable. A failed fsync is logged with the newest ``seq`` it covered, and
appends continue in a new segment; the events it covered are not written again (after a
failed fsync, Linux may already have dropped them from the page cache without a trace).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import errno
import fcntl
import functools
import itertools
import json
import math
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Protocol

import trio

from ..config import JournalConfig
from ..errors import (
    InvalidArgError,
    OperationFailedError,
    OperationInvalidError,
    ResourceBusyError,
)
from ..log import get_logger
from .codec import event_from_dict, event_to_dict
from .types import DomainEvent, EventKind

log = get_logger("asvirt.journal")

_SEGMENT_NAME = re.compile(r"(\d{20})\.events")
# The encoder puts seq first; probes read it without decoding the whole record.
_SEQ_PREFIX = re.compile(rb'\{"seq":(\d+),')
# Bytes read per pread when scanning forward.
_CHUNK = 64 * 1024
# Bytes at the end of a segment that opening reads to find its newest record.
_TAIL_WINDOW = 64 * 1024
# Binary search over a segment stops when the range is this small, then reads forward.
_SEEK_WINDOW = 8 * 1024
# Backlogged records one append writes before its own; sync() writes the rest in chunks of
# _SYNC_FLUSH, yielding in between, so a long backlog never blocks the trio thread for long.
_APPEND_FLUSH = 64
_SYNC_FLUSH = 1024
# Events held while writes fail; beyond this the oldest are dropped (memory must stay bounded
# even if the disk stays full for days). They become a hole that readers step over.
_PENDING_LIMIT = 65536
# run() looks at retention by age this often while no events arrive (seconds).
_IDLE_CHECK = 60.0
# Longest wait between retries of failing writes (seconds).
_MAX_RETRY = 5.0

_O_SEGMENT_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_O_SEGMENT_CREATE = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
)


class Journal(Protocol):
    """What a node needs from its event journal.

    The node calls everything from the trio thread; ``append`` sits on the hot path of event
    delivery and must return quickly.
    """

    @property
    def last_seq(self) -> int:
        """The newest ``seq`` appended (0 when nothing was ever appended)."""
        ...

    @property
    def first_seq(self) -> int:
        """The oldest ``seq`` still retained; ``last_seq + 1`` when nothing is."""
        ...

    def append(self, event: DomainEvent) -> None:
        """Add ``event``, whose ``seq`` must be ``last_seq + 1``. Never blocks for long, never
        raises OSError."""
        ...

    def read(self, after: int, limit: int) -> list[DomainEvent]:
        """At most ``limit`` retained events with ``seq > after``, oldest first."""
        ...

    async def sync(self) -> None:
        """Make everything appended so far durable."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (batched fsyncs) until cancelled."""
        ...

    def close(self) -> None:
        """Make everything durable and release resources; idempotent."""
        ...


def _check_next(journal: Journal, event: DomainEvent, closed: bool) -> None:
    if closed:
        raise OperationInvalidError("the event journal is closed")
    if event.seq != journal.last_seq + 1:
        raise InvalidArgError(
            f"journal append out of order: seq {event.seq} after {journal.last_seq}"
        )


def last_lifecycle(
    journal: Journal, uuids: Collection[str], *, window: int = 4096
) -> dict[str, DomainEvent]:
    """The newest lifecycle event of each domain of ``uuids`` among the journal's newest
    ``window`` events (what subscribers were last told about it), by UUID; a domain with
    none in the window is left out. The window keeps this cheap at open: a file journal
    serves its newest events from memory."""
    found: dict[str, DomainEvent] = {}
    wanted = set(uuids)
    if not wanted:
        return found
    start = max(journal.first_seq - 1, journal.last_seq - window)
    while True:
        batch = journal.read(start, min(window, 1024))
        if not batch:
            break
        for ev in batch:
            if ev.kind is EventKind.LIFECYCLE and ev.uuid in wanted and ev.type is not None:
                found[ev.uuid] = ev
        start = batch[-1].seq
    return found


class MemoryJournal:
    """The newest ``capacity`` events, in memory only (for nodes that keep nothing on disk)."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise InvalidArgError("a memory journal must hold at least one event")
        self._events: collections.deque[DomainEvent] = collections.deque(maxlen=capacity)
        self._last_seq = 0
        self._closed = False

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def first_seq(self) -> int:
        return self._events[0].seq if self._events else self._last_seq + 1

    def append(self, event: DomainEvent) -> None:
        """Keep ``event``, dropping the oldest beyond ``capacity``."""
        _check_next(self, event, self._closed)
        self._events.append(event)
        self._last_seq = event.seq

    def read(self, after: int, limit: int) -> list[DomainEvent]:
        if self._closed:
            raise OperationInvalidError("the event journal is closed")
        if limit <= 0 or not self._events or after >= self._last_seq:
            return []
        start = max(after + 1 - self._events[0].seq, 0)
        return list(itertools.islice(self._events, start, start + limit))

    async def sync(self) -> None:
        """Nothing to make durable."""
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to do in the background; returns only when cancelled."""
        task_status.started()
        await trio.sleep_forever()

    def close(self) -> None:
        self._closed = True


class _BadRecord(Exception):
    """A line that is not a valid record; the message says why."""


class _NotOurs(OSError):
    """Something other than a regular file (a symlink, a FIFO, a device) at a segment's name."""


@dataclasses.dataclass(eq=False)
class _Segment:
    first: int
    name: str
    size: int
    #: Newest seq it holds; ``first - 1`` while it holds none.
    last: int
    #: Timestamp of its newest event (the file's mtime while it holds none).
    newest: float
    #: Journal clock when this process created it (for rotation by age).
    created: float = 0.0
    #: Open for appending: the active segment only.
    fd: int | None = None
    #: Records this process wrote to it.
    records: int = 0
    #: Offsets of invalid records already reported (each is reported once per process).
    warned: set[int] = dataclasses.field(default_factory=set)


class _Sequencer:
    """Each valid record follows the previous one by one, or by more across skipped lines."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.prev: int | None = None
        self.skipped = False

    def check(self, seq: int) -> str | None:
        """Why ``seq`` cannot come next (and it counts as skipped), or None (it comes next)."""
        prev = self.prev
        if seq < self.first:
            reason = f"seq {seq} is before the segment's first seq {self.first}"
        elif prev is not None and seq <= prev:
            reason = f"seq {seq} does not increase (after {prev})"
        elif prev is not None and not self.skipped and seq != prev + 1:
            reason = f"seq {seq} does not follow {prev}"
        else:
            self.prev, self.skipped = seq, False
            return None
        self.skipped = True
        return reason

    def bad(self) -> None:
        self.skipped = True


# One encoder for all records: json.dumps with options builds a new encoder per call.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _encode(event: DomainEvent) -> bytes:
    payload = _JSON.encode(event_to_dict(event)).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


@functools.cache
def _json_decoder() -> Any:
    """msgspec's JSON decoder: records are decoded by the thousand when a subscriber
    replays the journal, and it is several times faster than json.loads (imported on first
    use, as rpc.wire does)."""
    import msgspec

    return msgspec.json.Decoder()


def _decode(line: bytes) -> DomainEvent:
    if len(line) < 10 or line[8:9] != b" ":
        raise _BadRecord("not a journal record")
    try:
        crc = int(line[:8], 16)
    except ValueError:
        raise _BadRecord("not a journal record") from None
    payload = line[9:]
    if zlib.crc32(payload) != crc:
        raise _BadRecord("checksum mismatch")
    try:
        d = _json_decoder().decode(payload)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        raise _BadRecord("invalid JSON") from None
    try:
        return event_from_dict(d)
    except ValueError as err:
        raise _BadRecord(f"not an event: {err}") from None


def _probe_seq(line: bytes) -> int | None:
    """The seq of a record with a valid checksum, without decoding it (None if invalid)."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    payload = line[9:]
    if zlib.crc32(payload) != crc:
        return None
    m = _SEQ_PREFIX.match(payload)
    return int(m.group(1)) if m else None


def _lines(fd: int, pos: int, *, skip_first: bool = False) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line, complete)`` for each line of ``fd`` from ``pos`` on, newline stripped.

    ``skip_first`` drops the line ``pos`` falls in (it may have started before ``pos``).
    """
    buf = b""
    buf_at = pos
    while True:
        chunk = os.pread(fd, _CHUNK, pos)
        if not chunk:
            break
        pos += len(chunk)
        buf += chunk
        start = 0
        if skip_first:
            nl = buf.find(b"\n")
            if nl < 0:
                buf_at += len(buf)
                buf = b""
                continue
            start, skip_first = nl + 1, False
        while (nl := buf.find(b"\n", start)) >= 0:
            yield buf_at + start, buf[start:nl], True
            start = nl + 1
        buf = buf[start:]
        buf_at += start
    if buf and not skip_first:
        yield buf_at, buf, False


def _fsync_batch(
    dfd: int, fds: list[tuple[str, int]], doomed: list[str], dir_dirty: bool
) -> list[tuple[str, OSError]]:
    """The blocking part of a sync, for a worker thread: fsync the (name, fd)s, unlink the
    doomed names, fsync the directory if it changed. Returns what failed, and how."""
    failures: list[tuple[str, OSError]] = []
    for name, fd in fds:
        try:
            os.fsync(fd)
        except OSError as err:
            failures.append((name, err))
    for name in doomed:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as err:
            failures.append((name, err))
    if dir_dirty or doomed:
        try:
            os.fsync(dfd)
        except OSError as err:
            failures.append(("directory", err))
    return failures


def _close_quietly(fd: int) -> None:
    # close(2) may report a late write error; the fsyncs before it are what count.
    try:
        os.close(fd)
    except OSError:
        pass


def _strerror(err: OSError) -> str:
    return err.strerror or str(err)


class FileJournal:
    """A node's events in append-only segment files (see the module's documentation).

    Open it with :meth:`open`; run :meth:`run` in the node's nursery; :meth:`close` it when the
    node stops. Everything but :meth:`sync`/:meth:`run` (and :meth:`wait_synced`) is
    synchronous and meant for the trio thread; none of it is thread-safe.
    """

    def __init__(
        self,
        directory: Path,
        dfd: int,
        config: JournalConfig,
        clock: Callable[[], float],
    ) -> None:
        # Private: use FileJournal.open().
        #: The journal's directory (as given to :meth:`open`).
        self.directory = directory
        self._dfd = dfd
        self._config = config
        self._clock = clock
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._total_bytes = 0
        self._active: _Segment | None = None
        #: Descriptors of segments rotated away, fsynced and closed by the next sync.
        self._retired: list[tuple[str, int]] = []
        #: Segment names retention gave up, unlinked by the next sync.
        self._doomed: list[str] = []
        self._dir_dirty = False
        self._last_seq = 0
        self._written_seq = 0
        self._synced_seq = 0
        self._cache: collections.deque[DomainEvent] = collections.deque(maxlen=config.cache_events)
        self._pending: collections.deque[tuple[DomainEvent, bytes | None]] = collections.deque()
        self._write_failing = False
        self._sync_failing = False
        self._failure_logged = False
        self._dropped = 0
        # Where the last read from disk stopped: (segment, next seq, offset), so that a replay
        # in chunks reads each segment once instead of searching it again per chunk.
        self._hint: tuple[_Segment, int, int] | None = None
        self._wake = trio.Event()
        self._synced_lot = trio.lowlevel.ParkingLot()
        self._sync_lock = trio.Lock()
        self._sync_running = False
        self._inflight_fd: int | None = None
        self._sync_rounds = 0
        self._closed = False

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        config: JournalConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> FileJournal:
        """Open the journal in ``directory``, creating it (mode 0700) if needed.

        Scans the segments there: numbering continues after the newest valid record, corrupt
        or truncated tails are reported and skipped, files that are not segments are ignored.
        ``clock`` is the wall clock used for segment and retention ages (tests pass their own).

        Raises :class:`~asvirt.OperationFailedError` if the directory cannot be used (it is a
        symlink, not a directory, not accessible) and :class:`~asvirt.ResourceBusyError` if
        another journal has it open.
        """
        directory = Path(directory)
        config = config if config is not None else JournalConfig()
        try:
            dfd = cls._open_directory(directory)
        except OSError as err:
            raise OperationFailedError(
                f"cannot open the event journal directory {directory}: {_strerror(err)}"
            ) from None
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(dfd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ResourceBusyError(
                    f"the event journal in {directory} is already open elsewhere"
                ) from None
            raise OperationFailedError(
                f"cannot lock the event journal directory {directory}: {_strerror(err)}"
            ) from None
        journal = cls(directory, dfd, config, clock)
        try:
            journal._load()
        except OSError as err:
            journal._close_fds()
            raise OperationFailedError(
                f"cannot read the event journal in {directory}: {_strerror(err)}"
            ) from None
        except BaseException:
            journal._close_fds()
            raise
        return journal

    @staticmethod
    def _open_directory(directory: Path) -> int:
        created = False
        try:
            os.mkdir(directory, 0o700)
            created = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            directory.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(directory, 0o700)
            created = True
        try:
            # O_NOFOLLOW: a symlink planted at the journal's path is refused, not followed.
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a symlink" if directory.is_symlink() else "not a directory"
                raise OSError(err.errno, f"it is {what}") from None
            raise
        if not created:
            st = os.fstat(dfd)
            if st.st_mode & 0o022 or st.st_uid != os.geteuid():
                # Whoever else may write here can plant files (they are refused, but can stop
                # the journal from starting new segments) or delete history.
                log.warning(
                    "event journal directory is writable by others",
                    directory=str(directory),
                    mode=oct(stat.S_IMODE(st.st_mode)),
                    uid=st.st_uid,
                )
        if created:
            # The new directory's entry must survive a crash too.
            parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(parent)
            finally:
                os.close(parent)
        return dfd

    def _load(self) -> None:
        names: list[tuple[int, str]] = []
        for name in os.listdir(self._dfd):
            m = _SEGMENT_NAME.fullmatch(name)
            if m is None or int(m.group(1)) == 0:
                continue  # not ours
            names.append((int(m.group(1)), name))
        names.sort()
        for first, name in names:
            seg = self._scan_segment(first, name)
            if seg is not None:
                self._segments.append(seg)
        for seg, nxt in itertools.pairwise(self._segments):
            if seg.last >= nxt.first:
                log.warning(
                    "journal segment overlaps the next one; its records from there are ignored",
                    directory=str(self.directory),
                    segment=seg.name,
                    next=nxt.name,
                )
        self._firsts = [seg.first for seg in self._segments]
        self._total_bytes = sum(seg.size for seg in self._segments)
        last = max((seg.last for seg in self._segments), default=0)
        if self._segments and self._segments[-1].last < self._segments[-1].first:
            # The newest segment holds nothing valid: its name is still a seq that a previous
            # run used (or was about to), and the next segment must not take that name.
            last = max(last, self._segments[-1].first)
        self._last_seq = self._written_seq = self._synced_seq = last
        self._enforce_retention()
        if self._doomed:
            failures = _fsync_batch(self._dfd, [], self._doomed, True)
            self._doomed = []
            for what, err in failures:
                log.error(
                    "cannot remove expired journal segment",
                    directory=str(self.directory),
                    segment=what,
                    error=_strerror(err),
                )
        self._preload_cache()

    def _scan_segment(self, first: int, name: str) -> _Segment | None:
        try:
            fd = self._open_read(name)
        except _NotOurs as err:
            log.warning(
                "ignoring a segment name that is not a regular file (symlinks are not followed)",
                directory=str(self.directory),
                segment=name,
                error=_strerror(err),
            )
            return None
        # Other errors (EACCES, EIO) fail the open: skipping a segment we cannot read could
        # hand out its seqs again.
        try:
            st = os.fstat(fd)
            size = st.st_size
            newest_ev, valid_end, problems = self._scan_tail(fd, size, first)
        finally:
            os.close(fd)
        tail = [(off, why) for off, why in problems if off >= valid_end]
        if tail:
            log.warning(
                "journal segment has a corrupt tail; skipping it",
                directory=str(self.directory),
                segment=name,
                offset=valid_end,
                bytes=size - valid_end,
                reason=tail[0][1],
            )
        if newest_ev is None:
            return _Segment(first=first, name=name, size=size, last=first - 1, newest=st.st_mtime)
        return _Segment(
            first=first, name=name, size=size, last=newest_ev.seq, newest=newest_ev.timestamp
        )

    @staticmethod
    def _scan_tail(
        fd: int, size: int, first: int
    ) -> tuple[DomainEvent | None, int, list[tuple[int, str]]]:
        """The newest valid record, where it ends, and the invalid lines seen (offset, why).

        Reads only the last _TAIL_WINDOW bytes, unless they hold no valid record.
        """
        starts = [size - _TAIL_WINDOW, 0] if size > _TAIL_WINDOW else [0]
        newest: DomainEvent | None = None
        valid_end = 0
        problems: list[tuple[int, str]] = []
        for pos in starts:
            newest, valid_end, problems = None, pos, []
            order = _Sequencer(first)
            for off, line, complete in _lines(fd, pos, skip_first=pos > 0):
                if not complete:
                    problems.append((off, "partial record at the end"))
                    break
                try:
                    ev = _decode(line)
                except _BadRecord as bad:
                    problems.append((off, str(bad)))
                    order.bad()
                    continue
                why = order.check(ev.seq)
                if why is not None:
                    problems.append((off, why))
                    continue
                newest, valid_end = ev, off + len(line) + 1
            if newest is not None:
                break
        return newest, valid_end, problems

    def _preload_cache(self) -> None:
        """Fill the cache with the newest events on disk, so that the replays that follow a
        restart (every client resuming) read no file."""
        if self._last_seq == 0:
            return
        after = max(self._last_seq - self._config.cache_events, 0)
        events = self._read_disk(after + 1, self._last_seq + 1, self._config.cache_events)
        # The cache holds a run of consecutive seqs ending at last_seq; keep only that.
        expect = self._last_seq
        keep = 0
        for ev in reversed(events):
            if ev.seq != expect:
                break
            keep += 1
            expect -= 1
        if keep:
            self._cache.extend(events[len(events) - keep :])

    def _open_read(self, name: str) -> int:
        """A descriptor for reading segment ``name``; :class:`_NotOurs` if it is no regular
        file (opening a device node could have effects; a symlink must not be followed)."""
        if not stat.S_ISREG(os.stat(name, dir_fd=self._dfd, follow_symlinks=False).st_mode):
            raise _NotOurs(errno.EINVAL, "not a regular file")
        # O_NOFOLLOW and the fstat close the race with a swap after the check; O_NONBLOCK
        # keeps a FIFO swapped in from hanging the open.
        try:
            fd = os.open(name, _O_SEGMENT_READ, dir_fd=self._dfd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise _NotOurs(err.errno, "a symlink") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _NotOurs(errno.EINVAL, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- state -----------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest ``seq`` appended, or found on disk when opened (0 if none ever was)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The oldest ``seq`` retained (on disk or, while writes fail, in memory);
        ``last_seq + 1`` when nothing is."""
        candidates = [self._last_seq + 1]
        for seg in self._segments:
            if seg.last >= seg.first:
                candidates.append(seg.first)
                break
        if self._cache:
            candidates.append(self._cache[0].seq)
        if self._pending:
            candidates.append(self._pending[0][0].seq)
        return min(candidates)

    @property
    def synced_seq(self) -> int:
        """Every event up to this ``seq`` was on disk and fsynced (or was lost for good)."""
        return self._synced_seq

    @property
    def degraded(self) -> bool:
        """True while writes or fsyncs fail: newer events may exist only in memory."""
        return self._write_failing or self._sync_failing

    @property
    def pending(self) -> int:
        """Events appended but not yet written, because writes fail."""
        return len(self._pending)

    # -- appending -------------------------------------------------------------------------------

    def append(self, event: DomainEvent) -> None:
        """Write ``event`` (whose ``seq`` must be ``last_seq + 1``) to the active segment.

        One ``os.write``; no fsync (that is :meth:`run`'s job). If the write fails the event is
        kept in memory and written later (see :attr:`degraded`); this never raises OSError.
        Raises :class:`~asvirt.InvalidArgError` for an out-of-order ``seq`` and
        :class:`~asvirt.OperationInvalidError` after :meth:`close`.
        """
        _check_next(self, event, self._closed)
        self._last_seq = event.seq
        if self._cache and self._cache[-1].seq != event.seq - 1:
            self._cache.clear()  # keep the cache one run of consecutive seqs
        self._cache.append(event)
        record = self._encode_safely(event)
        if self._pending:
            self._pending.append((event, record))
            self._flush_pending(_APPEND_FLUSH)
            self._bound_pending()
        elif not self._write(event, record):
            self._pending.append((event, record))
        self._wake.set()

    def _encode_safely(self, event: DomainEvent) -> bytes | None:
        """The record for ``event``; a lossy one if its data is not JSON; None if impossible."""
        try:
            return _encode(event)
        except (TypeError, ValueError, RecursionError) as err:
            reason = str(err)
        try:
            text = repr(event.data)
        except Exception:  # an arbitrary object's __repr__ may raise anything
            text = "<unrepresentable>"
        ts = event.timestamp if isinstance(event.timestamp, float | int) else 0.0
        stand_in = dataclasses.replace(
            event,
            timestamp=float(ts) if math.isfinite(ts) else 0.0,
            data={"unencodable": text},
        )
        try:
            record = _encode(stand_in)
        except (TypeError, ValueError, RecursionError):
            record = None
        log.error(
            "journal cannot encode event; "
            + ("storing its data as text" if record else "it is not stored"),
            directory=str(self.directory),
            seq=event.seq,
            kind=event.kind.value,
            error=reason,
        )
        return record

    def _write(self, event: DomainEvent, record: bytes | None) -> bool:
        """Write one record; False (and logged) if it must be tried again later."""
        seq = event.seq
        if record is None:
            # Nothing can be stored for this seq: a hole. The next record starts a new segment,
            # since a segment holds consecutive seqs only.
            self._retire_active()
            self._written_seq = seq
            return True
        seg = self._active
        if seg is None or seg.last != seq - 1 or self._rotation_due(seg, len(record)):
            if seg is not None:
                self._retire_active()
            seg = self._create_segment(seq)
            if seg is None:
                return False
        assert seg.fd is not None
        try:
            written = os.write(seg.fd, record)
        except OSError as err:
            # write(2) failed as a whole: nothing reached the file, the segment stays usable.
            self._write_failed(err, seg.name)
            return False
        seg.size += written
        self._total_bytes += written
        if written != len(record):
            # A partial record is on disk now. Never append after it (the next record would be
            # glued to it); readers skip it as a truncated tail.
            self._write_failed(OSError(errno.ENOSPC, "short write (disk full?)"), seg.name)
            self._retire_active(discard_if_empty=True)
            return False
        seg.last = seq
        seg.newest = event.timestamp
        seg.records += 1
        self._written_seq = seq
        if self._write_failing:
            self._write_failing = False
            self._failure_logged = False
            self._dropped = 0
            log.warning(
                "journal writes work again", directory=str(self.directory), segment=seg.name
            )
        return True

    def _rotation_due(self, seg: _Segment, size: int) -> bool:
        if seg.size == 0:
            return False
        if seg.size + size > self._config.segment_bytes:
            return True
        return self._clock() - seg.created >= self._config.segment_age

    def _create_segment(self, first: int) -> _Segment | None:
        name = f"{first:020d}.events"
        try:
            # O_EXCL|O_NOFOLLOW: whatever is already at this name (a planted symlink, a stray
            # file) is refused, never written through or appended to.
            fd = os.open(name, _O_SEGMENT_CREATE, 0o600, dir_fd=self._dfd)
        except OSError as err:
            if err.errno == errno.EEXIST:
                err = OSError(err.errno, "a file this journal did not create is in the way")
            self._write_failed(err, name)
            return None
        now = self._clock()
        seg = _Segment(first=first, name=name, size=0, last=first - 1, newest=now, created=now)
        seg.fd = fd
        self._segments.append(seg)
        self._firsts.append(first)
        self._active = seg
        self._dir_dirty = True
        self._enforce_retention()
        return seg

    def _retire_active(self, *, discard_if_empty: bool = False) -> None:
        seg = self._active
        if seg is None:
            return
        self._active = None
        if seg.fd is not None:
            # A sync in a worker thread may be fsyncing this descriptor: the next sync closes
            # it, never anything else.
            self._retired.append((seg.name, seg.fd))
            seg.fd = None
        if discard_if_empty and seg.records == 0 and self._segments[-1] is seg:
            # It holds only part of a record of ours (which stays pending): remove it now, so
            # that the retry can create a segment of the same name.
            self._segments.pop()
            self._firsts.pop()
            self._total_bytes -= seg.size
            try:
                os.unlink(seg.name, dir_fd=self._dfd)
                self._dir_dirty = True
            except OSError as err:
                log.error(
                    "cannot remove journal segment holding a partial record",
                    directory=str(self.directory),
                    segment=seg.name,
                    error=_strerror(err),
                )

    def _write_failed(self, err: OSError, segment: str) -> None:
        self._write_failing = True
        if not self._failure_logged:
            self._failure_logged = True
            log.error(
                "journal write failed; keeping events in memory until it works again",
                directory=str(self.directory),
                segment=segment,
                error=_strerror(err),
                errno=errno.errorcode.get(err.errno or 0, err.errno),
            )

    def _flush_pending(self, limit: int) -> bool:
        """Write up to ``limit`` backlogged records in order; False if a write failed."""
        for _ in range(limit):
            if not self._pending:
                break
            event, record = self._pending[0]
            if not self._write(event, record):
                return False
            self._pending.popleft()
        return True

    def _bound_pending(self) -> None:
        excess = len(self._pending) - _PENDING_LIMIT
        if excess <= 0:
            return
        lost = [self._pending.popleft()[0].seq for _ in range(excess)]
        if self._dropped == 0:
            log.error(
                "journal backlog is full; dropping its oldest events",
                directory=str(self.directory),
                first=lost[0],
                last=lost[-1],
            )
        self._dropped += excess
        self._written_seq = lost[-1]

    # -- retention -------------------------------------------------------------------------------

    def _enforce_retention(self) -> None:
        """Give up the oldest whole segments beyond retain_bytes or retain_age.

        Never the active segment, nor the newest: its name and records carry the numbering
        across restarts. The files are unlinked by the next sync (in a worker thread).
        """
        cfg = self._config
        horizon = self._clock() - cfg.retain_age
        removed = False
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if oldest is self._active:
                break
            if self._total_bytes <= cfg.retain_bytes and oldest.newest >= horizon:
                break
            self._segments.pop(0)
            self._firsts.pop(0)
            self._total_bytes -= oldest.size
            self._doomed.append(oldest.name)
            removed = True
            log.info(
                "journal segment expired",
                directory=str(self.directory),
                segment=oldest.name,
                last=oldest.last,
            )
        if removed:
            # Cached events of removed segments are no longer retained either.
            first = self._segments[0].first
            while self._cache and self._cache[0].seq < first:
                self._cache.popleft()

    # -- reading ---------------------------------------------------------------------------------

    def read(self, after: int, limit: int) -> list[DomainEvent]:
        """At most ``limit`` retained events with ``seq > after``, oldest first.

        Recent events come from memory; older ones from the segment that holds them (found by
        its name, then by binary search inside it), so the cost is proportional to what is
        returned. Callers replaying a long range call this in chunks of a few hundred, yielding
        in between. Invalid records are skipped (and reported once); seqs that are not retained
        are simply absent, so compare with :attr:`first_seq` to tell a gap.
        """
        if self._closed:
            raise OperationInvalidError("the event journal is closed")
        if limit <= 0 or after >= self._last_seq:
            return []
        start = max(after + 1, 1)
        memory_first = self._memory_first()
        out: list[DomainEvent] = []
        if start < memory_first:
            out = self._read_disk(start, memory_first, limit)
            if len(out) >= limit:
                return out
            start = memory_first
        out.extend(self._read_memory(start, limit - len(out)))
        return out

    def _memory_first(self) -> int:
        first = self._last_seq + 1
        if self._cache:
            first = min(first, self._cache[0].seq)
        if self._pending:
            first = min(first, self._pending[0][0].seq)
        return first

    def _read_memory(self, start: int, limit: int) -> list[DomainEvent]:
        # Both the cache and the backlog are runs of consecutive seqs ending at last_seq.
        if self._cache and start >= self._cache[0].seq:
            i = start - self._cache[0].seq
            return list(itertools.islice(self._cache, i, i + limit))
        if self._pending and start >= self._pending[0][0].seq:
            i = start - self._pending[0][0].seq
            return [ev for ev, _ in itertools.islice(self._pending, i, i + limit)]
        return []

    def _read_disk(self, start: int, stop: int, limit: int) -> list[DomainEvent]:
        """Events with start <= seq < stop from the segments, at most ``limit``."""
        out: list[DomainEvent] = []
        i = max(bisect.bisect_right(self._firsts, start) - 1, 0)
        for j in range(i, len(self._segments)):
            seg = self._segments[j]
            if seg.first >= stop:
                break
            end = min(seg.last, stop - 1)
            if j + 1 < len(self._segments):
                end = min(end, self._segments[j + 1].first - 1)
            lo = max(start, seg.first)
            if end >= lo:
                out.extend(self._read_segment(seg, lo, end, limit - len(out)))
                if len(out) >= limit:
                    break
            start = max(start, end + 1)
        return out

    def _read_segment(self, seg: _Segment, lo: int, hi: int, limit: int) -> list[DomainEvent]:
        try:
            fd = self._open_read(seg.name)
        except OSError as err:
            self._warn_once(seg, -1, "cannot read journal segment; skipping it", _strerror(err))
            return []
        out: list[DomainEvent] = []
        try:
            hint = self._hint
            if hint is not None and hint[0] is seg and hint[1] == lo:
                pos = hint[2]
            elif lo <= seg.first:
                pos = 0
            else:
                pos = self._locate(fd, os.fstat(fd).st_size, lo)
            order = _Sequencer(seg.first)
            end = pos
            for off, line, complete in _lines(fd, pos):
                if not complete:
                    if seg is not self._active:
                        self._warn_once(seg, off, "journal record skipped", "partial record")
                    break
                seq = _probe_seq(line)
                if seq is not None and seq < lo:
                    # Before the range (after a seek): its checksum and seq are all that
                    # matter, and decoding it would cost ten times as much.
                    why = order.check(seq)
                    if why is not None:
                        self._warn_once(seg, off, "journal record skipped", why)
                    continue
                try:
                    ev = _decode(line)
                except _BadRecord as bad:
                    self._warn_once(seg, off, "journal record skipped", str(bad))
                    order.bad()
                    continue
                why = order.check(ev.seq)
                if why is not None:
                    self._warn_once(seg, off, "journal record skipped", why)
                    continue
                if ev.seq < lo:
                    continue
                if ev.seq > hi:
                    break
                out.append(ev)
                end = off + len(line) + 1
                if len(out) >= limit or ev.seq == hi:
                    break
        except OSError as err:
            self._warn_once(seg, -2, "cannot read journal segment; skipping it", _strerror(err))
        finally:
            os.close(fd)
        if out:
            self._hint = (seg, out[-1].seq + 1, end)
        return out

    def _locate(self, fd: int, size: int, target: int) -> int:
        """An offset at which a line starts, at or before the record of ``target``.

        A binary search over byte offsets: the first valid record after a probe offset says
        which half ``target`` is in. Invalid records only make it read a little more.
        """
        lo, hi = 0, size
        while hi - lo > _SEEK_WINDOW:
            mid = (lo + hi) // 2
            found = self._probe(fd, mid, hi)
            if found is None:
                hi = mid
                continue
            line_at, seq = found
            if seq < target:
                lo = line_at
            else:
                hi = mid
        return lo

    @staticmethod
    def _probe(fd: int, pos: int, end: int) -> tuple[int, int] | None:
        """The offset and seq of the first checksum-valid record starting in (pos, end)."""
        size = 4096
        while True:
            data = os.pread(fd, size, pos)
            nl = data.find(b"\n")
            while nl >= 0:
                start = nl + 1
                if pos + start >= end:
                    return None
                nxt = data.find(b"\n", start)
                if nxt < 0:
                    break
                seq = _probe_seq(data[start:nxt])
                if seq is not None:
                    return pos + start, seq
                nl = nxt
            if len(data) < size or pos + len(data) >= end:
                return None
            size *= 2

    def _warn_once(self, seg: _Segment, offset: int, message: str, reason: str) -> None:
        if offset in seg.warned:
            return
        seg.warned.add(offset)
        log.warning(
            message, directory=str(self.directory), segment=seg.name, offset=offset, reason=reason
        )

    # -- durability ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Write any backlog and fsync everything appended so far, in a worker thread.

        Also removes segments retention gave up. Raises :class:`~asvirt.OperationFailedError`
        if some appended events could not be made durable (they stay in memory, and the next
        sync tries again). Does nothing once closed.
        """
        async with self._sync_lock:
            while self._pending and not self._closed:
                if not self._flush_pending(_SYNC_FLUSH):
                    break
                await trio.lowlevel.checkpoint()
            if self._closed:
                return
            target = self._written_seq
            retired, self._retired = self._retired, []
            doomed, self._doomed = self._doomed, []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            active = self._active
            active_fd = active.fd if active is not None else None
            if target > self._synced_seq or retired or doomed or dir_dirty:
                fds = [*retired]
                if active is not None and active_fd is not None:
                    fds.append((active.name, active_fd))
                self._sync_running = True
                self._inflight_fd = active_fd
                try:
                    failures = await trio.to_thread.run_sync(
                        _fsync_batch, self._dfd, fds, doomed, dir_dirty
                    )
                finally:
                    self._sync_running = False
                    self._inflight_fd = None
                    for _, fd in retired:
                        _close_quietly(fd)
                    if self._closed:
                        # close() left these to us, as the worker thread was using them.
                        if active_fd is not None:
                            _close_quietly(active_fd)
                        _close_quietly(self._dfd)
                self._sync_rounds += 1
                if failures:
                    self._sync_failed(failures, active, active_fd, dir_dirty, target)
                self._synced_seq = max(self._synced_seq, target)
                if self._sync_failing:
                    self._sync_failing = False
                    log.warning("journal fsyncs work again", directory=str(self.directory))
                self._synced_lot.unpark_all()
            if self._pending:
                raise OperationFailedError(
                    f"{len(self._pending)} journal events are not on disk: writes fail "
                    f"(in {self.directory})"
                )

    def _sync_failed(
        self,
        failures: list[tuple[str, OSError]],
        active: _Segment | None,
        active_fd: int | None,
        dir_dirty: bool,
        target: int,
    ) -> None:
        if not self._sync_failing:
            what, err = failures[0]
            log.error(
                "journal fsync failed; events may not be durable",
                directory=str(self.directory),
                upto=target,
                what=what,
                error=_strerror(err),
            )
        self._sync_failing = True
        if dir_dirty:
            self._dir_dirty = True
        # After a failed fsync the kernel may have dropped the dirty pages and will not say
        # so again; continue in a fresh segment rather than trust this one.
        if active is not None and active is self._active and active_fd is not None:
            self._retire_active()
        raise OperationFailedError(
            f"cannot make the event journal durable in {self.directory}: "
            f"{_strerror(failures[0][1])}"
        )

    async def wait_synced(self, seq: int) -> None:
        """Wait until every event up to ``seq`` is durable (by :meth:`run` or :meth:`sync`).

        Raises :class:`~asvirt.OperationInvalidError` if the journal is closed first.
        """
        while self._synced_seq < seq:
            if self._closed:
                raise OperationInvalidError("the event journal is closed")
            await self._synced_lot.park()
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fsync appended events in batches until cancelled; run it in the node's nursery.

        After an append it waits ``fsync_interval`` (so that the appends in between share the
        fsync), then syncs in a worker thread. While writes fail it retries with a growing
        delay (up to a few seconds); it never raises for disk trouble (that is logged, and
        :attr:`degraded` shows it). While idle it still gives up segments past ``retain_age``.
        """
        interval = self._config.fsync_interval
        retry = interval
        task_status.started()
        while not self._closed:
            woke = False
            with trio.move_on_after(retry if self.degraded or self._pending else _IDLE_CHECK):
                await self._wake.wait()
                woke = True
            if woke:
                await trio.sleep(interval)
            # A fresh event before the sync: appends from now on need another round.
            self._wake = trio.Event()
            if self._closed:
                break
            self._enforce_retention()
            try:
                await self.sync()
            except OperationFailedError:
                retry = min(max(retry, interval) * 2, _MAX_RETRY)
            else:
                retry = interval
        await trio.sleep_forever()

    def close(self) -> None:
        """Write what is still pending if possible, fsync, close all files; idempotent.

        Disk trouble here is logged, not raised (close runs in cleanup paths).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending:
                self._flush_pending(len(self._pending))
            if self._pending:
                log.error(
                    "journal closed with events that could not be written",
                    directory=str(self.directory),
                    first=self._pending[0][0].seq,
                    last=self._pending[-1][0].seq,
                )
            fds = [*self._retired]
            if self._active is not None and self._active.fd is not None:
                fds.append((self._active.name, self._active.fd))
            failures = _fsync_batch(self._dfd, fds, self._doomed, self._dir_dirty)
            for what, err in failures:
                log.error(
                    "journal fsync failed while closing",
                    directory=str(self.directory),
                    what=what,
                    error=_strerror(err),
                )
            if not failures:
                self._synced_seq = max(self._synced_seq, self._written_seq)
        finally:
            self._close_fds()
            self._wake.set()
            self._synced_lot.unpark_all()

    def _close_fds(self) -> None:
        fds = [fd for _, fd in self._retired]
        if self._active is not None and self._active.fd is not None:
            fds.append(self._active.fd)
            self._active.fd = None
        self._retired = []
        self._doomed = []
        self._active = None
        for fd in fds:
            if fd != self._inflight_fd:
                _close_quietly(fd)
        if not self._sync_running:
            _close_quietly(self._dfd)
        # else: the sync in flight closes the directory and its descriptor when it returns.

    def __enter__(self) -> FileJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FileJournal {self.directory} seqs {self.first_seq}..{self._last_seq}"
            f"{' degraded' if self.degraded else ''}>"
        )
