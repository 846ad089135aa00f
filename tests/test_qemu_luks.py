"""LUKS-encrypted disks: ``<encryption format='luks'>`` with the passphrase in a secret.

Images are made and written by qemu-img and qemu-io; the test guest (TCG) reads them back
through QEMU, which must have unlocked them with the secret's value. The passphrase must
never be in QEMU's command line nor in a file of the root (other than the secret store).
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import trio

import asvirt

from .guest import TestGuest, define, wait_for_serial
from .helpers import (
    argv_of,
    blockdevs,
    destroy_all,
    disk_snapshots,
    disk_xml,
    dumpxml_roundtrip,
    opts,
    qemu_img,
    qemu_pid,
)
from .test_console import read_until

pytestmark = [pytest.mark.qemu]

PASSPHRASE = "correct horse battery staple"
MARKER = "asvirt-luks-marker-"
SECRET_UUID = "6a4c2f4e-6f0d-4d35-9d2c-0f5e8f1e7a11"


def make_luks(path: Path, fmt: str, passphrase: str, marker: str) -> None:
    """A 16 MiB LUKS image (a raw ``luks`` one, or a qcow2 with LUKS encryption) holding
    ``marker`` at offset 0, written through qemu-io as a guest would see it."""
    obj = f"secret,id=sec0,data={passphrase}"
    # A short key derivation: each open derives the key again, and the machine is shared.
    if fmt == "qcow2":
        options = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
    else:
        options = "key-secret=sec0,iter-time=10"
    argv = ["qemu-img", "create", "-q", "-f", fmt, "--object", obj, "-o", options, str(path), "16M"]
    for _ in range(3):
        made = subprocess.run(argv, capture_output=True, text=True)
        # Debian's QEMU 7.2 times its first PBKDF2 round with getrusage(), which may not
        # have counted the few milliseconds yet, and gives up ("Unable to get accurate CPU
        # usage"; fixed upstream in 2025 by tolerating a zero reading): that alone is tried
        # again.
        if made.returncode == 0 or "accurate CPU usage" not in made.stderr:
            break
    assert made.returncode == 0, made.stderr
    write_marker(path, fmt, passphrase, marker)


def _image_opts(path: Path, fmt: str) -> str:
    """The LUKS image ``path`` (qcow2, or raw ``luks``) opened with the secret ``sec0``."""
    if fmt == "qcow2":
        return f"driver=qcow2,file.filename={path},encrypt.key-secret=sec0"
    return f"driver=luks,file.filename={path},key-secret=sec0"


def write_marker(path: Path, fmt: str, passphrase: str, marker: str) -> None:
    """Write ``marker`` at offset 0 of the LUKS image ``path`` as a guest would see it."""
    data = path.with_suffix(".marker")
    data.write_text(marker)
    subprocess.run(
        [
            "qemu-io",
            "--object",
            f"secret,id=sec0,data={passphrase}",
            "--image-opts",
            _image_opts(path, fmt),
            "-c",
            f"write -s {data} 0 {len(marker)}",
        ],
        check=True,
        capture_output=True,
    )
    data.unlink()
    assert marker.encode() not in path.read_bytes()  # it is encrypted on disk


def read_start(path: Path, fmt: str, passphrase: str) -> bytes:
    """The first 512 bytes the guest would read from the LUKS image ``path``."""
    out = path.with_suffix(".start")
    subprocess.run(
        [
            "qemu-img",
            "dd",
            "--object",
            f"secret,id=sec0,data={passphrase}",
            "--image-opts",
            "-O",
            "raw",
            "bs=512",
            "count=1",
            f"if={_image_opts(path, fmt)}",
            f"of={out}",
        ],
        check=True,
        capture_output=True,
    )
    data = out.read_bytes()
    out.unlink()
    return data


def luks_disk(path: Path, target: str, fmt: str, *, secret: str, in_source: bool = True) -> str:
    enc = f"<encryption format='luks'><secret type='passphrase' {secret}/></encryption>"
    source = f"<source file='{path}'>{enc}</source>" if in_source else f"<source file='{path}'/>"
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      {source}
      <target dev='{target}' bus='virtio'/>{"" if in_source else enc}
    </disk>"""


