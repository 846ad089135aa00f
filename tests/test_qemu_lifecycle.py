"""Lifecycle facts only a real QEMU has.

Every row of the core issue's lifecycle table (define, start, pause, shutdown, panic, reboot,
destroy, transient domains, refused calls) is tested once for every driver, in
``test_api_contract.py``; the QEMU-only facts of those rows (definition files, the per-domain
log, QEMU's pid gone and reaped) are asserted there behind ``if not api.simulated``. What is
left here cannot happen to a simulated guest.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

import asvirt
from asvirt import DomainState as S

from .guest import define
from .helpers import lifecycle, pid_exists, qemu_pid

pytestmark = [pytest.mark.qemu]

LC = asvirt.EventKind.LIFECYCLE


@pytest.mark.guest
async def test_qemu_killed_from_outside(conn, test_guest, tmp_path, root):
    dom, _ = await define(conn, test_guest, tmp_path)
    await dom.start()
    pid = qemu_pid(root, "vm1")
    async with conn.subscribe(dom, kinds={LC}) as events:
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(1):  # the exit is seen through a pidfd, not by polling
            ev = await events.receive()
    assert lifecycle(ev) == ("STOPPED", "FAILED")
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)
    assert not pid_exists(pid), "the killed QEMU must be reaped"
