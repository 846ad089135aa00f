"""Virtual networks: handles forwarded to the connection's network driver."""

from __future__ import annotations

from typing import Any

from .drivers.base import NetworkRef
from .handle import Handle


class Network(Handle):
    """A virtual network known to a connection (libvirt's ``virNetworkPtr``)."""

    __slots__ = ()
    _ref: NetworkRef

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._conn._call(method, uuid=self.uuid, **params)

    async def create(self) -> None:
        """Start the network."""
        await self._call("network_create")

    async def destroy(self) -> None:
        """Stop the network."""
        await self._call("network_destroy")

    async def undefine(self) -> None:
        await self._call("network_undefine")

    async def is_active(self) -> bool:
        return await self._call("network_is_active")

    async def is_persistent(self) -> bool:
        return await self._call("network_is_persistent")

    async def autostart(self) -> bool:
        return await self._call("network_autostart")

    async def xml_desc(self) -> str:
        return await self._call("network_xml_desc")
