"""Parsing and writing domain XML (no QEMU needed): what a user writes is what dumpxml shows."""

from __future__ import annotations

import re
import uuid

import pytest
from lxml import etree

from asvirt.conf.domain import DomainDef, hide_secrets, parse_cpuset, parse_domain_xml
from asvirt.conf.postparse import postparse_domain
from asvirt.conf.units import parse_kib
from asvirt.drivers.qemu.postparse import parse_prepared_xml
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests.caps import CONFORMANCE
from tests.helpers import DOM_UUID, dom

SCHEMA = CONFORMANCE / "schemas" / "domain.rng"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    if not SCHEMA.exists():
        pytest.skip(f"libvirt's schema is not available ({SCHEMA} is missing)")
    return etree.RelaxNG(file=str(SCHEMA))


# -- basics -------------------------------------------------------------------------------------


def test_identity_and_defaults() -> None:
    d = postparse_domain(parse_domain_xml(dom()))
    assert d.name == "vm1"
    assert d.uuid == "c7a5fdbd-edaf-9455-926a-d65c16db1809"
    assert d.domain_type == "qemu"
    assert (d.memory_kib, d.current_memory_kib) == (131072, 131072)
    assert (d.vcpus, d.max_vcpus) == (1, 1)
    assert d.arch == "x86_64" and d.machine == "pc"
    assert (d.on_poweroff, d.on_reboot, d.on_crash) == ("destroy", "restart", "destroy")
    assert d.memballoon is None and not d.has_memballoon


def test_uuid_is_generated_when_absent() -> None:
    xml = dom().replace(f"<uuid>{DOM_UUID}</uuid>", "")
    a, b = parse_domain_xml(xml), parse_domain_xml(xml)
    assert uuid.UUID(a.uuid).version == 4
    assert a.uuid != b.uuid
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", a.uuid)


def test_uuid_spellings() -> None:
    xml = dom().replace(DOM_UUID, "c7a5fdbdedaf9455926ad65c16db1809")
    assert parse_domain_xml(xml).uuid == "c7a5fdbd-edaf-9455-926a-d65c16db1809"


@pytest.mark.parametrize(
    ("value", "unit", "kib"),
    [
        ("128", "MiB", 131072),
        ("128", "M", 131072),
        ("1", "GiB", 1048576),
        ("1", "G", 1048576),
        ("1", "GB", 976563),  # 10**9 bytes, rounded up to whole KiB
        ("219100", "KiB", 219100),
        ("219100", None, 219100),
        ("1024", "b", 1),
        ("1025", "bytes", 2),
        ("1", "TiB", 1 << 30),
        ("2", "kib", 2),
    ],
)
def test_memory_units(value: str, unit: str | None, kib: int) -> None:
    assert parse_kib(value, unit, what="memory") == kib


def test_current_memory_is_clamped_like_libvirt() -> None:
    # The parser keeps what was written; libvirt's post-parse clamps it.
    d = parse_domain_xml(dom(body="<currentMemory unit='GiB'>4</currentMemory>"))
    assert d.current_memory_kib == 4 * 1024 * 1024
    d = postparse_domain(d)
    assert d.current_memory_kib == d.memory_kib
    d = postparse_domain(parse_domain_xml(dom(body="<currentMemory unit='MiB'>64</currentMemory>")))
    assert d.current_memory_kib == 65536
    assert "<currentMemory unit='KiB'>65536</currentMemory>" in d.to_xml()


def test_vcpu_current_and_cpuset() -> None:
    d = parse_domain_xml(
        dom(body="<vcpu placement='static' cpuset='1-4,^3,8' current='2'>6</vcpu>")
    )
    assert (d.vcpus, d.max_vcpus) == (2, 6)
    assert parse_cpuset(d.cpuset or "") == {1, 2, 4, 8}
    assert "<vcpu placement='static' cpuset='1-4,^3,8' current='2'>6</vcpu>" in d.to_xml()
    with pytest.raises(XMLError, match="exceeds"):
        parse_domain_xml(dom(body="<vcpu current='4'>2</vcpu>"))
    # placement='auto': numad's advice at start (tests/test_qemu_tuning.py)
    auto = parse_domain_xml(dom(body="<vcpu placement='auto'>2</vcpu>"))
    assert auto.placement_auto and auto.numatune is not None and auto.numatune.placement_auto


