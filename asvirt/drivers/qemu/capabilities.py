"""What a QEMU binary can do, probed once over QMP and cached on disk.

The probe starts the binary with ``-S -nodefaults -machine none`` (no guest, no devices),
asks it over QMP for its version, machine types, KVM status, CPU models, device and object
types and commands, and asks it to quit. The result is cached per binary path, mtime and size
(and whether ``/dev/kvm`` was usable), as libvirt does, so a QEMU upgrade invalidates it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import trio
from lxml import etree

from ... import fsutil
from ...errors import (
    AsvirtError,
    ConfigUnsupportedError,
    InternalError,
    OperationFailedError,
    SystemCallError,
)
from ...log import get_logger
from . import process
from .monitor import Monitor, MonitorHost

log = get_logger("asvirt.qemu.capabilities")

#: Bump when the cached format changes.
CACHE_FORMAT = 2

KVM_DEVICE = "/dev/kvm"

# libvirt's <os><type arch=...> names -> QEMU's system emulator suffix.
_ARCH_TO_QEMU = {
    "x86_64": "x86_64",
    "i686": "i386",
    "i386": "i386",
    "aarch64": "aarch64",
    "armv7l": "arm",
    "ppc64": "ppc64",
    "ppc64le": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_arch() -> str:
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def find_emulator(arch: str) -> str:
    """The path of ``qemu-system-<arch>`` on PATH, or a ConfigUnsupportedError saying so."""
    suffix = _ARCH_TO_QEMU.get(arch)
    if suffix is None:
        raise ConfigUnsupportedError(f"no QEMU emulator is known for architecture '{arch}'")
    name = f"qemu-system-{suffix}"
    path = shutil.which(name)
    if path is None:
        raise ConfigUnsupportedError(
            f"cannot find '{name}' on PATH (install QEMU, e.g. apt install qemu-system-x86)"
        )
    return path


def kvm_usable() -> tuple[bool, str]:
    """Whether ``/dev/kvm`` can be opened read-write, and if not, why (for error messages)."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return (
            False,
            f"{KVM_DEVICE} does not exist (no KVM on this host, or the module is not loaded)",
        )
    except PermissionError:
        return False, f"{KVM_DEVICE} is not accessible to this user (join the 'kvm' group)"
    except OSError as err:
        return False, f"{KVM_DEVICE} cannot be opened: {err.strerror}"
    os.close(fd)
    return True, ""


@dataclasses.dataclass(frozen=True)
class MachineType:
    name: str
    alias: str | None = None
    is_default: bool = False
    max_cpus: int = 1
    deprecated: bool = False


