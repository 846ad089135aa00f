"""The ``test`` driver family: a complete hypervisor, network and storage driver in memory.

Like libvirt's test driver, it lets programs that use asvirt be tested without QEMU::

    async with asvirt.open("test:///default") as conn:
        dom = await conn.lookup_by_name("test")          # running, as in libvirt
        await dom.suspend()

URIs:

``test:///default``
    libvirt's default node: a running domain ``test`` (8 GiB, 2 GiB current, 2 vCPUs), a
    network ``default`` (192.168.122.0/24 on ``virbr0``) and a storage pool ``default-pool``
    (``/default-pool``, 100 GiB). Every connection to it in the same trio run shares it (each
    sees the others' changes and receives their events, with the same numbers), and it is
    freed when the last one closes: the next open starts afresh.
``test:///path/to/node.xml``
    a node described in a file (see :mod:`.nodefile`), private to the connection, as in
    libvirt.

Domains behave as on the QEMU driver, with the same states, errors and events, because the
test driver feeds simulated QMP events through the QEMU driver's state machine (see
:mod:`.guest`). The simulated guest obeys the ACPI power button, and honours the test guest's
kernel command line (``asvirt.action=panic|poweroff|reboot``, ``asvirt.delay=SECONDS``,
``asvirt.acpi=ignore``), so one domain XML behaves the same on both drivers. To make a guest
act from a test, call :func:`guest_panic`, :func:`guest_poweroff` or :func:`guest_reboot`.
``dom.qmp()`` simulates ``query-status``, ``query-version``, ``query-name``, ``query-uuid``,
``stop``, ``cont``, ``system_reset`` and ``system_powerdown``; other commands raise
:class:`~asvirt.OperationUnsupportedError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from ...config import Config
from ...connection import Connection
from ...domain import Domain
from ...errors import NoConnectError, OperationUnsupportedError
from ...hypervisor.node import open_node
from ...uri import ConnectURI
from .. import registry
from ..local import LocalDriver
from .driver import guest_action
from .guest import BOOT_SECONDS, SIMULATED_QMP_COMMANDS
from .nodefile import build_node, default_node, read_node_file
from .state import DEFAULT_NODE_KEY, TestNode


@contextlib.asynccontextmanager
async def open_test(
    uri: ConnectURI, config: Config | None, client: object
) -> AsyncIterator[LocalDriver]:
    """The client driver of the test node ``uri`` names (``test:///default`` or a node file)."""
    registry.require_trio(uri)
    if uri.transport is not None or uri.host:
        raise NoConnectError(f"'{uri.uri}': the test driver is local only (use test:///default)")
    if uri.params:
        raise NoConnectError(f"'{uri.uri}': unknown parameter(s): {', '.join(sorted(uri.params))}")
    path = uri.path
    if path in ("", "/"):
        raise NoConnectError(f"'{uri.uri}': supply a node file path, or use test:///default")
    node_config = config or Config()
    if path == "/default":
        lease = await open_node(DEFAULT_NODE_KEY, lambda: default_node(node_config))
    else:
        desc = await trio.to_thread.run_sync(read_node_file, path)
        lease = await open_node(None, lambda: build_node(desc, node_config))
    driver = LocalDriver(lease, client)
    try:
        yield driver
    finally:
        with trio.CancelScope(shield=True):
            await driver.close()


def _node(dom: Domain) -> TestNode:
    conn = dom.connection
    driver = conn._driver() if isinstance(conn, Connection) else None
    node = driver.node if isinstance(driver, LocalDriver) else None
    if not isinstance(node, TestNode):
        raise OperationUnsupportedError(
            f"guest actions are simulated only on the test driver, not on '{dom.connection.uri}'"
        )
    return node


async def guest_panic(dom: Domain) -> None:
    """Make the simulated guest of ``dom`` panic now, as if its kernel crashed.

    The domain then follows its ``on_crash`` policy, as on QEMU: ``destroy`` (the default)
    gives CRASHED/PANICKED then STOPPED/CRASHED; ``preserve`` leaves it CRASHED/PANICKED;
    ``restart`` gives CRASHED/PANICKED then STARTED/BOOTED. The events are published before
    this returns. As with QEMU, the hypervisor sees a panic only through a ``<panic>``
    device: without one this raises :class:`~asvirt.OperationInvalidError`, as it does when
    the guest is not running (shut off, paused, crashed).
    """
    await guest_action(_node(dom), dom.uuid, "panic")


async def guest_poweroff(dom: Domain) -> None:
    """Make the simulated guest of ``dom`` power itself off now (``poweroff`` inside it).

    SHUTDOWN/GUEST, then what ``on_poweroff`` says (``destroy``: STOPPED/SHUTDOWN).
    Raises :class:`~asvirt.OperationInvalidError` unless the guest is running.
    """
    await guest_action(_node(dom), dom.uuid, "poweroff")


async def guest_reboot(dom: Domain) -> None:
    """Make the simulated guest of ``dom`` reboot itself now (``reboot`` inside it).

    A REBOOT event, the domain keeps running; with ``on_reboot=destroy`` it stops instead
    (STOPPED/SHUTDOWN). Raises :class:`~asvirt.OperationInvalidError` unless it is running.
    """
    await guest_action(_node(dom), dom.uuid, "reboot")


registry.register("test", open_test, examples=("test:///default", "test:///PATH/TO/NODE.xml"))

__all__ = [
    "BOOT_SECONDS",
    "SIMULATED_QMP_COMMANDS",
    "guest_panic",
    "guest_poweroff",
    "guest_reboot",
    "open_test",
]
