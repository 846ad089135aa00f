"""Backends for the shared suite (``test_api_contract.py``): one test, every driver.

A :class:`Backend` hides the few things that differ between drivers and are not the API's
business: where state lives between connections, how long a real guest takes to boot, and
which domain type a paused-only test can use. Everything else a test does goes through the
public API, unchanged, on both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

import asvirt

from .guest import PAUSED_DOMAIN_TYPE, TestGuest, wait_for_serial
from .helpers import embed_uri, lifecycle, qemu_pid

#: The drivers the shared suite runs against: the test driver, the QEMU driver in this
#: process, and the QEMU driver through a daemon (qemu:///session).
KINDS = ("test", "qemu", "session")


@dataclasses.dataclass
class Backend:
    """One driver under test, and a connection to it (``conn``) while a test runs."""

    kind: str
    uri: str
    guest: TestGuest
    tmp: Path
    #: The QEMU driver's embed root (None for the test driver).
    root: Path | None = None
    conn: asvirt.Connection = dataclasses.field(init=False)

    @property
    def simulated(self) -> bool:
        """True for the test driver, whose guest is simulated."""
        return self.kind == "test"

    @property
    def quiet_period(self) -> float:
        """How long to watch for something that must not happen (a guest ignoring ACPI)."""
        return 0.2 if self.simulated else 2.0

    def serial(self, name: str) -> Path:
        return self.tmp / f"{name}.serial"

    # What only the QEMU driver has (a test asks for these behind ``if not api.simulated``).

    def config_file(self, name: str) -> Path:
        """Where the QEMU driver keeps a persistent domain's definition."""
        assert self.root is not None, "the test driver keeps no files"
        return self.root / "etc" / "qemu" / f"{name}.xml"

    def log_file(self, name: str) -> Path:
        """The per-domain log QEMU's stderr goes to."""
        assert self.root is not None, "the test driver keeps no files"
        return self.root / "log" / "qemu" / f"{name}.log"

    def pid(self, name: str) -> int:
        """The pid of the running domain's QEMU."""
        assert self.root is not None, "the test driver runs no processes"
        return qemu_pid(self.root, name)

    def xml(self, name: str, *, boots: bool = False, **kw: object) -> str:
        """The test guest's domain XML; ``boots=True`` if the test needs the guest to run.

        The same XML serves both drivers: the test driver reads the guest's kernel command
        line (``asvirt.action=...``) to simulate what the real guest would do.
        """
        kw.setdefault("domain_type", "qemu" if boots else PAUSED_DOMAIN_TYPE)
        return self.guest.xml(name, self.serial(name), **kw)  # type: ignore[arg-type]

    async def define(
        self, name: str = "vm1", *, boots: bool = False, **kw: object
    ) -> asvirt.Domain:
        return await self.conn.define_xml(self.xml(name, boots=boots, **kw))

    async def wait_booted(self, dom: asvirt.Domain) -> None:
        """Until the guest has booted and listens to the power button."""
        if self.simulated:
            await trio.testing.wait_all_tasks_blocked()
        else:
            await wait_for_serial(self.serial(dom.name))

    async def settle(self, dom: asvirt.Domain) -> None:
        """Until every event already due for ``dom`` has been delivered.

        The simulated guest acts in tasks of this process: they are done once every task is
        blocked. QEMU sends the events it has before the reply to any later command, and a
        QMP call returns once the events before its reply are delivered: a round trip.
        """
        if self.simulated:
            await trio.testing.wait_all_tasks_blocked()
        else:
            await dom.qmp("query-status")

    def forget_boot(self, dom: asvirt.Domain) -> None:
        """Make the next :meth:`wait_booted` wait for a new boot."""
        if not self.simulated:
            self.serial(dom.name).write_text("")

    def pool_dir(self, name: str) -> Path:
        """A pool's directory: made on QEMU by ``build()``; on the test driver only a name."""
        return self.tmp / "pools" / name

    def pool_xml(self, name: str) -> str:
        return (
            f"<pool type='dir'><name>{name}</name>"
            f"<target><path>{self.pool_dir(name)}</path></target></pool>"
        )

    async def define_pool(self, name: str = "p", *, start: bool = True) -> asvirt.StoragePool:
        """A ``dir`` pool under the test's directory, built and started unless ``start`` is
        false."""
        pool = await self.conn.storage_pool_define_xml(self.pool_xml(name))
        if start:
            await pool.build()
            await pool.create()
        return pool

    def open(self) -> asvirt.Connection:
        """Another connection to the same driver (the test's ``conn`` stays open, or not)."""
        return asvirt.open(self.uri)

    @contextlib.asynccontextmanager
    async def state_kept(self) -> AsyncIterator[None]:
        """Keep the driver's state across connections that open and close inside.

        The QEMU driver keeps it on disk; ``test:///default`` keeps it while any
        connection is open, so a connection is held open here.
        """
        if self.simulated:
            async with self.open():
                yield
        else:
            yield

    async def baseline(self) -> set[str]:
        """Names of the domains that exist before the test (the test driver's ``test``)."""
        return {d.name for d in await self.conn.list_all_domains()}


F = TypeVar("F", bound=Callable[..., Any])


def needs_guest(fn: F) -> F:
    """This test needs a guest that runs (booted under TCG on QEMU, simulated on test)."""
    fn._needs_guest = True  # type: ignore[attr-defined]
    return fn


def make_backend(kind: str, *, guest: TestGuest, tmp: Path, root: Path | None) -> Backend:
    if kind == "test":
        return Backend(kind, "test:///default", guest, tmp)
    assert root is not None
    if kind == "session":  # a daemon serves the root (the fixture starts it)
        return Backend(kind, "qemu:///session", guest, tmp, root)
    return Backend(kind, embed_uri(root), guest, tmp, root)


def run_status(status: dict[str, object]) -> tuple[object, object]:
    """``(running, status)`` from a ``query-status`` answer (QEMU versions add other keys)."""
    return status["running"], status["status"]


def drain_lifecycle(events: asvirt.Subscription) -> list[tuple[str, str]]:
    """The lifecycle events already delivered to ``events`` (others are dropped)."""
    out = []
    while True:
        try:
            ev = events.receive_nowait()
        except trio.WouldBlock:
            return out
        if (lc := lifecycle(ev)) is not None:
            out.append(lc)


def drain(events: asvirt.Subscription) -> list[asvirt.DomainEvent]:
    """Every event already delivered to ``events``."""
    out = []
    while True:
        try:
            out.append(events.receive_nowait())
        except trio.WouldBlock:
            return out


__all__ = [
    "KINDS",
    "Backend",
    "drain",
    "drain_lifecycle",
    "make_backend",
    "needs_guest",
    "run_status",
]