def test_per_vcpu_states(schema: etree.RelaxNG) -> None:
    """<vcpus>: which vCPUs are enabled and which hot-plugged (libvirt's individual vCPUs);
    the enabled count is the current count, and the XML goes round valid."""
    vcpus = (
        "<vcpus><vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>"
        "<vcpu id='1' enabled='no' hotpluggable='yes'/>"
        "<vcpu id='2' enabled='yes' hotpluggable='yes' order='2'/></vcpus>"
    )
    d = parse_domain_xml(dom(body="<vcpu placement='static'>3</vcpu>" + vcpus))
    assert (d.vcpus, d.max_vcpus) == (2, 3)
    assert d.vcpu_states is not None
    assert [(s.id, s.enabled, s.hotpluggable, s.order) for s in d.vcpu_states] == [
        (0, True, False, 1),
        (1, False, True, None),
        (2, True, True, 2),
    ]
    out = postparse_domain(d).to_xml()
    assert "<vcpu placement='static' current='2'>3</vcpu>" in out
    assert "<vcpu id='2' enabled='yes' hotpluggable='yes' order='2'/>" in out
    assert schema.validate(etree.fromstring(out.encode())), schema.error_log
    assert postparse_domain(parse_domain_xml(out)).to_xml() == out
    # Left out: as <vcpu current> says (the first boot, the rest are pluggable).
    d = parse_domain_xml(dom(body="<vcpu current='1'>2</vcpu><vcpus/>"))
    assert d.vcpu_states is not None
    assert [(s.enabled, s.hotpluggable) for s in d.vcpu_states] == [(True, False), (False, True)]
    bad = {
        "<vcpu>2</vcpu><vcpus><vcpu id='2' enabled='yes'/></vcpus>": "out of range",
        "<vcpu>2</vcpu><vcpus><vcpu id='1' enabled='yes'/><vcpu id='1' enabled='no'/></vcpus>": (
            "duplicate vcpu id"
        ),
        "<vcpu>2</vcpu><vcpus><vcpu id='1'/></vcpus>": "enabled",
        "<vcpu>2</vcpu><vcpus><vcpu id='0' enabled='no'/></vcpus>": "vcpu 0",
        "<vcpu current='2'>2</vcpu><vcpus><vcpu id='1' enabled='no'/></vcpus>": "says 2",
        "<vcpu>3</vcpu><vcpus><vcpu id='1' enabled='yes' hotpluggable='yes'/></vcpus>": (
            "must be the first ones"
        ),
        "<vcpu>3</vcpu><vcpus><vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>"
        "<vcpu id='2' enabled='yes' hotpluggable='yes' order='2'/></vcpus>": "duplicate vcpu order",
        "<vcpu>2</vcpu><vcpus><vcpu id='1' enabled='yes' bogus='1'/></vcpus>": "bogus",
    }
    for body, message in bad.items():
        with pytest.raises(XMLError, match=message):
            parse_domain_xml(dom(body=body))


def test_title_description_metadata() -> None:
    body = (
        "<title>A title</title><description>multi\nline &amp; text</description>"
        "<metadata><a:x xmlns:a='urn:a'>1</a:x><b:y xmlns:b='urn:a'/><plain/>"
        "<c:z xmlns:c='urn:c'><c:w/></c:z></metadata>"
    )
    d = parse_domain_xml(dom(body=body))
    assert d.title == "A title"
    assert d.description == "multi\nline & text"
    # libvirt keeps one element per namespace and drops elements without one.
    assert len(d.metadata) == 2
    out = d.to_xml()
    assert "urn:c" in out and "<plain" not in out and "b:y" not in out
    assert parse_domain_xml(out).to_xml() == out
    with pytest.raises(XMLError, match="newlines"):
        parse_domain_xml(dom(body="<title>two\nlines</title>"))


