"""What the public API asks of drivers, and the plain records they answer with.

As in libvirt, the public objects (:class:`asvirt.Connection`, :class:`asvirt.Domain`, ...)
hold no logic of their own: every call is delegated to the node the connection URI names —
its domain driver (:class:`asvirt.hypervisor.domain_driver.DomainDriver`, shared by every
hypervisor) and, where the driver family provides them, its network and storage drivers.
Drivers identify objects by UUID.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..conf.secret_usage import SecretUsageType
from ..records import record
from ..states import DomainState

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any

    from .interfaces import (
        ClientDriver,
        DriverOpener,
        NetworkDriver,
        SecretDriver,
        StorageDriver,
    )


@record
class DomainRef:
    """How a driver names a domain to the public API."""

    name: str
    uuid: str


@record
class DomainInfo:
    """libvirt's ``virDomainInfo``: state, memory in KiB, vCPUs and CPU time used."""

    state: DomainState
    max_memory_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


@record
class NodeInfo:
    """libvirt's ``virNodeInfo``: the host's CPUs and memory (``virsh nodeinfo``)."""

    #: The CPU architecture (``x86_64``).
    model: str
    memory_kib: int
    #: Online CPUs.
    cpus: int
    #: The CPU frequency in MHz (0 when unknown).
    mhz: int
    #: NUMA cells, sockets per cell, cores per socket, threads per core.
    nodes: int
    sockets: int
    cores: int
    threads: int


@record
class HypervisorVersion:
    """What a connection's hypervisor is: libvirt's ``virConnectGetType`` (``QEMU``,
    ``Test``) and ``virConnectGetVersion`` (``8.2.2``)."""

    type: str
    version: str


@record
class SecurityModel:
    """libvirt's ``virSecurityModel``: the node's primary security driver (``none`` with DOI
    ``0`` when nothing confines the guests beyond their own user)."""

    model: str
    doi: str


@record
class SecurityLabel:
    """libvirt's ``virSecurityLabel``: a domain's label under the security driver (empty
    under ``none``) and whether it is enforced."""

    label: str
    enforcing: bool


class StatsGroup(enum.IntFlag):
    """The groups of :meth:`asvirt.Connection.get_all_domain_stats` (libvirt's
    ``virDomainStatsTypes``); none (0) means every group the driver supports."""

    #: ``state.state``, ``state.reason``.
    STATE = 1
    #: ``cpu.time``, ``cpu.user``, ``cpu.system`` (nanoseconds).
    CPU_TOTAL = 2
    #: ``balloon.current``, ``balloon.maximum`` (KiB) and the guest's balloon statistics.
    BALLOON = 4
    #: ``vcpu.current``, ``vcpu.maximum``, ``vcpu.N.state``, ``vcpu.N.time``...
    VCPU = 8
    #: ``net.count``, ``net.N.name``, ``net.N.rx.bytes``...
    INTERFACE = 16
    #: ``block.count``, ``block.N.name``, ``block.N.rd.reqs``...
    BLOCK = 32


@record
class DomainStats:
    """One domain's record of ``get_all_domain_stats`` (libvirt's ``virDomainStatsRecord``):
    libvirt's typed parameters, in libvirt's order, as a dict of field name to value."""

    name: str
    uuid: str
    params: dict[str, Any]


@record
class InterfaceStats:
    """libvirt's ``virDomainInterfaceStatsStruct``, seen from the guest (-1: unknown)."""

    rx_bytes: int
    rx_packets: int
    rx_errs: int
    rx_drop: int
    tx_bytes: int
    tx_packets: int
    tx_errs: int
    tx_drop: int


@record
class BlockInfo:
    """libvirt's ``virDomainBlockInfo``, in bytes: what the guest sees (``capacity``), what the
    image occupies on the host (``allocation``, as ``du``) and its host size (``physical``,
    as ``ls``)."""

    capacity: int
    allocation: int
    physical: int


class BlockJobType(enum.IntEnum):
    """What a block job does (libvirt's ``virDomainBlockJobType``)."""

    UNKNOWN = 0
    #: ``block_pull``: the backing chain streamed into the top image.
    PULL = 1
    #: ``block_copy``: the disk mirrored to another image.
    COPY = 2
    #: ``block_commit`` of a layer below the top: it ends by itself.
    COMMIT = 3
    #: ``block_commit`` of the top (active) layer: it waits, synchronised, for a pivot.
    ACTIVE_COMMIT = 4
    BACKUP = 5