async def define_secret(conn: asvirt.Connection, value: str, usage: str | None = None) -> None:
    usage_el = f"<usage type='volume'><volume>{usage}</volume></usage>" if usage else ""
    secret = await conn.secret_define_xml(
        f"<secret ephemeral='no' private='yes'><uuid>{SECRET_UUID}</uuid>{usage_el}</secret>"
    )
    await secret.set_value(value.encode())


def test_argv_names_secret_objects_and_never_a_passphrase(caps, tmp_path):
    disks = luks_disk(
        Path("/i/a.qcow2"), "vda", "qcow2", secret=f"uuid='{SECRET_UUID}'"
    ) + luks_disk(Path("/i/b.luks"), "vdb", "raw", secret="usage='/i/b.luks'", in_source=False)
    xml = f"""<domain type='qemu'><name>v</name><memory>65536</memory>
      <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disks}</devices></domain>"""
    argv = argv_of(caps, xml, tmp_path)
    objects = [o for o in opts(argv, "-object") if '"secret"' in o]
    assert objects == [
        '{"qom-type":"secret","id":"libvirt-2-format-encryption-secret0","format":"raw",'
        '"file":"/proc/self/fd/N"}',
        '{"qom-type":"secret","id":"libvirt-1-format-encryption-secret0","format":"raw",'
        '"file":"/proc/self/fd/N"}',
    ]
    formats = {b["node-name"]: b for b in blockdevs(argv) if b["node-name"].endswith("format")}
    assert formats["libvirt-2-format"]["driver"] == "qcow2"
    assert formats["libvirt-2-format"]["encrypt"] == {
        "format": "luks",
        "key-secret": "libvirt-2-format-encryption-secret0",
    }
    assert formats["libvirt-1-format"]["driver"] == "luks"
    assert formats["libvirt-1-format"]["key-secret"] == "libvirt-1-format-encryption-secret0"
    # Each secret object comes before the node that uses it.
    assert argv.index(objects[0]) < argv.index(
        next(o for o in opts(argv, "-blockdev") if "libvirt-2-format" in o)
    )
    # Where it was written, it is written back (and libvirt's schema takes it).
    out = dumpxml_roundtrip(caps, xml)
    assert "<source file='/i/a.qcow2'>\n        <encryption format='luks'>" in out
    assert (
        "<encryption format='luks'>\n        <secret type='passphrase' usage='/i/b.luks'/>" in out
    )


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        (
            "<encryption format='qcow'><secret type='passphrase' uuid='%s'/></encryption>",
            "QEMU 5.0",
        ),
        ("<encryption format='luks'/>", "needs a <secret type='passphrase'>"),
        (
            "<encryption format='luks'><secret type='passphrase'/></encryption>",
            "either uuid= or usage=",
        ),
        (
            "<encryption format='luks'><secret type='ceph' uuid='%s'/></encryption>",
            "secret type 'ceph'",
        ),
        (
            "<encryption format='luks'><secret type='passphrase' uuid='%s'/><cipher name='aes'/>"
            "</encryption>",
            "<cipher>",
        ),
    ],
)
async def test_bad_encryption_is_refused_and_nothing_is_defined(conn, xml, message, tmp_path):
    disk = f"""<disk type='file'><driver name='qemu' type='qcow2'/><source file='/i/a.qcow2'/>
      <target dev='vda' bus='virtio'/>{xml.replace("%s", SECRET_UUID)}</disk>"""
    dom = f"""<domain type='qemu'><name>v</name><memory>65536</memory>
      <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disk}</devices></domain>"""
    with pytest.raises(asvirt.XMLError, match=message):
        await conn.define_xml(dom)
    assert await conn.list_all_domains() == []


