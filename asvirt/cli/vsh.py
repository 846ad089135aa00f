"""virsh's command-line machinery, shared by every command: parsing, running, reporting errors.

What virsh does, and so asvirt (libvirt's ``tools/vsh.c``):

* ``virsh CMD ARGS...`` runs one command; ``virsh 'CMD ARGS; CMD ARGS'`` (a single argument)
  is a command *string*: tokenized as :func:`split_commands` does, every command parsed before
  any runs (one bad command and nothing runs), then run in order. A failed command does not
  stop the ones after it; the exit status is the last command's.
* After each command virsh prints an empty line on stdout, whether it succeeded or failed.
  asvirt's commands print their own (``print(f"Domain '{name}' started\\n")``; a
  :func:`~asvirt.cli.render.table` ends with it), so the runner prints it only after a
  failure (:func:`report`).
* An error is ``error: MESSAGE`` on stderr. Where virsh says what failed first (``error:
  Failed to resume domain 'vm1'``, then the hypervisor's error), a command wraps the call in
  :func:`failing` and :func:`report` prints both lines.
* An unknown command is ``error: unknown command: 'x'``; every parse error exits 1.
"""

from __future__ import annotations

import math
import sys

import asvirt

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

    from ..events import EventKind
    from ..events.bus import DomainFilter


class CommandError(Exception):
    """A command line virsh would refuse before running anything (exit status 1)."""


class CommandFailed(Exception):
    """An error raised inside :func:`failing`: what failed, then the error itself."""

    def __init__(self, what: str, error: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.error = error


class ConnectFailed(Exception):
    """The connection could not be opened (a daemon's hello failed) although a command had
    begun: not that command's failure. The run ends, reporting ``error`` as a connection
    that cannot be opened is reported (the one-shot client says hello with its first
    request, so that is where it learns of it)."""

    def __init__(self, error: asvirt.AsvirtError) -> None:
        super().__init__(str(error))
        self.error = error


class failing:
    """Report an error raised inside as virsh does: ``error: WHAT``, then the error.

    ``with failing(f"Failed to resume domain '{dom.name}'"): await dom.resume()``

    (A class, not a :func:`contextlib.contextmanager`: contextlib costs a one-shot command
    more than its requests.)
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, err: BaseException | None, tb: object) -> None:
        if isinstance(err, asvirt.AsvirtError):
            raise CommandFailed(self._what, err) from err


#: libvirt's wording of an error it reports, by code (``virErrorMsg``, src/util/virerror.c):
#: virsh prints the hypervisor's error after its own line as ``error: PREFIX: MESSAGE``.
_LIBVIRT_PREFIXES: dict[asvirt.ErrorCode, str] = {
    asvirt.ErrorCode.INTERNAL_ERROR: "internal error: ",
    asvirt.ErrorCode.NO_SUPPORT: "this function is not supported by the connection driver: ",
    asvirt.ErrorCode.OPERATION_DENIED: "operation forbidden: ",
    asvirt.ErrorCode.INVALID_ARG: "invalid argument: ",
    asvirt.ErrorCode.OPERATION_FAILED: "operation failed: ",
    asvirt.ErrorCode.XML_ERROR: "XML error: ",
    asvirt.ErrorCode.NO_DOMAIN: "Domain not found: ",
    asvirt.ErrorCode.NO_NETWORK: "Network not found: ",
    asvirt.ErrorCode.NO_STORAGE_POOL: "Storage pool not found: ",
    asvirt.ErrorCode.NO_STORAGE_VOL: "Storage volume not found: ",
    asvirt.ErrorCode.OPERATION_INVALID: "Requested operation is not valid: ",
    asvirt.ErrorCode.CONFIG_UNSUPPORTED: "unsupported configuration: ",
    asvirt.ErrorCode.OPERATION_TIMEOUT: "Timed out during operation: ",
    asvirt.ErrorCode.NO_DOMAIN_SNAPSHOT: "Domain snapshot not found: ",
    asvirt.ErrorCode.NO_SECRET: "Secret not found: ",
    asvirt.ErrorCode.INVALID_SECRET: "Invalid secret: ",
    asvirt.ErrorCode.NO_DOMAIN_METADATA: "metadata not found: ",
}


def libvirt_message(err: asvirt.AsvirtError) -> str:
    """An error's message as libvirt words it: prefixed by what its code means."""
    return _LIBVIRT_PREFIXES.get(err.code, "") + err.message


def error_lines(exc: BaseException) -> list[str] | None:
    """The ``error: ...`` lines for ``exc``, or None when it is not a user's error (a bug)."""
    if isinstance(exc, CommandFailed):
        if isinstance(exc.error, asvirt.AsvirtError):
            return [f"error: {exc.what}", f"error: {libvirt_message(exc.error)}"]
        return [f"error: {exc.what}", *(error_lines(exc.error) or [])]
    if isinstance(exc, asvirt.AsvirtError | CommandError):
        return [f"error: {exc}"]
    return None


def report(exc: BaseException) -> None:
    """Print a failed command's error lines on stderr, then virsh's empty line on stdout.

    stdout is flushed first, so that ``2>&1`` interleaves the streams as virsh does.
    """
    lines = error_lines(exc)
    if lines is None:
        lines = [f"error: internal error: {type(exc).__name__}: {exc}"]
    sys.stdout.flush()
    sys.stderr.write("".join(line + "\n" for line in lines))
    sys.stderr.flush()
    print(flush=True)


#: The longest ``--timeout`` virsh takes: its milliseconds must fit an int.
MAX_TIMEOUT_SECONDS = 2147483647 // 1000


def timeout_seconds(text: str | None) -> float | None:
    """A ``--timeout`` in seconds, checked when the command runs, as virsh does
    (``vshCommandOptTimeoutToMs``); asvirt also takes fractions of a second."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_TIMEOUT_SECONDS:  # also refuses nan
        raise CommandError(
            f"Numeric value '{text}' for <timeout> option is malformed or out of range"
        )
    return value


def events_received(count: int, *, timed_out: bool) -> int:
    """End an event-waiting command (``event``, ``net-event``) as virsh does; its status.

    ``event loop timed out`` when ``--timeout`` ended the wait, then the count; the command
    fails (status 1, with no error line) when no event came.
    """
    if timed_out:
        print("event loop timed out")
    print(f"events received: {count}\n")
    return 0 if count else 1


async def print_events(
    conn: object,
    target: DomainFilter,
    kinds: Iterable[EventKind] | EventKind | None,
    args: argparse.Namespace,
    *,
    since: int | None = None,
    seq: bool = False,
) -> int:
    """Wait for and print events as virsh's event commands do (``event``, ``net-event``,
    ``secret-event``): of ``kinds`` about ``target`` (None: any), one or (``args.loop``) all
    until ``args.timeout``, each on a line (``args.timestamp``: after the time it happened;
    ``seq``: after its journal number); the command's status (:func:`events_received`)."""
    import datetime

    import trio

    assert isinstance(conn, asvirt.Connection)  # needs_loop: the full client
    timeout = timeout_seconds(args.timeout) or math.inf
    count = 0
    with trio.move_on_after(timeout) as waited:
        async with conn.subscribe(target, kinds, since=since) as events:
            async for ev in events:
                line = ev.describe()
                if args.timestamp:
                    stamp = datetime.datetime.fromtimestamp(ev.timestamp, datetime.UTC)
                    line = f"{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}+0000: {line}"
                if seq:
                    line = f"{ev.seq}: {line}"
                print(line, flush=True)
                count += 1
                if not args.loop:
                    break
    return events_received(count, timed_out=waited.cancelled_caught)


