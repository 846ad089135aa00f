"""libvirt's network XML: parse strictly, check, format (shared by every network driver).

A :class:`NetworkDef` is what ``<network>`` says, typed: the forward mode (``nat``, the
default of ``<forward/>``; ``route``; ``open``; ``bridge``: an existing host bridge; or no
``<forward>``: isolated), the bridge, MAC, MTU, DNS domain, the ``<ip>`` subnets with their
DHCP ranges and static hosts, and the DNS hosts and forwarders. Parsing is strict, as for
domains (:mod:`asvirt.conf.xmlnode`): anything asvirt does not act on (``<route>``,
``<portgroup>``, ``<bandwidth>``, DHCP ``<bootp>``, ...) is a
:class:`~asvirt.errors.ConfigUnsupportedError`, never dropped; a malformed or inconsistent
value is an :class:`~asvirt.errors.XMLError`. :meth:`NetworkDef.to_xml` writes the
definition the way libvirt's ``net-dumpxml`` does.

Defaults that only a driver that creates bridges fills in (a ``virbrN`` bridge name, the
bridge's MAC) are the driver's (:func:`fill_defaults`), as in libvirt.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import random
import re
import uuid as uuidlib

from lxml import etree

from ...conf.names import canonical_uuid, validate_name
from ...conf.xmlnode import Node, XElem
from ...conf.xmlsafe import parse_xml
from ...errors import ConfigUnsupportedError, XMLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Forward modes asvirt runs (``None``: isolated, no ``<forward>``).
FORWARD_MODES = ("nat", "route", "open", "bridge")
#: Modes libvirt has that need hardware or macvtap plumbing asvirt does not do.
_UNSUPPORTED_MODES = ("passthrough", "private", "vepa", "hostdev")
#: A Linux interface name: at most 15 bytes, no '/', ':' or blanks (libvirt's check).
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.+%-]{1,15}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
#: libvirt's (and QEMU's) prefix for MAC addresses it makes up.
MAC_PREFIX = "52:54:00"


#: libvirt's ``default`` network, as distributions define it for the system daemon.
DEFAULT_NETWORK_XML = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""


@dataclasses.dataclass(frozen=True, slots=True)
class DhcpRange:
    start: IPAddress
    end: IPAddress

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class DhcpHost:
    """``<host mac= ip= name=>`` (IPv4) or ``<host id= ip= name=>`` (IPv6, by DUID)."""

    ip: IPAddress | None
    mac: str | None = None
    name: str | None = None
    id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class IPDef:
    """One ``<ip>``: the bridge's address in a subnet, maybe with DHCP."""

    address: IPAddress
    prefix: int
    #: The address was given with netmask= (kept so that dumpxml writes it back that way).
    netmask_given: bool = False
    ranges: tuple[DhcpRange, ...] = ()
    hosts: tuple[DhcpHost, ...] = ()
    #: ``<dhcp>`` is present (even without ranges: static hosts only).
    dhcp: bool = False

    @property
    def is_v6(self) -> bool:
        return self.address.version == 6

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=False)

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.prefix}")


@dataclasses.dataclass(frozen=True, slots=True)
class DnsHost:
    ip: IPAddress
    hostnames: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class DnsForwarder:
    """``<forwarder addr= domain=>``: where (some) queries go; no addr: answered locally."""

    addr: IPAddress | None
    domain: str | None


