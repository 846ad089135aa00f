"""postparse_domain: libvirt's hypervisor-independent defaults and checks (no QEMU needed)."""

from __future__ import annotations

import functools
import re

import pytest
from lxml import etree

from asvirt.conf.addresses import PCIAddress
from asvirt.conf.domain import DomainDef, parse_domain_xml
from asvirt.conf.postparse import postparse_domain
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests import helpers
from tests.caps import CONFORMANCE

#: The shared test domain as a user might write it: no machine, no UUID.
dom = functools.partial(helpers.dom, machine=None, uuid=None)


def post(xml: str) -> DomainDef:
    d = postparse_domain(parse_domain_xml(xml))
    # Stable: what it produced, read back and post-parsed again, is the same document.
    assert postparse_domain(parse_domain_xml(d.to_xml())).to_xml() == d.to_xml()
    return d


def test_input_is_left_alone() -> None:
    d = parse_domain_xml(dom("<serial type='pty'/>"))
    before = d.to_xml()
    postparse_domain(d)
    assert d.to_xml() == before and not d.consoles and d.current_memory_kib == 0


def test_it_adds_nothing_only_a_driver_knows() -> None:
    d = post(dom())
    # No machine, emulator, CPU model, controllers, balloon, audio or PS/2 devices: QEMU's.
    assert (d.os.machine, d.emulator, d.cpu) == (None, None, None)
    assert (d.controllers, d.inputs, d.audios, d.memballoon) == ([], [], [], None)


# -- memory and vCPUs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "kib"),
    [
        ("", 131072),
        ("<currentMemory>0</currentMemory>", 131072),
        ("<currentMemory unit='GiB'>4</currentMemory>", 131072),
        ("<currentMemory unit='MiB'>64</currentMemory>", 65536),
    ],
)
def test_current_memory(current: str, kib: int) -> None:
    d = post(dom(body=current))
    assert d.current_memory_kib == kib
    assert f"<currentMemory unit='KiB'>{kib}</currentMemory>" in d.to_xml()


def test_cpu_topology_is_completed_and_checked() -> None:
    body = "<vcpu>4</vcpu><cpu><topology sockets='2' cores='2' threads='1'/></cpu>"
    d = post(dom(body=body))
    assert d.cpu is not None and d.cpu.topology is not None
    assert (d.cpu.topology.dies, d.cpu.topology.clusters) == (1, 1)
    assert d.cpu.model is None  # the model is the driver's business
    with pytest.raises(XMLError, match="does not match the vcpu count 3"):
        post(dom(body=body.replace("4", "3")))


def test_vcpus_over_the_maximum() -> None:
    d = parse_domain_xml(dom(body="<vcpu>2</vcpu>"))
    d.vcpus = 3
    with pytest.raises(XMLError, match="exceeds the maximum"):
        postparse_domain(d)


# -- boot order, controllers, inputs, disks, interfaces -------------------------------------------


def test_boot_orders() -> None:
    disk = "<disk type='file'><source file='/{n}'/><target dev='vd{n}'/><boot order='{o}'/></disk>"
    with pytest.raises(XMLError, match="unique"):
        post(dom(disk.format(n="a", o=1) + disk.format(n="b", o=1)))
    with pytest.raises(XMLError, match="cannot be used together"):
        body = "<os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>"
        post(dom(disk.format(n="a", o=1)).replace("<os><type arch='x86_64'>hvm</type></os>", body))


def test_duplicate_controllers_but_usb_companions() -> None:
    with pytest.raises(XMLError, match="more than one scsi controller with index 0"):
        post(dom("<controller type='scsi' index='0'/><controller type='scsi' index='0'/>"))
    d = post(
        dom(
            "<controller type='usb' index='0' model='ich9-ehci1'/>"
            "<controller type='usb' index='0' model='ich9-uhci1'/>"
        )
    )
    assert [(c.type, c.index) for c in d.controllers] == [("usb", 0), ("usb", 0)]


def test_input_buses() -> None:
    d = post(dom("<input type='mouse'/><input type='keyboard'/><input type='tablet'/>"))
    assert [(i.type, i.bus) for i in d.inputs] == [
        ("mouse", "ps2"),
        ("keyboard", "ps2"),
        ("tablet", "usb"),
    ]
    d = post(dom("<input type='mouse'/>", arch="aarch64"))  # no i8042 off x86
    assert d.inputs[0].bus == "usb"


def test_disks() -> None:
    d = post(
        dom(
            "<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
            "<disk type='file'><source file='/b'/><target dev='sdb'/></disk>"
            "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
        )
    )
    assert [(x.target, x.bus, x.address) for x in d.disks] == [
        ("vda", "virtio", None),
        ("sdb", "scsi", None),  # drive addresses are the driver's
        ("hdc", "ide", None),
    ]
    with pytest.raises(XMLError, match="more than one disk with target 'vda'"):
        post(dom("<disk type='file'><source file='/a'/><target dev='vda'/></disk>" * 2))


