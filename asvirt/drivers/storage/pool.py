"""Storage pool and volume definitions: libvirt's XML, read and written once for every driver.

Both storage drivers (the test driver's, in memory, and the QEMU node's ``dir`` pools on real
files) parse with :func:`parse_pool_xml` and :func:`parse_vol_xml` and write with the same
formatters, so they accept and reject the same documents and describe objects the same way.

What is checked, because names and paths end up in the file system:

* a pool's target path is absolute and normalised (``//`` and a trailing ``/`` are folded as
  libvirt does; ``.`` and ``..`` components are refused: a path that climbs is an error, not
  something to resolve);
* a volume name is a file name: no ``/``, not ``.`` or ``..``, not hidden (a leading ``.``:
  those are the drivers' own temporary files), no control characters, no leading ``-``;
* a volume's path is always the pool's target path joined with its name, whatever
  ``<target><path>`` says (libvirt ignores it on creation too);
* sizes are libvirt's scaled integers (:mod:`asvirt.conf.units`).
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from xml.sax.saxutils import escape

from lxml import etree

from ...conf.encryption import Encryption, parse_encryption
from ...conf.names import InvalidNameError, canonical_uuid, validate_name
from ...conf.units import parse_scaled
from ...conf.xmlnode import Node, XElem
from ...conf.xmlsafe import parse_xml
from ...errors import OperationFailedError, XMLError
from ..base import StoragePoolRef, StorageVolRef

#: ``virStoragePoolState`` values (:attr:`asvirt.StoragePoolInfo.state`).
POOL_INACTIVE, POOL_BUILDING, POOL_RUNNING, POOL_DEGRADED, POOL_INACCESSIBLE = range(5)
#: Their names, as ``virsh pool-info`` prints them.
POOL_STATE_NAMES = ("inactive", "building", "running", "degraded", "inaccessible")
#: ``virStorageVolType`` values (:attr:`asvirt.StorageVolInfo.type`).
VOL_TYPES = {"file": 0, "block": 1, "dir": 2, "network": 3, "netdir": 4, "ploop": 5}
#: The file formats libvirt's volume XML knows (``virStorageFileFormat``).
VOL_FORMATS = frozenset(
    {
        "raw",
        "dir",
        "bochs",
        "cloop",
        "dmg",
        "iso",
        "vpc",
        "vdi",
        "fat",
        "vhd",
        "ploop",
        "cow",
        "qcow",
        "qcow2",
        "qed",
        "vmdk",
        "luks",
    }
)
#: A pool's directory is created with this mode unless its XML says otherwise (libvirt's).
DEFAULT_POOL_MODE = 0o711
#: A volume's file is created with this mode unless its XML says otherwise (libvirt's).
DEFAULT_VOL_MODE = 0o600
#: How deep a chain of backing files may go before it is refused (a loop, or an attack).
MAX_BACKING_DEPTH = 16


def _attr(value: str) -> str:
    """An XML attribute value in single quotes, as libvirt writes them."""
    return "'" + escape(value, {"'": "&apos;"}) + "'"


def _size(el: etree._Element | None, *, what: str) -> int | None:
    if el is None:
        return None
    return parse_scaled(el.text, el.get("unit"), what=what, default_unit="bytes")


def _mode(el: etree._Element | None, *, what: str) -> int | None:
    """``<permissions><mode>0711</mode>``: an octal file mode, or None if not given."""
    text = el.findtext("mode") if el is not None else None
    if text is None:
        return None
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise XMLError(f"invalid {what} mode '{text.strip()}': not an octal number") from None
    if not 0 <= mode <= 0o777:
        raise XMLError(f"invalid {what} mode '{text.strip()}': beyond 0777")
    return mode


def validate_volume_name(name: str) -> None:
    """Raise :class:`~asvirt.conf.names.InvalidNameError` unless ``name`` is a safe file name.

    The domain name rules (:func:`~asvirt.conf.names.validate_name`), and no leading ``.``:
    a hidden file is no volume (the drivers' temporary files are hidden).
    """
    validate_name(name, what="storage volume")
    if name.startswith("."):
        raise InvalidNameError(f"storage volume name '{name}' must not start with '.'")


def is_volume_name(name: object) -> bool:
    """True if ``name`` is a string :func:`validate_volume_name` accepts."""
    if not isinstance(name, str):
        return False
    try:
        validate_volume_name(name)
    except XMLError:
        return False
    return True


def normalise_pool_path(text: str) -> str:
    """A pool target path, absolute and normalised; XMLError for one that is not.

    Repeated and trailing slashes are folded, as libvirt does; ``.`` and ``..`` components
    are refused, so a definition says plainly which directory it means.
    """
    path = text.strip()
    if not path.startswith("/"):
        raise XMLError(f"storage pool target path '{path}' must be absolute")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise XMLError("storage pool target path must not contain control characters")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise XMLError(f"storage pool target path '{path}' must not contain '.' or '..'")
    return "/" + "/".join(parts)


@dataclasses.dataclass
class PoolDef:
    """A parsed storage pool definition."""

    name: str
    uuid: str
    pool_type: str
    target_path: str
    #: ``<capacity>`` as given (the test driver's pool size); None if the XML has none.
    capacity: int | None = None
    #: ``<target><permissions><mode>``, None when not given.
    target_mode: int | None = None
    #: The ``<source>`` element as given, serialised (None if there was none).
    source: str | None = None

    def to_xml(self, sizes: tuple[int, int, int] | None = None) -> str:
        """The pool's XML; ``sizes`` (capacity, allocation, available) for a live one."""
        source = f"  {self.source}\n" if self.source else "  <source>\n  </source>\n"
        size_xml = ""
        if sizes is not None:
            capacity, allocation, available = sizes
            size_xml = (
                f"  <capacity unit='bytes'>{capacity}</capacity>\n"
                f"  <allocation unit='bytes'>{allocation}</allocation>\n"
                f"  <available unit='bytes'>{available}</available>\n"
            )
        perms = ""
        if self.target_mode is not None:
            perms = (
                "    <permissions>\n"
                f"      <mode>{self.target_mode:04o}</mode>\n"
                "    </permissions>\n"
            )
        return (
            f"<pool type={_attr(self.pool_type)}>\n"
            f"  <name>{escape(self.name)}</name>\n"
            f"  <uuid>{self.uuid}</uuid>\n"
            f"{size_xml}"
            f"{source}"
            f"  <target>\n"
            f"    <path>{escape(self.target_path)}</path>\n"
            f"{perms}"
            f"  </target>\n"
            f"</pool>\n"
        )


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
    target_text = root.findtext("target/path")
    target_path = normalise_pool_path(target_text) if target_text else f"/{name}"
    source_el = root.find("source")
    source = None
    # An empty <source> says nothing (libvirt writes one in every pool's XML).
    if source_el is not None and (len(source_el) or source_el.attrib):
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
        target_path=target_path,
        capacity=capacity,
        target_mode=_mode(root.find("target/permissions"), what="storage pool"),
        source=source,
    )


