"""How the QEMU driver honours the tuning elements (:mod:`asvirt.conf.tuning`).

* Pinning (``<cputune><vcpupin|emulatorpin|iothreadpin>``, and ``<vcpu cpuset>`` as the
  default of each): after QEMU starts, its vCPU threads (``query-cpus-fast``'s thread ids)
  and I/O threads (``query-iothreads``) get ``sched_setaffinity``; every other thread of the
  process is an emulator thread. As in libvirt, pinning is done before the guest runs.
* Scheduling policies (``<vcpusched>``, ``<iothreadsched>``, ``<emulatorsched>``): the same
  threads get ``sched_setscheduler`` (batch, idle; fifo and rr with their priority, which
  must be within Linux's range: refused at define otherwise).
* Resource control (``<cputune>`` shares/period/quota, ``<memtune>``, ``<blkiotune>``): a
  cgroup of the domain's own, ``PARENT/qemu-UUID`` (``[qemu] cgroup_parent``, like libvirt's
  machine.slice), under the unified hierarchy (cgroup v2: ``cpu.weight``, ``cpu.max``,
  ``memory.max``/``high``/``swap.max``, ``io.weight``/``io.max``) or, where the cpu, memory
  and blkio controllers are still on v1 (a hybrid host), under theirs (``cpu.shares``,
  ``cpu.cfs_*``, ``memory.limit_in_bytes``..., ``blkio.throttle.*``), as libvirt does on
  either. QEMU is moved into it the moment it exists; per-thread bandwidth
  (``period``/``quota`` per vCPU, ``emulator_*``, ``iothread_*``) goes to sub-cgroups
  ``vcpuN``/``emulator``/``iothreadN`` (threaded ones on v2), as libvirt's. A supervisor that
  is not root, or a host without the controller, refuses the domain's start with
  OperationUnsupportedError naming why.
* ``<cachetune>``/``<memorytune>``: as libvirt, a resctrl group per set of vCPUs under
  ``/sys/fs/resctrl`` (``asvirt-UUID-vcpus_N``) whose ``schemata`` gets a free run of cache
  bits of each size asked (``L3``, ``L3CODE``/``L3DATA`` with CDP) and the memory bandwidth
  percentages (``MB``), monitor groups under its ``mon_groups``; the vCPU threads are moved
  in before the guest runs, and the groups removed when QEMU ends. A host without resctrl
  mounted, or without what the XML asks, refuses the start before QEMU exists.
* ``<seclabel model='dac'>``: ``type='static'`` runs QEMU as the label's user:group, with
  its files given to that user for ``relabel='yes'`` (the DAC confinement of
  :mod:`.security`, which reads the label), ``type='none'`` as the supervisor itself; other
  models (SELinux, AppArmor) have no security driver here and are refused as libvirt does.
* ``<memoryBacking><hugepages>``: guest RAM in a file on a hugetlbfs mount of the right page
  size, refused at start when there is none or too few pages are free.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...conf.devices import Disk
from ...conf.domain import DomainDef, parse_cpuset
from ...conf.tuning import REALTIME_POLICIES, CacheAlloc, Resctrl, Sched, SecLabel, format_cpuset
from ...errors import (
    ConfigUnsupportedError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
    SystemCallError,
)
from ...hypervisor.stats import CpuTimes
from ...log import get_logger
from .security import parse_dac_label

log = get_logger("asvirt.qemu.tuning")

CGROUP_ROOT = Path("/sys/fs/cgroup")

# -- define-time checks ---------------------------------------------------------------------


def check_tuning(d: DomainDef) -> None:
    """Refuse, at define time, what QEMU or this host cannot do of the tuning elements."""
    for disk in d.disks:
        _check_disk(disk)
    for sl in d.seclabels:
        _check_seclabel(sl)
    if d.cputune is not None:
        _check_scheds(d)
    mb = d.memory_backing
    if mb is not None and mb.locked and any(m.model == "virtio-mem" for m in d.memory_devices):
        # QEMU's own refusal ("virtio-mem: Incompatible with mlock"), said before it runs.
        raise ConfigUnsupportedError(
            "unsupported configuration: <memoryBacking><locked/> and a virtio-mem device "
            "cannot go together: QEMU's virtio-mem is incompatible with mlock"
        )
    if mb is not None and mb.hugepages and mb.source == "anonymous":
        # libvirt's rule: anonymous memory is the kernel's own pages, never hugetlbfs ones
        # (memfd takes them as hugetlb memfds, a file source gives way to huge pages).
        raise ConfigUnsupportedError(
            "unsupported configuration: hugepages are not allowed with anonymous memory source"
        )


def _check_scheds(d: DomainDef) -> None:
    """A real-time priority Linux cannot give is refused (libvirt says so at start)."""
    ct = d.cputune
    assert ct is not None
    scheds = [*ct.vcpusched.values(), *ct.iothreadsched.values()]
    if ct.emulatorsched is not None:
        scheds.append(ct.emulatorsched)
    for sched in scheds:
        if sched.policy not in REALTIME_POLICIES or sched.priority is None:
            continue
        policy = _SCHED_POLICY[sched.policy]
        low, high = os.sched_get_priority_min(policy), os.sched_get_priority_max(policy)
        if not low <= sched.priority <= high:
            raise ConfigUnsupportedError(
                f"unsupported configuration: scheduler priority {sched.priority} out of "
                f"range [{low}, {high}] (scheduler='{sched.policy}')"
            )


def _check_disk(disk: Disk) -> None:
    for label in disk.seclabels:
        if label.model not in (None, "dac"):
            # libvirt's wording, as for the domain's <seclabel> (_check_seclabel).
            raise ConfigUnsupportedError(
                f"unsupported configuration: Security driver model '{label.model}' is not "
                f"available (the <seclabel> of disk '{disk.target}')"
            )
    if (disk.queues is not None or disk.queue_size is not None) and disk.bus != "virtio":
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}': queues and queue_size are "
            "only supported by virtio-blk"
        )
    if disk.iotune is not None and not disk.has_media and disk.device != "cdrom":
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}' has no source to throttle"
        )
    if disk.geometry is not None and disk.device == "cdrom":
        raise ConfigUnsupportedError(
            f"unsupported configuration: CD-ROM '{disk.target}' has no geometry"
        )
    if disk.geometry is not None and disk.bus in ("usb", "fdc"):
        # QEMU's usb-storage and floppy devices have no cyls/heads/secs properties.
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}': QEMU's {disk.bus} disks have "
            "no geometry"
        )
    bio = disk.blockio
    if (
        bio is not None
        and bio.logical_block_size not in (None, 0, 512)
        and disk.bus
        in (
            "ide",
            "sata",
        )
    ):
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}': QEMU's IDE/SATA disks have "
            "512-byte logical blocks only"
        )
    geo = disk.geometry
    if geo is not None and geo.trans not in (None, "auto") and disk.bus not in ("ide", "sata"):
        raise ConfigUnsupportedError(
            f"unsupported configuration: disk '{disk.target}': a BIOS translation "
            f"(trans='{geo.trans}') is only for IDE/SATA disks"
        )


def _check_seclabel(sl: SecLabel) -> None:
    model = sl.model
    if model == "dac":
        if sl.type == "static":
            parse_dac_label(sl.label or "")
        return
    if model in (None, "none") and sl.type == "none":
        return  # no labelling: what a host without a MAC driver does anyway
    # libvirt's wording (virSecurityManagerCheckModel): the host has no such driver.
    raise ConfigUnsupportedError(
        f"unsupported configuration: Security driver model '{model or 'selinux'}' is not "
        "available"
        + (
            ""
            if model
            else " (a <seclabel> without model names the host's "
            "default MAC driver; this host has none: use model='dac' or type='none')"
        )
    )


# -- pinning ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Threads:
    """QEMU's threads by role."""

    vcpus: dict[int, int] = field(default_factory=dict)  # vCPU index -> tid
    iothreads: dict[int, int] = field(default_factory=dict)  # iothread id -> tid
    emulator: list[int] = field(default_factory=list)
    #: The main emulator thread (QEMU's pid), the one ``<emulatorsched>`` is for.
    main: int | None = None


