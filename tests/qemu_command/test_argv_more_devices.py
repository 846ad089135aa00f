"""Command lines of the last of libvirt's x86 devices (issue 12): USB, floppy and LUN disks,
socket and vhost-user NICs, NVDIMM/virtio-pmem/SGX memory, virtio-crypto, pstore, guestfwd
channels, vmvga/ramfb video and the local displays (egl-headless, SDL, D-Bus).

Each test gives its XML, the arguments libvirt 9 builds for it on QEMU 7.2, a round trip
through dumpxml validated against libvirt's schema, and a launch of the argv paused under
the real QEMU where this host allows; what the host lacks is refused at start, saying so.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from lxml import etree
from qemu_launch import QemuRefused, launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.helpers import check_host_devices
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import CONFORMANCE, Caps
from tests.helpers import argv_of, blockdevs, device, dom, opts, qemu_img

pytestmark = pytest.mark.qemu

SCHEMA = CONFORMANCE / "schemas" / "domain.rng"


def _launch(argv: list[str], tmp: Path) -> set[str]:
    got = launch_paused(argv, tmp)
    assert got.status == "prelaunch"
    return set(got.qom["/machine/peripheral"])


def _roundtrip(caps: Caps, xml: str) -> str:
    """What dumpxml shows for ``xml``: valid under libvirt's schema, and stable."""
    out = prepare_domain(parse_domain_xml(xml), caps).to_xml()
    if SCHEMA.exists():
        rng = etree.RelaxNG(file=str(SCHEMA))
        assert rng.validate(etree.fromstring(out.encode())), rng.error_log
    assert prepare_domain(parse_domain_xml(out), caps).to_xml() == out
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- disks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_floppies_on_the_isa_controller(caps: Caps, tmp_path: Path, machine: str) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.qcow2"
    qemu_img("create", "-f", "raw", a, "1440K")
    qemu_img("create", "-f", "qcow2", b, "1440K")
    xml = dom(
        f"<disk type='file' device='floppy'><source file='{a}'/><target dev='fda'/></disk>"
        f"<disk type='file' device='floppy'><driver type='qcow2'/><source file='{b}'/>"
        "<target dev='fdb' bus='fdc'/></disk>",
        machine=machine,
    ).replace("hvm</type>", "hvm</type><boot dev='fd'/>")
    argv = argv_of(caps, xml, tmp_path)
    assert device(argv, "fdc0-0-0") == {
        "driver": "floppy",
        "unit": 0,
        "drive": "libvirt-2-storage",
        "id": "fdc0-0-0",
    }
    assert device(argv, "fdc0-0-1")["unit"] == 1
    if machine == "q35":  # Q35 has no floppy controller of its own: libvirt adds one
        assert {"driver": "isa-fdc", "bootindexA": 1} in [
            json.loads(x) for x in opts(argv, "-device")
        ]
    else:  # the PC's own controller boots from drive A
        assert "isa-fdc.bootindexA=1" in opts(argv, "-global")
    assert {"fdc0-0-0", "fdc0-0-1"} <= _launch(argv, tmp_path)
    out = _roundtrip(caps, xml)
    assert "<target dev='fda' bus='fdc'/>" in out
    assert "<controller type='fdc' index='0'/>" in out
    empty = dom("<disk type='file' device='floppy'><target dev='fda'/></disk>", machine=machine)
    assert "drive" not in device(argv_of(caps, empty), "fdc0-0-0")  # no disk in the drive
    with pytest.raises(XMLError, match="only a floppy"):
        argv_of(caps, dom(f"<disk device='floppy'><source file='{a}'/><target dev='hda'/></disk>"))
    with pytest.raises(ConfigUnsupportedError, match="floppy controller has drives"):
        argv_of(
            caps,
            dom(
                f"<disk device='floppy'><source file='{a}'/><target dev='fda'/>"
                "<address type='drive' controller='0' bus='0' target='0' unit='2'/></disk>"
            ),
        )


