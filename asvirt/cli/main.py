"""The ``asvirt`` command line: virsh's commands and output, over the same public API.

    asvirt [-c URI] COMMAND [ARGS]
    asvirt [-c URI] 'COMMAND [ARGS]; COMMAND [ARGS]...'
    asvirt [-c URI]                  (an interactive shell: "asvirt # ")

Without ``-c``, the URI is ``$ASVIRT_DEFAULT_URI``, else ``qemu:///system`` for root and
``qemu:///session`` for other users, as virsh does. What a command prints is what virsh
prints for the same state, byte for byte; errors are ``error: ...`` lines on stderr
(:mod:`.vsh` runs commands and reports errors as virsh does), never a traceback.

A one-shot command to a daemon runs without an event loop (:mod:`.quick`): it imports only
what it needs, so that it starts as fast as virsh does. Everything else runs under trio.
"""

from __future__ import annotations

import gc
import os
import sys

import asvirt  # light: its public names load on first use

from . import parsing, render, vsh
from .parsing import CommandSpec, IgnoredSpec
from .vsh import CommandError, ConnectFailed, failing

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine, Iterable
    from typing import Any

    from asvirt.calls import ConnectionCalls

    Handler = Callable[[ConnectionCalls, argparse.Namespace], Coroutine[Any, Any, int]]

_COMMANDS: dict[str, tuple[Handler, str]] = {}
#: Commands that need the event loop (they wait for events): never run one-shot.
_NEEDS_LOOP: set[str] = set()


