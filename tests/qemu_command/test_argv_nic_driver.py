"""Command lines of a virtio NIC's ``<driver>`` (issue 12): txmode, ioeventfd, event_idx, the
ring sizes, RSS, the virtio options and the ``<host>``/``<guest>`` offloads, mapped to
virtio-net-pci's properties as libvirt maps them; what QEMU cannot do with them is refused.

Each test gives its XML, the properties libvirt 9 gives QEMU 7.2 for it, a round trip through
dumpxml validated against libvirt's schema, and a launch under the real QEMU, paused, whose
device is asked for its properties over QMP (``qom-get``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from qemu_launch import launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.conf.xmlnode import InvalidValueError
from asvirt.drivers.qemu.command import MonitorSpec, build_command, interface_hotplug
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, XMLError
from tests.caps import Caps
from tests.helpers import (
    TAP_NIC_SOURCES,
    argv_of,
    device,
    dom,
    dumpxml_roundtrip,
    opts,
    vhost_user_backend,
)

pytestmark = pytest.mark.qemu

#: Every setting turned away from QEMU's default, and the property it becomes.
DRIVER = (
    "<driver name='qemu' txmode='timer' ioeventfd='off' event_idx='off' rx_queue_size='1024' "
    "rss='on' rss_hash_report='on' iommu='on' ats='on' packed='on' page_per_vq='on'>"
    "<host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off' mrg_rxbuf='off'/>"
    "<guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/></driver>"
)
PROPS = {
    "tx": "timer",
    "ioeventfd": False,
    "event_idx": False,
    "rss": True,
    "hash": True,
    "csum": False,
    "gso": False,
    "host_tso4": False,
    "host_tso6": False,
    "host_ecn": False,
    "host_ufo": False,
    "mrg_rxbuf": False,
    "guest_csum": False,
    "guest_tso4": False,
    "guest_tso6": False,
    "guest_ecn": False,
    "guest_ufo": False,
    "rx_queue_size": 1024,
    "iommu_platform": True,
    "ats": True,
    "packed": True,
    "page-per-vq": True,
}


def _dumpxml(caps: Caps, xml: str) -> str:
    """dumpxml's output (validated and stable), on one line."""
    return re.sub(r">\s+<", "><", dumpxml_roundtrip(caps, xml))


def _nic(driver: str, source: str = "<interface type='user'>", model: str = "virtio") -> str:
    return f"{source}<mac address='52:54:00:12:34:56'/><model type='{model}'/>{driver}</interface>"


def test_every_driver_setting_reaches_the_device(caps: Caps, tmp_path: Path) -> None:
    xml = dom(_nic(DRIVER), machine="q35")
    out = _dumpxml(caps, xml)
    assert DRIVER in out  # libvirt's attribute order, host before guest
    argv = argv_of(caps, xml, tmp_path)
    net = device(argv, "net0")
    assert {k: net[k] for k in PROPS} == PROPS
    assert net["driver"] == "virtio-net-pci" and net["netdev"] == "hostnet0"
    # QEMU takes every one of them, and its device says so.
    path = "/machine/peripheral/net0"
    got = launch_paused(argv, tmp_path, qom_get=[(path, p) for p in PROPS])
    assert got.status == "prelaunch"
    assert {p: got.props[(path, p)] for p in PROPS} == PROPS
    # A NIC plugged later gets the same device (device_add).
    d = prepare_domain(parse_domain_xml(xml), caps)
    assert {k: v for k, v in interface_hotplug(d, caps, d.interfaces[0]).items() if k in PROPS} == (
        PROPS
    )


def test_settings_left_out_stay_qemus(caps: Caps, tmp_path: Path) -> None:
    xml = dom(_nic("<driver txmode='iothread' rx_queue_size='256'><host csum='on'/></driver>"))
    assert "<driver txmode='iothread' rx_queue_size='256'><host csum='on'/></driver>" in _dumpxml(
        caps, xml
    )
    net = device(argv_of(caps, xml), "net0")
    assert (net["tx"], net["rx_queue_size"], net["csum"]) == ("bh", 256, True)
    for name in ("ioeventfd", "event_idx", "gso", "guest_csum", "tx_queue_size", "rss"):
        assert name not in net
    # Offloads alone still make a <driver>.
    only = dom(_nic("<driver><guest tso4='off'/></driver>"))
    assert "<driver><guest tso4='off'/></driver>" in _dumpxml(caps, only)
    assert device(argv_of(caps, only), "net0")["guest_tso4"] is False


