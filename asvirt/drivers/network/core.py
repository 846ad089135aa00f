"""The network calls of the public API, once for every network driver.

:class:`NetworkDriverCore` implements :class:`~asvirt.drivers.base.NetworkDriver` on a table
of :class:`NetworkObj`: lookups, lists, libvirt's define/undefine/start/stop rules, autostart,
and the network lifecycle events, the same whatever runs the networks. What differs — where
definitions are stored, what starting one does — comes from a :class:`NetworkBackend`: the
test driver's keeps everything in memory and creates nothing; the host backend
(:mod:`.driver`) creates bridges, runs dnsmasq and installs firewall rules.

The rules (libvirt's ``virnetworkobj.c``): a network is *persistent* when it has a
configuration and *active* while it runs; it exists while it is either. Defining a running
network changes only its next start. Undefining a running network makes it transient; a
transient network vanishes when it stops. Names and UUIDs are unique. Calls that change one
network are serialised by its lock, and everything they decide is decided under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from ...conf.names import canonical_uuid
from ...errors import NetworkExistsError, NoNetworkError, OperationInvalidError
from ...events import EventBus, EventKind, NetworkLifecycleEvent
from ..base import NetworkDHCPLease, NetworkRef
from .model import NetworkDef, parse_network_xml


class NetworkObj:
    """One network of the table (libvirt's ``virNetworkObj``)."""

    __slots__ = (
        "autostart",
        "live_def",
        "lock",
        "name",
        "persistent_def",
        "removed",
        "runtime",
        "uuid",
    )

    def __init__(
        self, persistent_def: NetworkDef | None, live_def: NetworkDef | None = None
    ) -> None:
        defn = live_def or persistent_def
        assert defn is not None
        self.name = defn.name
        self.uuid = defn.uuid
        self.persistent_def = persistent_def
        #: The definition it runs with, while active.
        self.live_def = live_def
        self.autostart = False
        #: What the backend keeps while it runs (bridge, dnsmasq supervisor...).
        self.runtime: Any = None
        self.lock = trio.Lock()
        self.removed = False

    @property
    def active(self) -> bool:
        return self.live_def is not None

    @property
    def persistent(self) -> bool:
        return self.persistent_def is not None

    @property
    def defn(self) -> NetworkDef:
        """The live definition while active, else the persistent one."""
        defn = self.live_def or self.persistent_def
        assert defn is not None
        return defn

    @property
    def ref(self) -> NetworkRef:
        return NetworkRef(self.name, self.uuid)


class NetworkBackend(Protocol):
    """What runs networks for :class:`NetworkDriverCore`."""

    def prepare(self, defn: NetworkDef, others: list[NetworkObj]) -> NetworkDef:
        """Complete a definition being defined (a bridge name, a MAC), checking it against
        the other networks; returns the definition to store."""
        ...

    async def save_config(self, obj: NetworkObj, defn: NetworkDef) -> None:
        """Store a persistent definition durably (before the table shows it)."""
        ...

    async def delete_config(self, obj: NetworkObj) -> None:
        """Remove the persistent definition (and autostart mark) of ``obj``."""
        ...

    async def save_autostart(self, obj: NetworkObj, autostart: bool) -> None: ...

    async def start(self, obj: NetworkObj, defn: NetworkDef) -> Any:
        """Bring ``defn`` up; returns the runtime. On failure, nothing it made is left."""
        ...

    async def stop(self, obj: NetworkObj) -> None:
        """Take down exactly what starting made."""
        ...

    async def leases(self, obj: NetworkObj) -> list[NetworkDHCPLease]:
        """The DHCP leases of a running network."""
        ...


class NetworkDriverCore:
    """A node's network driver: the table, the rules, the events."""

    def __init__(self, bus: EventBus, backend: NetworkBackend) -> None:
        self.bus = bus
        self.backend = backend
        self._by_uuid: dict[str, NetworkObj] = {}

    # -- the table ------------------------------------------------------------------------------

    def __iter__(self) -> Any:
        return iter(sorted(self._by_uuid.values(), key=lambda o: o.name))

    def add(self, obj: NetworkObj) -> None:
        """Add a network found at open (or given by a node file); no event."""
        self._check_conflicts(obj.defn)
        self._by_uuid[obj.uuid] = obj

    def find(self, uuid: str) -> NetworkObj | None:
        return self._by_uuid.get(uuid)

    def find_by_name(self, name: str) -> NetworkObj | None:
        for obj in self._by_uuid.values():
            if obj.name == name:
                return obj
        return None

    def _check_conflicts(self, defn: NetworkDef) -> NetworkObj | None:
        by_uuid = self._by_uuid.get(defn.uuid)
        if by_uuid is not None and by_uuid.name != defn.name:
            raise NetworkExistsError(
                f"network '{by_uuid.name}' already exists with uuid {defn.uuid}"
            )
        by_name = self.find_by_name(defn.name)
        if by_name is not None and by_name.uuid != defn.uuid:
            raise NetworkExistsError(
                f"network '{defn.name}' already exists with uuid {by_name.uuid}"
            )
        return by_uuid

    def _obj(self, uuid: str) -> NetworkObj:
        obj = self._by_uuid.get(uuid)
        if obj is None:
            raise NoNetworkError(f"no network with matching uuid '{uuid}'")
        return obj

    @contextlib.asynccontextmanager
    async def _locked(self, uuid: str) -> AsyncIterator[NetworkObj]:
        obj = self._obj(uuid)
        async with obj.lock:
            if obj.removed:
                raise NoNetworkError(f"no network with matching uuid '{uuid}'")
            yield obj

    def _remove(self, obj: NetworkObj) -> None:
        obj.removed = True
        self._by_uuid.pop(obj.uuid, None)

    def publish(self, obj: NetworkObj, type_: NetworkLifecycleEvent) -> None:
        self.bus.publish(
            domain=obj.name, uuid=obj.uuid, kind=EventKind.NETWORK_LIFECYCLE, type=type_
        )

    # -- what the domain side asks --------------------------------------------------------------

    def active_bridge(self, name: str) -> tuple[str, NetworkDef]:
        """The bridge a domain interface on network ``name`` plugs into, and the network's
        live definition; NoNetworkError or OperationInvalidError (not running)."""
        obj = self.find_by_name(name)
        if obj is None:
            raise NoNetworkError(f"no network with matching name '{name}'")
        if obj.live_def is None:
            raise OperationInvalidError(f"network '{name}' is not active")
        if obj.live_def.bridge is None:
            raise OperationInvalidError(f"network '{name}' has no bridge")
        return obj.live_def.bridge, obj.live_def

    # -- the NetworkDriver calls ----------------------------------------------------------------

    async def list_all_networks(self, *, active: bool | None) -> list[NetworkRef]:
        await trio.lowlevel.checkpoint()
        return [obj.ref for obj in self if active is None or obj.active == active]

    async def lookup_network_by_name(self, name: str) -> NetworkRef:
        await trio.lowlevel.checkpoint()
        obj = self.find_by_name(name) if isinstance(name, str) else None
        if obj is None:
            raise NoNetworkError(f"no network with matching name '{name}'")
        return obj.ref

    async def lookup_network_by_uuid(self, uuid: str) -> NetworkRef:
        await trio.lowlevel.checkpoint()
        return self._obj(canonical_uuid(uuid)).ref

    async def network_define_xml(self, xml: str) -> NetworkRef:
        """Define (or redefine) a persistent network; a new one is inactive."""
        parsed = parse_network_xml(xml)
        existing = self._check_conflicts(parsed)
        if existing is None:
            defn = self.backend.prepare(parsed, list(self._by_uuid.values()))
            obj = NetworkObj(defn)
            self._check_conflicts(defn)
            async with obj.lock:
                await self.backend.save_config(obj, defn)
                # Another define of the same network may have won meanwhile.
                self._check_conflicts(defn)
                self._by_uuid[obj.uuid] = obj
                self.publish(obj, NetworkLifecycleEvent.DEFINED)
            return obj.ref
        async with self._locked(existing.uuid) as obj:
            # Keep what the driver filled in before (the bridge, its MAC) unless it is changed.
            base = obj.persistent_def or obj.live_def
            if base is not None:
                if parsed.bridge is None and parsed.creates_bridge == base.creates_bridge:
                    parsed.bridge = base.bridge
                if parsed.mac is None and parsed.creates_bridge:
                    parsed.mac = base.mac
            others = [o for o in self._by_uuid.values() if o is not obj]
            defn = self.backend.prepare(parsed, others)
            await self.backend.save_config(obj, defn)
            obj.persistent_def = defn
            self.publish(obj, NetworkLifecycleEvent.DEFINED)
            return obj.ref

    async def network_undefine(self, uuid: str) -> None:
        async with self._locked(uuid) as obj:
            if not obj.persistent:
                raise OperationInvalidError(f"network '{obj.name}' is not persistent")
            await self.backend.delete_config(obj)
            obj.persistent_def = None
            obj.autostart = False
            if not obj.active:
                self._remove(obj)
            self.publish(obj, NetworkLifecycleEvent.UNDEFINED)

    async def network_create(self, uuid: str) -> None:
        """Start a defined network."""
        async with self._locked(uuid) as obj:
            if obj.active:
                raise OperationInvalidError(f"network '{obj.name}' is already active")
            assert obj.persistent_def is not None
            defn = obj.persistent_def.copy()
            obj.runtime = await self.backend.start(obj, defn)
            obj.live_def = defn
            self.publish(obj, NetworkLifecycleEvent.STARTED)

    async def network_destroy(self, uuid: str) -> None:
        """Stop a running network (a transient one vanishes)."""
        async with self._locked(uuid) as obj:
            if not obj.active:
                raise OperationInvalidError(f"network '{obj.name}' is not active")
            await self.backend.stop(obj)
            self.stopped(obj)

    def stopped(self, obj: NetworkObj) -> None:
        """``obj`` is down (stopped by a call, or found gone): record it and say so."""
        obj.live_def = None
        obj.runtime = None
        if not obj.persistent:
            self._remove(obj)
        self.publish(obj, NetworkLifecycleEvent.STOPPED)

    async def network_is_active(self, uuid: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._obj(uuid).active

    async def network_is_persistent(self, uuid: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._obj(uuid).persistent

    async def network_xml_desc(self, uuid: str, *, inactive: bool = False) -> str:
        """The live definition while running; ``inactive=True``: the next start's."""
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        defn = obj.persistent_def if inactive and obj.persistent_def is not None else obj.defn
        return defn.to_xml()

    async def network_autostart(self, uuid: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._obj(uuid).autostart

    async def network_set_autostart(self, uuid: str, autostart: bool) -> None:
        async with self._locked(uuid) as obj:
            if not obj.persistent:
                raise OperationInvalidError(
                    f"cannot set autostart for transient network '{obj.name}'"
                )
            if obj.autostart != bool(autostart):
                await self.backend.save_autostart(obj, bool(autostart))
                obj.autostart = bool(autostart)

    async def network_bridge_name(self, uuid: str) -> str:
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if obj.defn.bridge is None:
            raise OperationInvalidError(f"network '{obj.name}' does not have a bridge name.")
        return obj.defn.bridge

    async def network_dhcp_leases(
        self, uuid: str, mac: str | None = None
    ) -> list[NetworkDHCPLease]:
        """The DHCP leases the network's server has given (all, or those of ``mac``)."""
        obj = self._obj(uuid)
        if not obj.active:
            await trio.lowlevel.checkpoint()
            return []
        leases = await self.backend.leases(obj)
        if mac is not None:
            leases = [lease for lease in leases if lease.mac == mac.lower()]
        return leases


__all__ = ["NetworkBackend", "NetworkDriverCore", "NetworkObj"]
