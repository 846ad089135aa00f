"""The CLI's storage commands: virsh's ``pool-*`` and ``vol-*`` names, flags and output.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments.
Pools are found as virsh finds them (by name, else UUID); volumes too: by name in
``--pool``, else by key or path. Long copies and transfers (``vol-clone``, ``vol-upload``,
``vol-download``) draw a progress bar on stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from xml.sax.saxutils import escape

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.conf.units import UnitError, parse_size_arg
from asvirt.drivers.storage.pool import POOL_STATE_NAMES
from asvirt.drivers.storage.pool import VOL_TYPES as _VOL_TYPES
from asvirt.storage import disk_volumes

from . import render
from .main import _read_file, command
from .render import ProgressBar

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def pretty_size(size: int) -> str:
    """virsh's capacities: ``512.00 B``, ``1.50 GiB``."""
    if size < 1024:
        return f"{size:.2f} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def _size(text: str, what: str) -> int:
    try:
        return parse_size_arg(text, what=what)
    except UnitError as err:
        raise asvirt.InvalidArgError(str(err)) from None


# -- lookups -------------------------------------------------------------------------------------


async def _pool(conn: ConnectionCalls, ident: str) -> asvirt.StoragePool:
    """A pool by name, else by UUID (virsh's order)."""
    try:
        return await conn.lookup_storage_pool_by_name(ident)
    except asvirt.NoStoragePoolError:
        pass
    try:
        return await conn.lookup_storage_pool_by_uuid(ident)
    except (asvirt.NoStoragePoolError, asvirt.InvalidArgError):
        pass
    raise asvirt.NoStoragePoolError(f"failed to get pool '{ident}'")


async def _vol(conn: ConnectionCalls, ident: str, pool: str | None) -> asvirt.StorageVol:
    """A volume by name in ``pool``, else by key, else by path (virsh's order)."""
    if pool is not None:
        p = await _pool(conn, pool)
        try:
            return await p.lookup_volume_by_name(ident)
        except asvirt.NoStorageVolError:
            pass
    for lookup in (conn.lookup_storage_vol_by_key, conn.lookup_storage_vol_by_path):
        try:
            return await lookup(ident)
        except asvirt.NoStorageVolError:
            pass
    hint = "" if pool is not None else ", specifying --pool might help"
    raise asvirt.NoStorageVolError(f"failed to get vol '{ident}'{hint}")


# -- pools ---------------------------------------------------------------------------------------


