"""Command lines of the devices and features virt-install and virt-manager write.

Each test gives its XML, the arguments libvirt would build for it (ids, JSON -device
objects), and, where QEMU can start it on this machine, a launch of the very argv paused
under the real QEMU, asked over QMP what it built.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from qemu_launch import launch_paused, launched_peripherals

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.command import MonitorSpec, build_command, fill_runtime_paths
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError
from tests.caps import Caps
from tests.helpers import argv_of, device, devices, dom, opts

pytestmark = pytest.mark.qemu

CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def test_explicit_pflash_loader_and_nvram(caps: Caps, tmp_path: Path) -> None:
    nvram = tmp_path / "vm1_VARS.fd"
    xml = dom(machine="q35").replace(
        "</type></os>",
        f"</type><loader readonly='yes' type='pflash'>{CODE}</loader>"
        f"<nvram template='{VARS}'>{nvram}</nvram></os>",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-blockdev")[0] == (
        f'{{"driver":"file","filename":"{CODE}","node-name":"libvirt-pflash0-storage",'
        '"auto-read-only":true,"discard":"unmap"}'
    )
    assert (
        ",pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format"
        in opts(argv, "-machine")[0]
    )
    shutil.copy(VARS, nvram)
    got = launch_paused(argv, tmp_path)
    flashes = {b["qdev"]: b["inserted"]["file"] for b in got.block if b.get("qdev")}
    assert flashes == {"/machine/system.flash0": CODE, "/machine/system.flash1": str(nvram)}


@pytest.mark.parametrize(
    ("features", "code"),
    [
        (
            "<feature enabled='no' name='enrolled-keys'/>"
            "<feature enabled='yes' name='secure-boot'/>",
            "OVMF_CODE_4M.secboot.fd",
        ),
        ("<feature enabled='yes' name='secure-boot'/>", "OVMF_CODE_4M.ms.fd"),  # the first
        (
            "<feature enabled='yes' name='enrolled-keys'/>"
            "<feature enabled='yes' name='secure-boot'/>",
            "OVMF_CODE_4M.ms.fd",
        ),
        ("<feature enabled='no' name='secure-boot'/>", "OVMF_CODE_4M.fd"),
    ],
)
def test_firmware_autoselection_follows_the_descriptors(
    caps: Caps, tmp_path: Path, features: str, code: str
) -> None:
    xml = dom(machine="q35").replace("<os>", f"<os firmware='efi'><firmware>{features}</firmware>")
    d = prepare_domain(parse_domain_xml(xml), caps, nvram_dir=str(tmp_path))
    assert d.os.loader is not None and d.os.loader.path == f"/usr/share/OVMF/{code}"
    secure = code != "OVMF_CODE_4M.fd"
    assert bool(d.os.loader.secure) is secure
    assert (d.features.smm == "on") is secure  # Secure Boot's firmware requires SMM
    argv = argv_of(caps, xml, tmp_path)
    assert ("driver=cfi.pflash01,property=secure,value=on" in opts(argv, "-global")) is secure
    assert d.os.nvram is not None and d.os.nvram.template is not None
    shutil.copy(d.os.nvram.template, tmp_path / "vm1_VARS.fd")
    launched_peripherals(argv, tmp_path)


def test_no_firmware_fits_is_refused_naming_the_wish(caps: Caps) -> None:
    xml = dom(machine="pc").replace(
        "<os>",
        "<os firmware='efi'><firmware><feature enabled='yes' name='secure-boot'/></firmware>",
    )
    with pytest.raises(ConfigUnsupportedError, match=r"no UEFI firmware .*secure-boot=yes"):
        prepare_domain(parse_domain_xml(xml), caps)


HYPERV_ALL = (
    "<features><hyperv mode='custom'><relaxed state='on'/><vapic state='on'/>"
    "<spinlocks state='on' retries='8191'/><vpindex state='on'/><runtime state='on'/>"
    "<synic state='on'/><stimer state='on'><direct state='on'/></stimer><reset state='on'/>"
    "<vendor_id state='on' value='KVM Hv'/><frequencies state='on'/>"
    "<reenlightenment state='on'/><tlbflush state='on'><direct state='on'/>"
    "<extended state='on'/></tlbflush><ipi state='on'/><evmcs state='on'/>"
    "<avic state='on'/><emsr_bitmap state='on'/><xmm_input state='on'/></hyperv>"
    "<kvm><hidden state='on'/><hint-dedicated state='on'/><poll-control state='on'/>"
    "<pv-ipi state='off'/></kvm><pvspinlock state='on'/><pmu state='off'/></features>"
    "<clock offset='localtime'><timer name='hypervclock' present='yes'/>"
    "<timer name='tsc' frequency='2000000000'/></clock>"
)


def test_every_hyperv_enlightenment_of_qemu_7_2(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(caps, dom(body=HYPERV_ALL, dtype="kvm"), tmp_path)
    assert opts(argv, "-cpu") == [
        "qemu64,hv-relaxed=on,hv-vapic=on,hv-spinlocks=0x1fff,hv-vpindex=on,hv-runtime=on,"
        "hv-synic=on,hv-stimer=on,hv-reset=on,hv-vendor-id=KVM Hv,hv-frequencies=on,"
        "hv-reenlightenment=on,hv-tlbflush=on,hv-ipi=on,hv-evmcs=on,hv-avic=on,"
        "hv-emsr-bitmap=on,hv-xmm-input=on,hv-stimer-direct=on,hv-tlbflush-direct=on,"
        "hv-tlbflush-ext=on,hv-time=on,kvm=off,kvm-hint-dedicated=on,kvm-poll-control=on,"
        "kvm-pv-ipi=off,kvm-pv-unhalt=on,pmu=off,tsc-frequency=2000000000"
    ]
    assert opts(argv, "-rtc") == ["base=localtime"]


def test_hyperv_passthrough_and_what_starts_under_tcg(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(caps, dom(body="<features><hyperv mode='passthrough'/></features>"), tmp_path)
    assert opts(argv, "-cpu") == ["qemu64,hv-passthrough=on"]
    launched_peripherals(argv, tmp_path)
    # What QEMU 7.2 gives a TCG guest on any kernel (VP_INDEX and what needs it ask KVM).
    body = (
        "<features><hyperv><relaxed state='on'/><vapic state='on'/>"
        "<spinlocks state='on' retries='4096'/><runtime state='on'/><reset state='on'/>"
        "<vendor_id state='on' value='asvirt'/><frequencies state='on'/>"
        "<reenlightenment state='on'/><evmcs state='on'/></hyperv><kvm><hidden state='on'/>"
        "</kvm></features><clock offset='localtime'><timer name='hypervclock' present='yes'/>"
        "</clock><pm><suspend-to-mem enabled='yes'/><suspend-to-disk enabled='no'/></pm>"
    )
    argv = argv_of(caps, dom(body=body), tmp_path)
    assert "hv-spinlocks=0x1000" in opts(argv, "-cpu")[0]
    assert {"PIIX4_PM.disable_s3=0", "PIIX4_PM.disable_s4=1"} <= set(opts(argv, "-global"))
    launched_peripherals(argv, tmp_path)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("<features><hyperv><synic state='on'/></hyperv></features>", "'synic' needs 'vpindex'"),
        (
            "<features><hyperv><vpindex state='on'/><synic state='on'/><stimer state='on'/>"
            "</hyperv></features>",
            "hypervclock",
        ),
        ("<clock><timer name='tsc' mode='native'/></clock>", "QEMU has no TSC mode"),
        ("<features><msrs unknown='ignore'/></features>", "not a QEMU setting"),
    ],
)
def test_what_qemu_cannot_do_is_refused_saying_so(caps: Caps, body: str, why: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match=why):
        prepare_domain(parse_domain_xml(dom(body=body)), caps)


SPICE = (
    "<controller type='usb' model='qemu-xhci'/>"
    "<channel type='spicevmc'><target type='virtio'/></channel>"
    "<channel type='spiceport'><source channel='org.asvirt.test'/>"
    "<target type='virtio' name='org.asvirt.test'/></channel>"
    "<graphics type='spice' port='5999' autoport='no' listen='127.0.0.1'>"
    "<image compression='auto_glz'/><jpeg compression='never'/><zlib compression='always'/>"
    "<playback compression='off'/><streaming mode='filter'/><clipboard copypaste='no'/>"
    "<mouse mode='client'/><filetransfer enable='no'/></graphics>"
    "<video><model type='qxl' ram='65536' vram='32768' vgamem='8192' heads='2'/></video>"
    "<video><model type='virtio' heads='2'/></video>"
    "<redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>"
)


def test_spice_channels_video_and_usb_redirection(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(caps, dom(SPICE, machine="q35"), tmp_path)
    assert opts(argv, "-spice") == [
        "port=5999,addr=127.0.0.1,disable-ticketing=on,image-compression=auto_glz,"
        "jpeg-wan-compression=never,zlib-glz-wan-compression=always,playback-compression=off,"
        "streaming-video=filter,disable-copy-paste=on,agent-mouse=on,"
        "disable-agent-file-xfer=on,seamless-migration=on"
    ]
    chardevs = opts(argv, "-chardev")
    assert "spicevmc,id=charchannel0,name=vdagent" in chardevs
    assert "spiceport,id=charchannel1,name=org.asvirt.test" in chardevs
    assert "spicevmc,id=charredir1,name=usbredir" in chardevs
    assert device(argv, "channel0")["name"] == "com.redhat.spice.0"
    qxl = device(argv, "video0")
    assert (qxl["driver"], qxl["max_outputs"], qxl["ram_size"], qxl["vram_size"]) == (
        "qxl-vga",
        2,
        64 << 20,
        32 << 20,
    )
    assert qxl["vgamem_mb"] == 8
    assert device(argv, "video1")["driver"] == "virtio-gpu-pci"
    assert device(argv, "redir1")["driver"] == "usb-redir"
    assert opts(argv, "-audiodev") == ['{"id":"audio1","driver":"spice"}']
    assert {"video0", "video1", "redir0", "redir1", "channel0", "channel1"} <= launched_peripherals(
        argv, tmp_path
    )


def test_spice_over_a_unix_socket(caps: Caps, tmp_path: Path) -> None:
    sock = tmp_path / "spice.sock"
    xml = dom(f"<graphics type='spice'><listen type='socket' socket='{sock}'/></graphics>")
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-spice")[0].startswith(f"unix=on,addr={sock},disable-ticketing=on")
    launched_peripherals(argv, tmp_path)
    with pytest.raises(ConfigUnsupportedError, match="TLS"):
        argv_of(caps, dom("<graphics type='spice' tlsPort='5901'/>"), tmp_path)


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_sound_models_codecs_and_their_audio_backend(
    caps: Caps, tmp_path: Path, machine: str
) -> None:
    wav = tmp_path / "out.wav"
    sounds = (
        "<sound model='ich9'><codec type='micro'/><codec type='output'/><audio id='2'/></sound>"
        "<sound model='ich6'/><sound model='ac97'/><sound model='es1370'/>"
        "<sound model='usb'/>"
        f"<audio id='1' type='none'/><audio id='2' type='file' path='{wav}'/>"
    )
    argv = argv_of(caps, dom(sounds, machine=machine), tmp_path)
    assert opts(argv, "-audiodev") == [
        '{"id":"audio1","driver":"none"}',
        f'{{"id":"audio2","driver":"wav","path":"{wav}"}}',
    ]
    ich9 = device(argv, "sound0")
    assert ich9["driver"] == "ich9-intel-hda"
    if machine == "q35":
        assert (ich9["bus"], ich9["addr"]) == ("pcie.0", "0x1b")
    assert device(argv, "sound0-codec0") == {
        "driver": "hda-micro",
        "id": "sound0-codec0",
        "bus": "sound0.0",
        "cad": 0,
        "audiodev": "audio2",
    }
    assert device(argv, "sound0-codec1")["driver"] == "hda-output"
    assert device(argv, "sound1-codec0")["audiodev"] == "audio1"  # hda-duplex by default
    assert [device(argv, f"sound{i}")["driver"] for i in (2, 3, 4)] == [
        "AC97",
        "ES1370",
        "usb-audio",
    ]
    assert {f"sound{i}" for i in range(5)} <= launched_peripherals(argv, tmp_path)


def test_9p_shares_and_shared_memory(caps: Caps, tmp_path: Path) -> None:
    shares = (
        f"<filesystem type='mount' accessmode='mapped' fmode='0644' dmode='0755'>"
        f"<source dir='{tmp_path}'/><target dir='data'/><readonly/></filesystem>"
        f"<filesystem type='mount' accessmode='squash' multidevs='remap'>"
        f"<driver type='path'/><source dir='{tmp_path}'/><target dir='squashed'/></filesystem>"
    )
    body = (
        "<memoryBacking><nosharepages/><source type='memfd'/><access mode='shared'/>"
        "<allocation mode='immediate'/></memoryBacking>"
    )
    argv = argv_of(caps, dom(shares, body=body), tmp_path)
    assert opts(argv, "-fsdev") == [
        f"local,security_model=mapped,id=fsdev-fs0,path={tmp_path},readonly=on,fmode=0644,"
        "dmode=0755",
        f"local,security_model=none,id=fsdev-fs1,path={tmp_path},multidevs=remap",
    ]
    assert device(argv, "fs0")["mount_tag"] == "data"
    assert opts(argv, "-object")[0] == (
        '{"qom-type":"memory-backend-memfd","id":"pc.ram","share":true,"prealloc":true,'
        '"x-use-canonical-path-for-ramblock-id":false,"size":134217728}'
    )
    assert ",mem-merge=off,memory-backend=pc.ram" in opts(argv, "-machine")[0]
    assert {"fs0", "fs1"} <= launched_peripherals(argv, tmp_path)


def test_virtiofs_and_tpm_emulator_sockets(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        f"<filesystem type='mount'><driver type='virtiofs' queue='512'/>"
        f"<source dir='{tmp_path}'/><target dir='share'/></filesystem>"
        "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
        body="<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    fs = device(argv, "fs0")
    assert (fs["driver"], fs["chardev"], fs["queue-size"], fs["tag"]) == (
        "vhost-user-fs-pci",
        "chr-vu-fs0",
        512,
        "share",
    )
    assert f"socket,id=chr-vu-fs0,path={tmp_path}/c7a5fdbd-fs0-fs.sock" in opts(argv, "-chardev")
    assert f"socket,id=chrtpm,path={tmp_path}/c7a5fdbd-swtpm.sock" in opts(argv, "-chardev")
    assert opts(argv, "-tpmdev") == ["emulator,id=tpm-tpm0,chardev=chrtpm"]
    assert device(argv, "tpm0") == {"driver": "tpm-crb", "tpmdev": "tpm-tpm0", "id": "tpm0"}
    # Launched with their helpers by the driver: tests/test_qemu_host_helpers.py.


def test_tpm_passthrough_and_host_devices(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/>"
        "</backend></tpm>"
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x06' slot='0x12' function='0x5'/></source>"
        "<boot order='1'/><rom bar='off'/></hostdev>"
        "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
        "<product id='0xbeef'/></source></hostdev>"
        "<hostdev mode='subsystem' type='usb'><source><address bus='1' device='2'/>"
        "</source></hostdev>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-tpmdev") == [
        "passthrough,id=tpm-tpm0,path=/dev/tpm0,cancel-path=/sys/class/tpm/tpm0/device/cancel"
    ]
    pci = device(argv, "hostdev0")
    assert (pci["driver"], pci["host"], pci["bootindex"], pci["rombar"]) == (
        "vfio-pci",
        "0000:06:12.5",
        1,
        0,
    )
    assert pci["bus"].startswith("pci.")  # a PCIe device: behind a root port on q35
    usb = device(argv, "hostdev1")
    assert (usb["driver"], usb["vendorid"], usb["productid"]) == ("usb-host", 0x1234, 0xBEEF)
    assert device(argv, "hostdev2")["hostdevice"] == "/dev/bus/usb/001/002"
    # No assignable device on these machines: starting them is refused (see the driver test).
    assert [d["driver"] for d in devices(argv)].count("usb-host") == 2


def test_a_started_spice_display_keeps_the_port_its_live_xml_names(
    caps: Caps, tmp_path: Path
) -> None:
    # A start gives the live definition its automatic port, then builds the argv from it:
    # the argv must name that port, not probe for a free one again (which could differ).
    d = prepare_domain(
        parse_domain_xml(dom("<graphics type='spice' autoport='yes' listen='127.0.0.1'/>")), caps
    )
    fill_runtime_paths(d, str(tmp_path))
    port = d.graphics[0].port
    assert port is not None and port >= 5900
    with socket.socket() as taken:  # the port is no longer free when the argv is built
        taken.bind(("127.0.0.1", port))
        taken.listen()
        argv = build_command(d, caps, monitor=MonitorSpec(path=str(tmp_path / "m.sock")))
    assert opts(argv, "-spice")[0].startswith(f"port={port},")
