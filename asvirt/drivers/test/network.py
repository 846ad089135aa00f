"""Virtual networks on the test driver, with libvirt's network semantics, in memory.

Network XML is libvirt's. The test driver checks what it relies on (a safe ``<name>``, a valid
``<uuid>``, well-formed ``<ip>`` addresses, netmasks or prefixes, and DHCP ranges inside their
subnet) and keeps the rest of the document as given, so ``xml_desc()`` returns what was
defined, with the UUID filled in.
"""

from __future__ import annotations

import copy
import ipaddress
import uuid as uuidlib

import trio
from lxml import etree

from ...conf.names import canonical_uuid, validate_name
from ...conf.xmlsafe import parse_xml
from ...errors import NetworkExistsError, NoNetworkError, OperationInvalidError, XMLError
from ..base import NetworkRef
from .state import TestNode


class NetworkDef:
    """A parsed network definition: its name, UUID, and the document itself."""

    __slots__ = ("element", "name", "uuid")

    def __init__(self, name: str, uuid: str, element: etree._Element) -> None:
        self.name = name
        self.uuid = uuid
        self.element = element

    def to_xml(self) -> str:
        return etree.tostring(self.element, encoding="unicode") + "\n"


def parse_network_xml(text: str | bytes | etree._Element) -> NetworkDef:
    """Parse libvirt network XML; raises XMLError naming what is wrong."""
    root = parse_xml(text) if not isinstance(text, etree._Element) else _copy(text)
    if root.tag != "network":
        raise XMLError(f"expected a <network> document, not <{root.tag}>")
    names = root.findall("name")
    if len(names) != 1:
        raise XMLError("a <network> needs exactly one <name>")
    name = (names[0].text or "").strip()
    validate_name(name, what="network")
    names[0].text = name
    uuid_el = root.find("uuid")
    if uuid_el is None:
        uuid = str(uuidlib.uuid4())
        uuid_el = etree.Element("uuid")
        names[0].addnext(uuid_el)
    else:
        uuid = canonical_uuid(uuid_el.text or "", what="network UUID", error=XMLError)
    uuid_el.text = uuid
    for ip in root.findall("ip"):
        _check_ip(name, ip)
    _strip_blank(root)
    etree.indent(root, space="  ")
    return NetworkDef(name, uuid, root)


