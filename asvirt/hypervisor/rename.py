"""Renaming a shut-off persistent domain, once for every hypervisor (libvirt's
``virDomainRename``, virsh domrename).

As libvirt: only a persistent domain that is shut off, without a managed save image or
snapshots (their metadata is kept under the name), to a name no other domain has. The
backend records the rename, stores the configuration under the new name (and the autostart
mark) before it removes the old ones, and a rename cut short is completed when the node next
opens; then the table renames the domain, and two LIFECYCLE events follow:
UNDEFINED/RENAMED under the old name, DEFINED/RENAMED under the new one. The UUID, the
disks, an NVRAM file (its path is in the definition) and the log stay as they are.
"""

from __future__ import annotations

from ..conf.names import validate_name
from ..errors import OperationInvalidError
from ..events import EventKind, LifecycleEvent
from ..events.types import DefinedDetail, UndefinedDetail
from ..log import get_logger
from .driver_base import DomainDriverBase

log = get_logger("asvirt.domain")


class RenameCalls(DomainDriverBase):
    """domain_rename of the shared domain driver (a mixin of
    :class:`~.domain_driver.DomainDriver`)."""

    async def domain_rename(self, uuid: str, new_name: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj, self.table.lock:
            if obj.active:
                raise OperationInvalidError("cannot rename active domain")
            if obj.persistent_def is None:
                raise OperationInvalidError("cannot rename a transient domain")
            if obj.managed_save:
                raise OperationInvalidError("domain with a managed saved state can't be renamed")
            if obj.snapshots:
                raise OperationInvalidError("cannot rename domain with snapshots")
            if new_name == obj.name:
                raise OperationInvalidError("Can't rename domain to itself")
            if self.table.has_name(new_name):
                raise OperationInvalidError(f"domain with name '{new_name}' already exists")
            validate_name(new_name)
            renamed = obj.persistent_def.copy()
            renamed.name = new_name
            await self.backend.rename_config(obj, renamed)
            old_name = obj.name
            self.table.rename(obj, new_name)
            obj.persistent_def = renamed
        log.info("domain renamed", domain=new_name, old=old_name, uuid=obj.uuid)
        for name, type_, detail in (
            (old_name, LifecycleEvent.UNDEFINED, UndefinedDetail.RENAMED),
            (new_name, LifecycleEvent.DEFINED, DefinedDetail.RENAMED),
        ):
            self.bus.publish(
                domain=name, uuid=obj.uuid, kind=EventKind.LIFECYCLE, type=type_, detail=detail
            )


__all__ = ["RenameCalls"]
