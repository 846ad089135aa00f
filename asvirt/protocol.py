"""The driver API, declared once: every call a client can make of a node.

Each call is declared here, as a method of a ``Protocol`` class with its arguments, its result
type and a :func:`call` annotation saying whether it *mutates*, its *priority* (``HIGH``: never
waits behind a slow call to a hung QEMU) and whether the driver needs to know the calling
*client* (autodestroy). libvirt's ``remote_protocol.x`` and its ``@generate``, ``@priority``,
``@acl`` annotations are the model.

Everything else is derived from this declaration, never written twice:

* :data:`CALLS`, the table of :class:`Call` descriptions, by name;
* the in-process dispatch (:func:`invoke`): a call goes to the node's driver method of the same
  name — the node's drivers implement these classes (mypy checks it);
* the daemon's dispatch and the read-only filter (only calls with ``mutates=False``), and the
  remote client's stubs, both through :func:`encode_result`/:func:`decode_result` and the
  argument checks of :func:`decode_params`;
* ``docs/protocol.md``'s method list (``python -m asvirt.protocol`` prints it).

Handles (:class:`asvirt.Domain`...) call ``conn._call("domain_start", uuid=..., ...)``; the
connection sends that to whichever driver it has: the node in this process, or a daemon.
"""

# No "from __future__ import annotations" here: the declarations' annotations are read as
# objects at import, without evaluating strings (a one-shot client imports this module).
import enum
import functools
import typing
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from .conf.metadata_type import MetadataType
from .drivers.base import (
    BlockInfo,
    BlockJobInfo,
    DomainFSInfo,
    DomainInfo,
    DomainInterface,
    DomainRef,
    DomainSnapshotInfo,
    DomainStats,
    GuestInfoTypes,
    HostnameSource,
    HypervisorVersion,
    InterfaceAddressSource,
    InterfaceStats,
    IOThreadInfo,
    NetworkDHCPLease,
    NetworkRef,
    NodeInfo,
    NodeSuspendTarget,
    SecretRef,
    SecretUsageType,
    SecurityLabel,
    SecurityModel,
    ShutdownMode,
    StatsGroup,
    StoragePoolInfo,
    StoragePoolRef,
    StorageVolInfo,
    StorageVolRef,
    VcpuInfo,
)
from .errors import InvalidArgError
from .records import fields, is_record
from .rpc import values
from .rpc.values import encode as _encode
from .states import DomainState, StateReason


class Priority(enum.Enum):
    #: Answered at once, whatever else runs: lookups, lists, state, info, destroy.
    HIGH = "high"
    #: May wait for a worker when a client has many calls in flight.
    NORMAL = "normal"


class Target(enum.Enum):
    """Which of a node's drivers serves a call."""

    DOMAINS = "domains"
    NETWORK = "network"
    STORAGE = "storage"
    SECRET = "secret"


#: The result type of ``domain_state``: a state and the reason for it.
StateAndReason = tuple[DomainState, StateReason]


class Progress:
    """The type of a long call's progress argument.

    In this process it is a :data:`~asvirt.drivers.base.ProgressCallback` (or None), called
    with the fraction done. On the wire it is ``true`` when the client wants to be told: the
    daemon then sends ``{"method": "progress", "params": {"id": ID, "fraction": F}}``
    notifications for request ``ID`` before its response (:func:`encode_params` splits the
    callback off on the client's side).
    """


F = TypeVar("F", bound=Callable[..., Any])


