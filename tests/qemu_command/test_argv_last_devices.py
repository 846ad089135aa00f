"""Command lines of the last refusals QEMU can do (issue 12): vhost-net for tap NICs, USB
redirection over a TCP or unix chardev, video drivers, numad placement.

Each test gives its XML, the arguments libvirt 9 builds for it on QEMU 7.2, a round trip
through dumpxml validated against libvirt's schema, and a launch under the real QEMU where
this host allows; what the host lacks is refused at start, saying so (those starts are in
tests/test_network_host.py and tests/test_qemu_more_devices.py).
"""

from __future__ import annotations

import os

import pytest

from asvirt.conf.devices import Interface
from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu import vhostnet
from asvirt.drivers.qemu.command import MonitorSpec, build_command
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import ConfigUnsupportedError, OperationFailedError, XMLError
from tests.caps import Caps
from tests.helpers import argv_of, device, dom, dumpxml_roundtrip, opts

pytestmark = pytest.mark.qemu


# -- vhost-net -----------------------------------------------------------------------------------

TAP_SOURCES = [
    "<interface type='network'><source network='default'/>",
    "<interface type='bridge'><source bridge='br0'/>",
    "<interface type='ethernet'>",
    "<interface type='direct'><source dev='eth0' mode='bridge'/>",
]


@pytest.mark.parametrize("source", TAP_SOURCES)
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
    assert opts(argv_of(caps, one), "-netdev")[0].endswith(",vhost=on")


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
