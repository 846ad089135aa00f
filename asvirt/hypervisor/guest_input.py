"""Keys, NMIs and screenshots: what a user does at a running guest's keyboard and screen, once
for every hypervisor (libvirt's ``virDomainSendKey``, ``virDomainInjectNMI``,
``virDomainScreenshot``).

The rules live here (which keys, which screen), the doing in the runtime
(:meth:`~.domains.DomainRuntime.send_key`, ``inject_nmi``, ``screenshot``). Like the
monitor's other quick commands they take no job: a key press does not wait for a save.
"""

from __future__ import annotations

import trio

from ..conf.domain import DomainDef
from ..errors import InvalidArgError, OperationFailedError
from ..keycodes import MAX_KEYS, to_qnum
from ..keycodes import codeset as find_codeset
from .driver_base import DomainDriverBase

#: The largest screenshot accepted from the hypervisor (a 4096x2160 PPM is 26 MB).
MAX_SCREENSHOT = 64 * 1024 * 1024


def screen_head(definition: DomainDef, screen: int) -> tuple[str | None, int]:
    """The video device (its alias; None: the first, QEMU's default) and head that show
    ``screen``, counted across the heads of the domain's video devices as libvirt counts."""
    if not definition.videos:
        raise OperationFailedError("no screens to take screenshot from")
    if screen < 0:
        raise InvalidArgError(f"No such screen: {screen}")
    if screen == 0:
        return None, 0
    left = screen
    for video in definition.videos:
        heads = video.heads or 1
        if left < heads:
            return video.alias, left
        left -= heads
    raise InvalidArgError(f"No such screen: {screen}")


class GuestInputCalls(DomainDriverBase):
    """Keys, NMIs and screenshots of the shared domain driver (a mixin of
    :class:`~.domain_driver.DomainDriver`)."""

    async def domain_send_key(
        self, uuid: str, codeset: int, holdtime: int, keycodes: list[int]
    ) -> None:
        codes = find_codeset(codeset)
        if not 1 <= len(keycodes) <= MAX_KEYS:
            raise InvalidArgError(f"send_key takes 1 to {MAX_KEYS} keys, not {len(keycodes)}")
        if not 0 <= holdtime <= 2**31 - 1:
            raise InvalidArgError(f"holdtime must be positive milliseconds, not {holdtime}")
        qnums = [to_qnum(codes, int(k)) for k in keycodes]
        if len(set(qnums)) != len(qnums):
            raise InvalidArgError("a key may be pressed only once in a combination")
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        await self._runtime(obj).send_key(qnums, holdtime)

    async def domain_inject_nmi(self, uuid: str) -> None:
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        await self._runtime(obj).inject_nmi()

    async def domain_screenshot(self, uuid: str, screen: int) -> bytes:
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        runtime = self._runtime(obj)
        device, head = screen_head(runtime.live_def, screen)
        return await runtime.screenshot(device, head)


__all__ = ["MAX_SCREENSHOT", "GuestInputCalls", "screen_head"]
