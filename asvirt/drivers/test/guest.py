"""A simulated QEMU process and the guest inside it, for the test driver.

The test driver does not re-implement the lifecycle rules. A :class:`SimulatedVM` plays the
part of QEMU: it keeps QEMU's run state (``prelaunch``, ``running``, ``paused``, ``shutdown``,
``guest-panicked``), answers a few QMP commands the way QEMU does, and emits the QMP events
QEMU would emit (``STOP``, ``RESUME``, ``SHUTDOWN``, ``RESET``, ``POWERDOWN``,
``GUEST_PANICKED``), in QEMU's order. The answers and events are those of QEMU 7.2, checked
against it by the shared suite (``tests/test_api_contract.py``). Those events go through the
QEMU driver's own :class:`~asvirt.drivers.qemu.statemachine.DomainStateMachine`, and the
supervisor's follow-ups (``on_poweroff``, ``on_reboot``, ``on_crash``) are decided by the same
policy and applied as the QEMU runner applies them. So both drivers produce the same states
and the same events by construction. A :class:`SimulatedVM` is the domain's runtime, as a
QEMU runner is: the shared domain calls drive it through the same methods.

The simulated guest is deterministic:

* it obeys the ACPI power button (``shutdown()``, ``reboot()``, QMP ``system_powerdown``) at
  the caller's next schedule point, when it is running; a paused guest acts once resumed;
* it honours the test guest's kernel command line (see ``tests/guest.py``):
  ``asvirt.action=panic|poweroff|reboot`` makes it act by itself
  :data:`BOOT_SECONDS` plus ``asvirt.delay=N`` seconds after each boot, and ``asvirt.acpi=ignore``
  makes it ignore the power button. So the same domain XML behaves the same on both drivers;
* a panic is seen by the hypervisor only if the domain has a ``<panic>`` device, as with QEMU,
  and a panicked guest does nothing more (even if continued) until it is reset;
* its balloon driver gives memory back or takes it (BALLOON_CHANGE) once it runs, and it
  releases hot-unplugged vCPUs (ACPI eject: QEMU 7.2's events) once it runs, never before
  its first boot (QEMU then refuses to ask, as it does);
* code can make it act at once with :func:`asvirt.drivers.test.guest_panic`,
  :func:`~asvirt.drivers.test.guest_poweroff` and :func:`~asvirt.drivers.test.guest_reboot`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from ...conf.addresses import PCIAddress
from ...conf.devices import BackingStore, Disk, Graphics, HotplugDevice, Interface
from ...conf.domain import DomainDef
from ...conf.metadata import adopt_metadata
from ...conf.postparse import postparse_domain
from ...conf.tuning import IOTune, iotune_params
from ...conf.vcpus import boot_vcpus, plug_order, states_from_qemu
from ...config import QemuConfig
from ...drivers.base import ProgressCallback
from ...errors import (
    AgentCommandNotFoundError,
    AgentUnresponsiveError,
    ArgumentUnsupportedError,
    InternalError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    OperationUnsupportedError,
    QMPError,
)
from ...events.types import (
    AgentLifecycleReason,
    AgentLifecycleState,
    EventKind,
    ResumedDetail,
    SuspendedDetail,
)
from ...hypervisor.domain_driver import RuntimeCallbacks
from ...hypervisor.guest_state import (
    ExternalTarget,
    FromImage,
    FromSnapshot,
    SnapshotTarget,
    StartOrigin,
    StopCause,
)
from ...hypervisor.hotplug import (
    apply_password,
    check_new_device,
    fresh_copy,
    insert_device,
    remove_device,
)
from ...hypervisor.lifecycle import FollowUpAction, GuestEvent, LifecyclePolicy
from ...hypervisor.pinning import (
    iothread_pins,
    set_emulatorpin,
    set_iothreadpin,
    set_vcpupin,
    vcpu_pins,
)
from ...hypervisor.stats import (
    VCPU_RUNNING,
    BlockCounters,
    CpuTimes,
    ReadySample,
    RuntimeSample,
    SampleScope,
    VcpuSample,
)
from ...states import DomainState, PausedReason, RunningReason, StateReason
from ..base import BlockJobInfo, InterfaceStats, IOThreadInfo, StatsGroup, VcpuInfo, VcpuState
from ..qemu.statemachine import DomainStateMachine, MachineSnapshot, Reaction, StartKind
from ..qemu.statemachine import StopCause as MachineStopCause
from ..qemu.vcpus import CpuSlot, plan_vcpus, unplug_refused

if TYPE_CHECKING:
    from .state import Scheduler

#: The CPU type of the simulated guest's vCPUs (QEMU's for its default ``qemu64`` model).
SIMULATED_CPU_TYPE = "qemu64-x86_64-cpu"

#: Seconds a simulated guest takes from reset to running its command-line action.
BOOT_SECONDS = 0.01

#: The ``last_update`` of the simulated balloon's statistics (libvirt's test driver's).
TEST_LAST_UPDATE = 627319920

#: QEMU's run states in which the machine must be reset before ``cont`` (runstate_needs_reset).
#: A panicked guest may be continued: its vCPUs run again, the crashed kernel stays halted.
_NEEDS_RESET = ("shutdown",)

#: What ``query-version`` answers: the simulation follows QEMU 7.2's QMP answers and events.
QEMU_VERSION: dict[str, Any] = {
    "qemu": {"major": 7, "minor": 2, "micro": 0},
    "package": "asvirt test driver (simulated)",
}


class GuestFlags:
    """What the guest's kernel command line asks of the simulated guest."""

    __slots__ = ("action", "delay", "obeys_acpi")

    def __init__(self, cmdline: str | None) -> None:
        self.action: str | None = None
        self.delay = 0.0
        self.obeys_acpi = True
        for word in (cmdline or "").split():
            key, _, value = word.partition("=")
            if key == "asvirt.action" and value in ("panic", "poweroff", "reboot"):
                self.action = value
            elif key == "asvirt.delay":
                try:
                    self.delay = max(0.0, float(value))
                except ValueError:
                    pass
            elif key == "asvirt.acpi":
                self.obeys_acpi = value != "ignore"


