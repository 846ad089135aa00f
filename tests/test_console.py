"""The serial console: a shell on the test guest's ttyS0, through dom.open_console()."""

from __future__ import annotations

import pytest
import trio

import asvirt

from .guest import define, wait_for_serial

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
