"""QEMU confined to a user of its own (``[qemu] user``), as libvirt's DAC security driver does.

Switching users needs root, so these tests skip when not run as root; QEMU runs as the
system's ``nobody``. That user cannot enter pytest's ``tmp_path`` (under a 0700 directory) nor
the test guest's cache (under /root): the guest's kernel and initrd, images and serial files
go to ``open_dir``, a directory every user may enter. Files QEMU must be given start out as
someone else's (uid 12345, no such user: any owner but root and nobody), so that giving them
back to *that* owner is visible. Tests that need no booted guest run paused under TCG
(``nobody`` may not open /dev/kvm on every machine; one test checks that refusal).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt import DomainState as S
from asvirt.conf.domain import parse_domain_xml
from asvirt.config import QemuConfig
from asvirt.drivers.qemu import process
from asvirt.drivers.qemu.capabilities import kvm_usable
from asvirt.drivers.qemu.security import (
    SEARCH,
    QemuIdentity,
    permits,
    qemu_caps,
    resolve_identity,
)
from asvirt.drivers.qemu.tls import TlsConfig, check_tls_files

from .guest import REPO, TestGuest, wait_for_serial
from .helpers import (
    destroy_all,
    disk_xml,
    embed_uri,
    make_tls_dir,
    overlay,
    pid_alive,
    qemu_img,
    qemu_nbd,
    qemu_pid,
    wait_for,
    write_config,
)
from .test_qemu_host_helpers import efi

pytestmark = [pytest.mark.qemu]

USER = "nobody"
#: The owner of the files QEMU is given: nobody's, until QEMU needs them.
SOMEONE = (12345, 12345)
#: The user:group of a domain's own DAC label (no such user: neither root, nobody nor someone).
LABEL = (4242, 4242)
AGENT = """
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>"""


@pytest.fixture
def qemu_user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("running QEMU as another user needs a supervisor running as root")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"this machine has no '{USER}' user")


@pytest.fixture
def nobody(qemu_user: pwd.struct_passwd) -> tuple[int, int]:
    """(uid, gid) QEMU runs as, and gives files to."""
    return qemu_user.pw_uid, qemu_user.pw_gid


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (and only root may write), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="asvirt-confined-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def guest(test_guest: TestGuest, open_dir: Path) -> TestGuest:
    """The test guest, copied where QEMU's user can read it (root's, readable by all)."""
    for name in ("vmlinuz", "initrd.cpio", "VERSION"):
        shutil.copy(test_guest.dir / name, open_dir / name)
        (open_dir / name).chmod(0o644)
    return TestGuest(open_dir)


@pytest.fixture
def confined(root: Path, qemu_user: pwd.struct_passwd) -> Path:
    """An embed root whose QEMUs run as ``nobody``."""
    write_config(root, f'[qemu]\nuser = "{USER}"\ndestroy_grace = 2.0\nqmp_timeout = 10.0\n')
    return root


@pytest.fixture
async def cconn(confined: Path) -> AsyncIterator[asvirt.Connection]:
    async with asvirt.open(embed_uri(confined)) as c:
        try:
            yield c
        finally:
            await destroy_all(c)


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def someones(path: Path, size: int = 1 << 20) -> Path:
    """A raw image of ``size`` bytes, private to uid 12345 (nobody may not read it)."""
    with open(path, "wb") as f:
        f.truncate(size)
    os.chown(path, *SOMEONE)
    path.chmod(0o600)
    return path


def labelled(xml: str, who: tuple[int, int] = LABEL, relabel: str = "yes") -> str:
    """Domain XML with a static DAC label of its own: its QEMU runs as ``who``."""
    label = (
        f"<seclabel type='static' model='dac' relabel='{relabel}'>"
        f"<label>+{who[0]}:+{who[1]}</label></seclabel>"
    )
    return xml.replace("</domain>", f"{label}</domain>")


def status_record(root: Path, name: str) -> dict[str, object]:
    record: dict[str, object] = json.loads((root / "run" / "qemu" / f"{name}.status").read_text())
    return record


# -- the process ----------------------------------------------------------------------------------


async def test_qemu_runs_as_the_user_with_no_privileges_and_is_found_again(
    confined, guest, open_dir, qemu_user, nobody
):
    uri = embed_uri(confined)
    async with asvirt.open(uri) as conn:
        try:
            dom = await conn.define_xml(guest.xml("vm1", open_dir / "vm1.serial", devices=AGENT))
            await dom.start(paused=True)
            pid = qemu_pid(confined, "vm1")
            status = proc_status(pid)
            assert status["Uid"].split() == [str(nobody[0])] * 4
            assert status["Gid"].split() == [str(nobody[1])] * 4
            # The user's own groups, as libvirt's initgroups gives them.
            groups = os.getgrouplist(USER, qemu_user.pw_gid)
            assert sorted(map(int, status["Groups"].split())) == sorted(set(groups))
            assert status["NoNewPrivs"] == "1"
            for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(status[caps], 16) == 0, caps
            assert status["Seccomp"] == "2"  # filtering: -sandbox on

            # The guest agent socket asvirt placed: QEMU (nobody) bound it where nobody can,
            # and the supervisor can connect.
            [channel] = parse_domain_xml(await dom.xml_desc()).channels
            assert channel.source_path is not None
            agent = Path(channel.source_path)
            assert stat.S_ISSOCK(os.stat(agent).st_mode) and owner(agent) == nobody
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(agent))

            # setpriv exec'd QEMU: the pid, its command line and the start time the status
            # file records are QEMU's, and it is found in the process table as this root's.
            assert Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")
            assert status_record(confined, "vm1")["start_time"] == process.read_start_time(pid)
            assert [q.pid for q in process.find_qemus(str(confined))[dom.uuid]] == [pid]
        except BaseException:
            await destroy_all(conn)
            raise
    # Nobody supervises it now; the next open re-attaches to the same QEMU.
    async with asvirt.open(uri) as conn:
        try:
            dom = await conn.lookup_by_name("vm1")
            assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
            assert qemu_pid(confined, "vm1") == pid
            await dom.resume()
            assert (await dom.state())[0] is S.RUNNING
        finally:
            await destroy_all(conn)
    assert not pid_alive(pid)
    assert not agent.parent.exists()  # the socket directory goes with its last QEMU


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.guest
async def test_a_booted_guest_reads_its_disk_and_writes_its_serial_port_as_the_user(
    cconn, confined, guest, open_dir, nobody
):
    base = open_dir / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "16M")
    top = overlay(open_dir / "top.qcow2", base)
    for image, mode in ((base, 0o644), (top, 0o600)):
        os.chown(image, *SOMEONE)
        image.chmod(mode)
    serial = open_dir / "vm1.serial"  # not there yet: asvirt creates it, as QEMU would
    xml = guest.xml("vm1", serial, action="readdisk", devices=disk_xml(top))
    dom = await cconn.define_xml(xml)
    await dom.start()
    await wait_for_serial(serial)  # the guest booted and QEMU wrote its console there

    # While it runs, the image and the serial file are QEMU's user's...
    assert owner(top) == owner(serial) == nobody
    [disk] = [b for b in await dom.qmp("query-block") if b["device"] == "" and b.get("inserted")]
    assert disk["inserted"]["ro"] is False  # opened for writing, as nobody
    assert disk["inserted"]["image"]["backing-image"]["filename"] == str(base)
    # ...and what nobody can read already (the backing file, the kernel) is left as it is.
    assert owner(base) == SOMEONE
    assert owner(guest.kernel) == owner(guest.initrd) == (0, 0)
    assert status_record(confined, "vm1")["chowned"] == {
        str(top): [*SOMEONE, *nobody],
        str(serial): [0, 0, *nobody],
    }

    await dom.destroy()
    # Given back to their owners: someone's image, and the serial file asvirt made.
    assert owner(top) == owner(base) == SOMEONE
    assert owner(serial) == (0, 0)
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in (top, serial)} == {0o600}


async def test_a_file_two_domains_use_is_given_back_when_the_last_one_stops(
    cconn, guest, open_dir, nobody
):
    shared = someones(open_dir / "shared.img")
    media = open_dir / "media.iso"  # readable by all: nobody needs nothing of it
    media.write_bytes(b"\0" * 2048)
    media.chmod(0o644)
    devices = disk_xml(shared, "vdb", fmt="raw", extra="<shareable/>") + disk_xml(
        media, "hdc", fmt="raw", device="cdrom", bus="ide", extra="<readonly/>"
    )
    a, b = [
        await cconn.define_xml(guest.xml(name, open_dir / f"{name}.serial", devices=devices))
        for name in ("a", "b")
    ]
    await a.start(paused=True)
    await b.start(paused=True)
    assert owner(shared) == nobody and owner(media) == (0, 0)
    await a.destroy()
    assert owner(shared) == nobody  # b still uses it
    await b.destroy()
    assert owner(shared) == SOMEONE and owner(media) == (0, 0)


SUPERVISOR = """
import sys, trio, asvirt
async def main(uri, xml):
    async with asvirt.open(uri) as conn:
        dom = await conn.define_xml(open(xml).read())
        await dom.start(paused=True)
        print('ready', flush=True)
        await trio.sleep_forever()
