"""Node descriptions: the default node, and ``test:///path/to/node.xml`` files.

A node description is libvirt's test-driver format: a ``<node>`` document whose children are
``<domain>``, ``<network>`` and ``<pool>`` definitions (a pool may hold ``<volume>``
definitions). Any of them may instead be ``<domain file='vm1.xml'/>``, naming a file relative
to the node file. As in libvirt, domains start out running (unless
``<test:runstate>5</test:runstate>`` says shut off, or ``3`` paused), and networks and pools
start out active. libvirt's other node children (``<interface>``, ``<device>``, ``<cpu>``,
``<memory>``, ``<auth>``) are accepted and ignored; anything else is an error.

Reading a description is split in two: :func:`read_node_file` reads and parses everything
(blocking; run it in a thread) into a :class:`NodeDescription`, and :func:`build_node` turns
that into a live :class:`~.state.TestNode` in the trio thread.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lxml import etree

from ...conf.domain import DomainDef
from ...conf.xmlsafe import parse_xml
from ...config import Config
from ...errors import AsvirtError, NoConnectError, XMLError
from ..network.model import NetworkDef, parse_network_xml
from ..secret import SecretDriver
from .driver import TestExtras, add_initial_domain, new_test_node, parse_test_domain_xml
from .network import TestNetworkDriver, add_network
from .state import TestNode
from .storage import (
    PoolDef,
    TestStorageDriver,
    VolDef,
    add_pool,
    add_volume,
    parse_pool_xml,
    parse_vol_xml,
)

#: The default node: libvirt's test driver defaults (``defaultConnXML`` in libvirt's
#: src/test/test_driver.c: the names, UUIDs, sizes, addresses and devices that libvirt-based
#: tests rely on). libvirt's test driver gives the domain an i686 machine (its default arch),
#: ``<boot dev='hd'/>`` (libvirt's default for an HVM guest without one) and names its
#: interface ``testnet0``; here they are written out.
DEFAULT_NODE_XML = """<node>
  <domain type='test'>
    <name>test</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory unit='KiB'>8388608</memory>
    <currentMemory unit='KiB'>2097152</currentMemory>
    <vcpu>2</vcpu>
    <os>
      <type arch='i686'>hvm</type>
      <boot dev='hd'/>
    </os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/guest/diskimage1'/>
        <target dev='vda' bus='virtio'/>
        <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
      </disk>
      <interface type='network'>
        <mac address='aa:bb:cc:dd:ee:ff'/>
        <source network='default'/>
        <target dev='testnet0'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
      </interface>
      <memballoon model='virtio'>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
      </memballoon>
    </devices>
  </domain>
  <network>
    <name>default</name>
    <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/>
      </dhcp>
    </ip>
  </network>
  <pool type='dir'>
    <name>default-pool</name>
    <uuid>dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566</uuid>
    <target>
      <path>/default-pool</path>
    </target>
  </pool>
</node>
"""

#: Children of ``<node>`` that libvirt's test driver knows and asvirt's ignores.
_IGNORED = frozenset({"interface", "device", "cpu", "memory", "auth"})

#: Node files are small; this bounds what one may pull in through ``file=`` references.
MAX_NODE_FILE_BYTES = 10 * 1024 * 1024


@dataclasses.dataclass
class NodeDescription:
    """Everything a node description defines, parsed but not yet live."""

    source: str
    domains: list[tuple[DomainDef, TestExtras]] = dataclasses.field(default_factory=list)
    networks: list[NetworkDef] = dataclasses.field(default_factory=list)
    pools: list[tuple[PoolDef, list[VolDef]]] = dataclasses.field(default_factory=list)


def parse_node_xml(text: str | bytes, *, source: str, base_dir: Path | None) -> NodeDescription:
    """Parse a ``<node>`` document; ``file=`` references are read relative to ``base_dir``."""
    try:
        root = parse_xml(text)
        if root.tag != "node":
            raise XMLError(f"expected a <node> document, not <{root.tag}>")
        desc = NodeDescription(source)
        for child in root:
            if not isinstance(child.tag, str):
                continue  # a comment or processing instruction
            if child.tag in _IGNORED:
                continue
            el = _resolve(child, base_dir)
            if child.tag == "domain":
                desc.domains.append(parse_test_domain_xml(etree.tostring(el)))
            elif child.tag == "network":
                desc.networks.append(parse_network_xml(el))
            elif child.tag == "pool":
                pool = parse_pool_xml(el)
                vols = [parse_vol_xml(_resolve(v, base_dir), pool) for v in el.findall("volume")]
                desc.pools.append((pool, vols))
            else:
                raise XMLError(f"unknown element <{child.tag}> in <node>")
    except AsvirtError as err:
        raise _located(err, source) from None
    return desc


def read_node_file(path: str) -> NodeDescription:
    """Read and parse a node file (blocking)."""
    file = Path(path)
    return parse_node_xml(_read(file, what="node file"), source=path, base_dir=file.parent)


def build_node(desc: NodeDescription, config: Config) -> TestNode:
    """A live node holding what ``desc`` defines, in its initial states. Call in trio."""
    node = new_test_node(desc.source, config)
    networks = TestNetworkDriver(node)
    node.network = networks
    node.storage = TestStorageDriver(node)
    node.secrets = SecretDriver(node.bus)  # in memory, as every test node object
    try:
        for defn, extras in desc.domains:
            add_initial_domain(node, defn, extras)
        for net in desc.networks:
            add_network(networks, net, active=True)
        for pool, vols in desc.pools:
            obj = add_pool(node, pool, active=True)
            for vol in vols:
                add_volume(obj, vol)
    except AsvirtError as err:
        raise _located(err, desc.source) from None
    return node


def default_node(config: Config) -> TestNode:
    """A fresh default node (``test:///default``)."""
    desc = parse_node_xml(DEFAULT_NODE_XML, source="test:///default", base_dir=None)
    return build_node(desc, config)


def _resolve(el: etree._Element, base_dir: Path | None) -> etree._Element:
    """The element itself, or the document its ``file=`` attribute names."""
    ref = el.get("file")
    if ref is None:
        return el
    if base_dir is None:
        raise XMLError(f"<{el.tag} file='{ref}'> cannot be used here")
    file = base_dir / ref
    root = parse_xml(_read(file, what=f"<{el.tag}> file"))
    if root.tag != el.tag:
        raise XMLError(f"'{file}' holds a <{root.tag}>, not a <{el.tag}>")
    if el.tag == "pool":
        # Volumes may be listed in the node file, inside the referencing element.
        for vol in el.findall("volume"):
            root.append(vol)
    return root


def _read(file: Path, *, what: str) -> bytes:
    try:
        with file.open("rb") as f:
            data = f.read(MAX_NODE_FILE_BYTES + 1)
    except OSError as err:
        raise NoConnectError(
            f"cannot read test driver {what} '{file}': {err.strerror or err}"
        ) from None
    if len(data) > MAX_NODE_FILE_BYTES:
        raise XMLError(f"{what} '{file}' is larger than {MAX_NODE_FILE_BYTES // 1024} KiB")
    return data


def _located(err: AsvirtError, source: str) -> AsvirtError:
    """The same error, its message prefixed with the description it came from."""
    if err.message.startswith(f"{source}: "):
        return err
    located = type(err).__new__(type(err))
    AsvirtError.__init__(located, f"{source}: {err.message}", code=err.code)
    return located


__all__ = [
    "DEFAULT_NODE_XML",
    "NodeDescription",
    "build_node",
    "default_node",
    "parse_node_xml",
    "read_node_file",
]
