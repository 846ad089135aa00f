"""How fast volumes are made: create and clone of a 1 GiB qcow2, beside qemu-img and virsh.

    .venv/bin/python bench/bench_storage.py [RUNS]

Target: no slower than libvirt. libvirt makes these volumes with the same qemu-img commands
(``qemu-img create``, ``qemu-img convert``), so the floor for both is qemu-img itself; the
figures are asvirt's calls (API, in one process) and its CLI (a process per command, as
``virsh`` is), each beside qemu-img run bare. With libvirt installed, a private libvirtd
started for the run (bench/libvirt_peer.py) does the same through libvirt-python (pool
start/stop, createXML, createXMLFrom, the clone of a full volume) and through ``virsh
vol-create-as`` / ``vol-clone``, each printed with the ratio asvirt/libvirt (asvirt's API is
its embedded driver, libvirt's goes through its daemon). Printed: the median and best of
RUNS runs, and for the clone of a full volume (1 GiB of data), one run each.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asvirt
from bench.libvirt_peer import LibvirtPeer, libvirt_peer

GiB = 1024**3
QCOW2 = "<target><format type='qcow2'/></target>"
REPO = Path(__file__).resolve().parents[1]


def vol_xml(name: str) -> str:
    return f"<volume><name>{name}</name><capacity unit='GiB'>1</capacity>{QCOW2}</volume>"


def timed_sync(fn: Callable[[int], object], runs: int) -> list[float]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return times


async def timed(fn: Callable[[int], Awaitable[object]], runs: int) -> list[float]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        await fn(i)
        times.append(time.perf_counter() - start)
    return times


async def clock(aw: Awaitable[object]) -> float:
    start = time.perf_counter()
    await aw
    return time.perf_counter() - start


def show(what: str, times: list[float], ours: list[float] | None = None) -> None:
    """A figure's line; with ``ours`` (asvirt's times of the same operation), the ratio."""
    ratio = ""
    if ours is not None:
        ratio = f"   asvirt/libvirt {statistics.median(ours) / statistics.median(times):5.2f}"
    print(
        f"  {what:<44} median {statistics.median(times) * 1000:8.1f} ms"
        f"   best {min(times) * 1000:8.1f} ms   ({len(times)} runs){ratio}"
    )


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, stdout=subprocess.DEVNULL)


def cli(root: Path, *args: str) -> None:
    env = {**os.environ, "ASVIRT_DEFAULT_URI": f"qemu:///embed?root={root}"}
    subprocess.run(
        [sys.executable, "-m", "asvirt", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
    )


POOL_XML = "<pool type='dir'><name>bench</name><target><path>{}</path></target></pool>"


async def api_figures(
    root: Path, pool_dir: Path, bare: Path, data: Path, runs: int
) -> dict[str, list[float]]:
    """The API's create and clone in one process, each run beside the same qemu-img run
    bare (alternating, so that both see the same load on a shared machine); then pool
    stop/start. asvirt's times, by operation."""

    async def bare_img(*args: str) -> None:
        await trio.run_process(["qemu-img", *args], stdout=subprocess.DEVNULL)

    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        pool = await conn.storage_pool_define_xml(POOL_XML.format(pool_dir))
        await pool.build()
        await pool.create()
        t_bare, t_api = [], []
        for i in range(runs):
            t_bare.append(
                await clock(bare_img("create", "-q", "-f", "qcow2", f"{bare}/c{i}", "1G"))
            )
            t_api.append(await clock(pool.create_volume_xml(vol_xml(f"c{i}.qcow2"))))
        show("qemu-img create (bare)", t_bare)
        show("asvirt API create_volume_xml", t_api)
        figures = {"create": t_api}
        src = await pool.lookup_volume_by_name("c0.qcow2")
        t_bare, t_api = [], []
        for i in range(runs):
            copy = ["convert", "-f", "qcow2", "-O", "qcow2", f"{bare}/c0", f"{bare}/k{i}"]
            t_bare.append(await clock(bare_img(*copy)))
            t_api.append(await clock(src.clone(f"k{i}.qcow2")))
        show("qemu-img convert (bare)", t_bare)
        show("asvirt API vol.clone", t_api)
        figures["clone"] = t_api
        # A volume full of data: the copy itself dominates, the same for every caller.
        full = await pool.create_volume_xml(vol_xml("full.qcow2"))
        await bare_img("convert", "-f", "raw", "-O", "qcow2", "-n", str(data), full.path)
        await bare_img("convert", "-f", "raw", "-O", "qcow2", str(data), f"{bare}/full.qcow2")
        await pool.refresh()
        full = await pool.lookup_volume_by_name("full.qcow2")
        show(
            "qemu-img convert, 1 GiB of data (bare)",
            await timed(
                lambda _: bare_img(
                    "convert", "-f", "qcow2", "-O", "qcow2", f"{bare}/full.qcow2", f"{bare}/fk"
                ),
                1,
            ),
        )
        figures["full"] = await timed(
            lambda i: full.clone(f"fk{i}.qcow2", progress=lambda _: None), 1
        )
        show("asvirt API vol.clone, 1 GiB of data", figures["full"])
        figures["destroy"], figures["start"] = [], []
        for _ in range(runs):
            figures["destroy"].append(await clock(pool.destroy()))
            figures["start"].append(await clock(pool.create()))
        show("asvirt API pool destroy", figures["destroy"])
        show("asvirt API pool create (start)", figures["start"])
    return figures