trio.run(main, *sys.argv[1:])
"""


@pytest.mark.parametrize("whose", ["[qemu] user", "its own label"])
@pytest.mark.parametrize("meanwhile", ["nothing", "QEMU dies"])
async def test_files_are_given_back_after_the_supervisor_is_killed(
    root, qemu_user, guest, open_dir, nobody, meanwhile, whose
):
    """Files given to the node's [qemu] user, or to the user of a domain's own static DAC
    label with relabel='yes', are given back by the next supervisor."""
    node_user = f'user = "{USER}"\n' if whose == "[qemu] user" else ""
    write_config(root, f"[qemu]\n{node_user}destroy_grace = 2.0\nqmp_timeout = 10.0\n")
    qemus = nobody if whose == "[qemu] user" else LABEL
    image = someones(open_dir / "disk.img")
    serial = open_dir / "vm1.serial"
    xml = guest.xml("vm1", serial, devices=disk_xml(image, fmt="raw"))
    (open_dir / "vm1.xml").write_text(xml if node_user else labelled(xml))
    argv = [sys.executable, "-c", SUPERVISOR, embed_uri(root), str(open_dir / "vm1.xml")]
    supervisor = await trio.lowlevel.open_process(argv, cwd=REPO, stdout=subprocess.PIPE)
    pid = None
    try:
        assert supervisor.stdout is not None
        said = b""
        with trio.fail_after(30):
            while b"\n" not in said:
                said += await supervisor.stdout.receive_some()
        assert said == b"ready\n"
        supervisor.kill()  # SIGKILL: no chance to give anything back
        await supervisor.wait()
        pid = qemu_pid(root, "vm1")
        assert pid_alive(pid)
        assert proc_status(pid)["Uid"].split()[0] == str(qemus[0])
        assert owner(image) == owner(serial) == qemus
        if meanwhile == "QEMU dies":
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: not pid_alive(pid))

        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            if meanwhile == "nothing":
                # Re-attached: the files stay QEMU's for as long as it runs.
                assert (await dom.state())[0] is S.PAUSED
                assert owner(image) == qemus
                await dom.destroy()
            else:
                assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.CRASHED)
        assert owner(image) == SOMEONE
        assert owner(serial) == (0, 0)
    finally:
        supervisor.kill()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)  # not our child: the leak fixture cannot see it


def user_may(path: Path, test: str) -> bool:
    """The kernel's answer: may ``nobody``, with no capabilities, ``test`` (a test(1) or cd
    expression on "$1") ``path``?"""
    entry = pwd.getpwnam(USER)
    argv = [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--bounding-set=-all",
        "--",
        "/bin/sh",
        "-c",
        test,
        "sh",
        str(path),
    ]
    return subprocess.run(argv, capture_output=True).returncode == 0


def kvm_refusal() -> str | None:
    """Why the /dev/kvm case cannot be tried here, or None."""
    if not kvm_usable()[0]:
        return "KVM is not usable on this machine"
    if user_may(Path("/dev/kvm"), 'test -r "$1" -a -w "$1"'):
        return f"'{USER}' may use /dev/kvm on this machine"
    return None


@pytest.mark.parametrize(
    "case", ["a closed directory", "a socket directory", "a backing file", "/dev/kvm"]
)
async def test_what_the_user_cannot_reach_is_refused_and_nothing_starts(
    cconn, confined, guest, open_dir, case
):
    image = someones(open_dir / "disk.img")
    devices = disk_xml(image, fmt="raw")
    domain_type = "qemu"
    if case == "a closed directory":
        closed = open_dir / "private"
        closed.mkdir(mode=0o700)
        devices += disk_xml(someones(closed / "disk.img"), "vdb", fmt="raw")
        blocked = f"'{closed / 'disk.img'}': it may not enter the directory '{closed}'"
    elif case == "a backing file":
        # Named inside the image, not by the XML: never given away, however private.
        backing = open_dir / "base.qcow2"
        qemu_img("create", "-f", "qcow2", backing, "16M")
        os.chown(backing, *SOMEONE)
        backing.chmod(0o600)
        top = overlay(open_dir / "top.qcow2", backing)
        top.chmod(0o600)
        devices += disk_xml(top, "vdb")
        blocked = f"may not read a backing file of disk 'vdb' '{backing}' (-rw------- 12345:12345)"
    elif case == "a socket directory":
        # QEMU would bind the socket itself, in a directory only root may write.
        devices += AGENT.replace(
            "<source mode='bind'/>", f"<source mode='bind' path='{open_dir}/a.sock'/>"
        )
        blocked = (
            f"may not write/enter the directory of the socket of channel 'channel0' '{open_dir}'"
        )
    else:
        why = kvm_refusal()
        if why:
            pytest.skip(why)
        domain_type = "kvm"
        blocked = "may not read/write KVM '/dev/kvm'"
    serial = open_dir / "vm1.serial"
    dom = await cconn.define_xml(guest.xml("vm1", serial, domain_type=domain_type, devices=devices))
    with pytest.raises(asvirt.SystemCallError) as caught:
        await dom.start(paused=True)
    assert blocked in str(caught.value)
    assert f"QEMU runs as user '{USER}'" in str(caught.value)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert process.find_qemus(str(confined)) == {}
    assert not (confined / "run" / "qemu" / "vm1.status").exists()
    # Checked before anything was changed: the image QEMU could have had is still someone's.
    assert owner(image) == SOMEONE and not serial.exists()


# -- who may do it --------------------------------------------------------------------------------


NON_ROOT = """
import sys, trio, asvirt
from asvirt.config import Config, QemuConfig
async def main(uri):
    try:
        async with asvirt.open(uri, config=Config(qemu=QemuConfig(user='nobody'))):
            pass
    except asvirt.AsvirtError as err:
        print(type(err).__name__, err)
