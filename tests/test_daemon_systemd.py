"""asvirtd under systemd: socket activation, and unit files systemd accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import asvirt

from .guest import REPO
from .helpers import wait_for

pytestmark = [pytest.mark.qemu]

ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (systemd) is not installed")
async def test_socket_activation(tmp_path: Path) -> None:
    # systemd-socket-activate plays systemd: it makes both sockets, then runs the daemon
    # with them (LISTEN_FDS, named as the socket unit names them) at the first connection.
    rw, ro = tmp_path / "asvirt-sock", tmp_path / "asvirt-sock-ro"
    argv = [ACTIVATE, "-l", str(rw), "--fdname=asvirt-sock:asvirt-sock-ro", "-l", str(ro)]
    argv += [sys.executable, "-m", "asvirt.daemon", "--state-dir", str(tmp_path / "state")]
    proc = await trio.lowlevel.open_process(argv, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        await wait_for(lambda: rw.exists() and ro.exists())
        async with asvirt.open(f"qemu+unix:///system?socket={rw}") as conn:
            assert await conn.list_all_domains() == []
        async with asvirt.open(f"qemu+unix:///system?socket={ro}") as conn:
            assert await conn.list_all_domains() == []
            with pytest.raises(asvirt.OperationDeniedError):
                await conn.define_xml("<domain type='qemu'><name>x</name></domain>")
        assert not (tmp_path / "state" / "asvirt-sock").exists()  # it bound nothing itself
    finally:
        proc.terminate()
        with trio.CancelScope(shield=True):
            await proc.wait()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (systemd) is not installed"
)
def test_the_unit_files_are_valid(tmp_path: Path) -> None:
    asvirtd = shutil.which("asvirtd") or str(Path(sys.executable).parent / "asvirtd")
    names = ("asvirtd.service", "asvirtd.socket", "asvirtd-secret-key.service")
    for name in names:
        text = (REPO / "config" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/local/bin/asvirtd", asvirtd))
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            *(str(tmp_path / name) for name in names),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [ln for ln in proc.stderr.splitlines() if "asvirtd" in ln]
    assert proc.returncode == 0 and not problems, proc.stderr
