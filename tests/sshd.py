"""A real OpenSSH server for tests of ``qemu+ssh://``: "the far host" is 127.0.0.1.

Each :class:`Sshd` is Debian's ``/usr/sbin/sshd`` run as a child of the test, listening on
127.0.0.1 on a free port, with a config file, host key, client keys, ``authorized_keys`` and
``known_hosts`` of its own made by the test (ssh-keygen) in a directory of the test's. It
never reads or changes the machine's sshd configuration, and :meth:`Sshd.stop` ends it and
every session it started.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .helpers import descendants, free_tcp_port

SSHD = "/usr/sbin/sshd"
#: Where sshd, run as root, insists on a directory to chroot its unprivileged children into
#: (compiled in: no setting moves it). Created when missing; left in place afterwards, as
#: another test's sshd may be using it (it is empty, and /run is a tmpfs).
PRIVSEP_DIR = Path("/run/sshd")
#: The variable sshd sets in its sessions' environment, naming its directory.
MARK = "ASVIRT_TEST_SSHD"


def missing() -> str | None:
    """Why tests of ssh cannot run here (None when they can)."""
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (scripts/setup installs openssh-server)"
    return None


def keygen(path: Path, comment: str) -> Path:
    """A new ed25519 key pair without a passphrase at ``path`` (and ``path``.pub)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class Sshd:
    """One sshd on 127.0.0.1, and the keys and files a client needs to reach it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        #: Who logs in: whoever runs the tests (sshd run by anyone else serves only itself).
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.host_key = keygen(directory / "ssh_host_ed25519_key", "asvirt-test-host")
        #: The key the server accepts, and one it has never heard of.
        self.key = keygen(directory / "id_ed25519", "asvirt-test-client")
        self.other_key = keygen(directory / "id_other", "asvirt-test-stranger")
        self.authorized_keys = directory / "authorized_keys"
        self.accept_keys()
        self.config = directory / "sshd_config"
        self.known_hosts = directory / "known_hosts"
        self.log = directory / "sshd.log"
        #: The far user's XDG directories: a session daemon there is the test's own.
        self.far_home = directory / "far"
        self.far_env = {
            name: str(self.far_home / sub)
            for name, sub in (
                ("XDG_RUNTIME_DIR", "run"),
                ("XDG_STATE_HOME", "state"),
                ("XDG_CONFIG_HOME", "config"),
                ("XDG_CACHE_HOME", "cache"),
            )
        }
        for value in self.far_env.values():
            Path(value).mkdir(parents=True, mode=0o700)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Sshd:
        """Start it on a free port; returns once it listens."""
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for _attempt in range(5):  # another process may take the free port first
            port = free_tcp_port()
            if self._start_on(port, timeout):
                self.port = port
                host_key = Path(f"{self.host_key}.pub").read_text().split()
                self.known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
                return self
        raise AssertionError(f"sshd found no free port: {self.log_text()}")

    def refuse_keys(self) -> None:
        """From now on, refuse every key (sshd reads authorized_keys at each connection)."""
        self.authorized_keys.write_text("")

    def accept_keys(self) -> None:
        """Accept the test's key (:attr:`key`) again."""
        self.authorized_keys.write_text(Path(f"{self.key}.pub").read_text())

    def _start_on(self, port: int, timeout: float) -> bool:
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{port}",
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "AuthenticationMethods publickey",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    "UsePAM no",
                    # The test's files live under /tmp, which is world-writable.
                    "StrictModes no",
                    "PermitTTY no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "LogLevel VERBOSE",
                    # Marks whatever runs in its sessions, even once orphaned (far_processes).
                    "SetEnv "
                    + " ".join(f"{k}={v}" for k, v in {MARK: self.dir, **self.far_env}.items()),
                    "",
                ]
            )
        )
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            # -D: no daemonizing (a child of the test); -e: log to stderr (the log file).
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text(offset)
            if f"Server listening on 127.0.0.1 port {port}" in text:
                return True
            if self.proc.poll() is not None:
                if "Address already in use" in text:
                    return False
                raise AssertionError(f"sshd exited ({self.proc.returncode}): {text}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not listen in {timeout} s: {text}")
            time.sleep(0.02)  # its log line is the only announcement

    def sessions(self) -> list[int]:
        """The processes of the connections it serves (its children and theirs)."""
        assert self.proc is not None
        return descendants(self.proc.pid)

    def far_processes(self) -> list[int]:
        """The processes its sessions ran (the far commands), wherever they are now: they
        carry its mark in their environment."""
        mark = f"{MARK}={self.dir}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0"):
                found.append(int(entry))
        return found

    def kill_sessions(self) -> list[int]:
        """SIGKILL every session: the connections drop as if the far host's sshd died."""
        pids = self.sessions()
        _kill(pids)
        return pids

    def stop(self) -> None:
        """Stop listening and end every session it started, and what ran in them."""
        if self.proc is None:
            return
        sessions = self.sessions()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)
        _kill(sessions + self.far_processes())

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already


__all__ = ["Sshd", "keygen", "missing"]