trio.run(main, sys.argv[1])
"""


def test_a_supervisor_not_running_as_root_refuses_to_run_qemu_as_another_user(tmp_path, qemu_user):
    root = tmp_path / "root"
    # Python is installed under /root here, which nobody may not enter: the process keeps
    # CAP_DAC_READ_SEARCH (reading and entering any directory) and nothing else of root's.
    # It runs as uid 65534, which is what asvirt checks.
    argv = [
        "setpriv",
        f"--reuid={qemu_user.pw_uid}",
        f"--regid={qemu_user.pw_gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
        sys.executable,
        "-c",
        NON_ROOT,
        embed_uri(root),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"NoConnectError [qemu] user '{USER}': only a supervisor running as root can run QEMU "
        f"as another user or group, and this one runs as uid {qemu_user.pw_uid}"
    ), proc.stdout
    assert not root.exists()  # refused before anything was made


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX access ACL as the kernel stores it: (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


USER_OBJ, NAMED_USER, GROUP_OBJ, NAMED_GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
ANY = 0xFFFFFFFF


@pytest.mark.parametrize(
    ("mode", "owned_by", "acl_of", "allowed"),
    [
        (0o700, "root", None, False),
        (0o711, "root", None, True),
        (0o750, "group", None, True),
        (0o705, "group", None, False),  # the group's bits decide, not the others'
        (0o070, "user", None, False),  # the owner's bits decide
        (0o700, "root", lambda u, g: [(NAMED_USER, 1, u), (MASK, 1, ANY)], True),
        (0o700, "root", lambda u, g: [(NAMED_USER, 1, u), (MASK, 0, ANY)], False),
        (0o700, "root", lambda u, g: [(NAMED_GROUP, 1, g), (MASK, 1, ANY)], True),
        (0o701, "root", lambda u, g: [(NAMED_GROUP, 0, g), (MASK, 7, ANY)], False),
    ],
)
def test_what_the_user_may_enter_is_judged_as_the_kernel_does(
    open_dir, qemu_user, mode, owned_by, acl_of, allowed
):
    identity = resolve_identity(QemuConfig(user=USER))
    assert isinstance(identity, QemuIdentity)
    directory = open_dir / "d"
    directory.mkdir()
    uid, gid = {"root": (0, 0), "group": (0, qemu_user.pw_gid), "user": (qemu_user.pw_uid, 0)}[
        owned_by
    ]
    os.chown(directory, uid, gid)
    directory.chmod(mode)
    if acl_of is not None:
        others = [(USER_OBJ, mode >> 6 & 7, ANY), (GROUP_OBJ, mode >> 3 & 7, ANY)]
        entries = [*others, *acl_of(qemu_user.pw_uid, qemu_user.pw_gid), (OTHER, mode & 7, ANY)]
        os.setxattr(directory, "system.posix_acl_access", acl(*sorted(entries)))
    assert user_may(directory, 'cd "$1"') is allowed
    assert permits(str(directory), identity, SEARCH) is allowed


def test_a_raw_io_lun_lets_qemu_keep_cap_sys_rawio_and_nothing_else(qemu_user):
    identity = resolve_identity(QemuConfig(user=USER))
    assert isinstance(identity, QemuIdentity)
    lun = (
        "<domain type='qemu'><name>vm1</name><memory>65536</memory><os><type>hvm</type></os>"
        "<devices><disk type='block' device='lun' rawio='{}'><source dev='/dev/sdz'/>"
        "<target dev='sda' bus='scsi'/></disk></devices></domain>"
    )
    for rawio, wanted in (("yes", 1 << 17), ("no", 0)):  # CAP_SYS_RAWIO is bit 17
        caps = qemu_caps(parse_domain_xml(lun.format(rawio)))
        # What QEMU would be started through, running a program that shows its caps.
        argv = identity.command(["cat", "/proc/self/status"], caps)
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        status = {k: v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
        assert status["Uid"].split()[0] == str(qemu_user.pw_uid)
        for name in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[name], 16) == wanted, (rawio, name)


async def test_file_backed_ram_is_the_users_and_goes_at_stop(
    root, guest, open_dir, qemu_user, nobody
):
    ram = open_dir / "ram"  # [qemu] memory_backing_dir: the root itself is closed to nobody
    write_config(root, f'[qemu]\nuser = "{USER}"\nmemory_backing_dir = "{ram}"\n')
    xml = guest.xml("vm1", open_dir / "vm1.serial").replace(
        "<os>", "<memoryBacking><source type='file'/></memoryBacking><os>", 1
    )
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.define_xml(xml)
            await dom.start(paused=True)
            assert owner(ram / "vm1") == nobody
            assert owner(ram / "vm1" / "pc.ram") == nobody  # QEMU (nobody) made it
            await dom.destroy()
            assert not (ram / "vm1").exists()
        finally:
            await destroy_all(conn)
    # Where nobody cannot reach the directory, the start says so before QEMU runs.
    write_config(root, f'[qemu]\nuser = "{USER}"\n')
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.lookup_by_name("vm1")
            with pytest.raises(asvirt.OperationFailedError, match="memory_backing_dir"):
                await dom.start(paused=True)
            assert not (root / "lib" / "qemu" / "ram" / "vm1").exists()
        finally:
            await destroy_all(conn)


async def test_hotplugged_disks_are_given_as_cold_plugged_ones_and_back_on_detach(
    cconn: asvirt.Connection, confined: Path, guest: TestGuest, open_dir: Path, nobody
):
    # Paused, never booted: TCG, since the user may not open /dev/kvm here.
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    cold = someones(open_dir / "cold.img")
    devices = scsi + disk_xml(cold, "sda", bus="scsi", fmt="raw")
    xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=devices)
    dom = await cconn.define_xml(xml)
    await dom.start(paused=True)
    image = someones(open_dir / "hot.img")
    hot = disk_xml(image, "sdb", bus="scsi", fmt="raw")
    await dom.attach_device(hot)
    # The same owner and mode as the disk the domain started with.
    assert owner(image) == owner(cold) == nobody
    assert stat.S_IMODE(os.stat(image).st_mode) == stat.S_IMODE(os.stat(cold).st_mode)
    assert str(image) in status_record(confined, "vm1")["chowned"]
    # SCSI disks go at once (no guest involved): given back as the detach ends, not when
    # the domain stops, and no longer in the record a next supervisor would give back from.
    assert await dom.detach_device(hot) is True
    assert owner(image) == SOMEONE
    assert str(image) not in status_record(confined, "vm1")["chowned"]
    assert owner(cold) == nobody
    # The same file again: given again.
    await dom.attach_device(hot)
    assert owner(image) == nobody
    await dom.destroy()
    assert owner(image) == owner(cold) == SOMEONE


async def test_the_base_of_an_active_commit_is_given_for_the_job_and_kept_after_the_pivot(
    cconn: asvirt.Connection, confined: Path, guest: TestGuest, open_dir: Path, nobody
):
    # The base is readable by all (a backing file is never given) but only its owner's to
    # write: QEMU, as nobody, can commit into it only once it is given it.
    base = open_dir / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "16M")
    top = overlay(open_dir / "top.qcow2", base)
    for image in (base, top):
        os.chown(image, *SOMEONE)
        image.chmod(0o644)
    xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=disk_xml(top))
    dom = await cconn.define_xml(xml)
    await dom.start(paused=True)
    assert owner(top) == nobody and owner(base) == SOMEONE
    async with cconn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
        await dom.block_commit("vda", active=True)
        assert owner(base) == nobody
        assert (await events.receive()).data["status"] == "ready"
        await dom.block_job_abort("vda", pivot=True)
    # The disk is the base now: kept; the top it left goes back at once.
    assert owner(base) == nobody and owner(top) == SOMEONE
    chowned = status_record(confined, "vm1")["chowned"]
    assert str(base) in chowned and str(top) not in chowned
    await dom.destroy()
    assert owner(base) == owner(top) == SOMEONE


async def test_an_external_snapshots_overlay_is_given_to_qemus_user_and_the_base_kept(
    cconn: asvirt.Connection, confined: Path, guest: TestGuest, open_dir: Path, nobody
):
    base = open_dir / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", base, "16M")
    os.chown(base, *SOMEONE)
    base.chmod(0o644)
    xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=disk_xml(base))
    dom = await cconn.define_xml(xml)
    await dom.start(paused=True)
    assert owner(base) == nobody
    await dom.snapshot_create_xml(
        "<domainsnapshot><name>s1</name></domainsnapshot>", disk_only=True
    )
    made = open_dir / "disk.s1"
    # QEMU writes the overlay from now on: its user's (and no one else's to read); the
    # base keeps what it had while the domain runs.
    assert owner(made) == nobody and stat.S_IMODE(os.stat(made).st_mode) == 0o600
    assert owner(base) == nobody
    chowned = status_record(confined, "vm1")["chowned"]
    assert str(made) in chowned and str(base) in chowned
    async with cconn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
        await dom.block_commit("vda", active=True)
        assert (await events.receive()).data["status"] == "ready"
        await dom.block_job_abort("vda", pivot=True)
    # Back on the base: the overlay goes back to whoever made it (the supervisor).
    assert owner(made) == (0, 0) and owner(base) == nobody
    await dom.destroy()
    assert owner(base) == SOMEONE


async def test_an_nbd_socket_is_checked_and_never_given_away(cconn, guest, open_dir, nobody):
    # qemu-nbd makes its socket 0755 (root's umask): QEMU as nobody could not connect.
    image = someones(open_dir / "served.raw")
    sock = open_dir / "nbd.sock"
    devices = (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='nbd' name='export'><host transport='unix' socket='{sock}'/>"
        "</source><target dev='vdb' bus='virtio'/></disk>"
    )
    xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=devices)
    dom = await cconn.define_xml(xml)
    with qemu_nbd(image, "raw", socket=sock):
        sock.chmod(0o755)
        with pytest.raises(asvirt.SystemCallError, match="the nbd socket of disk 'vdb'"):
            await dom.start(paused=True)
        assert owner(sock) == (0, 0)  # the server's, not given to QEMU's user
        sock.chmod(0o777)  # what its owner would do to let QEMU connect
        await dom.start(paused=True)
        blocks = await dom.qmp("query-block", None)
        assert [b["inserted"]["drv"] for b in blocks if "inserted" in b] == ["nbd"]
        await dom.destroy()
    assert owner(image) == SOMEONE  # qemu-nbd's to open, not QEMU's


async def test_a_serial_port_connecting_to_a_socket_is_given_it_and_gives_it_back(
    cconn, confined, guest, open_dir, nobody
):
    # libvirt's DAC driver labels a connect-mode chardev socket (it is the only way a QEMU
    # of another user may connect to a listener's socket it cannot write) and restores it
    # at stop; asvirt does the same, and only when QEMU's user could not connect already.
    sock = open_dir / "listener.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(sock))
        listener.listen(1)
        os.chown(sock, *SOMEONE)
        sock.chmod(0o700)
        devices = (
            f"<serial type='unix'><source mode='connect' path='{sock}'/><target port='1'/></serial>"
        )
        xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=devices)
        dom = await cconn.define_xml(xml)
        await dom.start(paused=True)
        # QEMU, as nobody, connected: the listener has its connection.
        listener.settimeout(30)
        peer, _ = listener.accept()
        peer.close()
        assert owner(sock) == nobody
        # Recorded before the chown: the next supervisor gives it back should this one die.
        assert str(sock) in status_record(confined, "vm1")["chowned"]  # type: ignore[operator]
        await dom.destroy()
        assert owner(sock) == SOMEONE
        # A socket QEMU's user may connect to already is not touched.
        sock.chmod(0o777)
        await dom.start(paused=True)
        peer, _ = listener.accept()
        peer.close()
        assert owner(sock) == SOMEONE
        await dom.destroy()


async def test_a_failed_hotplug_gives_the_file_back(cconn, guest, open_dir, nobody):
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    xml = guest.xml("vm1", open_dir / "vm1.serial", domain_type="qemu", devices=scsi)
    dom = await cconn.define_xml(xml)
    await dom.start(paused=True)
    image = someones(open_dir / "bad.img", size=512)
    # Not a qcow2 image: QEMU refuses it after asvirt gave it to QEMU's user.
    with pytest.raises(asvirt.AsvirtError):
        await dom.attach_device(disk_xml(image, "sdb", bus="scsi", fmt="qcow2"))
    assert owner(image) == SOMEONE
    assert "sdb" not in await dom.xml_desc()


# -- a domain's own DAC label -----------------------------------------------------------------


async def test_a_static_dac_seclabel_runs_qemu_as_its_user_and_none_as_the_supervisor(
    conn, root, guest, open_dir, nobody
):
    """<seclabel model='dac' type='static'> runs this domain's QEMU as its user:group on an
    unconfined node; type='none' keeps the supervisor's identity. The label's files are the
    user's to give (relabel='no'): here, the serial log."""
    serial = open_dir / "vm1.serial"
    serial.touch()
    os.chown(serial, *nobody)
    dom = await conn.define_xml(labelled(guest.xml("vm1", serial), nobody, relabel="no"))
    await dom.start(paused=True)
    status = proc_status(qemu_pid(root, "vm1"))
    assert status["Uid"].split() == [str(nobody[0])] * 4
    assert status["Gid"].split() == [str(nobody[1])] * 4
    assert status["NoNewPrivs"] == "1"
    assert "<seclabel type='static' model='dac' relabel='no'>" in await dom.xml_desc()
    await dom.destroy()
    none = "<seclabel type='none' model='dac'/>"
    dom2 = await conn.define_xml(
        guest.xml("vm2", open_dir / "vm2.serial").replace("</domain>", f"{none}</domain>")
    )
    await dom2.start(paused=True)
    assert proc_status(qemu_pid(root, "vm2"))["Uid"].split()[0] == str(os.geteuid())
    # relabel='no' leaves the files alone: a disk the label's user may not open (root's,
    # 0600) is refused before QEMU runs, saying so, and is left as it was.
    image = open_dir / "vm3.qcow2"
    qemu_img("create", "-f", "qcow2", image, "16M")
    image.chmod(0o600)
    dom3 = await conn.define_xml(
        labelled(guest.xml("vm3", serial, devices=disk_xml(image)), nobody, relabel="no")
    )
    with pytest.raises(asvirt.SystemCallError) as caught:
        await dom3.start(paused=True)
    assert f"QEMU runs as user '+{nobody[0]}:+{nobody[1]}'" in str(caught.value)
    assert f"may not read/write disk 'vda' '{image}' (-rw------- root:root)" in str(caught.value)
    assert "relabel='no'" in str(caught.value)
    assert await dom3.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert owner(image) == (0, 0) and stat.S_IMODE(os.stat(image).st_mode) == 0o600


