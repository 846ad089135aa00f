"""Block jobs and resizes of a running domain's disks (libvirt's ``virDomainBlockResize``,
``virDomainBlockPull``, ``virDomainBlockCommit``, ``virDomainBlockJobAbort`` ...).

QEMU runs the jobs; this mixin of :class:`~.runner.QemuRunner` starts them, finds them again
(``query-block-jobs``: a job outlives the supervisor that started it) and keeps the live
definition saying what QEMU uses. Jobs are named as libvirt names them, ``KIND-TARGET``
(:mod:`.blockjob_names`): the id says which disk a job is of and what libvirt calls it,
for whichever supervisor reads it, and QEMU refuses a second job of the same id.

A disk's image opens its backing chain itself (its format node names no ``backing``), so
the layers below the top have QEMU's own node names (but those an external snapshot put
below an overlay, which keep their numbers: :mod:`.nodenames`): they are found by file name
in ``query-named-block-nodes``, following the chain ``query-block`` shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import trio

from ...conf.devices import DISK_FORMATS, BackingStore, Disk
from ...drivers.base import BlockJobInfo, BlockJobType
from ...errors import (
    InvalidArgError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
)
from .blockjob_names import KINDS, job_id, job_of
from .hotplug import backend_holder
from .nodenames import fresh_index, index_of
from .savevm import RESYNC_EVENT

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from ...conf.domain import DomainDef
    from ...hypervisor.domain_driver import RuntimeCallbacks
    from .runner import RunnerEnv
    from .security import DacSecurity

#: The formats whose node is an image's (not a filter's or the storage's).
_IMAGE_FORMATS = frozenset({"qcow2", "raw", "qed", "vmdk", "vdi", "vpc", "vhdx", "luks"})
_STORAGE_DRIVERS = frozenset({"file", "host_device"})
_END_EVENTS = ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One image of a disk's backing chain, as QEMU has it open."""

    node: str
    path: str
    format: str


def find_layer(chain: list[Layer], disk: Disk, name: str) -> int:
    """The index in ``chain`` of the image ``name`` names: a path, or ``TARGET[N]`` (N: the
    depth below the top, 0 the top itself; libvirt's N numbers its nodes instead).
    InvalidArgError if it is not there."""
    if name.endswith("]") and "[" in name:
        target, _, index = name[:-1].partition("[")
        if target == disk.target and index.isdigit() and int(index) < len(chain):
            return int(index)
    else:
        for i, layer in enumerate(chain):
            if layer.path == name:
                return i
    raise InvalidArgError(f"could not find image '{name}' in chain for '{disk.target}'")


def _ours(
    found: list[str], graph: dict[str, Any], above: str | None, inserted: dict[str, Any]
) -> list[str]:
    """Of the nodes ``found`` (one image, open more than once), those that are the backing
    child of the node ``above`` in ``x-debug-query-block-graph``'s ``graph``; for the top
    (``above`` None), the disk's own (its backend's root, or a node just below it)."""
    ids = {n.get("name"): n.get("id") for n in graph.get("nodes", [])}
    if above is None:
        root = inserted.get("node-name")
        if root in found:
            return [str(root)]
        above_id, edge = ids.get(root), None
    else:
        above_id, edge = ids.get(above), "backing"
    children = {
        e.get("child")
        for e in graph.get("edges", [])
        if e.get("parent") == above_id and (edge is None or e.get("name") == edge)
    }
    return [name for name in found if ids.get(name) in children]


def _local_image(disk: Disk) -> bool:
    """Whether ``disk`` has an image on this host (whose chain QEMU shows)."""
    return disk.net is None and disk.source is not None and disk.type in ("file", "block")


def _layer_index(named: list[dict[str, Any]], path: str, fmt: object) -> int | None:
    """The number of the node QEMU has ``path`` open as (its ``query-named-block-nodes``,
    flat) if it has one of libvirt's names and only one node of that image has."""
    found = {
        index
        for n in named
        if n.get("file") == path
        and n.get("drv") == fmt
        and (index := index_of(n.get("node-name"))) is not None
    }
    return found.pop() if len(found) == 1 else None


