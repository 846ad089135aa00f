"""Storage pools and volumes: handles whose calls go to the connection's storage driver.

Volumes' bytes move as trio and anyio streams do::

    written = await vol.upload("/var/tmp/disk.img")           # a local file, or
    written = await vol.upload(chunks, offset=0, length=0)      # any async iterable of bytes

    async with vol.download() as stream:                        # or: async for ... directly
        async for chunk in stream:
            out.write(chunk)

Long operations (:meth:`StoragePool.create_volume_xml_from`, :meth:`StorageVol.clone`,
:meth:`StorageVol.upload`) take a ``progress`` callback: it is called with the fraction done
(0.0 to 1.0) from the task doing the work, and must not block.

Bytes travel in chunks of at most :data:`TRANSFER_CHUNK`, one declared call each
(``storage_vol_upload``, ``storage_vol_download``), so that transfers work the same in this
process and through a daemon. A volume is in use (it cannot be deleted) during each chunk,
not between two.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Iterator

# lxml and the size parser load where they are used: a one-shot command-line client imports
# this module (through asvirt.calls) and never needs them for a list.
from .drivers.base import (
    MAX_TRANSFER,
    ProgressCallback,
    StoragePoolInfo,
    StoragePoolRef,
    StorageVolInfo,
    StorageVolRef,
)
from .errors import (
    InvalidArgError,
    NoStoragePoolError,
    NoStorageVolError,
    OperationInvalidError,
    OperationUnsupportedError,
    SystemCallError,
)
from .handle import Handle
from .records import record

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from typing import Any

    from .domain import Domain


#: The most bytes one upload or download call carries.
TRANSFER_CHUNK = MAX_TRANSFER


class StoragePool(Handle):
    """A storage pool known to a connection (libvirt's ``virStoragePoolPtr``)."""

    __slots__ = ()
    _ref: StoragePoolRef

    async def _call(self, method: str, /, **params: Any) -> Any:
        return await self._conn._call(method, uuid=self.uuid, **params)

    async def create(self) -> None:
        """Start (activate) the pool; its volumes are read. Its directory must exist."""
        await self._call("storage_pool_create")

    async def build(self) -> None:
        """Create the pool's directory (and missing parents); an existing one is kept.
        The pool must be inactive (virsh pool-build)."""
        await self._call("storage_pool_build")

    async def destroy(self) -> None:
        """Stop (deactivate) the pool; its volumes are kept."""
        await self._call("storage_pool_destroy")

    async def delete(self) -> None:
        """Remove the pool's directory, which must be empty; the definition stays (virsh
        pool-delete). The pool must be inactive."""
        await self._call("storage_pool_delete")

    async def undefine(self) -> None:
        """Forget an inactive pool's definition (its directory and volumes stay)."""
        await self._call("storage_pool_undefine")

    async def refresh(self) -> None:
        """Read the pool's volumes again: files made or removed by others are seen."""
        await self._call("storage_pool_refresh")

    async def is_active(self) -> bool:
        return await self._call("storage_pool_is_active")

    async def is_persistent(self) -> bool:
        return await self._call("storage_pool_is_persistent")

    async def autostart(self) -> bool:
        """Whether the pool starts when its node is opened."""
        return await self._call("storage_pool_get_autostart")

    async def set_autostart(self, autostart: bool) -> None:
        """Start the pool whenever its node is opened (persistent pools only)."""
        await self._call("storage_pool_set_autostart", autostart=bool(autostart))

    async def info(self) -> StoragePoolInfo:
        return await self._call("storage_pool_info")

    async def xml_desc(self, *, inactive: bool = False) -> str:
        """The pool's XML (sizes while it runs); ``inactive``: the definition as stored."""
        return await self._call("storage_pool_xml_desc", inactive=inactive)

    async def list_all_volumes(self) -> list[StorageVol]:
        refs = await self._call("storage_pool_list_volumes")
        return [StorageVol(self, ref) for ref in refs]

    async def lookup_volume_by_name(self, name: str) -> StorageVol:
        ref = await self._conn._call("storage_vol_lookup_by_name", pool_uuid=self.uuid, name=name)
        return StorageVol(self, ref)

    async def create_volume_xml(self, xml: str, *, prealloc_metadata: bool = False) -> StorageVol:
        """Create a volume in this pool from libvirt volume XML.

        A ``<backingStore><path>`` makes a qcow2 overlay on that volume, which must be a
        volume of an active pool of the same node. ``prealloc_metadata``: a qcow2 volume's
        metadata is allocated up front.
        """
        ref = await self._conn._call(
            "storage_vol_create_xml",
            pool_uuid=self.uuid,
            xml=xml,
            prealloc_metadata=prealloc_metadata,
        )
        return StorageVol(self, ref)

    async def create_volume_xml_from(
        self,
        xml: str,
        source: StorageVol,
        *,
        prealloc_metadata: bool = False,
        progress: ProgressCallback | None = None,
    ) -> StorageVol:
        """Create a volume in this pool holding a copy of ``source``'s data, in the format
        ``xml`` names (a conversion when it differs); its capacity is at least the source's.
        ``progress`` is told the fraction copied."""
        if not isinstance(source, StorageVol):
            raise InvalidArgError("the source of a volume copy must be an asvirt.StorageVol")
        ref = await self._conn._call(
            "storage_vol_create_xml_from",
            pool_uuid=self.uuid,
            xml=xml,
            source_pool_uuid=source.pool.uuid,
            source_name=source.name,
            prealloc_metadata=prealloc_metadata,
            progress=progress,
        )
        return StorageVol(self, ref)


class StorageVol:
    """A volume in a storage pool (libvirt's ``virStorageVolPtr``)."""

    __slots__ = ("_pool", "_ref")

    def __init__(self, pool: StoragePool, ref: StorageVolRef) -> None:
        self._pool = pool
        self._ref = ref

    @property
    def pool(self) -> StoragePool:
        return self._pool

    @property
    def name(self) -> str:
        return self._ref.name

    @property
    def key(self) -> str:
        return self._ref.key

    @property
    def path(self) -> str:
        return self._ref.path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorageVol):
            return NotImplemented
        return self._pool == other._pool and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<asvirt.StorageVol {self.name!r} in {self._pool.name!r}>"

    async def _call(self, method: str, /, **params: Any) -> Any:
        conn = self._pool.connection
        return await conn._call(method, pool_uuid=self._pool.uuid, name=self.name, **params)

    async def delete(self) -> None:
        """Delete the volume (not while a copy or a stream uses it)."""
        await self._call("storage_vol_delete")

    async def info(self) -> StorageVolInfo:
        return await self._call("storage_vol_info")

    async def xml_desc(self) -> str:
        return await self._call("storage_vol_xml_desc")

    async def resize(
        self,
        capacity: int | str,
        *,
        allocate: bool = False,
        delta: bool = False,
        shrink: bool = False,
    ) -> None:
        """Change the volume's capacity (bytes, or a size such as ``"10G"``).

        As virsh vol-resize: making it smaller needs ``shrink=True`` (data beyond the new end
        is lost); ``delta`` adds ``capacity`` to the current one (takes it away with
        ``shrink``); ``allocate`` allocates the added space at once.
        """
        size = _size(capacity, "capacity")
        await self._call(
            "storage_vol_resize", capacity=size, allocate=allocate, delta=delta, shrink=shrink
        )

    async def wipe(self) -> None:
        """Erase the volume's data: a raw volume then reads as zeros; a qcow2 volume is made
        anew (empty, on the same backing volume, if any)."""
        await self._call("storage_vol_wipe")

    async def clone(
        self,
        name: str,
        *,
        pool: StoragePool | None = None,
        prealloc_metadata: bool = False,
        progress: ProgressCallback | None = None,
    ) -> StorageVol:
        """A copy of this volume called ``name``, in the same pool (or ``pool``), in the same
        format (virsh vol-clone). ``progress`` is told the fraction copied."""
        from lxml import etree

        from .conf.xmlsafe import parse_xml

        root = parse_xml(await self.xml_desc())
        root.find("name").text = name  # type: ignore[union-attr]
        for tag in ("key", "target/path", "backingStore", "physical"):
            el = root.find(tag)
            if el is not None:
                el.getparent().remove(el)  # type: ignore[union-attr]
        xml = etree.tostring(root, encoding="unicode")
        return await (pool or self._pool).create_volume_xml_from(
            xml, self, prealloc_metadata=prealloc_metadata, progress=progress
        )

    async def upload(
        self,
        source: AsyncIterable[bytes] | bytes | str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int = 0,
        progress: ProgressCallback | None = None,
    ) -> int:
        """Write bytes into the volume's file, from ``offset``; returns how many were written.

        ``source`` is a local file (a path), bytes, or any async iterable of bytes (a trio
        receive stream, an async generator). At most ``length`` bytes are written (0: all the
        source has). Writing past the end of a raw volume makes it larger, as with virsh
        vol-upload. ``progress`` is told the fraction written when the total is known (a
        file, bytes, or a ``length``). The data is on disk when this returns.
        """
        _check_window(offset, length)
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            return await self._upload(_single(data), offset, length or len(data), progress)
        if isinstance(source, str | os.PathLike):
            import anyio  # a local file is read without blocking the caller's event loop

            path = os.fspath(source)
            try:
                f = await anyio.open_file(path, "rb")
                size = os.fstat(f.wrapped.fileno()).st_size
            except OSError as err:
                raise SystemCallError.from_oserror(err, "read", path) from None
            async with f:
                return await self._upload(_file_chunks(f, path), offset, length or size, progress)
        if not hasattr(source, "__aiter__"):
            raise InvalidArgError(
                "an upload source is a path, bytes, or an async iterable of bytes, "
                f"not {type(source).__name__}"
            )
        return await self._upload(source, offset, length, progress)

    async def _upload(
        self,
        source: AsyncIterable[bytes],
        offset: int,
        length: int,
        progress: ProgressCallback | None,
    ) -> int:
        conn = self._pool.connection
        transfer = await self._call("storage_vol_upload_begin")
        written = 0
        try:
            async for chunk in source:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise InvalidArgError(
                        f"an upload source must yield bytes, not {type(chunk).__name__}"
                    )
                if length:
                    chunk = chunk[: length - written]
                for piece in _pieces_of(bytes(chunk)):
                    written += await conn._call(
                        "storage_vol_upload", transfer=transfer, offset=offset + written, data=piece
                    )
                    if progress is not None and length:
                        progress(min(1.0, written / length))
                if length and written >= length:
                    break
        finally:
            # Also on failure: the volume is released, and what was written is kept.
            await _shielded(conn._call("storage_vol_transfer_end", transfer=transfer))
        if progress is not None:
            progress(1.0)
        return written

    def download(self, *, offset: int = 0, length: int = 0) -> VolumeDownload:
        """The bytes of the volume's file from ``offset`` (``length`` of them; 0: to the end).

        Use it with ``async for chunk in vol.download()``, or ``await d.receive_some()`` for
        the next chunk (``b""`` at the end); ``async with`` around it ends it early.
        """
        _check_window(offset, length)
        return VolumeDownload(self, offset, length)

    async def download_to(
        self, path: str | os.PathLike[str], *, offset: int = 0, length: int = 0
    ) -> int:
        """Download into the local file ``path`` (created or truncated); bytes written."""
        import anyio  # the local file is written without blocking the caller's event loop

        total = 0
        try:
            f = await anyio.open_file(path, "wb")
        except OSError as err:
            raise SystemCallError.from_oserror(err, "write", path) from None
        async with f, self.download(offset=offset, length=length) as stream:
            async for chunk in stream:
                await f.write(chunk)
                total += len(chunk)
        return total