@pytest.mark.guest
async def test_guest_reads_luks_disks_unlocked_with_the_secret(conn, test_guest, tmp_path, root):
    qcow = tmp_path / "a.qcow2"
    raw = tmp_path / "b.luks"
    make_luks(qcow, "qcow2", PASSPHRASE, MARKER + "qcow2")
    make_luks(raw, "luks", PASSPHRASE, MARKER + "raw")
    await define_secret(conn, PASSPHRASE, usage=str(raw))
    disks = luks_disk(qcow, "vda", "qcow2", secret=f"uuid='{SECRET_UUID}'") + luks_disk(
        raw, "vdb", "raw", secret=f"usage='{raw}'", in_source=False
    )
    dom, serial = await define(conn, test_guest, tmp_path, serial="pty", devices=disks)
    try:
        await dom.start()
        # Not in QEMU's command line, nor in any file of the root: the secret store holds it
        # encrypted (neither it nor its base64 is there).
        cmdline = Path(f"/proc/{qemu_pid(root, 'vm1')}/cmdline").read_bytes()
        assert PASSPHRASE.encode() not in cmdline
        stored = [f for f in root.rglob("*") if f.is_file()]
        assert any(f.suffix == ".aes256gcm" for f in stored)
        for f in stored:
            data = f.read_bytes()
            assert PASSPHRASE.encode() not in data, f
            assert base64.b64encode(PASSPHRASE.encode()) not in data, f
        await wait_for_serial(serial)
        async with await dom.open_console() as console:
            # Upper-cased by the guest: only what it read from the disks can match.
            await console.send_all(
                b"for d in vda vdb; do head -c 24 /dev/$d | tr a-z A-Z; echo; done\n"
            )
            seen = await read_until(console, (MARKER + "raw").upper().encode())
        assert (MARKER + "qcow2").upper().encode() in seen

        # A disk plugged in while it runs gets its secret over the monitor.
        hot = tmp_path / "c.qcow2"
        make_luks(hot, "qcow2", PASSPHRASE, MARKER + "hot")
        added = serial.read_text(errors="replace").count("ASVIRT-DISK-add")
        await dom.attach_device(luks_disk(hot, "vdc", "qcow2", secret=f"uuid='{SECRET_UUID}'"))
        await wait_for_serial(serial, "ASVIRT-DISK-add", times=added + 1)
        async with await dom.open_console() as console:
            await console.send_all(b"head -c 24 /dev/vdc | tr a-z A-Z; echo\n")
            await read_until(console, (MARKER + "hot").upper().encode())
        # A (private) secret's value cannot be read back from QEMU by a client's QMP.
        for sid in ("libvirt-1-format-encryption-secret0", "libvirt-3-format-encryption-secret0"):
            got = await dom.qmp("qom-get", {"path": f"/objects/{sid}", "property": "data"})
            assert got in ("", None), (sid, got)
        assert not await dom.qmp("query-fdsets")  # the hot-plugged secret's pipe is gone
        await dom.detach_device(luks_disk(hot, "vdc", "qcow2", secret=f"uuid='{SECRET_UUID}'"))
        objects = await dom.qmp("qom-list", {"path": "/objects"})
        assert "libvirt-3-format-encryption-secret0" not in {o["name"] for o in objects}
    finally:
        await destroy_all(conn)


async def test_missing_or_wrong_secret_fails_the_start_and_leaves_nothing(conn, tmp_path, root):
    qcow = tmp_path / "a.qcow2"
    make_luks(qcow, "qcow2", PASSPHRASE, MARKER)
    disk = luks_disk(qcow, "vda", "qcow2", secret=f"uuid='{SECRET_UUID}'")
    dom = await conn.define_xml(
        f"""<domain type='qemu'><name>vm1</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{disk}</devices></domain>"""
    )
    with pytest.raises(asvirt.NoSecretError, match=f"no secret with matching uuid '{SECRET_UUID}'"):
        await dom.start(paused=True)
    assert not await dom.is_active()
    await define_secret(conn, "not the passphrase")
    with trio.fail_after(60), pytest.raises(asvirt.OperationFailedError, match="Invalid password"):
        await dom.start(paused=True)
    assert not await dom.is_active()
    assert not list((root / "run" / "qemu").glob("*.status"))
    # With the right value it starts.
    await (await conn.lookup_secret_by_uuid(SECRET_UUID)).set_value(PASSPHRASE.encode())
    await dom.start(paused=True)
    await dom.destroy()