@dataclasses.dataclass(frozen=True)
class QemuCapabilities:
    """The probed abilities of one QEMU binary."""

    binary: str
    version: tuple[int, int, int]
    package: str
    arch: str
    kvm_present: bool
    kvm_enabled: bool
    machines: tuple[MachineType, ...]
    cpu_models: tuple[str, ...]
    device_types: frozenset[str]
    object_types: frozenset[str]
    commands: frozenset[str]
    #: Command-line options this binary has (``query-command-line-options``): ``sandbox``
    #: is there only when QEMU was built with seccomp.
    cmdline_options: frozenset[str] = frozenset()

    def has_device(self, name: str) -> bool:
        return name in self.device_types

    def has_object(self, name: str) -> bool:
        return name in self.object_types

    def has_command(self, name: str) -> bool:
        return name in self.commands

    def has_option(self, name: str) -> bool:
        return name in self.cmdline_options

    def at_least(self, major: int, minor: int = 0, micro: int = 0) -> bool:
        return self.version >= (major, minor, micro)

    def machine(self, name: str) -> MachineType | None:
        """The machine type called ``name``, or whose alias is ``name`` (``pc``, ``q35``)."""
        for m in self.machines:
            if m.name == name:
                return m
        for m in self.machines:
            if m.alias == name:
                return m
        return None

    def default_machine(self) -> MachineType | None:
        for m in self.machines:
            if m.is_default:
                return m
        return None

    def canonical_machine(self, name: str) -> str:
        """The versioned machine name an alias stands for (``pc`` -> ``pc-i440fx-7.2``)."""
        m = self.machine(name)
        return m.name if m is not None else name

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("device_types", "object_types", "commands", "cmdline_options"):
            data[key] = sorted(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QemuCapabilities:
        return cls(
            binary=data["binary"],
            version=tuple(data["version"]),
            package=data["package"],
            arch=data["arch"],
            kvm_present=data["kvm_present"],
            kvm_enabled=data["kvm_enabled"],
            machines=tuple(MachineType(**m) for m in data["machines"]),
            cpu_models=tuple(data["cpu_models"]),
            device_types=frozenset(data["device_types"]),
            object_types=frozenset(data["object_types"]),
            commands=frozenset(data["commands"]),
            cmdline_options=frozenset(data["cmdline_options"]),
        )


class CapabilitiesCache:
    """Probes each binary once per (path, mtime, size, KVM usability); keeps results on disk."""

    def __init__(self, cache_dir: Path, host: MonitorHost, *, timeout: float) -> None:
        self._dir = cache_dir
        self._host = host
        self._timeout = timeout
        self._memory: dict[tuple[Any, ...], QemuCapabilities] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def get(self, binary: str) -> QemuCapabilities:
        key = _cache_key(binary)
        path = key[0]
        cached = self._memory.get(key)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(path, trio.Lock())
        async with lock:
            cached = self._memory.get(key)
            if cached is None:
                cached = self._load(key)
            if cached is None:
                cached = await probe(path, self._host, use_kvm=key[3], timeout=self._timeout)
                self._store(key, cached)
            self._memory[key] = cached
            return cached

    def _file(self, path: str) -> Path:
        digest = hashlib.sha256(path.encode()).hexdigest()[:16]
        return self._dir / f"{Path(path).name}-{digest}.json"

    def _load(self, key: tuple[Any, ...]) -> QemuCapabilities | None:
        try:
            data = json.loads(self._file(key[0]).read_text())
            if data.get("format") != CACHE_FORMAT or data.get("key") != list(key):
                return None
            return QemuCapabilities.from_json(data["capabilities"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable cache: probe again

    def _store(self, key: tuple[Any, ...], caps: QemuCapabilities) -> None:
        data = {"format": CACHE_FORMAT, "key": list(key), "capabilities": caps.to_json()}
        try:
            fsutil.atomic_write(self._file(key[0]), json.dumps(data, indent=1).encode())
        except OSError as err:
            log.warning("cannot cache QEMU capabilities", path=str(self._dir), error=str(err))


async def probe(
    binary: str, host: MonitorHost, *, use_kvm: bool, timeout: float
) -> QemuCapabilities:
    """Start ``binary`` without a guest and ask it what it can do. Whatever fails is an
    AsvirtError naming ``binary``: SystemCallError for what the system refuses (a socket,
    a pipe, a pidfd), OperationFailedError for a binary that does not run or answer."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as err:
        raise SystemCallError.from_oserror(
            err, f"make a monitor socket to probe '{binary}'"
        ) from None
    accel = "kvm:tcg" if use_kvm else "tcg"
    argv = [
        binary,
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine", f"none,accel={accel}",
        "-chardev", f"socket,id=monitor,fd={theirs.fileno()}",
        "-mon", "chardev=monitor,mode=control",
    ]  # fmt: skip
    # Unlike a guest's QEMU, the probe must not outlive its supervisor: killed mid-probe,
    # it would leave a QEMU waiting forever on a monitor nobody reads. util-linux's setpriv
    # makes the kernel kill it when this process goes (posix_spawn cannot ask for that).
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        if shutil.which(binary) is None:
            raise OperationFailedError(f"cannot run '{binary}': No such file or directory")
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    try:
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
    except OSError as err:
        ours.close()
        theirs.close()
        raise SystemCallError.from_oserror(err, f"make a pipe to probe '{binary}'") from None
    try:
        pid = process.spawn(argv, log_fd=log_w, pass_fds=(theirs.fileno(),))
    except OSError as err:
        for fd in (log_r, log_w):
            os.close(fd)
        ours.close()
        theirs.close()
        raise OperationFailedError(f"cannot run '{binary}': {err.strerror}") from err
    os.close(log_w)
    theirs.close()
    try:
        pidfd = process.watch_child(pid, f"'{binary}' to probe its capabilities")
    except SystemCallError:
        os.close(log_r)
        ours.close()
        raise
    if pidfd is None:  # a child is ours to reap: it cannot be gone
        raise InternalError(f"the probe of '{binary}' (pid {pid}) vanished")
    monitor = None
    try:
        monitor = Monitor(
            host, name=f"probe:{Path(binary).name}", on_event=lambda ev: None, timeout=timeout
        )
        await monitor.connect(ours)
        version = await monitor.execute("query-version")
        machines = await monitor.execute("query-machines")
        kvm = await monitor.execute("query-kvm")
        commands = await monitor.execute("query-commands")
        options = await monitor.execute("query-command-line-options")
        try:
            cpus = await monitor.execute("query-cpu-definitions")
        except AsvirtError:  # QEMU's refusal (a bug of ours is not swallowed)
            cpus = []  # not every target has CPU models
        devices = await monitor.execute(
            "qom-list-types", {"implements": "device", "abstract": False}
        )
        objects = await monitor.execute(
            "qom-list-types", {"implements": "user-creatable", "abstract": False}
        )
        try:
            await monitor.execute("quit", timeout=2)
        except AsvirtError:
            pass  # QEMU may close the socket before replying
    except AsvirtError as err:
        failure: AsvirtError | None = err
    except BaseException:
        process.signal_pidfd(pidfd, 9)
        raise
    else:
        failure = None
    finally:
        if monitor is not None:
            await monitor.close()
        with trio.move_on_after(5) as scope:
            await process.wait_exit(pidfd)
        if scope.cancelled_caught:
            process.signal_pidfd(pidfd, 9)
            await process.wait_exit(pidfd)
        status = process.try_reap(pidfd)
        os.close(pidfd)
        stderr = _drain(log_r)
    if failure is not None:
        # What QEMU said on its way out tells more than the broken session does.
        how = (
            ""
            if status is None
            else f" (it exited with status {status})"
            if status >= 0
            else f" (it was killed by signal {-status})"
        )
        raise OperationFailedError(
            f"'{binary}' did not answer asvirt's capability probe{how}: {stderr.strip() or failure}"
        ) from None
    if not isinstance(version, dict):
        raise InternalError(f"'{binary}' gave an unexpected version reply; stderr: {stderr}")
    q = version["qemu"]
    arch = Path(binary).name.removeprefix("qemu-system-")
    return QemuCapabilities(
        binary=binary,
        version=(q["major"], q["minor"], q["micro"]),
        package=version.get("package", "").strip(),
        arch={"i386": "i686"}.get(arch, arch),
        kvm_present=bool(kvm.get("present")),
        kvm_enabled=bool(kvm.get("enabled")),
        machines=tuple(
            sorted(
                (
                    MachineType(
                        name=m["name"],
                        alias=m.get("alias"),
                        is_default=bool(m.get("is-default")),
                        max_cpus=int(m.get("cpu-max", 1)),
                        deprecated=bool(m.get("deprecated")),
                    )
                    for m in machines
                ),
                key=lambda m: m.name,
            )
        ),
        cpu_models=tuple(sorted(c["name"] for c in cpus)),
        device_types=frozenset(d["name"] for d in devices),
        object_types=frozenset(o["name"] for o in objects),
        commands=frozenset(c["name"] for c in commands),
        cmdline_options=frozenset(o["option"] for o in options),
    )


def capabilities_xml(caps: QemuCapabilities, *, kvm_ok: bool) -> str:
    """libvirt-style capabilities XML for one emulator: host arch, machines, domain types."""
    root = etree.Element("capabilities")
    host = etree.SubElement(root, "host")
    cpu = etree.SubElement(host, "cpu")
    etree.SubElement(cpu, "arch").text = host_arch()
    guest = etree.SubElement(root, "guest")
    etree.SubElement(guest, "os_type").text = "hvm"
    arch = etree.SubElement(guest, "arch", name=caps.arch)
    etree.SubElement(arch, "wordsize").text = "64" if caps.arch.endswith("64") else "32"
    etree.SubElement(arch, "emulator").text = caps.binary
    for m in caps.machines:
        etree.SubElement(arch, "machine", maxCpus=str(m.max_cpus)).text = m.name
        if m.alias:
            etree.SubElement(
                arch, "machine", canonical=m.name, maxCpus=str(m.max_cpus)
            ).text = m.alias
    etree.SubElement(arch, "domain", type="qemu")
    if kvm_ok and caps.kvm_present:
        etree.SubElement(arch, "domain", type="kvm")
    features = etree.SubElement(guest, "features")
    etree.SubElement(features, "acpi", default="on", toggle="yes")
    etree.SubElement(features, "apic", default="on", toggle="no")
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _cache_key(binary: str) -> tuple[str, int, int, bool]:
    # Local stat calls: fast enough not to need a thread.
    path = os.path.realpath(binary)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigUnsupportedError(f"the emulator '{binary}' does not exist") from None
    except OSError as err:  # ELOOP, ENOTDIR, ENAMETOOLONG, EACCES...: libvirt's SYSTEM_ERROR
        raise SystemCallError.from_oserror(err, "check the emulator", binary) from None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise ConfigUnsupportedError(f"the emulator '{binary}' is not an executable file")
    kvm_ok, _ = kvm_usable()
    return (path, st.st_mtime_ns, st.st_size, kvm_ok)


def _drain(fd: int) -> str:
    chunks = []
    try:
        os.set_blocking(fd, False)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()