@dataclasses.dataclass(slots=True)
class NetworkDef:
    """A parsed ``<network>``."""

    name: str
    uuid: str
    forward_mode: str | None = None
    #: ``<forward dev=>``: forwarding only out of this host interface.
    forward_dev: str | None = None
    nat_ports: tuple[int, int] | None = None
    nat_addresses: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    #: ``<nat ipv6='yes'>``: masquerade IPv6 too.
    nat_ipv6: bool = False
    bridge: str | None = None
    stp: bool = True
    delay: int = 0
    mac: str | None = None
    mtu: int | None = None
    #: ``<network ipv6='yes'>``: guest-to-guest IPv6 without any IPv6 address.
    guest_ipv6: bool = False
    domain: str | None = None
    domain_local_only: bool = False
    dns_enabled: bool = True
    #: ``<dns forwardPlainNames=>``: False keeps names without a dot inside the network.
    dns_forward_plain_names: bool = True
    dns_hosts: tuple[DnsHost, ...] = ()
    dns_forwarders: tuple[DnsForwarder, ...] = ()
    ips: tuple[IPDef, ...] = ()
    title: str | None = None
    description: str | None = None

    # -- what drivers ask -------------------------------------------------------------------------

    @property
    def creates_bridge(self) -> bool:
        """True for every mode but ``bridge`` (which uses a host bridge as it is)."""
        return self.forward_mode != "bridge"

    @property
    def forwarding(self) -> bool:
        """Traffic is forwarded beyond the bridge (NAT, routed or open)."""
        return self.forward_mode in ("nat", "route", "open")

    def ipv4(self) -> list[IPDef]:
        return [ip for ip in self.ips if not ip.is_v6]

    def ipv6(self) -> list[IPDef]:
        return [ip for ip in self.ips if ip.is_v6]

    def dhcp_ips(self) -> list[IPDef]:
        return [ip for ip in self.ips if ip.dhcp]

    @property
    def needs_dnsmasq(self) -> bool:
        """A bridge with an address gets DNS (and DHCP, and IPv6 router adverts) from dnsmasq."""
        return self.creates_bridge and bool(self.ips)

    def copy(self) -> NetworkDef:
        return copy.deepcopy(self)

    # -- XML ---------------------------------------------------------------------------------

    def to_xml(self) -> str:
        """The definition as libvirt's ``net-dumpxml`` writes it."""
        root = XElem("network", {"ipv6": "yes" if self.guest_ipv6 else None})
        root.add("name", text=self.name)
        root.add("uuid", text=self.uuid)
        if self.title is not None:
            root.add("title", text=self.title)
        if self.description is not None:
            root.add("description", text=self.description)
        if self.forward_mode is not None:
            fwd = root.add("forward", {"mode": self.forward_mode, "dev": self.forward_dev})
            if self.nat_ports or self.nat_addresses or self.nat_ipv6:
                nat = fwd.add("nat", {"ipv6": "yes" if self.nat_ipv6 else None})
                if self.nat_addresses:
                    nat.add(
                        "address",
                        {"start": str(self.nat_addresses[0]), "end": str(self.nat_addresses[1])},
                    )
                if self.nat_ports:
                    nat.add("port", {"start": self.nat_ports[0], "end": self.nat_ports[1]})
            if self.forward_dev is not None:
                fwd.add("interface", {"dev": self.forward_dev})
        if self.bridge is not None:
            attrs: dict[str, object] = {"name": self.bridge}
            if self.creates_bridge:
                attrs.update(stp="on" if self.stp else "off", delay=self.delay)
            root.add("bridge", attrs)
        if self.mtu is not None:
            root.add("mtu", {"size": self.mtu})
        if self.mac is not None:
            root.add("mac", {"address": self.mac})
        if self.domain is not None:
            root.add(
                "domain",
                {"name": self.domain, "localOnly": "yes" if self.domain_local_only else None},
            )
        self._format_dns(root)
        for ip in self.ips:
            _format_ip(root, ip)
        return root.serialize()

    def _format_dns(self, root: XElem) -> None:
        plain = None if self.dns_forward_plain_names else "no"
        if self.dns_enabled and not (self.dns_hosts or self.dns_forwarders or plain):
            return
        dns = root.add(
            "dns", {"enable": None if self.dns_enabled else "no", "forwardPlainNames": plain}
        )
        for fwd in self.dns_forwarders:
            dns.add(
                "forwarder",
                {"domain": fwd.domain, "addr": str(fwd.addr) if fwd.addr is not None else None},
            )
        for host in self.dns_hosts:
            el = dns.add("host", {"ip": str(host.ip)})
            for hostname in host.hostnames:
                el.add("hostname", text=hostname)


