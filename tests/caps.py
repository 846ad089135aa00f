"""Capabilities of the real QEMU on this machine, probed once per session (test helper).

The probe runs QEMU once (``-machine none``, no guest); the result is cached on disk as the
driver caches it, so every test module shares one probe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from asvirt.drivers.qemu.capabilities import CapabilitiesCache, QemuCapabilities
from asvirt.drivers.qemu.monitor import asyncio_loop

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / ".." / "shared" / "conformance"


def probe_caps(cache_dir: Path) -> QemuCapabilities:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("QEMU is not installed (no qemu-system-x86_64 on PATH)")

    async def main() -> QemuCapabilities:
        async with asyncio_loop() as loop:
            return await CapabilitiesCache(cache_dir, loop, timeout=30).get(binary)

    cache_dir.mkdir(parents=True, exist_ok=True)
    return trio.run(main)


class Caps:
    """Holds capabilities with a short repr (they appear in test ids and tracebacks)."""

    def __init__(self, caps: QemuCapabilities) -> None:
        self.caps = caps

    def __repr__(self) -> str:
        return f"<caps of QEMU {self.caps.version_string}>"
