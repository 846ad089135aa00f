"""What a domain needs on the host besides QEMU: helper programs, NVRAM, host devices.

Before QEMU is spawned, :meth:`DomainHelpers.start`:

* copies the UEFI NVRAM template to the domain's own NVRAM file on its first start (kept
  with the domain under ``ROOT/lib/qemu/nvram``; ``undefine(nvram=True)`` removes it);
* checks that assigned host devices (PCI, USB, a passed-through TPM) exist, refusing the
  start with the reason when one does not;
* starts the helper programs, each supervised like QEMU: a ``swtpm`` for an emulated TPM
  (its state under ``ROOT/lib/swtpm/UUID``, created with ``swtpm_setup`` the first time)
  a ``virtiofsd`` per virtiofs share and a ``vhost-user-gpu`` per vhost-user video
  (:mod:`.vhostusergpu`). asvirt binds each one's listening socket and passes it (no polling
  for a socket to appear), or for vhost-user-gpu one end of a socketpair whose other end
  QEMU inherits (:attr:`DomainHelpers.qemu_fds`), as libvirt does; their stderr goes to a
  per-domain log (``ROOT/log/qemu/NAME-swtpm.log``, ``NAME-fs0-virtiofsd.log``,
  ``NAME-video0-vhost-user-gpu.log``), and a watcher task reports a helper that dies while
  its domain runs.

Helpers are recorded in ``ROOT/run/qemu/NAME.helpers`` *before* each is spawned (and again
with its pid right after), and they carry ``ASVIRT_ROOT`` and ``ASVIRT_HELPER`` in their
environment: a supervisor that dies at any point leaves helpers the next one finds, either
re-adopted with their re-attached QEMU or ended (:func:`sweep_orphans`). They are stopped
after QEMU (:meth:`DomainHelpers.stop`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ... import fsutil
from ...conf.domain import DomainDef
from ...conf.extdevices import TPM
from ...errors import (
    ConfigUnsupportedError,
    OperationFailedError,
    OperationUnsupportedError,
    SystemCallError,
)
from ...hypervisor.secrets import tpm_secret
from ...log import get_logger
from ..secret import secret_pipes
from . import process
from .command_more import swtpm_socket, virtiofs_socket
from .interop import vhost_user_binaries
from .netdisk import check_network_disks
from .paths import EmbedPaths
from .postparse_extra import check_more_host_devices
from .secrets import SecretLookup
from .vhostusergpu import find_gpu_backend, gpu_argv

log = get_logger("asvirt.qemu.helpers")

#: In a helper's environment: ``UUID:NAME`` of the domain and helper it serves.
HELPER_ENV = "ASVIRT_HELPER"
#: The cipher of an encrypted TPM state (libvirt's choice too).
CIPHER = "aes-256-cbc"
#: How long swtpm_setup may take to create a TPM's state.
SETUP_DEADLINE = 60.0
#: How long a helper has to end after SIGTERM before it is killed.
STOP_GRACE = 5.0
#: Where distributions install virtiofsd (Debian 12's QEMU ships the C one in /usr/lib/qemu).
VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", "/usr/bin/virtiofsd")


def nvram_dir(paths: EmbedPaths) -> Path:
    return paths.nvram_dir


def swtpm_dir(paths: EmbedPaths, uuid: str) -> Path:
    return paths.root / "lib" / "swtpm" / uuid


def helpers_file(paths: EmbedPaths, name: str) -> Path:
    return paths.run_dir / f"{name}.helpers"


@dataclasses.dataclass
class HelperRecord:
    """One helper process of a domain, as written in ``NAME.helpers``."""

    kind: str  # swtpm | virtiofsd | vhost-user-gpu
    name: str  # swtpm | fs0 | video0 ...
    socket: str  # "" for a helper on a socketpair
    pid: int | None = None
    start_time: int | None = None


# ---------------------------------------------------------------------------------------------
# per-domain state kept with the definition


def ensure_nvram(defn: DomainDef, paths: EmbedPaths | None = None) -> bool:
    """Create the domain's NVRAM from its template if it has none yet; True if created.

    The file is private and written atomically; a symlink or anything but a regular file
    at its place is refused (someone else would choose what the guest's firmware writes).
    """
    loader, nvram = defn.os.loader, defn.os.nvram
    if loader is None or loader.type != "pflash" or nvram is None or nvram.path is None:
        return False
    path = Path(nvram.path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise SystemCallError.from_oserror(err, "use the NVRAM file", path) from None
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OperationFailedError(
                f"the NVRAM file '{path}' of domain '{defn.name}' is not a regular file "
                "(a symlink?); refusing to use it"
            )
        return False
    if nvram.template is None:
        raise OperationFailedError(
            f"domain '{defn.name}' has no NVRAM file '{path}' and no template to create it from"
        )
    try:
        if paths is not None and path.parent == nvram_dir(paths):
            for d in (paths.root / "lib", paths.root / "lib" / "qemu", path.parent):
                fsutil.ensure_private_dir(d)
        data = fsutil.read_nofollow(nvram.template)
        fsutil.atomic_write(path, data)
    except OSError as err:
        raise SystemCallError.from_oserror(
            err, f"create the NVRAM of domain '{defn.name}' at", path
        ) from None
    return True


def remove_domain_state(paths: EmbedPaths, defn: DomainDef, *, nvram: bool, keep_tpm: bool) -> None:
    """What undefine removes besides the config: the NVRAM (asked for), TPM state (unless
    kept). Raises SystemCallError if a file cannot be removed."""
    try:
        if nvram and defn.os.nvram is not None and defn.os.nvram.path:
            fsutil.remove(defn.os.nvram.path)
        if not keep_tpm:
            state = swtpm_dir(paths, defn.uuid)
            if state.is_dir() and not state.is_symlink():
                shutil.rmtree(state)
    except OSError as err:
        raise SystemCallError.from_oserror(
            err, f"remove the state of domain '{defn.name}'"
        ) from None


def has_nvram_file(defn: DomainDef) -> bool:
    nv = defn.os.nvram
    return nv is not None and nv.path is not None and os.path.lexists(nv.path)


# ---------------------------------------------------------------------------------------------
# host devices


#: The host's side of every virtio socket (QEMU opens it for vhost-vsock-pci).
VHOST_VSOCK = "/dev/vhost-vsock"


def drop_missing_sources(defn: DomainDef, *, cold_boot: bool) -> list[str]:
    """Apply the disks' ``startupPolicy`` to sources missing at start (in place), as libvirt
    does: 'optional' ones are dropped, and so are 'requisite' ones unless the guest boots
    afresh (a restore or a revert); a cdrom or floppy is left empty, a disk removed from
    the running definition. 'mandatory' (the default) leaves it to the start to fail.
    Returns the targets of the disks changed."""
    dropped: list[str] = []
    for disk in list(defn.disks):
        policy = disk.startup_policy
        if disk.source is None or policy not in ("optional", "requisite"):
            continue
        if policy == "requisite" and cold_boot:
            continue
        if os.path.lexists(disk.source):
            continue
        if disk.device in ("cdrom", "floppy"):
            disk.source = None
        else:
            defn.disks.remove(disk)
        dropped.append(disk.target)
    return dropped


def check_host_devices(defn: DomainDef) -> None:
    """Refuse a start whose assigned host devices are not there (a clear reason each)."""
    for hd in defn.hostdevs:
        if hd.type == "pci":
            where = Path("/sys/bus/pci/devices") / str(hd.pci)
            if not where.exists():
                raise OperationFailedError(
                    f"host PCI device {hd.pci} of domain '{defn.name}' does not exist "
                    f"({where} is missing)"
                )
            driver = where / "driver"
            bound = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
            if bound != "vfio-pci":
                raise OperationFailedError(
                    f"host PCI device {hd.pci} is bound to {bound or 'no driver'}, not vfio-pci; "
                    "asvirt does not detach host drivers (bind it to vfio-pci first)"
                )
        elif hd.usb_bus is not None:
            dev = Path(f"/dev/bus/usb/{hd.usb_bus:03d}/{hd.usb_device:03d}")
            if not dev.exists():
                raise OperationFailedError(
                    f"host USB device {hd.usb_bus}.{hd.usb_device} of domain '{defn.name}' "
                    f"does not exist ({dev} is missing)"
                )
        elif not _usb_present(hd.usb_vendor or 0, hd.usb_product or 0):
            raise OperationFailedError(
                f"host USB device {hd.usb_vendor:04x}:{hd.usb_product:04x} of domain "
                f"'{defn.name}' is not plugged in"
            )
    for inp in defn.inputs:
        if inp.evdev is not None and not os.path.exists(inp.evdev):
            raise OperationFailedError(
                f"the host input device {inp.evdev} of domain '{defn.name}' does not exist"
            )
    if defn.vsock is not None and not os.path.exists(VHOST_VSOCK):
        raise OperationFailedError(
            f"the <vsock> of domain '{defn.name}' needs {VHOST_VSOCK}, which this host does "
            "not have (load the vhost_vsock kernel module)"
        )
    for tpm in defn.tpms:
        if tpm.backend == "passthrough" and not os.path.exists(tpm.device_path or ""):
            raise OperationFailedError(
                f"the host TPM {tpm.device_path} of domain '{defn.name}' does not exist"
            )
    check_more_host_devices(defn)


def _usb_present(vendor: int, product: int) -> bool:
    for dev in Path("/sys/bus/usb/devices").glob("*"):
        try:
            v = int((dev / "idVendor").read_text(), 16)
            p = int((dev / "idProduct").read_text(), 16)
        except (OSError, ValueError):
            continue
        if (v, p) == (vendor, product):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# helper programs


def find_virtiofsd(configured: str | None) -> str:
    """The virtiofsd to run: the one ``<binary path>`` names, else the first QEMU's vhost-user
    descriptors of type ``fs`` name (as libvirt finds it), else the distribution's."""
    candidates = (
        [configured]
        if configured
        else [*vhost_user_binaries("fs"), *VIRTIOFSD_PATHS, shutil.which("virtiofsd")]
    )
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    if configured:
        raise ConfigUnsupportedError(
            f"unsupported configuration: the virtiofsd '{configured}' is not an executable"
        )
    raise ConfigUnsupportedError(
        "unsupported configuration: virtiofs needs virtiofsd, which is not installed "
        f"(looked for {', '.join(VIRTIOFSD_PATHS)} and on PATH; apt install virtiofsd)"
    )


def find_swtpm() -> tuple[str, str]:
    swtpm, setup = shutil.which("swtpm"), shutil.which("swtpm_setup")
    if swtpm is None or setup is None:
        raise ConfigUnsupportedError(
            "unsupported configuration: an emulated TPM needs swtpm and swtpm_setup, which "
            "are not installed (apt install swtpm swtpm-tools)"
        )
    return swtpm, setup


class DomainHelpers:
    """The helper processes of one running domain."""

    def __init__(self, paths: EmbedPaths, defn: DomainDef, name: str, runtime_dir: str) -> None:
        self.paths = paths
        self.defn = defn
        self.name = name
        self.runtime_dir = runtime_dir
        self.records: list[HelperRecord] = []
        self._pidfds: dict[str, int] = {}
        self._stopping = False
        self._watchers: list[trio.CancelScope] = []
        self.log = log.bind(domain=name, uuid=defn.uuid)
        #: Called with (helper name, exit status) when a helper dies while the domain runs.
        self.on_death: Callable[[str, int | None], None] | None = None
        #: QEMU's pidfd (None until spawned): a helper ending with its QEMU is no failure.
        self.qemu_pidfd: Callable[[], int | None] = lambda: None
        #: The node's secrets (an encrypted TPM state's passphrase); None: no secret driver.
        self.secret_lookup: SecretLookup | None = None
        #: Device alias -> QEMU's end of the socketpair of a helper it talks to (a
        #: vhost-user-gpu): for QEMU to inherit, closed here once QEMU has it.
        self.qemu_fds: dict[str, int] = {}

    # -- records ---------------------------------------------------------------------------------

    def _save(self) -> None:
        data = json.dumps([dataclasses.asdict(r) for r in self.records], indent=1).encode()
        try:
            fsutil.atomic_write(helpers_file(self.paths, self.name), data)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"record the helpers of domain '{self.name}' in"
            ) from None

    @classmethod
    def load(cls, paths: EmbedPaths, defn: DomainDef, name: str) -> DomainHelpers:
        """The helpers a previous supervisor recorded for ``name`` (none if no record)."""
        helpers = cls(paths, defn, name, str(paths.socket_dir))
        try:
            raw = json.loads(fsutil.read_nofollow(helpers_file(paths, name)))
            helpers.records = [HelperRecord(**r) for r in raw]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as err:
            helpers.log.error("helper record unreadable; its helpers are swept", error=str(err))
        return helpers

    # -- starting -------------------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """NVRAM, host device checks and helper programs, before QEMU is spawned."""
        d = self.defn
        await trio.to_thread.run_sync(ensure_nvram, d, self.paths)
        await trio.to_thread.run_sync(check_host_devices, d)
        await trio.to_thread.run_sync(check_network_disks, d)
        for tpm in d.tpms:
            if tpm.backend == "emulator":
                await self._start_swtpm(tpm)
        for i, fs in enumerate(d.filesystems):
            if fs.driver == "virtiofs" and fs.source_socket is None:
                await self._start_virtiofsd(fs, fs.alias or f"fs{i}")
        for i, video in enumerate(d.videos):
            if video.driver_name == "vhostuser":
                await self._start_vhost_user_gpu(video, video.alias or f"video{i}")
        if self.records:
            self.watch(nursery)

    def tpm_passphrase(self, tpm: TPM) -> bytes | None:
        """The passphrase of an encrypted TPM state (its ``vtpm`` secret), or None."""
        if tpm.encryption_secret is None:
            return None
        if self.secret_lookup is None:
            raise OperationUnsupportedError("this node has no secret driver")
        return self.secret_lookup(*tpm_secret(tpm))[1]

    async def _start_swtpm(self, tpm: TPM) -> None:
        """swtpm_setup the first time, then swtpm. An encrypted state's passphrase goes to
        both through pipes (``--pwdfile-fd``, ``--key pwdfd=``), as libvirt gives it, with
        AES-256-CBC; the migration key is the same passphrase, so that the state QEMU
        fetches for a migration or a save leaves swtpm encrypted too."""
        version, banks = tpm.version or "2.0", tpm.pcr_banks
        passphrase = self.tpm_passphrase(tpm)
        swtpm, setup = find_swtpm()
        tpm2 = version == "2.0"
        state = swtpm_dir(self.paths, self.defn.uuid) / ("tpm2" if tpm2 else "tpm1.2")
        logfile = self.paths.log_dir / f"{self.name}-swtpm.log"
        try:
            for d in (
                self.paths.root / "lib",
                self.paths.root / "lib" / "swtpm",
                state.parent,
                state,
            ):
                fsutil.ensure_private_dir(d)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "create the TPM state directory") from None
        permall = "tpm2-00.permall" if tpm2 else "tpm-00.permall"
        if not (state / permall).exists():
            argv = [setup, *(["--tpm2"] if tpm2 else []), "--tpm-state", str(state)]
            argv += ["--vmid", f"{self.name}:{self.defn.uuid}", "--logfile", str(logfile)]
            argv += ["--createek", "--create-ek-cert", "--create-platform-cert"]
            argv += ["--lock-nvram", "--not-overwrite"]
            if banks and tpm2:
                argv += ["--pcr-banks", ",".join(banks)]
            with secret_pipes({"pwd": passphrase} if passphrase is not None else {}) as fds:
                if fds:
                    argv += ["--pwdfile-fd", str(fds["pwd"]), "--cipher", CIPHER]
                await self._run_setup(argv, logfile, pass_fds=tuple(fds.values()))
        sock = swtpm_socket(self.runtime_dir, self.defn.uuid)
        argv = [swtpm, "socket", "--ctrl", "type=unixio,fd={fd}"]
        # (swtpm refuses --log fd=2; it opens its log itself, in our private log directory.)
        argv += ["--tpmstate", f"dir={state},mode=0600", "--log", f"file={logfile},level=1"]
        argv.append("--terminate")
        if tpm2:
            argv.append("--tpm2")
        keys = {"key": passphrase, "mig": passphrase} if passphrase is not None else {}
        with secret_pipes(keys) as fds:
            for option, key in (("--key", "key"), ("--migration-key", "mig")):
                if key in fds:
                    argv += [option, f"pwdfd={fds[key]},mode={CIPHER}"]
            await self._spawn("swtpm", "swtpm", sock, argv, logfile, extra_fds=tuple(fds.values()))

    async def _run_setup(
        self, argv: list[str], logfile: Path, *, pass_fds: tuple[int, ...] = ()
    ) -> None:
        with trio.move_on_after(SETUP_DEADLINE) as scope:
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, pass_fds=pass_fds
            )
        if scope.cancelled_caught:
            raise OperationFailedError(
                f"swtpm_setup did not create the TPM state of domain '{self.name}' within "
                f"{SETUP_DEADLINE:.0f} s"
            )
        if result.returncode != 0:
            why = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise OperationFailedError(
                f"swtpm_setup failed for domain '{self.name}' (see {logfile}): {why[-500:]}"
            )

    async def _start_virtiofsd(self, fs: Any, alias: str) -> None:
        binary = find_virtiofsd(fs.binary_path)
        if not await trio.Path(fs.source_dir).is_dir():
            raise OperationFailedError(
                f"the shared directory '{fs.source_dir}' of domain '{self.name}' does not exist"
            )
        opts = [f"source={fs.source_dir.replace(',', ',,')}"]
        if fs.cache_mode is not None:
            opts.append(f"cache={fs.cache_mode}")
        if fs.binary_xattr is not None:
            opts.append("xattr" if fs.binary_xattr == "on" else "no_xattr")
        if fs.sandbox_mode is not None:
            opts.append(f"sandbox={fs.sandbox_mode}")
        if fs.lock_posix is not None:
            opts.append("posix_lock" if fs.lock_posix == "on" else "no_posix_lock")
        if fs.lock_flock is not None:
            opts.append("flock" if fs.lock_flock == "on" else "no_flock")
        argv = [binary, "--fd={fd}", "-o", ",".join(opts)]
        if fs.thread_pool_size is not None:
            argv.append(f"--thread-pool-size={fs.thread_pool_size}")
        sock = virtiofs_socket(self.runtime_dir, self.defn.uuid, alias)
        logfile = self.paths.log_dir / f"{self.name}-{alias}-virtiofsd.log"
        await self._spawn("virtiofsd", alias, sock, argv, logfile)

    async def _start_vhost_user_gpu(self, video: Any, alias: str) -> None:
        """The GPU of a vhost-user video, on a socketpair whose other end QEMU gets."""
        where = f"video '{alias}' of domain '{self.name}'"
        backend = await trio.to_thread.run_sync(find_gpu_backend, video)
        argv = gpu_argv(backend, video, where)
        logfile = self.paths.log_dir / f"{self.name}-{alias}-vhost-user-gpu.log"
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as err:
            raise SystemCallError.from_oserror(err, f"start vhost-user-gpu for {where}") from None
        try:
            await self._spawn("vhost-user-gpu", alias, "", argv, logfile, conn=ours)
        except BaseException:
            theirs.close()
            raise
        finally:
            ours.close()
        self.qemu_fds[alias] = theirs.detach()

    def close_qemu_fds(self) -> None:
        """Close QEMU's ends of the helpers' socketpairs (once QEMU has them, or never will)."""
        for fd in self.qemu_fds.values():
            os.close(fd)
        self.qemu_fds = {}

    async def _spawn(
        self,
        kind: str,
        name: str,
        sock: str,
        argv: list[str],
        logfile: Path,
        *,
        extra_fds: tuple[int, ...] = (),
        conn: socket.socket | None = None,
    ) -> None:
        """Start helper ``name`` on a listening socket bound at ``sock``, or on ``conn``
        (a connected socket: the helper's end of a socketpair)."""
        record = HelperRecord(kind=kind, name=name, socket=sock)
        self.records.append(record)
        # Recorded before it exists: a supervisor dying now leaves the next one a name.
        await trio.to_thread.run_sync(self._save)
        listener = None
        log_fd = -1
        try:
            if conn is None:
                listener = fsutil.bind_unix_listener(sock)
                fd = listener.fileno()
            else:
                fd = conn.fileno()
            log_fd = fsutil.open_private_append(logfile)
            argv = [a.replace("{fd}", str(fd)) for a in argv]
            env = {
                process.ROOT_ENV: str(self.paths.root),
                HELPER_ENV: f"{self.defn.uuid}:{name}",
            }
            record.pid = process.spawn(argv, log_fd=log_fd, pass_fds=(fd, *extra_fds), env=env)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"start {kind} for domain '{self.name}'"
            ) from None
        finally:
            if listener is not None:
                listener.close()
            if log_fd >= 0:
                os.close(log_fd)
        pidfd = process.watch_child(record.pid, f"{kind} for domain '{self.name}'")
        if pidfd is None:
            raise OperationFailedError(f"{kind} of domain '{self.name}' exited at once ({logfile})")
        self._pidfds[name] = pidfd
        record.start_time = process.read_start_time(record.pid)
        await trio.to_thread.run_sync(self._save)
        self.log.info("helper started", helper=kind, name=name, pid=record.pid)

    # -- re-attaching -----------------------------------------------------------------------------

    def adopt(self, nursery: trio.Nursery) -> None:
        """Watch the helpers a previous supervisor started (those still alive)."""
        for record in self.records:
            if record.pid is None:
                continue
            pidfd = process.open_pidfd(record.pid)
            if pidfd is None:
                continue
            if not _is_helper(record.pid, self.defn.uuid, record.name):
                os.close(pidfd)
                continue
            self._pidfds[record.name] = pidfd
        if self._pidfds:
            self.watch(nursery)

    # -- watching and stopping ------------------------------------------------------------------

    def watch(self, nursery: trio.Nursery) -> None:
        """One watcher task per helper, reporting a death while the domain runs."""

        async def watch_one(name: str, pidfd: int) -> None:
            scope = trio.CancelScope()
            self._watchers.append(scope)
            with scope:
                await process.wait_exit(pidfd)
                qemu = self.qemu_pidfd()
                if qemu is not None:
                    # Helpers end when QEMU closes their socket, i.e. as QEMU exits: give
                    # QEMU's own exit a moment to become visible before calling this a death.
                    # (A duplicate: the runner already waits on QEMU's pidfd itself.)
                    dup = os.dup(qemu)
                    try:
                        with trio.move_on_after(2):
                            await process.wait_exit(dup)
                            return
                    finally:
                        os.close(dup)
                if self._stopping:
                    return
                status = process.try_reap(pidfd)
                self.log.error(
                    "a helper of the domain died; the device it serves stops working",
                    helper=name,
                    exit_status=status,
                )
                if self.on_death is not None:
                    self.on_death(name, status)

        for name, pidfd in self._pidfds.items():
            nursery.start_soon(watch_one, name, pidfd)

    async def stop(self) -> None:
        """After QEMU: end every helper (SIGTERM, SIGKILL after a grace), forget them."""
        self._stopping = True
        for scope in self._watchers:
            scope.cancel()
        for record in self.records:
            pidfd = self._pidfds.pop(record.name, None)
            if (
                pidfd is None
                and record.pid is not None
                and _is_helper(record.pid, self.defn.uuid, record.name)
            ):
                pidfd = process.open_pidfd(record.pid)
            if pidfd is not None:
                await _end(pidfd)
            if record.socket:
                fsutil.remove(record.socket)
        self.close_qemu_fds()
        self.records = []
        fsutil.remove(helpers_file(self.paths, self.name))

    def detach(self) -> None:
        """Leave the helpers running with their QEMU (the next supervisor adopts them)."""
        self._stopping = True
        for scope in self._watchers:
            scope.cancel()
        for name, pidfd in list(self._pidfds.items()):
            pid = next((r.pid for r in self.records if r.name == name), None)
            if pid is not None and process.is_child(pid):
                process.adopt_orphan(pidfd)
            else:
                os.close(pidfd)
        self._pidfds.clear()

    def pids(self) -> list[int]:
        return [r.pid for r in self.records if r.pid is not None]