def _format_ip(root: XElem, ip: IPDef) -> None:
    attrs: dict[str, object] = {"family": "ipv6" if ip.is_v6 else None, "address": str(ip.address)}
    if ip.netmask_given and not ip.is_v6:
        attrs["netmask"] = str(ip.network.netmask)
    else:
        attrs["prefix"] = ip.prefix
    el = root.add("ip", attrs)
    if not ip.dhcp:
        return
    dhcp = el.add("dhcp")
    for rng in ip.ranges:
        dhcp.add("range", {"start": str(rng.start), "end": str(rng.end)})
    for host in ip.hosts:
        dhcp.add(
            "host",
            {
                "mac": host.mac,
                "id": host.id,
                "name": host.name,
                "ip": str(host.ip) if host.ip is not None else None,
            },
        )


# ---------------------------------------------------------------------------------------------
# parsing


def parse_network_xml(text: str | bytes | etree._Element) -> NetworkDef:
    """Parse and check libvirt network XML; raises XMLError (or ConfigUnsupportedError)."""
    root = parse_xml(text) if not isinstance(text, etree._Element) else copy.deepcopy(text)
    if root.tag != "network":
        raise XMLError(f"expected a <network> document, not <{root.tag}>")
    node = Node(root, ("network",))
    names = node.children("name")
    if len(names) != 1:
        raise XMLError("a <network> needs exactly one <name>")
    name = names[0].text()
    names[0].finish()
    validate_name(name, what="network")
    uuid_text = node.child_text("uuid")
    uuid = (
        str(uuidlib.uuid4())
        if uuid_text is None
        else canonical_uuid(uuid_text, what="network UUID", error=XMLError)
    )
    defn = NetworkDef(name=name, uuid=uuid)
    defn.guest_ipv6 = bool(node.yesno("ipv6"))
    defn.title = node.child_text("title")
    desc = node.child("description")
    if desc is not None:
        defn.description = desc.el.text or ""
        desc.finish()
    _parse_forward(node, defn)
    _parse_bridge(node, defn)
    mac = node.child("mac")
    if mac is not None:
        defn.mac = _mac(mac.required("address"), f"network '{name}'")
        mac.finish()
    mtu = node.child("mtu")
    if mtu is not None:
        defn.mtu = mtu.integer("size", minimum=68, maximum=65535)
        if defn.mtu is None:
            raise XMLError(f"network '{name}': <mtu> needs a size")
        mtu.finish()
    domain = node.child("domain")
    if domain is not None:
        defn.domain = _dns_name(domain.required("name"), f"network '{name}': domain name")
        defn.domain_local_only = bool(domain.yesno("localOnly"))
        domain.finish()
    _parse_dns(node, defn)
    defn.ips = tuple(_parse_ip(ip, name) for ip in node.children("ip"))
    node.finish()
    check_network(defn)
    return defn


def _parse_forward(node: Node, defn: NetworkDef) -> None:
    fwd = node.child("forward")
    if fwd is None:
        return
    mode = fwd.attr("mode") or "nat"
    if mode in _UNSUPPORTED_MODES:
        raise ConfigUnsupportedError(
            f"unsupported configuration: forward mode '{mode}' of network '{defn.name}' is not "
            f"supported (supported: {', '.join(FORWARD_MODES)}, or no <forward> for isolated)"
        )
    if mode not in FORWARD_MODES:
        raise XMLError(f"network '{defn.name}': unknown forward mode '{mode}'")
    defn.forward_mode = mode
    dev = fwd.attr("dev")
    ifaces = fwd.children("interface")
    if len(ifaces) > 1:
        raise fwd.unsupported("more than one <interface>")
    for iface in ifaces:
        idev = iface.required("dev")
        iface.finish()
        if dev is not None and idev != dev:
            raise XMLError(
                f"network '{defn.name}': forward dev '{dev}' differs from interface '{idev}'"
            )
        dev = idev
    if dev is not None:
        defn.forward_dev = _ifname(dev, f"network '{defn.name}': forward dev")
    nat = fwd.child("nat")
    if nat is not None:
        if mode != "nat":
            raise XMLError(f"network '{defn.name}': <nat> is only for forward mode 'nat'")
        defn.nat_ipv6 = bool(nat.yesno("ipv6"))
        port = nat.child("port")
        if port is not None:
            start = port.integer("start", minimum=1, maximum=65535)
            end = port.integer("end", minimum=1, maximum=65535)
            if start is None or end is None or start > end:
                raise XMLError(f"network '{defn.name}': invalid NAT port range")
            defn.nat_ports = (start, end)
            port.finish()
        address = nat.child("address")
        if address is not None:
            try:
                first = ipaddress.IPv4Address(address.required("start"))
                last = ipaddress.IPv4Address(address.required("end"))
            except ValueError:
                raise XMLError(f"network '{defn.name}': invalid NAT address range") from None
            if first > last:
                raise XMLError(f"network '{defn.name}': NAT address range ends before it starts")
            defn.nat_addresses = (first, last)
            address.finish()
        nat.finish()
    fwd.finish()


