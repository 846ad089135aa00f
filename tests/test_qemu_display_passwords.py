"""Display passwords against a real QEMU: a VNC display with ``passwd`` refuses a client that
does not know it and lets in one that does (the test speaks RFB's VNC authentication itself:
the server's challenge encrypted with DES, the password as the key), the password changes
live (update_device) and expires (``passwdValidTo``), the node's default password
(``[qemu] vnc_password``) serves displays without one, SPICE asks for its ticket; and the
password is in no command line, no log, and in no XML a client did not ask for with
``secure``. The domains only need to be paused: QEMU serves its displays all the same."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

import asvirt

from .guest import paused_xml
from .helpers import destroy_all, disk_xml, embed_uri, qemu_img, qemu_pid, run_cli, write_config

pytestmark = [pytest.mark.qemu]

PASSWORD = "s3cr3t!X"
VNC = "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'{}/>"


def vnc_key(password: str) -> bytes:
    """RFB's DES key: the password cut or padded to 8 bytes, each byte's bits reversed."""
    raw = password.encode()[:8].ljust(8, b"\0")
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def vnc_login(port: int, password: str | None) -> int:
    """Speak RFB 3.8 up to VNC authentication with ``password`` (None: ask for no
    authentication): the server's SecurityResult, 0 for ok (-1: the server offered no VNC
    authentication, or closed). Blocking; run in a thread."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        f = sock.makefile("rb")
        assert f.read(12).startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        (count,) = f.read(1)
        types = list(f.read(count))
        if password is None:
            if 1 not in types:
                return -1
            sock.sendall(bytes([1]))
        else:
            if 2 not in types:
                return -1
            sock.sendall(bytes([2]))
            challenge = f.read(16)
            # Single DES: TripleDES with K1 = K2 = K3.
            des = Cipher(TripleDES(vnc_key(password) * 3), modes.ECB()).encryptor()
            sock.sendall(des.update(challenge) + des.finalize())
        result = f.read(4)
        if len(result) < 4:
            return -1
        return struct.unpack(">I", result)[0]


async def login(port: int, password: str | None) -> int:
    return await trio.to_thread.run_sync(vnc_login, port, password)


def vnc_port(xml: str) -> int:
    return int(xml.split("<graphics type='vnc' port='")[1].split("'")[0])


def private_config(root: Path, text: str) -> None:
    write_config(root, text)
    os.chmod(root / "etc" / "asvirt.toml", 0o600)


