"""Serial consoles: a running guest's pty, read and written by one client at a time.

Like storage transfers, a console is a handle the driver keeps for the client that opened it
(``domain_console_open`` gives its id; ``domain_console_read``/``_write`` move bytes;
``domain_console_close`` ends it), so that it works the same in this process and through a
daemon, and is released when that client's connection closes. As libvirt's ``virChrdevs``:
one console per device; a second open fails unless ``force``, which takes it over (the first
client's reads then end).

The device is QEMU's ``pty`` chardev (``<serial type='pty'>``), opened by its path: QEMU
keeps writing the guest's output to the chardev's ``<log file=...>`` whoever is attached.
"""

from __future__ import annotations

import contextlib
import itertools
import os

import trio

from ..errors import ArgumentUnsupportedError, InvalidArgError, OperationFailedError
from .domains import DomainObj
from .driver_base import DomainDriverBase

#: The most a read returns at once.
MAX_READ = 65536


class _Console:
    def __init__(self, uuid: str, device: str, fd: int, owner: object) -> None:
        self.uuid = uuid
        self.device = device
        self.owner = owner
        self.stream = trio.lowlevel.FdStream(fd)
        self.closed = False
        self.read_lock = trio.Lock()

    async def close(self) -> None:
        self.closed = True
        await self.stream.aclose()


class ConsoleCalls(DomainDriverBase):
    """The console calls of the shared domain driver (a mixin of
    :class:`~.domain_driver.DomainDriver`)."""

    _console_ids = itertools.count(1)

    @property
    def _consoles(self) -> dict[int, _Console]:
        # Made on first use: the driver's __init__ is not this mixin's.
        table: dict[int, _Console] | None = getattr(self, "_console_table", None)
        if table is None:
            table = {}
            self._console_table: dict[int, _Console] = table
        return table

    def _console_path(self, obj: DomainObj, device: str | None) -> tuple[str, str]:
        live = self._runtime(obj).live_def
        chardevs = [*live.serials, *live.consoles]
        for chr_ in chardevs:
            if device is not None and device != chr_.alias:
                continue
            if chr_.type != "pty":
                raise ArgumentUnsupportedError(
                    f"character device {chr_.alias} is not using a PTY "
                    "(use <serial type='pty'>, with a <log file=...> to keep its output)"
                )
            if not chr_.source_path:
                raise OperationFailedError(f"the pty of {chr_.alias} is not known yet")
            return chr_.alias or "serial0", chr_.source_path
        if device is not None:
            raise InvalidArgError(f"cannot find character device {device}")
        raise ArgumentUnsupportedError(f"domain '{obj.name}' has no console device")

    async def domain_console_open(
        self, uuid: str, device: str | None, force: bool, *, client: object = None
    ) -> int:
        obj = self.table.get(uuid)
        alias, path = self._console_path(obj, device)
        for cid, other in list(self._consoles.items()):
            if other.uuid == obj.uuid and other.device == alias:
                if not force:
                    raise OperationFailedError("Active console session exists for this domain")
                del self._consoles[cid]
                await other.close()
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise OperationFailedError(f"cannot open console {path}: {err.strerror}") from None
        cid = next(self._console_ids)
        self._consoles[cid] = _Console(obj.uuid, alias, fd, client)
        return cid

    def _console(self, console: int, client: object) -> _Console:
        found = self._consoles.get(console)
        if found is None or found.owner is not client:
            raise InvalidArgError(f"no open console {console}")
        return found

    async def domain_console_read(
        self, console: int, length: int, *, client: object = None
    ) -> bytes:
        con = self._consoles.get(console)
        if con is None or con.owner is not client or con.closed:
            return b""  # closed, or taken over by a forced open: the end of the stream
        async with con.read_lock:
            try:
                return await con.stream.receive_some(max(1, min(length, MAX_READ)))
            except (trio.ClosedResourceError, OSError):
                # Taken over meanwhile, or the guest's QEMU is gone (EIO on a pty).
                return b""

    async def domain_console_write(
        self, console: int, data: bytes, *, client: object = None
    ) -> int:
        con = self._console(console, client)
        try:
            await con.stream.send_all(data)
        except (trio.ClosedResourceError, OSError) as err:
            raise OperationFailedError(f"the console is closed: {err}") from None
        return len(data)

    async def domain_console_close(self, console: int, *, client: object = None) -> None:
        con = self._consoles.get(console)
        if con is not None and con.owner is client:
            del self._consoles[console]
            await con.close()

    async def _close_consoles_of(self, owner: object) -> None:
        for cid, con in list(self._consoles.items()):
            if con.owner is owner:
                del self._consoles[cid]
                with contextlib.suppress(OSError):
                    await con.close()


__all__ = ["ConsoleCalls"]
