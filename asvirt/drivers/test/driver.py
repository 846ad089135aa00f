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

import socket
from dataclasses import dataclass

import trio
from lxml import etree

from ...conf.devices import Disk
from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.postparse import postparse_domain
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
from ...states import DomainState, ShutoffReason
from ..base import BlockInfo
from .guest import SimulatedVM
from .state import TestNode

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
    """What the shared domain calls need from the test driver: simulated QEMUs, no files."""

    __test__ = False  # not a pytest test class

    def __init__(self, node: TestNode) -> None:
        self._node = node

    def hostname(self) -> str:
        return socket.gethostname()

    async def capabilities_xml(self) -> str:
        return _CAPABILITIES_XML

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        await trio.lowlevel.checkpoint()
        parse_test_domain_xml(xml)
        raise OperationUnsupportedError("the test driver runs no QEMU: there is no command line")

    async def parse(self, xml: str) -> DomainDef:
        defn, _ = parse_test_domain_xml(xml)
        return defn

    async def save_config(self, defn: DomainDef) -> None:
        pass  # the node lives in memory

    async def delete_config(self, obj: DomainObj) -> None:
        pass

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
        return SimulatedVM(self._node.scheduler, callbacks, live_def, domain_id=domain_id)

    def domain_stopped(self, obj: DomainObj, reason: ShutoffReason) -> None:
        pass

    def block_info(self, disk: Disk) -> BlockInfo:
        # libvirt's test driver's figures: a 1 TiB image, whatever the disk.
        return BlockInfo(capacity=1099506450432, allocation=1099511627776, physical=1099511627776)


def new_test_node(source: str, config: Config) -> TestNode:
    """An empty test node with the shared domain calls on the test backend."""
    node = TestNode(source, config)
    node.set_domain_driver(DomainDriver(node.table, node.bus, TestBackend(node)))
    return node


def add_initial_domain(node: TestNode, defn: DomainDef, extras: TestExtras) -> None:
    """Put a domain from a node description in place, in its initial state, silently."""
    if extras.transient and extras.runstate is DomainState.SHUTOFF:
        raise XMLError(f"transient domain '{defn.name}' cannot be shut off")
    node.table.existing_for(defn)
    obj = DomainObj(defn.name, defn.uuid, None if extras.transient else defn)
    node.table.add(obj)
    if extras.runstate is not DomainState.SHUTOFF:
        vm = SimulatedVM(
            node.scheduler,
            node.domains.callbacks_for(obj),
            defn.copy(),
            domain_id=node.table.allocate_id(),
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
