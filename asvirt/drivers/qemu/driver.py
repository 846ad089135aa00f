"""The QEMU hypervisor driver (embedded: ``qemu:///embed?root=DIR``).

An embed root is a :class:`QemuNode`: the domain table (persistent configs from
``ROOT/etc/qemu``, transient domains while they run), the event journal under
``ROOT/lib/events``, and one :class:`~.runner.QemuRunner` task per QEMU process. The
domain calls themselves are the shared :class:`~asvirt.hypervisor.domain_driver.DomainDriver`;
:class:`QemuBackend` supplies what is QEMU's own: post-parse with the probed capabilities,
config files, and runners.

One process at a time supervises a root (an exclusive lock on ``ROOT/run/qemu/driver.lock``);
within that process every connection to the root shares the node.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shlex
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import trio

from ... import config as config_mod
from ... import fsutil
from ...conf.devices import Disk, HotplugDevice
from ...conf.domain import DomainDef, parse_domain_xml
from ...conf.names import validate_name
from ...conf.snapshot import SnapshotDef, parse_snapshot_xml
from ...config import Config
from ...errors import (
    AsvirtError,
    ConfigUnsupportedError,
    NoConnectError,
    OperationFailedError,
    OperationInvalidError,
    ResourceBusyError,
    SystemCallError,
    XMLError,
)
from ...events import DomainEvent, EventDetail, EventKind, LifecycleEvent, StoppedDetail
from ...events.journal import FileJournal, MemoryJournal, last_lifecycle
from ...hypervisor.boot import first_open_since_boot
from ...hypervisor.domain_driver import DomainDriver, RuntimeCallbacks
from ...hypervisor.domains import DomainObj
from ...hypervisor.guest_state import ExternalTarget, SnapshotTarget
from ...hypervisor.node import DeferredDriver, Node, NodeLease, open_node
from ...hypervisor.saveimage import FileSink, ImageSink, open_image
from ...hypervisor.snapshots import DiskOp
from ...hypervisor.volumes import resolve_volumes, uses_volumes
from ...log import get_logger
from ...states import ShutoffReason
from ...uri import ConnectURI
from ..base import (
    BlockInfo,
    ClientDriver,
    HypervisorVersion,
    NodeInfo,
    SecurityLabel,
    SecurityModel,
)
from ..local import LocalDriver
from ..network.paths import NetworkPaths
from ..secret import SecretDriver, SecretStore
from ..storage.paths import StoragePaths
from . import helpers, process
from .capabilities import (
    CapabilitiesCache,
    QemuCapabilities,
    capabilities_xml,
    find_emulator,
    host_arch,
    kvm_usable,
)
from .command import domxml_to_native
from .disk_snapshots import snapshot_disks
from .extsnap import make_overlays
from .hotplug import prepare_with_device
from .membacking import backing_dir
from .monitor import MonitorCounters, MonitorHost, monitor_host
from .nodeinfo import host_cpu_count, host_node_info
from .paths import EmbedPaths
from .postparse import parse_prepared_xml, prepare_domain
from .runner import QemuRunner, RunnerEnv
from .security import DacSecurity, resolve_identity
from .stats import ImageSizes
from .status import StatusRecord
from .tls import TlsConfig

if TYPE_CHECKING:
    from ..interfaces import NetworkDriver, StorageDriver
    from ..network.core import NetworkDriverCore
    from ..network.driver import HostNetworkBackend
    from ..storage.driver import DirStorageDriver

log = get_logger("asvirt.qemu")


class QemuBackend:
    """What the shared domain calls need from QEMU."""

    #: Save images this backend writes say so.
    image_driver = "qemu"
    #: A disk whose XML names no format is not read to find one (probing is unsafe).
    unnamed_disk_format: str | None = None

    def __init__(self, node: QemuNode) -> None:
        self._node = node
        self._image_sizes = ImageSizes()

    @property
    def paths(self) -> EmbedPaths:
        return self._node.paths

    #: No security driver labels the guests (libvirt's ``none``: ``virsh dominfo`` says
    #: "Security model: none", DOI "0", and shows no label).
    security_model = SecurityModel("none", "0")
    security_label = SecurityLabel("", False)

    def hostname(self) -> str:
        return socket.gethostname()

    async def capabilities_xml(self) -> str:
        caps = await self._node.capabilities(find_emulator(host_arch()))
        return capabilities_xml(caps, kvm_ok=kvm_usable()[0])

    async def node_info(self) -> NodeInfo:
        return await trio.to_thread.run_sync(host_node_info)

    def host_cpus(self) -> int:
        return host_cpu_count()

    async def hypervisor_version(self) -> HypervisorVersion:
        # As libvirt: the version of the host architecture's emulator.
        caps = await self._node.capabilities(find_emulator(host_arch()))
        return HypervisorVersion("QEMU", caps.version_string)

    def os_type(self, defn: DomainDef) -> str:
        return defn.os.type

    async def domxml_to_native(self, native_format: str, xml: str) -> str:
        defn = parse_domain_xml(xml)
        caps = await self._node.capabilities_for(defn)
        if uses_volumes(defn):
            await resolve_volumes(defn, self._node.storage)
            xml = defn.to_xml()
        argv = domxml_to_native(
            xml,
            caps,
            monitor_path=str(self.paths.monitor(defn.uuid)),
            sandbox=self._node.config.qemu.seccomp_sandbox,
            tls=TlsConfig.from_qemu(self._node.config.qemu),
            nvram_dir=str(self.paths.nvram_dir),
            memory_backing_dir=str(
                backing_dir(
                    self._node.config.qemu.memory_backing_dir, self.paths.memory_backing_dir
                )
            ),
        )
        return shlex.join(argv)

    async def parse(self, xml: str) -> DomainDef:
        defn = parse_domain_xml(xml)
        caps = await self._node.capabilities_for(defn)
        return prepare_domain(defn, caps, nvram_dir=str(self.paths.nvram_dir))

    async def with_device(self, defn: DomainDef, dev: HotplugDevice) -> DomainDef:
        caps = await self._node.capabilities_for(defn)
        nvram_dir = str(self.paths.nvram_dir)
        return prepare_with_device(defn, dev, caps, live=False, nvram_dir=nvram_dir)[0]

    async def save_config(self, defn: DomainDef) -> None:
        data = defn.to_xml().encode()
        path = self.paths.config(defn.name)
        try:
            await trio.to_thread.run_sync(fsutil.atomic_write, path, data)
        except OSError as err:
            raise SystemCallError.from_oserror(err, f"save domain '{defn.name}' to", path) from None

    async def save_autostart(self, obj: DomainObj, autostart: bool) -> None:
        path = self.paths.autostart(obj.name)

        def save() -> None:
            if autostart:
                # Made when first needed, as libvirt does: a root without autostart
                # domains has no such directory.
                fsutil.ensure_private_dir(path.parent)
                fsutil.atomic_write(path, obj.uuid.encode())
            elif path.parent.is_dir():
                fsutil.remove(path)
                fsutil.fsync_dir(path.parent)

        try:
            await trio.to_thread.run_sync(save)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "record the autostart flag in", path) from None

    async def delete_config(self, obj: DomainObj) -> None:
        def delete() -> None:
            fsutil.remove(self.paths.config(obj.name))
            fsutil.remove(self.paths.autostart(obj.name))
            fsutil.remove(self.paths.shutoff(obj.name))
            fsutil.fsync_dir(self.paths.config_dir)

        try:
            await trio.to_thread.run_sync(delete)
        except OSError as err:
            raise SystemCallError.from_oserror(err, f"remove domain '{obj.name}' from") from None

    async def rename_config(self, obj: DomainObj, defn: DomainDef) -> None:
        old, new = obj.name, defn.name

        def rename() -> None:
            # Intent first, then the new configuration, durably: from there on the rename
            # is done, and the next load finishes it if this process dies before it does.
            fsutil.atomic_write(self.paths.renaming(obj.uuid), f"{old}\n{new}\n".encode())
            fsutil.atomic_write(self.paths.config(new), defn.to_xml().encode())
            self._finish_rename(obj.uuid, old, new)

        try:
            await trio.to_thread.run_sync(rename)
        except OSError as err:
            what = f"rename domain '{old}' to '{new}' in"
            raise SystemCallError.from_oserror(err, what) from None

    def _finish_rename(self, uuid: str, old: str, new: str) -> None:
        """Move what is kept by name besides the configuration (the autostart mark, the
        shut-off reason) to the new name, remove the old configuration, forget the intent."""
        if self.paths.autostart(old).is_file():
            fsutil.atomic_write(self.paths.autostart(new), uuid.encode())
            fsutil.remove(self.paths.autostart(old))
            fsutil.fsync_dir(self.paths.autostart(new).parent)
        if self.paths.shutoff(old).is_file():
            os.replace(self.paths.shutoff(old), self.paths.shutoff(new))
        fsutil.remove(self.paths.config(old))
        fsutil.fsync_dir(self.paths.config_dir)
        fsutil.remove(self.paths.renaming(uuid))
        fsutil.fsync_dir(self.paths.run_dir)

    def complete_renames(self) -> None:
        """Renames a process began and did not finish: completed if the new configuration
        was written (it is durable before anything else changes), else forgotten."""
        for intent in self.paths.run_dir.glob("*.rename"):
            try:
                old, new = fsutil.read_nofollow(intent).decode().split()
                validate_name(old)
                validate_name(new)
            except (OSError, ValueError, AsvirtError) as err:
                log.error("ignoring an unreadable rename record", path=str(intent), error=str(err))
                fsutil.remove(intent)
                continue
            if self.paths.config(new).is_file():
                log.info("completing an interrupted rename", old=old, new=new)
                self._finish_rename(intent.stem, old, new)
            else:
                fsutil.remove(intent)

    def check_undefine(self, obj: DomainObj, *, nvram: bool) -> None:
        defn = obj.persistent_def
        if defn is not None and not nvram and helpers.has_nvram_file(defn):
            raise OperationInvalidError(
                f"cannot undefine domain '{obj.name}' with nvram (its UEFI variables are in "
                f"{defn.os.nvram.path if defn.os.nvram else '?'}): undefine it with nvram=True "
                "(virsh undefine --nvram) to remove them too"
            )

    async def remove_state(self, obj: DomainObj, *, nvram: bool, keep_tpm: bool) -> None:
        defn = obj.persistent_def
        if defn is None:
            return
        # A running domain's TPM state is in use by its swtpm: it stays (libvirt removes it
        # when the then transient domain stops; asvirt leaves it, see keep_tpm).
        keep = keep_tpm or obj.runtime is not None
        await trio.to_thread.run_sync(
            functools.partial(
                helpers.remove_domain_state, self.paths, defn, nvram=nvram, keep_tpm=keep
            )
        )

    def create_runtime(
        self,
        obj: DomainObj,
        live_def: DomainDef,
        *,
        domain_id: int,
        autodestroy: bool,
        callbacks: RuntimeCallbacks,
    ) -> QemuRunner:
        if live_def.domain_type == "kvm":
            ok, why = kvm_usable()
            if not ok:
                raise ConfigUnsupportedError(
                    f"domain '{obj.name}' requires KVM, but it is not available: {why}. "
                    "Use <domain type='qemu'> to run it with TCG emulation."
                )
        fsutil.remove(self.paths.shutoff(obj.name))
        return QemuRunner(
            self._node.runner_env(),
            callbacks,
            live_def,
            domain_id=domain_id,
            autodestroy=autodestroy,
        )

    def block_info(self, disk: Disk) -> BlockInfo:
        return self._image_sizes.info(disk)

    def domain_stopped(self, obj: DomainObj, reason: ShutoffReason) -> None:
        if obj.persistent:
            # Later processes (the next CLI command) can still say why it stopped.
            try:
                fsutil.atomic_write(
                    self.paths.shutoff(obj.name), reason.name.encode(), durable=False
                )
            except OSError as err:
                log.warning(
                    "cannot record shutoff reason",
                    domain=obj.name,
                    uuid=obj.uuid,
                    error=str(err),
                )

    # -- snapshots and save images ---------------------------------------------------------------

    async def snapshot_disks(self, op: DiskOp, name: str, disks: Sequence[SnapshotTarget]) -> None:
        await snapshot_disks(
            op,
            name,
            disks,
            timeout=self._node.config.storage.qemu_img_timeout,
            secret_value=lambda secret: self._node.secret_driver.secret_value(*secret)[1],
        )

    async def make_overlays(self, disks: Sequence[ExternalTarget]) -> None:
        await make_overlays(disks, timeout=self._node.config.storage.qemu_img_timeout)

    async def save_snapshot(self, obj: DomainObj, snap: SnapshotDef, *, current: bool) -> None:
        directory = self.paths.snapshot_dir(obj.name)
        path = directory / f"{snap.name}.xml"

        def save() -> None:
            fsutil.ensure_private_dir(self.paths.top("lib") / "qemu")
            fsutil.ensure_private_dir(self.paths.snapshot_root)
            fsutil.ensure_private_dir(directory)
            fsutil.atomic_write(path, snap.to_xml(current=current).encode())

        try:
            await trio.to_thread.run_sync(save)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"save snapshot '{snap.name}' of domain '{obj.name}' to", path
            ) from None

    async def delete_snapshots(self, obj: DomainObj, names: Sequence[str]) -> None:
        directory = self.paths.snapshot_dir(obj.name)

        def delete() -> None:
            if not directory.is_dir():
                return
            for name in names:
                fsutil.remove(directory / f"{name}.xml")
            fsutil.fsync_dir(directory)
            with contextlib.suppress(OSError):
                directory.rmdir()  # once it holds nothing

        try:
            await trio.to_thread.run_sync(delete)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"remove snapshots of domain '{obj.name}' from", directory
            ) from None

    def load_snapshots(self, name: str) -> tuple[list[SnapshotDef], str | None]:
        """The snapshots kept for domain ``name``, and the current one. Unreadable files are
        logged and skipped; if several say current, the newest wins."""
        directory = self.paths.snapshot_dir(name)
        snaps: list[SnapshotDef] = []
        current: SnapshotDef | None = None
        for path in sorted(directory.glob("*.xml")) if directory.is_dir() else []:
            try:
                snap, is_current = parse_snapshot_xml(fsutil.read_nofollow(path), stored=True)
            except (XMLError, OSError, ValueError) as err:
                log.error("ignoring unreadable snapshot", path=str(path), error=str(err))
                continue
            if snap.name != path.stem:
                log.error("ignoring snapshot whose name differs from its file", path=str(path))
                continue
            snaps.append(snap)
            if is_current and (current is None or snap.creation_time >= current.creation_time):
                current = snap
        return snaps, None if current is None else current.name

    def managed_save_sink(self, obj: DomainObj) -> ImageSink:
        try:
            fsutil.ensure_private_dir(self.paths.top("lib") / "qemu")
            fsutil.ensure_private_dir(self.paths.save_dir)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "make", self.paths.save_dir) from None
        return FileSink(self.paths.managed_save(obj.name))

    def managed_save_open(self, obj: DomainObj) -> int:
        return open_image(str(self.paths.managed_save(obj.name)))

    def managed_save_remove(self, obj: DomainObj) -> None:
        path = self.paths.managed_save(obj.name)
        if fsutil.remove(path):
            fsutil.fsync_dir(path.parent)

    def load_shutoff_reason(self, name: str) -> ShutoffReason:
        try:
            return ShutoffReason[self.paths.shutoff(name).read_text().strip()]
        except (OSError, KeyError):
            return ShutoffReason.UNKNOWN


def _lifecycle_of(ev: DomainEvent | None) -> tuple[LifecycleEvent, EventDetail] | None:
    if ev is None or not isinstance(ev.type, LifecycleEvent) or ev.detail is None:
        return None
    return ev.type, ev.detail


class QemuNode(Node):
    """One embed root, supervised by this process."""

    def __init__(
        self, uri: str, paths: EmbedPaths, config: Config, *, autostart: bool = False
    ) -> None:
        # The file journal is opened with the root's lock, in lifetime().
        super().__init__(name=uri, config=config, journal=MemoryJournal(1))
        self.paths = paths
        #: Start autostart domains at the first open after the host booted.
        self.autostart = autostart
        self.backend = QemuBackend(self)
        self.set_domain_driver(DomainDriver(self.table, self.bus, self.backend))
        # The network and storage drivers are made when first needed, or at open if the root
        # has a network or a pool (see DeferredDriver); networks create nothing until one is
        # started (or marked autostart).
        self._network_paths = NetworkPaths(paths.root, paths.tops)
        self._storage_paths = StoragePaths(paths.root, paths.tops)
        self._networks = DeferredDriver(self._load_networks)
        self._pools = DeferredDriver(self._load_pools)
        self._network_backend: HostNetworkBackend | None = None
        self.network = cast("NetworkDriver", self._networks)
        self.storage = cast("StorageDriver", self._pools)
        self.secret_driver = SecretDriver(
            self.bus, SecretStore(paths.root, paths.tops, config.secret)
        )
        self.secrets = self.secret_driver
        self._host: MonitorHost | None = None
        self._caps: CapabilitiesCache | None = None
        #: Who QEMU runs as, and the files given to that user (set up in lifetime()).
        self.security = DacSecurity(None, paths.qemu_socket_dir)
        #: What every domain's monitor counts (QMP deadlines missed).
        self.monitor_counters = MonitorCounters()

    # -- the node's life -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        paths = self.paths
        # [qemu] user and group first: a supervisor that cannot honour them changes nothing.
        self.security = DacSecurity(resolve_identity(self.config.qemu), paths.qemu_socket_dir)
        try:
            paths.create()
            lock_fd = os.open(
                paths.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
        except OSError as err:
            where = f" ({err.filename})" if err.filename and err.filename != str(paths.root) else ""
            raise NoConnectError(
                f"cannot use '{paths.root}' as embed root: {err.strerror or err}{where}"
            ) from None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ResourceBusyError(
                    f"the embed root '{paths.root}' is in use by another process"
                ) from None
            # The durable journal: numbering goes on after the newest event on disk.
            journal = await trio.to_thread.run_sync(
                FileJournal.open, paths.events_dir, self.config.journal
            )
            self.use_journal(journal)
            async with monitor_host() as host:
                self._host = host
                self._caps = CapabilitiesCache(
                    paths.capabilities_dir, host, timeout=self.config.qemu.startup_timeout
                )
                yield
        finally:
            os.close(lock_fd)  # releases the lock

    async def load(self) -> None:
        """Read persistent configs, then find every QEMU a previous process left: adopt those
        that ran, end those whose start never completed or that no status file names.

        Networks come first: re-attached, cleaned up or autostarted before any domain (the
        network and storage drivers are loaded here if the root has a network or a pool,
        else when first needed)."""
        if self._network_paths.in_use():
            await self._networks.get()
        await trio.to_thread.run_sync(self._remove_interrupted_writes)
        await trio.to_thread.run_sync(self.backend.complete_renames)
        if self._storage_paths.in_use():
            await self._pools.get()  # pools first: domains may name their volumes
        await self.secret_driver.load()  # before domains: their disks and TPMs name secrets
        for path in sorted(self.paths.config_dir.glob("*.xml")):
            try:
                defn = parse_prepared_xml(fsutil.read_nofollow(path))
            except (XMLError, OSError, ValueError) as err:
                log.error("ignoring unreadable domain config", path=str(path), error=str(err))
                continue
            if defn.name != path.stem:
                log.error(
                    "ignoring domain config whose name differs from its file name",
                    path=str(path),
                    name=defn.name,
                )
                continue
            try:
                self.table.existing_for(defn)
            except AsvirtError as err:
                log.error("ignoring domain config", path=str(path), error=str(err))
                continue
            obj = DomainObj(defn.name, defn.uuid, defn)
            obj.shutoff_reason = self.backend.load_shutoff_reason(defn.name)
            obj.autostart = self.paths.autostart(defn.name).exists()
            obj.managed_save = self.paths.managed_save(defn.name).is_file()
            obj.snapshots.load(*self.backend.load_snapshots(defn.name))
            self.table.add(obj)
        records = []
        for path in sorted(self.paths.run_dir.glob("*.status")):
            try:
                records.append(StatusRecord.load(path))
            except (OSError, ValueError) as err:
                # Kept for whoever investigates; its QEMU, if any, is found below.
                aside = path.with_name(path.name + ".corrupt")
                log.error(
                    "status file is unreadable; kept aside, its QEMU is ended",
                    path=str(path),
                    kept_as=str(aside),
                    error=str(err),
                )
                with contextlib.suppress(OSError):
                    os.replace(path, aside)
        # Every QEMU of this root in the process table: what the status files name is
        # re-attached; anything else was left by a supervisor that died too early to say.
        running = await trio.to_thread.run_sync(process.find_qemus, str(self.paths.root))
        for record in records:
            self.table.reserve_ids_through(record.domain_id)
            # All of them before any domain is re-attached or found gone: a file is given
            # back to its owner only when no domain holds it any more.
            self.security.adopt(record.uuid, record.chowned, record.name)
        # What subscribers were last told about each: a status file may lag behind it.
        told = last_lifecycle(self.journal, [r.uuid for r in records])
        for record in records:
            found = running.get(record.uuid, [])
            if record.pid is None and found:
                # Spawned, but the supervisor died before it could write down the pid.
                record.pid = found[0].pid
            running[record.uuid] = [q for q in found if q.pid != record.pid]
            await self._reattach(record, told.get(record.uuid))
        for qemus in running.values():
            for qemu in qemus:
                await self._end_unrecorded(qemu)
        # Helpers (swtpm, virtiofsd) whose QEMU is gone or was never spawned.
        alive = {o.uuid for o in self.table if o.runtime is not None}
        await trio.to_thread.run_sync(helpers.sweep_orphans, self.paths, alive)
        if self.autostart and first_open_since_boot(self.paths.run_dir / "autostarted"):
            await self.domains.autostart_all()

    async def _load_networks(self) -> NetworkDriverCore:
        from ..network.driver import host_network_driver

        core, backend = host_network_driver(
            self.paths.root, self.config.network, self.bus, self.paths.tops
        )
        await backend.load(core, self.nursery)
        self._network_backend = backend
        self.network = core
        return core

    async def _load_pools(self) -> DirStorageDriver:
        from ..storage.driver import DirStorageDriver

        driver = DirStorageDriver(self.paths.root, self.config.storage, self.paths.tops)
        driver.secrets = self.secret_driver
        await driver.load()
        self.storage = driver
        return driver

    async def _reattach(self, record: StatusRecord, told: DomainEvent | None) -> None:
        obj = self.table.find(record.uuid)
        try:
            live_def = parse_prepared_xml(record.live_xml, live=True)
            if live_def.uuid != record.uuid:
                raise XMLError("its live XML is another domain's")
            if obj is None:
                # A transient domain: its name must still be free.
                self.table.existing_for(live_def)
        except AsvirtError as err:
            path = self.paths.status(record.name)
            aside = path.with_name(path.name + ".corrupt")
            log.error(
                "cannot re-attach: bad status file; kept aside, its QEMU is ended",
                path=str(path),
                kept_as=str(aside),
                error=str(err),
            )
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            if record.pid is not None:
                await self._end_unrecorded(process.FoundQemu(record.pid, record.uuid, record.name))
            self.security.release(record.uuid)
            return
        if obj is None:
            obj = DomainObj(record.name, record.uuid, None)
            self.table.add(obj)
        runner = QemuRunner(
            self.runner_env(),
            self.domains.callbacks_for(obj),
            live_def,
            domain_id=record.domain_id,
            autodestroy=record.autodestroy,
        )
        obj.runtime = runner
        try:
            await runner.attach(record, told=_lifecycle_of(told))
        except (AsvirtError, OSError) as err:
            # The runner has reported the domain as stopped.
            log.info(
                "domain stopped while unsupervised",
                domain=record.name,
                uuid=record.uuid,
                pid=record.pid,
                operation="attach",
                error=str(err),
            )
            return
        if record.autodestroy:
            # The process that asked for autodestroy is gone for good.
            await runner.destroy()

    def _remove_interrupted_writes(self) -> None:
        """Temporary files of atomic writes a killed process never renamed into place."""
        snapshot_dirs = (
            [d for d in self.paths.snapshot_root.iterdir() if d.is_dir()]
            if self.paths.snapshot_root.is_dir()
            else []
        )
        for directory in (
            self.paths.config_dir,
            self.paths.run_dir,
            self.paths.save_dir,
            *snapshot_dirs,
        ):
            for leftover in directory.glob(".*.tmp"):
                log.info("removing an interrupted write", path=str(leftover))
                fsutil.remove(leftover)

    async def _end_unrecorded(self, qemu: process.FoundQemu) -> None:
        """End a QEMU of this root that no status file names, and report it."""
        log.warning(
            "ending a QEMU no status file names (its supervisor died while starting it)",
            pid=qemu.pid,
            uuid=qemu.uuid,
            domain=qemu.name,
        )
        await trio.to_thread.run_sync(process.kill_and_wait, qemu.pid, qemu.uuid)
        obj = self.table.find(qemu.uuid)
        if obj is not None and obj.active:
            return  # a duplicate: the domain itself runs, in the QEMU that was re-attached
        name = obj.name if obj is not None else qemu.name
        if obj is not None:
            obj.shutoff_reason = ShutoffReason.FAILED
            self.backend.domain_stopped(obj, ShutoffReason.FAILED)
        self.bus.publish(
            domain=name,
            uuid=qemu.uuid,
            kind=EventKind.LIFECYCLE,
            type=LifecycleEvent.STOPPED,
            detail=StoppedDetail.FAILED,
        )

    async def shutdown(self) -> None:
        """Leave every QEMU running, supervised by nobody until the root is opened again."""
        runners = [o.runtime for o in self.table if isinstance(o.runtime, QemuRunner)]
        for runner in runners:
            runner.detach()
        for runner in runners:
            await runner.wait_done()
        self.security.remove_socket_dirs()
        if not runners:
            # Nothing runs that could use a socket there, nor will until the root is opened
            # again (which makes the directory anew): it would stay in /tmp for good.
            self.paths.remove_socket_dir()
        if self._network_backend is not None:
            await self._network_backend.shutdown(self._networks.loaded)

    # -- what runners and the backend need -----------------------------------------------------

    async def capabilities(self, binary: str) -> QemuCapabilities:
        if self._caps is None:
            raise OperationFailedError("the QEMU driver is not running")
        return await self._caps.get(binary)

    async def capabilities_for(self, defn: DomainDef) -> QemuCapabilities:
        return await self.capabilities(defn.emulator or find_emulator(defn.arch))

    def runner_env(self) -> RunnerEnv:
        assert self._host is not None
        return RunnerEnv(
            paths=self.paths,
            config=self.config.qemu,
            host=self._host,
            nursery=self.nursery,
            capabilities_for=self.capabilities_for,
            security=self.security,
            plug_interfaces=self._plug_interfaces,
            unplug_interfaces=_unplug_interfaces,
            monitor_counters=self.monitor_counters,
            secret_value=self.secret_driver.secret_value,
        )

    def qmp_timeouts(self) -> int:
        return self.monitor_counters.timeouts

    async def _plug_interfaces(self, defn: DomainDef) -> dict[str, list[int]]:
        from ..network.driver import plug_interfaces

        on_network = any(nic.type == "network" for nic in defn.interfaces)
        return await plug_interfaces(defn, await self._networks.get() if on_network else None)


def _unplug_interfaces(defn: DomainDef) -> None:
    from ..network.driver import unplug_interfaces

    unplug_interfaces(defn)


@contextlib.asynccontextmanager
async def open_embedded(
    uri: ConnectURI, config: Config | None, client: object
) -> AsyncIterator[ClientDriver]:
    """The client driver of the embed root ``uri`` names (``qemu:///embed?root=DIR``): this
    process's node on it (the family's opener, :func:`asvirt.drivers.qemu.open_qemu`, sends
    every other QEMU URI to a daemon)."""
    root_param = uri.param("root")
    if not root_param or not os.path.isabs(root_param):
        raise NoConnectError(f"'{uri.uri}': root= must be an absolute directory path")
    unknown = set(uri.params) - {"root", "autostart"}
    if unknown:
        raise NoConnectError(f"'{uri.uri}': unknown parameter(s): {', '.join(sorted(unknown))}")
    # One node per directory, however it is spelled (symlinks, "..").
    root = Path(await trio.Path(root_param).resolve())
    autostart = uri.param("autostart", "0")
    if autostart not in ("0", "1"):
        raise NoConnectError(f"'{uri.uri}': autostart= is 0 or 1")
    lease = await open_qemu_node(EmbedPaths(root), config, autostart=autostart == "1")
    driver = LocalDriver(lease, client)
    try:
        yield driver
    finally:
        with trio.CancelScope(shield=True):
            await driver.close()


async def open_qemu_node(
    paths: EmbedPaths, config: Config | None = None, *, autostart: bool = False
) -> NodeLease:
    """A lease on the QEMU node kept in ``paths`` (opening it if this process has not);
    ``autostart``: start autostart domains if this is the first open since the host booted."""

    def make() -> QemuNode:
        # Read before anything is built from it (the event bus sizes its buffers from it).
        node_config = config or config_mod.load_file(paths.config_file)
        name = (
            f"qemu:///embed?root={paths.root}" if not paths.tops else f"qemu (state {paths.root})"
        )
        return QemuNode(name, paths, node_config, autostart=autostart)

    return await open_node(("qemu", str(paths.root)), make)


__all__ = ["QemuBackend", "QemuNode", "open_embedded", "open_qemu_node"]