def split_commands(text: str) -> list[list[str]]:
    """Split a command string into commands and their words, as virsh does.

    Words are separated by blanks; commands by ``;`` or a newline. ``'...'`` quotes
    literally; ``"..."`` quotes, with ``\\`` escaping inside; ``\\`` escapes outside quotes;
    a backslash-newline is dropped; a word starting with ``#`` comments out the rest of the
    line (libvirt's ``vshCommandStringGetArg``). Raises :class:`CommandError` on a dangling
    ``\\`` or a missing ``"``, as virsh.
    """
    commands: list[list[str]] = []
    words: list[str] = []
    i, n = 0, len(text)

    def end_command() -> None:
        nonlocal words
        if words:
            commands.append(words)
        words = []

    while True:
        while i < n and (text[i] in " \t" or (text[i] == "\\" and text[i + 1 : i + 2] == "\n")):
            i += 2 if text[i] == "\\" else 1
        if i >= n:
            break
        if text[i] in ";\n":
            i += 1
            end_command()
            continue
        if text[i] == "#":
            while i < n and text[i] != "\n":
                i += 1
            i += 1
            end_command()
            continue
        word: list[str] = []
        single = double = False
        while i < n:
            ch = text[i]
            if not single and not double and ch in " \t;\n":
                break
            if not double and ch == "'":
                single = not single
                i += 1
                continue
            if not single and ch == "\\":
                i += 1
                if i >= n:
                    raise CommandError("dangling \\")
                if text[i] == "\n":
                    i += 1
                    continue
                ch = text[i]
            elif not single and ch == '"':
                double = not double
                i += 1
                continue
            word.append(ch)
            i += 1
        if double:
            raise CommandError('missing "')
        words.append("".join(word))
    end_command()
    return commands


__all__ = [
    "CommandError",
    "CommandFailed",
    "error_lines",
    "events_received",
    "failing",
    "libvirt_message",
    "report",
    "split_commands",
    "timeout_seconds",
]