def libvirt_figures(
    peer: LibvirtPeer, base: Path, data: Path, runs: int, ours: dict[str, list[float]]
) -> None:
    """The same operations through libvirt-python on the private libvirtd, each printed with
    asvirt/libvirt."""
    conn = peer.open()
    pool = conn.storagePoolDefineXML(POOL_XML.format(base / "lvpool"))
    pool.build()
    pool.create()
    try:
        show(
            "libvirt createXML",
            timed_sync(lambda i: pool.createXML(vol_xml(f"c{i}.qcow2")), runs),
            ours["create"],
        )
        src = pool.storageVolLookupByName("c0.qcow2")
        show(
            "libvirt createXMLFrom (clone)",
            timed_sync(lambda i: pool.createXMLFrom(vol_xml(f"k{i}.qcow2"), src), runs),
            ours["clone"],
        )
        full = pool.createXML(vol_xml("full.qcow2"))
        qemu_img("convert", "-f", "raw", "-O", "qcow2", "-n", str(data), full.path())
        pool.refresh()
        full = pool.storageVolLookupByName("full.qcow2")
        show(
            "libvirt createXMLFrom, 1 GiB of data",
            timed_sync(lambda i: pool.createXMLFrom(vol_xml(f"fk{i}.qcow2"), full), 1),
            ours["full"],
        )
        stops, starts = [], []
        for _ in range(runs):
            stops.append(timed_sync(lambda _: pool.destroy(), 1)[0])
            starts.append(timed_sync(lambda _: pool.create(), 1)[0])
        show("libvirt pool destroy", stops, ours["destroy"])
        show("libvirt pool create (start)", starts, ours["start"])
    finally:
        if pool.isActive():
            pool.destroy()
        pool.undefine()


def virsh_figures(
    virsh: str, uri: str, base: Path, runs: int, ours: dict[str, list[float]]
) -> None:
    pool = f"asvirt-bench-{os.getpid()}"

    def v(*args: str, check: bool = True) -> None:
        # Clean-up steps (check=False) may fail as they should (pool-delete of a pool that
        # still holds volumes): the directory goes with the run's.
        subprocess.run(
            [virsh, "-q", "-c", uri, *args],
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=None if check else subprocess.DEVNULL,
        )

    v("pool-define-as", pool, "dir", "--target", str(base / "virsh"))
    try:
        v("pool-build", pool)
        v("pool-start", pool)
        show(
            "virsh vol-create-as (a process each)",
            timed_sync(
                lambda i: v("vol-create-as", pool, f"c{i}.qcow2", "1G", "--format", "qcow2"), runs
            ),
            ours["cli-create"],
        )
        show(
            "virsh vol-clone (a process each)",
            timed_sync(lambda i: v("vol-clone", "c0.qcow2", f"k{i}.qcow2", "--pool", pool), runs),
            ours["cli-clone"],
        )
    finally:
        v("pool-destroy", pool, check=False)
        v("pool-delete", pool, check=False)
        v("pool-undefine", pool, check=False)


def main(runs: int) -> int:
    if shutil.which("qemu-img") is None:
        print("qemu-img is not installed: nothing to measure")
        return 1
    with libvirt_peer() as peer:
        return run(runs, peer)


def run(runs: int, peer: LibvirtPeer | str) -> int:
    base = Path(tempfile.mkdtemp(prefix="asvirt-bench-storage-"))
    try:
        root, pool_dir, bare = base / "root", base / "pool", base / "bare"
        bare.mkdir()
        print(f"volume create/clone, 1 GiB qcow2 ({runs} runs; files under {base})")
        data = base / "data.raw"
        with open(data, "wb") as f:
            for _ in range(1024):
                f.write(os.urandom(1024 * 1024))
        ours = trio.run(api_figures, root, pool_dir, bare, data, runs)
        if isinstance(peer, LibvirtPeer):
            print(peer.describe())
            libvirt_figures(peer, base, data, runs, ours)
        data.unlink()
        cli_runs = max(3, runs // 4)
        ours["cli-create"] = timed_sync(
            lambda i: cli(
                root, "vol-create-as", "bench", f"cli{i}.qcow2", "1G", "--format", "qcow2"
            ),
            cli_runs,
        )
        show("asvirt CLI vol-create-as (a process each)", ours["cli-create"])
        ours["cli-clone"] = timed_sync(
            lambda i: cli(root, "vol-clone", "c0.qcow2", f"clik{i}.qcow2", "--pool", "bench"),
            cli_runs,
        )
        show("asvirt CLI vol-clone (a process each)", ours["cli-clone"])
        virsh = shutil.which("virsh")
        if isinstance(peer, str):
            print(f"libvirt: {peer}")
        elif virsh is None:
            print("  virsh vol-create-as / vol-clone: virsh is not installed here, not measured")
        else:
            virsh_figures(virsh, peer.uri, base, cli_runs, ours)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
