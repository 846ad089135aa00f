"""Secrets handed to QEMU: the passphrases of encrypted disks (and, for hotplug, over QMP).

QEMU reads a secret from a ``secret`` object, which takes its value inline (``data=``), or
from a file (``file=``). Inline on the command line, any user of the host could read it in
``/proc/PID/cmdline``; in a file, it would lie on disk. So the value goes through a pipe: the
supervisor writes it into the pipe and closes its end, QEMU inherits the read end and its
``secret`` object reads ``file=/proc/self/fd/N`` to the end when it is created, before the
guest runs. The value is then only in QEMU's memory (and the node's): nothing on disk,
nothing in the command line, nothing left in the pipe. (libvirt instead encrypts each
secret with a per-domain master key it keeps in a file beside the domain's state.)

A disk plugged into a running guest gets its secret through ``object-add`` on the monitor,
the private socket QEMU and the supervisor share.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from ...conf.devices import Disk
from ...conf.domain import DomainDef
from ...drivers.base import SecretUsageType

#: How the node looks a secret up: (uuid, usage type, usage id) -> (uuid, value).
SecretLookup = Callable[[str | None, SecretUsageType, str | None], tuple[str, bytes]]

#: What ``domxml-to-native`` shows where a started domain has a pipe's descriptor.
SHOWN_FILE = "/proc/self/fd/N"


def disk_secret_id(disk: Disk) -> str:
    """The id of the ``secret`` object of an encrypted disk's passphrase (libvirt's name)."""
    return f"libvirt-{disk.node_index}-format-encryption-secret0"


def secret_object(secret_id: str, file: str) -> dict[str, Any]:
    """The ``-object`` of a secret QEMU reads from ``file`` (a pipe's ``/proc/self/fd/N``)."""
    return {"qom-type": "secret", "id": secret_id, "format": "raw", "file": file}


def secret_object_data(secret_id: str, value: bytes) -> dict[str, Any]:
    """The ``object-add`` arguments of a secret given over the monitor."""
    data = base64.b64encode(value).decode("ascii")
    return {"qom-type": "secret", "id": secret_id, "format": "base64", "data": data}


def disk_secret(disk: Disk, lookup: SecretLookup) -> bytes:
    """The passphrase of an encrypted disk, from the node's secrets (NoSecretError)."""
    enc = disk.encryption
    assert enc is not None
    return lookup(enc.secret_uuid, SecretUsageType.VOLUME, enc.secret_usage)[1]


def needed_secrets(defn: DomainDef, lookup: SecretLookup) -> dict[str, bytes]:
    """The secret objects ``defn``'s QEMU needs, by id, with their values: every secret is
    looked up before anything is started (a missing one fails the start at once)."""
    return {
        disk_secret_id(d): disk_secret(d, lookup)
        for d in defn.disks
        if d.encryption is not None and d.has_media
    }


@contextlib.contextmanager
def secret_pipes(values: dict[str, bytes]) -> Iterator[dict[str, int]]:
    """Each value in a pipe of its own, written and closed: the read ends by secret id, for
    QEMU to inherit; ours are closed when the block ends (after the spawn)."""
    fds: dict[str, int] = {}
    try:
        for secret_id, value in values.items():
            r, w = os.pipe2(os.O_CLOEXEC)
            fds[secret_id] = r
            try:
                # A pipe holds 64 KiB: no value is larger (MAX_VALUE_BYTES), so this never
                # blocks; and the value must be whole before QEMU reads to the end.
                written = os.write(w, value) if value else 0
                if written != len(value):
                    raise OSError(f"secret '{secret_id}' did not fit in a pipe")
            finally:
                os.close(w)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


__all__ = [
    "SHOWN_FILE",
    "SecretLookup",
    "disk_secret",
    "disk_secret_id",
    "needed_secrets",
    "secret_object",
    "secret_object_data",
    "secret_pipes",
]
