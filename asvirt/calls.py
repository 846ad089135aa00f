"""The calls of a connection, whatever carries them (trio-free: clients of a daemon that
need no event loop use them too).

:class:`ConnectionCalls` turns each public method into a declared call
(:mod:`asvirt.protocol`) through ``_call``, which a concrete connection provides: the trio
:class:`asvirt.Connection`, or the command line's one-shot client.
"""

from __future__ import annotations

from .domain import Domain
from .drivers.base import (
    DomainRef,
    HypervisorVersion,
    NodeInfo,
    ProgressCallback,
    SecretUsageType,
    SecurityModel,
    StatsGroup,
)

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any

    from .network import Network
    from .secret import Secret
    from .storage import StoragePool, StorageVol

# Networks, pools, volumes and secrets load with the first call that makes one: a one-shot
# command on domains (`asvirt list`) imports none of them (issue 9).


class ConnectionCalls:
    """The public calls of a connection, made through ``_call``."""

    async def _call(self, method: str, /, **params: Any) -> Any:
        raise NotImplementedError

    def hostname(self) -> str:
        raise NotImplementedError

    @property
    def uri(self) -> str:
        """The URI this connection was opened with."""
        raise NotImplementedError

    # -- domains -------------------------------------------------------------------------------

    async def define_xml(self, xml: str) -> Domain:
        """Define (or redefine) a persistent domain; emits DEFINED/ADDED or DEFINED/UPDATED."""
        return Domain(self, await self._call("define_xml", xml=xml))

    async def create_xml(
        self, xml: str, *, paused: bool = False, autodestroy: bool = False
    ) -> Domain:
        """Create and start a transient domain, which vanishes when it stops.

        ``autodestroy=True`` destroys it when this connection closes (or, should this
        process die, when the node is next opened).
        """
        return Domain(
            self,
            await self._call("create_xml", xml=xml, paused=paused, autodestroy=autodestroy),
        )

    async def lookup_by_name(self, name: str) -> Domain:
        """The domain called ``name``; raises NoDomainError if there is none."""
        return Domain(self, await self._call("lookup_by_name", name=name))

    async def lookup_by_uuid(self, uuid: str) -> Domain:
        """The domain with this UUID (any usual spelling); raises NoDomainError if there is none."""
        return Domain(self, await self._call("lookup_by_uuid", uuid=uuid))

    async def list_all_domains(
        self, *, active: bool | None = None, persistent: bool | None = None
    ) -> list[Domain]:
        """All domains, optionally only (in)active or (non-)persistent ones; sorted by name."""
        refs = await self._call("list_all_domains", active=active, persistent=persistent)
        return [Domain(self, ref) for ref in refs]

    async def get_all_domain_stats(
        self,
        stats: StatsGroup | int = 0,
        *,
        domains: list[Domain] | None = None,
        active: bool | None = None,
        persistent: bool | None = None,
    ) -> list[tuple[Domain, dict[str, Any]]]:
        """Statistics of many domains at once, as libvirt-python's ``getAllDomainStats()``:
        a ``(domain, fields)`` pair per domain, the fields named as libvirt names them
        (``state.state``, ``cpu.time``, ``balloon.current``, ``vcpu.0.time``,
        ``net.0.rx.bytes``, ``block.0.rd.reqs``...).

        ``stats`` picks the groups (:class:`StatsGroup` flags; none: all); ``domains`` only
        these (libvirt's ``domainListGetStats()``), else every domain, optionally only
        (in)active or (non-)persistent ones. Every domain is measured at once; a QEMU that
        does not answer in time (``[qemu] stats_timeout``) only lacks those figures.
        """
        uuids = None if domains is None else [d.uuid for d in domains]
        records = await self._call(
            "get_all_domain_stats",
            stats=StatsGroup(stats),
            uuids=uuids,
            active=active,
            persistent=persistent,
        )
        return [(Domain(self, DomainRef(r.name, r.uuid)), r.params) for r in records]

    async def capabilities(self) -> str:
        """The host and guest capabilities as libvirt's capabilities XML."""
        return await self._call("capabilities_xml")

    async def node_info(self) -> NodeInfo:
        """The host's CPUs and memory (libvirt's ``getInfo``, ``virsh nodeinfo``)."""
        return await self._call("node_info")

    async def hypervisor_version(self) -> HypervisorVersion:
        """The hypervisor's name and version (``QEMU``, ``8.2.2``): libvirt's ``getType``
        and ``getVersion``."""
        return await self._call("hypervisor_version")

    async def security_model(self) -> SecurityModel:
        """The node's security driver (libvirt's ``getSecurityModel``); ``none`` with DOI
        ``0`` when no security driver labels the guests."""
        return await self._call("node_security_model")

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        """What the driver would run for ``xml`` (``"qemu-argv"``: the QEMU command line)."""
        return await self._call("domxml_to_native", native_format=native_format, xml=xml)

    async def domain_xml_normalize(self, xml: str) -> str:
        """The XML that ``define_xml(xml)`` would store, without defining anything.

        Defaults are filled in, implicit devices added and addresses assigned, as on define;
        errors are those define would raise. Handy to see what a driver makes of your XML.
        """
        return await self._call("domain_xml_normalize", xml=xml)

    async def restore(
        self,
        path: str,
        xml: str | None = None,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Domain:
        """Start the domain saved in the image ``path`` (by :meth:`Domain.save`, on the
        node's host) from its saved state: STARTED/RESTORED, then SUSPENDED/RESTORED if it
        was saved paused. It runs again if it ran (``running``/``paused`` say otherwise); a
        domain that no longer exists comes back transient. ``xml`` replaces the definition
        the image holds (the same domain)."""
        ref = await self._call(
            "restore", path=path, xml=xml, running=running, paused=paused, progress=progress
        )
        return Domain(self, ref)

    async def save_image_get_xml_desc(self, path: str, *, secure: bool = False) -> str:
        """The domain XML the save image ``path`` (on the node's host) holds; ``secure``:
        with its display passwords and disk cookies (virsh's ``--security-info``)."""
        return await self._call("save_image_get_xml_desc", path=path, secure=secure)

    # -- networks and storage -----------------------------------------------------------------

    async def list_all_networks(self, *, active: bool | None = None) -> list[Network]:
        from .network import Network

        return [Network(self, ref) for ref in await self._call("list_all_networks", active=active)]

    async def lookup_network_by_name(self, name: str) -> Network:
        from .network import Network

        return Network(self, await self._call("lookup_network_by_name", name=name))

    async def lookup_network_by_uuid(self, uuid: str) -> Network:
        from .network import Network

        return Network(self, await self._call("lookup_network_by_uuid", uuid=uuid))

    async def network_define_xml(self, xml: str) -> Network:
        from .network import Network

        return Network(self, await self._call("network_define_xml", xml=xml))

    async def list_all_storage_pools(self, *, active: bool | None = None) -> list[StoragePool]:
        from .storage import StoragePool

        refs = await self._call("list_all_storage_pools", active=active)
        return [StoragePool(self, ref) for ref in refs]

    async def lookup_storage_pool_by_name(self, name: str) -> StoragePool:
        from .storage import StoragePool

        return StoragePool(self, await self._call("lookup_storage_pool_by_name", name=name))

    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePool:
        from .storage import StoragePool

        return StoragePool(self, await self._call("lookup_storage_pool_by_uuid", uuid=uuid))

    async def storage_pool_define_xml(self, xml: str) -> StoragePool:
        """Define (or redefine) a persistent storage pool from libvirt pool XML."""
        from .storage import StoragePool

        return StoragePool(self, await self._call("storage_pool_define_xml", xml=xml))

    async def lookup_storage_vol_by_path(self, path: str) -> StorageVol:
        """The volume whose file is ``path``, in any active pool; NoStorageVolError if none."""
        from .storage import StorageVol

        ref = await self._call("storage_vol_lookup_by_path", path=path)
        pool = await self.lookup_storage_pool_by_name(ref.pool)
        return StorageVol(pool, ref)

    async def lookup_storage_vol_by_key(self, key: str) -> StorageVol:
        """The volume with this key (a volume's key is its path, as in libvirt's dir pools)."""
        return await self.lookup_storage_vol_by_path(key)

    # -- secrets -------------------------------------------------------------------------------

    async def list_all_secrets(
        self, *, ephemeral: bool | None = None, private: bool | None = None
    ) -> list[Secret]:
        """Secrets, sorted by UUID; optionally only (non-)ephemeral or (non-)private ones."""
        from .secret import Secret

        refs = await self._call("list_all_secrets", ephemeral=ephemeral, private=private)
        return [Secret(self, ref) for ref in refs]

    async def lookup_secret_by_uuid(self, uuid: str) -> Secret:
        """The secret with this UUID; NoSecretError if there is none."""
        from .secret import Secret

        return Secret(self, await self._call("lookup_secret_by_uuid", uuid=uuid))

    async def lookup_secret_by_usage(
        self, usage_type: SecretUsageType | int, usage_id: str
    ) -> Secret:
        """The secret for ``usage_id`` (a volume's path, a Ceph name, an iSCSI target...)."""
        from .secret import Secret

        ref = await self._call(
            "lookup_secret_by_usage", usage_type=SecretUsageType(usage_type), usage_id=usage_id
        )
        return Secret(self, ref)

    async def secret_define_xml(self, xml: str) -> Secret:
        """Define (or redefine) a secret from libvirt secret XML; SECRET_LIFECYCLE DEFINED."""
        from .secret import Secret

        return Secret(self, await self._call("secret_define_xml", xml=xml))
