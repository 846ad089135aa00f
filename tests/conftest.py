"""Shared fixtures: real QEMU, the real test guest, embedded roots in temporary directories."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import asvirt

from .caps import Caps, probe_caps
from .contract import Backend, make_backend
from .daemon import session_daemon
from .guest import GUEST_DIR, REPO, USB_GUEST_DIR, TestGuest
from .helpers import children, destroy_all, embed_uri, write_config
from .trio_skips import pytest_pyfunc_call  # noqa: F401  (a hook: pytest finds it here)

QEMU = shutil.which("qemu-system-x86_64")
CAPS_DIR = "qemu-caps"  # below the session's base temporary directory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if QEMU is None:
        skip = pytest.mark.skip(reason="QEMU is not installed (no qemu-system-x86_64 on PATH)")
        for item in items:
            if "qemu" in item.keywords or "guest" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def no_leaked_qemu() -> Iterator[None]:
    """Every test leaves no QEMU of its own behind (tests must destroy what they start)."""
    before = set(children(b"qemu-system", prefix=True))
    yield
    leaked = []
    for pid in set(children(b"qemu-system", prefix=True)) - before:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except FileNotFoundError:
            continue  # exited and already reaped since it was listed
        if b") Z " in stat:
            continue  # exited; the orphan reaper collects it
        leaked.append(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited meanwhile; still a leak: it ran past the test's end
    assert not leaked, f"the test left QEMU processes running: {leaked}"


@pytest.fixture
def display_ports() -> Iterator[None]:
    """For tests that start SPICE displays with automatic ports: they take turns across the
    parallel workers. A port is chosen by probing which is free, as libvirt's allocator does,
    and two supervisors probing at the same moment choose the same one."""
    path = os.path.join(tempfile.gettempdir(), f"asvirt-tests-display-ports-{os.geteuid()}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _built_guest(directory: Path, *flags: str) -> tuple[TestGuest, str | None]:
    """The test guest in ``directory``, (re)built by scripts/build-test-guest ``flags``, and
    why it could not be (re)built (None if it could).

    The builder runs every session: it returns at once when the cache holds this checkout's
    format, and rebuilds a cache older than that (tests may need what a newer guest does).
    """
    guest = TestGuest(directory)
    result = subprocess.run(
        [str(REPO / "scripts" / "build-test-guest"), *flags, str(directory)],
        capture_output=True,
        text=True,
    )
    why = result.stderr.strip() or result.stdout.strip()
    if result.returncode != 0 and guest.exists():
        warnings.warn(
            f"cannot rebuild the test guest; tests use the cached one: {why}", stacklevel=1
        )
    return guest, why if result.returncode != 0 else None


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    """The tiny Debian-kernel + busybox guest, in the cache directory."""
    guest, why = _built_guest(GUEST_DIR)
    if not guest.exists():
        pytest.fail(f"cannot build the test guest (run scripts/setup first): {why}")
    return guest


@pytest.fixture(scope="session")
def usb_test_guest() -> TestGuest:
    """The test guest on a kernel with USB (``scripts/build-test-guest --usb``): built on
    first use, from Debian's generic kernel package. A machine whose apt cannot fetch that
    package skips the tests that need it (the cloud kernel has no USB to test with)."""
    guest, why = _built_guest(USB_GUEST_DIR, "--usb")
    if not guest.exists():
        pytest.skip(f"cannot build the USB test guest: {why}")
    return guest


@pytest.fixture(scope="session")
def caps(tmp_path_factory: pytest.TempPathFactory) -> Caps:
    """The capabilities of the real QEMU on this machine, probed once per session."""
    return probe_caps(tmp_path_factory.getbasetemp() / CAPS_DIR)


@pytest.fixture(scope="session")
def caps_cache(caps: Caps, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``caps`` is cached, as the driver caches it: for converters that run in a
    process of their own and read the probe instead of running QEMU again."""
    return tmp_path_factory.getbasetemp() / CAPS_DIR


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
            await destroy_all(c)


# -- the shared suite (test_api_contract.py and others): one test, every driver -------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_kind" not in metafunc.fixturenames:
        return
    qemu_marks = [pytest.mark.qemu]
    if getattr(metafunc.function, "_needs_guest", False):
        qemu_marks.append(pytest.mark.guest)
    metafunc.parametrize(
        "backend_kind",
        [
            pytest.param("test", id="test"),
            pytest.param("qemu", id="qemu", marks=qemu_marks),
            pytest.param("session", id="session", marks=qemu_marks),
        ],
    )


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, backend_kind: str, tmp_path, monkeypatch
) -> Iterator[Backend]:
    if backend_kind == "test":
        root, guest = None, TestGuest(GUEST_DIR)  # its XML only: nothing boots
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)
        return
    root = request.getfixturevalue("fast_config")
    guest = request.getfixturevalue("test_guest")
    if backend_kind == "qemu":
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)
        return
    # qemu:///session: a daemon of the test's own serves the root.
    with session_daemon(root, tmp_path, request.getfixturevalue("caps_cache"), monkeypatch):
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)


@pytest.fixture
async def api(backend: Backend) -> AsyncIterator[Backend]:
    """The backend with an open connection; whatever still runs is destroyed afterwards."""
    async with backend.open() as conn:
        backend.conn = conn
        try:
            yield backend
        finally:
            await destroy_all(conn)
