"""Tuning that takes effect on the running QEMU: <cputune> pinning and scheduling policies of
the vCPU, I/O and emulator threads, the domain's cgroup (<cputune> bandwidth, <memtune>,
<blkiotune>), resctrl groups, and the refusals of what a host cannot give (hugepages,
resctrl). What a user would check: /proc's affinity lists and policies, the cgroup and
resctrl files, and the start's error."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt.conf.domain import parse_cpuset, parse_domain_xml
from asvirt.drivers.qemu import membacking, numad, tuning

from .guest import PAUSED_DOMAIN_TYPE, paused_xml
from .helpers import (
    cli_in_process,
    cpus_allowed,
    destroy_all,
    disk_xml,
    embed_uri,
    qemu_img,
    qemu_pid,
    qemus_naming,
)

pytestmark = pytest.mark.qemu


def _with(xml: str, before_os: str, devices: str = "") -> str:
    return xml.replace("<os>", f"{before_os}<os>", 1).replace(
        "</devices>", f"{devices}</devices>", 1
    )


async def test_vcpu_emulator_and_iothread_pinning(conn, test_guest, tmp_path, root):
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("pinning to different CPUs needs CPUs 0 and 1")
    xml = _with(
        paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
        "<iothreads>1</iothreads><cputune><vcpupin vcpu='0' cpuset='1'/>"
        "<vcpupin vcpu='1' cpuset='0'/><emulatorpin cpuset='0'/>"
        "<iothreadpin iothread='1' cpuset='1'/></cputune>",
    )
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    vcpus = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
    iothreads = {t["id"]: t["thread-id"] for t in await dom.qmp("query-iothreads")}
    assert cpus_allowed(pid, vcpus[0]) == "1"
    assert cpus_allowed(pid, vcpus[1]) == "0"
    assert cpus_allowed(pid, iothreads["iothread1"]) == "1"
    others = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - {
        *vcpus.values(),
        *iothreads.values(),
    }
    assert others and all(cpus_allowed(pid, t) == "0" for t in others)
    assert "<vcpupin vcpu='0' cpuset='1'/>" in await dom.xml_desc()


async def test_vcpu_iothread_and_emulator_schedulers(conn, test_guest, tmp_path, root):
    # Paused: the threads given a real-time policy sleep, so they take no CPU from others.
    sched = (
        "<iothreads>1</iothreads><cputune><emulatorsched scheduler='batch'/>"
        "<vcpusched vcpus='0' scheduler='fifo' priority='1'/>"
        "<vcpusched vcpus='1' scheduler='idle'/>"
        "<iothreadsched iothreads='1' scheduler='rr' priority='2'/></cputune>"
    )
    xml = _with(paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"), sched)
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    vcpus = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
    iothreads = {t["id"]: t["thread-id"] for t in await dom.qmp("query-iothreads")}
    try:
        assert os.sched_getscheduler(vcpus[0]) == os.SCHED_FIFO
        assert os.sched_getparam(vcpus[0]).sched_priority == 1
        assert os.sched_getscheduler(vcpus[1]) == os.SCHED_IDLE
        assert os.sched_getscheduler(iothreads["iothread1"]) == os.SCHED_RR
        assert os.sched_getparam(iothreads["iothread1"]).sched_priority == 2
        others = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - {
            *vcpus.values(),
            *iothreads.values(),
        }
        # <emulatorsched> is the main emulator thread's (QEMU's pid), as in libvirt; the
        # helper threads QEMU started before it was set (RCU's at least) keep their policy.
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH
        others.discard(pid)
        assert others and any(os.sched_getscheduler(t) == os.SCHED_OTHER for t in others)
        out = await dom.xml_desc()
        assert "<vcpusched vcpus='0' scheduler='fifo' priority='1'/>" in out
        assert "<iothreadsched iothreads='1' scheduler='rr' priority='2'/>" in out
    finally:
        await dom.destroy()
    # A priority Linux has no room for is refused when the domain is defined.
    with pytest.raises(asvirt.ConfigUnsupportedError, match="priority 100 out of range"):
        await conn.define_xml(
            _with(
                paused_xml(test_guest, tmp_path, name="vm2"),
                "<cputune><vcpusched vcpus='0' scheduler='rr' priority='100'/></cputune>",
            )
        )


async def test_automatic_numa_placement_goes_where_numad_advises(
    conn, test_guest, tmp_path, root, monkeypatch
):
    auto = "<vcpu placement='auto'>1</vcpu>"
    xml = paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", auto)
    dom = await conn.define_xml(xml)
    # libvirt's default: the memory goes where the vCPUs do.
    out = await dom.xml_desc()
    assert "<vcpu placement='auto'>1</vcpu>" in out
    assert "<memory mode='strict' placement='auto'/>" in out
    if shutil.which("numad") is None:
        with pytest.raises(asvirt.OperationUnsupportedError, match="has no numad"):
            await dom.start(paused=True)
        assert not await dom.is_active()
        return
    nodeset = await numad.advise(1, 128)  # what numad says for such a guest here
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    cpus = numad.node_cpus(nodeset)
    vcpu = (await dom.qmp("query-cpus-fast"))[0]["thread-id"]
    assert parse_cpuset(cpus_allowed(pid, vcpu)) == parse_cpuset(cpus)
    # The memory is bound to the advised nodes (QEMU's host-nodes, policy bind).
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    nodes = ",".join(str(n) for n in sorted(parse_cpuset(nodeset)))
    assert f'"host-nodes":[{nodes}],"policy":"bind"' in cmdline
    out = await dom.xml_desc()  # the live XML keeps saying auto, as libvirt's
    assert "<vcpu placement='auto'>1</vcpu>" in out and "nodeset" not in out
    await dom.destroy()
    # A host without numad: the start is refused naming it, before QEMU exists.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(asvirt.OperationUnsupportedError, match="has no numad"):
        await dom.start(paused=True)
    assert not await dom.is_active()
    assert not qemus_naming([dom.uuid])


async def test_cachetune_without_resctrl_is_refused_at_start(conn, test_guest, tmp_path, root):
    if tuning.resctrl_mounted():
        pytest.skip("resctrl is mounted here: the start goes on (the test below)")
    tune = (
        "<cputune><cachetune vcpus='0'><cache id='0' level='3' type='both' size='1' "
        "unit='MiB'/></cachetune><memorytune vcpus='0'><node id='0' bandwidth='50'/>"
        "</memorytune></cputune>"
    )
    dom = await conn.define_xml(_with(paused_xml(test_guest, tmp_path), tune))
    with pytest.raises(
        asvirt.OperationUnsupportedError,
        match="cachetune/memorytune needs resctrl mounted at /sys/fs/resctrl",
    ):
        await dom.start(paused=True)
    assert not await dom.is_active()
    assert not qemus_naming([dom.uuid])
    assert not (root / "run" / "qemu" / "vm1.status").exists()  # no record of a run
    assert "<cachetune vcpus='0'>" in await dom.xml_desc()  # the definition stays


async def test_resctrl_groups_hold_the_vcpu_threads(conn, test_guest, tmp_path, root):
    if not tuning.resctrl_mounted():
        pytest.skip(
            "resctrl is not mounted at /sys/fs/resctrl (this host's kernel or CPUs have no "
            "cache allocation)"
        )
    info = tuning.RESCTRL_ROOT / "info" / "L3"
    size = tuning._cache_size(3, 0)
    if not info.is_dir() or size is None:
        pytest.skip("the host's resctrl has no L3 cache allocation")
    bits = int((info / "min_cbm_bits").read_text())
    granule = size // int((info / "cbm_mask").read_text(), 16).bit_length()
    tune = (
        f"<cputune><cachetune vcpus='0'><cache id='0' level='3' type='both' "
        f"size='{granule * bits}'/></cachetune></cputune>"
    )
    xml = paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>")
    dom = await conn.define_xml(_with(xml, tune))
    await dom.start(paused=True)
    group = tuning.RESCTRL_ROOT / f"asvirt-{dom.uuid}-vcpus_0"
    vcpus = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
    tasks = {int(t) for t in (group / "tasks").read_text().split()}
    assert vcpus[0] in tasks and vcpus[1] not in tasks
    l3 = next(ln for ln in (group / "schemata").read_text().splitlines() if ln.strip()[:3] == "L3:")
    mask = dict(p.split("=") for p in l3.split(":", 1)[1].split(";"))["0"]
    assert bin(int(mask, 16)).count("1") == bits
    await dom.destroy()
    assert not group.exists()


async def test_a_plugged_vcpu_gets_its_pin_and_scheduler(conn, test_guest, tmp_path, root):
    cpu = min(os.sched_getaffinity(0))
    xml = _with(
        paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"),
        f"<cputune><vcpupin vcpu='1' cpuset='{cpu}'/>"
        "<vcpusched vcpus='1' scheduler='idle'/></cputune>",
    )
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    await dom.set_vcpus(2)
    pid = qemu_pid(root, "vm1")
    vcpus = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
    assert os.sched_getscheduler(vcpus[1]) == os.SCHED_IDLE
    assert cpus_allowed(pid, vcpus[1]) == str(cpu)
    assert os.sched_getscheduler(vcpus[0]) == os.SCHED_OTHER


def _block_device() -> str | None:
    for name in sorted(os.listdir("/sys/block")):
        if os.path.exists(f"/dev/{name}") and not name.startswith(("loop", "ram", "zram")):
            return f"/dev/{name}"
    return None


def _cgroup_problem() -> str | None:
    if os.geteuid() != 0:
        return "the domain's cgroup needs a supervisor running as root"
    d = parse_domain_xml(
        "<domain type='qemu'><name>x</name><memory>1024</memory><os><type>hvm</type></os>"
        "<cputune><shares>100</shares></cputune><memtune><hard_limit>4096</hard_limit>"
        "</memtune><blkiotune><weight>200</weight></blkiotune></domain>"
    )
    try:
        tuning._locate("asvirt-probe", tuning.wanted_controllers(d))
    except asvirt.OperationUnsupportedError as err:
        return str(err)
    return None


async def test_cgroup_limits_are_the_domains(conn, test_guest, tmp_path, root):
    problem = _cgroup_problem()
    if problem is not None:
        pytest.skip(problem)
    disk = _block_device()
    device = (
        f"<device><path>{disk}</path><read_bytes_sec>1048576</read_bytes_sec>"
        "<write_iops_sec>200</write_iops_sec></device>"
        if disk
        else ""
    )
    xml = _with(
        paused_xml(test_guest, tmp_path),
        "<cputune><shares>512</shares><period>100000</period><quota>50000</quota>"
        "<global_period>100000</global_period><global_quota>80000</global_quota></cputune>"
        "<memtune><hard_limit unit='MiB'>1024</hard_limit><soft_limit unit='MiB'>768</soft_limit>"
        "</memtune>"
        f"<blkiotune><weight>300</weight>{device}</blkiotune>",
    )
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    uuid = dom.uuid
    paths = {
        line.split(":", 2)[1]: line.split(":", 2)[2].strip()
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    }
    name = tuning.cgroup_name(str(uuid))
    v2 = all(f"/machine.asvirt/{name}" not in p for k, p in paths.items() if k)
    mounts = {p: opts for p, fs, opts in tuning._mounts()}
    if v2:
        base = Path(next(p for p, fs, _ in tuning._mounts() if fs == "cgroup2"))
        own = base / "machine.asvirt" / name
        assert (own / "cpu.weight").read_text().strip() == "512"
        assert (own / "cpu.max").read_text().split() == ["80000", "100000"]
        assert (own / "memory.max").read_text().strip() == str(1024 << 20)
        assert (own / "memory.high").read_text().strip() == str(768 << 20)
    else:

        def v1(ctl: str) -> Path:
            point = next(p for p, opts in mounts.items() if ctl in opts)
            return Path(point) / "machine.asvirt" / name

        assert paths["cpu"] == f"/machine.asvirt/{name}" or paths["cpu"].startswith(
            f"/machine.asvirt/{name}/"
        )
        assert (v1("cpu") / "cpu.shares").read_text().strip() == "512"
        assert (v1("cpu") / "cpu.cfs_quota_us").read_text().strip() == "80000"
        # Each vCPU's own bandwidth, in its own sub-cgroup, as libvirt's vcpuN.
        vcpu0 = (await dom.qmp("query-cpus-fast"))[0]["thread-id"]
        assert (v1("cpu") / "vcpu0" / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert str(vcpu0) in (v1("cpu") / "vcpu0" / "tasks").read_text().split()
        assert str(pid) in (v1("memory") / "cgroup.procs").read_text().split()
        assert (v1("memory") / "memory.limit_in_bytes").read_text().strip() == str(1024 << 20)
        assert (v1("memory") / "memory.soft_limit_in_bytes").read_text().strip() == str(768 << 20)
        blkio = v1("blkio")
        weight = blkio / "blkio.weight"
        if not weight.exists():
            weight = blkio / "blkio.bfq.weight"
        assert weight.read_text().split()[-1] == "300"
        if disk:
            st = os.stat(disk)
            numbers = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            assert f"{numbers} 1048576" in (blkio / "blkio.throttle.read_bps_device").read_text()
            assert f"{numbers} 200" in (blkio / "blkio.throttle.write_iops_device").read_text()
        own = v1("cpu")
    await dom.destroy()
    assert not own.exists()


async def test_a_vcpu_plugged_after_a_reattach_joins_its_cgroup(
    root, fast_config, test_guest, tmp_path
):
    problem = _cgroup_problem()
    if problem is not None:
        pytest.skip(problem)
    xml = _with(
        paused_xml(test_guest, tmp_path).replace("<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"),
        "<cputune><period>100000</period><quota>50000</quota></cputune>",
    )
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(xml)
        await dom.start(paused=True)
        name = tuning.cgroup_name(str(dom.uuid))
    try:
        # A new supervisor re-attaches to the QEMU the first one left running.
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            await dom.set_vcpus(2)
            pid = qemu_pid(root, "vm1")
            vcpu1 = next(
                c["thread-id"] for c in await dom.qmp("query-cpus-fast") if c["cpu-index"] == 1
            )
            lines = Path(f"/proc/{pid}/task/{vcpu1}/cgroup").read_text().splitlines()
            assert any(line.endswith(f"/{name}/vcpu1") for line in lines), lines
    finally:
        with trio.CancelScope(shield=True):
            async with asvirt.open(embed_uri(root)) as conn:
                await destroy_all(conn)


async def test_hugepages_are_refused_without_a_mount_or_free_pages(
    conn, test_guest, tmp_path, root
):
    size = 1048576  # 1 GiB pages: nobody mounts those on a test machine
    xml = _with(
        paused_xml(test_guest, tmp_path),
        f"<memoryBacking><hugepages><page size='{size}' unit='KiB'/></hugepages></memoryBacking>",
    )
    dom = await conn.define_xml(xml)
    if tuning.hugetlbfs_mount(size) is None:
        with pytest.raises(
            asvirt.OperationFailedError, match="hugetlbfs filesystem is not mounted"
        ):
            await dom.start(paused=True)
    assert not (await dom.is_active())
    if os.geteuid() != 0 or tuning.hugetlbfs_mount(2048) is not None:
        return
    # A hugetlbfs mount of 2 MiB pages, but (unless the host reserved some) none free.
    free = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())
    if free * 2048 >= 128 * 1024:
        return
    mnt = tmp_path / "huge"
    mnt.mkdir()
    await trio.run_process(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mnt)])
    try:
        dom2 = await conn.define_xml(
            _with(
                paused_xml(test_guest, tmp_path, name="vm2"),
                "<memoryBacking><hugepages/></memoryBacking>",
            )
        )
        with pytest.raises(asvirt.OperationFailedError, match="not enough free huge pages"):
            await dom2.start(paused=True)
        # With pages reserved (and given back after), guest RAM is a file of huge pages there.
        with _reserved_hugepages(free_wanted=128 * 1024 // 2048) as reserved:
            if not reserved:
                pytest.skip("the kernel could not reserve 64 huge pages of 2 MiB here")
            await dom2.start(paused=True)
            files = membacking.hugepage_dir(str(mnt), str(dom2.uuid))
            smaps = Path(f"/proc/{qemu_pid(root, 'vm2')}/smaps").read_text()
            mapping = smaps.split(files, 1)[1].split("VmFlags", 1)[0]
            assert "KernelPageSize:     2048 kB" in mapping
            held = _hugepages("nr_hugepages") - _hugepages("free_hugepages")
            assert held + _hugepages("resv_hugepages") >= 64  # all 128 MiB: taken or promised
            await dom2.destroy()
            assert not Path(files).exists()  # the domain's directory went with it
            assert _hugepages("free_hugepages") == _hugepages("nr_hugepages")
    finally:
        with trio.CancelScope(shield=True):
            await destroy_all(conn)  # a QEMU left by a failure would hold the mount
            await trio.run_process(["umount", str(mnt)])


def _hugepages(name: str) -> int:
    return int(Path(f"/sys/kernel/mm/hugepages/hugepages-2048kB/{name}").read_text())


@contextlib.contextmanager
def _reserved_hugepages(free_wanted: int) -> Iterator[bool]:
    """The host's pool of 2 MiB pages grown so that ``free_wanted`` are free, and shrunk back
    after; whether the kernel found them."""
    knob = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")
    before = int(knob.read_text())
    knob.write_text(str(before + free_wanted))
    try:
        yield _hugepages("free_hugepages") >= free_wanted
    finally:
        knob.write_text(str(before))


async def test_file_backed_ram_lives_in_a_directory_of_the_running_domain(
    conn, test_guest, tmp_path, root
):
    xml = _with(
        paused_xml(test_guest, tmp_path),
        "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>",
    )
    dom = await conn.define_xml(xml)
    ram_dir = root / "lib" / "qemu" / "ram" / "vm1"  # [qemu] memory_backing_dir's default
    assert not ram_dir.exists()
    await dom.start(paused=True)
    assert ram_dir.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in ram_dir.iterdir()] == ["pc.ram"]
    path = await dom.qmp("qom-get", {"path": "/objects/pc.ram", "property": "mem-path"})
    assert path == str(ram_dir / "pc.ram")
    pid = qemu_pid(root, "vm1")
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert str(ram_dir / "pc.ram") in maps  # guest RAM is that file, mapped
    await dom.destroy()
    assert not ram_dir.exists()  # removed with the RAM file when the domain stopped


async def test_hugepages_of_a_numa_node_are_refused_without_their_mount(
    conn, test_guest, tmp_path, root
):
    size = 1048576  # 1 GiB pages for node 1 only: nobody mounts those on a test machine
    if tuning.hugetlbfs_mount(size) is not None:
        pytest.skip("this host mounts 1 GiB huge pages")
    xml = _with(
        paused_xml(test_guest, tmp_path, vcpus=2),
        f"<memoryBacking><hugepages><page size='{size}' unit='KiB' nodeset='1'/></hugepages>"
        "</memoryBacking><cpu><numa><cell id='0' cpus='0' memory='64' unit='MiB'/>"
        "<cell id='1' cpus='1' memory='64' unit='MiB'/></numa></cpu>",
    )
    dom = await conn.define_xml(xml)
    with pytest.raises(asvirt.OperationFailedError, match=f"no hugetlbfs of {size} KiB pages"):
        await dom.start(paused=True)
    assert not (await dom.is_active())


async def test_a_plugged_disk_gets_its_throttle_group(conn, test_guest, tmp_path, root):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
    await dom.start(paused=True)
    tune = "<iotune><total_iops_sec>100</total_iops_sec><group_name>g</group_name></iotune>"
    for target in ("vdb", "vdc"):  # the second joins the group the first created
        path = tmp_path / f"{target}.img"
        qemu_img("create", "-q", "-f", "raw", path, "1M")
        await dom.attach_device(disk_xml(path, target, fmt="raw", extra=tune))
    nodes = await dom.qmp("query-named-block-nodes", {"flat": True})
    throttles = sorted(n["node-name"] for n in nodes if n["drv"] == "throttle")
    assert len(throttles) == 2
    limits = await dom.qmp("qom-get", {"path": "/objects/throttle-g", "property": "limits"})
    assert limits["iops-total"] == 100
    assert "<group_name>g</group_name>" in await dom.xml_desc()


async def _throttle_groups(dom: asvirt.Domain) -> set[str]:
    """The ids of the throttle-group objects QEMU has."""
    objects = await dom.qmp("qom-list", {"path": "/objects"})
    return {o["name"] for o in objects if o.get("type") == "child<throttle-group>"}


async def test_a_throttle_group_goes_with_the_last_disk_unplugged(conn, test_guest, tmp_path):
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    dom = await conn.define_xml(_with(paused_xml(test_guest, tmp_path), "", scsi))
    await dom.start(paused=True)
    shared = "<iotune><total_iops_sec>100</total_iops_sec><group_name>g</group_name></iotune>"
    own = "<iotune><total_iops_sec>50</total_iops_sec></iotune>"
    disks = {}
    for target, tune in (("sda", shared), ("sdb", shared), ("sdc", own)):
        path = tmp_path / f"{target}.img"
        qemu_img("create", "-q", "-f", "raw", path, "1M")
        disks[target] = disk_xml(path, target, fmt="raw", bus="scsi", extra=tune)
        await dom.attach_device(disks[target])
    assert await _throttle_groups(dom) == {"throttle-g", "throttle-scsi0-0-0-2"}
    # SCSI disks go at once (no guest involved): the detach returns once they are gone.
    assert await dom.detach_device(disks["sda"]) is True
    assert await _throttle_groups(dom) == {"throttle-g", "throttle-scsi0-0-0-2"}  # sdb has it
    assert await dom.detach_device(disks["sdb"]) is True
    assert await dom.detach_device(disks["sdc"]) is True
    assert await _throttle_groups(dom) == set()
    # The group can be made again, with other limits.
    await dom.attach_device(disks["sda"].replace(">100<", ">70<"))
    limits = await dom.qmp("qom-get", {"path": "/objects/throttle-g", "property": "limits"})
    assert limits["iops-total"] == 70


async def test_a_pin_to_cpus_the_host_lacks_fails_the_start(conn, test_guest, tmp_path):
    missing = max(os.sched_getaffinity(0)) + 1
    xml = _with(
        paused_xml(test_guest, tmp_path),
        f"<cputune><vcpupin vcpu='0' cpuset='{missing}'/></cputune>",
    )
    dom = await conn.define_xml(xml)
    with pytest.raises(asvirt.OperationFailedError, match="names no CPU"):
        await dom.start(paused=True)
    assert not await dom.is_active()


# -- live pinning from the CLI: virsh's commands and output --------------------------------------


def test_vcpuinfo_vcpupin_emulatorpin_iothreadpin_cli(root, test_guest, tmp_path, capsys):
    """virsh's output, byte for byte, against a paused QEMU (the API's rules on every driver
    are in the shared suite's pinning test)."""
    if not {0, 1} <= os.sched_getaffinity(0) or len(os.sched_getaffinity(0)) != 2:
        pytest.skip("the expected output is written for a host with CPUs 0 and 1")
    uri = embed_uri(root)

    run = cli_in_process(uri, capsys)

    xml = tmp_path / "vm1.xml"
    guest = test_guest.xml("vm1", tmp_path / "vm1.serial", domain_type=PAUSED_DOMAIN_TYPE, vcpus=2)
    xml.write_text(guest.replace("<os>", "<iothreads>1</iothreads><os>", 1))
    run("define", str(xml))
    head = " VCPU   CPU Affinity\n----------------------\n"
    table = head + " 0      {0}\n 1      {1}\n\n"
    # Shut off: the configuration's pins, nothing measured (virsh's N/A).
    assert run("vcpuinfo", "vm1") == "".join(
        f"VCPU:           {n}\nCPU:            N/A\nState:          N/A\n"
        "CPU time        N/A\nCPU Affinity:   yy\n\n"
        for n in (0, 1)
    )
    assert run("vcpupin", "vm1") == table.format("0-1", "0-1")
    assert "cannot get vcpupin for offline domain" in run("vcpupin", "vm1", "--live", status=1)
    try:
        run("start", "vm1", "--paused")
        assert run("vcpupin", "vm1", "0", "1") == "\n"
        assert run("vcpupin", "vm1", "1", "0", "--config") == "\n"
        assert run("vcpupin", "vm1") == table.format("1", "0-1")
        assert run("vcpupin", "vm1", "--config") == table.format("0-1", "0")
        assert run("vcpupin", "vm1", "1") == head + " 1      0-1\n\n"
        info = run("vcpuinfo", "vm1", "--pretty")
        blocks = info.split("\n\n")
        assert blocks[0].startswith("VCPU:           0\nCPU:            ")
        assert "\nState:          running\n" in blocks[0]
        assert blocks[0].endswith("\nCPU Affinity:   1 (out of 2)")
        assert blocks[1].endswith("\nCPU Affinity:   0-1 (out of 2)")
        assert run("vcpuinfo", "vm1").split("\n\n")[0].endswith("CPU Affinity:   -y")
        emulator = "emulator: CPU Affinity\n----------------------------------\n       *: {}\n\n"
        assert run("emulatorpin", "vm1") == emulator.format("0-1")
        assert run("emulatorpin", "vm1", "0", "--live") == "\n"
        assert run("emulatorpin", "vm1") == emulator.format("0")
        assert run("emulatorpin", "vm1", "--config") == emulator.format("0-1")
        pid = qemu_pid(root, "vm1")
        assert cpus_allowed(pid, pid) == "0"
        io = " IOThread ID   CPU Affinity\n-----------------------------\n 1             {}\n\n"
        assert run("iothreadinfo", "vm1") == io.format("0-1")
        assert run("iothreadpin", "vm1", "1", "1") == "\n"
        assert run("iothreadinfo", "vm1") == io.format("1")
        assert run("iothreadinfo", "vm1", "--config") == io.format("0-1")
        # QEMU names its I/O threads' threads "IO iothreadN".
        names = {
            t: Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
            for t in os.listdir(f"/proc/{pid}/task")
        }
        (iothread,) = [int(t) for t, name in names.items() if name == "IO iothread1"]
        assert cpus_allowed(pid, iothread) == "1"
        assert cpus_allowed(pid, pid) == "0"  # the emulator keeps its own
        assert "iothread 2 not found" in run("iothreadpin", "vm1", "2", "0", status=1)
        assert "Numeric value 'x' for <iothread> option" in run(
            "iothreadpin", "vm1", "x", "0", status=1
        )
        # virsh's refusals of bad CPU lists and vCPU numbers, before anything is asked.
        assert "CPU 2 in cpulist '2' exceed the maxcpu 2" in run(
            "vcpupin", "vm1", "0", "2", status=1
        )
        assert "Invalid cpulist '1-0'" in run("vcpupin", "vm1", "0", "1-0", status=1)
        assert "Invalid cpulist '0,^0'" in run("emulatorpin", "vm1", "0,^0", status=1)
        assert "Numeric value 'x' for <vcpu> option" in run("vcpupin", "vm1", "x", "0", status=1)
        assert "vcpu 5 is out of range of live cpu count 2" in run("vcpupin", "vm1", "5", status=1)
        assert "vcpu 5 is out of range of live cpu count 2" in run(
            "vcpupin", "vm1", "5", "0", status=1
        )
        assert "mutually exclusive" in run("vcpupin", "vm1", "--live", "--config", status=1)
        assert run("vcpupin", "vm1", "0", "r") == "\n"
        assert run("vcpupin", "vm1", "0") == head + " 0      0-1\n\n"
    finally:
        run("destroy", "vm1")