async def test_vnc_password_lets_in_who_knows_it_and_changes_live(root, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            devices = VNC.format(f" passwd='{PASSWORD}'")
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            live = await dom.xml_desc()
            port = vnc_port(live)
            assert (await dom.qmp("query-vnc"))["auth"] == "vnc"
            assert await login(port, None) == -1  # no way in without authentication
            assert await login(port, "wrong") == 1
            assert await login(port, PASSWORD) == 0

            # Nowhere a client or another user of the host reads it ...
            assert PASSWORD not in live and "passwd=" not in live
            assert PASSWORD not in await dom.xml_desc(inactive=True)
            pid = qemu_pid(root, "vm1")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert PASSWORD.encode() not in cmdline and b"password=on" in cmdline
            assert PASSWORD.encode() not in (root / "log" / "qemu" / "vm1.log").read_bytes()
            # ... but in the secure XML, and in the node's own files, private to it.
            assert f"passwd='{PASSWORD}'" in await dom.xml_desc(secure=True)
            config = root / "etc" / "qemu" / "vm1.xml"
            assert f"passwd='{PASSWORD}'" in config.read_text()
            assert config.stat().st_mode & 0o077 == 0
            status = root / "run" / "qemu" / "vm1.status"  # the live XML, for re-attaching
            assert PASSWORD in status.read_text() and status.stat().st_mode & 0o077 == 0

            # A new password, live: the old one no longer opens, the new one does.
            await dom.update_device(VNC.format(" passwd='n3w'"), live=True)
            assert await login(port, PASSWORD) == 1
            assert await login(port, "n3w") == 0
            assert "passwd='n3w'" in await dom.xml_desc(secure=True)
            # The persistent definition kept its own (live only).
            assert f"passwd='{PASSWORD}'" in await dom.xml_desc(inactive=True, secure=True)

            # Expired (passwdValidTo in the past): nobody gets in, even knowing it; the
            # expiry shows in every XML, the password in none but the secure one.
            expired = " passwd='n3w' passwdValidTo='2001-02-03T04:05:06' connected='keep'"
            await dom.update_device(VNC.format(expired), live=True, config=True)
            assert await login(port, "n3w") == 1
            shown = await dom.xml_desc()
            assert "passwdValidTo='2001-02-03T04:05:06'" in shown and "n3w" not in shown
            assert "passwd='n3w'" in await dom.xml_desc(inactive=True, secure=True)

            # An empty password locks everybody out (libvirt's CVE-2016-5008 fix): QEMU would
            # take it as a password anyone knows.
            await dom.update_device(VNC.format(" passwd=''"), live=True)
            assert await login(port, "") == 1

            # A running display cannot stop asking for a password: refused, nothing changes.
            with pytest.raises(asvirt.OperationUnsupportedError, match="remove the password"):
                await dom.update_device(VNC.format(""), live=True)
            assert "passwd=''" in await dom.xml_desc(secure=True)

            # Only the password may change: another port is refused, nothing changes.
            with pytest.raises(asvirt.OperationUnsupportedError, match="port settings"):
                await dom.update_device(
                    "<graphics type='vnc' port='5999' autoport='no' passwd='x'/>", live=True
                )
            assert await login(port, "x") == 1
            with pytest.raises(asvirt.DeviceMissingError):
                await dom.update_device("<graphics type='spice' passwd='x'/>", live=True)
        finally:
            await destroy_all(conn)


async def test_a_supervisor_that_reattaches_keeps_the_live_password(root, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        devices = VNC.format(f" passwd='{PASSWORD}'")
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
        await dom.start(paused=True)
        await dom.update_device(VNC.format(" passwd='l1ve'"), live=True)
    try:
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            secure = await dom.xml_desc(secure=True)
            assert "passwd='l1ve'" in secure
            assert await login(vnc_port(secure), "l1ve") == 0
    finally:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)


async def test_the_node_default_vnc_password_serves_displays_without_one(
    root, test_guest, tmp_path
):
    write_config(root, '[qemu]\nvnc_password = "d3fault"\n')
    with pytest.raises(asvirt.InvalidArgError, match="can be read by others"):
        async with asvirt.open(embed_uri(root)):
            pass
    private_config(root, '[qemu]\nvnc_password = "d3fault"\n')
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=VNC.format("")))
            await dom.start(paused=True)
            secure = await dom.xml_desc(secure=True)
            assert "passwd=" not in secure  # the default is the node's, not the domain's
            port = vnc_port(secure)
            assert await login(port, "wrong") == 1
            assert await login(port, "d3fault") == 0
            pid = qemu_pid(root, "vm1")
            assert b"d3fault" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        finally:
            await destroy_all(conn)


@pytest.mark.usefixtures("display_ports")
async def test_spice_with_a_password_asks_for_its_ticket(root, test_guest, tmp_path):
    spice = (
        "<graphics type='spice' autoport='yes'{}><listen type='address' address='127.0.0.1'/>"
        "</graphics>"
    )
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            devices = spice.format(f" passwd='{PASSWORD}' connected='disconnect'")
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            assert (await dom.qmp("query-spice"))["auth"] == "spice"
            pid = qemu_pid(root, "vm1")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert PASSWORD.encode() not in cmdline and b"disable-ticketing" not in cmdline
            assert "passwd=" not in await dom.xml_desc()
            assert "connected='disconnect'" in await dom.xml_desc()
            await dom.update_device(spice.format(" passwd='other' connected='fail'"), live=True)
            assert "passwd='other'" in await dom.xml_desc(secure=True)
            await dom.destroy()
            # Without one, SPICE asks for nothing (as before).
            plain = await conn.define_xml(
                paused_xml(test_guest, tmp_path, "vm2", devices=spice.format(""))
            )
            await plain.start(paused=True)
            assert (await plain.qmp("query-spice"))["auth"] == "none"
        finally:
            await destroy_all(conn)