@command("pool-define-as", "define a pool from a set of args")
async def cmd_pool_define_as(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    target = args.target
    if target is None and args.positional and len(args.positional) >= 5:
        target = args.positional[4]
    if target in ("-", ""):
        target = None
    target_xml = f"  <target>\n    <path>{escape(target)}</path>\n  </target>\n" if target else ""
    xml = (
        f"<pool type='{escape(args.type)}'>\n  <name>{escape(args.name)}</name>\n"
        f"{target_xml}</pool>\n"
    )
    if args.print_xml:
        sys.stdout.write(render.xml_document(xml))
        return 0
    pool = await conn.storage_pool_define_xml(xml)
    print(f"Pool {pool.name} defined\n")
    return 0


@command("pool-define", "define an inactive persistent storage pool from an XML file")
async def cmd_pool_define(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await conn.storage_pool_define_xml(_read_file(args.file))
    print(f"Pool {pool.name} defined from {args.file}\n")
    return 0


def _simple(name: str, help: str, method: str, done: str) -> None:
    async def run(conn: ConnectionCalls, args: argparse.Namespace) -> int:
        pool = await _pool(conn, args.pool)
        await getattr(pool, method)()
        print(f"Pool {pool.name} {done}\n")
        return 0

    command(name, help)(run)


_simple("pool-build", "build a pool", "build", "built")
_simple("pool-destroy", "destroy (stop) a pool", "destroy", "destroyed")
_simple("pool-delete", "delete a pool", "delete", "deleted")
_simple("pool-undefine", "undefine an inactive pool", "undefine", "has been undefined")
_simple("pool-refresh", "refresh a pool", "refresh", "refreshed")


@command("pool-start", "start a (previously defined) inactive pool")
async def cmd_pool_start(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    if args.build:
        await pool.build()
    await pool.create()
    print(f"Pool {pool.name} started\n")
    return 0


@command("pool-autostart", "autostart a pool")
async def cmd_pool_autostart(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    await pool.set_autostart(not args.disable)
    print(f"Pool {pool.name} {'unmarked' if args.disable else 'marked'} as autostarted\n")
    return 0


@command("pool-list", "list pools")
async def cmd_pool_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    active = None if args.all else True
    if args.inactive:
        active = None if args.all else False
    rows: list[tuple[str, ...]] = []
    for pool in await conn.list_all_storage_pools(active=active):
        autostart = await pool.autostart()
        persistent = await pool.is_persistent()
        if (args.autostart and not autostart) or (args.no_autostart and autostart):
            continue
        if (args.persistent and not persistent) or (args.transient and persistent):
            continue
        info = await pool.info()
        if not args.details:
            state = "active" if info.state else "inactive"
            rows.append((pool.name, state, "yes" if autostart else "no"))
            continue
        sizes: tuple[str, ...] = ("-", "-", "-")
        if info.state:
            sizes = tuple(pretty_size(s) for s in (info.capacity, info.allocation, info.available))
        rows.append(
            (
                pool.name,
                POOL_STATE_NAMES[info.state],
                "yes" if autostart else "no",
                "yes" if persistent else "no",
                *sizes,
            )
        )
    header: tuple[str, ...] = ("Name", "State", "Autostart")
    if args.details:
        header += ("Persistent", "Capacity", "Allocation", "Available")
    print(render.table(header, rows))
    return 0


@command("pool-info", "storage pool information")
async def cmd_pool_info(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    info = await pool.info()
    items = [
        ("Name", pool.name),
        ("UUID", pool.uuid),
        ("State", POOL_STATE_NAMES[info.state]),
        ("Persistent", "yes" if await pool.is_persistent() else "no"),
        ("Autostart", "yes" if await pool.autostart() else "no"),
    ]
    if info.state:
        show = (lambda s: f"{s} bytes") if args.bytes else pretty_size
        items += [
            ("Capacity", show(info.capacity)),
            ("Allocation", show(info.allocation)),
            ("Available", show(info.available)),
        ]
    print(render.padded_pairs(items))
    return 0


@command("pool-dumpxml", "pool information in XML")
async def cmd_pool_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    sys.stdout.write(render.xml_document(await pool.xml_desc(inactive=args.inactive)))
    return 0


# -- volumes -------------------------------------------------------------------------------------


def _vol_xml(args: argparse.Namespace, backing: asvirt.StorageVol | None) -> str:
    capacity = _size(args.capacity, "capacity")
    parts = [f"<volume>\n  <name>{escape(args.name)}</name>\n"]
    parts.append(f"  <capacity>{capacity}</capacity>\n")
    if args.allocation is not None:
        parts.append(f"  <allocation>{_size(args.allocation, 'allocation')}</allocation>\n")
    if args.format:
        parts.append(f"  <target>\n    <format type='{escape(args.format)}'/>\n  </target>\n")
    if backing is not None:
        fmt = (
            f"    <format type='{escape(args.backing_vol_format)}'/>\n"
            if args.backing_vol_format
            else ""
        )
        parts.append(
            f"  <backingStore>\n    <path>{escape(backing.path)}</path>\n{fmt}  </backingStore>\n"
        )
    parts.append("</volume>\n")
    return "".join(parts)


@command("vol-create-as", "create a volume from a set of args")
async def cmd_vol_create_as(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    backing = None
    if args.backing_vol:
        try:
            backing = await pool.lookup_volume_by_name(args.backing_vol)
        except asvirt.NoStorageVolError:
            backing = await _vol(conn, args.backing_vol, None)
    xml = _vol_xml(args, backing)
    if args.print_xml:
        sys.stdout.write(render.xml_document(xml))
        return 0
    vol = await pool.create_volume_xml(xml, prealloc_metadata=args.prealloc_metadata)
    print(f"Vol {vol.name} created\n")
    return 0


@command("vol-create", "create a volume from an XML file")
async def cmd_vol_create(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    vol = await pool.create_volume_xml(
        _read_file(args.file), prealloc_metadata=args.prealloc_metadata
    )
    print(f"Vol {vol.name} created from {args.file}\n")
    return 0


@command("vol-clone", "clone a volume")
async def cmd_vol_clone(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    bar = ProgressBar("Cloning")
    try:
        new = await vol.clone(args.newname, prealloc_metadata=args.prealloc_metadata, progress=bar)
    finally:
        bar.close()
    print(f"Vol {new.name} cloned from {vol.name}\n")
    return 0


@command("vol-delete", "delete a volume")
async def cmd_vol_delete(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    await vol.delete()
    print(f"Vol {args.vol} deleted\n")
    return 0


@command("vol-resize", "resize a volume")
async def cmd_vol_resize(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    text, shrink = args.capacity, args.shrink
    if text.startswith("-"):
        if not args.delta:
            raise asvirt.InvalidArgError("a negative capacity needs --delta")
        text, shrink = text[1:], True
    capacity = _size(text, "capacity")
    await vol.resize(capacity, allocate=args.allocate, delta=args.delta, shrink=shrink)
    print(f"Size of volume '{vol.name}' successfully changed to {args.capacity}\n")
    return 0


@command("vol-wipe", "wipe a volume")
async def cmd_vol_wipe(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    if args.algorithm not in (None, "zero"):
        raise asvirt.OperationUnsupportedError(
            f"wiping algorithm '{args.algorithm}' is not supported (only 'zero')"
        )
    await vol.wipe()
    print(f"Vol {args.vol} wiped\n")
    return 0


@command("vol-list", "list vols")
async def cmd_vol_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pool = await _pool(conn, args.pool)
    rows: list[tuple[str, ...]] = []
    for vol in await pool.list_all_volumes():
        if not args.details:
            rows.append((vol.name, vol.path))
            continue
        try:
            info = await vol.info()
        except asvirt.NoStorageVolError:
            continue  # removed by someone else meanwhile
        vol_type = next((k for k, v in _VOL_TYPES.items() if v == info.type), "unknown")
        rows.append(
            (vol.name, vol.path, vol_type, pretty_size(info.capacity), pretty_size(info.allocation))
        )
    header: tuple[str, ...] = ("Name", "Path")
    if args.details:
        header += ("Type", "Capacity", "Allocation")
    print(render.table(header, rows))
    return 0


@command("vol-info", "storage vol information")
async def cmd_vol_info(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    info = await vol.info()
    show: Any = (lambda s: f"{s} bytes") if args.bytes else pretty_size
    vol_type = next((k for k, v in _VOL_TYPES.items() if v == info.type), "unknown")
    print(
        render.padded_pairs(
            [
                ("Name", vol.name),
                ("Type", vol_type),
                ("Capacity", show(info.capacity)),
                ("Allocation", show(info.allocation)),
            ]
        )
    )
    return 0


@command("vol-dumpxml", "vol information in XML")
async def cmd_vol_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    sys.stdout.write(render.xml_document(await vol.xml_desc()))
    return 0


@command("vol-path", "returns the volume path for a given volume name or key")
async def cmd_vol_path(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    print(vol.path)
    return 0


@command("vol-upload", "upload file contents to a volume", needs_loop=True)
async def cmd_vol_upload(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    bar = ProgressBar("Uploading")
    try:
        await vol.upload(args.file, offset=args.offset, length=args.length, progress=bar)
    finally:
        bar.close()
    return 0


@command("vol-download", "download volume contents to a file", needs_loop=True)
async def cmd_vol_download(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    vol = await _vol(conn, args.vol, args.pool)
    info = await vol.info()
    bar = ProgressBar("Downloading")
    total = args.length or max(0, info.capacity - args.offset)
    done = 0
    import trio  # the file is written without blocking the event loop

    try:
        out = await trio.open_file(args.file, "wb")
    except OSError as err:
        raise asvirt.SystemCallError.from_oserror(err, "write", args.file) from None
    try:
        async with out, vol.download(offset=args.offset, length=args.length) as stream:
            async for chunk in stream:
                await out.write(chunk)
                done += len(chunk)
                if total:
                    bar(done / total)
    except OSError as err:
        raise asvirt.SystemCallError.from_oserror(err, "write", args.file) from None
    finally:
        bar.close()
    return 0


# -- domains' storage ----------------------------------------------------------------------------


async def undefine_with_storage(dom: asvirt.Domain, args: argparse.Namespace) -> int:
    """``undefine --remove-all-storage`` / ``--storage vda,/path``, with virsh's output."""
    which: bool | list[str] = True
    if args.storage:
        which = [s.strip() for s in args.storage.split(",") if s.strip()]
    if await dom.is_active():
        raise asvirt.OperationInvalidError(
            "Storage volume deletion is supported only on stopped domains"
        )
    disks = await disk_volumes(dom, which)
    for disk in disks:
        if disk.volume is None:
            print(
                f"Storage volume '{disk.target}'({disk.source}) is not managed by asvirt. "
                "Remove it manually."
            )
    targets = {d.volume.path: (d.target, d.source) for d in disks if d.volume is not None}
    deleted = await dom.undefine(nvram=args.nvram, keep_tpm=args.keep_tpm, remove_storage=which)
    print(f"Domain '{dom.name}' has been undefined")
    for vol in deleted:
        target, source = targets.get(vol.path, (vol.name, vol.path))
        print(f"Volume '{target}'({source}) removed.")
    print()
    return 0


# -- arguments -----------------------------------------------------------------------------------


def add_parsers(add: Any) -> None:
    """Add the storage commands' arguments; ``add(name, *positional)`` makes a subparser."""
    p = add("pool-define-as", "name", "type")
    p.add_argument(
        "positional",
        nargs="*",
        metavar="ARG",
        help="source-host source-path source-dev source-name target ('-' for none)",
    )
    p.add_argument("--target", help="the pool's directory")
    p.add_argument("--print-xml", action="store_true", help="print the XML, define nothing")
    add("pool-define", "file")
    for name in ("pool-build", "pool-destroy", "pool-delete", "pool-undefine", "pool-refresh"):
        add(name, "pool")
    p = add("pool-start", "pool")
    p.add_argument("--build", action="store_true", help="build the pool first")
    p = add("pool-autostart", "pool")
    p.add_argument("--disable", action="store_true", help="disable autostarting")
    p = add("pool-list")
    for flag in ("--all", "--inactive", "--details", "--autostart", "--no-autostart"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--transient", action="store_true")
    p = add("pool-info", "pool")
    p.add_argument("--bytes", action="store_true", help="sizes in bytes")
    p = add("pool-dumpxml", "pool")
    p.add_argument("--inactive", action="store_true", help="the definition as stored")

    p = add("vol-create-as", "pool", "name", "capacity")
    p.add_argument("--allocation")
    p.add_argument("--format", help="raw or qcow2")
    p.add_argument("--backing-vol", help="the volume (name, key or path) to overlay")
    p.add_argument("--backing-vol-format")
    p.add_argument("--prealloc-metadata", action="store_true")
    p.add_argument("--print-xml", action="store_true", help="print the XML, create nothing")
    p = add("vol-create", "pool", "file")
    p.add_argument("--prealloc-metadata", action="store_true")
    p = add("vol-clone", "vol", "newname")
    p.add_argument("--pool")
    p.add_argument("--prealloc-metadata", action="store_true")
    for name in ("vol-delete", "vol-dumpxml", "vol-path"):
        p = add(name, "vol")
        p.add_argument("--pool")
    p = add("vol-resize", "vol", "capacity")
    p.add_argument("--pool")
    p.add_argument("--allocate", action="store_true")
    p.add_argument("--delta", action="store_true")
    p.add_argument("--shrink", action="store_true")
    p = add("vol-wipe", "vol")
    p.add_argument("--pool")
    p.add_argument("--algorithm")
    p = add("vol-list", "pool")
    p.add_argument("--details", action="store_true")
    p = add("vol-info", "vol")
    p.add_argument("--pool")
    p.add_argument("--bytes", action="store_true")
    for name in ("vol-upload", "vol-download"):
        p = add(name, "vol", "file")
        p.add_argument("--pool")
        p.add_argument("--offset", type=_nonnegative, default=0)
        p.add_argument("--length", type=_nonnegative, default=0)


def _nonnegative(text: str) -> int:
    try:
        return _size(text, "offset or length")
    except asvirt.InvalidArgError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


__all__ = [
    "add_parsers",
    "pretty_size",
    "undefine_with_storage",
]
