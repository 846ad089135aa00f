"""The QEMU command line, device class by device class, as a user would check it.

Argv assertions use the capabilities of the real QEMU here; the launch tests start that
QEMU paused with the very argv (never mocked) and ask it over QMP what it built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from qemu_launch import QemuRefused, launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.command import (
    MonitorSpec,
    build_command,
    fill_runtime_paths,
    links_down,
)
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError
from tests.caps import REPO, Caps
from tests.helpers import argv_of, blockdevs, device, devices, dom, opts

AGENT = (
    "<channel type='unix'><source mode='bind'/>"
    "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
)
RNG = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"


# -- the fixed frame ------------------------------------------------------------------------------


def test_frame_of_every_command_line(caps: Caps) -> None:
    argv = argv_of(caps, dom())
    assert argv[0] == caps.binary
    assert opts(argv, "-name") == ["guest=vm1,debug-threads=on"]
    assert opts(argv, "-uuid") == ["c7a5fdbd-edaf-9455-926a-d65c16db1809"]
    for flag in ("-S", "-no-shutdown", "-nodefaults", "-no-user-config"):
        assert argv.count(flag) == 1, flag
    assert "-daemonize" not in argv and "-pidfile" not in argv
    assert opts(argv, "-msg") == ["timestamp=on"]
    assert opts(argv, "-accel") == ["tcg"]
    machine = opts(argv, "-machine")[0]
    assert machine.startswith(caps.canonical_machine("pc") + ",usb=off,")
    assert machine.endswith(",acpi=off")
    assert opts(argv, "-m") == ["size=131072k"]
    assert opts(argv, "-smp") == ["1,sockets=1,cores=1,threads=1"]
    assert opts(argv, "-display") == ["none"]
    assert opts(argv, "-boot") == ["strict=on"]
    assert opts(argv, "-rtc") == ["base=utc"]
    assert opts(argv, "-mon") == ["chardev=charmonitor,id=monitor,mode=control"]


def test_monitor_by_fd_or_path(caps: Caps) -> None:
    d = prepare_domain(parse_domain_xml(dom()), caps)
    by_fd = build_command(d, caps, monitor=MonitorSpec(fd=7))
    assert "socket,id=charmonitor,fd=7,server=on,wait=off" in by_fd
    by_path = build_command(d, caps, monitor=MonitorSpec(path="/r/a,b.sock"))
    assert "socket,id=charmonitor,path=/r/a,,b.sock,server=on,wait=off" in by_path
    with pytest.raises(ValueError):
        build_command(d, caps, monitor=MonitorSpec())


def test_names_with_commas_are_escaped(caps: Caps) -> None:
    argv = argv_of(caps, dom().replace("<name>vm1</name>", "<name>a,b</name>"))
    assert opts(argv, "-name") == ["guest=a,,b,debug-threads=on"]


def test_kvm_and_cpu_modes(caps: Caps) -> None:
    argv = argv_of(caps, dom(dtype="kvm", body="<cpu mode='host-passthrough'/>"))
    assert opts(argv, "-accel") == ["kvm"]
    assert opts(argv, "-cpu") == ["host,migratable=on"]
    argv = argv_of(caps, dom(body="<cpu mode='host-model'/>"))
    assert opts(argv, "-cpu") == ["max"]
    body = (
        "<vcpu current='2'>6</vcpu><features><apic eoi='on'/></features>"
        "<cpu><model>core2duo</model><topology sockets='3' cores='2' threads='1'/>"
        "<feature policy='disable' name='sse4.1'/></cpu>"
        "<clock offset='utc'><timer name='kvmclock' present='no'/></clock>"
    )
    argv = argv_of(caps, dom(body=body))
    assert opts(argv, "-cpu") == ["core2duo,sse4.1=off,kvmclock=off,kvm-pv-eoi=on"]
    assert opts(argv, "-smp") == ["2,maxcpus=6,sockets=3,dies=1,clusters=1,cores=2,threads=1"]
    # <vcpus>: only the enabled vCPUs that are not hotpluggable boot; the runner plugs the
    # enabled hotpluggable one (vcpu2) before the guest runs.
    body = (
        "<vcpu>4</vcpu><vcpus><vcpu id='1' enabled='yes' hotpluggable='no'/>"
        "<vcpu id='2' enabled='yes' hotpluggable='yes' order='3'/>"
        "<vcpu id='3' enabled='no'/></vcpus>"
    )
    argv = argv_of(caps, dom(body=body))
    assert opts(argv, "-smp") == ["2,maxcpus=4,sockets=4,cores=1,threads=1"]


def test_clock_and_timers(caps: Caps) -> None:
    body = (
        "<clock offset='localtime'><timer name='rtc' tickpolicy='catchup' track='guest'/>"
        "<timer name='pit' tickpolicy='delay'/><timer name='hpet' present='no'/></clock>"
    )
    argv = argv_of(caps, dom(body=body))
    assert opts(argv, "-rtc") == ["base=localtime,clock=vm,driftfix=slew"]
    assert "kvm-pit.lost_tick_policy=delay" in opts(argv, "-global")
    assert ",hpet=off," in opts(argv, "-machine")[0]
    argv = argv_of(caps, dom(body="<clock offset='absolute' start='1234567890'/>"))
    assert opts(argv, "-rtc") == ["base=2009-02-13T23:31:30"]


def test_features_pm_boot_and_kernel(caps: Caps) -> None:
    body = (
        "<features><acpi/><vmport state='off'/><smm state='on'/></features>"
        "<pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>"
        "<memory dumpCore='on'/>"
    )
    xml = dom(body=body.replace("<memory dumpCore='on'/>", ""), machine="q35")
    xml = xml.replace(
        "</type></os>",
        "</type><kernel>/boot/k</kernel><initrd>/boot/i</initrd><cmdline>a=1 b</cmdline>"
        "<bootmenu enable='yes' timeout='500'/><bios rebootTimeout='10'/></os>",
    )
    argv = argv_of(caps, xml)
    assert opts(argv, "-machine")[0].endswith(
        ",usb=off,vmport=off,smm=on,dump-guest-core=off,acpi=on"
    )
    assert {"ICH9-LPC.disable_s3=1", "ICH9-LPC.disable_s4=1"} <= set(opts(argv, "-global"))
    assert opts(argv, "-boot") == ["menu=on,splash-time=500,reboot-timeout=10,strict=on"]
    assert (opts(argv, "-kernel"), opts(argv, "-initrd"), opts(argv, "-append")) == (
        ["/boot/k"],
        ["/boot/i"],
        ["a=1 b"],
    )


# -- disks ---------------------------------------------------------------------------------------


def test_virtio_qcow2_disk(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<disk type='file'><driver name='qemu' type='qcow2' cache='none' io='native' "
            "discard='unmap' detect_zeroes='unmap'/><source file='/img/a.qcow2'/>"
            "<target dev='vda' bus='virtio'/><serial>SN1</serial></disk>"
        ),
    )
    storage, fmt = blockdevs(argv)
    assert storage == {
        "driver": "file",
        "filename": "/img/a.qcow2",
        "aio": "native",
        "node-name": "libvirt-1-storage",
        "auto-read-only": True,
        "discard": "unmap",
        "cache": {"direct": True, "no-flush": False},
    }
    assert fmt["driver"] == "qcow2" and fmt["file"] == "libvirt-1-storage"
    assert fmt["detect-zeroes"] == "unmap" and fmt["read-only"] is False
    dev = device(argv, "virtio-disk0")
    assert dev["driver"] == "virtio-blk-pci" and dev["drive"] == "libvirt-1-format"
    assert (dev["bus"], dev["addr"], dev["write-cache"], dev["serial"]) == (
        "pci.0",
        "0x2",
        "on",
        "SN1",
    )


def test_ide_sata_scsi_and_cdrom(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<disk type='file' device='cdrom'><source file='/img/cd.iso'/>"
            "<target dev='hdc' bus='ide'/><readonly/></disk>"
            "<disk type='block'><source dev='/dev/vg/lv'/><target dev='sda' bus='sata'/></disk>"
            "<disk type='file'><driver name='qemu' error_policy='stop'/><source file='/img/s'/>"
            "<target dev='sdb' bus='scsi'/><wwn>5000c50015ea71ad</wwn></disk>"
            "<controller type='scsi' model='virtio-scsi'/>"
            "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/></disk>"
        ),
    )
    cd = device(argv, "ide0-1-0")
    assert (cd["driver"], cd["bus"], cd["unit"]) == ("ide-cd", "ide.1", 0)
    empty = device(argv, "ide0-1-1")
    assert "drive" not in empty  # a CD-ROM without media
    sata = device(argv, "sata0-0-0")
    assert (sata["driver"], sata["bus"]) == ("ide-hd", "sata0.0")
    assert device(argv, "sata0")["driver"] == "ahci"
    scsi = device(argv, "scsi0-0-0-1")
    assert (scsi["driver"], scsi["bus"], scsi["channel"], scsi["scsi-id"], scsi["lun"]) == (
        "scsi-hd",
        "scsi0.0",
        0,
        0,
        1,
    )
    assert (scsi["werror"], scsi["rerror"], scsi["wwn"]) == ("stop", "stop", 0x5000C50015EA71AD)
    assert device(argv, "scsi0")["driver"] == "virtio-scsi-pci"
    nodes = {b["node-name"]: b for b in blockdevs(argv)}
    block = next(b for b in nodes.values() if b["filename"] == "/dev/vg/lv")
    assert block["driver"] == "host_device" and block["read-only"] is False
    iso = next(b for b in nodes.values() if b["filename"] == "/img/cd.iso")
    assert iso["driver"] == "file" and iso["read-only"] is True


def test_boot_order_becomes_bootindex(caps: Caps) -> None:
    disks = (
        "<disk><source file='/a'/><target dev='vda'/></disk>"
        "<disk device='cdrom'><source file='/c.iso'/><target dev='hdc'/></disk>"
        "<interface type='user'/>"
    )
    xml = dom(disks).replace(
        "</type></os>", "</type><boot dev='cdrom'/><boot dev='network'/><boot dev='hd'/></os>"
    )
    argv = argv_of(caps, xml)
    assert device(argv, "ide0-1-0")["bootindex"] == 1
    assert device(argv, "net0")["bootindex"] == 2
    assert device(argv, "virtio-disk0")["bootindex"] == 3
    per_device = dom(disks.replace("<target dev='vda'/>", "<target dev='vda'/><boot order='5'/>"))
    argv = argv_of(caps, per_device)
    assert device(argv, "virtio-disk0")["bootindex"] == 5
    assert "bootindex" not in device(argv, "net0")


# -- network, chardevs, input --------------------------------------------------------------------


def test_user_network(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<interface type='user'><mac address='52:54:00:01:02:03'/><model type='virtio'/>"
            "</interface><interface type='user'><model type='e1000'/><link state='down'/>"
            "</interface>"
        ),
    )
    assert opts(argv, "-netdev") == ["user,id=hostnet0", "user,id=hostnet1"]
    nic = device(argv, "net0")
    assert (nic["driver"], nic["netdev"], nic["mac"]) == (
        "virtio-net-pci",
        "hostnet0",
        "52:54:00:01:02:03",
    )
    assert device(argv, "net1")["driver"] == "e1000"
    d = prepare_domain(
        parse_domain_xml(dom("<interface type='user'><link state='down'/></interface>")), caps
    )
    assert links_down(d) == ["net0"]


def test_serial_console_channel(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(
        caps,
        dom(
            "<serial type='file'><source path='/log/s.log' append='on'/></serial>"
            "<serial type='unix'><source mode='bind' path='/run/s1.sock'/>"
            "<target port='1'/></serial>"
            "<serial type='unix'><source mode='connect' path='/run/s2.sock'/>"
            "<target port='2'/></serial>"
            "<serial type='null'><target port='3'/></serial>"
            "<console type='pty'><target type='virtio'/></console>" + AGENT
        ),
        tmp_path,
    )
    chardevs = opts(argv, "-chardev")
    assert "file,id=charserial0,path=/log/s.log,append=on" in chardevs
    assert "socket,id=charserial1,path=/run/s1.sock,server=on,wait=off" in chardevs
    assert "socket,id=charserial2,path=/run/s2.sock,reconnect=1" in chardevs
    assert "null,id=charserial3" in chardevs
    assert "pty,id=charconsole1" in chardevs
    sock = f"{tmp_path}/c7a5fdbd-org.qemu.guest_agent.0.sock"
    agent = f"socket,id=charchannel0,path={sock},server=on,wait=off"
    assert agent in chardevs
    assert device(argv, "serial2") == {
        "driver": "isa-serial",
        "chardev": "charserial2",
        "id": "serial2",
        "index": 2,
    }
    assert device(argv, "channel0") == {
        "driver": "virtserialport",
        "bus": "virtio-serial0.0",
        "nr": 1,
        "chardev": "charchannel0",
        "id": "channel0",
        "name": "org.qemu.guest_agent.0",
    }
    assert device(argv, "console1")["driver"] == "virtconsole"
    assert device(argv, "console1")["nr"] == 0


def test_reconnect_syntax_follows_the_qemu_version(caps: Caps) -> None:
    xml = dom(
        "<serial type='unix'><source mode='connect' path='/s'>"
        "<reconnect enabled='yes' timeout='3'/></source></serial>"
    )
    d = prepare_domain(parse_domain_xml(xml), caps)
    newer = dataclasses.replace(caps, version=(9, 2, 0))
    assert "socket,id=charserial0,path=/s,reconnect-ms=3000" in build_command(
        d, newer, monitor=MonitorSpec(fd=3)
    )
    older = dataclasses.replace(caps, version=(7, 2, 0))
    assert "socket,id=charserial0,path=/s,reconnect=3" in build_command(
        d, older, monitor=MonitorSpec(fd=3)
    )
    off = prepare_domain(
        parse_domain_xml(xml.replace("enabled='yes' timeout='3'", "enabled='no'")), caps
    )
    assert "socket,id=charserial0,path=/s" in build_command(off, older, monitor=MonitorSpec(fd=3))


def test_unix_socket_needs_a_place(caps: Caps) -> None:
    d = prepare_domain(
        parse_domain_xml(dom("<channel type='unix'><target type='virtio' name='x'/></channel>")),
        caps,
    )
    with pytest.raises(ConfigUnsupportedError, match="runtime directory"):
        build_command(d, caps, monitor=MonitorSpec(fd=3))
    live = d.copy()
    fill_runtime_paths(live, "/run/r")
    assert live.channels[0].source_path == "/run/r/c7a5fdbd-x.sock"
    assert "socket,id=charchannel0,path=/run/r/c7a5fdbd-x.sock,server=on,wait=off" in build_command(
        live, caps, monitor=MonitorSpec(fd=3)
    )
    with pytest.raises(ConfigUnsupportedError, match="longer than a unix socket"):
        fill_runtime_paths(d.copy(), "/" + "d" * 120)


def test_inputs_and_hubs(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<input type='tablet' bus='usb'/><input type='keyboard' bus='usb'/>"
            "<input type='mouse' bus='usb'/><input type='mouse' bus='virtio'/>"
        ),
    )
    assert device(argv, "hub0") == {"driver": "usb-hub", "id": "hub0", "bus": "usb.0", "port": "1"}
    assert device(argv, "input0") == {
        "driver": "usb-tablet",
        "id": "input0",
        "bus": "usb.0",
        "port": "2",
    }
    assert device(argv, "input1")["port"] == "1.1"
    assert device(argv, "input3")["driver"] == "virtio-mouse-pci"
    # The implicit PS/2 mouse and keyboard are part of the machine: no -device.
    assert not any(d["driver"].startswith("ps2") for d in devices(argv))


# -- graphics, video, audio, the rest --------------------------------------------------------------


def test_vnc_video_audio(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<graphics type='vnc' port='5905' autoport='no' sharePolicy='force-shared'>"
            "<listen type='address' address='::1'/></graphics>"
            "<video><model type='qxl' vram='32768' heads='2'/></video>"
            "<video><model type='virtio'/></video>"
            "<audio id='3' type='none' timerPeriod='20'><output voices='2'/></audio>"
        ),
    )
    assert opts(argv, "-vnc") == ["[::1]:5,share=force-shared,audiodev=audio3"]
    assert opts(argv, "-audiodev") == [
        '{"id":"audio3","driver":"none","timer-period":20,"out":{"voices":2}}'
    ]
    assert "-display" not in argv
    qxl = device(argv, "video0")
    assert (qxl["driver"], qxl["vram_size"], qxl["max_outputs"], qxl["addr"]) == (
        "qxl-vga",
        32 << 20,
        2,
        "0x2",
    )
    assert device(argv, "video1")["driver"] == "virtio-gpu-pci"
    argv = argv_of(caps, dom("<graphics type='vnc' keymap='de-ch'/>"))
    assert opts(argv, "-vnc") == ["127.0.0.1:0,to=99,audiodev=audio1"]
    assert opts(argv, "-k") == ["de-ch"]
    assert device(argv, "video0")["driver"] == "cirrus-vga"
    argv = argv_of(
        caps, dom("<graphics type='vnc'><listen type='socket' socket='/r/v.sock'/></graphics>")
    )
    assert opts(argv, "-vnc") == ["vnc=unix:/r/v.sock,audiodev=audio1"]


def test_balloon_rng_watchdog_panic(caps: Caps) -> None:
    argv = argv_of(
        caps,
        dom(
            "<memballoon model='virtio' autodeflate='on' freePageReporting='on'/>"
            "<rng model='virtio'><rate bytes='1024' period='1000'/><backend model='builtin'/></rng>"
            "<watchdog model='i6300esb' action='dump'/>"
            "<panic model='isa'><address type='isa' iobase='0x506'/></panic>"
        ),
    )
    bal = device(argv, "balloon0")
    assert (bal["deflate-on-oom"], bal["free-page-reporting"]) == (True, True)
    assert opts(argv, "-object") == ['{"qom-type":"rng-builtin","id":"objrng0"}']
    rng = device(argv, "rng0")
    assert (rng["rng"], rng["max-bytes"], rng["period"]) == ("objrng0", 1024, 1000)
    assert device(argv, "watchdog0")["driver"] == "i6300esb"
    assert opts(argv, "-watchdog-action") == ["pause"]  # QEMU has no 'dump': libvirt pauses
    assert {"driver": "pvpanic", "ioport": 0x506} in devices(argv)
    argv = argv_of(caps, dom("<memballoon model='none'/>"))
    assert not any(d["driver"].startswith("virtio-balloon") for d in devices(argv))


def test_q35_machine(caps: Caps) -> None:
    argv = argv_of(
        caps, dom("<disk><source file='/a'/><target dev='sda' bus='sata'/></disk>", machine="q35")
    )
    assert device(argv, "sata0-0-0")["bus"] == "ide.0"  # the ICH9 AHCI controller's first port
    assert "ICH9-LPC.noreboot=off" in opts(argv, "-global")  # the iTCO watchdog resets
    assert opts(argv, "-watchdog-action") == ["reset"]
    ports = [d for d in devices(argv) if d["driver"] == "pcie-root-port"]
    assert [p["id"] for p in ports] == ["pci.1", "pci.2", "pci.3"]
    assert device(argv, "usb")["bus"] == "pci.1"


def test_old_qemu_is_refused(caps: Caps) -> None:
    old = dataclasses.replace(caps, version=(5, 2, 0))
    d = prepare_domain(parse_domain_xml(dom()), caps)
    with pytest.raises(ConfigUnsupportedError, match="too old"):
        build_command(d, old, monitor=MonitorSpec(fd=3))


# -- real QEMU ----------------------------------------------------------------------------------


def _files(tmp: Path, xml: str) -> str:
    for name in ("a.img", "b.qcow2", "c.iso", "d.img", "vmlinuz"):
        path = tmp / name
        path.write_bytes(b"")
        if name == "b.qcow2":
            import subprocess

            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True
            )
        else:
            path.write_bytes(b"\0" * (1 << 20))
    return xml.replace("/T/", f"{tmp}/")


LAUNCH_CASES = {
    "pc-everything": dom(
        "<disk><source file='/T/a.img'/><target dev='vda'/></disk>"
        "<disk><driver name='qemu' type='qcow2' cache='writeback'/><source file='/T/b.qcow2'/>"
        "<target dev='sda' bus='scsi'/></disk>"
        "<disk device='cdrom'><source file='/T/c.iso'/><target dev='hdc'/></disk>"
        "<disk device='cdrom'><target dev='hdd'/></disk>"
        "<disk><source file='/T/d.img'/><target dev='sdb' bus='sata'/></disk>"
        "<interface type='user'><model type='virtio'/></interface><interface type='user'/>"
        "<serial type='pty'/><console type='pty'><target type='virtio'/></console>"
        + AGENT
        + "<input type='tablet' bus='usb'/><input type='keyboard' bus='virtio'/>"
        "<graphics type='vnc' port='-1'/><video><model type='qxl'/></video>"
        "<video><model type='virtio'/></video>"
        "<watchdog model='i6300esb'/>" + RNG + "<panic model='isa'/>",
        body="<vcpu current='1'>2</vcpu><features><acpi/></features>",
    ),
    "q35-everything": dom(
        "<disk><source file='/T/a.img'/><target dev='vda'/></disk>"
        "<disk device='cdrom'><source file='/T/c.iso'/><target dev='sda' bus='sata'/></disk>"
        "<disk><driver name='qemu' type='qcow2'/><source file='/T/b.qcow2'/>"
        "<target dev='sdb' bus='scsi'/></disk>"
        "<controller type='scsi' model='virtio-scsi'/>"
        "<interface type='user'><model type='e1000e'/></interface>"
        "<interface type='user'><model type='rtl8139'/></interface>"
        "<controller type='usb' index='0' model='ich9-ehci1'/>"
        "<controller type='usb' index='0' model='ich9-uhci1'/>"
        "<input type='mouse' bus='usb'/><serial type='null'/>"
        "<video><model type='bochs'/></video><memballoon model='virtio'/>",
        machine="q35",
        body="<vcpu>2</vcpu><cpu><topology sockets='1' cores='2' threads='1'/></cpu>",
    ),
    "usb-hubs": dom("<input type='mouse' bus='usb'/>" * 5),
    "ich9-usb2-on-pc": dom(
        "<controller type='usb' index='0' model='ich9-ehci1'/>"
        "<controller type='usb' index='0' model='ich9-uhci1'/>"
        "<controller type='usb' index='0' model='ich9-uhci2'/>"
        "<controller type='usb' index='0' model='ich9-uhci3'/><input type='tablet' bus='usb'/>"
    ),
    "bridges": dom(
        "".join(
            f"<disk><source file='/T/a.img'/><target dev='vd{chr(97 + i)}'/><readonly/></disk>"
            for i in range(26)
        )
        + "<interface type='user'><model type='virtio'/></interface>" * 8
    ),
}


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(LAUNCH_CASES))
def test_qemu_accepts_the_command_line(
    caps: Caps, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, case: str
) -> None:
    xml = _files(tmp_path, LAUNCH_CASES[case])
    # Its sockets (a guest agent's) in a short directory: a parallel worker's tmp_path is
    # deeper, and the socket's name would not fit in sun_path there.
    argv = argv_of(caps, xml, tmp_path_factory.mktemp("sock"))
    try:
        got = launch_paused(argv, tmp_path)
    except QemuRefused as err:
        pytest.fail(f"QEMU refused the command line: {err}\n{argv}")
    d = prepare_domain(parse_domain_xml(xml), caps)
    assert got.status == "prelaunch"
    assert got.vcpus == d.vcpus
    assert got.memory_bytes == d.memory_kib * 1024
    ids = set(got.qom["/machine/peripheral"])
    expected = {x["id"] for x in devices(argv) if "id" in x}
    assert expected <= ids, expected - ids
    disks_with_media = [x for x in d.disks if x.source is not None]
    assert len([b for b in got.block if b.get("inserted")]) == len(disks_with_media)


@pytest.mark.qemu
def test_example_guest_config_starts(caps: Caps, tmp_path: Path) -> None:
    text = (REPO / "config" / "examples" / "minimal-tcg.xml").read_text()
    kernel = tmp_path / "vmlinuz"
    _fake_bzimage(kernel)
    (tmp_path / "initrd.cpio").write_bytes(b"\0" * 4096)
    text = text.replace("/var/tmp/asvirt-guest", str(tmp_path))
    got = launch_paused(argv_of(caps, text, tmp_path), tmp_path)
    assert (got.status, got.vcpus, got.memory_bytes) == ("prelaunch", 1, 128 << 20)
    labels = {c["label"] for c in got.chardevs}
    assert "charserial0" in labels


def _fake_bzimage(path: Path) -> None:
    # Enough of a Linux boot header for QEMU's loader; the guest never runs (-S).
    import struct

    buf = bytearray(64 * 1024)
    buf[0x1F1] = 4
    struct.pack_into("<H", buf, 0x1FE, 0xAA55)
    struct.pack_into("<I", buf, 0x202, 0x53726448)
    struct.pack_into("<H", buf, 0x206, 0x020C)
    buf[0x211] = 0x01
    struct.pack_into("<I", buf, 0x22C, 0x37FFFFFF)
    struct.pack_into("<I", buf, 0x238, 2048)
    path.write_bytes(bytes(buf))
