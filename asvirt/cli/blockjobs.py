"""The CLI's block commands, with virsh's names, options and output: ``blockresize``,
``blockpull``, ``blockcommit``, ``blockjob``.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments.
Sizes default to KiB and bandwidths to MiB/s (``--bytes``: bytes/s), as in virsh. ``--wait``
waits for the job's BLOCK_JOB event (``--verbose``: with the job's progress on stderr, read
every half second as virsh does); ``--timeout`` cancels a job that has not ended by then.
"""

from __future__ import annotations

import argparse
import math
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from xml.sax.saxutils import quoteattr

import trio

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.conf.units import UnitError, parse_size_arg

from . import render
from .main import _domain, command

MiB = 1024 * 1024
#: How often --verbose reads the job's progress (virsh's 500 ms).
_PROGRESS_EVERY = 0.5


def _size(text: str) -> int:
    """A size in bytes, KiB when no unit is given (virsh's scaled integer)."""
    try:
        return parse_size_arg(text, what="size", default_unit="KiB")
    except UnitError:
        raise asvirt.InvalidArgError(
            f"Scaled numeric value '{text}' for <size> option is malformed or out of range"
        ) from None


def _bandwidth(args: argparse.Namespace) -> int:
    """``--bandwidth`` in bytes/s (given in MiB/s, or bytes/s with ``--bytes``)."""
    text = args.bandwidth
    if text is None:
        return 0
    if not text.isdigit():
        raise asvirt.InvalidArgError(
            f"Numeric value '{text}' for <bandwidth> option is malformed or out of range"
        )
    return int(text) if args.bytes else int(text) * MiB


def _timeout(args: argparse.Namespace) -> float:
    text = getattr(args, "timeout", None)
    if text is None:
        return math.inf
    if not text.isdigit() or int(text) == 0:
        raise asvirt.InvalidArgError(
            f"Numeric value '{text}' for <timeout> option is malformed or out of range"
        )
    return float(text)


def _progress(label: str, info: asvirt.BlockJobInfo | None) -> str:
    """virsh's ``LABEL: [ 42 %]``."""
    if info is None or info.end == 0 or info.cur >= info.end:
        percent = 100
    else:
        percent = 100 - (info.end - info.cur) * 100 // info.end
    return f"{label}: [{percent:3d} %]"


async def _target(dom: asvirt.Domain, path: str) -> str:
    """The target of the disk ``path`` (a target or a source path) names: what its
    BLOCK_JOB events name."""
    root = ET.fromstring(await dom.xml_desc())
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        dev = target.get("dev", "") if target is not None else ""
        if path == dev or (source is not None and path == source.get("file", source.get("dev"))):
            return dev
    raise asvirt.InvalidArgError(f"invalid path: {path}")


async def _wait(
    dom: asvirt.Domain,
    path: str,
    target: str,
    events: asvirt.Subscription,
    args: argparse.Namespace,
    label: str,
    *,
    until_ready: bool = False,
) -> str:
    """Wait for the job on ``target`` to end (``until_ready``: or to be ready); its status
    (``completed``, ``ready``, ``failed``, ``canceled``). ``--timeout`` cancels it."""
    deadline = trio.current_time() + _timeout(args)
    verbose = args.verbose
    while True:
        wait = min(_PROGRESS_EVERY if verbose else math.inf, deadline - trio.current_time())
        event = None
        with trio.move_on_after(max(wait, 0)):
            event = await events.receive()
        if event is not None:
            data = event.data or {}
            if data.get("disk") != target:
                continue
            status = str(data.get("status"))
            if status == "ready" and not until_ready:
                continue
            if verbose and status in ("completed", "ready"):
                sys.stderr.write("\r" + _progress(label, None))
                sys.stderr.flush()
            return status
        if trio.current_time() >= deadline:
            await dom.block_job_abort(path)
            return "canceled"
        if verbose:
            sys.stderr.write("\r" + _progress(label, await dom.block_job_info(path)))
            sys.stderr.flush()


def _ended(status: str, word: str, done: str) -> int:
    """Print how a waited-for job ended, as virsh (``Pull complete``, ``Pull aborted``)."""
    if status == "failed":
        raise asvirt.OperationFailedError(f"{word} failed")
    if status == "canceled":
        print(f"\n{word} aborted\n")
        return 1
    print(f"\n{done}\n")
    return 0


