"""virsh's desc, metadata and domrename: a domain's title, description, metadata elements
and name."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from asvirt.calls import ConnectionCalls

from .main import _domain, command
from .vsh import CommandError, failing, libvirt_message


def _scope(args: argparse.Namespace) -> tuple[bool, bool]:
    """virsh's --live/--config/--current: (live, config); --current excludes the others."""
    if args.current and (args.live or args.config):
        raise CommandError("Options --current and --live are mutually exclusive")
    return args.live, args.config


@command("desc", "show or set domain's description or title")
async def cmd_desc(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt import MetadataType, NoDomainMetadataError

    live, config = _scope(args)
    kind = MetadataType.TITLE if args.title else MetadataType.DESCRIPTION
    what = "title" if args.title else "description"
    dom = await _domain(conn, args.domain)
    new = [args.new_desc_opt] if args.new_desc_opt is not None else args.new_desc
    if new:
        with failing(f"Failed to set new domain {what}"):
            await dom.set_metadata(kind, " ".join(new), live=live, config=config)
        print(f"Domain {what} updated successfully")
        return 0
    try:
        text = await dom.metadata(kind, live=live, config=config)
    except NoDomainMetadataError:
        print(f"No {what} for domain: {dom.name}")
        return 0
    print(text)
    return 0


@command("metadata", "show or set domain's custom XML metadata")
async def cmd_metadata(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt import MetadataType, NoDomainMetadataError

    live, config = _scope(args)
    if args.set is not None and args.remove:
        raise CommandError("Options --set and --remove are mutually exclusive")
    if args.set is not None and not args.key:
        raise CommandError("namespace key is required when modifying metadata")
    dom = await _domain(conn, args.domain)
    kind = MetadataType.ELEMENT
    if args.set is not None or args.remove:
        await dom.set_metadata(kind, args.set, args.key, args.uri, live=live, config=config)
        print("Metadata modified\n" if args.set else "Metadata removed\n")
        return 0
    try:
        text = await dom.metadata(kind, args.uri, live=live, config=config)
    except NoDomainMetadataError as err:
        raise CommandError(libvirt_message(err)) from None
    print(text + "\n")
    return 0


@command("domrename", "rename a domain")
async def cmd_domrename(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    from asvirt import AsvirtError

    dom = await _domain(conn, args.domain)
    try:
        await dom.rename(args.new_name)
    except AsvirtError as err:
        raise CommandError(libvirt_message(err)) from None
    print("Domain successfully renamed\n")
    return 0


def _scope_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--live", action="store_true", help="modify/get running state")
    p.add_argument("--config", action="store_true", help="modify/get persistent configuration")
    p.add_argument("--current", action="store_true", help="modify/get current state configuration")


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("desc", "domain")
    _scope_options(p)
    p.add_argument("--title", action="store_true", help="modify/get the title instead")
    p.add_argument("new_desc", nargs="*", metavar="new-desc", help="message")
    p.add_argument("--new-desc", dest="new_desc_opt", help=argparse.SUPPRESS)
    p = add("domrename", "domain")
    p.add_argument("new_name", metavar="new-name", help="new domain name")
    p = add("metadata", "domain")
    p.add_argument("uri", help="URI of the namespace")
    _scope_options(p)
    p.add_argument("--key", help="key to be used as a namespace identifier")
    p.add_argument("--set", help="new metadata to set")
    p.add_argument("--remove", action="store_true", help="remove the metadata of the uri")
