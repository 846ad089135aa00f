"""The host's CPUs and memory as libvirt's ``virNodeGetInfo`` reports them on Linux.

libvirt (src/util/virhostcpu.c) reads ``/proc/cpuinfo`` for the frequency, ``/proc/meminfo``
for the memory and sysfs for the topology: NUMA cells, sockets per cell, cores per socket and
threads per core. When the topology does not multiply out to the online CPUs (CPUs offline,
asymmetric cells), it reports one cell and one socket holding every CPU as a core, so that the
product stays right; so does this.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..base import NodeInfo

SYS_CPU = Path("/sys/devices/system/cpu")
SYS_NODE = Path("/sys/devices/system/node")


def host_node_info() -> NodeInfo:
    """This host's :class:`NodeInfo` (blocking: reads /proc and sysfs)."""
    cpus = _online_cpus()
    nodes, sockets, cores, threads = _topology(cpus)
    return NodeInfo(
        model=platform.machine(),
        memory_kib=_memory_kib(),
        cpus=len(cpus),
        mhz=_mhz(),
        nodes=nodes,
        sockets=sockets,
        cores=cores,
        threads=threads,
    )


def host_cpu_count() -> int:
    """The number of entries of a CPU map (libvirt's ``virHostCPUGetCount``): the highest
    present CPU's number + 1 (one small sysfs file)."""
    try:
        return max(_parse_list(_read(SYS_CPU / "present"))) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _online_cpus() -> list[int]:
    try:
        return sorted(_parse_list(_read(SYS_CPU / "online")))
    except (OSError, ValueError):
        return list(range(os.cpu_count() or 1))


def _parse_list(text: str) -> set[int]:
    """A kernel CPU list (``0-3,6``)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _topology(cpus: list[int]) -> tuple[int, int, int, int]:
    """(cells, sockets per cell, cores per socket, threads per core), as libvirt reports them."""
    fallback = (1, 1, len(cpus), 1)
    try:
        cells = [p for p in SYS_NODE.glob("node[0-9]*") if p.is_dir()] if SYS_NODE.is_dir() else []
        n_cells = max(1, len(cells))
        packages: set[str] = set()
        cores: set[tuple[str, str]] = set()
        for cpu in cpus:
            topo = SYS_CPU / f"cpu{cpu}" / "topology"
            package = _read(topo / "physical_package_id").strip()
            packages.add(package)
            cores.add((package, _read(topo / "core_id").strip()))
    except (OSError, ValueError):
        return fallback
    if not cores or len(packages) % n_cells:
        return fallback
    sockets = len(packages) // n_cells
    cores_per_socket, rest = divmod(len(cores), len(packages))
    threads, rest2 = divmod(len(cpus), len(cores))
    if rest or rest2 or n_cells * sockets * cores_per_socket * threads != len(cpus):
        return fallback
    return n_cells, sockets, cores_per_socket, threads


def _mhz() -> int:
    """The first ``cpu MHz`` of /proc/cpuinfo, truncated as libvirt does; 0 when absent."""
    try:
        for line in _read(Path("/proc/cpuinfo")).splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "cpu MHz":
                return int(float(value.strip()))
    except (OSError, ValueError):
        pass
    return 0


def _memory_kib() -> int:
    try:
        for line in _read(Path("/proc/meminfo")).splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _read(path: Path) -> str:
    return path.read_text()


__all__ = ["host_cpu_count", "host_node_info"]