async def test_a_disk_plugged_into_a_statically_labelled_domain_is_labelled_as_its_others(
    confined, guest, open_dir
):
    """A domain with its own static DAC label runs as that label on a confined node; its
    files are the label's (relabel='no'), cold- or hot-plugged: never given to the node's
    [qemu] user, whom that QEMU does not run as."""
    label_user = (12346, 12346)  # no such user: neither root, nobody, nor the files' owner
    serial = open_dir / "vm1.serial"
    serial.touch()
    os.chown(serial, *label_user)
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    cold = someones(open_dir / "cold.img")
    os.chown(cold, *label_user)
    devices = scsi + disk_xml(cold, "sda", bus="scsi", fmt="raw")
    xml = labelled(guest.xml("vm1", serial, devices=devices), label_user, relabel="no")
    async with asvirt.open(embed_uri(confined)) as conn:
        try:
            dom = await conn.define_xml(xml)
            await dom.start(paused=True)
            assert proc_status(qemu_pid(confined, "vm1"))["Uid"].split()[0] == "12346"
            image = someones(open_dir / "hot.img")
            os.chown(image, *label_user)
            hot = disk_xml(image, "sdb", bus="scsi", fmt="raw")
            await dom.attach_device(hot)  # QEMU, as 12346, opens it
            assert owner(image) == owner(cold) == label_user
            assert status_record(confined, "vm1")["chowned"] == {}
            assert await dom.detach_device(hot) is True
            assert owner(image) == label_user
        finally:
            await destroy_all(conn)
    assert owner(image) == owner(cold) == label_user


