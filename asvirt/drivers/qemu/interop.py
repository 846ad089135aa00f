"""QEMU's interop descriptors: the JSON files packages install to say what they ship.

QEMU documents two kinds (``docs/interop/firmware.json`` and ``vhost-user.json``): firmware
builds under ``/usr/share/qemu/firmware`` and vhost-user backend programs (virtiofsd,
vhost-user-gpu...) under ``/usr/share/qemu/vhost-user``. libvirt reads both the same way, and
so does :func:`interop_documents`: every ``*.json`` file of the kind's directories, a file in
a later directory (``/etc/qemu/...``) replacing one of the same name in an earlier one, an
empty file hiding it, lowest file name first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...log import get_logger

log = get_logger("asvirt.qemu.interop")


def interop_dirs(kind: str) -> tuple[str, ...]:
    """Where descriptors of ``kind`` (``firmware``, ``vhost-user``) live, in libvirt's order
    of precedence (later names override earlier)."""
    return (f"/usr/share/qemu/{kind}", f"/etc/qemu/{kind}")


def interop_documents(dirs: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(path, decoded JSON) of every descriptor in ``dirs``, in the order libvirt considers
    them. Unreadable files are logged and skipped, as libvirt does."""
    by_name: dict[str, str] = {}
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.endswith(".json"):
                by_name[name] = os.path.join(directory, name)
    out = []
    for name in sorted(by_name):
        path = by_name[name]
        try:
            raw = Path(path).read_bytes()
            if not raw.strip():
                continue
            out.append((path, json.loads(raw)))
        except (OSError, ValueError) as err:
            log.warning("ignoring an unreadable QEMU descriptor", path=path, error=str(err))
    return out


def vhost_user_binaries(kind: str, dirs: tuple[str, ...] | None = None) -> list[str]:
    """The programs the vhost-user descriptors of type ``kind`` (``gpu``, ``fs``...) name,
    in libvirt's order, those that are executables (``dirs``: default QEMU's)."""
    out = []
    for _path, doc in interop_documents(dirs or interop_dirs("vhost-user")):
        if not isinstance(doc, dict) or doc.get("type") != kind:
            continue
        binary = doc.get("binary")
        if isinstance(binary, str) and os.path.isabs(binary) and os.access(binary, os.X_OK):
            out.append(binary)
    return out


__all__ = ["interop_dirs", "interop_documents", "vhost_user_binaries"]