@dataclasses.dataclass
class VolDef:
    """A storage volume: what its XML asked for, or what the driver found on disk."""

    name: str
    path: str
    capacity: int
    allocation: int
    format: str = "raw"
    vol_type: str = "file"
    #: The file's size on disk (``<physical>``), where the driver knows it.
    physical: int | None = None
    #: ``<backingStore><path>`` and its format: the volume is an overlay on that file.
    backing_path: str | None = None
    backing_format: str | None = None
    #: ``<target><permissions><mode>``: the file's mode (None: the default, or unknown).
    mode: int | None = None
    #: ``<target><encryption format='luks'>``: created LUKS-encrypted (a raw volume as a
    #: LUKS image, a qcow2 with LUKS encryption), the passphrase from that secret.
    encryption: Encryption | None = None

    @property
    def key(self) -> str:
        """A volume's key is its path, as in libvirt's directory pools."""
        return self.path

    def ref(self, pool: str) -> StorageVolRef:
        return StorageVolRef(pool=pool, name=self.name, key=self.key, path=self.path)

    def to_xml(self) -> str:
        physical = (
            f"  <physical unit='bytes'>{self.physical}</physical>\n"
            if self.physical is not None
            else ""
        )
        perms = ""
        if self.mode is not None:
            perms = f"    <permissions>\n      <mode>{self.mode:04o}</mode>\n    </permissions>\n"
        backing = ""
        if self.backing_path is not None:
            fmt = (
                f"    <format type={_attr(self.backing_format)}/>\n" if self.backing_format else ""
            )
            backing = (
                f"  <backingStore>\n"
                f"    <path>{escape(self.backing_path)}</path>\n"
                f"{fmt}"
                f"  </backingStore>\n"
            )
        return (
            f"<volume type={_attr(self.vol_type)}>\n"
            f"  <name>{escape(self.name)}</name>\n"
            f"  <key>{escape(self.key)}</key>\n"
            f"  <source>\n  </source>\n"
            f"  <capacity unit='bytes'>{self.capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{self.allocation}</allocation>\n"
            f"{physical}"
            f"  <target>\n"
            f"    <path>{escape(self.path)}</path>\n"
            f"    <format type={_attr(self.format)}/>\n"
            f"{perms}"
            f"{self._encryption_xml()}"
            f"  </target>\n"
            f"{backing}"
            f"</volume>\n"
        )

    def _encryption_xml(self) -> str:
        if self.encryption is None:
            return ""
        holder = XElem("target")
        self.encryption.format_xml(holder)
        return "".join(f"  {line}\n" for line in holder.serialize().splitlines()[1:-1])