async def test_a_relabelling_dac_label_gives_the_domains_files_to_its_user_and_back(
    conn, root, guest, open_dir
):
    """relabel='yes' on a static DAC label: the domain's files (a disk cold- or hot-plugged,
    the serial file asvirt makes) are its user's while it runs, and root's again after."""
    image = open_dir / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, "16M")
    image.chmod(0o600)  # root's: the label's user may not open it as it is
    serial = open_dir / "vm1.serial"
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    dom = await conn.define_xml(
        labelled(guest.xml("vm1", serial, devices=scsi + disk_xml(image) + AGENT))
    )
    await dom.start(paused=True)
    status = proc_status(qemu_pid(root, "vm1"))
    assert status["Uid"].split() == [str(LABEL[0])] * 4
    assert status["Gid"].split() == [str(LABEL[1])] * 4
    assert owner(image) == owner(serial) == LABEL
    [disk] = [b for b in await dom.qmp("query-block") if b.get("inserted")]
    assert disk["inserted"]["file"] == str(image) and disk["inserted"]["ro"] is False
    # Written down before the chown, as for the node's [qemu] user.
    assert status_record(root, "vm1")["chowned"] == {
        str(image): [0, 0, *LABEL],
        str(serial): [0, 0, *LABEL],
    }
    # The agent's socket asvirt placed: in a directory of the label's user, who bound it.
    [channel] = parse_domain_xml(await dom.xml_desc()).channels
    assert channel.source_path is not None
    agent = Path(channel.source_path)
    assert owner(agent.parent) == owner(agent) == LABEL
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(agent))

    # A disk plugged in is given to the label's user too, and back when it leaves.
    hot = open_dir / "hot.img"
    hot.write_bytes(b"\0" * 65536)
    hot.chmod(0o600)
    hot_xml = disk_xml(hot, "sdb", bus="scsi", fmt="raw")
    await dom.attach_device(hot_xml)
    assert owner(hot) == LABEL
    assert status_record(root, "vm1")["chowned"][str(hot)] == [0, 0, *LABEL]  # type: ignore[index]
    assert await dom.detach_device(hot_xml) is True
    assert owner(hot) == (0, 0)

    await dom.destroy()
    assert owner(image) == owner(serial) == (0, 0)
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in (image, serial, hot)} == {0o600}