def _parse_bridge(node: Node, defn: NetworkDef) -> None:
    br = node.child("bridge")
    if br is None:
        return
    name = br.attr("name")
    if name is not None:
        defn.bridge = _ifname(name, f"network '{defn.name}': bridge name")
    stp = br.onoff("stp")
    defn.stp = stp != "off"
    delay = br.integer("delay", minimum=0, maximum=30)
    defn.delay = delay or 0
    br.finish()


def _parse_dns(node: Node, defn: NetworkDef) -> None:
    dns = node.child("dns")
    if dns is None:
        return
    enable = dns.yesno("enable")
    defn.dns_enabled = enable is not False
    plain = dns.yesno("forwardPlainNames")
    defn.dns_forward_plain_names = plain is not False
    where = f"network '{defn.name}'"
    hosts = []
    for host in dns.children("host"):
        ip = _ip(host.required("ip"), f"{where}: DNS host")
        names = []
        for hn in host.children("hostname"):
            names.append(_dns_name(hn.text(), f"{where}: DNS hostname"))
            hn.finish()
        if not names:
            raise XMLError(f"{where}: DNS host {ip} needs at least one <hostname>")
        host.finish()
        hosts.append(DnsHost(ip, tuple(names)))
    forwarders = []
    for fwd in dns.children("forwarder"):
        addr_text, domain = fwd.attr("addr"), fwd.attr("domain")
        if addr_text is None and domain is None:
            raise XMLError(f"{where}: a DNS <forwarder> needs addr or domain")
        addr = _ip(addr_text, f"{where}: DNS forwarder") if addr_text is not None else None
        if domain is not None:
            domain = _dns_name(domain, f"{where}: DNS forwarder domain")
        fwd.finish()
        forwarders.append(DnsForwarder(addr, domain))
    dns.finish()
    defn.dns_hosts = tuple(hosts)
    defn.dns_forwarders = tuple(forwarders)