Call = Callable[[str, dict[str, Any] | None], Awaitable[Any]]


async def query_threads(call: Call, pid: int) -> Threads:
    out = Threads(main=pid)
    for cpu in await call("query-cpus-fast", None):
        out.vcpus[int(cpu["cpu-index"])] = int(cpu["thread-id"])
    for io in await call("query-iothreads", None):
        ident = str(io["id"])
        if ident.startswith("iothread") and ident[8:].isdigit():
            out.iothreads[int(ident[8:])] = int(io["thread-id"])
    known = {*out.vcpus.values(), *out.iothreads.values()}
    with contextlib.suppress(OSError):
        out.emulator = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) not in known]
    return out


def needs_threads(d: DomainDef) -> bool:
    """Whether anything of ``d`` is applied to QEMU's threads one by one: pins, scheduling
    policies, per-thread CPU bandwidth, resctrl groups."""
    ct = d.cputune
    if d.cpuset:
        return True
    if ct is None:
        return False
    per_thread = any(k not in ("shares", "global_period", "global_quota") for k in ct.bandwidth)
    return per_thread or bool(
        ct.vcpupin
        or ct.emulatorpin
        or ct.iothreadpin
        or ct.vcpusched
        or ct.iothreadsched
        or ct.emulatorsched
        or ct.resctrl
    )


def pin_threads(d: DomainDef, threads: Threads) -> None:
    """sched_setaffinity each thread to the cpuset its role has in ``d``."""
    host = os.sched_getaffinity(0)
    ct = d.cputune

    def pin(tid: int, cpuset: str | None, what: str, default: bool) -> None:
        if cpuset is None:
            return
        cpus = parse_cpuset(cpuset) & host
        if not cpus and default:
            # <vcpu cpuset> has always been a wish here: unpinned, as before, with a warning.
            log.warning("cpuset names no CPU this host has; not pinning", cpuset=cpuset)
            return
        if not cpus:
            raise OperationFailedError(
                f"cpuset '{cpuset}' of the {what} names no CPU this host lets asvirt use "
                f"({sorted(host)})"
            )
        set_affinity(tid, cpus, what)

    for index, tid in threads.vcpus.items():
        own = ct.vcpupin.get(index) if ct is not None else None
        pin(tid, own or d.cpuset, f"vCPU {index}", own is None)
    for ident, tid in threads.iothreads.items():
        own = ct.iothreadpin.get(ident) if ct is not None else None
        pin(tid, own or d.cpuset, f"I/O thread {ident}", own is None)
    own = ct.emulatorpin if ct is not None else None
    for tid in threads.emulator:
        pin(tid, own or d.cpuset, "emulator", own is None)


