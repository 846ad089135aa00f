"""``qemu-img``, supervised: every run is a trio subprocess with a deadline.

:func:`run` starts ``qemu-img`` with no stdin, its output captured, and waits for it within a
deadline; when the deadline passes, or the caller is cancelled, the process is killed at once
(SIGKILL: an interrupted copy is thrown away by the caller, there is nothing to save). A
failure raises an :class:`~asvirt.AsvirtError` that carries what ``qemu-img`` said on stderr.

Long runs (``convert``) are started with ``-p``: ``qemu-img`` then prints its progress on
stdout (``    (42.00/100%)\\r``), which is parsed and handed to a callback. For them the
deadline is a *stall* deadline: it is pushed back each time progress is reported, so a copy
of any size may take as long as it keeps moving, and one that hangs is killed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import trio

from ...errors import OperationFailedError, OperationTimeoutError
from ...log import get_logger
from ..base import ProgressCallback
from ..secret import secret_pipes

log = get_logger("asvirt.storage.qemu_img")

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
#: What is kept of a run's stderr for its error message (qemu-img says little).
_STDERR_KEEP = 8192
#: What is kept of stdout (``info --output=json`` of a long backing chain is still small).
_STDOUT_KEEP = 4 * 1024 * 1024


def qemu_img_binary() -> str:
    """The ``qemu-img`` on PATH; OperationFailedError when there is none."""
    exe = shutil.which("qemu-img")
    if exe is None:
        raise OperationFailedError(
            "qemu-img is not installed (Debian: apt-get install qemu-utils); "
            "it creates and inspects the volumes of dir pools"
        )
    return exe


async def _kill(process: trio.Process) -> None:
    process.kill()
    await trio.lowlevel.checkpoint()


async def run(
    args: Sequence[str],
    *,
    what: str,
    timeout: float,
    progress: ProgressCallback | None = None,
    pass_fds: Sequence[int] = (),
) -> bytes:
    """Run ``qemu-img ARGS`` and return its stdout (``pass_fds``: descriptors it inherits,
    such as a pipe holding a secret it reads as ``/proc/self/fd/N``).

    ``what`` says what the run is for, in errors ("create volume 'x'"). Without ``progress``
    the run must end within ``timeout`` seconds; with it, ``-p`` must be among ``args`` and
    the run is killed only when ``timeout`` seconds pass with no progress reported.
    Raises OperationTimeoutError when killed for time, OperationFailedError when
    ``qemu-img`` fails (with its stderr), and whatever cancels the caller (after killing it).
    """
    argv = [qemu_img_binary(), *args]
    stdout = bytearray()
    stderr = bytearray()
    env = {**os.environ, "LC_ALL": "C"}
    start = trio.current_time()
    with trio.CancelScope(deadline=start + timeout) as deadline:
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                    deliver_cancel=_kill,
                    env=env,
                    pass_fds=tuple(pass_fds),
                )
            )
            assert proc.stdout is not None and proc.stderr is not None

            async def read_stderr() -> None:
                assert proc.stderr is not None
                async for chunk in proc.stderr:
                    stderr.extend(chunk)
                    del stderr[:-_STDERR_KEEP]

            nursery.start_soon(read_stderr)
            last = -1.0
            async for chunk in proc.stdout:
                if progress is None:
                    stdout.extend(chunk[: max(0, _STDOUT_KEEP - len(stdout))])
                    continue
                for m in _PROGRESS_RE.finditer(chunk):
                    fraction = min(1.0, float(m.group(1)) / 100)
                    if fraction > last:
                        last = fraction
                        deadline.deadline = trio.current_time() + timeout
                        progress(fraction)
    message = bytes(stderr).decode(errors="replace").strip()
    if deadline.cancelled_caught:
        kind = "made no progress for" if progress is not None else "did not finish within"
        raise OperationTimeoutError(
            f"cannot {what}: qemu-img {kind} {timeout:g} seconds and was killed"
            + (f" ({message})" if message else "")
        )
    if proc.returncode != 0:
        log.info("qemu-img failed", argv=argv, status=proc.returncode, stderr=message)
        raise OperationFailedError(
            f"cannot {what}: qemu-img failed: {_tidy(message) or f'exit status {proc.returncode}'}"
        )
    log.debug("qemu-img ran", argv=argv, seconds=round(trio.current_time() - start, 3))
    return bytes(stdout)


@contextlib.contextmanager
def secret_objects(values: dict[str, bytes]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """The ``--object secret`` arguments that give ``qemu-img`` each value (by secret id),
    and the descriptors to pass it (:func:`run`'s ``pass_fds``). Each value is in a pipe of
    its own, which ``qemu-img`` reads as ``/proc/self/fd/N``: never in its argv nor on disk
    (see :func:`..secret.secret_pipes`). A pipe is read once: one block per run."""
    with secret_pipes(values) as fds:
        args: list[str] = []
        for secret_id, fd in fds.items():
            args += ["--object", f"secret,id={secret_id},format=raw,file=/proc/self/fd/{fd}"]
        yield args, tuple(fds.values())


def _tidy(message: str) -> str:
    """qemu-img's message on one line, without its own program-name prefix."""
    lines = [line.removeprefix("qemu-img: ").strip() for line in message.splitlines()]
    return "; ".join(line for line in lines if line)


async def info(path: str, *, fmt: str | None, what: str, timeout: float) -> dict[str, Any]:
    """``qemu-img info --output=json`` of one image (never opening its backing files).

    ``fmt`` names the format to read it as; None lets qemu-img probe it. ``-U``: an image
    a running QEMU holds locked can still be inspected.
    """
    args = ["info", "--output=json", "-U"]
    if fmt is not None:
        args += ["-f", fmt]
    out = await run([*args, "--", path], what=what, timeout=timeout)
    try:
        data = json.loads(out)
    except ValueError:
        raise OperationFailedError(f"cannot {what}: qemu-img info printed no JSON") from None
    if not isinstance(data, dict):
        raise OperationFailedError(f"cannot {what}: qemu-img info printed no JSON object")
    return data


__all__ = ["info", "qemu_img_binary", "run", "secret_objects"]