def command(name: str, help: str, *, needs_loop: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (fn, help)
        if needs_loop:
            _NEEDS_LOOP.add(name)
        return fn

    return register


async def _domain(conn: ConnectionCalls, ident: str) -> asvirt.Domain:
    """Look a domain up the way virsh does: by name, else by UUID, else by id."""
    try:
        return await conn.lookup_by_name(ident)
    except asvirt.NoDomainError:
        pass
    try:
        return await conn.lookup_by_uuid(ident)
    except (asvirt.NoDomainError, asvirt.InvalidArgError):
        pass
    if ident.isdigit():
        for dom in await conn.list_all_domains(active=True):
            if await dom.id() == int(ident):
                return dom
    raise asvirt.NoDomainError(f"failed to get domain '{ident}'")


def exclusive(args: argparse.Namespace, *pairs: tuple[str, str]) -> None:
    """virsh's refusal of two options that exclude each other (``("live", "config")``)."""
    for a, b in pairs:
        if getattr(args, a, False) and getattr(args, b, False):
            raise asvirt.InvalidArgError(f"Options --{a} and --{b} are mutually exclusive")


def affect_options(p: argparse.ArgumentParser) -> None:
    """virsh's ``--config``, ``--live``, ``--current`` (libvirt's ``VIR_DOMAIN_AFFECT_*``)."""
    p.add_argument("--config", action="store_true", help="affect next boot")
    p.add_argument("--live", action="store_true", help="affect running domain")
    p.add_argument("--current", action="store_true", help="affect current domain")


def _read_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as err:
        raise asvirt.InvalidArgError(f"cannot read '{path}': {err.strerror}") from None
    except UnicodeDecodeError:
        raise asvirt.XMLError(f"'{path}' is not UTF-8 text") from None


# -- domains -----------------------------------------------------------------------------------


@command("list", "list domains")
async def cmd_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    active = None if args.all else True
    if args.inactive:
        active = False
    found = []
    for dom in await conn.list_all_domains(active=active):
        state, _ = await dom.state()
        dom_id = await dom.id()
        label = state.label
        if args.managed_save and dom_id is None and await dom.has_managed_save_image():
            label = "saved"  # as virsh list --managed-save
        found.append((dom_id, dom.name, label, dom.uuid))
    # virsh's order (virshDomainSorter): running ones by id, then the others by name, any case
    found.sort(key=lambda d: (d[0] is None, d[0] or 0, d[1].casefold()))
    if args.name or args.uuid:  # one per line, for scripts (virsh list --name / --uuid)
        print("".join(f"{d[3] if args.uuid else d[1]}\n" for d in found))
        return 0
    rows = [("-" if d[0] is None else str(d[0]), d[1], d[2]) for d in found]
    print(render.table(("Id", "Name", "State"), rows))
    return 0


@command("define", "define (but don't start) a domain from an XML file")
async def cmd_define(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    xml = _read_file(args.file)
    with failing(f"Failed to define domain from {args.file}"):
        dom = await conn.define_xml(xml)
    print(f"Domain '{dom.name}' defined from {args.file}\n")
    return 0


@command("create", "create (start) a transient domain from an XML file")
async def cmd_create(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    xml = _read_file(args.file)
    with failing(f"Failed to create domain from {args.file}"):
        dom = await conn.create_xml(xml, paused=args.paused)
    print(f"Domain '{dom.name}' created from {args.file}\n")
    return 0


@command("undefine", "undefine a domain")
async def cmd_undefine(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if args.remove_all_storage or args.storage:
        from .storage import undefine_with_storage

        return await undefine_with_storage(dom, args)
    with failing(f"Failed to undefine domain '{dom.name}'"):
        await dom.undefine(
            nvram=args.nvram,
            keep_tpm=args.keep_tpm,
            snapshots_metadata=args.snapshots_metadata,
            managed_save=args.managed_save,
        )
    print(f"Domain '{dom.name}' has been undefined\n")
    return 0


@command("start", "start a (previously defined) inactive domain")
async def cmd_start(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if await dom.id() is not None:
        raise CommandError("Domain is already active")  # virsh checks before it asks
    with failing(f"Failed to start domain '{dom.name}'"):
        await dom.start(paused=args.paused, force_boot=args.force_boot)
    print(f"Domain '{dom.name}' started\n")
    return 0


def _simple(name: str, help: str, method: str, done: str) -> None:
    async def run(conn: ConnectionCalls, args: argparse.Namespace) -> int:
        dom = await _domain(conn, args.domain)
        with failing(f"Failed to {name} domain '{dom.name}'"):
            await getattr(dom, method)()
        print(f"Domain '{dom.name}' {done}\n")
        return 0

    command(name, help)(run)


@command("shutdown", "gracefully shut down a domain")
async def cmd_shutdown(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    mode = 0
    for word in (args.mode or "").split(","):
        if not word:
            continue
        if word not in _SHUTDOWN_MODES:
            raise asvirt.InvalidArgError(f"Unknown mode {word} value, expecting 'acpi', 'agent'")
        mode |= _SHUTDOWN_MODES[word]
    dom = await _domain(conn, args.domain)
    await dom.shutdown(mode)
    print(f"Domain '{dom.name}' is being shutdown\n")
    return 0


#: virsh shutdown --mode's words (libvirt's virDomainShutdownFlagValues).
_SHUTDOWN_MODES = {"acpi": 1, "agent": 2}
_simple("reboot", "reboot a domain (ACPI)", "reboot", "is being rebooted")
_simple("reset", "reset a domain (hard)", "reset", "was reset")
_simple("destroy", "destroy (stop) a domain", "destroy", "destroyed")
_simple("suspend", "suspend a domain", "suspend", "suspended")
_simple("resume", "resume a domain", "resume", "resumed")


@command("dominfo", "domain information")
async def cmd_dominfo(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    info = await dom.info()
    dom_id = await dom.id()
    persistent = await dom.is_persistent()
    pairs = [
        ("Id", "-" if dom_id is None else str(dom_id)),
        ("Name", dom.name),
        ("UUID", dom.uuid),
        ("OS Type", await dom.os_type()),
        ("State", info.state.label),
        ("CPU(s)", str(info.vcpus)),
    ]
    if info.cpu_time_ns:  # virsh shows the CPU time when there is some
        pairs.append(("CPU time", f"{info.cpu_time_ns / 1e9:.1f}s"))
    pairs += [
        ("Max memory", f"{info.max_memory_kib} KiB"),
        ("Used memory", f"{info.memory_kib} KiB"),
        ("Persistent", "yes" if persistent else "no"),
        ("Autostart", "enable" if await dom.autostart() else "disable"),
        ("Managed save", "yes" if await dom.has_managed_save_image() else "no"),
    ]
    model = await conn.security_model()
    if model.model:  # as virsh: the security lines only when a security driver is active
        pairs += [("Security model", model.model), ("Security DOI", model.doi)]
        label = await dom.security_label()
        if label.label:
            mode = "enforcing" if label.enforcing else "permissive"
            pairs.append(("Security label", f"{label.label} ({mode})"))
    print(render.padded_pairs(pairs))
    return 0


@command("autostart", "autostart a domain")
async def cmd_autostart(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    await dom.set_autostart(not args.disable)
    print(f"Domain '{dom.name}' {'unmarked' if args.disable else 'marked'} as autostarted\n")
    return 0


@command("domstate", "domain state")
async def cmd_domstate(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    state, reason = await dom.state()
    print(f"{state.label} ({reason.label})\n" if args.reason else f"{state.label}\n")
    return 0


@command("domid", "convert a domain name or UUID to domain id")
async def cmd_domid(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom_id = await (await _domain(conn, args.domain)).id()
    print(f"{'-' if dom_id is None else dom_id}\n")
    return 0


@command("domuuid", "convert a domain name or id to domain UUID")
async def cmd_domuuid(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(f"{(await _domain(conn, args.domain)).uuid}\n")
    return 0


@command("domname", "convert a domain id or UUID to domain name")
async def cmd_domname(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(f"{(await _domain(conn, args.domain)).name}\n")
    return 0


@command("dumpxml", "domain information in XML")
async def cmd_dumpxml(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    xml = await dom.xml_desc(inactive=args.inactive, secure=args.security_info)
    sys.stdout.write(render.xml_document(xml))
    return 0


@command("domdisplay", "domain display connection URI")
async def cmd_domdisplay(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    if not await dom.is_active():
        raise asvirt.OperationInvalidError(f"domain '{dom.name}' is not running")
    uri = render.display_uri(await dom.xml_desc(secure=args.include_password))
    if uri is None:
        raise asvirt.OperationFailedError(f"domain '{dom.name}' has no graphical display")
    print(f"{uri}\n")
    return 0


@command("capabilities", "capabilities")
async def cmd_capabilities(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(f"{await conn.capabilities()}\n")  # virsh: the XML, a newline, the blank line
    return 0


@command("hostname", "print the hypervisor hostname")
async def cmd_hostname(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(f"{conn.hostname()}\n")
    return 0


@command("nodeinfo", "node information")
async def cmd_nodeinfo(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    node = await conn.node_info()
    pairs = [("CPU model", node.model), ("CPU(s)", str(node.cpus))]
    if node.mhz:
        pairs.append(("CPU frequency", f"{node.mhz} MHz"))
    pairs += [
        ("CPU socket(s)", str(node.sockets)),
        ("Core(s) per socket", str(node.cores)),
        ("Thread(s) per core", str(node.threads)),
        ("NUMA cell(s)", str(node.nodes)),
        ("Memory size", f"{node.memory_kib} KiB"),
    ]
    print(render.padded_pairs(pairs, width=20))
    return 0


@command("version", "show version")
async def cmd_version(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    # virsh's lines; the library is asvirt (virsh names libvirt and its version there).
    hv = await conn.hypervisor_version()
    library = asvirt.__version__
    print(f"Compiled against library: asvirt {library}")
    print(f"Using library: asvirt {library}")
    print(f"Using API: {hv.type} {library}")
    print(f"Running hypervisor: {hv.type} {hv.version}\n")
    return 0


@command("uri", "print the hypervisor canonical URI")
async def cmd_uri(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(f"{conn.uri}\n")
    return 0


@command("qemu-monitor-command", "QEMU monitor command (QMP)")
async def cmd_qmp(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    text = " ".join(args.cmd)
    import json

    try:
        request = json.loads(text)
    except json.JSONDecodeError:
        request = None
    if isinstance(request, dict):
        if not isinstance(request.get("execute"), str):
            raise asvirt.InvalidArgError("the QMP command needs an 'execute' member")
        name, arguments = request["execute"], request.get("arguments")
    elif request is None and text.replace("-", "").replace("_", "").isalnum():
        name, arguments = text, None
    else:
        raise asvirt.InvalidArgError(f"not a QMP command: {text}")
    result = await dom.qmp(name, arguments)
    reply = {"return": result}
    print(json.dumps(reply, indent=2) if args.pretty else json.dumps(reply, separators=(",", ":")))
    return 0


@command("dumpxml-from-file", "the XML 'define FILE' would store, without defining it")
async def cmd_dumpxml_from_file(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    sys.stdout.write(await conn.domain_xml_normalize(_read_file(args.file)))
    return 0


@command("domxml-to-native", "convert domain XML to native (QEMU) arguments")
async def cmd_domxml_to_native(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    print(await conn.domxml_to_native(args.format, _read_file(args.file)))
    return 0


# -- events ------------------------------------------------------------------------------------


# GAP is not an event type one can ask for: replays yield it whenever they must. Network
# events are 'net-event's.
def _event_names() -> dict[str, asvirt.EventKind]:
    from asvirt.events.types import EventKind

    skip = (EventKind.QMP, EventKind.GAP, EventKind.NETWORK_LIFECYCLE)
    names: dict[str, EventKind] = {kind.value: kind for kind in EventKind if kind not in skip}
    names["qemu-monitor"] = EventKind.QMP
    return names


@command("event", "domain events", needs_loop=True)
async def cmd_event(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    _EVENT_NAMES = _event_names()
    if args.list:
        for name in _EVENT_NAMES:
            print(name)
        return 0
    if args.event and args.event not in _EVENT_NAMES:
        raise asvirt.InvalidArgError(
            f"unknown event type '{args.event}' (known: {', '.join(_EVENT_NAMES)})"
        )
    kinds = [_EVENT_NAMES[args.event]] if args.event else None
    domain = await _domain(conn, args.domain) if args.domain else None
    return await vsh.print_events(conn, domain, kinds, args, since=args.since, seq=args.seq)


# -- networks and storage ------------------------------------------------------------------------


@command("net-list", "list networks")
async def cmd_net_list(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    rows = []
    for net in await conn.list_all_networks(active=None if args.all else True):
        rows.append(
            (
                net.name,
                "active" if await net.is_active() else "inactive",
                "yes" if await net.autostart() else "no",
                "yes" if await net.is_persistent() else "no",
            )
        )
    print(render.table(("Name", "State", "Autostart", "Persistent"), rows))
    return 0


# The storage commands (pool-*, vol-*) are in asvirt.cli.storage.


# -- argument parsing ----------------------------------------------------------------------------


#: Each command's argparse parser, by name (for ``help COMMAND``), as :func:`build_parser`
#: made them.
_PARSERS: dict[str, argparse.ArgumentParser] = {}


#: The commands that live in modules of their own (devices, agent, console, keyboard and screen,
#: network, storage, secrets, monitoring, snapshot, memory and vCPU, tuning), by module.
#: Importing a module registers its commands; it is imported only when one of them is parsed (or for
#: ``help``), so that a one-shot ``asvirt list`` imports none of them (lxml, trio...).
#: tests/test_cli.py checks that this table names what the modules register.
_MODULES: dict[str, tuple[str, ...]] = {
    "agent": (
        "qemu-agent-command",
        "domfsfreeze",
        "domfsthaw",
        "domtime",
        "domhostname",
        "domfsinfo",
        "guestinfo",
        "set-user-password",
    ),
    "console": ("console",),
    "devices": (
        "attach-device",
        "detach-device",
        "update-device",
        "attach-disk",
        "detach-disk",
        "change-media",
        "domblklist",
        "attach-interface",
        "detach-interface",
        "domiflist",
        "edit",
    ),
    "guest_input": ("send-key", "inject-nmi", "screenshot", "dompmsuspend", "dompmwakeup"),
    "metadata": ("desc", "metadata", "domrename"),
    "monitor": ("domstats", "domblkstat", "domifstat", "dommemstat", "domblkinfo", "vncdisplay"),
    "network": (
        "net-define",
        "net-undefine",
        "net-start",
        "net-destroy",
        "net-autostart",
        "net-info",
        "net-dumpxml",
        "net-dhcp-leases",
        "domifaddr",
        "net-event",
    ),
    "resources": ("setmem", "setmaxmem", "setvcpus", "vcpucount"),
    "secret": (
        "secret-define",
        "secret-dumpxml",
        "secret-set-value",
        "secret-get-value",
        "secret-undefine",
        "secret-list",
        "secret-event",
    ),
    "snapshot": (
        "snapshot-create-as",
        "snapshot-create",
        "snapshot-list",
        "snapshot-current",
        "snapshot-dumpxml",
        "snapshot-info",
        "snapshot-parent",
        "snapshot-revert",
        "snapshot-delete",
        "save",
        "restore",
        "managedsave",
        "managedsave-remove",
        "save-image-dumpxml",
    ),
    "blockjobs": ("blockresize", "blockpull", "blockcommit", "blockcopy", "blockjob"),
    "tune": (
        "vcpuinfo",
        "vcpupin",
        "emulatorpin",
        "iothreadinfo",
        "iothreadpin",
        "blkdeviotune",
        "cpu-stats",
    ),
    "storage": (
        "pool-define-as",
        "pool-define",
        "pool-build",
        "pool-destroy",
        "pool-delete",
        "pool-undefine",
        "pool-refresh",
        "pool-start",
        "pool-autostart",
        "pool-list",
        "pool-info",
        "pool-dumpxml",
        "vol-create-as",
        "vol-create",
        "vol-clone",
        "vol-delete",
        "vol-resize",
        "vol-wipe",
        "vol-list",
        "vol-info",
        "vol-dumpxml",
        "vol-path",
        "vol-upload",
        "vol-download",
    ),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}


def _is_command(name: str) -> bool:
    return name in _COMMANDS or name in _MODULE_OF


def _command_modules(names: Iterable[str] | None) -> list[Any]:
    """The command modules that define ``names`` (every one when None), imported."""
    wanted = _MODULES if names is None else {_MODULE_OF[n] for n in names if n in _MODULE_OF}
    # __import__, not importlib's import_module: importlib imports warnings (issue 9).
    modules = [f"{__package__}.{m}" for m in _MODULES if m in wanted]
    for module in modules:
        __import__(module)
    return [sys.modules[module] for module in modules]


_IGNORED = IgnoredSpec()


def build_parser(names: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser of one command's words (``list --all``): of the commands
    ``names`` (every command when None), importing the modules that define them."""
    return parsing.argparse_parser(command_specs(names).values(), _PARSERS)


def command_specs(names: Iterable[str] | None = None) -> dict[str, CommandSpec]:
    """The arguments of the commands ``names`` (every command when None), as declared here
    and in the modules that define them (imported), by name: the one declaration of each
    command's arguments (:mod:`.parsing` parses words after it, or argparse does)."""
    wanted = None if names is None else set(names)
    specs: dict[str, CommandSpec] = {}

    def add(name: str, *domain_args: str) -> CommandSpec:
        if wanted is not None and name not in wanted:
            return _IGNORED
        p = specs[name] = CommandSpec(name, _COMMANDS[name][1])
        for a in domain_args:
            p.add_argument(a)
        return p

    p = add("list")
    p.add_argument("--all", action="store_true", help="active and inactive domains")
    p.add_argument("--inactive", action="store_true", help="inactive domains only")
    p.add_argument(
        "--managed-save", action="store_true", help='mark domains with a managed save "saved"'
    )
    p.add_argument("--name", action="store_true", help="only the names, one per line")
    p.add_argument("--uuid", action="store_true", help="only the UUIDs, one per line")
    add("define", "file")
    p = add("create", "file")
    p.add_argument("--paused", action="store_true")
    p = add("undefine", "domain")
    p.add_argument("--nvram", action="store_true", help="remove the UEFI NVRAM file too")
    p.add_argument("--keep-tpm", action="store_true", help="keep the emulated TPM's state")
    p.add_argument(
        "--snapshots-metadata", action="store_true", help="forget its snapshots' metadata too"
    )
    p.add_argument("--managed-save", action="store_true", help="remove its managed save image")
    p.add_argument(
        "--remove-all-storage",
        action="store_true",
        help="remove all associated storage volumes (use with caution)",
    )
    p.add_argument(
        "--storage", help="remove these storage volumes (comma separated targets or sources)"
    )
    p = add("domdisplay", "domain")
    p.add_argument("--include-password", action="store_true", help="includes the password")
    p = add("start", "domain")
    p.add_argument("--paused", action="store_true", help="leave the guest paused")
    p.add_argument(
        "--force-boot", action="store_true", help="boot, discarding any managed save image"
    )
    p = add("shutdown", "domain")
    p.add_argument("--mode", help="how to ask the guest: acpi, agent, or both (acpi,agent)")
    for name in (
        "reboot",
        "reset",
        "destroy",
        "suspend",
        "resume",
        "dominfo",
        "domid",
        "domuuid",
        "domname",
    ):
        add(name, "domain")
    p = add("autostart", "domain")
    p.add_argument("--disable", action="store_true", help="do not start it with its node")
    p = add("domstate", "domain")
    p.add_argument("--reason", action="store_true", help="also print the reason")
    p = add("dumpxml", "domain")
    p.add_argument("--inactive", action="store_true", help="the persistent configuration")
    p.add_argument(
        "--security-info",
        action="store_true",
        help="include security sensitive information in XML dump",
    )
    add("capabilities")
    add("hostname")
    add("uri")
    add("nodeinfo")
    add("version")
    p = add("qemu-monitor-command", "domain")
    p.add_argument(
        "cmd", nargs="+", help='QMP command as JSON, e.g. \'{"execute":"query-status"}\''
    )
    p.add_argument("--pretty", action="store_true")
    add("dumpxml-from-file", "file")
    p = add("domxml-to-native")
    p.add_argument("format", choices=["qemu-argv"])
    p.add_argument("file")
    p = add("event")
    p.add_argument("--domain", help="only events of this domain")
    p.add_argument("--event", help="only this event type (see --list)")
    p.add_argument("--all", action="store_true", help="all event types (the default)")
    p.add_argument("--loop", action="store_true", help="keep receiving events")
    p.add_argument("--timeout", help="stop after this many seconds")
    p.add_argument("--timestamp", action="store_true", help="prefix events with a timestamp")
    p.add_argument(
        "--seq", action="store_true", help="prefix events with their number (for --since)"
    )
    p.add_argument("--list", action="store_true", help="list the event types")
    p.add_argument(
        "--since",
        type=int,
        metavar="SEQ",
        help="first replay the journaled events numbered above SEQ (0: all that are "
        "retained), then go on with new ones; the last seq you saw resumes where you left",
    )
    p = add("net-list")
    p.add_argument("--all", action="store_true")
    p = add("help")
    p.add_argument("topic", nargs="?", metavar="COMMAND", help="a command to describe")
    add("quit")
    add("exit")
    for module in _command_modules(wanted):
        module.add_parsers(add)
    return specs


# -- running commands ----------------------------------------------------------------------------


@command("help", "print help")
async def cmd_help(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    if args.topic:
        if not _is_command(args.topic):
            raise CommandError(f"command or command group '{args.topic}' doesn't exist")
        build_parser([args.topic])  # fills _PARSERS
        print(_PARSERS[args.topic].format_help())
        return 0
    _command_modules(None)  # registers every command, with its help line
    width = max(len(name) for name in _COMMANDS) + 4
    lines = [f"    {name:<{width}}{text}" for name, (_, text) in sorted(_COMMANDS.items())]
    print("\n".join(["Commands:", "", *lines, ""]))
    return 0


async def _stop(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    return 0  # the runner stops at quit and exit


command("quit", "quit this interactive terminal")(_stop)
command("exit", "quit this interactive terminal")(_stop)
#: Commands that end a command list (and the interactive shell), printing nothing.
_QUIT = ("quit", "exit")


def parse_commands(words: list[str]) -> list[argparse.Namespace]:
    """The commands ``words`` hold: one command, or (a single word) a command string.

    Everything is parsed before anything runs, as virsh does: raises :class:`CommandError`
    for the first command that is unknown or malformed.
    """
    groups = vsh.split_commands(words[0]) if len(words) == 1 else [words]
    for group in groups:
        if not _is_command(group[0]):
            raise CommandError(f"unknown command: '{group[0]}'")
    specs = command_specs([group[0] for group in groups])
    quick = []
    for group in groups:
        args = parsing.quick_parse(specs[group[0]], group)
        if args is None:
            break
        quick.append(args)
    else:
        return quick
    parser = parsing.argparse_parser(specs.values(), _PARSERS)
    commands = []
    for group in groups:
        args, extra = parser.parse_known_args(group)
        if extra:
            # virsh's words for what the command does not take
            if extra[0].startswith("--"):
                raise CommandError(f"command '{group[0]}' doesn't support option {extra[0]}")
            raise CommandError(f"unexpected data '{extra[0]}'")
        commands.append(args)
    return commands


async def run_commands(conn: ConnectionCalls, commands: list[argparse.Namespace]) -> int:
    """Run commands in order, as virsh does: a failed one is reported and the next runs; the
    status is the last one's. ``quit`` and ``exit`` end the list."""
    status = 0
    for args in commands:
        if args.command in _QUIT:
            break
        status = await run_command(conn, args)
    return status


async def run_command(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    """Run one command; a failure is reported (:func:`vsh.report`) and its status is 1."""
    try:
        return await _COMMANDS[args.command][0](conn, args)
    except BrokenPipeError:
        raise  # the reader went away (asvirt list | head): nothing to report, to no one
    except ConnectFailed:
        raise  # no command's failure: the run ends
    except Exception as exc:
        err = _first_error(exc)
        if err is None or (vsh.error_lines(err) is None and os.environ.get("ASVIRT_DEBUG")):
            raise  # a bug: ASVIRT_DEBUG=1 shows its traceback
        vsh.report(err)
        return 1


async def run(uri: str | None, commands: list[argparse.Namespace]) -> int:
    async with asvirt.open(uri) as conn:
        return await run_commands(conn, commands)


def run_one_shot(uri: str | None, commands: list[argparse.Namespace]) -> int | None:
    """Run commands on a daemon without an event loop; None if they cannot be."""
    if any(args.command in _NEEDS_LOOP for args in commands):
        return None
    from .quick import QuickConnection, run_sync, socket_of

    uri = uri or asvirt.default_uri()
    path = socket_of(uri)
    if path is None:
        return None
    try:
        conn = QuickConnection(uri, path)
    except OSError:
        return None  # not there: the full client says why (or starts a session daemon)
    try:
        return run_sync(run_commands(conn, commands))
    except ConnectFailed as failed:
        raise failed.error from None
    finally:
        conn.close()


#: What the interactive shell says first (virsh's words, with asvirt's name).
BANNER = (
    "Welcome to asvirt, the virtualization interactive terminal.\n\n"
    "Type:  'help' for help with commands\n"
    "       'quit' to quit\n\n"
)
PROMPT = "asvirt # "


async def shell(uri: str | None) -> int:
    """virsh's interactive terminal: read a command string at a time, run it, until quit,
    exit or the end of input. One connection serves every command."""
    import trio

    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())

    async with asvirt.open(uri) as conn:
        sys.stdout.write(BANNER)
        while True:
            try:
                line = await trio.to_thread.run_sync(input, PROMPT, abandon_on_cancel=True)
            except EOFError:
                print()  # virsh ends the line after the last prompt
                return 0
            if not line.strip():
                continue
            try:
                commands = parse_commands([line])
            except CommandError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                continue
            for args in commands:
                if args.command in _QUIT:
                    return 0
                await run_command(conn, args)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # A one-shot command lives for milliseconds and reference counting frees what it drops;
    # the cycle collector's passes over the objects its imports make (classes, enums, the
    # driver API's declaration) cost it 4% of its instructions for nothing. What runs on
    # under trio (the shell, event, the full client) collects again.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _main(argv, collecting)
    finally:
        if collecting:
            gc.enable()


def process_main(collecting: bool | None = None) -> int:
    """:func:`main` for a process that exits after it: the ``asvirt`` console script (through
    :func:`asvirt.cli.process_main`, which says whether the cycle collector was on:
    ``collecting``; None: ask it).

    A one-shot command (or a command line refused before anything ran) ends the process at
    once, stdout and stderr flushed: it ran no event loop and no thread and wrote no file
    but those two, so the interpreter's teardown (freeing every module, collecting) has
    nothing to do for it, and it cost such a command a tenth of its instructions. What ran
    under trio exits as usual.
    """
    if collecting is None:
        collecting = gc.isenabled()
    gc.disable()
    status = _main(None, collecting)
    if "trio" in sys.modules or "threading" in sys.modules:
        return status
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away (asvirt list | head), as main() says
        status = 1
    os._exit(status)


def _main(argv: list[str] | None, collecting: bool) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        found = parsing.quick_global(argv)
        if found is None:
            opts = parsing.global_parser(asvirt.__version__).parse_args(argv)
            found = opts.connect, opts.words
        connect, words = found
        commands = parse_commands(words) if words else None
    except CommandError as bad:
        print(f"error: {bad}", file=sys.stderr)
        return 1
    for args in commands or ():
        args.connect = connect
    try:
        status = None if commands is None else run_one_shot(connect, commands)
        if status is not None:
            return status
        if collecting:
            gc.enable()
        import trio

        if commands is None:
            return trio.run(shell, connect)
        return trio.run(run, connect, commands)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except BaseException as exc:
        # Opening the connection failed, or a bug.
        err = _first_error(exc)
        if err is None or os.environ.get("ASVIRT_DEBUG"):
            raise
        if isinstance(err, asvirt.AsvirtError):
            print(f"error: {err}", file=sys.stderr)
        else:
            # A bug, not a user error; ASVIRT_DEBUG=1 shows the traceback.
            print(f"error: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _first_error(exc: BaseException) -> Exception | None:
    """The error to report: the exception itself, or the first one inside a group."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, Exception) else None


if __name__ == "__main__":
    sys.exit(process_main())