@pytest.mark.parametrize("source", TAP_NIC_SOURCES)
def test_tap_nics_take_them_with_their_queues(caps: Caps, source: str) -> None:
    driver = (
        "<driver name='qemu' txmode='iothread' event_idx='on' queues='2' rx_queue_size='512'>"
        "<host mrg_rxbuf='off'/></driver>"
    )
    xml = dom(_nic(driver, source), machine="q35")
    assert driver in _dumpxml(caps, xml)
    d = prepare_domain(parse_domain_xml(xml), caps)
    argv = build_command(d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21, 22]})
    assert opts(argv, "-netdev") == ["tap,fds=21:22,id=hostnet0"]  # no vhost: name='qemu'
    net = device(argv, "net0")
    assert (net["tx"], net["rx_queue_size"], net["event_idx"], net["mrg_rxbuf"]) == (
        "bh",
        512,
        True,
        False,
    )
    assert (net["mq"], net["vectors"]) == (True, 6)
    # The kernel's vhost-net transmits on its own: a txmode would be ignored, so it is refused.
    for name in ("", " name='vhost'"):
        with pytest.raises(ConfigUnsupportedError, match="use <driver name='qemu'> with txmode"):
            argv_of(caps, xml.replace(" name='qemu'", name))
    # QEMU holds a tap's transmit ring to 256 entries: a larger one is refused, saying so.
    with pytest.raises(ConfigUnsupportedError, match="only honoured by QEMU for vhost-user"):
        argv_of(caps, xml.replace("rx_queue_size='512'", "tx_queue_size='512'"))


def test_vhostuser_transmit_ring_size(caps: Caps, tmp_path: Path) -> None:
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    source = (
        "<interface type='vhostuser'><source type='unix' path='/tmp/vhost.sock' mode='server'/>"
    )
    xml = dom(_nic("<driver rx_queue_size='1024' tx_queue_size='1024'/>", source), body=shared)
    assert "<driver rx_queue_size='1024' tx_queue_size='1024'/>" in _dumpxml(caps, xml)
    net = device(argv_of(caps, xml), "net0")
    assert (net["rx_queue_size"], net["tx_queue_size"]) == (1024, 1024)
    # The backend moves the packets: QEMU's transmit path and its RSS never see them.
    for driver, why in (
        ("<driver txmode='timer'/>", "the backend does"),
        ("<driver rss='on'/>", "rss steer packets in QEMU"),
        ("<driver rss='on' rss_hash_report='on'/>", "rss and rss_hash_report"),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, dom(_nic(driver, source), body=shared))
    # With a real backend (QEMU, the client, starts once the vhost-user handshake is done),
    # the device has both ring sizes.
    with vhost_user_backend(tmp_path) as sock:
        client = f"<interface type='vhostuser'><source type='unix' path='{sock}' mode='client'/>"
        real = dom(_nic("<driver rx_queue_size='1024' tx_queue_size='1024'/>", client), body=shared)
        path = "/machine/peripheral/net0"
        sizes = [(path, "rx_queue_size"), (path, "tx_queue_size")]
        got = launch_paused(argv_of(caps, real, tmp_path), tmp_path, qom_get=sizes)
    assert got.status == "prelaunch" and [got.props[k] for k in sizes] == [1024, 1024]


@pytest.mark.parametrize(
    ("driver", "error", "why"),
    [
        # libvirt's words
        (
            "<driver rx_queue_size='300'/>",
            ConfigUnsupportedError,
            "rx_queue_size has to be a power of two",
        ),
        (
            "<driver tx_queue_size='1000'/>",
            ConfigUnsupportedError,
            "tx_queue_size has to be a power of two",
        ),
        # QEMU's limits, said before it is started
        ("<driver rx_queue_size='128'/>", ConfigUnsupportedError, "rings hold 256 to 1024 entries"),
        (
            "<driver rx_queue_size='2048'/>",
            ConfigUnsupportedError,
            "rings hold 256 to 1024 entries",
        ),
        (
            "<driver tx_queue_size='256'/>",
            ConfigUnsupportedError,
            "only honoured by QEMU for vhost-user",
        ),
        # The XML's own values
        ("<driver txmode='bh'/>", XMLError, "txmode"),
        ("<driver rx_queue_size='0'/>", XMLError, "rx_queue_size"),
        ("<driver ioeventfd='yes'/>", InvalidValueError, "use on or off"),
        ("<driver><host tso4='maybe'/></driver>", InvalidValueError, "use on or off"),
        ("<driver><guest gso='off'/></driver>", ConfigUnsupportedError, "gso"),
        ("<driver><host csum='off'/><host gso='off'/></driver>", XMLError, "more than one <host>"),
        # On the PC's conventional PCI bus virtio-net-pci is transitional: no IOMMU platform.
        ("<driver iommu='on'/>", ConfigUnsupportedError, "modern-only virtio device"),
    ],
)
def test_bad_driver_settings_are_refused(
    caps: Caps, driver: str, error: type[Exception], why: str
) -> None:
    with pytest.raises(error, match=why):
        argv_of(caps, dom(_nic(driver)))