class SimulatedVM:
    """One running (or paused, shut down, crashed) simulated QEMU with its guest."""

    def __init__(
        self,
        scheduler: Scheduler,
        callbacks: RuntimeCallbacks,
        live_def: DomainDef,
        *,
        domain_id: int,
        snapshots: dict[str, dict[str, Any]],
    ) -> None:
        self._scheduler = scheduler
        #: The guest state each internal snapshot of this domain holds (kept by the node).
        self._snapshots = snapshots
        self._callbacks = callbacks
        self.name = callbacks.name
        self.uuid = callbacks.uuid
        self._live_def = live_def
        self._domain_id = domain_id
        self._policy = LifecyclePolicy(live_def.on_poweroff, live_def.on_reboot, live_def.on_crash)
        self.machine = DomainStateMachine()
        #: QEMU's own run state, as ``query-status`` reports it.
        self.runstate = "prelaunch"
        self.exited = False
        self.flags = GuestFlags(live_def.os.cmdline)
        # The guest: a boot generation (bumped by every reset, so stale timers do nothing),
        # whether it has booted since the last reset, whether it has crashed (it does nothing
        # more until reset), and what it still has to do.
        self._generation = 0
        self._booted = False
        self._halted = False
        self._button_pressed = False
        self._action_due = False
        # CPU time: the guest uses its vCPU whenever QEMU runs it.
        self._cpu_ns = 0
        self._running_since: int | None = None
        # The balloon: what QEMU asks of the guest's driver, and what the driver has done
        # (KiB left to the guest); the driver acts once the guest runs, as a real one.
        self._balloon_actual = live_def.memory_kib
        self._balloon_target = (
            live_def.current_memory_kib if live_def.has_memballoon else live_def.memory_kib
        )
        # vCPUs: those it booted with (QEMU's -smp N), those hot-plugged since (their
        # indexes), and those asked to go that the guest has not released yet.
        self._boot_vcpus = boot_vcpus(live_def.vcpu_states, live_def.vcpus)
        # <vcpus>' enabled hotpluggable ones are plugged at start, as QEMU's runner does.
        self._hotplugged: set[int] = set(plug_order(live_def.vcpu_states))
        self._unplug_asked: set[int] = set()
        self._unplugged = trio.Event()
        #: What the simulated keyboard was sent (QEMU's key numbers), and NMIs injected.
        self.keys_sent: list[list[int]] = []
        self.nmis = 0
        # The simulated guest agent's state (None: not known yet, as for QEMU at start).
        self._agent_connected: bool | None = None
        self._frozen = False
        self._clock_offset_ns = 0

    # -- views ---------------------------------------------------------------------------------

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
        return self._live_def.to_xml(live=True, domain_id=self._domain_id, secure=secure)

    def cpu_time_ns(self) -> int:
        if self._running_since is None:
            return self._cpu_ns
        return self._cpu_ns + time.monotonic_ns() - self._running_since

    def memory_kib(self) -> int:
        return self.machine.balloon_kib or self._live_def.current_memory_kib

    # -- the runtime of a domain (what the shared domain calls use) -----------------------------
    #
    # Each acts at once and publishes its own events before returning; the guest's reaction
    # comes at the caller's next schedule point, as it would come later from a real guest.

    async def start(self, *, paused: bool, origin: StartOrigin = None) -> None:
        """Start the VM as the QEMU runner does: ``-S``, its state loaded from ``origin``
        if any, then ``cont`` unless ``paused``."""
        await trio.lowlevel.checkpoint()
        kind, detail = StartKind.BOOT, None
        if isinstance(origin, FromImage):
            kind = StartKind.RESTORE
            self._load_guest(_read_state(origin))
            if not origin.saved_paused:
                detail = SuspendedDetail.PAUSED
            if origin.progress is not None:
                origin.progress(1.0)
        elif isinstance(origin, FromSnapshot):
            kind = StartKind.SNAPSHOT
            if origin.name is not None:
                self._load_guest(self._snapshot_state(origin.name))
        # QEMU tells at start that the guest has not opened the agent's port yet.
        self._agent_state(False, AgentLifecycleReason.DOMAIN_STARTED)
        if paused:
            if kind is not StartKind.BOOT:
                self.runstate = "paused"
            self._publish(self.machine.started_paused(kind, detail=detail))
            return
        self.machine.begin_boot(kind)
        self.qmp_cont()

    # -- guest state: snapshots, save (what a QEMU runner does with QMP jobs and migration) ---

    async def snapshot_create(
        self, name: str, disks: Sequence[SnapshotTarget], *, progress: ProgressCallback | None
    ) -> None:
        await trio.lowlevel.checkpoint()
        was_running = self.runstate == "running"
        if was_running:
            self.machine.expect_pause(PausedReason.SNAPSHOT)
            self.qmp_stop()
        self._snapshots[name] = self._guest_state()
        if progress is not None:
            progress(1.0)
        if was_running:
            self.qmp_cont()

    async def snapshot_load(
        self,
        name: str,
        disks: Sequence[SnapshotTarget],
        *,
        running: bool,
        progress: ProgressCallback | None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        state = self._snapshot_state(name)
        was_paused = self.runstate != "running"
        if not was_paused:
            self.machine.expect_pause(PausedReason.FROM_SNAPSHOT)
            self.qmp_stop()
        self._load_guest(state)
        if progress is not None:
            progress(1.0)
        if running:
            self.machine.expect_resume(RunningReason.FROM_SNAPSHOT, ResumedDetail.FROM_SNAPSHOT)
            self.qmp_cont()
        elif was_paused:
            self._publish(self.machine.reverted_paused())

    async def snapshot_delete(self, name: str, disks: Sequence[SnapshotTarget]) -> None:
        await trio.lowlevel.checkpoint()
        self._snapshots.pop(name, None)

    async def save_state(self, fd: int, *, progress: ProgressCallback | None) -> None:
        await trio.lowlevel.checkpoint()
        was_running = self.runstate == "running"
        if was_running:
            self.machine.expect_pause(PausedReason.SAVE)
            self.qmp_stop()
        os.write(fd, json.dumps(self._guest_state()).encode())
        if progress is not None:
            progress(1.0)

    async def resume_after_save(self, *, running: bool) -> None:
        await trio.lowlevel.checkpoint()
        if running and not self.exited:
            self.machine.expect_resume(RunningReason.SAVE_CANCELED, ResumedDetail.UNPAUSED)
            self.qmp_cont()

    async def stop(self, cause: StopCause) -> None:
        await trio.lowlevel.checkpoint()
        if self.exited:
            return
        self.machine.begin_stop(
            MachineStopCause.SAVED if cause is StopCause.SAVED else MachineStopCause.FROM_SNAPSHOT
        )
        self._exit()

    def _guest_state(self) -> dict[str, Any]:
        """What a snapshot or save keeps of the simulated guest."""
        return {
            "booted": self._booted,
            "halted": self._halted,
            "button_pressed": self._button_pressed,
        }

    def _load_guest(self, state: dict[str, Any]) -> None:
        self._generation += 1  # what the previous guest had scheduled is void
        self._booted = bool(state.get("booted"))
        self._halted = bool(state.get("halted"))
        self._button_pressed = bool(state.get("button_pressed"))
        self._action_due = False

    def _snapshot_state(self, name: str) -> dict[str, Any]:
        state = self._snapshots.get(name)
        if state is None:
            raise OperationFailedError(f"snapshot '{name}' holds no state of this guest")
        return state

    async def suspend(self) -> None:
        self.machine.expect_pause(PausedReason.USER)
        self.qmp_stop()

    async def resume(self) -> None:
        self.qmp_cont()

    async def powerdown(self, *, reboot: bool) -> None:
        if reboot:
            self.machine.begin_reboot()
        self.qmp_system_powerdown()

    async def reset(self) -> None:
        self.qmp_system_reset()

    async def destroy(self) -> None:
        self.kill()

    async def qmp(self, command: str, arguments: dict[str, Any] | None) -> Any:
        await trio.lowlevel.checkpoint()
        return self.execute(command, arguments)

    def persistence_changed(self) -> None:
        pass  # nothing is kept on disk

    async def agent_command(
        self, execute: str, arguments: dict[str, Any] | None, timeout: float | None
    ) -> Any:
        """A simulated qemu-ga (libvirt's test driver simulates the agent's calls too): it
        answers when the domain has the agent's channel and the guest runs."""
        await trio.lowlevel.checkpoint()
        if not any(c.target_name == "org.qemu.guest_agent.0" for c in self._live_def.channels):
            raise ArgumentUnsupportedError("QEMU guest agent is not configured")
        if not self._agent_connected or not self.guest_running():
            raise AgentUnresponsiveError(
                "Guest agent is not responding: QEMU guest agent is not connected"
            )
        args = arguments or {}
        result: Any
        match execute:
            case "guest-ping":
                result = {}
            case "guest-info":
                result = {"version": "7.2.0", "supported_commands": []}
            case "guest-fsfreeze-freeze" | "guest-fsfreeze-freeze-list":
                result = 0 if self._frozen else len(args.get("mountpoints") or ["/"])
                self._frozen = True
            case "guest-fsfreeze-thaw":
                result, self._frozen = (1 if self._frozen else 0), False
            case "guest-fsfreeze-status":
                result = "frozen" if self._frozen else "thawed"
            case "guest-get-time":
                result = time.time_ns() + self._clock_offset_ns
            case "guest-set-time":
                if "time" in args:
                    self._clock_offset_ns = int(args["time"]) - time.time_ns()
                result = {}
            case "guest-network-get-interfaces":
                lo = {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}
                result = [
                    {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [lo]}
                ]
                for i, nic in enumerate(self._live_def.interfaces):
                    result.append({"name": f"eth{i}", "hardware-address": nic.mac or ""})
            case "guest-get-host-name":
                result = {"host-name": "asvirt-guest"}
            case "guest-get-osinfo":
                # What the test guest's qemu-ga reads from its /etc/os-release and uname.
                result = {
                    "id": "asvirt-guest",
                    "name": "asvirt test guest",
                    "pretty-name": "asvirt test guest (busybox)",
                    "version-id": "12",
                    "kernel-release": "6.1.0-simulated",
                    "kernel-version": "#1 SMP simulated",
                    "machine": "x86_64",
                }
            case "guest-get-timezone":
                result = {"zone": "UTC", "offset": 0}
            case "guest-get-users":
                result = []  # nobody logged in (no utmp), as in the test guest
            case "guest-get-fsinfo":
                result = []  # everything is in the initramfs, as in the test guest
            case "guest-get-disks":
                result = [self._agent_disk(d) for d in self._live_def.disks if d.bus == "virtio"]
            case "guest-set-user-password":
                if args.get("username") not in ("root", "asvirt"):
                    raise InternalError(
                        f"unable to execute QEMU agent command '{execute}': "
                        "child process has failed to set user password"
                    )
                result = {}
            case "guest-suspend-ram":
                # As the test guest's kernel: it suspends to RAM (S3) unless QEMU was told
                # to disable it; a guest without swap cannot hibernate.
                if self._live_def.suspend_to_mem is False:
                    raise InternalError(
                        f"unable to execute QEMU agent command '{execute}': "
                        "the requested suspend mode is not supported by the guest"
                    )
                self._scheduler.call_later(0, self._guest_suspend)
                return None
            case "guest-shutdown":
                self._scheduler.call_later(
                    0, lambda: self.guest_poweroff() if self.guest_running() else None
                )
                return None
            case _:
                raise AgentCommandNotFoundError(
                    f"unable to execute QEMU agent command '{execute}': "
                    f"The command {execute} has not been found"
                )
        return {"return": result}

    @staticmethod
    def _agent_disk(disk: Disk) -> dict[str, Any]:
        """A virtio disk as qemu-ga's guest-get-disks describes it (``/dev/vda``: the guest
        names its disks in the order of the definition, as the simulation has them)."""
        found: dict[str, Any] = {
            "name": f"/dev/{disk.target}",
            "partition": False,
            "dependencies": [],
        }
        pci = disk.address
        if isinstance(pci, PCIAddress):
            found["address"] = {
                "pci-controller": {
                    "domain": pci.domain,
                    "bus": pci.bus,
                    "slot": pci.slot,
                    "function": pci.function,
                },
                "bus-type": "virtio",
                "bus": 0,
                "target": 0,
                "unit": 0,
                "dev": f"/dev/{disk.target}",
                **({"serial": disk.serial} if disk.serial else {}),
            }
        return found

    async def begin_sample(self, groups: StatsGroup, scope: SampleScope) -> ReadySample:
        """:meth:`sample`: a simulated guest answers at once."""
        return ReadySample(await self.sample(groups, scope))

    async def sample(self, groups: StatsGroup, scope: SampleScope) -> RuntimeSample:
        """libvirt's test-driver figures: fixed ones derived from the definition, counters
        derived from the time of day (as libvirt's test driver does, "just enough to mix it
        up"), CPU time from the time the simulated vCPUs ran."""
        await trio.lowlevel.checkpoint()
        sample = RuntimeSample()
        if self.exited:
            return sample
        live = self._live_def
        usec = time.time_ns() // 1000
        seconds = usec // 1_000_000
        if groups & StatsGroup.CPU_TOTAL:
            total = self.cpu_time_ns()
            sample.cpu = CpuTimes(total_ns=total, user_ns=total, system_ns=0)
        if groups & StatsGroup.VCPU:
            share = self.cpu_time_ns() // max(1, live.vcpus)
            sample.vcpus = [VcpuSample(VCPU_RUNNING, share, 0, 0) for _ in range(live.vcpus)]
        if groups & StatsGroup.BALLOON:
            current = self.memory_kib()
            sample.balloon_kib = current
            if live.has_memballoon:
                # libvirt's test driver's memory statistics.
                sample.guest_memory = {
                    "swap_in": 0,
                    "swap_out": 0,
                    "major_fault": 0,
                    "minor_fault": 0,
                    "unused": current // 2,
                    "available": current,
                    "usable": current // 2,
                    "last_update": TEST_LAST_UPDATE,
                    "disk_caches": current // 8,
                    "hugetlb_pgalloc": 0,
                    "hugetlb_pgfail": 0,
                }
                sample.rss_kib = current // 2
        if groups & StatsGroup.BLOCK:
            counters = BlockCounters(
                rd_reqs=usec // 10,
                rd_bytes=usec // 20,
                wr_reqs=usec // 30,
                wr_bytes=usec // 40,
                errs=seconds // 2,
            )
            sample.blocks = {disk.target: counters for disk in live.disks}
        if groups & StatsGroup.INTERFACE:
            nic_stats = InterfaceStats(
                rx_bytes=usec // 10,
                rx_packets=usec // 100,
                rx_errs=seconds,
                rx_drop=seconds // 2,
                tx_bytes=usec // 20,
                tx_packets=usec // 110,
                tx_errs=seconds // 3,
                tx_drop=seconds // 4,
            )
            sample.nets = {
                nic.target_dev: nic_stats for nic in live.interfaces if nic.target_dev is not None
            }
        return sample

    async def set_memory_stats_period(self, period: int) -> None:
        await trio.lowlevel.checkpoint()
        assert self._live_def.memballoon is not None
        self._live_def.memballoon.stats_period = period

    # -- memory and vCPUs (what a QEMU runner does with balloon, device_add, device_del) --------

    async def set_balloon(self, kib: int) -> None:
        await trio.lowlevel.checkpoint()
        self._balloon_target = kib
        self._wake_balloon()

    async def set_vcpus(self, count: int) -> None:
        await trio.lowlevel.checkpoint()
        plan = plan_vcpus(self._cpu_slots(), count)
        for slot in plan.plug:
            self._hotplugged.add(slot.index)
        if plan.plug:
            self._vcpus_changed()
        if not plan.unplug:
            return
        if not self._booted:
            # The guest's firmware never switched QEMU's CPU hotplug to its modern
            # interface: QEMU 7.2 refuses, so.
            refusal = QMPError(
                "QEMU refused 'device_del': acpi: device unplug request for not supported "
                f"device type: {SIMULATED_CPU_TYPE}",
                error_class="GenericError",
            )
            raise unplug_refused(self.name, plan.unplug[0].alias, refusal)
        self._unplug_asked |= {slot.index for slot in plan.unplug}
        self._unplugged = trio.Event()
        self._wake_unplug()
        with trio.move_on_after(QemuConfig().unplug_timeout):
            await self._unplugged.wait()
            return
        raise OperationTimeoutError(
            f"vcpu unplug request timed out: the guest of domain '{self.name}' did not "
            "release its vCPUs (it is not running)"
        )

    # -- thread pinning (the pins are the live definition's; libvirt's test driver reports
    # the last CPU a vCPU may run on as the one it runs on) ------------------------------------

    async def vcpu_threads(self, host_cpus: int) -> list[VcpuInfo]:
        await trio.lowlevel.checkpoint()
        online = [slot.index for slot in self._cpu_slots() if slot.qom_path is not None]
        pins = vcpu_pins(self._live_def, host_cpus)
        each = self.cpu_time_ns() // max(len(online), 1)
        return [
            VcpuInfo(
                number=n,
                state=VcpuState.RUNNING,
                cpu_time=each,
                cpu=max(i for i, used in enumerate(pins[n]) if used),
                cpumap=pins[n],
            )
            for n in online
        ]

    async def pin_vcpu(self, vcpu: int, cpus: set[int]) -> None:
        await trio.lowlevel.checkpoint()
        set_vcpupin(self._live_def, vcpu, cpus)

    async def iothread_threads(self, host_cpus: int) -> list[IOThreadInfo]:
        await trio.lowlevel.checkpoint()
        return iothread_pins(self._live_def, host_cpus)

    async def pin_iothread(self, iothread: int, cpus: set[int]) -> None:
        await trio.lowlevel.checkpoint()
        set_iothreadpin(self._live_def, iothread, cpus)

    async def block_io_tune(self, disk: Disk) -> dict[str, int | str]:
        await trio.lowlevel.checkpoint()
        return iotune_params(disk.iotune)

    async def set_block_io_tune(self, disk: Disk, tune: IOTune) -> None:
        await trio.lowlevel.checkpoint()
        for other in self._live_def.disks:
            if other is disk or (
                tune.group_name is not None
                and other.iotune is not None
                and other.iotune.group_name == tune.group_name
            ):
                other.iotune = copy.deepcopy(tune)

    async def cpu_stats(self, host_cpus: int, start: int, count: int) -> list[dict[str, int]]:
        # As libvirt's test driver: per host CPU a share of the time, most of it the vCPUs'.
        await trio.lowlevel.checkpoint()
        used = self.cpu_time_ns()
        if start < 0:
            return [{"cpu_time": used, "user_time": used // 8, "system_time": used // 8}]
        share = used // host_cpus
        return [
            {"cpu_time": share, "vcpu_time": share * 19 // 20}
            for _ in range(start, min(start + count, host_cpus))
        ]

    async def pin_emulator(self, cpus: set[int]) -> None:
        await trio.lowlevel.checkpoint()
        set_emulatorpin(self._live_def, cpus)

    def _cpu_slots(self) -> list[CpuSlot]:
        """The guest's CPU slots, as query-hotpluggable-cpus describes them."""
        slots = []
        for i in range(self._live_def.max_vcpus):
            path = None
            if i < self._boot_vcpus:
                path = f"/machine/unattached/device[{i}]"
            elif i in self._hotplugged:
                path = f"/machine/peripheral/vcpu{i}"
            props = {"socket-id": i, "core-id": 0, "thread-id": 0}
            slots.append(CpuSlot(i, SIMULATED_CPU_TYPE, props, 1, path))
        return slots

    def _vcpus_changed(self) -> None:
        live = self._live_def
        live.vcpus = self._boot_vcpus + len(self._hotplugged)
        if self._hotplugged or live.vcpu_states is not None:
            # As QEMU's runner: the live XML's <vcpus> says which vCPUs are plugged devices.
            present = {i: False for i in range(self._boot_vcpus)}
            present.update({i: True for i in self._hotplugged})
            live.vcpu_states = states_from_qemu(live.vcpu_states, present, live.max_vcpus)

    def _wake_balloon(self) -> None:
        if self._booted and self._balloon_target != self._balloon_actual:
            generation = self._generation
            self._scheduler.call_later(0, lambda: self._balloon_acts(generation))

    def _balloon_acts(self, generation: int) -> None:
        """The guest's balloon driver gives or takes memory (QEMU: BALLOON_CHANGE)."""
        if generation != self._generation or not self.guest_running() or self._halted:
            return
        if self._balloon_target != self._balloon_actual:
            self._balloon_actual = self._balloon_target
            self._emit(("BALLOON_CHANGE", {"actual": self._balloon_actual * 1024}))

    def _wake_unplug(self) -> None:
        if self._unplug_asked:
            generation = self._generation
            self._scheduler.call_later(0, lambda: self._guest_ejects(generation))

    def _guest_ejects(self, generation: int) -> None:
        """The guest releases the vCPUs asked to go (ACPI eject): DEVICE_DELETED each."""
        if generation != self._generation or not self.guest_running() or self._halted:
            return
        gone, self._unplug_asked = sorted(self._unplug_asked, reverse=True), set()
        self._hotplugged -= set(gone)
        self._vcpus_changed()
        for i in gone:
            # What QEMU 7.2 says: the eject is under way, the CPU's APIC is gone (the CPU
            # itself gets no DEVICE_DELETED), the eject is done.
            slot = {"slot": str(i), "slot-type": "CPU", "source": 3}
            self._emit(
                ("ACPI_DEVICE_OST", {"info": {"device": f"vcpu{i}", **slot, "status": 0x84}}),
                ("DEVICE_DELETED", {"path": f"/machine/peripheral/vcpu{i}/lapic"}),
                ("ACPI_DEVICE_OST", {"info": {**slot, "status": 0}}),
            )
        self._unplugged.set()

    # Devices come and go at once: the simulated guest releases what it is asked to.

    async def attach_device(self, dev: HotplugDevice) -> None:
        await trio.lowlevel.checkpoint()
        completed = with_device(self._live_def, dev)
        self._live_def.disks, self._live_def.interfaces = completed.disks, completed.interfaces
        self._live_def.inputs = completed.inputs

    async def detach_device(self, dev: HotplugDevice) -> bool:
        await trio.lowlevel.checkpoint()
        remove_device(self._live_def, dev)
        name: str | None
        if isinstance(dev, Disk):
            name = dev.alias or dev.target
        elif isinstance(dev, Interface):
            name = dev.alias or dev.mac
        else:
            name = dev.alias or dev.type
        self._callbacks.publish(EventKind.DEVICE_REMOVED, data={"device": name, "path": None})
        return True

    async def change_media(self, disk: Disk, new: Disk) -> None:
        await trio.lowlevel.checkpoint()
        disk.type, disk.source, disk.format = new.type, new.source, new.format
        disk.net = new.net

    async def set_link(self, nic: Interface, state: str | None) -> None:
        await trio.lowlevel.checkpoint()
        nic.link_state = state

    async def set_metadata(self, source: DomainDef) -> None:
        await trio.lowlevel.checkpoint()
        adopt_metadata(self._live_def, source)

    async def send_key(self, qnums: list[int], holdtime: int) -> None:
        await trio.lowlevel.checkpoint()
        self.keys_sent.append(list(qnums))

    async def pm_wakeup(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.runstate != "suspended":
            raise QMPError(
                "QEMU refused 'system_wakeup': Unable to wake up: guest is not in suspended state",
                error_class="GenericError",
            )
        self._set_runstate("running")
        self._emit(("WAKEUP", {}))

    async def inject_nmi(self) -> None:
        await trio.lowlevel.checkpoint()
        self.nmis += 1

    async def screenshot(self, device: str | None, head: int) -> bytes:
        """A blank VGA text screen (720x400), as a binary PPM."""
        await trio.lowlevel.checkpoint()
        width, height = 720, 400
        return f"P6\n{width} {height}\n255\n".encode() + bytes(width * height * 3)

    async def change_display_password(self, gfx: Graphics, new: Graphics) -> None:
        await trio.lowlevel.checkpoint()
        apply_password(gfx, new)

    # Block jobs run in QEMU on images: libvirt's test driver has none, nor does this one.

    @staticmethod
    async def _no_block_jobs(call: str) -> NoReturn:
        await trio.lowlevel.checkpoint()
        raise OperationUnsupportedError(
            f"the test driver does not simulate disk images: no {call} (QEMU domains only)"
        )

    async def block_resize(self, disk: Disk, size: int) -> None:
        await self._no_block_jobs("block resize")

    async def block_pull(self, disk: Disk, bandwidth: int, base: str | None) -> None:
        await self._no_block_jobs("block pull")

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
        await self._no_block_jobs("block commit")

    async def block_copy(
        self,
        disk: Disk,
        dest: BackingStore,
        bandwidth: int,
        *,
        shallow: bool,
        reuse_ext: bool,
    ) -> None:
        await self._no_block_jobs("block copy")

    async def block_job_info(self, disk: Disk) -> BlockJobInfo | None:
        await self._no_block_jobs("block jobs")

    async def block_job_abort(self, disk: Disk, *, pivot: bool, wait: bool) -> None:
        await self._no_block_jobs("block jobs")

    async def block_job_set_speed(self, disk: Disk, bandwidth: int) -> None:
        await self._no_block_jobs("block jobs")

    async def snapshot_external(self, disks: Sequence[ExternalTarget]) -> None:
        await self._no_block_jobs("external snapshots")

    def adopt_running(self, state: DomainState) -> None:
        """Take a VM as already running (or paused) without events: the node's initial domains."""
        self._balloon_actual = self._balloon_target  # its balloon is where it was asked
        if state is DomainState.PAUSED:
            self.machine = DomainStateMachine.restore(
                MachineSnapshot(int(DomainState.PAUSED), int(PausedReason.USER))
            )
            self.runstate = "paused"
            self._booted = True
        else:
            self.machine = DomainStateMachine.restore(
                MachineSnapshot(int(DomainState.RUNNING), int(RunningReason.BOOTED))
            )
            self._set_runstate("running")
            self._guest_boot()

    def kill(self) -> None:
        """The QEMU process is killed: STOPPED/DESTROYED."""
        if self.exited:
            return
        self.machine.begin_destroy()
        self._exit()

    def execute(self, command: str, arguments: dict[str, Any] | None) -> Any:
        """A QMP command, answered as QEMU would, with the events QEMU would send."""
        handler = _COMMANDS.get(command)
        if handler is None:
            raise OperationUnsupportedError(
                f"the test driver does not simulate QMP command '{command}' "
                f"(it knows: {', '.join(sorted(_COMMANDS))})"
            )
        if arguments:
            raise QMPError(
                f"QEMU refused '{command}': Parameter '{next(iter(arguments))}' is unexpected",
                error_class="GenericError",
            )
        return handler(self)

    # -- QEMU's side: run state and QMP commands -----------------------------------------------

    def qmp_query_status(self) -> dict[str, Any]:
        return {"status": self.runstate, "singlestep": False, "running": self.runstate == "running"}

    def qmp_query_version(self) -> dict[str, Any]:
        return copy.deepcopy(QEMU_VERSION)

    def qmp_query_name(self) -> dict[str, Any]:
        return {"name": self.name}

    def qmp_query_uuid(self) -> dict[str, Any]:
        return {"UUID": self.uuid}

    def qmp_stop(self) -> dict[str, Any]:
        if self.runstate == "running":
            self._set_runstate("paused")
            self._emit(("STOP", {}))
        return {}

    def qmp_cont(self) -> dict[str, Any]:
        if self.runstate in _NEEDS_RESET:
            raise QMPError(
                "QEMU refused 'cont': Resetting the Virtual Machine is required",
                error_class="GenericError",
            )
        if self.runstate == "running":
            return {}  # nothing to do, and QEMU says nothing
        self._set_runstate("running")
        self._emit(("RESUME", {}))
        if not self.exited:
            self._guest_resumed()
        return {}

    def qmp_system_reset(self) -> dict[str, Any]:
        self._guest_reset()
        if self.runstate != "running":
            self.runstate = "prelaunch"
        self._emit(("RESET", {"guest": False, "reason": "host-qmp-system-reset"}))
        if not self.exited and self.runstate == "running":
            self._guest_boot()
        return {}

    def qmp_system_powerdown(self) -> dict[str, Any]:
        self._emit(("POWERDOWN", {}))
        if self.flags.obeys_acpi:
            self._button_pressed = True
            self._wake_guest()
        return {}

    def _set_runstate(self, runstate: str) -> None:
        now = time.monotonic_ns()
        if self._running_since is not None:
            self._cpu_ns += now - self._running_since
            self._running_since = None
        if runstate == "running":
            self._running_since = now
        self.runstate = runstate

    # -- the guest's side ----------------------------------------------------------------------

    def guest_running(self) -> bool:
        return not self.exited and self.runstate == "running"

    def _guest_suspend(self) -> None:
        """The guest suspends itself to RAM: QEMU says SUSPEND and waits for a wake-up."""
        if self.guest_running():
            self._set_runstate("suspended")
            self._emit(("SUSPEND", {}))

    def guest_poweroff(self) -> None:
        """The guest powers itself off (``poweroff -f``)."""
        self._require_guest_running()
        self._set_runstate("shutdown")  # -no-shutdown: QEMU pauses instead of exiting
        self._emit(("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}), ("STOP", {}))

    def guest_reboot(self) -> None:
        """The guest reboots itself (``reboot -f``); on_reboot=destroy makes QEMU shut down."""
        self._require_guest_running()
        if self.live_def.on_reboot == "destroy":  # set-action reboot=shutdown
            self._set_runstate("shutdown")  # -no-shutdown: QEMU pauses, as after a power-off
            self._emit(("SHUTDOWN", {"guest": True, "reason": "guest-reset"}), ("STOP", {}))
            return
        self._guest_reset()
        self._emit(("RESET", {"guest": True, "reason": "guest-reset"}))
        if self.guest_running():
            self._guest_boot()

    def guest_panic(self) -> None:
        """The guest kernel panics; QEMU sees it through the domain's ``<panic>`` device."""
        self._require_guest_running()
        if not self.live_def.panics:
            raise OperationInvalidError(
                f"domain '{self.name}' has no <panic> device: the hypervisor would not see "
                "the guest's panic"
            )
        self._halted = True
        self._set_runstate("guest-panicked")  # set-action panic=pause
        self._emit(("GUEST_PANICKED", {"action": "pause"}), ("STOP", {}))

    def _require_guest_running(self) -> None:
        if self.exited:
            raise OperationInvalidError(f"domain '{self.name}' is not running")
        if self.runstate != "running":
            raise OperationInvalidError(
                f"the guest of domain '{self.name}' is not running (QEMU is {self.runstate})"
            )
        if self._halted:
            raise OperationInvalidError(
                f"the guest of domain '{self.name}' has crashed; it does nothing until reset"
            )

    def _has_agent(self) -> bool:
        """The domain has the agent's channel and the guest runs qemu-ga on it (the test
        guest does, unless ``asvirt.agent=off``)."""
        return (
            any(c.target_name == "org.qemu.guest_agent.0" for c in self._live_def.channels)
            and "asvirt.agent=off" not in (self._live_def.os.cmdline or "").split()
        )

    def _agent_state(self, connected: bool, reason: AgentLifecycleReason) -> None:
        """The simulated qemu-ga opened or closed its port: as the QEMU runner reports it."""
        if self._agent_connected == connected or not self._has_agent():
            return
        self._agent_connected = connected
        state = AgentLifecycleState.CONNECTED if connected else AgentLifecycleState.DISCONNECTED
        self._callbacks.publish(
            EventKind.AGENT_LIFECYCLE, data={"state": int(state), "reason": int(reason)}
        )

    def _guest_reset(self) -> None:
        self._agent_state(False, AgentLifecycleReason.CHANNEL)
        self._generation += 1
        self._booted = False
        self._halted = False
        self._button_pressed = False
        self._action_due = False

    def _guest_boot(self) -> None:
        self._booted = True
        self._wake_balloon()
        self._wake_unplug()
        self._agent_state(True, AgentLifecycleReason.CHANNEL)
        if self.flags.action is not None:
            generation = self._generation
            self._scheduler.call_later(
                BOOT_SECONDS + self.flags.delay, lambda: self._action_timer(generation)
            )

    def _guest_resumed(self) -> None:
        if self._halted:
            return
        if not self._booted:
            self._guest_boot()
            return
        self._wake_balloon()
        self._wake_unplug()
        if self._button_pressed or self._action_due:
            self._wake_guest()

    def _wake_guest(self) -> None:
        generation = self._generation
        self._scheduler.call_later(0, lambda: self._guest_acts(generation))

    def _action_timer(self, generation: int) -> None:
        if generation == self._generation and not self.exited:
            self._action_due = True
            self._guest_acts(generation)

    def _guest_acts(self, generation: int) -> None:
        """The guest gets CPU time: it handles a button press, or does its own action."""
        if generation != self._generation or not self.guest_running() or self._halted:
            return  # reset or stopped meanwhile; paused (it acts when resumed); crashed
        if self._button_pressed:
            self._button_pressed = False
            self.guest_poweroff()  # acpid: the power button runs poweroff -f
        elif self._action_due:
            self._action_due = False
            action = self.flags.action
            if action == "poweroff":
                self.guest_poweroff()
            elif action == "reboot":
                self.guest_reboot()
            elif action == "panic" and self.live_def.panics:
                self.guest_panic()
            # Without a <panic> device the panicked guest just hangs, unseen.

    # -- events and the supervisor's follow-ups ------------------------------------------------

    def _emit(self, *events: tuple[str, dict[str, Any]]) -> None:
        """QEMU sends ``events``; the state machine reacts; then the supervisor follows up."""
        follow_ups: list[GuestEvent] = []
        for name, data in events:
            seconds = time.time()
            message = {
                "event": name,
                "data": data,
                "timestamp": {
                    "seconds": int(seconds),
                    "microseconds": int((seconds % 1) * 1_000_000),
                },
            }
            reaction = self.machine.on_qmp_event(message)
            if name == "BALLOON_CHANGE" and self.machine.balloon_kib:
                # As the QEMU runner: the live <currentMemory> is what the balloon says.
                self._live_def.current_memory_kib = self.machine.balloon_kib
            self._publish(reaction)
            if reaction.follow_up is not None:
                follow_ups.append(reaction.follow_up)
        for what in follow_ups:
            if self.exited:
                break
            self._follow_up(what)

    def _publish(self, reaction: Reaction) -> None:
        for spec in reaction.events:
            self._callbacks.publish(
                spec.kind,
                type=spec.type,
                detail=spec.detail,
                data=spec.data,
                timestamp=spec.timestamp,
            )

    def _follow_up(self, event: GuestEvent) -> None:
        """Apply on_poweroff / on_reboot / on_crash, as the QEMU runner does."""
        action = self.machine.follow_up(event, self._policy)
        if action in (FollowUpAction.RESTART, FollowUpAction.FINISH_REBOOT):
            self.qmp_system_reset()
            if not self.exited:
                self.qmp_cont()
        elif action in (FollowUpAction.STOP_SHUTDOWN, FollowUpAction.STOP_CRASHED):
            self._exit()

    def _exit(self) -> None:
        """The QEMU process is gone: final state, STOPPED event, the domain table updated."""
        self.exited = True
        self._set_runstate("exited")
        self._guest_reset()
        reason, reaction = self.machine.exited()
        self._publish(reaction)
        self._callbacks.stopped(self, reason)


_COMMANDS: dict[str, Callable[[SimulatedVM], Any]] = {
    "query-status": SimulatedVM.qmp_query_status,
    "query-version": SimulatedVM.qmp_query_version,
    "query-name": SimulatedVM.qmp_query_name,
    "query-uuid": SimulatedVM.qmp_query_uuid,
    "stop": SimulatedVM.qmp_stop,
    "cont": SimulatedVM.qmp_cont,
    "system_reset": SimulatedVM.qmp_system_reset,
    "system_powerdown": SimulatedVM.qmp_system_powerdown,
}

#: The QMP commands the test driver simulates.
SIMULATED_QMP_COMMANDS = frozenset(_COMMANDS)


def with_device(defn: DomainDef, dev: HotplugDevice) -> DomainDef:
    """``defn`` with ``dev`` added, completed by the generic post-parse (a MAC): the test
    driver's own completion of a definition."""
    new = fresh_copy(dev)
    check_new_device(defn, new)
    work = defn.copy()
    insert_device(work, new)
    return postparse_domain(work)


def _read_state(origin: FromImage) -> dict[str, Any]:
    """The simulated guest's state a test driver save image holds."""
    raw = os.pread(origin.fd, max(0, origin.size), origin.offset)
    try:
        state = json.loads(raw)
    except ValueError:
        raise OperationFailedError("the save image holds no state of a simulated guest") from None
    if not isinstance(state, dict):
        raise OperationFailedError("the save image holds no state of a simulated guest")
    return state


__all__ = ["BOOT_SECONDS", "SIMULATED_QMP_COMMANDS", "GuestFlags", "SimulatedVM"]
