"""Command-line gaps found by running more of libvirt's own cases through asvirt.

Each case has its own small XML; the launch tests start the real QEMU paused with the argv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qemu_launch import launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError
from tests.caps import Caps
from tests.helpers import argv_of, device, dom


def _image(tmp: Path, name: str = "a.img") -> str:
    path = tmp / name
    path.write_bytes(b"\0" * (1 << 20))
    return str(path)


# -- <shareable/> -------------------------------------------------------------------------------


@pytest.mark.qemu
def test_shareable_disks_are_shared_rw_on_every_bus(caps: Caps, tmp_path: Path) -> None:
    img = _image(tmp_path)
    xml = dom(
        "".join(
            f"<disk type='file'><source file='{img}'/><target dev='{t}' bus='{b}'/>"
            "<shareable/></disk>"
            for t, b in (("vda", "virtio"), ("hda", "ide"), ("sda", "scsi"), ("sdb", "sata"))
        )
        + f"<disk type='file'><source file='{_image(tmp_path, 'b.img')}'/>"
        "<target dev='vdb'/></disk>"
    )
    argv = argv_of(caps, xml, tmp_path)
    d = prepare_domain(parse_domain_xml(xml), caps)
    for disk in d.disks:
        props = device(argv, disk.alias or "")
        assert props.get("share-rw") is (True if disk.target != "vdb" else None), disk.target
    got = launch_paused(argv, tmp_path)  # QEMU takes the same image four times
    assert got.status == "prelaunch"
    assert len([b for b in got.block if b.get("inserted")]) == 5


def test_shareable_needs_a_raw_image(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<disk><driver name='qemu' type='qcow2'/><source file='/x.qcow2'/><target dev='vda'/>"
        "<shareable/></disk>"
    )
    with pytest.raises(ConfigUnsupportedError, match=r"disk 'vda'.*shareable.*raw"):
        argv_of(caps, xml, tmp_path)


# -- virtio-scsi <driver> -----------------------------------------------------------------------


@pytest.mark.qemu
def test_virtio_scsi_driver_tuning(caps: Caps, tmp_path: Path) -> None:
    img = _image(tmp_path)
    xml = dom(
        "<controller type='scsi' index='0' model='virtio-scsi'>"
        "<driver queues='4' cmd_per_lun='16' max_sectors='512' ioeventfd='off'/></controller>"
        "<controller type='scsi' index='1' model='virtio-scsi'/>"
        f"<disk><source file='{img}'/><target dev='sda' bus='scsi'/></disk>"
    )
    argv = argv_of(caps, xml, tmp_path)
    tuned, plain = device(argv, "scsi0"), device(argv, "scsi1")
    assert (tuned["num_queues"], tuned["cmd_per_lun"], tuned["max_sectors"]) == (4, 16, 512)
    assert tuned["ioeventfd"] is False
    assert not {"num_queues", "cmd_per_lun", "max_sectors", "ioeventfd"} & plain.keys()
    got = launch_paused(argv, tmp_path)
    assert got.status == "prelaunch"


def test_driver_tuning_of_a_non_virtio_scsi_controller_is_refused(
    caps: Caps, tmp_path: Path
) -> None:
    xml = dom("<controller type='scsi' model='lsilogic'><driver queues='2'/></controller>")
    with pytest.raises(ConfigUnsupportedError, match=r"<driver>.*lsilogic"):
        argv_of(caps, xml, tmp_path)


# -- i686 guests ----------------------------------------------------------------------------------


@pytest.mark.qemu
def test_i686_guest_runs_on_the_x86_64_emulator(caps: Caps, tmp_path: Path) -> None:
    if caps.arch != "x86_64":
        pytest.skip("needs qemu-system-x86_64")
    xml = dom("", arch="i686")
    d = prepare_domain(parse_domain_xml(xml), caps)
    assert d.os.arch == "i686"
    argv = argv_of(caps, xml, tmp_path)
    assert argv[0] == caps.binary
    got = launch_paused(argv, tmp_path)
    assert (got.status, got.vcpus) == ("prelaunch", 1)


def test_other_arches_are_still_refused_by_the_x86_64_emulator(caps: Caps, tmp_path: Path) -> None:
    if caps.arch != "x86_64":
        pytest.skip("needs qemu-system-x86_64")
    with pytest.raises(ConfigUnsupportedError, match="architecture 'aarch64'"):
        argv_of(caps, dom("", arch="aarch64", machine="virt"), tmp_path)