@pytest.mark.parametrize("model", ["e1000", "rtl8139"])
def test_only_virtio_nics_have_them(caps: Caps, model: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match=f"QEMU's '{model}' NIC has none of them"):
        argv_of(caps, dom(_nic("<driver ioeventfd='on'><host csum='off'/></driver>", model=model)))
    # name='qemu' has always been accepted of any model.
    assert "<driver name='qemu'/>" in _dumpxml(
        caps, dom(_nic("<driver name='qemu'/>", model=model))
    )


# -- <rom> and <acpi index=> ---------------------------------------------------------------------


def test_rom_and_acpi_index(caps: Caps, tmp_path: Path) -> None:
    rom = tmp_path / "boot.rom"
    rom.write_bytes(b"\x55\xaa" + bytes(4094))  # an option ROM's signature, and room
    xml = dom(
        _nic(f"<rom bar='off' file='{rom}'/><acpi index='5'/>")
        + "<interface type='user'><mac address='52:54:00:12:34:57'/><model type='e1000'/>"
        "<rom enabled='no'/><acpi index='16383'/></interface>"
    )
    out = _dumpxml(caps, xml)
    assert f"<rom bar='off' file='{rom}'/><acpi index='5'/>" in out
    assert "<rom enabled='no'/><acpi index='16383'/>" in out
    argv = argv_of(caps, xml, tmp_path)
    net0, net1 = device(argv, "net0"), device(argv, "net1")
    assert (net0["rombar"], net0["romfile"], net0["acpi-index"]) == (0, str(rom), 5)
    assert (net1["romfile"], net1["acpi-index"]) == ("", 16383)  # as libvirt: no ROM at all
    assert "rombar" not in net1
    wanted = {
        ("net0", "rombar"): 0,
        ("net0", "romfile"): str(rom),
        ("net0", "acpi-index"): 5,
        ("net1", "romfile"): "",
        ("net1", "acpi-index"): 16383,
    }
    got = launch_paused(
        argv, tmp_path, qom_get=[(f"/machine/peripheral/{d}", p) for d, p in wanted]
    )
    assert {(d, p): got.props[(f"/machine/peripheral/{d}", p)] for d, p in wanted} == wanted
    for bad, error, why in (
        (
            "<rom enabled='no' bar='on'/>",
            XMLError,
            "ROM tuning is not supported when ROM is disabled",
        ),
        ("<rom file='boot.rom'/>", XMLError, "must be an absolute path"),
        ("<rom bar='yes'/>", InvalidValueError, "use on or off"),
        ("<acpi index='16384'/>", XMLError, "index"),
        ("<acpi index='0'/>", XMLError, "index"),
    ):
        with pytest.raises(error, match=why):
            argv_of(caps, dom(_nic(bad)))
    with pytest.raises(XMLError, match="ACPI index '5' is given to more than one device"):
        argv_of(caps, xml.replace("16383", "5"))


# -- <mtu> and <tune><sndbuf> --------------------------------------------------------------------


@pytest.mark.parametrize("source", TAP_NIC_SOURCES[:3])  # a macvtap's MTU is not asvirt's
def test_mtu_and_sndbuf_of_tap_nics(caps: Caps, source: str) -> None:
    extra = "<mtu size='9000'/><tune><sndbuf>1600</sndbuf></tune>"
    xml = dom(_nic(extra, source))
    assert extra in _dumpxml(caps, xml)
    d = prepare_domain(parse_domain_xml(xml), caps)
    argv = build_command(d, caps, monitor=MonitorSpec(fd=3), tap_fds={"net0": [21]})
    # As libvirt: the tap's send buffer on its netdev, the MTU told to the virtio NIC (the
    # tap's own is set when a start makes it: tests/test_network_host.py).
    assert opts(argv, "-netdev") == ["tap,fd=21,sndbuf=1600,id=hostnet0"]
    assert device(argv, "net0")["host_mtu"] == 9000
    # Another model is told nothing; its tap still gets the MTU.
    assert "host_mtu" not in device(argv_of(caps, xml.replace("virtio", "e1000")), "net0")


