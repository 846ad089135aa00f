"""The QEMU hypervisor driver (embedded: ``qemu:///embed?root=DIR``).

The driver keeps the table of domains (persistent ones from ``ROOT/etc/qemu``, transient
ones while they run), serialises state-changing calls per domain (libvirt's "jobs"), and
starts a :class:`~.runner.QemuRunner` in the connection's nursery for each QEMU process.

Some calls deliberately bypass the per-domain job lock so that a QEMU that stopped answering
cannot block them: ``destroy()`` (it needs only signals), and ``state()``, ``info()`` and
``list_all_domains()`` (they read what the supervisor already knows).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shlex
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
import trio_asyncio  # type: ignore[import-untyped]  # ships no type information

from ... import config as config_mod
from ... import fsutil
from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.names import canonical_uuid
from ...errors import (
    AsvirtError,
    ConfigUnsupportedError,
    DomainExistsError,
    InvalidArgError,
    NoConnectError,
    NoDomainError,
    OperationInvalidError,
    ResourceBusyError,
    XMLError,
)
from ...events import DefinedDetail, EventKind, LifecycleEvent, UndefinedDetail
from ...log import get_logger
from ...states import DomainState, PausedReason, ShutoffReason, StateReason
from .. import rules
from ..base import DomainInfo, DomainRef, DriverContext, OpenedDrivers
from . import process
from .capabilities import (
    CapabilitiesCache,
    QemuCapabilities,
    capabilities_xml,
    find_emulator,
    host_arch,
    kvm_usable,
)
from .command import domxml_to_native
from .monitor import asyncio_loop
from .paths import EmbedPaths
from .postparse import parse_prepared_xml, prepare_domain
from .runner import QemuRunner, RunMode
from .status import StatusRecord

log = get_logger("asvirt.qemu")


class DomainObject:
    """The driver's record of one domain."""

    def __init__(self, name: str, uuid: str, persistent_def: DomainDef | None) -> None:
        self.name = name
        self.uuid = uuid
        #: The configuration for the next boot; None for a transient domain.
        self.persistent_def = persistent_def
        #: The supervisor of the running QEMU; None while shut off.
        self.runner: QemuRunner | None = None
        self.shutoff_reason: ShutoffReason = ShutoffReason.UNKNOWN
        #: Serialises state-changing calls (start, suspend, ...), like libvirt's domain jobs.
        self.job = trio.Lock()

    @property
    def active(self) -> bool:
        return self.runner is not None

    def ref(self) -> DomainRef:
        return DomainRef(self.name, self.uuid)

    def state(self) -> tuple[DomainState, StateReason]:
        if self.runner is not None:
            return self.runner.state
        return DomainState.SHUTOFF, self.shutoff_reason


