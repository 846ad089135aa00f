"""Network XML (asvirt.drivers.network.model): what is read, what is written, what is refused.

No network is started here: the parser and formatter that every network driver shares.
"""

from __future__ import annotations

import ipaddress

import pytest

import asvirt
from asvirt.drivers.network.model import fill_defaults, parse_network_xml

#: libvirt's default network, as its default.xml writes it.
DEFAULT = """<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""

FULL = """<network ipv6='yes'>
  <name>lab</name>
  <uuid>0a1b2c3d-0000-4000-8000-000000000001</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='labbr0' stp='off' delay='2'/>
  <mtu size='1400'/>
  <mac address='52:54:00:0a:0b:0c'/>
  <domain name='lab.example' localOnly='yes'/>
  <dns>
    <forwarder addr='198.51.100.53'/>
    <host ip='10.9.0.20'>
      <hostname>db</hostname>
      <hostname>db.lab.example</hostname>
    </host>
  </dns>
  <ip address='10.9.0.1' prefix='24'>
    <dhcp>
      <range start='10.9.0.100' end='10.9.0.199'/>
      <host mac='52:54:00:00:00:07' name='seven' ip='10.9.0.7'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd00:9::1' prefix='64'>
    <dhcp>
      <range start='fd00:9::100' end='fd00:9::1ff'/>
    </dhcp>
  </ip>
</network>
"""


def test_default_network_reads_as_libvirt_writes_it():
    net = parse_network_xml(DEFAULT)
    assert (net.name, net.forward_mode, net.bridge) == ("default", "nat", "virbr0")
    [ip] = net.ips
    assert ip.network == ipaddress.ip_network("192.168.122.0/24")
    assert [(str(r.start), str(r.end), r.size) for r in ip.ranges] == [
        ("192.168.122.2", "192.168.122.254", 253)
    ]
    xml = net.to_xml()
    # Written the way net-dumpxml shows it: the mode spelled out, STP defaults, the netmask
    # kept as it was given, and a UUID made up.
    assert "<forward mode='nat'/>" in xml
    assert "<bridge name='virbr0' stp='on' delay='0'/>" in xml
    assert "<ip address='192.168.122.1' netmask='255.255.255.0'>" in xml
    assert f"<uuid>{net.uuid}</uuid>" in xml


def test_every_supported_element_round_trips():
    net = parse_network_xml(FULL)
    assert parse_network_xml(net.to_xml()).to_xml() == net.to_xml()
    assert net.to_xml() == FULL
    assert net.nat_ports == (1024, 65535) and not net.stp and net.delay == 2
    assert net.mtu == 1400 and net.domain_local_only and net.guest_ipv6
    assert [h.hostnames for h in net.dns_hosts] == [("db", "db.lab.example")]
    assert [str(ip.address) for ip in net.ipv6()] == ["fd00:9::1"]
    assert net.ips[0].hosts[0].mac == "52:54:00:00:00:07"


@pytest.mark.parametrize(
    "mode,creates",
    [("nat", True), ("route", True), ("open", True), (None, True), ("bridge", False)],
)
def test_which_modes_create_a_bridge(mode, creates):
    fwd = f"<forward mode='{mode}'/>" if mode else ""
    ip = "" if mode == "bridge" else "<ip address='10.0.0.1' prefix='24'/>"
    net = parse_network_xml(f"<network><name>n</name>{fwd}<bridge name='br9'/>{ip}</network>")
    assert net.creates_bridge is creates
    assert net.forwarding is (mode in ("nat", "route", "open"))


def test_defaults_fill_a_free_bridge_name_and_a_mac():
    net = parse_network_xml("<network><name>n</name><ip address='10.0.0.1' prefix='24'/></network>")
    filled = fill_defaults(net, taken_bridges={"virbr0", "virbr1"})
    assert filled.bridge == "virbr2"
    assert filled.mac is not None and filled.mac.startswith("52:54:00:")
    assert net.bridge is None  # the parsed definition is left alone
    templ = parse_network_xml("<network><name>n</name><bridge name='lab%d'/></network>")
    assert fill_defaults(templ, taken_bridges={"lab0"}).bridge == "lab1"
    bridged = parse_network_xml(
        "<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>"
    )
    assert fill_defaults(bridged, taken_bridges=set()).mac is None  # nothing is created


@pytest.mark.parametrize(
    "xml,error,match",
    [
        ("<network><name>n</name><forward mode='vepa'/></network>", "unsupported", "vepa"),
        ("<network><name>n</name><forward mode='fast'/></network>", "xml", "forward mode 'fast'"),
        (
            "<network><name>n</name><route address='10.1.0.0' prefix='16'/></network>",
            "unsupported",
            "<route>",
        ),
        ("<network><name>n</name><portgroup name='x'/></network>", "unsupported", "<portgroup>"),
        (
            "<network><name>n</name><bridge name='this-is-far-too-long'/></network>",
            "xml",
            "not a valid interface name",
        ),
        ("<network><name>n</name><bridge name='a b'/></network>", "xml", "interface name"),
        ("<network><name>n</name><mtu size='20'/></network>", "xml", "out of range"),
        ("<network><name>n</name><mac address='01:00:00:00:00:01'/></network>", "xml", "multicast"),
        ("<network><name>n</name><ip address='10.0.0.1'/></network>", "xml", "prefix or netmask"),
        (
            "<network><name>n</name><ip address='10.0.0.0' prefix='24'/></network>",
            "xml",
            "not a host address",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip></network>",
            "xml",
            "ends before",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.1' end='10.0.0.9'/></dhcp></ip></network>",
            "xml",
            "own address",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>"
            "<host mac='52:54:00:00:00:01' ip='10.0.1.5'/></dhcp></ip></network>",
            "xml",
            "outside",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp>"
            "<host ip='10.0.0.5'/></dhcp></ip></network>",
            "xml",
            "needs a mac",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><bootp file='x'/>"
            "</dhcp></ip></network>",
            "unsupported",
            "<bootp>",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'/>"
            "<ip address='10.0.0.2' prefix='16'/></network>",
            "xml",
            "overlap",
        ),
        ("<network><name>n</name><forward mode='bridge'/></network>", "xml", "needs <bridge"),
        (
            "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>"
            "<ip address='10.0.0.1' prefix='24'/></network>",
            "xml",
            "takes no <ip>",
        ),
        (
            "<network><name>n</name><forward/><ip family='ipv6' address='fd00::1' prefix='64'/>"
            "</network>",
            "xml",
            "needs an IPv4",
        ),
        (
            "<network><name>n</name><dns><host ip='10.0.0.9'/></dns></network>",
            "xml",
            "needs at least one <hostname>",
        ),
        ("<network><name>n</name><domain name='bad..name'/></network>", "xml", "DNS name"),
        (
            "<network><name>n</name><ip family='ipv6' address='10.0.0.1' prefix='24'/></network>",
            "xml",
            "not of family",
        ),
    ],
)
def test_bad_definitions_are_refused_with_a_reason(xml, error, match):
    expected = asvirt.ConfigUnsupportedError if error == "unsupported" else asvirt.XMLError
    with pytest.raises(expected, match=match) as info:
        parse_network_xml(xml)
    if error == "xml":
        assert not isinstance(info.value, asvirt.ConfigUnsupportedError)
    assert info.value.code in (asvirt.ErrorCode.XML_ERROR, asvirt.ErrorCode.CONFIG_UNSUPPORTED)
