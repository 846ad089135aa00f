"""The domain table of a node: every domain it knows, and the rules for adding and removing them.

One table per node, whatever the hypervisor (libvirt keeps this in ``virdomainobjlist.c``): a
domain is *persistent* when it has a configuration for its next boot, *active* while its guest
runs, and exists while it is either. A transient domain (created, never defined) leaves the
table when it stops; a persistent one when it is undefined and not running. Names and UUIDs
are unique: a definition may replace the domain with the same name *and* UUID, never another.

Mutating calls on one domain are serialised by its *job* (:meth:`DomainTable.job`), as
libvirt's domain jobs do, and every check that decides an operation is made under it: a call
that waited for the job and finds the domain gone from the table fails with NoDomainError.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..conf.domain import DomainDef
from ..errors import DomainExistsError, NoDomainError
from ..states import DomainState, ShutoffReason, StateReason
from .snapshot_tree import SnapshotTree

if TYPE_CHECKING:
    from ..conf.devices import BackingStore, Disk, Graphics, HotplugDevice, Interface
    from ..conf.tuning import IOTune
    from ..drivers.base import BlockJobInfo, IOThreadInfo, StatsGroup, VcpuInfo
    from .stats import PendingSample, RuntimeSample, SampleScope


class DomainRuntime(Protocol):
    """What a hypervisor driver keeps for a running domain (a QEMU runner, a simulated VM)."""

    @property
    def domain_id(self) -> int: ...

    @property
    def live_def(self) -> DomainDef: ...

    @property
    def state(self) -> tuple[DomainState, StateReason]: ...

    def live_xml(self, *, secure: bool = True) -> str:
        """The live XML; ``secure=False``: without its secrets (see DomainDef.to_xml)."""
        ...

    def memory_kib(self) -> int: ...

    def cpu_time_ns(self) -> int: ...

    async def suspend(self) -> None: ...

    async def resume(self) -> None: ...

    async def powerdown(self, *, reboot: bool) -> None: ...

    async def reset(self) -> None: ...

    async def destroy(self) -> None:
        """Stop the guest at once; returns once it is gone (the table has been told)."""
        ...

    async def qmp(self, command: str, arguments: dict[str, Any] | None) -> Any: ...

    async def agent_command(
        self, execute: str, arguments: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        """Run a guest agent command and return the agent's whole reply (``{"return": ...}``;
        None for ``guest-shutdown``, which the agent does not answer). ``timeout`` None: the
        driver's default. ArgumentUnsupportedError without an agent channel,
        AgentUnresponsiveError when the agent is not connected or does not answer in time."""
        ...

    def persistence_changed(self) -> None:
        """The domain was defined or undefined while running (status files record it)."""
        ...

    async def sample(self, groups: StatsGroup, scope: SampleScope) -> RuntimeSample:
        """Measure what ``groups`` need (at most one hypervisor query per group); what cannot
        be measured now is left None, never an error."""
        ...

    async def begin_sample(self, groups: StatsGroup, scope: SampleScope) -> PendingSample:
        """:meth:`sample` in two steps: ask the hypervisor now, read its answers from the
        result later, so that one task can ask many runtimes before it waits for any."""
        ...

    async def set_memory_stats_period(self, period: int) -> None:
        """Have the guest's balloon report its statistics every ``period`` seconds (0: stop),
        and record it in the live definition."""
        ...

    async def set_balloon(self, kib: int) -> None:
        """Ask the guest's balloon to give it ``kib`` KiB (it has a balloon). Returns once
        asked: the guest's driver acts later, and the live definition follows what the
        balloon reports (BALLOON_CHANGE events)."""
        ...

    async def set_vcpus(self, count: int) -> None:
        """Hot-plug or unplug vCPUs until the guest has ``count`` (at most its maximum);
        returns once done, with the live definition saying how many it has.
        ConfigUnsupportedError if the vCPUs that can be plugged cannot make ``count``;
        OperationTimeoutError if the guest did not release a vCPU in time."""

    async def vcpu_threads(self, host_cpus: int) -> list[VcpuInfo]:
        """The online vCPUs: each one's state, CPU time, last host CPU and affinity (a CPU
        map of ``host_cpus`` entries)."""
        ...

    async def pin_vcpu(self, vcpu: int, cpus: set[int]) -> None:
        """Pin vCPU ``vcpu`` (of the live definition; its thread if it is online) to the
        host CPUs ``cpus``, and record it in the live definition's ``<cputune>``."""
        ...

    async def iothread_threads(self, host_cpus: int) -> list[IOThreadInfo]:
        """The running I/O threads and their affinity, by id."""
        ...

    async def pin_iothread(self, iothread: int, cpus: set[int]) -> None:
        """Pin I/O thread ``iothread`` (one of the live definition's) to ``cpus``, recorded
        as the live ``<iothreadpin>``."""
        ...

    async def block_io_tune(self, disk: Disk) -> dict[str, int | str]:
        """A live disk's I/O throttle as the hypervisor applies it (libvirt's parameters of
        ``virDomainGetBlockIoTune``, every one)."""
        ...

    async def set_block_io_tune(self, disk: Disk, tune: IOTune) -> None:
        """Throttle a live disk (and the others of its ``group_name``) to ``tune`` (checked),
        recorded in the live definition."""
        ...

    async def cpu_stats(self, host_cpus: int, start: int, count: int) -> list[dict[str, int]]:
        """libvirt's ``virDomainGetCPUStats`` figures (ns): ``start`` -1: one dict of the
        totals (``cpu_time``, ``user_time``, ``system_time``); else one per host CPU (of
        ``host_cpus``) from ``start`` (at most ``count``), or the hypervisor's refusal when
        the host keeps no per-CPU figures for the domain."""
        ...

    async def pin_emulator(self, cpus: set[int]) -> None:
        """Pin the emulator threads to ``cpus``, recorded as the live ``<emulatorpin>``."""
        ...

    async def attach_device(self, dev: HotplugDevice) -> None:
        """Plug a device (parsed XML, volumes resolved) into the guest, and add it to the live
        definition completed as the hypervisor completes devices (alias, address)."""
        ...

    async def detach_device(self, dev: HotplugDevice) -> bool:
        """Ask the guest to release one of the live definition's devices: True once it is
        gone (DEVICE_REMOVED), False if the guest has not released it in time
        (DEVICE_REMOVAL_FAILED; it stays until the guest does)."""
        ...

    async def change_media(self, disk: Disk, new: Disk) -> None:
        """Replace the media of a live CD-ROM with ``new``'s (no source: eject)."""
        ...

    async def set_link(self, nic: Interface, state: str | None) -> None:
        """Set the link of a live interface down (``down``) or up (``up``, None)."""
        ...

    async def set_metadata(self, source: DomainDef) -> None:
        """Give the live definition the ``<title>``, ``<description>`` and ``<metadata>`` of
        ``source`` (they mean nothing to the hypervisor: only the live XML changes)."""
        ...

    async def pm_wakeup(self) -> None:
        """Wake a guest suspended to RAM (nothing happens to one that is not)."""
        ...

    async def send_key(self, qnums: list[int], holdtime: int) -> None:
        """Press the keys (QEMU's key numbers) together for ``holdtime`` ms (0: the
        hypervisor's default), then release them."""
        ...

    async def inject_nmi(self) -> None:
        """Send a non-maskable interrupt to the guest's CPUs."""
        ...

    async def screenshot(self, device: str | None, head: int) -> bytes:
        """The image on a head of a video device (None: the first device) as a binary PPM."""
        ...

    async def change_display_password(self, gfx: Graphics, new: Graphics) -> None:
        """Give a live display ``new``'s password, expiry and ``connected`` (update_device)."""
        ...

    async def block_resize(self, disk: Disk, size: int) -> None:
        """Resize a live disk's image to ``size`` bytes (the guest sees the new size)."""
        ...

    async def block_pull(self, disk: Disk, bandwidth: int, base: str | None) -> None:
        """Start a job streaming a live disk's backing chain (down to ``base``, a path or
        ``TARGET[N]``, which stays; None: all of it) into its top image (at most
        ``bandwidth`` bytes/s; 0: unlimited). InvalidArgError without a backing chain,
        OperationInvalidError if the disk has a job already."""
        ...

    async def block_commit(
        self,
        disk: Disk,
        base: str | None,
        top: str | None,
        bandwidth: int,
        *,
        active: bool,
        shallow: bool,
    ) -> None:
        """Start a job committing the images from ``top`` (a path or ``TARGET[N]``; None:
        the active layer, which needs ``active``) down to ``base`` (None: the bottom;
        ``shallow``: the one just below ``top``)."""
        ...

    async def block_copy(
        self,
        disk: Disk,
        dest: BackingStore,
        bandwidth: int,
        *,
        shallow: bool,
        reuse_ext: bool,
    ) -> None:
        """Start a job mirroring a live disk onto the image ``dest`` names (made by QEMU, in
        its format; unless ``reuse_ext``: an image that exists): all of its chain, or
        (``shallow``) its top over the same backing file. Ready once the copy is in sync,
        it waits for a pivot or an abort."""
        ...

    async def block_job_info(self, disk: Disk) -> BlockJobInfo | None:
        """A live disk's block job (None: it has none)."""
        ...

    async def block_job_abort(self, disk: Disk, *, pivot: bool, wait: bool) -> None:
        """End a live disk's block job: ``pivot`` a ready copy or active commit onto its new
        image, else cancel it; ``wait``: until it has ended (the live definition then says
        which image the disk uses)."""
        ...

    async def block_job_set_speed(self, disk: Disk, bandwidth: int) -> None:
        """Limit a live disk's block job to ``bandwidth`` bytes/s (0: unlimited)."""
        ...


