"""Command lines of the last refusals QEMU can do (issue 12): vhost-net for tap NICs, USB
redirection over a TCP or unix chardev, video drivers, numad placement.

Each test gives its XML, the arguments libvirt 9 builds for it on QEMU 7.2, a round trip
through dumpxml validated against libvirt's schema, and a launch under the real QEMU where
this host allows; what the host lacks is refused at start, saying so (those starts are in
tests/test_network_host.py and tests/test_qemu_more_devices.py).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from qemu_launch import launch_paused, launched_peripherals

from asvirt.conf.devices import Interface, Video
from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu import vhostnet
from asvirt.drivers.qemu.command import MonitorSpec, build_command
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.drivers.qemu.vhostusergpu import GpuBackend, gpu_argv, host_render_node
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import Caps
from tests.helpers import TAP_NIC_SOURCES, argv_of, device, dom, dumpxml_roundtrip, opts

pytestmark = pytest.mark.qemu


# -- vhost-net -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", TAP_NIC_SOURCES)
def test_vhost_net_descriptors_beside_the_taps(caps: Caps, source: str) -> None:
    xml = dom(f"{source}<model type='virtio'/><driver name='vhost' queues='2'/></interface>")
    assert "<driver name='vhost' queues='2'/>" in dumpxml_roundtrip(caps, xml)
    d = prepare_domain(parse_domain_xml(xml), caps)
    # As libvirt: one /dev/vhost-net descriptor per queue pair, beside the tap's.
    argv = build_command(
        d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21, 22]}, vhost_fds={"net0": [23, 24]}
    )
    assert opts(argv, "-netdev") == ["tap,fds=21:22,vhost=on,vhostfds=23:24,id=hostnet0"]
    nic = device(argv, "net0")
    assert (nic["driver"], nic["netdev"], nic["mq"]) == ("virtio-net-pci", "hostnet0", True)
    one = xml.replace(" queues='2'", "")
    d = prepare_domain(parse_domain_xml(one), caps)
    argv = build_command(
        d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21]}, vhost_fds={"net0": [22]}
    )
    assert opts(argv, "-netdev") == ["tap,fd=21,vhost=on,vhostfd=22,id=hostnet0"]
    # Shown without descriptors (domxml-to-native): demanded, so QEMU would open it.
    assert "vhost=on" in opts(argv_of(caps, one), "-netdev")[0].split(",")


def test_vhost_net_is_for_virtio_nics_on_taps(caps: Caps) -> None:
    # The default (no name) and name='qemu' show no vhost; a start decides the default.
    plain = dom("<interface type='ethernet'><model type='virtio'/></interface>")
    assert "vhost" not in opts(argv_of(caps, plain), "-netdev")[0]
    qemu = plain.replace("</interface>", "<driver name='qemu'/></interface>")
    assert "<driver name='qemu'/>" in dumpxml_roundtrip(caps, qemu)
    assert "vhost" not in opts(argv_of(caps, qemu), "-netdev")[0]
    with pytest.raises(ConfigUnsupportedError, match="only supported for virtio network"):
        argv_of(caps, plain.replace("virtio", "e1000").replace("</i", "<driver name='vhost'/></i"))
    for kind in ("<interface type='user'>", "<interface type='mcast'><source address="
                 "'230.0.0.1' port='5558'/>"):  # fmt: skip
        with pytest.raises(ConfigUnsupportedError, match="serves tap and macvtap backends only"):
            argv_of(caps, dom(f"{kind}<model type='virtio'/><driver name='vhost'/></interface>"))
    with pytest.raises(XMLError, match="name"):
        argv_of(caps, plain.replace("</interface>", "<driver name='vfio'/></interface>"))


def test_vhost_net_opened_per_queue_or_refused_when_absent(caps: Caps) -> None:
    """What a start opens: the real /dev/vhost-net where the host has it, else nothing for
    the default and a refusal naming the device for name='vhost'."""

    def nic_of(extra: str) -> Interface:
        xml = dom(f"<interface type='bridge'><source bridge='br0'/><model type='virtio'/>{extra}"
                  "</interface>")  # fmt: skip
        return prepare_domain(parse_domain_xml(xml), caps).interfaces[0]

    assert vhostnet.open_vhost_net(nic_of("<driver name='qemu' queues='2'/>")) == []
    e1000 = prepare_domain(
        parse_domain_xml(dom("<interface type='bridge'><source bridge='br0'/></interface>")), caps
    ).interfaces[0]
    assert vhostnet.open_vhost_net(e1000) == []
    default = nic_of("<driver queues='2'/>")
    demanded = nic_of("<driver name='vhost' queues='2'/>")
    if not os.path.exists(vhostnet.VHOST_NET):
        assert vhostnet.open_vhost_net(default) == []
        with pytest.raises(OperationFailedError, match=r"no such device .*vhost_net kernel module"):
            vhostnet.open_vhost_net(demanded)
        return
    fds = vhostnet.open_vhost_net(demanded)
    try:
        assert len(fds) == 2
        assert all(os.readlink(f"/proc/self/fd/{fd}") == vhostnet.VHOST_NET for fd in fds)
    finally:
        vhostnet.close_all(fds)


# -- USB redirection over a chardev --------------------------------------------------------------

#: usbredir's packet header (type, length, id: little-endian u32s) and its hello's version.
_USBREDIR_HELLO = 0
_USBREDIR_VERSION_LEN = 64


def _usbredir_hello(conn: socket.socket) -> bytes:
    """The first packet a usbredir peer sent on ``conn`` (QEMU's usb-redir speaks first):
    checked to be a hello; returns its version string."""
    conn.settimeout(10)
    data = b""
    while len(data) < 12:
        chunk = conn.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    kind, length, ident = struct.unpack("<III", data[:12])
    assert (kind, ident) == (_USBREDIR_HELLO, 0)
    assert length >= _USBREDIR_VERSION_LEN + 4  # the version, then the capability words
    while len(data) < 12 + _USBREDIR_VERSION_LEN:
        data += conn.recv(4096)
    return data[12 : 12 + _USBREDIR_VERSION_LEN].split(b"\0", 1)[0]


def test_redirdev_over_tcp_reaches_a_usbredir_peer(caps: Caps, tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        xml = dom(
            "<controller type='usb' model='qemu-xhci'/>"
            "<redirdev bus='usb' type='tcp'><source mode='connect' host='127.0.0.1' "
            f"service='{port}'/><protocol type='raw'/><boot order='1'/></redirdev>"
        )
        out = dumpxml_roundtrip(caps, xml)
        assert (
            "<redirdev bus='usb' type='tcp'><source mode='connect' host='127.0.0.1' "
            f"service='{port}'/><protocol type='raw'/>"
        ) in out.replace("\n", "").replace("  ", "")
        argv = argv_of(caps, xml, tmp_path)
        # As libvirt: the chardev charredir0 (reconnecting, as asvirt's connecting sockets
        # do), and usb-redir on it.
        assert f"socket,id=charredir0,host=127.0.0.1,port={port},reconnect=1" in opts(
            argv, "-chardev"
        )
        redir = device(argv, "redir0")
        assert (redir["driver"], redir["chardev"], redir["bootindex"]) == (
            "usb-redir",
            "charredir0",
            1,
        )
        # QEMU connects at start; usb-redir says hello (usbredir's guest side speaks first)
        # once the VM runs, when it flushes what it queued: read while QEMU still runs (a
        # QEMU told to quit first may go before it flushed).

        def hello() -> bytes:
            conn, _ = listener.accept()
            with conn:
                return _usbredir_hello(conn)

        got = launch_paused(argv, tmp_path, extra={"cont": {}}, while_running=hello)
        assert "redir0" in got.qom["/machine/peripheral"]
        assert got.during.startswith(b"qemu usb-redir guest")


def test_redirdev_over_a_unix_socket_and_what_is_refused(caps: Caps, tmp_path: Path) -> None:
    path = tmp_path / "redir.sock"
    xml = dom(f"<redirdev bus='usb' type='unix'><source mode='bind' path='{path}'/></redirdev>")
    assert f"<source mode='bind' path='{path}'/>" in dumpxml_roundtrip(caps, xml)
    argv = argv_of(caps, xml, tmp_path)
    assert f"socket,id=charredir0,path={path},server=on,wait=off" in opts(argv, "-chardev")
    assert "redir0" in launched_peripherals(argv, tmp_path)
    # No SPICE needed but for spicevmc; a unix redirection needs its socket's path; a type
    # no chardev has is refused naming the ones there are.
    with pytest.raises(ConfigUnsupportedError, match="needs <graphics type='spice'>"):
        argv_of(caps, dom("<redirdev bus='usb' type='spicevmc'/>"))
    with pytest.raises(XMLError, match="needs a <source path"):
        argv_of(caps, dom("<redirdev bus='usb' type='unix'/>"))
    with pytest.raises(ConfigUnsupportedError, match="spicevmc"):
        argv_of(caps, dom("<redirdev bus='usb' type='bogus'/>"))


# -- automatic NUMA placement --------------------------------------------------------------------


def test_automatic_numa_placement_xml(caps: Caps) -> None:
    # The start asks numad (tests/test_qemu_tuning.py); the XML says auto, as libvirt's.
    xml = dom().replace("</memory>", "</memory><vcpu placement='auto' cpuset='0'>2</vcpu>")
    out = dumpxml_roundtrip(caps, xml)
    assert "<vcpu placement='auto'>2</vcpu>" in out  # the cpuset is ignored, as in libvirt
    assert "<memory mode='strict' placement='auto'/>" in out  # memory follows the vCPUs
    # Shown without numad's advice (domxml-to-native): no host nodes yet.
    assert "host-nodes" not in " ".join(opts(argv_of(caps, xml), "-object"))
    mem_only = dom(body="<numatune><memory mode='interleave' placement='auto'/></numatune>")
    out = dumpxml_roundtrip(caps, mem_only)
    assert "<memory mode='interleave' placement='auto'/>" in out
    assert "<vcpu placement='static'>" in out
    with pytest.raises(XMLError, match="must not be given with placement='auto'"):
        argv_of(caps, mem_only.replace("placement='auto'", "placement='auto' nodeset='0'"))


# -- video drivers -------------------------------------------------------------------------------


def test_virtio_video_driver_options_and_resolution(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<graphics type='vnc' port='-1'/><video><driver name='qemu' ats='on' packed='on' "
        "page_per_vq='on'/><model type='virtio' heads='1' primary='yes'>"
        "<resolution x='1024' y='768'/></model></video>"
    )
    out = dumpxml_roundtrip(caps, xml)
    assert "<driver name='qemu' ats='on' packed='on' page_per_vq='on'/>" in out
    assert "<resolution x='1024' y='768'/>" in out
    argv = argv_of(caps, xml, tmp_path)
    video = device(argv, "video0")
    assert video["driver"] == "virtio-vga"
    assert (video["ats"], video["packed"], video["page-per-vq"]) == (True, True, True)
    assert (video["xres"], video["yres"]) == (1024, 768)
    got = launch_paused(
        argv,
        tmp_path,
        extra={"qom-get": {"path": "/machine/peripheral/video0", "property": "xres"}},
    )
    assert got.extra["qom-get"] == 1024
    iommu = xml.replace("ats='on'", "iommu='on'")
    assert device(argv_of(caps, iommu), "video0")["iommu_platform"] is True
    # The other models QEMU gives a resolution to.
    for model, driver in (("vga", "VGA"), ("bochs", "bochs-display"), ("qxl", "qxl-vga")):
        other = dom(f"<video><model type='{model}'><resolution x='800' y='600'/></model></video>")
        props = device(argv_of(caps, other, tmp_path), "video0")
        assert (props["driver"], props["xres"], props["yres"]) == (driver, 800, 600)


def test_virgl_video_and_what_qemu_cannot_do(caps: Caps) -> None:
    gl = "<graphics type='egl-headless'/>"
    accel = "<video><model type='virtio'><acceleration accel3d='yes'/></model></video>"
    xml = dom(gl + accel)
    assert "<acceleration accel3d='yes'/>" in dumpxml_roundtrip(caps, xml)
    # As libvirt: the virgl device (no launch: this host has no render node for its GL).
    assert device(argv_of(caps, xml), "video0")["driver"] == "virtio-vga-gl"
    for bad, why in (
        (accel, "needs a display that has it"),
        (gl + accel.replace("virtio", "qxl"), "virtio's only"),
        (gl + accel.replace("accel3d", "accel2d"), "no 2D acceleration"),
        (
            gl + accel.replace("accel3d='yes'", "rendernode='/dev/dri/renderD128'"),
            "without 'vhostuser'",
        ),
        ("<video><driver vgaconf='on'/><model type='vga'/></video>", "bhyve"),
        ("<video><driver iommu='on'/><model type='vga'/></video>", "for virtio video"),
        ("<video><model type='cirrus'><resolution x='8' y='6'/></model></video>", "resolution"),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, dom(bad))


SHARED = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
VHOST_USER_VIDEO = "<video><driver name='vhostuser'/><model type='virtio' heads='1'/></video>"


def test_vhost_user_gpu_video(caps: Caps) -> None:
    xml = dom(VHOST_USER_VIDEO, body=SHARED)
    out = dumpxml_roundtrip(caps, xml)
    assert "<driver name='vhostuser'/>" in out
    d = prepare_domain(parse_domain_xml(xml), caps)
    # As libvirt: QEMU's end of the backend's socketpair as a chardev, and the VGA-compatible
    # vhost-user device for the primary video.
    argv = build_command(d, caps, monitor=MonitorSpec(fd=3), vhost_user_fds={"video0": 27})
    assert opts(argv, "-chardev")[-1] == "socket,id=chr-vu-video0,fd=27"
    video = device(argv, "video0")
    assert (video["driver"], video["chardev"], video["max_outputs"]) == (
        "vhost-user-vga",
        "chr-vu-video0",
        1,
    )
    # A second one is the PCI GPU without VGA; 3D and a render node round-trip.
    two = dom(
        "<video><model type='virtio'/></video><video><driver name='vhostuser'/>"
        "<model type='virtio'><acceleration accel3d='yes' rendernode='/dev/dri/renderD128'/>"
        "</model></video>",
        body=SHARED,
    )
    assert "rendernode='/dev/dri/renderD128'" in dumpxml_roundtrip(caps, two)
    argv = argv_of(caps, two)
    assert device(argv, "video1")["driver"] == "vhost-user-gpu-pci"
    assert device(argv, "video1")["chardev"] == "chr-vu-video1"
    assert device(argv, "video0")["driver"] == "virtio-vga"


def test_vhost_user_gpu_program_arguments(tmp_path: Path) -> None:
    # The backend's own command line, as libvirt gives it (its descriptor and --fd are
    # exercised by a real start in tests/test_qemu_host_helpers.py).
    backend = GpuBackend("/usr/lib/qemu/vhost-user-gpu", frozenset({"virgl", "render-node"}))
    node = tmp_path / "renderD128"
    node.touch()
    video = Video(model="virtio", driver_name="vhostuser", accel3d=True, rendernode=str(node))
    argv = gpu_argv(backend, video, "video 'video0'")
    assert argv == [backend.binary, "--fd={fd}", "--virgl", f"--render-node={node}"]
    # A render node the host lacks is refused, before anything runs.
    video.rendernode = str(tmp_path / "renderD129")
    with pytest.raises(ConfigUnsupportedError, match="renderD129' of video 'video0' does not"):
        gpu_argv(backend, video, "video 'video0'")
    # 2D on a host without a render node: none given (libvirt would demand one).
    plain = Video(model="virtio", driver_name="vhostuser")
    if host_render_node() is None:
        assert gpu_argv(backend, plain, "video 'video0'") == [backend.binary, "--fd={fd}"]
        assert plain.rendernode is None
    else:
        assert gpu_argv(backend, plain, "v")[-1] == f"--render-node={host_render_node()}"
        assert plain.rendernode == host_render_node()  # the live XML says which


def test_vhost_user_gpu_refusals(caps: Caps) -> None:
    for bad, why in (
        (dom(VHOST_USER_VIDEO), "'vhost-user-gpu' requires shared memory"),
        (
            dom(VHOST_USER_VIDEO.replace("virtio", "qxl"), body=SHARED),
            "only supported with 'virtio' device",
        ),
        (
            dom(VHOST_USER_VIDEO.replace("heads='1'", "blob='on'"), body=SHARED),
            "has none",
        ),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, bad)


def test_redirdev_sockets_are_reached_under_confinement(caps: Caps, tmp_path: Path) -> None:
    # What QEMU's user must reach of a redirection's chardev, as of any chardev's.
    from asvirt.drivers.qemu.security import needs

    xml = dom(
        f"<redirdev bus='usb' type='unix'><source mode='bind' path='{tmp_path}/b.sock'/>"
        f"</redirdev><redirdev bus='usb' type='unix'><source mode='connect' "
        f"path='{tmp_path}/c.sock'/></redirdev>"
    )
    d = prepare_domain(parse_domain_xml(xml), caps)
    got = {(n.path, n.what) for n in needs(d, caps.binary)}
    assert (str(tmp_path), "the directory of the socket of redirdev 'redir0'") in got
    assert (f"{tmp_path}/c.sock", "the socket of redirdev 'redir1'") in got