class VolumeDownload:
    """A volume's bytes as a trio-style receive stream: ``async for`` it, ``async with`` it.

    The volume is in use (it cannot be deleted) from the first read until the stream is
    closed or read to its end; each chunk is one call of at most :data:`TRANSFER_CHUNK`."""

    def __init__(self, vol: StorageVol, offset: int, length: int) -> None:
        self._vol = vol
        self._pos = offset
        #: Bytes still wanted (None: up to the end of the file).
        self._left: int | None = length or None
        self._transfer: int | None = None
        self._done = False

    async def _open(self) -> int:
        if self._transfer is None:
            self._transfer = await self._vol._call("storage_vol_download_begin")
        return self._transfer

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes (at most ``max_bytes``); ``b""`` once everything was read."""
        want = min(max_bytes or TRANSFER_CHUNK, TRANSFER_CHUNK)
        if self._left is not None:
            want = min(want, self._left)
        if self._done or want <= 0:
            await self.aclose()
            return b""
        transfer = await self._open()
        data: bytes = await self._vol.pool.connection._call(
            "storage_vol_download", transfer=transfer, offset=self._pos, length=want
        )
        if not data:
            await self.aclose()
            return b""
        self._pos += len(data)
        if self._left is not None:
            self._left -= len(data)
        return data

    async def aclose(self) -> None:
        """Stop reading; the volume is released."""
        self._done = True
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            conn = self._vol.pool.connection
            await _shielded(conn._call("storage_vol_transfer_end", transfer=transfer))

    async def __aenter__(self) -> VolumeDownload:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            while chunk := await self.receive_some():
                yield chunk
        finally:
            await self.aclose()


async def _shielded(ending: Coroutine[Any, Any, Any]) -> None:
    """Run a transfer's end even when the caller is being cancelled (under trio or asyncio; a
    one-shot client without an event loop cannot be cancelled)."""
    import sniffio

    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        await ending
        return
    import anyio

    with anyio.CancelScope(shield=True):
        await ending


def _check_window(offset: int, length: int) -> None:
    for what, value in (("offset", offset), ("length", length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgError(f"invalid {what} {value!r}: a number of bytes (0 or more)")


def _size(value: int | str, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        from .conf.units import UnitError, parse_size_arg

        try:
            return parse_size_arg(value, what=what)
        except UnitError as err:
            raise InvalidArgError(str(err)) from None
    raise InvalidArgError(f"invalid {what} {value!r}: bytes, or a size such as '10G'")


def _pieces_of(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), TRANSFER_CHUNK):
        yield data[start : start + TRANSFER_CHUNK]


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _file_chunks(f: Any, path: str) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await f.read(TRANSFER_CHUNK)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "read", path) from None
        if not chunk:
            return
        yield chunk


@record
class DiskVolume:
    """A disk of a domain and the storage volume it uses (see :func:`disk_volumes`)."""

    #: The disk's target (``vda``).
    target: str
    #: What its ``<source>`` names: a path, or the volume's name for ``type='volume'``.
    source: str
    #: The volume, or None when the source is no volume of any pool of the node.
    volume: StorageVol | None


async def disk_volumes(dom: Domain, which: bool | Iterable[str] = True) -> list[DiskVolume]:
    """The storage volumes of ``dom``'s disks (its persistent definition), as virsh finds
    them for ``undefine --remove-all-storage``: a ``type='volume'`` disk's volume, and the
    volume whose path a file or block disk names. ``which``: True for every disk, else the
    targets or sources to consider (InvalidArgError if one names no disk of the domain).
    """
    from .conf.xmlsafe import parse_xml

    conn = dom.connection
    root = parse_xml(await dom.xml_desc(inactive=True))
    wanted = None if isinstance(which, bool) else [str(w) for w in which]
    found: list[DiskVolume] = []
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        src = disk.find("source")
        if target is None or src is None:
            continue
        dev = target.get("dev") or ""
        pool_name = src.get("pool")
        source = src.get("volume") if pool_name else (src.get("file") or src.get("dev"))
        if not source:
            continue
        if wanted is not None:
            if dev not in wanted and source not in wanted:
                continue
            wanted = [w for w in wanted if w not in (dev, source)]
        vol: StorageVol | None = None
        try:
            if pool_name:
                pool = await conn.lookup_storage_pool_by_name(pool_name)
                vol = await pool.lookup_volume_by_name(source)
            else:
                vol = await conn.lookup_storage_vol_by_path(source)
        except (NoStoragePoolError, NoStorageVolError, OperationInvalidError):
            vol = None
        except OperationUnsupportedError:
            vol = None  # a node without a storage driver has no volumes
        found.append(DiskVolume(dev, source, vol))
    if wanted:
        raise InvalidArgError(
            f"volume(s) {', '.join(repr(w) for w in wanted)} not found in the definition of "
            f"domain '{dom.name}'"
        )
    return found


__all__ = ["DiskVolume", "StoragePool", "StorageVol", "VolumeDownload", "disk_volumes"]
