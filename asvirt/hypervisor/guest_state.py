"""A guest's state saved and loaded: what the shared calls ask of a runtime.

Snapshots (:mod:`.snapshots`) and save images (:mod:`.saves`) need more of a running domain
than its lifecycle: to take and load internal snapshots, to write its state to a file, and
to start from saved state instead of booting. A hypervisor driver's runtime (a QEMU runner,
a simulated VM) provides these as :class:`StatefulRuntime`; a start says where the guest's
state comes from with a :data:`StartOrigin`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol, cast

from ..drivers.base import ProgressCallback
from .domains import DomainRuntime
from .secrets import SecretName


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotTarget:
    """A disk an internal snapshot is taken in (or loaded from, or deleted from)."""

    #: The disk's target (``vda``): QEMU's node for it is found by it.
    target: str
    #: Its image (a qcow2 file or block device).
    source: str
    #: ``file`` or ``block``.
    type: str = "file"
    #: The secret of its passphrase, if it is encrypted (LUKS in qcow2): a shut-off disk's
    #: tools need it to open the image (a running QEMU has it already).
    encryption: SecretName | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ExternalTarget:
    """A disk an external snapshot moves onto a new image (an overlay over its old one)."""

    #: The disk's target (``vda``).
    target: str
    #: The image it leaves, which becomes the overlay's backing file, read-only from then on.
    base: str
    #: The base's format (``raw``, ``qcow2`` ...).
    base_format: str
    #: The new image (a qcow2 file).
    overlay: str
    #: The overlay exists already (libvirt's REUSE_EXT: the caller made it); else it is made.
    reuse: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class FromImage:
    """Start by restoring a save image: its state stream is at ``offset`` of ``fd``."""

    fd: int
    offset: int
    #: Bytes of state stream (for progress).
    size: int
    #: The guest was paused when it was saved: a restore that leaves it paused says so
    #: (SUSPENDED/RESTORED; one asked to stay paused says SUSPENDED/PAUSED).
    saved_paused: bool
    progress: ProgressCallback | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FromSnapshot:
    """Start from a snapshot: load the internal snapshot ``name`` (memory and disks) before
    the guest runs; with ``name`` None, boot the disks as they are (a shut-off snapshot
    reverted with running or paused asked)."""

    name: str | None
    disks: tuple[SnapshotTarget, ...] = ()
    progress: ProgressCallback | None = None


#: Where a starting guest's state comes from (None: it boots).
StartOrigin = FromImage | FromSnapshot | None


class StopCause(enum.Enum):
    """Why a runtime is stopped by a state operation (the STOPPED event's detail)."""

    SAVED = "saved"
    FROM_SNAPSHOT = "from-snapshot"


class StatefulRuntime(DomainRuntime, Protocol):
    """A runtime whose guest's state can be saved, loaded and snapshotted."""

    async def start(self, *, paused: bool, origin: StartOrigin = None) -> None:
        """Start the guest, from ``origin`` (see :data:`StartOrigin`)."""
        ...

    async def snapshot_create(
        self, name: str, disks: Sequence[SnapshotTarget], *, progress: ProgressCallback | None
    ) -> None:
        """Take the internal snapshot ``name`` of the running or paused guest, memory state
        included (held in the first disk), and leave the guest as it was. A running guest is
        paused meanwhile (SUSPENDED/PAUSED, then RESUMED/UNPAUSED, as libvirt). Either
        every disk has the snapshot afterwards, or none."""
        ...

    async def snapshot_load(
        self,
        name: str,
        disks: Sequence[SnapshotTarget],
        *,
        running: bool,
        progress: ProgressCallback | None,
    ) -> None:
        """Load the internal snapshot ``name`` into the running guest, which then runs
        (``running``) or stays paused (events FROM_SNAPSHOT)."""
        ...

    async def snapshot_delete(self, name: str, disks: Sequence[SnapshotTarget]) -> None:
        """Delete the internal snapshot ``name`` from the disks of the running guest."""
        ...

    async def snapshot_external(self, disks: Sequence[ExternalTarget]) -> None:
        """Move the disks of the running or paused guest onto their overlays, all at once or
        none (each overlay made first unless it is ``reuse``d; those made are removed
        again if the switch fails); the live definition then names each overlay with its
        base as its backing store."""
        ...

    async def save_state(self, fd: int, *, progress: ProgressCallback | None) -> None:
        """Pause the guest and write its state to ``fd`` from its position; the guest stays
        paused. :meth:`stop` (SAVED) or :meth:`resume_after_save` follows."""
        ...

    async def resume_after_save(self, *, running: bool) -> None:
        """The save could not be kept: run the guest again if it ran before."""
        ...

    async def stop(self, cause: StopCause) -> None:
        """Stop the guest (its state is kept elsewhere); returns once it is gone."""
        ...


def stateful(runtime: DomainRuntime) -> StatefulRuntime:
    """``runtime`` as the stateful runtime every driver's runtime is (checked statically
    in each driver)."""
    return cast(StatefulRuntime, runtime)


__all__ = [
    "FromImage",
    "FromSnapshot",
    "SnapshotTarget",
    "StartOrigin",
    "StatefulRuntime",
    "StopCause",
    "stateful",
]
