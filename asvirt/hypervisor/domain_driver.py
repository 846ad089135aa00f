"""The domain calls of the public API, once for every hypervisor driver.

:class:`DomainDriver` implements what :class:`asvirt.Domain` and the domain calls of
:class:`asvirt.Connection` ask (define, create, lookups, lists, start, suspend, ... info, XML)
on a node's :class:`~.domains.DomainTable`, applying the same rules and publishing the same
events whatever the hypervisor. What differs — how a definition is completed, where it is
stored, how a guest is started — comes from a :class:`HypervisorBackend`; a running guest is a
:class:`~.domains.DomainRuntime` that reports back through :class:`RuntimeCallbacks`.

Some calls deliberately take no job, so that a guest that stopped answering cannot block them:
``destroy()`` (it needs only signals), and ``state()``, ``info()``, ``xml_desc()`` and the
lookups and lists (they read what the supervisor already knows).
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from ..conf.devices import (
    Disk,
    Graphics,
    HotplugDevice,
    Interface,
    parse_copy_destination,
    parse_device_xml,
    parse_update_xml,
)
from ..conf.domain import DomainDef, clone_device
from ..conf.names import canonical_uuid
from ..conf.snapshot import SnapshotDef
from ..conf.tuning import IOTune, iotune_params, iotune_problem, updated_iotune
from ..conf.units import MAX_MEMORY_KIB
from ..drivers.base import (
    BlockInfo,
    BlockJobInfo,
    DomainInfo,
    DomainInterface,
    DomainRef,
    DomainStats,
    HypervisorVersion,
    InterfaceAddress,
    InterfaceAddressSource,
    InterfaceStats,
    IOThreadInfo,
    NetworkDHCPLease,
    NetworkDriver,
    NodeInfo,
    SecretDriver,
    SecurityLabel,
    SecurityModel,
    ShutdownMode,
    StatsGroup,
    StorageDriver,
    VcpuInfo,
)
from ..errors import (
    AsvirtError,
    ConfigUnsupportedError,
    DomainExistsError,
    InvalidArgError,
    NoNetworkError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
)
from ..events import DefinedDetail, EventBus, EventKind, LifecycleEvent, UndefinedDetail
from ..log import get_logger
from ..states import DomainState, ShutoffReason, StateReason
from . import stats as stats_mod
from .agent_calls import AgentCalls
from .consoles import ConsoleCalls
from .domains import DomainObj, DomainRuntime, DomainTable
from .guest_input import GuestInputCalls
from .guest_state import ExternalTarget, SnapshotTarget, StartOrigin, StatefulRuntime
from .hotplug import (
    apply_password,
    apply_update,
    check_graphics_update,
    describe,
    find_device,
    find_graphics,
    remove_device,
    updated_link,
    updated_media,
)
from .metadata_calls import MetadataCalls
from .pinning import (
    check_iothread,
    check_vcpu,
    cpus_of,
    emulator_pin,
    iothread_pins,
    set_emulatorpin,
    set_iothreadpin,
    set_vcpupin,
    vcpu_pins,
)
from .rename import RenameCalls
from .saveimage import ImageSink
from .saves import SaveCalls
from .secrets import check_secrets
from .snapshots import DiskOp, SnapshotCalls, moved_config
from .volumes import resolve_disk, resolve_volumes

log = get_logger("asvirt.domain")

#: States in which the guest can see the ACPI power button (shutdown()).
SHUTDOWN_STATES = (DomainState.RUNNING, DomainState.PAUSED)
#: States in which reboot() makes sense: a paused guest cannot react to the button.
REBOOT_STATES = (DomainState.RUNNING,)


class RuntimeCallbacks:
    """How a running guest reports to the node: the narrow seam between runtime and driver.

    A runtime gets one of these for its domain and calls nothing else of the driver (libvirt's
    ``qemuMonitorCallbacks`` play this part for its monitor).
    """

    __slots__ = ("_driver", "_obj")

    def __init__(self, driver: DomainDriver, obj: DomainObj) -> None:
        self._driver = driver
        self._obj = obj

    @property
    def name(self) -> str:
        return self._obj.name

    @property
    def uuid(self) -> str:
        return self._obj.uuid

    @property
    def persistent(self) -> bool:
        return self._obj.persistent

    def publish(
        self,
        kind: EventKind,
        *,
        type: LifecycleEvent | None = None,
        detail: Any = None,
        data: dict[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> None:
        """Publish an event about this domain on the node's bus (never blocks)."""
        self._driver.bus.publish(
            domain=self._obj.name,
            uuid=self._obj.uuid,
            kind=kind,
            type=type,
            detail=detail,
            data=data,
            timestamp=timestamp,
        )

    def stopped(self, runtime: DomainRuntime, reason: ShutoffReason) -> None:
        """The guest of ``runtime`` is gone (after its STOPPED event, if any, was published)."""
        self._driver.runtime_stopped(self._obj, runtime, reason)

    async def disk_moved(self, target: str, old: str, new: str, fmt: str | None) -> None:
        """The running guest's disk ``target`` moved from image ``old`` onto ``new`` (a
        block job pivoted it)."""
        await self._driver.disk_moved(self._obj, target, old, new, fmt)


class HypervisorBackend(Protocol):
    """What a hypervisor driver supplies to the shared domain calls."""

    def hostname(self) -> str: ...

    async def capabilities_xml(self) -> str: ...

    async def node_info(self) -> NodeInfo: ...

    def host_cpus(self) -> int:
        """How many entries a CPU map has (libvirt's ``virNodeGetCPUMap``): the highest
        present CPU's number + 1. Cheap: pin calls ask it each time."""
        ...

    async def hypervisor_version(self) -> HypervisorVersion: ...

    #: The node's security driver, and the label it gives every domain.
    security_model: SecurityModel
    security_label: SecurityLabel

    def os_type(self, defn: DomainDef) -> str:
        """What ``virDomainGetOSType`` says of a domain defined by ``defn``."""
        ...

    async def domxml_to_native(self, native_format: str, xml: str) -> str: ...

    async def parse(self, xml: str) -> DomainDef:
        """Parse domain XML and complete it as define would store it (post-parse)."""
        ...

    async def save_config(self, defn: DomainDef) -> None:
        """Store a persistent definition durably (before the table shows it)."""
        ...

    async def delete_config(self, obj: DomainObj) -> None:
        """Remove a persistent definition (before the table forgets it)."""
        ...

    async def rename_config(self, obj: DomainObj, defn: DomainDef) -> None:
        """Store ``obj``'s persistent definition under its new name (``defn.name``), with
        what else is kept by name (the autostart mark), and remove the old ones: the new
        are durable before the old go."""
        ...

    def check_undefine(self, obj: DomainObj, *, nvram: bool) -> None:
        """Refuse an undefine that would leave state behind (a UEFI NVRAM without
        ``nvram``), before anything is removed."""
        ...

    async def remove_state(self, obj: DomainObj, *, nvram: bool, keep_tpm: bool) -> None:
        """Remove what the domain keeps besides its config (NVRAM, TPM state)."""
        ...

    def create_runtime(
        self,
        obj: DomainObj,
        live_def: DomainDef,
        *,
        domain_id: int,
        autodestroy: bool,
        callbacks: RuntimeCallbacks,
    ) -> StartableRuntime:
        """A runtime for ``obj`` that will run ``live_def``, not started yet."""
        ...

    def domain_stopped(self, obj: DomainObj, reason: ShutoffReason) -> None:
        """The table has recorded a stop (the QEMU driver keeps the reason on disk)."""
        ...

    async def save_autostart(self, obj: DomainObj, autostart: bool) -> None:
        """Record durably whether a persistent domain starts with its node."""
        ...

    def block_info(self, disk: Disk) -> BlockInfo:
        """The sizes of a disk's image (AsvirtError if it cannot be read)."""
        ...

    async def with_device(self, defn: DomainDef, dev: HotplugDevice) -> DomainDef:
        """A new persistent definition: ``defn`` with ``dev`` (parsed XML) added and
        completed as define completes devices; refuses a clash (same target, same MAC)."""
        ...

    # -- snapshots and save images (asvirt.hypervisor.snapshots, .saves) ----------------------

    #: The name save images give the driver that wrote them (``qemu``, ``test``).
    image_driver: str
    #: The format of a disk whose XML names none, if the driver knows it without reading
    #: the disk (the test driver's simulated disks); None: not known.
    unnamed_disk_format: str | None

    async def snapshot_disks(self, op: DiskOp, name: str, disks: Sequence[SnapshotTarget]) -> None:
        """Create, apply (revert to) or delete the internal snapshot ``name`` in the disks of
        a shut-off domain. A create makes it in every disk or in none; an apply or delete
        first checks that every disk has it."""
        ...

    async def make_overlays(self, disks: Sequence[ExternalTarget]) -> None:
        """Make the overlay of each of a shut-off domain's ``disks`` (those not ``reuse``d)
        over its base: all or none (those made are removed again on a failure)."""
        ...

    async def save_snapshot(self, obj: DomainObj, snap: SnapshotDef, *, current: bool) -> None:
        """Record a snapshot's metadata durably (``current``: it is the current one)."""
        ...

    async def delete_snapshots(self, obj: DomainObj, names: Sequence[str]) -> None:
        """Forget the metadata of these snapshots."""
        ...

    def managed_save_sink(self, obj: DomainObj) -> ImageSink:
        """Where a managed save image of ``obj`` is written (it replaces the domain's image
        once committed)."""
        ...

    def managed_save_open(self, obj: DomainObj) -> int:
        """A descriptor on ``obj``'s managed save image, to read (the caller closes it)."""
        ...

    def managed_save_remove(self, obj: DomainObj) -> None:
        """Remove ``obj``'s managed save image, if any."""
        ...


