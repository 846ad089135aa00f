"""prepare_domain: the QEMU driver's define-time defaults, implicit devices, addresses, aliases.

These use the capabilities probed from the real QEMU on this machine (no guest is started).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from asvirt.conf.addresses import DriveAddress, PCIAddress, USBAddress, VirtioSerialAddress
from asvirt.conf.domain import DomainDef, parse_domain_xml
from asvirt.drivers.qemu.capabilities import QemuCapabilities
from asvirt.drivers.qemu.postparse import parse_prepared_xml, prepare_domain
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests.helpers import dom


def prep(caps: QemuCapabilities, xml: str) -> DomainDef:
    d = prepare_domain(parse_domain_xml(xml), caps)
    # Whatever prepare produces must be stable: define -> dumpxml -> define changes nothing.
    again = prepare_domain(parse_domain_xml(d.to_xml()), caps)
    assert again.to_xml() == d.to_xml()
    assert parse_domain_xml(d.to_xml()).to_xml() == d.to_xml()
    return d


def pci(dev: object) -> tuple[int, int, int]:
    addr = dev.address  # type: ignore[attr-defined]
    assert isinstance(addr, PCIAddress), addr
    return (addr.bus, addr.slot, addr.function)


def ctl(d: DomainDef, kind: str, index: int = 0):
    found = d.controller(kind, index)
    assert found is not None, f"no {kind} controller {index}"
    return found


# -- machine and CPU -----------------------------------------------------------------------------


def test_machine_alias_is_expanded(caps: QemuCapabilities) -> None:
    d = prep(caps, dom())
    assert d.machine == caps.canonical_machine("pc") != "pc"
    assert d.emulator == caps.binary
    assert prep(caps, dom(machine="q35")).machine == caps.canonical_machine("q35")


def test_missing_machine_gets_the_default(caps: QemuCapabilities) -> None:
    xml = dom().replace(" machine='pc'", "")
    default = caps.default_machine()
    assert default is not None
    assert prep(caps, xml).machine == default.name


@pytest.mark.parametrize("machine", ["pc-i440fx-0.1", "virt", "isapc", "microvm"])
def test_unknown_or_unsupported_machine(caps: QemuCapabilities, machine: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match="machine type"):
        prepare_domain(parse_domain_xml(dom(machine=machine)), caps)


def test_wrong_arch(caps: QemuCapabilities) -> None:
    with pytest.raises(ConfigUnsupportedError, match="aarch64"):
        prepare_domain(parse_domain_xml(dom().replace("x86_64", "aarch64")), caps)


def test_default_cpu_is_named_like_libvirt(caps: QemuCapabilities) -> None:
    d = prep(caps, dom())
    assert d.cpu is not None
    assert (d.cpu.mode, d.cpu.match, d.cpu.check, d.cpu.model, d.cpu.fallback) == (
        "custom",
        "exact",
        "none",
        "qemu64",
        "forbid",
    )


def test_cpu_models_and_modes(caps: QemuCapabilities) -> None:
    d = prep(caps, dom(body="<cpu mode='custom'><model>core2duo</model></cpu>", dtype="kvm"))
    assert d.cpu is not None and (d.cpu.check, d.cpu.fallback) == ("partial", "allow")
    with pytest.raises(ConfigUnsupportedError, match="not-a-cpu"):
        prep(caps, dom(body="<cpu><model>not-a-cpu</model></cpu>"))
    with pytest.raises(ConfigUnsupportedError, match="host-passthrough"):
        prep(caps, dom(body="<cpu mode='host-passthrough'/>"))
    d = prep(caps, dom(body="<cpu mode='host-passthrough'/>", dtype="kvm"))
    assert d.cpu is not None and (d.cpu.migratable, d.cpu.check) == ("on", "none")


def test_topology_must_match_vcpus(caps: QemuCapabilities) -> None:
    body = "<vcpu>6</vcpu><cpu><topology sockets='3' cores='2' threads='1'/></cpu>"
    d = prep(caps, dom(body=body))
    assert d.cpu is not None and d.cpu.topology is not None
    assert (d.cpu.topology.dies, d.cpu.topology.clusters) == (1, 1)
    with pytest.raises(XMLError, match="topology"):
        prep(caps, dom(body=body.replace("6", "4")))


def test_kvm_domains_prepare_without_kvm(caps: QemuCapabilities) -> None:
    # Defining a KVM domain must work on a host without /dev/kvm; starting it is another matter.
    assert prep(caps, dom(dtype="kvm")).domain_type == "kvm"


# -- implicit devices -----------------------------------------------------------------------------


def test_pc_defaults_like_libvirt(caps: QemuCapabilities) -> None:
    d = prep(caps, dom())
    assert [(i.type, i.bus) for i in d.inputs] == [("mouse", "ps2"), ("keyboard", "ps2")]
    assert d.has_memballoon and pci(d.memballoon) == (0, 2, 0)
    assert [(a.id, a.type) for a in d.audios] == [(1, "none")]
    assert d.watchdogs == []
    assert [(c.type, c.index, c.model) for c in d.controllers] == [
        ("pci", 0, "pci-root"),
        ("usb", 0, "piix3-uhci"),
    ]
    assert pci(ctl(d, "usb")) == (0, 1, 2)
    # The PIIX3's IDE function is listed once a disk uses it, at its fixed address.
    d = prep(caps, dom("<disk device='cdrom'><target dev='hdc'/></disk>"))
    assert pci(ctl(d, "ide")) == (0, 1, 1)


def test_a_mouse_without_a_bus_is_the_ps2_one(caps: QemuCapabilities) -> None:
    # The generic post-parse makes it PS/2 first, so the implicit PS/2 mouse is not added
    # next to it (before the split, the guest had two PS/2 mice and two keyboards).
    d = prep(caps, dom("<input type='mouse'/><input type='keyboard'/><input type='tablet'/>"))
    assert [(i.type, i.bus) for i in d.inputs] == [
        ("mouse", "ps2"),
        ("keyboard", "ps2"),
        ("tablet", "usb"),
    ]


def test_usb_companions_of_one_model_cannot_share_an_index(caps: QemuCapabilities) -> None:
    # A USB model left out is QEMU's default: a duplicate only shows once it is chosen.
    with pytest.raises(XMLError, match="more than one usb controller with index 0"):
        prep(caps, dom("<controller type='usb' index='0'/>" * 2))
    with pytest.raises(XMLError, match="more than one usb controller with index 0"):
        prep(
            caps,
            dom("<controller type='usb' index='0'/><controller type='usb' model='piix3-uhci'/>"),
        )


def test_q35_defaults_like_libvirt(caps: QemuCapabilities) -> None:
    d = prep(caps, dom(machine="q35"))
    kinds = [(c.type, c.index, c.model) for c in d.controllers]
    assert ("pci", 0, "pcie-root") in kinds
    assert ("sata", 0, None) in kinds and ("usb", 0, "qemu-xhci") in kinds
    assert pci(ctl(d, "sata")) == (0, 0x1F, 2)
    # qemu-xhci and the balloon each get a root port, plus one spare for hotplug.
    ports = [c for c in d.controllers if c.model == "pcie-root-port"]
    assert [pci(p) for p in ports] == [(0, 1, 0), (0, 1, 1), (0, 1, 2)]
    assert ports[0].address.multifunction == "on"  # type: ignore[union-attr]
    assert [(p.chassis, p.port) for p in ports] == [(1, 8), (2, 9), (3, 10)]
    assert pci(ctl(d, "usb")) == (1, 0, 0)
    assert pci(d.memballoon) == (2, 0, 0)
    assert [(w.model, w.action) for w in d.watchdogs] == [("itco", "reset")]


def test_no_balloon_and_no_usb_when_asked(caps: QemuCapabilities) -> None:
    d = prep(caps, dom("<controller type='usb' model='none'/><memballoon model='none'/>"))
    assert not d.has_memballoon and d.memballoon is not None
    assert ctl(d, "usb").model == "none" and ctl(d, "usb").address is None
    with pytest.raises(ConfigUnsupportedError, match="USB is disabled"):
        prep(caps, dom("<controller type='usb' model='none'/><input type='tablet' bus='usb'/>"))


def test_console_compat(caps: QemuCapabilities) -> None:
    # A lone console becomes serial port 0 ...
    d = prep(caps, dom("<console type='pty'><target port='0'/></console>"))
    assert [(s.type, s.target_type, s.target_port) for s in d.serials] == [("pty", "isa-serial", 0)]
    assert d.consoles[0].alias == d.serials[0].alias == "serial0"
    # ... a lone serial gets its console ...
    d = prep(caps, dom("<serial type='file'><source path='/tmp/s.log'/></serial>"))
    assert [(c.type, c.target_type, c.source_path) for c in d.consoles] == [
        ("file", "serial", "/tmp/s.log")
    ]
    # ... and a virtio console comes after the serial one.
    d = prep(caps, dom("<serial type='pty'/><console type='pty'><target type='virtio'/></console>"))
    assert [(c.target_type, c.alias) for c in d.consoles] == [
        ("serial", "serial0"),
        ("virtio", "console1"),
    ]
    assert ctl(d, "virtio-serial").alias == "virtio-serial0"


def test_default_video_for_graphics(caps: QemuCapabilities) -> None:
    d = prep(caps, dom("<graphics type='vnc'/>"))
    assert [(v.model, v.vram, v.heads, v.primary) for v in d.videos] == [("cirrus", 16384, 1, True)]
    assert pci(d.videos[0]) == (0, 2, 0)


def test_nic_defaults(caps: QemuCapabilities) -> None:
    d = prep(caps, dom("<interface type='user'/><interface type='user'/>"))
    macs = [n.mac for n in d.interfaces]
    assert all(m and m.startswith("52:54:00:") for m in macs) and len(set(macs)) == 2
    assert [n.model for n in d.interfaces] == ["rtl8139", "rtl8139"]
    assert [n.alias for n in d.interfaces] == ["net0", "net1"]


# -- disks ---------------------------------------------------------------------------------------


def test_drive_addresses_and_controllers(caps: QemuCapabilities) -> None:
    d = prep(
        caps,
        dom(
            "<disk type='file'><source file='/a'/><target dev='hdd'/></disk>"
            "<disk type='file'><source file='/b'/><target dev='sdq'/></disk>"
            "<disk type='file' device='cdrom'><target dev='hda'/></disk>"
        ),
    )
    by_target = {x.target: x for x in d.disks}
    assert by_target["hdd"].address == DriveAddress(0, 1, 0, 1)
    assert by_target["hda"].address == DriveAddress(0, 0, 0, 0)
    assert by_target["sdq"].address == DriveAddress(1, 0, 0, 1)  # 15 ids a controller
    assert [c.model for c in d.controllers if c.type == "scsi"] == ["lsilogic", "lsilogic"]
    assert [x.alias for x in d.disks] == ["ide0-0-0", "ide0-1-1", "scsi1-0-1"]
    assert [(x.driver_name, x.format) for x in d.disks] == [("qemu", "raw")] * 3


def test_node_names_for_block_events(caps: QemuCapabilities) -> None:
    d = prep(
        caps,
        dom(
            "<disk type='file'><driver name='qemu' type='qcow2' copy_on_read='on'/>"
            "<source file='/a'/><target dev='vda'/></disk>"
            "<disk type='file'><source file='/b'/><target dev='vdb'/></disk>"
            "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
        ),
    )
    names = {x.target: x.node_names for x in d.disks}
    # libvirt numbers nodes from the last disk up: vda, vdb, hdc -> 3, 2, (1: no media).
    # Top first: the order blockdev-del takes them in.
    assert names["vda"] == ["libvirt-CoR-vda", "libvirt-3-format", "libvirt-3-storage"]
    assert names["vdb"] == ["libvirt-2-storage"]
    assert names["hdc"] == []  # no media
    # The names survive a trip through XML (a status file) without re-preparing.
    again = parse_prepared_xml(d.to_xml())
    assert {x.target: x.node_names for x in again.disks} == names
    assert [x.alias for x in again.disks] == [x.alias for x in d.disks]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("<disk><source file='/a'/><target dev='hda'/><readonly/></disk>", "read-only"),
        (
            "<disk><driver name='qemu' io='native'/><source file='/a'/><target dev='vda'/></disk>",
            "io='native' needs",
        ),
        (
            "<disk><source file='/a'/><target dev='hda'/>"
            "<address type='drive' controller='0' bus='2' target='0' unit='0'/></disk>",
            "bus=2",
        ),
        (
            "<disk><source file='/a'/><target dev='hda'/>"
            "<address type='drive' controller='1' bus='0' target='0' unit='0'/></disk>",
            "one IDE controller",
        ),
        ("<disk><source file='/a'/><target dev='vda'/><wwn>5000c50015ea71ad</wwn></disk>", "wwn"),
        ("<disk><target dev='vda'/></disk>", "no source"),
    ],
)
def test_disk_configs_qemu_would_refuse(caps: QemuCapabilities, devices: str, message: str) -> None:
    with pytest.raises(XMLError, match=message):
        prepare_domain(parse_domain_xml(dom(devices)), caps)


def test_duplicate_targets_and_addresses(caps: QemuCapabilities) -> None:
    two = "<disk><source file='/a'/><target dev='vda'/></disk>" * 2
    with pytest.raises(XMLError, match="more than one disk"):
        prep(caps, dom(two))
    same = (
        "<disk><source file='/a'/><target dev='sda'/>"
        "<address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>"
        "<disk><source file='/b'/><target dev='sdb'/>"
        "<address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>"
    )
    with pytest.raises(XMLError, match="same drive address"):
        prep(caps, dom(same))


def test_ide_is_refused_on_q35(caps: QemuCapabilities) -> None:
    with pytest.raises(ConfigUnsupportedError, match="sata"):
        prep(caps, dom("<disk><source file='/a'/><target dev='hda'/></disk>", machine="q35"))


# -- PCI addresses --------------------------------------------------------------------------------


def test_pci_order_follows_libvirt(caps: QemuCapabilities) -> None:
    d = prep(
        caps,
        dom(
            "<rng model='virtio'><backend model='random'/></rng>"
            "<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
            "<interface type='user'><model type='virtio'/></interface>"
            "<controller type='virtio-serial'/><video><model type='vga'/></video>"
            "<input type='tablet' bus='virtio'/>"
        ),
    )
    # primary video 2, then NICs, controllers, disks, balloon, rng, inputs.
    assert pci(d.videos[0]) == (0, 2, 0)
    assert pci(d.interfaces[0]) == (0, 3, 0)
    assert pci(ctl(d, "virtio-serial")) == (0, 4, 0)
    assert pci(d.disks[0]) == (0, 5, 0)
    assert pci(d.memballoon) == (0, 6, 0)
    assert pci(d.rngs[0]) == (0, 7, 0)
    tablet = next(i for i in d.inputs if i.bus == "virtio")
    assert pci(tablet) == (0, 8, 0)
    assert d.rngs[0].backend_path == "/dev/random"


def test_explicit_addresses_are_honoured_and_checked(caps: QemuCapabilities) -> None:
    d = prep(
        caps,
        dom(
            "<disk type='file'><source file='/a'/><target dev='vda'/>"
            "<address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/></disk>"
            "<memballoon model='virtio'><address type='pci' slot='2'/></memballoon>"
        ),
    )
    assert pci(d.disks[0]) == (0, 0x1F, 0) and pci(d.memballoon) == (0, 2, 0)
    clash = (
        "<disk><source file='/a'/><target dev='vda'/><address type='pci' slot='5'/></disk>"
        "<disk><source file='/b'/><target dev='vdb'/><address type='pci' slot='5'/></disk>"
    )
    with pytest.raises(XMLError, match="already in use"):
        prep(caps, dom(clash))
    with pytest.raises(XMLError, match="PIIX3"):
        prep(caps, dom("<memballoon model='virtio'><address type='pci' slot='1'/></memballoon>"))


def test_bridges_are_added_when_bus_zero_fills_up(caps: QemuCapabilities) -> None:
    disks = "".join(
        f"<disk type='file'><source file='/d{i}'/><target dev='vd{chr(97 + i // 26)}"
        f"{chr(97 + i % 26)}'/></disk>"
        for i in range(35)
    )
    d = prep(caps, dom(disks + "<memballoon model='none'/>"))
    bridges = [c for c in d.controllers if c.model == "pci-bridge"]
    assert [(b.index, pci(b), b.chassis_nr) for b in bridges] == [(1, (0, 2, 0), 1)]
    buses = [pci(x)[0] for x in d.disks]
    assert buses.count(0) == 29 and buses.count(1) == 6


def test_bus_references_add_the_missing_bridges(caps: QemuCapabilities) -> None:
    d = prep(
        caps, dom("<memballoon model='virtio'><address type='pci' bus='3' slot='4'/></memballoon>")
    )
    assert [c.index for c in d.controllers if c.model == "pci-bridge"] == [1, 2, 3]
    assert pci(d.memballoon) == (3, 4, 0)


def test_q35_conventional_pci_goes_behind_a_pcie_pci_bridge(caps: QemuCapabilities) -> None:
    d = prep(caps, dom("<interface type='user'><model type='e1000'/></interface>", machine="q35"))
    bridge = next(c for c in d.controllers if c.model == "pcie-to-pci-bridge")
    port = d.controller("pci", pci(bridge)[0])
    assert port is not None and port.model == "pcie-root-port" and port.index < bridge.index
    assert pci(d.interfaces[0]) == (bridge.index, 1, 0)


def test_usb2_companions_share_a_slot(caps: QemuCapabilities) -> None:
    d = prep(
        caps,
        dom(
            "<controller type='usb' index='0' model='ich9-ehci1'/>"
            "<controller type='usb' index='0' model='ich9-uhci2'/>"
            "<controller type='usb' index='0' model='ich9-uhci1'/>"
        ),
    )
    usb = {c.model: c for c in d.controllers if c.type == "usb"}
    assert pci(usb["ich9-ehci1"]) == (0, 2, 7)
    assert pci(usb["ich9-uhci1"]) == (0, 2, 0)
    assert pci(usb["ich9-uhci2"]) == (0, 2, 1)
    assert usb["ich9-uhci1"].address.multifunction == "on"  # type: ignore[union-attr]
    assert (usb["ich9-uhci1"].master_startport, usb["ich9-uhci2"].master_startport) == (0, 2)
    with pytest.raises(ConfigUnsupportedError, match="master"):
        prep(caps, dom("<controller type='usb' index='1' model='ich9-uhci1'/>"))


# -- USB and virtio-serial ports -----------------------------------------------------------------


def test_usb_hub_is_added_when_ports_run_out(caps: QemuCapabilities) -> None:
    d = prep(caps, dom("<input type='mouse' bus='usb'/>" * 3 + "<input type='tablet' bus='usb'/>"))
    assert [(h.alias, h.address) for h in d.hubs] == [("hub0", USBAddress(0, "1"))]
    usb = [i.address for i in d.inputs if i.bus == "usb"]
    assert [a.port for a in usb if isinstance(a, USBAddress)] == ["2", "1.1", "1.2", "1.3"]


def test_explicit_usb_port(caps: QemuCapabilities) -> None:
    d = prep(
        caps, dom("<input type='tablet' bus='usb'><address type='usb' bus='0' port='2'/></input>")
    )
    assert d.inputs[0].address == USBAddress(0, "2")
    with pytest.raises(XMLError, match="does not exist"):
        prep(
            caps,
            dom("<input type='tablet' bus='usb'><address type='usb' bus='0' port='3'/></input>"),
        )


def test_virtio_serial_ports_and_extra_controller(caps: QemuCapabilities) -> None:
    chan = "<channel type='pty'><target type='virtio' name='c{0}'/></channel>"
    d = prep(
        caps,
        dom(
            "<controller type='virtio-serial' index='0' ports='3'/>"
            + "".join(chan.format(i) for i in range(4))
        ),
    )
    addrs = [c.address for c in d.channels]
    assert addrs == [
        VirtioSerialAddress(0, 0, 1),
        VirtioSerialAddress(0, 0, 2),
        VirtioSerialAddress(1, 0, 1),
        VirtioSerialAddress(1, 0, 2),
    ]
    assert [c.index for c in d.controllers if c.type == "virtio-serial"] == [0, 1]


# -- things QEMU would refuse, caught at define time ---------------------------------------------


def test_q35_only_and_pc_only_controllers(caps: QemuCapabilities) -> None:
    with pytest.raises(ConfigUnsupportedError, match="q35"):
        prep(caps, dom("<controller type='pci' index='1' model='pcie-root-port'/>"))
    with pytest.raises(XMLError, match="pci-root"):
        prep(caps, dom("<controller type='pci' index='0' model='pci-root'/>", machine="q35"))


def test_missing_device_in_this_qemu(caps: QemuCapabilities) -> None:
    poor = dataclasses.replace(caps, device_types=caps.device_types - {"virtio-rng-pci"})
    with pytest.raises(ConfigUnsupportedError, match="virtio-rng-pci"):
        prepare_domain(
            parse_domain_xml(dom("<rng model='virtio'><backend model='builtin'/></rng>")), poor
        )


def test_prepare_does_not_touch_its_input(caps: QemuCapabilities) -> None:
    d = parse_domain_xml(dom("<disk><source file='/a'/><target dev='vda'/></disk>"))
    before = d.to_xml()
    prepare_domain(d, caps)
    assert d.to_xml() == before


def test_example_configs_prepare(caps: QemuCapabilities) -> None:
    examples = sorted((Path(__file__).resolve().parents[2] / "config" / "examples").glob("*.xml"))
    if not examples:
        pytest.skip("no example configs in config/examples")
    for path in examples:
        prep(caps, path.read_text())


def test_far_away_disk_names_do_not_add_thousands_of_controllers(caps: QemuCapabilities) -> None:
    with pytest.raises(ConfigUnsupportedError, match="controller"):
        prep(caps, dom("<disk><source file='/a'/><target dev='sdzzz'/></disk>"))
    with pytest.raises(XMLError, match="invalid disk target name"):
        parse_domain_xml(dom("<disk><source file='/a'/><target dev='vdaaaaa'/></disk>"))


def test_two_usb_controllers_cannot_own_one_bus(caps: QemuCapabilities) -> None:
    two = "<controller type='usb' index='0' model='piix3-uhci'/>"
    two += "<controller type='usb' index='0' model='qemu-xhci'/>"
    with pytest.raises(XMLError, match="both have index 0"):
        prep(caps, dom(two))


def test_usb_ports_behind_missing_hubs_and_per_bus_requests(caps: QemuCapabilities) -> None:
    behind = "<input type='tablet' bus='usb'><address type='usb' bus='0' port='1.2'/></input>"
    with pytest.raises(XMLError, match="behind a hub"):
        prep(caps, dom(behind))
    d = prep(
        caps,
        dom(
            "<hub type='usb'><address type='usb' bus='0' port='2'/></hub>"
            + behind.replace("1.2", "2.3")
        ),
    )
    assert d.inputs[0].address == USBAddress(0, "2.3")
    two = (
        "<controller type='usb' index='1' model='qemu-xhci'/>"
        "<input type='tablet' bus='usb'><address type='usb' bus='1'/></input>"
    )
    d = prep(caps, dom(two))
    assert d.inputs[0].address == USBAddress(1, "1")
