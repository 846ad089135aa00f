"""Where an embedded QEMU driver keeps its files, mirroring libvirt's layout.

::

    ROOT/etc/qemu/NAME.xml        persistent domain configs
    ROOT/run/qemu/NAME.status     runtime state of a running domain (JSON)
    ROOT/run/qemu/UUID.monitor    QMP socket (QEMU listens; asvirt connects)
    ROOT/run/qemu/NAME.shutoff    why a persistent domain last stopped (for later connections)
    ROOT/run/qemu/driver.lock     held while a connection supervises this root
    ROOT/log/qemu/NAME.log        QEMU's stdout and stderr
    /run/asvirt/DIGEST/           sockets a QEMU running as another user binds
    ROOT/lib/events/              the node's event journal (append-only segments)
    ROOT/lib/qemu/nvram/NAME_VARS.fd  a UEFI domain's variable store (kept with the domain)
    ROOT/lib/qemu/snapshot/NAME/SNAP.xml  a domain's snapshot metadata (libvirt's layout)
    ROOT/lib/qemu/save/NAME.save  a domain's managed save image
    ROOT/lib/qemu/ram/NAME/       a running domain's file-backed RAM ([qemu] memory_backing_dir)
    ROOT/lib/swtpm/UUID/          an emulated TPM's state
    ROOT/run/qemu/NAME.helpers    the helper processes (swtpm, virtiofsd, vhost-user-gpu) of a
                                  running domain
    ROOT/log/qemu/NAME-swtpm.log  a helper's log (NAME-fs0-virtiofsd.log,
                                  NAME-video0-vhost-user-gpu.log...)
    ROOT/cache/qemu/capabilities/ probed QEMU capabilities
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

from ... import fsutil
from ...log import get_logger
from ..layout import NodeDirs

log = get_logger("asvirt.qemu.paths")

# Socket names asvirt makes are up to ~50 bytes ("1234abcd-org.qemu.guest_agent.0.sock").
_SOCKET_DIR_MAX = 107 - 56


@dataclasses.dataclass(frozen=True)
class EmbedPaths(NodeDirs):
    """The directories of one node: all under ``root`` (an embed root), or spread over the
    system's directories (``tops``: the daemon's ``/etc``, ``/run``, ``/var/log`` layout)."""

    @property
    def config_dir(self) -> Path:
        return self.top("etc") / "qemu"

    @property
    def run_dir(self) -> Path:
        return self.top("run") / "qemu"

    @property
    def log_dir(self) -> Path:
        return self.top("log") / "qemu"

    @property
    def events_dir(self) -> Path:
        return self.top("lib") / "events"

    @property
    def nvram_dir(self) -> Path:
        """Where UEFI domains' NVRAM files live (created, private, when first needed)."""
        return self.root / "lib" / "qemu" / "nvram"

    @property
    def memory_backing_dir(self) -> Path:
        """Where file-backed guest RAM goes unless ``[qemu] memory_backing_dir`` says
        otherwise: a directory per running domain (see :mod:`.membacking`)."""
        return self.top("lib") / "qemu" / "ram"

    @property
    def snapshot_root(self) -> Path:
        """Where snapshot metadata lives, a directory per domain (made when first needed)."""
        return self.top("lib") / "qemu" / "snapshot"

    def snapshot_dir(self, name: str) -> Path:
        return self.snapshot_root / name

    @property
    def save_dir(self) -> Path:
        """Where managed save images live (made, private, when first needed)."""
        return self.top("lib") / "qemu" / "save"

    def managed_save(self, name: str) -> Path:
        return self.save_dir / f"{name}.save"

    @property
    def capabilities_dir(self) -> Path:
        return self.top("cache") / "qemu" / "capabilities"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "driver.lock"

    @property
    def config_file(self) -> Path:
        return self.top("etc") / "asvirt.toml"

    def config(self, name: str) -> Path:
        return self.config_dir / f"{name}.xml"

    def autostart(self, name: str) -> Path:
        """The marker of an autostart domain (libvirt keeps a symlink there)."""
        return self.config_dir / "autostart" / f"{name}.xml"

    def status(self, name: str) -> Path:
        return self.run_dir / f"{name}.status"

    def shutoff(self, name: str) -> Path:
        return self.run_dir / f"{name}.shutoff"

    def renaming(self, uuid: str) -> Path:
        """The record of a rename in progress (old and new name), until it is complete."""
        return self.run_dir / f"{uuid}.rename"

    def monitor(self, uuid: str) -> Path:
        """The QMP socket, named by UUID: a fixed length, whatever the domain's name, so
        that every name define accepts fits in a unix socket address."""
        return self.run_dir / f"{uuid}.monitor"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def socket_dir(self) -> Path:
        """Where asvirt puts unix sockets the XML leaves unnamed (guest agent channels).

        The run directory, unless the root is so deep that socket paths there would not fit
        in sun_path's 107 bytes; then a directory of the user's own named after the root:
        under ``$XDG_RUNTIME_DIR`` when it is set, else under ``/tmp/asvirt-UID``, which
        :meth:`create` makes (or checks: ours, and writable by nobody else) before use, and
        :meth:`remove_socket_dir` removes when the node closes with no domain running.
        """
        if len(os.fsencode(self.run_dir)) <= _SOCKET_DIR_MAX:
            return self.run_dir
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isabs(runtime):
            return Path(runtime) / "asvirt" / digest
        return Path(tempfile.gettempdir()) / f"asvirt-{os.geteuid()}" / digest

    @property
    def qemu_socket_dir(self) -> Path:
        """Where a QEMU running as another user (``[qemu] user``) binds the sockets asvirt
        places for it: not under the root, which only the supervisor may enter, but in
        ``/run/asvirt/`` (root's, open to pass through) in a directory named after the root and
        owned by QEMU's user, made when a domain first needs it (see
        :mod:`~asvirt.drivers.qemu.security`)."""
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        return Path("/run/asvirt") / digest

    def create(self) -> None:
        """Create the directories, private to the user (configs may name secrets).

        Raises OSError for one that exists but is not ours or is writable by others: another
        user could then replace a domain's config or plant a socket.
        """
        fsutil.ensure_private_dir(self.root)
        separate = dict(self.tops)
        for name in ("etc", "run", "log", "lib", "cache"):
            if name in separate:
                separate[name].mkdir(parents=True, exist_ok=True, mode=0o755)
                fsutil.ensure_private_dir(separate[name], narrow=False)
            else:
                fsutil.ensure_private_dir(self.root / name)
        for d in (
            self.config_dir,
            self.run_dir,
            self.log_dir,
            self.events_dir.parent,
            self.capabilities_dir.parent,
            self.capabilities_dir,
        ):
            fsutil.ensure_private_dir(d)
        if self.socket_dir != self.run_dir:
            fsutil.ensure_private_dir(self.socket_dir.parent)
            fsutil.ensure_private_dir(self.socket_dir)

    def remove_socket_dir(self) -> None:
        """Remove :attr:`socket_dir` when it is a directory of its own (outside the root),
        with the sockets left in it: call it only when no domain of the node runs (a QEMU
        killed, or a helper, leaves its listening socket behind). Never raises: a directory
        that cannot be removed is logged. The shared parent (``/tmp/asvirt-UID``) stays."""
        path = self.socket_dir
        if path == self.run_dir:
            return
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        fsutil.remove(entry.path)
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("cannot remove the socket directory", path=str(path), error=str(err))
