"""What a QEMU's statistics are made of: its threads in /proc, the host's interface counters,
its disk images, and the answers of ``query-blockstats`` and the balloon's ``guest-stats``.

Everything here reads or parses; nothing asks QEMU. The runner makes the (few) QMP queries and
hands their answers here (see :meth:`~.runner.QemuRunner.sample`). Readers return None when
the process or file is gone: statistics are a snapshot, and a domain that stops meanwhile is
no error.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from ...conf.devices import Disk
from ...drivers.base import BlockInfo, InterfaceStats
from ...errors import SystemCallError
from ...hypervisor.stats import VCPU_RUNNING, BlockCounters, CpuTimes, VcpuSample

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_NS_PER_TICK = 1_000_000_000 // _CLK_TCK

#: What QEMU answers for a balloon statistic the guest never reported (-1 as a uint64).
_NOT_REPORTED = (1 << 64) - 1

#: The balloon's ``guest-stats`` (QEMU's names) as libvirt reports them, with the divisor
#: from bytes to KiB where libvirt reports KiB — in libvirt's order.
_GUEST_STATS = (
    ("stat-swap-in", "swap_in", 1024),
    ("stat-swap-out", "swap_out", 1024),
    ("stat-major-faults", "major_fault", 1),
    ("stat-minor-faults", "minor_fault", 1),
    ("stat-free-memory", "unused", 1024),
    ("stat-total-memory", "available", 1024),
    ("stat-available-memory", "usable", 1024),
    ("last-update", "last_update", 1),
    ("stat-disk-caches", "disk_caches", 1024),
    ("stat-htlb-pgalloc", "hugetlb_pgalloc", 1),
    ("stat-htlb-pgfail", "hugetlb_pgfail", 1),
)

#: The magic of a qcow2 image, and where its header keeps the virtual size (big endian).
_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_SIZE_OFFSET = 24


def _after_comm(data: bytes) -> list[bytes]:
    """The fields of a /proc .../stat file after the command name (field 3 is index 0)."""
    return data[data.rindex(b")") + 2 :].split()


def process_times(stat: bytes | None) -> tuple[CpuTimes, int] | None:
    """The CPU time the process used (all its threads) and its resident set size in KiB (as
    libvirt's ``rss``), from its /proc/PID/stat (None: the process is gone)."""
    if not stat:
        return None
    fields = _after_comm(stat)
    user = int(fields[11]) * _NS_PER_TICK
    system = int(fields[12]) * _NS_PER_TICK
    times = CpuTimes(total_ns=user + system, user_ns=user, system_ns=system)
    return times, int(fields[21]) * _PAGE_KIB


def thread_times(pid: int, tid: int) -> tuple[int, int] | None:
    """The CPU time (ns) a thread of ``pid`` used and the host CPU it last ran on (fields
    14, 15 and 39 of its /proc stat, as libvirt reads them for ``virDomainGetVcpus``);
    None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data:
        return None
    fields = _after_comm(data)
    return (int(fields[11]) + int(fields[12])) * _NS_PER_TICK, int(fields[36])


def schedstats_enabled() -> bool:
    """Whether the kernel keeps scheduler statistics (``wait_sum``): reading them otherwise
    costs a large /proc file per vCPU for a figure that is always 0."""
    try:
        with open("/proc/sys/kernel/sched_schedstats", "rb") as f:
            return f.read().strip() == b"1"
    except OSError:
        return False


class VcpuFiles:
    """The /proc files of a QEMU's vCPU threads, kept open while they are its vCPUs: one
    ``pread`` per file and call, where opening each costs three system calls. Like
    :class:`~.process.CpuClock`, an open file stays bound to its thread: once the thread is
    gone it reads nothing, even if its id is used again."""

    __slots__ = ("_files", "pid", "threads")

    def __init__(self, pid: int, threads: list[int]) -> None:
        self.pid = pid
        self.threads = threads
        self._files: list[tuple[int, int | None]] = []
        try:
            for tid in threads:
                task = f"/proc/{pid}/task/{tid}"
                stat = os.open(f"{task}/stat", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    sched: int | None = os.open(f"{task}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    sched = None  # a kernel without CONFIG_SCHEDSTATS: no delay figure
                self._files.append((stat, sched))
        except OSError:
            self.close()
            self._files = []
            self.threads = []  # a thread already gone: nothing to read; ask QEMU again

    def sample(self, *, wait: bool = False) -> list[VcpuSample] | None:
        """Each vCPU thread's CPU time, the time it was delayed on a run queue
        (``schedstat``) and, with ``wait``, the time it waited (``wait_sum`` of its
        scheduler statistics); None if a thread is gone (the threads changed)."""
        if not self.threads:
            return None
        found = []
        for tid, (stat_fd, sched_fd) in zip(self.threads, self._files, strict=True):
            try:
                stat = os.pread(stat_fd, 1024, 0)
            except OSError:
                return None
            if not stat:
                return None
            fields = _after_comm(stat)
            time_ns = (int(fields[11]) + int(fields[12])) * _NS_PER_TICK
            delay: int | None = None
            if sched_fd is not None:
                try:
                    delay = int(os.pread(sched_fd, 256, 0).split()[1])
                except (OSError, IndexError, ValueError):
                    pass
            waited = _wait_ns(f"/proc/{self.pid}/task/{tid}/sched") if wait else 0
            found.append(VcpuSample(VCPU_RUNNING, time_ns, waited, delay))
        return found

    def close(self) -> None:
        for stat_fd, sched_fd in self._files:
            os.close(stat_fd)
            if sched_fd is not None:
                os.close(sched_fd)
        self._files = []


def _wait_ns(path: str) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                key, _, value = line.partition(b":")
                if key.strip().endswith(b"wait_sum"):
                    return int(float(value) * 1_000_000)  # milliseconds, with decimals
    except (OSError, ValueError):
        pass
    return 0


def vcpu_threads(cpus: Any) -> list[int]:
    """The thread of each online vCPU, in vCPU order, from ``query-cpus-fast``'s answer."""
    found = [
        (cpu["cpu-index"], cpu["thread-id"])
        for cpu in (cpus if isinstance(cpus, list) else [])
        if isinstance(cpu.get("cpu-index"), int) and isinstance(cpu.get("thread-id"), int)
    ]
    return [tid for _, tid in sorted(found)]


def guest_memory(reply: Any) -> dict[str, int]:
    """The balloon's ``guest-stats`` as libvirt names them (KiB), leaving out those the guest
    never reported."""
    stats = reply.get("stats") if isinstance(reply, dict) else None
    if not isinstance(stats, dict):
        return {}
    found: dict[str, int] = {}
    for qemu_name, name, divisor in _GUEST_STATS:
        source = reply if qemu_name == "last-update" else stats
        value = source.get(qemu_name)
        if isinstance(value, int) and 0 <= value != _NOT_REPORTED:
            found[name] = value // divisor
    return found


def block_counters(entries: Any, disks: list[Disk]) -> dict[str, BlockCounters]:
    """``query-blockstats``' answer, by disk target. QEMU names each entry by the device
    using it (``qdev``): the disk's alias, or a QOM path below it (virtio-blk's backend)."""
    by_qdev: dict[str, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        qdev, stats = entry.get("qdev"), entry.get("stats")
        if isinstance(qdev, str) and isinstance(stats, dict):
            by_qdev[qdev] = stats
    found: dict[str, BlockCounters] = {}
    for disk in disks:
        if not disk.alias:
            continue
        stats = by_qdev.get(disk.alias)
        if stats is None:
            prefix = f"/machine/peripheral/{disk.alias}/"
            stats = next((s for q, s in by_qdev.items() if q.startswith(prefix)), None)
        if stats is None:
            continue
        found[disk.target] = BlockCounters(
            rd_reqs=stats.get("rd_operations"),
            rd_bytes=stats.get("rd_bytes"),
            rd_times=stats.get("rd_total_time_ns"),
            wr_reqs=stats.get("wr_operations"),
            wr_bytes=stats.get("wr_bytes"),
            wr_times=stats.get("wr_total_time_ns"),
            fl_reqs=stats.get("flush_operations"),
            fl_times=stats.get("flush_total_time_ns"),
        )
    return found


def read_netdev() -> dict[str, tuple[int, ...]]:
    """The interface counters of this process's network namespace (/proc/net/dev): for each
    interface, its 16 columns (receive bytes, packets, errs, drop, fifo, frame, compressed,
    multicast; transmit bytes, packets, errs, drop, fifo, colls, carrier, compressed)."""
    try:
        with open("/proc/self/net/dev", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return {}
    return parse_netdev(text)


def parse_netdev(text: str) -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            values = tuple(int(v) for v in rest.split())
        except ValueError:
            continue
        if len(values) >= 16:
            table[name.strip()] = values
    return table


def tap_stats(counters: tuple[int, ...]) -> InterfaceStats:
    """A tap's counters from the guest's side: what the host's tap transmits, the guest
    receives (libvirt swaps them the same way for taps)."""
    return InterfaceStats(
        rx_bytes=counters[8],
        rx_packets=counters[9],
        rx_errs=counters[10],
        rx_drop=counters[11],
        tx_bytes=counters[0],
        tx_packets=counters[1],
        tx_errs=counters[2],
        tx_drop=counters[3],
    )


class ImageSizes:
    """The sizes of disk images (:meth:`info`), with what only a read of the image says (a
    qcow2's virtual size) remembered while ``stat`` says the image is unchanged: the
    statistics of a hundred domains size a hundred images per call, and one ``stat`` costs a
    quarter of opening, reading and closing each.

    An image is "unchanged" while its device, inode, size, mtime and ctime are: every write
    changes mtime. As git does with its index, a size read within :data:`RACY_NS` of the
    image's last change is not remembered: a timestamp has the kernel's coarse resolution,
    and a write in the same tick as the read would leave it unchanged."""

    #: How old an image's last change must be for its read to be remembered.
    RACY_NS = 2_000_000_000
    #: At most this many images are remembered (beyond it, the memory starts afresh).
    LIMIT = 4096

    def __init__(self, *, racy_ns: int = RACY_NS) -> None:
        """``racy_ns``: how old a change must be for a read to be remembered."""
        self._racy_ns = racy_ns
        self._known: dict[str, tuple[tuple[int, int, int, int, int], int]] = {}

    def info(self, disk: Disk) -> BlockInfo:
        """What the guest sees of the image (``capacity``: a qcow2's virtual size, else the
        image's size), what it occupies (``allocation``, as ``du``) and its size
        (``physical``, as ``ls``). SystemCallError if it cannot be read."""
        path = disk.source
        assert path is not None
        try:
            st = os.stat(path)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "read the size of", path) from None
        if stat.S_ISBLK(st.st_mode):
            return _device_info(path)
        capacity = st.st_size
        if disk.format == "qcow2":
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            known = self._known.get(path)
            if known is not None and known[0] == key:
                capacity = known[1]
            else:
                capacity = _qcow2_size(path, st.st_size)
                if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > self._racy_ns:
                    if len(self._known) >= self.LIMIT:
                        self._known.clear()
                    self._known[path] = (key, capacity)
        return BlockInfo(capacity=capacity, allocation=st.st_blocks * 512, physical=st.st_size)


def image_info(disk: Disk) -> BlockInfo:
    """The sizes of a disk's image on the host (see :meth:`ImageSizes.info`), read afresh."""
    return ImageSizes().info(disk)


def _qcow2_size(path: str, default: int) -> int:
    """A qcow2 image's virtual size from its header (``default`` if it has no qcow2 header)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "read the size of", path) from None
    try:
        header = os.pread(fd, _QCOW2_SIZE_OFFSET + 8, 0)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "read the size of", path) from None
    finally:
        os.close(fd)
    if len(header) == _QCOW2_SIZE_OFFSET + 8 and header[:4] == _QCOW2_MAGIC:
        return int.from_bytes(header[_QCOW2_SIZE_OFFSET:], "big")
    return default


def _device_info(path: str) -> BlockInfo:
    """A block device's size (``stat`` says 0: it is where its end is)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "read the size of", path) from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "read the size of", path) from None
    finally:
        os.close(fd)
    return BlockInfo(capacity=size, allocation=size, physical=size)


__all__ = [
    "ImageSizes",
    "VcpuFiles",
    "block_counters",
    "guest_memory",
    "image_info",
    "parse_netdev",
    "process_times",
    "read_netdev",
    "schedstats_enabled",
    "tap_stats",
    "thread_times",
    "vcpu_threads",
]
