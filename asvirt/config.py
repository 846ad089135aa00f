"""asvirt's configuration: defaults in code, overridable by a TOML file.

The defaults below are also written out, with comments, in ``config/asvirt.toml`` of the
source tree (a test keeps the two equal). An embedded driver reads ``ROOT/etc/asvirt.toml``
when it exists; ``ASVIRT_CONFIG`` names a file that is read instead.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .errors import InvalidArgError


@dataclasses.dataclass(frozen=True)
class QemuConfig:
    #: Seconds a QMP command may take before it fails with OperationTimeoutError.
    qmp_timeout: float = 30.0
    #: Seconds from spawning QEMU to a negotiated QMP session.
    startup_timeout: float = 30.0
    #: Seconds destroy() waits after SIGTERM before sending SIGKILL.
    destroy_grace: float = 10.0
    #: QMP events buffered per domain before the supervisor falls back to a query-status resync.
    event_buffer: int = 256
    #: Seconds a statistics query (query-blockstats...) may take: a QEMU that does not answer
    #: in time only lacks those figures; the other domains' are not held up.
    stats_timeout: float = 5.0
    #: Seconds a guest has to release a device being unplugged (detach_device(); a vCPU:
    #: ACPI eject) — libvirt waits 5 s. Then a device gets DEVICE_REMOVAL_FAILED and stays in
    #: the live XML until the guest releases it; a vCPU unplug fails with OperationTimeoutError.
    unplug_timeout: float = 5.0
    #: Seconds the guest agent may take to answer a call that names no timeout of its own
    #: (fs_freeze, set_time, ...): then the call fails with AGENT_UNRESPONSIVE. (libvirt
    #: waits forever by default; an agent that is not running would hang the caller.)
    agent_timeout: float = 10.0
    #: Run QEMU under its seccomp sandbox (libvirt's seccomp_sandbox): no obsolete system
    #: calls, no privilege changes, no spawning of programs, no resource-limit changes.
    seccomp_sandbox: bool = True
    #: The user QEMU runs as (libvirt's qemu.conf ``user``): a name, or ``+UID`` for a number
    #: no lookup is made for. "" runs QEMU as the supervisor's own user. Anything else needs a
    #: supervisor running as root; QEMU then also runs with no new privileges and no
    #: capabilities, and the files it opens by path are given to that user while it runs.
    user: str = ""
    #: The group QEMU runs as: a name or ``+GID``. "" means the user's own group (from the
    #: user database) when ``user`` is set, else the supervisor's group.
    group: str = ""
    #: Where the domains' own cgroups go (``<cputune>`` bandwidth, ``<memtune>``,
    #: ``<blkiotune>``): a directory below the root of each cgroup hierarchy (libvirt's
    #: machine.slice). A domain gets ``qemu-UUID`` in it, removed when it stops.
    cgroup_parent: str = "machine.asvirt"
    #: Where ``<memoryBacking><source type='file'/>`` guest RAM goes (libvirt's qemu.conf
    #: ``memory_backing_dir``): a directory per running domain, made at start and removed at
    #: stop. "" is the node's ``lib/qemu/ram`` (``ROOT/lib/qemu/ram`` of an embed root).
    memory_backing_dir: str = ""
    #: The directory of QEMU's TLS certificates (libvirt's ``default_tls_x509_cert_dir``):
    #: ``ca-cert.pem``, and ``server-cert.pem``/``server-key.pem`` where QEMU is the server
    #: (SPICE, VNC, a listening chardev), ``client-cert.pem``/``client-key.pem`` where it is
    #: a client (an NBD disk, a connecting chardev). Each ``*_tls_x509_cert_dir`` left ""
    #: means this one.
    default_tls_x509_cert_dir: str = "/etc/pki/qemu"
    #: The UUID of a secret of the secret driver (usage type ``tls``) holding the password of
    #: the private keys when they are encrypted (libvirt's ``default_tls_x509_secret_uuid``):
    #: QEMU gets it through a secret object fed by a pipe (``tls-creds-x509,passwordid=``).
    #: It is the password of VNC's, NBD disks' and TCP chardevs' keys unless their own
    #: ``*_tls_x509_secret_uuid`` or ``*_tls_x509_cert_dir`` is set (libvirt's rule); ""
    #: means the keys are not encrypted. SPICE takes no password (nor does libvirt give one).
    default_tls_x509_secret_uuid: str = ""
    #: SPICE listens on its ``tlsPort`` too (``-spice tls-port=,x509-dir=``): secure channels,
    #: ``defaultMode='secure'`` and automatic TLS ports need it.
    spice_tls: bool = False
    spice_tls_x509_cert_dir: str = ""
    #: VNC speaks TLS (VeNCrypt with x509 certificates; ``-vnc ...,tls-creds=``) ...
    vnc_tls: bool = False
    vnc_tls_x509_cert_dir: str = ""
    #: ... and asks its clients for a certificate signed by the CA (``verify-peer``).
    vnc_tls_x509_verify: bool = True
    vnc_tls_x509_secret_uuid: str = ""
    #: The password of VNC displays whose XML gives none (libvirt's qemu.conf
    #: ``vnc_password``): "" means none. At most 8 bytes (the RFB protocol's DES key). A
    #: configuration file holding it must not be readable by others.
    vnc_password: str = dataclasses.field(default="", repr=False)
    #: The password of SPICE displays whose XML gives none (libvirt's ``spice_password``).
    spice_password: str = dataclasses.field(default="", repr=False)
    #: NBD disks connect over TLS unless their ``<source tls='no'>`` says otherwise (with
    #: False, only those with ``tls='yes'`` do).
    nbd_tls: bool = False
    nbd_tls_x509_cert_dir: str = ""
    nbd_tls_x509_secret_uuid: str = ""
    #: TCP character devices (serial, console, channel, parallel) speak TLS unless their
    #: ``<source tls='no'>`` says otherwise (with False, only those with ``tls='yes'`` do) ...
    chardev_tls: bool = False
    chardev_tls_x509_cert_dir: str = ""
    #: ... and, listening, ask their clients for a certificate signed by the CA.
    chardev_tls_x509_verify: bool = True
    chardev_tls_x509_secret_uuid: str = ""

    def __post_init__(self) -> None:
        for key in ("user", "group"):
            problem = _account_problem(getattr(self, key))
            if problem:
                raise InvalidArgError(f"[qemu] {key} {getattr(self, key)!r}: {problem}")
        if self.memory_backing_dir and not self.memory_backing_dir.startswith("/"):
            raise InvalidArgError(
                f"[qemu] memory_backing_dir {self.memory_backing_dir!r}: not an absolute path"
            )
        if not self.default_tls_x509_cert_dir.startswith("/"):
            raise InvalidArgError(
                f"[qemu] default_tls_x509_cert_dir {self.default_tls_x509_cert_dir!r}: "
                "not an absolute path"
            )
        for area in ("spice", "vnc", "nbd", "chardev"):
            key = f"{area}_tls_x509_cert_dir"
            value = getattr(self, key)
            if value and not value.startswith("/"):
                raise InvalidArgError(f"[qemu] {key} {value!r}: not an absolute path")
        for area in ("default", "vnc", "nbd", "chardev"):
            key = f"{area}_tls_x509_secret_uuid"
            value = getattr(self, key)
            if value and not _is_uuid(value):
                raise InvalidArgError(f"[qemu] {key} {value!r}: not a UUID")
        if len(self.vnc_password.encode()) > 8:
            raise InvalidArgError(
                f"[qemu] vnc_password is {len(self.vnc_password.encode())} characters long, "
                "only 8 permitted (VNC uses no more)"
            )


#: Settings that are passwords: a file holding one must not be readable by others.
_PASSWORDS = (("qemu", "vnc_password"), ("qemu", "spice_password"))


def _check_private(config: object, path: str | os.PathLike[str], mode: int) -> None:
    """Refuse a configuration file that others may read when it holds a password."""
    if not mode & 0o077:
        return
    for section, key in _PASSWORDS:
        if getattr(getattr(config, section, None), key, ""):
            raise InvalidArgError(
                f"{path}: [{section}] {key} is set but the file can be read by others "
                f"(mode {mode & 0o777:04o}); make it 0600"
            )


def _is_uuid(value: str) -> bool:
    from .conf.names import canonical_uuid  # here: the configuration is read cheaply

    try:
        canonical_uuid(value)
    except InvalidArgError:
        return False
    return True


#: The largest user or group id: (uid_t)-1 means "no change" to the kernel.
_MAX_ID = 2**32 - 2


def _account_problem(value: str) -> str | None:
    """Why ``value`` cannot name a user or group (a name, or ``+N``), or None if it can."""
    if value == "":
        return None
    if value.startswith("+"):
        digits = value[1:]
        if not (digits.isascii() and digits.isdigit()) or int(digits) > _MAX_ID:
            return f"'+' must be followed by a number from 0 to {_MAX_ID}"
        return None
    if any(c in ":/" or c.isspace() for c in value) or not value.isprintable():
        return "not a user or group name (nor +NUMBER)"
    return None


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    #: Undelivered events each subscription holds; beyond this the oldest are dropped (counted).
    subscriber_buffer: int = 1024
    #: Events a test driver node (in memory) retains for subscribe(since=...); embed roots
    #: keep theirs on disk, as [journal] says.
    history: int = 1024


@dataclasses.dataclass(frozen=True)
class JournalConfig:
    """The per-node event journal (:class:`asvirt.events.FileJournal`)."""

    #: A new segment file is started once the current one would grow beyond this many bytes.
    segment_bytes: int = 8 * 1024 * 1024
    #: ... or once it is this many seconds old, so that retention by age can free space.
    segment_age: float = 86400.0
    #: The oldest whole segments are deleted while all of them together exceed this.
    retain_bytes: int = 256 * 1024 * 1024
    #: ... and while the newest event of the oldest segment is older than this (seconds).
    retain_age: float = 30 * 86400.0
    #: Seconds an appended event may wait for the fsync that makes it durable; appends in
    #: between share one fsync.
    fsync_interval: float = 0.05
    #: Newest events kept in memory, so that replaying recent history reads no file.
    cache_events: int = 4096


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Virtual networks of an embed root (bridges, dnsmasq, nftables)."""

    #: The dnsmasq program (Debian's dnsmasq-base): DHCP and DNS for each network.
    dnsmasq: str = "dnsmasq"
    #: The nft program (nftables): each network's forwarding and NAT rules.
    nft: str = "nft"
    #: Seconds dnsmasq may take to bind its sockets when a network starts.
    dnsmasq_start_timeout: float = 10.0
    #: Seconds before a dnsmasq that died is started again; doubled after each failed
    #: attempt, up to dnsmasq_restart_max_delay.
    dnsmasq_restart_delay: float = 0.5
    dnsmasq_restart_max_delay: float = 30.0


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    """Storage pools of an embedded QEMU node (``qemu-img`` runs)."""

    #: Seconds a qemu-img run (create, info, resize) may take before it is killed.
    qemu_img_timeout: float = 60.0
    #: Seconds a copy (a clone or conversion with qemu-img convert) may go without reporting
    #: progress before it is killed; a copy that keeps moving may take as long as it needs.
    copy_stall_timeout: float = 600.0