class BlockJobOps:
    """Block jobs of a QEMU runner's disks (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        log: BoundLogger
        _live_def: DomainDef
        _cancelled_jobs: set[str]
        _callbacks: RuntimeCallbacks
        _env: RunnerEnv
        _uuid: str

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        def watch_events(
            self, *names: str
        ) -> contextlib.AbstractContextManager[trio.MemoryReceiveChannel[dict[str, Any]]]: ...

        def _live_changed(self) -> None: ...

        def _save_status(self, durable: bool = True) -> None: ...

        async def _quietly(self, command: str, arguments: dict[str, Any]) -> None: ...

        def _security(self) -> DacSecurity | None: ...

        def _retain_files(self) -> None: ...

        def _persist_status(self, durable: bool = True) -> None: ...

    # -- what QEMU has open ---------------------------------------------------------------------

    async def _backend(self, disk: Disk) -> dict[str, Any]:
        """``query-block``'s ``inserted`` of ``disk``."""
        for block in await self._call("query-block"):
            if backend_holder(str(block.get("qdev") or "")) == disk.alias and block.get("inserted"):
                return dict(block["inserted"])
        raise OperationInvalidError(f"disk '{disk.target}' has no media in the running guest")

    async def chain(self, disk: Disk) -> tuple[str, list[Layer]]:
        """The root node of ``disk``'s backend and its images, top first."""
        inserted = await self._backend(disk)
        nodes = await self._call("query-named-block-nodes", {"flat": True})
        graph: dict[str, Any] | None = None
        layers: list[Layer] = []
        image: dict[str, Any] | None = inserted.get("image")
        while image is not None:
            path, fmt = str(image.get("filename", "")), str(image.get("format", ""))
            # A raw image without a format node is its storage node ("file", ...): the
            # top, or the base an external snapshot put below an overlay.
            if fmt in _IMAGE_FORMATS or fmt in _STORAGE_DRIVERS:
                found = [
                    str(n["node-name"])
                    for n in nodes
                    if n.get("file") == path and n.get("drv") == fmt
                ]
                if len(found) > 1:
                    # The same image open for another disk too (a shared backing file):
                    # this disk's is the one its layer above has as backing (QEMU's graph).
                    if graph is None:
                        graph = await self._call("x-debug-query-block-graph")
                    found = _ours(found, graph, layers[-1].node if layers else None, inserted)
                if len(found) != 1:
                    raise OperationFailedError(
                        f"cannot find the node of image '{path}' of disk '{disk.target}'"
                    )
                layers.append(Layer(found[0], path, fmt))
            image = image.get("backing-image")
        if not layers:
            raise OperationFailedError(f"cannot find the images of disk '{disk.target}'")
        return str(inserted["node-name"]), layers

    async def _job(self, disk: Disk) -> dict[str, Any] | None:
        """QEMU's ``query-block-jobs`` entry of ``disk``'s job, if it has one."""
        for job in await self._call("query-block-jobs"):
            if job_of(str(job.get("device", "")), str(job.get("type", "")))[1] == disk.target:
                return dict(job)
        return None

    async def _refuse_busy(self, disk: Disk) -> None:
        if await self._job(disk) is not None:
            raise OperationInvalidError(f"disk '{disk.target}' already in active block job")

    async def follow_block_sources(self, *, save: bool = True) -> None:
        """Make the live definition's disks say which image each disk's device now uses
        (a job may have pivoted it onto another) and the chain below it (``<backingStore>``),
        as QEMU has them open; ``save``: write the status file at once when one changed."""
        if not any(_local_image(d) for d in self._live_def.disks):
            return
        changed = False
        retired: list[str] = []
        moved: list[tuple[str, str, str, str | None]] = []
        named = await self._call("query-named-block-nodes", {"flat": True})
        for block in await self._call("query-block"):
            holder = backend_holder(str(block.get("qdev") or ""))
            disk = next((d for d in self._live_def.disks if d.alias == holder), None)
            inserted = block.get("inserted")
            if disk is None or not _local_image(disk) or not inserted:
                continue
            if inserted.get("drv") not in _IMAGE_FORMATS | _STORAGE_DRIVERS:
                continue  # a filter on top (throttle, copy-on-read): its chain is not shown
            image = inserted.get("image") or {}
            path, fmt = image.get("filename"), image.get("format")
            if fmt in _STORAGE_DRIVERS:
                fmt = "raw"  # a raw image without a format node (a pivot onto a raw base)
            if not isinstance(path, str) or path.startswith("json:"):
                continue
            before = disk.node_names
            chain = []
            below = image.get("backing-image")
            while isinstance(below, dict) and isinstance(below.get("filename"), str):
                layer_format = below.get("format")
                if layer_format in _STORAGE_DRIVERS:
                    layer_format = "raw"  # a raw image without a format node
                chain.append(
                    BackingStore(
                        str(below["filename"]),
                        layer_format if layer_format in DISK_FORMATS else None,
                        index=_layer_index(named, str(below["filename"]), below.get("format")),
                    )
                )
                below = below.get("backing-image")
            if path != disk.source:
                self.log.info(
                    "disk now runs on another image",
                    disk=disk.target,
                    source=path,
                    was=disk.source,
                    operation="blockjob",
                )
                left = disk.source
                assert left is not None  # a local image's
                moved.append((disk.target, left, path, fmt if fmt in DISK_FORMATS else None))
                disk.source = path
                if fmt in DISK_FORMATS:
                    disk.format = fmt
                # The disk's number is that of the node it runs on now (one the command
                # line, a hotplug, a snapshot or a copy named; none for one QEMU named).
                disk.node_index = index_of(inserted.get("node-name"))
                changed = True
            if chain != disk.backing_store:
                disk.backing_store = chain
                changed = True
            # The images it left (a pivot's, a commit's or pull's from below), as they
            # were opened with their numbers: closed (QEMU keeps them open otherwise), as
            # libvirt does.
            now = set(disk.node_names)
            retired += [n for n in before if n not in now]
        if changed:
            self._live_changed()
            if save:
                self._save_status(durable=True)
        for target, old, new, new_format in moved:
            await self._callbacks.disk_moved(target, old, new, new_format)
        for node in retired:
            if any(n.get("node-name") == node for n in await self._call("query-named-block-nodes")):
                await self._quietly("blockdev-del", {"node-name": node})

    # -- the calls ------------------------------------------------------------------------------

    async def block_resize(self, disk: Disk, size: int) -> None:
        """Resize ``disk``'s image (its top) to ``size`` bytes, as the guest then sees it."""
        _, layers = await self.chain(disk)
        await self.execute("block_resize", {"node-name": layers[0].node, "size": size})

    async def block_pull(self, disk: Disk, bandwidth: int, base: str | None) -> None:
        """Start streaming ``disk``'s backing chain (above ``base``) into its top image."""
        _, layers = await self.chain(disk)
        if len(layers) < 2:
            raise InvalidArgError(f"disk '{disk.target}' has no backing file to pull from")
        arguments: dict[str, Any] = {"job-id": job_id("pull", disk), "device": layers[0].node}
        if base is not None:
            at = find_layer(layers, disk, base)
            if at == 0:
                raise InvalidArgError(
                    f"could not find base image '{base}' in chain below the top of '{disk.target}'"
                )
            arguments["base-node"] = layers[at].node
        await self._refuse_busy(disk)
        await self.execute("block-stream", {**arguments, "speed": bandwidth})

    async def block_commit(
        self,
        disk: Disk,
        base: str | None,
        top: str | None,
        bandwidth: int,
        *,
        active: bool,
        shallow: bool,
    ) -> None:
        """Start committing ``top`` (default: the top) of ``disk``'s chain into ``base``
        (default: the bottom; ``shallow``: the image below ``top``); the top itself only
        ``active``ly (libvirt's rules)."""
        root, layers = await self.chain(disk)
        top_at = 0 if top is None else find_layer(layers, disk, top)
        if top_at + 1 >= len(layers):
            raise InvalidArgError(
                f"top '{layers[top_at].path}' in chain for '{disk.target}' has no backing file"
            )
        if base is not None:
            base_at = find_layer(layers, disk, base)
        else:
            base_at = top_at + 1 if shallow else len(layers) - 1
        if base_at <= top_at:
            raise InvalidArgError(
                f"could not find base image '{layers[base_at].path}' in chain below "
                f"'{layers[top_at].path}' of '{disk.target}'"
            )
        if top_at == 0 and not active:
            raise InvalidArgError(f"commit of '{disk.target}' active layer requires active flag")
        if top_at != 0 and active:
            raise InvalidArgError(
                f"active commit requested but '{layers[top_at].path}' is not active"
            )
        await self._refuse_busy(disk)
        base_layer = layers[base_at]
        kind = "active-commit" if active else "commit"
        arguments = {
            "job-id": job_id(kind, disk),
            "device": root,
            "top-node": layers[top_at].node,
            "base-node": base_layer.node,
            "speed": bandwidth,
        }
        # QEMU writes into the base: its user gets it, as a disk's image (and back when
        # the job ends and the disk does not use it).
        await self._give_image(disk, base_layer.path, base_layer.format)
        try:
            await self.execute("block-commit", arguments)
        except BaseException:
            self._retain_files()
            raise

    async def block_copy(
        self,
        disk: Disk,
        dest: BackingStore,
        bandwidth: int,
        *,
        shallow: bool,
        reuse_ext: bool,
    ) -> None:
        """Start mirroring ``disk`` onto ``dest`` (see DomainRuntime.block_copy)."""
        root, _ = await self.chain(disk)
        await self._refuse_busy(disk)
        arguments: dict[str, Any] = {
            "job-id": job_id("copy", disk),
            "device": root,
            "target": dest.source,
            "sync": "top" if shallow else "full",
            "mode": "existing" if reuse_ext else "absolute-paths",
            "speed": bandwidth,
        }
        if dest.format is not None:
            arguments["format"] = dest.format
        if (dest.format or disk.format) != "raw":
            # The copy's format node gets its number (the disk's after the pivot); QEMU
            # names its storage node (it opens the file itself).
            index = await fresh_index(self._call, self._live_def)
            arguments["node-name"] = f"libvirt-{index}-format"
        if reuse_ext:  # (an image QEMU makes is its user's already)
            await self._give_image(disk, dest.source, dest.format or "raw")
        try:
            await self.execute("drive-mirror", arguments)
        except BaseException:
            self._retain_files()
            raise

    async def _give_image(self, disk: Disk, path: str, fmt: str) -> None:
        """Give QEMU's user (the node's or the domain's DAC label's) the image ``path`` a job
        of ``disk`` will write, as a disk plugged with it would be given; nothing without
        confinement."""
        security = self._security()
        if security is None:
            return
        caps = await self._env.capabilities_for(self._live_def)
        probe = self._live_def.copy()
        probe.disks = [
            dataclasses.replace(disk, source=path, format=fmt, backing_store=None, readonly=False)
        ]
        security.prepare(self._uuid, probe, probe.emulator or caps.binary)
        self._persist_status(durable=True)  # names the file before it is given
        security.apply(self._uuid)

    async def block_job_info(self, disk: Disk) -> BlockJobInfo | None:
        """``disk``'s job as QEMU runs it, or None."""
        job = await self._job(disk)
        if job is None:
            return None
        kind, _ = job_of(str(job.get("device", "")), str(job.get("type", "")))
        return BlockJobInfo(
            type=KINDS.get(kind, BlockJobType.UNKNOWN),
            bandwidth=int(job.get("speed", 0)),
            cur=int(job.get("offset", 0)),
            end=int(job.get("len", 0)),
            ready=bool(job.get("ready", False)),
        )

    async def block_job_set_speed(self, disk: Disk, bandwidth: int) -> None:
        job = await self._needed_job(disk)
        await self.execute("block-job-set-speed", {"device": job["device"], "speed": bandwidth})

    async def block_job_abort(self, disk: Disk, *, pivot: bool, wait: bool) -> None:
        """End ``disk``'s job: pivot a ready copy or active commit onto its new image
        (``pivot``), else cancel it (a ready one stops where it is); ``wait``: return once
        QEMU has ended it (the live definition then says what the disk uses)."""
        job = await self._needed_job(disk)
        name = str(job["device"])
        kind, _ = job_of(name, str(job.get("type", "")))
        if pivot:
            if kind not in ("copy", "active-commit"):
                raise OperationUnsupportedError(f"job type '{kind}' does not support pivot")
            if not job.get("ready"):
                raise OperationInvalidError(f"block job '{name}' not ready for pivot yet")
        with self.watch_events(*_END_EVENTS) as events:
            if pivot:
                await self.execute("block-job-complete", {"device": name})
            else:
                # A ready job that is cancelled ends "completed" for QEMU (a point-in-time
                # copy is left): for libvirt, and the event, it was canceled.
                self._cancelled_jobs.add(name)
                await self.execute("block-job-cancel", {"device": name})
            if wait:
                await self._wait_end(name, events)

    async def _needed_job(self, disk: Disk) -> dict[str, Any]:
        job = await self._job(disk)
        if job is None:
            raise OperationInvalidError(f"disk {disk.target} does not have an active block job")
        return job

    async def _wait_end(self, name: str, events: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        async for event in events:
            if event.get("event") == RESYNC_EVENT:
                jobs = await self._call("query-block-jobs")
                if not any(j.get("device") == name for j in jobs):
                    return
            elif (event.get("data") or {}).get("device") == name:
                error = (event.get("data") or {}).get("error")
                if error and event.get("event") == "BLOCK_JOB_COMPLETED":
                    raise OperationFailedError(f"block job '{name}' failed: {error}")
                return
        raise OperationInvalidError("domain is not running")