def _check_ip(net: str, ip: etree._Element) -> None:
    address = ip.get("address")
    if address is None:
        raise XMLError(f"network '{net}': <ip> needs an address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise XMLError(f"network '{net}': invalid IP address '{address}'") from None
    netmask, prefix = ip.get("netmask"), ip.get("prefix")
    if netmask is not None and prefix is not None:
        raise XMLError(f"network '{net}': <ip> has both netmask and prefix")
    suffix = netmask if netmask is not None else prefix
    try:
        subnet = ipaddress.ip_network(
            f"{address}/{suffix}" if suffix is not None else address, strict=False
        )
    except ValueError:
        raise XMLError(
            f"network '{net}': invalid netmask or prefix '{suffix}' for {address}"
        ) from None
    for rng in ip.iterfind("dhcp/range"):
        for attr in ("start", "end"):
            value = rng.get(attr)
            try:
                point = ipaddress.ip_address(value or "")
            except ValueError:
                raise XMLError(f"network '{net}': invalid DHCP range {attr} '{value}'") from None
            if point not in subnet:
                raise XMLError(f"network '{net}': DHCP range {attr} {point} is outside {subnet}")


def _copy(el: etree._Element) -> etree._Element:
    return copy.deepcopy(el)


def _strip_blank(root: etree._Element) -> None:
    for el in root.iter():
        if el.text is not None and not el.text.strip() and len(el):
            el.text = None
        if el.tail is not None and not el.tail.strip():
            el.tail = None


class NetworkObj:
    """The node's record of one network."""

    __slots__ = ("active", "autostart", "defn", "persistent", "ref")

    def __init__(self, defn: NetworkDef, *, active: bool, persistent: bool) -> None:
        self.defn = defn
        self.ref = NetworkRef(defn.name, defn.uuid)
        self.active = active
        self.persistent = persistent
        self.autostart = False


def add_network(
    node: TestNode, defn: NetworkDef, *, active: bool, persistent: bool = True
) -> NetworkObj:
    """Add a network to the node; NetworkExistsError if the name or UUID is taken."""
    _check_conflicts(node, defn)
    obj = NetworkObj(defn, active=active, persistent=persistent)
    node.networks[defn.uuid] = obj
    return obj


def _check_conflicts(node: TestNode, defn: NetworkDef) -> NetworkObj | None:
    by_uuid = node.networks.get(defn.uuid)
    if by_uuid is not None and by_uuid.defn.name != defn.name:
        raise NetworkExistsError(
            f"network '{by_uuid.defn.name}' already exists with uuid {defn.uuid}"
        )
    by_name = _network_by_name(node, defn.name)
    if by_name is not None and by_name.defn.uuid != defn.uuid:
        raise NetworkExistsError(
            f"network '{defn.name}' already exists with uuid {by_name.defn.uuid}"
        )
    return by_uuid


def _network_by_name(node: TestNode, name: str) -> NetworkObj | None:
    for obj in node.networks.values():
        if obj.defn.name == name:
            return obj
    return None


class TestNetworkDriver:
    """The test driver's network driver (libvirt's ``virNetwork*`` calls)."""

    __test__ = False  # not a pytest test class

    def __init__(self, node: TestNode) -> None:
        self.node = node

    def _by_name(self, name: str) -> NetworkObj | None:
        return _network_by_name(self.node, name)

    def _obj(self, uuid: str) -> NetworkObj:
        obj = self.node.networks.get(uuid)
        if obj is None:
            raise NoNetworkError(f"no network with matching uuid '{uuid}'")
        return obj

    async def list_all_networks(self, *, active: bool | None) -> list[NetworkRef]:
        return [
            obj.ref
            for obj in sorted(self.node.networks.values(), key=lambda o: o.defn.name)
            if active is None or obj.active == active
        ]

    async def lookup_network_by_name(self, name: str) -> NetworkRef:
        obj = self._by_name(name) if isinstance(name, str) else None
        if obj is None:
            raise NoNetworkError(f"no network with matching name '{name}'")
        return obj.ref

    async def lookup_network_by_uuid(self, uuid: str) -> NetworkRef:
        return self._obj(canonical_uuid(uuid)).ref

    async def network_define_xml(self, xml: str) -> NetworkRef:
        """Define (or redefine) a persistent network; a new one is inactive."""
        await trio.lowlevel.checkpoint()
        defn = parse_network_xml(xml)
        obj = _check_conflicts(self.node, defn)
        if obj is None:
            obj = add_network(self.node, defn, active=False)
        else:
            obj.defn = defn
            obj.persistent = True
        return obj.ref

    async def network_create(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if obj.active:
            raise OperationInvalidError(f"network '{obj.defn.name}' is already active")
        obj.active = True

    async def network_destroy(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if not obj.active:
            raise OperationInvalidError(f"network '{obj.defn.name}' is not active")
        obj.active = False
        if not obj.persistent:
            del self.node.networks[uuid]

    async def network_undefine(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if not obj.persistent:
            raise OperationInvalidError(f"network '{obj.defn.name}' is not persistent")
        if obj.active:
            obj.persistent = False  # it lives on until destroyed
        else:
            del self.node.networks[uuid]

    async def network_is_active(self, uuid: str) -> bool:
        return self._obj(uuid).active

    async def network_is_persistent(self, uuid: str) -> bool:
        return self._obj(uuid).persistent

    async def network_xml_desc(self, uuid: str) -> str:
        return self._obj(uuid).defn.to_xml()

    async def network_autostart(self, uuid: str) -> bool:
        return self._obj(uuid).autostart


__all__ = ["NetworkDef", "NetworkObj", "TestNetworkDriver", "add_network", "parse_network_xml"]
