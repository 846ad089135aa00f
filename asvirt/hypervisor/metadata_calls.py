"""A domain's title, description and metadata elements, once for every hypervisor (libvirt's
``virDomainSetMetadata`` and ``virDomainGetMetadata``; the XML rules are
:mod:`asvirt.conf.metadata`'s).

A change is checked on every definition it affects before any is changed, then made in the
running guest's live XML (``live``) and/or the stored configuration (``config``), and
announced by one METADATA_CHANGE event, as libvirt does.
"""

from __future__ import annotations

import trio

from ..conf.metadata import get_metadata, set_metadata
from ..conf.metadata_type import MetadataType
from ..errors import InvalidArgError
from ..events.types import EventKind
from .driver_base import DomainDriverBase


class MetadataCalls(DomainDriverBase):
    """Metadata calls of the shared domain driver (a mixin of
    :class:`~.domain_driver.DomainDriver`)."""

    async def domain_set_metadata(
        self,
        uuid: str,
        type: MetadataType,
        metadata: str | None,
        key: str | None,
        uri: str | None,
        live: bool,
        config: bool,
    ) -> None:
        kind = MetadataType(type)
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            new_live = new_config = None
            if live:
                new_live = self._runtime(obj).live_def.copy()
                set_metadata(new_live, kind, metadata, key, uri)
            if config:
                assert obj.persistent_def is not None
                new_config = obj.persistent_def.copy()
                set_metadata(new_config, kind, metadata, key, uri)
            if new_live is not None:
                await self._runtime(obj).set_metadata(new_live)
            if new_config is not None:
                await self._store_config(obj, new_config)
            self.bus.publish(
                domain=obj.name,
                uuid=obj.uuid,
                kind=EventKind.METADATA_CHANGE,
                data={
                    "type": int(kind),
                    "nsuri": uri if kind is MetadataType.ELEMENT else None,
                },
            )

    async def domain_get_metadata(
        self, uuid: str, type: MetadataType, uri: str | None, live: bool, config: bool
    ) -> str:
        if live and config:
            raise InvalidArgError("the live and config flags are mutually exclusive")
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        live, config = self._affected(obj, live, config)
        if live:
            definition = self._runtime(obj).live_def
        else:
            assert obj.persistent_def is not None
            definition = obj.persistent_def
        return get_metadata(definition, MetadataType(type), uri)


__all__ = ["MetadataCalls"]