def volume_path(pool: PoolDef, name: str) -> str:
    """Where the volume ``name`` of ``pool`` lives: the pool's directory joined with it."""
    return posixpath.join(pool.target_path, name)


def parse_vol_xml(text: str | bytes | etree._Element, pool: PoolDef) -> VolDef:
    """Parse libvirt storage volume XML for a volume in ``pool``.

    ``<capacity>`` is required unless the volume has a ``<backingStore>`` (it then defaults
    to the backing file's, which the driver fills in: 0 here). ``<allocation>`` defaults to
    the capacity, as in libvirt, and is at most the capacity. The path is the pool's path
    joined with the name; ``<key>`` and ``<target><path>`` in the document are ignored.
    """
    root = parse_xml(text) if not isinstance(text, etree._Element) else text
    if root.tag != "volume":
        raise XMLError(f"expected a <volume> document, not <{root.tag}>")
    name = (root.findtext("name") or "").strip()
    validate_volume_name(name)
    vol_type = root.get("type", "file")
    if vol_type not in VOL_TYPES:
        raise XMLError(f"unknown storage volume type '{vol_type}'")
    backing_path = backing_format = None
    backing = root.find("backingStore")
    if backing is not None and (backing.findtext("path") or "").strip():
        backing_path = (backing.findtext("path") or "").strip()
        backing_format = _format(backing.find("format"), what="backing store")
    capacity = _size(root.find("capacity"), what="volume capacity")
    allocation = _size(root.find("allocation"), what="volume allocation")
    if capacity is None:
        if backing_path is None:
            raise XMLError(f"storage volume '{name}' has no <capacity>")
        capacity = 0
    fmt = _format(root.find("target/format"), what="volume") or "raw"
    encryption = None
    enc_el = root.find("target/encryption")
    if enc_el is not None:
        encryption = parse_encryption(
            Node(enc_el, ("volume", "target", "encryption")), for_volume=True
        )
        if fmt not in ("raw", "qcow2"):
            raise XMLError(
                f"storage volume '{name}': LUKS encryption is for raw and qcow2 volumes, not {fmt}"
            )
    return VolDef(
        name=name,
        path=volume_path(pool, name),
        capacity=capacity,
        allocation=capacity if allocation is None else min(allocation, capacity),
        format=fmt,
        vol_type=vol_type,
        backing_path=backing_path,
        backing_format=backing_format,
        mode=_mode(root.find("target/permissions"), what="storage volume"),
        encryption=encryption,
    )


def _format(el: etree._Element | None, *, what: str) -> str | None:
    if el is None:
        return None
    fmt = el.get("type")
    if fmt is None:
        return None
    if fmt not in VOL_FORMATS:
        raise XMLError(f"unknown {what} format '{fmt}'")
    return fmt


