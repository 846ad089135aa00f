"""One task per QEMU process: spawn or re-attach, speak QMP, turn events into state, see it die.

A :class:`QemuRunner` is the runtime of a running domain. Its task lives in the node's
nursery for as long as its QEMU runs (or until the node closes, which detaches it and leaves
QEMU running). Inside it:

* the *pump* takes QMP events from a bounded buffer, feeds them to the domain's
  :class:`~.statemachine.DomainStateMachine` and publishes what comes out;
* the *exit watcher* waits on QEMU's pidfd. QEMU's exit, not its socket closing, is the
  authority on death; before concluding, the runner lets the monitor read everything QEMU
  wrote before dying, because a SHUTDOWN event seen before the exit means a clean stop and
  none means a crash;
* the *status writer* keeps ``NAME.status`` current without blocking the pump.

The runner knows nothing of the driver: it reports through the
:class:`~asvirt.hypervisor.domain_driver.RuntimeCallbacks` of its domain, and takes what it
needs to run (paths, settings, the monitors' host, capabilities) from a :class:`RunnerEnv`.

Every QMP command has a deadline, and waits only on this QEMU: a QEMU that stops answering
fails its own commands with OperationTimeoutError, nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import functools
import math
import os
import shlex
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from ... import fsutil
from ...conf.domain import DomainDef
from ...conf.metadata import adopt_metadata
from ...config import QemuConfig
from ...drivers.base import SecretUsageType, StatsGroup
from ...errors import (
    ArgumentUnsupportedError,
    AsvirtError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    OperationUnsupportedError,
    QMPError,
    SystemCallError,
)
from ...events.types import (
    AgentLifecycleReason,
    AgentLifecycleState,
    EventDetail,
    EventKind,
    LifecycleEvent,
    SuspendedDetail,
)
from ...hypervisor.domain_driver import RuntimeCallbacks
from ...hypervisor.guest_state import FromImage, FromSnapshot, StartOrigin
from ...hypervisor.lifecycle import FollowUpAction, GuestEvent, LifecyclePolicy
from ...hypervisor.stats import GroupBits, PendingSample, ReadySample, RuntimeSample, SampleScope
from ...log import get_logger
from ...states import DomainState, PausedReason, ShutoffReason, StateReason
from ..groups import unwrap_single_error
from . import membacking, numad, process, tuning, vhostnet
from . import stats as hoststats
from .agent import AGENT_CHANNEL, GuestAgent
from .blockjobs import BlockJobOps
from .capabilities import QemuCapabilities
from .command import (
    MonitorSpec,
    build_command,
    fill_listen_addresses,
    fill_runtime_paths,
    links_down,
)
from .command_extra import display_env
from .displays import display_password, set_password
from .extsnap import ExternalSnapshotOps
from .guest_input import GuestInputOps
from .helpers import DomainHelpers, drop_missing_sources, ensure_nvram
from .hotplug import HotplugOps
from .livetune import LiveTuneOps
from .monitor import Batch, Monitor, MonitorCounters, MonitorHost, Pending, Prepared
from .paths import EmbedPaths
from .savevm import RESYNC_EVENT, GuestStateOps
from .secrets import SecretLookup, needed_secrets, secret_object, secret_pipes
from .security import DacSecurity, QemuIdentity, describe_file, unreachable
from .statemachine import DiskInfo, DomainStateMachine, Reaction, StartKind, StopCause
from .status import RUNNING, STARTING, StatusRecord
from .tls import TlsConfig, check_tls_files
from .vcpus import ResourceOps, vcpu_unplug_event


class DomainStoppedError(OperationInvalidError, QMPError):
    """A QMP call lost its monitor because the domain stopped under it (a racing destroy,
    QEMU exiting): to the caller the domain is not running, as libvirt says
    (VIR_ERR_OPERATION_INVALID). Still a QMPError, so the runner's own handlers of a lost
    monitor (refreshing state, giving up a follow-up) treat it as before."""


@dataclasses.dataclass(frozen=True)
class RunnerEnv:
    """What a runner needs from its node to run a QEMU."""

    paths: EmbedPaths
    config: QemuConfig
    host: MonitorHost
    #: Where runner tasks live: the node's nursery, not any connection's.
    nursery: trio.Nursery
    capabilities_for: Callable[[DomainDef], Awaitable[QemuCapabilities]]
    #: Who QEMU runs as and the files given to that user (None: as the supervisor, nothing).
    security: DacSecurity | None = None
    #: Creates the taps of the definition's ``network`` and ``bridge`` interfaces, plugged
    #: into their bridges (recording their names in it); returns alias -> tap descriptor.
    #: The descriptors are QEMU's once it is spawned: the runner closes its copies.
    plug_interfaces: Callable[[DomainDef], Awaitable[dict[str, list[int]]]] | None = None
    #: Removes what a stopped domain's interfaces leave on the host (macvtaps); blocking.
    unplug_interfaces: Callable[[DomainDef], None] | None = None
    #: What the node's monitors count together (QMP deadlines missed).
    monitor_counters: MonitorCounters = dataclasses.field(default_factory=MonitorCounters)
    #: Looks up a secret the definition names (encrypted disks): its UUID and value.
    secret_value: SecretLookup | None = None


class RunMode(enum.Enum):
    LAUNCH = "launch"
    ATTACH = "attach"


class QemuRunner(
    GuestStateOps,
    ResourceOps,
    HotplugOps,
    BlockJobOps,
    ExternalSnapshotOps,
    GuestInputOps,
    LiveTuneOps,
):
    """Supervises one QEMU process for one domain (its snapshots and saves: see
    :class:`~.savevm.GuestStateOps`; its balloon and vCPU hotplug: :class:`~.vcpus.ResourceOps`;
    its devices plugged in and out: :class:`~.hotplug.HotplugOps`; its disks' block jobs:
    :class:`~.blockjobs.BlockJobOps`; external disk snapshots:
    :class:`~.extsnap.ExternalSnapshotOps`; keys, NMIs and screenshots:
    :class:`~.guest_input.GuestInputOps`)."""

    def __init__(
        self,
        env: RunnerEnv,
        callbacks: RuntimeCallbacks,
        live_def: DomainDef,
        *,
        domain_id: int,
        autodestroy: bool,
    ) -> None:
        self._env = env
        self._callbacks = callbacks
        self._name = callbacks.name
        self._uuid = callbacks.uuid
        self._live_def = live_def
        self._domain_id = domain_id
        self.autodestroy = autodestroy
        self.log = get_logger("asvirt.qemu").bind(domain=self._name, uuid=self._uuid)
        self.machine = DomainStateMachine(disk_for_node=self._disk_for_node)
        self._policy = LifecyclePolicy(live_def.on_poweroff, live_def.on_reboot, live_def.on_crash)
        self.pid: int | None = None
        self._start_time: int | None = None
        self._pidfd: int | None = None
        #: /proc/PID/stat of this QEMU, open while it runs (dom.info() reads it each call).
        self._cpu_clock: process.CpuClock | None = None
        self._monitor: Monitor | None = None
        self._phase = STARTING
        send, recv = trio.open_memory_channel[dict[str, Any]](env.config.event_buffer)
        self._event_send = send
        self._event_recv = recv
        self._received = 0
        self._processed = 0
        self._overflowed = False
        self._progress = trio.lowlevel.ParkingLot()
        self._status_dirty = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self.exited = False
        self.exit_status: int | None = None
        self._done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._mode = RunMode.LAUNCH
        self._live_xml: str | None = None
        #: The live XML without secrets, and the secure one it was made beside.
        self._public_xml: tuple[str | None, str] = (None, "")
        self._log_start = 0
        # Status records taken and the newest written (see _write_record).
        self._status_lock = threading.Lock()
        self._status_taken = 0
        self._status_written = 0
        #: STARTED has been published: the domain's end must be reported, even if the start
        #: itself fails afterwards.
        self._announced = False
        #: NVRAM, host devices and helper programs (swtpm, virtiofsd): up before QEMU.
        self._helpers: DomainHelpers | None = None
        #: The domain's own cgroup (<cputune> bandwidth, <memtune>, <blkiotune>), if any.
        self._cgroup: tuning.DomainCgroup | None = None
        self._resctrl: tuning.DomainResctrl | None = None
        #: The vCPU threads (by vCPU index) with their /proc files open, once QEMU told them:
        #: they change only when vCPUs are plugged or unplugged, which the statistics notice
        #: (a count that differs, a thread that is gone) and ask again.
        self._vcpu_threads: hoststats.VcpuFiles | None = None
        #: Statistics queries, encoded once (:meth:`_stats_query`), and joined once for each
        #: combination of them (:meth:`_stats_batch`).
        self._stats_queries: dict[str, Prepared] = {}
        self._stats_batches: dict[tuple[str | None, bool, bool], Batch | None] = {}
        #: The balloon's statistics as QEMU gave them while the guest was fresh (see
        #: :attr:`DomainStateMachine.fresh`): no guest driver can have reported any, and
        #: QEMU's answer stays what it was until the guest runs, so it is asked once.
        self._fresh_guest_memory: dict[str, int] | None = None
        #: Where the guest's state comes from at start (None: it boots).
        self._origin: StartOrigin = None
        #: The guest agent's channel, once asked for (:meth:`_guest_agent`).
        self._agent: GuestAgent | None = None
        #: Who waits for which QMP events (:meth:`watch_events`).
        self._watchers: list[tuple[frozenset[str], trio.MemorySendChannel[dict[str, Any]]]] = []
        #: Devices asked to go (device_del), by alias: set once QEMU has removed them.
        self._unplugs: dict[str, trio.Event] = {}
        self._reported_gone: set[str] = set()
        #: Block jobs this supervisor cancelled (their end is "canceled", whatever QEMU says).
        self._cancelled_jobs: set[str] = set()

    # -- the runtime of a domain (what the shared domain calls use) -----------------------------

    @property
    def domain_id(self) -> int:
        return self._domain_id

    @property
    def live_def(self) -> DomainDef:
        return self._live_def

    @property
    def state(self) -> tuple[DomainState, StateReason]:
        return self.machine.state, self.machine.reason

    def live_xml(self, *, secure: bool = True) -> str:
        """The live XML (cached: the live definition changes only when QEMU tells us a pty
        path or a VNC port); ``secure=False``: without its secrets, cached beside it."""
        if self._live_xml is None:
            self._live_xml = self._live_def.to_xml(live=True, domain_id=self._domain_id)
        if secure:
            return self._live_xml
        # Made again whenever the secure one was (dropped and remade where the live
        # definition changes).
        made_from, public = self._public_xml
        if made_from is not self._live_xml:
            public = self._live_def.to_xml(live=True, domain_id=self._domain_id, secure=False)
            self._public_xml = (self._live_xml, public)
        return public

    def memory_kib(self) -> int:
        return self.machine.balloon_kib or self._live_def.current_memory_kib

    def cpu_time_ns(self) -> int:
        if not self.pid:
            return 0
        return self._clock(self.pid).ns()

    def _clock(self, pid: int) -> process.CpuClock:
        """This QEMU's /proc/PID/stat, kept open while it runs."""
        clock = self._cpu_clock
        if clock is None or clock.pid != pid:
            if clock is not None:
                clock.close()
            clock = self._cpu_clock = process.CpuClock(pid)
        return clock

    def _close_cpu_clock(self) -> None:
        """Close the /proc files kept open for this QEMU (its CPU clock, its vCPU threads)."""
        if self._cpu_clock is not None:
            self._cpu_clock.close()
            self._cpu_clock = None
        self._forget_vcpu_threads()

    async def start(self, *, paused: bool, origin: StartOrigin = None) -> None:
        """Spawn QEMU and boot the guest (or leave it paused); raises if it did not start.

        ``origin``: load the guest's state first, from a save image (QEMU started with
        ``-incoming defer``, then ``migrate-incoming`` from the image's descriptor) or from
        an internal snapshot (``snapshot-load`` while QEMU is still stopped)."""
        self._origin = origin
        await self._env.nursery.start(functools.partial(self._run, RunMode.LAUNCH, paused=paused))

    async def attach(
        self, record: StatusRecord, *, told: tuple[LifecycleEvent, EventDetail] | None = None
    ) -> None:
        """Take over the QEMU a previous supervisor left (raises if it is gone meanwhile);
        ``told``: the domain's last lifecycle event in the journal (see
        :meth:`DomainStateMachine.restore`)."""
        self.machine = DomainStateMachine.restore(
            record.machine, disk_for_node=self._disk_for_node, told=told
        )
        await self._env.nursery.start(functools.partial(self._run, RunMode.ATTACH, record=record))

    async def suspend(self) -> None:
        self.machine.expect_pause(PausedReason.USER)
        await self.execute("stop")

    async def resume(self) -> None:
        await self.execute("cont")

    async def powerdown(self, *, reboot: bool) -> None:
        if not reboot:
            await self.execute("system_powerdown")
            return
        self.machine.begin_reboot()
        self.mark_dirty()
        try:
            await self.execute("system_powerdown")
        except BaseException:
            self.machine.abort_reboot()
            self.mark_dirty()
            raise

    async def reset(self) -> None:
        await self.execute("system_reset")

    async def destroy(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once QEMU is gone."""
        self.machine.begin_destroy()
        await self._terminate()

    async def qmp(self, command: str, arguments: dict[str, Any] | None) -> Any:
        # A command passed through as is may load a state too (snapshot-load,
        # migrate-incoming): what asvirt knew of the guest's freshness no longer holds.
        self.machine.load_state()
        return await self.execute(command, arguments)

    async def set_metadata(self, source: DomainDef) -> None:
        await trio.lowlevel.checkpoint()
        adopt_metadata(self._live_def, source)
        self._live_changed()

    async def agent_command(
        self, execute: str, arguments: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        """Run a guest agent command; the agent's whole reply (see :class:`GuestAgent`).
        ``timeout`` None: ``[qemu] agent_timeout``."""
        if timeout is None:
            timeout = self._env.config.agent_timeout
        return await self._guest_agent().command(execute, arguments, timeout)

    def _guest_agent(self) -> GuestAgent:
        if self._agent is None:
            for chan in self._live_def.channels:
                if (
                    chan.target_name == AGENT_CHANNEL
                    and chan.type == "unix"
                    and chan.source_path
                    and chan.alias
                ):
                    self._agent = GuestAgent(chan.source_path, chan.alias)
                    break
            else:
                raise ArgumentUnsupportedError("QEMU guest agent is not configured")
        return self._agent

    def _agent_state_changed(self, alias: str, open_: bool, reason: AgentLifecycleReason) -> None:
        """QEMU says the guest opened or closed the virtio-serial port ``alias``."""
        try:
            agent = self._guest_agent()
        except ArgumentUnsupportedError:
            return
        if alias != agent.alias or agent.connected is open_:
            return
        agent.connected = open_
        for chan in self._live_def.channels:
            if chan.alias == alias:
                # libvirt's live XML says it too: <target ... state='connected'/>.
                chan.target_state = "connected" if open_ else "disconnected"
                self._live_xml = None
        state = AgentLifecycleState.CONNECTED if open_ else AgentLifecycleState.DISCONNECTED
        self.log.info("guest agent " + state.label, operation="agent")
        self._callbacks.publish(
            EventKind.AGENT_LIFECYCLE, data={"state": int(state), "reason": int(reason)}
        )

    def persistence_changed(self) -> None:
        self.mark_dirty()

    async def sample(self, groups: StatsGroup, scope: SampleScope) -> RuntimeSample:
        """Measure what ``groups`` need (see :meth:`begin_sample`)."""
        return await (await self.begin_sample(groups, scope)).result()

    async def begin_sample(self, groups: StatsGroup, scope: SampleScope) -> PendingSample:
        """Ask QEMU what ``groups`` need of it (the balloon's statistics, blockstats, the
        vCPU threads when they are not known yet), written together to be answered in one
        round trip; the result's ``result()`` measures the rest on the host (/proc for CPU
        times, memory and vCPU threads; the interface counters) and reads the answers.
        Queries QEMU does not answer within ``stats_timeout`` leave their figures out. A
        QEMU that dies meanwhile is reported once its runner has seen it go (as a shut off
        domain, as libvirt does).

        The queries are written before this returns, without a checkpoint when the socket
        takes them: a caller asks every QEMU first, then reads the answers. Nothing else is
        done here: every QEMU asked is a process woken that competes for the CPU with the
        caller, and on a small machine the caller's work between two writes was found to
        stretch by the number of QEMUs already at work."""
        wanted = int(groups)  # a Flag's & costs microseconds; an int's does not
        pid = self.pid
        monitor = self._monitor
        if pid is None or monitor is None:
            return ReadySample(RuntimeSample())
        # One deadline for this domain's queries, none per query.
        deadline = trio.current_time() + self._env.config.stats_timeout
        pending = _QemuPendingSample(self, wanted, scope, pid, deadline)
        if self.exited or monitor.ended:
            pending.lost = True
            return pending
        live = self._live_def
        threads = self._vcpu_threads
        if threads is not None and (threads.pid != pid or len(threads.threads) != live.vcpus):
            self._forget_vcpu_threads()  # the vCPUs changed (hotplug): ask QEMU again
        known = self._fresh_guest_memory if self._guest_fresh() else None
        if known is not None and wanted & GroupBits.BALLOON:
            pending.sample.guest_memory = known
        batch = self._stats_batch(wanted, live, balloon_known=known is not None)
        if batch is not None:
            try:
                pending.replies = await monitor.ask(batch, deadline=deadline)
                pending.queries = batch.commands
            except QMPError as err:
                self.log.debug("statistics queries failed", operation="stats", error=str(err))
                pending.lost = monitor.ended
        return pending

    def _stats_batch(self, wanted: int, live: DomainDef, *, balloon_known: bool) -> Batch | None:
        """The queries ``wanted`` groups need of QEMU now (None: none), joined once for each
        combination: the balloon's statistics (unless ``balloon_known``: a fresh guest's),
        blockstats, and the vCPU threads when they are not known (first time, or the vCPUs
        changed)."""
        balloon = None
        if (
            wanted & GroupBits.BALLOON
            and not balloon_known
            and live.memballoon is not None
            and live.has_memballoon
        ):
            balloon = live.memballoon.alias
        block = bool(wanted & GroupBits.BLOCK and live.disks)
        cpus = bool(wanted & GroupBits.VCPU and self._vcpu_threads is None)
        key = (balloon, block, cpus)
        if key in self._stats_batches:
            return self._stats_batches[key]
        queries = []
        if balloon is not None:
            queries.append(self._stats_query("qom-get", balloon))
        if block:
            queries.append(self._stats_query("query-blockstats"))
        if cpus:
            queries.append(self._stats_query("query-cpus-fast"))
        found = self._stats_batches[key] = Batch.of(queries) if queries else None
        return found

    def _guest_fresh(self) -> bool:
        """The guest is fresh (:attr:`DomainStateMachine.fresh`) as of every event read so
        far: none waits to reach the machine (a RESUME QEMU sent before a reply just read)."""
        return self.machine.fresh and self._processed == self._received and not self._overflowed

    async def _measure_host(self, pending: _QemuPendingSample) -> None:
        """What the host says of this QEMU for the pending sample's groups: its CPU times
        and memory, its interface counters, its vCPU threads' times (asking QEMU which they
        are, after what was already asked, if one is gone)."""
        sample, wanted, pid = pending.sample, pending.wanted, pending.pid
        if wanted & (GroupBits.CPU_TOTAL | GroupBits.BALLOON):
            times = hoststats.process_times(self._clock(pid).read())
            if times is not None and wanted & GroupBits.CPU_TOTAL:
                sample.cpu = times[0]
            if wanted & GroupBits.BALLOON:
                sample.balloon_kib = self.memory_kib()
                sample.rss_kib = times[1] if times is not None else None
        if wanted & GroupBits.INTERFACE:
            table = pending.scope.memo("netdev", hoststats.read_netdev)
            sample.nets = {
                nic.target_dev: hoststats.tap_stats(table[nic.target_dev])
                for nic in self._live_def.interfaces
                if nic.type != "user" and nic.target_dev in table
            }
        if wanted & GroupBits.VCPU:
            pending.wait = pending.scope.memo("schedstats", hoststats.schedstats_enabled)
            threads = self._vcpu_threads
            if threads is not None and "query-cpus-fast" not in pending.queries:
                sample.vcpus = threads.sample(wait=pending.wait)
                monitor = self._monitor
                if sample.vcpus is None and monitor is not None and not monitor.ended:
                    # A thread is gone (vCPUs unplugged behind our back): ask QEMU which
                    # they are now.
                    self._forget_vcpu_threads()
                    more = self._stats_query("query-cpus-fast")
                    try:
                        replies = await monitor.ask(Batch.of([more]), deadline=pending.deadline)
                    except QMPError as err:
                        self.log.debug("statistics query failed", operation="stats", error=str(err))
                    else:
                        pending.replies = [*pending.replies, *replies]
                        pending.queries = (*pending.queries, more.command)

    def _forget_vcpu_threads(self) -> None:
        if self._vcpu_threads is not None:
            self._vcpu_threads.close()
            self._vcpu_threads = None

    def _stats_query(self, command: str, balloon: str | None = None) -> Prepared:
        """A statistics query, encoded once per QEMU (the balloon's path is its own). The
        balloon's full QOM path, not the partial ``balloon0`` QEMU also takes: 20 bytes
        fewer to read (~40 us), but QEMU then searches its whole object tree: measured,
        130 us more of QEMU's CPU per query, bytes saved included."""
        key = f"{command} {balloon}"
        found = self._stats_queries.get(key)
        if found is None:
            arguments = None
            if balloon is not None:
                arguments = {"path": f"/machine/peripheral/{balloon}", "property": "guest-stats"}
            found = self._stats_queries[key] = Monitor.prepare(command, arguments)
        return found

    def _stats_answers(
        self, pending: _QemuPendingSample, answers: list[Any], timed_out: bool
    ) -> RuntimeSample:
        """The sample, completed with what QEMU answered (a query refused or unanswered
        leaves its figures out)."""
        if timed_out:
            self._env.monitor_counters.timeouts += 1
            self.log.debug("QEMU did not answer statistics queries in time", operation="stats")
        sample, live = pending.sample, self._live_def
        for command, reply in zip(pending.queries, answers, strict=True):
            if isinstance(reply, QMPError):
                self.log.debug(
                    "statistics query failed", operation="stats", command=command, error=str(reply)
                )
                continue
            if reply is None:
                continue
            if command == "qom-get":
                sample.guest_memory = hoststats.guest_memory(reply)
                if self._guest_fresh():
                    # Answered before the guest first ran (its RESUME would have come first).
                    self._fresh_guest_memory = sample.guest_memory
            elif command == "query-blockstats":
                sample.blocks = hoststats.block_counters(reply, live.disks)
            elif self.pid is not None and not self.exited:
                self._forget_vcpu_threads()
                files = hoststats.VcpuFiles(self.pid, hoststats.vcpu_threads(reply))
                sample.vcpus = files.sample(wait=pending.wait)
                if sample.vcpus is not None:
                    self._vcpu_threads = files
                else:
                    files.close()
        return sample

    async def set_memory_stats_period(self, period: int) -> None:
        """Set the balloon's statistics polling interval (libvirt's ``<stats period>``)."""
        balloon = self._live_def.memballoon
        assert balloon is not None and balloon.alias
        await self.execute(
            "qom-set",
            {
                "path": f"/machine/peripheral/{balloon.alias}",
                "property": "guest-stats-polling-interval",
                "value": period,
            },
        )
        balloon.stats_period = period
        self._live_xml = None
        self.mark_dirty()

    # -- the node's hold on the runner ---------------------------------------------------------

    def detach(self) -> None:
        """Stop supervising and leave QEMU running (the next open of the root re-attaches).

        A stop the supervisor has begun is finished first, so that nobody finds a
        half-stopped QEMU.
        """
        if not self.machine.stopping:
            self._cancel_scope.cancel()

    async def wait_done(self) -> None:
        await self._done.wait()

    # -- QMP --------------------------------------------------------------------------------------

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command on this QEMU, then wait until the events it caused are processed."""
        if self._monitor is None or self.exited:
            if self.exited:
                raise DomainStoppedError(f"domain '{self._name}' is not running")
            raise QMPError(f"domain '{self._name}' has no monitor connection")
        result = await self._call(command, arguments)
        await self.sync_events()
        return result

    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` under ``name`` (see :meth:`Monitor.send_fd`)."""
        assert self._monitor is not None
        try:
            await self._monitor.send_fd(fd, name)
        except QMPError as err:
            raise await self._monitor_error(err) from None

    async def add_secret(self, secret_id: str, value: bytes) -> None:
        """Create the ``secret`` object ``secret_id`` in the running QEMU, holding ``value``.

        Not with ``object-add``'s ``data``: QEMU gives that back to anyone who asks
        ``qom-get`` (a client's ``qemu-monitor-command``), private secret or not. The value
        goes through a pipe, as at start (see :mod:`.secrets`): its read end is passed over
        the monitor into an fd set, the object reads ``/proc/self/fd/N``, and the fd set is
        removed again."""
        assert self._monitor is not None
        with secret_pipes({secret_id: value}) as fds:
            try:
                added = await self._monitor.add_fd(fds[secret_id])
            except QMPError as err:
                raise await self._monitor_error(err) from None
        try:
            await self.execute(
                "object-add", secret_object(secret_id, f"/proc/self/fd/{added['fd']}")
            )
        finally:
            with trio.CancelScope(shield=True):
                # (The pipe is empty once read: a set left behind holds nothing.)
                await self._quietly("remove-fd", {"fdset-id": added["fdset-id"]})

    async def _monitor_error(self, err: QMPError) -> QMPError:
        """What a failed QMP exchange is to the caller: the one place a lost monitor becomes
        "domain is not running" (libvirt's OPERATION_INVALID) when QEMU really went (it is
        exiting: waited for, within the destroy grace period). QEMU's own refusals, and a
        monitor lost while QEMU lives on, stay the QMPError. A stop the supervisor began
        (destroy, a save's end) counts at once: QEMU is going."""
        if err.error_class is not None:
            return err
        if not self.machine.stopping:
            # Not ended by the supervisor: a QEMU that died exits now (the runner notices
            # within a second or two, since it lets the monitor and events drain first).
            with trio.move_on_after(self._env.config.destroy_grace + 2):
                while not self.exited:
                    await self._progress.park()
        if not (self.exited or self.machine.stopping):
            return err
        stopped = DomainStoppedError(f"domain '{self._name}' is not running")
        stopped.__cause__ = err
        return stopped

    async def sync_events(self) -> None:
        """Wait until every event QEMU sent before now has been processed.

        QEMU sends the events a command causes before the command's reply (RESUME before the
        reply to ``cont``), and the monitor hands events over in order, so after a reply this
        makes the state reflect the command.
        """
        target = self._received
        while self._processed < target and not self.exited:
            await self._progress.park()

    async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command (without waiting for the events it caused)."""
        assert self._monitor is not None
        try:
            return await self._monitor.execute(command, arguments)
        except QMPError as err:
            raise await self._monitor_error(err) from None

    def mark_dirty(self) -> None:
        self._status_dirty.set()

    # -- the task -----------------------------------------------------------------------------

    async def _run(
        self,
        mode: RunMode,
        *,
        paused: bool = False,
        record: StatusRecord | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        self._mode = mode
        try:
            # Before started() only the start-up code can fail (the pump and watchers do not),
            # so a group of one is that failure: start() callers get it, not a group.
            with self._cancel_scope, unwrap_single_error():
                if mode is RunMode.LAUNCH:
                    await self._launch()
                else:
                    assert record is not None
                    await self._attach(record)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._pump)
                    nursery.start_soon(self._watch_exit, nursery.cancel_scope)
                    nursery.start_soon(self._write_status_when_dirty)
                    if mode is RunMode.LAUNCH:
                        await self._boot(paused=paused)
                    else:
                        await self._reconcile_attached()
                    started = True
                    task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(started=started)
        if not started:
            if self.machine.destroying:
                raise OperationInvalidError(f"domain '{self._name}' was destroyed while starting")
            if mode is RunMode.ATTACH:
                raise OperationFailedError(f"QEMU of domain '{self._name}' is gone")
            raise OperationFailedError(
                f"QEMU exited while domain '{self._name}' was starting: {self._log_tail()}"
            )

    # -- bringing QEMU up ---------------------------------------------------------------------

    async def _launch(self) -> None:
        paths = self._env.paths
        caps = await self._env.capabilities_for(self._live_def)
        security = self._security()
        who = self._qemu_identity()
        socket_dir = paths.socket_dir
        if security is not None and who is not None:
            socket_dir = security.socket_dir_for(who)  # QEMU's user cannot enter the root
        cold_boot = self._origin is None
        for target in drop_missing_sources(self._live_def, cold_boot=cold_boot):
            self.log.info(
                "disk source missing at start; dropped per its startupPolicy", disk=target
            )
        membacking.check_hugepages(self._live_def)
        tls = TlsConfig.from_qemu(self._env.config)
        # placement='auto': where numad advises (refused here, before anything exists,
        # on a host without numad).
        await numad.place(self._live_def)
        # Sockets the XML leaves unnamed (a guest agent channel) get a path under the run
        # directory, recorded in the live XML so clients know where to connect; so do
        # automatic SPICE ports.
        fill_runtime_paths(self._live_def, str(socket_dir), tls)
        check_tls_files(self._live_def, tls, who)  # with the TLS ports just given
        fill_listen_addresses(self._live_def)
        if security is not None:
            if who is not None:
                # A first start's NVRAM, from its template: a file to give QEMU's user too.
                await trio.to_thread.run_sync(ensure_nvram, self._live_def, paths)
            # Refuses what QEMU's user could not reach, before anything else exists.
            security.prepare(self._uuid, self._live_def, self._live_def.emulator or caps.binary)
        # Every secret the domain needs, before anything exists: one missing fails the start.
        secrets = needed_secrets(self._live_def, self._secret_lookup, tls)
        self._make_memory_dirs()
        # Taps first, so that the status file names them. They exist only while a
        # descriptor is open: ours until the spawn, then QEMU's alone.
        # vhost-net before them: a start it must refuse makes no tap.
        vhost_fds = vhostnet.open_all(self._live_def)
        tap_fds: dict[str, list[int]] = {}
        try:
            if self._env.plug_interfaces is not None:
                tap_fds = await self._env.plug_interfaces(self._live_def)
            with secret_pipes(secrets) as secret_fds:
                await self._spawn(caps, tap_fds, vhost_fds, secret_fds)
        finally:
            for fds in (*tap_fds.values(), *vhost_fds.values()):
                vhostnet.close_all(fds)

    def _secret_lookup(
        self, uuid: str | None, usage_type: SecretUsageType, usage_id: str | None
    ) -> tuple[str, bytes]:
        """The node's secret a definition names (see :mod:`.secrets`)."""
        if self._env.secret_value is None:
            raise OperationUnsupportedError("this node has no secret driver")
        return self._env.secret_value(uuid, usage_type, usage_id)

    async def _spawn(
        self,
        caps: QemuCapabilities,
        tap_fds: dict[str, list[int]],
        vhost_fds: dict[str, list[int]],
        secret_fds: dict[str, int] | None = None,
    ) -> None:
        paths = self._env.paths
        name = self._name
        monitor_path = paths.monitor(self._uuid)
        security = self._security()
        who = self._qemu_identity()
        socket_dir = paths.socket_dir
        if security is not None and who is not None:
            socket_dir = security.socket_dir_for(who)
        # The intent, durably, before the process exists: whoever opens this root next
        # finds every QEMU it may have started, even if we die the next instant. A start
        # that cannot write it down does not happen. It also names the files about to be
        # given to QEMU's user, so that they are given back whatever happens next.
        self._persist_status(durable=True)
        self._helpers = DomainHelpers(paths, self._live_def, name, str(paths.socket_dir))
        self._helpers.qemu_pidfd = lambda: self._pidfd
        self._helpers.secret_lookup = self._secret_lookup
        await self._helpers.start(self._env.nursery)
        listener = client = None
        log_fd = -1
        try:
            if security is not None:
                security.apply(self._uuid)
            try:
                listener = fsutil.bind_unix_listener(monitor_path)
                log_fd = fsutil.open_private_append(paths.log(name))
            except OSError as err:
                raise SystemCallError.from_oserror(err, f"start domain '{name}'") from None
            files = self._memory_dirs().files
            memory_dir = str(files) if files is not None else None
            argv = build_command(
                self._live_def,
                caps,
                monitor=MonitorSpec(fd=listener.fileno()),
                runtime_dir=str(socket_dir),
                sandbox=self._env.config.seccomp_sandbox,
                tap_fds=tap_fds,
                vhost_fds=vhost_fds,
                memory_dir=memory_dir,
                tls=TlsConfig.from_qemu(self._env.config),
                secret_fds=secret_fds,
                vhost_user_fds=self._helpers.qemu_fds,
            )
            passed: tuple[int, ...] = tuple(self._helpers.qemu_fds.values())
            if isinstance(self._origin, FromImage):
                # The saved state comes in through the image's descriptor, once asked.
                argv += ["-incoming", "defer"]
                passed += (self._origin.fd,)
            if security is not None:
                # setpriv takes on QEMU's user ([qemu] user, or the domain's own static
                # <seclabel model='dac'>) and execs QEMU: same pid, QEMU's command line.
                argv = security.command(argv, self._live_def)
            # Refuses what this host cannot control, before QEMU exists.
            self._resctrl = tuning.prepare_resctrl(self._live_def, self._uuid)
            self._cgroup = tuning.prepare_cgroup(self._live_def, self._env.config.cgroup_parent)
            _write_log_header(log_fd, argv)
            # What QEMU writes from here on is this run's: errors quote nothing older.
            self._log_start = os.lseek(log_fd, 0, os.SEEK_END)
            # Connect before QEMU exists: the kernel queues the connection on the listening
            # socket and QEMU accepts it when ready, so there is nothing to poll for.
            client = fsutil.connect_unix(monitor_path)
            try:
                self.pid = process.spawn(
                    argv,
                    log_fd=log_fd,
                    pass_fds=(
                        listener.fileno(),
                        *(fd for fds in (*tap_fds.values(), *vhost_fds.values()) for fd in fds),
                        *(secret_fds or {}).values(),
                        *passed,
                    ),
                    env={process.ROOT_ENV: str(paths.root), **display_env(self._live_def)},
                )
            except OSError as err:
                raise OperationFailedError(f"cannot run '{argv[0]}': {err.strerror}") from err
            if self._cgroup is not None:
                # At once, while QEMU is still starting (it allocates little before -S).
                self._cgroup.attach(self.pid)
        except BaseException:
            if self._cgroup is not None:
                if self.pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(self.pid, signal.SIGKILL)
                tuning.remove_cgroup(self._uuid, self._env.config.cgroup_parent)
            if self._resctrl is not None:
                tuning.remove_resctrl(self._uuid)
            if client is not None:
                client.close()
            if security is not None:
                security.release(self._uuid)  # before the record that names the files goes
            fsutil.remove(monitor_path)
            fsutil.remove(paths.status(name))
            raise
        finally:
            # QEMU has its copies of the helpers' socketpair ends, or never will.
            self._helpers.close_qemu_fds()
            if listener is not None:
                listener.close()
            if log_fd >= 0:
                os.close(log_fd)
        unwatched: SystemCallError | None = None
        try:
            self._pidfd = process.watch_child(self.pid, f"QEMU for domain '{name}'")
        except SystemCallError as err:  # killed and reaped: as if it exited at once
            self._pidfd, unwatched = None, err
        # The pid, right away (the page cache survives our death; a power cut ends QEMU too).
        self._save_status(durable=False)
        if self._pidfd is None:
            client.close()
            raise unwatched or OperationFailedError(f"QEMU exited at once: {self._exit_reason()}")
        self.log = self.log.bind(pid=self.pid)
        self._monitor = Monitor(
            self._env.host,
            name=name,
            on_event=self._on_qmp_event,
            timeout=self._env.config.qmp_timeout,
            counters=self._env.monitor_counters,
        )
        try:
            await self._monitor.connect(client, timeout=self._env.config.startup_timeout)
        except AsvirtError as err:
            if self.machine.destroying:
                raise OperationInvalidError(
                    f"domain '{name}' was destroyed while starting"
                ) from None
            # Most often QEMU refused the configuration and exited; its stderr says why.
            exited = False
            with trio.move_on_after(1):
                await process.wait_exit(self._pidfd)
                exited = True
            reason = self._exit_reason() if exited else (self._log_tail() or str(err))
            raise OperationFailedError(f"QEMU failed to start domain '{name}': {reason}") from None
        # Read after the handshake: while QEMU is still in execve, /proc/PID/stat blocks.
        self._start_time = process.read_start_time(self.pid)
        if self._start_time is None:
            raise OperationFailedError(f"QEMU exited during start-up: {self._exit_reason()}")
        self.log.info("QEMU started", operation="start", argv0=argv[0])

    def _memory_dirs(self) -> membacking.MemoryDirs:
        base = membacking.backing_dir(
            self._env.config.memory_backing_dir, self._env.paths.memory_backing_dir
        )
        return membacking.MemoryDirs.of(self._live_def, base)

    def _make_memory_dirs(self) -> None:
        """The directories of file-backed and hugepage RAM, QEMU's user's to write in."""
        dirs = self._memory_dirs()
        if not dirs:
            return
        who = self._qemu_identity()
        owner = (who.uid, who.gid) if who is not None else None
        try:
            dirs.create(owner)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"prepare the memory of domain '{self._name}'"
            ) from None
        for path in (dirs.files, *dirs.hugepages):
            blocked = unreachable(str(path), who) if path is not None and who else None
            if blocked is not None:
                raise OperationFailedError(
                    f"QEMU of domain '{self._name}' runs as {who} and cannot enter "
                    f"'{blocked}' ({describe_file(blocked)}) on the way to its memory "
                    f"directory {path}: give that user search access, or set [qemu] "
                    "memory_backing_dir to a directory it can enter"
                )

    def _remove_memory_dirs(self) -> None:
        try:
            self._memory_dirs().remove()
        except OSError as err:
            # QEMU is gone; what is left is only disk space. Said, not raised: the stop
            # itself happened.
            self.log.warning("cannot remove the domain's memory files", error=str(err))

    def _security(self) -> DacSecurity | None:
        """The node's confinement: who QEMU of this domain runs as (the node's ``[qemu]
        user``, or its own <seclabel model='dac'>), and the files given to that user."""
        return self._env.security

    def _qemu_identity(self) -> QemuIdentity | None:
        """Who this domain's QEMU runs as (None: the supervisor itself)."""
        security = self._security()
        return security.identity_of(self._live_def) if security is not None else None

    async def _boot(self, *, paused: bool) -> None:
        caps = await self._env.capabilities_for(self._live_def)
        if caps.has_command("set-action"):
            await self._call(
                "set-action",
                {
                    # -no-shutdown already pauses on shutdown; the supervisor then decides.
                    "shutdown": "pause",
                    "reboot": "shutdown" if self._live_def.on_reboot == "destroy" else "reset",
                    "panic": "pause",
                },
            )
        await self._record_pty_paths()
        await self._record_vnc_port()
        await self._quietly_follow_block_sources()  # the disks' chains, for the live XML
        await self._set_display_passwords()
        balloon = self._live_def.memballoon
        if self._live_def.has_memballoon and balloon is not None and balloon.stats_period:
            # QEMU has no command-line switch for it either (libvirt sets it the same way).
            await self._call(
                "qom-set",
                {
                    "path": f"/machine/peripheral/{balloon.alias}",
                    "property": "guest-stats-polling-interval",
                    "value": balloon.stats_period,
                },
            )
        live = self._live_def
        if live.has_memballoon and live.current_memory_kib < live.memory_kib:
            # <currentMemory> below <memory>: the balloon takes the rest once the guest's
            # driver runs (libvirt's qemuProcessSetupBalloon).
            await self._call("balloon", {"value": live.current_memory_kib * 1024})
        for nic in links_down(self._live_def):
            # QEMU has no command-line switch for a NIC whose link starts down.
            await self._call("set_link", {"name": nic, "up": False})
        # Before tuning (which pins every vCPU thread) and before a saved state loads.
        await self.plug_defined_vcpus()
        await self._apply_tuning()
        origin = self._origin
        kind = StartKind.BOOT
        detail = None
        if isinstance(origin, FromImage):
            kind = StartKind.RESTORE
            await self.load_image(origin)
            if not origin.saved_paused:
                detail = SuspendedDetail.PAUSED  # asked to stay paused, as libvirt says
        elif isinstance(origin, FromSnapshot):
            kind = StartKind.SNAPSHOT
            if origin.name is not None:
                await self.load_snapshot_stopped(origin.name, origin.disks, origin.progress)
        if paused:
            self._handle(self.machine.started_paused(kind, detail=detail))
        else:
            self.machine.begin_boot(kind)
            await self._call("cont")
            await self.sync_events()
            if self.machine.state is not DomainState.RUNNING:
                # RESUME should have come before cont's reply; if it was lost, ask QEMU.
                await self._resync()
        # STARTED is out: from now on a supervisor that dies leaves a domain to re-attach,
        # and the record says so before start() returns. If it cannot, the start fails
        # (and QEMU is ended): a domain nobody could find again must not run.
        self._announced = True
        self._phase = RUNNING
        self._origin = None  # its descriptor belongs to the caller, who closes it now
        await trio.to_thread.run_sync(self._write_record, self._take_record(), True)

    async def _attach(self, record: StatusRecord) -> None:
        self.pid = record.pid
        self._start_time = record.start_time
        self._phase = record.phase
        if record.pid is None:
            raise ProcessLookupError("QEMU was never spawned")
        self.log = self.log.bind(pid=self.pid)
        pidfd = process.open_pidfd(record.pid)
        # The pidfd pins the process, so checking identity after opening it is race-free.
        if pidfd is not None and not process.is_our_qemu(record.pid, record.start_time, self._uuid):
            os.close(pidfd)  # the pid now belongs to someone else: never signal it
            pidfd = None
        if pidfd is None:
            raise ProcessLookupError(record.pid)
        self._pidfd = pidfd
        self._helpers = DomainHelpers.load(self._env.paths, self._live_def, self._name)
        self._helpers.qemu_pidfd = lambda: self._pidfd
        self._helpers.adopt(self._env.nursery)
        # What the previous supervisor made for it, for vCPUs plugged from now on.
        self._cgroup = tuning.existing_cgroup(self._live_def, self._env.config.cgroup_parent)
        self._resctrl = tuning.existing_resctrl(self._live_def, self._uuid)
        if self._start_time is None:
            self._start_time = process.read_start_time(record.pid)
        if record.phase != RUNNING:
            # Its start never completed: nobody was told it runs. End it.
            raise OperationFailedError("the supervisor died while starting it")
        self._monitor = Monitor(
            self._env.host,
            name=self._name,
            on_event=self._on_qmp_event,
            timeout=self._env.config.qmp_timeout,
            counters=self._env.monitor_counters,
        )
        sock = fsutil.connect_unix(record.monitor)
        await self._monitor.connect(sock, timeout=self._env.config.startup_timeout)
        self.log.info("re-attached to running QEMU", operation="attach")

    async def _reconcile_attached(self) -> None:
        if self.machine.stopping:
            # The previous supervisor had begun to stop it: finish, with its outcome.
            await self._terminate()
            return
        reaction = await self._resync(attaching=True)
        await self._forget_unplugged()
        with contextlib.suppress(QMPError, OperationTimeoutError):
            # A job that pivoted a disk onto another image while nobody watched.
            await self.follow_block_sources()
        with contextlib.suppress(OperationTimeoutError):
            # The agent's state (no VSERPORT_CHANGE told it while nobody watched); a QEMU
            # that does not answer leaves it unknown, as it does the rest.
            await self._record_pty_paths()
        if reaction is not None and reaction.follow_up is not None:
            # A guest that shut down or panicked while nobody watched gets its follow-up
            # now, before anyone is told the domain's state.
            await self._follow_up(reaction.follow_up)
        self.mark_dirty()

    async def _record_pty_paths(self) -> None:
        """The pty paths QEMU chose (for the live XML), and the guest agent's state."""
        wanted = set(self._live_def.chardev_ids())
        if not wanted and not any(c.target_name == AGENT_CHANNEL for c in self._live_def.channels):
            return
        try:
            chardevs = await self._call("query-chardev")
        except QMPError:
            return
        for dev in chardevs:
            label, filename = dev.get("label"), dev.get("filename", "")
            if label in wanted and filename.startswith("pty:"):
                self._live_def.set_pty_path(label, filename[4:])
                self._live_xml = None
        self._agent_state_from(chardevs)

    def _agent_state_from(self, chardevs: list[dict[str, Any]]) -> None:
        """Whether the guest has the agent's port open, from ``query-chardev``'s
        ``frontend-open`` (at start, and when re-attaching: no VSERPORT_CHANGE tells)."""
        for chan in self._live_def.channels:
            if chan.target_name != AGENT_CHANNEL or not chan.alias:
                continue
            cid = chan.chardev_id or f"char{chan.alias}"
            for dev in chardevs:
                if dev.get("label") == cid and "frontend-open" in dev:
                    self._agent_state_changed(
                        chan.alias,
                        bool(dev["frontend-open"]),
                        AgentLifecycleReason.DOMAIN_STARTED,
                    )

    async def _record_vnc_port(self) -> None:
        graphics = [g for g in self._live_def.graphics if g.type == "vnc"]
        if not graphics or not any(g.autoport or g.port in (None, -1) for g in graphics):
            return
        try:
            vnc = await self._call("query-vnc")
        except QMPError:
            return
        service = vnc.get("service")
        if vnc.get("enabled") and isinstance(service, str) and service.isdigit():
            graphics[0].port = int(service)
            self._live_xml = None

    async def _set_display_passwords(self) -> None:
        """Give QEMU its displays' passwords, before the guest runs (see :mod:`.displays`)."""
        for gfx in self._live_def.graphics:
            password = display_password(gfx, self._env.config)
            if password is not None:
                await set_password(self._call, gfx, password)

    async def _apply_tuning(self) -> None:
        """Pin QEMU's vCPU, I/O and emulator threads (<cputune>'s pins, <vcpu cpuset> for
        the rest), set their scheduling policies and give them their own CPU bandwidth,
        before the guest runs."""
        defn = self._live_def
        if self.pid is None or not tuning.needs_threads(defn):
            return
        threads = await tuning.query_threads(self._call, self.pid)
        tuning.pin_threads(defn, threads)
        tuning.sched_threads(defn, threads)
        tuning.thread_cgroups(defn, self._cgroup, threads)
        if self._resctrl is not None:
            self._resctrl.assign(threads)

    # -- events ---------------------------------------------------------------------------------

    def _on_qmp_event(self, event: dict[str, Any]) -> None:
        # Called synchronously by the monitor's reader; must never block or await.
        try:
            self._event_send.send_nowait(event)
        except trio.WouldBlock:
            # A burst beyond the buffer: drop, and resynchronise from query-status instead.
            self._overflowed = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        else:
            self._received += 1

    async def _pump(self) -> None:
        async for event in self._event_recv:
            reaction = self.machine.on_qmp_event(event)
            if event.get("event") == "DEVICE_DELETED" and not await self._device_deleted(event):
                # Reported already, when a re-attach found it gone: not again.
                reaction.events = [
                    e for e in reaction.events if e.kind is not EventKind.DEVICE_REMOVED
                ]
            if event.get("event") in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                await self._block_job_ended(event, reaction)
            # Published after _device_deleted's cleanup: out of the live XML, backend gone.
            self._handle(reaction)
            self._follow_devices(event)
            if event.get("event") == "VSERPORT_CHANGE":
                data = event.get("data") or {}
                self._agent_state_changed(
                    str(data.get("id")), bool(data.get("open")), AgentLifecycleReason.CHANNEL
                )
            self._tell_watchers(event)
            self._processed += 1
            self._progress.unpark_all()
            if self._overflowed and self._event_recv.statistics().current_buffer_used == 0:
                self._overflowed = False
                self.log.warning("QMP event burst overflowed the buffer; resynchronising")
                assert self._nursery is not None
                self._nursery.start_soon(self._resync)
                # Those waiting for an event may have lost it: they ask QEMU instead.
                self._tell_watchers({"event": RESYNC_EVENT}, everyone=True)

    async def _block_job_ended(self, event: dict[str, Any], reaction: Reaction) -> None:
        """Before a job's end is published: the live definition says which image each disk
        now uses (a pivot changed it), and a job this supervisor cancelled ends "canceled"
        (QEMU says "completed" for a ready one, which stops where it is)."""
        data = event.get("data") or {}
        if data.get("device") in self._cancelled_jobs:
            self._cancelled_jobs.discard(data.get("device"))
            for spec in reaction.events:
                if spec.kind is EventKind.BLOCK_JOB and spec.data is not None:
                    spec.data["status"] = "canceled"
        elif event.get("event") == "BLOCK_JOB_COMPLETED" and not data.get("error"):
            try:
                await self.follow_block_sources()
            except (QMPError, OperationTimeoutError) as err:
                self.log.warning("cannot read which images the disks use", error=str(err))
        # The images given to QEMU's user for the job that the disks no longer use (the
        # base of a commit that did not pivot, the image a pivot left) go back.
        self._retain_files()

    def _follow_devices(self, event: dict[str, Any]) -> None:
        """Keep the live definition in line with what QEMU says changed in the guest."""
        name = event.get("event")
        if name == "BALLOON_CHANGE" and self.machine.balloon_kib is not None:
            self.balloon_changed(self.machine.balloon_kib)
        elif vcpu_unplug_event(event) and self._nursery is not None:
            # A vCPU the guest released, maybe after set_vcpus() gave up waiting.
            self._nursery.start_soon(self.refresh_vcpus)

    @contextlib.contextmanager
    def watch_events(self, *names: str) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """The QMP events named ``names`` QEMU sends while the block runs, in order (and a
        ``RESYNC_EVENT`` if some may have been lost). The channel ends when QEMU is gone."""
        send, recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        entry = (frozenset(names), send)
        self._watchers.append(entry)
        if self.exited:
            send.close()
        try:
            yield recv
        finally:
            if entry in self._watchers:
                self._watchers.remove(entry)
            send.close()

    def _tell_watchers(self, event: dict[str, Any], *, everyone: bool = False) -> None:
        name = event.get("event")
        for names, send in self._watchers:
            if everyone or name in names:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    send.send_nowait(event)

    def _handle(self, reaction: Reaction, *, follow_up: bool = True) -> None:
        """Publish what a transition produced, and start its follow-up."""
        lifecycle_changed = False
        for spec in reaction.events:
            self._callbacks.publish(
                spec.kind,
                type=spec.type,
                detail=spec.detail,
                data=spec.data,
                timestamp=spec.timestamp,
            )
            lifecycle_changed = lifecycle_changed or spec.type is not None
        if lifecycle_changed:
            self.mark_dirty()
        if follow_up and reaction.follow_up is not None and self._nursery is not None:
            self._nursery.start_soon(self._follow_up, reaction.follow_up)

    async def _resync(self, *, attaching: bool = False) -> Reaction | None:
        """Ask QEMU its run state and reconcile; ``attaching``: the caller follows up."""
        try:
            status = await self._call("query-status")
        except (QMPError, OperationTimeoutError) as err:
            self.log.warning("cannot resynchronise state", error=str(err))
            return None
        reaction = self.machine.reconcile(
            status.get("status", ""), bool(status.get("running")), attaching=attaching
        )
        self._handle(reaction, follow_up=not attaching)
        return reaction

    async def _follow_up(self, event: GuestEvent) -> None:
        """Apply the domain's on_poweroff / on_reboot / on_crash policy."""
        action = self.machine.follow_up(event, self._policy)
        if action in (FollowUpAction.RESTART, FollowUpAction.FINISH_REBOOT):
            try:
                await self._call("system_reset")
                await self._call("cont")
            except (QMPError, OperationTimeoutError) as err:
                self.log.error("cannot restart the guest; stopping QEMU", error=str(err))
                self.machine.begin_stop(StopCause.SHUTDOWN)
                await self._terminate()
        elif action in (FollowUpAction.STOP_SHUTDOWN, FollowUpAction.STOP_CRASHED):
            await self._terminate()

    # -- death ----------------------------------------------------------------------------------

    async def _terminate(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns when the runner is done.

        The machine already holds the reason (a destroy, or a stop with its cause); it is
        saved before the signal, so that a supervisor that dies now leaves the outcome.
        """
        grace = self._env.config.destroy_grace
        if self._pidfd is None:
            # Still starting and QEMU not spawned yet: stop the start-up instead.
            self._cancel_scope.cancel()
        elif not self.exited:
            self._save_status(durable=False)
            process.signal_pidfd(self._pidfd, signal.SIGTERM)
            with trio.move_on_after(grace):
                await self._done.wait()
            if not self._done.is_set() and not self.exited:
                self.log.warning(
                    "QEMU ignored SIGTERM; killing it", operation="destroy", grace_s=grace
                )
                process.signal_pidfd(self._pidfd, signal.SIGKILL)
        await self._done.wait()

    async def _watch_exit(self, scope: trio.CancelScope) -> None:
        assert self._pidfd is not None
        await process.wait_exit(self._pidfd)
        # QEMU is gone. Let the monitor read whatever QEMU wrote before dying (a SHUTDOWN
        # there makes this a clean stop), and the pump process it, before concluding.
        if self._monitor is not None:
            with trio.move_on_after(1):
                await self._monitor.wait_closed()
        self._event_send.close()
        with trio.move_on_after(1):
            while self._processed < self._received:
                await self._progress.park()
        self.exited = True
        self._progress.unpark_all()
        for _, send in self._watchers:
            send.close()
        scope.cancel()

    async def _finish(self, *, started: bool) -> None:
        """Tidy up after QEMU's exit, a failed start, or a detach (the node closing)."""
        try:
            await self._tidy_up(started=started)
        finally:
            # Even if tidying up failed (a bug: it propagates), nobody may wait forever.
            self._done.set()
            self._progress.unpark_all()

    async def _tidy_up(self, *, started: bool) -> None:
        if self._monitor is not None:
            await self._monitor.close()
        if self._agent is not None:
            await self._agent.close()
        if not started:
            # Start or re-attach failed: QEMU must not outlive the failure unsupervised.
            if self._pidfd is not None and not self.exited:
                process.signal_pidfd(self._pidfd, signal.SIGKILL)
                with trio.move_on_after(5):
                    await process.wait_exit(self._pidfd)
            self.exited = True
            await self._stop_helpers()
            self._conclude_exit(started=False)
        elif self.exited:
            await self._stop_helpers()
            self._conclude_exit(started=True)
        else:
            self._detach()

    async def _stop_helpers(self) -> None:
        """Helpers go after their QEMU (the next supervisor sweeps any a crash leaves)."""
        if self._helpers is not None:
            await self._helpers.stop()

    def _conclude_exit(self, *, started: bool) -> None:
        self._close_cpu_clock()
        if self._pidfd is not None:
            status = process.try_reap(self._pidfd)
            if status is not None:
                self.exit_status = status
            os.close(self._pidfd)
            self._pidfd = None
        paths = self._env.paths
        if started or self._announced or self._mode is RunMode.ATTACH:
            # Every end of a domain that ran is reported: a clean stop, a destroy, or (for
            # one re-attached) whatever happened while nobody watched.
            reason, reaction = self.machine.exited()
        else:
            # A failed start: the caller gets the error; there is no STARTED to balance.
            reason, reaction = ShutoffReason.FAILED, Reaction()
        self.log.info("QEMU exited", exit_status=self.exit_status, reason=reason.name.lower())
        self._handle(reaction, follow_up=False)
        if self._env.security is not None:
            # Give QEMU's user's files back before the record that names them goes.
            self._env.security.release(self._uuid)
        self._remove_memory_dirs()
        if self._env.unplug_interfaces is not None:
            self._env.unplug_interfaces(self._live_def)
        if tuning.wanted_controllers(self._live_def):
            tuning.remove_cgroup(self._uuid, self._env.config.cgroup_parent)
        if self._live_def.cputune is not None and self._live_def.cputune.resctrl:
            tuning.remove_resctrl(self._uuid)
        # Only now that the outcome is published may the record go.
        fsutil.remove(paths.status(self._name))
        fsutil.remove(paths.monitor(self._uuid))
        self._callbacks.stopped(self, reason)

    def _detach(self) -> None:
        self._save_status(durable=True)
        self._close_cpu_clock()
        if self._helpers is not None:
            self._helpers.detach()
        if self._pidfd is not None:
            if self.pid is not None and process.is_child(self.pid):
                process.adopt_orphan(self._pidfd)  # reaped whenever it exits
            else:
                os.close(self._pidfd)
            self._pidfd = None
        self.log.info("detached from running QEMU")

    # -- status -------------------------------------------------------------------------------

    def status_record(self) -> StatusRecord:
        snap = self.machine.snapshot()
        return StatusRecord(
            name=self._name,
            uuid=self._uuid,
            domain_id=self._domain_id,
            pid=self.pid,
            start_time=self._start_time,
            monitor=str(self._env.paths.monitor(self._uuid)),
            live_xml=self.live_xml(),
            persistent=self._callbacks.persistent,
            autodestroy=self.autodestroy,
            state=snap.state,
            reason=snap.reason,
            phase=self._phase,
            shutdown_seen=snap.shutdown_seen,
            rebooting=snap.rebooting,
            stop_cause=snap.stop_cause,
            chowned={} if self._env.security is None else self._env.security.held_by(self._uuid),
        )

    def _persist_status(self, durable: bool = True) -> None:
        """Save the status file; SystemCallError if it cannot be (the caller must not go on)."""
        self._write_record(self._take_record(), durable)

    def _save_status(self, durable: bool = True) -> None:
        """Save the status file; a failure is logged (the previous one stays in place)."""
        self._write_quietly(self._take_record(), durable)

    def _take_record(self) -> tuple[int, StatusRecord]:
        """The record as of now, numbered: a write of an older one never replaces it."""
        self._status_taken += 1
        return self._status_taken, self.status_record()

    def _write_record(self, numbered: tuple[int, StatusRecord], durable: bool) -> None:
        # Writes may run in worker threads (background saves) and in the trio thread (intents
        # before a signal) at once: the newest record taken must be the one left on disk.
        number, record = numbered
        path = self._env.paths.status(self._name)
        with self._status_lock:
            if number < self._status_written:
                return
            try:
                record.save(path, durable=durable)
            except OSError as err:
                raise SystemCallError.from_oserror(
                    err, f"record the state of domain '{self._name}' in", path
                ) from None
            self._status_written = number

    def _write_quietly(self, numbered: tuple[int, StatusRecord], durable: bool) -> None:
        try:
            self._write_record(numbered, durable)
        except SystemCallError as err:
            self.log.error("cannot save status", error=str(err))

    async def _write_status_when_dirty(self) -> None:
        # State changes are saved in the background so that they never delay events.
        while True:
            await self._status_dirty.wait()
            self._status_dirty = trio.Event()
            await trio.to_thread.run_sync(self._write_quietly, self._take_record(), True)

    # -- helpers --------------------------------------------------------------------------------

    def _disk_for_node(self, node: str) -> DiskInfo | None:
        for disk in self._live_def.disks:
            if node in disk.node_names:
                return DiskInfo(
                    target=disk.target, alias=disk.alias or "", source=disk.shown_source
                )
        return None

    def _log_tail(self, lines: int = 5) -> str:
        """The last lines QEMU wrote to its log in this run (its error messages), on one line."""
        try:
            with open(self._env.paths.log(self._name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self._log_start, f.tell() - 4096))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " ".join(tail)

    def _exit_reason(self) -> str:
        """Why QEMU ended during start-up: what it wrote, else how it exited."""
        if self._pidfd is not None and self.exit_status is None:
            self.exit_status = process.try_reap(self._pidfd)
        tail = self._log_tail()
        if tail:
            return tail
        status = self.exit_status
        how = (
            "exited"
            if status is None
            else f"exited with status {status}"
            if status >= 0
            else f"was killed by signal {-status}"
        )
        return f"it {how} without a word (log: {self._env.paths.log(self._name)})"


def _write_log_header(fd: int, argv: list[str]) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    header = f"asvirt: {now}: starting up\nLC_ALL=C {shlex.join(argv)}\n"
    with contextlib.suppress(OSError):
        os.write(fd, header.encode())


class _QemuPendingSample:
    """A runner's sample whose queries QEMU has been asked (:meth:`QemuRunner.begin_sample`),
    or whose QEMU is going away (``lost``)."""

    __slots__ = (
        "_runner",
        "deadline",
        "lost",
        "pid",
        "queries",
        "replies",
        "sample",
        "scope",
        "wait",
        "wanted",
    )

    def __init__(
        self, runner: QemuRunner, wanted: int, scope: SampleScope, pid: int, deadline: float
    ) -> None:
        self._runner = runner
        self.sample = RuntimeSample()
        self.wanted = wanted
        self.scope = scope
        self.pid = pid
        self.deadline = deadline
        #: The commands asked, and their pending replies, in order.
        self.queries: tuple[str, ...] = ()
        self.replies: list[Pending] = []
        #: The monitor session ended before QEMU answered (QEMU died, or is being stopped).
        self.lost = False
        self.wait = False

    async def result(self) -> RuntimeSample:
        """The sample once QEMU has answered, or the deadline passed. Without a checkpoint
        when the answers are already in (a caller that asked many QEMUs reads most of them
        so): the caller checkpoints.

        If QEMU's monitor session ended instead (QEMU died, or is being stopped), this waits
        (until the deadline) for the runner to conclude the stop, so that the caller finds
        the domain stopped rather than a running one without figures: what libvirt's
        ``virConnectGetAllDomainStats`` reports for a domain whose QEMU died."""
        runner = self._runner
        if not self.lost:
            await runner._measure_host(self)
        timed_out = False
        replies = self.replies
        if not Monitor.answered(replies):
            with trio.move_on_at(self.deadline) as scope:
                await Monitor.wait_answered(replies)
            timed_out = scope.cancelled_caught
        if self.lost or Monitor.lost(replies):
            with trio.move_on_at(self.deadline):
                await runner.wait_done()
            return self.sample
        return runner._stats_answers(self, Monitor.answers(replies), timed_out)


__all__ = ["QemuRunner", "RunMode", "RunnerEnv"]
