"""The test hypervisor driver: domains in memory, with the QEMU driver's semantics.

Every call behaves as the QEMU driver's does: the same calls are no-ops (suspending a paused
domain), the same ones raise :class:`~asvirt.OperationInvalidError` (suspending a shut-off
one), and the same events come in the same order (see :mod:`.guest` for how). Domain XML is
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
from typing import Any

import trio
from lxml import etree

from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.names import canonical_uuid
from ...conf.postparse import postparse_domain
from ...conf.xmlsafe import parse_xml
from ...errors import (
    DomainExistsError,
    InvalidArgError,
    NoDomainError,
    OperationInvalidError,
    OperationUnsupportedError,
    XMLError,
)
from ...events import DefinedDetail, EventKind, LifecycleEvent, UndefinedDetail
from ...states import DomainState, PausedReason, ShutoffReason, StateReason
from .. import rules
from ..base import DomainInfo, DomainRef
from .guest import SimulatedVM
from .state import Attachment, NodeState

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


class TestDomain:
    """The test driver's record of one domain."""

    __test__ = False  # not a pytest test class
    __slots__ = ("name", "persistent_def", "ref", "shutoff_reason", "uuid", "vm")

    def __init__(self, name: str, uuid: str, persistent_def: DomainDef | None) -> None:
        self.name = name
        self.uuid = uuid
        self.ref = DomainRef(name, uuid)
        #: The configuration for the next boot; None for a transient domain.
        self.persistent_def = persistent_def
        #: The simulated QEMU while active; None while shut off.
        self.vm: SimulatedVM | None = None
        self.shutoff_reason: ShutoffReason = ShutoffReason.UNKNOWN

    @property
    def active(self) -> bool:
        return self.vm is not None

    def state(self) -> tuple[DomainState, StateReason]:
        if self.vm is not None:
            return self.vm.state
        return DomainState.SHUTOFF, self.shutoff_reason


def add_initial_domain(node: NodeState, defn: DomainDef, extras: TestExtras) -> None:
    """Put a domain from a node description in place, in its initial state, silently."""
    if extras.transient and extras.runstate is DomainState.SHUTOFF:
        raise XMLError(f"transient domain '{defn.name}' cannot be shut off")
    check_conflicts(node, defn)
    dom = TestDomain(defn.name, defn.uuid, None if extras.transient else defn)
    node.add_domain(dom)
    if extras.runstate is not DomainState.SHUTOFF:
        new_vm(node, dom, defn.copy(), autodestroy_owner=None).adopt_running(extras.runstate)


def check_conflicts(node: NodeState, defn: DomainDef) -> TestDomain | None:
    """The existing domain ``defn`` redefines, or None; DomainExistsError on a clash."""
    by_uuid = node.domains.get(defn.uuid)
    rules.check_define_clash(
        defn.name,
        defn.uuid,
        name_of_uuid=by_uuid.name if by_uuid is not None else None,
        uuid_of_name=node.domain_names.get(defn.name),
    )
    return by_uuid


def new_vm(
    node: NodeState, dom: TestDomain, live_def: DomainDef, *, autodestroy_owner: object | None
) -> SimulatedVM:
    """A simulated QEMU for ``dom`` (not yet booted), with the next domain id."""

    def exited(vm: SimulatedVM, reason: ShutoffReason) -> None:
        if dom.vm is vm:
            dom.vm = None
        dom.shutoff_reason = reason
        if dom.persistent_def is None and dom.vm is None:
            node.remove_domain(dom)  # transient domains vanish when they stop

    vm = SimulatedVM(
        node,
        name=dom.name,
        uuid=dom.uuid,
        live_def=live_def,
        domain_id=node.allocate_domain_id(),
        autodestroy_owner=autodestroy_owner,
        on_exit=exited,
    )
    dom.vm = vm
    return vm


