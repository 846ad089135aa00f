"""The serial console: a shell on the test guest's ttyS0, through dom.open_console()."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios

import pytest
import trio

import asvirt

from .daemon import Daemon
from .guest import AGENT_CHANNEL_XML, REPO, define, wait_for_serial
from .helpers import destroy_all, embed_uri

pytestmark = [pytest.mark.qemu, pytest.mark.guest]

PROMPT = b"asvirt-guest# "


async def read_until(stream: trio.abc.ReceiveStream, text: bytes, timeout: float = 60) -> bytes:
    """What the console sends until ``text`` has come (fails the test after ``timeout``)."""
    seen = b""
    with trio.fail_after(timeout):
        while text not in seen:
            data = await stream.receive_some()
            assert data, f"the console ended; it had sent {seen!r}"
            seen += data
    return seen


async def test_console(conn, test_guest, tmp_path):
    dom, serial = await define(conn, test_guest, tmp_path, serial="pty")
    await dom.start()
    await wait_for_serial(serial)

    first = await dom.open_console()
    # A command typed on the console runs in the guest's shell; its output comes back.
    await first.send_all(b"echo answer-$((6 * 7))\n")
    assert b"answer-42" in await read_until(first, b"answer-42\r\n")
    # The serial log still gets everything.
    await wait_for_serial(serial, "answer-42")

    # A second client is refused...
    with pytest.raises(asvirt.OperationFailedError) as err:
        await dom.open_console()
    assert str(err.value) == "Active console session exists for this domain"
    # ... unless it forces its way in: the first one's stream ends.
    second = await dom.open_console(force=True)
    assert await first.receive_some() == b""
    await first.aclose()
    await second.send_all(b"uname -s\n")
    await read_until(second, b"Linux")

    # Detached, it can be attached again.
    await second.aclose()
    async with await dom.open_console() as third:
        await third.send_all(b"echo again-$((1 + 1))\n")
        await read_until(third, b"again-2")
    await dom.destroy()


def _read_pty_until(master: int, text: bytes, timeout: float = 60) -> bytes:
    """What the CLI wrote on its terminal until ``text`` (no sleeps: select on the pty)."""
    import select
    import time

    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; the terminal shows {seen!r}"
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the CLI exited: its side of the pty is gone
                chunk = b""
            assert chunk, f"the terminal closed; it shows {seen!r}"
            seen += chunk
    return seen


def _cli_console(root, master: int, slave: int, *args: str) -> subprocess.Popen[bytes]:
    """``asvirt console vm1 ARGS`` on the terminal ``slave``; ``root``: an embed root, or
    a URI."""
    uri = root if isinstance(root, str) else embed_uri(root)
    env = {**os.environ, "ASVIRT_DEFAULT_URI": uri}
    return subprocess.Popen(
        [sys.executable, "-m", "asvirt", "console", "vm1", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


async def test_cli_console(root, fast_config, test_guest, tmp_path):
    """asvirt console in a terminal (a pty): raw mode, a command and its output, Ctrl+]
    detaches, and it attaches again."""
    async with asvirt.open(embed_uri(root)) as conn:
        _, serial = await define(conn, test_guest, tmp_path, serial="pty")
        await (await conn.lookup_by_name("vm1")).start()
        await wait_for_serial(serial)
    try:
        for word in ("first", "second"):
            master, slave = pty.openpty()
            proc = _cli_console(root, master, slave)
            try:
                _read_pty_until(master, b"Escape character is ^] (Ctrl + ])")
                os.write(master, f"echo {word}-$((6 * 7))\n".encode())
                _read_pty_until(master, f"{word}-42".encode())
                os.write(master, b"\x1d")  # Ctrl+]
                assert proc.wait(timeout=60) == 0
                # The terminal was given back as it was (not raw).
                assert termios.tcgetattr(slave)[3] & termios.ECHO
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                os.close(master)
                os.close(slave)
    finally:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)


async def test_console_through_a_daemon(caps_cache, test_guest, tmp_path):
    """The console and the agent through asvirtd: one console per domain across clients,
    --force takes it over, a connection that closes releases its console."""
    daemon = Daemon(tmp_path / "state", caps_cache=caps_cache).start()
    try:
        async with asvirt.open(daemon.uri) as conn:
            dom, serial = await define(
                conn, test_guest, tmp_path, serial="pty", devices=AGENT_CHANNEL_XML
            )
            async with conn.subscribe(dom, kinds={asvirt.EventKind.AGENT_LIFECYCLE}) as events:
                await dom.start()
                with trio.fail_after(60):
                    async for ev in events:
                        if ev.data["state"] == asvirt.AgentLifecycleState.CONNECTED:
                            break
            assert await dom.agent_command('{"execute":"guest-ping"}') == '{"return":{}}'
            # virsh's agent commands, one-shot through the daemon (no event loop).
            env = {**os.environ, "ASVIRT_DEFAULT_URI": daemon.uri}
            for args, want in (
                (["qemu-agent-command", "vm1", '{"execute":"guest-ping"}'], '{"return":{}}\n'),
                (["domfsthaw", "vm1"], "Thawed 0 filesystem(s)\n\n"),
            ):
                proc = await trio.run_process(
                    [sys.executable, "-m", "asvirt", *args], env=env, cwd=REPO, capture_stdout=True
                )
                assert proc.stdout.decode() == want
            await wait_for_serial(serial)
            mine = await dom.open_console()
            await mine.send_all(b"echo mine-$((6 * 7))\n")
            await read_until(mine, b"mine-42")

            # Another client: refused, then --force takes it over.
            master, slave = pty.openpty()
            try:
                proc = _cli_console(daemon.uri, master, slave)
                _read_pty_until(master, b"error: Active console session exists for this domain")
                assert proc.wait(timeout=60) == 1
                proc = _cli_console(daemon.uri, master, slave, "--force")
                _read_pty_until(master, b"Escape character is ^] (Ctrl + ])")
                assert await mine.receive_some() == b""  # taken over
                os.write(master, b"echo theirs-$((6 * 7))\n")
                _read_pty_until(master, b"theirs-42")
                os.write(master, b"\x1d")
                assert proc.wait(timeout=60) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                os.close(master)
                os.close(slave)
            await mine.aclose()

            # A connection that goes away releases its console.
            async with asvirt.open(daemon.uri) as other:
                await (await other.lookup_by_name("vm1")).open_console()
            async with await dom.open_console() as again:
                await again.send_all(b"echo again-$((6 * 7))\n")
                await read_until(again, b"again-42")
            await dom.destroy()
    finally:
        daemon.stop()
        assert daemon.kill_qemus() == []
