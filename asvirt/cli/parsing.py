"""Command lines, parsed as argparse parses them, mostly without argparse.

The commands' arguments are declared once, in argparse's words (``p.add_argument("--all",
action="store_true", help=...)``: :func:`asvirt.cli.main.command_specs`), and recorded as
:class:`CommandSpec`\\ s. A command line whose words are plain (``list --all``, ``dominfo
vm1``, ``shutdown vm1 --mode acpi``) is parsed from the recording by :func:`quick_parse`, to
the namespace argparse would make; anything else (``--help``, an abbreviated or unknown
option, ``--opt=value``, a type to convert, a choice to check) goes to argparse, built from the
same recording (:func:`argparse_parser`), which parses it or says what is wrong. importing
argparse (and gettext, locale and re behind it) cost a one-shot command more than its run.
"""

from __future__ import annotations

import types

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable
    from typing import Any, NoReturn


class CommandSpec:
    """One command's arguments, as its declaration adds them: ``add_argument``'s and
    ``add_mutually_exclusive_group``'s calls, recorded in order."""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        #: (group number or None, args, kwargs) of each add_argument call.
        self.arguments: list[tuple[int | None, tuple[str, ...], dict[str, Any]]] = []
        #: Each mutually exclusive group's kwargs, by number.
        self.groups: list[dict[str, Any]] = []

    def add_argument(self, *args: str, **kwargs: Any) -> None:
        self.arguments.append((None, args, kwargs))

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Group:
        self.groups.append(kwargs)
        return _Group(self, len(self.groups) - 1)


class _Group:
    """A mutually exclusive group of a :class:`CommandSpec`."""

    def __init__(self, spec: CommandSpec, number: int) -> None:
        self._spec = spec
        self._number = number

    def add_argument(self, *args: str, **kwargs: Any) -> None:
        self._spec.arguments.append((self._number, args, kwargs))


class IgnoredSpec(CommandSpec):
    """Stands in for the spec of a command not being parsed: what is added is dropped."""

    def __init__(self) -> None:
        super().__init__("", "")

    def add_argument(self, *args: str, **kwargs: Any) -> None:
        pass


#: What quick_parse understands of an argument's declaration; anything else is argparse's.
_PLAIN = frozenset({"help", "metavar", "dest", "default"})


def quick_parse(spec: CommandSpec, words: list[str]) -> argparse.Namespace | None:
    """``words`` (the command's name first) parsed after ``spec``, as argparse would; None
    when argparse must parse them (see the module docstring).

    The namespace is a :class:`types.SimpleNamespace` with argparse's attributes:
    ``command``, then each argument's dest (its default when not given).
    """
    if spec.groups:
        return None  # exclusion rules: argparse's
    values: dict[str, Any] = {"command": spec.name}
    positionals: list[tuple[str, bool]] = []  # (dest, required)
    flags: dict[str, tuple[str, bool]] = {}  # option -> (dest, takes a value)
    for _, args, kwargs in spec.arguments:
        extra = kwargs.keys() - _PLAIN
        if not args[0].startswith("-"):
            nargs = kwargs.get("nargs")
            if extra - {"nargs"} or nargs not in (None, "?"):
                return None
            dest = kwargs.get("dest", args[0])
            positionals.append((dest, nargs is None))
            values[dest] = kwargs.get("default")
            continue
        action = kwargs.get("action")
        if extra - {"action"} or action not in (None, "store_true"):
            return None
        dest = kwargs.get("dest") or _option_dest(args)
        values[dest] = kwargs.get("default", False if action else None)
        for option in args:
            flags[option] = (dest, action is None)
    given = iter(words[1:])
    at = 0
    for word in given:
        if word.startswith("-") and word != "-":
            found = flags.get(word)
            if found is None:
                return None  # --help, abbreviations, --opt=value, "--", negative numbers...
            dest, takes_value = found
            if not takes_value:
                values[dest] = True
                continue
            value = next(given, None)
            if value is None or value.startswith("-"):
                return None  # argparse says what is missing
            values[dest] = value
        elif at < len(positionals):
            values[positionals[at][0]] = word
            at += 1
        else:
            return None  # argparse says what is unexpected
    if any(required for _, required in positionals[at:]):
        return None
    # Not argparse's Namespace (that would import argparse): one with the same attributes.
    return types.SimpleNamespace(**values)  # type: ignore[return-value]