async def test_an_external_snapshot_of_a_relabelling_dac_labelled_domain(
    conn, root, guest, open_dir
):
    """The overlay a disk-only snapshot makes is the label's user's while the domain runs."""
    image = open_dir / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, "16M")
    image.chmod(0o600)
    dom = await conn.define_xml(
        labelled(guest.xml("vm1", open_dir / "vm1.serial", devices=disk_xml(image)))
    )
    await dom.start(paused=True)
    await dom.snapshot_create_xml(
        "<domainsnapshot><name>s1</name></domainsnapshot>", disk_only=True
    )
    made = open_dir / "disk.s1"
    assert owner(made) == owner(image) == LABEL
    assert status_record(root, "vm1")["chowned"][str(made)] == [0, 0, *LABEL]  # type: ignore[index]
    [block] = [b for b in await dom.qmp("query-block") if b.get("inserted")]
    assert block["inserted"]["file"] == str(made) and block["inserted"]["ro"] is False
    await dom.destroy()
    assert owner(made) == owner(image) == (0, 0)


async def test_a_disk_whose_own_seclabel_says_relabel_no_is_left_as_it_is(
    conn, root, guest, open_dir
):
    """<source><seclabel model='dac' relabel='no'/> keeps one disk of a relabelling domain
    out of it: checked, never given away."""
    given, kept = (open_dir / "given.img", open_dir / "kept.img")
    for image in (given, kept):
        image.write_bytes(b"\0" * 65536)
        image.chmod(0o600)  # root's
    norelabel = "<seclabel model='dac' relabel='no'/>"
    kept_xml = disk_xml(kept, "vdb", fmt="raw").replace(
        f"<source file='{kept}'/>", f"<source file='{kept}'>{norelabel}</source>"
    )
    serial = open_dir / "vm1.serial"
    devices = disk_xml(given, fmt="raw") + kept_xml
    dom = await conn.define_xml(labelled(guest.xml("vm1", serial, devices=devices)))
    assert [d.norelabel for d in parse_domain_xml(await dom.xml_desc()).disks] == [False, True]
    with pytest.raises(asvirt.SystemCallError) as caught:
        await dom.start(paused=True)
    assert f"may not read/write disk 'vdb' '{kept}' (-rw------- root:root)" in str(caught.value)
    assert "relabel='no'" in str(caught.value)
    assert owner(given) == owner(kept) == (0, 0) and not serial.exists()
    kept.chmod(0o666)  # what its owner does to lend it
    await dom.start(paused=True)
    assert owner(given) == LABEL and owner(kept) == (0, 0)
    assert str(kept) not in status_record(root, "vm1")["chowned"]  # type: ignore[operator]
    await dom.destroy()
    assert owner(given) == owner(kept) == (0, 0)


