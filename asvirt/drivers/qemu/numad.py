"""Automatic NUMA placement: ``<vcpu placement='auto'>`` and ``<numatune><memory
placement='auto'>``, placed where numad advises, as libvirt does.

At start, before QEMU exists, asvirt asks numad for the host nodes that best fit the
domain (``numad -w VCPUS:MEMORY_MIB``, numad's pre-placement advice: it prints a nodeset
and exits; no numad daemon needs to run). The running definition then holds the advice:
the CPUs of those nodes become the vCPUs' (and emulator's) ``cpuset`` for an automatic
vCPU placement, the nodes the memory's ``nodeset`` (QEMU's ``host-nodes``) for an
automatic memory placement. The XML keeps saying ``placement='auto'``, as libvirt's does.

numad is optional (Debian's ``numad`` package enables a service that moves processes
between nodes): a host without it refuses such a start, naming it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from ...conf.domain import DomainDef, parse_cpuset
from ...conf.tuning import format_cpuset
from ...errors import OperationFailedError, OperationUnsupportedError
from ...log import get_logger

log = get_logger("asvirt.qemu.numad")

#: How long numad may take to advise.
ADVICE_DEADLINE = 30.0
NODE_DIR = Path("/sys/devices/system/node")


def wants_advice(d: DomainDef) -> bool:
    return d.placement_auto or (d.numatune is not None and d.numatune.placement_auto)


async def advise(vcpus: int, memory_mib: int) -> str:
    """numad's nodeset for a guest of ``vcpus`` vCPUs and ``memory_mib`` MiB.
    :class:`OperationUnsupportedError` where numad is not installed,
    :class:`OperationFailedError` where it fails or gives no nodeset."""
    numad = shutil.which("numad")
    if numad is None:
        raise OperationUnsupportedError(
            "automatic NUMA placement (placement='auto') asks numad where to place the "
            "domain, and this host has no numad (install Debian's numad package)"
        )
    with trio.move_on_after(ADVICE_DEADLINE) as scope:
        result = await trio.run_process(
            [numad, "-w", f"{vcpus}:{memory_mib}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if scope.cancelled_caught:
        raise OperationFailedError(f"numad gave no advice within {ADVICE_DEADLINE:.0f} s")
    out = result.stdout.decode(errors="replace").strip()
    try:
        nodes = parse_cpuset(out) if result.returncode == 0 and out else set()
    except Exception:  # not a nodeset: numad's complaint, most likely
        nodes = set()
    if not nodes:
        why = (result.stderr.decode(errors="replace") or out).strip()
        raise OperationFailedError(
            f"numad gave no nodeset for {vcpus} vCPUs and {memory_mib} MiB "
            f"(exit {result.returncode}): {why[-300:]}"
        )
    return format_cpuset(nodes)


def node_cpus(nodeset: str) -> str:
    """The host CPUs of the NUMA nodes ``nodeset`` (from sysfs)."""
    cpus: set[int] = set()
    for node in parse_cpuset(nodeset):
        try:
            cpus |= parse_cpuset((NODE_DIR / f"node{node}" / "cpulist").read_text().strip())
        except (OSError, ValueError):
            continue  # a node without CPUs (memory only)
    return format_cpuset(cpus)


async def place(d: DomainDef) -> None:
    """Ask numad where ``d`` (a running definition, changed in place) goes, if its XML
    asks for automatic placement; fills its cpuset and memory nodeset."""
    if not wants_advice(d):
        return
    memory_mib = -(-d.memory_kib // 1024)
    nodeset = await advise(d.vcpus, memory_mib)
    log.info("numad placement", nodeset=nodeset, vcpus=d.vcpus, memory_mib=memory_mib)
    if d.placement_auto:
        cpus = node_cpus(nodeset)
        d.cpuset = cpus or None
    if d.numatune is not None and d.numatune.placement_auto:
        d.numatune.nodeset = nodeset


__all__ = ["advise", "node_cpus", "place", "wants_advice"]