def test_os_boot_and_direct_kernel() -> None:
    body = ""
    d = parse_domain_xml(
        dom(body=body).replace(
            "</type></os>",
            "</type><kernel>/k</kernel><initrd>/i</initrd><cmdline>console=ttyS0 a=b</cmdline>"
            "<boot dev='cdrom'/><boot dev='hd'/><bootmenu enable='yes' timeout='3000'/>"
            "<bios rebootTimeout='128'/></os>",
        )
    )
    assert d.os.kernel == "/k" and d.os.initrd == "/i" and d.os.cmdline == "console=ttyS0 a=b"
    assert d.os.boot_devices == ["cdrom", "hd"]
    assert (d.os.bootmenu, d.os.bootmenu_timeout, d.os.reboot_timeout) == (True, 3000, 128)
    with pytest.raises(XMLError, match="need <os><kernel>"):
        parse_domain_xml(dom().replace("</type></os>", "</type><initrd>/i</initrd></os>"))


def test_features_cpu_clock_pm_lifecycle() -> None:
    body = (
        "<features><acpi/><apic eoi='on'/><pae/><hap state='off'/><vmport state='off'/>"
        "<smm state='on'/></features>"
        "<cpu mode='custom' match='exact' check='partial'><model fallback='allow'>core2duo</model>"
        "<topology sockets='2' dies='1' cores='2' threads='1'/>"
        "<feature policy='disable' name='vmx'/></cpu>"
        "<clock offset='variable' adjustment='-30' basis='localtime'>"
        "<timer name='rtc' tickpolicy='catchup'><catchup slew='10'/></timer>"
        "<timer name='hpet' present='no'/></clock>"
        "<on_poweroff>preserve</on_poweroff><on_reboot>destroy</on_reboot>"
        "<on_crash>coredump-destroy</on_crash>"
        "<pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='yes'/></pm>"
    )
    d = parse_domain_xml(dom(body=body))
    f = d.features
    assert (f.acpi, f.apic, f.apic_eoi, f.pae, f.hap, f.vmport, f.smm) == (
        "on",
        "on",
        "on",
        "on",
        "off",
        "off",
        "on",
    )
    assert d.cpu is not None and d.cpu.model == "core2duo" and d.cpu.topology is not None
    assert d.cpu.topology.total == 4
    assert d.cpu.features[0].policy == "disable"
    assert (d.clock.offset, d.clock.adjustment, d.clock.basis) == ("variable", "-30", "localtime")
    assert d.clock.timer("rtc").catchup == {"slew": 10}  # type: ignore[union-attr]
    assert (d.suspend_to_mem, d.suspend_to_disk) == (False, True)
    assert (d.on_poweroff, d.on_reboot, d.on_crash) == ("preserve", "destroy", "coredump-destroy")
    out = d.to_xml()
    assert parse_domain_xml(out).to_xml() == out


@pytest.mark.parametrize(
    ("xml_fragment", "named"),
    [
        ("<sysinfo type='smbios'><processor/></sysinfo>", "<processor>"),
        ("<features><hyperv mode='bogus'/></features>", "<hyperv>"),
        ("<features><gic version='2'/></features>", "<gic>"),
        ("<cpu><numa><cell cpus='0' memory='1'><cache level='1'/></cell></numa></cpu>", "<cache>"),
        ("<clock offset='timezone' timezone='Europe/Paris'/>", "offset='timezone'"),
        ("<clock><timer name='armvtimer'/></clock>", "name='armvtimer'"),
        ("<on_lockfailure>poweroff</on_lockfailure>", "<on_lockfailure>"),
        ("<memtune><min_guarantee>1</min_guarantee></memtune>", "min_guarantee"),
    ],
)
def test_unsupported_top_level_is_named(xml_fragment: str, named: str) -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        parse_domain_xml(dom(body=xml_fragment))
    assert named in str(info.value)
    assert str(info.value).startswith("unsupported configuration:")


