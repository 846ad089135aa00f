"""Starting the session daemon when a client finds none (``qemu:///session``, as libvirt
does): locally (the unix transport), or on the far host (``asvirtd --stdio-bridge
--session``, for ``qemu+ssh://HOST/session``). Imports nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .. import fsutil
from . import layout

#: Seconds a started session daemon may take to listen.
START_DEADLINE = 15.0


def session_log() -> Path:
    """Where an autostarted session daemon writes its log."""
    return layout.runtime_dir() / "asvirt" / "asvirtd.log"


def spawn_session_daemon() -> None:
    """Start ``asvirtd --session`` in a session of its own, detached from this process."""
    log_path = session_log()
    fsutil.make_parents(log_path)  # $XDG_RUNTIME_DIR/asvirt, and what is missing above it
    # Not following a link planted at the log's name (fsutil.open_private_append).
    with os.fdopen(fsutil.open_private_append(log_path), "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "asvirt.daemon", "--session"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            close_fds=True,
        )


__all__ = ["START_DEADLINE", "session_log", "spawn_session_daemon"]