class TestDriver:
    """The test hypervisor driver of one connection (the node may be shared)."""

    __test__ = False  # not a pytest test class

    def __init__(self, node: NodeState, attachment: Attachment) -> None:
        self.node = node
        self.attachment = attachment

    async def close(self) -> None:
        """Destroy the domains this connection started with autodestroy.

        It never waits, so it completes even in a cancelled scope.
        """
        for dom in list(self.node.domains.values()):
            vm = dom.vm
            if vm is not None and vm.autodestroy_owner is self.attachment:
                vm.destroy()

    # -- helpers --------------------------------------------------------------------------------

    def _dom(self, uuid: str) -> TestDomain:
        dom = self.node.domains.get(uuid)
        if dom is None:
            raise NoDomainError(f"no domain with matching uuid '{uuid}'")
        return dom

    def _vm(self, dom: TestDomain) -> SimulatedVM:
        if dom.vm is None:
            raise OperationInvalidError(f"domain '{dom.name}' is not running")
        return dom.vm

    def _publish_lifecycle(self, dom: TestDomain, type_: LifecycleEvent, detail: Any) -> None:
        self.node.publish(
            domain=dom.name, uuid=dom.uuid, kind=EventKind.LIFECYCLE, type=type_, detail=detail
        )

    def _launch(
        self, dom: TestDomain, live_def: DomainDef, *, paused: bool, autodestroy: bool
    ) -> None:
        owner = self.attachment if autodestroy else None
        new_vm(self.node, dom, live_def, autodestroy_owner=owner).boot(paused=paused)

    # -- connection-level calls -----------------------------------------------------------------

    def hostname(self) -> str:
        return socket.gethostname()

    async def capabilities_xml(self) -> str:
        return _CAPABILITIES_XML

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        await trio.lowlevel.checkpoint()
        if native_format != "qemu-argv":
            raise InvalidArgError(f"unsupported native format '{native_format}' (use qemu-argv)")
        parse_test_domain_xml(xml)
        raise OperationUnsupportedError("the test driver runs no QEMU: there is no command line")

    async def domain_xml_normalize(self, xml: str) -> str:
        await trio.lowlevel.checkpoint()
        defn, _ = parse_test_domain_xml(xml)
        return defn.to_xml()

    async def define_xml(self, xml: str) -> DomainRef:
        await trio.lowlevel.checkpoint()
        defn, _ = parse_test_domain_xml(xml)
        dom = check_conflicts(self.node, defn)
        if dom is None:
            dom = TestDomain(defn.name, defn.uuid, defn)
            self.node.add_domain(dom)
            detail = DefinedDetail.ADDED
        else:
            detail = (
                DefinedDetail.UPDATED if dom.persistent_def is not None else DefinedDetail.ADDED
            )
            dom.persistent_def = defn
        self._publish_lifecycle(dom, LifecycleEvent.DEFINED, detail)
        return dom.ref

    async def create_xml(self, xml: str, *, paused: bool, autodestroy: bool) -> DomainRef:
        await trio.lowlevel.checkpoint()
        defn, _ = parse_test_domain_xml(xml)
        dom = check_conflicts(self.node, defn)
        if dom is not None and dom.active:
            raise DomainExistsError(f"domain '{defn.name}' is already running")
        if dom is None:
            dom = TestDomain(defn.name, defn.uuid, None)
            self.node.add_domain(dom)
        self._launch(dom, defn, paused=paused, autodestroy=autodestroy)
        return dom.ref

    async def lookup_by_name(self, name: str) -> DomainRef:
        uuid = self.node.domain_names.get(name) if isinstance(name, str) else None
        if uuid is None:
            raise NoDomainError(f"no domain with matching name '{name}'")
        return self.node.domains[uuid].ref

    async def lookup_by_uuid(self, uuid: str) -> DomainRef:
        return self._dom(canonical_uuid(uuid)).ref

    async def list_all_domains(
        self, *, active: bool | None, persistent: bool | None
    ) -> list[DomainRef]:
        return [
            dom.ref
            for dom in sorted(self.node.domains.values(), key=lambda d: d.name)
            if (active is None or dom.active == active)
            and (persistent is None or (dom.persistent_def is not None) == persistent)
        ]

    # -- domain lifecycle -----------------------------------------------------------------------

    async def domain_start(self, uuid: str, *, paused: bool, autodestroy: bool) -> None:
        await trio.lowlevel.checkpoint()
        dom = self._dom(uuid)
        if dom.active:
            raise OperationInvalidError(f"domain '{dom.name}' is already running")
        assert dom.persistent_def is not None  # inactive transient domains do not exist
        self._launch(dom, dom.persistent_def.copy(), paused=paused, autodestroy=autodestroy)

    async def domain_suspend(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        vm = self._vm(self._dom(uuid))
        if rules.needs_suspend(vm.name, vm.machine.state):
            vm.machine.pause_hint = PausedReason.USER
            vm.qmp_stop()

    async def domain_resume(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        vm = self._vm(self._dom(uuid))
        if rules.needs_resume(vm.name, vm.machine.state):
            vm.qmp_cont()

    async def domain_shutdown(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        vm = self._vm(self._dom(uuid))
        rules.require_state(vm.name, vm.machine.state, *rules.SHUTDOWN_STATES)
        vm.qmp_system_powerdown()

    async def domain_reboot(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        vm = self._vm(self._dom(uuid))
        rules.require_state(vm.name, vm.machine.state, *rules.REBOOT_STATES)
        vm.machine.fake_reboot = True
        vm.qmp_system_powerdown()

    async def domain_reset(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        self._vm(self._dom(uuid)).qmp_system_reset()

    async def domain_destroy(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        self._vm(self._dom(uuid)).destroy()

    async def domain_undefine(self, uuid: str) -> None:
        await trio.lowlevel.checkpoint()
        dom = self._dom(uuid)
        if dom.persistent_def is None:
            raise OperationInvalidError(f"cannot undefine transient domain '{dom.name}'")
        dom.persistent_def = None
        if dom.vm is None:
            self.node.remove_domain(dom)
        self._publish_lifecycle(dom, LifecycleEvent.UNDEFINED, UndefinedDetail.REMOVED)

    # -- inspection -----------------------------------------------------------------------------

    async def domain_state(self, uuid: str) -> tuple[DomainState, StateReason]:
        return self._dom(uuid).state()

    async def domain_info(self, uuid: str) -> DomainInfo:
        dom = self._dom(uuid)
        vm = dom.vm
        if vm is not None:
            d = vm.live_def
            state, memory, cpu = vm.machine.state, vm.memory_kib(), vm.cpu_time_ns()
        else:
            assert dom.persistent_def is not None
            d = dom.persistent_def
            state, memory, cpu = DomainState.SHUTOFF, d.current_memory_kib, 0
        return DomainInfo(
            state=state,
            max_memory_kib=d.memory_kib,
            memory_kib=memory,
            vcpus=d.vcpus,
            cpu_time_ns=cpu,
        )

    async def domain_xml_desc(self, uuid: str, *, inactive: bool) -> str:
        dom = self._dom(uuid)
        if dom.vm is not None and not (inactive and dom.persistent_def is not None):
            return dom.vm.live_def.to_xml(live=True, domain_id=dom.vm.domain_id)
        assert dom.persistent_def is not None
        return dom.persistent_def.to_xml()

    async def domain_qmp(self, uuid: str, command: str, arguments: dict[str, Any] | None) -> Any:
        await trio.lowlevel.checkpoint()
        if not isinstance(command, str) or not command:
            raise InvalidArgError("the QMP command must be a non-empty string")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidArgError("QMP arguments must be a dict")
        return self._vm(self._dom(uuid)).execute(command, arguments)

    async def domain_is_active(self, uuid: str) -> bool:
        return self._dom(uuid).active

    async def domain_is_persistent(self, uuid: str) -> bool:
        return self._dom(uuid).persistent_def is not None

    async def domain_id(self, uuid: str) -> int | None:
        vm = self._dom(uuid).vm
        return vm.domain_id if vm is not None else None

    # -- the simulated guest ----------------------------------------------------------------------

    async def guest_action(self, uuid: str, action: str) -> None:
        """Make the guest of a running domain panic, power off or reboot, now."""
        await trio.lowlevel.checkpoint()
        vm = self._vm(self._dom(uuid))
        if action == "panic":
            vm.guest_panic()
        elif action == "poweroff":
            vm.guest_poweroff()
        elif action == "reboot":
            vm.guest_reboot()
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
    "TestDomain",
    "TestDriver",
    "TestExtras",
    "add_initial_domain",
    "check_conflicts",
    "new_vm",
    "parse_test_domain_xml",
]
