"""The secret commands of the CLI (virsh's names, options and output): ``secret-*``.

Registered with :func:`asvirt.cli.main.command`; :func:`add_parsers` adds their arguments to
the main parser.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from collections.abc import Callable

import asvirt
from asvirt.calls import ConnectionCalls

from . import render, vsh
from .main import _read_file, command
from .vsh import CommandError, CommandFailed

#: The options of ``secret-set-value`` that virsh refuses together.
_EXCLUSIVE = (
    ("file", "base64"),
    ("plain", "base64"),
    ("interactive", "base64"),
    ("interactive", "plain"),
    ("interactive", "file"),
)

#: The most bytes ``secret-set-value --file`` reads (virsh's limit).
MAX_VALUE_FILE = 1024


async def _secret(conn: ConnectionCalls, ident: str) -> asvirt.Secret:
    """By UUID, as virsh does (a secret has no name)."""
    try:
        return await conn.lookup_secret_by_uuid(ident)
    except (asvirt.NoSecretError, asvirt.InvalidArgError):
        raise asvirt.NoSecretError(f"failed to get secret '{ident}'") from None


@command("secret-define", "define or modify a secret from an XML file")
async def cmd_secret_define(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    xml = _read_file(args.file)
    try:
        secret = await conn.secret_define_xml(xml)
    except asvirt.AsvirtError as err:
        raise CommandFailed(f"Failed to set attributes from {args.file}", err) from err
    print(f"Secret {secret.uuid} created\n")
    return 0


@command("secret-dumpxml", "secret attributes in XML")
async def cmd_secret_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    secret = await _secret(conn, args.secret)
    sys.stdout.write(render.xml_document(await secret.xml_desc()))
    return 0


@command("secret-set-value", "set a secret value")
async def cmd_secret_set_value(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    text = args.base64 if args.base64 is not None else args.base64_arg
    given = {
        "base64": text is not None,
        "file": args.file is not None,
        "plain": args.plain,
        "interactive": args.interactive,
    }
    for a, b in _EXCLUSIVE:
        if given[a] and given[b]:
            raise CommandError(f"Options --{a} and --{b} are mutually exclusive")
    secret = await _secret(conn, args.secret)
    plain = args.plain
    if text is not None:
        # virsh says so as an error line, and goes on.
        sys.stdout.flush()
        print("error: Passing secret value as command-line argument is insecure!", file=sys.stderr)
        data = text.encode()
    elif args.file is not None:
        data = _read_value_file(args.file)
    elif args.interactive:
        import getpass

        data = getpass.getpass("Enter new value for secret:").encode()
        plain = True
    else:
        raise CommandError("Input secret value is missing")
    if not plain:
        # virsh's decoder (GLib's) makes something of any text; a value that is not base64
        # is refused here instead, rather than stored as some other bytes.
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error:
            raise asvirt.InvalidArgError("the secret value is not valid base64") from None
    await secret.set_value(data)
    print("Secret value set\n")
    return 0


def _read_value_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_VALUE_FILE + 1)
    except OSError as err:
        raise asvirt.InvalidArgError(f"cannot read '{path}': {err.strerror}") from None
    if len(data) > MAX_VALUE_FILE:
        raise asvirt.InvalidArgError(f"File '{path}' is too large")
    return data


@command("secret-get-value", "Output a secret value")
async def cmd_secret_get_value(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    secret = await _secret(conn, args.secret)
    value = await secret.get_value()
    sys.stdout.flush()
    if args.plain:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        print()
    else:
        print(base64.b64encode(value).decode())
    return 0


@command("secret-undefine", "undefine a secret")
async def cmd_secret_undefine(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    secret = await _secret(conn, args.secret)
    try:
        await secret.undefine()
    except asvirt.AsvirtError as err:
        raise CommandFailed(f"Failed to delete secret {args.secret}", err) from err
    print(f"Secret {args.secret} deleted\n")
    return 0


@command("secret-list", "list secrets")
async def cmd_secret_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    ephemeral = _flag(args.ephemeral, args.no_ephemeral)
    private = _flag(args.private, args.no_private)
    secrets = await conn.list_all_secrets(ephemeral=ephemeral, private=private)
    rows = []
    for s in sorted(secrets, key=lambda s: s.uuid.lower()):
        usage = (
            f"{s.usage_type.label} {s.usage_id}"
            if s.usage_type is not asvirt.SecretUsageType.NONE
            else "Unused"
        )
        rows.append((s.uuid, usage))
    print(render.table(("UUID", "Usage"), rows))
    return 0


#: ``secret-event --event`` names and the kinds they stand for.
_EVENTS = {"lifecycle": "SECRET_LIFECYCLE", "value-changed": "SECRET_VALUE_CHANGED"}


@command("secret-event", "Secret Events", needs_loop=True)
async def cmd_secret_event(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(_EVENTS))
        return 0
    if args.event is None:
        raise CommandError("either --list or --event <type> is required")
    if args.event not in _EVENTS:
        raise asvirt.InvalidArgError(f"unknown secret event type {args.event}")
    secret = await _secret(conn, args.secret) if args.secret else None
    kind = asvirt.EventKind[_EVENTS[args.event]]
    return await vsh.print_events(conn, secret, kind, args)


def _flag(yes: bool, no: bool) -> bool | None:
    """libvirt's pair of filter flags: both (or neither) given is no filter at all."""
    return None if yes == no else yes


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the secret commands' arguments (``add(name, *positional)`` makes a subparser)."""
    p = add("secret-define", "file")
    p.add_argument("--validate", action="store_true", help="validate the XML (always done)")
    add("secret-dumpxml", "secret")
    p = add("secret-set-value", "secret")
    p.add_argument("base64_arg", nargs="?", metavar="base64", help="base64-encoded value")
    p.add_argument("--base64", help="base64-encoded secret value")
    p.add_argument("--file", help="read the value from a file")
    p.add_argument("--plain", action="store_true", help="the file holds the value, not base64")
    p.add_argument("--interactive", action="store_true", help="read the value from the terminal")
    p = add("secret-get-value", "secret")
    p.add_argument("--plain", action="store_true", help="the value itself, not base64")
    add("secret-undefine", "secret")
    p = add("secret-list")
    p.add_argument("--ephemeral", action="store_true", help="list ephemeral secrets")
    p.add_argument("--no-ephemeral", action="store_true", help="list non-ephemeral secrets")
    p.add_argument("--private", action="store_true", help="list private secrets")
    p.add_argument("--no-private", action="store_true", help="list non-private secrets")
    p = add("secret-event")
    p.add_argument("--secret", help="only events of this secret (UUID)")
    p.add_argument("--event", help="the event type: lifecycle or value-changed")
    p.add_argument("--loop", action="store_true", help="keep receiving events")
    p.add_argument("--timeout", help="stop after this many seconds")
    p.add_argument("--timestamp", action="store_true", help="prefix events with a timestamp")
    p.add_argument("--list", action="store_true", help="list the event types")
