"""The QMP adapter on its own, against a real QEMU started by the test."""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from asvirt import fsutil
from asvirt.drivers.qemu.monitor import Monitor, monitor_host
from asvirt.errors import QMPError

pytestmark = [pytest.mark.qemu]


@contextlib.asynccontextmanager
async def bare_qemu(tmp_path: Path) -> AsyncIterator[Path]:
    """A QEMU with nothing but a QMP monitor, at the socket path it yields; killed at the end."""
    binary = shutil.which("qemu-system-x86_64")
    assert binary is not None
    listener = fsutil.bind_unix_listener(tmp_path / "qmp.sock")
    chardev = f"socket,id=mon,fd={listener.fileno()},server=on,wait=off"
    argv = [binary, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-chardev"]
    qemu = await trio.lowlevel.open_process(
        [*argv, chardev, "-mon", "chardev=mon,mode=control"],
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener.close()
    try:
        yield tmp_path / "qmp.sock"
    finally:
        qemu.kill()
        with trio.CancelScope(shield=True):
            await qemu.wait()


async def test_monitor_keeps_no_event_history(tmp_path: Path) -> None:
    # qemu.qmp's default listener would keep every event forever; ours keeps none.
    events: list[str] = []
    async with bare_qemu(tmp_path) as qmp_sock, monitor_host() as host:
        monitor = Monitor(host, name="t", on_event=lambda e: events.append(e["event"]), timeout=30)
        await monitor.connect(fsutil.connect_unix(qmp_sock))
        for _ in range(100):
            await monitor.execute("cont")
            await monitor.execute("stop")
        # QEMU sends RESUME and STOP before its replies to cont and stop, and the monitor
        # delivers events before the reply of any command sent after them: all are here.
        assert events == ["RESUME", "STOP"] * 100
        assert monitor.retained_events == 0
        await monitor.close()


async def test_commands_written_together_are_answered_each(tmp_path: Path) -> None:
    # execute_many: one write, one round trip; each command gets its own answer or error.
    async with bare_qemu(tmp_path) as qmp_sock, monitor_host() as host:
        monitor = Monitor(host, name="t", on_event=lambda e: None, timeout=30)
        with pytest.raises(QMPError):
            await monitor.execute("query-status")  # not connected yet: an error, no hang
        await monitor.connect(fsutil.connect_unix(qmp_sock))
        status, refused, name = await monitor.execute_many(
            [("query-status", None), ("no-such-command", None), ("query-name", None)]
        )
        assert status["status"] == "prelaunch" and name == {}
        assert isinstance(refused, QMPError) and refused.error_class == "CommandNotFound"
        with pytest.raises(QMPError) as err:
            await monitor.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"
        assert (await monitor.execute("query-status"))["running"] is False
        await monitor.close()
        await monitor.close()  # twice is fine
        with pytest.raises(QMPError):
            await monitor.execute("query-status")


async def test_an_abandoned_command_leaves_its_answer_to_itself(tmp_path: Path) -> None:
    # Replies are matched to commands by order (no ids): a command its caller gave up on
    # after writing it is still answered, and that answer must not go to the next command.
    async with bare_qemu(tmp_path) as qmp_sock, monitor_host() as host:
        events: list[str] = []
        monitor = Monitor(host, name="t", on_event=lambda e: events.append(e["event"]), timeout=30)
        await monitor.connect(fsutil.connect_unix(qmp_sock))
        for _ in range(3):
            with trio.move_on_after(0):  # written at once, abandoned before its answer
                await monitor.execute("query-name")
        with trio.move_on_after(0):
            await monitor.execute_many([("query-name", None), ("cont", None)])
        # QEMU's RESUME event comes between those answers and the next ones.
        status, name = await monitor.execute_many([("query-status", None), ("query-name", None)])
        assert status["running"] is True and name == {}
        assert (await monitor.execute("query-status"))["status"] == "running"
        assert events == ["RESUME"]
        with pytest.raises(QMPError, match="not plain JSON"):
            await monitor.execute("qom-set", {"path": "/", "property": "x", "value": math.nan})
        assert (await monitor.execute("stop")) == {}
        assert (await monitor.execute("query-status"))["running"] is False
        await monitor.close()


async def test_questions_asked_now_are_answered_later(tmp_path: Path) -> None:
    # ask(): written at once, read later (statistics ask every QEMU before reading any).
    async with bare_qemu(tmp_path) as qmp_sock, monitor_host() as host:
        events: list[str] = []
        monitor = Monitor(host, name="t", on_event=lambda e: events.append(e["event"]), timeout=30)
        await monitor.connect(fsutil.connect_unix(qmp_sock))
        queries = [Monitor.prepare("cont"), Monitor.prepare("no-such-command")]
        queries.append(Monitor.prepare("query-status"))
        deadline = trio.current_time() + 10
        first = await monitor.ask(queries, deadline=deadline)
        second = await monitor.ask([Monitor.prepare("query-name")], deadline=deadline)
        with trio.fail_after(10):
            await Monitor.wait_answered(first)
            await Monitor.wait_answered(second)
        assert Monitor.answered(first) and Monitor.answered(second)
        cont, refused, status = Monitor.answers(first)
        assert cont == {} and status["running"] is True and events == ["RESUME"]
        assert isinstance(refused, QMPError) and refused.error_class == "CommandNotFound"
        assert Monitor.answers(second) == [{}]
        await monitor.close()
        with pytest.raises(QMPError):
            await monitor.ask(queries, deadline=deadline)


async def test_files_passed_at_once_are_each_claimed_by_their_own_name(tmp_path: Path) -> None:
    # QEMU keeps only the descriptor that came last; two files passed together must not
    # cross (the second would otherwise replace the first before the first's getfd).
    async with bare_qemu(tmp_path) as qmp_sock, monitor_host() as host:
        monitor = Monitor(host, name="t", on_event=lambda e: None, timeout=30)
        await monitor.connect(fsutil.connect_unix(qmp_sock))
        files = [(tmp_path / name).open("w") for name in ("a", "b", "c")]
        try:
            async with trio.open_nursery() as nursery:
                for name, f in zip("abc", files, strict=True):
                    nursery.start_soon(monitor.send_fd, f.fileno(), name)
        finally:
            for f in files:
                f.close()
        for name in "abc":  # each name holds a descriptor of its own
            assert await monitor.execute("closefd", {"fdname": name}) == {}
        with pytest.raises(QMPError):
            await monitor.execute("closefd", {"fdname": "a"})
        await monitor.close()
