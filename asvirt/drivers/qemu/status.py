"""The status file of a QEMU: what a later supervisor needs to find it and carry on.

It is written *before* QEMU is spawned (phase ``starting``, no pid yet), again right after the
spawn (the pid), once the domain runs (phase ``running``: start time, monitor, live XML, state)
and whenever any of these change, and it is removed once QEMU is gone. So whenever a QEMU of
this root may exist, a status file names it: a supervisor killed at any point leaves what the
next one needs to adopt the QEMU or to end it. It also keeps the supervisor's intents (a
reboot in progress, a stop it had begun and why), so that the next supervisor finishes them
with the outcome the first one would have reported.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ... import fsutil
from ...states import DomainState
from .statemachine import MachineSnapshot, StopCause

FORMAT = 3

#: The domain's QEMU is being started: the caller of start() has no answer yet.
STARTING = "starting"
#: start() succeeded (or the QEMU was re-attached): the domain runs.
RUNNING = "running"


@dataclasses.dataclass
class StatusRecord:
    name: str
    uuid: str
    domain_id: int
    #: None until QEMU has been spawned (the record then only says that it may be).
    pid: int | None
    #: Clock ticks since boot (/proc/PID/stat), telling our QEMU from a reused pid; None
    #: until read (right after the spawn it may not be readable yet).
    start_time: int | None
    monitor: str
    #: The live XML (aliases, allocated pty paths, id): what dumpxml shows; re-parsed on
    #: re-attach.
    live_xml: str
    persistent: bool
    autodestroy: bool
    state: int
    reason: int
    phase: str = RUNNING
    shutdown_seen: bool = False
    rebooting: bool = False
    stop_cause: str | None = None
    #: Files given to QEMU's user (``[qemu] user``) while the domain runs: ``{path: [uid,
    #: gid, given_uid, given_gid]}``, their owner and group before and the ones they were
    #: given. Written before the files are changed, so that whoever stops the domain (a later
    #: supervisor too) gives them back.
    chowned: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def machine(self) -> MachineSnapshot:
        return MachineSnapshot(
            state=self.state,
            reason=self.reason,
            shutdown_seen=self.shutdown_seen,
            rebooting=self.rebooting,
            stop_cause=self.stop_cause,
        )

    def to_bytes(self) -> bytes:
        data = {"format": FORMAT, **dataclasses.asdict(self)}
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> StatusRecord:
        data: dict[str, Any] = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a status file holds a JSON object")
        version = data.pop("format", None)
        if version == 2:  # asvirt 0.1's files: running QEMUs survive an upgrade
            data["rebooting"] = data.pop("fake_reboot", False)
        elif version != FORMAT:
            raise ValueError(f"unknown status file format {version!r}")
        missing = [
            f.name
            for f in _FIELDS
            if f.name not in data and f.default is _NO_DEFAULT and f.default_factory is _NO_DEFAULT
        ]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        for field in _FIELDS:
            if field.name in data and not _is_a(data[field.name], field.type):
                raise ValueError(f"field '{field.name}' is not a {field.type}")
        record = cls(**{f.name: data[f.name] for f in _FIELDS if f.name in data})
        for path, owners in record.chowned.items():
            if not (
                isinstance(owners, list)
                and len(owners) == 4
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in owners)
                and path.startswith("/")
            ):
                raise ValueError(f"bad owners of {path!r}: {owners!r}")
        if record.pid is not None and record.pid <= 1:
            raise ValueError(f"bad pid {record.pid}")
        if record.phase not in (STARTING, RUNNING):
            raise ValueError(f"unknown phase {record.phase!r}")
        try:
            DomainState(record.state)
            if record.stop_cause is not None:
                StopCause(record.stop_cause)
        except ValueError as err:
            raise ValueError(f"bad state: {err}") from None
        return record

    def save(self, path: Path, *, durable: bool = True) -> None:
        """Write atomically. ``durable=False`` skips fsync: enough to survive our own death
        (the page cache outlives the process), not a power cut."""
        fsutil.atomic_write(path, self.to_bytes(), durable=durable)

    @classmethod
    def load(cls, path: Path) -> StatusRecord:
        return cls.from_bytes(fsutil.read_nofollow(path))


_FIELDS = dataclasses.fields(StatusRecord)
_NO_DEFAULT = dataclasses.MISSING
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "int | None": (int, type(None)),
    "str | None": (str, type(None)),
    "dict[str, list[int]]": (dict,),
}


def _is_a(value: object, annotation: object) -> bool:
    """Whether a JSON value has the field's type (as the annotation spells it)."""
    types = _TYPES[str(annotation)]
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is no pid
    return isinstance(value, types)


__all__ = ["FORMAT", "RUNNING", "STARTING", "StatusRecord"]
