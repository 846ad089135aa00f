"""How long turning domain XML into a QEMU command line takes (parse + prepare + build).

    .venv/bin/python bench/bench_xml2argv.py [--rounds N] [--case NAME_OR_PATH]...

The default cases are libvirt's ``x86_64-q35-headless`` (a typical virt-install guest) and
``pci-bridge-many-disks`` (105 disks, the worst case of the set) from
``../shared/conformance`` when it is there, else the example configs. QEMU's capabilities
are probed once (not timed): this is the cost of ``define``/``start``/``domxml-to-native``
on asvirt's side. Target (from the XML issue): under 20 ms for one case.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asvirt.conf.domain import parse_domain_xml  # noqa: E402
from asvirt.drivers.qemu.capabilities import CapabilitiesCache, QemuCapabilities  # noqa: E402
from asvirt.drivers.qemu.command import MonitorSpec, build_command  # noqa: E402
from asvirt.drivers.qemu.monitor import monitor_host  # noqa: E402
from asvirt.drivers.qemu.postparse import prepare_domain  # noqa: E402

CASES = REPO / ".." / "shared" / "conformance" / "libvirt-xml"
DEFAULT_CASES = ["x86_64-q35-headless", "pci-bridge-many-disks"]
TARGET_MS = 20.0


def probe(cache: Path) -> QemuCapabilities:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        sys.exit("qemu-system-x86_64 is not on PATH")

    async def main() -> QemuCapabilities:
        async with monitor_host() as host:
            return await CapabilitiesCache(cache, host, timeout=30).get(binary)

    return trio.run(main)


def resolve(case: str) -> Path:
    path = Path(case)
    if path.exists():
        return path
    candidate = CASES / f"{case}.xml"
    if candidate.exists():
        return candidate
    sys.exit(f"no such case: {case}")


def measure(xml: bytes, caps: QemuCapabilities, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"parse": [], "prepare": [], "build": [], "total": []}
    monitor = MonitorSpec(path="/run/asvirt-bench/monitor.sock")
    for _ in range(rounds):
        t0 = time.perf_counter()
        parsed = parse_domain_xml(xml)
        t1 = time.perf_counter()
        prepared = prepare_domain(parsed, caps)
        t2 = time.perf_counter()
        build_command(prepared, caps, monitor=monitor, runtime_dir="/run/asvirt-bench")
        t3 = time.perf_counter()
        for key, value in (("parse", t1 - t0), ("prepare", t2 - t1), ("build", t3 - t2)):
            times[key].append(value * 1000)
        times["total"].append((t3 - t0) * 1000)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--case", action="append", help="case name or XML path (repeatable)")
    args = ap.parse_args()
    if args.case:
        cases = [resolve(c) for c in args.case]
    elif CASES.exists():
        cases = [resolve(c) for c in DEFAULT_CASES]
    else:
        cases = sorted((REPO / "config" / "examples").glob("*.xml"))
    with tempfile.TemporaryDirectory() as tmp:
        caps = probe(Path(tmp))
    print(f"QEMU {caps.version_string} ({caps.binary}); {args.rounds} rounds per case")
    print(f"{'case':32} {'parse':>8} {'prepare':>8} {'build':>8} {'total':>8} {'p90':>8}  (ms)")
    worst = 0.0
    for path in cases:
        xml = path.read_bytes()
        measure(xml, caps, 5)  # warm up imports and caches
        t = measure(xml, caps, args.rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        p90 = statistics.quantiles(t["total"], n=10)[-1]
        worst = max(worst, med["total"])
        print(
            f"{path.stem[:32]:32} {med['parse']:8.2f} {med['prepare']:8.2f} {med['build']:8.2f} "
            f"{med['total']:8.2f} {p90:8.2f}"
        )
    verdict = "within" if worst < TARGET_MS else "OVER"
    print(f"median of the slowest case: {worst:.2f} ms ({verdict} the {TARGET_MS:.0f} ms target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
