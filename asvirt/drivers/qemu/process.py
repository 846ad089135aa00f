"""QEMU processes: spawning, identifying, watching and reaping them.

QEMU runs as a child of the supervising process, in a session of its own (so a terminal's
Ctrl-C does not reach it) and never daemonized. Its exit, seen through a pidfd, is the
authority on its death; the monitor socket closing is not.

A QEMU may outlive the connection that spawned it. It is still our child, so when such a
QEMU dies someone must reap it, or a long-running agent collects zombies: :func:`adopt_orphan`
hands it to one process-wide reaper thread that waits on the pidfds of all such children.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import threading
from dataclasses import dataclass

import trio

from ...errors import SystemCallError

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """What identifies a QEMU beyond its pid, which the kernel reuses."""

    pid: int
    start_time: int  # clock ticks since boot, /proc/PID/stat field 22

    def matches(self, uuid: str) -> bool:
        """True if ``pid`` is still this process and its command line names ``uuid``."""
        return read_start_time(self.pid) == self.start_time and cmdline_mentions(self.pid, uuid)


#: Set in the environment of every QEMU asvirt starts: the root that supervises it. With the
#: UUID on its command line, it lets a supervisor find its QEMUs in the process table.
ROOT_ENV = "ASVIRT_ROOT"


def spawn(
    argv: list[str],
    *,
    log_fd: int,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
) -> int:
    """Start ``argv`` in a new session with stdin from /dev/null and stdout/stderr to ``log_fd``.

    ``pass_fds`` stay open in the child under their own numbers; ``env`` is added to this
    process's environment. Returns the pid. posix_spawn is used because it reports exec
    failures synchronously and costs far less than fork().
    """
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        actions: list[tuple[int, ...]] = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ]
        # dup2 onto itself does not clear close-on-exec, so each passed fd is
        # duplicated to a temporary inheritable number and moved back in the child.
        inheritable = []
        for fd in pass_fds:
            tmp = os.dup(fd)  # os.dup returns a non-inheritable fd; dup2 in the child fixes that
            inheritable.append(tmp)
            actions.append((os.POSIX_SPAWN_DUP2, tmp, fd))
        try:
            environ = {**os.environ, **(env or {})}
            return os.posix_spawnp(argv[0], argv, environ, file_actions=actions, setsid=True)
        finally:
            for tmp in inheritable:
                os.close(tmp)
    finally:
        os.close(devnull)


def read_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it don't.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def cpu_time_ns(pid: int) -> int:
    """User + system CPU time the process has used, in nanoseconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return _stat_cpu_ns(stat)


