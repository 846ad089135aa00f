"""Virtual networks on the test driver: libvirt's network rules and events, in memory.

The calls, the rules and the events are the shared
:class:`~asvirt.drivers.network.core.NetworkDriverCore`'s, and network XML is parsed by the
shared :mod:`~asvirt.drivers.network.model`, so a definition the QEMU node refuses is refused
here too. Starting a network creates nothing (no bridge, no DHCP server): a running test
network has no leases, and its definition is kept as given (no bridge name or MAC is made up,
as in libvirt's test driver).
"""

from __future__ import annotations

from typing import Any

import trio

from ..base import NetworkDHCPLease
from ..network.core import NetworkDriverCore, NetworkObj
from ..network.model import NetworkDef, parse_network_xml
from .state import TestNode


class TestNetworkBackend:
    """Runs nothing: a network is active because the table says so."""

    __test__ = False  # not a pytest test class

    def prepare(self, defn: NetworkDef, others: list[NetworkObj]) -> NetworkDef:
        return defn

    async def save_config(self, obj: NetworkObj, defn: NetworkDef) -> None:
        await trio.lowlevel.checkpoint()

    async def delete_config(self, obj: NetworkObj) -> None:
        await trio.lowlevel.checkpoint()

    async def save_autostart(self, obj: NetworkObj, autostart: bool) -> None:
        await trio.lowlevel.checkpoint()

    async def start(self, obj: NetworkObj, defn: NetworkDef) -> Any:
        await trio.lowlevel.checkpoint()
        return None

    async def stop(self, obj: NetworkObj) -> None:
        await trio.lowlevel.checkpoint()

    async def leases(self, obj: NetworkObj) -> list[NetworkDHCPLease]:
        await trio.lowlevel.checkpoint()
        return []


def TestNetworkDriver(node: TestNode) -> NetworkDriverCore:
    """The test node's network driver."""
    return NetworkDriverCore(node.bus, TestNetworkBackend())


def add_network(driver: NetworkDriverCore, defn: NetworkDef, *, active: bool) -> NetworkObj:
    """Add a network of a node description (no event); NetworkExistsError if taken."""
    obj = NetworkObj(defn, defn.copy() if active else None)
    driver.add(obj)
    return obj


__all__ = ["TestNetworkBackend", "TestNetworkDriver", "add_network", "parse_network_xml"]
