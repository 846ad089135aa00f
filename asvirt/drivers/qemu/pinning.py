"""The live pinning of a QEMU's threads (a mixin of QemuRunner): what ``virsh vcpuinfo``,
``vcpupin``, ``emulatorpin``, ``iothreadinfo`` and ``iothreadpin`` read and change on a
running domain.

The threads are found as at start (:func:`.tuning.query_threads`: ``query-cpus-fast`` for the
vCPUs, every thread that is neither a vCPU nor an I/O thread is an emulator thread), pinned
with ``sched_setaffinity``, and the live definition's ``<cputune>`` records the pin, as
libvirt's does: a vCPU plugged later gets it from there (:meth:`_apply_tuning`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ...drivers.base import IOThreadInfo, VcpuInfo, VcpuState
from ...errors import OperationFailedError, OperationInvalidError
from ...hypervisor.pinning import cpumap_of, set_emulatorpin, set_iothreadpin, set_vcpupin
from . import stats as hoststats
from . import tuning

if TYPE_CHECKING:
    from ...conf.domain import DomainDef


class PinOps:
    """vCPU and emulator thread affinity of a running QEMU."""

    if TYPE_CHECKING:
        pid: int | None
        exited: bool
        _name: str
        _live_def: DomainDef
        _live_xml: str | None

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        def mark_dirty(self) -> None: ...

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

    def _changed(self) -> None:
        self._live_xml = None
        self.mark_dirty()