@dataclasses.dataclass(frozen=True)
class SecretConfig:
    """How a node keeps its persistent secrets' values (libvirt's ``secret.conf``)."""

    #: Encrypt the values written (AES-256-GCM, ``UUID.aes256gcm``); false writes them in
    #: base64 (``UUID.base64``), as libvirt before 12.1. Values of either form are read.
    encrypt_data: bool = True
    #: A file holding the 32-byte key (libvirt's ``secrets_encryption_key``); "" is the
    #: systemd credential ``secrets-encryption-key`` (``$CREDENTIALS_DIRECTORY``) when the
    #: service manager passes one, else ``ETC/secrets-encryption-key``, generated once.
    secrets_encryption_key: str = ""

    def __post_init__(self) -> None:
        if self.secrets_encryption_key and not self.secrets_encryption_key.startswith("/"):
            raise InvalidArgError(
                f"[secret] secrets_encryption_key {self.secrets_encryption_key!r}: "
                "not an absolute path"
            )


class _Sections:
    """A configuration file made of TOML tables, each a frozen dataclass of settings."""

    @classmethod
    def from_toml(cls, data: dict[str, Any], *, source: str = "configuration") -> Any:
        """Build the configuration from parsed TOML, rejecting unknown keys and wrong types."""
        sections: dict[str, Any] = {}
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        for field in fields:
            table = data.get(field.name, {})
            if not isinstance(table, dict):
                raise InvalidArgError(f"{source}: [{field.name}] must be a table")
            sections[field.name] = _section(field.type, field.name, table, source)
        unknown = set(data) - {f.name for f in fields}
        if unknown:
            raise InvalidArgError(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
        return cls(**sections)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Any:
        import tomllib  # only when a file is read

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
                mode = os.fstat(f.fileno()).st_mode
        except OSError as err:
            raise InvalidArgError(f"{path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgError(f"{path}: {err}") from None
        config = cls.from_toml(data, source=os.fspath(path))
        _check_private(config, path, mode)
        return config


@dataclasses.dataclass(frozen=True)
class Config(_Sections):
    """A node's configuration (``asvirt.toml``)."""

    qemu: QemuConfig = QemuConfig()
    events: EventsConfig = EventsConfig()
    journal: JournalConfig = JournalConfig()
    network: NetworkConfig = NetworkConfig()
    storage: StorageConfig = StorageConfig()
    secret: SecretConfig = SecretConfig()


@dataclasses.dataclass(frozen=True)
class DaemonSettings:
    """What one client may take of the daemon, and how it stops."""

    #: The largest message a client may send, in bytes; a longer one is refused (and
    #: skipped: the connection survives).
    max_message: int = 4 * 1024 * 1024
    #: Messages queued for a client that does not read them before it is disconnected.
    max_backlog: int = 10_000
    #: Calls of normal priority running at once for one client (high-priority calls —
    #: lookups, state, info, destroy — never wait for one).
    max_workers: int = 8
    #: Seconds of silence after which the daemon pings a client ...
    keepalive_interval: float = 5.0
    #: ... and how many unanswered pings drop it.
    keepalive_count: int = 5
    #: Seconds --shutdown-vms waits for the guests to power off before destroying them.
    shutdown_timeout: float = 120.0
    #: Microseconds, at most, the daemon keeps looking for the next request after a client
    #: was heard before its event loop sleeps (0: never; see asvirt.daemon.session.Readers).
    busy_poll_us: int = dataclasses.field(default=200, metadata={"zero_ok": True})


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """The daemon's Prometheus endpoint."""

    #: ``HOST:PORT`` to serve ``/metrics`` on (``[::1]:9177`` for IPv6); "" serves nothing.
    listen: str = ""

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen)

    def address(self) -> tuple[str, int] | None:
        """The host and port to listen on, or None when the endpoint is off."""
        return parse_listen(self.listen) if self.listen else None


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6ADDR]:PORT``) as a host and a port; InvalidArgError otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgError(f"[metrics] listen {text!r}: expected HOST:PORT")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class DaemonConfig(_Sections):
    """asvirtd's own settings (``asvirtd.toml``); the node's are in ``asvirt.toml``."""

    daemon: DaemonSettings = DaemonSettings()
    metrics: MetricsSettings = MetricsSettings()


