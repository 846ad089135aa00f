"""The common shape of the public handles (Domain, Network, StoragePool)."""

from __future__ import annotations

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Protocol

    from .calls import ConnectionCalls

    class _Ref(Protocol):
        @property
        def name(self) -> str: ...

        @property
        def uuid(self) -> str: ...


class Handle:
    """Names an object (by name and UUID) on a connection; equal handles name the same object.

    Like libvirt's ``virDomainPtr`` and friends, a handle holds no state of the object: every
    call goes to the connection's driver.
    """

    __slots__ = ("_conn", "_ref")

    def __init__(self, conn: ConnectionCalls, ref: _Ref) -> None:
        self._conn = conn
        self._ref = ref

    @property
    def connection(self) -> ConnectionCalls:
        return self._conn

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def uuid(self) -> str:
        """The UUID, canonical lowercase (``"c7a5fdbd-edaf-9455-926a-d65c16db1809"``)."""
        return self._ref.uuid

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Handle)
        return self._conn is other._conn and self.uuid == other.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def __repr__(self) -> str:
        return f"<asvirt.{type(self).__name__} {self.name!r} {self.uuid}>"