def set_affinity(tid: int, cpus: set[int], what: str) -> None:
    """sched_setaffinity a thread of QEMU's (``what``: ``vCPU 0``...); one that has ended
    meanwhile is left alone."""
    try:
        os.sched_setaffinity(tid, cpus)
    except ProcessLookupError:
        pass
    except OSError as err:
        raise SystemCallError.from_oserror(err, f"pin the {what} (thread {tid})") from None


#: libvirt's ``scheduler=`` -> Linux's policy.
_SCHED_POLICY = {
    "batch": os.SCHED_BATCH,
    "idle": os.SCHED_IDLE,
    "fifo": os.SCHED_FIFO,
    "rr": os.SCHED_RR,
}


def sched_threads(d: DomainDef, threads: Threads) -> None:
    """``sched_setscheduler`` each thread ``<vcpusched>``, ``<iothreadsched>`` or
    ``<emulatorsched>`` names (as libvirt, before the guest runs; the others keep QEMU's).

    ``<emulatorsched>`` is for the main emulator thread alone, as libvirt sets it (on QEMU's
    pid): QEMU's helper threads (RCU, workers) keep their policy, while ``<emulatorpin>``
    covers them all. Threads the main one starts later inherit its policy, as in libvirt."""
    ct = d.cputune
    if ct is None:
        return

    def apply(tid: int, sched: Sched | None, what: str) -> None:
        if sched is None:
            return
        param = os.sched_param(sched.priority or 0)
        try:
            os.sched_setscheduler(tid, _SCHED_POLICY[sched.policy], param)
        except ProcessLookupError:
            pass  # the thread ended meanwhile
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"set the {sched.policy} scheduler of the {what} (thread {tid})"
            ) from None

    for index, tid in threads.vcpus.items():
        apply(tid, ct.vcpusched.get(index), f"vCPU {index}")
    for ident, tid in threads.iothreads.items():
        apply(tid, ct.iothreadsched.get(ident), f"I/O thread {ident}")
    if threads.main is not None:
        apply(threads.main, ct.emulatorsched, "main emulator thread")


# -- cgroups ----------------------------------------------------------------------------------

_V1_CONTROLLER = {"cpu": "cpu", "memory": "memory", "io": "blkio"}


def wanted_controllers(d: DomainDef) -> dict[str, str]:
    """controller (v2 name) -> the XML that needs it."""
    out: dict[str, str] = {}
    if d.cputune is not None and d.cputune.bandwidth:
        out["cpu"] = "<cputune> " + "/".join(sorted(d.cputune.bandwidth))
    if d.memtune is not None and d.memtune.limits_kib:
        out["memory"] = "<memtune>"
    if d.blkiotune is not None and (d.blkiotune.weight is not None or d.blkiotune.devices):
        out["io"] = "<blkiotune>"
    return out


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) of the cgroup file systems."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[1], parts[2], set(parts[3].split(","))))
    return out


def _v2_root() -> Path | None:
    for point, fstype, _ in _mounts():
        if fstype == "cgroup2":
            return Path(point)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise SystemCallError.from_oserror(err, f"write '{value.strip()}' to", path) from None


@dataclass(slots=True)
class DomainCgroup:
    """The cgroup directories of one domain: controller -> directory."""

    dirs: dict[str, Path]
    v2: bool

    def attach(self, pid: int) -> None:
        for directory in set(self.dirs.values()):
            _write(directory / "cgroup.procs", str(pid))


#: libvirt's refusal of CPU statistics a domain's cgroup cannot give.
_NO_CPUACCT = "cgroup CPUACCT controller is not mounted"


def cgroup_cpu_times(cg: DomainCgroup) -> CpuTimes | None:
    """The CPU time (ns) the domain's cgroup has used, in total, as user and as system: v2's
    ``cpu.stat``, v1's ``cpuacct.usage`` and ``cpuacct.stat`` where cpuacct shares the cpu
    controller's hierarchy; None if its cgroup has no CPU accounting."""
    directory = cg.dirs.get("cpu")
    if directory is None:
        return None
    try:
        if cg.v2:
            fields = dict(line.split() for line in _read(directory / "cpu.stat").splitlines())
            return CpuTimes(
                total_ns=int(fields["usage_usec"]) * 1000,
                user_ns=int(fields["user_usec"]) * 1000,
                system_ns=int(fields["system_usec"]) * 1000,
            )
        usage = int(_read(directory / "cpuacct.usage"))
        ticks = dict(line.split() for line in _read(directory / "cpuacct.stat").splitlines())
    except (KeyError, ValueError):  # _read() gives "" for a file that is not there
        return None
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return CpuTimes(usage, int(ticks["user"]) * tick_ns, int(ticks["system"]) * tick_ns)


