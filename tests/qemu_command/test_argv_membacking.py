"""Command lines of <memoryBacking>: file-backed RAM under memory_backing_dir, huge pages per
guest NUMA node, <allocation threads=>, and what is refused (pages naming nodes the domain
does not have, two default page sizes).

Each gives its XML, the backend objects expected (as libvirt builds them), a round trip
through dumpxml (validated against libvirt's schema) and, where this host can run it, a
launch of the argv paused under the real QEMU, asked over QMP what it built. A start under
a driver (the directory made and removed, the refusal of missing huge pages) is in
tests/test_qemu_tuning.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qemu_launch import launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu import membacking
from asvirt.drivers.qemu.command import domxml_to_native
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import Caps
from tests.helpers import DOM_UUID, argv_of, dom, dumpxml_roundtrip, opts

pytestmark = pytest.mark.qemu

NUMA2 = (
    "<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='64' unit='MiB'/>"
    "<cell id='1' cpus='1' memory='64' unit='MiB' discard='yes'/></numa></cpu>"
)


def _backends(argv: list[str]) -> dict[str, dict[str, Any]]:
    objs = [json.loads(o) for o in opts(argv, "-object") if "memory-backend" in o]
    return {o["id"]: o for o in objs}


def test_file_source_puts_ram_in_the_domains_directory(caps: Caps, tmp_path: Path) -> None:
    body = (
        "<memoryBacking><source type='file'/><access mode='shared'/><discard/>"
        "<allocation mode='immediate' threads='2'/></memoryBacking>"
    )
    xml = dom(body=body)
    out = dumpxml_roundtrip(caps, xml)
    assert "<source type='file'/>" in out and "<allocation mode='immediate' threads='2'/>" in out
    base = tmp_path / "ram"
    argv = domxml_to_native(
        xml, caps, monitor_path=str(tmp_path / "m.sock"), memory_backing_dir=str(base)
    )
    ram = _backends(argv)["pc.ram"]
    assert ram == {
        "qom-type": "memory-backend-file",
        "id": "pc.ram",
        "mem-path": f"{base}/vm1/pc.ram",
        "share": True,
        "discard-data": True,
        "prealloc": True,
        "prealloc-threads": 2,
        "x-use-canonical-path-for-ramblock-id": False,
        "size": 128 << 20,
    }
    # Without a directory of the node's, the command line names libvirt's.
    assert _backends(argv_of(caps, xml))["pc.ram"]["mem-path"] == (
        "/var/lib/libvirt/qemu/ram/vm1/pc.ram"
    )
    (base / "vm1").mkdir(parents=True)  # what a start makes (membacking.MemoryDirs)
    got = launch_paused(
        argv, tmp_path, extra={"qom-get": {"path": "/objects/pc.ram", "property": "mem-path"}}
    )
    assert got.memory_bytes == 128 << 20
    assert got.extra["qom-get"] == f"{base}/vm1/pc.ram"
    assert (base / "vm1" / "pc.ram").stat().st_size == 128 << 20


def test_file_source_per_numa_cell(caps: Caps, tmp_path: Path) -> None:
    xml = dom(body="<memoryBacking><source type='file'/></memoryBacking>" + NUMA2)
    dumpxml_roundtrip(caps, xml)
    base = tmp_path / "ram"
    argv = domxml_to_native(
        xml, caps, monitor_path=str(tmp_path / "m.sock"), memory_backing_dir=str(base)
    )
    objs = _backends(argv)
    assert objs["ram-node0"]["mem-path"] == f"{base}/vm1/ram-node0"
    assert "discard-data" not in objs["ram-node0"]
    assert objs["ram-node1"]["discard-data"] is True  # the cell's discard='yes'
    (base / "vm1").mkdir(parents=True)
    got = launch_paused(argv, tmp_path)
    assert got.memory_bytes == 128 << 20
    assert sorted(p.name for p in (base / "vm1").iterdir()) == ["ram-node0", "ram-node1"]


def test_hugepages_per_numa_node(caps: Caps) -> None:
    body = (
        "<memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/>"
        "<page size='1' unit='G' nodeset='1'/></hugepages></memoryBacking>" + NUMA2
    )
    xml = dom(body=body)
    out = dumpxml_roundtrip(caps, xml)
    assert "<page size='2048' unit='KiB' nodeset='0'/>" in out
    assert "<page size='1048576' unit='KiB' nodeset='1'/>" in out
    objs = _backends(argv_of(caps, xml))
    defn = parse_domain_xml(xml)
    for node in ("ram-node0", "ram-node1"):
        assert objs[node]["qom-type"] == "memory-backend-file"
        assert objs[node]["mem-path"].endswith(f"/asvirt/{defn.uuid}")
        assert objs[node]["prealloc"] is True
    # Each node's pages on a mount of its own size.
    assert objs["ram-node0"]["mem-path"] != objs["ram-node1"]["mem-path"]
    prepared = prepare_domain(defn, caps)
    assert membacking.hugepage_needs(prepared) == {2048: 64 << 10, 1 << 20: 64 << 10}


def test_hugepages_of_one_node_leave_the_others_ordinary(caps: Caps, tmp_path: Path) -> None:
    body = (
        "<memoryBacking><hugepages><page size='1' unit='G' nodeset='1'/></hugepages>"
        "</memoryBacking>" + NUMA2
    )
    objs = _backends(argv_of(caps, dom(body=body)))
    assert objs["ram-node0"] == {
        "qom-type": "memory-backend-ram",
        "id": "ram-node0",
        "size": 64 << 20,
    }
    assert objs["ram-node1"]["qom-type"] == "memory-backend-file"
    # A default page size covers the nodes no <page> names.
    body = (
        "<memoryBacking><hugepages><page size='2' unit='M'/><page size='1' unit='G' "
        "nodeset='1'/></hugepages></memoryBacking>" + NUMA2
    )
    defn = prepare_domain(parse_domain_xml(dom(body=body)), caps)
    assert membacking.hugepage_needs(defn) == {2048: 64 << 10, 1 << 20: 64 << 10}
    # 1 GiB pages: no test machine mounts them, so the start is refused before QEMU runs.
    if membacking.hugetlbfs_mount(1 << 20) is not None:
        pytest.skip("this host mounts 1 GiB huge pages")
    with pytest.raises(OperationFailedError, match="hugetlbfs filesystem is not mounted"):
        membacking.check_hugepages(defn)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            "<memoryBacking><hugepages><page size='2048' nodeset='2'/></hugepages>"
            "</memoryBacking>" + NUMA2,
            "hugepages: node 2 not found",
        ),
        (
            "<memoryBacking><hugepages><page size='2048' nodeset='1'/></hugepages></memoryBacking>",
            "hugepages: node 1 not found",
        ),
        (
            "<memoryBacking><hugepages><page size='2048'/><page size='4096'/></hugepages>"
            "</memoryBacking>",
            "default hugepage size can't be specified twice",
        ),
        (
            "<memoryBacking><hugepages><page size='2048' nodeset='0-1'/><page size='1048576' "
            "nodeset='1'/></hugepages></memoryBacking>" + NUMA2,
            "names a node another page names",
        ),
        (
            "<memoryBacking><allocation mode='immediate' threads='0'/></memoryBacking>",
            "threads",
        ),
    ],
)
def test_bad_memory_backing_is_refused(caps: Caps, body: str, why: str) -> None:
    with pytest.raises(XMLError, match=why):
        prepare_domain(parse_domain_xml(dom(body=body)), caps)


def test_hugepages_nodeset_0_without_numa_is_all_of_ram(caps: Caps) -> None:
    xml = dom(
        body="<memoryBacking><hugepages><page size='2048' nodeset='0'/></hugepages></memoryBacking>"
    )
    assert "nodeset='0'" in dumpxml_roundtrip(caps, xml)
    ram = _backends(argv_of(caps, xml))["pc.ram"]
    assert ram["qom-type"] == "memory-backend-file" and ram["prealloc"] is True


def test_allocation_threads_preallocate_in_qemu(caps: Caps, tmp_path: Path) -> None:
    xml = dom(body="<memoryBacking><allocation mode='immediate' threads='2'/></memoryBacking>")
    dumpxml_roundtrip(caps, xml)
    argv = argv_of(caps, xml, tmp_path)
    ram = _backends(argv)["pc.ram"]
    assert ram["qom-type"] == "memory-backend-ram"
    assert ram["prealloc"] is True and ram["prealloc-threads"] == 2
    got = launch_paused(
        argv, tmp_path, extra={"qom-get": {"path": "/objects/pc.ram", "property": "prealloc"}}
    )
    assert got.extra["qom-get"] is True


def test_hugepages_from_memfd_and_instead_of_a_file(caps: Caps, tmp_path: Path) -> None:
    body = (
        "<memoryBacking><hugepages><page size='1' unit='G' nodeset='1'/></hugepages>"
        "<source type='{}'/><access mode='shared'/></memoryBacking>" + NUMA2
    )
    memfd = dom(body=body.format("memfd"))
    assert "<source type='memfd'/>" in dumpxml_roundtrip(caps, memfd)
    objs = _backends(argv_of(caps, memfd))
    # libvirt's memfd-memory-numa: a hugetlb memfd of the node's size, no mount involved.
    assert objs["ram-node1"] == {
        "qom-type": "memory-backend-memfd",
        "id": "ram-node1",
        "hugetlb": True,
        "hugetlbsize": 1 << 30,
        "share": True,
        "prealloc": True,
        "size": 64 << 20,
    }
    assert objs["ram-node0"]["qom-type"] == "memory-backend-memfd"
    assert "hugetlb" not in objs["ram-node0"]
    # It needs no mount, but the pages: a host without free 1 GiB pages refuses the start.
    free = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages")
    if not free.exists() or int(free.read_text()) < 1:
        with pytest.raises(OperationFailedError, match="huge pages"):
            membacking.check_hugepages(prepare_domain(parse_domain_xml(memfd), caps))
    # A file source gives way to huge pages where a node has them (the more specific).
    base = tmp_path / "ram"
    argv = domxml_to_native(
        dom(body=body.format("file")),
        caps,
        monitor_path=str(tmp_path / "m.sock"),
        memory_backing_dir=str(base),
    )
    objs = _backends(argv)
    assert objs["ram-node0"]["mem-path"] == f"{base}/vm1/ram-node0"
    assert objs["ram-node1"]["mem-path"].endswith("/asvirt/" + DOM_UUID.lower())
    with pytest.raises(ConfigUnsupportedError, match="not allowed with anonymous memory"):
        argv_of(caps, dom(body=body.format("anonymous")))
