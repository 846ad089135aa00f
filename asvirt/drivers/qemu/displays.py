"""The passwords of VNC and SPICE displays, as libvirt's QEMU driver gives them.

A display's password is its ``<graphics passwd=...>``, else the node's default for its kind
(``[qemu] vnc_password``, ``spice_password``: libvirt's qemu.conf settings), else none. It
never goes on QEMU's command line (any user of the host reads ``/proc/PID/cmdline``) nor in a
file: the command line only says that clients must give one (VNC's ``password=on``; SPICE
without ``disable-ticketing``), and the password itself is handed over the monitor with
``set_password``, then its expiry with ``expire_password``, before the guest runs — the same
two commands, in the same order, for both kinds of display, at start and when
``update_device`` changes it (libvirt's ``qemuDomainChangeGraphicsPasswords``). Until then
no client gets in: QEMU refuses every password while it holds none.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ...conf.devices import Graphics
from ...config import QemuConfig
from .tls import TlsConfig

#: The kinds of display that take a password.
PASSWORD_DISPLAYS = ("vnc", "spice")


def display_password(gfx: Graphics, cfg: QemuConfig) -> str | None:
    """The password clients of ``gfx`` must give, or None when they give none."""
    if gfx.type not in PASSWORD_DISPLAYS:
        return None
    if gfx.passwd is not None:
        return gfx.passwd
    default = cfg.vnc_password if gfx.type == "vnc" else cfg.spice_password
    return default or None


def has_password(gfx: Graphics, tls: TlsConfig | None) -> bool:
    """Whether clients of ``gfx`` must give a password (what its command line says; the
    node's defaults as ``tls`` tells them)."""
    if gfx.type not in PASSWORD_DISPLAYS:
        return False
    if gfx.passwd is not None or tls is None:
        return gfx.passwd is not None
    return tls.vnc_password if gfx.type == "vnc" else tls.spice_password


def expire_time(gfx: Graphics, password: str, now: float | None = None) -> str:
    """``expire_password``'s ``time``: never, now (a ``passwdValidTo`` already past, or an
    empty password), or the moment it passes, in seconds since the epoch.

    An empty password locks every client out, as libvirt documents it: QEMU's VNC would
    take an empty password as one anybody knows (libvirt's fix of CVE-2016-5008 expires it
    at once; so does this)."""
    if password == "":
        return "now"
    if gfx.passwd_valid_to is None:
        return "never"
    if (time.time() if now is None else now) >= gfx.passwd_valid_to:
        return "now"
    return str(gfx.passwd_valid_to)


async def set_password(
    execute: Callable[[str, dict[str, Any]], Awaitable[Any]], gfx: Graphics, password: str
) -> None:
    """Give a running QEMU the password of ``gfx`` and its expiry (``execute``: a QMP
    command). ``connected`` says what becomes of the clients already in (SPICE; VNC keeps
    them: QEMU refuses anything else for it, and so does the XML)."""
    await execute(
        "set_password",
        {"protocol": gfx.type, "password": password, "connected": gfx.connected or "keep"},
    )
    await execute("expire_password", {"protocol": gfx.type, "time": expire_time(gfx, password)})


__all__ = ["PASSWORD_DISPLAYS", "display_password", "expire_time", "has_password", "set_password"]
