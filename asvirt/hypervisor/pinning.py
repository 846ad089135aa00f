"""Thread pinning as libvirt's API speaks of it: CPU maps (one bool per host CPU) and the
pins a definition gives each vCPU, I/O thread and the emulator (``<cputune><vcpupin>``,
``<iothreadpin>``, ``<emulatorpin>``, else ``<vcpu cpuset>``, else every host CPU), for
both drivers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..conf.domain import DomainDef, parse_cpuset
from ..conf.tuning import CPUTune, format_cpuset
from ..drivers.base import IOThreadInfo
from ..errors import InvalidArgError


def cpus_of(cpumap: Sequence[bool], host_cpus: int) -> set[int]:
    """The host CPUs a CPU map names; InvalidArgError for none, or one the host lacks."""
    cpus = {n for n, used in enumerate(cpumap) if used}
    if not cpus:
        raise InvalidArgError("Empty cpu list for pinning")
    beyond = [n for n in cpus if n >= host_cpus]
    if beyond:
        raise InvalidArgError(
            f"CPU {beyond[0]} is out of range: the host has {host_cpus} CPUs (0-{host_cpus - 1})"
        )
    return cpus


def cpumap_of(cpus: Iterable[int], host_cpus: int) -> list[bool]:
    """A CPU map of ``host_cpus`` entries with ``cpus`` set."""
    wanted = set(cpus)
    return [n in wanted for n in range(host_cpus)]


def _pinned(cpuset: str | None, defn: DomainDef, host_cpus: int) -> list[bool]:
    text = cpuset or defn.cpuset
    if not text:
        return [True] * host_cpus
    return cpumap_of(parse_cpuset(text), host_cpus)


def vcpu_pins(defn: DomainDef, host_cpus: int) -> list[list[bool]]:
    """Each vCPU's pinning in ``defn`` (every vCPU up to the maximum, as libvirt's
    ``virDomainGetVcpuPinInfo``)."""
    pins = defn.cputune.vcpupin if defn.cputune is not None else {}
    return [_pinned(pins.get(n), defn, host_cpus) for n in range(defn.max_vcpus)]


def emulator_pin(defn: DomainDef, host_cpus: int) -> list[bool]:
    """The emulator threads' pinning in ``defn`` (``virDomainGetEmulatorPinInfo``)."""
    return _pinned(defn.cputune.emulatorpin if defn.cputune is not None else None, defn, host_cpus)


def iothread_pins(defn: DomainDef, host_cpus: int) -> list[IOThreadInfo]:
    """Each I/O thread's pinning in ``defn`` (``<iothreadpin>``, else ``<vcpu cpuset>``,
    else every host CPU), by id."""
    pins = defn.cputune.iothreadpin if defn.cputune is not None else {}
    return [
        IOThreadInfo(iothread_id=n, cpumap=_pinned(pins.get(n), defn, host_cpus))
        for n in defn.iothread_ids
    ]


def check_iothread(defn: DomainDef, iothread: int) -> None:
    """InvalidArgError unless ``defn`` has I/O thread ``iothread``."""
    if iothread not in defn.iothread_ids:
        raise InvalidArgError(f"iothread {iothread} not found")


def set_iothreadpin(defn: DomainDef, iothread: int, cpus: set[int]) -> None:
    """Record ``<iothreadpin iothread=N cpuset=...>`` in ``defn``."""
    if defn.cputune is None:
        defn.cputune = CPUTune()
    defn.cputune.iothreadpin[iothread] = format_cpuset(cpus)


def check_vcpu(defn: DomainDef, vcpu: int, which: str) -> None:
    """InvalidArgError unless ``defn`` has vCPU ``vcpu`` (``which``: live or persistent)."""
    if not 0 <= vcpu < defn.max_vcpus:
        raise InvalidArgError(f"vcpu {vcpu} is out of range of {which} cpu count {defn.max_vcpus}")


def set_vcpupin(defn: DomainDef, vcpu: int, cpus: set[int]) -> None:
    """Record ``<vcpupin vcpu=N cpuset=...>`` in ``defn`` (kept even for every CPU, as
    libvirt keeps it)."""
    if defn.cputune is None:
        defn.cputune = CPUTune()
    defn.cputune.vcpupin[vcpu] = format_cpuset(cpus)


def set_emulatorpin(defn: DomainDef, cpus: set[int]) -> None:
    """Record ``<emulatorpin cpuset=...>`` in ``defn``."""
    if defn.cputune is None:
        defn.cputune = CPUTune()
    defn.cputune.emulatorpin = format_cpuset(cpus)