# -- cpu-stats: what the host keeps of a domain's CPU time ---------------------------------------


def _process_cpu_ns(pid: int) -> int:
    """The CPU time (user + system) of all of a process's threads, from its /proc stat."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


async def test_cpu_stats_totals_and_refused_per_cpu_figures(conn, test_guest, tmp_path, root):
    """Without a cgroup of its own, a domain's totals come from /proc; per host CPU only a
    cgroup v1 cpuacct hierarchy counts, which it is not in: refused, as libvirt does."""
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path))
    with pytest.raises(asvirt.OperationInvalidError, match="not running"):
        await dom.get_cpu_stats(True)
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    before = _process_cpu_ns(pid)
    (total,) = await dom.get_cpu_stats(True)
    after = _process_cpu_ns(pid)
    assert list(total) == ["cpu_time", "user_time", "system_time"]
    assert before <= total["cpu_time"] <= after
    assert total["cpu_time"] == total["user_time"] + total["system_time"]
    with pytest.raises(
        asvirt.OperationInvalidError, match="cgroup CPUACCT controller is not mounted"
    ):
        await dom.get_cpu_stats(False)
    with pytest.raises(asvirt.InvalidArgError, match="larger than maximum"):
        await dom.get_cpu_stats(False, start=os.cpu_count() or 1, count=1)


def test_cpu_stats_cli(root, test_guest, tmp_path, capsys):
    run = cli_in_process(embed_uri(root), capsys)
    xml = tmp_path / "vm1.xml"
    xml.write_text(test_guest.xml("vm1", tmp_path / "vm1.serial", domain_type=PAUSED_DOMAIN_TYPE))
    run("define", str(xml))
    try:
        run("start", "vm1", "--paused")
        out = run("cpu-stats", "vm1", "--total")
        lines = out.split("\n")
        assert lines[0] == "Total:" and lines[4:] == ["", ""]
        for line, name in zip(lines[1:4], ("cpu_time", "user_time", "system_time"), strict=True):
            assert re.fullmatch(rf"\t{name} +\d+\.\d{{9}} seconds", line)
            assert len(line) == len("\tcpu_time            24.386308517 seconds")  # virsh's
        err = run("cpu-stats", "vm1", status=1)
        assert err.startswith("error: Failed to retrieve CPU statistics for domain 'vm1'\n")
        assert "cgroup CPUACCT controller is not mounted" in err
        host = os.cpu_count()
        err = run("cpu-stats", "vm1", "--start", str(host), status=1)
        assert err == f"error: Start CPU {host} is out of range (min: 0, max: {host - 1})\n"
    finally:
        run("destroy", "vm1")


async def test_live_pins_and_throttles_survive_a_reattach(root, fast_config, test_guest, tmp_path):
    """What vcpupin, iothreadpin and blkdeviotune changed is in the live definition the
    status file keeps: a new supervisor finds it (and a vCPU plugged then gets its pin)."""
    cpu = min(os.sched_getaffinity(0))
    host = os.cpu_count() or 1
    only = [n == cpu for n in range(host)]
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "16M")
    throttled = disk_xml(
        tmp_path / "a.qcow2", extra="<iotune><total_bytes_sec>2097152</total_bytes_sec></iotune>"
    )
    xml = _with(
        paused_xml(test_guest, tmp_path, devices=throttled).replace(
            "<vcpu>1</vcpu>", "<vcpu current='1'>2</vcpu>"
        ),
        "<iothreads>1</iothreads>",
    )
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(xml)
        await dom.start(paused=True)
        await dom.pin_vcpu(1, only)  # offline: recorded, applied when plugged
        await dom.pin_iothread(1, only)
        await dom.set_block_io_tune("vda", {"total_bytes_sec": 1048576})
    try:
        # A new supervisor re-attaches to the QEMU the first one left running.
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert (await dom.vcpu_pin_info())[1] == only
            assert [t.cpumap for t in await dom.iothread_info()] == [only]
            assert (await dom.block_io_tune("vda"))["total_bytes_sec"] == 1048576
            await dom.set_vcpus(2)
            pid = qemu_pid(root, "vm1")
            vcpu1 = next(
                c["thread-id"] for c in await dom.qmp("query-cpus-fast") if c["cpu-index"] == 1
            )
            assert cpus_allowed(pid, vcpu1) == str(cpu)
    finally:
        with trio.CancelScope(shield=True):
            async with asvirt.open(embed_uri(root)) as conn:
                await destroy_all(conn)


async def test_cpu_stats_of_a_domain_with_a_cgroup_of_its_own(conn, test_guest, tmp_path, root):
    """With a cgroup (<cputune><shares>), the totals are its accounting where it keeps any
    (v2 cpu.stat; v1 cpuacct files in the cpu hierarchy), else /proc's; per host CPU
    only v1 cpuacct counts, refused otherwise as libvirt refuses."""
    problem = _cgroup_problem()
    if problem is not None:
        pytest.skip(problem)
    dom = await conn.define_xml(
        _with(paused_xml(test_guest, tmp_path), "<cputune><shares>512</shares></cputune>")
    )
    await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    # Where the kernel has put QEMU for the cpu controller: a v1 hierarchy, else v2's.
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    where = {ctl: path for _, ctl, path in (line.split(":", 2) for line in lines)}
    v1 = next((ctl for ctl in where if "cpu" in ctl.split(",")), None)
    cpu_dir = Path("/sys/fs/cgroup", v1 or "", where[v1 or ""].lstrip("/"))
    assert cpu_dir.name == tuning.cgroup_name(dom.uuid)

    def used() -> int:
        if (cpu_dir / "cpu.stat").exists() and "usage_usec" in (cpu_dir / "cpu.stat").read_text():
            stat = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) * 1000
        if (cpu_dir / "cpuacct.usage").exists():
            return int((cpu_dir / "cpuacct.usage").read_text())
        return _process_cpu_ns(pid)

    before = used()
    (total,) = await dom.get_cpu_stats(True)
    assert before <= total["cpu_time"] <= used()
    if (cpu_dir / "cpuacct.usage_percpu").exists():
        assert len(await dom.get_cpu_stats(False)) == os.cpu_count()
    else:
        with pytest.raises((asvirt.OperationInvalidError, asvirt.OperationUnsupportedError)):
            await dom.get_cpu_stats(False)