class QemuDriver:
    """The embedded QEMU driver of one connection."""

    def __init__(
        self,
        ctx: DriverContext,
        paths: EmbedPaths,
        config: config_mod.Config,
        loop: trio_asyncio.TrioEventLoop,
    ) -> None:
        self.paths = paths
        self.config = config
        self.loop = loop
        self.bus = ctx.bus
        self.nursery = ctx.nursery
        self._caps = CapabilitiesCache(
            paths.capabilities_dir, loop, timeout=config.qemu.startup_timeout
        )
        self._domains: dict[str, DomainObject] = {}
        self._table_lock = trio.Lock()
        self._next_id = 1

    # -- start-up and shut-down -----------------------------------------------------------------

    async def load(self) -> None:
        """Read persistent configs, then re-attach to QEMUs that outlived the last connection."""
        for path in sorted(self.paths.config_dir.glob("*.xml")):
            try:
                defn = parse_prepared_xml(path.read_bytes())
            except (XMLError, OSError) as err:
                log.error("ignoring unreadable domain config", path=str(path), error=str(err))
                continue
            if defn.name != path.stem:
                log.error(
                    "ignoring domain config whose name differs from its file name",
                    path=str(path),
                    name=defn.name,
                )
                continue
            obj = DomainObject(defn.name, defn.uuid, defn)
            obj.shutoff_reason = self._load_shutoff_reason(defn.name)
            self._domains[defn.uuid] = obj
        records = []
        for path in sorted(self.paths.run_dir.glob("*.status")):
            try:
                records.append(StatusRecord.load(path))
            except (OSError, ValueError, TypeError) as err:
                log.error("ignoring unreadable status file", path=str(path), error=str(err))
                fsutil.remove(path)
        self._next_id = max((r.domain_id for r in records), default=0) + 1
        for record in records:
            await self._reattach(record)

    async def _reattach(self, record: StatusRecord) -> None:
        obj = self._domains.get(record.uuid)
        try:
            live_def = parse_prepared_xml(record.live_xml)
        except XMLError as err:
            log.error("cannot re-attach: bad status", domain=record.name, error=str(err))
            fsutil.remove(self.paths.status(record.name))
            return
        if obj is None:
            obj = DomainObject(record.name, record.uuid, None)
            self._domains[obj.uuid] = obj
        runner = QemuRunner(
            self, obj, live_def, domain_id=record.domain_id, autodestroy=record.autodestroy
        )
        obj.runner = runner
        try:
            await self.nursery.start(functools.partial(runner.run, RunMode.ATTACH, record=record))
        except (AsvirtError, OSError) as err:
            # The runner has reported the domain as stopped (STOPPED/FAILED).
            log.info(
                "domain stopped while unsupervised", domain=record.name, reason=type(err).__name__
            )
            return
        if record.autodestroy:
            # The connection that asked for autodestroy is gone for good.
            await self.domain_destroy(obj.uuid)

    async def close(self) -> None:
        """Destroy autodestroy domains, then detach from every other running QEMU."""
        runners = [obj.runner for obj in self._domains.values() if obj.runner is not None]
        for runner in runners:
            if runner.autodestroy and not runner.done.is_set():
                runner.machine.destroying = True
                await runner.terminate(grace=self.config.qemu.destroy_grace)
        for runner in runners:
            runner.cancel()
        for runner in runners:
            await runner.done.wait()

    # -- helpers --------------------------------------------------------------------------------

    async def capabilities_for(self, defn: DomainDef) -> QemuCapabilities:
        binary = defn.emulator or find_emulator(defn.arch)
        return await self._caps.get(binary)

    def _obj(self, uuid: str) -> DomainObject:
        obj = self._domains.get(uuid)
        if obj is None:
            raise NoDomainError(f"no domain with matching uuid '{uuid}'")
        return obj

    def _runner(self, obj: DomainObject) -> QemuRunner:
        if obj.runner is None:
            raise OperationInvalidError(f"domain '{obj.name}' is not running")
        return obj.runner

    def _by_name(self, name: str) -> DomainObject | None:
        for obj in self._domains.values():
            if obj.name == name:
                return obj
        return None

    def _publish_lifecycle(self, obj: DomainObject, type_: LifecycleEvent, detail: Any) -> None:
        self.bus.publish(
            domain=obj.name, uuid=obj.uuid, kind=EventKind.LIFECYCLE, type=type_, detail=detail
        )

    def domain_stopped(self, obj: DomainObject, runner: QemuRunner, reason: ShutoffReason) -> None:
        """Called by a runner once its QEMU is gone (or failed to start)."""
        if obj.runner is runner:
            obj.runner = None
        obj.shutoff_reason = reason
        if obj.persistent_def is None and obj.runner is None:
            self._domains.pop(obj.uuid, None)  # transient domains vanish when they stop
        elif obj.runner is None:
            # Later connections (the next CLI command) can still say why it stopped.
            try:
                fsutil.atomic_write(
                    self.paths.shutoff(obj.name), reason.name.encode(), durable=False
                )
            except OSError as err:
                log.warning("cannot record shutoff reason", domain=obj.name, error=str(err))

    def _load_shutoff_reason(self, name: str) -> ShutoffReason:
        try:
            return ShutoffReason[self.paths.shutoff(name).read_text().strip()]
        except (OSError, KeyError):
            return ShutoffReason.UNKNOWN

    async def _prepared(self, xml: str) -> DomainDef:
        defn = parse_domain_xml(xml)
        caps = await self.capabilities_for(defn)
        return prepare_domain(defn, caps)

    def _check_conflicts(self, defn: DomainDef) -> DomainObject | None:
        """The existing domain ``defn`` redefines, or None; DomainExistsError on a clash."""
        by_uuid = self._domains.get(defn.uuid)
        by_name = self._by_name(defn.name)
        rules.check_define_clash(
            defn.name,
            defn.uuid,
            name_of_uuid=by_uuid.name if by_uuid is not None else None,
            uuid_of_name=by_name.uuid if by_name is not None else None,
        )
        return by_uuid

    # -- connection-level calls -----------------------------------------------------------------

    def hostname(self) -> str:
        return socket.gethostname()

    async def capabilities_xml(self) -> str:
        caps = await self._caps.get(find_emulator(host_arch()))
        return capabilities_xml(caps, kvm_ok=kvm_usable()[0])

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        if native_format != "qemu-argv":
            raise InvalidArgError(f"unsupported native format '{native_format}' (use qemu-argv)")
        defn = parse_domain_xml(xml)
        caps = await self.capabilities_for(defn)
        argv = domxml_to_native(xml, caps, monitor_path=str(self.paths.monitor(defn.name)))
        return shlex.join(argv)

    async def domain_xml_normalize(self, xml: str) -> str:
        return (await self._prepared(xml)).to_xml()

    async def define_xml(self, xml: str) -> DomainRef:
        defn = await self._prepared(xml)
        async with self._table_lock:
            obj = self._check_conflicts(defn)
            data = defn.to_xml().encode()
            await trio.to_thread.run_sync(fsutil.atomic_write, self.paths.config(defn.name), data)
            if obj is None:
                obj = DomainObject(defn.name, defn.uuid, defn)
                self._domains[obj.uuid] = obj
                detail = DefinedDetail.ADDED
            else:
                detail = (
                    DefinedDetail.UPDATED if obj.persistent_def is not None else DefinedDetail.ADDED
                )
                obj.persistent_def = defn
        log.info("domain defined", domain=defn.name, uuid=defn.uuid, detail=detail.name.lower())
        self._publish_lifecycle(obj, LifecycleEvent.DEFINED, detail)
        return obj.ref()

    async def create_xml(self, xml: str, *, paused: bool, autodestroy: bool) -> DomainRef:
        defn = await self._prepared(xml)
        async with self._table_lock:
            obj = self._check_conflicts(defn)
            if obj is not None and obj.active:
                raise DomainExistsError(f"domain '{defn.name}' is already running")
            if obj is None:
                obj = DomainObject(defn.name, defn.uuid, None)
                self._domains[obj.uuid] = obj
        async with obj.job:
            await self._launch(obj, defn, paused=paused, autodestroy=autodestroy)
        return obj.ref()

    async def lookup_by_name(self, name: str) -> DomainRef:
        obj = self._by_name(name) if isinstance(name, str) else None
        if obj is None:
            raise NoDomainError(f"no domain with matching name '{name}'")
        return obj.ref()

    async def lookup_by_uuid(self, uuid: str) -> DomainRef:
        return self._obj(canonical_uuid(uuid)).ref()

    async def list_all_domains(
        self, *, active: bool | None, persistent: bool | None
    ) -> list[DomainRef]:
        return [
            obj.ref()
            for obj in sorted(self._domains.values(), key=lambda o: o.name)
            if (active is None or obj.active == active)
            and (persistent is None or (obj.persistent_def is not None) == persistent)
        ]

    # -- domain lifecycle -----------------------------------------------------------------------

    async def _launch(
        self, obj: DomainObject, live_def: DomainDef, *, paused: bool, autodestroy: bool
    ) -> None:
        if live_def.domain_type == "kvm":
            ok, why = kvm_usable()
            if not ok:
                raise ConfigUnsupportedError(
                    f"domain '{obj.name}' requires KVM, but it is not available: {why}. "
                    "Use <domain type='qemu'> to run it with TCG emulation."
                )
        runner = QemuRunner(self, obj, live_def, domain_id=self._next_id, autodestroy=autodestroy)
        self._next_id += 1
        obj.runner = runner
        try:
            await self.nursery.start(functools.partial(runner.run, RunMode.LAUNCH, paused=paused))
        except BaseException:
            if obj.runner is runner:  # the runner never got going (e.g. the connection closed)
                self.domain_stopped(obj, runner, ShutoffReason.FAILED)
            raise

    async def domain_start(self, uuid: str, *, paused: bool, autodestroy: bool) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            if obj.active:
                raise OperationInvalidError(f"domain '{obj.name}' is already running")
            assert obj.persistent_def is not None  # inactive transient domains do not exist
            fsutil.remove(self.paths.shutoff(obj.name))
            await self._launch(
                obj, obj.persistent_def.copy(), paused=paused, autodestroy=autodestroy
            )

    async def domain_suspend(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            runner = self._runner(obj)
            if rules.needs_suspend(obj.name, runner.machine.state):
                runner.machine.pause_hint = PausedReason.USER
                await runner.execute("stop")

    async def domain_resume(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            runner = self._runner(obj)
            if rules.needs_resume(obj.name, runner.machine.state):
                await runner.execute("cont")

    async def domain_shutdown(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            runner = self._runner(obj)
            rules.require_state(obj.name, runner.machine.state, *rules.SHUTDOWN_STATES)
            await runner.execute("system_powerdown")

    async def domain_reboot(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            runner = self._runner(obj)
            rules.require_state(obj.name, runner.machine.state, *rules.REBOOT_STATES)
            runner.machine.fake_reboot = True
            runner.mark_dirty()
            try:
                await runner.execute("system_powerdown")
            except BaseException:
                runner.machine.fake_reboot = False
                raise

    async def domain_reset(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job:
            await self._runner(obj).execute("system_reset")

    async def domain_destroy(self, uuid: str) -> None:
        # No job lock: destroy must work while another call waits on a hung QEMU.
        obj = self._obj(uuid)
        runner = self._runner(obj)
        runner.machine.destroying = True
        await runner.terminate(grace=self.config.qemu.destroy_grace)

    async def domain_undefine(self, uuid: str) -> None:
        obj = self._obj(uuid)
        async with obj.job, self._table_lock:
            if obj.persistent_def is None:
                raise OperationInvalidError(f"cannot undefine transient domain '{obj.name}'")
            await trio.to_thread.run_sync(fsutil.remove, self.paths.config(obj.name))
            fsutil.remove(self.paths.shutoff(obj.name))
            await trio.to_thread.run_sync(fsutil.fsync_dir, self.paths.config_dir)
            obj.persistent_def = None
            if obj.runner is None:
                self._domains.pop(obj.uuid, None)
            else:
                obj.runner.mark_dirty()  # the status file records persistence
        log.info("domain undefined", domain=obj.name, uuid=obj.uuid)
        self._publish_lifecycle(obj, LifecycleEvent.UNDEFINED, UndefinedDetail.REMOVED)

    # -- inspection -----------------------------------------------------------------------------

    async def domain_state(self, uuid: str) -> tuple[DomainState, StateReason]:
        return self._obj(uuid).state()

    async def domain_info(self, uuid: str) -> DomainInfo:
        obj = self._obj(uuid)
        state, _ = obj.state()
        runner = obj.runner
        if runner is not None:
            d = runner.live_def
            memory = runner.machine.balloon_kib or d.current_memory_kib
            cpu = process.cpu_time_ns(runner.pid) if runner.pid else 0
        else:
            assert obj.persistent_def is not None
            d = obj.persistent_def
            memory, cpu = d.current_memory_kib, 0
        return DomainInfo(
            state=state,
            max_memory_kib=d.memory_kib,
            memory_kib=memory,
            vcpus=d.vcpus,
            cpu_time_ns=cpu,
        )

    async def domain_xml_desc(self, uuid: str, *, inactive: bool) -> str:
        obj = self._obj(uuid)
        if obj.runner is not None and not (inactive and obj.persistent_def is not None):
            return obj.runner.live_xml()
        assert obj.persistent_def is not None
        return obj.persistent_def.to_xml()

    async def domain_qmp(self, uuid: str, command: str, arguments: dict[str, Any] | None) -> Any:
        if not isinstance(command, str) or not command:
            raise InvalidArgError("the QMP command must be a non-empty string")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidArgError("QMP arguments must be a dict")
        obj = self._obj(uuid)
        return await self._runner(obj).execute(command, arguments)

    async def domain_is_active(self, uuid: str) -> bool:
        return self._obj(uuid).active

    async def domain_is_persistent(self, uuid: str) -> bool:
        return self._obj(uuid).persistent_def is not None

    async def domain_id(self, uuid: str) -> int | None:
        runner = self._obj(uuid).runner
        return runner.domain_id if runner is not None else None


@contextlib.asynccontextmanager
async def open_qemu(ctx: DriverContext) -> AsyncIterator[OpenedDrivers]:
    """Open the QEMU driver family for ``ctx.uri``."""
    uri = ctx.uri
    if uri.host:
        raise NoConnectError(f"'{uri.uri}': remote hosts are not supported")
    if uri.path in ("/session", "/system"):
        raise NoConnectError(
            f"'{uri.uri}' is served by the asvirtd daemon, which is not available yet; "
            "use qemu:///embed?root=DIR"
        )
    if uri.path != "/embed":
        raise NoConnectError(f"'{uri.uri}': unknown QEMU driver path (use qemu:///embed?root=DIR)")
    root_param = uri.param("root")
    if not root_param or not os.path.isabs(root_param):
        raise NoConnectError(f"'{uri.uri}': root= must be an absolute directory path")
    unknown = set(uri.params) - {"root"}
    if unknown:
        raise NoConnectError(f"'{uri.uri}': unknown parameter(s): {', '.join(sorted(unknown))}")
    paths = EmbedPaths(Path(root_param))
    try:
        paths.create()
    except OSError as err:
        raise NoConnectError(f"cannot use '{root_param}' as embed root: {err.strerror}") from None
    config = ctx.config or config_mod.load_for_root(paths.root)
    lock_fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResourceBusyError(
                f"the embed root '{root_param}' is in use by another connection"
            ) from None
        async with asyncio_loop() as loop:
            driver = QemuDriver(ctx, paths, config, loop)
            try:
                await driver.load()
                yield OpenedDrivers(hypervisor=driver)
            finally:
                with trio.CancelScope(shield=True):
                    await driver.close()
    finally:
        os.close(lock_fd)  # releases the lock


__all__ = ["DomainObject", "QemuDriver", "open_qemu"]
