"""Probed capabilities of the real QEMU on this machine, for the model tests (test helper).

The probe runs QEMU once per test session (``-machine none``, no guest); the result is
cached on disk like the driver caches it, so every test module shares one probe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from asvirt.drivers.qemu.capabilities import CapabilitiesCache, QemuCapabilities
from asvirt.drivers.qemu.monitor import asyncio_loop

CONFORMANCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "conformance"


def probe_caps(cache_dir: Path) -> QemuCapabilities:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("QEMU is not installed (no qemu-system-x86_64 on PATH)")

    async def main() -> QemuCapabilities:
        async with asyncio_loop() as loop:
            return await CapabilitiesCache(cache_dir, loop, timeout=30).get(binary)

    cache_dir.mkdir(parents=True, exist_ok=True)
    return trio.run(main)
