"""Real asvirtd processes for tests: started on a state directory, stopped or killed.

A test never reaches the user's own daemon: each :class:`Daemon` keeps everything under a
directory of the test's, and its socket where the test says (``qemu:///session`` tests point
``$XDG_RUNTIME_DIR`` at a directory of their own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asvirt import fsutil
from asvirt.drivers.qemu.process import find_qemus

from .guest import REPO
from .helpers import write_config


class Daemon:
    """One asvirtd process (a state directory survives its restarts)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        socket_path: Path | None = None,
        caps_cache: Path | None = None,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
        config: str | None = None,
        node_config: str | None = None,
    ) -> None:
        """``config`` is asvirtd.toml's text (given with ``--config``); ``node_config`` the
        node's asvirt.toml (QEMU deadlines...), written in the state directory."""
        self.state_dir = state_dir
        #: Runs it under another command (``ip netns exec NS``: in a network namespace).
        self.prefix = prefix
        self.socket = socket_path or state_dir / "asvirt-sock"
        self.socket_ro = state_dir / "asvirt-sock-ro"
        self.args = args
        self.log = state_dir.parent / f"{state_dir.name}.asvirtd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if config is not None:
            config_file = state_dir.parent / f"{state_dir.name}.asvirtd.toml"
            config_file.write_text(config)
            self.args = ("--config", str(config_file), *self.args)
        if node_config is not None:
            write_config(state_dir, node_config)
        if caps_cache is not None:
            # The QEMU probe, done once for the whole test session, is not repeated.
            target = state_dir / "cache" / "qemu" / "capabilities"
            target.mkdir(parents=True, exist_ok=True)
            for f in caps_cache.iterdir():
                shutil.copy2(f, target / f.name)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def uri_ro(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_ro}"

    @property
    def argv(self) -> list[str]:
        """The daemon's command line."""
        argv = [sys.executable, "-m", "asvirt.daemon", "--state-dir", str(self.state_dir)]
        return [*self.prefix, *argv, "--socket", str(self.socket), *self.args]

    def start(self, timeout: float = 30) -> Daemon:
        """Start it; returns once it accepts connections."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.proc.poll() is not None:
                raise AssertionError(f"asvirtd exited ({self.proc.returncode}): {self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"asvirtd did not listen in {timeout} s: {self.log_text()}")
            time.sleep(0.02)  # nothing announces the socket but the socket itself
        return self

    def _accepts(self) -> bool:
        try:
            with fsutil.short_socket_path(self.socket) as addr:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(addr)
                finally:
                    s.close()
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, and wait for it to exit; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_and_reap(self) -> list[int]:
        """Stop it, then SIGKILL the QEMUs it left running (as a daemon does when it stops);
        their pids, for the test to fail on: a test destroys what it starts."""
        self.stop()
        return self.kill_qemus()

    def kill(self) -> None:
        """SIGKILL: the daemon dies at once, as in a crash."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self, *, whole: bool = False) -> str:
        """What it has logged (the end of it, unless ``whole``)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return text if whole else text[-3000:]

    def log_records(self) -> list[dict[str, Any]]:
        """Its log lines as JSON objects (started with ``--log-format json``)."""
        records = []
        for line in self.log_text(whole=True).splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def kill_qemus(self) -> list[int]:
        """SIGKILL the QEMUs still running for its state directory (the daemon leaves them
        running when it stops, by design; a test must not); their pids."""
        pids = [q.pid for qemus in find_qemus(str(self.state_dir)).values() for q in qemus]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


def session_runtime_dir(tmp: Path) -> Path:
    """A short ``$XDG_RUNTIME_DIR`` for tests of ``qemu:///session`` (sun_path is 107 bytes)."""
    runtime = Path(f"/tmp/asvirt-test-{os.getpid()}-{abs(hash(tmp)) % 10**8}")
    runtime.mkdir(mode=0o700, exist_ok=True)
    return runtime


@contextlib.contextmanager
def session_daemon(
    root: Path, tmp: Path, caps_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Daemon]:
    """A daemon of the test's own serving ``root`` as ``qemu:///session``: at the socket the
    session URI leads to, under the test's ``$XDG_RUNTIME_DIR``. Fails the test if it leaves
    QEMUs running."""
    runtime = session_runtime_dir(tmp)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    daemon = Daemon(
        root, socket_path=runtime / "asvirt" / "asvirt-sock", caps_cache=caps_cache
    ).start()
    try:
        yield daemon
    finally:
        # The daemon leaves VMs running when it stops, as it should; a test may not.
        leftovers = daemon.stop_and_reap()
        shutil.rmtree(runtime, ignore_errors=True)
        assert not leftovers, f"the test left QEMUs running in the daemon: {leftovers}"


__all__ = ["Daemon", "session_daemon", "session_runtime_dir"]
