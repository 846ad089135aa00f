"""What a node's drivers offer one another and a connection: the driver interfaces.

Kept apart from the records of :mod:`.base` (which names them too): these are typing
Protocols, and a one-shot client that imports the records does not import typing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

from .base import NetworkDHCPLease, NetworkRef, StorageVolSource

if TYPE_CHECKING:
    from ..conf.secret_usage import SecretUsageType

if TYPE_CHECKING:
    from ..config import Config
    from ..events import EventKind, Subscription
    from ..events.bus import DomainFilter
    from ..uri import ConnectURI


class NetworkDriver(Protocol):
    """Virtual networks (libvirt's network driver)."""

    async def list_all_networks(self, *, active: bool | None) -> list[NetworkRef]: ...

    async def lookup_network_by_name(self, name: str) -> NetworkRef: ...

    async def lookup_network_by_uuid(self, uuid: str) -> NetworkRef: ...

    async def network_define_xml(self, xml: str) -> NetworkRef: ...

    async def network_create(self, uuid: str) -> None: ...

    async def network_destroy(self, uuid: str) -> None: ...

    async def network_undefine(self, uuid: str) -> None: ...

    async def network_is_active(self, uuid: str) -> bool: ...

    async def network_is_persistent(self, uuid: str) -> bool: ...

    async def network_xml_desc(self, uuid: str, *, inactive: bool = False) -> str: ...

    async def network_autostart(self, uuid: str) -> bool: ...

    async def network_set_autostart(self, uuid: str, autostart: bool) -> None: ...

    async def network_bridge_name(self, uuid: str) -> str: ...

    async def network_dhcp_leases(
        self, uuid: str, mac: str | None = None
    ) -> list[NetworkDHCPLease]: ...

    def active_bridge(self, name: str) -> tuple[str, Any]:
        """The bridge of the running network ``name`` (for domain interfaces), and its
        live definition; NoNetworkError, or OperationInvalidError if it is not running."""
        ...


class StorageDriver(Protocol):
    """What the rest of a node needs of its storage driver. Its calls are declared in
    :class:`asvirt.protocol.StorageCalls` (tests/test_protocol.py checks both drivers)."""

    async def storage_vol_source(self, pool_name: str, vol_name: str) -> StorageVolSource:
        """Resolve a domain disk's ``<source pool= volume=>`` (at start)."""
        ...

    def client_closed(self, client: object) -> None:
        """A client left: end its volume transfers."""
        ...


class SecretDriver(Protocol):
    """What the rest of a node needs of its secret driver. Its calls are declared in
    :class:`asvirt.protocol.SecretCalls`."""

    def secret_value(
        self, uuid: str | None, usage_type: SecretUsageType, usage_id: str | None
    ) -> tuple[str, bytes]:
        """The UUID and value of the secret a domain's XML names (by ``uuid``, else by
        usage), private or not: the node's own use of it (libvirt's internal call).
        NoSecretError if there is no such secret or it has no value."""
        ...


class ClientDriver(Protocol):
    """What a connection holds: a way to make the declared calls of :mod:`asvirt.protocol`
    on a node, and to follow its events. In this process (:class:`~.local.LocalDriver`) or
    through a daemon (the remote driver)."""

    @property
    def closed(self) -> bool: ...

    def hostname(self) -> str: ...

    async def call(self, method: str, /, **params: Any) -> Any: ...

    def subscribe(
        self,
        *,
        domain: DomainFilter,
        kinds: Iterable[EventKind] | None,
        since: int | None,
        buffer: int | None,
    ) -> Subscription: ...


#: A driver family's opener: given the URI, a configuration overriding the node's own, and
#: the connection (the client, for autodestroy), the client driver of the node the URI
#: names, for as long as the ``async with`` lasts.
DriverOpener = Callable[
    ["ConnectURI", "Config | None", object], AbstractAsyncContextManager[ClientDriver]
]

__all__ = ["ClientDriver", "DriverOpener", "NetworkDriver", "SecretDriver", "StorageDriver"]