async def test_a_uefi_domains_nvram_is_made_and_given_to_its_labels_user(
    conn, root, guest, open_dir
):
    """The NVRAM a first start makes from its template is given to the label's user too
    (QEMU writes it), and back; the shared firmware, readable by all, is left alone."""
    nvram = open_dir / "vm1_VARS.fd"
    xml = efi(guest.xml("vm1", open_dir / "vm1.serial")).replace(
        "</firmware>", f"</firmware><nvram>{nvram}</nvram>"
    )
    dom = await conn.define_xml(labelled(xml))
    loader = parse_domain_xml(await dom.xml_desc()).os.loader
    assert loader is not None and loader.path is not None
    firmware = Path(loader.path)  # the one define chose, under /usr/share
    await dom.start(paused=True)
    assert owner(nvram) == LABEL and stat.S_IMODE(os.stat(nvram).st_mode) == 0o600
    assert owner(firmware) == (0, 0)
    assert status_record(root, "vm1")["chowned"] == {
        str(nvram): [0, 0, *LABEL],
        str(open_dir / "vm1.serial"): [0, 0, *LABEL],
    }
    await dom.destroy()
    assert owner(nvram) == (0, 0)


async def test_a_file_given_to_one_user_is_refused_to_a_domain_of_another(
    cconn, confined, guest, open_dir, nobody
):
    """A file is given to one user at a time: a domain of another user (its own label,
    relabel='yes') that needs it is refused at start and at attach, changing nothing; a
    file the other user may use as it is, and as it will be when given back (an ISO readable
    by all, an image with an ACL entry for that user), is no conflict."""
    shared = someones(open_dir / "shared.img")
    lent = someones(open_dir / "lent.img")  # someone's, lent to the label's user by an ACL
    entries = [(USER_OBJ, 6, ANY), (NAMED_USER, 6, LABEL[0]), (GROUP_OBJ, 0, ANY)]
    os.setxattr(lent, "system.posix_acl_access", acl(*entries, (MASK, 6, ANY), (OTHER, 0, ANY)))
    lent_xml = disk_xml(lent, "sdb", bus="scsi", fmt="raw", extra="<shareable/>")
    media = open_dir / "media.iso"
    media.write_bytes(b"\0" * 2048)
    media.chmod(0o644)
    cdrom = disk_xml(media, "hdc", fmt="raw", device="cdrom", bus="ide", extra="<readonly/>")
    scsi = "<controller type='scsi' model='virtio-scsi'/>"
    shareable = disk_xml(shared, "sda", bus="scsi", fmt="raw", extra="<shareable/>")
    a = await cconn.define_xml(
        guest.xml("a", open_dir / "a.serial", devices=scsi + shareable + lent_xml + cdrom)
    )
    b_serial = open_dir / "b.serial"
    b = await cconn.define_xml(labelled(guest.xml("b", b_serial, devices=scsi + shareable + cdrom)))
    await a.start(paused=True)  # as the node's [qemu] user
    assert owner(shared) == owner(lent) == nobody

    with pytest.raises(asvirt.OperationInvalidError) as caught:
        await b.start(paused=True)
    assert (
        f"cannot give disk 'sda' '{shared}' to user '+{LABEL[0]}:+{LABEL[1]}' (uid "
        f"{LABEL[0]}, gid {LABEL[1]}): it is given to uid {nobody[0]}, gid {nobody[1]} for "
        "the running domain 'a'"
    ) in str(caught.value)
    assert await b.state() == (S.SHUTOFF, asvirt.ShutoffReason.FAILED)
    assert not (confined / "run" / "qemu" / "b.status").exists()
    assert owner(shared) == nobody and not b_serial.exists()  # nothing made or changed

    # Without the shared disk it runs, the ISO and the lent image with it (left as they
    # are, held by a only); plugging the shared disk in is refused.
    b = await cconn.define_xml(
        labelled(guest.xml("b", b_serial, uuid=b.uuid, devices=scsi + lent_xml + cdrom))
    )
    await b.start(paused=True)
    assert owner(lent) == nobody
    assert status_record(confined, "b")["chowned"] == {str(b_serial): [0, 0, *LABEL]}
    with pytest.raises(asvirt.OperationInvalidError, match="the running domain 'a'"):
        await b.attach_device(shareable)
    assert owner(shared) == nobody and str(shared) not in await b.xml_desc()
    assert str(shared) not in status_record(confined, "b")["chowned"]  # type: ignore[operator]

    # Once a no longer runs, it is b's user's to have, and given back after.
    await a.destroy()
    assert owner(shared) == owner(lent) == SOMEONE
    await b.attach_device(shareable)
    assert owner(shared) == LABEL
    await b.destroy()
    assert owner(shared) == SOMEONE and owner(media) == (0, 0)