class Call:
    """One call of the driver API, as declared.

    Its argument and result types are read from the declaration when first asked for: reading
    every call's type hints would cost a one-shot client, which makes a few calls, more than
    its requests do.
    """

    #: Argument names and their types, in declaration order.
    params: tuple[tuple[str, Any], ...]
    result: Any
    #: The argument that takes a progress callback (declared as :class:`Progress`), if any.
    progress: str | None
    #: Arguments a request may leave out, with the value they take then: those declared with
    #: a default, so that an argument added to a call does not break older clients.
    defaults: Mapping[str, Any]

    def __init__(
        self,
        name: str,
        target: Target,
        declaration: Callable[..., Any],
        *,
        mutates: bool,
        priority: Priority,
        client: bool,
        secure: bool = False,
        secure_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.target = target
        self.mutates = mutates
        #: It answers what only a read-write client may see (a secret's value), though it
        #: changes nothing (libvirt's ``read_secure`` ACL).
        self.secure = secure
        #: Arguments that, given a true value, make the call answer what only a read-write
        #: client may see (``domain_xml_desc``'s ``secure``: the display passwords): a
        #: read-only client may make the call, but not with them.
        self.secure_args = secure_args
        self.priority = priority
        #: The driver method also receives ``client=``: who called (autodestroy ownership).
        self.client = client
        self.doc = (declaration.__doc__ or "").strip()
        self._declaration = declaration

    def __getattr__(self, attr: str) -> Any:
        # Only while an attribute is missing: the types, read once, become plain attributes.
        if attr not in ("params", "result", "progress", "defaults"):
            raise AttributeError(f"'Call' object has no attribute '{attr}'")
        # Read from the function itself (inspect.signature would import inspect, ast, dis...
        # for a one-shot client): the declarations take positional arguments only, and their
        # annotations are objects already (this module does not stringify them).
        fn = self._declaration
        code = fn.__code__
        names = code.co_varnames[1 : code.co_argcount]  # without self
        hints = fn.__annotations__
        params = tuple((p, hints[p]) for p in names)
        defaults = fn.__defaults__ or ()
        self.params = params
        self.result = hints.get("return")
        self.progress = next((p for p, t in params if t is Progress), None)
        self.defaults = dict(zip(names[len(names) - len(defaults) :], defaults, strict=True))
        return getattr(self, attr)

    def __repr__(self) -> str:
        return f"<Call {self.name} ({self.target.value}, mutates={self.mutates})>"

    @property
    def read_only_ok(self) -> bool:
        """Whether a read-only connection may make this call (see also :meth:`secure_given`)."""
        return not self.mutates and not self.secure

    def secure_given(self, args: Mapping[str, Any]) -> str | None:
        """The first of ``secure_args`` given a true value in ``args`` (decoded), if any."""
        return next((a for a in self.secure_args if args.get(a)), None)


def call(
    *,
    mutates: bool,
    priority: Priority = Priority.NORMAL,
    client: bool = False,
    secure: bool = False,
    secure_args: tuple[str, ...] = (),
) -> Any:
    """Annotate a declared call (see the module docstring); ``secure``: refused to read-only
    clients though it changes nothing; ``secure_args``: refused to them only when one of
    these arguments is true."""

    def annotate(fn: F) -> F:
        fn.__asvirt_call__ = (  # type: ignore[attr-defined]
            mutates,
            priority,
            client,
            secure,
            secure_args,
        )
        return fn

    return annotate


HIGH = Priority.HIGH


class DomainCalls(Protocol):
    """Calls served by a node's domain driver (every hypervisor's: the shared core)."""

    @call(mutates=False, priority=HIGH)
    def hostname(self) -> str:
        """The node's host name."""
        ...

    @call(mutates=False)
    async def capabilities_xml(self) -> str:
        """The host and guest capabilities as libvirt's capabilities XML."""
        ...

    @call(mutates=False, priority=HIGH)
    async def node_info(self) -> NodeInfo:
        """The host's CPUs and memory (libvirt's ``virNodeGetInfo``)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def hypervisor_version(self) -> HypervisorVersion:
        """The hypervisor's name and version (``virConnectGetType``, ``virConnectGetVersion``)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def node_security_model(self) -> SecurityModel:
        """The node's primary security driver (``virNodeGetSecurityModel``)."""
        ...

    @call(mutates=False)
    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        """What the driver would run for ``xml`` (``qemu-argv``: the QEMU command line)."""
        ...

    @call(mutates=False)
    async def domain_xml_normalize(self, xml: str) -> str:
        """The XML ``define_xml(xml)`` would store, without defining anything."""
        ...

    @call(mutates=True)
    async def define_xml(self, xml: str) -> DomainRef:
        """Define (or redefine) a persistent domain."""
        ...

    @call(mutates=True, client=True)
    async def create_xml(self, xml: str, paused: bool, autodestroy: bool) -> DomainRef:
        """Create and start a transient domain."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_by_name(self, name: str) -> DomainRef:
        """The domain called ``name``."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_by_uuid(self, uuid: str) -> DomainRef:
        """The domain with this UUID (any spelling libvirt accepts)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def list_all_domains(
        self, active: bool | None, persistent: bool | None
    ) -> list[DomainRef]:
        """Domains, optionally only (in)active or (non-)persistent ones, sorted by name."""
        ...

    @call(mutates=True, client=True)
    async def domain_start(
        self, uuid: str, paused: bool, autodestroy: bool, force_boot: bool = False
    ) -> None:
        """Start a defined, shut-off domain (from its managed save image, if it has one,
        unless ``force_boot``)."""
        ...

    @call(mutates=True)
    async def domain_suspend(self, uuid: str) -> None:
        """Pause the vCPUs."""
        ...

    @call(mutates=True)
    async def domain_resume(self, uuid: str) -> None:
        """Resume paused vCPUs."""
        ...

    @call(mutates=True)
    async def domain_shutdown(self, uuid: str, mode: ShutdownMode = ShutdownMode.DEFAULT) -> None:
        """Ask the guest to power off: through its agent, or the ACPI power button."""
        ...

    @call(mutates=True)
    async def domain_reboot(self, uuid: str) -> None:
        """Ask the guest to reboot (power button, then a reset)."""
        ...

    @call(mutates=True)
    async def domain_reset(self, uuid: str) -> None:
        """Reset the virtual hardware at once."""
        ...

    @call(mutates=True, priority=HIGH)
    async def domain_destroy(self, uuid: str) -> None:
        """Stop the domain at once (SIGTERM, then SIGKILL)."""
        ...

    @call(mutates=True)
    async def domain_undefine(
        self,
        uuid: str,
        nvram: bool = False,
        keep_tpm: bool = False,
        snapshots_metadata: bool = False,
        managed_save: bool = False,
    ) -> None:
        """Remove the persistent configuration (with ``nvram``: a UEFI domain's NVRAM file;
        unless ``keep_tpm``: an emulated TPM's state; ``snapshots_metadata`` and
        ``managed_save``: allow it for a domain with snapshots or a managed save image, and
        remove those too)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_state(self, uuid: str) -> StateAndReason:
        """The current state and the reason for it."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_info(self, uuid: str) -> DomainInfo:
        """State, memory, vCPUs and CPU time."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_os_type(self, uuid: str) -> str:
        """The guest's OS type as the driver names it (``virDomainGetOSType``: ``hvm``)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_security_label(self, uuid: str) -> SecurityLabel:
        """The domain's security label (``virDomainGetSecurityLabel``)."""
        ...

    @call(mutates=False, priority=HIGH, secure_args=("secure",))
    async def domain_xml_desc(self, uuid: str, inactive: bool, secure: bool = False) -> str:
        """The live XML while running, else (or with ``inactive``) the persistent one;
        ``secure``: with its secrets (display passwords, disk cookies; libvirt's
        ``VIR_DOMAIN_XML_SECURE``), refused to read-only clients."""
        ...

    @call(mutates=True)
    async def domain_qmp(self, uuid: str, command: str, arguments: dict[str, Any] | None) -> Any:
        """Run a QMP command (virsh qemu-monitor-command): it may change anything."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_is_active(self, uuid: str) -> bool:
        """Whether the domain runs (or is paused, ...)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_is_persistent(self, uuid: str) -> bool:
        """Whether the domain has a persistent configuration."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_id(self, uuid: str) -> int | None:
        """The runtime id of a running domain."""
        ...

    @call(mutates=True)
    async def domain_set_autostart(self, uuid: str, autostart: bool) -> None:
        """Start the domain whenever its node opens after the host booted (or not)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_get_autostart(self, uuid: str) -> bool:
        """Whether the domain starts with its node."""
        ...

    @call(mutates=False)
    async def domain_interface_addresses(
        self, uuid: str, source: InterfaceAddressSource
    ) -> list[DomainInterface]:
        """The addresses of a running domain's interfaces (virsh domifaddr)."""
        ...

    @call(mutates=False)
    async def get_all_domain_stats(
        self,
        stats: StatsGroup,
        uuids: list[str] | None,
        active: bool | None,
        persistent: bool | None,
    ) -> list[DomainStats]:
        """Statistics of many domains, libvirt's fields (all of them, or only ``uuids``'s)."""
        ...

    @call(mutates=False)
    async def domain_block_stats(self, uuid: str, device: str) -> dict[str, int]:
        """A running domain's disk counters ("": all disks summed)."""
        ...

    @call(mutates=False)
    async def domain_interface_stats(self, uuid: str, device: str) -> InterfaceStats:
        """A running domain's interface counters, from the guest's side."""
        ...

    @call(mutates=False)
    async def domain_memory_stats(self, uuid: str) -> dict[str, int]:
        """A running domain's memory statistics (the balloon's, QEMU's rss)."""
        ...

    @call(mutates=False)
    async def domain_block_info(self, uuid: str, device: str) -> BlockInfo:
        """The sizes of a disk's image: capacity, allocation, physical."""
        ...

    # -- block jobs --------------------------------------------------------------------------

    @call(mutates=True)
    async def domain_block_resize(
        self, uuid: str, device: str, size: int, extend: bool = False
    ) -> None:
        """Resize a running domain's disk to ``size`` bytes (``extend``: never shrink)."""
        ...

    @call(mutates=True)
    async def domain_block_pull(
        self, uuid: str, device: str, bandwidth: int, base: str | None = None
    ) -> None:
        """Start pulling a disk's backing chain (above ``base``) into its top image."""
        ...

    @call(mutates=True)
    async def domain_block_commit(
        self,
        uuid: str,
        device: str,
        base: str | None,
        top: str | None,
        bandwidth: int,
        active: bool,
        shallow: bool = False,
    ) -> None:
        """Start committing a disk's images from ``top`` down into ``base``."""
        ...

    @call(mutates=True)
    async def domain_block_copy(
        self,
        uuid: str,
        device: str,
        dest_xml: str,
        bandwidth: int,
        shallow: bool = False,
        reuse_ext: bool = False,
    ) -> None:
        """Start copying a disk to the image a ``<disk>`` XML names (pivot onto it later)."""
        ...

    @call(mutates=False)
    async def domain_block_job_info(self, uuid: str, device: str) -> BlockJobInfo | None:
        """A disk's block job (None: it has none)."""
        ...

    @call(mutates=True)
    async def domain_block_job_abort(
        self, uuid: str, device: str, pivot: bool, wait: bool = True
    ) -> None:
        """Cancel a disk's block job, or pivot the disk onto the image it made."""
        ...

    @call(mutates=True)
    async def domain_block_job_set_speed(self, uuid: str, device: str, bandwidth: int) -> None:
        """Limit a disk's block job to ``bandwidth`` bytes/s (0: no limit)."""
        ...

    @call(mutates=True)
    async def domain_set_memory_stats_period(
        self, uuid: str, period: int, live: bool, config: bool
    ) -> None:
        """How often the balloon reports the guest's memory statistics (seconds; 0: never)."""

    # -- memory and vCPUs --------------------------------------------------------------------

    @call(mutates=True)
    async def domain_set_memory(
        self, uuid: str, kib: int, live: bool, config: bool, maximum: bool = False
    ) -> None:
        """Set the guest's memory (KiB): through the balloon while it runs (``live``), for
        its next boot (``config``); ``maximum``: its maximum (``<memory>``, config only)."""
        ...

    @call(mutates=True)
    async def domain_set_vcpus(
        self, uuid: str, count: int, live: bool, config: bool, maximum: bool = False
    ) -> None:
        """Set the number of vCPUs: hot(un)plugged while it runs (``live``), for its next boot
        (``config``); ``maximum``: the most it may have (config only)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_vcpus_count(
        self, uuid: str, live: bool, config: bool, maximum: bool = False
    ) -> int:
        """The number of vCPUs (or their maximum) of the running guest or of its config."""

    @call(mutates=False)
    async def domain_vcpus(self, uuid: str) -> list[VcpuInfo]:
        """The running guest's online vCPUs: state, CPU time, host CPU and affinity of each
        thread (``virDomainGetVcpus``)."""
        ...

    @call(mutates=False)
    async def domain_vcpu_pin_info(self, uuid: str, live: bool, config: bool) -> list[list[bool]]:
        """Each vCPU's pinning (one bool per host CPU) in the live or persistent definition
        (``virDomainGetVcpuPinInfo``)."""
        ...

    @call(mutates=True)
    async def domain_pin_vcpu(
        self, uuid: str, vcpu: int, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """Pin a vCPU to host CPUs: its thread (``live``), ``<vcpupin>`` (``config``)."""
        ...

    @call(mutates=False)
    async def domain_emulator_pin_info(self, uuid: str, live: bool, config: bool) -> list[bool]:
        """The emulator threads' pinning (``virDomainGetEmulatorPinInfo``)."""
        ...

    @call(mutates=False)
    async def domain_block_io_tune(
        self, uuid: str, device: str, live: bool, config: bool
    ) -> dict[str, Any]:
        """A disk's I/O throttle, every libvirt parameter (``virDomainGetBlockIoTune``): as
        the hypervisor applies it (``live``) or the configuration's ``<iotune>``."""
        ...

    @call(mutates=True)
    async def domain_set_block_io_tune(
        self, uuid: str, device: str, params: dict[str, Any], live: bool, config: bool
    ) -> None:
        """Change a disk's I/O throttle (``virDomainSetBlockIoTune``'s parameters)."""
        ...

    @call(mutates=False)
    async def domain_cpu_stats(self, uuid: str, start_cpu: int, ncpus: int) -> list[dict[str, int]]:
        """The CPU time (ns) the running domain used (``virDomainGetCPUStats``): ``start_cpu``
        -1: its totals; else on each of ``ncpus`` host CPUs from ``start_cpu``."""
        ...

    @call(mutates=False)
    async def domain_iothread_info(self, uuid: str, live: bool, config: bool) -> list[IOThreadInfo]:
        """The I/O threads and their affinity: the running threads' (``live``) or the
        configuration's (``config``) (``virDomainGetIOThreadInfo``)."""
        ...

    @call(mutates=True)
    async def domain_pin_iothread(
        self, uuid: str, iothread: int, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """Pin an I/O thread: its thread (``live``), ``<iothreadpin>`` (``config``)."""
        ...

    @call(mutates=True)
    async def domain_pin_emulator(
        self, uuid: str, cpumap: list[bool], live: bool, config: bool
    ) -> None:
        """Pin the emulator threads: live, and/or ``<emulatorpin>`` (``config``)."""
        ...

    # -- devices ----------------------------------------------------------------------------

    @call(mutates=True)
    async def domain_attach_device(self, uuid: str, xml: str, live: bool, config: bool) -> None:
        """Add a device (``<disk>``, ``<interface>``) to the running guest and/or the
        configuration (neither: the current state's)."""
        ...

    @call(mutates=True)
    async def domain_detach_device(self, uuid: str, xml: str, live: bool, config: bool) -> bool:
        """Remove a device; False if the guest has not released it in time (it goes later)."""
        ...

    @call(mutates=True)
    async def domain_update_device(
        self, uuid: str, xml: str, live: bool, config: bool, force: bool = False
    ) -> None:
        """Change a device in place: a CD-ROM's media, an interface's link state."""

    # -- the guest agent ----------------------------------------------------------------------

    @call(mutates=True)
    async def domain_agent_command(self, uuid: str, command: str, timeout: float | None) -> str:
        """Run a raw guest agent command (JSON text); the agent's reply (virsh
        qemu-agent-command): it may change anything in the guest."""
        ...

    @call(mutates=True)
    async def domain_fs_freeze(self, uuid: str, mountpoints: list[str] | None) -> int:
        """Freeze the guest's filesystems (all, or those mounted at ``mountpoints``)."""
        ...

    @call(mutates=True)
    async def domain_fs_thaw(self, uuid: str, mountpoints: list[str] | None) -> int:
        """Thaw the guest's frozen filesystems."""
        ...

    @call(mutates=False)
    async def domain_get_time(self, uuid: str) -> list[int]:
        """The guest's clock, as the agent reads it: seconds and nanoseconds."""
        ...

    @call(mutates=True)
    async def domain_set_time(
        self, uuid: str, seconds: int | None, nseconds: int, sync: bool
    ) -> None:
        """Set the guest's clock (``sync``: from its RTC) through the agent."""
        ...

    @call(mutates=False)
    async def domain_get_hostname(self, uuid: str, source: HostnameSource) -> str:
        """The guest's host name, from its agent or its DHCP lease (virsh domhostname)."""
        ...

    @call(mutates=False)
    async def domain_get_fs_info(self, uuid: str) -> list[DomainFSInfo]:
        """The filesystems the guest has mounted, with the disks they are on (virsh
        domfsinfo)."""
        ...

    @call(mutates=False)
    async def domain_get_guest_info(self, uuid: str, types: GuestInfoTypes) -> dict[str, Any]:
        """What the guest agent tells of the guest (virsh guestinfo): libvirt's typed
        parameters (``os.id``, ``hostname``, ``fs.0.mountpoint``...) for ``types`` (none: all
        it can)."""
        ...

    @call(mutates=True)
    async def domain_set_user_password(
        self, uuid: str, user: str, password: str, encrypted: bool
    ) -> None:
        """Set a guest user's password through the agent (virsh set-user-password);
        ``encrypted``: the password is already a crypt(3) hash."""
        ...

    @call(mutates=True)
    async def domain_rename(self, uuid: str, new_name: str) -> None:
        """Rename a shut-off persistent domain (virsh domrename)."""
        ...

    # -- title, description, metadata ---------------------------------------------------------

    @call(mutates=True)
    async def domain_set_metadata(
        self,
        uuid: str,
        type: MetadataType,
        metadata: str | None,
        key: str | None,
        uri: str | None,
        live: bool,
        config: bool,
    ) -> None:
        """Set (None or empty: remove) the title, description or a metadata element of the
        running guest and/or the configuration (virsh desc, metadata)."""
        ...

    @call(mutates=False)
    async def domain_get_metadata(
        self, uuid: str, type: MetadataType, uri: str | None, live: bool, config: bool
    ) -> str:
        """The title, description or a metadata element (by namespace URI)."""
        ...

    # -- keyboard, NMI, screen ---------------------------------------------------------------

    @call(mutates=True)
    async def domain_send_key(
        self, uuid: str, codeset: int, holdtime: int, keycodes: list[int]
    ) -> None:
        """Press keys together (libvirt's codeset, virsh send-key) for ``holdtime`` ms."""
        ...

    @call(mutates=True)
    async def domain_inject_nmi(self, uuid: str) -> None:
        """Send the guest a non-maskable interrupt (virsh inject-nmi)."""
        ...

    @call(mutates=True, client=True)
    async def domain_screenshot(self, uuid: str, screen: int) -> int:
        """Take a screenshot of a screen of the guest (virsh screenshot), kept for this client
        to read (its id); refused to read-only clients, as libvirt does."""
        ...

    @call(mutates=True, client=True)
    async def domain_screenshot_read(self, screenshot: int, length: int) -> bytes:
        """The next bytes (at most ``length``) of a screenshot, a binary PPM; empty at its
        end, which drops it."""
        ...

    @call(mutates=True)
    async def domain_pm_suspend_for_duration(
        self, uuid: str, target: NodeSuspendTarget, duration: int
    ) -> None:
        """Have the guest suspend itself through its agent (virsh dompmsuspend)."""
        ...

    @call(mutates=True)
    async def domain_pm_wakeup(self, uuid: str) -> None:
        """Wake a guest suspended to RAM (virsh dompmwakeup)."""
        ...

    # -- consoles -----------------------------------------------------------------------------

    @call(mutates=True, client=True)
    async def domain_console_open(self, uuid: str, device: str | None, force: bool) -> int:
        """Attach to a running guest's serial console (``device``: its alias; None: the
        first); the console's id. ``force`` takes over another client's."""
        ...

    @call(mutates=True, client=True)
    async def domain_console_read(self, console: int, length: int) -> bytes:
        """What the guest wrote on the console (at most ``length`` bytes; waits for some);
        empty at the end (closed, taken over, or the guest stopped)."""
        ...

    @call(mutates=True, client=True)
    async def domain_console_write(self, console: int, data: bytes) -> int:
        """Type ``data`` on the console; bytes written."""
        ...

    @call(mutates=True, client=True)
    async def domain_console_close(self, console: int) -> None:
        """Detach from the console."""
        ...

    # -- snapshots --------------------------------------------------------------------------

    @call(mutates=True)
    async def domain_snapshot_create_xml(
        self,
        uuid: str,
        xml: str,
        disk_only: bool,
        halt: bool,
        progress: Progress,
        no_metadata: bool = False,
        reuse_external: bool = False,
        quiesce: bool = False,
    ) -> str:
        """Take a snapshot as ``<domainsnapshot>`` XML describes it (internal, or external
        with ``disk_only``); its name."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_snapshot_list(
        self, uuid: str, of: str | None, descendants: bool, roots: bool, leaves: bool | None
    ) -> list[str]:
        """Names of a domain's snapshots (or of one's children), parents first."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_snapshot_info(self, uuid: str, name: str) -> DomainSnapshotInfo:
        """Where a snapshot sits in its domain's tree, its state and creation time."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_snapshot_current(self, uuid: str) -> str | None:
        """The name of the domain's current snapshot, if it has one."""
        ...

    @call(mutates=False, priority=HIGH, secure_args=("secure",))
    async def domain_snapshot_xml_desc(self, uuid: str, name: str, secure: bool = False) -> str:
        """A snapshot's ``<domainsnapshot>`` XML; ``secure``: its domain's with secrets
        (libvirt's ``VIR_DOMAIN_SNAPSHOT_XML_SECURE``), refused to read-only clients."""
        ...

    @call(mutates=True)
    async def domain_snapshot_revert(
        self, uuid: str, name: str, running: bool, paused: bool, progress: Progress
    ) -> None:
        """Revert the domain to a snapshot (then running or paused, if asked)."""
        ...

    @call(mutates=True)
    async def domain_snapshot_delete(
        self, uuid: str, name: str, children: bool, children_only: bool, metadata_only: bool
    ) -> None:
        """Delete a snapshot (and/or its descendants; ``metadata_only``: keep the disks')."""
        ...

    # -- save and restore -------------------------------------------------------------------

    @call(mutates=True)
    async def domain_save(
        self,
        uuid: str,
        path: str,
        xml: str | None,
        running: bool,
        paused: bool,
        progress: Progress,
    ) -> None:
        """Save the guest's state to a file (on the node's host) and stop it."""
        ...

    @call(mutates=True)
    async def restore(
        self, path: str, xml: str | None, running: bool, paused: bool, progress: Progress
    ) -> DomainRef:
        """Start a domain from a save image (on the node's host)."""
        ...

    @call(mutates=True)
    async def domain_managed_save(
        self, uuid: str, running: bool, paused: bool, progress: Progress
    ) -> None:
        """Save the guest's state where the node keeps it, and stop it; start restores it."""
        ...

    @call(mutates=False, priority=HIGH)
    async def domain_has_managed_save_image(self, uuid: str) -> bool:
        """Whether the domain has a managed save image."""
        ...

    @call(mutates=True)
    async def domain_managed_save_remove(self, uuid: str) -> None:
        """Remove the domain's managed save image (its next start boots)."""
        ...

    # It reads a file of the node's host (the XML may hold a display password): changes
    # nothing, but not for read-only clients (libvirt: read_secure).
    @call(mutates=False, secure=True)
    async def save_image_get_xml_desc(self, path: str, secure: bool = False) -> str:
        """The domain XML a save image (on the node's host) holds; ``secure``: with its
        secrets (libvirt's ``VIR_DOMAIN_SAVE_IMAGE_XML_SECURE``)."""
        ...


class NetworkCalls(Protocol):
    """Calls served by a node's network driver."""

    @call(mutates=False, priority=HIGH)
    async def list_all_networks(self, active: bool | None) -> list[NetworkRef]: ...

    @call(mutates=False, priority=HIGH)
    async def lookup_network_by_name(self, name: str) -> NetworkRef: ...

    @call(mutates=False, priority=HIGH)
    async def lookup_network_by_uuid(self, uuid: str) -> NetworkRef: ...

    @call(mutates=True)
    async def network_define_xml(self, xml: str) -> NetworkRef: ...

    @call(mutates=True)
    async def network_create(self, uuid: str) -> None: ...

    @call(mutates=True, priority=HIGH)
    async def network_destroy(self, uuid: str) -> None: ...

    @call(mutates=True)
    async def network_undefine(self, uuid: str) -> None: ...

    @call(mutates=False, priority=HIGH)
    async def network_is_active(self, uuid: str) -> bool: ...

    @call(mutates=False, priority=HIGH)
    async def network_is_persistent(self, uuid: str) -> bool: ...

    @call(mutates=False, priority=HIGH)
    async def network_xml_desc(self, uuid: str, inactive: bool) -> str: ...

    @call(mutates=False, priority=HIGH)
    async def network_autostart(self, uuid: str) -> bool: ...

    @call(mutates=True)
    async def network_set_autostart(self, uuid: str, autostart: bool) -> None: ...

    @call(mutates=False, priority=HIGH)
    async def network_bridge_name(self, uuid: str) -> str: ...

    @call(mutates=False, priority=HIGH)
    async def network_dhcp_leases(self, uuid: str, mac: str | None) -> list[NetworkDHCPLease]:
        """The network's DHCP leases (only ``mac``'s, if given)."""
        ...


class StorageCalls(Protocol):
    """Calls served by a node's storage driver."""

    @call(mutates=False, priority=HIGH)
    async def list_all_storage_pools(self, active: bool | None) -> list[StoragePoolRef]:
        """Pools, optionally only (in)active ones."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_storage_pool_by_name(self, name: str) -> StoragePoolRef:
        """The pool called ``name``."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_storage_pool_by_uuid(self, uuid: str) -> StoragePoolRef:
        """The pool with this UUID."""
        ...

    @call(mutates=True)
    async def storage_pool_define_xml(self, xml: str) -> StoragePoolRef:
        """Define (or redefine) a persistent pool."""
        ...

    @call(mutates=True)
    async def storage_pool_build(self, uuid: str) -> None:
        """Create an inactive pool's directory."""
        ...

    @call(mutates=True)
    async def storage_pool_create(self, uuid: str) -> None:
        """Start a pool (its volumes are read)."""
        ...

    @call(mutates=True)
    async def storage_pool_destroy(self, uuid: str) -> None:
        """Stop a pool; its volumes stay."""
        ...

    @call(mutates=True)
    async def storage_pool_delete(self, uuid: str) -> None:
        """Remove an inactive pool's (empty) directory."""
        ...

    @call(mutates=True)
    async def storage_pool_undefine(self, uuid: str) -> None:
        """Forget an inactive pool's definition."""
        ...

    @call(mutates=True)
    async def storage_pool_refresh(self, uuid: str) -> None:
        """Read a pool's volumes again."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_is_active(self, uuid: str) -> bool:
        """Whether the pool runs."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_is_persistent(self, uuid: str) -> bool:
        """Whether the pool has a persistent definition."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_get_autostart(self, uuid: str) -> bool:
        """Whether the pool starts with its node."""
        ...

    @call(mutates=True)
    async def storage_pool_set_autostart(self, uuid: str, autostart: bool) -> None:
        """Start the pool with its node, or not."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_info(self, uuid: str) -> StoragePoolInfo:
        """The pool's state and sizes."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_xml_desc(self, uuid: str, inactive: bool) -> str:
        """The pool's XML (``inactive``: the definition as stored)."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_pool_list_volumes(self, uuid: str) -> list[StorageVolRef]:
        """An active pool's volumes, by name."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_vol_lookup_by_name(self, pool_uuid: str, name: str) -> StorageVolRef:
        """The volume ``name`` of a pool."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_vol_lookup_by_path(self, path: str) -> StorageVolRef:
        """The volume whose file is ``path``, in any active pool."""
        ...

    @call(mutates=True)
    async def storage_vol_create_xml(
        self, pool_uuid: str, xml: str, prealloc_metadata: bool
    ) -> StorageVolRef:
        """Create a volume (a qcow2 overlay when it names a backing volume)."""
        ...

    @call(mutates=True)
    async def storage_vol_create_xml_from(
        self,
        pool_uuid: str,
        xml: str,
        source_pool_uuid: str,
        source_name: str,
        prealloc_metadata: bool,
        progress: Progress,
    ) -> StorageVolRef:
        """Create a volume holding a copy of another's data (converted to its format)."""
        ...

    @call(mutates=True)
    async def storage_vol_delete(self, pool_uuid: str, name: str) -> None:
        """Delete a volume."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_vol_info(self, pool_uuid: str, name: str) -> StorageVolInfo:
        """A volume's type and sizes."""
        ...

    @call(mutates=False, priority=HIGH)
    async def storage_vol_xml_desc(self, pool_uuid: str, name: str) -> str:
        """A volume's XML."""
        ...

    @call(mutates=True)
    async def storage_vol_resize(
        self, pool_uuid: str, name: str, capacity: int, allocate: bool, delta: bool, shrink: bool
    ) -> None:
        """Change a volume's capacity, by virsh vol-resize's rules."""
        ...

    @call(mutates=True)
    async def storage_vol_wipe(self, pool_uuid: str, name: str) -> None:
        """Erase a volume's data."""
        ...

    @call(mutates=True, client=True)
    async def storage_vol_upload_begin(self, pool_uuid: str, name: str) -> int:
        """Begin an upload into a volume (it is then in use); the transfer's id."""
        ...

    @call(mutates=False, client=True)
    async def storage_vol_download_begin(self, pool_uuid: str, name: str) -> int:
        """Begin a download of a volume's bytes (it is then in use); the transfer's id."""
        ...

    @call(mutates=True, client=True)
    async def storage_vol_upload(self, transfer: int, offset: int, data: bytes) -> int:
        """Write one chunk of an upload at ``offset``; bytes written."""
        ...

    @call(mutates=False, client=True)
    async def storage_vol_download(self, transfer: int, offset: int, length: int) -> bytes:
        """Read one chunk of a download (at most 1 MiB) from ``offset``."""
        ...

    @call(mutates=False, client=True)
    async def storage_vol_transfer_end(self, transfer: int) -> None:
        """End a transfer (an upload is then durable and its volume read again)."""
        ...


class SecretCalls(Protocol):
    """Calls served by a node's secret driver (libvirt's ``virSecret*``)."""

    @call(mutates=False, priority=HIGH)
    async def list_all_secrets(
        self, ephemeral: bool | None = None, private: bool | None = None
    ) -> list[SecretRef]:
        """Secrets, optionally only (non-)ephemeral or (non-)private ones, by UUID."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_secret_by_uuid(self, uuid: str) -> SecretRef:
        """The secret with this UUID."""
        ...

    @call(mutates=False, priority=HIGH)
    async def lookup_secret_by_usage(self, usage_type: SecretUsageType, usage_id: str) -> SecretRef:
        """The secret used for ``usage_id`` (a volume's path, a Ceph name...)."""
        ...

    @call(mutates=True)
    async def secret_define_xml(self, xml: str) -> SecretRef:
        """Define (or redefine) a secret; it has no value until one is set."""
        ...

    @call(mutates=False, priority=HIGH)
    async def secret_xml_desc(self, uuid: str) -> str:
        """The secret's XML (never its value)."""
        ...

    @call(mutates=True)
    async def secret_set_value(self, uuid: str, value: bytes) -> None:
        """Set the secret's value."""
        ...

    @call(mutates=False, priority=HIGH, secure=True)
    async def secret_get_value(self, uuid: str) -> bytes:
        """The secret's value (refused for a private secret, and to read-only clients)."""
        ...

    @call(mutates=True)
    async def secret_undefine(self, uuid: str) -> None:
        """Remove the secret and its value."""
        ...


def _declare(*classes: tuple[type, Target]) -> dict[str, Call]:
    calls: dict[str, Call] = {}
    for cls, target in classes:
        for name, fn in vars(cls).items():
            annotation = getattr(fn, "__asvirt_call__", None)
            if annotation is None:
                continue
            mutates, priority, client, secure, secure_args = annotation
            if name in calls:
                raise TypeError(f"call '{name}' is declared twice")
            calls[name] = Call(
                name,
                target,
                fn,
                mutates=mutates,
                priority=priority,
                client=client,
                secure=secure,
                secure_args=secure_args,
            )
    return calls


#: Every call of the driver API, by name.
CALLS: Mapping[str, Call] = _declare(
    (DomainCalls, Target.DOMAINS),
    (NetworkCalls, Target.NETWORK),
    (StorageCalls, Target.STORAGE),
    (SecretCalls, Target.SECRET),
)


def lookup(name: object) -> Call:
    """The declared call ``name``; InvalidArgError for anything else."""
    found = CALLS.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidArgError(f"no such call: {name!r}")
    return found


# -- values on the wire ---------------------------------------------------------------------------
#
# Results and arguments travel as plain JSON values. Records (DomainRef, DomainInfo...) are
# objects with their fields; enums are their integer values; a state and its reason are a pair.


def encode_result(c: Call, value: Any) -> Any:
    """A call's result as a plain JSON value."""
    return _encode(value)


def encode_value(value: Any) -> Any:
    """An argument as a plain JSON value."""
    return _encode(value)


def encode_params(c: Call, params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """A call's arguments as plain JSON values, and the progress callback they held (None
    if none): a callback stays with the client, the daemon is only told it is wanted."""
    return values.encode_args(params, c.progress)


def decode_result(c: Call, value: Any) -> Any:
    """A call's result from its plain JSON value (ValueError if it is not one)."""
    return _decode(c.result, value, f"result of {c.name}")


def wire_result(c: Call, value: Any) -> Any:
    """A call's result as the wire's encoder (msgspec) is given it: the value itself when
    the encoder writes its type as :func:`encode_result` would (records, enums, numbers,
    strings and lists of them: most answers), else :func:`encode_result`'s plain value.
    Walking a record in Python cost more than the rest of a daemon's answer."""
    return value if _native_result(c) else encode_result(c, value)


def decode_result_json(c: Call, text: bytes) -> Any:
    """A call's result from its JSON text, as :func:`decode_result` makes it from the
    decoded value (ValueError if it is not of the declared type).

    msgspec decodes the types it knows as this module does (records, enums, numbers,
    strings, lists) straight from the text to the declared type, checking as it goes;
    the others go through :func:`decode_result`."""
    decoder = _result_json_decoder(c)
    if decoder is None:
        from .rpc import wire

        return decode_result(c, wire.decode(text))
    try:
        return decoder(text)
    except ValueError:
        raise
    except Exception as err:  # msgspec's DecodeError and ValidationError
        raise ValueError(f"result of {c.name}: {err}") from None


# Cached by call too: a call is hashed by its identity, a result type like list[DomainRef]
# by its parts, every time.
@functools.cache
def _native_result(c: Call) -> bool:
    return _native(c.result)


@functools.cache
def _result_json_decoder(c: Call) -> Callable[[bytes], Any] | None:
    return _json_decoder(c.result)


@functools.cache
def _json_decoder(type_: Any) -> Callable[[bytes], Any] | None:
    if not _native(type_):
        return None
    import msgspec

    return msgspec.json.Decoder(type_).decode


@functools.cache
def _native(type_: Any) -> bool:
    """Whether msgspec encodes ``type_`` as this module does and decodes it back to the same
    value, checking it as strictly (a bool is no int, a record needs all its fields)."""
    if type_ in (str, int, bool, float, None, type(None), Any):
        return True
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    if origin in (typing.Union, _UnionType):
        # msgspec decodes an optional value, not a choice between several.
        others = [a for a in args if a is not type(None)]
        return len(others) == 1 and _native(others[0]) and typing.get_origin(others[0]) is None
    if origin is list:
        return _native(args[0])
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return all(isinstance(m.value, int | str) for m in type_)
    if isinstance(type_, type) and is_record(type_):
        return all(_native(t) for t in _record(type_)[2].values())
    # Pairs like (state, reason), tuples, objects, bytes: the module's own code.
    return False


def decode_params(c: Call, params: object) -> dict[str, Any]:
    """A call's arguments from a JSON object, checked against the declaration.

    InvalidArgError names what is missing, unknown or of the wrong type: a client cannot
    make the driver see anything it did not declare.
    """
    if not isinstance(params, dict):
        raise InvalidArgError(f"{c.name}: params must be an object")
    names, plan = _param_plan(c)
    if not params.keys() <= names:
        unknown = set(params) - names
        raise InvalidArgError(
            f"{c.name}: unknown argument(s): {', '.join(sorted(map(str, unknown)))}"
        )
    out: dict[str, Any] = {}
    for name, decode, what, default in plan:
        if name not in params:
            if default is not _REQUIRED:
                out[name] = default
                continue
            raise InvalidArgError(f"{c.name}: missing argument '{name}'")
        try:
            out[name] = decode(params[name], what)
        except ValueError as err:
            raise InvalidArgError(str(err)) from None
    return out


#: The default of an argument that has none.
_REQUIRED: Any = object()


@functools.cache
def _param_plan(
    c: Call,
) -> tuple[frozenset[str], tuple[tuple[str, Callable[[Any, str], Any], str, Any], ...]]:
    """How :func:`decode_params` checks a call's arguments, worked out once per call: their
    names, and for each its decoder, its name in errors and its default."""
    plan = tuple(
        (name, _decoder(type_), f"{c.name}: argument '{name}'", c.defaults.get(name, _REQUIRED))
        for name, type_ in c.params
    )
    return frozenset(name for name, _ in c.params), plan


def _decode(type_: Any, value: Any, what: str) -> Any:
    return _decoder(type_)(value, what)


@functools.cache
def _decoder(type_: Any) -> Callable[[Any, str], Any]:
    return values.decoder(spec_of(type_))


@functools.cache
def spec_of(type_: Any, *, by_name: bool = False) -> Any:
    """What :mod:`asvirt.rpc.values` decodes a value of the declared ``type_`` after (its
    docstring says the shapes); with ``by_name``, classes are named (``"module:Name"``), as
    :mod:`asvirt.rpc.calls_table` holds them."""
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    if type_ is Any:
        return "any"
    if type_ is None or type_ is type(None):
        return "null"
    if origin in (typing.Union, _UnionType):
        return ("union", tuple(spec_of(a, by_name=by_name) for a in args))
    if type_ is StateAndReason or (origin is tuple and args[:1] == (DomainState,)):
        return "state"
    if origin is list:
        return ("list", spec_of(args[0], by_name=by_name))
    if origin is tuple and args[1:] == (Ellipsis,):
        return ("tuple", spec_of(args[0], by_name=by_name))
    if origin is dict:
        return "object"
    cls = f"{type_.__module__}:{type_.__qualname__}" if by_name else type_
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return ("enum", cls)
    if isinstance(type_, type) and is_record(type_):
        names, _, hints = _record(type_)
        return ("record", cls, tuple((n, spec_of(hints[n], by_name=by_name)) for n in names))
    simple = {bool: "bool", Progress: "bool", bytes: "bytes", int: "int", float: "float"}
    if type_ in simple:
        return simple[type_]
    if type_ is str:
        return "str"
    return ("unknown", repr(type_))


def calls_table_source() -> str:
    """asvirt/rpc/calls_table.py's text: what a one-shot client needs of each call."""
    lines = []
    for c in sorted(CALLS.values(), key=lambda c: c.name):
        entry = (c.client, c.progress, spec_of(c.result, by_name=True))
        lines.append(f"    {c.name!r}: {entry!r},\n")
    return _CALLS_TABLE_HEAD + "".join(lines) + "}\n# fmt: on\n"


_CALLS_TABLE_HEAD = '''"""The driver API's calls, as a one-shot client needs them.

Generated from :mod:`asvirt.protocol`'s declaration by ``python -m asvirt.protocol calls-table
> asvirt/rpc/calls_table.py`` (tests/test_protocol.py checks that it is up to date): a one-shot
client reads this instead of the declaration, whose type hints need :mod:`typing`. For each
call: whether the daemon must know the client (autodestroy), its progress argument, and its
result's value spec (:mod:`asvirt.rpc.values`).
"""
# ruff: noqa: E501

# fmt: off
CALLS = {
'''


@functools.cache
def _record(type_: type) -> tuple[tuple[str, ...], frozenset[str], dict[str, Any]]:
    """A record type's field names (in order, and as a set) and their types. Worked out
    once per type: typing.get_type_hints evaluates the module's string annotations (half a
    millisecond for DomainInfo), and most answers hold a record."""
    names = fields(type_)
    # Modules of records import typing's names for type checking only (a one-shot client
    # imports records without typing): Any is given here.
    return names, frozenset(names), typing.get_type_hints(type_, localns={"Any": Any})


_UnionType = type(int | None)


def methods_markdown() -> str:
    """The method list of docs/protocol.md, from the declaration."""
    lines = ["| method | params | result | mutates | priority |", "|---|---|---|---|---|"]
    for c in sorted(CALLS.values(), key=lambda c: (c.target.value, c.name)):
        params = ", ".join(_param_doc(c, n, t) for n, t in c.params) or "—"
        lines.append(
            f"| `{c.name}` | {params} | {_type_name(c.result)} | "
            f"{_mutates_doc(c)} | {c.priority.value} |"
        )
    return "\n".join(lines)


def _mutates_doc(c: Call) -> str:
    if c.mutates:
        return "yes"
    if c.secure_args:
        return f"no (refused read-only with {', '.join(f'`{a}`' for a in c.secure_args)})"
    return "no (refused read-only)" if c.secure else "no"


def _param_doc(c: Call, name: str, type_: Any) -> str:
    if name in c.defaults:  # optional: JSON's spelling of the value it takes when left out
        import json

        return f"`{name}`: {_type_name(type_)} = {json.dumps(c.defaults[name])}"
    return f"`{name}`: {_type_name(type_)}"


def _type_name(type_: Any) -> str:
    if type_ is None or type_ is type(None):
        return "null"
    if type_ is StateAndReason:
        return "[state, reason]"
    if type_ is Any:
        return "any"
    origin = typing.get_origin(type_)
    if origin in (typing.Union, _UnionType):
        return " \\| ".join(_type_name(t) for t in typing.get_args(type_))
    if origin is list:
        return f"list of {_type_name(typing.get_args(type_)[0])}"
    if origin is dict:
        return "object"
    if type_ is bytes:
        return "bytes (base64)"
    if type_ is Progress:
        return "bool (progress)"
    return getattr(type_, "__name__", str(type_))


__all__ = [
    "CALLS",
    "Call",
    "DomainCalls",
    "NetworkCalls",
    "Priority",
    "Progress",
    "SecretCalls",
    "StateAndReason",
    "StorageCalls",
    "Target",
    "call",
    "calls_table_source",
    "decode_params",
    "decode_result",
    "decode_result_json",
    "encode_params",
    "encode_result",
    "encode_value",
    "lookup",
    "methods_markdown",
    "spec_of",
    "wire_result",
]

if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["calls-table"]:
        sys.stdout.write(calls_table_source())
    else:
        print(methods_markdown())
