"""Command lines of the tuning elements (disk <iotune>/<blockio>/<geometry>/queues,
<memoryBacking><hugepages>), and the refusals of <seclabel>s this host has no driver for.

Each gives its XML, the arguments expected, a round trip through dumpxml (validated against
libvirt's schema) and a launch of the argv paused under the real QEMU, asked over QMP what it
built. The runtime effects (pinning, cgroups, QEMU's user) are in tests/test_qemu_tuning.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qemu_launch import launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests.caps import Caps
from tests.helpers import argv_of, blockdevs, device, dom, dumpxml_roundtrip, opts, qemu_img

pytestmark = pytest.mark.qemu


def _image(tmp: Path, name: str = "d.img") -> Path:
    path = tmp / name
    qemu_img("create", "-q", "-f", "raw", path, "16M")
    return path


def test_iotune_builds_throttle_groups_qemu_applies(caps: Caps, tmp_path: Path) -> None:
    a, b, c = (_image(tmp_path, n) for n in ("a.img", "b.img", "c.img"))
    tune = (
        "<iotune><total_bytes_sec>10000000</total_bytes_sec>"
        "<total_bytes_sec_max>20000000</total_bytes_sec_max>"
        "<total_bytes_sec_max_length>5</total_bytes_sec_max_length>"
        "<read_iops_sec>400</read_iops_sec><write_iops_sec>300</write_iops_sec>"
        "<size_iops_sec>4096</size_iops_sec>{group}</iotune>"
    )
    xml = dom(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{a}'/>"
        f"<target dev='vda' bus='virtio'/>{tune.format(group='')}</disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{b}'/>"
        "<target dev='vdb' bus='virtio'/>"
        f"{tune.format(group='<group_name>shared</group_name>')}</disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{c}'/>"
        "<target dev='sda' bus='scsi'/>"
        "<iotune><total_bytes_sec>1</total_bytes_sec><group_name>shared</group_name></iotune>"
        "</disk>"
    )
    out = dumpxml_roundtrip(caps, xml)
    assert "<group_name>shared</group_name>" in out
    argv = argv_of(caps, xml, tmp_path)
    objs = [json.loads(o) for o in opts(argv, "-object") if "throttle-group" in o]
    limits = {
        "bps-total": 10000000,
        "bps-total-max": 20000000,
        "bps-total-max-length": 5,
        "iops-read": 400,
        "iops-write": 300,
        "iops-size": 4096,
    }
    # One group per disk without a name, one per named group (the first disk's limits).
    assert objs == [
        {"qom-type": "throttle-group", "id": "throttle-virtio-disk0", "limits": limits},
        {"qom-type": "throttle-group", "id": "throttle-shared", "limits": limits},
    ]
    nodes = {n["node-name"]: n for n in blockdevs(argv)}
    assert nodes["libvirt-3-throttle"] == {
        "driver": "throttle",
        "node-name": "libvirt-3-throttle",
        "throttle-group": "throttle-virtio-disk0",
        "file": "libvirt-3-storage",
    }
    assert device(argv, "virtio-disk0")["drive"] == "libvirt-3-throttle"
    assert device(argv, "scsi0-0-0")["drive"] == "libvirt-1-throttle"
    got = launch_paused(
        argv,
        tmp_path,
        extra={
            "query-named-block-nodes": {"flat": True},
            "qom-get": {"path": "/objects/throttle-shared", "property": "limits"},
        },
    )
    throttles = [n for n in got.extra["query-named-block-nodes"] if n["drv"] == "throttle"]
    assert sorted(n["node-name"] for n in throttles) == [
        "libvirt-1-throttle",
        "libvirt-2-throttle",
        "libvirt-3-throttle",
    ]
    applied = got.extra["qom-get"]
    assert {k: applied[k] for k in limits} == limits


def test_iotune_rules_are_libvirts(caps: Caps) -> None:
    disk = (
        "<disk type='file' device='disk'><source file='/x.img'/><target dev='vda' bus='virtio'/>"
        "<iotune>{}</iotune></disk>"
    )
    for bad in (
        "<total_bytes_sec>5</total_bytes_sec><read_bytes_sec>5</read_bytes_sec>",
        "<total_iops_sec_max>5</total_iops_sec_max>",
        "<total_iops_sec>10</total_iops_sec><total_iops_sec_max>5</total_iops_sec_max>",
        "<size_iops_sec>5</size_iops_sec>",
    ):
        with pytest.raises(XMLError):
            parse_domain_xml(dom(disk.format(bad)))


def test_blockio_geometry_and_queues(caps: Caps, tmp_path: Path) -> None:
    a, b = _image(tmp_path, "a.img"), _image(tmp_path, "b.img")
    xml = dom(
        f"<disk type='file' device='disk'><driver name='qemu' type='raw' queues='2' "
        f"queue_size='256'/><source file='{a}'/>"
        "<geometry cyls='32' heads='16' secs='63'/>"
        "<blockio logical_block_size='512' physical_block_size='4096' "
        "discard_granularity='4096'/><target dev='vda' bus='virtio'/></disk>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{b}'/>"
        "<geometry cyls='32' heads='16' secs='63' trans='lba'/>"
        "<blockio physical_block_size='4096'/><target dev='hda' bus='ide'/></disk>"
    )
    dumpxml_roundtrip(caps, xml)
    argv = argv_of(caps, xml, tmp_path)
    vda = device(argv, "virtio-disk0")
    assert {k: vda[k] for k in ("num-queues", "queue-size", "cyls", "heads", "secs")} == {
        "num-queues": 2,
        "queue-size": 256,
        "cyls": 32,
        "heads": 16,
        "secs": 63,
    }
    assert (vda["logical_block_size"], vda["physical_block_size"]) == (512, 4096)
    assert vda["discard_granularity"] == 4096
    hda = device(argv, "ide0-0-0")
    assert hda["bios-chs-trans"] == "lba" and hda["physical_block_size"] == 4096
    got = launch_paused(
        argv,
        tmp_path,
        extra={"qom-get": {"path": "/machine/peripheral/virtio-disk0", "property": "num-queues"}},
    )
    assert got.extra["qom-get"] == 2


def test_ide_disks_have_512_byte_logical_blocks(caps: Caps) -> None:
    xml = dom(
        "<disk type='file' device='disk'><source file='/x.img'/>"
        "<blockio logical_block_size='4096'/><target dev='sda' bus='sata'/></disk>"
    )
    with pytest.raises(ConfigUnsupportedError, match="512-byte logical blocks"):
        prepare_domain(parse_domain_xml(xml), caps)


@pytest.mark.parametrize(("dev", "bus"), [("sda", "usb"), ("fda", "fdc")])
def test_usb_and_floppy_disks_have_no_geometry(caps: Caps, dev: str, bus: str) -> None:
    # Found by the random domains: QEMU's usb-storage has no cyls/heads/secs and died on them.
    device = "floppy" if bus == "fdc" else "disk"
    xml = dom(
        f"<disk type='file' device='{device}'><source file='/x.img'/>"
        f"<geometry cyls='1' heads='1' secs='1'/><target dev='{dev}' bus='{bus}'/></disk>"
    )
    with pytest.raises(ConfigUnsupportedError, match="have no geometry"):
        prepare_domain(parse_domain_xml(xml), caps)


def test_queues_only_on_virtio(caps: Caps) -> None:
    xml = dom(
        "<disk type='file' device='disk'><driver name='qemu' type='raw' queues='2'/>"
        "<source file='/x.img'/><target dev='sda' bus='sata'/></disk>"
    )
    with pytest.raises(ConfigUnsupportedError, match="only supported by virtio-blk"):
        prepare_domain(parse_domain_xml(xml), caps)


def test_hugepages_back_ram_with_a_hugetlbfs_file(caps: Caps, tmp_path: Path) -> None:
    body = (
        "<memoryBacking><hugepages><page size='2' unit='MiB'/></hugepages><nosharepages/>"
        "<locked/><discard/></memoryBacking>"
    )
    xml = dom(body=body)
    out = dumpxml_roundtrip(caps, xml)
    assert "<page size='2048' unit='KiB'/>" in out
    argv = argv_of(caps, xml, tmp_path)
    ram = json.loads(next(o for o in opts(argv, "-object") if "pc.ram" in o))
    assert ram["qom-type"] == "memory-backend-file"
    # A directory of the domain's: QEMU's file in it is unlinked at once, so the pages go
    # back to the host when QEMU exits.
    assert ram["mem-path"].endswith("/asvirt/" + parse_domain_xml(xml).uuid)
    assert ram["prealloc"] is True and ram["discard-data"] is True
    assert "memory-backend=pc.ram" in opts(argv, "-machine")[0]
    assert "mem-merge=off" in opts(argv, "-machine")[0]
    assert opts(argv, "-overcommit") == ["mem-lock=on"]


@pytest.mark.parametrize(
    "label",
    [
        "<seclabel type='dynamic' model='selinux'/>",
        "<seclabel type='dynamic' model='apparmor'/>",
        "<seclabel type='dynamic'/>",
    ],
)
def test_mac_seclabels_are_refused_without_a_driver(caps: Caps, label: str) -> None:
    xml = dom(body=label)
    with pytest.raises(
        ConfigUnsupportedError, match=r"Security driver model '.*' is not available"
    ):
        prepare_domain(parse_domain_xml(xml), caps)


def test_dac_seclabelsdumpxml_roundtrip(caps: Caps) -> None:
    for label in (
        "<seclabel type='none'/>",
        "<seclabel type='none' model='dac'/>",
        "<seclabel type='static' model='dac' relabel='no'><label>+1234:+1234</label></seclabel>",
        "<seclabel type='static' model='dac'><label>root:root</label></seclabel>",
        "<seclabel type='dynamic' model='dac' relabel='yes'/>",
    ):
        assert label.split(">")[0] in dumpxml_roundtrip(caps, dom(body=label))
    with pytest.raises(ConfigUnsupportedError, match="unknown user"):
        prepare_domain(
            parse_domain_xml(
                dom(
                    body="<seclabel type='static' model='dac'><label>nobody-x:nogroup-x</label>"
                    "</seclabel>"
                )
            ),
            caps,
        )


def test_tuning_elementsdumpxml_roundtrip(caps: Caps) -> None:
    body = (
        "<iothreads>1</iothreads>"
        "<cputune><shares>2048</shares><period>100000</period><quota>50000</quota>"
        "<global_period>100000</global_period><global_quota>-1</global_quota>"
        "<emulator_period>100000</emulator_period><emulator_quota>20000</emulator_quota>"
        "<vcpupin vcpu='0' cpuset='1'/><emulatorpin cpuset='0'/>"
        "<iothreadpin iothread='1' cpuset='0-1'/></cputune>"
        "<memtune><hard_limit unit='MiB'>1024</hard_limit><soft_limit unit='MiB'>512</soft_limit>"
        "<swap_hard_limit unit='GiB'>2</swap_hard_limit></memtune>"
        "<blkiotune><weight>500</weight><device><path>/dev/null</path><weight>200</weight>"
        "<read_bytes_sec>1000</read_bytes_sec></device></blkiotune>"
    )
    out = dumpxml_roundtrip(caps, dom(body=body))
    for piece in ("<shares>2048</shares>", "<hard_limit unit='KiB'>1048576</hard_limit>"):
        assert piece in out
    with pytest.raises(XMLError, match="vcpupin"):
        parse_domain_xml(dom(body="<cputune><vcpupin vcpu='3' cpuset='0'/></cputune>"))
    with pytest.raises(ConfigUnsupportedError, match="min_guarantee"):
        parse_domain_xml(dom(body="<memtune><min_guarantee>1</min_guarantee></memtune>"))


#: libvirt's own cputune/cachetune/memorytune cases (genericxml2xml), together.
_SCHED_AND_RESCTRL = (
    "<vcpu placement='static'>4</vcpu><iothreads>4</iothreads>"
    "<cputune><shares>2048</shares><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='1'/>"
    "<emulatorsched scheduler='fifo' priority='2'/>"
    "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/>"
    "<vcpusched vcpus='1-3,^1' scheduler='idle'/>"
    "<iothreadsched iothreads='1,3' scheduler='batch'/>"
    "<iothreadsched iothreads='2' scheduler='rr' priority='99'/>"
    "<cachetune vcpus='0-1'><cache id='0' level='3' type='both' size='768' unit='KiB'/>"
    "<cache id='1' level='3' type='both' size='3145728'/><monitor level='3' vcpus='1'/>"
    "</cachetune>"
    "<cachetune vcpus='2'><cache id='0' level='3' type='code' size='3' unit='MiB'/>"
    "<cache id='0' level='3' type='data' size='1' unit='MiB'/></cachetune>"
    "<memorytune vcpus='0-1'><node id='0' bandwidth='20'/><node id='1' bandwidth='30'/>"
    "</memorytune>"
    "<memorytune vcpus='3-7'><node id='0' bandwidth='50'/><monitor vcpus='3'/></memorytune>"
    "</cputune>"
)


def test_scheduler_and_resctrl_elements_round_trip(caps: Caps, tmp_path: Path) -> None:
    """What libvirt writes back for them (one <vcpusched> per thread, sizes in the largest
    exact unit, vcpus cut to the domain's), valid under libvirt's schema; QEMU's command line
    is the same as without them (libvirt too applies them to the threads, not the argv)."""
    xml = dom(body=_SCHED_AND_RESCTRL)
    out = dumpxml_roundtrip(caps, xml)
    for piece in (
        "<emulatorsched scheduler='fifo' priority='2'/>",
        "<vcpusched vcpus='0' scheduler='fifo' priority='1'/>",
        "<vcpusched vcpus='1' scheduler='fifo' priority='1'/>",
        "<vcpusched vcpus='3' scheduler='idle'/>",
        "<iothreadsched iothreads='3' scheduler='batch'/>",
        "<iothreadsched iothreads='2' scheduler='rr' priority='99'/>",
        "<cache id='1' level='3' type='both' size='3' unit='MiB'/>",
        "<monitor level='3' vcpus='1'/>",
        "<cache id='0' level='3' type='code' size='3' unit='MiB'/>",
        "<memorytune vcpus='3'>",
        "<monitor vcpus='3'/>",
    ):
        assert piece in out
    assert out.index("<cachetune vcpus='2'>") < out.index("<memorytune vcpus='0-1'>")
    # A running domain's XML names each group as libvirt's does; defined again, the same.
    live = parse_domain_xml(out).to_xml(live=True)
    assert "<cachetune vcpus='0-1' id='vcpus_0-1'>" in live
    assert parse_domain_xml(live).to_xml() == out
    plain = dom(body="<vcpu placement='static'>4</vcpu><iothreads>4</iothreads>")
    argv = argv_of(caps, xml, tmp_path)
    assert argv == argv_of(caps, plain, tmp_path)
    got = launch_paused(argv, tmp_path, extra={"query-iothreads": {}})
    assert got.vcpus == 4
    assert len(got.extra["query-iothreads"]) == 4


@pytest.mark.parametrize(
    ("cputune", "error"),
    [
        (
            "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/>"
            "<vcpusched vcpus='1' scheduler='idle'/>",
            "must not overlap",
        ),
        ("<vcpusched vcpus='4' scheduler='batch'/>", "names vcpu 4"),
        ("<vcpusched scheduler='batch'/>", "missing attribute 'vcpus'"),
        ("<vcpusched vcpus='0' scheduler='fifo'/>", "missing attribute 'priority'"),
        ("<emulatorsched scheduler='idle' priority='1'/>", "only for the fifo and rr"),
        ("<iothreadsched iothreads='2' scheduler='idle'/>", "names iothread 2"),
        (
            "<cachetune vcpus='0-1'><cache id='0' level='3' type='both' size='1'/></cachetune>"
            "<cachetune vcpus='1-2'><cache id='0' level='3' type='both' size='1'/></cachetune>",
            "overlapping vcpus",
        ),
        (
            "<cachetune vcpus='0'><cache id='0' level='3' type='both' size='1'/></cachetune>"
            "<cachetune vcpus='0'><cache id='1' level='3' type='both' size='1'/></cachetune>",
            "identical vcpus",
        ),
        (
            "<cachetune vcpus='0'><cache id='0' level='3' type='both' size='1'/>"
            "<cache id='0' level='3' type='code' size='1'/></cachetune>",
            "colliding cache",
        ),
        (
            "<cachetune vcpus='0'><cache id='0' level='3' type='both' size='1'/>"
            "<monitor level='2' vcpus='0'/></cachetune>",
            "monitor level 2",
        ),
        (
            "<cachetune vcpus='0'><cache id='0' level='3' type='both' size='1'/>"
            "<monitor level='3' vcpus='1'/></cachetune>",
            "outside its group",
        ),
        (
            "<cachetune vcpus='0-2'><monitor level='3' vcpus='0-1'/>"
            "<monitor level='3' vcpus='1-2'/></cachetune>",
            "monitors overlap",
        ),
        ("<memorytune vcpus='0'><node id='0' bandwidth='101'/></memorytune>", "exceeds 100"),
        (
            "<memorytune vcpus='0'><node id='0' bandwidth='10'/><node id='0' bandwidth='20'/>"
            "</memorytune>",
            "already defined for node 0",
        ),
        (
            "<cachetune vcpus='0-1'><cache id='0' level='3' type='both' size='1'/></cachetune>"
            "<memorytune vcpus='1'><node id='0' bandwidth='10'/></memorytune>",
            "overlapping",
        ),
        ("<cachetune vcpus='0'/>", "needs a <cache> or a <monitor>"),
    ],
)
def test_scheduler_and_resctrl_rules_are_libvirts(cputune: str, error: str) -> None:
    body = f"<vcpu>4</vcpu><iothreads>1</iothreads><cputune>{cputune}</cputune>"
    with pytest.raises(XMLError, match=error):
        parse_domain_xml(dom(body=body))


@pytest.mark.parametrize(
    "cputune",
    [
        # libvirt's cachetune-small and cachetune-cdp cases: written back as they are.
        "<cachetune vcpus='0-1'><cache id='0' level='3' type='both' size='768' unit='KiB'/>"
        "<monitor level='3' vcpus='0'/><monitor level='3' vcpus='1'/>"
        "<monitor level='3' vcpus='0-1'/></cachetune>"
        "<cachetune vcpus='2-3'><monitor level='3' vcpus='2'/><monitor level='3' vcpus='3'/>"
        "</cachetune>",
        "<cachetune vcpus='0-1'><cache id='0' level='3' type='code' size='7680' unit='KiB'/>"
        "<cache id='1' level='3' type='data' size='3840' unit='KiB'/>"
        "<monitor level='3' vcpus='0'/><monitor level='3' vcpus='1'/></cachetune>"
        "<cachetune vcpus='2'><cache id='1' level='3' type='code' size='6' unit='MiB'/>"
        "<monitor level='3' vcpus='2'/></cachetune>"
        "<cachetune vcpus='3'><cache id='1' level='3' type='data' size='6912' unit='KiB'/>"
        "</cachetune>",
    ],
)
def test_libvirts_cachetune_cases_are_written_back_unchanged(caps: Caps, cputune: str) -> None:
    out = dumpxml_roundtrip(caps, dom(body=f"<vcpu>4</vcpu><cputune>{cputune}</cputune>"))
    written = out[out.index("<cputune>") + len("<cputune>") : out.index("</cputune>")]
    assert "".join(line.strip() for line in written.splitlines()) == cputune