class DomainObj:
    """One domain of the table (libvirt's ``virDomainObj``)."""

    __slots__ = (
        "_job",
        "autodestroy_owner",
        "autostart",
        "managed_save",
        "name",
        "persistent_def",
        "removed",
        "runtime",
        "shutoff_reason",
        "snapshots",
        "uuid",
    )

    def __init__(self, name: str, uuid: str, persistent_def: DomainDef | None) -> None:
        self.name = name
        self.uuid = uuid
        #: The configuration for the next boot; None for a transient domain.
        self.persistent_def = persistent_def
        #: The running guest; None while shut off.
        self.runtime: DomainRuntime | None = None
        self.shutoff_reason: ShutoffReason = ShutoffReason.UNKNOWN
        #: Who started it with autodestroy (a client of the node), or None.
        self.autodestroy_owner: object | None = None
        #: Started when its node opens after the host booted (persistent domains only).
        self.autostart = False
        #: Set once the domain has left the table: its handles then name nothing.
        self.removed = False
        #: Its snapshots (persistent domains only).
        self.snapshots = SnapshotTree()
        #: It was stopped with managed_save(): its next start restores the saved guest.
        self.managed_save = False
        self._job = trio.Lock()

    @property
    def active(self) -> bool:
        return self.runtime is not None

    @property
    def persistent(self) -> bool:
        return self.persistent_def is not None

    def state(self) -> tuple[DomainState, StateReason]:
        if self.runtime is not None:
            return self.runtime.state
        return DomainState.SHUTOFF, self.shutoff_reason

    def definition(self, *, inactive: bool = False) -> DomainDef:
        """The live definition while running (unless ``inactive``), else the persistent one."""
        if self.runtime is not None and not (inactive and self.persistent_def is not None):
            return self.runtime.live_def
        assert self.persistent_def is not None  # an inactive transient domain does not exist
        return self.persistent_def

    def __repr__(self) -> str:
        return f"<DomainObj {self.name!r} {self.uuid}>"


