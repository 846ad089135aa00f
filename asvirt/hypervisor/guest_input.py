"""Keys, NMIs and screenshots: what a user does at a running guest's keyboard and screen, once
for every hypervisor (libvirt's ``virDomainSendKey``, ``virDomainInjectNMI``,
``virDomainScreenshot``).

The rules live here (which keys, which screen), the doing in the runtime
(:meth:`~.domains.DomainRuntime.send_key`, ``inject_nmi``, ``screenshot``). Like the
monitor's other quick commands they take no job: a key press does not wait for a save.
"""

from __future__ import annotations

import itertools

import trio

from ..conf.domain import DomainDef
from ..drivers.base import MAX_TRANSFER
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

    # A screenshot is taken whole, kept for the client that asked (an id), and read by it a
    # chunk per call, as a volume download is: through a daemon an image of any size then
    # travels in messages of MAX_TRANSFER bytes. It is dropped once read to its end, or
    # when the client leaves.

    _screenshot_ids = itertools.count(1)

    @property
    def _screenshots(self) -> dict[int, tuple[object, memoryview]]:
        # Made on first use: the driver's __init__ is not this mixin's.
        table: dict[int, tuple[object, memoryview]] | None = getattr(self, "_shots", None)
        if table is None:
            table = {}
            self._shots: dict[int, tuple[object, memoryview]] = table
        return table

    async def domain_screenshot(self, uuid: str, screen: int, *, client: object = None) -> int:
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        runtime = self._runtime(obj)
        device, head = screen_head(runtime.live_def, screen)
        image = await runtime.screenshot(device, head)
        shot = next(self._screenshot_ids)
        self._screenshots[shot] = (client, memoryview(image))
        return shot

    async def domain_screenshot_read(
        self, screenshot: int, length: int, *, client: object = None
    ) -> bytes:
        await trio.lowlevel.checkpoint()
        owner, rest = self._screenshots.get(screenshot, (None, memoryview(b"")))
        if owner is not client or screenshot not in self._screenshots:
            raise InvalidArgError(f"no screenshot {screenshot} of this connection")
        if not 0 < length <= MAX_TRANSFER:
            raise InvalidArgError(f"a screenshot chunk is 1 to {MAX_TRANSFER} bytes")
        chunk = bytes(rest[:length])
        if chunk:
            self._screenshots[screenshot] = (owner, rest[length:])
        else:
            del self._screenshots[screenshot]  # read to its end
        return chunk

    def _drop_screenshots_of(self, owner: object) -> None:
        for shot, (held_by, _) in list(self._screenshots.items()):
            if held_by is owner:
                del self._screenshots[shot]


__all__ = ["MAX_SCREENSHOT", "GuestInputCalls", "screen_head"]
