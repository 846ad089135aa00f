"""Secrets: handles forwarded to the connection's secret driver."""

from __future__ import annotations

from .drivers.base import SecretRef, SecretUsageType
from .handle import Handle

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any


class Secret(Handle):
    """A secret known to a connection (libvirt's ``virSecretPtr``): a passphrase or key that
    domains' XML names by UUID or by usage (an encrypted volume's path, a Ceph user, an
    iSCSI target, a vTPM).

    A secret has no name: :attr:`name` is its UUID. Its events are of kinds
    :data:`~asvirt.EventKind.SECRET_LIFECYCLE` and
    :data:`~asvirt.EventKind.SECRET_VALUE_CHANGED` (subscribe to them by kind).
    """

    __slots__ = ()
    _ref: SecretRef

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._conn._call(method, uuid=self.uuid, **params)

    @property
    def usage_type(self) -> SecretUsageType:
        """What the secret is for (libvirt's ``virSecretGetUsageType``)."""
        return self._ref.usage_type

    @property
    def usage_id(self) -> str:
        """The volume path, Ceph/TLS/vTPM name or iSCSI target it is for ("" if none)."""
        return self._ref.usage_id

    async def xml_desc(self) -> str:
        """The secret's XML (never its value)."""
        return await self._call("secret_xml_desc")

    async def set_value(self, value: bytes) -> None:
        """Set the value (written to disk unless the secret is ephemeral)."""
        await self._call("secret_set_value", value=value)

    async def get_value(self) -> bytes:
        """The value. A private secret's is never given (InvalidSecretError), nor is any
        to a read-only daemon connection (OperationDeniedError); NoSecretError if unset."""
        return await self._call("secret_get_value")

    async def undefine(self) -> None:
        """Remove the secret and its value."""
        await self._call("secret_undefine")