async def define_encrypted_and_plain(
    conn: asvirt.Connection, test_guest: TestGuest, tmp_path: Path
) -> tuple[asvirt.Domain, Path, Path, Path]:
    """The test guest (console on a pty) with a LUKS-in-qcow2 ``vda`` holding the marker
    ``old`` (its secret: SECRET_UUID) and a plain qcow2 ``vdb``, the disk that can take a
    running snapshot's memory state: the domain, its serial log and the two images."""
    disk, plain = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    make_luks(disk, "qcow2", PASSPHRASE, MARKER + "old")
    qemu_img("create", "-f", "qcow2", plain, "16M")
    dom, serial = await define(
        conn,
        test_guest,
        tmp_path,
        serial="pty",
        devices=luks_disk(disk, "vda", "qcow2", secret=f"uuid='{SECRET_UUID}'")
        + disk_xml(plain, "vdb"),
    )
    return dom, serial, disk, plain


@pytest.mark.guest
async def test_snapshots_of_an_encrypted_disk_shut_off_and_running(
    conn, test_guest, tmp_path, root
):
    """qemu-img opens a shut-off encrypted disk with the secret's value to take, revert to
    and delete its snapshots. A running QEMU has the key already, but aborts writing memory
    state into an encrypted image: that goes into the unencrypted disk, and a domain
    without one is refused."""
    dom, serial, disk, plain = await define_encrypted_and_plain(conn, test_guest, tmp_path)
    snap_xml = "<domainsnapshot><name>off</name></domainsnapshot>"
    # Without the secret, or with a wrong value, nothing is made.
    with pytest.raises(asvirt.NoSecretError, match=SECRET_UUID):
        await dom.snapshot_create_xml(snap_xml)
    await define_secret(conn, "not the passphrase")
    with trio.fail_after(60), pytest.raises(asvirt.OperationFailedError, match="Invalid password"):
        await dom.snapshot_create_xml(snap_xml)
    assert disk_snapshots(disk) == disk_snapshots(plain) == []
    assert await dom.list_all_snapshots() == []
    await (await conn.lookup_secret_by_uuid(SECRET_UUID)).set_value(PASSPHRASE.encode())

    off = await dom.snapshot_create_xml(snap_xml)
    assert disk_snapshots(disk) == disk_snapshots(plain) == ["off"]
    write_marker(disk, "qcow2", PASSPHRASE, MARKER + "new")
    assert read_start(disk, "qcow2", PASSPHRASE).startswith((MARKER + "new").encode())
    await off.revert()
    try:
        await dom.start()
        await wait_for_serial(serial)
        async with await dom.open_console() as console:
            # Upper-cased by the guest: only what it read from the disk can match.
            await console.send_all(b"head -c 24 /dev/vda | tr a-z A-Z; echo\n")
            await read_until(console, (MARKER + "old").upper().encode())

        # Running, with only the encrypted disk: refused, the guest untouched.
        only_encrypted = (
            "<domainsnapshot><name>on</name><disks><disk name='vdb' snapshot='no'/></disks>"
            "</domainsnapshot>"
        )
        with pytest.raises(asvirt.OperationUnsupportedError, match="encrypted disk"):
            await dom.snapshot_create_xml(only_encrypted)
        assert await dom.state() == (asvirt.DomainState.RUNNING, asvirt.RunningReason.BOOTED)
        assert disk_snapshots(disk) == ["off"] and await dom.is_active()
        # With both: the memory state goes into the unencrypted one.
        on = await dom.snapshot_create_xml("<domainsnapshot><name>on</name></domainsnapshot>")
        assert (await on.info()).memory
        assert disk_snapshots(disk) == disk_snapshots(plain) == ["off", "on"]
        await on.revert()
        assert await dom.state() == (
            asvirt.DomainState.RUNNING,
            asvirt.RunningReason.FROM_SNAPSHOT,
        )
        await on.delete()
        assert disk_snapshots(disk) == ["off"]
    finally:
        await destroy_all(conn)
    # Shut off again: deleted by qemu-img, with the key.
    await off.delete()
    assert disk_snapshots(disk) == disk_snapshots(plain) == []
    assert await dom.list_all_snapshots() == []
    # The passphrase was never written anywhere but the secret store.
    for f in root.rglob("*"):
        if f.is_file() and "secrets" not in f.parts:
            assert PASSPHRASE.encode() not in f.read_bytes(), f


