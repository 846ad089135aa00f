"""Virtual networks: handles forwarded to the connection's network driver."""

from __future__ import annotations

from .drivers.base import NetworkDHCPLease, NetworkRef
from .handle import Handle

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any


class Network(Handle):
    """A virtual network known to a connection (libvirt's ``virNetworkPtr``).

    Its lifecycle is announced by events of kind
    :data:`~asvirt.EventKind.NETWORK_LIFECYCLE` (subscribe to them by kind; ``domain=net``
    narrows a subscription to this network).
    """

    __slots__ = ()
    _ref: NetworkRef

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._conn._call(method, uuid=self.uuid, **params)

    async def create(self) -> None:
        """Start the network (on a QEMU node: its bridge, dnsmasq and firewall rules)."""
        await self._call("network_create")

    async def destroy(self) -> None:
        """Stop the network: remove exactly what starting it made."""
        await self._call("network_destroy")

    async def undefine(self) -> None:
        """Remove the persistent definition; a running network keeps running, transient."""
        await self._call("network_undefine")

    async def is_active(self) -> bool:
        return await self._call("network_is_active")

    async def is_persistent(self) -> bool:
        return await self._call("network_is_persistent")

    async def autostart(self) -> bool:
        """Whether the network starts when its node is opened."""
        return await self._call("network_autostart")

    async def set_autostart(self, autostart: bool) -> None:
        """Start the network whenever its node is opened (persistent networks only)."""
        await self._call("network_set_autostart", autostart=autostart)

    async def bridge_name(self) -> str:
        """The host bridge the network's guests are plugged into."""
        return await self._call("network_bridge_name")

    async def xml_desc(self, *, inactive: bool = False) -> str:
        """The live definition while running, else (or with ``inactive=True``) the
        persistent one."""
        return await self._call("network_xml_desc", inactive=inactive)

    async def dhcp_leases(self, mac: str | None = None) -> list[NetworkDHCPLease]:
        """The leases the network's DHCP server has given out (only ``mac``'s, if given),
        from dnsmasq's lease data; none while the network is not running."""
        return await self._call("network_dhcp_leases", mac=mac)