class DomainTable:
    """Every domain of one node, by UUID and by name."""

    def __init__(self) -> None:
        self._by_uuid: dict[str, DomainObj] = {}
        self._by_name: dict[str, DomainObj] = {}
        self._next_id = 1
        #: Held across multi-step changes of the table (define, create, undefine).
        self.lock = trio.Lock()

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_uuid)

    def __iter__(self) -> Iterator[DomainObj]:
        return iter(list(self._by_uuid.values()))

    def get(self, uuid: str) -> DomainObj:
        """The domain with this (canonical) UUID; NoDomainError if there is none."""
        obj = self._by_uuid.get(uuid)
        if obj is None:
            raise NoDomainError(f"no domain with matching uuid '{uuid}'")
        return obj

    def find(self, uuid: str) -> DomainObj | None:
        return self._by_uuid.get(uuid)

    def by_name(self, name: str) -> DomainObj:
        """The domain called ``name``; NoDomainError if there is none."""
        obj = self._by_name.get(name) if isinstance(name, str) else None
        if obj is None:
            raise NoDomainError(f"no domain with matching name '{name}'")
        return obj

    def matching(
        self, *, active: bool | None = None, persistent: bool | None = None
    ) -> list[DomainObj]:
        """Domains matching the filters (None: either), sorted by name."""
        return [
            obj
            for _, obj in sorted(self._by_name.items())
            if (active is None or obj.active == active)
            and (persistent is None or obj.persistent == persistent)
        ]

    def owned_by(self, owner: object) -> list[DomainObj]:
        """Running domains started with autodestroy by ``owner``."""
        return [o for o in self._by_uuid.values() if o.active and o.autodestroy_owner is owner]

    # -- the define rules ------------------------------------------------------------------------

    def existing_for(self, defn: DomainDef) -> DomainObj | None:
        """The domain ``defn`` would replace (same name and UUID), or None if it is new.

        DomainExistsError if its name or its UUID belongs to another domain.
        """
        by_uuid = self._by_uuid.get(defn.uuid)
        by_name = self._by_name.get(defn.name)
        if by_uuid is not None and by_uuid.name != defn.name:
            raise DomainExistsError(f"domain '{by_uuid.name}' already exists with uuid {defn.uuid}")
        if by_name is not None and by_name.uuid != defn.uuid:
            raise DomainExistsError(f"domain '{defn.name}' already exists with uuid {by_name.uuid}")
        return by_uuid

    def add(self, obj: DomainObj) -> None:
        """Put a new domain in the table (its name and UUID must be free)."""
        assert obj.uuid not in self._by_uuid and obj.name not in self._by_name
        self._by_uuid[obj.uuid] = obj
        self._by_name[obj.name] = obj

    def has_name(self, name: str) -> bool:
        return name in self._by_name

    def rename(self, obj: DomainObj, new_name: str) -> None:
        """Give a domain of the table a name no other domain has."""
        assert self._by_name.get(obj.name) is obj and new_name not in self._by_name
        del self._by_name[obj.name]
        obj.name = new_name
        self._by_name[new_name] = obj

    def remove(self, obj: DomainObj) -> None:
        """Take a domain out of the table; calls waiting for its job then fail."""
        if self._by_uuid.get(obj.uuid) is obj:
            del self._by_uuid[obj.uuid]
        if self._by_name.get(obj.name) is obj:
            del self._by_name[obj.name]
        obj.removed = True

    def remove_if_gone(self, obj: DomainObj) -> bool:
        """Remove a domain that is neither persistent nor active; True if it was removed."""
        if obj.persistent_def is None and obj.runtime is None:
            self.remove(obj)
            return True
        return False

    # -- runtime ---------------------------------------------------------------------------------

    def allocate_id(self) -> int:
        """The next runtime id (``virsh list``'s Id column)."""
        dom_id = self._next_id
        self._next_id += 1
        return dom_id

    def reserve_ids_through(self, dom_id: int) -> None:
        """Ids up to ``dom_id`` are taken (by domains a previous supervisor started)."""
        self._next_id = max(self._next_id, dom_id + 1)

    def stopped(self, obj: DomainObj, runtime: DomainRuntime, reason: ShutoffReason) -> None:
        """A runtime's guest is gone: the domain is shut off (and transient ones leave)."""
        if obj.runtime is not runtime:
            return
        obj.runtime = None
        obj.autodestroy_owner = None
        obj.shutoff_reason = reason
        self.remove_if_gone(obj)

    @contextlib.asynccontextmanager
    async def job(self, obj: DomainObj) -> AsyncIterator[DomainObj]:
        """Hold the domain's job; NoDomainError if it left the table before we got it."""
        async with obj._job:
            if obj.removed:
                raise NoDomainError(f"domain '{obj.name}' no longer exists")
            yield obj


__all__ = ["DomainObj", "DomainRuntime", "DomainTable"]
