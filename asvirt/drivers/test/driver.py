"""The test hypervisor driver: domains in memory, with the QEMU driver's semantics.

Every call behaves as the QEMU driver's does, because it *is* the same code: the shared
:class:`~asvirt.hypervisor.domain_driver.DomainDriver` on the node's domain table, with a
backend whose guests are simulated QEMUs (see :mod:`.guest`). The same calls are no-ops
(suspending a paused domain), the same ones raise :class:`~asvirt.OperationInvalidError`
(suspending a shut-off one), and the same events come in the same order. Domain XML is
read by the same parser, :func:`asvirt.conf.domain.parse_domain_xml`, so both drivers accept
and reject the same documents; the test driver also accepts libvirt's test-driver dialect:
``<domain type='test'>`` and the ``http://libvirt.org/schemas/domain/test`` elements
``<test:runstate>`` and ``<test:transient/>`` (honoured in node files, ignored elsewhere).

Calls that change something are a trio checkpoint *before* they act, then act atomically:
when one returns, its own events have been published, and a guest's reaction to it (to a
power button press, say) comes at the caller's next schedule point, as it would come later
from a real guest. Calls that only read (lookups, ``state()``, ``info()``, ``xml_desc()``...)
never wait, as on the QEMU driver: ``state()`` right after ``shutdown()`` is still RUNNING.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio
from lxml import etree

from ...conf.devices import Disk, HotplugDevice
from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.postparse import postparse_domain
from ...conf.snapshot import SnapshotDef
from ...conf.xmlsafe import parse_xml
from ...config import Config
from ...errors import (
    InvalidArgError,
    OperationInvalidError,
    OperationUnsupportedError,
    XMLError,
)
from ...hypervisor.domain_driver import DomainDriver, RuntimeCallbacks
from ...hypervisor.domains import DomainObj
from ...hypervisor.guest_state import ExternalTarget, SnapshotTarget
from ...hypervisor.saveimage import ImageSink
from ...hypervisor.snapshots import DiskOp
from ...states import DomainState, ShutoffReason
from ..base import BlockInfo, HypervisorVersion, NodeInfo, SecurityLabel, SecurityModel
from .guest import SimulatedVM, with_device
from .state import TestNode

#: The host libvirt's test driver describes (``defaultNodeInfo`` in its test_driver.c): an
#: i686 with 16 CPUs at 1400 MHz in 2 NUMA cells, and 3 GiB.
TEST_NODE_INFO = NodeInfo(
    model="i686",
    memory_kib=3 * 1024 * 1024,
    cpus=16,
    mhz=1400,
    nodes=2,
    sockets=2,
    cores=2,
    threads=2,
)

#: The namespace of libvirt's test-driver extensions to domain XML.
TEST_NS = "http://libvirt.org/schemas/domain/test"


@dataclass(frozen=True, slots=True)
class TestExtras:
    """What libvirt's test-driver namespace said about a domain (node files only)."""

    __test__ = False  # not a pytest test class

    #: The state the node starts the domain in (RUNNING by default, as in libvirt).
    runstate: DomainState = DomainState.RUNNING
    transient: bool = False


def parse_test_domain_xml(text: str | bytes) -> tuple[DomainDef, TestExtras]:
    """Parse domain XML with the shared parser, accepting libvirt's test-driver dialect."""
    root = parse_xml(text)
    if root.tag != "domain":
        return parse_domain_xml(text), TestExtras()  # the shared parser words the error
    changed = False
    runstate = DomainState.RUNNING
    transient = False
    for el in list(root):
        if not isinstance(el.tag, str) or etree.QName(el).namespace != TEST_NS:
            continue
        local = etree.QName(el).localname
        if local == "runstate":
            try:
                runstate = DomainState(int((el.text or "").strip()))
            except ValueError:
                raise XMLError(f"invalid <test:runstate> '{el.text}'") from None
            if runstate not in (DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF):
                raise XMLError(
                    f"<test:runstate> {int(runstate)} is not supported "
                    "(1 running, 3 paused, 5 shut off)"
                )
        elif local == "transient":
            transient = True
        else:
            raise XMLError(f"unsupported test driver element <test:{local}>")
        root.remove(el)
        changed = True
    domain_type = root.get("type")
    if domain_type == "test":
        root.set("type", "qemu")
        changed = True
    if changed:
        etree.cleanup_namespaces(root)
        defn = parse_domain_xml(etree.tostring(root))
    else:
        defn = parse_domain_xml(text)
    if domain_type == "test":
        defn.domain_type = "test"
    return postparse_domain(defn), TestExtras(runstate=runstate, transient=transient)