def test_mtu_reaches_a_virtio_nic_and_is_refused_where_asvirt_cannot_set_it(caps: Caps) -> None:
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    vhost = "<interface type='vhostuser'><source type='unix' path='/tmp/vhost.sock' mode='server'/>"
    assert (
        device(argv_of(caps, dom(_nic("<mtu size='1400'/>", vhost), body=shared)), "net0")[
            "host_mtu"
        ]
        == 1400
    )
    # Where asvirt sets no MTU on the host side: refused, in libvirt's words.
    for source, why in (
        ("<interface type='user'>", "setting MTU on interface type user is not supported yet"),
        (
            "<interface type='direct'><source dev='eth0'/>",
            "setting MTU on interface type direct is not supported yet",
        ),
        ("<interface type='ethernet'><target dev='t0' managed='no'/>", "its owner's to configure"),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, dom(_nic("<mtu size='1400'/>", source)))
    with pytest.raises(ConfigUnsupportedError, match="has no tap"):
        argv_of(caps, dom(_nic("<tune><sndbuf>1600</sndbuf></tune>")))
    # <coalesce> is set on a bridge's tap (tests/test_network_host.py); libvirt's words for
    # the others.
    coalesce = "<coalesce><rx><frames max='32'/></rx></coalesce>"
    bridged = dom(_nic(coalesce, "<interface type='bridge'><source bridge='br0'/>"))
    assert coalesce in _dumpxml(caps, bridged)
    with pytest.raises(
        ConfigUnsupportedError, match="coalesce settings on interface type ethernet"
    ):
        argv_of(caps, dom(_nic(coalesce, "<interface type='ethernet'>")))
    for bad in ("<mtu size='67'/>", "<mtu/>", "<tune><sndbuf>-1</sndbuf></tune>"):
        with pytest.raises(XMLError):
            argv_of(caps, dom(_nic(bad, "<interface type='ethernet'>")))


def test_two_nics_cannot_hide_one_rom(caps: Caps, tmp_path: Path) -> None:
    # QEMU gives the firmware a ROM without a BAR as a fw_cfg file named after it: a second
    # of one name makes it exit ("duplicate fw_cfg file name"). Found by the launch test.
    two = "<interface type='user'><model type='rtl8139'/><rom bar='off'/></interface>" * 2
    with pytest.raises(ConfigUnsupportedError, match="interfaces 0 and 1 both hide"):
        argv_of(caps, dom(two))
    rom = tmp_path / "a.rom"
    rom.write_bytes(b"\x55\xaa" + bytes(510))
    mixed = (
        f"<interface type='user'><model type='e1000'/><rom bar='off' file='{rom}'/></interface>"
        f"<interface type='user'><model type='virtio'/><rom bar='off' file='{rom}'/></interface>"
    )
    with pytest.raises(ConfigUnsupportedError, match=r"'a\.rom'"):
        argv_of(caps, dom(mixed))
    # One hidden, one disabled or shown; or two models' own: QEMU starts them.
    for ok in (
        "<interface type='user'><model type='rtl8139'/><rom bar='off'/></interface>"
        "<interface type='user'><model type='rtl8139'/><rom enabled='no'/></interface>"
        "<interface type='user'><model type='rtl8139'/><rom bar='on'/></interface>",
        "<interface type='user'><model type='rtl8139'/><rom bar='off'/></interface>"
        "<interface type='user'><model type='e1000'/><rom bar='off'/></interface>",
    ):
        assert launch_paused(argv_of(caps, dom(ok), tmp_path), tmp_path).status == "prelaunch"


# -- <backend tap= vhost=> -----------------------------------------------------------------------


def test_backend_device_paths(caps: Caps) -> None:
    # Where a start opens the tun device and vhost-net (it checks that they are those
    # devices: tests/test_network_host.py); nothing of it is QEMU's to see.
    backend = "<backend tap='/dev/net/tun' vhost='/dev/vhost-net'/>"
    xml = dom(_nic(backend, "<interface type='bridge'><source bridge='br0'/>"))
    assert backend in _dumpxml(caps, xml)
    assert opts(argv_of(caps, xml), "-netdev") == [
        "tap,id=hostnet0,ifname=vnet%d,script=no,downscript=no"
    ]
    direct = "<interface type='direct'><source dev='eth0'/>"
    assert "<backend vhost='/dev/vhost-net'/>" in _dumpxml(
        caps, dom(_nic("<backend vhost='/dev/vhost-net'/>", direct))
    )
    for source, model, extra, why in (
        (direct, "virtio", "<backend tap='/dev/net/tun'/>", "has no tun tap"),
        ("<interface type='user'>", "virtio", "<backend tap='/dev/net/tun'/>", "has no tun tap"),
        ("<interface type='ethernet'>", "e1000", "<backend vhost='/v'/>", "virtio NICs on a tap"),
        (
            "<interface type='ethernet'>",
            "virtio",
            "<backend vhost='/v'/><driver name='qemu'/>",
            "leaves vhost-net out",
        ),
        ("<interface type='user'>", "virtio", "<backend type='passt'/>", "runs no passt"),
    ):
        with pytest.raises(ConfigUnsupportedError, match=why):
            argv_of(caps, dom(_nic(extra, source, model)))
    with pytest.raises(XMLError, match="must be an absolute path"):
        argv_of(caps, dom(_nic("<backend tap='dev/net/tun'/>", "<interface type='ethernet'>")))