@record
class BlockJobInfo:
    """A disk's block job as it runs (libvirt's ``virDomainBlockJobInfo``): ``cur`` of
    ``end`` done (units of the job's own choosing; ``end`` may grow), ``bandwidth`` its limit
    in bytes/s (0: none), ``ready`` whether it waits to be pivoted or aborted (a copy or an
    active commit that has synchronised)."""

    type: BlockJobType
    bandwidth: int
    cur: int
    end: int
    ready: bool


class VcpuState(enum.IntEnum):
    """A vCPU's state (libvirt's ``virVcpuState``)."""

    OFFLINE = 0
    RUNNING = 1
    BLOCKED = 2


@record
class VcpuInfo:
    """One online vCPU of a running domain (libvirt's ``virVcpuInfo`` with its affinity, as
    ``virDomainGetVcpus`` gives them): its ``number``, ``state``, the CPU time its thread
    used (``cpu_time``, ns), the host CPU it last ran on (``cpu``) and the host CPUs it may
    run on (``cpumap``: one bool per host CPU)."""

    number: int
    state: VcpuState
    cpu_time: int
    cpu: int
    cpumap: list[bool]


@record
class IOThreadInfo:
    """One I/O thread of a domain (libvirt's ``virDomainIOThreadInfo``): its id and the host
    CPUs it may run on (``cpumap``: one bool per host CPU)."""

    iothread_id: int
    cpumap: list[bool]


@record
class DomainSnapshotInfo:
    """What a snapshot is, beside its XML: where it sits in the domain's snapshot tree."""

    name: str
    #: The snapshot it was taken after (None: a root).
    parent: str | None
    #: The domain's state when it was taken: ``running``, ``paused`` or ``shutoff``.
    state: str
    #: Seconds since the epoch.
    creation_time: int
    #: Whether it is the domain's current snapshot.
    current: bool
    #: How many snapshots have it as parent, and how many descend from it.
    children: int
    descendants: int
    #: Whether it holds the memory state (reverting to it restores a running guest).
    memory: bool


@record
class NetworkRef:
    name: str
    uuid: str


class IPAddrType(enum.IntEnum):
    """libvirt's ``virIPAddrType``."""

    IPV4 = 0
    IPV6 = 1


@record
class NetworkDHCPLease:
    """One DHCP lease of a network (libvirt's ``virNetworkDHCPLease``).

    ``expiry_time`` is seconds since the epoch (0: never expires); ``iaid`` and a DUID in
    ``client_id`` are DHCPv6's; ``prefix`` is the subnet's prefix length.
    """

    iface: str
    expiry_time: int
    type: IPAddrType
    mac: str
    iaid: str | None
    ip_addr: str
    prefix: int
    hostname: str | None
    client_id: str | None


class InterfaceAddressSource(enum.IntEnum):
    """Where :meth:`asvirt.Domain.interface_addresses` looks (libvirt's
    ``virDomainInterfaceAddressesSource``)."""

    #: The DHCP leases of the networks the domain's interfaces are plugged into.
    LEASE = 0
    AGENT = 1
    ARP = 2


class ShutdownMode(enum.IntFlag):
    """How :meth:`asvirt.Domain.shutdown` asks the guest (libvirt's
    ``virDomainShutdownFlagValues``). ``DEFAULT``: through the guest agent when the domain has
    one and it is connected, else (or if the agent fails) the ACPI power button."""

    DEFAULT = 0
    ACPI = 1
    AGENT = 2


@record
class InterfaceAddress:
    type: IPAddrType
    addr: str
    prefix: int


@record
class DomainInterface:
    """A guest interface and its addresses (libvirt's ``virDomainInterface``)."""

    name: str
    hwaddr: str
    addrs: tuple[InterfaceAddress, ...]


class HostnameSource(enum.IntEnum):
    """Where :meth:`asvirt.Domain.hostname` looks (libvirt's ``virDomainGetHostnameFlags``)."""

    #: The driver's choice: the agent, as libvirt's QEMU driver.
    DEFAULT = 0
    #: The host name the guest gave the DHCP server of a network its interfaces are on.
    LEASE = 1
    #: The guest agent (``guest-get-host-name``): libvirt's QEMU driver's default.
    AGENT = 2


