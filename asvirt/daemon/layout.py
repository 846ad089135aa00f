"""Where a daemon keeps its node and its sockets (imports nothing heavy: clients use it too).

``--system`` (root): configs in ``/etc/asvirt``, state in ``/var/lib/asvirt``, runtime files
and sockets in ``/run/asvirt``, logs in ``/var/log/asvirt``. ``--session`` (any user): configs
in ``$XDG_CONFIG_HOME/asvirt``, state and logs in ``$XDG_STATE_HOME/asvirt``, runtime files and
the socket in ``$XDG_RUNTIME_DIR/asvirt`` (XDG's defaults when unset). ``--state-dir DIR`` puts
everything under DIR, as an embed root does.
"""

from __future__ import annotations

import os

from ..records import record

TYPE_CHECKING = False  # typing's, without importing typing (see asvirt/cli/quick.py)
if TYPE_CHECKING:
    from pathlib import Path


# pathlib loads where a Path is made: a one-shot command-line client (which only needs the
# socket's path) need not import it (nor the urllib.parse it imports).


@record
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


_SYSTEM_SOCKET = "/run/asvirt/asvirt-sock"


def _xdg(name: str, default: str) -> str:
    value = os.environ.get(name)
    if value and os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), default)


def _runtime_dir() -> str:
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return value
    return os.path.join(_xdg("XDG_STATE_HOME", ".local/state"), "asvirt", "run")


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR``, else a directory of the user's own under the state home."""
    from pathlib import Path

    return Path(_runtime_dir())


def system() -> Layout:
    from pathlib import Path

    return Layout(
        root=Path("/var/lib/asvirt"),
        tops=(
            ("etc", Path("/etc/asvirt")),
            ("run", Path("/run/asvirt")),
            ("log", Path("/var/log/asvirt")),
            ("lib", Path("/var/lib/asvirt")),
            ("cache", Path("/var/cache/asvirt")),
        ),
        socket=Path(_SYSTEM_SOCKET),
        socket_ro=Path("/run/asvirt/asvirt-sock-ro"),
        config_file=Path("/etc/asvirt/asvirtd.toml"),
    )


def session() -> Layout:
    from pathlib import Path

    state = Path(_xdg("XDG_STATE_HOME", ".local/state"), "asvirt")
    config = Path(_xdg("XDG_CONFIG_HOME", ".config"), "asvirt")
    return Layout(
        root=state,
        tops=(
            ("etc", config),
            ("run", runtime_dir() / "asvirt"),
            ("cache", Path(_xdg("XDG_CACHE_HOME", ".cache"), "asvirt")),
        ),
        socket=Path(socket_path("/session")),
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


def socket_path(path: str) -> str:
    """The read-write socket of the daemon serving ``qemu:///system`` or ``/session``."""
    if path == "/system":
        return _SYSTEM_SOCKET
    return os.path.join(_runtime_dir(), "asvirt", "asvirt-sock")


def socket_for(path: str) -> Path:
    """:func:`socket_path`, as a Path."""
    from pathlib import Path

    return Path(socket_path(path))


__all__ = ["Layout", "runtime_dir", "session", "socket_for", "socket_path", "system", "under"]
