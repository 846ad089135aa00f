"""Keys, NMIs, wake-ups and screenshots of a running QEMU (a part of
:class:`~.runner.QemuRunner`).

``send-key`` with QEMU's key numbers (libvirt sends numbers too), ``inject-nmi``, and
``screendump`` into a descriptor asvirt made: a memfd, reopened write-only and handed to QEMU
in an fd set (``add-fd``; QEMU opens ``/dev/fdset/N`` write-only, which must match), so that
no file is created anywhere, QEMU needs no path it may write, and nothing is left behind. The
image is read back from the memfd.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import trio

from ...errors import InternalError, QMPError
from ...hypervisor.guest_input import MAX_SCREENSHOT

if TYPE_CHECKING:
    from .monitor import Monitor


class GuestInputOps:
    """Keyboard, NMI and screen of a QEMU runner (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        # What it uses of the runner.
        _monitor: Monitor | None

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _quietly(self, command: str, arguments: dict[str, Any]) -> None: ...

        async def _monitor_error(self, err: QMPError) -> QMPError: ...

    async def send_key(self, qnums: list[int], holdtime: int) -> None:
        arguments: dict[str, Any] = {"keys": [{"type": "number", "data": q} for q in qnums]}
        if holdtime:
            arguments["hold-time"] = holdtime
        await self.execute("send-key", arguments)

    async def inject_nmi(self) -> None:
        await self.execute("inject-nmi")

    async def pm_wakeup(self) -> None:
        await self.execute("system_wakeup")

    async def screenshot(self, device: str | None, head: int) -> bytes:
        assert self._monitor is not None
        image = os.memfd_create("asvirt-screenshot", os.MFD_CLOEXEC)
        try:
            writer = os.open(f"/proc/self/fd/{image}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                added = await self._monitor.add_fd(writer)
            except QMPError as err:
                raise await self._monitor_error(err) from None
            finally:
                os.close(writer)
            arguments: dict[str, Any] = {"filename": f"/dev/fdset/{added['fdset-id']}"}
            if device is not None:
                arguments |= {"device": device, "head": head}
            try:
                await self.execute("screendump", arguments)
            finally:
                with trio.CancelScope(shield=True):
                    await self._quietly("remove-fd", {"fdset-id": added["fdset-id"]})
            size = os.fstat(image).st_size
            if size > MAX_SCREENSHOT:
                raise InternalError(f"the screenshot is too large ({size} bytes)")
            return os.pread(image, size, 0)
        finally:
            os.close(image)


__all__ = ["GuestInputOps"]
