"""The storage driver of a QEMU node: ``dir`` pools, their volumes in real files.

An embed root keeps, beside its domains (libvirt's layout, under ``ROOT``)::

    ROOT/etc/storage/NAME.xml            persistent pool definitions
    ROOT/etc/storage/autostart/NAME      present while the pool is marked autostart
    ROOT/run/storage/NAME.xml            the definition of each running pool: a root opened
                                         again knows what was active (and transient pools)
    ROOT/run/storage/boot-id             the host boot the root was last opened in: the
                                         first open after a boot starts autostart pools
    ROOT/lib/storage/NAME.volumes.json   what is known of each volume's file: the format
                                         asvirt made it in, and what qemu-img last said

Volumes are files in the pool's directory (:mod:`.dir_backend`): ``raw`` and ``qcow2``,
created, copied, resized and inspected with ``qemu-img`` (:mod:`.qemu_img`). Their capacity,
format and backing file come from ``qemu-img info --output=json``, their allocation from the
file's blocks. A pool is read again on :meth:`refresh`, which finds what others created or
removed; between refreshes a volume is re-read only when its file changed.

The recorded formats are the driver's defence against format probing: a guest writing a
qcow2 header into its raw volume must not turn it into a qcow2 image with a backing file of
the guest's choosing. A volume asvirt made is always read as the format it was made in;
only files made by others are probed.

The rules every storage driver shares (states, names, errors) are in :mod:`.common`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import posixpath
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ... import fsutil
from ...conf.encryption import Encryption
from ...config import StorageConfig
from ...errors import (
    AsvirtError,
    ConfigUnsupportedError,
    InvalidArgError,
    NoStorageVolError,
    OperationFailedError,
    OperationUnsupportedError,
    StorageVolExistsError,
    SystemCallError,
)
from ...hypervisor.boot import first_open_since_boot
from ...log import get_logger
from ..base import ProgressCallback, SecretUsageType
from . import dir_backend as fs
from . import qemu_img
from .common import StorageDriverBase
from .paths import StoragePaths
from .pool import DEFAULT_VOL_MODE, PoolDef, PoolObj, PoolTable, VolDef, parse_pool_xml

if TYPE_CHECKING:
    from ..interfaces import SecretDriver

log = get_logger("asvirt.storage")

T = TypeVar("T")

#: The volume formats a dir pool creates and changes (others are listed, not changed).
FORMATS = ("raw", "qcow2")


@dataclasses.dataclass
class FileVol(VolDef):
    """A volume of a dir pool, with what its file looked like when it was last read."""

    signature: tuple[int, ...] = ()


def _as_file_vol(vol: VolDef) -> FileVol:
    if isinstance(vol, FileVol):
        return vol
    return FileVol(**{f.name: getattr(vol, f.name) for f in dataclasses.fields(VolDef)})


@dataclasses.dataclass(frozen=True)
class VolRecord:
    """What is known of a volume's file, kept under the root across processes.

    ``made``: asvirt made the file, in ``format``, which is then never probed again (as long
    as the file is the same inode). ``capacity`` and the backing file are what qemu-img
    said when the file had ``signature``; a file that changed since is read again.
    """

    format: str
    made: bool
    inode: int
    signature: tuple[int, ...] = ()
    capacity: int = 0
    backing_path: str | None = None
    backing_format: str | None = None
    #: How asvirt made it encrypted (LUKS, the secret named): qemu-img cannot tell the secret.
    encryption: Encryption | None = None

    def volume(self, name: str, path: str, st: os.stat_result) -> FileVol:
        return FileVol(
            name=name,
            path=path,
            capacity=self.capacity,
            allocation=st.st_blocks * 512,
            format=self.format,
            physical=st.st_size,
            backing_path=self.backing_path,
            backing_format=self.backing_format,
            mode=st.st_mode & 0o777,
            signature=fs.signature(st),
            encryption=self.encryption,
        )

    def to_json(self) -> dict[str, Any]:
        enc = self.encryption
        return {
            "encryption": None
            if enc is None
            else {"format": enc.format, "uuid": enc.secret_uuid, "usage": enc.secret_usage},
            "format": self.format,
            "made": self.made,
            "inode": self.inode,
            "signature": list(self.signature),
            "capacity": self.capacity,
            "backing": self.backing_path,
            "backing_format": self.backing_format,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VolRecord:
        backing, backing_format = data.get("backing"), data.get("backing_format")
        enc = data.get("encryption")
        encryption = None
        if isinstance(enc, dict):
            uuid, usage = enc.get("uuid"), enc.get("usage")
            encryption = Encryption(
                format=str(enc.get("format", "luks")),
                secret_uuid=None if uuid is None else str(uuid),
                secret_usage=None if usage is None else str(usage),
            )
        return cls(
            encryption=encryption,
            format=str(data["format"]),
            made=bool(data["made"]),
            inode=int(data["inode"]),
            signature=tuple(int(x) for x in data.get("signature", ())),
            capacity=int(data.get("capacity", 0)),
            backing_path=None if backing is None else str(backing),
            backing_format=None if backing_format is None else str(backing_format),
        )


async def _fs(
    fn: Callable[..., T], *args: Any, doing: str, path: object = None, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)`` in a thread; an OSError becomes a SystemCallError saying what
    failed."""
    try:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except OSError as err:
        raise SystemCallError.from_oserror(err, doing, path) from None


