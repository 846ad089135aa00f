"""A private libvirtd for one benchmark run, so that libvirt's figures are measured in the
same run as asvirt's.

    with libvirt_peer() as peer:
        if isinstance(peer, str):
            print(f"libvirt: {peer}")        # "not installed (...)" or why it could not run
        else:
            conn = peer.open()               # libvirt-python on the private daemon
            ...                              # peer.uri for worker processes, virsh -c

What it starts: a *privileged* libvirtd (the system daemon, the fair peer for
``asvirtd --system``) in a mount namespace of its own, where libvirt's fixed system paths
(``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt``,
``/var/log/libvirt``) are directories of a temporary directory, so the run touches nothing of
the host's libvirt, nor another run's. Its socket is in that temporary directory
(``unix_sock_dir``) and reached from outside through ``qemu+unix:///system?socket=...``.

Why not the simpler ways (libvirt 9.0 on Debian 12 with only libvirt-daemon +
libvirt-daemon-driver-qemu installed):

- ``libvirtd --config FILE`` as root moves only what libvirtd.conf sets (socket, log): a
  privileged QEMU driver keeps its state in /run/libvirt, /var/lib/libvirt and /etc/libvirt
  (and qemu.conf is /etc/libvirt/qemu.conf), shared with the host's libvirt.
- ``qemu:///embed?root=DIR`` (tried: libvirt-python opens it, everything under DIR, qemu.conf
  as DIR/etc/qemu.conf) refuses to start its QEMU driver here: "Failed to parse user
  'libvirt-qemu'". A privileged driver resolves its default QEMU user before it reads
  qemu.conf, and that user is made by libvirt-daemon-system's postinst, which this host does
  not have; a root libvirtd runs the same code. Inside the namespace ``/etc/passwd`` and
  ``/etc/group`` are copies with that user added; the host's stay as they are. (With such a
  passwd, embed works too, and started the paused test guest in about the daemon's time; but
  it is in-process and would need the benchmark itself in the namespace. The daemon is the
  peer for asvirtd, and bench_daemon's worker processes need a socket.)

qemu.conf runs QEMU as root (as asvirt does unless ``[qemu] user`` is set), with no
security driver, no dynamic ownership, no cgroups of its own (asvirt creates none unless the
XML asks) and QEMU's stderr to a file (no virtlogd): what asvirt's embed driver does by
default. Everything else is libvirt's default.

Only ``libvirtd`` is run: Debian 12 ships no modular daemons (``virtqemud``), so that path
could not be tried here.

Stopping (the end of the ``with``, Ctrl-C, SIGTERM, or interpreter exit): domains still
running are destroyed through libvirt, libvirtd gets SIGTERM (SIGKILL after 10 s), QEMUs it
left (pid files under its run directory) are killed, and the temporary directory is removed.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import proc

#: libvirt's system paths (LOCALSTATEDIR=/var, RUNSTATEDIR=/run, SYSCONFDIR=/etc on Debian)
#: and the directory of the temporary tree that stands in for each.
SYSTEM_DIRS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/cache/libvirt": "cache",
    "/var/log/libvirt": "log",
}
#: The QEMU user and group libvirt's driver resolves before reading qemu.conf.
QEMU_USER = "libvirt-qemu"
QEMU_GROUP = "libvirt-qemu"
#: How long libvirtd may take to say it is ready (it probes QEMU's capabilities first).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}"
# Benchmarks open many connections at once (bench_daemon's 8 client processes).
max_clients = 5000
max_anonymous_clients = 5000
max_client_requests = 50
"""

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""

#: The shell run inside the new mount namespace: the temporary tree over libvirt's paths
#: (a directory missing on the host is made inside an overlay of its parent, so the host's
#: /var is left as it is), the passwd/group copies over the host's, then libvirtd.
NAMESPACE_SCRIPT = r"""
set -e
T="$1"; shift
for pair in "$@"; do
    target="${pair%%=*}"; source="$T/${pair#*=}"
    if [ ! -d "$target" ]; then
        parent=$(dirname "$target")
        name=$(echo "$parent" | tr / _)
        mkdir -p "$T/overlay/$name/upper" "$T/overlay/$name/work"
        mount -t overlay overlay \
            -o "lowerdir=$parent,upperdir=$T/overlay/$name/upper,workdir=$T/overlay/$name/work" \
            "$parent"
        mkdir -p "$target"
    fi
    mount --bind "$source" "$target"
done
mount --bind "$T/passwd" /etc/passwd
mount --bind "$T/group" /etc/group
exec "$PYTHON" -c "$REAPER" libvirtd --config "$T/libvirtd.conf" --pid-file "$T/libvirtd.pid"
"""