@pytest.mark.guest
async def test_a_shut_off_domain_with_an_encrypted_disk_reverts_to_a_running_snapshot(
    conn, test_guest, tmp_path, root
):
    """Reverting a shut-off domain to a snapshot taken while it ran starts a QEMU that
    unlocks the encrypted disk with the secret and loads the memory state from the
    unencrypted one: the guest runs on from the moment of the snapshot."""
    await define_secret(conn, PASSPHRASE)
    dom, serial, disk, plain = await define_encrypted_and_plain(conn, test_guest, tmp_path)

    async def guest(command: bytes, until: bytes) -> bytes:
        async with await dom.open_console() as console:
            await console.send_all(command + b"\n")
            return await read_until(console, until)

    try:
        await dom.start()
        await wait_for_serial(serial)
        # What the guest's memory holds when the snapshot is taken (a tmpfs file)...
        await guest(b"echo asvirt-memory-then > /tmp/m; echo set-$((1 + 1))", b"set-2")
        on = await dom.snapshot_create_xml("<domainsnapshot><name>on</name></domainsnapshot>")
        assert (await on.info()).memory
        assert disk_snapshots(disk) == disk_snapshots(plain) == ["on"]
        # ...and after it, in memory and on the encrypted disk, written by the guest.
        await guest(
            b"echo asvirt-memory-later > /tmp/m; printf %s "
            + (MARKER + "new").encode()
            + b" | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; echo written-$((2 + 2))",
            b"written-4",
        )
        await dom.destroy()
        assert read_start(disk, "qcow2", PASSPHRASE).startswith((MARKER + "new").encode())

        await on.revert()
        assert await dom.state() == (
            asvirt.DomainState.RUNNING,
            asvirt.RunningReason.FROM_SNAPSHOT,
        )
        # The guest runs on from the snapshot's memory, on the disk as it was then (read
        # from the disk, not the page cache it had then); upper-cased by the guest, so that
        # only what it read can match.
        seen = await guest(
            b"echo 3 > /proc/sys/vm/drop_caches; tr a-z A-Z < /tmp/m; "
            b"head -c 22 /dev/vda | tr a-z A-Z; echo",
            (MARKER + "old").upper().encode(),
        )
        assert b"ASVIRT-MEMORY-THEN" in seen and b"ASVIRT-MEMORY-LATER" not in seen
        assert (MARKER + "new").upper().encode() not in seen
        assert await dom.is_active()
    finally:
        await destroy_all(conn)
    # Nothing left behind: the disk holds the old marker again, and once the snapshot is
    # deleted (shut off: by qemu-img, with the key) no snapshot, QEMU or status file remains.
    assert read_start(disk, "qcow2", PASSPHRASE).startswith((MARKER + "old").encode())
    await on.delete()
    assert disk_snapshots(disk) == disk_snapshots(plain) == []
    assert await dom.list_all_snapshots() == []
    assert not list((root / "run" / "qemu").glob("*.status"))
    for f in root.rglob("*"):
        if f.is_file() and "secrets" not in f.parts:
            assert PASSPHRASE.encode() not in f.read_bytes(), f