def _check_dir(target: str) -> None:
    """:func:`.dir_backend.check_dir`, its refusal in asvirt's words. Blocking."""
    try:
        fs.check_dir(target)
    except OSError as err:
        if err.errno == errno.EPERM:
            raise OperationFailedError(
                f"refusing storage pool directory '{target}': {err.strerror}; a volume "
                "there could be replaced behind asvirt's back"
            ) from None
        raise SystemCallError.from_oserror(err, "open directory", target) from None


def _scan_dir(target: str, *, leftovers: list[str] | None = None) -> dict[str, os.stat_result]:
    """:func:`.dir_backend.scan`, its failure in asvirt's words. Blocking."""
    try:
        return fs.scan(target, leftovers=leftovers)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "read directory", target) from None


class DirStorageDriver(StorageDriverBase):
    """libvirt's storage driver for ``dir`` pools, on a QEMU node's root."""

    def __init__(
        self, root: Path, config: StorageConfig, tops: tuple[tuple[str, Path], ...] = ()
    ) -> None:
        super().__init__(PoolTable())
        self.paths = StoragePaths(root, tops)
        self.config = config
        #: Per pool name: what is known of each volume's file (see :class:`VolRecord`).
        self._records: dict[str, dict[str, VolRecord]] = {}
        #: Pools whose records changed since they were last written.
        self._dirty: set[str] = set()
        #: The node's secrets (passphrases of volumes created encrypted), set by the node.
        self.secrets: SecretDriver | None = None

    # -- the node's life -----------------------------------------------------------------------

    async def load(self) -> None:
        """Read the pool definitions and take up the pools that were running; on the first
        open of the root since the host booted, start the autostart ones instead (pools do
        not outlive a reboot). A pool that cannot be read or started is logged and left
        inactive."""
        await _fs(
            self.paths.create, doing="create the storage directories under", path=self.paths.root
        )
        first_since_boot = await trio.to_thread.run_sync(
            first_open_since_boot, self.paths.state_dir / "boot-id"
        )
        if first_since_boot:
            for stale in self.paths.state_dir.glob("*.xml"):
                fsutil.remove(stale)
        for path in sorted(self.paths.config_dir.glob("*.xml")):
            defn = self._read_def(path)
            if defn is None:
                continue
            try:
                obj = self.table.add(defn, active=False)
            except AsvirtError as err:
                log.error("ignoring storage pool config", path=str(path), error=str(err))
                continue
            obj.autostart = self.paths.autostart(defn.name).exists()
        for path in sorted(self.paths.state_dir.glob("*.xml")):
            defn = self._read_def(path)
            live = self.table.pools.get(defn.uuid) if defn is not None else None
            if defn is not None and live is None:
                try:  # a transient pool that was running
                    live = self.table.add(defn, active=False, persistent=False)
                except AsvirtError as err:
                    log.error("ignoring storage pool state", path=str(path), error=str(err))
            if live is None or live.defn.name != path.stem:
                fsutil.remove(path)
                continue
            if defn is not None and live.persistent and defn != live.defn:
                # It ran with an older definition; the stored one applies at the next start.
                live.new_defn, live.defn = live.defn, defn
            await self._take_up(live)
        if not first_since_boot:
            return
        for obj in list(self.table):
            if obj.persistent and obj.autostart and not obj.active:
                try:
                    await self.storage_pool_create(obj.defn.uuid)
                except AsvirtError as err:
                    log.error("cannot autostart storage pool", pool=obj.name, error=str(err))

    def _read_def(self, path: Path) -> PoolDef | None:
        try:
            defn = parse_pool_xml(fsutil.read_nofollow(path, limit=1024 * 1024))
            self._check_pool_def(defn)
        except (AsvirtError, OSError, ValueError) as err:
            log.error("ignoring unreadable storage pool file", path=str(path), error=str(err))
            return None
        if defn.name != path.stem:
            log.error("ignoring storage pool file named otherwise", path=str(path), name=defn.name)
            return None
        return defn

    async def _take_up(self, obj: PoolObj) -> None:
        """A pool that was running when the root was last closed runs again, if it can."""
        try:
            async with self._lock:
                await self._start_pool(obj)
                obj.active = True
        except AsvirtError as err:
            log.error("storage pool can no longer run", pool=obj.name, error=str(err))
            fsutil.remove(self.paths.state(obj.name))
            if not obj.persistent:
                del self.table.pools[obj.defn.uuid]

    # -- pools ---------------------------------------------------------------------------------

    def _check_pool_def(self, defn: PoolDef) -> None:
        if defn.pool_type != "dir":
            raise ConfigUnsupportedError(
                f"unsupported configuration: storage pool type '{defn.pool_type}' "
                "(this driver serves 'dir' pools)"
            )
        target = defn.target_path
        if target == str(self.paths.root):
            raise InvalidArgError(
                f"storage pool target path '{target}' is the node's root, where it keeps its "
                "own files"
            )
        for reserved in self.paths.reserved():
            if target == reserved or target.startswith(reserved.rstrip("/") + "/"):
                raise InvalidArgError(
                    f"storage pool target path '{target}' is inside '{reserved}', where the "
                    "node keeps its own files"
                )
        if defn.target_mode is not None and defn.target_mode & 0o022:
            raise InvalidArgError(
                f"storage pool mode {defn.target_mode:04o} would let others write to "
                f"'{target}'; volumes could then be replaced behind asvirt's back"
            )

    async def _save_pool(self, defn: PoolDef) -> None:
        path = self.paths.config(defn.name)
        await _fs(
            fsutil.atomic_write,
            path,
            defn.to_xml().encode(),
            doing=f"save storage pool '{defn.name}' to",
            path=path,
        )

    async def _forget_pool(self, obj: PoolObj) -> None:
        name = obj.name

        def forget() -> None:
            for path in (
                self.paths.config(name),
                self.paths.autostart(name),
                self.paths.volumes(name),
            ):
                fsutil.remove(path)
            fsutil.fsync_dir(self.paths.config_dir)

        await _fs(forget, doing=f"remove storage pool '{name}' from", path=self.paths.config_dir)
        self._records.pop(name, None)

    async def _save_autostart(self, obj: PoolObj, autostart: bool) -> None:
        path = self.paths.autostart(obj.name)
        if autostart:
            await _fs(
                fsutil.atomic_write, path, b"", doing="mark storage pool autostart at", path=path
            )
        else:
            await _fs(fsutil.remove, path, doing="unmark storage pool autostart at", path=path)

    async def _start_pool(self, obj: PoolObj) -> None:
        target = obj.defn.target_path
        removed: list[str] = []
        records = self.paths.volumes(obj.name)

        def open_pool() -> tuple[dict[str, os.stat_result], bytes | None]:
            # One worker-thread hop and one pass over the directory for all a start reads
            # (a hop costs more than these few system calls on a loaded machine).
            _check_dir(target)
            found = _scan_dir(target, leftovers=removed)
            try:
                return found, fsutil.read_nofollow(records)
            except FileNotFoundError:
                return found, None
            except OSError as err:
                log.error("ignoring unreadable volume records", path=str(records), error=str(err))
                return found, None

        found, data = await trio.to_thread.run_sync(open_pool)
        if removed:
            log.info("removed unfinished volumes", pool=obj.name, files=removed)
        self._parse_records(obj.name, target, data)
        obj.volumes = {}
        await self._scan(obj, found)
        state = self.paths.state(obj.name)
        # Not fsynced, and in this thread: the state only says which pools run, which no
        # boot outlives (the first open after a boot removes it, above), so whatever loses
        # the page cache makes it moot; the rename keeps it whole.
        try:
            fsutil.atomic_write(state, obj.defn.to_xml().encode(), durable=False)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"record storage pool '{obj.name}' as running in", state
            ) from None

    async def _stop_pool(self, obj: PoolObj) -> None:
        # A single unlink: cheaper here than a hop to a worker thread.
        try:
            fsutil.remove(self.paths.state(obj.name))
        except OSError as err:
            raise SystemCallError.from_oserror(err, "remove the state of pool") from None
        obj.volumes = {}

    async def _build_pool(self, obj: PoolObj) -> None:
        target = obj.defn.target_path
        await _fs(fs.build_dir, target, obj.defn.target_mode, doing="build storage pool directory")

    async def _delete_pool(self, obj: PoolObj) -> None:
        await _fs(fs.delete_dir, obj.defn.target_path, doing="delete storage pool directory")

    async def _refresh_pool(self, obj: PoolObj) -> None:
        target = obj.defn.target_path

        def read() -> dict[str, os.stat_result]:
            _check_dir(target)
            return _scan_dir(target)

        await self._scan(obj, await trio.to_thread.run_sync(read))

    async def _pool_sizes(self, obj: PoolObj) -> tuple[int, int, int]:
        target = obj.defn.target_path
        return await _fs(fs.sizes, target, doing="read the size of", path=target)

    async def _scan(self, obj: PoolObj, found: dict[str, os.stat_result]) -> None:
        """Take in the pool's directory as ``found`` (:func:`_scan_dir`): new files become
        volumes, removed ones go, changed ones are read again (qemu-img runs only for files
        that changed since it last ran, in this process or an earlier one)."""
        old = obj.volumes
        volumes: dict[str, VolDef] = {}
        limiter = trio.CapacityLimiter(4)

        async def read(name: str, st: os.stat_result) -> None:
            async with limiter:
                try:
                    volumes[name] = await self._describe(obj, name, st)
                except AsvirtError as err:
                    log.warning(
                        "skipping unreadable volume", pool=obj.name, volume=name, error=str(err)
                    )

        changed = []
        for name, st in found.items():
            # Files as they were need no qemu-img, so no task either (a pool start would
            # otherwise run one per volume).
            prev = old.get(name)
            if isinstance(prev, FileVol) and prev.signature == fs.signature(st):
                volumes[name] = prev
            elif (known := self._known(obj, name, st)) is not None:
                volumes[name] = known
            else:
                changed.append((name, st))
        if changed:
            async with trio.open_nursery() as nursery:
                for name, st in changed:
                    nursery.start_soon(read, name, st)
        records = self._records.setdefault(obj.name, {})
        for name in [name for name in records if name not in found]:
            del records[name]
            self._dirty.add(obj.name)
        obj.volumes = volumes
        await self._save_records(obj.name)

    def _known(self, obj: PoolObj, name: str, st: os.stat_result) -> FileVol | None:
        """The volume as its record has it, if its file is as it was when last read (what
        :meth:`_describe` would answer without qemu-img); else None."""
        rec = self._records.get(obj.name, {}).get(name)
        if rec is None or rec.inode != st.st_ino or rec.signature != fs.signature(st):
            return None
        return rec.volume(name, posixpath.join(obj.defn.target_path, name), st)

    async def _describe(
        self, obj: PoolObj, name: str, st: os.stat_result, *, force: bool = False
    ) -> FileVol:
        """A volume as its file is now. Read with ``qemu-img info`` unless the file is as it
        was when it last was: as the format asvirt made it in, probed only if others made it."""
        path = posixpath.join(obj.defn.target_path, name)
        records = self._records.setdefault(obj.name, {})
        rec = records.get(name)
        if rec is not None and rec.inode != st.st_ino:
            rec = None  # another file now has the name: nothing known of it holds
        if rec is None or force or rec.signature != fs.signature(st):
            fmt = rec.format if rec is not None and rec.made else None
            data = await qemu_img.info(
                path, fmt=fmt, what=f"read volume '{path}'", timeout=self.config.qemu_img_timeout
            )
            info = fs.image_info(data, path)
            rec = VolRecord(
                format=info.format,
                made=rec.made if rec is not None else False,
                inode=st.st_ino,
                signature=fs.signature(st),
                # qemu-img counts whole sectors; a raw file holds exactly its size (libvirt's).
                capacity=st.st_size if info.format == "raw" else info.capacity,
                backing_path=info.backing_path,
                backing_format=info.backing_format,
                encryption=rec.encryption if rec is not None and rec.made else None,
            )
            records[name] = rec
            self._dirty.add(obj.name)
        return rec.volume(name, path, st)

    # -- what is known of the volumes' files ---------------------------------------------------

    def _parse_records(self, pool: str, target: str, raw: bytes | None) -> None:
        """Take up the pool's volume records as read from their file (None: there is none)."""
        path = self.paths.volumes(pool)
        if raw is None:
            self._records[pool] = {}
            return
        try:
            data = json.loads(raw)
            self._records[pool] = {
                str(name): VolRecord.from_json(entry) for name, entry in data["volumes"].items()
            }
            if data.get("target") != target:
                self._records[pool] = {}  # the pool was redefined elsewhere: other files
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            # Only a safeguard is lost: those volumes are probed like files others made.
            log.error("ignoring unreadable volume records", path=str(path), error=str(err))
            self._records[pool] = {}

    async def _save_records(self, pool: str) -> None:
        if pool not in self._dirty:
            return
        self._dirty.discard(pool)
        records = self._records.get(pool, {})
        obj = self.table.by_name(pool)
        data = {
            "target": obj.defn.target_path if obj is not None else None,
            "volumes": {name: records[name].to_json() for name in sorted(records)},
        }
        path = self.paths.volumes(pool)
        # Not fsynced: lost in a power cut, the records only make the next refresh read
        # those volumes again, as files others made; the rename keeps the file whole.
        await _fs(
            fsutil.atomic_write,
            path,
            json.dumps(data, indent=1).encode(),
            durable=False,
            doing="record the volumes in",
            path=path,
        )

    async def _remember(self, obj: PoolObj, vol: FileVol) -> None:
        """``vol`` is a file asvirt made: its format is the one it was made in, for good."""
        self._records.setdefault(obj.name, {})[vol.name] = VolRecord(
            format=vol.format,
            made=True,
            inode=vol.signature[0],
            signature=vol.signature,
            capacity=vol.capacity,
            backing_path=vol.backing_path,
            backing_format=vol.backing_format,
            encryption=vol.encryption,
        )
        self._dirty.add(obj.name)
        await self._save_records(obj.name)

    # -- volumes -------------------------------------------------------------------------------

    def _check_vol_def(self, obj: PoolObj, vol: VolDef) -> None:
        if vol.vol_type != "file":
            raise ConfigUnsupportedError(
                f"unsupported configuration: volume type '{vol.vol_type}' in a dir pool "
                "(volumes are files)"
            )
        if vol.format not in FORMATS:
            raise ConfigUnsupportedError(
                f"unsupported configuration: volume format '{vol.format}' "
                f"(a dir pool creates {' and '.join(FORMATS)} volumes)"
            )

    async def _refresh_vol(self, obj: PoolObj, vol: VolDef, *, force: bool = False) -> VolDef:
        target = obj.defn.target_path
        try:
            st = await trio.to_thread.run_sync(fs.lstat_volume, target, vol.name)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINVAL, errno.ELOOP):
                if obj.volumes.get(vol.name) is vol and not obj.in_use[vol.name]:
                    del obj.volumes[vol.name]
                raise NoStorageVolError(
                    f"storage volume '{vol.name}' is gone from pool '{obj.name}'"
                ) from None
            raise SystemCallError.from_oserror(err, "read volume", vol.path) from None
        if not force and isinstance(vol, FileVol) and vol.signature == fs.signature(st):
            return vol
        fresh = await self._describe(obj, vol.name, st, force=force)
        if obj.volumes.get(vol.name) is vol:
            obj.volumes[vol.name] = fresh
        await self._save_records(obj.name)
        return fresh

    def _check_free(self, obj: PoolObj, name: str) -> None:
        """Refuse a name a file already has (made by someone else since the last refresh)."""
        try:
            fs.lstat_volume(obj.defn.target_path, name)
        except FileNotFoundError:
            return
        except OSError:
            pass
        raise StorageVolExistsError(
            f"storage volume '{name}' already exists in pool '{obj.name}' "
            f"('{posixpath.join(obj.defn.target_path, name)}' exists)"
        )

    @contextlib.asynccontextmanager
    async def _temp(self, obj: PoolObj, mode: int | None) -> AsyncIterator[str]:
        """A new temporary file in the pool, removed unless the block published it."""
        target = obj.defn.target_path
        name = fs.temp_name()
        await _fs(
            fs.create_temp,
            target,
            name,
            DEFAULT_VOL_MODE if mode is None else mode,
            doing="create a volume in",
            path=target,
        )
        try:
            yield name
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(fs.remove, target, name)

    async def _publish(self, obj: PoolObj, temp: str, vol: VolDef) -> FileVol:
        """Give the finished file its name; the volume as made (its format, capacity and
        backing file are what was asked: no qemu-img info needed)."""
        target = obj.defn.target_path
        try:
            await trio.to_thread.run_sync(fs.publish, target, temp, vol.name)
        except FileExistsError:
            raise StorageVolExistsError(
                f"storage volume '{vol.name}' already exists in pool '{obj.name}' (made meanwhile)"
            ) from None
        except OSError as err:
            raise SystemCallError.from_oserror(err, "create volume", vol.path) from None
        st = await _fs(fs.lstat_volume, target, vol.name, doing="read volume")
        made = FileVol(
            name=vol.name,
            path=vol.path,
            # qemu-img gives images whole sectors; a raw file is what it was cut to.
            # (A raw LUKS file also holds its header: its capacity is what was asked.)
            capacity=st.st_size
            if vol.format == "raw" and vol.encryption is None
            else -(-vol.capacity // 512) * 512,
            allocation=st.st_blocks * 512,
            format=vol.format,
            physical=st.st_size,
            backing_path=vol.backing_path,
            backing_format=vol.backing_format,
            mode=st.st_mode & 0o777,
            signature=fs.signature(st),
            encryption=vol.encryption,
        )
        await self._remember(obj, made)
        return made

    async def _create_vol(self, obj: PoolObj, vol: VolDef, *, prealloc_metadata: bool) -> VolDef:
        target = obj.defn.target_path
        await trio.to_thread.run_sync(self._check_free, obj, vol.name)
        if vol.format == "raw" and vol.allocation:
            available = await _fs(fs.usable, target, doing="read the size of", path=target)
            if vol.allocation > available:
                raise OperationFailedError(
                    f"not enough free space in pool '{obj.name}' for volume '{vol.name}' "
                    f"({vol.allocation} bytes wanted, {available} available)"
                )
        # An encrypted volume's passphrase, before anything is made (NoSecretError).
        secret = self._volume_secret(vol) if vol.encryption is not None else None
        async with self._temp(obj, vol.mode) as temp:
            path = posixpath.join(target, temp)
            if secret is not None:
                await self._create_encrypted(vol, path, secret, prealloc_metadata)
            elif vol.format == "raw":
                try:
                    await trio.to_thread.run_sync(
                        fs.fill_raw, target, temp, vol.capacity, vol.allocation
                    )
                except OSError as err:
                    if err.errno == errno.ENOSPC:
                        raise OperationFailedError(
                            f"not enough free space in pool '{obj.name}' for volume "
                            f"'{vol.name}' ({vol.allocation} bytes wanted)"
                        ) from None
                    raise SystemCallError.from_oserror(err, "create volume", vol.path) from None
            else:
                args = ["create", "-q", "-f", "qcow2"]
                if prealloc_metadata:
                    args += ["-o", "preallocation=metadata"]
                if vol.backing_path is not None:
                    args += ["-b", vol.backing_path, "-F", vol.backing_format or "raw"]
                await qemu_img.run(
                    [*args, "--", path, str(vol.capacity)],
                    what=f"create volume '{vol.path}'",
                    timeout=self.config.qemu_img_timeout,
                )
            made = await self._publish_as(obj, temp, vol)
        return made

    def _volume_secret(self, vol: VolDef) -> bytes:
        """The passphrase of a volume to create encrypted: the secret its ``<encryption>``
        names, else the ``volume`` secret of its path (as libvirt looks one up)."""
        enc = vol.encryption
        assert enc is not None
        if self.secrets is None:
            raise OperationUnsupportedError("this node has no secret driver")
        usage = enc.secret_usage if enc.secret_uuid is not None else enc.secret_usage or vol.path
        return self.secrets.secret_value(enc.secret_uuid, SecretUsageType.VOLUME, usage)[1]

    async def _create_encrypted(
        self, vol: VolDef, path: str, secret: bytes, prealloc_metadata: bool
    ) -> None:
        """``qemu-img create`` of a LUKS volume: a raw one as a ``luks`` image, a qcow2 with
        LUKS encryption; the passphrase through a pipe (see :func:`.qemu_img.secret_objects`).

        A run that fails with "Unable to get accurate CPU usage" is made again (twice at
        most): QEMU 7.2 as Debian ships it times its first PBKDF2 round with getrusage(),
        which may not have counted those few milliseconds yet, and gives up (fixed upstream
        in 2025 by tolerating a zero reading). Nothing else is retried."""
        for attempt in range(1, 4):
            with qemu_img.secret_objects({"sec0": secret}) as (objects, fds):
                if vol.format == "raw":
                    args = ["create", "-q", "-f", "luks", *objects, "-o", "key-secret=sec0"]
                else:
                    options = "encrypt.format=luks,encrypt.key-secret=sec0"
                    if prealloc_metadata:
                        options += ",preallocation=metadata"
                    args = ["create", "-q", "-f", "qcow2", *objects, "-o", options]
                    if vol.backing_path is not None:
                        args += ["-b", vol.backing_path, "-F", vol.backing_format or "raw"]
                try:
                    await qemu_img.run(
                        [*args, "--", path, str(vol.capacity)],
                        what=f"create volume '{vol.path}'",
                        timeout=self.config.qemu_img_timeout,
                        pass_fds=fds,
                    )
                    return
                except OperationFailedError as err:
                    if attempt == 3 or "accurate CPU usage" not in str(err):
                        raise
                    log.info("qemu-img could not time PBKDF2; again", volume=vol.path)

    async def _publish_as(self, obj: PoolObj, temp: str, vol: VolDef) -> FileVol:
        """Publish a volume made as ``vol`` says, and record it as asvirt's: its format is
        never probed. (Nothing reads the pool meanwhile: a refresh waits for its jobs.)"""
        return await self._publish(obj, temp, vol)

    async def _clone_vol(
        self,
        obj: PoolObj,
        vol: VolDef,
        src_obj: PoolObj,
        src: VolDef,
        *,
        prealloc_metadata: bool,
        progress: ProgressCallback | None,
    ) -> VolDef:
        target = obj.defn.target_path
        src = await self._refresh_vol(src_obj, src)
        if src.format not in FORMATS:
            raise ConfigUnsupportedError(
                f"unsupported configuration: cannot copy volume '{src.name}' of format "
                f"'{src.format}'"
            )
        await trio.to_thread.run_sync(self._check_free, obj, vol.name)
        async with self._temp(obj, vol.mode) as temp:
            path = posixpath.join(target, temp)
            args = ["convert", "-p", "-f", src.format, "-O", vol.format]
            if prealloc_metadata and vol.format == "qcow2":
                args += ["-o", "preallocation=metadata"]
            await qemu_img.run(
                [*args, "--", src.path, path],
                what=f"copy volume '{src.path}' to '{vol.path}'",
                timeout=self.config.copy_stall_timeout,
                progress=progress or (lambda _: None),
            )
            if vol.capacity > src.capacity:
                await self._qemu_resize(path, vol.format, vol.capacity, shrink=False, vol=vol)
            made = await self._publish_as(obj, temp, vol)
        return made

    async def _delete_vol(self, obj: PoolObj, vol: VolDef) -> None:
        await _fs(fs.remove, obj.defn.target_path, vol.name, doing="delete volume", path=vol.path)
        if self._records.get(obj.name, {}).pop(vol.name, None) is not None:
            self._dirty.add(obj.name)
            await self._save_records(obj.name)

    async def _qemu_resize(
        self,
        path: str,
        fmt: str,
        capacity: int,
        *,
        shrink: bool,
        vol: VolDef,
        allocate: bool = False,
    ) -> None:
        args = ["resize", "-q", "-f", fmt]
        if shrink:
            args.append("--shrink")
        if allocate:
            args.append("--preallocation=falloc")
        await qemu_img.run(
            [*args, "--", path, str(capacity)],
            what=f"resize volume '{vol.path}'",
            timeout=self.config.qemu_img_timeout,
        )

    def _changeable(self, obj: PoolObj, vol: VolDef, doing: str) -> None:
        if vol.format not in FORMATS:
            raise ConfigUnsupportedError(
                f"unsupported configuration: cannot {doing} volume '{vol.name}' of format "
                f"'{vol.format}'"
            )

    async def _resize_vol(
        self, obj: PoolObj, vol: VolDef, capacity: int, *, allocate: bool
    ) -> VolDef:
        self._changeable(obj, vol, "resize")
        if vol.format == "raw":
            await _fs(
                fs.resize_raw,
                obj.defn.target_path,
                vol.name,
                vol.capacity,
                capacity,
                allocate=allocate,
                doing="resize volume",
                path=vol.path,
            )
        else:
            await self._qemu_resize(
                vol.path,
                vol.format,
                capacity,
                shrink=capacity < vol.capacity,
                vol=vol,
                allocate=allocate,
            )
        return await self._refresh_vol(obj, vol, force=True)

    async def _wipe_vol(self, obj: PoolObj, vol: VolDef) -> VolDef:
        self._changeable(obj, vol, "wipe")
        target = obj.defn.target_path
        if vol.format == "raw":
            fd = await _fs(
                fs.open_volume, target, vol.name, write=True, doing="open volume", path=vol.path
            )
            try:
                st = os.fstat(fd)
                if st.st_blocks * 512 < st.st_size:
                    # Sparse: libvirt's way, cutting it to nothing frees every block at once.
                    await _fs(
                        fs.truncate_to_zeros, fd, st.st_size, doing="wipe volume", path=vol.path
                    )
                else:
                    pos = 0
                    while pos < st.st_size:
                        pos = await _fs(
                            fs.zero_step, fd, pos, st.st_size, doing="wipe volume", path=vol.path
                        )
                    await _fs(os.fsync, fd, doing="wipe volume", path=vol.path)
            finally:
                os.close(fd)
        else:
            async with self._temp(obj, vol.mode) as temp:
                args = ["create", "-q", "-f", "qcow2"]
                if vol.backing_path is not None:
                    self._check_chain(vol, what=f"cannot wipe volume '{vol.name}'")
                    args += ["-b", vol.backing_path, "-F", vol.backing_format or "raw"]
                await qemu_img.run(
                    [*args, "--", posixpath.join(target, temp), str(vol.capacity)],
                    what=f"wipe volume '{vol.path}'",
                    timeout=self.config.qemu_img_timeout,
                )
                await _fs(fs.replace, target, temp, vol.name, doing="wipe volume", path=vol.path)
                st = await _fs(fs.lstat_volume, target, vol.name, doing="read volume")
                await self._remember(
                    obj, dataclasses.replace(_as_file_vol(vol), signature=fs.signature(st))
                )
        return await self._refresh_vol(obj, vol, force=True)

    async def _write(
        self, obj: PoolObj, vol: VolDef, offset: int, data: bytes, *, sync: bool
    ) -> int:
        fd = await _fs(
            fs.open_volume,
            obj.defn.target_path,
            vol.name,
            write=True,
            doing="open volume",
            path=vol.path,
        )
        written = 0
        try:
            view = memoryview(data)
            while view:
                n = await _fs(
                    os.pwrite, fd, view, offset + written, doing="write volume", path=vol.path
                )
                view = view[n:]
                written += n
            if sync:
                await _fs(os.fsync, fd, doing="write volume", path=vol.path)
        finally:
            os.close(fd)
        return written

    async def _read(self, obj: PoolObj, vol: VolDef, offset: int, length: int) -> bytes:
        fd = await _fs(
            fs.open_volume,
            obj.defn.target_path,
            vol.name,
            write=False,
            doing="open volume",
            path=vol.path,
        )
        try:
            return await _fs(os.pread, fd, length, offset, doing="read volume", path=vol.path)
        finally:
            os.close(fd)


__all__ = ["FORMATS", "DirStorageDriver", "FileVol", "StoragePaths"]