@pytest.mark.parametrize(
    ("devices", "named"),
    [
        ("<hostdev mode='capabilities' type='storage'/>", "<hostdev mode='capabilities'>"),
        ("<hostdev mode='subsystem' type='scsi'/>", "type='scsi'"),
        ("<sound model='pcspk'/>", "model='pcspk'"),
        ("<filesystem type='ram'/>", "type='ram'"),
        ("<tpm model='tpm-spapr'/>", "model='tpm-spapr'"),
        ("<tpm><backend type='external'/></tpm>", "type='external'"),
        ("<graphics type='rdp'/>", "type='rdp'"),
        ("<graphics type='spice'><gl enable='no' x='1'/></graphics>", "x='1'"),
        ("<interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>", "type='vdpa'"),
        ("<interface type='network'><source network='n' portgroup='p'/></interface>", "portgroup"),
        ("<interface type='network'><source network='n'/><bandwidth/></interface>", "<bandwidth>"),
        ("<video><model type='xen'/></video>", "type='xen'"),
        (
            "<disk type='network'><source protocol='sheepdog' name='x'><host name='h'/></source>"
            "<target dev='vda'/></disk>",
            "sheepdog",
        ),
        ("<disk type='file'><source file='/a'/><target dev='sda' bus='sd'/></disk>", "bus='sd'"),
        (
            "<disk type='file'><source file='/a'/><target dev='sda' bus='nvme'/></disk>",
            "bus='nvme'",
        ),
        (
            "<disk type='file'><source file='/a'/><target dev='vda'/><throttlefilters/></disk>",
            "<throttlefilters> in <disk>",
        ),
        (
            "<disk type='file'><driver name='qemu' discard_no_unref='on'/><source file='/a'/>"
            "<target dev='vda'/></disk>",
            "discard_no_unref='on' of <disk><driver>",
        ),
        ("<controller type='xenbus' index='0'/>", "type='xenbus'"),
        ("<controller type='scsi' model='buslogic'/>", "model='buslogic'"),
        ("<serial type='nmdm'><source master='/a' slave='/b'/></serial>", "type='nmdm'"),
        ("<input type='mouse' bus='xen'/>", "bus='xen'"),
        ("<audio id='1' type='coreaudio'/>", "type='coreaudio'"),
        ("<watchdog model='diag288'/>", "model='diag288'"),
        ("<memballoon model='virtio'><driver event_idx='on'/></memballoon>", "event_idx"),
        ("<redirdev bus='usb' type='nmdm'/>", "type='nmdm'"),
        ("<rng model='virtio'><backend model='egd' type='udp'/></rng>", "type='udp'"),
        ("<iommu model='amd'/>", "model='amd'"),
        ("<graphics type='sdl' passwd='x'/>", "passwd='...'"),  # not echoed
    ],
)
def test_unsupported_devices_are_named(devices: str, named: str) -> None:
    with pytest.raises(ConfigUnsupportedError) as info:
        parse_domain_xml(dom(devices=devices))
    assert named in str(info.value), str(info.value)


def test_balloon_statistics_period_round_trips() -> None:
    d = parse_domain_xml(dom("<memballoon model='virtio'><stats period='10'/></memballoon>"))
    assert d.memballoon is not None and d.memballoon.stats_period == 10
    assert "<memballoon model='virtio'>\n      <stats period='10'/>\n" in d.to_xml()
    with pytest.raises(XMLError):
        parse_domain_xml(dom("<memballoon model='none'><stats period='10'/></memballoon>"))
    with pytest.raises(XMLError):
        parse_domain_xml(dom("<memballoon model='virtio'><stats period='-1'/></memballoon>"))


def test_foreign_namespace_elements_are_refused() -> None:
    xml = dom().replace(
        "<domain type='qemu'>",
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
    )
    xml = xml.replace(
        "</devices>", "</devices><qemu:commandline><qemu:arg value='-S'/></qemu:commandline>"
    )
    with pytest.raises(ConfigUnsupportedError, match="qemu:commandline"):
        parse_domain_xml(xml)


def test_domain_type() -> None:
    assert parse_domain_xml(dom(dtype="kvm")).domain_type == "kvm"
    with pytest.raises(ConfigUnsupportedError, match="type='xen'"):
        parse_domain_xml(dom(dtype="xen"))


# -- devices ------------------------------------------------------------------------------------