def _option_dest(options: tuple[str, ...]) -> str:
    """argparse's dest for an option: its first long name, else its first name."""
    name = next((o for o in options if o.startswith("--")), options[0])
    return name.lstrip("-").replace("-", "_")


def quick_global(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """``asvirt [-c URI] WORDS...``: the URI and the command's words, as the global parser
    (:func:`global_parser`) parses them; None when it must (another option, ``--help``...)."""
    connect = None
    at = 0
    while at < len(argv) and argv[at].startswith("-"):
        if argv[at] not in ("-c", "--connect") or at + 1 == len(argv):
            return None
        if argv[at + 1].startswith("-"):
            return None
        connect = argv[at + 1]
        at += 2
    return connect, argv[at:]


# -- argparse ------------------------------------------------------------------------------------


def argparse_parser(
    specs: Iterable[CommandSpec], parsers: dict[str, argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """The parser of the commands ``specs`` (``list --all``): one subparser each, added to
    ``parsers`` by name (for ``help COMMAND``)."""
    parser = _parser_class()(prog="asvirt", add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in specs:
        p = sub.add_parser(spec.name, help=spec.help)
        parsers[spec.name] = p
        groups = [p.add_mutually_exclusive_group(**kwargs) for kwargs in spec.groups]
        for group, args, kwargs in spec.arguments:
            (p if group is None else groups[group]).add_argument(*args, **kwargs)
    return parser


def global_parser(version: str) -> argparse.ArgumentParser:
    """``asvirt [-c URI] [-v] [-h] WORDS...``."""
    import argparse

    parser = _parser_class()(
        prog="asvirt",
        usage="asvirt [-c URI] [COMMAND [ARGS...] | 'COMMAND [ARGS]; COMMAND [ARGS]...']",
        description="Manage QEMU virtual machines (virsh's commands, on asvirt). Without a "
        "command, an interactive shell; 'asvirt help' lists the commands.",
    )
    parser.add_argument("-c", "--connect", metavar="URI", help="connection URI")
    parser.add_argument("-v", "--version", action="version", version=version)
    parser.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


_PARSER_CLASS: list[type[argparse.ArgumentParser]] = []


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse, but a bad command line is one ``error:`` line and exit status 1, as in
    virsh (not a usage text and status 2); help laid out for the terminal's width without
    importing :mod:`shutil` (and the compression modules it imports), as
    :func:`shutil.get_terminal_size` finds it. Made on first use: it imports argparse."""
    if _PARSER_CLASS:
        return _PARSER_CLASS[0]
    import argparse

    from .vsh import CommandError

    class HelpFormatter(argparse.HelpFormatter):
        def __init__(
            self,
            prog: str,
            indent_increment: int = 2,
            max_help_position: int = 24,
            width: int | None = None,
        ) -> None:
            if width is None:
                width = _terminal_columns() - 2  # argparse's margin
            super().__init__(prog, indent_increment, max_help_position, width)

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("formatter_class", HelpFormatter)  # subparsers are Parsers too
            super().__init__(*args, **kwargs)

        def error(self, message: str) -> NoReturn:
            raise CommandError(message)

    _PARSER_CLASS.append(Parser)
    return Parser


def _terminal_columns() -> int:
    """``$COLUMNS``, else the width of the terminal on stdout, else 80."""
    import os
    import sys

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


__all__ = [
    "CommandSpec",
    "IgnoredSpec",
    "argparse_parser",
    "global_parser",
    "quick_global",
    "quick_parse",
]
