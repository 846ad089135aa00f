"""asvirt's configuration: defaults in code, overridable by a TOML file.

The defaults below are also written out, with comments, in ``config/asvirt.toml`` of the
source tree (a test keeps the two equal). An embedded driver reads ``ROOT/etc/asvirt.toml``
when it exists; ``ASVIRT_CONFIG`` names a file that is read instead.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
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
    #: Run QEMU under its seccomp sandbox (libvirt's seccomp_sandbox): no obsolete system
    #: calls, no privilege changes, no spawning of programs, no resource-limit changes.
    seccomp_sandbox: bool = True


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
class StorageConfig:
    """Storage pools of an embedded QEMU node (``qemu-img`` runs)."""

    #: Seconds a qemu-img run (create, info, resize) may take before it is killed.
    qemu_img_timeout: float = 60.0
    #: Seconds a copy (a clone or conversion with qemu-img convert) may go without reporting
    #: progress before it is killed; a copy that keeps moving may take as long as it needs.
    copy_stall_timeout: float = 600.0


@dataclasses.dataclass(frozen=True)
class Config:
    qemu: QemuConfig = QemuConfig()
    events: EventsConfig = EventsConfig()
    journal: JournalConfig = JournalConfig()
    storage: StorageConfig = StorageConfig()

    @classmethod
    def from_toml(cls, data: dict[str, Any], *, source: str = "configuration") -> Config:
        """Build a Config from parsed TOML, rejecting unknown keys and wrong types."""
        sections: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            table = data.get(field.name, {})
            if not isinstance(table, dict):
                raise InvalidArgError(f"{source}: [{field.name}] must be a table")
            sections[field.name] = _section(field.type, field.name, table, source)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InvalidArgError(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
        return cls(**sections)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgError(f"{path}: {err}") from None
        return cls.from_toml(data, source=os.fspath(path))


_SECTION_TYPES = {
    "QemuConfig": QemuConfig,
    "EventsConfig": EventsConfig,
    "JournalConfig": JournalConfig,
    "StorageConfig": StorageConfig,
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
                f"{source}: [{name}] {key} must be a {type(default).__name__}, not {value!r}"
            )
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise InvalidArgError(f"{source}: [{name}] {key} must be positive")
        values[key] = value
    return section_cls(**values)


def load_for_root(root: Path) -> Config:
    """The configuration for an embedded driver rooted at ``root``."""
    env = os.environ.get("ASVIRT_CONFIG")
    if env:
        return Config.load(env)
    path = root / "etc" / "asvirt.toml"
    if path.exists():
        return Config.load(path)
    return Config()
