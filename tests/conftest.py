"""Shared fixtures: real QEMU, the real test guest, embedded roots in temporary directories."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import asvirt

from .guest import GUEST_DIR, REPO, TestGuest
from .helpers import embed_uri, write_config

QEMU = shutil.which("qemu-system-x86_64")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if QEMU is None:
        skip = pytest.mark.skip(reason="QEMU is not installed (no qemu-system-x86_64 on PATH)")
        for item in items:
            if "qemu" in item.keywords or "guest" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    """The tiny Debian-kernel + busybox guest, built once into the cache directory."""
    guest = TestGuest(GUEST_DIR)
    if not guest.exists():
        result = subprocess.run(
            [str(REPO / "scripts" / "build-test-guest"), str(GUEST_DIR)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not guest.exists():
            pytest.fail(
                "cannot build the test guest (run scripts/setup first): "
                + (result.stderr.strip() or result.stdout.strip())
            )
    return guest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An embed root. Deliberately deep, so that socket paths exceed sun_path's 107 bytes."""
    root = tmp_path / ("r" * 60) / "asvirt-root"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def fast_config(root: Path) -> Path:
    """Short destroy grace so that tests of stuck QEMUs do not wait 10 s."""
    write_config(root, "[qemu]\ndestroy_grace = 2.0\nqmp_timeout = 10.0\n")
    return root


@pytest.fixture
async def conn(root: Path, fast_config: Path) -> AsyncIterator[asvirt.Connection]:
    """An open connection to a fresh embed root; destroys whatever still runs at the end."""
    async with asvirt.open(embed_uri(root)) as c:
        try:
            yield c
        finally:
            with trio.CancelScope(shield=True):
                for dom in await c.list_all_domains(active=True):
                    try:
                        await dom.destroy()
                    except asvirt.AsvirtError:
                        pass