def test_disk_fields() -> None:
    d = parse_domain_xml(
        dom(
            devices="<disk type='block' device='disk' snapshot='no'>"
            "<driver name='qemu' type='qcow2' cache='none' io='native' discard='unmap' "
            "detect_zeroes='unmap' error_policy='stop' rerror_policy='report' copy_on_read='on'/>"
            "<source dev='/dev/vg/lv'/><target dev='sdb' bus='scsi' rotation_rate='1'/>"
            "<boot order='2'/><serial>S1</serial><wwn>0x5000c50015ea71ad</wwn>"
            "<alias name='ua-data'/><address type='drive' controller='0' bus='0' target='1' "
            "unit='3'/></disk>"
        )
    )
    disk = d.disks[0]
    assert (disk.type, disk.device, disk.source, disk.target, disk.bus) == (
        "block",
        "disk",
        "/dev/vg/lv",
        "sdb",
        "scsi",
    )
    assert (disk.format, disk.cache, disk.io, disk.discard, disk.detect_zeroes) == (
        "qcow2",
        "none",
        "native",
        "unmap",
        "unmap",
    )
    assert disk.boot_order == 2 and disk.serial == "S1" and disk.rotation_rate == 1
    assert disk.alias == "ua-data" and disk.user_alias
    out = d.to_xml()
    assert "<alias name='ua-data'/>" in out  # user aliases are part of the config
    assert parse_domain_xml(out).to_xml() == out


def test_disk_bus_comes_from_the_target_name() -> None:
    d = parse_domain_xml(
        dom(
            devices="<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
            "<disk type='file'><source file='/b'/><target dev='hdb'/></disk>"
            "<disk type='file'><source file='/c'/><target dev='sdc'/></disk>"
        )
    )
    assert [x.bus for x in d.disks] == ["virtio", "ide", "scsi"]


def test_disks_are_kept_in_target_order_per_bus_like_libvirt() -> None:
    d = parse_domain_xml(
        dom(
            devices="<disk type='file'><source file='/a'/><target dev='hdc'/></disk>"
            "<disk type='file'><source file='/b'/><target dev='vdb'/></disk>"
            "<disk type='file'><source file='/c'/><target dev='hda'/></disk>"
            "<disk type='file'><source file='/d'/><target dev='vda'/></disk>"
        )
    )
    assert [x.target for x in d.disks] == ["hda", "hdc", "vda", "vdb"]


def test_relative_paths_are_refused() -> None:
    with pytest.raises(XMLError, match="absolute"):
        parse_domain_xml(dom(devices="<disk><source file='x.img'/><target dev='vda'/></disk>"))
    with pytest.raises(XMLError, match="absolute"):
        parse_domain_xml(dom(devices="<emulator>qemu</emulator>"))


def test_controllers_sorted_and_indexed_like_libvirt() -> None:
    d = parse_domain_xml(
        dom(
            devices="<controller type='usb' index='1' model='ich9-ehci1'/>"
            "<controller type='pci' model='pci-root'/>"
            "<controller type='usb' index='0' model='ich9-ehci1'/>"
            "<controller type='usb' index='0' model='ich9-uhci1'/>"
            "<controller type='scsi'/><controller type='scsi'/>"
        )
    )
    got = [(c.type, c.index, c.model) for c in d.controllers]
    assert got == [
        ("usb", 0, "ich9-ehci1"),
        ("usb", 0, "ich9-uhci1"),
        ("usb", 1, "ich9-ehci1"),
        ("pci", 0, "pci-root"),
        ("scsi", 0, None),
        ("scsi", 1, None),
    ]


def test_interface() -> None:
    d = parse_domain_xml(
        dom(
            devices="<interface type='user'><mac address='52:54:00:AA:bb:01'/>"
            "<model type='e1000e'/><link state='down'/><boot order='1'/></interface>"
        )
    )
    nic = d.interfaces[0]
    assert (nic.mac, nic.model, nic.link_state, nic.boot_order) == (
        "52:54:00:aa:bb:01",
        "e1000e",
        "down",
        1,
    )
    with pytest.raises(XMLError, match="multicast"):
        parse_domain_xml(
            dom(devices="<interface type='user'><mac address='01:00:5e:00:00:01'/></interface>")
        )


