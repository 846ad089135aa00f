"""Start a QEMU command line paused and ask it a few questions over QMP (test helper).

Real QEMU, never mocked: the argv under test is run as is (it already has ``-S`` and a
QMP monitor socket), queried, and told to quit; it is killed if it does not.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class QemuRefused(AssertionError):
    """QEMU exited instead of starting; the message is its stderr."""


@dataclass
class Launched:
    status: str
    vcpus: int
    memory_bytes: int
    block: list[dict[str, Any]]
    qom: dict[str, list[str]] = field(default_factory=dict)
    chardevs: list[dict[str, Any]] = field(default_factory=list)
    #: Replies to the extra queries asked for (command name -> reply).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The QOM properties asked for: (path, property) -> value.
    props: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: What ``while_running`` returned (None without one).
    during: Any = None


def _monitor_path(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "-chardev" and "id=charmonitor" in argv[i + 1]:
            for part in argv[i + 1].split(","):
                if part.startswith("path="):
                    return part[5:]
    raise ValueError("argv has no path-based QMP monitor")


class _QMP:
    def __init__(self, path: str, deadline: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        self.sock.connect(path)
        self.buf = b""
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name: str, **args: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")
            return reply.get("return")


def launch_paused(
    argv: list[str],
    workdir: Path,
    *,
    timeout: float = 10.0,
    extra: dict[str, dict[str, Any]] | None = None,
    qom_get: Sequence[tuple[str, str]] = (),
    while_running: Callable[[], Any] | None = None,
) -> Launched:
    """Run ``argv`` (which must carry -S and a path monitor), query it, make it quit;
    ``qom_get`` names the (path, property) pairs to read with ``qom-get``;
    ``while_running`` is called after the queries (and ``extra``), before QEMU quits, and
    what it returns is ``Launched.during``."""
    mon = _monitor_path(argv)
    errlog = workdir / "qemu.stderr"
    with open(errlog, "w+b") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        qmp = None
        try:
            while True:
                if proc.poll() is not None:
                    err.seek(0)
                    raise QemuRefused(err.read().decode(errors="replace").strip())
                try:
                    qmp = _QMP(mon, deadline)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise TimeoutError("QEMU did not open its monitor") from None
                    # Polled: nothing announces the socket QEMU creates (and this is no trio).
                    time.sleep(0.02)
            status = qmp.cmd("query-status")["status"]
            cpus = qmp.cmd("query-cpus-fast")
            mem = qmp.cmd("query-memory-size-summary")
            block = qmp.cmd("query-block")
            chardevs = qmp.cmd("query-chardev")
            qom = {}
            for path in ("/machine/peripheral", "/machine/peripheral-anon"):
                try:
                    qom[path] = [p["name"] for p in qmp.cmd("qom-list", path=path)]
                except RuntimeError:
                    qom[path] = []
            answers = {name: qmp.cmd(name, **args) for name, args in (extra or {}).items()}
            props = {(p, n): qmp.cmd("qom-get", path=p, property=n) for p, n in qom_get}
            during = while_running() if while_running is not None else None
            try:
                qmp.cmd("quit")
            except (ConnectionError, OSError):
                pass
            return Launched(
                status=status,
                vcpus=len(cpus),
                memory_bytes=mem["base-memory"],
                block=block,
                qom=qom,
                chardevs=chardevs,
                extra=answers,
                props=props,
                during=during,
            )
        finally:
            if qmp is not None:
                qmp.sock.close()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def launched_peripherals(argv: list[str], tmp: Path) -> set[str]:
    """Launch ``argv`` paused; the ids of the devices QEMU made of it (asserting it started)."""
    got = launch_paused(argv, tmp)
    assert got.status == "prelaunch"
    return set(got.qom["/machine/peripheral"])