def _stat_cpu_ns(stat: bytes) -> int:
    fields = stat[stat.rindex(b")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1_000_000_000 // _CLK_TCK


class CpuClock:
    """A process's CPU time, read again and again from ``/proc/PID/stat`` kept open.

    ``dom.info()`` reads it on every call: opening the file each time cost five times the
    read (20 µs of a daemon's 100 µs per call). The open file is bound to the process it was
    opened for, not to its pid: once that process is gone it reads nothing (0), even if the
    pid is used again.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            self._fd = None

    def ns(self) -> int:
        """CPU time used so far, in nanoseconds (0 once the process is gone)."""
        stat = self.read()
        return _stat_cpu_ns(stat) if stat else 0

    def read(self) -> bytes | None:
        """The whole of ``/proc/PID/stat`` now (None once the process is gone): one pread."""
        if self._fd is None:
            return None
        try:
            return os.pread(self._fd, 1024, 0) or None
        except ProcessLookupError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def is_our_qemu(pid: int, start_time: int | None, uuid: str) -> bool:
    """True if ``pid`` is the QEMU a status file names: same start time (when it was
    recorded) and a command line that names the domain's UUID."""
    if start_time is not None:
        return ProcessIdentity(pid, start_time).matches(uuid)
    return cmdline_mentions(pid, uuid)


def cmdline_mentions(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text.encode() in cmdline


@dataclass(frozen=True, slots=True)
class FoundQemu:
    """A QEMU found in the process table."""

    pid: int
    uuid: str
    #: The domain name on its command line (``-name guest=NAME``), "" if none.
    name: str


def find_qemus(root: str) -> dict[str, list[FoundQemu]]:
    """Live QEMUs started for the root ``root`` (by :data:`ROOT_ENV`), by the UUID they run.

    What a supervisor that may have died in the middle of starting one uses to find every
    QEMU it may have left, status file or not.
    """
    marker = f"{ROOT_ENV}={root}".encode()
    found: dict[str, list[FoundQemu]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if not os.path.basename(argv[0]).startswith(b"qemu-system") or b"-uuid" not in argv:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone, or not ours to read
        if stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] == b"Z":
            continue
        uuid_at = argv.index(b"-uuid") + 1
        if uuid_at >= len(argv):
            continue
        uuid = argv[uuid_at].decode(errors="replace")
        found.setdefault(uuid, []).append(FoundQemu(pid, uuid, _guest_name(argv)))
    return found


def _guest_name(argv: list[bytes]) -> str:
    """NAME from ``-name guest=NAME,...`` (QEMU's option syntax: ',,' is a comma)."""
    if b"-name" not in argv or argv.index(b"-name") + 1 >= len(argv):
        return ""
    value = argv[argv.index(b"-name") + 1].decode(errors="replace")
    if not value.startswith("guest="):
        return ""
    name, _, _ = value[len("guest=") :].replace(",,", "\0").partition(",")
    return name.replace("\0", ",")


def kill_and_wait(pid: int, uuid: str, *, timeout: float = 10.0) -> None:
    """SIGKILL the QEMU ``pid`` (if it is still the one running ``uuid``); wait for its end.

    Blocking: run it in a thread.
    """
    pidfd = open_pidfd(pid)
    if pidfd is None:
        return
    try:
        if not cmdline_mentions(pid, uuid):
            return  # gone, and the pid reused meanwhile
        signal_pidfd(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], timeout)
        try_reap(pidfd)
    finally:
        os.close(pidfd)


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None if no such process exists any more.

    SystemCallError when the kernel gives none for another reason: ``pidfd_open`` needs
    Linux 5.3 (ENOSYS before, or under a seccomp filter that refuses it), and a descriptor
    (EMFILE)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as err:
        hint = " (pidfd_open needs Linux 5.3 or later)" if err.errno == errno.ENOSYS else ""
        raise SystemCallError(
            f"cannot watch process {pid} with pidfd_open: {err.strerror or err}{hint}",
            errno=err.errno,
        ) from None


def require_pidfd() -> None:
    """SystemCallError (as :func:`open_pidfd` words it) if this kernel gives no pidfds:
    asked before spawning a program that cannot simply be killed when it cannot be watched
    (dnsmasq daemonizes: its killed parent may have left the daemon running)."""
    pidfd = open_pidfd(os.getpid())
    if pidfd is not None:
        os.close(pidfd)


def watch_child(pid: int, what: str) -> int | None:
    """A pidfd for ``pid``, a child just spawned to run ``what`` (None if it is gone
    already). A child that cannot be watched is killed and reaped before SystemCallError
    (see :func:`open_pidfd`) is raised: nothing runs that asvirt would not see end."""
    try:
        return open_pidfd(pid)
    except SystemCallError as err:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise SystemCallError(f"cannot run {what}: {err}", errno=err.errno) from None


async def wait_exit(pidfd: int) -> None:
    """Wait until the process behind ``pidfd`` has exited (child or not)."""
    await trio.lowlevel.wait_readable(pidfd)


def try_reap(pidfd: int) -> int | None:
    """Reap our exited child; returns its wait status, or None if it is not our child."""
    try:
        result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return result.si_status
    return -result.si_status  # killed by a signal, like subprocess's returncode


def is_child(pid: int) -> bool:
    """True if ``pid`` is a child of this process (only children can be reaped by us)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[1]) == os.getpid()


def signal_pidfd(pidfd: int, sig: int) -> bool:
    """Send ``sig``; False if the process has already exited (no pid-reuse race)."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    return True


class _OrphanReaper:
    """One daemon thread that reaps children whose supervising task has gone away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pidfds: set[int] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread: threading.Thread | None = None

    def adopt(self, pidfd: int) -> None:
        with self._lock:
            self._pidfds.add(pidfd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="asvirt-reaper", daemon=True)
                self._thread.start()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is already pending

    def pending(self) -> int:
        with self._lock:
            return len(self._pidfds)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: set[int] = set()
        while True:
            with self._lock:
                for fd in self._pidfds - watched:
                    poller.register(fd, select.POLLIN)
                    watched.add(fd)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                try:
                    os.waitid(os.P_PIDFD, fd, os.WEXITED)
                except ChildProcessError:
                    pass  # someone else reaped it
                except OSError as err:  # pragma: no cover - EINTR is retried by Python
                    if err.errno != errno.EINTR:
                        raise
                poller.unregister(fd)
                watched.discard(fd)
                with self._lock:
                    self._pidfds.discard(fd)
                os.close(fd)


_reaper = _OrphanReaper()


def adopt_orphan(pidfd: int) -> None:
    """Reap the child behind ``pidfd`` whenever it exits; takes ownership of ``pidfd``."""
    _reaper.adopt(pidfd)