def test_network_and_bridge_interfaces() -> None:
    xml = dom(
        devices="<interface type='network'><mac address='52:54:00:00:00:01'/>"
        "<source network='default' bridge='virbr0'/><target dev='vnet7'/>"
        "<model type='virtio'/></interface>"
        "<interface type='bridge'><source bridge='br-lan'/><target dev='lan-tap0'/></interface>"
    )
    # Read back as the driver reads its own live XML: what the run plugged in is kept.
    live = parse_prepared_xml(xml)
    net, br = live.interfaces
    assert (net.type, net.source_network, net.source_bridge, net.target_dev) == (
        "network",
        "default",
        "virbr0",
        "vnet7",
    )
    assert (br.type, br.source_bridge, br.target_dev) == ("bridge", "br-lan", "lan-tap0")
    assert "<source network='default' bridge='virbr0'/>" in live.to_xml(live=True, domain_id=1)
    # Defined: a made-up tap name and the network's bridge are facts of a run, not config;
    # a tap name of the user's own is kept.
    stored = postparse_domain(parse_domain_xml(xml))
    net, br = stored.interfaces
    assert (net.source_bridge, net.target_dev, br.target_dev) == (None, None, "lan-tap0")
    assert "<source network='default'/>" in stored.to_xml()
    for bad, match in (
        ("<interface type='network'/>", "needs a <source>"),
        ("<interface type='bridge'><source bridge='a/b'/></interface>", "invalid interface"),
        (
            f"<interface type='network'><source network='n'/><target dev='{'x' * 16}'/>"
            "</interface>",
            "invalid interface target dev",
        ),
        ("<interface type='bridge'><source network='n'/></interface>", "bridge"),
    ):
        with pytest.raises(XMLError, match=match):
            parse_domain_xml(dom(devices=bad))


def test_chardevs_and_pty_paths() -> None:
    # Aliases and chardev ids are the QEMU driver's; it reads its own XML back this way.
    d = parse_prepared_xml(
        dom(
            devices="<serial type='pty'><target port='0'/></serial>"
            "<serial type='file'><source path='/tmp/s.log' append='on'/><log file='/tmp/l'/>"
            "<target port='1'/></serial>"
            "<console type='pty'><target type='serial' port='0'/></console>"
            "<channel type='unix'><source mode='bind'/>"
            "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
            "<serial type='unix'><source mode='connect' path='/tmp/x.sock'>"
            "<reconnect enabled='yes' timeout='5'/></source><target port='2'/></serial>"
        )
    )
    assert [c.type for c in d.serials] == ["pty", "file", "unix"]
    assert d.serials[2].reconnect is True and d.serials[2].reconnect_timeout == 5
    # The console is serial port 0: it shares its alias and chardev.
    assert d.consoles[0].alias == "serial0"
    assert d.chardev_ids() == ["charserial0"]
    d.set_pty_path("charserial0", "/dev/pts/7")
    live = d.to_xml(live=True, domain_id=4)
    assert "<domain type='qemu' id='4'>" in live
    assert live.count("<source path='/dev/pts/7'/>") == 2  # the serial and its console
    assert "tty='/dev/pts/7'" in live
    assert "/dev/pts/7" not in d.to_xml()
    with pytest.raises(KeyError):
        d.set_pty_path("charnothing", "/dev/pts/1")


def test_live_xml_has_aliases_and_inactive_has_none() -> None:
    d = parse_prepared_xml(
        dom(devices="<disk type='file'><source file='/a'/><target dev='vda'/></disk>")
    )
    assert d.disks[0].alias == "virtio-disk0"
    assert "<alias" not in d.to_xml()
    assert "<alias name='virtio-disk0'/>" in d.to_xml(live=True)


def test_copy_is_deep() -> None:
    d = parse_domain_xml(dom(devices="<serial type='pty'/>"))
    c = d.copy()
    c.serials[0].source_path = "/dev/pts/1"
    c.name = "other"
    assert d.serials[0].source_path is None and d.name == "vm1"
    assert isinstance(c, DomainDef)