class PoolObj:
    """The node's record of one pool: its definition, its state and its volumes.

    ``building`` names volumes being created (their names are taken, they are not listed
    yet), ``in_use`` counts the streams and copies reading or writing each volume (it cannot
    be deleted meanwhile), ``asyncjobs`` counts every such operation in the pool (it cannot
    be stopped, refreshed or removed meanwhile): libvirt's rules.
    """

    __slots__ = (
        "active",
        "asyncjobs",
        "autostart",
        "building",
        "built",
        "defn",
        "in_use",
        "new_defn",
        "persistent",
        "ref",
        "volumes",
    )

    def __init__(self, defn: PoolDef, *, active: bool, persistent: bool) -> None:
        self.defn = defn
        #: A definition given while the pool ran: it applies once the pool is stopped.
        self.new_defn: PoolDef | None = None
        self.ref = StoragePoolRef(defn.name, defn.uuid)
        self.active = active
        self.persistent = persistent
        self.autostart = False
        #: Whether the pool's directory exists (the test driver's memory of pool-build).
        self.built = True
        self.volumes: dict[str, VolDef] = {}
        self.building: set[str] = set()
        self.in_use: Counter[str] = Counter()
        self.asyncjobs = 0

    @property
    def name(self) -> str:
        return self.defn.name

    def name_taken(self, name: str) -> bool:
        return name in self.volumes or name in self.building


class PoolTable:
    """Every pool of a node, by UUID, with libvirt's rules for names, UUIDs and paths."""

    def __init__(self, pools: dict[str, PoolObj] | None = None) -> None:
        self.pools: dict[str, PoolObj] = pools if pools is not None else {}

    def __iter__(self) -> Iterator[PoolObj]:
        return iter(sorted(self.pools.values(), key=lambda o: o.defn.name))

    def by_name(self, name: str) -> PoolObj | None:
        for obj in self.pools.values():
            if obj.defn.name == name:
                return obj
        return None

    def conflicts(self, defn: PoolDef) -> PoolObj | None:
        """The pool ``defn`` would replace (same name and UUID), or None if it is new.

        OperationFailedError (libvirt's codes) if its name or UUID belongs to another pool,
        or another pool uses the same directory.
        """
        by_uuid = self.pools.get(defn.uuid)
        if by_uuid is not None and by_uuid.defn.name != defn.name:
            raise OperationFailedError(
                f"storage pool '{by_uuid.defn.name}' already exists with uuid {defn.uuid}"
            )
        by_name = self.by_name(defn.name)
        if by_name is not None and by_name.defn.uuid != defn.uuid:
            raise OperationFailedError(
                f"storage pool '{defn.name}' already exists with uuid {by_name.defn.uuid}"
            )
        for obj in self.pools.values():
            if obj.defn.uuid == defn.uuid:
                continue
            if defn.target_path in (obj.defn.target_path, (obj.new_defn or obj.defn).target_path):
                raise OperationFailedError(
                    f"storage source conflict with pool '{obj.defn.name}': both use "
                    f"'{defn.target_path}'"
                )
        return by_uuid

    def add(self, defn: PoolDef, *, active: bool, persistent: bool = True) -> PoolObj:
        self.conflicts(defn)
        obj = PoolObj(defn, active=active, persistent=persistent)
        self.pools[defn.uuid] = obj
        return obj

    def volume_by_path(self, path: str) -> tuple[PoolObj, VolDef] | None:
        """The volume at ``path`` in an active pool, if any (by its directory and name)."""
        directory, name = posixpath.split(path)
        for obj in self.pools.values():
            if obj.active and obj.defn.target_path == directory:
                vol = obj.volumes.get(name)
                if vol is not None:
                    return obj, vol
        return None


__all__ = [
    "DEFAULT_POOL_MODE",
    "DEFAULT_VOL_MODE",
    "MAX_BACKING_DEPTH",
    "POOL_INACTIVE",
    "POOL_RUNNING",
    "POOL_STATE_NAMES",
    "VOL_FORMATS",
    "VOL_TYPES",
    "PoolDef",
    "PoolObj",
    "PoolTable",
    "VolDef",
    "is_volume_name",
    "normalise_pool_path",
    "parse_pool_xml",
    "parse_vol_xml",
    "validate_volume_name",
    "volume_path",
]