@pytest.mark.parametrize(("fmt", "qemu_format"), [("qcow2", "qcow2"), ("raw", "luks")])
async def test_encrypted_volumes_are_created_with_their_secret(conn, tmp_path, fmt, qemu_format):
    images = tmp_path / "images"
    images.mkdir()
    pool = await conn.storage_pool_define_xml(
        f"<pool type='dir'><name>p</name><target><path>{images}</path></target></pool>"
    )
    await pool.create()
    vol_xml = f"""<volume><name>v.img</name><capacity unit='MiB'>16</capacity>
      <target><format type='{fmt}'/>
        <encryption format='luks'><secret type='passphrase' uuid='{SECRET_UUID}'/></encryption>
      </target></volume>"""
    with pytest.raises(asvirt.NoSecretError):
        await pool.create_volume_xml(vol_xml)
    assert list(images.iterdir()) == []  # nothing made
    await define_secret(conn, PASSPHRASE)
    vol = await pool.create_volume_xml(vol_xml)
    assert f"<secret type='passphrase' uuid='{SECRET_UUID}'/>" in await vol.xml_desc()
    assert (await vol.info()).capacity == 16 * 1024 * 1024
    # What it was made with is known across a refresh and a new node.
    await pool.refresh()
    again = await pool.lookup_volume_by_name("v.img")
    assert f"<secret type='passphrase' uuid='{SECRET_UUID}'/>" in await again.xml_desc()
    info = await trio.run_process(
        ["qemu-img", "info", "--output=json", str(images / "v.img")], capture_stdout=True
    )
    text = info.stdout.decode()
    assert f'"format": "{qemu_format}"' in text and '"encrypted": true' in text
    # The passphrase opens it (and a guest's disk naming the same secret would).
    image = (
        f"driver=qcow2,file.filename={images / 'v.img'},encrypt.key-secret=s"
        if fmt == "qcow2"
        else f"driver=luks,file.filename={images / 'v.img'},key-secret=s"
    )
    obj = f"secret,id=s,data={PASSPHRASE}"
    await trio.run_process(
        ["qemu-io", "--object", obj, "--image-opts", image, "-c", "read 0 512"],
        capture_stdout=True,
    )


def luks_cdrom(path: Path | None) -> str:
    """A SCSI CD-ROM holding the raw LUKS image ``path`` (None: empty)."""
    enc = f"<encryption format='luks'><secret type='passphrase' uuid='{SECRET_UUID}'/></encryption>"
    source = "" if path is None else f"<source file='{path}'>{enc}</source>"
    return f"""
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>{source}
      <target dev='sda' bus='scsi'/><readonly/>
    </disk>"""


async def test_encrypted_media_go_into_a_cdrom_with_their_secret(conn, test_guest, tmp_path):
    first, second = tmp_path / "a.luks", tmp_path / "b.luks"
    make_luks(first, "luks", PASSPHRASE, MARKER + "a")
    make_luks(second, "luks", PASSPHRASE, MARKER + "b")
    dom, _ = await define(conn, test_guest, tmp_path, devices=luks_cdrom(None))
    try:
        await dom.start(paused=True)
        # A medium whose secret does not exist yet is refused, and the drive stays empty.
        with pytest.raises(asvirt.NoSecretError):
            await dom.update_device(luks_cdrom(first))
        await define_secret(conn, PASSPHRASE)

        async def medium() -> tuple[str, str] | None:
            for dev in await dom.qmp("query-block"):
                if dev.get("removable"):  # the guest's one CD-ROM
                    ins = dev.get("inserted")
                    return None if ins is None else (ins["drv"], ins["file"])
            raise AssertionError("no CD-ROM in query-block")

        assert await medium() is None
        await dom.update_device(luks_cdrom(first))
        assert (await medium())[0] == "luks"
        assert str(first) in (await medium())[1]
        assert "<encryption format='luks'>" in await dom.xml_desc()
        # Another encrypted medium: the first one's secret object goes with it.
        await dom.update_device(luks_cdrom(second))
        assert str(second) in (await medium())[1]
        names = {o["name"] for o in await dom.qmp("qom-list", {"path": "/objects"})}
        assert sum(n.endswith("-format-encryption-secret0") for n in names) == 1
        # Ejected: no medium, no secret object, no <encryption> left in the live XML.
        await dom.update_device(luks_cdrom(None))
        assert await medium() is None
        names = {o["name"] for o in await dom.qmp("qom-list", {"path": "/objects"})}
        assert not any(n.endswith("-format-encryption-secret0") for n in names)
        assert "<encryption" not in await dom.xml_desc()
    finally:
        await destroy_all(conn)