#: What a backend's runtimes are: they start (from saved state too) and keep snapshots.
StartableRuntime = StatefulRuntime


class DomainDriver(
    SnapshotCalls,
    SaveCalls,
    AgentCalls,
    ConsoleCalls,
    GuestInputCalls,
    MetadataCalls,
    RenameCalls,
):
    """The domain half of a node, shared by every connection to it."""

    def __init__(
        self,
        table: DomainTable,
        bus: EventBus,
        backend: HypervisorBackend,
    ) -> None:
        self.table = table
        self.bus = bus
        self.backend = backend
        #: The node's network driver, if any (interface addresses come from its leases).
        self.network: NetworkDriver | None = None
        #: The node's storage driver, if any (disks that name volumes are resolved at start).
        self.storage: StorageDriver | None = None
        #: The node's secret driver, if any (encrypted disks' and TPMs' secrets, disk auth).
        self.secrets: SecretDriver | None = None

    # -- seams -----------------------------------------------------------------------------------

    def callbacks_for(self, obj: DomainObj) -> RuntimeCallbacks:
        return RuntimeCallbacks(self, obj)

    def runtime_stopped(
        self, obj: DomainObj, runtime: DomainRuntime, reason: ShutoffReason
    ) -> None:
        if obj.runtime is not runtime:
            return
        self.table.stopped(obj, runtime, reason)
        if not obj.removed:
            self.backend.domain_stopped(obj, reason)

    async def disk_moved(
        self, obj: DomainObj, target: str, old: str, new: str, fmt: str | None
    ) -> None:
        """A running disk moved onto another image (a pivot): the configuration's same
        disk, on the same image, follows it, as libvirt rewrites it: the next boot must use
        what the guest has written to since, not the image it left. Takes no job: the
        pivot's caller holds it (or nobody, when a re-attach finds the move)."""
        if obj.persistent_def is None:
            return
        updated = moved_config(obj.persistent_def, {target: (old, new, fmt)})
        if updated is None:
            return
        try:
            await self.backend.save_config(updated)
        except AsvirtError as err:
            log.error(
                "cannot save the configuration after a disk moved",
                domain=obj.name,
                disk=target,
                error=str(err),
            )
            return
        obj.persistent_def = updated

    def _publish_lifecycle(self, obj: DomainObj, type_: LifecycleEvent, detail: Any) -> None:
        self.bus.publish(
            domain=obj.name, uuid=obj.uuid, kind=EventKind.LIFECYCLE, type=type_, detail=detail
        )

    def _runtime(self, obj: DomainObj) -> DomainRuntime:
        if obj.runtime is None:
            raise OperationInvalidError(f"domain '{obj.name}' is not running")
        return obj.runtime

    # -- connection-level calls -----------------------------------------------------------------

    def hostname(self) -> str:
        return self.backend.hostname()

    async def capabilities_xml(self) -> str:
        return await self.backend.capabilities_xml()

    async def node_info(self) -> NodeInfo:
        return await self.backend.node_info()

    async def hypervisor_version(self) -> HypervisorVersion:
        return await self.backend.hypervisor_version()

    async def node_security_model(self) -> SecurityModel:
        return self.backend.security_model

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        if native_format != "qemu-argv":
            raise InvalidArgError(f"unsupported native format '{native_format}' (use qemu-argv)")
        return await self.backend.domxml_to_native(native_format, xml)

    async def domain_xml_normalize(self, xml: str) -> str:
        return (await self.backend.parse(xml)).to_xml()

    async def define_xml(self, xml: str) -> DomainRef:
        defn = await self.backend.parse(xml)
        async with self.table.lock:
            obj = self.table.existing_for(defn)
            await self.backend.save_config(defn)
            if obj is None:
                obj = DomainObj(defn.name, defn.uuid, defn)
                self.table.add(obj)
                detail = DefinedDetail.ADDED
            else:
                detail = DefinedDetail.UPDATED if obj.persistent else DefinedDetail.ADDED
                obj.persistent_def = defn
                if obj.runtime is not None:
                    obj.runtime.persistence_changed()
        log.info(
            "domain defined",
            domain=defn.name,
            uuid=defn.uuid,
            operation="define",
            detail=detail.name.lower(),
        )
        self._publish_lifecycle(obj, LifecycleEvent.DEFINED, detail)
        return DomainRef(obj.name, obj.uuid)

    async def create_xml(
        self, xml: str, *, paused: bool, autodestroy: bool, client: object = None
    ) -> DomainRef:
        defn = await self.backend.parse(xml)
        await resolve_volumes(defn, self.storage)
        check_secrets(defn, self.secrets)

        async def start(obj: DomainObj, runtime: StartableRuntime) -> None:
            await self._start(obj, runtime, paused=paused)

        return await self._start_new_or_inactive(
            defn,
            owner=client if autodestroy else None,
            start=start,
            running=lambda name: DomainExistsError(f"domain '{name}' is already running"),
        )

    async def _start_new_or_inactive(
        self,
        defn: DomainDef,
        *,
        owner: object | None,
        start: Callable[[DomainObj, StartableRuntime], Awaitable[None]],
        running: Callable[[str], AsvirtError],
    ) -> DomainRef:
        """Start ``defn`` (create_xml, a restore) with ``start``: as a new transient domain,
        or as the inactive domain it names; ``running(name)`` is the error for one that runs.

        A new transient domain is active (starting) from the moment it is in the table, and
        its job is held until the start is over; an existing one starts under its job (and
        afresh, as a new one, if it was undefined while the job was awaited)."""
        while True:
            async with self.table.lock:
                obj = self.table.existing_for(defn)
                if obj is None:
                    obj = DomainObj(defn.name, defn.uuid, None)
                    obj._job.acquire_nowait()
                    runtime = self._new_runtime(obj, defn, owner=owner)
                    self.table.add(obj)
                elif obj.active:
                    raise running(obj.name)
                else:
                    runtime = None
            if runtime is not None:
                try:
                    await start(obj, runtime)
                finally:
                    obj._job.release()
                return DomainRef(obj.name, obj.uuid)
            async with obj._job:
                if obj.removed:
                    continue  # undefined meanwhile: start it afresh
                if obj.active:
                    raise running(obj.name)
                await start(obj, self._new_runtime(obj, defn, owner=owner))
                return DomainRef(obj.name, obj.uuid)

    async def lookup_by_name(self, name: str) -> DomainRef:
        obj = self.table.by_name(name)
        return DomainRef(obj.name, obj.uuid)

    async def lookup_by_uuid(self, uuid: str) -> DomainRef:
        obj = self.table.get(canonical_uuid(uuid))
        return DomainRef(obj.name, obj.uuid)

    async def list_all_domains(
        self, *, active: bool | None, persistent: bool | None
    ) -> list[DomainRef]:
        return [
            DomainRef(o.name, o.uuid)
            for o in self.table.matching(active=active, persistent=persistent)
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    def _new_runtime(
        self, obj: DomainObj, live_def: DomainDef, *, owner: object | None
    ) -> StartableRuntime:
        """Make ``obj`` (not active, its job held) active with a runtime for ``live_def``."""
        runtime = self.backend.create_runtime(
            obj,
            live_def,
            domain_id=self.table.allocate_id(),
            autodestroy=owner is not None,
            callbacks=self.callbacks_for(obj),
        )
        obj.runtime = runtime
        obj.autodestroy_owner = owner
        return runtime

    async def _start(
        self,
        obj: DomainObj,
        runtime: StartableRuntime,
        *,
        paused: bool,
        origin: StartOrigin = None,
    ) -> None:
        try:
            await runtime.start(paused=paused, origin=origin)
        except BaseException:
            # The runtime has normally reported its stop already; if it never got going
            # (cancelled before it started), nobody else will.
            self.runtime_stopped(obj, runtime, ShutoffReason.FAILED)
            raise

    async def domain_start(
        self,
        uuid: str,
        *,
        paused: bool,
        autodestroy: bool,
        force_boot: bool = False,
        client: object = None,
    ) -> None:
        owner = client if autodestroy else None
        async with self.table.job(self.table.get(uuid)) as obj:
            if obj.active:
                raise OperationInvalidError(f"domain '{obj.name}' is already running")
            if obj.persistent_def is None:
                raise OperationInvalidError(f"domain '{obj.name}' has no configuration to start")
            if obj.managed_save:
                if not force_boot:
                    # As virsh start: the guest saved by managed_save() runs on.
                    await self.start_managed_save(obj, paused=paused, owner=owner)
                    return
                await self._forget_managed_save(obj)
            live_def = obj.persistent_def.copy()
            await resolve_volumes(live_def, self.storage)
            check_secrets(live_def, self.secrets)
            runtime = self._new_runtime(obj, live_def, owner=owner)
            await self._start(obj, runtime, paused=paused)

    # Calls in the wrong state fail as libvirt's QEMU driver fails them, on every driver (its
    # test driver words some differently, as internal errors): OperationInvalid for a domain
    # that is not running (start: that is), and for resume of a running one; suspend of a
    # paused domain is the one no-op.

    async def domain_suspend(self, uuid: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            state = self._runtime(obj).state[0]
            if state is DomainState.PAUSED:
                return  # already paused: a no-op, as in libvirt's QEMU driver
            if state is not DomainState.RUNNING:
                raise OperationInvalidError(f"domain '{obj.name}' is {state.label}, not running")
            await self._runtime(obj).suspend()

    async def domain_resume(self, uuid: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            state = self._runtime(obj).state[0]
            if state is DomainState.RUNNING:
                # libvirt's words (qemuDomainResume); virsh resume fails with them.
                raise OperationInvalidError("domain is already running")
            if state is not DomainState.PAUSED:
                raise OperationInvalidError(f"domain '{obj.name}' is {state.label}, not paused")
            await self._runtime(obj).resume()

    async def domain_shutdown(self, uuid: str, mode: ShutdownMode = ShutdownMode.DEFAULT) -> None:
        """Ask the guest to power off: through its agent (``guest-shutdown``) or the ACPI
        power button. As libvirt: ``DEFAULT`` tries the agent when the guest runs and has
        an agent channel, then the button if the agent failed; ``AGENT`` alone fails with
        the agent's error; ``AGENT|ACPI`` falls back to the button."""
        try:
            mode = ShutdownMode(mode)
        except ValueError:
            raise InvalidArgError(f"unsupported shutdown mode {mode!r}") from None
        if mode & ~(ShutdownMode.ACPI | ShutdownMode.AGENT):
            raise InvalidArgError(f"unsupported shutdown mode {mode!r}")
        async with self.table.job(self.table.get(uuid)) as obj:
            self._require_state(obj, SHUTDOWN_STATES)
            runtime = self._runtime(obj)
            use_agent = bool(mode & ShutdownMode.AGENT) or (
                mode == ShutdownMode.DEFAULT and runtime.state[0] is DomainState.RUNNING
            )
            if use_agent:
                try:
                    await self._agent_runtime(obj).agent_command(
                        "guest-shutdown", {"mode": "powerdown"}, None
                    )
                    return
                except AsvirtError as err:
                    if mode == ShutdownMode.AGENT:
                        raise
                    log.debug(
                        "agent shutdown failed; pressing the power button",
                        domain=obj.name,
                        operation="shutdown",
                        error=str(err),
                    )
            await runtime.powerdown(reboot=False)

    async def domain_reboot(self, uuid: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            self._require_state(obj, REBOOT_STATES)
            await self._runtime(obj).powerdown(reboot=True)

    async def domain_reset(self, uuid: str) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            await self._runtime(obj).reset()

    async def domain_destroy(self, uuid: str) -> None:
        # No job: destroy must work while another call waits on a hung guest.
        obj = self.table.get(uuid)
        await self._runtime(obj).destroy()

    async def domain_undefine(
        self,
        uuid: str,
        *,
        nvram: bool = False,
        keep_tpm: bool = False,
        snapshots_metadata: bool = False,
        managed_save: bool = False,
    ) -> None:
        async with self.table.job(self.table.get(uuid)) as obj, self.table.lock:
            if obj.persistent_def is None:
                raise OperationInvalidError(f"cannot undefine transient domain '{obj.name}'")
            if obj.snapshots and not snapshots_metadata:
                raise OperationInvalidError(
                    f"cannot undefine domain '{obj.name}' with {len(obj.snapshots)} "
                    "snapshot(s): undefine it with snapshots_metadata=True (virsh undefine "
                    "--snapshots-metadata) to forget them (their data stays in the disks)"
                )
            if obj.managed_save and not managed_save:
                raise OperationInvalidError(
                    f"refusing to undefine domain '{obj.name}' while its managed save image "
                    "exists: undefine it with managed_save=True (virsh undefine --managed-save) "
                    "to remove the image too"
                )
            self.backend.check_undefine(obj, nvram=nvram)
            if obj.managed_save:
                await self._forget_managed_save(obj)
            if obj.snapshots:
                names = [s.name for s in obj.snapshots.descendants(None)]
                await self.backend.delete_snapshots(obj, names)
                for name in names:
                    obj.snapshots.remove(name)
            await self.backend.remove_state(obj, nvram=nvram, keep_tpm=keep_tpm)
            await self.backend.delete_config(obj)
            obj.persistent_def = None
            obj.autostart = False
            if obj.runtime is not None:
                obj.runtime.persistence_changed()
            self.table.remove_if_gone(obj)
        log.info("domain undefined", domain=obj.name, uuid=obj.uuid, operation="undefine")
        self._publish_lifecycle(obj, LifecycleEvent.UNDEFINED, UndefinedDetail.REMOVED)

    async def domain_set_autostart(self, uuid: str, autostart: bool) -> None:
        async with self.table.job(self.table.get(uuid)) as obj:
            if not obj.persistent:
                raise OperationInvalidError(
                    f"cannot set autostart for transient domain '{obj.name}'"
                )
            await self.backend.save_autostart(obj, autostart)
            obj.autostart = autostart

    async def domain_get_autostart(self, uuid: str) -> bool:
        return self.table.get(uuid).autostart

    async def autostart_all(self) -> None:
        """Start every shut-off domain marked autostart (the node has just opened after the
        host booted); a domain that cannot start is logged, the others start anyway."""
        for obj in self.table.matching(active=False, persistent=True):
            if not obj.autostart:
                continue
            try:
                await self.domain_start(obj.uuid, paused=False, autodestroy=False)
                log.info(
                    "autostarted domain", domain=obj.name, uuid=obj.uuid, operation="autostart"
                )
            except AsvirtError as err:
                log.error(
                    "cannot autostart domain",
                    domain=obj.name,
                    uuid=obj.uuid,
                    operation="autostart",
                    error=str(err),
                )

    def _require_state(self, obj: DomainObj, allowed: tuple[DomainState, ...]) -> None:
        state = self._runtime(obj).state[0]
        if state not in allowed:
            raise OperationInvalidError(f"domain '{obj.name}' is {state.label}")

    async def client_closed(self, owner: object) -> None:
        """Destroy the domains ``owner`` started with autodestroy (it has gone for good),
        and close the consoles it had open (and drop the screenshots it did not read)."""
        await self._close_consoles_of(owner)
        self._drop_screenshots_of(owner)
        for obj in self.table.owned_by(owner):
            runtime = obj.runtime
            if runtime is not None:
                log.info(
                    "destroying autodestroy domain",
                    domain=obj.name,
                    uuid=obj.uuid,
                    operation="destroy",
                )
                await runtime.destroy()

    # -- inspection -----------------------------------------------------------------------------

    async def domain_state(self, uuid: str) -> tuple[DomainState, StateReason]:
        return self.table.get(uuid).state()

    async def domain_info(self, uuid: str) -> DomainInfo:
        obj = self.table.get(uuid)
        runtime = obj.runtime
        if runtime is not None:
            d = runtime.live_def
            state = runtime.state[0]
            memory, cpu = runtime.memory_kib(), runtime.cpu_time_ns()
        else:
            d = obj.definition()
            state, memory, cpu = DomainState.SHUTOFF, d.current_memory_kib, 0
        return DomainInfo(
            state=state,
            max_memory_kib=d.memory_kib,
            memory_kib=memory,
            vcpus=d.vcpus,
            cpu_time_ns=cpu,
        )

    async def domain_os_type(self, uuid: str) -> str:
        obj = self.table.get(uuid)
        runtime = obj.runtime
        return self.backend.os_type(runtime.live_def if runtime is not None else obj.definition())

    async def domain_security_label(self, uuid: str) -> SecurityLabel:
        self.table.get(uuid)  # raises for an unknown domain
        return self.backend.security_label

    async def domain_xml_desc(self, uuid: str, *, inactive: bool, secure: bool = False) -> str:
        obj = self.table.get(uuid)
        runtime = obj.runtime
        if runtime is not None and not (inactive and obj.persistent):
            return runtime.live_xml(secure=secure)
        return obj.definition(inactive=True).to_xml(secure=secure)

    async def domain_qmp(self, uuid: str, command: str, arguments: dict[str, Any] | None) -> Any:
        if not isinstance(command, str) or not command:
            raise InvalidArgError("the QMP command must be a non-empty string")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidArgError("QMP arguments must be a dict")
        try:
            json.dumps(arguments, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise InvalidArgError(f"QMP arguments must be plain JSON: {err}") from None
        except RecursionError:
            raise InvalidArgError("QMP arguments must be plain JSON: nested too deeply") from None
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        return await self._runtime(obj).qmp(command, arguments)

    async def domain_interface_addresses(
        self, uuid: str, source: InterfaceAddressSource
    ) -> list[DomainInterface]:
        """The addresses of a running domain's interfaces, from ``source``.

        ``LEASE``: the DHCP leases of the networks its ``type='network'`` interfaces are
        plugged into, matched by MAC (libvirt's lease source); interfaces without a lease
        are left out, as libvirt does. ``AGENT``: every interface the guest agent reports,
        the loopback too, with the addresses the guest has.
        """
        obj = self.table.get(uuid)
        if source is InterfaceAddressSource.AGENT:
            return await self._agent_interfaces(uuid)
        if source is not InterfaceAddressSource.LEASE:
            raise OperationUnsupportedError(
                f"interface addresses from source '{InterfaceAddressSource(source).name.lower()}'"
                " are not supported (use the lease or agent source)"
            )
        found = []
        for nic, leases in await self._nic_leases(obj):
            if leases:
                addrs = tuple(InterfaceAddress(ls.type, ls.ip_addr, ls.prefix) for ls in leases)
                found.append(DomainInterface(nic.target_dev or "-", nic.mac or "", addrs))
        return found

    async def _nic_leases(self, obj: DomainObj) -> list[tuple[Interface, list[NetworkDHCPLease]]]:
        """The running domain's ``type='network'`` interfaces and the DHCP leases their
        networks hold for their MACs (libvirt's lease source)."""
        network = self.network
        found = []
        for nic in self._runtime(obj).live_def.interfaces:
            if nic.type != "network" or network is None or nic.source_network is None:
                continue
            try:
                ref = await network.lookup_network_by_name(nic.source_network)
            except NoNetworkError:
                continue
            found.append((nic, await network.network_dhcp_leases(ref.uuid, nic.mac)))
        return found

    # -- statistics -----------------------------------------------------------------------------
    #
    # Reads: no job is taken, so that a domain busy with a long job still reports. One task
    # asks every domain's hypervisor first, then reads the answers: all of them are worked on
    # at once, and no task, cancel scope or wake-up is spent per domain. A runtime asks its
    # hypervisor at most one question per group.

    async def get_all_domain_stats(
        self,
        stats: StatsGroup,
        uuids: list[str] | None,
        active: bool | None,
        persistent: bool | None,
    ) -> list[DomainStats]:
        """Statistics of many domains (libvirt's ``virConnectGetAllDomainStats``, or
        ``virDomainListGetStats`` with ``uuids``), in the order the domains are listed."""
        groups = StatsGroup(stats) & stats_mod.ALL_GROUPS or stats_mod.ALL_GROUPS
        if uuids is None:
            objs = self.table.matching(active=active, persistent=persistent)
        else:
            objs = [self.table.get(canonical_uuid(u)) for u in uuids]
            objs = [
                o
                for o in objs
                if (active is None or o.active == active)
                and (persistent is None or o.persistent == persistent)
            ]
        scope = stats_mod.SampleScope()
        asked: list[tuple[DomainObj, DomainRuntime | None, stats_mod.PendingSample | None]] = []
        for obj in objs:
            runtime = obj.runtime
            pending = await runtime.begin_sample(groups, scope) if runtime is not None else None
            asked.append((obj, runtime, pending))
        records = []
        for obj, runtime, pending in asked:
            sample = await pending.result() if pending is not None else None
            record = self._domain_stats(obj, runtime, groups, sample)
            if record is not None:
                records.append(record)
        await trio.lowlevel.checkpoint()  # the runtimes may not have had to wait at all
        return records

    def _domain_stats(
        self,
        obj: DomainObj,
        runtime: DomainRuntime | None,
        groups: StatsGroup,
        sample: stats_mod.RuntimeSample | None,
    ) -> DomainStats | None:
        """A domain's record from what ``runtime`` (its runtime when asked) measured."""
        if obj.removed:
            return None  # gone meanwhile (a transient domain that stopped)
        if runtime is not None and obj.runtime is runtime:
            defn, state = runtime.live_def, runtime.state
        else:
            # Not running (any more): what its definition says, as libvirt reports it.
            defn, state, sample = obj.definition(), obj.state(), None
        params = stats_mod.record_params(
            groups, state=state, defn=defn, sample=sample, block_info=self.backend.block_info
        )
        return DomainStats(obj.name, obj.uuid, params)

    async def domain_block_stats(self, uuid: str, device: str) -> dict[str, int]:
        """A running domain's disk counters (libvirt's ``virDomainBlockStatsFlags``); the
        empty device name sums every disk."""
        obj = self.table.get(uuid)
        runtime = self._runtime(obj)
        disks = runtime.live_def.disks if device == "" else [self._disk(runtime.live_def, device)]
        sample = await runtime.sample(StatsGroup.BLOCK, stats_mod.SampleScope())
        blocks = sample.blocks
        if blocks is None and disks:  # a domain without disks has nothing to ask QEMU
            raise OperationFailedError(f"cannot read the block statistics of '{obj.name}'")
        counters = [blocks[d.target] for d in disks if blocks and d.target in blocks]
        if device and not counters:
            raise OperationFailedError(f"no block statistics for disk '{device}'")
        return stats_mod.block_stats(counters)

    async def domain_interface_stats(self, uuid: str, device: str) -> InterfaceStats:
        """A running domain's interface counters, from the guest's side (libvirt's
        ``virDomainInterfaceStats``); ``device`` is the interface's name or MAC address."""
        obj = self.table.get(uuid)
        runtime = self._runtime(obj)
        nic = self._interface(runtime.live_def, device)
        if nic.type == "user" or nic.target_dev is None:
            raise OperationUnsupportedError(
                f"interface '{device}' of type '{nic.type}' has no host device to count on"
            )
        sample = await runtime.sample(StatsGroup.INTERFACE, stats_mod.SampleScope())
        found = (sample.nets or {}).get(nic.target_dev)
        if found is None:
            raise OperationFailedError(f"cannot read the counters of interface '{device}'")
        return found

    async def domain_memory_stats(self, uuid: str) -> dict[str, int]:
        """A running domain's memory statistics (libvirt's ``virDomainMemoryStats``)."""
        obj = self.table.get(uuid)
        runtime = self._runtime(obj)
        sample = await runtime.sample(StatsGroup.BALLOON, stats_mod.SampleScope())
        return stats_mod.memory_stats(runtime.live_def, sample)

    async def domain_block_info(self, uuid: str, device: str) -> BlockInfo:
        """The sizes of a disk's image (libvirt's ``virDomainGetBlockInfo``)."""
        obj = self.table.get(uuid)
        disk = self._local_disk(
            obj.definition(), device, "its image is on a server, not on this host"
        )
        await trio.lowlevel.checkpoint()
        return self.backend.block_info(disk)

    # -- block jobs (QEMU runs them on the images; see asvirt.drivers.qemu.blockjobs) ----------

    def _block_disk(self, obj: DomainObj, device: str) -> tuple[DomainRuntime, Disk]:
        """The running domain's disk ``device`` (target or path), with a local image."""
        runtime = self._runtime(obj)
        disk = self._local_disk(
            runtime.live_def, device, "asvirt runs no block jobs on images on servers"
        )
        return runtime, disk

    def _local_disk(self, defn: DomainDef, device: str, why_not_network: str) -> Disk:
        """Disk ``device`` of ``defn``, which must have an image on this host (a network
        disk is refused, saying ``why_not_network``)."""
        disk = self._disk(defn, device)
        if disk.net is not None:
            raise OperationUnsupportedError(
                f"disk '{device}' is a network disk ({disk.net.protocol}): {why_not_network}"
            )
        if disk.source is None:
            raise InvalidArgError(f"disk '{device}' does not currently have a source assigned")
        return disk

    @staticmethod
    def _bandwidth(bandwidth: int) -> int:
        if bandwidth < 0:
            raise InvalidArgError(f"bandwidth must be less than {2**63} bytes/s, not negative")
        return bandwidth

    async def domain_block_resize(
        self, uuid: str, device: str, size: int, extend: bool = False
    ) -> None:
        """libvirt's ``virDomainBlockResize`` (with ``VIR_DOMAIN_BLOCK_RESIZE_BYTES``): the
        running guest's disk grows (or shrinks: libvirt allows it unless ``extend``, its
        ``VIR_DOMAIN_BLOCK_RESIZE_EXTEND``) to ``size`` bytes, a qcow2 image's rounded up
        to 512 as libvirt does."""
        if size < 0:
            raise InvalidArgError("the size of a disk must not be negative")
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            if disk.readonly:
                raise OperationInvalidError(f"disk '{device}' is read-only: it cannot be resized")
            if disk.format == "qcow2":
                size = -(-size // 512) * 512
            if extend:
                current = self.backend.block_info(disk).capacity
                if size < current:
                    raise InvalidArgError(
                        f"requested size {size} of disk '{device}' is smaller than its "
                        f"current size {current}: shrinking refused (extend)"
                    )
            await runtime.block_resize(disk, size)

    async def domain_block_pull(
        self, uuid: str, device: str, bandwidth: int, base: str | None = None
    ) -> None:
        """libvirt's ``virDomainBlockPull`` (``virDomainBlockRebase`` with a ``base``): start
        streaming the disk's backing chain (the images above ``base``) into its top image
        (``bandwidth`` bytes/s; 0: unlimited); a BLOCK_JOB event ends it."""
        self._bandwidth(bandwidth)
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            await runtime.block_pull(disk, bandwidth, base)

    async def domain_block_commit(
        self,
        uuid: str,
        device: str,
        base: str | None,
        top: str | None,
        bandwidth: int,
        active: bool,
        shallow: bool = False,
    ) -> None:
        """libvirt's ``virDomainBlockCommit``: start committing ``top`` (default: the active
        layer, which needs ``active``: VIR_DOMAIN_BLOCK_COMMIT_ACTIVE) into ``base``
        (default: the bottom of the chain; ``shallow``: top's backing file)."""
        self._bandwidth(bandwidth)
        if shallow and base is not None:
            raise InvalidArgError("flag 'shallow' and a base are mutually exclusive")
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            await runtime.block_commit(disk, base, top, bandwidth, active=active, shallow=shallow)

    async def domain_block_copy(
        self,
        uuid: str,
        device: str,
        dest_xml: str,
        bandwidth: int,
        shallow: bool = False,
        reuse_ext: bool = False,
    ) -> None:
        """libvirt's ``virDomainBlockCopy``: start mirroring the disk onto the image
        ``dest_xml`` describes (a ``<disk>`` with a ``<source>``; its format defaults to
        the disk's): QEMU makes it, unless ``reuse_ext`` (VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)
        names one that exists; ``shallow``: only the top, over the same backing file. Ready
        once in sync; ``domain_block_job_abort`` with ``pivot`` moves the disk onto it."""
        self._bandwidth(bandwidth)
        dest = parse_copy_destination(dest_xml)
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            if dest.format is None:
                dest.format = disk.format or "raw"
            try:
                st = os.lstat(dest.source)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise InvalidArgError(f"destination '{dest.source}' is a symbolic link")
            if reuse_ext and st is None:
                raise InvalidArgError(
                    f"missing destination file for disk {disk.target}: {dest.source}"
                )
            if not reuse_ext and st is not None:
                raise OperationInvalidError(
                    f"destination '{dest.source}' exists: asvirt overwrites no file (give "
                    "reuse_ext to copy into it)"
                )
            if not reuse_ext and dest.type == "block":
                raise InvalidArgError("a block device destination must exist (reuse_ext)")
            await runtime.block_copy(disk, dest, bandwidth, shallow=shallow, reuse_ext=reuse_ext)

    async def domain_block_job_info(self, uuid: str, device: str) -> BlockJobInfo | None:
        """libvirt's ``virDomainGetBlockJobInfo`` (bandwidth in bytes/s): the disk's job,
        None when it has none. Takes no job: it reads what QEMU runs."""
        runtime, disk = self._block_disk(self.table.get(uuid), device)
        return await runtime.block_job_info(disk)

    async def domain_block_job_abort(
        self, uuid: str, device: str, pivot: bool, wait: bool = True
    ) -> None:
        """libvirt's ``virDomainBlockJobAbort``: cancel the disk's job, or (``pivot``) move
        the disk onto the image a ready copy or active commit made; ``wait`` False:
        VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC (a BLOCK_JOB event tells the end)."""
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            await runtime.block_job_abort(disk, pivot=pivot, wait=wait)

    async def domain_block_job_set_speed(self, uuid: str, device: str, bandwidth: int) -> None:
        """libvirt's ``virDomainBlockJobSetSpeed`` (bytes/s; 0: unlimited)."""
        self._bandwidth(bandwidth)
        async with self.table.job(self.table.get(uuid)) as obj:
            runtime, disk = self._block_disk(obj, device)
            await runtime.block_job_set_speed(disk, bandwidth)

    async def domain_set_memory_stats_period(
        self, uuid: str, period: int, live: bool, config: bool
    ) -> None:
        """Have the balloon report the guest's statistics every ``period`` seconds (0: stop):
        in the running guest (``live``) and/or its next boot (``config``); neither: the
        current state's, as libvirt's ``virDomainSetMemoryStatsPeriod``."""
        if period < 0:
            raise InvalidArgError("invalid statistics period: it must not be negative")
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            defs = [obj.runtime.live_def] if live and obj.runtime is not None else []
            if config and obj.persistent_def is not None:
                defs.append(obj.persistent_def)
            for defn in defs:
                if not defn.has_memballoon:
                    raise OperationInvalidError(
                        "no memory balloon device configured, cannot set the collection period"
                    )
            if live:
                await self._runtime(obj).set_memory_stats_period(period)
            if config and obj.persistent_def is not None:
                updated = obj.persistent_def.copy()
                assert updated.memballoon is not None
                updated.memballoon.stats_period = period
                await self.backend.save_config(updated)
                obj.persistent_def = updated

    # -- memory and vCPUs -------------------------------------------------------------------------

    async def domain_set_memory(
        self, uuid: str, kib: int, live: bool, config: bool, maximum: bool = False
    ) -> None:
        """libvirt's ``virDomainSetMemoryFlags``: the guest's memory through its balloon
        (``live``) and/or its ``<currentMemory>`` (``config``), never above ``<memory>``;
        with ``maximum``, ``<memory>`` itself, which only a configuration can change."""
        if kib <= 0:
            raise InvalidArgError("the memory size must not be zero")
        if kib > MAX_MEMORY_KIB:
            raise InvalidArgError(f"memory size {kib} KiB is too large")
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            if maximum:
                if live:
                    raise OperationInvalidError(
                        "cannot resize the maximum memory on an active domain"
                    )
                assert obj.persistent_def is not None
                updated = obj.persistent_def.copy()
                updated.memory_kib = kib
                updated.current_memory_kib = min(updated.current_memory_kib, kib)
                await self._redefine(obj, updated)
                return
            defs = [self._runtime(obj).live_def] if live else []
            if config and obj.persistent_def is not None:
                defs.append(obj.persistent_def)
            limit = min(d.memory_kib for d in defs)
            if kib > limit:
                raise InvalidArgError(
                    f"cannot set memory higher than max memory ({kib} > {limit} KiB)"
                )
            if live:
                runtime = self._runtime(obj)
                if not runtime.live_def.has_memballoon:
                    raise OperationInvalidError(
                        "Unable to change memory of active domain without the balloon "
                        "device and guest OS balloon driver"
                    )
                await runtime.set_balloon(kib)
            if config and obj.persistent_def is not None:
                updated = obj.persistent_def.copy()
                updated.current_memory_kib = kib
                await self._redefine(obj, updated)

    async def domain_set_vcpus(
        self, uuid: str, count: int, live: bool, config: bool, maximum: bool = False
    ) -> None:
        """libvirt's ``virDomainSetVcpusFlags``: the running guest's vCPUs, hot(un)plugged
        (``live``), and/or ``<vcpu current=...>`` (``config``), never above the maximum;
        with ``maximum``, the maximum itself, which only a configuration can change."""
        if maximum and not config:
            raise InvalidArgError("flag 'config' is required by flag 'maximum'")
        if count <= 0:
            raise InvalidArgError("the vCPU count must not be zero")
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            if maximum:
                if live:
                    raise ConfigUnsupportedError(
                        "maximum vcpu count of a live domain can't be modified"
                    )
                assert obj.persistent_def is not None
                updated = obj.persistent_def.copy()
                topo = updated.cpu.topology if updated.cpu is not None else None
                if topo is not None and topo.total != count:
                    raise InvalidArgError("CPU topology doesn't match the desired vcpu count")
                updated.max_vcpus = count
                updated.vcpus = min(updated.vcpus, count)
                updated.vcpu_states = None  # the per-vCPU states were of the old maximum
                await self._redefine(obj, updated)
                return
            if live:
                most = self._runtime(obj).live_def.max_vcpus
                if count > most:
                    raise InvalidArgError(
                        "requested vcpus is greater than max allowable vcpus for the live "
                        f"domain: {count} > {most}"
                    )
            if config and obj.persistent_def is not None:
                most = obj.persistent_def.max_vcpus
                if count > most:
                    raise InvalidArgError(
                        "requested vcpus is greater than max allowable vcpus for the "
                        f"persistent domain: {count} > {most}"
                    )
            if live:
                await self._runtime(obj).set_vcpus(count)
            if config and obj.persistent_def is not None:
                updated = obj.persistent_def.copy()
                updated.vcpus = count
                updated.vcpu_states = None  # the first `count` boot, as <vcpu current> says
                await self._redefine(obj, updated)

    async def domain_vcpus_count(
        self, uuid: str, live: bool, config: bool, maximum: bool = False
    ) -> int:
        """libvirt's ``virDomainGetVcpusFlags``: the vCPUs (``maximum``: the most it may
        have) of the running guest (``live``) or of its configuration (``config``); neither:
        the current state's."""
        if live and config:
            raise InvalidArgError("flags 'live' and 'config' are mutually exclusive")
        obj = self.table.get(uuid)
        live, config = self._affected(obj, live, config)
        defn = self._runtime(obj).live_def if live else obj.persistent_def
        assert defn is not None
        return defn.max_vcpus if maximum else defn.vcpus

    # -- thread pinning (virsh vcpuinfo, vcpupin, emulatorpin) -----------------------------------

    async def _host_cpus(self) -> int:
        await trio.lowlevel.checkpoint()
        return self.backend.host_cpus()

    async def domain_vcpus(self, uuid: str) -> list[VcpuInfo]:
        """libvirt's ``virDomainGetVcpus``: the running guest's online vCPUs."""
        obj = self.table.get(uuid)
        host = await self._host_cpus()
        return await self._runtime(obj).vcpu_threads(host)

    def _pin_def(self, obj: DomainObj, live: bool, config: bool) -> DomainDef:
        """The definition a pin query reads: the running guest's or the persistent one."""
        if live and config:
            raise InvalidArgError("flags 'live' and 'config' are mutually exclusive")
        live, config = self._affected(obj, live, config)
        defn = self._runtime(obj).live_def if live else obj.persistent_def
        assert defn is not None
        return defn

    async def domain_vcpu_pin_info(self, uuid: str, live: bool, config: bool) -> list[list[bool]]:
        """libvirt's ``virDomainGetVcpuPinInfo``: every vCPU's pins (``<vcpupin>``, else
        ``<vcpu cpuset>``, else every host CPU) of the live or persistent definition."""
        defn = self._pin_def(self.table.get(uuid), live, config)
        return vcpu_pins(defn, await self._host_cpus())

    async def domain_emulator_pin_info(self, uuid: str, live: bool, config: bool) -> list[bool]:
        """libvirt's ``virDomainGetEmulatorPinInfo``."""
        defn = self._pin_def(self.table.get(uuid), live, config)
        return emulator_pin(defn, await self._host_cpus())

    async def _pin(
        self,
        uuid: str,
        cpumap: list[bool],
        live: bool,
        config: bool,
        *,
        what: str,
        check: Callable[[DomainDef, str], None],
        pin: Callable[[DomainRuntime, set[int]], Awaitable[None]],
        record: Callable[[DomainDef, set[int]], None],
    ) -> None:
        """Pin threads of a domain (libvirt's ``virDomainPin*`` calls): ``check`` each
        definition affected (``live``, ``persistent``) before anything changes, then ``pin``
        the running threads (which records it in the live definition) and ``record`` it in
        the persistent one."""
        cpus = cpus_of(cpumap, await self._host_cpus())
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            if live:
                check(self._runtime(obj).live_def, "live")
            if config:
                assert obj.persistent_def is not None
                check(obj.persistent_def, "persistent")
            if live:
                await pin(self._runtime(obj), cpus)
            if config:
                assert obj.persistent_def is not None
                updated = obj.persistent_def.copy()
                record(updated, cpus)
                await self._redefine(obj, updated)
        log.info(
            "threads pinned",
            domain=obj.name,
            threads=what,
            cpus=sorted(cpus),
            live=live,
            config=config,
        )

    async def domain_pin_vcpu(
        self, uuid: str, vcpu: int, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """libvirt's ``virDomainPinVcpuFlags``: the thread of a running vCPU (``live``, with
        the live ``<vcpupin>``; an offline one gets it when plugged), and/or the persistent
        ``<vcpupin>`` (``config``)."""
        await self._pin(
            uuid,
            cpumap,
            live,
            config,
            what=f"vCPU {vcpu}",
            check=lambda defn, which: check_vcpu(defn, vcpu, which),
            pin=lambda runtime, cpus: runtime.pin_vcpu(vcpu, cpus),
            record=lambda defn, cpus: set_vcpupin(defn, vcpu, cpus),
        )

    async def domain_cpu_stats(self, uuid: str, start_cpu: int, ncpus: int) -> list[dict[str, int]]:
        """libvirt's ``virDomainGetCPUStats``: the totals (``start_cpu`` -1, ``ncpus`` 1), or
        each host CPU's share from ``start_cpu`` (``ncpus`` of them, fewer at the end)."""
        host = await self._host_cpus()
        if start_cpu == -1:
            if ncpus != 1:
                raise InvalidArgError("ncpus must be 1 when start_cpu is -1")
        elif not 0 <= start_cpu < host:
            raise InvalidArgError(f"start_cpu {start_cpu} larger than maximum of {host - 1}")
        elif ncpus < 1:
            raise InvalidArgError("ncpus must be 1 or more")
        obj = self.table.get(uuid)
        return await self._runtime(obj).cpu_stats(host, start_cpu, ncpus)

    # -- disk I/O throttling (virsh blkdeviotune) ---------------------------------------------

    async def domain_block_io_tune(
        self, uuid: str, device: str, live: bool, config: bool
    ) -> dict[str, Any]:
        """libvirt's ``virDomainGetBlockIoTune``: the running disk's throttle as the
        hypervisor applies it (``live``), or the configuration's ``<iotune>``."""
        obj = self.table.get(uuid)
        if live and config:
            raise InvalidArgError("flags 'live' and 'config' are mutually exclusive")
        live, config = self._affected(obj, live, config)
        if live:
            runtime = self._runtime(obj)
            return await runtime.block_io_tune(self._disk(runtime.live_def, device))
        assert obj.persistent_def is not None
        return iotune_params(self._disk(obj.persistent_def, device).iotune)

    async def domain_set_block_io_tune(
        self, uuid: str, device: str, params: dict[str, Any], live: bool, config: bool
    ) -> None:
        """libvirt's ``virDomainSetBlockIoTune``: the parameters given replace their family
        (``total``/``read``/``write`` of one kind), the others stay; the result is checked
        as ``<iotune>`` is, for the running disk (``live``) and the configuration
        (``config``), before either changes. The disks of one ``group_name`` share it."""
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            if live:
                runtime = self._runtime(obj)
                disk = self._disk(runtime.live_def, device)
                live_tune = _new_iotune(disk, params)
            if config:
                assert obj.persistent_def is not None
                updated = obj.persistent_def.copy()
                cdisk = self._disk(updated, device)
                tune = _new_iotune(cdisk, params)
                for other in updated.disks:
                    if other is cdisk or (
                        tune.group_name is not None
                        and other.iotune is not None
                        and other.iotune.group_name == tune.group_name
                    ):
                        # libvirt drops an <iotune> that limits nothing.
                        other.iotune = copy.deepcopy(tune) if tune.limits else None
            if live:
                await runtime.set_block_io_tune(disk, live_tune)
            if config:
                await self._redefine(obj, updated)
        log.info(
            "block I/O throttle set",
            domain=obj.name,
            device=device,
            params=params,
            live=live,
            config=config,
        )

    async def domain_iothread_info(self, uuid: str, live: bool, config: bool) -> list[IOThreadInfo]:
        """libvirt's ``virDomainGetIOThreadInfo``: the running I/O threads' affinity as the
        host has it (``live``), or the configuration's pins (``config``)."""
        obj = self.table.get(uuid)
        if live and config:
            raise InvalidArgError("flags 'live' and 'config' are mutually exclusive")
        live, config = self._affected(obj, live, config)
        host = await self._host_cpus()
        if live:
            return await self._runtime(obj).iothread_threads(host)
        assert obj.persistent_def is not None
        return iothread_pins(obj.persistent_def, host)

    async def domain_pin_iothread(
        self, uuid: str, iothread: int, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """libvirt's ``virDomainPinIOThread``: the running I/O thread (``live``, with the live
        ``<iothreadpin>``) and/or the persistent ``<iothreadpin>`` (``config``)."""
        await self._pin(
            uuid,
            cpumap,
            live,
            config,
            what=f"I/O thread {iothread}",
            check=lambda defn, _: check_iothread(defn, iothread),
            pin=lambda runtime, cpus: runtime.pin_iothread(iothread, cpus),
            record=lambda defn, cpus: set_iothreadpin(defn, iothread, cpus),
        )

    async def domain_pin_emulator(
        self, uuid: str, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """libvirt's ``virDomainPinEmulator``: the running emulator threads (``live``) and/or
        the persistent ``<emulatorpin>`` (``config``)."""
        await self._pin(
            uuid,
            cpumap,
            live,
            config,
            what="emulator",
            check=lambda defn, which: None,
            pin=lambda runtime, cpus: runtime.pin_emulator(cpus),
            record=set_emulatorpin,
        )

    async def _redefine(self, obj: DomainObj, updated: DomainDef) -> None:
        """Store a changed persistent definition (the caller holds the job), checked as
        define_xml() checks one: what is stored is what define would have stored."""
        await self._store_config(obj, await self.backend.parse(updated.to_xml()))

    # -- devices --------------------------------------------------------------------------------
    #
    # As libvirt: the persistent definition's change is prepared (and checked) first, then the
    # running guest's is made, and only then is the new configuration stored; what fails
    # changes nothing.

    async def domain_attach_device(self, uuid: str, xml: str, live: bool, config: bool) -> None:
        """Add a device to the running guest (``live``) and/or its configuration
        (``config``); neither: the current state's (libvirt's ``virDomainAttachDeviceFlags``)."""
        dev = parse_device_xml(xml)
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            new_config = None
            if config:
                assert obj.persistent_def is not None
                new_config = await self.backend.with_device(obj.persistent_def, dev)
            if live:
                plugged = clone_device(dev)
                if isinstance(plugged, Disk):
                    await resolve_disk(plugged, self.storage)
                await self._runtime(obj).attach_device(plugged)
            if new_config is not None:
                await self._store_config(obj, new_config)
        log.info(
            "device attached",
            domain=obj.name,
            uuid=obj.uuid,
            operation="attach-device",
            device=describe(dev),
            live=live,
            config=config,
        )

    async def domain_detach_device(self, uuid: str, xml: str, live: bool, config: bool) -> bool:
        """Remove a device from the running guest and/or the configuration (libvirt's
        ``virDomainDetachDeviceFlags``). The guest must release it: True once it has, False
        if it has not within the node's deadline (DEVICE_REMOVAL_FAILED; the device stays in
        the live XML, and goes with DEVICE_REMOVED when the guest releases it)."""
        dev = parse_device_xml(xml)
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            new_config = None
            if config:
                assert obj.persistent_def is not None
                new_config = obj.persistent_def.copy()
                remove_device(new_config, find_device(new_config, dev))
            gone = True
            if live:
                runtime = self._runtime(obj)
                gone = await runtime.detach_device(find_device(runtime.live_def, dev))
            if new_config is not None:
                await self._store_config(obj, new_config)
        log.info(
            "device detached" if gone else "device detach requested",
            domain=obj.name,
            uuid=obj.uuid,
            operation="detach-device",
            device=describe(dev),
            live=live,
            config=config,
        )
        return gone

    async def domain_update_device(
        self, uuid: str, xml: str, live: bool, config: bool, force: bool = False
    ) -> None:
        """Change a device in place (libvirt's ``virDomainUpdateDeviceFlags``): a CD-ROM's
        media (no source: eject), an interface's link state or a display's password.
        ``force``: eject media the guest has locked in (asvirt always does)."""
        del force  # the tray is always forced open, as libvirt does for a locked tray
        new = parse_update_xml(xml)
        if isinstance(new, Graphics):
            await self._update_graphics(uuid, new, live, config)
            return
        dev = new
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            new_config = None
            if config:
                assert obj.persistent_def is not None
                new_config = obj.persistent_def.copy()
                apply_update(find_device(new_config, dev), dev)
            if live:
                runtime = self._runtime(obj)
                current = find_device(runtime.live_def, dev)
                if isinstance(current, Disk):
                    assert isinstance(dev, Disk)
                    media = updated_media(current, dev)
                    if (media.source, media.net, media.type) != (
                        current.source,
                        current.net,
                        current.type,
                    ):
                        await runtime.change_media(current, media)
                elif isinstance(current, Interface):
                    assert isinstance(dev, Interface)
                    await runtime.set_link(current, updated_link(current, dev))
                else:
                    apply_update(current, dev)  # refuses: nothing of an input can change
            if new_config is not None:
                await self._store_config(obj, new_config)

    async def _update_graphics(self, uuid: str, new: Graphics, live: bool, config: bool) -> None:
        """A display's new password, expiry and ``connected``: given to QEMU at once
        (live), kept in the persistent definition (config)."""
        async with self.table.job(self.table.get(uuid)) as obj:
            live, config = self._affected(obj, live, config)
            new_config = None
            if config:
                assert obj.persistent_def is not None
                new_config = obj.persistent_def.copy()
                current = find_graphics(new_config, new)
                check_graphics_update(current, new)
                apply_password(current, new)
            if live:
                runtime = self._runtime(obj)
                current = find_graphics(runtime.live_def, new)
                check_graphics_update(current, new)
                await runtime.change_display_password(current, new)
            if new_config is not None:
                await self._store_config(obj, new_config)
        log.info(
            "display password changed",
            domain=obj.name,
            uuid=obj.uuid,
            operation="update-device",
            device=f"graphics '{new.type}'",
            live=live,
            config=config,
        )

    async def _store_config(self, obj: DomainObj, defn: DomainDef) -> None:
        """Store a persistent definition that is already checked (the caller holds the job)."""
        await self.backend.save_config(defn)
        obj.persistent_def = defn

    def _affected(self, obj: DomainObj, live: bool, config: bool) -> tuple[bool, bool]:
        """libvirt's ``VIR_DOMAIN_AFFECT_*``: neither flag means the current state's
        definition (the live one of a running domain, else the persistent one)."""
        if not live and not config:
            live, config = obj.active, not obj.active
        if live and not obj.active:
            raise OperationInvalidError(f"domain '{obj.name}' is not running")
        if config and not obj.persistent:
            raise OperationInvalidError(
                f"transient domain '{obj.name}' has no persistent configuration"
            )
        return live, config

    @staticmethod
    def _disk(defn: DomainDef, device: str) -> Disk:
        """A disk by target (``vda``) or source path, as libvirt finds it."""
        for disk in defn.disks:
            if device in (disk.target, disk.source) or (
                disk.net is not None and device == disk.net.name
            ):
                return disk
        raise InvalidArgError(f"invalid path: {device}")

    @staticmethod
    def _interface(defn: DomainDef, device: str) -> Interface:
        """An interface by its host device's name or its MAC address."""
        for nic in defn.interfaces:
            if device == nic.target_dev or (nic.mac and device.lower() == nic.mac):
                return nic
        raise InvalidArgError(f"invalid path, '{device}' is not a known interface")

    async def domain_is_active(self, uuid: str) -> bool:
        return self.table.get(uuid).active

    async def domain_is_persistent(self, uuid: str) -> bool:
        return self.table.get(uuid).persistent

    async def domain_id(self, uuid: str) -> int | None:
        runtime = self.table.get(uuid).runtime
        return runtime.domain_id if runtime is not None else None


__all__ = [
    "REBOOT_STATES",
    "SHUTDOWN_STATES",
    "DomainDriver",
    "HypervisorBackend",
    "RuntimeCallbacks",
    "StartableRuntime",
]


def _new_iotune(disk: Disk, params: dict[str, Any]) -> IOTune:
    """``disk``'s ``<iotune>`` with ``params`` applied, checked (InvalidArgError)."""
    try:
        tune = updated_iotune(disk.iotune, params)
    except ValueError as err:
        raise InvalidArgError(str(err)) from None
    problem = iotune_problem(tune)
    if problem is not None:
        raise InvalidArgError(problem)
    return tune