def cgroup_percpu_ns(cg: DomainCgroup | None) -> list[int]:
    """The CPU time (ns) the domain's cgroup has used on each host CPU (v1's
    ``cpuacct.usage_percpu``). As libvirt: OperationInvalidError without a cpuacct cgroup,
    OperationUnsupportedError on cgroup v2, which keeps no such figure."""
    directory = cg.dirs.get("cpu") if cg is not None else None
    if cg is None or directory is None:
        raise OperationInvalidError(_NO_CPUACCT)
    if cg.v2:
        raise OperationUnsupportedError(
            "operation 'getCpuacctPercpuUsage' not supported for backend 'cgroup V2'"
        )
    try:
        percpu = [int(n) for n in _read(directory / "cpuacct.usage_percpu").split()]
    except ValueError:
        percpu = []
    if not percpu:  # cpuacct is not in the cpu controller's hierarchy (or is gone)
        raise OperationInvalidError(_NO_CPUACCT)
    return percpu


def cgroup_name(uuid: str) -> str:
    return f"qemu-{uuid}"


def _locate(parent: str, need: dict[str, str]) -> tuple[dict[str, Path], bool]:
    """Where each needed controller's domain cgroup goes, v2 first, else v1."""
    if os.geteuid() != 0:
        raise OperationUnsupportedError(
            f"{', '.join(need.values())}: asvirt applies these through a cgroup of the "
            f"domain's own, and this supervisor runs as uid {os.geteuid()}, not root"
        )
    v2 = _v2_root()
    missing = set(need)
    if v2 is not None:
        available = set(_read(v2 / "cgroup.controllers").split())
        if set(need) <= available:
            return {c: v2 / parent for c in need}, True
    dirs: dict[str, Path] = {}
    for point, fstype, opts in _mounts():
        if fstype != "cgroup":
            continue
        for ctl in list(missing):
            if _V1_CONTROLLER[ctl] in opts:
                dirs[ctl] = Path(point) / parent
                missing.discard(ctl)
    if missing:
        what = ", ".join(need[c] for c in sorted(missing))
        raise OperationUnsupportedError(
            f"{what}: the host's cgroups have no {'/'.join(sorted(missing))} controller "
            f"(cgroup v2 at {v2 or 'nowhere'} offers "
            f"'{_read(v2 / 'cgroup.controllers').strip() if v2 else ''}', and no cgroup v1 "
            "hierarchy has it)"
        )
    return dirs, False


def prepare_cgroup(d: DomainDef, parent: str) -> DomainCgroup | None:
    """Create the domain's cgroup and set what its XML asks; None if it asks nothing.

    Raises OperationUnsupportedError when the host or the supervisor cannot.
    """
    need = wanted_controllers(d)
    if not need:
        return None
    bases, v2 = _locate(parent.strip("/"), need)
    dirs: dict[str, Path] = {}
    for ctl, base in bases.items():
        try:
            base.mkdir(parents=True, exist_ok=True)
            if v2:
                _enable(base, ctl)
            own = base / cgroup_name(d.uuid)
            own.mkdir(exist_ok=True)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "create the domain's cgroup in", base) from None
        dirs[ctl] = own
    cg = DomainCgroup(dirs, v2)
    try:
        _apply(cg, d)
    except BaseException:
        remove_cgroup(d.uuid, parent)
        raise
    log.info("cgroup prepared", domain=d.name, dirs=sorted({str(p) for p in dirs.values()}))
    return cg


def existing_cgroup(d: DomainDef, parent: str) -> DomainCgroup | None:
    """The cgroup a previous supervisor made for the running domain ``d`` (it re-attaches):
    None if ``d`` needs none or it is not there."""
    need = wanted_controllers(d)
    if not need:
        return None
    try:
        bases, v2 = _locate(parent.strip("/"), need)
    except OperationUnsupportedError:
        return None
    dirs = {ctl: base / cgroup_name(d.uuid) for ctl, base in bases.items()}
    if not all(p.is_dir() for p in dirs.values()):
        return None
    return DomainCgroup(dirs, v2)


def _enable(base: Path, ctl: str) -> None:
    """Enable ``ctl`` from the v2 root down to ``base`` (its children may then use it)."""
    root = _v2_root()
    assert root is not None
    chain = [root]
    for part in base.relative_to(root).parts:
        chain.append(chain[-1] / part)
    for directory in chain:
        if ctl not in _read(directory / "cgroup.subtree_control").split():
            _write(directory / "cgroup.subtree_control", f"+{ctl}")


