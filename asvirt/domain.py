"""Domains: handles to virtual machines.

A :class:`Domain` is a handle, like libvirt's ``virDomainPtr``: it names a domain (by name and
UUID) on a connection and forwards every call to the connection's hypervisor driver. It stays
valid while the domain exists; calls on a domain that has been undefined and stopped raise
:class:`~asvirt.NoDomainError`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Mapping

from .conf.metadata_type import MetadataType
from .drivers.base import (
    MAX_TRANSFER,
    SCREENSHOT_MIME,
    BlockInfo,
    BlockJobInfo,
    DomainFSInfo,
    DomainInfo,
    DomainInterface,
    DomainRef,
    GuestInfoTypes,
    HostnameSource,
    InterfaceAddressSource,
    InterfaceStats,
    IOThreadInfo,
    NodeSuspendTarget,
    ProgressCallback,
    SecurityLabel,
    ShutdownMode,
    StatsGroup,
    VcpuInfo,
)
from .errors import (
    AsvirtError,
    NoDomainError,
    NoDomainSnapshotError,
    OperationFailedError,
    OperationInvalidError,
)
from .handle import Handle
from .keycodes import KeycodeSet
from .states import DomainState, StateReason

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any

    from .console import Console
    from .snapshot import DomainSnapshot
    from .storage import StorageVol

# Snapshots and storage volumes load when a domain's call makes one: a one-shot command
# (`asvirt list`) imports neither (issue 9).


class Domain(Handle):
    """A virtual machine known to a connection."""

    __slots__ = ()
    _ref: DomainRef

    def _call(self, method: str, /, **params: Any) -> Coroutine[Any, Any, Any]:
        # The connection's coroutine itself (see Connection._call).
        return self._conn._call(method, uuid=self.uuid, **params)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, *, paused: bool = False, autodestroy: bool = False, force_boot: bool = False
    ) -> None:
        """Start a defined, shut-off domain (STARTED/BOOTED; with ``paused``, SUSPENDED/PAUSED).

        A domain stopped by :meth:`managed_save` is restored instead (STARTED/RESTORED), as
        virsh start does, and its image removed; ``force_boot=True`` throws the image away
        and boots. ``autodestroy=True`` destroys it when this connection closes.
        """
        await self._call(
            "domain_start", paused=paused, autodestroy=autodestroy, force_boot=force_boot
        )

    async def suspend(self) -> None:
        """Pause the vCPUs (SUSPENDED/PAUSED). A no-op on a domain that is already paused."""
        await self._call("domain_suspend")

    async def resume(self) -> None:
        """Resume paused vCPUs (RESUMED/UNPAUSED). A no-op on a running domain."""
        await self._call("domain_resume")

    async def shutdown(self, mode: ShutdownMode | int = ShutdownMode.DEFAULT) -> None:
        """Ask the guest to shut down. Returns once requested.

        ``mode`` (libvirt's flags): ``ACPI``, the power button; ``AGENT``, the guest agent's
        ``guest-shutdown`` (fails with AGENT_UNRESPONSIVE if the agent does not answer);
        both, the agent and then the button if the agent failed; ``DEFAULT``, the same as
        both when the domain has an agent channel, else the button. The guest decides; watch
        for SHUTDOWN and STOPPED events, or :meth:`destroy`.
        """
        if mode:
            await self._call("domain_shutdown", mode=ShutdownMode(mode))
        else:
            # Without a mode, as older daemons understand it.
            await self._call("domain_shutdown")

    async def reboot(self) -> None:
        """Ask the guest to reboot: an ACPI power button press that is turned into a reset
        once the guest has shut down, as libvirt does. Returns once requested."""
        await self._call("domain_reboot")

    async def reset(self) -> None:
        """Reset the virtual hardware at once, without asking the guest."""
        await self._call("domain_reset")

    async def destroy(self) -> None:
        """Stop the domain at once: SIGTERM to QEMU, SIGKILL after a grace period.

        Returns once QEMU is gone and the domain is shut off (STOPPED/DESTROYED).
        """
        await self._call("domain_destroy")

    async def undefine(
        self,
        *,
        nvram: bool = False,
        keep_tpm: bool = False,
        snapshots_metadata: bool = False,
        managed_save: bool = False,
        remove_storage: bool | Iterable[str] = False,
    ) -> list[StorageVol]:
        """Remove the persistent configuration (UNDEFINED/REMOVED).

        A domain with snapshots is undefined only with ``snapshots_metadata=True`` (libvirt's
        VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA), which forgets them (their data stays in the
        disks); one with a managed save image only with ``managed_save=True``, which removes
        the image. Otherwise OperationInvalidError, and nothing changes.

        A running domain keeps running, as a transient domain that vanishes when it stops.
        A UEFI domain's NVRAM file is removed with ``nvram=True``; without it, undefining a
        domain that has one is refused (OperationInvalidError), as in libvirt. An emulated
        TPM's state is removed too, unless ``keep_tpm=True``.

        ``remove_storage`` also deletes the domain's storage volumes, as virsh's
        ``undefine --remove-all-storage`` (True) or ``--storage vda,/path`` (the disks'
        targets or sources): the volume of each ``type='volume'`` disk, and the volume whose
        path a file or block disk names. Files that are no volume of the node's pools are
        left alone (see :func:`asvirt.storage.disk_volumes`). Only for a domain that is not
        running; the volumes are deleted once the definition is gone, and the deleted ones
        are returned. A volume that cannot be deleted raises OperationFailedError naming it,
        after the others were deleted.
        """
        flags = {
            "nvram": nvram,
            "keep_tpm": keep_tpm,
            "snapshots_metadata": snapshots_metadata,
            "managed_save": managed_save,
        }
        if not remove_storage:
            await self._call("domain_undefine", **flags)
            return []
        if await self.is_active():
            raise OperationInvalidError(
                f"cannot remove the storage of domain '{self.name}' while it runs; "
                "storage volume deletion is supported only on stopped domains"
            )
        from .storage import disk_volumes

        found = await disk_volumes(self, remove_storage)
        await self._call("domain_undefine", **flags)
        deleted: list[StorageVol] = []
        failed: list[str] = []
        for disk in found:
            if disk.volume is None or disk.volume in deleted:
                continue
            try:
                await disk.volume.delete()
            except AsvirtError as err:
                failed.append(f"'{disk.target}' ({disk.volume.path}): {err}")
            else:
                deleted.append(disk.volume)
        if failed:
            raise OperationFailedError(
                f"domain '{self.name}' has been undefined, but some of its storage volumes "
                f"could not be removed: {'; '.join(failed)}"
            )
        return deleted

    # -- inspection ----------------------------------------------------------------------------

    async def state(self) -> tuple[DomainState, StateReason]:
        """The current state and the reason for it. Never waits for QEMU."""
        return await self._call("domain_state")

    async def info(self) -> DomainInfo:
        """State, memory, vCPUs and CPU time. Never waits for QEMU."""
        return await self._call("domain_info")

    async def os_type(self) -> str:
        """The guest's OS type as the driver names it (libvirt's ``OSType``): ``hvm`` on
        QEMU; libvirt's test driver, and so ``test:///``, says ``linux``."""
        return await self._call("domain_os_type")

    async def security_label(self) -> SecurityLabel:
        """The domain's label under the node's security driver (libvirt's
        ``securityLabel``); empty under ``none``."""
        return await self._call("domain_security_label")

    async def xml_desc(self, *, inactive: bool = False, secure: bool = False) -> str:
        """The live XML while running, else (or with ``inactive=True``) the persistent one.

        ``secure=True`` includes its secrets: display passwords and disk cookies (libvirt's
        ``VIR_DOMAIN_XML_SECURE``, ``virsh dumpxml --security-info``); a read-only
        connection is refused it (OperationDeniedError)."""
        return await self._call("domain_xml_desc", inactive=inactive, secure=secure)

    async def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command and return QEMU's ``return`` value (virsh qemu-monitor-command).

        State changes it causes are seen, as any others, through QEMU's events.
        """
        return await self._call("domain_qmp", command=command, arguments=arguments)

    async def is_active(self) -> bool:
        return await self._call("domain_is_active")

    async def is_persistent(self) -> bool:
        return await self._call("domain_is_persistent")

    async def id(self) -> int | None:
        """The runtime id of a running domain (as ``virsh list`` shows), None when shut off."""
        return await self._call("domain_id")

    async def set_autostart(self, autostart: bool) -> None:
        """Start this (persistent) domain whenever its node opens after the host booted: when
        the daemon starts, or an embed root opened with ``autostart=1``."""
        await self._call("domain_set_autostart", autostart=autostart)

    async def autostart(self) -> bool:
        """Whether the domain starts with its node."""
        return await self._call("domain_get_autostart")

    async def interface_addresses(
        self, source: InterfaceAddressSource = InterfaceAddressSource.LEASE
    ) -> list[DomainInterface]:
        """The IP addresses of the running guest's interfaces (virsh ``domifaddr``).

        ``LEASE`` reads the DHCP leases of the networks its ``type='network'`` interfaces
        are on; interfaces without a lease are left out. ``AGENT`` asks the guest agent:
        every interface of the guest (the loopback too), with the addresses it has.
        """
        return await self._call("domain_interface_addresses", source=source)

    # -- the serial console --------------------------------------------------------------------

    async def open_console(self, device: str | None = None, *, force: bool = False) -> Console:
        """Attach to the running guest's serial console (``device``: a serial or console
        alias, ``serial0``; None: the first) as a trio stream; use it with ``async with``.

        The device must be a ``<serial type='pty'>`` (give it a ``<log file=...>`` to keep
        its output while nobody is attached). One client at a time, as libvirt: a second
        open fails with OperationFailedError unless ``force``, which takes it over (the
        first one's stream then ends). Closing the connection detaches too.
        """
        from .console import Console

        cid = await self._call("domain_console_open", device=device, force=force)
        return Console(self, cid)

    # -- the guest agent -----------------------------------------------------------------------
    #
    # These need a running guest whose <channel type='unix'> with <target type='virtio'
    # name='org.qemu.guest_agent.0'/> has qemu-ga at its other end. Without the channel they
    # fail with ArgumentUnsupportedError; when the agent is not connected, or does not answer
    # within the timeout ([qemu] agent_timeout unless given), with AgentUnresponsiveError.
    # EventKind.AGENT_LIFECYCLE events say when it connects and disconnects.

    async def agent_command(self, command: str, *, timeout: float | None = None) -> str:
        """Run a raw guest agent command, JSON text (``'{"execute": "guest-info"}'``), and
        return the agent's reply as compact JSON text (``'{"return":{...}}'``), as
        libvirt's ``qemuAgentCommand`` and virsh ``qemu-agent-command`` do; "" for a
        command the agent does not answer (``guest-shutdown``)."""
        return await self._call("domain_agent_command", command=command, timeout=timeout)

    async def fs_freeze(self, mountpoints: Iterable[str] | None = None) -> int:
        """Freeze the guest's filesystems (all of them, or those mounted at
        ``mountpoints``) so that a disk snapshot taken now is consistent; how many were
        frozen. Thaw them with :meth:`fs_thaw`."""
        points = list(mountpoints) if mountpoints is not None else None
        return await self._call("domain_fs_freeze", mountpoints=points)

    async def fs_thaw(self) -> int:
        """Thaw the filesystems :meth:`fs_freeze` froze; how many were thawed."""
        return await self._call("domain_fs_thaw", mountpoints=None)

    async def get_time(self) -> tuple[int, int]:
        """The guest's clock as its agent reads it: seconds since the epoch, nanoseconds."""
        seconds, nseconds = await self._call("domain_get_time")
        return seconds, nseconds

    async def set_time(
        self, seconds: int | None = None, nseconds: int = 0, *, sync: bool = False
    ) -> None:
        """Set the guest's clock through its agent (and its RTC with it). ``sync=True``:
        set it from the guest's RTC instead (after a resume, say), ``seconds`` unused."""
        await self._call("domain_set_time", seconds=seconds, nseconds=nseconds, sync=sync)

    async def hostname(self, source: HostnameSource = HostnameSource.AGENT) -> str:
        """The guest's host name (libvirt's ``virDomainGetHostname``, virsh domhostname):
        from its agent (``guest-get-host-name``), or with ``HostnameSource.LEASE`` from the
        DHCP leases of the networks its interfaces are on (NoHostnameError when none names
        it)."""
        return await self._call("domain_get_hostname", source=HostnameSource(source))

    async def fs_info(self) -> list[DomainFSInfo]:
        """The filesystems the guest has mounted (libvirt's ``virDomainGetFSInfo``, virsh
        domfsinfo), each with the targets of the domain's disks it lies on."""
        return await self._call("domain_get_fs_info")

    async def guest_info(self, types: GuestInfoTypes | int = 0) -> dict[str, Any]:
        """What the guest agent tells of the guest, as libvirt's ``virDomainGetGuestInfo``
        typed parameters (``user.count``, ``os.id``, ``timezone.name``, ``hostname``,
        ``fs.0.mountpoint``, ``disk.0.name``, ``if.0.name``...) for the groups in ``types``
        (none: every group the agent can answer; a group asked for by name that the agent
        cannot answer fails)."""
        return await self._call("domain_get_guest_info", types=GuestInfoTypes(types))

    async def set_user_password(self, user: str, password: str, encrypted: bool = False) -> None:
        """Set the password of the guest's ``user`` through its agent (libvirt's
        ``virDomainSetUserPassword``); ``encrypted``: ``password`` is already a crypt(3)
        hash (``$6$...``). The password is never logged."""
        await self._call(
            "domain_set_user_password", user=user, password=password, encrypted=encrypted
        )

    async def rename(self, new_name: str) -> None:
        """Rename the domain (libvirt's ``virDomainRename``, virsh domrename): a persistent
        domain that is shut off, without snapshots or a managed save image, to a name no
        other domain has. Its UUID, disks and NVRAM stay; this handle takes the new name.
        LIFECYCLE events UNDEFINED/RENAMED (old name) and DEFINED/RENAMED (new) follow."""
        await self._call("domain_rename", new_name=new_name)
        self._ref = DomainRef(new_name, self.uuid)

    # -- title, description, metadata ----------------------------------------------------------

    async def set_metadata(
        self,
        type: MetadataType | int,
        metadata: str | None,
        key: str | None = None,
        uri: str | None = None,
        *,
        live: bool = False,
        config: bool = False,
    ) -> None:
        """Set the domain's ``<title>``, ``<description>`` or, with ``MetadataType.ELEMENT``,
        its ``<metadata>`` element of namespace ``uri`` (``metadata``: one XML element, which
        gets the namespace with the prefix ``key``); None or "" removes it (libvirt's
        ``virDomainSetMetadata``). In the running guest (``live``) and/or the configuration
        (``config``); neither: the current state's. A METADATA_CHANGE event follows."""
        await self._call(
            "domain_set_metadata",
            type=MetadataType(type),
            metadata=metadata,
            key=key,
            uri=uri,
            live=live,
            config=config,
        )

    async def metadata(
        self,
        type: MetadataType | int,
        uri: str | None = None,
        *,
        live: bool = False,
        config: bool = False,
    ) -> str:
        """The domain's title, description or metadata element of namespace ``uri`` (its XML,
        without the namespace), of the running guest (``live``) or the configuration
        (``config``); neither: the current state's. NoDomainMetadataError if it has none."""
        return await self._call(
            "domain_get_metadata", type=MetadataType(type), uri=uri, live=live, config=config
        )

    # -- power management -----------------------------------------------------------------------

    async def pm_suspend_for_duration(
        self, target: NodeSuspendTarget | int = NodeSuspendTarget.MEM, duration: int = 0
    ) -> None:
        """Have the guest suspend itself through its agent (libvirt's
        ``virDomainPMSuspendForDuration``, virsh dompmsuspend): ``NodeSuspendTarget.MEM``
        (S3), ``DISK`` or ``HYBRID``; ``duration`` must be 0, as libvirt asks. The agent does
        not answer a suspend that works: a LIFECYCLE PMSUSPENDED event says when the guest
        is suspended. OperationUnsupportedError where ``<pm>`` disables that state."""
        await self._call(
            "domain_pm_suspend_for_duration",
            target=NodeSuspendTarget(target),
            duration=duration,
        )

    async def pm_wakeup(self) -> None:
        """Wake a guest suspended to RAM (libvirt's ``virDomainPMWakeup``): a LIFECYCLE
        STARTED/WAKEUP event follows."""
        await self._call("domain_pm_wakeup")

    # -- keyboard, NMI, screen ------------------------------------------------------------------

    async def send_key(
        self,
        codeset: KeycodeSet | int | str = 0,
        holdtime: int = 0,
        keycodes: Iterable[int | str] = (),
    ) -> None:
        """Press ``keycodes`` together for ``holdtime`` ms (0: QEMU's default, 100), then
        release them (libvirt's ``virDomainSendKey``, virsh send-key): numbers of ``codeset``
        (``KeycodeSet.LINUX``, ``XT``, ``ATSET1``, ``QNUM``, or their names) or, in the Linux
        codeset, names (``["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_DELETE"]``). At most 16 keys;
        a key the codeset has no translation for fails with InvalidArgError."""
        from .keycodes import codeset as find_codeset
        from .keycodes import keycode

        codes = find_codeset(codeset)
        numbers = [keycode(codes, k) for k in keycodes]
        await self._call("domain_send_key", codeset=int(codes), holdtime=holdtime, keycodes=numbers)

    async def inject_nmi(self) -> None:
        """Send the guest a non-maskable interrupt (libvirt's ``virDomainInjectNMI``)."""
        await self._call("domain_inject_nmi")

    async def screenshot(self, screen: int = 0) -> tuple[str, bytes]:
        """What screen ``screen`` of the running guest shows (libvirt's
        ``virDomainScreenshot``; screens are counted across the heads of its video devices):
        the image's MIME type (``image/x-portable-pixmap``) and the image, a binary PPM.
        OperationFailedError for a domain without video; asvirt writes no file of its own
        for it (QEMU writes into a memfd asvirt hands it)."""
        shot = await self._call("domain_screenshot", screen=screen)
        chunks = []
        while chunk := await self._conn._call(
            "domain_screenshot_read", screenshot=shot, length=MAX_TRANSFER
        ):
            chunks.append(chunk)
        return SCREENSHOT_MIME, b"".join(chunks)

    # -- statistics ----------------------------------------------------------------------------

    async def stats(self, stats: StatsGroup | int = 0) -> dict[str, Any]:
        """This domain's statistics, libvirt's fields (``state.state``, ``cpu.time``,
        ``balloon.current``, ``vcpu.0.time``, ``net.0.rx.bytes``, ``block.0.rd.reqs``...) for
        the groups in ``stats`` (none: all), as one record of
        :meth:`~asvirt.Connection.get_all_domain_stats`."""
        records = await self._conn._call(
            "get_all_domain_stats",
            stats=StatsGroup(stats),
            uuids=[self.uuid],
            active=None,
            persistent=None,
        )
        if not records:
            raise NoDomainError(f"domain '{self.name}' no longer exists")
        params: dict[str, Any] = records[0].params
        return params

    async def block_stats(self, device: str) -> dict[str, int]:
        """A running domain's counters for the disk ``device`` (its target, ``vda``, or its
        source path; "" sums every disk), named as libvirt's ``blockStatsFlags()`` names them:
        ``rd_operations``, ``rd_bytes``, ``wr_operations``, ``wr_bytes``,
        ``flush_operations``, ``rd_total_times``... (times in nanoseconds)."""
        return await self._call("domain_block_stats", device=device)

    async def interface_stats(self, device: str) -> InterfaceStats:
        """A running domain's counters for the interface ``device`` (its host device's name,
        ``vnet0``, or its MAC address), from the guest's side: ``rx_bytes`` is what the guest
        received (the host's tap transmitted it), as libvirt reports them."""
        return await self._call("domain_interface_stats", device=device)

    async def memory_stats(self) -> dict[str, int]:
        """A running domain's memory statistics, as libvirt-python's ``memoryStats()``: the
        balloon's size (``actual``, KiB), what the guest's balloon driver reports
        (``swap_in``, ``unused``, ``available``, ``usable``, ``last_update``... — only once
        it reports: see :meth:`set_memory_stats_period`) and QEMU's resident size (``rss``)."""
        return await self._call("domain_memory_stats")

    async def set_memory_stats_period(
        self, period: int, *, live: bool = False, config: bool = False
    ) -> None:
        """Have the guest's balloon driver report its memory statistics every ``period``
        seconds (0: stop), as ``<memballoon><stats period='N'/>`` does from boot. ``live``:
        in the running guest; ``config``: from the next boot on; neither: the current
        state's (libvirt's flags)."""
        await self._call("domain_set_memory_stats_period", period=period, live=live, config=config)

    # -- memory and vCPUs ---------------------------------------------------------------------

    async def set_memory(self, kib: int, *, live: bool = False, config: bool = False) -> None:
        """Give the guest ``kib`` KiB of memory, as libvirt's ``setMemoryFlags()``: ``live``
        through the running guest's balloon (its driver gives memory back or takes it, up to
        ``<memory>``; each change it makes is a BALLOON_CHANGE event, and shows in
        :meth:`info` and the live XML's ``<currentMemory>``); ``config``: the
        ``<currentMemory>`` of its next boot; neither: the current state's. Returns once
        the balloon has been asked, not once the guest complied.

        InvalidArgError above the maximum; OperationInvalidError for a running guest without
        a balloon (``<memballoon model='none'/>``)."""
        await self._call("domain_set_memory", kib=kib, live=live, config=config)

    async def set_max_memory(self, kib: int, *, live: bool = False, config: bool = False) -> None:
        """Set ``<memory>``, the most the guest may have, as libvirt's ``setMaxMemory()``
        (``setMemoryFlags(VIR_DOMAIN_MEM_MAXIMUM)``): a configuration change only (``config``,
        or neither flag on a shut-off domain); a running domain's is refused
        (OperationInvalidError), as libvirt does. ``<currentMemory>`` is lowered to it if
        above."""
        await self._call("domain_set_memory", kib=kib, live=live, config=config, maximum=True)

    async def set_vcpus(
        self, count: int, *, live: bool = False, config: bool = False, maximum: bool = False
    ) -> None:
        """Set the number of vCPUs, as libvirt's ``setVcpusFlags()``: ``live`` hot-plugs
        vCPUs into the running guest, or unplugs those that were hot-plugged (waiting until
        the guest has released them), up to the maximum of ``<vcpu current='N'>MAX</vcpu>``
        (its command line makes them pluggable); ``config``: ``<vcpu current>`` of its next
        boot; neither: the current state's. ``maximum`` (with ``config`` only) sets the
        maximum itself.

        InvalidArgError for 0 or above the maximum; ConfigUnsupportedError when the vCPUs
        that can be (un)plugged cannot make ``count`` (those the guest booted with stay);
        OperationTimeoutError when the guest did not release a vCPU in time (it may still:
        :meth:`vcpus_count` says how many it has)."""
        await self._call("domain_set_vcpus", count=count, live=live, config=config, maximum=maximum)

    async def vcpus_count(
        self, *, live: bool = False, config: bool = False, maximum: bool = False
    ) -> int:
        """The number of vCPUs (``maximum``: the most it may have) of the running guest
        (``live``) or of its configuration (``config``, exclusive with ``live``); neither:
        the current state's. libvirt's ``vcpusFlags()``."""
        return await self._call("domain_vcpus_count", live=live, config=config, maximum=maximum)

    # -- thread pinning ------------------------------------------------------------------------
    #
    # A CPU map is libvirt-python's: one bool per host CPU (``(True, False)``: CPU 0 of 2).

    async def vcpus(self) -> list[VcpuInfo]:
        """The running guest's online vCPUs, as libvirt's ``vcpus()``: each one's state, the
        CPU time its thread used (ns), the host CPU it last ran on and the host CPUs it may
        run on (``cpumap``, its thread's affinity). OperationInvalidError if it is not
        running."""
        return await self._call("domain_vcpus")

    async def vcpu_pin_info(self, *, live: bool = False, config: bool = False) -> list[list[bool]]:
        """Every vCPU's pinning (up to the maximum), as libvirt's ``vcpuPinInfo()``: its
        ``<vcpupin>``, else ``<vcpu cpuset>``, else every host CPU, in the running guest's
        definition (``live``) or the persistent one (``config``); neither: the current
        state's."""
        return await self._call("domain_vcpu_pin_info", live=live, config=config)

    async def pin_vcpu(self, vcpu: int, cpumap: Iterable[bool]) -> None:
        """Pin a running vCPU to the host CPUs of ``cpumap``, as libvirt's ``pinVcpu()``
        (:meth:`pin_vcpu_flags` with ``live``)."""
        await self.pin_vcpu_flags(vcpu, cpumap, live=True)

    async def pin_vcpu_flags(
        self, vcpu: int, cpumap: Iterable[bool], *, live: bool = False, config: bool = False
    ) -> None:
        """Pin vCPU ``vcpu`` to the host CPUs of ``cpumap``, as libvirt's ``pinVcpuFlags()``:
        ``live``: its thread's affinity now (an offline vCPU gets it when plugged) and the
        live ``<vcpupin>``; ``config``: the persistent ``<vcpupin>``; neither: the current
        state's. InvalidArgError for an empty map, a CPU the host lacks or a vCPU beyond
        the maximum (nothing changes then)."""
        await self._call(
            "domain_pin_vcpu", vcpu=vcpu, cpumap=list(cpumap), live=live, config=config
        )

    async def get_cpu_stats(
        self, total: bool, *, start: int = 0, count: int | None = None
    ) -> list[dict[str, int]]:
        """The CPU time (ns) the running guest's QEMU used, as libvirt's ``getCPUStats()``:
        ``total``: one dict of ``cpu_time``, ``user_time``, ``system_time`` (from the
        domain's cgroup when it has one, else from /proc); else one dict per host CPU from
        ``start`` (``count`` of them; None: to the last), which only a cgroup v1 cpuacct
        hierarchy keeps: libvirt's refusal otherwise (OperationInvalidError without a
        cpuacct cgroup, OperationUnsupportedError on cgroup v2)."""
        if total:
            return await self._call("domain_cpu_stats", start_cpu=-1, ncpus=1)
        if count is None:
            count = (await self._conn.node_info()).cpus - start
        return await self._call("domain_cpu_stats", start_cpu=start, ncpus=count)

    async def block_io_tune(
        self, disk: str, *, live: bool = False, config: bool = False
    ) -> dict[str, int | str]:
        """A disk's (target ``vda`` or source path) I/O throttle, as libvirt's
        ``blockIoTune()``: every parameter (``total_bytes_sec``, ``read_iops_sec_max``...,
        ``group_name``; 0 or ``""`` where unset), as QEMU applies it to the running disk
        (``live``) or as the configuration's ``<iotune>`` has it (``config``); neither: the
        current state's."""
        return await self._call("domain_block_io_tune", device=disk, live=live, config=config)

    async def set_block_io_tune(
        self,
        disk: str,
        params: Mapping[str, int | str],
        *,
        live: bool = False,
        config: bool = False,
    ) -> None:
        """Change a disk's I/O throttle, as libvirt's ``setBlockIoTune()``: the parameters
        given replace their family (setting ``read_bytes_sec`` clears ``total_bytes_sec``
        and ``write_bytes_sec``), the others keep their values; 0 removes a limit. The
        disks of one ``group_name`` share its limits. ``live``: the running disk (which must
        have started with an ``<iotune>``: OperationUnsupportedError otherwise); ``config``:
        its ``<iotune>`` from the next start; neither: the current state's.

        InvalidArgError for an unknown parameter or limits libvirt refuses (total with
        read/write, a burst below its rate...); nothing changes then."""
        await self._call(
            "domain_set_block_io_tune", device=disk, params=dict(params), live=live, config=config
        )

    async def iothread_info(
        self, *, live: bool = False, config: bool = False
    ) -> list[IOThreadInfo]:
        """The I/O threads (``<iothreads>``) with the host CPUs each may run on, as libvirt's
        ``ioThreadInfo()``: the running threads' affinity (``live``), or the configuration's
        ``<iothreadpin>`` (``config``); neither: the current state's."""
        return await self._call("domain_iothread_info", live=live, config=config)

    async def pin_iothread(
        self, iothread: int, cpumap: Iterable[bool], *, live: bool = False, config: bool = False
    ) -> None:
        """Pin I/O thread ``iothread`` to the host CPUs of ``cpumap``, as libvirt's
        ``pinIOThread()``: its thread and the live ``<iothreadpin>`` (``live``), the
        persistent one (``config``), neither: the current state's. InvalidArgError for an
        I/O thread the domain does not have, an empty map or a CPU the host lacks."""
        await self._call(
            "domain_pin_iothread",
            iothread=iothread,
            cpumap=list(cpumap),
            live=live,
            config=config,
        )

    async def emulator_pin_info(self, *, live: bool = False, config: bool = False) -> list[bool]:
        """The emulator threads' pinning (``<emulatorpin>``, else ``<vcpu cpuset>``, else
        every host CPU), as libvirt's ``emulatorPinInfo()``."""
        return await self._call("domain_emulator_pin_info", live=live, config=config)

    async def pin_emulator(
        self, cpumap: Iterable[bool], *, live: bool = False, config: bool = False
    ) -> None:
        """Pin the emulator threads (QEMU's threads that are neither vCPUs nor I/O threads)
        to the host CPUs of ``cpumap``, as libvirt's ``pinEmulator()``; ``live``,
        ``config`` as :meth:`pin_vcpu_flags`."""
        await self._call("domain_pin_emulator", cpumap=list(cpumap), live=live, config=config)

    # -- devices -------------------------------------------------------------------------------

    async def attach_device(self, xml: str, *, live: bool = False, config: bool = False) -> None:
        """Add a device described by its XML (a ``<disk>`` — a file, a block device, a
        storage volume, a CD-ROM — or an ``<interface>`` of type user, network or bridge).

        ``live``: plug it into the running guest (the live XML then shows it with its alias
        and address); ``config``: add it to the configuration of the next boot; neither: the
        current state's (the running guest's, else the configuration), as libvirt's
        ``attachDeviceFlags``. A device that clashes with one the domain has (the same
        target, the same MAC address) or that the guest cannot take changes nothing.
        """
        await self._call("domain_attach_device", xml=xml, live=live, config=config)

    async def detach_device(self, xml: str, *, live: bool = False, config: bool = False) -> bool:
        """Remove the device the XML names (a disk by its target, an interface by its MAC).

        The guest must release a device it uses: this waits for it (QEMU's word, no
        polling), up to the node's ``[qemu] unplug_timeout``, and returns True once the
        device is gone (a DEVICE_REMOVED event was published). False: the guest has not
        released it yet — a DEVICE_REMOVAL_FAILED event was published, the device stays in
        the live XML, and it goes (DEVICE_REMOVED) whenever the guest lets it. libvirt's
        ``detachDeviceFlags`` returns either way without saying which.
        """
        result: bool = await self._call("domain_detach_device", xml=xml, live=live, config=config)
        return result

    async def update_device(
        self, xml: str, *, live: bool = False, config: bool = False, force: bool = False
    ) -> None:
        """Change a device in place, as its new XML says: the media of a CD-ROM (a new
        ``<source>``, or none to eject) or the ``<link state=...>`` of an interface.
        ``live``/``config`` as for :meth:`attach_device`; ``force`` is accepted for
        libvirt's sake (a locked tray is always forced open)."""
        await self._call("domain_update_device", xml=xml, live=live, config=config, force=force)

    async def block_info(self, device: str) -> BlockInfo:
        """The sizes of a disk's image in bytes: ``capacity`` (what the guest sees),
        ``allocation`` (what it occupies on the host) and ``physical`` (its host size)."""
        return await self._call("domain_block_info", device=device)

    # -- block jobs ----------------------------------------------------------------------------

    async def block_resize(self, device: str, size: int, *, extend: bool = False) -> None:
        """Resize the running guest's disk ``device`` (target or path) to ``size`` bytes
        (libvirt's ``blockResize`` with ``VIR_DOMAIN_BLOCK_RESIZE_BYTES``; a qcow2 image's
        size is rounded up to 512). Shrinking is allowed, as in libvirt, unless ``extend``."""
        await self._call("domain_block_resize", device=device, size=size, extend=extend)

    async def block_pull(self, device: str, bandwidth: int = 0, base: str | None = None) -> None:
        """Start a job streaming the disk's backing chain into its top image (libvirt's
        ``blockPull``; with ``base``, a path or ``vda[N]``, ``blockRebase``: only the images
        above it, which the top then has as its backing file); ``bandwidth`` in bytes/s
        (libvirt's ``_BANDWIDTH_BYTES``; 0: no limit). A BLOCK_JOB event (job ``pull``) says
        when it ends."""
        await self._call("domain_block_pull", device=device, bandwidth=bandwidth, base=base)

    async def block_commit(
        self,
        device: str,
        base: str | None = None,
        top: str | None = None,
        bandwidth: int = 0,
        *,
        active: bool = False,
        shallow: bool = False,
    ) -> None:
        """Start a job committing the disk's images from ``top`` down into ``base``
        (libvirt's ``blockCommit``): images named by path or ``vda[N]`` (N: the depth below
        the top); ``top`` None is the active layer, which needs ``active``
        (``VIR_DOMAIN_BLOCK_COMMIT_ACTIVE``): that job becomes ready (a BLOCK_JOB event)
        and waits for :meth:`block_job_abort` with ``pivot`` to move the disk onto
        ``base``. ``base`` None: the bottom of the chain; ``shallow``: top's backing file."""
        await self._call(
            "domain_block_commit",
            device=device,
            base=base,
            top=top,
            bandwidth=bandwidth,
            active=active,
            shallow=shallow,
        )

    async def block_copy(
        self,
        device: str,
        dest_xml: str,
        bandwidth: int = 0,
        *,
        shallow: bool = False,
        reuse_ext: bool = False,
    ) -> None:
        """Start a job copying the disk to the image ``dest_xml`` describes (libvirt's
        ``blockCopy``: a ``<disk type='file'>`` with its ``<source file=...>`` and maybe
        ``<driver type=...>``, the disk's format by default). QEMU makes the image (a file
        that exists is refused) unless ``reuse_ext``; ``shallow`` copies only the top, over
        the same backing file. The job is ready (a BLOCK_JOB event, job ``copy``) once the
        copy is in sync and mirrors every write; :meth:`block_job_abort` with ``pivot``
        then moves the disk onto the copy, without it leaves a copy as of that moment."""
        await self._call(
            "domain_block_copy",
            device=device,
            dest_xml=dest_xml,
            bandwidth=bandwidth,
            shallow=shallow,
            reuse_ext=reuse_ext,
        )

    async def block_job_info(self, device: str) -> BlockJobInfo | None:
        """The disk's block job (libvirt's ``blockJobInfo``, ``bandwidth`` in bytes/s), or
        None when it has none."""
        result: BlockJobInfo | None = await self._call("domain_block_job_info", device=device)
        return result

    async def block_job_abort(self, device: str, *, pivot: bool = False, wait: bool = True) -> None:
        """End the disk's block job (libvirt's ``blockJobAbort``): cancel it (a ready copy
        or active commit stops, the disk stays where it is), or with ``pivot`` move the disk
        onto the image the ready job made (the live XML then shows it). Returns once QEMU
        has ended the job, unless ``wait`` is False (``VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC``)."""
        await self._call("domain_block_job_abort", device=device, pivot=pivot, wait=wait)

    async def block_job_set_speed(self, device: str, bandwidth: int) -> None:
        """Limit the disk's block job to ``bandwidth`` bytes/s (0: no limit)."""
        await self._call("domain_block_job_set_speed", device=device, bandwidth=bandwidth)

    # -- snapshots -----------------------------------------------------------------------------

    async def snapshot_create_xml(
        self,
        xml: str = "<domainsnapshot/>",
        *,
        disk_only: bool = False,
        atomic: bool = False,
        halt: bool = False,
        no_metadata: bool = False,
        reuse_external: bool = False,
        quiesce: bool = False,
        progress: ProgressCallback | None = None,
    ) -> DomainSnapshot:
        """Take a snapshot as ``<domainsnapshot>`` XML describes it (libvirt's
        snapshotCreateXML): its name (default: the creation time), description, memory
        (``<memory snapshot='no'/>``) and disks (``<disk name='vdb' snapshot='no'/>``).

        Internal (the default): a running or paused domain's snapshot holds its memory
        state and its qcow2 disks, taken while the guest is paused (SUSPENDED/PAUSED,
        RESUMED/UNPAUSED); a shut-off domain's holds its disks. A disk that cannot hold an
        internal snapshot (raw, shared, read-only) and is not left out is refused, before
        anything is made. ``halt`` stops the domain afterwards (STOPPED/FROM_SNAPSHOT).

        External (``disk_only``, or ``<disk snapshot='external'>``): each disk moves onto a
        new qcow2 overlay (``<source file=...>``, default ``IMAGE.NAME`` beside its image,
        made by asvirt unless ``reuse_external``) over the image it had, which is only read
        from then on (raw ones too): the live and persistent XML name the overlay, with the
        old image as its ``<backingStore>``; ``block_commit(active=True)`` and a pivot
        return a running disk to it. ``quiesce`` freezes the guest's filesystems through
        its agent meanwhile. No lifecycle event, as libvirt. ``no_metadata``: no snapshot
        is recorded (libvirt's backup recipe). External memory state is refused.

        A snapshot exists in every disk or in none (``atomic`` is therefore always so). The
        new snapshot is the domain's current one; its parent the previous current one.
        ``progress`` is told how far an internal snapshot's save has come.
        """
        del atomic  # every snapshot is atomic
        name = await self._call(
            "domain_snapshot_create_xml",
            xml=xml,
            disk_only=disk_only,
            halt=halt,
            progress=progress,
            no_metadata=no_metadata,
            reuse_external=reuse_external,
            quiesce=quiesce,
        )
        from .snapshot import DomainSnapshot

        return DomainSnapshot(self, name)

    async def list_all_snapshots(
        self, *, roots: bool = False, leaves: bool | None = None
    ) -> list[DomainSnapshot]:
        """The domain's snapshots, parents before children. ``roots``: only those without a
        parent; ``leaves`` True (False): only those without (with) children."""
        names = await self._call(
            "domain_snapshot_list", of=None, descendants=False, roots=roots, leaves=leaves
        )
        from .snapshot import DomainSnapshot

        return [DomainSnapshot(self, n) for n in names]

    async def snapshot_lookup_by_name(self, name: str) -> DomainSnapshot:
        """The snapshot ``name``; NoDomainSnapshotError if there is none."""
        await self._call("domain_snapshot_info", name=name)
        from .snapshot import DomainSnapshot

        return DomainSnapshot(self, name)

    async def snapshot_current(self) -> DomainSnapshot:
        """The current snapshot (the last taken or reverted to); NoDomainSnapshotError if
        there is none."""
        name = await self._call("domain_snapshot_current")
        if name is None:
            raise NoDomainSnapshotError(f"domain '{self.name}' does not have a current snapshot")
        from .snapshot import DomainSnapshot

        return DomainSnapshot(self, name)

    async def has_current_snapshot(self) -> bool:
        return await self._call("domain_snapshot_current") is not None

    async def revert_to_snapshot(
        self,
        snapshot: DomainSnapshot | str,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Revert the domain to ``snapshot`` (libvirt's revertToSnapshot).

        To a snapshot with memory: the guest runs or is paused as when it was taken (or as
        ``running``/``paused`` say), with its memory and disks as they were. To a shut-off
        snapshot: the domain stops and its disks go back (then boots with ``running``, or
        is left paused with ``paused``). The persistent configuration becomes the
        snapshot's. Events: STOPPED, STARTED, SUSPENDED or RESUMED with detail
        FROM_SNAPSHOT, and DEFINED/FROM_SNAPSHOT when the configuration changes.
        """
        name = snapshot if isinstance(snapshot, str) else snapshot.name
        await self._call(
            "domain_snapshot_revert", name=name, running=running, paused=paused, progress=progress
        )

    # -- save and restore ----------------------------------------------------------------------

    async def save(
        self,
        path: str,
        xml: str | None = None,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Save the running (or paused) guest to the file ``path`` and stop the domain
        (SUSPENDED/PAUSED if it ran, then STOPPED/SAVED); :meth:`Connection.restore` starts
        it again. ``path`` is on the node's host; it is written atomically, and a symlink
        there is refused. ``xml`` replaces the definition kept in the image (the same
        domain); ``running``/``paused`` override whether a restore resumes the guest.
        ``progress`` is told how far the save has come.
        """
        await self._call(
            "domain_save", path=path, xml=xml, running=running, paused=paused, progress=progress
        )

    async def managed_save(
        self,
        *,
        running: bool = False,
        paused: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Save the guest to an image the node keeps for this (persistent) domain and stop
        it (STOPPED/SAVED); the next :meth:`start` restores it (STARTED/RESTORED)."""
        await self._call("domain_managed_save", running=running, paused=paused, progress=progress)

    async def has_managed_save_image(self) -> bool:
        return await self._call("domain_has_managed_save_image")

    async def managed_save_remove(self) -> None:
        """Remove the managed save image: the next start boots the guest afresh."""
        await self._call("domain_managed_save_remove")
