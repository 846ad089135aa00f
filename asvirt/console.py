"""A guest's serial console as a trio stream (:meth:`asvirt.Domain.open_console`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .domain import Domain

#: The most one read asks for.
CHUNK = 65536


class Console(trio.abc.Stream):
    """The serial console of a running guest, attached for this connection: what the guest
    writes is received, what is sent is typed. It ends (``receive_some`` returns b"") when
    closed, when another client takes it over with ``force``, or when the guest stops.

    The same in this process and through a daemon: each read and write is a call on the
    connection, and the console is released when the connection closes.
    """

    def __init__(self, domain: Domain, console: int) -> None:
        self._domain = domain
        self._id = console
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("the console is closed")
        data: bytes = await self._domain._conn._call(
            "domain_console_read", console=self._id, length=max_bytes or CHUNK
        )
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the console is closed")
        async with self._send_lock:
            await self._domain._conn._call(
                "domain_console_write", console=self._id, data=bytes(data)
            )

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._domain._conn._call("domain_console_close", console=self._id)
