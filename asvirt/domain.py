"""Domains: handles to virtual machines.

A :class:`Domain` is a handle, like libvirt's ``virDomainPtr``: it names a domain (by name and
UUID) on a connection and forwards every call to the connection's hypervisor driver. It stays
valid while the domain exists; calls on a domain that has been undefined and stopped raise
:class:`~asvirt.NoDomainError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .drivers.base import DomainInfo, DomainRef
from .handle import Handle
from .states import DomainState, StateReason

if TYPE_CHECKING:
    from .hypervisor.domain_driver import DomainDriver


class Domain(Handle):
    """A virtual machine known to a connection."""

    __slots__ = ()
    _ref: DomainRef

    def _hv(self) -> DomainDriver:
        return self._conn._hv()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, *, paused: bool = False, autodestroy: bool = False) -> None:
        """Start a defined, shut-off domain (STARTED/BOOTED; with ``paused``, SUSPENDED/PAUSED).

        ``autodestroy=True`` destroys it when this connection closes.
        """
        owner = self._conn if autodestroy else None
        await self._hv().domain_start(self.uuid, paused=paused, owner=owner)

    async def suspend(self) -> None:
        """Pause the vCPUs (SUSPENDED/PAUSED). A no-op on a domain that is already paused."""
        await self._hv().domain_suspend(self.uuid)

    async def resume(self) -> None:
        """Resume paused vCPUs (RESUMED/UNPAUSED). A no-op on a running domain."""
        await self._hv().domain_resume(self.uuid)

    async def shutdown(self) -> None:
        """Ask the guest to shut down (ACPI power button). Returns once requested.

        The guest decides; watch for SHUTDOWN and STOPPED events, or :meth:`destroy`.
        """
        await self._hv().domain_shutdown(self.uuid)

    async def reboot(self) -> None:
        """Ask the guest to reboot: an ACPI power button press that is turned into a reset
        once the guest has shut down, as libvirt does. Returns once requested."""
        await self._hv().domain_reboot(self.uuid)

    async def reset(self) -> None:
        """Reset the virtual hardware at once, without asking the guest."""
        await self._hv().domain_reset(self.uuid)

    async def destroy(self) -> None:
        """Stop the domain at once: SIGTERM to QEMU, SIGKILL after a grace period.

        Returns once QEMU is gone and the domain is shut off (STOPPED/DESTROYED).
        """
        await self._hv().domain_destroy(self.uuid)

    async def undefine(self, *, nvram: bool = False, keep_tpm: bool = False) -> None:
        """Remove the persistent configuration (UNDEFINED/REMOVED).

        A running domain keeps running, as a transient domain that vanishes when it stops.
        A UEFI domain's NVRAM file is removed with ``nvram=True``; without it, undefining a
        domain that has one is refused (OperationInvalidError), as in libvirt. An emulated
        TPM's state is removed too, unless ``keep_tpm=True``.
        """
        await self._hv().domain_undefine(self.uuid, nvram=nvram, keep_tpm=keep_tpm)

    # -- inspection ----------------------------------------------------------------------------

    async def state(self) -> tuple[DomainState, StateReason]:
        """The current state and the reason for it. Never waits for QEMU."""
        return await self._hv().domain_state(self.uuid)

    async def info(self) -> DomainInfo:
        """State, memory, vCPUs and CPU time. Never waits for QEMU."""
        return await self._hv().domain_info(self.uuid)

    async def xml_desc(self, *, inactive: bool = False) -> str:
        """The live XML while running, else (or with ``inactive=True``) the persistent one."""
        return await self._hv().domain_xml_desc(self.uuid, inactive=inactive)

    async def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command and return QEMU's ``return`` value (virsh qemu-monitor-command).

        State changes it causes are seen, as any others, through QEMU's events.
        """
        return await self._hv().domain_qmp(self.uuid, command, arguments)

    async def is_active(self) -> bool:
        return await self._hv().domain_is_active(self.uuid)

    async def is_persistent(self) -> bool:
        return await self._hv().domain_is_persistent(self.uuid)

    async def id(self) -> int | None:
        """The runtime id of a running domain (as ``virsh list`` shows), None when shut off."""
        return await self._hv().domain_id(self.uuid)