def test_macs() -> None:
    d = post(
        dom(
            "<interface type='user'/>"
            "<interface type='user'><mac address='52:54:00:00:00:01'/></interface>"
        )
    )
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", d.interfaces[0].mac or "")
    assert d.interfaces[0].mac != d.interfaces[1].mac == "52:54:00:00:00:01"
    assert d.interfaces[0].model is None  # the model is the driver's
    with pytest.raises(XMLError, match="used by more than one interface"):
        post(dom("<interface type='user'><mac address='52:54:00:00:00:01'/></interface>" * 2))


# -- serial ports and consoles -------------------------------------------------------------------


def test_serial_ports_take_the_lowest_free_port() -> None:
    d = post(
        dom(
            "<serial type='pty'><target port='0'/></serial><serial type='pty'/>"
            "<serial type='null'/><serial type='pty'><target port='1'/></serial>"
        )
    )
    assert [c.target_port for c in d.serials] == [0, 2, 3, 1]
    assert all(c.target_type is None for c in d.serials)  # isa-serial is QEMU's x86 default
    with pytest.raises(XMLError, match="same target port"):
        post(dom("<serial type='pty'><target port='1'/></serial>" * 2))


def test_a_serial_port_gets_the_console_that_mirrors_it() -> None:
    d = post(dom("<serial type='file'><source path='/tmp/s.log'/></serial>"))
    [con] = d.consoles
    assert (con.type, con.source_path, con.target_type, con.target_port) == (
        "file",
        "/tmp/s.log",
        "serial",
        0,
    )
    assert con.is_compat_console(d.serials)


def test_a_serial_console_alone_gets_its_serial_port() -> None:
    d = post(dom("<console type='pty'/><console type='pty'/>"))
    assert [(c.kind, c.type, c.target_port) for c in d.serials] == [("serial", "pty", 0)]
    assert [c.target_type for c in d.consoles] == ["serial", "virtio"]
    with pytest.raises(ConfigUnsupportedError, match="only the first <console>"):
        post(dom("<console type='pty'/><console type='pty'><target type='serial'/></console>"))


def test_a_virtio_console_is_not_a_serial_port() -> None:
    d = post(dom("<console type='pty'><target type='virtio'/></console>"))
    assert d.serials == [] and d.consoles[0].target_type == "virtio"
    assert d.controllers == []  # its virtio-serial controller is an implicit QEMU device


# -- video and the rest ---------------------------------------------------------------------------


def test_videos() -> None:
    d = post(
        dom("<video><model type='vga'/></video><video><model type='qxl' primary='yes'/></video>")
    )
    assert [(v.model, v.primary, v.heads, v.vram, v.ram, v.vgamem) for v in d.videos] == [
        ("qxl", True, 1, 65536, 65536, None),  # the primary first; vgamem is QEMU's default
        ("vga", None, 1, 16384, None, None),
    ]
    d = post(dom("<video/>"))
    assert [(v.model, v.primary, v.heads, v.vram) for v in d.videos] == [(None, True, 1, None)]
    with pytest.raises(XMLError, match="only one video device can be primary"):
        post(dom("<video><model type='vga' primary='yes'/></video>" * 2))
    with pytest.raises(XMLError, match="must be the only one"):
        post(dom("<video><model type='none'/></video><video><model type='vga'/></video>"))


def test_watchdog_rng_and_graphics_defaults() -> None:
    d = post(
        dom(
            "<graphics type='vnc'/><watchdog model='i6300esb'/>"
            "<rng model='virtio'><backend model='random'/></rng>"
        )
    )
    assert d.watchdogs[0].action == "reset"
    assert d.rngs[0].backend_path == "/dev/random"
    gfx = d.graphics[0]
    assert (gfx.port, gfx.autoport, [lst.type for lst in gfx.listens]) == (-1, True, ["address"])
    assert d.videos == []  # the implicit video, and its model, are the driver's


def test_duplicate_audio_ids_and_user_aliases() -> None:
    with pytest.raises(XMLError, match="same id"):
        post(dom("<audio id='1' type='none'/><audio id='1' type='none'/>"))
    nic = "<interface type='user'><alias name='ua-x'/></interface>"
    with pytest.raises(XMLError, match="same user alias"):
        post(dom(nic + "<serial type='pty'><alias name='ua-x'/></serial>"))


def test_explicit_addresses_are_kept() -> None:
    d = post(
        dom(
            "<interface type='user'><address type='pci' domain='0' bus='0' slot='5' "
            "function='0'/></interface>"
        )
    )
    assert d.interfaces[0].address == PCIAddress(0, 0, 5, 0)


SCHEMA = CONFORMANCE / "schemas" / "domain.rng"


def test_output_validates_against_libvirt_schema() -> None:
    if not SCHEMA.exists():
        pytest.skip(f"libvirt's schema is not available ({SCHEMA} is missing)")
    schema = etree.RelaxNG(file=str(SCHEMA))
    d = post(
        dom(
            "<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
            "<interface type='user'/><serial type='pty'/><graphics type='vnc'/>"
            "<video><model type='vga'/></video><input type='tablet'/>"
            "<watchdog model='i6300esb'/><rng model='virtio'><backend model='random'/></rng>",
            body="<vcpu>2</vcpu><cpu><topology sockets='1' cores='2' threads='1'/></cpu>",
        )
    )
    assert schema.validate(etree.fromstring(d.to_xml().encode())), schema.error_log.last_error