def _dev_numbers(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "find the block device", path) from None
    if not (st.st_mode & 0o170000 == 0o060000):
        raise OperationFailedError(f"<blkiotune> device '{path}' is not a block device")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _apply(cg: DomainCgroup, d: DomainDef) -> None:
    ct, mt, bt = d.cputune, d.memtune, d.blkiotune
    if ct is not None and "cpu" in cg.dirs:
        cpu = cg.dirs["cpu"]
        shares = ct.bandwidth.get("shares")
        period = ct.bandwidth.get("global_period")
        quota = ct.bandwidth.get("global_quota")
        if cg.v2:
            if shares is not None:
                if not 1 <= shares <= 10000:
                    raise OperationFailedError(
                        f"<shares>{shares}</shares>: cgroup v2's cpu.weight takes 1-10000"
                    )
                _write(cpu / "cpu.weight", str(shares))
            if period is not None or quota is not None:
                _write(cpu / "cpu.max", _cpu_max(quota, period))
        else:
            if shares is not None:
                _write(cpu / "cpu.shares", str(max(shares, 2)))
            if period is not None:
                _write(cpu / "cpu.cfs_period_us", str(period))
            if quota is not None:
                _write(cpu / "cpu.cfs_quota_us", str(quota))
    if mt is not None and "memory" in cg.dirs:
        mem = cg.dirs["memory"]
        lim = {k: v * 1024 for k, v in mt.limits_kib.items()}
        if cg.v2:
            if "hard_limit" in lim:
                _write(mem / "memory.max", str(lim["hard_limit"]))
            if "soft_limit" in lim:
                _write(mem / "memory.high", str(lim["soft_limit"]))
            if "swap_hard_limit" in lim:
                # libvirt's swap_hard_limit is memory plus swap; v2's swap.max is swap alone.
                swap = lim["swap_hard_limit"] - lim.get("hard_limit", 0)
                _write(mem / "memory.swap.max", str(max(swap, 0)))
        else:
            if "hard_limit" in lim:
                _write(mem / "memory.limit_in_bytes", str(lim["hard_limit"]))
            if "soft_limit" in lim:
                _write(mem / "memory.soft_limit_in_bytes", str(lim["soft_limit"]))
            if "swap_hard_limit" in lim:
                if not (mem / "memory.memsw.limit_in_bytes").exists():
                    raise OperationUnsupportedError(
                        "<memtune><swap_hard_limit>: the kernel does not account swap "
                        "(no memory.memsw.limit_in_bytes; boot with swapaccount=1)"
                    )
                _write(mem / "memory.memsw.limit_in_bytes", str(lim["swap_hard_limit"]))
    if bt is not None and "io" in cg.dirs:
        _apply_blkio(cg.dirs["io"], cg.v2, bt)


def _cpu_max(quota: int | None, period: int | None) -> str:
    q = "max" if quota is None or quota < 0 else str(quota)
    return f"{q} {period or 100000}"


def _apply_blkio(io: Path, v2: bool, bt: Any) -> None:
    if bt.weight is not None:
        if v2:
            name = "io.weight" if (io / "io.weight").exists() else "io.bfq.weight"
            _write(io / name, f"default {bt.weight}" if name == "io.weight" else str(bt.weight))
        else:
            name = "blkio.weight" if (io / "blkio.weight").exists() else "blkio.bfq.weight"
            if not (io / name).exists():
                raise OperationUnsupportedError(
                    "<blkiotune><weight>: the host's I/O scheduler offers no weight "
                    "(neither blkio.weight nor blkio.bfq.weight)"
                )
            _write(io / name, str(bt.weight))
    v1_files = {
        "read_bytes_sec": "blkio.throttle.read_bps_device",
        "write_bytes_sec": "blkio.throttle.write_bps_device",
        "read_iops_sec": "blkio.throttle.read_iops_device",
        "write_iops_sec": "blkio.throttle.write_iops_device",
    }
    v2_keys = {
        "read_bytes_sec": "rbps",
        "write_bytes_sec": "wbps",
        "read_iops_sec": "riops",
        "write_iops_sec": "wiops",
    }
    for dev in bt.devices:
        numbers = _dev_numbers(dev.path)
        if dev.weight is not None:
            if v2:
                _write(io / "io.weight", f"{numbers} {dev.weight}")
            else:
                name = "blkio.weight_device"
                if not (io / name).exists():
                    name = "blkio.bfq.weight_device"
                _write(io / name, f"{numbers} {dev.weight}")
        if v2:
            keys = " ".join(f"{v2_keys[k]}={v or 'max'}" for k, v in dev.limits.items())
            if keys:
                _write(io / "io.max", f"{numbers} {keys}")
        else:
            for key, value in dev.limits.items():
                _write(io / v1_files[key], f"{numbers} {value}")


