"""UEFI, TPM, virtiofs and vhost-user GPU guests under real QEMU, OVMF, swtpm, virtiofsd and
vhost-user-gpu.

The helpers (swtpm, virtiofsd) are supervised with their QEMU: up before it, ended after
it, found again by the next supervisor; per-domain state (NVRAM, TPM) lives under the root
and goes with ``undefine``. Booted guests run under TCG (OVMF, then the test guest's kernel
through the firmware); nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.conf.devices import Video
from asvirt.drivers.qemu import vhostusergpu
from asvirt.drivers.qemu.helpers import HELPER_ENV, find_helpers, find_virtiofsd
from asvirt.drivers.qemu.interop import vhost_user_binaries
from asvirt.drivers.qemu.process import ROOT_ENV
from asvirt.drivers.qemu.vhostusergpu import find_gpu_backend

from .guest import paused_xml, wait_for_serial
from .helpers import embed_uri, pid_alive, qemu_pid, run_cli, wait_for

pytestmark = [pytest.mark.qemu]

SHARED_MEMORY = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking><vcpu>"
#: The UUID a stray helper claims to serve (no such domain runs).
STRAY = "0bad0bad-0000-4000-8000-000000000000"
#: OVMF needs more than the test guest's 128 MiB to hand over to a kernel.
UEFI_MIB = 256


def efi(xml: str, *, secure: bool = False) -> str:
    """``xml`` on q35 with firmware='efi' (Secure Boot off: the test kernel is not signed
    by the keys OVMF enrolls)."""
    feature = "yes" if secure else "no"
    return xml.replace("machine='pc'", "machine='q35'").replace(
        "<os>",
        f"<os firmware='efi'><firmware><feature enabled='{feature}' name='secure-boot'/>"
        "</firmware>",
    )


def helpers_of(root: Path, uuid: str) -> list[int]:
    return [pid for pid, u in find_helpers(str(root)) if u == uuid]


async def helpers_gone(root: Path, uuid: str) -> None:
    # Polled: a process's end is announced to its parent only, and a helper may be adopted.
    await wait_for(lambda: not helpers_of(root, uuid))


@pytest.mark.guest
async def test_ovmf_guest_boots_and_its_nvram_persists(conn, root, test_guest, tmp_path):
    serial = tmp_path / "vm1.serial"
    xml = efi(test_guest.xml("vm1", serial, memory_mib=UEFI_MIB))
    dom = await conn.define_xml(xml)
    out = await dom.xml_desc()
    nvram = root / "lib" / "qemu" / "nvram" / "vm1_VARS.fd"
    assert f"<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{nvram}</nvram>" in out
    assert not nvram.exists()  # made on the first start, not at define
    await dom.start()
    await wait_for_serial(serial, timeout=180)  # OVMF ran, then booted the kernel
    assert "\x1b[2J" in serial.read_text(errors="replace")  # OVMF's console on ttyS0
    st = nvram.stat()
    assert oct(st.st_mode & 0o777) == "0o600"
    assert oct((nvram.parent.stat().st_mode) & 0o777) == "0o700"
    await dom.destroy()
    serial.write_text("")
    await dom.start()
    await wait_for_serial(serial, timeout=180)
    assert nvram.stat().st_ino == st.st_ino, "the NVRAM is the domain's, kept across starts"
    await dom.destroy()
    with pytest.raises(asvirt.OperationInvalidError, match="nvram"):
        await dom.undefine()
    assert nvram.exists() and (root / "etc" / "qemu" / "vm1.xml").exists()
    await dom.undefine(nvram=True)
    assert not nvram.exists()


async def test_planted_symlink_at_the_nvram_is_refused(conn, root, test_guest, tmp_path):
    dom = await conn.define_xml(efi(paused_xml(test_guest, tmp_path)))
    nvram = root / "lib" / "qemu" / "nvram" / "vm1_VARS.fd"
    nvram.parent.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    nvram.symlink_to(target)
    with pytest.raises(asvirt.OperationFailedError, match="not a regular file"):
        await dom.start()
    assert not target.exists() and await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)


async def test_swtpm_runs_with_its_qemu_and_its_state_goes_with_undefine(
    conn, root, test_guest, tmp_path
):
    tpm = "<tpm model='tpm-tis'><backend type='emulator' version='2.0'/></tpm>"
    uuid = "5a1e0c9e-7d1b-4c39-9d8a-3b2f6e1c0a11"
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=tpm, uuid=uuid))
    await dom.start(paused=True)
    [swtpm] = helpers_of(root, dom.uuid)
    assert pid_alive(swtpm) and pid_alive(qemu_pid(root, "vm1"))
    [info] = await dom.qmp("query-tpm")
    assert (info["model"], info["options"]["type"]) == ("tpm-tis", "emulator")
    state = root / "lib" / "swtpm" / dom.uuid / "tpm2"
    assert (state / "tpm2-00.permall").is_file()
    assert "swtpm" in (root / "log" / "qemu" / "vm1-swtpm.log").read_text()
    await dom.destroy()
    await helpers_gone(root, dom.uuid)
    assert not (root / "run" / "qemu" / "vm1.helpers").exists()
    await dom.start(paused=True)  # the state made the first time is used again
    assert helpers_of(root, dom.uuid)
    await dom.destroy()
    await dom.undefine(keep_tpm=True)
    assert state.is_dir()
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=tpm, uuid=uuid))
    await dom.undefine()
    assert not state.parent.exists()


async def test_virtiofsd_serves_the_share_and_ends_with_qemu(conn, root, test_guest, tmp_path):
    try:
        find_virtiofsd(None)
    except asvirt.ConfigUnsupportedError as err:
        pytest.skip(f"virtiofsd is not installed on this machine: {err}")
    share = tmp_path / "share"
    share.mkdir()
    fs = (
        "<filesystem type='mount'><driver type='virtiofs'/>"
        f"<source dir='{share}'/><target dir='share'/></filesystem>"
    )
    xml = paused_xml(test_guest, tmp_path, devices=fs).replace("<vcpu>", SHARED_MEMORY, 1)
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    # (virtiofsd forks into its sandbox: the recorded process is the parent.)
    [record] = json.loads((root / "run" / "qemu" / "vm1.helpers").read_text())
    virtiofsd = record["pid"]
    assert record["kind"] == "virtiofsd" and virtiofsd in helpers_of(root, dom.uuid)
    # QEMU's vhost-user-fs device has done its handshake with virtiofsd to exist at all.
    names = [p["name"] for p in await dom.qmp("qom-list", {"path": "/machine/peripheral"})]
    assert "fs0" in names
    assert "vhost-user" in (root / "log" / "qemu" / "vm1-fs0-virtiofsd.log").read_text()
    await dom.destroy()
    await helpers_gone(root, dom.uuid)
    assert not pid_alive(virtiofsd)


async def test_virtiofs_without_shared_memory_or_virtiofsd_is_refused(
    conn, root, test_guest, tmp_path
):
    fs = (
        "<filesystem type='mount'><driver type='virtiofs'/>{binary}"
        f"<source dir='{tmp_path}'/><target dir='share'/></filesystem>"
    )
    with pytest.raises(asvirt.ConfigUnsupportedError, match="shared memory"):
        await conn.define_xml(paused_xml(test_guest, tmp_path, devices=fs.format(binary="")))
    missing = "<binary path='/nonexistent/virtiofsd'/>"
    xml = paused_xml(test_guest, tmp_path, devices=fs.format(binary=missing))
    dom = await conn.define_xml(xml.replace("<vcpu>", SHARED_MEMORY, 1))
    with pytest.raises(asvirt.ConfigUnsupportedError, match="/nonexistent/virtiofsd"):
        await dom.start()
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert not helpers_of(root, dom.uuid)


@pytest.mark.parametrize(
    ("hostdev", "reason"),
    [
        (
            "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            "<address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source></hostdev>",
            r"host PCI device 0000:7f:1f\.7 .* does not exist",
        ),
        (
            "<hostdev mode='subsystem' type='usb'><source><vendor id='0xfffe'/>"
            "<product id='0xfffd'/></source></hostdev>",
            "host USB device fffe:fffd .* is not plugged in",
        ),
        (
            "<hostdev mode='subsystem' type='usb'><source><address bus='250' device='250'/>"
            "</source></hostdev>",
            "host USB device 250.250 .* does not exist",
        ),
    ],
)
async def test_absent_host_devices_are_refused_at_start(
    conn, root, test_guest, tmp_path, hostdev, reason
):
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=hostdev))
    with pytest.raises(asvirt.OperationFailedError, match=reason):
        await dom.start(paused=True)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert not (root / "run" / "qemu" / "vm1.status").exists()


async def test_helpers_are_adopted_by_the_next_supervisor_and_orphans_ended(
    root, fast_config, test_guest, tmp_path
):
    tpm = "<tpm model='tpm-crb'><backend type='emulator'/></tpm>"
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=tpm))
        await dom.start(paused=True)
        [swtpm] = helpers_of(root, dom.uuid)
    # The supervisor is gone; QEMU and its swtpm run on, and a stray helper of this root
    # whose domain is not running (its supervisor died before QEMU was spawned) waits.
    env = {**os.environ, ROOT_ENV: str(root), HELPER_ENV: f"{STRAY}:x"}
    stray = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for, here
        ["sleep", "600"], env=env, start_new_session=True
    )
    try:
        assert pid_alive(swtpm)
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            assert (await dom.state())[0] is S.PAUSED
            assert helpers_of(root, dom.uuid) == [swtpm], "the running swtpm is adopted"
            with trio.fail_after(10):
                await trio.to_thread.run_sync(stray.wait)
            await dom.destroy()
            await helpers_gone(root, dom.uuid)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


@pytest.mark.guest
def test_cli_domdisplay_and_undefine_nvram(root, test_guest, tmp_path, display_ports):
    xml = tmp_path / "vm.xml"
    body = paused_xml(test_guest, tmp_path, devices="<graphics type='spice' autoport='yes'/>")
    xml.write_text(efi(body))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "--paused", "vm1")
    try:
        shown = run_cli(root, "domdisplay", "vm1").stdout.strip()
        live = run_cli(root, "dumpxml", "vm1").stdout
        port = live.split("<graphics type='spice' port='")[1].split("'")[0]
        assert shown == f"spice://localhost:{port}"  # no listen address: as virsh says
    finally:
        run_cli(root, "destroy", "vm1")
    refused = run_cli(root, "undefine", "vm1", check=False)
    assert refused.returncode != 0 and "nvram" in refused.stderr
    run_cli(root, "undefine", "--nvram", "vm1")
    assert not list((root / "lib" / "qemu" / "nvram").iterdir())


async def test_encrypted_tpm_state_starts_persists_and_needs_its_secret(
    conn, root, test_guest, tmp_path
):
    secret_uuid = "9f0c2d8e-1b6a-4c3e-8a5d-7e2f4b6c8d01"
    tpm = (
        "<tpm model='tpm-crb'><backend type='emulator' version='2.0'>"
        f"<encryption secret='{secret_uuid}'/></backend></tpm>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=tpm))
    assert f"<encryption secret='{secret_uuid}'/>" in await dom.xml_desc()
    # No secret yet: refused before swtpm_setup or QEMU run.
    with pytest.raises(asvirt.NoSecretError, match=secret_uuid):
        await dom.start(paused=True)
    state = root / "lib" / "swtpm" / dom.uuid / "tpm2"
    assert not (state / "tpm2-00.permall").exists()
    secret = await conn.secret_define_xml(
        f"<secret ephemeral='no' private='yes'><uuid>{secret_uuid}</uuid>"
        "<usage type='vtpm'><name>VTPM_vm1</name></usage></secret>"
    )
    await secret.set_value(b"tpm passphrase")
    await dom.start(paused=True)
    [swtpm] = helpers_of(root, dom.uuid)
    cmdline = Path(f"/proc/{swtpm}/cmdline").read_bytes().split(b"\0")
    assert b"tpm passphrase" not in b" ".join(cmdline)
    assert any(a.startswith(b"pwdfd=") and a.endswith(b",mode=aes-256-cbc") for a in cmdline)
    [info] = await dom.qmp("query-tpm")
    assert info["options"]["type"] == "emulator"
    permall = (state / "tpm2-00.permall").read_bytes()
    await dom.destroy()
    await helpers_gone(root, dom.uuid)
    # The state persists, encrypted: another passphrase cannot open it...
    await secret.set_value(b"another passphrase")
    with trio.fail_after(60), pytest.raises(asvirt.OperationFailedError):
        await dom.start(paused=True)
    await helpers_gone(root, dom.uuid)
    assert not await dom.is_active()
    # ... and its own does, the same state.
    await secret.set_value(b"tpm passphrase")
    await dom.start(paused=True)
    assert (state / "tpm2-00.permall").read_bytes() == permall
    await dom.destroy()


VHOST_USER_VIDEO = "<video><driver name='vhostuser'/><model type='virtio'/></video>"


def gpu_xml(test_guest, tmp_path: Path) -> str:
    xml = paused_xml(test_guest, tmp_path, devices=VHOST_USER_VIDEO)
    return xml.replace("<vcpu>", SHARED_MEMORY, 1)


async def test_vhost_user_gpu_runs_with_its_qemu_and_is_adopted(root, test_guest, tmp_path):
    try:
        await trio.to_thread.run_sync(find_gpu_backend, Video(model="virtio"))
    except asvirt.OperationFailedError as err:
        pytest.skip(f"vhost-user-gpu is not installed on this machine: {err}")
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(gpu_xml(test_guest, tmp_path))
        await dom.start(paused=True)
        [record] = json.loads((root / "run" / "qemu" / "vm1.helpers").read_text())
        gpu = record["pid"]
        assert record["kind"] == "vhost-user-gpu" and helpers_of(root, dom.uuid) == [gpu]
        # On a socketpair (no socket file), as libvirt runs it.
        cmdline = Path(f"/proc/{gpu}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0].endswith(b"vhost-user-gpu") and cmdline[1].startswith(b"--fd=")
        # QEMU's device exists only once its vhost-user handshake with the backend is done.
        peripherals = await dom.qmp("qom-list", {"path": "/machine/peripheral"})
        assert {"name": "video0", "type": "child<vhost-user-vga>"} in peripherals
    # A new supervisor finds the running backend with its QEMU.
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert (await dom.state())[0] is S.PAUSED
        assert helpers_of(root, dom.uuid) == [gpu]
        await dom.destroy()
        await helpers_gone(root, dom.uuid)
    assert not pid_alive(gpu)
    assert not (root / "run" / "qemu" / "vm1.helpers").exists()


async def test_vhost_user_gpu_that_fails_leaves_nothing(
    conn, root, test_guest, tmp_path, monkeypatch
):
    descriptors = tmp_path / "vhost-user"
    descriptors.mkdir()
    (descriptors / "50-gpu.json").write_text(
        json.dumps({"type": "gpu", "binary": "/nonexistent/vhost-user-gpu"})
    )
    monkeypatch.setattr(vhostusergpu, "DESCRIPTOR_DIRS", (str(descriptors),))
    dom = await conn.define_xml(gpu_xml(test_guest, tmp_path))
    with pytest.raises(asvirt.OperationFailedError, match="qemu-system-gui"):
        await dom.start(paused=True)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    # A backend that says what it can do, then dies at once.
    dying = tmp_path / "dying-gpu"
    dying.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --print-capabilities ]; then echo \'{"type":"gpu","features":[]}\'; '
        "exit 0; fi\necho 'no GPU today' >&2\nexit 1\n"
    )
    dying.chmod(0o755)
    (descriptors / "50-gpu.json").write_text(json.dumps({"type": "gpu", "binary": str(dying)}))
    # (Seen dead before QEMU is spawned, or by QEMU's handshake with it: a race.)
    with pytest.raises(asvirt.OperationFailedError, match=r"exited at once|vhost_backend_init"):
        await dom.start(paused=True)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert not helpers_of(root, dom.uuid)
    run = root / "run" / "qemu"
    assert not (run / "vm1.helpers").exists() and not (run / "vm1.status").exists()
    assert "no GPU today" in (root / "log" / "qemu" / "vm1-video0-vhost-user-gpu.log").read_text()


async def test_vhost_user_gpu_virgl_needs_a_render_node(conn, root, test_guest, tmp_path):
    video = Video(model="virtio", accel3d=True)
    try:
        await trio.to_thread.run_sync(find_gpu_backend, video)
    except asvirt.OperationFailedError as err:
        pytest.skip(f"no vhost-user-gpu with virgl on this machine: {err}")
    if vhostusergpu.host_render_node() is not None:
        pytest.skip("this host has a render node")
    accel = VHOST_USER_VIDEO.replace("'virtio'/>", "'virtio'><acceleration accel3d='yes'/></model>")
    dom = await conn.define_xml(gpu_xml(test_guest, tmp_path).replace(VHOST_USER_VIDEO, accel))
    with pytest.raises(asvirt.ConfigUnsupportedError, match=r"render node .*/dev/dri/renderD"):
        await dom.start(paused=True)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert not helpers_of(root, dom.uuid)
    assert not (root / "run" / "qemu" / "vm1.helpers").exists()


def test_vhost_user_descriptors_are_read_as_libvirt_reads_them(tmp_path):
    share, etc = tmp_path / "share", tmp_path / "etc"
    share.mkdir()
    etc.mkdir()
    gpu = {"type": "gpu", "binary": "/bin/true"}
    (share / "50-gpu.json").write_text(json.dumps(gpu))
    (share / "40-fs.json").write_text(json.dumps({"type": "fs", "binary": "/bin/cat"}))
    (share / "60-gpu.json").write_text(json.dumps({**gpu, "binary": "/bin/echo"}))
    (share / "70-gpu.json").write_text(json.dumps({**gpu, "binary": "/nonexistent/gpu"}))
    (share / "80-gpu.json").write_text("{not json")
    dirs = (str(share), str(etc))
    # Lowest name first; missing programs and unreadable files are passed over.
    assert vhost_user_binaries("gpu", dirs) == ["/bin/true", "/bin/echo"]
    assert vhost_user_binaries("fs", dirs) == ["/bin/cat"]
    # A later directory's file replaces the same name; an empty one hides it.
    (etc / "50-gpu.json").write_text(json.dumps({**gpu, "binary": "/bin/ls"}))
    (etc / "60-gpu.json").write_text("")
    assert vhost_user_binaries("gpu", dirs) == ["/bin/ls"]