@command("blockresize", "Resize block device of domain.")
async def cmd_blockresize(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    size = _size(args.size)
    dom = await _domain(conn, args.domain)
    await dom.block_resize(args.path, size)
    print(f"Block device '{args.path}' is resized\n")
    return 0


@command("blockpull", "Populate a disk from its backing image.", needs_loop=True)
async def cmd_blockpull(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    bandwidth = _bandwidth(args)
    dom = await _domain(conn, args.domain)
    if not args.wait:
        await dom.block_pull(args.path, bandwidth, args.base)
        print("Block Pull started\n")
        return 0
    target = await _target(dom, args.path)
    assert isinstance(conn, asvirt.Connection)
    async with conn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
        await dom.block_pull(args.path, bandwidth, args.base)
        status = await _wait(dom, args.path, target, events, args, "Block Pull")
    return _ended(status, "Pull", "Pull complete")


@command(
    "blockcommit", "Commit changes from a snapshot down to its backing image.", needs_loop=True
)
async def cmd_blockcommit(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    pivot, keep = args.pivot, args.keep_overlay
    if pivot and keep:
        raise asvirt.InvalidArgError("Options --pivot and --keep-overlay are mutually exclusive")
    active = args.active or pivot or keep
    wait = args.wait or pivot or keep or args.timeout is not None
    if args.delete:
        raise asvirt.ArgumentUnsupportedError(
            "deleting the committed images (--delete) is not supported"
        )
    bandwidth = _bandwidth(args)
    dom = await _domain(conn, args.domain)

    async def start() -> None:
        await dom.block_commit(
            args.path,
            base=args.base,
            top=args.top,
            bandwidth=bandwidth,
            active=active,
            shallow=args.shallow,
        )

    if not wait:
        await start()
        print(f"{'Active ' if active else ''}Block Commit started\n")
        return 0
    target = await _target(dom, args.path)
    assert isinstance(conn, asvirt.Connection)
    async with conn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
        await start()
        status = await _wait(
            dom, args.path, target, events, args, "Block commit", until_ready=active
        )
        if status != "ready":
            return _ended(status, "Commit", "Commit complete")
        if pivot:
            await dom.block_job_abort(args.path, pivot=True)
            print("\nSuccessfully pivoted\n")
        elif keep:
            await dom.block_job_abort(args.path)
            print("\nCommit complete, overlay image kept\n")
        else:
            print("\nNow in synchronized phase\n")
    return 0


def _copy_destination(args: argparse.Namespace) -> str:
    """The destination's ``<disk>`` XML: ``--xml``'s file, or made of ``--dest``."""
    if args.xml is not None:
        if args.dest is not None or args.format is not None or args.blockdev:
            raise asvirt.InvalidArgError("Options --xml and --dest are mutually exclusive")
        try:
            with open(args.xml, encoding="utf-8") as f:
                return f.read()
        except OSError as err:
            raise asvirt.OperationFailedError(f"failed to read '{args.xml}': {err}") from None
    if args.dest is None:
        raise asvirt.InvalidArgError("need either --dest or --xml")
    kind, key = ("block", "dev") if args.blockdev else ("file", "file")
    driver = f"<driver type={quoteattr(args.format)}/>" if args.format else ""
    return f"<disk type='{kind}'>{driver}<source {key}={quoteattr(args.dest)}/></disk>"


@command("blockcopy", "Copy a disk backing image chain to dest.", needs_loop=True)
async def cmd_blockcopy(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    if args.pivot and args.finish:
        raise asvirt.InvalidArgError("Options --pivot and --finish are mutually exclusive")
    wait = args.wait or args.pivot or args.finish or args.timeout is not None
    xml = _copy_destination(args)
    bandwidth = _bandwidth(args)
    dom = await _domain(conn, args.domain)

    async def start() -> None:
        await dom.block_copy(
            args.path, xml, bandwidth, shallow=args.shallow, reuse_ext=args.reuse_external
        )

    if not wait:
        await start()
        print("Block Copy started\n")
        return 0
    target = await _target(dom, args.path)
    assert isinstance(conn, asvirt.Connection)
    async with conn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
        await start()
        status = await _wait(dom, args.path, target, events, args, "Block Copy", until_ready=True)
        if status != "ready":
            return _ended(status, "Copy", "Successfully copied")
        if args.pivot:
            await dom.block_job_abort(args.path, pivot=True)
            print("\nSuccessfully pivoted\n")
        elif args.finish:
            await dom.block_job_abort(args.path)
            print("\nSuccessfully copied\n")
        else:
            print("\nNow in mirroring phase\n")
    return 0


@command("blockjob", "Query, adjust speed, or cancel active block operations.")
async def cmd_blockjob(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    abort = args.abort or args.async_ or args.pivot
    if abort and (args.info or args.raw):
        raise asvirt.InvalidArgError("Options --abort and --info are mutually exclusive")
    if abort and args.bandwidth is not None:
        raise asvirt.InvalidArgError("Options --abort and --bandwidth are mutually exclusive")
    dom = await _domain(conn, args.domain)
    if abort:
        await dom.block_job_abort(args.path, pivot=args.pivot, wait=not args.async_)
        if args.pivot and not args.async_:
            print("\nSuccessfully pivoted\n")
        else:
            print()
        return 0
    if args.bandwidth is not None:
        await dom.block_job_set_speed(args.path, _bandwidth(args))
        print()
        return 0
    info = await dom.block_job_info(args.path)
    if info is None:
        print(f"No current block job for {args.path}\n")
        return 0
    if args.raw:
        print(
            f" type={info.type.name.lower().replace('_', '-')}\n bandwidth={info.bandwidth}\n"
            f" cur={info.cur}\n end={info.end}\n"
        )
        return 0
    line = _progress(_LABELS[info.type], info)
    if info.bandwidth:
        if args.bytes:
            line += f"    Bandwidth limit: {info.bandwidth} bytes/s"
        else:
            line += (
                f"    Bandwidth limit: {info.bandwidth} bytes/s "
                f"({render.pretty_capacity(info.bandwidth)}/s)"
            )
    print(f"{line}\n")
    return 0


#: virsh's names of the job types (virshDomainBlockJobToString).
_LABELS = {
    asvirt.BlockJobType.UNKNOWN: "Unknown job",
    asvirt.BlockJobType.PULL: "Block Pull",
    asvirt.BlockJobType.COPY: "Block Copy",
    asvirt.BlockJobType.COMMIT: "Block Commit",
    asvirt.BlockJobType.ACTIVE_COMMIT: "Active Block Commit",
    asvirt.BlockJobType.BACKUP: "Backup",
}


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the block commands' arguments (``add(name, *positional)``)."""

    def bandwidth(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bandwidth", help="bandwidth limit in MiB/s")
        p.add_argument(
            "--bytes",
            action="store_true",
            help="the bandwidth limit is in bytes/s rather than MiB/s",
        )

    def waiting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true", help="wait for job to finish")
        p.add_argument("--verbose", action="store_true", help="with --wait, display the progress")
        p.add_argument("--timeout", help="with --wait, abort if it exceeds timeout (in seconds)")

    p = add("blockresize", "domain", "path")
    p.add_argument("size", help="New size of the block device, as scaled integer (default KiB)")
    p = add("blockpull", "domain", "path")
    bandwidth(p)
    p.add_argument("--base", help="path of backing file in chain for a partial pull")
    waiting(p)
    p = add("blockcommit", "domain", "path")
    bandwidth(p)
    p.add_argument("--base", help="path of base file to commit into (default bottom of chain)")
    p.add_argument("--shallow", action="store_true", help="use backing file of top as base")
    p.add_argument("--top", help="path of top file to commit from (default top of chain)")
    p.add_argument(
        "--active", action="store_true", help="trigger two-stage active commit of top file"
    )
    p.add_argument(
        "--delete", action="store_true", help="delete files that were successfully committed"
    )
    waiting(p)
    p.add_argument(
        "--pivot", action="store_true", help="implies --active --wait, pivot when commit is synced"
    )
    p.add_argument(
        "--keep-overlay",
        action="store_true",
        help="implies --active --wait, quit when commit is synced",
    )
    p = add("blockcopy", "domain", "path")
    p.add_argument("--dest", help="path of the copy to create")
    bandwidth(p)
    p.add_argument("--shallow", action="store_true", help="make the copy share a backing chain")
    p.add_argument("--reuse-external", action="store_true", help="reuse existing destination")
    p.add_argument(
        "--blockdev",
        action="store_true",
        help="copy destination is block device instead of regular file",
    )
    p.add_argument("--xml", help="filename containing XML description of the copy destination")
    p.add_argument("--format", help="format of the destination file")
    waiting(p)
    p.add_argument(
        "--pivot", action="store_true", help="implies --wait, pivot when mirroring starts"
    )
    p.add_argument(
        "--finish", action="store_true", help="implies --wait, quit when mirroring starts"
    )
    p = add("blockjob", "domain", "path")
    p.add_argument(
        "--abort", action="store_true", help="abort the active job on the specified disk"
    )
    p.add_argument(
        "--async",
        dest="async_",
        action="store_true",
        help="implies --abort; request but don't wait for job end",
    )
    p.add_argument(
        "--pivot",
        action="store_true",
        help="implies --abort; conclude and pivot a copy or commit job",
    )
    p.add_argument(
        "--info", action="store_true", help="get active job information for the specified disk"
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="implies --info; output details rather than human summary",
    )
    bandwidth(p)