def test_tls_files_qemus_user_cannot_read_refuse_the_start(qemu_user, open_dir):
    # Certificates are never given to QEMU's user (one key serves every domain): one it
    # cannot read is named at start, as qemu.conf's users must make them readable.
    pki = make_tls_dir(open_dir / "pki")
    pki.chmod(0o755)
    for pem in pki.glob("*.pem"):
        pem.chmod(0o644)
    (pki / "server-key.pem").chmod(0o600)
    identity = resolve_identity(QemuConfig(user=USER))
    vnc = parse_domain_xml(
        "<domain type='qemu'><name>vm1</name><memory>65536</memory><os><type>hvm</type></os>"
        "<devices><graphics type='vnc' port='5901'/></devices></domain>"
    )
    tls = TlsConfig(vnc=True, vnc_dir=str(pki))
    check_tls_files(vnc, tls)  # the supervisor (root) reads it
    with pytest.raises(asvirt.OperationFailedError, match=r"server-key\.pem' .*may not read it"):
        check_tls_files(vnc, tls, identity)
    (pki / "server-key.pem").chmod(0o640)
    os.chown(pki / "server-key.pem", 0, qemu_user.pw_gid)  # the group's, as libvirt's
    check_tls_files(vnc, tls, identity)
    pki.chmod(0o700)
    with pytest.raises(asvirt.OperationFailedError, match=f"may not enter '{pki}'"):
        check_tls_files(vnc, tls, identity)