def _parse_ip(ip: Node, net: str) -> IPDef:
    where = f"network '{net}'"
    family = ip.choice("family", ("ipv4", "ipv6"))
    text = ip.attr("address")
    if text is None:
        raise XMLError(f"{where}: <ip> needs an address")
    address = _ip(text, where)
    if family is not None and family != f"ipv{address.version}":
        raise XMLError(f"{where}: address {address} is not of family {family}")
    netmask, prefix_text = ip.attr("netmask"), ip.attr("prefix")
    if netmask is not None and prefix_text is not None:
        raise XMLError(f"{where}: <ip> has both netmask and prefix")
    if netmask is not None and address.version == 6:
        raise XMLError(f"{where}: an IPv6 <ip> takes a prefix, not a netmask")
    suffix = netmask if netmask is not None else prefix_text
    if suffix is None:
        # libvirt's default for IPv4 is the address's class; nobody means that any more.
        raise XMLError(f"{where}: <ip address='{address}'> needs a prefix or netmask")
    try:
        subnet = ipaddress.ip_network(f"{address}/{suffix.strip()}", strict=False)
    except ValueError:
        raise XMLError(f"{where}: invalid netmask or prefix '{suffix}' for {address}") from None
    if address in (subnet.network_address, subnet.broadcast_address) and subnet.num_addresses > 2:
        raise XMLError(f"{where}: {address} is not a host address of {subnet}")
    ranges: list[DhcpRange] = []
    hosts: list[DhcpHost] = []
    dhcp = ip.child("dhcp")
    if dhcp is not None:
        for rng in dhcp.children("range"):
            points = []
            for attr in ("start", "end"):
                value = rng.attr(attr)
                try:
                    point = ipaddress.ip_address((value or "").strip())
                except ValueError:
                    raise XMLError(f"{where}: invalid DHCP range {attr} '{value}'") from None
                if point not in subnet:
                    raise XMLError(f"{where}: DHCP range {attr} {point} is outside {subnet}")
                points.append(point)
            rng.finish()
            # Same family: both are in the subnet.
            first, last = int(points[0]), int(points[1])
            if first > last:
                raise XMLError(
                    f"{where}: DHCP range {points[0]} - {points[1]} ends before it starts"
                )
            if first <= int(address) <= last:
                raise XMLError(
                    f"{where}: DHCP range {points[0]} - {points[1]} holds the network's own "
                    f"address {address}"
                )
            ranges.append(DhcpRange(points[0], points[1]))
        for host in dhcp.children("host"):
            hosts.append(_parse_dhcp_host(host, subnet, where))
        dhcp.finish()
    ip.finish()
    return IPDef(
        address=address,
        prefix=subnet.prefixlen,
        netmask_given=netmask is not None,
        ranges=tuple(ranges),
        hosts=tuple(hosts),
        dhcp=dhcp is not None,
    )


def _parse_dhcp_host(host: Node, subnet: IPNetwork, where: str) -> DhcpHost:
    mac_text, ident, name = host.attr("mac"), host.attr("id"), host.attr("name")
    ip_text = host.attr("ip")
    ip = _ip(ip_text, f"{where}: DHCP host") if ip_text is not None else None
    if ip is not None and ip not in subnet:
        raise XMLError(f"{where}: DHCP host address {ip} is outside {subnet}")
    mac = _mac(mac_text, f"{where}: DHCP host") if mac_text is not None else None
    if name is not None:
        name = _dns_name(name, f"{where}: DHCP host name")
    if subnet.version == 6:
        if mac is not None:
            raise XMLError(f"{where}: an IPv6 DHCP host is named by id= or name=, not mac=")
        if ident is not None and not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+", ident):
            raise XMLError(f"{where}: invalid DHCPv6 host id '{ident}'")
    elif ident is not None:
        raise XMLError(f"{where}: id= is for IPv6 DHCP hosts")
    if mac is None and name is None and ident is None:
        raise XMLError(f"{where}: a DHCP <host> needs a mac, id or name")
    if ip is None:
        raise XMLError(f"{where}: a DHCP <host> needs an ip")
    host.finish()
    return DhcpHost(ip=ip, mac=mac, name=name, id=ident)