class NodeSuspendTarget(enum.IntEnum):
    """How :meth:`asvirt.Domain.pm_suspend_for_duration` suspends the guest (libvirt's
    ``virNodeSuspendTarget``)."""

    #: Suspend to RAM (S3).
    MEM = 0
    #: Suspend to disk (S4, hibernation).
    DISK = 1
    #: Both: to disk, then to RAM.
    HYBRID = 2


class GuestInfoTypes(enum.IntFlag):
    """What :meth:`asvirt.Domain.guest_info` asks the guest agent for (libvirt's
    ``virDomainGuestInfoTypes``); none: everything the agent can tell."""

    USERS = 1 << 0
    OS = 1 << 1
    TIMEZONE = 1 << 2
    HOSTNAME = 1 << 3
    FILESYSTEM = 1 << 4
    DISKS = 1 << 5
    INTERFACES = 1 << 6
    LOAD = 1 << 7


@record
class DomainFSInfo:
    """A filesystem the guest has mounted, as its agent reports it (libvirt's
    ``virDomainFSInfo``): ``name`` is the guest's device (``vda1``), ``dev_aliases`` the
    targets (``vda``) of the domain's disks it lies on."""

    mountpoint: str
    name: str
    fstype: str
    dev_aliases: tuple[str, ...]


@record
class StoragePoolRef:
    name: str
    uuid: str


@record
class StorageVolRef:
    pool: str
    name: str
    key: str
    path: str


@record
class SecretRef:
    """How a driver names a secret: its UUID, and what it is used for (``usage_id``: a
    volume's path, a Ceph or TLS name, an iSCSI target; "" for ``NONE``)."""

    uuid: str
    usage_type: SecretUsageType
    usage_id: str

    @property
    def name(self) -> str:
        """A secret has no name: its UUID stands in (handles and events show it)."""
        return self.uuid


@record
class StoragePoolInfo:
    """libvirt's ``virStoragePoolInfo`` (state: 0 inactive, 2 running; sizes in bytes)."""

    state: int
    capacity: int
    allocation: int
    available: int


@record
class StorageVolInfo:
    """libvirt's ``virStorageVolInfo`` (type: 0 file; sizes in bytes)."""

    type: int
    capacity: int
    allocation: int


@record
class StorageVolSource:
    """Where a domain disk ``<source pool= volume=>`` is, resolved at start."""

    path: str
    #: The disk type it becomes: ``file`` or ``block``.
    type: str
    #: The volume's format (``raw``, ``qcow2``), for a disk that names none.
    format: str


#: Told how far a long storage operation has come: a fraction from 0.0 to 1.0. Called in the
#: task doing the work, so it must not block.
ProgressCallback = Callable[[float], object]

#: The MIME type of a domain's screenshot (QEMU's ``screendump``: a binary PPM), as libvirt
#: names it.
SCREENSHOT_MIME = "image/x-portable-pixmap"

#: The most bytes one volume upload or download call carries (a daemon's messages stay small).
MAX_TRANSFER = 1024 * 1024


#: The driver interfaces (typing Protocols) live in :mod:`.interfaces`, loaded when first
#: named here: a one-shot client imports these records, not typing.
_INTERFACES = ("ClientDriver", "DriverOpener", "NetworkDriver", "SecretDriver", "StorageDriver")


def __getattr__(name: str) -> Any:
    if name not in _INTERFACES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import interfaces

    return getattr(interfaces, name)


__all__ = [
    "MAX_TRANSFER",
    "SCREENSHOT_MIME",
    "BlockInfo",
    "ClientDriver",
    "DomainFSInfo",
    "DomainInfo",
    "DomainInterface",
    "DomainRef",
    "DomainSnapshotInfo",
    "DomainStats",
    "DriverOpener",
    "GuestInfoTypes",
    "HostnameSource",
    "HypervisorVersion",
    "IPAddrType",
    "InterfaceAddress",
    "InterfaceAddressSource",
    "InterfaceStats",
    "NetworkDHCPLease",
    "NetworkDriver",
    "NetworkRef",
    "NodeInfo",
    "NodeSuspendTarget",
    "ProgressCallback",
    "SecretDriver",
    "SecretRef",
    "SecretUsageType",
    "SecurityLabel",
    "SecurityModel",
    "ShutdownMode",
    "StatsGroup",
    "StorageDriver",
    "StoragePoolInfo",
    "StoragePoolRef",
    "StorageVolInfo",
    "StorageVolRef",
    "StorageVolSource",
]