class TestBackend:
    """What the shared domain calls need from the test driver: simulated QEMUs, no files.

    Snapshots and managed save images live in memory, as in libvirt's test driver: a
    snapshot's simulated guest state by domain and name, a managed save image in an
    anonymous in-memory file (``memfd``). A save to a path writes a real image file, whose
    state stream is the simulated guest's state.
    """

    __test__ = False  # not a pytest test class

    image_driver = "test"
    #: Its disks are never read: one whose XML names no format is taken for a qcow2 image,
    #: so that the default domain can have snapshots, as in libvirt's test driver.
    unnamed_disk_format: str | None = "qcow2"

    def __init__(self, node: TestNode) -> None:
        self._node = node
        #: Simulated guests' state kept by snapshots: by domain UUID, then snapshot name.
        self.guest_snapshots: dict[str, dict[str, dict[str, object]]] = {}
        #: Managed save images, by domain UUID: descriptors of in-memory files.
        self._managed: dict[str, int] = {}

    #: libvirt's test driver's security driver and the label it reports for every domain.
    security_model = SecurityModel("testSecurity", "")
    security_label = SecurityLabel("libvirt-test", True)

    def hostname(self) -> str:
        return socket.gethostname()

    async def capabilities_xml(self) -> str:
        return _CAPABILITIES_XML

    async def node_info(self) -> NodeInfo:
        return TEST_NODE_INFO

    def host_cpus(self) -> int:
        return TEST_NODE_INFO.cpus

    async def hypervisor_version(self) -> HypervisorVersion:
        # libvirt's test driver: virConnectGetType "TEST", virConnectGetVersion 2 (0.0.2)
        return HypervisorVersion("TEST", "0.0.2")

    def os_type(self, defn: DomainDef) -> str:
        return "linux"  # what libvirt's test driver says of every domain

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        await trio.lowlevel.checkpoint()
        parse_test_domain_xml(xml)
        raise OperationUnsupportedError("the test driver runs no QEMU: there is no command line")

    async def parse(self, xml: str) -> DomainDef:
        defn, _ = parse_test_domain_xml(xml)
        return defn

    async def with_device(self, defn: DomainDef, dev: HotplugDevice) -> DomainDef:
        await trio.lowlevel.checkpoint()
        return with_device(defn, dev)

    async def save_config(self, defn: DomainDef) -> None:
        pass  # the node lives in memory

    async def delete_config(self, obj: DomainObj) -> None:
        pass

    async def rename_config(self, obj: DomainObj, defn: DomainDef) -> None:
        pass  # the node lives in memory

    async def save_autostart(self, obj: DomainObj, autostart: bool) -> None:
        pass  # kept on the domain object: the node lives in memory

    def check_undefine(self, obj: DomainObj, *, nvram: bool) -> None:
        pass  # no files: nothing is left behind

    async def remove_state(self, obj: DomainObj, *, nvram: bool, keep_tpm: bool) -> None:
        pass

    def create_runtime(
        self,
        obj: DomainObj,
        live_def: DomainDef,
        *,
        domain_id: int,
        autodestroy: bool,
        callbacks: RuntimeCallbacks,
    ) -> SimulatedVM:
        return SimulatedVM(
            self._node.scheduler,
            callbacks,
            live_def,
            domain_id=domain_id,
            snapshots=self.guest_snapshots.setdefault(obj.uuid, {}),
        )

    def domain_stopped(self, obj: DomainObj, reason: ShutoffReason) -> None:
        pass

    def block_info(self, disk: Disk) -> BlockInfo:
        # libvirt's test driver's figures: a 1 TiB image, whatever the disk.
        return BlockInfo(capacity=1099506450432, allocation=1099511627776, physical=1099511627776)

    async def snapshot_disks(self, op: DiskOp, name: str, disks: Sequence[SnapshotTarget]) -> None:
        await trio.lowlevel.checkpoint()  # no disks: the metadata is all there is

    async def make_overlays(self, disks: Sequence[ExternalTarget]) -> None:
        await trio.lowlevel.checkpoint()
        raise OperationUnsupportedError(
            "the test driver does not simulate disk images: no external snapshots "
            "(QEMU domains only)"
        )

    async def save_snapshot(self, obj: DomainObj, snap: SnapshotDef, *, current: bool) -> None:
        await trio.lowlevel.checkpoint()  # the tree on the domain is all there is

    async def delete_snapshots(self, obj: DomainObj, names: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        kept = self.guest_snapshots.get(obj.uuid, {})
        for name in names:
            kept.pop(name, None)

    def managed_save_sink(self, obj: DomainObj) -> ImageSink:
        return _MemorySink(self._managed, obj.uuid)

    def managed_save_open(self, obj: DomainObj) -> int:
        fd = self._managed.get(obj.uuid)
        if fd is None:
            raise OperationInvalidError(f"domain '{obj.name}' has no managed save image")
        return os.dup(fd)

    def managed_save_remove(self, obj: DomainObj) -> None:
        fd = self._managed.pop(obj.uuid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """The node is going: its in-memory images go with it."""
        for fd in self._managed.values():
            os.close(fd)
        self._managed.clear()


class _MemorySink:
    """A managed save image written to an in-memory file, kept by UUID once committed."""

    def __init__(self, images: dict[str, int], uuid: str) -> None:
        self._images = images
        self._uuid = uuid
        self._fd: int | None = os.memfd_create(f"asvirt-save-{uuid}", os.MFD_CLOEXEC)

    @property
    def fd(self) -> int:
        assert self._fd is not None
        return self._fd

    def commit(self) -> None:
        old = self._images.pop(self._uuid, None)
        if old is not None:
            os.close(old)
        assert self._fd is not None
        self._images[self._uuid] = self._fd
        self._fd = None

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def new_test_node(source: str, config: Config) -> TestNode:
    """An empty test node with the shared domain calls on the test backend."""
    node = TestNode(source, config)
    backend = TestBackend(node)
    node.set_domain_driver(DomainDriver(node.table, node.bus, backend))
    node.on_shutdown.append(backend.close)
    return node


def add_initial_domain(node: TestNode, defn: DomainDef, extras: TestExtras) -> None:
    """Put a domain from a node description in place, in its initial state, silently."""
    if extras.transient and extras.runstate is DomainState.SHUTOFF:
        raise XMLError(f"transient domain '{defn.name}' cannot be shut off")
    node.table.existing_for(defn)
    obj = DomainObj(defn.name, defn.uuid, None if extras.transient else defn)
    node.table.add(obj)
    if extras.runstate is not DomainState.SHUTOFF:
        backend = node.domains.backend
        assert isinstance(backend, TestBackend)
        vm = SimulatedVM(
            node.scheduler,
            node.domains.callbacks_for(obj),
            defn.copy(),
            domain_id=node.table.allocate_id(),
            snapshots=backend.guest_snapshots.setdefault(obj.uuid, {}),
        )
        obj.runtime = vm
        vm.adopt_running(extras.runstate)


async def guest_action(node: TestNode, uuid: str, action: str) -> None:
    """Make the guest of a running domain panic, power off or reboot, now."""
    await trio.lowlevel.checkpoint()
    runtime = node.table.get(uuid).runtime
    if not isinstance(runtime, SimulatedVM):
        raise OperationInvalidError(f"domain '{node.table.get(uuid).name}' is not running")
    if action == "panic":
        runtime.guest_panic()
    elif action == "poweroff":
        runtime.guest_poweroff()
    elif action == "reboot":
        runtime.guest_reboot()
    else:
        raise InvalidArgError(f"unknown guest action '{action}'")


_CAPABILITIES_XML = """<capabilities>
  <host>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <cpu>
      <arch>x86_64</arch>
    </cpu>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <domain type='test'/>
      <domain type='qemu'/>
      <domain type='kvm'/>
    </arch>
  </guest>
</capabilities>
"""

__all__ = [
    "TestBackend",
    "TestExtras",
    "add_initial_domain",
    "guest_action",
    "new_test_node",
    "parse_test_domain_xml",
]