async def _end(pidfd: int) -> None:
    try:
        process.signal_pidfd(pidfd, signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            await process.wait_exit(pidfd)
            return
        process.signal_pidfd(pidfd, signal.SIGKILL)
        with trio.move_on_after(STOP_GRACE):
            await process.wait_exit(pidfd)
    finally:
        process.try_reap(pidfd)
        os.close(pidfd)


def _is_helper(pid: int, uuid: str, name: str) -> bool:
    """True if ``pid`` is (still) the helper ``name`` of domain ``uuid``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{HELPER_ENV}={uuid}:{name}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def find_helpers(root: str) -> list[tuple[int, str]]:
    """(pid, domain UUID) of every live helper started for ``root``."""
    marker = f"{process.ROOT_ENV}={root}".encode()
    prefix = f"{HELPER_ENV}=".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker not in env:
            continue
        for item in env:
            if item.startswith(prefix):
                uuid = item[len(prefix) :].decode(errors="replace").partition(":")[0]
                found.append((int(entry), uuid))
    return found


def sweep_orphans(paths: EmbedPaths, keep_uuids: set[str]) -> int:
    """End helpers of this root whose domain is not running; remove stale records.

    Blocking (run it in a thread). Returns how many processes were ended.
    """
    ended = 0
    for pid, uuid in find_helpers(str(paths.root)):
        if uuid in keep_uuids:
            continue
        log.warning("ending a helper whose domain is not running", pid=pid, uuid=uuid)
        pidfd = process.open_pidfd(pid)
        if pidfd is None:
            continue
        try:
            process.signal_pidfd(pidfd, signal.SIGKILL)
            ended += 1
            with contextlib.suppress(OSError):
                import select

                select.select([pidfd], [], [], STOP_GRACE)
            process.try_reap(pidfd)
        finally:
            os.close(pidfd)
    for record_file in paths.run_dir.glob("*.helpers"):
        name = record_file.name[: -len(".helpers")]
        if not paths.status(name).exists():
            fsutil.remove(record_file)
    return ended


__all__ = [
    "HELPER_ENV",
    "DomainHelpers",
    "check_host_devices",
    "drop_missing_sources",
    "ensure_nvram",
    "find_virtiofsd",
    "has_nvram_file",
    "nvram_dir",
    "remove_domain_state",
    "sweep_orphans",
    "swtpm_dir",
]