#: libvirtd's parent: reaps the QEMUs libvirt daemonizes as soon as they exit. libvirt's
#: destroy polls kill(pid, 0) until the QEMU is gone, and a dead QEMU is gone only once it is
#: reaped: by systemd (PID 1) on a usual host, at once; by this machine's PID 1 (a sandbox's
#: init) a second or more later, which made libvirt's destroy look 1.4 s slower than it is.
#: A child subreaper that waits for every child gives libvirt the host it expects.
REAPER = r"""
import ctypes, os, signal, subprocess, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
daemon = subprocess.Popen(sys.argv[1:])
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda signum, _frame: daemon.send_signal(signum))
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(0)
    if pid == daemon.pid:
        daemon.returncode = os.waitstatus_to_exitcode(status)
        sys.exit(daemon.returncode)
"""


def missing() -> str | None:
    """Why libvirt cannot be measured here (``"not installed (...)"``), or None."""
    if importlib.util.find_spec("libvirt") is None:
        return "not installed (libvirt-python is missing: pip install libvirt-python)"
    if shutil.which("libvirtd") is None:
        return "not installed (no libvirtd: apt install libvirt-daemon libvirt-daemon-driver-qemu)"
    if not any(Path("/usr/lib").glob("*/libvirt/connection-driver/libvirt_driver_qemu.so")):
        return "not installed (libvirtd has no QEMU driver: apt install libvirt-daemon-driver-qemu)"
    if os.geteuid() != 0:
        return "not measured (a private system libvirtd needs root, for its mount namespace)"
    if shutil.which("unshare") is None:
        return "not measured (util-linux's unshare is missing)"
    return None


