"""Virtual networks: handles forwarded to the connection's network driver."""

from __future__ import annotations

from typing import Any

from .drivers.base import NetworkRef
from .handle import Handle


class Network(Handle):
    """A virtual network known to a connection (libvirt's ``virNetworkPtr``)."""

    __slots__ = ()
    _ref: NetworkRef

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
