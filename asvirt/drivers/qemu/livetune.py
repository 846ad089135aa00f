"""Live tuning of a running QEMU (a mixin of QemuRunner): what ``virsh vcpuinfo``,
``vcpupin``, ``emulatorpin``, ``iothreadinfo``, ``iothreadpin``, ``blkdeviotune`` and
``cpu-stats`` read and change.

The threads are found as at start (:func:`.tuning.query_threads`: ``query-cpus-fast`` for the
vCPUs, every thread that is neither a vCPU nor an I/O thread is an emulator thread), pinned
with ``sched_setaffinity``, and the live definition's ``<cputune>`` records the pin, as
libvirt's does: a vCPU plugged later gets it from there (:meth:`_apply_tuning`).

A disk's ``<iotune>`` is a ``throttle-group`` object with a ``throttle`` filter node above the
disk's image (:mod:`.command_tune`): its limits change with ``qom-set`` of the group's
``limits`` and are read back with ``qom-get``. A disk that started without ``<iotune>`` has no
filter to change (QEMU 7.2 cannot insert one above a device's image), so its throttle is
refused live, saying so; the disks of one ``group_name`` share their group's limits, as in
libvirt."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

import trio

from ...conf.tuning import IOTune, iotune_params
from ...drivers.base import IOThreadInfo, VcpuInfo, VcpuState
from ...errors import OperationFailedError, OperationInvalidError, OperationUnsupportedError
from ...hypervisor.pinning import cpumap_of, set_emulatorpin, set_iothreadpin, set_vcpupin
from . import stats as hoststats
from . import tuning
from .command_tune import iotune_of_limits, throttle_group_id, throttle_limits_all

if TYPE_CHECKING:
    from ...conf.devices import Disk
    from ...conf.domain import DomainDef
    from .process import CpuClock


class LiveTuneOps:
    """Thread affinity and disk throttling of a running QEMU."""

    if TYPE_CHECKING:
        pid: int | None
        exited: bool
        _name: str
        _live_def: DomainDef
        _live_xml: str | None

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        _cgroup: tuning.DomainCgroup | None

        def mark_dirty(self) -> None: ...

        def _clock(self, pid: int) -> CpuClock: ...

    async def _threads(self) -> tuple[int, tuning.Threads]:
        pid = self.pid
        if pid is None or self.exited:
            raise OperationInvalidError(f"domain '{self._name}' is not running")
        return pid, await tuning.query_threads(self.execute, pid)

    async def vcpu_threads(self, host_cpus: int) -> list[VcpuInfo]:
        """The online vCPUs: their thread's CPU time, last CPU and affinity (a vCPU thread
        is always ``running`` to libvirt, whatever the guest does with it)."""
        pid, threads = await self._threads()
        found = []
        for number in sorted(threads.vcpus):
            tid = threads.vcpus[number]
            times = hoststats.thread_times(pid, tid)
            try:
                affinity = os.sched_getaffinity(tid)
            except OSError:
                times = None
            if times is None:
                continue  # unplugged meanwhile
            cpu_time, cpu = times
            found.append(
                VcpuInfo(
                    number=number,
                    state=VcpuState.RUNNING,
                    cpu_time=cpu_time,
                    cpu=cpu,
                    cpumap=cpumap_of(affinity, host_cpus),
                )
            )
        return found

    async def pin_vcpu(self, vcpu: int, cpus: set[int]) -> None:
        """Pin vCPU ``vcpu``'s thread (if it is online) to ``cpus``, and record it."""
        _, threads = await self._threads()
        tid = threads.vcpus.get(vcpu)
        if tid is not None:
            tuning.set_affinity(tid, cpus, f"vCPU {vcpu}")
        set_vcpupin(self._live_def, vcpu, cpus)
        self._changed()

    async def iothread_threads(self, host_cpus: int) -> list[IOThreadInfo]:
        """The I/O threads QEMU runs, with their affinity (libvirt asks QEMU, as here)."""
        _, threads = await self._threads()
        found = []
        for ident in sorted(threads.iothreads):
            try:
                affinity = os.sched_getaffinity(threads.iothreads[ident])
            except OSError:
                continue
            found.append(IOThreadInfo(iothread_id=ident, cpumap=cpumap_of(affinity, host_cpus)))
        return found

    async def pin_iothread(self, iothread: int, cpus: set[int]) -> None:
        """Pin I/O thread ``iothread``'s thread to ``cpus``, and record it."""
        _, threads = await self._threads()
        tid = threads.iothreads.get(iothread)
        if tid is None:
            raise OperationFailedError(f"QEMU runs no I/O thread 'iothread{iothread}'")
        tuning.set_affinity(tid, cpus, f"I/O thread {iothread}")
        set_iothreadpin(self._live_def, iothread, cpus)
        self._changed()

    async def pin_emulator(self, cpus: set[int]) -> None:
        """Pin every emulator thread to ``cpus``, and record it."""
        _, threads = await self._threads()
        for tid in threads.emulator:
            tuning.set_affinity(tid, cpus, "emulator")
        set_emulatorpin(self._live_def, cpus)
        self._changed()

    async def block_io_tune(self, disk: Disk) -> dict[str, int | str]:
        """A live disk's throttle as QEMU has it (libvirt's parameters)."""
        params = iotune_params(disk.iotune)
        if disk.iotune is None or not disk.has_media:
            return params
        limits = await self.execute(
            "qom-get", {"path": f"/objects/{throttle_group_id(disk)}", "property": "limits"}
        )
        params.update(iotune_of_limits(limits))
        return params

    async def set_block_io_tune(self, disk: Disk, tune: IOTune) -> None:
        """Give a live disk (and the others of its group) the limits of ``tune``."""
        old = disk.iotune
        if old is None or not disk.has_media:
            raise OperationUnsupportedError(
                f"disk '{disk.target}' of domain '{self._name}' started without <iotune>: QEMU "
                "has no throttle filter above its image to change (set it with --config for "
                "its next start)"
            )
        if tune.group_name != old.group_name:
            raise OperationUnsupportedError(
                f"disk '{disk.target}' is in throttle group '{old.group_name or ''}' while it "
                "runs: its group_name changes with --config, for its next start"
            )
        group = throttle_group_id(disk)
        await self.execute(
            "qom-set",
            {"path": f"/objects/{group}", "property": "limits", "value": throttle_limits_all(tune)},
        )
        for other in self._live_def.disks:
            if other.iotune is not None and other.has_media and throttle_group_id(other) == group:
                other.iotune = copy.deepcopy(tune)
        self._changed()

    async def cpu_stats(self, host_cpus: int, start: int, count: int) -> list[dict[str, int]]:
        """The CPU time QEMU used: in total (``start`` -1), from its cgroup's accounting when
        it has a cgroup, else from /proc (all its threads' user and system time); or on
        each host CPU from ``start``, which only a cgroup v1 cpuacct hierarchy keeps (as
        libvirt, refused otherwise: :func:`.tuning.cgroup_percpu_ns`)."""
        await trio.lowlevel.checkpoint()
        pid = self.pid
        if pid is None or self.exited:
            raise OperationInvalidError(f"domain '{self._name}' is not running")
        if start >= 0:
            percpu = tuning.cgroup_percpu_ns(self._cgroup)
            end = min(start + count, host_cpus)
            return [{"cpu_time": ns} for ns in percpu[start:end]]
        times = tuning.cgroup_cpu_times(self._cgroup) if self._cgroup is not None else None
        if times is None:
            measured = hoststats.process_times(self._clock(pid).read())
            if measured is None:
                raise OperationInvalidError(f"domain '{self._name}' is not running")
            times = measured[0]
        return [
            {"cpu_time": times.total_ns, "user_time": times.user_ns, "system_time": times.system_ns}
        ]

    def _changed(self) -> None:
        self._live_xml = None
        self.mark_dirty()
