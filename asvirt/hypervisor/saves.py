"""Saving a running domain to a file and restoring it, once for every hypervisor.

``dom.save(path)`` pauses the guest, writes its definition and memory state to a save image
(:mod:`.saveimage`: the driver's state stream, QEMU's migration stream, after a header and
the XML), and stops it: SUSPENDED/PAUSED (if it ran), then STOPPED/SAVED. The image is
written atomically: if it cannot be completed and kept, the guest runs on as before.
``conn.restore(path)`` starts the domain the image describes from its state: STARTED/RESTORED,
then SUSPENDED/RESTORED if it was saved paused (SUSPENDED/PAUSED if asked to stay paused). A
domain that does not exist is restored as a transient one; an existing one must be shut off.

``dom.managed_save()`` is a save to an image the node keeps for the domain (the QEMU driver in
``ROOT/lib/qemu/save/NAME.save``, as libvirt's ``/var/lib/libvirt/qemu/save``); the domain's
next ``start()`` restores it (STARTED/RESTORED) and removes the image, unless
``force_boot``. Undefining a domain that has one is refused unless asked to remove it too.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

import trio

from ..conf.domain import DomainDef, hide_secrets
from ..drivers.base import DomainRef, ProgressCallback
from ..errors import InvalidArgError, OperationInvalidError, OperationUnsupportedError
from ..log import get_logger
from ..states import DomainState
from .domains import DomainObj
from .driver_base import DomainDriverBase
from .guest_state import FromImage, StopCause, stateful
from .saveimage import FileSink, ImageSink, SaveHeader, open_image, read_header
from .volumes import resolve_volumes

if TYPE_CHECKING:
    from .domain_driver import StartableRuntime

log = get_logger("asvirt.save")


def _check_flags(running: bool, paused: bool) -> None:
    if running and paused:
        raise InvalidArgError("running and paused are mutually exclusive")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SaveCalls(DomainDriverBase):
    """The save and restore calls of the shared domain driver (a mixin of
    :class:`DomainDriver`)."""

    async def domain_save(
        self,
        uuid: str,
        path: str,
        xml: str | None = None,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Save the domain's guest to the image ``path`` and stop it (see the module
        docstring). ``xml`` replaces the definition kept in the image (the same domain,
        differing only in what a restore may change); ``running``/``paused`` say what a
        restore does, instead of resuming it if it ran."""
        _check_flags(running, paused)
        obj = self.table.get(uuid)
        sink = await trio.to_thread.run_sync(FileSink, path)
        await self._save(obj, sink, xml, running=running, paused=paused, progress=progress)
        log.info("domain saved", domain=obj.name, uuid=obj.uuid, path=path)

    async def domain_managed_save(
        self,
        uuid: str,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Save the domain's guest to the node's image for it and stop it; its next start
        restores it."""
        _check_flags(running, paused)
        obj = self.table.get(uuid)
        if not obj.persistent:
            raise OperationInvalidError(f"cannot do managed save for transient domain '{obj.name}'")
        sink = self.backend.managed_save_sink(obj)
        await self._save(
            obj, sink, None, running=running, paused=paused, progress=progress, managed=True
        )
        log.info("domain saved (managed)", domain=obj.name, uuid=obj.uuid)

    async def _save(
        self,
        obj: DomainObj,
        sink: ImageSink,
        xml: str | None,
        *,
        running: bool,
        paused: bool,
        progress: ProgressCallback | None,
        managed: bool = False,
    ) -> None:
        committed = False
        try:
            async with self.table.job(obj):
                runtime = stateful(self._runtime(obj))
                state = runtime.state[0]
                if state not in (DomainState.RUNNING, DomainState.PAUSED):
                    raise OperationInvalidError(
                        f"cannot save domain '{obj.name}': it is {state.label}"
                    )
                if xml is not None:
                    xml = (await self._same_domain(obj.name, obj.uuid, xml)).to_xml()
                header = SaveHeader(
                    xml=xml or runtime.live_def.to_xml(),
                    running=running or (not paused and state is DomainState.RUNNING),
                    driver=self.backend.image_driver,
                )
                await trio.to_thread.run_sync(_write_all, sink.fd, header.encode())
                await runtime.save_state(sink.fd, progress=progress)
                try:
                    await trio.to_thread.run_sync(sink.commit)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await runtime.resume_after_save(running=state is DomainState.RUNNING)
                    raise
                committed = True
                obj.managed_save = obj.managed_save or managed
                await runtime.stop(StopCause.SAVED)
        finally:
            if not committed:
                sink.discard()

    async def _same_domain(self, name: str, uuid: str, xml: str) -> DomainDef:
        """``xml`` parsed, if it describes the domain ``name``/``uuid`` (a save image's
        definition may be replaced only by one of the same domain)."""
        defn = await self.backend.parse(xml)
        if defn.name != name or defn.uuid != uuid:
            raise InvalidArgError(
                f"the XML describes domain '{defn.name}' ({defn.uuid}), not '{name}' ({uuid}): "
                "a saved domain's definition can only be replaced by its own"
            )
        return defn

    async def restore(
        self,
        path: str,
        xml: str | None = None,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DomainRef:
        """Start the domain saved in the image ``path`` from its saved state (see the module
        docstring); ``xml`` replaces the definition in the image (the same domain)."""
        _check_flags(running, paused)
        fd = await trio.to_thread.run_sync(open_image, path)
        try:
            header = await trio.to_thread.run_sync(
                functools.partial(read_header, fd, what=f"'{path}'")
            )
            self._check_driver(header, f"'{path}'")
            defn = await self.backend.parse(header.xml)
            if xml is not None:
                defn = await self._same_domain(defn.name, defn.uuid, xml)
            await resolve_volumes(defn, self.storage)
            ref = await self._restore_new(
                defn, fd, header, running=running, paused=paused, progress=progress
            )
        finally:
            os.close(fd)
        log.info("domain restored", domain=ref.name, uuid=ref.uuid, path=path)
        return ref

    def _check_driver(self, header: SaveHeader, what: str) -> None:
        if header.driver != self.backend.image_driver:
            raise OperationUnsupportedError(
                f"{what} was saved by asvirt's {header.driver} driver; this node's driver "
                f"({self.backend.image_driver}) cannot restore it"
            )

    async def _restore_new(
        self,
        defn: DomainDef,
        fd: int,
        header: SaveHeader,
        *,
        running: bool,
        paused: bool,
        progress: ProgressCallback | None,
    ) -> DomainRef:
        """Restore into the domain ``defn`` names, a new transient one if none exists."""

        async def start(obj: DomainObj, runtime: StartableRuntime) -> None:
            await self._start_restored(
                obj, runtime, fd, header, running=running, paused=paused, progress=progress
            )

        return await self._start_new_or_inactive(
            defn,
            owner=None,
            start=start,
            running=lambda name: OperationInvalidError(f"domain '{name}' is already running"),
        )

    async def _start_restored(
        self,
        obj: DomainObj,
        runtime: StartableRuntime,
        fd: int,
        header: SaveHeader,
        *,
        running: bool,
        paused: bool,
        progress: ProgressCallback | None,
    ) -> None:
        size = max(0, (await trio.to_thread.run_sync(os.fstat, fd)).st_size - header.data_offset)
        stay_paused = paused or (not running and not header.running)
        origin = FromImage(fd, header.data_offset, size, saved_paused=not paused, progress=progress)
        await self._start(obj, runtime, paused=stay_paused, origin=origin)

    async def start_managed_save(
        self, obj: DomainObj, *, paused: bool, owner: object | None
    ) -> None:
        """Start ``obj`` (its job held, shut off) from its managed save image, which is
        removed once the guest runs again."""
        fd = await trio.to_thread.run_sync(self.backend.managed_save_open, obj)
        try:
            what = f"the managed save image of domain '{obj.name}'"
            header = await trio.to_thread.run_sync(functools.partial(read_header, fd, what=what))
            self._check_driver(header, what)
            defn = await self._same_domain(obj.name, obj.uuid, header.xml)
            await resolve_volumes(defn, self.storage)
            runtime = self._new_runtime(obj, defn, owner=owner)
            await self._start_restored(
                obj, runtime, fd, header, running=False, paused=paused, progress=None
            )
        finally:
            os.close(fd)
        await self._forget_managed_save(obj)
        log.info("domain restored from its managed save", domain=obj.name, uuid=obj.uuid)

    async def _forget_managed_save(self, obj: DomainObj) -> None:
        await trio.to_thread.run_sync(self.backend.managed_save_remove, obj)
        obj.managed_save = False

    async def domain_has_managed_save_image(self, uuid: str) -> bool:
        return self.table.get(uuid).managed_save

    async def domain_managed_save_remove(self, uuid: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            if obj.managed_save:
                await self._forget_managed_save(obj)

    async def save_image_get_xml_desc(self, path: str, secure: bool = False) -> str:
        """The domain definition a save image holds (``secure``: with its secrets)."""
        fd = await trio.to_thread.run_sync(open_image, path)
        try:
            header = await trio.to_thread.run_sync(
                functools.partial(read_header, fd, what=f"'{path}'")
            )
        finally:
            os.close(fd)
        return header.xml if secure else hide_secrets(header.xml)


__all__ = ["SaveCalls"]