def thread_cgroups(d: DomainDef, cg: DomainCgroup | None, threads: Threads) -> None:
    """Per-thread CPU bandwidth (``period``/``quota`` of each vCPU, ``emulator_*``,
    ``iothread_*``): sub-cgroups of the domain's, as libvirt's vcpuN/emulator/iothreadN."""
    ct = d.cputune
    if ct is None or cg is None or "cpu" not in cg.dirs:
        return
    bw = ct.bandwidth
    groups: list[tuple[str, list[int], int | None, int | None]] = []
    if "period" in bw or "quota" in bw:
        for index, tid in threads.vcpus.items():
            groups.append((f"vcpu{index}", [tid], bw.get("period"), bw.get("quota")))
    if "emulator_period" in bw or "emulator_quota" in bw:
        groups.append(
            ("emulator", threads.emulator, bw.get("emulator_period"), bw.get("emulator_quota"))
        )
    if "iothread_period" in bw or "iothread_quota" in bw:
        for ident, tid in threads.iothreads.items():
            groups.append(
                (f"iothread{ident}", [tid], bw.get("iothread_period"), bw.get("iothread_quota"))
            )
    base = cg.dirs["cpu"]
    for name, tids, period, quota in groups:
        sub = base / name
        try:
            sub.mkdir(exist_ok=True)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "create the thread cgroup", sub) from None
        if cg.v2:
            _write(sub / "cgroup.type", "threaded")
            _write(sub / "cpu.max", _cpu_max(quota, period))
        else:
            if period is not None:
                _write(sub / "cpu.cfs_period_us", str(period))
            if quota is not None:
                _write(sub / "cpu.cfs_quota_us", str(quota))
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                _write(sub / ("cgroup.threads" if cg.v2 else "tasks"), str(tid))