def check_network(defn: NetworkDef) -> None:
    """The rules that tie a definition's parts together (libvirt's, where it has them)."""
    where = f"network '{defn.name}'"
    if defn.forward_mode == "bridge":
        if defn.bridge is None and defn.forward_dev is None:
            raise XMLError(f"{where}: forward mode 'bridge' needs <bridge name=...>")
        if defn.forward_dev is not None:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: forward mode 'bridge' with a forward dev "
                "(macvtap) is not supported; name the host bridge in <bridge name=...>"
            )
        for what, present in (
            ("<ip>", bool(defn.ips)),
            ("<dns>", bool(defn.dns_hosts or defn.dns_forwarders)),
            ("<domain>", defn.domain is not None),
            ("<mac>", defn.mac is not None),
        ):
            if present:
                raise XMLError(f"{where}: forward mode 'bridge' takes no {what}")
    if defn.forward_mode == "open" and defn.forward_dev is not None:
        raise XMLError(f"{where}: forward mode 'open' takes no forward dev")
    if (
        defn.bridge is not None
        and defn.creates_bridge
        and "%" in defn.bridge
        and (defn.bridge.count("%") != 1 or "%d" not in defn.bridge)
    ):
        raise XMLError(f"{where}: bridge name template '{defn.bridge}' needs one %d")
    subnets: list[IPNetwork] = []
    for family in (4, 6):
        with_dhcp = [ip for ip in defn.ips if ip.address.version == family and ip.dhcp]
        if len(with_dhcp) > 1:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: DHCP on more than one IPv{family} <ip>"
            )
    for ip in defn.ips:
        for other in subnets:
            if ip.network.overlaps(other):
                raise XMLError(f"{where}: subnets {other} and {ip.network} overlap")
        subnets.append(ip.network)
        if ip.is_v6 and ip.prefix != 64 and ip.dhcp:
            raise ConfigUnsupportedError(
                f"unsupported configuration: {where}: DHCPv6 needs a /64 (not /{ip.prefix})"
            )
    macs: set[str] = set()
    for ip in defn.ips:
        for host in ip.hosts:
            if host.mac is not None:
                if host.mac in macs:
                    raise XMLError(f"{where}: MAC {host.mac} has more than one DHCP <host>")
                macs.add(host.mac)
            if host.ip == ip.address:
                raise XMLError(f"{where}: DHCP host {host.ip} is the network's own address")
    if defn.forward_mode == "nat" and defn.ips and not defn.ipv4():
        raise XMLError(f"{where}: forward mode 'nat' needs an IPv4 <ip> to masquerade")


# ---------------------------------------------------------------------------------------------
# defaults a bridge-creating driver fills in


def fill_defaults(defn: NetworkDef, *, taken_bridges: set[str]) -> NetworkDef:
    """Give ``defn`` a bridge name (``virbrN``, the first one ``taken_bridges`` lacks) and a
    bridge MAC where it has none, as libvirt's network driver does at define time."""
    out = defn.copy()
    if out.creates_bridge:
        template = out.bridge if out.bridge is not None and "%d" in out.bridge else None
        if out.bridge is None or template is not None:
            pattern = template or "virbr%d"
            n = 0
            while pattern.replace("%d", str(n)) in taken_bridges:
                n += 1
            out.bridge = pattern.replace("%d", str(n))
            _ifname(out.bridge, f"network '{out.name}': bridge name")
        if out.mac is None:
            rng = random.SystemRandom()
            out.mac = MAC_PREFIX + "".join(f":{rng.randrange(256):02x}" for _ in range(3))
    return out


# ---------------------------------------------------------------------------------------------
# value checks


def _ip(text: str | None, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        raise XMLError(f"{where}: invalid IP address '{text}'") from None


def _mac(text: str, where: str) -> str:
    if not _MAC_RE.match(text):
        raise XMLError(f"{where}: invalid MAC address '{text}'")
    if int(text[:2], 16) & 1:
        raise XMLError(f"{where}: MAC address '{text}' is a multicast address")
    return text.lower()


def _ifname(text: str, where: str) -> str:
    if not _IFNAME_RE.match(text) or text in (".", ".."):
        raise XMLError(
            f"{where} '{text}' is not a valid interface name (at most 15 letters, digits, "
            "'-', '_', '.')"
        )
    return text


def _dns_name(text: str, where: str) -> str:
    if not _DNS_NAME_RE.match(text):
        raise XMLError(f"{where} '{text}' is not a valid DNS name")
    return text


def valid_ifname(text: str) -> bool:
    """Whether ``text`` may name a network interface (tap, bridge)."""
    return bool(_IFNAME_RE.match(text)) and "%" not in text and text not in (".", "..")


__all__ = [
    "FORWARD_MODES",
    "MAC_PREFIX",
    "DhcpHost",
    "DhcpRange",
    "DnsForwarder",
    "DnsHost",
    "IPDef",
    "NetworkDef",
    "check_network",
    "fill_defaults",
    "parse_network_xml",
    "valid_ifname",
]
