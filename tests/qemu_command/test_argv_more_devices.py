"""Command lines of the last of libvirt's x86 devices (issue 12): USB, floppy and LUN disks,
socket and vhost-user NICs, NVDIMM/virtio-pmem/SGX memory, virtio-crypto, pstore, guestfwd
channels, vmvga/ramfb video and the local displays (egl-headless, SDL, D-Bus).

Each test gives its XML, the arguments libvirt 9 builds for it on QEMU 7.2, a round trip
through dumpxml validated against libvirt's schema, and a launch of the argv paused under
the real QEMU where this host allows; what the host lacks is refused at start, saying so.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu_launch import QemuRefused, launch_paused, launched_peripherals

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.command_extra import display_env
from asvirt.drivers.qemu.helpers import check_host_devices
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import Caps
from tests.helpers import (
    TAP_NIC_SOURCES,
    argv_of,
    blockdevs,
    device,
    dom,
    dumpxml_roundtrip,
    opts,
    qemu_img,
    vhost_user_backend,
)

pytestmark = pytest.mark.qemu


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
    assert {"fdc0-0-0", "fdc0-0-1"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
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
    assert {"usb-disk0", "usb-disk1", "input0"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
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
    assert "device='lun'" in dumpxml_roundtrip(caps, xml)
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


def test_scsi_lun_sgio_and_rawio(caps: Caps, tmp_path: Path) -> None:
    lun = (
        "<controller type='scsi' model='virtio-scsi'/>"
        "<disk type='block' device='lun' rawio='yes' sgio='{sgio}'>"
        "<source dev='/dev/sg-asvirt-none'/><target dev='sda' bus='scsi'/></disk>"
    )
    for sgio in ("filtered", "unfiltered"):
        xml = dom(lun.format(sgio=sgio))
        out = dumpxml_roundtrip(caps, xml)
        assert f"<disk type='block' device='lun' rawio='yes' sgio='{sgio}'>" in out
        # Neither is QEMU's to know: the kernel filters SG_IO, QEMU's capabilities allow
        # raw I/O (see test_qemu_confinement); the device is scsi-block all the same.
        assert device(argv_of(caps, xml, tmp_path), "scsi0-0-0-0")["driver"] == "scsi-block"
    for bad in (
        "<disk type='file' device='disk' rawio='no'><source file='/x'/><target dev='sda' "
        "bus='scsi'/></disk>",
        "<disk type='block' device='disk' sgio='filtered'><source dev='/x'/><target dev='sda' "
        "bus='scsi'/></disk>",
    ):
        with pytest.raises(XMLError, match="can be used only with device='lun'"):
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
    assert {"net0", "net1", "net2"} <= launched_peripherals(_without_nic(argv, 3), tmp_path)
    out = dumpxml_roundtrip(caps, xml)
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
    assert "<model type='virtio'/>" in dumpxml_roundtrip(caps, xml)
    # No launch: QEMU waits for the vhost-user backend, and this host has none.
    with pytest.raises(ConfigUnsupportedError, match="shared memory"):
        argv_of(caps, xml.replace(shared, ""))
    # Shared per NUMA cell does as well, if every cell is (libvirt's rule).
    cells = "<cell id='0' cpus='0' memory='64' unit='MiB' memAccess='shared'/>{}"
    for second, ok in (("memAccess='shared'", True), ("", False)):
        numa = cells.format(f"<cell id='1' cpus='1' memory='64' unit='MiB' {second}/>")
        per_cell = xml.replace(shared, f"<vcpu>2</vcpu><cpu><numa>{numa}</numa></cpu>")
        if ok:
            assert opts(argv_of(caps, per_cell), "-netdev")
        else:
            with pytest.raises(ConfigUnsupportedError, match="shared memory"):
                argv_of(caps, per_cell)
    with pytest.raises(ConfigUnsupportedError, match="virtio queues"):
        argv_of(caps, xml.replace("</interface>", "<model type='e1000'/></interface>"))


def test_ethernet_interface(caps: Caps) -> None:
    xml = dom(
        "<interface type='ethernet'><mac address='52:54:00:12:34:56'/>"
        "<target dev='mytap0' managed='no'/><model type='virtio'/></interface>"
    )
    assert "<target dev='mytap0' managed='no'/>" in dumpxml_roundtrip(caps, xml)
    # Shown without the descriptor a start passes (tests/test_network_host.py starts one).
    argv = argv_of(caps, xml)
    assert opts(argv, "-netdev") == ["tap,id=hostnet0,ifname=mytap0,script=no,downscript=no"]
    assert device(argv, "net0")["netdev"] == "hostnet0"
    with pytest.raises(XMLError, match="missing attribute 'dev'"):
        argv_of(caps, dom("<interface type='ethernet'><target managed='no'/></interface>"))
    # type='direct': a macvtap, made at start (tests/test_network_host.py); vepa by default.
    direct = dom("<interface type='direct'><source dev='eth0'/><model type='virtio'/></interface>")
    assert "<source dev='eth0' mode='vepa'/>" in dumpxml_roundtrip(caps, direct)
    # Shown without the macvtap's descriptors a start passes (QEMU cannot make a macvtap):
    # named for what they are, not as a tap QEMU would make on no host interface.
    assert opts(argv_of(caps, direct), "-netdev") == ["tap,fd=macvtap-eth0,id=hostnet0"]
    with pytest.raises(XMLError, match="mode"):
        argv_of(caps, direct.replace("dev='eth0'", "dev='eth0' mode='bogus'"))


@pytest.mark.parametrize("source", TAP_NIC_SOURCES)
def test_multiqueue_tap_interfaces(caps: Caps, source: str) -> None:
    from asvirt.drivers.qemu.command import MonitorSpec, build_command

    xml = dom(f"{source}<model type='virtio'/><driver queues='4'/></interface>")
    assert "<driver queues='4'/>" in dumpxml_roundtrip(caps, xml)
    # As libvirt: a descriptor per queue pair (a start opens the tap or macvtap four times:
    # tests/test_network_host.py), and an MSI-X vector per queue plus two.
    d = prepare_domain(parse_domain_xml(xml), caps)
    argv = build_command(d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21, 22, 23, 24]})
    assert opts(argv, "-netdev") == ["tap,fds=21:22:23:24,id=hostnet0"]
    nic = device(argv, "net0")
    assert (nic["driver"], nic["mq"], nic["vectors"]) == ("virtio-net-pci", True, 10)
    # One queue: the single descriptor, no multiqueue.
    one = build_command(d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21]})
    assert opts(one, "-netdev") == ["tap,fd=21,id=hostnet0"]
    # Without descriptors (domxml-to-native), QEMU would make the queues itself; but for a
    # macvtap, which QEMU cannot make, the descriptors are shown by what they are.
    shown = opts(argv_of(caps, xml), "-netdev")[0]
    if "direct" in source:
        assert (
            shown
            == "tap,fds=macvtap-eth0-q0:macvtap-eth0-q1:macvtap-eth0-q2:macvtap-eth0-q3,id=hostnet0"
        )
    else:
        assert shown.endswith(",queues=4")
    with pytest.raises(ConfigUnsupportedError, match="only supported for virtio NICs"):
        argv_of(caps, xml.replace("virtio", "e1000"))


@pytest.fixture
def vhost_backend(tmp_path: Path) -> Iterator[Path]:
    with vhost_user_backend(tmp_path) as sock:
        yield sock


def test_vhostuser_queues_and_reconnect_with_a_real_backend(
    caps: Caps, tmp_path: Path, vhost_backend: Path
) -> None:
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    xml = dom(
        f"<interface type='vhostuser'><source type='unix' path='{vhost_backend}' mode='client'>"
        "<reconnect enabled='yes' timeout='3'/></source><model type='virtio'/>"
        "<driver queues='2'/></interface>",
        body=shared,
    )
    out = dumpxml_roundtrip(caps, xml)
    assert "<reconnect enabled='yes' timeout='3'/>" in out and "<driver queues='2'/>" in out
    argv = argv_of(caps, xml, tmp_path)
    assert f"socket,id=charnet0,path={vhost_backend},reconnect=3" in opts(argv, "-chardev")
    assert opts(argv, "-netdev") == ["vhost-user,chardev=charnet0,queues=2,id=hostnet0"]
    net = device(argv, "net0")
    assert (net["driver"], net["mq"], net["vectors"]) == ("virtio-net-pci", True, 6)
    # QEMU, as the client, only comes up once the vhost-user handshake with the backend is
    # done; then its NIC has the queues asked for.
    got = launch_paused(
        argv,
        tmp_path,
        extra={"qom-get": {"path": "/machine/peripheral/net0", "property": "vectors"}},
    )
    assert got.extra["qom-get"] == 6
    for bad, why in (
        ("mode='server'><reconnect enabled='yes' timeout='3'/>", "unsupported 'server' mode"),
        ("mode='client'><reconnect enabled='yes'/>", "needs a timeout"),
    ):
        with pytest.raises(XMLError, match=why):
            argv_of(caps, xml.replace("mode='client'><reconnect enabled='yes' timeout='3'/>", bad))
    with pytest.raises(ConfigUnsupportedError, match="multiqueue is for tap, macvtap"):
        argv_of(caps, dom("<interface type='user'><driver queues='2'/></interface>"))


# -- memory devices ------------------------------------------------------------------------------

_NUMA = (
    "<maxMemory slots='4' unit='GiB'>4</maxMemory><features><acpi/></features>"
    "<cpu><numa><cell id='0' cpus='0' memory='128' unit='MiB'/></numa></cpu>"
)


def test_nvdimm_and_virtio_pmem(caps: Caps, tmp_path: Path) -> None:
    nv, pm = tmp_path / "nvdimm", tmp_path / "pmem"
    xml = dom(
        f"<memory model='nvdimm' access='private'><source><path>{nv}</path>"
        "<alignsize unit='KiB'>2048</alignsize></source><target><size unit='KiB'>15360</size>"
        "<node>0</node><label><size unit='KiB'>128</size></label><readonly/></target></memory>"
        f"<memory model='nvdimm'><source><path>{nv}-b</path><pmem/></source>"
        "<target><size unit='MiB'>4</size><node>0</node></target></memory>"
        f"<memory model='virtio-pmem'><source><path>{pm}</path></source>"
        "<target><size unit='MiB'>16</size></target></memory>",
        body=_NUMA,
    )
    argv = argv_of(caps, xml, tmp_path)
    assert "nvdimm=on" in opts(argv, "-machine")[0].split(",")
    assert opts(argv, "-m") == ["size=131072k,slots=4,maxmem=4194304k"]
    objects = [json.loads(o) for o in opts(argv, "-object")]
    # libvirt rounds memory modules up to 2 MiB at start (15 MiB -> 16 MiB).
    assert {
        "qom-type": "memory-backend-file",
        "id": "memnvdimm0",
        "mem-path": str(nv),
        "share": False,
        "prealloc": True,
        "size": 16 << 20,
        "align": 2 << 20,
    } in objects
    assert {  # on real persistent memory: no preallocation, and QEMU is told so
        "qom-type": "memory-backend-file",
        "id": "memnvdimm1",
        "mem-path": f"{nv}-b",
        "size": 4 << 20,
        "pmem": True,
    } in objects
    assert {  # virtio-pmem writes through to its file: shared
        "qom-type": "memory-backend-file",
        "id": "memvirtiopmem0",
        "mem-path": str(pm),
        "share": True,
        "size": 16 << 20,
    } in objects
    assert device(argv, "nvdimm0") == {
        "driver": "nvdimm",
        "node": 0,
        "label-size": 128 << 10,
        "unarmed": True,
        "memdev": "memnvdimm0",
        "id": "nvdimm0",
        "slot": 0,
    }
    assert device(argv, "nvdimm1")["slot"] == 1
    assert device(argv, "virtiopmem0")["driver"] == "virtio-pmem-pci"
    # QEMU's pmem=on needs a DAX file (libdaxctl): launch the two that a plain file backs.
    plain = [a.replace(',"pmem":true', "") for a in argv]
    assert {"nvdimm0", "nvdimm1", "virtiopmem0"} <= launched_peripherals(plain, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<label>\n          <size unit='KiB'>128</size>\n        </label>" in out
    assert "<address type='dimm' slot='0'/>" in out
    assert "<pmem/>" in out and "<readonly/>" in out
    with pytest.raises(ConfigUnsupportedError, match="through ACPI"):
        argv_of(caps, xml.replace("<features><acpi/></features>", ""))
    with pytest.raises(ConfigUnsupportedError, match="at least 128 KiB"):
        argv_of(caps, xml.replace("<size unit='KiB'>128</size>", "<size unit='KiB'>64</size>"))
    with pytest.raises(XMLError, match="needs <source><path>"):
        argv_of(caps, dom("<memory model='virtio-pmem'><target><size>1</size></target></memory>"))


def test_sgx_epc_argv_and_refused_without_sgx(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<memory model='sgx-epc'><target><size unit='MiB'>64</size><node>0</node></target>"
        "</memory>",
        dtype="kvm",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    machine = opts(argv, "-machine")[0].split(",")
    assert "sgx-epc.0.memdev=memepc0" in machine and "sgx-epc.0.node=0" in machine
    assert '{"qom-type":"memory-backend-epc","id":"memepc0","prealloc":true,"size":67108864}' in (
        opts(argv, "-object")
    )
    assert opts(argv, "-m") == ["size=131072k"]  # the enclave memory is no guest RAM
    assert "<memory model='sgx-epc'>" in dumpxml_roundtrip(caps, xml)
    if not Path("/dev/sgx_vepc").exists():
        with pytest.raises(OperationFailedError, match="/dev/sgx_vepc is missing"):
            check_host_devices(prepare_domain(parse_domain_xml(xml), caps))
    with pytest.raises(OperationFailedError, match="QEMU cannot emulate SGX"):
        check_host_devices(prepare_domain(parse_domain_xml(xml.replace("'kvm'", "'qemu'")), caps))


# -- crypto, pstore --------------------------------------------------------------------------------


def test_virtio_crypto(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<crypto model='virtio' type='qemu'><backend model='builtin' queues='1'/></crypto>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert '{"qom-type":"cryptodev-backend-builtin","id":"objcrypto0","queues":1}' in opts(
        argv, "-object"
    )
    crypto = device(argv, "crypto0")
    assert (crypto["driver"], crypto["cryptodev"]) == ("virtio-crypto-pci", "objcrypto0")
    assert crypto["bus"].startswith("pci.")  # a PCIe device, on a root port
    assert "crypto0" in launched_peripherals(argv, tmp_path)
    assert "<backend model='builtin' queues='1'/>" in dumpxml_roundtrip(caps, xml)
    with pytest.raises(ConfigUnsupportedError, match="one queue"):
        argv_of(caps, xml.replace("queues='1'", "queues='2'"))
    lkcf = xml.replace("builtin", "lkcf")
    if caps.has_object("cryptodev-backend-lkcf"):
        assert "cryptodev-backend-lkcf" in opts(argv_of(caps, lkcf), "-object")[0]
    else:  # QEMU 7.2 has no kernel-crypto backend (it came in 8.0): refused, saying so
        with pytest.raises(ConfigUnsupportedError, match="cryptodev-backend-lkcf"):
            argv_of(caps, lkcf)


def test_pstore_acpi_erst(caps: Caps, tmp_path: Path) -> None:
    erst = tmp_path / "erst"
    xml = dom(
        f"<pstore backend='acpi-erst'><path>{erst}</path><size unit='KiB'>64</size></pstore>",
        body="<features><acpi/></features>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-object")[-1] == (
        f'{{"qom-type":"memory-backend-file","id":"mempstore0","mem-path":"{erst}",'
        '"size":65536,"share":true}'
    )
    ps = device(argv, "pstore0")
    assert (ps["driver"], ps["memdev"]) == ("acpi-erst", "mempstore0")
    assert "pstore0" in launched_peripherals(argv, tmp_path)
    assert erst.stat().st_size == 64 << 10  # the records' file, kept with the domain
    assert "<size unit='KiB'>64</size>" in dumpxml_roundtrip(caps, xml)
    with pytest.raises(ConfigUnsupportedError, match="ACPI"):
        argv_of(caps, xml.replace("<features><acpi/></features>", ""))


# -- guestfwd channels -----------------------------------------------------------------------------


def test_guestfwd_channels(caps: Caps, tmp_path: Path) -> None:
    sock = tmp_path / "fwd.sock"
    xml = dom(
        f"<channel type='unix'><source mode='bind' path='{sock}'/>"
        "<target type='guestfwd' address='10.0.2.1' port='4600'/></channel>"
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert f"socket,id=charchannel0,path={sock},server=on,wait=off" in opts(argv, "-chardev")
    assert opts(argv, "-netdev") == [
        "user,guestfwd=tcp:10.0.2.1:4600-chardev:charchannel0,id=channel0"
    ]
    assert device(argv, "channel1")["nr"] == 1  # the virtio channel keeps its port
    assert {"channel1"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<target type='guestfwd' address='10.0.2.1' port='4600'/>" in out
    with pytest.raises(ConfigUnsupportedError, match=r"10\.0\.2\.0/24"):
        argv_of(caps, xml.replace("10.0.2.1", "10.0.2.2"))
    with pytest.raises(XMLError, match="address and a port"):
        argv_of(caps, xml.replace(" port='4600'", ""))


# -- video and local displays ----------------------------------------------------------------------


def test_vmvga_and_ramfb_video(caps: Caps, tmp_path: Path) -> None:
    xml = dom("<graphics type='vnc'/><video><model type='vmvga'/></video>")
    argv = argv_of(caps, xml, tmp_path)
    assert device(argv, "video0") == {
        "driver": "vmware-svga",
        "id": "video0",
        "vgamem_mb": 16,
        "bus": "pci.0",
        "addr": "0x2",
    }
    assert "video0" in launched_peripherals(argv, tmp_path)
    assert "<model type='vmvga' vram='16384' heads='1' primary='yes'/>" in dumpxml_roundtrip(
        caps, xml
    )
    ramfb = dom("<graphics type='vnc'/><video><model type='ramfb'/></video>", machine="q35")
    argv = argv_of(caps, ramfb, tmp_path)
    assert device(argv, "video0") == {"driver": "ramfb", "id": "video0"}  # no PCI address
    assert "video0" in launched_peripherals(argv, tmp_path)
    assert "<address" not in dumpxml_roundtrip(caps, ramfb).split("<video>")[1].split("</video>")[0]


def test_local_displays(caps: Caps, tmp_path: Path) -> None:
    xml = dom("<graphics type='dbus' p2p='yes'/>")
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-display") == ["dbus,p2p=on"]  # and no '-display none'
    assert "video0" in launched_peripherals(argv, tmp_path)  # p2p: clients come later, over QMP
    assert "<graphics type='dbus' p2p='yes'/>" in dumpxml_roundtrip(caps, xml)
    bus = dom("<graphics type='dbus' address='unix:path=/run/x.bus'><gl enable='no'/></graphics>")
    assert opts(argv_of(caps, bus), "-display") == ["dbus,addr=unix:path=/run/x.bus,gl=off"]
    egl = dom(
        "<graphics type='egl-headless'><gl rendernode='/dev/dri/renderD128'/></graphics>"
        "<graphics type='vnc'/><video><model type='virtio'/></video>"
    )
    argv = argv_of(caps, egl, tmp_path)
    assert opts(argv, "-display") == ["egl-headless,rendernode=/dev/dri/renderD128"]
    assert opts(argv, "-vnc")
    assert "<gl rendernode='/dev/dri/renderD128'/>" in dumpxml_roundtrip(caps, egl)
    sdl = dom("<graphics type='sdl' fullscreen='yes'><gl enable='yes'/></graphics>")
    argv = argv_of(caps, sdl, tmp_path)
    assert opts(argv, "-display") == ["sdl,gl=on"] and "-full-screen" in argv
    assert "<graphics type='sdl' fullscreen='yes'>" in dumpxml_roundtrip(caps, sdl)
    x11 = dom("<graphics type='sdl' display=':0.1' xauth='/root/.Xauthority'/>")
    assert display_env(prepare_domain(parse_domain_xml(x11), caps)) == {
        "DISPLAY": ":0.1",
        "XAUTHORITY": "/root/.Xauthority",
    }
    assert "display=':0.1' xauth='/root/.Xauthority'" in dumpxml_roundtrip(caps, x11)
    # What this host lacks is refused at start, naming it (the argv above stays right).
    if not Path("/dev/dri/renderD128").exists():
        with pytest.raises(OperationFailedError, match="renderD128"):
            check_host_devices(prepare_domain(parse_domain_xml(egl), caps))
    window = dom("<graphics type='sdl'/>")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        with pytest.raises(OperationFailedError, match="no X or Wayland display"):
            check_host_devices(prepare_domain(parse_domain_xml(window), caps))


def test_usb_disks_behind_a_hub_come_after_it(caps: Caps, tmp_path: Path) -> None:
    # piix3-uhci has two ports: a third USB device needs a hub, which must exist before
    # the disk plugged into it (found by the hypothesis launches).
    img = tmp_path / "d.img"
    qemu_img("create", "-f", "raw", img, "1M")
    disks = "".join(
        f"<disk type='file' device='disk'><source file='{img}'/><readonly/><shareable/>"
        f"<target dev='sd{c}' bus='usb'/></disk>"
        for c in "abc"
    )
    argv = argv_of(caps, dom(disks), tmp_path)
    ids = [json.loads(d).get("id") for d in opts(argv, "-device")]
    assert ids.index("hub0") < min(ids.index(f"usb-disk{n}") for n in range(3))
    assert {"hub0", "usb-disk0", "usb-disk1", "usb-disk2"} <= launched_peripherals(argv, tmp_path)
