"""What /proc says of a process, for the benchmarks' load-insensitive figures."""

from __future__ import annotations

import os
from pathlib import Path


def rss_kib(pid: int | str = "self") -> int:
    """A process's resident set size, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far, all its threads (in clock ticks: 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
