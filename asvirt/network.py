"""Virtual networks: handles forwarded to the connection's network driver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .drivers.base import NetworkRef

if TYPE_CHECKING:
    from .connection import Connection


class Network:
    """A virtual network known to a connection (libvirt's ``virNetworkPtr``)."""

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn: Connection, ref: NetworkRef) -> None:
        self._conn = conn
        self._ref = ref

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def uuid(self) -> str:
        return self._ref.uuid

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Network):
            return NotImplemented
        return self._conn is other._conn and self.uuid == other.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<asvirt.Network {self.name!r} {self.uuid}>"

    def _drv(self) -> Any:
        return self._conn._net()

    async def create(self) -> None:
        """Start the network."""
        await self._drv().network_create(self.uuid)

    async def destroy(self) -> None:
        """Stop the network."""
        await self._drv().network_destroy(self.uuid)

    async def undefine(self) -> None:
        await self._drv().network_undefine(self.uuid)

    async def is_active(self) -> bool:
        return await self._drv().network_is_active(self.uuid)

    async def is_persistent(self) -> bool:
        return await self._drv().network_is_persistent(self.uuid)

    async def autostart(self) -> bool:
        return await self._drv().network_autostart(self.uuid)

    async def xml_desc(self) -> str:
        return await self._drv().network_xml_desc(self.uuid)
