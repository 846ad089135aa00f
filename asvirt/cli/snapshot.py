"""The CLI's snapshot and save commands: virsh's ``snapshot-*``, ``save``, ``restore``,
``managedsave``, ``managedsave-remove`` and ``save-image-dumpxml``, with virsh's output.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments.
Saves and restores draw a progress bar on stderr with ``--verbose`` when it is a terminal.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from xml.sax.saxutils import escape

import asvirt
from asvirt.calls import ConnectionCalls
from asvirt.drivers.base import DomainSnapshotInfo

from . import render
from .main import _domain, _read_file, command
from .render import ProgressBar


def quoteattr(value: str) -> str:
    """An attribute value as virsh writes it: in single quotes."""
    return "'" + escape(value, {"'": "&apos;", '"': "&quot;"}) + "'"


def _bar(args: argparse.Namespace, what: str) -> ProgressBar | None:
    return ProgressBar(what) if getattr(args, "verbose", False) else None


def _diskspec(spec: str) -> str:
    """``vda,snapshot=no`` as a snapshot's ``<disk>`` (virsh's --diskspec; a doubled comma
    is a comma)."""
    parts = [p.replace("\0", ",") for p in spec.replace(",,", "\0").split(",")]
    name, attrs = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("snapshot", "driver", "stype", "file") or key in attrs:
            raise asvirt.InvalidArgError(f"unable to parse diskspec: {spec}")
        attrs[key] = value
    if not name:
        raise asvirt.InvalidArgError(f"unable to parse diskspec: {spec}")
    head = f"<disk name={quoteattr(name)}"
    if "snapshot" in attrs:
        head += f" snapshot={quoteattr(attrs['snapshot'])}"
    if "driver" in attrs or "file" in attrs:
        # What only an external snapshot says: its overlay's format and file.
        inner = ""
        if "driver" in attrs:
            inner += f"    <driver type={quoteattr(attrs['driver'])}/>\n"
        if "file" in attrs:
            inner += f"    <source file={quoteattr(attrs['file'])}/>\n"
        return f"  {head}>\n{inner}  </disk>\n"
    return f"  {head}/>\n"


def snapshot_xml(
    name: str | None, description: str | None, memspec: str | None, diskspecs: list[str]
) -> str:
    """The ``<domainsnapshot>`` snapshot-create-as makes of its arguments."""
    out = ["<domainsnapshot>\n"]
    if name is not None:
        out.append(f"  <name>{escape(name)}</name>\n")
    if description is not None:
        out.append(f"  <description>{escape(description)}</description>\n")
    if memspec is not None:
        snapshot = file = None
        for part in memspec.split(","):
            if part.startswith("snapshot=") and snapshot is None:
                snapshot = part[len("snapshot=") :]
            elif part.startswith("file=") and file is None:
                file = part[len("file=") :]
            elif part.startswith("/") and file is None:
                file = part
            else:
                raise asvirt.InvalidArgError(f"unable to parse memspec: {memspec}")
        attrs = "".join(
            f" {k}={quoteattr(v)}" for k, v in (("snapshot", snapshot), ("file", file)) if v
        )
        out.append(f"  <memory{attrs}/>\n")
    if diskspecs:
        out.append("  <disks>\n")
        out.extend("  " + line for d in diskspecs for line in _diskspec(d).splitlines(True))
        out.append("  </disks>\n")
    out.append("</domainsnapshot>\n")
    return "".join(out)


async def _snapshot(dom: asvirt.Domain, name: str | None, current: bool) -> asvirt.DomainSnapshot:
    """The snapshot ``name``, or with ``current`` the current one (virsh's --current)."""
    if name is not None and current:
        raise asvirt.InvalidArgError("--snapshotname and --current are mutually exclusive")
    if name is not None:
        return await dom.snapshot_lookup_by_name(name)
    if current:
        return await dom.snapshot_current()
    raise asvirt.InvalidArgError("--snapshotname or --current is required")


# -- snapshots -----------------------------------------------------------------------------------


async def _create(dom: asvirt.Domain, xml: str, args: argparse.Namespace) -> asvirt.DomainSnapshot:
    """Take the snapshot ``xml`` with snapshot-create(-as)'s flags."""
    return await dom.snapshot_create_xml(
        xml,
        disk_only=args.disk_only,
        atomic=args.atomic,
        halt=args.halt,
        no_metadata=args.no_metadata,
        reuse_external=args.reuse_external,
        quiesce=args.quiesce,
    )


@command("snapshot-create-as", "Create a snapshot from a set of args")
async def cmd_snapshot_create_as(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    name = args.name_opt if args.name_opt is not None else args.name
    description = args.description_opt if args.description_opt is not None else args.description
    xml = snapshot_xml(name, description, args.memspec, args.diskspec or [])
    if args.print_xml:
        print(xml)
        return 0
    snap = await _create(dom, xml, args)
    print(f"Domain snapshot {snap.name} created")
    return 0


@command("snapshot-create", "Create a snapshot from XML")
async def cmd_snapshot_create(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    xml = _read_file(args.xmlfile) if args.xmlfile else "<domainsnapshot/>"
    snap = await _create(dom, xml, args)
    if args.xmlfile:
        print(f"Domain snapshot {snap.name} created from '{args.xmlfile}'")
    else:
        print(f"Domain snapshot {snap.name} created")
    return 0


@command("snapshot-list", "List snapshots for a domain")
async def cmd_snapshot_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    for a, b in (
        ("tree", "name"),
        ("parent", "roots"),
        ("parent", "tree"),
        ("roots", "tree"),
        ("roots", "from_"),
        ("roots", "current"),
        ("leaves", "no_leaves"),
    ):
        if getattr(args, a) and getattr(args, b):
            raise asvirt.InvalidArgError(
                f"Options --{a.rstrip('_').replace('_', '-')} and "
                f"--{b.rstrip('_').replace('_', '-')} are mutually exclusive"
            )
    if args.tree and (args.leaves or args.no_leaves or args.active or args.inactive):
        raise asvirt.InvalidArgError("--tree cannot be combined with a filter")
    if args.descendants and not (args.from_ or args.current):
        raise asvirt.InvalidArgError("--descendants requires either --from or --current")
    dom = await _domain(conn, args.domain)
    leaves = True if args.leaves else False if args.no_leaves else None
    if args.from_ or args.current:
        start = await _snapshot(dom, args.from_, args.current)
        snaps = await start.list_all_children(descendants=args.descendants, leaves=leaves)
        if args.tree:
            # The tree starts at the snapshot listed from.
            snaps = [start, *await start.list_all_children(descendants=True)]
    else:
        snaps = await dom.list_all_snapshots(roots=args.roots, leaves=leaves)
    infos = [await s.info() for s in snaps]
    if args.active or args.inactive:
        infos = [
            i
            for i in infos
            if (args.active and i.state != "shutoff") or (args.inactive and i.state == "shutoff")
        ]
    if not args.topological:
        infos.sort(key=lambda i: i.name.casefold())
    if args.name:
        print("".join(f"{i.name}\n" for i in infos))
        return 0
    if args.tree:
        print(tree(infos, root=start.name if (args.from_ or args.current) else None), end="")
        print()
        return 0
    header = ["Name", "Creation Time", "State"]
    if args.parent:
        header.append("Parent")
    rows = []
    for info in infos:
        row = [info.name, _creation_time(info.creation_time), info.state]
        if args.parent:
            row.append(info.parent or "")
        rows.append(row)
    print(render.table(header, rows))
    return 0


def _creation_time(seconds: int) -> str:
    """virsh's creation time: local time with the UTC offset."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def tree(infos: list[DomainSnapshotInfo], *, root: str | None = None) -> str:
    """Snapshots as virsh's ``--tree`` draws them: each root, then its descendants below it
    (``+-`` before each child, ``|`` down to a parent's later children)."""
    names = {i.name for i in infos}
    parent_of = {i.name: (i.parent if i.parent in names else None) for i in infos}
    order = [i.name for i in infos]
    out: list[str] = []

    def draw(name: str, last: bool, is_root: bool, indent: str) -> None:
        out.append(f"{indent}{'' if is_root else '+- '}{name}\n")
        if not is_root:
            indent += (" " if last else "|") + " "
        children = [c for c in order if parent_of[c] == name and c != root]
        if children:
            out.append(f"{indent}  |\n")
        for child in children:
            draw(child, child == children[-1], False, indent + "  ")
        if not children and last:
            out.append(f"{indent}\n")

    roots = [root] if root is not None else [n for n in order if parent_of[n] is None]
    for name in roots:
        draw(name, True, True, "")
    return "".join(out)


@command("snapshot-current", "Get or set the current snapshot")
async def cmd_snapshot_current(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if not await dom.has_current_snapshot():
        raise asvirt.NoDomainSnapshotError(f"domain '{args.domain}' has no current snapshot")
    snap = await dom.snapshot_current()
    print(snap.name if args.name else await snap.xml_desc())
    return 0


@command("snapshot-dumpxml", "Dump XML for a domain snapshot")
async def cmd_snapshot_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    snap = await dom.snapshot_lookup_by_name(args.snapshotname)
    print(await snap.xml_desc(secure=args.security_info))
    return 0


@command("snapshot-info", "snapshot information")
async def cmd_snapshot_info(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    info = await (await _snapshot(dom, args.snapshotname, args.current)).info()
    print(
        render.padded_pairs(
            [
                ("Name", info.name),
                ("Domain", dom.name),
                ("Current", "yes" if info.current else "no"),
                ("State", info.state),
                ("Location", "internal"),
                ("Parent", info.parent or "-"),
                ("Children", str(info.children)),
                ("Descendants", str(info.descendants)),
                ("Metadata", "yes"),
            ]
        ),
        end="",
    )
    print()
    return 0


@command("snapshot-parent", "Get the name of the parent of a snapshot")
async def cmd_snapshot_parent(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    snap = await _snapshot(dom, args.snapshotname, args.current)
    parent = (await snap.info()).parent
    if parent is None:
        raise asvirt.NoDomainSnapshotError(f"snapshot '{snap.name}' has no parent")
    print(parent)
    return 0


@command("snapshot-revert", "Revert a domain to a snapshot")
async def cmd_snapshot_revert(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    snap = await _snapshot(dom, args.snapshotname, args.current)
    bar = _bar(args, "Revert")
    try:
        await snap.revert(running=args.running, paused=args.paused, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(f"Domain snapshot {snap.name} reverted\n")
    return 0


@command("snapshot-delete", "Delete a domain snapshot")
async def cmd_snapshot_delete(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    snap = await _snapshot(dom, args.snapshotname, args.current)
    await snap.delete(
        children=args.children, children_only=args.children_only, metadata_only=args.metadata
    )
    what = "children deleted" if args.children_only else "deleted"
    print(f"Domain snapshot {snap.name} {what}\n")
    return 0


# -- save and restore ------------------------------------------------------------------------------


@command("save", "save a domain state to a file")
async def cmd_save(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    xml = _read_file(args.xml) if args.xml else None
    bar = _bar(args, "Save")
    try:
        await dom.save(args.file, xml, running=args.running, paused=args.paused, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(f"\nDomain '{dom.name}' saved to {args.file}\n")
    return 0


@command("restore", "restore a domain from a saved state in a file")
async def cmd_restore(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    xml = _read_file(args.xml) if args.xml else None
    bar = _bar(args, "Restore")
    try:
        await conn.restore(args.file, xml, running=args.running, paused=args.paused, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(f"Domain restored from {args.file}\n")
    return 0


@command("managedsave", "managed save of a domain state")
async def cmd_managedsave(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    bar = _bar(args, "Managedsave")
    try:
        await dom.managed_save(running=args.running, paused=args.paused, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    print(f"\nDomain '{dom.name}' state saved by libvirt\n")
    return 0


@command("managedsave-remove", "Remove managed save of a domain")
async def cmd_managedsave_remove(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if await dom.has_managed_save_image():
        await dom.managed_save_remove()
        print(f"Removed managedsave image for domain '{dom.name}'")
    else:
        print(f"Domain '{dom.name}' has no manage save image; removal skipped")
    return 0


@command("save-image-dumpxml", "saved state domain information in XML")
async def cmd_save_image_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(await conn.save_image_get_xml_desc(args.file, secure=args.security_info))
    return 0


# -- arguments -------------------------------------------------------------------------------------


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the snapshot and save commands' arguments (``add(name, *positional)`` makes a
    subparser)."""
    for name in ("snapshot-create-as", "snapshot-create"):
        p = add(name, "domain")
        if name == "snapshot-create-as":
            p.add_argument("name", nargs="?", help="name of snapshot")
            p.add_argument("description", nargs="?", help="description of snapshot")
            p.add_argument("--name", dest="name_opt", metavar="NAME", help="name of snapshot")
            p.add_argument("--description", dest="description_opt", help="description of snapshot")
            p.add_argument("--print-xml", action="store_true", help="print XML, create nothing")
            p.add_argument("--memspec", help="memory attributes: [file=]name[,snapshot=type]")
            p.add_argument(
                "--diskspec",
                action="append",
                help="disk attributes: disk[,snapshot=type][,driver=type][,file=name]",
            )
        else:
            p.add_argument("xmlfile", nargs="?", help="domain snapshot XML")
        p.add_argument("--halt", action="store_true", help="halt domain after snapshot")
        p.add_argument("--disk-only", action="store_true", help="create a disk-only snapshot")
        p.add_argument("--atomic", action="store_true", help="require atomic operation (always)")
        p.add_argument(
            "--no-metadata", action="store_true", help="take snapshot but create no metadata"
        )
        p.add_argument(
            "--reuse-external", action="store_true", help="reuse any existing external files"
        )
        p.add_argument("--quiesce", action="store_true", help="quiesce guest's file systems")
    p = add("snapshot-list", "domain")
    for flag, text in (
        ("--parent", "add a column showing parent snapshot"),
        ("--roots", "list only snapshots without parents"),
        ("--leaves", "list only snapshots without children"),
        ("--no-leaves", "list only snapshots that are not leaves (with children)"),
        ("--inactive", "filter by snapshots taken while inactive"),
        ("--active", "filter by snapshots taken while active (full system snapshots)"),
        ("--tree", "list snapshots in a tree"),
        ("--current", "limit list to children of current snapshot"),
        ("--descendants", "with --from, list all descendants"),
        ("--name", "list snapshot names only"),
        ("--topological", "sort list topologically rather than by name"),
    ):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("--from", dest="from_", metavar="SNAPSHOT", help="children of this one")
    p = add("snapshot-current", "domain")
    p.add_argument("--name", action="store_true", help="the name, rather than the XML")
    p = add("snapshot-dumpxml", "domain", "snapshotname")
    p.add_argument(
        "--security-info",
        action="store_true",
        help="include security sensitive information in XML dump",
    )
    for name in ("snapshot-info", "snapshot-parent", "snapshot-revert", "snapshot-delete"):
        p = add(name, "domain")
        p.add_argument("snapshotname", nargs="?", help="snapshot name")
        p.add_argument("--current", action="store_true", help="the current snapshot")
        if name == "snapshot-revert":
            p.add_argument("--running", action="store_true", help="then run the domain")
            p.add_argument("--paused", action="store_true", help="then leave it paused")
            p.add_argument("--force", action="store_true", help="try harder on risky reverts")
            p.add_argument("--verbose", action="store_true", help="display the progress")
        elif name == "snapshot-delete":
            p.add_argument("--children", action="store_true", help="and all its children")
            p.add_argument("--children-only", action="store_true", help="its children only")
            p.add_argument("--metadata", action="store_true", help="only asvirt's metadata")
    for name, positional in (
        ("save", ("domain", "file")),
        ("restore", ("file",)),
        ("managedsave", ("domain",)),
    ):
        p = add(name, *positional)
        p.add_argument("--running", action="store_true", help="running when restored")
        p.add_argument("--paused", action="store_true", help="paused when restored")
        p.add_argument("--verbose", action="store_true", help="display the progress")
        p.add_argument("--bypass-cache", action="store_true", help="(accepted, ignored)")
        if name != "managedsave":
            p.add_argument("--xml", help="file with an alternative domain XML")
    add("managedsave-remove", "domain")
    p = add("save-image-dumpxml", "file")
    p.add_argument(
        "--security-info",
        action="store_true",
        help="include security sensitive information in XML dump",
    )


__all__ = ["add_parsers", "snapshot_xml", "tree"]