def test_dumpxml_security_info_and_domdisplay_include_password(root, test_guest, tmp_path):
    xml = tmp_path / "vm.xml"
    xml.write_text(paused_xml(test_guest, tmp_path, devices=VNC.format(f" passwd='{PASSWORD}'")))
    run_cli(root, "define", str(xml))
    assert "passwd=" not in run_cli(root, "dumpxml", "vm1").stdout
    shown = run_cli(root, "dumpxml", "--security-info", "vm1").stdout
    assert f"passwd='{PASSWORD}'" in shown
    run_cli(root, "start", "--paused", "vm1")
    try:
        display = vnc_port(run_cli(root, "dumpxml", "vm1").stdout) - 5900
        assert run_cli(root, "domdisplay", "vm1").stdout.strip() == f"vnc://127.0.0.1:{display}"
        assert run_cli(root, "domdisplay", "--include-password", "vm1").stdout.strip() == (
            f"vnc://:{PASSWORD}@127.0.0.1:{display}"  # as virsh writes it
        )
    finally:
        run_cli(root, "destroy", "vm1")


async def test_a_snapshot_shows_the_password_only_in_its_secure_xml(root, test_guest, tmp_path):
    image = tmp_path / "vda.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "16M")  # what holds the snapshot
    devices = disk_xml(image) + VNC.format(f" passwd='{PASSWORD}'")
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
        snap = await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
        shown = await snap.xml_desc()
        assert "<graphics type='vnc'" in shown and "passwd=" not in shown
        assert f"passwd='{PASSWORD}'" in await snap.xml_desc(secure=True)
    listed = run_cli(root, "snapshot-dumpxml", "--security-info", "vm1", "s1").stdout
    assert f"passwd='{PASSWORD}'" in listed
    assert PASSWORD not in run_cli(root, "snapshot-dumpxml", "vm1", "s1").stdout


async def test_update_device_changes_a_stopped_domains_password_in_its_configuration(
    root, test_guest, tmp_path
):
    devices = VNC.format(f" passwd='{PASSWORD}'")
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
        with pytest.raises(asvirt.OperationInvalidError, match="not running"):
            await dom.update_device(VNC.format(" passwd='c0nfig'"), live=True)
        await dom.update_device(VNC.format(" passwd='c0nfig' passwdValidTo='2040-01-01T00:00:00'"))
        secure = await dom.xml_desc(secure=True)
        assert "passwd='c0nfig' passwdValidTo='2040-01-01T00:00:00'" in secure
        assert "passwd='c0nfig'" in (root / "etc" / "qemu" / "vm1.xml").read_text()
        with pytest.raises(asvirt.OperationUnsupportedError, match="keymap"):
            await dom.update_device("<graphics type='vnc' keymap='de' passwd='x'/>")
        assert await dom.xml_desc(secure=True) == secure  # refused: nothing changed
        with pytest.raises(asvirt.ConfigUnsupportedError, match="only 8 permitted"):
            await dom.update_device(VNC.format(" passwd='far-too-long'"))


async def test_a_save_image_shows_the_password_only_in_its_secure_xml(root, test_guest, tmp_path):
    devices = VNC.format(f" passwd='{PASSWORD}'")
    image = str(tmp_path / "vm1.save")
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            await dom.save(image)
            shown = await conn.save_image_get_xml_desc(image)
            assert "<graphics type='vnc'" in shown and "passwd=" not in shown
            assert f"passwd='{PASSWORD}'" in await conn.save_image_get_xml_desc(image, secure=True)
            assert os.stat(image).st_mode & 0o077 == 0
            # Restored, the display asks for the same password.
            await conn.restore(image, paused=True)
            assert await login(vnc_port(await dom.xml_desc()), PASSWORD) == 0
        finally:
            await destroy_all(conn)
    assert PASSWORD not in run_cli(root, "save-image-dumpxml", image).stdout
    assert PASSWORD in run_cli(root, "save-image-dumpxml", "--security-info", image).stdout
