"""Where a root keeps its networks: apart from the driver, so that a node can tell whether
it has any without importing the driver."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ... import fsutil
from ..layout import NodeDirs


@dataclasses.dataclass(frozen=True)
class NetworkPaths(NodeDirs):
    """Where a root keeps its networks (mirroring libvirt's layout): under the node's top
    directories (``tops``, as :class:`~asvirt.drivers.qemu.paths.EmbedPaths` has them: all
    under ``root`` for an embed root, the system's directories for ``asvirtd --system``)."""

    @property
    def config_dir(self) -> Path:
        return self.top("etc") / "network"

    @property
    def run_dir(self) -> Path:
        return self.top("run") / "network"

    @property
    def lib_dir(self) -> Path:
        return self.top("lib") / "network"

    @property
    def log_dir(self) -> Path:
        return self.top("log") / "network"

    def config(self, name: str) -> Path:
        return self.config_dir / f"{name}.xml"

    def autostart(self, name: str) -> Path:
        return self.config_dir / f"{name}.autostart"

    def state(self, name: str) -> Path:
        return self.run_dir / f"{name}.state"

    def dnsmasq_conf(self, name: str) -> Path:
        return self.run_dir / f"{name}.conf"

    def pid(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def lease_script(self, name: str) -> Path:
        return self.run_dir / f"{name}.leasescript"

    def leases(self, name: str) -> Path:
        return self.lib_dir / f"{name}.leases"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def in_use(self) -> bool:
        """Whether the root holds a network: a definition, or the state of one that runs
        (a node loads its network driver at open only then, else at its first use)."""
        return any(self.config_dir.glob("*.xml")) or any(self.run_dir.glob("*.state"))

    def create(self) -> None:
        # The top directories exist already (the node made them with its own).
        for d in (self.config_dir, self.run_dir, self.lib_dir, self.log_dir):
            fsutil.ensure_private_dir(d)


__all__ = ["NetworkPaths"]