def quiet() -> None:
    """Stop libvirt-python printing every error on stderr (callers see them as exceptions)."""
    import libvirt  # type: ignore[import-not-found]

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtPeer:
    """A running private libvirtd: :attr:`uri` reaches it, :meth:`open` connects to it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.socket = tmp / "sock" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conns: list[Any] = []
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def run_dir(self) -> Path:
        """libvirt's /run/libvirt as seen from outside the namespace."""
        return self.tmp / SYSTEM_DIRS["/run/libvirt"]

    def open(self) -> Any:
        """A libvirt-python connection to this daemon (closed when the peer stops), with
        libvirt's event loop running (:func:`event_loop`) so that it can deliver events."""
        import libvirt  # type: ignore[import-not-found]

        event_loop()
        conn = libvirt.open(self.uri)
        self._conns.append(conn)
        return conn

    @property
    def pid(self) -> int:
        """libvirtd's pid (from its pid file: its parent is the reaper)."""
        return int((self.tmp / "libvirtd.pid").read_text().strip())

    def rss_kib(self) -> int:
        """libvirtd's resident set size."""
        return proc.rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """libvirtd's CPU time so far (user + system, all its threads)."""
        return proc.cpu_seconds(self.pid)

    def version(self) -> str:
        import libvirt  # type: ignore[import-not-found]

        v = libvirt.getVersion()
        return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"

    def describe(self) -> str:
        """One line for a benchmark's output: what libvirt is measured, and how it runs."""
        return (
            f"libvirt {self.version()}: a private libvirtd (system mode, QEMU as root, "
            f"no security driver or cgroups) at {self.uri}"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def _prepare(self) -> None:
        for sub in SYSTEM_DIRS.values():
            (self.tmp / sub).mkdir(mode=0o700)
        (self.tmp / "sock").mkdir(mode=0o700)
        (self.tmp / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(sock=self.tmp / "sock", log=self.tmp / "libvirtd.log")
        )
        (self.tmp / "etc" / "qemu.conf").write_text(QEMU_CONF)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not any(line.startswith(f"{QEMU_USER}:") for line in passwd.splitlines()):
            passwd += f"{QEMU_USER}:x:64055:64055:libvirt (bench):/nonexistent:/usr/sbin/nologin\n"
        if not any(line.startswith(f"{QEMU_GROUP}:") for line in group.splitlines()):
            group += f"{QEMU_GROUP}:x:64055:\n"
        (self.tmp / "passwd").write_text(passwd)
        (self.tmp / "group").write_text(group)
        for name in ("passwd", "group"):
            os.chmod(self.tmp / name, 0o644)

    def start(self) -> None:
        """Start libvirtd and wait until it says it is ready (systemd's READY=1, which libvirt
        sends itself when $NOTIFY_SOCKET is set)."""
        self._prepare()
        notify_path = self.tmp / "notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(str(notify_path))
            env = dict(
                os.environ, NOTIFY_SOCKET=str(notify_path), PYTHON=sys.executable, REAPER=REAPER
            )
            with open(self.tmp / "libvirtd.stderr", "wb") as log:
                self.proc = subprocess.Popen(
                    [
                        "unshare",
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        NAMESPACE_SCRIPT,
                        "libvirt-peer",
                        str(self.tmp),
                        *(f"{path}={sub}" for path, sub in SYSTEM_DIRS.items()),
                    ],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    # Its own session: a Ctrl-C on the terminal reaches the benchmark, which
                    # then stops libvirtd in order (domains first), not libvirtd directly.
                    start_new_session=True,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                notify.settimeout(0.2)
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except TimeoutError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"libvirtd exited ({self.proc.returncode}): {self._said()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"libvirtd not ready after {START_TIMEOUT:.0f} s")
        finally:
            notify.close()

    def _said(self) -> str:
        text = ""
        for name in ("libvirtd.stderr", "libvirtd.log"):
            with contextlib.suppress(OSError):
                text += (self.tmp / name).read_text(errors="replace")
        lines = [line for line in text.splitlines() if "error" in line.lower()] or text.splitlines()
        return " | ".join(lines[-3:]) or "nothing said"

    def stop(self) -> None:
        """Destroy what still runs, stop libvirtd, kill QEMUs it left, remove the tree.
        Safe to call twice, from any thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._destroy_domains()
        finally:
            self._stop_daemon()
            self._kill_leftover_qemus()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _destroy_domains(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        import libvirt  # type: ignore[import-not-found]

        for conn in self._conns:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        self._conns.clear()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _stop_daemon(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # the reaper passes it on to libvirtd
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _kill_leftover_qemus(self) -> None:
        """QEMUs libvirt left running (it was killed, or a destroy failed): their pid files
        are in its run directory; a pid is killed only if it is still a QEMU."""
        for pidfile in (self.run_dir / "qemu").glob("*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"qemu-system" not in cmdline.split(b"\0", 1)[0]:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # Not our child: wait for it to be gone so its mounts (the namespace) go too.
            deadline = time.monotonic() + STOP_TIMEOUT
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)


_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread, once
    per process. libvirt-python delivers no event without it, and a connection opened before
    it was registered never will."""
    global _loop_thread
    import libvirt  # type: ignore[import-not-found]

    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _loop_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _loop_thread.start()


class LifecycleEvents:
    """libvirt's lifecycle events of one domain (or all, ``dom=None``) as they reach a
    callback: ``(event, detail, perf_counter() at arrival)``, in order. libvirt's events carry
    no QEMU timestamp, so a latency is measured from the call that caused the event."""

    def __init__(self, conn: Any, dom: Any = None) -> None:
        import queue

        import libvirt  # type: ignore[import-not-found]

        self._queue: queue.Queue[tuple[int, int, float]] = queue.Queue()
        self._conn = conn
        self._id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._arrived, None
        )

    def _arrived(self, _conn: Any, _dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self._queue.put((event, detail, time.perf_counter()))

    def clear(self) -> None:
        """Forget events that arrived so far."""
        while not self._queue.empty():
            self._queue.get_nowait()

    def wait_for(self, event: int, timeout: float = 30.0) -> float:
        """When the next ``event`` (a VIR_DOMAIN_EVENT_* number) arrived; others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            got, _detail, at = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if got == event:
                return at

    def close(self) -> None:
        import libvirt  # type: ignore[import-not-found]

        with contextlib.suppress(libvirt.libvirtError):
            self._conn.domainEventDeregisterAny(self._id)

    def __enter__(self) -> LifecycleEvents:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_running: set[LibvirtPeer] = set()


@atexit.register
def _stop_all() -> None:
    # A Ctrl-C that ended the program while a worker thread held a peer.
    for peer in list(_running):
        peer.stop()


def _sigterm(_signum: int, frame: Any) -> None:
    """SIGTERM handled as Ctrl-C is: by the SIGINT handler in place (trio's, under trio.run,
    which raises KeyboardInterrupt where the run can unwind; raising it here instead could
    land inside trio's own machinery and abandon the run)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt("SIGTERM")


@contextlib.contextmanager
def libvirt_peer() -> Iterator[LibvirtPeer | str]:
    """A running private libvirtd, or a line saying why there is none (``"not installed
    (...)"``, or what libvirtd said when it failed to start). Stopped and removed at the end,
    on Ctrl-C and SIGTERM too."""
    why = missing()
    if why is not None:
        yield why
        return
    quiet()
    old_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # So that a SIGTERM unwinds through the finally below (and atexit) instead of
        # leaving libvirtd and its QEMUs behind.
        old_sigterm = signal.signal(signal.SIGTERM, _sigterm)
    peer = LibvirtPeer(Path(tempfile.mkdtemp(prefix="asvirt-bench-libvirt-")))
    _running.add(peer)
    try:
        try:
            peer.start()
        except RuntimeError as err:
            peer.stop()
            yield f"installed but its private libvirtd did not start: {err}"
            return
        yield peer
    finally:
        peer.stop()
        _running.discard(peer)
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)


def domain_xml(xml: str, name: str | None = None) -> str:
    """asvirt's test-guest XML as libvirt takes it: the same XML (QEMU binary, kernel,
    initrd); ``name`` renames the domain so both can be told apart in ``ps``."""
    if name is None:
        return xml
    import re

    return re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml, count=1)
