"""Storage pools and volumes on the test driver, in memory, with libvirt's test-driver rules.

A pool has a capacity (100 GiB unless its XML says otherwise, as in libvirt's test driver);
its allocation is the sum of its volumes' allocations and ``available`` is what is left. A
volume needs a ``<capacity>``; its allocation defaults to its capacity; its path is the pool's
target path joined with its name, and its key is its path. A volume that does not fit fails
to be created. Nothing touches the disk.
"""

from __future__ import annotations

import copy
import uuid as uuidlib
from xml.sax.saxutils import escape

import trio
from lxml import etree

from ...conf.names import canonical_uuid, validate_name
from ...conf.units import parse_scaled
from ...conf.xmlsafe import parse_xml
from ...errors import (
    NoStoragePoolError,
    NoStorageVolError,
    OperationFailedError,
    OperationInvalidError,
    StorageVolExistsError,
    XMLError,
)
from ..base import StoragePoolInfo, StoragePoolRef, StorageVolInfo, StorageVolRef
from .state import TestNode

#: A pool's capacity when its XML gives none (libvirt's test driver uses the same).
DEFAULT_POOL_CAPACITY = 100 * 1024**3

#: ``virStoragePoolState`` values used by :class:`~asvirt.StoragePoolInfo`.
POOL_INACTIVE, POOL_RUNNING = 0, 2
#: ``virStorageVolType`` values.
VOL_TYPES = {"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}


def _attr(value: str) -> str:
    """An XML attribute value in single quotes, as libvirt writes them."""
    return "'" + escape(value, {"'": "&apos;"}) + "'"


def _size(el: etree._Element | None, *, what: str) -> int | None:
    if el is None:
        return None
    return parse_scaled(el.text, el.get("unit"), what=what, default_unit="bytes")


class PoolDef:
    """A parsed storage pool definition."""

    __slots__ = ("capacity", "name", "pool_type", "source", "target_path", "uuid")

    def __init__(
        self,
        *,
        name: str,
        uuid: str,
        pool_type: str,
        capacity: int,
        target_path: str,
        source: str | None,
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.pool_type = pool_type
        self.capacity = capacity
        self.target_path = target_path
        #: The ``<source>`` element as given, serialised (None if there was none).
        self.source = source


def parse_pool_xml(text: str | bytes | etree._Element) -> PoolDef:
    """Parse libvirt storage pool XML; raises XMLError naming what is wrong."""
    root = parse_xml(text) if not isinstance(text, etree._Element) else text
    if root.tag != "pool":
        raise XMLError(f"expected a <pool> document, not <{root.tag}>")
    pool_type = root.get("type")
    if not pool_type:
        raise XMLError("missing attribute 'type' of <pool>")
    name = (root.findtext("name") or "").strip()
    validate_name(name, what="storage pool")
    uuid_text = root.findtext("uuid")
    if uuid_text is None:
        uuid = str(uuidlib.uuid4())
    else:
        uuid = canonical_uuid(uuid_text, what="storage pool UUID", error=XMLError)
    capacity = _size(root.find("capacity"), what="pool capacity")
    target_path = (root.findtext("target/path") or "").strip() or f"/{name}"
    if not target_path.startswith("/"):
        raise XMLError(f"storage pool target path '{target_path}' must be absolute")
    source_el = root.find("source")
    source = None
    if source_el is not None:
        source_el = copy.deepcopy(source_el)
        for el in source_el.iter():
            el.tail = None
            if el.text is not None and not el.text.strip():
                el.text = None
        source = etree.tostring(source_el, encoding="unicode")
    return PoolDef(
        name=name,
        uuid=uuid,
        pool_type=pool_type,
        capacity=DEFAULT_POOL_CAPACITY if capacity is None else capacity,
        target_path=target_path.rstrip("/") or "/",
        source=source,
    )


class VolDef:
    """A storage volume in a pool."""

    __slots__ = ("allocation", "capacity", "format", "key", "name", "path", "vol_type")

    def __init__(
        self,
        *,
        name: str,
        key: str,
        path: str,
        capacity: int,
        allocation: int,
        vol_type: str,
        format: str,
    ) -> None:
        self.name = name
        self.key = key
        self.path = path
        self.capacity = capacity
        self.allocation = allocation
        self.vol_type = vol_type
        self.format = format

    def ref(self, pool: str) -> StorageVolRef:
        return StorageVolRef(pool=pool, name=self.name, key=self.key, path=self.path)

    def to_xml(self, pool: PoolDef) -> str:
        return (
            f"<volume type={_attr(self.vol_type)}>\n"
            f"  <name>{escape(self.name)}</name>\n"
            f"  <key>{escape(self.key)}</key>\n"
            f"  <source>\n  </source>\n"
            f"  <capacity unit='bytes'>{self.capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{self.allocation}</allocation>\n"
            f"  <target>\n"
            f"    <path>{escape(self.path)}</path>\n"
            f"    <format type={_attr(self.format)}/>\n"
            f"  </target>\n"
            f"</volume>\n"
        )


def parse_vol_xml(text: str | bytes | etree._Element, pool: PoolDef) -> VolDef:
    """Parse libvirt storage volume XML for a volume in ``pool``."""
    root = parse_xml(text) if not isinstance(text, etree._Element) else text
    if root.tag != "volume":
        raise XMLError(f"expected a <volume> document, not <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    validate_name(name, what="storage volume")
    vol_type = root.get("type", "file")
    if vol_type not in VOL_TYPES:
        raise XMLError(f"unknown storage volume type '{vol_type}'")
    capacity = _size(root.find("capacity"), what="volume capacity")
    if capacity is None:
        raise XMLError(f"storage volume '{name}' has no <capacity>")
    allocation = _size(root.find("allocation"), what="volume allocation")
    path = (root.findtext("target/path") or "").strip() or f"{pool.target_path.rstrip('/')}/{name}"
    key = (root.findtext("key") or "").strip() or path
    fmt = root.find("target/format")
    return VolDef(
        name=name,
        key=key,
        path=path,
        capacity=capacity,
        allocation=capacity if allocation is None else allocation,
        vol_type=vol_type,
        format=(fmt.get("type") if fmt is not None else None) or "raw",
    )


class PoolObj:
    """The node's record of one pool and its volumes."""

    __slots__ = ("active", "autostart", "defn", "persistent", "ref", "volumes")

    def __init__(self, defn: PoolDef, *, active: bool, persistent: bool) -> None:
        self.defn = defn
        self.ref = StoragePoolRef(defn.name, defn.uuid)
        self.active = active
        self.persistent = persistent
        self.autostart = False
        self.volumes: dict[str, VolDef] = {}

    @property
    def allocation(self) -> int:
        return sum(v.allocation for v in self.volumes.values())

    @property
    def available(self) -> int:
        return max(0, self.defn.capacity - self.allocation)

    def add_volume(self, vol: VolDef) -> None:
        if vol.name in self.volumes:
            raise StorageVolExistsError(
                f"storage volume '{vol.name}' already exists in pool '{self.defn.name}'"
            )
        if vol.allocation > self.available:
            raise OperationFailedError(
                f"not enough free space in pool '{self.defn.name}' for volume '{vol.name}' "
                f"({vol.allocation} bytes wanted, {self.available} available)"
            )
        self.volumes[vol.name] = vol

    def to_xml(self) -> str:
        d = self.defn
        source = f"  {d.source}\n" if d.source else "  <source>\n  </source>\n"
        return (
            f"<pool type={_attr(d.pool_type)}>\n"
            f"  <name>{escape(d.name)}</name>\n"
            f"  <uuid>{d.uuid}</uuid>\n"
            f"  <capacity unit='bytes'>{d.capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{self.allocation}</allocation>\n"
            f"  <available unit='bytes'>{self.available}</available>\n"
            f"{source}"
            f"  <target>\n"
            f"    <path>{escape(d.target_path)}</path>\n"
            f"  </target>\n"
            f"</pool>\n"
        )


def add_pool(node: TestNode, defn: PoolDef, *, active: bool, persistent: bool = True) -> PoolObj:
    """Add a pool to the node; OperationFailedError if the name or UUID is taken (libvirt's)."""
    _check_conflicts(node, defn)
    obj = PoolObj(defn, active=active, persistent=persistent)
    node.pools[defn.uuid] = obj
    return obj


def _check_conflicts(node: TestNode, defn: PoolDef) -> PoolObj | None:
    by_uuid = node.pools.get(defn.uuid)
    if by_uuid is not None and by_uuid.defn.name != defn.name:
        raise OperationFailedError(
            f"storage pool '{by_uuid.defn.name}' already exists with uuid {defn.uuid}"
        )
    by_name = _pool_by_name(node, defn.name)
    if by_name is not None and by_name.defn.uuid != defn.uuid:
        raise OperationFailedError(
            f"storage pool '{defn.name}' already exists with uuid {by_name.defn.uuid}"
        )
    return by_uuid


def _pool_by_name(node: TestNode, name: str) -> PoolObj | None:
    for obj in node.pools.values():
        if obj.defn.name == name:
            return obj
    return None


class TestStorageDriver:
    """The test driver's storage driver (libvirt's ``virStoragePool*``/``virStorageVol*``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, node: TestNode) -> None:
        self.node = node

    def _by_name(self, name: str) -> PoolObj | None:
        return _pool_by_name(self.node, name)

    def _obj(self, uuid: str) -> PoolObj:
        obj = self.node.pools.get(uuid)
        if obj is None:
            raise NoStoragePoolError(f"no storage pool with matching uuid '{uuid}'")
        return obj

    def _active(self, uuid: str) -> PoolObj:
        obj = self._obj(uuid)
        if not obj.active:
            raise OperationInvalidError(f"storage pool '{obj.defn.name}' is not active")
        return obj

    def _vol(self, pool_uuid: str, name: str) -> tuple[PoolObj, VolDef]:
        obj = self._active(pool_uuid)
        vol = obj.volumes.get(name) if isinstance(name, str) else None
        if vol is None:
            raise NoStorageVolError(
                f"no storage volume with matching name '{name}' in pool '{obj.defn.name}'"
            )
        return obj, vol

    # -- pools ---------------------------------------------------------------------------------

    async def list_all_storage_pools(self, *, active: bool | None) -> list[StoragePoolRef]:
        return [
            obj.ref
            for obj in sorted(self.node.pools.values(), key=lambda o: o.defn.name)
            if active is None or obj.active == active
        ]

    async def lookup_storage_pool_by_name(self, name: str) -> StoragePoolRef:
        obj = self._by_name(name) if isinstance(name, str) else None
        if obj is None:
            raise NoStoragePoolError(f"no storage pool with matching name '{name}'")
        return obj.ref

    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePoolRef:
        return self._obj(canonical_uuid(uuid)).ref

    async def storage_pool_define_xml(self, xml: str) -> StoragePoolRef:
        """Define (or redefine) a persistent pool; a new one is inactive."""
        await trio.lowlevel.checkpoint()
        defn = parse_pool_xml(xml)
        obj = _check_conflicts(self.node, defn)
        if obj is None:
            obj = add_pool(self.node, defn, active=False)
        else:
            obj.defn = defn
            obj.persistent = True
        return obj.ref

    async def storage_pool_create(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if obj.active:
            raise OperationInvalidError(f"storage pool '{obj.defn.name}' is already active")
        obj.active = True

    async def storage_pool_destroy(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._active(uuid)
        obj.active = False
        if not obj.persistent:
            del self.node.pools[uuid]

    async def storage_pool_undefine(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if obj.active:
            raise OperationInvalidError(f"storage pool '{obj.defn.name}' is still active")
        del self.node.pools[uuid]

    async def storage_pool_is_active(self, uuid: str) -> bool:
        return self._obj(uuid).active

    async def storage_pool_info(self, uuid: str) -> StoragePoolInfo:
        obj = self._obj(uuid)
        return StoragePoolInfo(
            state=POOL_RUNNING if obj.active else POOL_INACTIVE,
            capacity=obj.defn.capacity,
            allocation=obj.allocation,
            available=obj.available,
        )

    async def storage_pool_xml_desc(self, uuid: str) -> str:
        return self._obj(uuid).to_xml()

    # -- volumes ---------------------------------------------------------------------------------

    async def storage_pool_list_volumes(self, uuid: str) -> list[StorageVolRef]:
        obj = self._active(uuid)
        return [obj.volumes[name].ref(obj.defn.name) for name in sorted(obj.volumes)]

    async def storage_vol_lookup_by_name(self, pool_uuid: str, name: str) -> StorageVolRef:
        obj, vol = self._vol(pool_uuid, name)
        return vol.ref(obj.defn.name)

    async def storage_vol_create_xml(self, pool_uuid: str, xml: str) -> StorageVolRef:
        await trio.lowlevel.checkpoint()
        obj = self._active(pool_uuid)
        vol = parse_vol_xml(xml, obj.defn)
        obj.add_volume(vol)
        return vol.ref(obj.defn.name)

    async def storage_vol_delete(self, pool_uuid: str, name: str) -> None:
        await trio.lowlevel.checkpoint()
        obj, vol = self._vol(pool_uuid, name)
        del obj.volumes[vol.name]

    async def storage_vol_info(self, pool_uuid: str, name: str) -> StorageVolInfo:
        _, vol = self._vol(pool_uuid, name)
        return StorageVolInfo(
            type=VOL_TYPES[vol.vol_type], capacity=vol.capacity, allocation=vol.allocation
        )

    async def storage_vol_xml_desc(self, pool_uuid: str, name: str) -> str:
        obj, vol = self._vol(pool_uuid, name)
        return vol.to_xml(obj.defn)


__all__ = [
    "DEFAULT_POOL_CAPACITY",
    "PoolDef",
    "PoolObj",
    "TestStorageDriver",
    "VolDef",
    "add_pool",
    "parse_pool_xml",
    "parse_vol_xml",
]
