"""Where a daemon keeps its node and its sockets (imports nothing heavy: clients use it too).

``--system`` (root): configs in ``/etc/asvirt``, state in ``/var/lib/asvirt``, runtime files
and sockets in ``/run/asvirt``, logs in ``/var/log/asvirt``. ``--session`` (any user): configs
in ``$XDG_CONFIG_HOME/asvirt``, state and logs in ``$XDG_STATE_HOME/asvirt``, runtime files and
the socket in ``$XDG_RUNTIME_DIR/asvirt`` (XDG's defaults when unset). ``--state-dir DIR`` puts
everything under DIR, as an embed root does.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Layout:
    """A daemon's directories and sockets."""

    #: The node's root (its lock, and what has no other home).
    root: Path
    #: Top directories elsewhere than under root: ("etc", ...), ("run", ...), ...
    tops: tuple[tuple[str, Path], ...]
    #: The read-write socket (mode 0600).
    socket: Path
    #: The read-only socket (mode 0666), if the daemon has one.
    socket_ro: Path | None
    #: asvirtd.toml.
    config_file: Path


def _xdg(name: str, default: str) -> Path:
    value = os.environ.get(name)
    return Path(value) if value and os.path.isabs(value) else Path.home() / default


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR``, else a directory of the user's own under the state home."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return Path(value)
    return _xdg("XDG_STATE_HOME", ".local/state") / "asvirt" / "run"


def system() -> Layout:
    return Layout(
        root=Path("/var/lib/asvirt"),
        tops=(
            ("etc", Path("/etc/asvirt")),
            ("run", Path("/run/asvirt")),
            ("log", Path("/var/log/asvirt")),
            ("lib", Path("/var/lib/asvirt")),
            ("cache", Path("/var/cache/asvirt")),
        ),
        socket=Path("/run/asvirt/asvirt-sock"),
        socket_ro=Path("/run/asvirt/asvirt-sock-ro"),
        config_file=Path("/etc/asvirt/asvirtd.toml"),
    )


def session() -> Layout:
    state = _xdg("XDG_STATE_HOME", ".local/state") / "asvirt"
    config = _xdg("XDG_CONFIG_HOME", ".config") / "asvirt"
    run = runtime_dir() / "asvirt"
    return Layout(
        root=state,
        tops=(
            ("etc", config),
            ("run", run),
            ("cache", _xdg("XDG_CACHE_HOME", ".cache") / "asvirt"),
        ),
        socket=run / "asvirt-sock",
        socket_ro=None,
        config_file=config / "asvirtd.toml",
    )


def under(state_dir: Path) -> Layout:
    """Everything under one directory (tests, containers)."""
    return Layout(
        root=state_dir,
        tops=(),
        socket=state_dir / "asvirt-sock",
        socket_ro=state_dir / "asvirt-sock-ro",
        config_file=state_dir / "etc" / "asvirtd.toml",
    )


def socket_for(path: str) -> Path:
    """The read-write socket of the daemon serving ``qemu:///system`` or ``/session``."""
    return system().socket if path == "/system" else session().socket


__all__ = ["Layout", "runtime_dir", "session", "socket_for", "system", "under"]