def test_usb_disk_is_usb_storage(caps: Caps, tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    qemu_img("create", "-f", "raw", img, "8M")
    xml = dom(
        "<controller type='usb' model='qemu-xhci'/><input type='tablet' bus='usb'/>"
        f"<disk type='file' device='disk'><source file='{img}'/>"
        "<target dev='sda' bus='usb' removable='on'/></disk>"
        f"<disk type='file' device='disk'><source file='{img}'/><readonly/>"
        "<target dev='sdb' bus='usb'/><shareable/></disk>"
    )
    argv = argv_of(caps, xml, tmp_path)
    # libvirt walks disks before inputs: the disks take the first ports.
    assert device(argv, "usb-disk0") == {
        "driver": "usb-storage",
        "bus": "usb.0",
        "port": "1",
        "drive": "libvirt-2-storage",
        "id": "usb-disk0",
        "removable": True,
    }
    assert device(argv, "usb-disk1")["removable"] is False
    assert device(argv, "input0")["port"] == "3"
    assert {"usb-disk0", "usb-disk1", "input0"} <= _launch(argv, tmp_path)
    out = _roundtrip(caps, xml)
    assert "<target dev='sda' bus='usb' removable='on'/>" in out
    assert "<address type='usb' bus='0' port='1'/>" in out
    with pytest.raises(ConfigUnsupportedError, match="removable= is for USB disks"):
        argv_of(caps, dom(f"<disk><source file='{img}'/><target dev='vda' removable='on'/></disk>"))


def test_scsi_lun_is_scsi_block_and_needs_a_host_scsi_device(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<controller type='scsi' model='virtio-scsi'/>"
        "<disk type='block' device='lun'><source dev='/dev/sg-asvirt-none'/>"
        "<target dev='sda' bus='scsi'/></disk>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert blockdevs(argv)[0]["driver"] == "host_device"
    assert device(argv, "scsi0-0-0-0") == {
        "driver": "scsi-block",
        "bus": "scsi0.0",
        "channel": 0,
        "scsi-id": 0,
        "lun": 0,
        "drive": "libvirt-1-storage",
        "id": "scsi0-0-0-0",
    }
    assert "device='lun'" in _roundtrip(caps, xml)
    # This host has no SCSI device to pass through: the start is refused, naming it.
    with pytest.raises(OperationFailedError, match="/dev/sg-asvirt-none"):
        check_host_devices(prepare_domain(parse_domain_xml(xml), caps))
    with pytest.raises((QemuRefused, ConnectionError)):
        launch_paused(argv, tmp_path)
    for bad, why in (
        (
            "<disk type='file' device='lun'><source file='/x'/><target dev='sda'/></disk>",
            "type='block'",
        ),
        ("<disk type='block' device='lun'><source dev='/x'/><target dev='vda'/></disk>", "SCSI"),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, dom(bad))


def test_no_nvme_disk_bus(caps: Caps) -> None:
    # libvirt 9's schema has no NVMe disk bus (nor an NVMe controller): refused as libvirt does.
    with pytest.raises(ConfigUnsupportedError, match="bus='nvme'"):
        argv_of(caps, dom("<disk><source file='/x'/><target dev='sda' bus='nvme'/></disk>"))


# -- network interfaces ------------------------------------------------------------------------


def test_socket_interfaces(caps: Caps, tmp_path: Path) -> None:
    port, udp = _free_port(), _free_port()
    xml = dom(
        f"<interface type='server'><source address='127.0.0.1' port='{port}'/>"
        "<model type='virtio'/></interface>"
        f"<interface type='client'><source address='127.0.0.1' port='{port}'/></interface>"
        f"<interface type='udp'><source address='127.0.0.1' port='{udp}'>"
        f"<local address='127.0.0.1' port='{udp + 1 if udp < 65535 else udp - 1}'/></source>"
        "</interface>"
        "<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>"
    )
    argv = argv_of(caps, xml, tmp_path)
    netdevs = opts(argv, "-netdev")
    assert netdevs[0] == f"socket,listen=127.0.0.1:{port},id=hostnet0"
    assert netdevs[1] == f"socket,connect=127.0.0.1:{port},id=hostnet1"
    assert netdevs[2].startswith(f"socket,udp=127.0.0.1:{udp},localaddr=127.0.0.1:")
    assert netdevs[3] == "socket,mcast=230.0.0.1:5558,id=hostnet3"
    assert device(argv, "net0")["netdev"] == "hostnet0"
    assert {"net0", "net1", "net2"} <= _launch(_without_nic(argv, 3), tmp_path)
    out = _roundtrip(caps, xml)
    assert f"<source address='127.0.0.1' port='{port}'/>" in out
    assert "<local address='127.0.0.1' port=" in out
    for bad in (
        "<interface type='udp'><source address='127.0.0.1' port='1'/></interface>",
        "<interface type='mcast'><source address='10.0.0.1' port='1'/></interface>",
        "<interface type='client'><source port='1'/></interface>",
        "<interface type='server'><source address='::1' port='1'/></interface>",
    ):
        with pytest.raises(XMLError):
            argv_of(caps, dom(bad))


def _without_nic(argv: list[str], index: int) -> list[str]:
    """``argv`` less NIC ``index`` (a multicast route this host may lack)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if (arg == "-netdev" and f"id=hostnet{index}" in nxt) or (
            arg == "-device" and f'"id":"net{index}"' in nxt
        ):
            skip = True
            continue
        out.append(arg)
    return out


def test_vhostuser_interface(caps: Caps) -> None:
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    xml = dom(
        "<interface type='vhostuser'><source type='unix' path='/tmp/vhost.sock' mode='server'/>"
        "</interface>",
        body=shared,
    )
    argv = argv_of(caps, xml)
    assert opts(argv, "-chardev")[1] == "socket,id=charnet0,path=/tmp/vhost.sock,server=on"
    assert opts(argv, "-netdev") == ["vhost-user,chardev=charnet0,id=hostnet0"]
    assert device(argv, "net0")["driver"] == "virtio-net-pci"
    assert "<model type='virtio'/>" in _roundtrip(caps, xml)
    # No launch: QEMU waits for the vhost-user backend, and this host has none.
    with pytest.raises(ConfigUnsupportedError, match="shared memory"):
        argv_of(caps, xml.replace(shared, ""))
    with pytest.raises(ConfigUnsupportedError, match="virtio queues"):
        argv_of(caps, xml.replace("</interface>", "<model type='e1000'/></interface>"))
