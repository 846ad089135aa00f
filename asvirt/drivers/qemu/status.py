"""The status file of a running domain: what a restarted supervisor needs to re-attach.

It records the QEMU process (pid and start time, so that a reused pid is not mistaken for
our QEMU), the monitor socket, the live XML and the last known state. It is written
atomically whenever any of these change and removed when QEMU is gone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ... import fsutil

FORMAT = 2


@dataclasses.dataclass
class StatusRecord:
    name: str
    uuid: str
    domain_id: int
    pid: int
    start_time: int
    monitor: str
    #: The live XML (aliases, allocated pty paths, id): what dumpxml shows; re-parsed on
    #: re-attach.
    live_xml: str
    persistent: bool
    autodestroy: bool
    state: int
    reason: int
    shutdown_seen: bool = False
    fake_reboot: bool = False

    def to_bytes(self) -> bytes:
        data = {"format": FORMAT, **dataclasses.asdict(self)}
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> StatusRecord:
        data: dict[str, Any] = json.loads(raw)
        if data.pop("format", None) != FORMAT:
            raise ValueError("unknown status file format")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def save(self, path: Path) -> None:
        fsutil.atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> StatusRecord:
        return cls.from_bytes(path.read_bytes())
