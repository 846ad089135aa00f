"""External (disk-only) snapshots: each disk moves onto a new qcow2 image (an *overlay*)
over the image it had, which QEMU then only reads (libvirt's disk-only snapshot, the first
half of every libvirt backup tool's recipe: snapshot, copy the base, block-commit back).

An overlay asvirt makes is a file it creates itself (``O_EXCL | O_NOFOLLOW``, mode 0600:
never an existing file, never through a symbolic link) before ``qemu-img create`` writes
its qcow2 header into it, naming the base and its format. A running disk's base is open
(and locked) by QEMU: the overlay is then made without opening it (``-u``), at the size
QEMU reports. A running domain's disks switch together in one QMP ``transaction`` of
``blockdev-snapshot`` actions: all or none; whatever was made for them (nodes, files) is
undone when anything fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import AsvirtError, OperationInvalidError, SystemCallError
from ...hypervisor.guest_state import ExternalTarget
from ...log import get_logger
from ..storage import qemu_img
from .command import media_nodes
from .nodenames import fresh_index

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from ...conf.devices import Disk
    from ...conf.domain import DomainDef
    from .blockjobs import Layer
    from .runner import RunnerEnv

log = get_logger("asvirt.qemu.snapshot")

#: How long making one overlay may take (it writes a qcow2 header, no data).
CREATE_TIMEOUT = 60.0


def _create_file(path: str) -> None:
    """Create ``path`` empty (mode 0600), refusing one that exists or is a symbolic link."""
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OperationInvalidError(
            f"external snapshot file already exists: {path} (asvirt overwrites no file)"
        ) from None
    except OSError as err:
        raise SystemCallError.from_oserror(err, "create the external snapshot file", path) from None
    os.close(fd)


async def make_overlays(
    disks: Sequence[ExternalTarget],
    *,
    timeout: float,
    sizes: dict[str, int] | None = None,
) -> list[str]:
    """Make the overlay of each disk not ``reuse``d over its base; the files made. With
    ``sizes`` (virtual sizes by target: bases a running QEMU holds) the bases are not opened.
    All or none: on a failure those made are removed again."""
    made: list[str] = []
    try:
        for disk in disks:
            if disk.reuse:
                continue
            _create_file(disk.overlay)
            made.append(disk.overlay)
            args = ["create", "-f", "qcow2", "-b", disk.base, "-F", disk.base_format]
            if sizes is not None:
                args += ["-u", disk.overlay, str(sizes[disk.target])]
            else:
                args.append(disk.overlay)
            await qemu_img.run(
                args,
                what=f"create the external snapshot of disk '{disk.target}' ({disk.overlay})",
                timeout=timeout,
            )
    except BaseException:
        remove_overlays(made)
        raise
    return made


def remove_overlays(paths: Sequence[str]) -> None:
    """Remove overlays asvirt made (a failed snapshot's)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.error("cannot remove an external snapshot file", path=path, error=err.strerror)


class ExternalSnapshotOps:
    """External snapshots of a running QEMU's disks (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        log: BoundLogger
        _live_def: DomainDef
        _env: RunnerEnv

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _quietly(self, command: str, arguments: dict[str, Any]) -> None: ...

        async def chain(self, disk: Disk) -> tuple[str, list[Layer]]: ...

        async def _backend(self, disk: Disk) -> dict[str, Any]: ...

        async def _give_image(self, disk: Disk, path: str, fmt: str) -> None: ...

        def _retain_files(self) -> None: ...

        def _live_changed(self) -> None: ...

        async def follow_block_sources(self, *, save: bool = True) -> None: ...

    async def snapshot_external(self, disks: Sequence[ExternalTarget]) -> None:
        """See :meth:`~asvirt.hypervisor.guest_state.StatefulRuntime.snapshot_external`."""
        by_target = {d.target: d for d in self._live_def.disks}
        live: list[tuple[Disk, ExternalTarget, str]] = []
        sizes: dict[str, int] = {}
        for want in disks:
            disk = by_target.get(want.target)
            if disk is None or disk.source != want.base:
                raise OperationInvalidError(
                    f"disk '{want.target}' of the running guest is not on '{want.base}'"
                )
            _, layers = await self.chain(disk)
            inserted = await self._backend(disk)
            sizes[want.target] = int((inserted.get("image") or {}).get("virtual-size", 0))
            live.append((disk, want, layers[0].node))
        caps = await self._env.capabilities_for(self._live_def)
        made = await make_overlays(disks, timeout=CREATE_TIMEOUT, sizes=sizes)
        added: list[str] = []
        fresh: list[tuple[Disk, ExternalTarget, int]] = []
        index = await fresh_index(self._call, self._live_def)
        try:
            actions = []
            for disk, want, node in live:
                overlay = dataclasses.replace(
                    disk,
                    source=want.overlay,
                    format="qcow2",
                    node_index=index,
                    backing_store=None,
                    encryption=None,
                    copy_on_read=None,
                    iotune=None,
                    readonly=False,
                )
                # QEMU's user writes it from now on (the base keeps what it had).
                await self._give_image(disk, want.overlay, "qcow2")
                nodes = media_nodes(self._live_def, caps, overlay)
                nodes[-1]["backing"] = None  # blockdev-snapshot puts the base there
                for props in nodes:
                    await self.execute("blockdev-add", props)
                    added.append(str(props["node-name"]))
                actions.append(
                    {
                        "type": "blockdev-snapshot",
                        "data": {"node": node, "overlay": str(nodes[-1]["node-name"])},
                    }
                )
                fresh.append((disk, want, index))
                index += 1
            await self.execute("transaction", {"actions": actions})
        except BaseException:
            with contextlib.suppress(AsvirtError):
                for name in reversed(added):
                    await self._quietly("blockdev-del", {"node-name": name})
            remove_overlays(made)
            self._retain_files()
            raise
        for disk, want, n in fresh:
            self.log.info(
                "disk now runs on an external snapshot",
                disk=disk.target,
                source=want.overlay,
                base=want.base,
                operation="snapshot",
            )
            disk.source, disk.format, disk.node_index = want.overlay, "qcow2", n
        self._live_changed()
        # The chains as QEMU has them open now (the live XML's <backingStore>), saved.
        await self.follow_block_sources()


__all__ = ["CREATE_TIMEOUT", "ExternalSnapshotOps", "make_overlays", "remove_overlays"]
