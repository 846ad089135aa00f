"""The names of block jobs: libvirt's, ``KIND-TARGET`` (``pull-vda``, ``commit-vda``,
``active-commit-vda``, ``copy-vda``).

A job's id says which disk it is of and what libvirt calls it (QEMU calls an active commit
``commit``), for whichever supervisor reads it: the one that started it, the next one, the
state machine that turns QEMU's BLOCK_JOB_* events into asvirt's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...drivers.base import BlockJobType
from ...events.types import QEMU_BLOCK_JOB_TYPES

if TYPE_CHECKING:
    from ...conf.devices import Disk

#: libvirt's name of each kind of job (the first part of a job's id), longest first.
KINDS = {
    "active-commit": BlockJobType.ACTIVE_COMMIT,
    "commit": BlockJobType.COMMIT,
    "backup": BlockJobType.BACKUP,
    "pull": BlockJobType.PULL,
    "copy": BlockJobType.COPY,
}


def job_id(kind: str, disk: Disk) -> str:
    """The id of a ``kind`` job (libvirt's name: ``pull``...) on ``disk``."""
    return f"{kind}-{disk.target}"


def job_of(qemu_id: str, qemu_type: str) -> tuple[str, str | None]:
    """libvirt's name of the job QEMU calls ``qemu_id`` (of ``qemu_type``) and the target
    of its disk (None: a job asvirt did not name)."""
    for kind in KINDS:
        if qemu_id.startswith(f"{kind}-") and len(qemu_id) > len(kind) + 1:
            return kind, qemu_id[len(kind) + 1 :]
    return QEMU_BLOCK_JOB_TYPES.get(qemu_type, ""), None
