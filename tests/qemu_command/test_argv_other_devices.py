"""Command lines of the rest of libvirt's x86 devices (vsock, IOMMUs, ivshmem, panic models,
EGD and transitional RNGs, USB redirection filters), conformance style.

Each test gives its XML, the arguments libvirt builds for it, and a launch of the very argv
paused under the real QEMU, asked over QMP what it built; what QEMU cannot do on x86 is
refused, saying so.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import threading
import uuid
from pathlib import Path

import pytest
from qemu_launch import QemuRefused, launch_paused, launched_peripherals

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.capabilities import kvm_usable
from asvirt.drivers.qemu.command_other import auto_cid
from asvirt.drivers.qemu.helpers import check_host_devices
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import Caps
from tests.helpers import argv_of, device, dom, dumpxml_roundtrip, opts

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("dtype", ["qemu", "kvm"])
def test_intel_iommu_comes_first_with_its_options(caps: Caps, tmp_path: Path, dtype: str) -> None:
    eim = "eim='on' " if dtype == "kvm" else ""  # QEMU emulates EIM only with KVM's help
    xml = dom(
        f"<iommu model='intel'><driver intremap='on' caching_mode='on' {eim}iotlb='on' "
        "aw_bits='48'/></iommu>",
        body="<features><acpi/><apic/><ioapic driver='qemu'/></features>",
        machine="q35",
        dtype=dtype,
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-device")[0] == (
        '{"driver":"intel-iommu","id":"iommu0","intremap":"on","caching-mode":true,'
        + ('"eim":"on",' if eim else "")
        + '"device-iotlb":true,"aw-bits":48}'
    )
    assert "kernel_irqchip=split" in opts(argv, "-machine")[0]
    if dtype == "kvm" and not (usable := kvm_usable())[0]:
        pytest.skip(f"no KVM to launch with: {usable[1]}")
    assert "iommu0" in launched_peripherals(argv, tmp_path)
    assert f"<driver intremap='on' caching_mode='on' {eim}iotlb='on' aw_bits='48'/>" in (
        dumpxml_roundtrip(caps, xml)
    )
    if dtype == "qemu":
        with pytest.raises(ConfigUnsupportedError, match="eim needs KVM"):
            argv_of(caps, xml.replace("iotlb=", "eim='on' iotlb="))


def test_virtio_iommu_is_a_pci_device(caps: Caps, tmp_path: Path) -> None:
    xml = dom("<iommu model='virtio'/>", machine="q35")
    argv = argv_of(caps, xml, tmp_path)
    io = device(argv, "iommu0")
    assert (io["driver"], io["bus"]) == ("virtio-iommu-pci", "pcie.0")  # QEMU's only place
    assert "iommu0" in launched_peripherals(argv, tmp_path)
    dumpxml_roundtrip(caps, xml)


def test_vsock_cid_given_or_picked_per_domain(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(caps, dom("<vsock model='virtio'><cid auto='no' address='42'/></vsock>"))
    assert device(argv, "vsock0") == {
        "driver": "vhost-vsock-pci",
        "id": "vsock0",
        "guest-cid": 42,
        "bus": "pci.0",
        "addr": "0x3",
    }
    xml = dom("<vsock model='virtio'><cid auto='yes'/></vsock>")
    cid = device(argv_of(caps, xml), "vsock0")["guest-cid"]
    assert cid == auto_cid(parse_domain_xml(xml)) and 3 <= cid < (1 << 32) - 1
    assert "<cid auto='yes'/>" in dumpxml_roundtrip(caps, xml)
    if os.path.exists("/dev/vhost-vsock"):
        assert "vsock0" in launched_peripherals(argv_of(caps, xml, tmp_path), tmp_path)
    else:  # this host has no vhost_vsock: QEMU cannot open its side (the driver says so first)
        with pytest.raises(OperationFailedError, match="/dev/vhost-vsock"):
            check_host_devices(prepare_domain(parse_domain_xml(xml), caps))
        with pytest.raises((QemuRefused, ConnectionError)):
            launch_paused(argv_of(caps, xml, tmp_path), tmp_path)
        assert "vhost-vsock: failed to open" in (tmp_path / "qemu.stderr").read_text()


def test_ivshmem_plain_maps_a_host_shared_memory_object(caps: Caps, tmp_path: Path) -> None:
    name = f"asvirt-test-{uuid.uuid4().hex[:8]}"
    xml = dom(
        f"<shmem name='{name}' role='peer'><model type='ivshmem-plain'/>"
        "<size unit='M'>8</size></shmem>"
        f"<shmem name='{name}-b'/>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-object")[:2] == [
        f'{{"qom-type":"memory-backend-file","id":"shmmem-shmem0","mem-path":"/dev/shm/{name}",'
        '"size":8388608,"share":true}',
        f'{{"qom-type":"memory-backend-file","id":"shmmem-shmem1",'
        f'"mem-path":"/dev/shm/{name}-b","size":4194304,"share":true}}',
    ]
    sh = device(argv, "shmem0")
    assert (sh["driver"], sh["memdev"], sh["master"]) == ("ivshmem-plain", "shmmem-shmem0", "off")
    try:
        assert {"shmem0", "shmem1"} <= launched_peripherals(argv, tmp_path)
        assert os.path.getsize(f"/dev/shm/{name}") == 8 << 20
    finally:
        for leftover in (name, f"{name}-b"):
            Path("/dev/shm", leftover).unlink(missing_ok=True)
    out = dumpxml_roundtrip(caps, xml)
    assert "<size unit='M'>4</size>" in out  # libvirt's default size, written down


def _ivshmem_server(path: Path, size: int) -> threading.Thread:
    """A one-client ivshmem server: protocol version, the client's id, the memory's fd."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(10)

    def serve() -> None:
        with srv:
            conn, _ = srv.accept()
            fd = os.memfd_create("ivshmem")
            os.ftruncate(fd, size)
            with conn:
                conn.sendall(struct.pack("<q", 0))  # protocol version
                conn.sendall(struct.pack("<q", 1))  # the client's peer id
                conn.sendmsg(
                    [struct.pack("<q", -1)],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                )
                conn.recv(1)  # until QEMU goes
            os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_ivshmem_doorbell_talks_to_its_server(caps: Caps, tmp_path: Path) -> None:
    sock = tmp_path / "ivshmem.sock"
    xml = dom(
        "<shmem name='shared'><model type='ivshmem-doorbell'/>"
        f"<server path='{sock}'/><msi vectors='4' ioeventfd='on'/></shmem>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert f"socket,id=charshmem0,path={sock}" in opts(argv, "-chardev")
    sh = device(argv, "shmem0")
    assert (sh["driver"], sh["chardev"], sh["vectors"], sh["ioeventfd"]) == (
        "ivshmem-doorbell",
        "charshmem0",
        4,
        True,
    )
    server = _ivshmem_server(sock, 4 << 20)
    assert "shmem0" in launched_peripherals(argv, tmp_path)
    server.join(10)
    default = dom("<shmem name='x'><model type='ivshmem-doorbell'/><server/></shmem>")
    assert "socket,id=charshmem0,path=/var/lib/libvirt/shmem-x-sock" in opts(
        argv_of(caps, default), "-chardev"
    )
    dumpxml_roundtrip(caps, xml)


def test_panic_models(caps: Caps, tmp_path: Path) -> None:
    argv = argv_of(caps, dom("<panic model='pvpanic'/>", machine="q35"), tmp_path)
    panic = [json.loads(d) for d in opts(argv, "-device") if "pvpanic" in d]
    assert [p["driver"] for p in panic] == ["pvpanic-pci"]
    assert panic[0]["bus"].startswith("pci.")  # conventional PCI: behind a PCIe-to-PCI bridge
    launched_peripherals(argv, tmp_path)
    hv = dom(
        "<panic model='hyperv'/>",
        body="<features><hyperv><relaxed state='on'/></hyperv></features>",
    )
    argv = argv_of(caps, hv, tmp_path)
    assert opts(argv, "-cpu")[0].endswith(",hv-crash=on")
    assert not [d for d in opts(argv, "-device") if "pvpanic" in d]
    launched_peripherals(argv, tmp_path)
    dumpxml_roundtrip(caps, hv)
    assert "pvpanic" in dumpxml_roundtrip(caps, dom("<panic model='pvpanic'/>", machine="q35"))


def test_rng_egd_backends_and_transitional_models(caps: Caps, tmp_path: Path) -> None:
    egd = tmp_path / "egd.sock"
    xml = dom(
        "<rng model='virtio-transitional'><backend model='egd' type='unix'>"
        f"<source mode='bind' path='{egd}'/></backend></rng>"
        "<rng model='virtio-non-transitional'><rate bytes='1024' period='2000'/>"
        "<backend model='builtin'/></rng>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert f"socket,id=charrng0,path={egd},server=on,wait=off" in opts(argv, "-chardev")
    assert '{"qom-type":"rng-egd","id":"objrng0","chardev":"charrng0"}' in opts(argv, "-object")
    assert device(argv, "rng0")["driver"] == "virtio-rng-pci-transitional"
    rng1 = device(argv, "rng1")
    assert (rng1["driver"], rng1["max-bytes"], rng1["period"]) == (
        "virtio-rng-pci-non-transitional",
        1024,
        2000,
    )
    assert {"rng0", "rng1"} <= launched_peripherals(argv, tmp_path)
    dumpxml_roundtrip(caps, xml)
    tcp = dom(
        "<rng model='virtio'><backend model='egd' type='tcp'>"
        "<source mode='connect' host='1.2.3.4' service='1234'/><protocol type='raw'/>"
        "</backend></rng>"
    )
    assert "socket,id=charrng0,host=1.2.3.4,port=1234" in opts(argv_of(caps, tcp), "-chardev")
    dumpxml_roundtrip(caps, tcp)


def test_usb_redirection_filter(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        f"<graphics type='spice'><listen type='socket' socket='{tmp_path}/spice.sock'/>"
        "</graphics>"
        "<controller type='usb' model='qemu-xhci'/>"
        "<redirdev bus='usb' type='spicevmc'/><redirdev bus='usb' type='spicevmc'/>"
        "<redirfilter><usbdev class='0x08' vendor='0x15E1' product='0x2007' version='1.10' "
        "allow='yes'/><usbdev allow='no'/></redirfilter>"
    )
    argv = argv_of(caps, xml, tmp_path)
    for alias in ("redir0", "redir1"):
        assert device(argv, alias)["filter"] == "0x08:0x15E1:0x2007:0x0110:1|-1:-1:-1:-1:0"
    assert {"redir0", "redir1"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<usbdev class='0x08' vendor='0x15e1' product='0x2007' version='1.10'" in out


@pytest.mark.parametrize(
    ("devices", "machine", "why"),
    [
        ("<iommu model='smmuv3'/>", "q35", "ARM 'virt' machines"),
        ("<iommu model='intel'/>", "pc", "needs a q35 machine"),
        ("<iommu model='intel'><driver eim='on'/></iommu>", "q35", "eim needs intremap"),
        ("<panic model='pseries'/>", "pc", "QEMU has none on x86"),
        ("<shmem name='a'><model type='ivshmem'/></shmem>", "pc", "removed the legacy"),
        ("<shmem name='a'><size unit='K'>3000</size></shmem>", "pc", "power of two"),
        ("<vsock model='virtio-transitional'/>", "pc", "no transitional vhost-vsock"),
    ],
)
def test_what_qemu_cannot_do_is_refused_saying_so(
    caps: Caps, devices: str, machine: str, why: str
) -> None:
    with pytest.raises(ConfigUnsupportedError, match=why):
        prepare_domain(parse_domain_xml(dom(devices, machine=machine)), caps)


@pytest.mark.parametrize(
    "devices",
    [
        "<shmem name='a'><model type='ivshmem-plain'/><server/></shmem>",
        "<shmem name='a'><model type='ivshmem-doorbell'/></shmem>",
        "<shmem name='a'/><shmem name='a'/>",
        "<shmem name='../etc'/>",
        "<vsock><cid auto='no'/></vsock>",
        "<vsock/><vsock/>",
        "<redirfilter><usbdev allow='yes'/></redirfilter>",
        "<redirfilter><usbdev vendor='0x12345' allow='yes'/></redirfilter>",
    ],
)
def test_contradictions_are_xml_errors(caps: Caps, devices: str) -> None:
    with pytest.raises(XMLError):
        prepare_domain(parse_domain_xml(dom(devices)), caps)


# -- character devices: sockets, pipes, host devices, parallel and USB serial ports ----------------


def test_tcp_udp_pipe_tty_and_stdio_backends(caps: Caps, tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    for end in ("in", "out"):
        os.mkfifo(f"{pipe}.{end}")
    leader, follower = os.openpty()
    tty = os.ttyname(follower)
    xml = dom(
        "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='0'/>"
        "<protocol type='telnet'/><target port='0'/></serial>"
        "<serial type='udp'><source mode='bind' host='127.0.0.1' service='0'/>"
        "<source mode='connect' host='127.0.0.1' service='9'/><target port='1'/></serial>"
        f"<serial type='pipe'><source path='{pipe}'/><target port='2'/></serial>"
        f"<serial type='dev'><source path='{tty}'/><target port='3'/></serial>"
        "<channel type='tcp'><source mode='connect' host='127.0.0.1' service='1'/>"
        "<protocol type='raw'/><target type='virtio' name='org.asvirt.tcp'/></channel>"
        "<channel type='stdio'><target type='virtio' name='org.asvirt.stdio'/></channel>"
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-chardev")[1:] == [
        "socket,id=charserial0,host=127.0.0.1,port=0,telnet=on,server=on,wait=off",
        "udp,id=charserial1,host=127.0.0.1,port=9,localaddr=127.0.0.1,localport=0",
        f"pipe,id=charserial2,path={pipe}",
        f"tty,id=charserial3,path={tty}",
        "socket,id=charchannel0,host=127.0.0.1,port=1,reconnect=1",
        "stdio,id=charchannel1",
    ]
    try:
        got = launch_paused(argv, tmp_path)
    finally:
        os.close(leader)
        os.close(follower)
    kinds = {c["label"]: c["filename"] for c in got.chardevs}
    assert kinds["charserial0"].startswith("disconnected:telnet:127.0.0.1:")  # listening
    assert kinds["charserial1"] == "udp"
    assert kinds["charserial2"] == "pipe" and kinds["charchannel1"] == "stdio"
    out = dumpxml_roundtrip(caps, xml)
    assert (
        "<source mode='bind' host='127.0.0.1' service='0'/>\n      <protocol type='telnet'/>"
        in (out)
    )
    # The console that is serial port 0 shows the TCP socket too.
    assert "<console type='tcp'>" in out


def test_parallel_and_usb_serial_ports(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<controller type='usb' model='qemu-xhci'/>"
        f"<parallel type='file'><source path='{tmp_path}/lpt.log'/></parallel>"
        "<parallel type='pty'/>"
        "<serial type='pty'><target type='usb-serial' port='0'><model name='usb-serial'/>"
        "</target></serial>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert f"file,id=charparallel0,path={tmp_path}/lpt.log" in opts(argv, "-chardev")
    assert device(argv, "parallel1") == {
        "driver": "isa-parallel",
        "chardev": "charparallel1",
        "id": "parallel1",
    }
    assert device(argv, "serial0") == {
        "driver": "usb-serial",
        "chardev": "charserial0",
        "id": "serial0",
        "bus": "usb.0",
        "port": "1",
    }
    assert {"parallel0", "parallel1", "serial0"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<target port='1'/>" in out and "<address type='usb' bus='0' port='1'/>" in out
    lpt = dom("<parallel type='dev'><source path='/dev/parport0'/></parallel>")
    assert "parport,id=charparallel0,path=/dev/parport0" in opts(argv_of(caps, lpt), "-chardev")
    with pytest.raises(ConfigUnsupportedError, match="at most 3 parallel ports"):
        argv_of(caps, dom("<parallel type='pty'><target port='3'/></parallel>"))


# -- memory: NUMA cells, <numatune>, <maxMemory>, DIMMs and virtio-mem ----------------------------

NUMA = (
    "<vcpu>4</vcpu><cpu><topology sockets='2' cores='2' threads='1'/><numa>"
    "<cell id='0' cpus='0-1' memory='131072' unit='KiB'/>"
    "<cell id='1' cpus='2,3' memory='65536' unit='KiB' memAccess='shared'/></numa></cpu>"
    "<numatune><memory mode='strict' nodeset='0'/>"
    "<memnode cellid='1' mode='interleave' nodeset='0'/></numatune>"
)


def test_numa_cells_and_numatune(caps: Caps, tmp_path: Path) -> None:
    xml = dom(body=NUMA).replace("<memory unit='MiB'>128</memory>", "<memory>1</memory>")
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-m") == ["size=196608k"]  # the cells are the memory
    assert opts(argv, "-object")[:2] == [
        '{"qom-type":"memory-backend-ram","id":"ram-node0","size":134217728,'
        '"host-nodes":[0],"policy":"bind"}',
        '{"qom-type":"memory-backend-ram","id":"ram-node1","share":true,"size":67108864,'
        '"host-nodes":[0],"policy":"interleave"}',
    ]
    assert opts(argv, "-numa") == [
        "node,nodeid=0,cpus=0-1,memdev=ram-node0",
        "node,nodeid=1,cpus=2-3,memdev=ram-node1",
    ]
    assert "memory-backend=" not in opts(argv, "-machine")[0]
    got = launch_paused(argv, tmp_path)
    assert (got.vcpus, got.memory_bytes) == (4, 192 << 20)
    out = dumpxml_roundtrip(caps, xml)
    assert "<memory unit='KiB'>196608</memory>" in out
    assert "<cell id='1' cpus='2,3' memory='65536' unit='KiB' memAccess='shared'/>" in out
    assert "<memnode cellid='1' mode='interleave' nodeset='0'/>" in out
    # Without cells, <numatune> places all of RAM.
    plain = argv_of(caps, dom(body="<numatune><memory nodeset='0'/></numatune>"), tmp_path)
    assert opts(plain, "-object")[0] == (
        '{"qom-type":"memory-backend-ram","id":"pc.ram","host-nodes":[0],"policy":"bind",'
        '"x-use-canonical-path-for-ramblock-id":false,"size":134217728}'
    )
    assert launch_paused(plain, tmp_path).memory_bytes == 128 << 20


def test_dimms_and_virtio_mem_plug_into_max_memory(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target>"
        "</memory>"
        "<memory model='dimm'><target><size unit='MiB'>64</size><node>1</node></target>"
        "<address type='dimm' slot='3'/></memory>"
        "<memory model='virtio-mem'><target><size unit='MiB'>256</size><node>0</node>"
        "<block unit='KiB'>2048</block><requested unit='MiB'>64</requested></target></memory>",
        body=NUMA.replace("<numatune>", "<!--").replace("</numatune>", "-->")
        + "<features><acpi/></features>",
        machine="q35",
    ).replace(
        "<memory unit='MiB'>128</memory>",
        "<maxMemory slots='4' unit='GiB'>2</maxMemory><memory unit='MiB'>128</memory>",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-m") == ["size=196608k,slots=4,maxmem=2097152k"]
    assert '{"qom-type":"memory-backend-ram","id":"memdimm0","size":134217728}' in opts(
        argv, "-object"
    )
    assert device(argv, "dimm0") == {
        "node": 0,
        "driver": "pc-dimm",
        "memdev": "memdimm0",
        "id": "dimm0",
        "slot": 0,
    }
    assert device(argv, "dimm1")["slot"] == 3
    assert (
        '{"qom-type":"memory-backend-ram","id":"memvirtiomem0","size":268435456,'
        '"reserve":false}' in opts(argv, "-object")
    )
    vm = device(argv, "virtiomem0")
    assert (vm["driver"], vm["block-size"], vm["requested-size"], vm["memdev"]) == (
        "virtio-mem-pci",
        2 << 20,
        64 << 20,
        "memvirtiomem0",
    )
    got = launch_paused(argv, tmp_path)
    assert got.memory_bytes == 192 << 20 and {"dimm0", "dimm1", "virtiomem0"} <= set(
        got.qom["/machine/peripheral"]
    )
    out = dumpxml_roundtrip(caps, xml)
    assert "<memory unit='KiB'>655360</memory>" in out  # cells + every device, as libvirt
    assert "<address type='dimm' slot='0'/>" in out and "<address type='dimm' slot='3'/>" in out


@pytest.mark.parametrize(
    ("xml_change", "error"),
    [
        ("<memory model='dimm'><target><size unit='MiB'>64</size></target></memory>", "maxMemory"),
        (
            "<memory model='dimm'><target><size unit='MiB'>64</size></target></memory>"
            "<!--maxMemory-->",
            "through ACPI",
        ),
        (
            "<memory model='virtio-mem'><target><size unit='MiB'>64</size>"
            "<block unit='KiB'>1024</block></target></memory>",
            "power of two",
        ),
        ("<memory model='nvdimm'><target><size unit='MiB'>64</size></target></memory>", "nvdimm"),
    ],
)
def test_memory_devices_refused_saying_why(caps: Caps, xml_change: str, error: str) -> None:
    xml = dom(xml_change)
    if "virtio-mem" in xml_change or "<!--maxMemory-->" in xml_change:
        xml = xml.replace(
            "<memory unit", "<maxMemory slots='1' unit='GiB'>1</maxMemory><memory unit"
        )
    with pytest.raises(XMLError, match=error):
        prepare_domain(parse_domain_xml(xml), caps)


# -- SMBIOS tables, fw_cfg, the VM generation id, I/O threads --------------------------------------


def test_sysinfo_smbios_fwcfg_and_genid(caps: Caps, tmp_path: Path) -> None:
    xml = (
        dom(
            body="<sysinfo type='smbios'><bios><entry name='vendor'>ACME, Inc.</entry>"
            "<entry name='version'>1.2</entry></bios><system>"
            "<entry name='manufacturer'>Fedora</entry><entry name='serial'>1234</entry>"
            "<entry name='uuid'>c7a5fdbd-edaf-9455-926a-d65c16db1809</entry></system>"
            "<baseBoard><entry name='product'>board</entry></baseBoard>"
            "<chassis><entry name='asset'>tag</entry></chassis>"
            "<oemStrings><entry>myappname:some arbitrary data</entry></oemStrings></sysinfo>"
            "<sysinfo type='fwcfg'><entry name='opt/com.example/name'>example value</entry>"
            "</sysinfo>"
        )
        .replace("</type></os>", "</type><smbios mode='sysinfo'/></os>")
        .replace("</uuid>", "</uuid><genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>")
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-smbios") == [
        "type=0,vendor=ACME,, Inc.,version=1.2",
        "type=1,manufacturer=Fedora,serial=1234,uuid=c7a5fdbd-edaf-9455-926a-d65c16db1809",
        "type=2,product=board",
        "type=3,asset=tag",
        "type=11,value=myappname:some arbitrary data",
    ]
    assert opts(argv, "-fw_cfg") == ["name=opt/com.example/name,string=example value"]
    assert device(argv, "vmgenid0") == {
        "driver": "vmgenid",
        "guid": "43dc0cf8-809b-4adb-9bea-a9abb5f3d90d",
        "id": "vmgenid0",
    }
    assert "vmgenid0" in launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<smbios mode='sysinfo'/>" in out and "<genid>43dc0cf8" in out
    fresh = parse_domain_xml(dom().replace("</uuid>", "</uuid><genid/>"))
    assert fresh.genid is not None and len(fresh.genid) == 36  # made at define, as libvirt


def test_iothreads_for_virtio_disks_and_scsi(caps: Caps, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    xml = dom(
        "<disk type='file' device='disk'><driver name='qemu' type='raw' iothread='2'/>"
        f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>"
        "<controller type='scsi' model='virtio-scsi'><driver queues='2' iothread='1'/>"
        "</controller>",
        body="<iothreads>2</iothreads><iothreadids><iothread id='2'/></iothreadids>",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert opts(argv, "-object")[:2] == [
        '{"qom-type":"iothread","id":"iothread2"}',
        '{"qom-type":"iothread","id":"iothread1"}',
    ]
    assert device(argv, "virtio-disk0")["iothread"] == "iothread2"
    assert device(argv, "scsi0")["iothread"] == "iothread1"
    assert {"virtio-disk0", "scsi0"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<iothreads>2</iothreads>" in out and "<iothread id='1'/>" in out
    with pytest.raises(ConfigUnsupportedError, match="only virtio disks"):
        argv_of(
            caps,
            dom(
                "<disk type='file'><driver name='qemu' type='raw' iothread='1'/>"
                f"<source file='{image}'/><target dev='sda' bus='sata'/></disk>",
                body="<iothreads>1</iothreads>",
            ),
        )


# -- host input devices --------------------------------------------------------------------------


def test_host_input_devices(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event1'/></input>"
        "<input type='evdev'><source dev='/dev/input/event2' grab='all' grabToggle='ctrl-ctrl' "
        "repeat='on'/></input>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    host = device(argv, "input0")
    assert (host["driver"], host["evdev"]) == ("virtio-input-host-pci", "/dev/input/event1")
    assert (
        '{"qom-type":"input-linux","id":"input1","evdev":"/dev/input/event2","repeat":true,'
        '"grab_all":true,"grab-toggle":"ctrl-ctrl"}' in opts(argv, "-object")
    )
    out = dumpxml_roundtrip(caps, xml)
    assert "<input type='evdev'>" in out and "<input type='passthrough' bus='virtio'>" in out
    d = prepare_domain(parse_domain_xml(xml), caps)
    if os.path.exists("/dev/input/event1") and os.path.exists("/dev/input/event2"):
        assert {"input0"} <= launched_peripherals(argv, tmp_path)
    else:  # no input devices on this host: the start says which is missing
        with pytest.raises(OperationFailedError, match="/dev/input/event1"):
            check_host_devices(d)


# -- smartcards ----------------------------------------------------------------------------------


def test_smartcards_in_ccid_readers(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        f"<graphics type='spice'><listen type='socket' socket='{tmp_path}/spice.sock'/>"
        "</graphics><controller type='usb' model='qemu-xhci'/>"
        "<smartcard mode='passthrough' type='spicevmc'/>"
        "<smartcard mode='passthrough' type='tcp'><source mode='bind' host='127.0.0.1' "
        "service='0'/><protocol type='raw'/></smartcard>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    assert device(argv, "ccid0") == {
        "driver": "usb-ccid",
        "id": "ccid0",
        "bus": "usb.0",
        "port": "1",
    }
    assert "spicevmc,id=charsmartcard0,name=smartcard" in opts(argv, "-chardev")
    assert "socket,id=charsmartcard1,host=127.0.0.1,port=0,server=on,wait=off" in opts(
        argv, "-chardev"
    )
    assert device(argv, "smartcard0") == {
        "driver": "ccid-card-passthru",
        "chardev": "charsmartcard0",
        "id": "smartcard0",
        "bus": "ccid0.0",
    }
    assert device(argv, "smartcard1")["bus"] == "ccid1.0"  # one card per reader
    assert {"ccid0", "ccid1", "smartcard0", "smartcard1"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<controller type='ccid' index='1'>" in out
    assert "<address type='ccid' controller='1' slot='0'/>" in out
    certs = dom(
        "<smartcard mode='host-certificates'><certificate>cert1</certificate>"
        "<certificate>cert2</certificate><certificate>cert3</certificate>"
        "<database>/etc/pki/nssdb/</database></smartcard><smartcard mode='host'/>"
    )
    argv = argv_of(caps, certs)
    assert device(argv, "smartcard0") == {
        "driver": "ccid-card-emulated",
        "backend": "certificates",
        "cert1": "cert1",
        "cert2": "cert2",
        "cert3": "cert3",
        "db": "/etc/pki/nssdb/",
        "id": "smartcard0",
        "bus": "ccid0.0",
    }
    assert device(argv, "smartcard1")["backend"] == "nss-emulated"
    dumpxml_roundtrip(caps, certs)


def test_virtio_driver_options_of_balloon_and_rng(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<memballoon model='virtio' autodeflate='on'><driver iommu='on' ats='on' packed='on'/>"
        "</memballoon><rng model='virtio'><driver iommu='on' page_per_vq='on'/>"
        "<backend model='builtin'/></rng>",
        machine="q35",
    )
    argv = argv_of(caps, xml, tmp_path)
    bal = device(argv, "balloon0")
    assert (bal["deflate-on-oom"], bal["iommu_platform"], bal["ats"], bal["packed"]) == (
        True,
        True,
        True,
        True,
    )
    rng = device(argv, "rng0")
    assert (rng["iommu_platform"], rng["page-per-vq"]) == (True, True)
    assert {"balloon0", "rng0"} <= launched_peripherals(argv, tmp_path)
    out = dumpxml_roundtrip(caps, xml)
    assert "<driver iommu='on' ats='on' packed='on'/>" in out
