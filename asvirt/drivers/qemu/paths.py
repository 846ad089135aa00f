"""Where an embedded QEMU driver keeps its files, mirroring libvirt's layout.

::

    ROOT/etc/qemu/NAME.xml        persistent domain configs
    ROOT/run/qemu/NAME.status     runtime state of a running domain (JSON)
    ROOT/run/qemu/NAME.monitor    QMP socket (QEMU listens; asvirt connects)
    ROOT/run/qemu/NAME.shutoff    why a persistent domain last stopped (for later connections)
    ROOT/run/qemu/driver.lock     held while a connection supervises this root
    ROOT/log/qemu/NAME.log        QEMU's stdout and stderr
    ROOT/lib/events/              the node's event journal (append-only segments)
    ROOT/cache/qemu/capabilities/ probed QEMU capabilities
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

# Socket names asvirt makes are up to ~50 bytes ("1234abcd-org.qemu.guest_agent.0.sock").
_SOCKET_DIR_MAX = 107 - 56


@dataclasses.dataclass(frozen=True)
class EmbedPaths:
    root: Path

    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "qemu"

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "qemu"

    @property
    def log_dir(self) -> Path:
        return self.root / "log" / "qemu"

    @property
    def events_dir(self) -> Path:
        return self.root / "lib" / "events"

    @property
    def capabilities_dir(self) -> Path:
        return self.root / "cache" / "qemu" / "capabilities"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "driver.lock"

    @property
    def config_file(self) -> Path:
        return self.root / "etc" / "asvirt.toml"

    def config(self, name: str) -> Path:
        return self.config_dir / f"{name}.xml"

    def status(self, name: str) -> Path:
        return self.run_dir / f"{name}.status"

    def shutoff(self, name: str) -> Path:
        return self.run_dir / f"{name}.shutoff"

    def monitor(self, name: str) -> Path:
        return self.run_dir / f"{name}.monitor"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def socket_dir(self) -> Path:
        """Where asvirt puts unix sockets the XML leaves unnamed (guest agent channels).

        The run directory, unless the root is so deep that socket paths there would not fit
        in sun_path's 107 bytes; then a private directory under /tmp named after the root.
        """
        if len(os.fsencode(self.run_dir)) <= _SOCKET_DIR_MAX:
            return self.run_dir
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"asvirt-{os.getuid()}" / digest

    def create(self) -> None:
        """Create the directories (private to the user: configs may name secrets)."""
        for d in (
            self.config_dir,
            self.run_dir,
            self.log_dir,
            self.events_dir.parent,
            self.capabilities_dir,
            self.socket_dir,
        ):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, os.stat(self.root).st_mode & 0o7777 | 0o700)