def remove_cgroup(uuid: str, parent: str) -> None:
    """Remove the domain's cgroups (after QEMU is gone), wherever they are. Never raises."""
    name = cgroup_name(uuid)
    try:
        mounts = _mounts()
    except OSError:
        return
    for point, _, _ in mounts:
        own = Path(point) / parent.strip("/") / name
        if not own.is_dir():
            continue
        for sub in sorted((p for p in own.iterdir() if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        try:
            own.rmdir()
        except OSError as err:
            if err.errno != errno.ENOENT:
                log.warning("cannot remove a domain's cgroup", path=str(own), error=str(err))


# -- resctrl (<cachetune>, <memorytune>) -------------------------------------------------------

RESCTRL_ROOT = Path("/sys/fs/resctrl")
_CPU_SYSFS = Path("/sys/devices/system/cpu")


def resctrl_mounted() -> bool:
    """Whether resctrl is mounted where libvirt (and the kernel's documentation) have it."""
    try:
        with open("/proc/self/mounts") as f:
            return any(
                len(p) >= 3 and p[2] == "resctrl" and p[1] == str(RESCTRL_ROOT)
                for p in (line.split() for line in f)
            )
    except OSError:
        return False


def resctrl_prefix(uuid: str) -> str:
    """The start of the names of a domain's resctrl groups (``asvirt-UUID-vcpus_0-1``)."""
    return f"asvirt-{uuid}-"


def _resource(level: int, kind: str) -> str:
    """resctrl's resource of a cache allocation: ``L3``, or ``L3CODE``/``L3DATA`` (CDP)."""
    return f"L{level}" + {"both": "", "code": "CODE", "data": "DATA"}[kind]


def _schemata(path: Path) -> dict[str, dict[int, str]]:
    """A ``schemata`` file: resource -> domain id -> value (a mask, or a percentage)."""
    out: dict[str, dict[int, str]] = {}
    for line in _read(path).splitlines():
        name, sep, rest = line.strip().partition(":")
        if not sep:
            continue
        for item in rest.split(";"):
            ident, eq, value = item.strip().partition("=")
            if eq and ident.strip().isdigit():
                out.setdefault(name.strip(), {})[int(ident)] = value.strip()
    return out


def _cache_size(level: int, cache_id: int) -> int | None:
    """Bytes of the host's cache ``cache_id`` of ``level`` (Unified or Data), from sysfs."""
    for index in sorted(_CPU_SYSFS.glob("cpu[0-9]*/cache/index[0-9]*")):
        if _read(index / "level").strip() != str(level):
            continue
        if _read(index / "id").strip() != str(cache_id):
            continue
        if _read(index / "type").strip() not in ("Unified", "Data"):
            continue
        text = _read(index / "size").strip()
        if text[:-1].isdigit() and text[-1:] in "KMG":
            return int(text[:-1]) * 1024 ** ("KMG".index(text[-1]) + 1)
    return None


def _info(resource: str, name: str, default: int, *, base: int = 10) -> int:
    """A number resctrl's ``info/RESOURCE/NAME`` gives (``default`` if the file is absent)."""
    text = _read(RESCTRL_ROOT / "info" / resource / name).strip()
    try:
        return int(text, base) if text else default
    except ValueError:
        raise OperationFailedError(
            f"cannot read resctrl's info/{resource}/{name}: '{text}' is not a number"
        ) from None


def _used_bits(resource: str, cache_id: int) -> int:
    """The bits of ``resource``'s cache ``cache_id`` other groups hold (the default group,
    the root, holds all of them and takes what nobody else has)."""
    used = 0
    try:
        groups = [p for p in RESCTRL_ROOT.iterdir() if p.is_dir()]
    except OSError:
        return 0
    for group in groups:
        if group.name in ("info", "mon_groups", "mon_data"):
            continue
        value = _schemata(group / "schemata").get(resource, {}).get(cache_id)
        if value is not None:
            with contextlib.suppress(ValueError):
                used |= int(value, 16)
    return used


def _cache_mask(
    alloc: CacheAlloc, root: dict[str, dict[int, str]], taken: dict[tuple[str, int], int]
) -> str:
    """A free run of bits of the cache ``alloc`` names, as large as its size (libvirt's
    rules: a multiple of the granularity, at least the minimum number of bits)."""
    resource = _resource(alloc.level, alloc.type)
    what = f"<cache id='{alloc.id}' level='{alloc.level}' type='{alloc.type}'>"
    if not (RESCTRL_ROOT / "info" / resource).is_dir():
        extra = " (code/data allocations need resctrl mounted with -o cdp)"
        raise OperationUnsupportedError(
            f"{what}: the host's resctrl has no {resource} allocation"
            + (extra if alloc.type != "both" else "")
        )
    if alloc.id not in root.get(resource, {}):
        raise OperationFailedError(f"{what}: the host has no such cache")
    full = _info(resource, "cbm_mask", 0, base=16)
    min_bits = _info(resource, "min_cbm_bits", 1)
    nbits = full.bit_length()
    size = _cache_size(alloc.level, alloc.id)
    if size is None or not nbits or size < nbits:
        raise OperationFailedError(f"{what}: the host's cache size is unknown")
    granularity = size // nbits
    if alloc.size % granularity:
        raise OperationFailedError(
            f"{what}: cache allocation of size {alloc.size} is not divisible by granularity "
            f"{granularity}"
        )
    want = alloc.size // granularity
    if want < min_bits:
        raise OperationFailedError(
            f"{what}: cache allocation of size {alloc.size} is smaller than the minimum "
            f"allowed allocation {granularity * min_bits}"
        )
    key = (resource, alloc.id)
    if key not in taken:
        taken[key] = _used_bits(resource, alloc.id)
    free = full & ~taken[key]
    run = (1 << want) - 1
    for shift in range(nbits - want + 1):
        if free & (run << shift) == run << shift:
            taken[key] |= run << shift  # the domain's next group takes other bits
            return f"{run << shift:x}"
    raise OperationFailedError(
        f"{what}: not enough room for a cache allocation of {alloc.size} bytes (free mask {free:x})"
    )


def _bandwidth(node_id: int, percent: int, root: dict[str, dict[int, str]]) -> str:
    what = f"<memorytune><node id='{node_id}' bandwidth='{percent}'>"
    if not (RESCTRL_ROOT / "info" / "MB").is_dir():
        raise OperationUnsupportedError(
            f"{what}: the host's resctrl has no memory bandwidth allocation"
        )
    if node_id not in root.get("MB", {}):
        raise OperationFailedError(f"{what}: the host has no such memory controller")
    minimum = _info("MB", "min_bandwidth", 0)
    granularity = _info("MB", "bandwidth_gran", 1) or 1
    if percent < minimum:
        raise OperationFailedError(
            f"{what}: memory bandwidth value '{percent}' is less than the minimum '{minimum}'"
        )
    if percent % granularity:
        raise OperationFailedError(
            f"{what}: memory bandwidth value '{percent}' is not a multiple of the "
            f"granularity '{granularity}'"
        )
    return str(percent)


@dataclass(slots=True)
class DomainResctrl:
    """A domain's resctrl groups: the allocating ones, and monitor groups by their vCPUs."""

    groups: list[tuple[Resctrl, Path | None, dict[frozenset[int], Path]]]

    def assign(self, threads: Threads) -> None:
        """Move each vCPU thread into its group, then into the monitor groups naming it."""
        for group, directory, monitors in self.groups:
            tids = [threads.vcpus[v] for v in sorted(group.vcpus) if v in threads.vcpus]
            if directory is not None:
                _add_tasks(directory, tids)
            for vcpus, mon in monitors.items():
                _add_tasks(mon, [threads.vcpus[v] for v in sorted(vcpus) if v in threads.vcpus])


def _add_tasks(directory: Path, tids: list[int]) -> None:
    for tid in tids:
        try:
            (directory / "tasks").write_text(str(tid))
        except ProcessLookupError:
            pass
        except OSError as err:
            if err.errno != errno.ESRCH:
                raise SystemCallError.from_oserror(
                    err, f"move thread {tid} into", directory
                ) from None


def prepare_resctrl(d: DomainDef, uuid: str) -> DomainResctrl | None:
    """Create the resctrl groups of ``<cachetune>``/``<memorytune>`` (before QEMU starts:
    refuses what the host cannot do, leaving nothing behind); None if the XML has none."""
    ct = d.cputune
    if ct is None or not ct.resctrl:
        return None
    tags = [t for t in ("cachetune", "memorytune") if any(getattr(g, t) for g in ct.resctrl)]
    if not resctrl_mounted():
        raise OperationUnsupportedError(
            f"{' and '.join(f'<{t}>' for t in tags)}: {'/'.join(tags)} needs resctrl mounted "
            f"at {RESCTRL_ROOT} (the kernel's resctrl file system: 'mount -t resctrl resctrl "
            f"{RESCTRL_ROOT}' on a host whose CPUs have cache/memory-bandwidth allocation)"
        )
    # Groups a supervisor that died left behind are this domain's no longer (no QEMU of it
    # runs while it starts): their bits are free again.
    remove_resctrl(uuid)
    root = _schemata(RESCTRL_ROOT / "schemata")
    monitored = any(g.cache_monitors or g.memory_monitors for g in ct.resctrl)
    if monitored and not (RESCTRL_ROOT / "info" / "L3_MON").is_dir():
        raise OperationUnsupportedError(
            "<cachetune>/<memorytune> <monitor>: the host's resctrl has no monitoring (info/L3_MON)"
        )
    # Everything is worked out before anything is created.
    plans: list[tuple[Resctrl, str]] = []
    taken: dict[tuple[str, int], int] = {}
    for group in ct.resctrl:
        lines: dict[str, list[str]] = {}
        for alloc in group.caches:
            mask = _cache_mask(alloc, root, taken)
            lines.setdefault(_resource(alloc.level, alloc.type), []).append(f"{alloc.id}={mask}")
        for node_id, percent in sorted(group.bandwidth.items()):
            lines.setdefault("MB", []).append(f"{node_id}={_bandwidth(node_id, percent, root)}")
        plans.append((group, "".join(f"{r}:{';'.join(v)}\n" for r, v in lines.items())))
    out = _resctrl_layout(ct.resctrl, uuid)
    try:
        for (_, directory, monitors), (_, schemata) in zip(out.groups, plans, strict=True):
            if directory is not None:
                _mkdir(directory)
                _write(directory / "schemata", schemata)
            for mon in monitors.values():
                _mkdir(mon)
    except BaseException:
        remove_resctrl(uuid)
        raise
    log.info("resctrl groups prepared", domain=d.name, groups=[g.name for g in ct.resctrl])
    return out


def _resctrl_layout(groups: list[Resctrl], uuid: str) -> DomainResctrl:
    """Where the domain's resctrl groups and monitor groups are (nothing is created)."""
    out = DomainResctrl(groups=[])
    prefix = resctrl_prefix(uuid)
    for group in groups:
        directory = RESCTRL_ROOT / f"{prefix}{group.name}" if group.allocates else None
        monitors: dict[frozenset[int], Path] = {}
        for vcpus in [*(v for _, v in group.cache_monitors), *group.memory_monitors]:
            if vcpus in monitors or (vcpus == group.vcpus and directory is not None):
                continue  # a monitor of the whole group is the group itself
            name = f"vcpus_{format_cpuset(vcpus)}"
            if directory is not None:
                monitors[vcpus] = directory / "mon_groups" / name
            else:
                monitors[vcpus] = RESCTRL_ROOT / "mon_groups" / f"{prefix}{name}"
        out.groups.append((group, directory, monitors))
    return out


def existing_resctrl(d: DomainDef, uuid: str) -> DomainResctrl | None:
    """The resctrl groups a previous supervisor made for the running domain ``d`` (it
    re-attaches): None if ``d`` has none or they are not there."""
    ct = d.cputune
    if ct is None or not ct.resctrl or not resctrl_mounted():
        return None
    out = _resctrl_layout(ct.resctrl, uuid)
    for _, directory, monitors in out.groups:
        if not all(p.is_dir() for p in [*monitors.values(), *([directory] if directory else [])]):
            return None
    return out


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(exist_ok=True)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "create the resctrl group", path) from None


def remove_resctrl(uuid: str) -> None:
    """Remove a domain's resctrl groups (their threads go back to the default group).
    Never raises."""
    prefix = resctrl_prefix(uuid)
    for base in (RESCTRL_ROOT, RESCTRL_ROOT / "mon_groups"):
        try:
            entries = [p for p in base.iterdir() if p.name.startswith(prefix)]
        except OSError:
            continue
        for path in entries:
            try:
                path.rmdir()
            except OSError as err:
                if err.errno != errno.ENOENT:
                    log.warning("cannot remove a resctrl group", path=str(path), error=str(err))


# -- hugepages --------------------------------------------------------------------------------


def hugetlbfs_mount(page_kib: int | None) -> str | None:
    """A hugetlbfs mount of ``page_kib`` pages (None: the default size), or None."""
    default = default_hugepage_kib()
    want = page_kib or default
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4 or parts[2] != "hugetlbfs":
                continue
            size = default
            for opt in parts[3].split(","):
                if opt.startswith("pagesize="):
                    size = _size_kib(opt[9:])
            if size == want:
                return parts[1]
    return None


def default_hugepage_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Hugepagesize:"):
                return int(line.split()[1])
    return 2048


def _size_kib(text: str) -> int:
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    text = text.strip().lower()
    if text[-1:] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) // 1024


__all__ = [
    "RESCTRL_ROOT",
    "DomainCgroup",
    "DomainResctrl",
    "Threads",
    "cgroup_cpu_times",
    "cgroup_percpu_ns",
    "check_tuning",
    "default_hugepage_kib",
    "existing_cgroup",
    "existing_resctrl",
    "hugetlbfs_mount",
    "needs_threads",
    "pin_threads",
    "prepare_cgroup",
    "prepare_resctrl",
    "query_threads",
    "remove_cgroup",
    "remove_resctrl",
    "resctrl_mounted",
    "sched_threads",
    "set_affinity",
    "thread_cgroups",
    "wanted_controllers",
]