_SECTION_TYPES = {
    "QemuConfig": QemuConfig,
    "EventsConfig": EventsConfig,
    "JournalConfig": JournalConfig,
    "DaemonSettings": DaemonSettings,
    "MetricsSettings": MetricsSettings,
    "NetworkConfig": NetworkConfig,
    "StorageConfig": StorageConfig,
    "SecretConfig": SecretConfig,
}


def _section(type_: Any, name: str, table: dict[str, Any], source: str) -> Any:
    section_cls = _SECTION_TYPES[type_] if isinstance(type_, str) else type_
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            raise InvalidArgError(f"{source}: unknown key '{key}' in [{name}]")
        default = field.default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise InvalidArgError(
                f"{source}: [{name}] {key} must be {_a(type(default).__name__)}, not {value!r}"
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            if field.metadata.get("zero_ok") and value < 0:
                raise InvalidArgError(f"{source}: [{name}] {key} must not be negative")
            if not field.metadata.get("zero_ok") and value <= 0:
                raise InvalidArgError(f"{source}: [{name}] {key} must be positive")
        values[key] = value
    try:
        return section_cls(**values)
    except InvalidArgError as err:
        raise InvalidArgError(f"{source}: {err}") from None


def _a(noun: str) -> str:
    """``noun`` with its indefinite article ("an int", "a float")."""
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def load_for_root(root: Path) -> Config:
    """The configuration for an embedded driver rooted at ``root``."""
    return load_file(root / "etc" / "asvirt.toml")


def load_file(path: Path) -> Config:
    """The configuration in ``path`` if it exists (defaults otherwise); ``$ASVIRT_CONFIG``
    names another file instead."""
    env = os.environ.get("ASVIRT_CONFIG")
    if env:
        return Config.load(env)
    if path.exists():
        return Config.load(path)
    return Config()
