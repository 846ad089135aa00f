"""Never lose a VM, whatever the disk, the files or other users do; QEMU runs confined.

Full disks, corrupt and planted files, long names, hostile directories: each test sets up
what an unlucky operator or a hostile user would, then checks what a user sees — a clear
asvirt error naming the path and the reason, nothing half-written, and no QEMU that asvirt
cannot see.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.process import find_qemus

from .guest import PAUSED_DOMAIN_TYPE, REPO, TestGuest, define
from .helpers import (
    NO_PIDFD,
    children,
    embed_uri,
    lifecycle,
    pid_alive,
    qemu_pid,
    qemus_naming,
    run_cli,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.qemu]

LC = asvirt.EventKind.LIFECYCLE


# -- a full disk ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is missing")
def test_a_full_disk_fails_define_and_start_cleanly(tmp_path: Path, test_guest: TestGuest):
    # The root lives on an 8 MiB tmpfs mounted in a mount namespace of the test's own.
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs in a mount namespace needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    xml = tmp_path / "vm.xml"
    xml.write_text(test_guest.xml("vm", tmp_path / "vm.serial", domain_type=PAUSED_DOMAIN_TYPE))
    script = (
        f"mount -t tmpfs -o size=8m,mode=0700 tmpfs {mnt} && "
        f"exec {sys.executable} -m tests.full_disk_check {mnt}/root {xml}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for call in ("define", "start"):
        err = out[call]
        assert isinstance(err, dict), f"{call} succeeded on a full disk"
        assert err["asvirt"] and err["type"] == "SystemCallError", err
        assert err["code"] == int(asvirt.ErrorCode.SYSTEM_ERROR)
        assert "No space left on device" in err["message"] and str(mnt) in err["message"]
    assert out["state"] == "SHUTOFF" and out["qemus"] == 0  # nothing was left running
    assert out["configs"] == ["vm.xml"]  # the second define left nothing, not even a temp
    assert [n for n in out["run"] if n.startswith(".") or n.endswith(".status")] == []
    assert out["start_after"] == "PAUSED"


# -- corrupt and leftover state files -------------------------------------------------------------


async def test_a_corrupt_status_file_affects_only_its_own_domain(
    root, fast_config, test_guest, tmp_path, caplog
):
    caplog.set_level(logging.ERROR, logger="asvirt")
    async with asvirt.open(embed_uri(root)) as conn:
        for name in ("typo", "garbage", "fine"):
            dom, _ = await define(conn, test_guest, tmp_path, name, domain_type=PAUSED_DOMAIN_TYPE)
            await dom.start(paused=True)
        uuids = {d.name: d.uuid for d in await conn.list_all_domains()}
        cursor = conn_seq = await _last_seq(conn)
    run = root / "run" / "qemu"
    typo = json.loads((run / "typo.status").read_text())
    typo["pid"] = str(typo["pid"])  # a wrong field type
    (run / "typo.status").write_text(json.dumps(typo))
    (run / "garbage.status").write_bytes(b"\x00\xffnot json at all")
    # Interrupted atomic writes leave temporary files behind.
    (root / "etc" / "qemu" / ".fine.xml.k3j2h1.tmp").write_text("<domain")
    (run / ".fine.status.9f8e7d.tmp").write_text("{")

    async with asvirt.open(embed_uri(root)) as conn:
        fine = await conn.lookup_by_name("fine")
        assert await fine.is_active()  # the others opened normally
        for name in ("typo", "garbage"):
            dom = await conn.lookup_by_name(name)
            assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
            assert (run / f"{name}.status.corrupt").exists()  # kept for inspection
        # Their QEMUs were found all the same, and ended: none runs unseen.
        assert set(find_qemus(str(root))) == {uuids["fine"]}
        async with conn.subscribe(kinds=LC, since=cursor) as events:
            seen = {e.domain: lifecycle(e) for e in [events.receive_nowait() for _ in range(2)]}
        assert seen == {"typo": ("STOPPED", "FAILED"), "garbage": ("STOPPED", "FAILED")}
        await fine.destroy()
    assert not list(root.glob("*/qemu/.*.tmp"))
    told = " ".join(r.getMessage() for r in caplog.records)
    assert "typo.status" in told and "garbage.status" in told
    del conn_seq


async def _last_seq(conn: asvirt.Connection) -> int:
    last = 0
    async with conn.subscribe(since=0) as events:
        while events.replaying or events.pending():
            last = events.receive_nowait().seq
    return last


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n" * 200, "\u00e9" * 120], ids=["200-chars", "240-bytes"])
async def test_every_name_define_accepts_can_start(conn, test_guest, tmp_path, name):
    dom = await conn.define_xml(
        test_guest.xml(name, tmp_path / "s.serial", domain_type=PAUSED_DOMAIN_TYPE)
    )
    await dom.start(paused=True)
    assert (await dom.state())[0] is S.PAUSED
    assert (await dom.qmp("query-name"))["name"] == name
    await dom.destroy()


async def test_a_name_too_long_for_its_files_is_refused_at_define(conn, test_guest, tmp_path):
    with pytest.raises(asvirt.XMLError, match="240 bytes"):
        await conn.define_xml(test_guest.xml("\u00e9" * 121, tmp_path / "s.serial"))
    assert await conn.list_all_domains() == []


# -- what start says when it fails ----------------------------------------------------------------


async def test_qmp_arguments_that_are_not_json_are_refused(conn, test_guest, tmp_path):
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
    await dom.start(paused=True)
    with pytest.raises(asvirt.InvalidArgError, match="plain JSON"):
        await dom.qmp("qom-list", {"path": object()})
    with pytest.raises(asvirt.InvalidArgError):
        await dom.qmp("qom-list", {"path": float("nan")})
    await dom.destroy()


async def test_start_errors_quote_only_this_runs_log(conn, test_guest, tmp_path):
    def with_disk(path: Path) -> str:
        disk = (
            f"<disk type='file' device='disk'><source file='{path}'/>"
            "<target dev='vda' bus='virtio'/></disk>"
        )
        return test_guest.xml(
            "vm", tmp_path / "s.serial", domain_type=PAUSED_DOMAIN_TYPE, devices=disk
        )

    first, second = tmp_path / "first.img", tmp_path / "second.img"
    for image in (first, second):
        image.write_bytes(b"\0" * 1048576)
    dom = await conn.define_xml(with_disk(first))
    first.unlink()
    with pytest.raises(asvirt.OperationFailedError, match=r"first\.img"):
        await dom.start(paused=True)
    await conn.define_xml(with_disk(second).replace("</name>", f"</name><uuid>{dom.uuid}</uuid>"))
    second.unlink()
    with pytest.raises(asvirt.OperationFailedError) as caught:
        await dom.start(paused=True)
    assert "second.img" in str(caught.value) and "first.img" not in str(caught.value)


async def test_an_emulator_that_exits_silently_is_reported_with_its_status(
    conn, test_guest, tmp_path
):
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text("#!/bin/sh\nexit 3\n")  # answers nothing, not even a probe
    fake.chmod(0o755)
    xml = test_guest.xml("vm", tmp_path / "s.serial", domain_type=PAUSED_DOMAIN_TYPE)
    xml = xml.replace("<devices>", f"<devices><emulator>{fake}</emulator>", 1)
    with pytest.raises(asvirt.AsvirtError) as caught:
        await conn.define_xml(xml)
    assert "status 3" in str(caught.value), caught.value


def _unrunnable_emulator(tmp_path: Path, kind: str) -> Path:
    """An emulator path that cannot run, in one of the ways a host gets it wrong."""
    path = tmp_path / "qemu-system-x86_64"
    if kind == "not executable":
        path.write_text("#!/bin/sh\n")
        path.chmod(0o644)
    elif kind == "a directory":
        path.mkdir()
    elif kind == "a symlink loop":
        path.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(path)
    elif kind == "under a file":
        path.write_text("")
        path = path / "qemu-system-x86_64"
    else:  # killed at once, before it could answer
        path.write_text("#!/bin/sh\necho going >&2\nkill -9 $$\n")
        path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("not executable", asvirt.ConfigUnsupportedError, "is not an executable file"),
        ("a directory", asvirt.ConfigUnsupportedError, "is not an executable file"),
        ("a symlink loop", asvirt.SystemCallError, "Too many levels of symbolic links"),
        ("under a file", asvirt.SystemCallError, "Not a directory"),
        ("killed", asvirt.OperationFailedError, "killed by signal 9\\): going"),
    ],
)
async def test_an_emulator_that_cannot_run_is_a_clear_error_naming_it(
    conn, test_guest, tmp_path, root, kind, error, message
):
    emulator = _unrunnable_emulator(tmp_path, kind)
    xml = test_guest.xml("vm", tmp_path / "s.serial", domain_type=PAUSED_DOMAIN_TYPE)
    xml = xml.replace("<devices>", f"<devices><emulator>{emulator}</emulator>", 1)
    with pytest.raises(error, match=message) as caught:
        await conn.define_xml(xml)
    assert str(emulator) in str(caught.value)
    assert not list((root / "etc" / "qemu").glob("*.xml"))


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter names x86-64's syscall")
@pytest.mark.parametrize("probed", [False, True], ids=["probe", "start"])
async def test_a_kernel_without_pidfd_open_is_a_clear_error(root, test_guest, tmp_path, probed):
    xml = test_guest.xml("vm1", tmp_path / "s.serial", domain_type=PAUSED_DOMAIN_TYPE)
    if probed:  # QEMU's capabilities are known: the domain's own QEMU is what fails
        async with asvirt.open(embed_uri(root)) as conn:
            await conn.define_xml(xml)
    get = "conn.lookup_by_name('vm1')" if probed else f"conn.define_xml({xml!r})"
    script = NO_PIDFD + (
        "import os, trio, asvirt\n"
        "try:\n"
        "    os.pidfd_open(os.getpid())\n"
        "except OSError as err:\n"
        "    print('refused:', err.strerror, flush=True)\n"
        "async def main():\n"
        f"    async with asvirt.open({embed_uri(root)!r}) as conn:\n"
        "        try:\n"
        f"            dom = await {get}\n"
        "            await dom.start(paused=True)\n"
        "        except asvirt.AsvirtError as err:\n"
        "            print(type(err).__name__, err)\n"
        "trio.run(main)\n"
    )
    done = await trio.run_process(
        [sys.executable, "-c", script], cwd=REPO, capture_stdout=True, capture_stderr=True
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "refused: Function not implemented"
    what = "QEMU for domain 'vm1'" if probed else "'/usr/bin/qemu-system-x86_64' to probe"
    assert lines[1].startswith(f"SystemCallError cannot run {what}"), lines
    assert "pidfd_open: Function not implemented (pidfd_open needs Linux 5.3" in lines[1]
    # Nothing was left running: what could not be watched was killed and reaped.
    assert not qemus_naming([str(tmp_path)])
    async with asvirt.open(embed_uri(root)) as conn:
        assert await conn.list_all_domains(active=True) == []
        assert len(await conn.list_all_domains()) == probed  # the probe failed the define
    assert not list((root / "run" / "qemu").glob("*.status"))


async def test_a_supervisor_killed_during_destroy_reports_destroyed(root, test_guest, tmp_path):
    write_config(root, "[qemu]\ndestroy_grace = 30.0\n")
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
        await dom.start(paused=True)
    pid = qemu_pid(root, "vm1")
    # Another process supervises the root and destroys the domain when told to (a line on
    # its stdin); QEMU is stopped first, so SIGTERM stays pending and destroy waits.
    script = (
        "import sys, trio, asvirt\n"
        "async def main():\n"
        f"    async with asvirt.open({embed_uri(root)!r}) as conn:\n"
        "        dom = await conn.lookup_by_name('vm1')\n"
        "        print('ready', flush=True)\n"
        "        await trio.to_thread.run_sync(sys.stdin.readline)\n"
        "        await dom.destroy()\n"
        "trio.run(main)\n"
    )
    supervisor = await trio.lowlevel.open_process(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert supervisor.stdout is not None and supervisor.stdin is not None
        said = b""
        with trio.fail_after(30):
            while b"\n" not in said:
                said += await supervisor.stdout.receive_some()
        assert said == b"ready\n"
        os.kill(pid, signal.SIGSTOP)
        await supervisor.stdin.send_all(b"destroy\n")
        await wait_for(lambda: sigterm_pending(pid))
        supervisor.kill()  # it dies after SIGTERM, before it could see QEMU go
        await supervisor.wait()
    finally:
        supervisor.kill()
        os.kill(pid, signal.SIGCONT)
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        async with conn.subscribe(kinds=LC, since=3) as events:
            assert lifecycle(events.receive_nowait()) == ("STOPPED", "DESTROYED")
    assert not pid_alive(pid)


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits to be delivered to ``pid`` (a stopped process holds it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & (
            1 << (signal.SIGTERM - 1)
        ):
            return True
    return False


# -- hostile files and directories ----------------------------------------------------------------


async def test_a_symlink_planted_as_the_log_is_refused(conn, root, test_guest, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / "log" / "qemu" / "vm1.log").symlink_to(victim)
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
    with pytest.raises(asvirt.SystemCallError, match=r"vm1\.log"):
        await dom.start(paused=True)
    assert victim.read_text() == "precious\n"
    assert find_qemus(str(root)) == {}


async def test_a_hard_link_planted_as_the_log_is_refused(conn, root, test_guest, tmp_path):
    victim = root / "victim"  # same file system, so the link can be made
    victim.write_text("precious\n")
    os.link(victim, root / "log" / "qemu" / "vm1.log")
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
    with pytest.raises(asvirt.SystemCallError, match="hard link"):
        await dom.start(paused=True)
    assert victim.read_text() == "precious\n"


def test_a_root_others_can_write_is_refused(root):
    (root / "etc" / "qemu").mkdir(parents=True)
    (root / "etc" / "qemu").chmod(0o777)
    proc = run_cli(root, "list", check=False)
    assert proc.returncode == 1
    assert "writable by others (mode 0777)" in proc.stderr and "etc/qemu" in proc.stderr
    assert not (root / "etc" / "qemu" / "driver.lock").exists()


def test_a_socket_directory_made_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    # A root so deep that agent sockets go to TMPDIR/asvirt-UID/...; another user made it.
    deep = tmp_path / ("d" * 100) / "root"
    deep.mkdir(parents=True)
    tmpdir = tmp_path / "tmp"
    hostile = tmpdir / f"asvirt-{os.geteuid()}"
    hostile.mkdir(parents=True)
    hostile.chmod(0o777)
    os.chown(hostile, 65534, 65534)  # nobody
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmpdir)
    proc = subprocess.run(
        [sys.executable, "-m", "asvirt", "-c", embed_uri(deep), "list"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "owned by uid 65534" in proc.stderr and str(hostile) in proc.stderr
    assert list(hostile.iterdir()) == []


async def test_qemu_runs_under_its_seccomp_sandbox(conn, test_guest, tmp_path, root):
    dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
    await dom.start(paused=True)
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{qemu_pid(root, 'vm1')}/status").read_text().splitlines()
        if ":\t" in line
    )
    assert status["Seccomp"].strip() == "2"  # filtered
    assert status["NoNewPrivs"].strip() == "1"
    await dom.destroy()


async def test_the_sandbox_can_be_turned_off(root, test_guest, tmp_path):
    write_config(root, "[qemu]\nseccomp_sandbox = false\n")
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
        assert "-sandbox" not in await conn.domxml_to_native("qemu-argv", await dom.xml_desc())
        await dom.start(paused=True)
        status = Path(f"/proc/{qemu_pid(root, 'vm1')}/status").read_text()
        assert "Seccomp:\t0" in status
        await dom.destroy()


# -- the capabilities probe ------------------------------------------------------------------------


async def _catch_a_probe(root: Path) -> int | None:
    """Run ``asvirt capabilities`` on the fresh root ``root``; once its probe QEMU runs,
    freeze the probe (it cannot finish now) and SIGKILL the CLI. The probe's pid, or None
    if the probe was over before it was seen."""
    env = {**os.environ, "ASVIRT_DEFAULT_URI": embed_uri(root)}
    cli = await trio.lowlevel.open_process(
        [sys.executable, "-m", "asvirt", "capabilities"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe: list[int] = []

    def probing() -> bool:
        probe[:] = children(b"qemu-system-", prefix=True, parent=cli.pid)
        return bool(probe) or cli.poll() is not None

    try:
        await wait_for(probing, timeout=60, interval=0.002)
        if probe:
            os.kill(probe[0], signal.SIGSTOP)
    finally:
        cli.kill()
        with trio.CancelScope(shield=True):
            await cli.wait()
    return probe[0] if probe else None


async def test_a_supervisor_killed_mid_probe_leaves_no_probe_running(tmp_path: Path) -> None:
    # A fresh root probes its QEMU binary (a QEMU without a guest, answering on a monitor
    # only the supervisor reads). Caught in the act, the probe must go with its supervisor,
    # not wait forever under init.
    for attempt in range(20):
        probe = await _catch_a_probe(tmp_path / f"root{attempt}")
        if probe is not None:
            try:
                await wait_for(lambda p=probe: not pid_alive(p), timeout=10)
            finally:
                if pid_alive(probe):
                    os.kill(probe, signal.SIGKILL)
            return
    pytest.fail("no probe was caught running in 20 attempts")
