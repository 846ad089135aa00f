"""The CLI prints what virsh prints, byte for byte: the transcripts in tests/data/virsh.

Each transcript command runs on ``test:///default`` (no QEMU: these are fast), with asvirt in
this process (a fresh test node per command, as each virsh process gets), or in a process of
its own when it reads stdin (the interactive shell). When libvirt's ``virsh`` is installed,
the same commands run with it too, so that the transcripts are checked against the real thing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asvirt.cli import render, vsh
from asvirt.cli.main import main as cli_main

DATA = Path(__file__).parent / "data" / "virsh"
REPO = Path(__file__).resolve().parents[1]
VIRSH = shutil.which("virsh")


@dataclasses.dataclass
class Command:
    """One ``$`` command of a transcript, with what it must print."""

    where: str
    argv: list[str]
    stdin: list[str] = dataclasses.field(default_factory=list)
    stdout: list[str] = dataclasses.field(default_factory=list)
    stderr: list[str] = dataclasses.field(default_factory=list)
    status: int = 0
    asvirt_only: str | None = None


def load(path: Path) -> list[Command]:
    """The commands of a transcript (format: tests/data/virsh/README.md)."""
    commands: list[Command] = []
    only: str | None = None
    for number, line in enumerate(path.read_text().split("\n"), 1):
        where = f"{path.name}:{number}"
        tag, text = line[:1], line[2:] if line[1:2] == " " else line[1:]
        if line == "" or tag == "#":
            continue
        if tag == "%":
            only = text.removeprefix("asvirt-only:").strip()
            continue
        if tag == "$":
            commands.append(Command(where, shlex.split(text), asvirt_only=only))
            only = None
            continue
        assert commands, f"{where}: output before any command"
        cmd = commands[-1]
        if tag == "<":
            cmd.stdin.append(text)
        elif tag == "|":
            cmd.stdout.append(text)
        elif tag == "!":
            cmd.stderr.append(text)
        elif tag == "?":
            cmd.status = int(text)
        else:
            raise AssertionError(f"{where}: unknown line {line!r}")
    return commands


COMMANDS = [c for path in sorted(DATA.glob("*.txt")) for c in load(path)]


def expect(lines: list[str], text: str, *, prog: str) -> None:
    """``text`` is exactly ``lines`` (each ending in a newline), placeholders filled."""
    wanted = "".join(line + "\n" for line in lines)
    pattern = re.escape(wanted)
    for placeholder, value in (
        ("{*}", "[^\n]*"),
        ("{hostname}", re.escape(socket.gethostname())),
        ("{prog}", re.escape(prog)),
    ):
        pattern = pattern.replace(re.escape(placeholder), value)
    if re.fullmatch(pattern, text) is None:
        assert text == wanted  # shows the difference


def check(cmd: Command, status: int, out: str, err: str, *, prog: str) -> None:
    expect(cmd.stdout, out, prog=prog)
    expect(cmd.stderr, err, prog=prog)
    assert status == cmd.status


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.where)
def test_asvirt_prints_what_virsh_prints(
    cmd: Command, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    assert cmd.argv[0] == "virsh"
    monkeypatch.chdir(REPO)  # transcripts name their files from the repository's root
    if cmd.stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "asvirt", *cmd.argv[1:]],
            input="".join(line + "\n" for line in cmd.stdin),
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        check(cmd, proc.returncode, proc.stdout, proc.stderr, prog="asvirt")
        return
    status = cli_main(cmd.argv[1:])
    captured = capsys.readouterr()
    check(cmd, status, captured.out, captured.err, prog="asvirt")


@pytest.mark.skipif(VIRSH is None, reason="virsh is not installed (Debian's libvirt-clients)")
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.where)
def test_the_transcripts_are_what_virsh_prints(cmd: Command):
    if cmd.asvirt_only:
        pytest.skip(cmd.asvirt_only)
    assert VIRSH is not None
    proc = subprocess.run(
        [VIRSH, *cmd.argv[1:]],
        input="".join(line + "\n" for line in cmd.stdin),
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        cwd=REPO,
        timeout=60,
    )
    check(cmd, proc.returncode, proc.stdout, proc.stderr, prog="virsh")


# -- the shared helpers, on what the transcripts do not show -------------------------------------


def test_a_table_is_measured_as_the_terminal_shows_it():
    # vshTableSafeEncode: wide characters take two columns, control characters are escaped
    # (four columns); the last column is never padded, even when empty.
    assert render.table(("A", "B"), [("日本", "x"), ("a\tb", "")]) == (
        " A        B\n-------------\n 日本     x\n a\\x09b   \n"
    )


def test_command_strings_split_as_virsh_splits_them():
    assert vsh.split_commands("list --all;dominfo 'a b'\n uri # comment; not a command") == [
        ["list", "--all"],
        ["dominfo", "a b"],
        ["uri"],
    ]
    assert vsh.split_commands(r'echo "a\"b" c\ d' + " 'e\\f'") == [["echo", 'a"b', "c d", "e\\f"]]
    assert vsh.split_commands(" ; ;") == []
    for bad in ('echo "open', "echo dangling\\"):
        with pytest.raises(vsh.CommandError):
            vsh.split_commands(bad)


def test_help_lists_the_commands_and_describes_one(capsys: pytest.CaptureFixture[str]):
    assert cli_main(["-c", "test:///default", "help"]) == 0
    listing = capsys.readouterr().out
    assert "    dominfo " in listing and "    nodeinfo " in listing and listing.endswith("\n\n")
    assert cli_main(["-c", "test:///default", "help list"]) == 0
    assert capsys.readouterr().out.startswith("usage: asvirt list [-h] [--all]")
    assert cli_main(["-c", "test:///default", "help", "nope"]) == 1
    assert capsys.readouterr().err == "error: command or command group 'nope' doesn't exist\n"