def test_output_is_pretty_printed_like_libvirt() -> None:
    out = parse_domain_xml(dom()).to_xml()
    lines = out.splitlines()
    assert lines[0] == "<domain type='qemu'>"
    assert lines[1] == "  <name>vm1</name>"
    assert lines[-1] == "</domain>"
    assert all(len(ln) - len(ln.lstrip(" ")) in range(0, 20, 2) for ln in lines)


def test_written_xml_validates(schema: etree.RelaxNG) -> None:
    d = parse_domain_xml(
        dom(
            "<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
            "<interface type='user'/><serial type='pty'/><graphics type='vnc' port='-1'/>",
            body="<features><acpi/></features>",
        )
    )
    for live in (False, True):
        doc = etree.fromstring(d.to_xml(live=live, domain_id=1).encode())
        assert schema.validate(doc), schema.error_log.last_error


# -- display passwords and other secrets ----------------------------------------------------------


def test_display_passwords_round_trip_and_only_a_secure_xml_shows_them(
    schema: etree.RelaxNG,
) -> None:
    graphics = (
        "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret' "
        "passwdValidTo='2030-01-02T03:04:05' connected='keep'/>"
        "<graphics type='spice' autoport='yes' passwd='an&amp;other' connected='disconnect'/>"
    )
    cookies = (
        "<disk type='network' device='cdrom'><source protocol='https' name='/x.iso'>"
        "<host name='example.org'/><cookies><cookie name='session'>t0ken</cookie></cookies>"
        "</source><target dev='sda' bus='sata'/><readonly/></disk>"
    )
    d = parse_domain_xml(dom(cookies + graphics))
    vnc, spice = d.graphics
    assert (vnc.passwd, vnc.passwd_valid_to, vnc.connected) == ("s3cret", 1893553445, "keep")
    assert (spice.passwd, spice.connected) == ("an&other", "disconnect")
    assert "s3cret" not in repr(vnc)  # not in a log line that prints the device
    full = d.to_xml()
    assert "passwd='s3cret' passwdValidTo='2030-01-02T03:04:05' connected='keep'" in full
    assert "passwd='an&amp;other'" in full and ">t0ken</cookie>" in full
    assert parse_domain_xml(full).to_xml() == full
    public = d.to_xml(secure=False)
    assert "passwd=" not in public and "<cookies>" not in public and "t0ken" not in public
    # The expiry and the policy are no secrets (libvirt shows them too); without the
    # password they mean nothing and are dropped, so a non-secure XML defines no password.
    assert "passwdValidTo='2030-01-02T03:04:05' connected='keep'" in public
    # The copies kept as text (a snapshot's) are shown as to_xml(secure=False) would.
    for live in (False, True):
        assert hide_secrets(d.to_xml(live=live)) == d.to_xml(live=live, secure=False)
    again = parse_domain_xml(public)
    assert [g.passwd for g in again.graphics] == [None, None]
    assert again.graphics[0].passwd_valid_to is None
    for text in (full, public):
        assert schema.validate(etree.fromstring(text.encode())), schema.error_log.last_error


@pytest.mark.parametrize(
    ("graphics", "error"),
    [
        # QEMU uses 8 bytes of a VNC password: libvirt refuses more, in these words.
        ("<graphics type='vnc' passwd='123456789'/>", "VNC password is 9 characters long"),
        ("<graphics type='vnc' passwd='x' connected='disconnect'/>", "connected='keep' only"),
        ("<graphics type='spice' passwd='x' connected='later'/>", "connected='later'"),
        (
            "<graphics type='vnc' passwd='x' passwdValidTo='tomorrow'/>",
            "cannot parse password validity time 'tomorrow'",
        ),
        (
            "<graphics type='vnc' passwd='x' passwdValidTo='2030-13-01T00:00:00'/>",
            "expect YYYY-MM-DDTHH:MM:SS",
        ),
    ],
)
def test_bad_display_passwords_are_refused(graphics: str, error: str) -> None:
    with pytest.raises((ConfigUnsupportedError, XMLError), match=re.escape(error)):
        parse_domain_xml(dom(graphics))


def test_a_long_spice_password_is_kept() -> None:
    d = parse_domain_xml(dom("<graphics type='spice' passwd='a-much-longer-password'/>"))
    assert d.graphics[0].passwd == "a-much-longer-password"
