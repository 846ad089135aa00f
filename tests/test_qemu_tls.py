"""TLS spoken by a real QEMU with certificates the test makes (openssl): an NBD disk served
by a real ``qemu-nbd --tls-creds``, SPICE's TLS port, VNC's VeNCrypt, a listening TCP
serial port; the peers are the test's own (Python's ssl, a few bytes of RFB), and each
checks the certificate QEMU presents. The domains only need to be paused."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt.cli.render import display_uri

from .guest import paused_xml
from .helpers import (
    destroy_all,
    embed_uri,
    free_tcp_port,
    make_tls_dir,
    qemu_img,
    qemu_io_read,
    qemu_nbd,
    qemu_pid,
    run_cli,
    write_config,
)

pytestmark = [pytest.mark.qemu]

MARKER = b"ASVIRT-TLS-MARKER"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls_dir(tmp_path_factory.mktemp("pki"))


def tls_config(root: Path, pki: Path, settings: str) -> None:
    """``[qemu]`` of ``root``: the certificates of ``pki`` and ``settings``."""
    write_config(
        root, f'[qemu]\ndestroy_grace = 2.0\ndefault_tls_x509_cert_dir = "{pki}"\n{settings}'
    )


def server_der(pki: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert((pki / "server-cert.pem").read_text())


def client_context(pki: Path, *, with_cert: bool = True) -> ssl.SSLContext:
    """A TLS client trusting the test's CA only (and presenting its client certificate)."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca-cert.pem"))
    if with_cert:
        plain = pki / "client-key-plain.pem"  # where QEMU's is encrypted (make_tls_dir)
        key = plain if plain.exists() else pki / "client-key.pem"
        ctx.load_cert_chain(pki / "client-cert.pem", key)
    return ctx


def handshake(sock: socket.socket, pki: Path, *, with_cert: bool = True) -> bytes:
    """Complete a TLS handshake as the client on ``sock``: the server's certificate (DER),
    checked against the CA and the name ``localhost``. Blocking; run in a thread."""
    with client_context(pki, with_cert=with_cert).wrap_socket(
        sock, server_hostname="localhost"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        if tls.version() == "TLSv1.3":
            # The server's verdict on our certificate comes after the handshake: read.
            tls.settimeout(2)
            try:
                tls.recv(1)
            except TimeoutError:
                pass
        return der


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    return sock


# -- NBD ------------------------------------------------------------------------------------------


def nbd_tls_disk(port: int, attrs: str) -> str:
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='nbd' name='export'{attrs}><host name='127.0.0.1' port='{port}'/>"
        "</source><target dev='vdb' bus='virtio'/></disk>"
    )


async def test_nbd_disk_over_tls_reads_the_export(root, test_guest, tmp_path, pki):
    image = tmp_path / "export.raw"
    qemu_img("create", "-q", "-f", "raw", image, "4M")
    with image.open("r+b") as f:
        f.write(MARKER)
    # The NBD certificates in a directory of their own; the default one has none.
    tls_config(root, tmp_path / "nowhere", f'nbd_tls_x509_cert_dir = "{pki}"\n')
    port = free_tcp_port()
    with qemu_nbd(image, "raw", port=port, tls_dir=pki):
        async with asvirt.open(embed_uri(root)) as conn:
            try:
                disk = nbd_tls_disk(port, " tls='yes' tlsHostname='localhost'")
                xml = paused_xml(test_guest, tmp_path, devices=disk)
                dom = await conn.define_xml(xml)
                await dom.start(paused=True)
                [block] = [b for b in await dom.qmp("query-block") if "virtio-disk1" in b["qdev"]]
                assert block["inserted"]["drv"] == "nbd"
                assert f"127.0.0.1:{port}" in block["inserted"]["file"]
                # QEMU reads the marker through its TLS connection to qemu-nbd.
                node = block["inserted"]["node-name"]
                # qemu-io writes what it read on QEMU's stdout: the domain's log.
                await dom.qmp(
                    "human-monitor-command",
                    {"command-line": f'qemu-io {node} "read -v 0 {len(MARKER)}"'},
                )
                log = (root / "log" / "qemu" / "vm1.log").read_text()
                assert "00000000:  41 53 56 49 52 54 2d 54 4c 53" in log, log  # "ASVIRT-TLS"
                live = await dom.xml_desc()
                assert "tls='yes' tlsHostname='localhost'" in live
                await dom.destroy()
                # The server's certificate is checked: another name fails the start.
                await dom.undefine()
                wrong = nbd_tls_disk(port, " tls='yes' tlsHostname='elsewhere.example'")
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=wrong))
                with pytest.raises(asvirt.OperationFailedError, match="hostname"):
                    await dom.start(paused=True)
                # And a client without TLS is turned away by the server.
                await dom.undefine()
                plain = nbd_tls_disk(port, "")
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=plain))
                with pytest.raises(asvirt.OperationFailedError, match="TLS"):
                    await dom.start(paused=True)
            finally:
                await destroy_all(conn)


async def test_missing_certificate_refuses_the_start_naming_it(root, test_guest, tmp_path, pki):
    empty = tmp_path / "empty-pki"
    empty.mkdir()
    tls_config(root, empty, "vnc_tls = true\n")
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            xml = paused_xml(test_guest, tmp_path, devices="<graphics type='vnc' autoport='yes'/>")
            dom = await conn.define_xml(xml)
            with pytest.raises(asvirt.OperationFailedError) as info:
                await dom.start(paused=True)
            assert f"'{empty}/ca-cert.pem' of the VNC display" in str(info.value)
            assert not await dom.is_active()
        finally:
            await destroy_all(conn)


# -- VNC ------------------------------------------------------------------------------------------


def rfb_vencrypt_x509(port: int, pki: Path) -> tuple[list[int], list[int], bytes]:
    """Speak RFB 3.8 to the VNC server up to VeNCrypt's X509None and the TLS handshake:
    (security types offered, VeNCrypt subtypes offered, the server's certificate)."""
    with connect(port) as sock:
        f = sock.makefile("rb")
        assert f.read(12).startswith(b"RFB 003.")
        sock.sendall(b"RFB 003.008\n")
        (count,) = f.read(1)
        types = list(f.read(count))
        assert 19 in types, f"no VeNCrypt (19) among {types}"
        sock.sendall(bytes([19]))
        assert f.read(2) == bytes([0, 2])  # VeNCrypt 0.2
        sock.sendall(bytes([0, 2]))
        assert f.read(1) == b"\0"  # version accepted
        (nsub,) = f.read(1)
        subtypes = list(struct.unpack(f">{nsub}I", f.read(4 * nsub)))
        sock.sendall(struct.pack(">I", 260))  # X509None
        assert f.read(1) == b"\1"  # accepted: TLS follows
        f.close()
        return types, subtypes, handshake(sock, pki)


async def test_vnc_offers_vencrypt_x509_with_the_server_certificate(
    root, test_guest, tmp_path, pki
):
    tls_config(root, pki, "vnc_tls = true\n")
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            devices = "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            live = await dom.xml_desc()
            port = int(live.split("<graphics type='vnc' port='")[1].split("'")[0])
            types, subtypes, der = await trio.to_thread.run_sync(rfb_vencrypt_x509, port, pki)
            assert types == [19], "TLS only: no plain VNC authentication is offered"
            assert 260 in subtypes  # VENCRYPT_X509NONE
            assert der == server_der(pki)
            # verify-peer: a client without a certificate is not served.
            with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
                await trio.to_thread.run_sync(rfb_without_cert, port, pki)
        finally:
            await destroy_all(conn)


def rfb_without_cert(port: int, pki: Path) -> None:
    with connect(port) as sock:
        f = sock.makefile("rb")
        f.read(12)
        sock.sendall(b"RFB 003.008\n")
        (count,) = f.read(1)
        f.read(count)
        sock.sendall(bytes([19]))
        f.read(2)
        sock.sendall(bytes([0, 2]))
        f.read(1)
        (nsub,) = f.read(1)
        f.read(4 * nsub)
        sock.sendall(struct.pack(">I", 260))
        f.read(1)
        f.close()
        with client_context(pki, with_cert=False).wrap_socket(
            sock, server_hostname="localhost"
        ) as tls:
            tls.settimeout(5)
            # The server refuses us once it has seen we present no certificate.
            data = tls.recv(1)
            assert data, "the server closed the connection"


# -- SPICE ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("display_ports")
def test_spice_tls_port_presents_the_server_certificate(root, test_guest, tmp_path, pki):
    tls_config(root, pki, "spice_tls = true\n")
    xml = tmp_path / "vm.xml"
    graphics = "<graphics type='spice' autoport='yes'><listen type='address' address='127.0.0.1'/>"
    graphics += "<channel name='main' mode='secure'/></graphics>"
    xml.write_text(paused_xml(test_guest, tmp_path, devices=graphics))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "--paused", "vm1")
    try:
        live = run_cli(root, "dumpxml", "vm1").stdout
        tag = live.split("<graphics type='spice' ")[1].split(">")[0]
        port = int(tag.split("port='")[1].split("'")[0])
        tls_port = int(tag.split("tlsPort='")[1].split("'")[0])
        assert tls_port != port and tls_port >= 5900
        shown = run_cli(root, "domdisplay", "vm1").stdout.strip()
        assert shown == f"spice://127.0.0.1:{port}?tls-port={tls_port}"  # as virsh says
        assert display_uri(live) == shown
        with connect(tls_port) as sock:
            assert handshake(sock, pki, with_cert=False) == server_der(pki)
    finally:
        run_cli(root, "destroy", "vm1")


# -- character devices ----------------------------------------------------------------------------


async def test_tcp_serial_speaks_tls_to_a_client_with_a_certificate(
    root, test_guest, tmp_path, pki
):
    tls_config(root, pki, "chardev_tls = true\n")
    port = free_tcp_port()
    devices = (
        f"<serial type='tcp'><source mode='bind' host='127.0.0.1' service='{port}'/>"
        "<target port='1'/></serial>"
    )
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            await dom.start(paused=True)
            der = await trio.to_thread.run_sync(lambda: handshake(connect(port), pki))
            assert der == server_der(pki)
            [char] = [c for c in await dom.qmp("query-chardev") if c["label"] == "charserial1"]
            assert f"127.0.0.1:{port}" in char["filename"]
        finally:
            await destroy_all(conn)


#: SCSI: QEMU lets go of an unplugged SCSI disk without asking the (paused) guest.
SCSI = "<controller type='scsi' index='0' model='virtio-scsi'/>"


def scsi_nbd_disk(port: int) -> str:
    """An NBD disk on SCSI, to be plugged: TLS (nbd_tls) to a server named localhost."""
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='nbd' name='export' tlsHostname='localhost'>"
        f"<host name='127.0.0.1' port='{port}'/></source><target dev='sdb' bus='scsi'/></disk>"
    )


async def test_nbd_tls_disk_plugged_and_unplugged_with_its_credentials(
    root, test_guest, tmp_path, pki
):
    image = tmp_path / "export.raw"
    qemu_img("create", "-q", "-f", "raw", image, "4M")
    tls_config(root, pki, "nbd_tls = true\n")  # the default: no tls= on the disk
    port = free_tcp_port()
    disk = scsi_nbd_disk(port)

    async def tls_objects(dom: asvirt.Domain) -> list[str]:
        objs = await dom.qmp("qom-list", {"path": "/objects"})
        return [o["name"] for o in objs if o["name"].endswith("_tls0")]

    with qemu_nbd(image, "raw", port=port, tls_dir=pki):
        async with asvirt.open(embed_uri(root)) as conn:
            try:
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=SCSI))
                await dom.start(paused=True)
                await dom.attach_device(disk)
                [block] = [b for b in await dom.qmp("query-block") if "scsi0-0-0-1" in b["qdev"]]
                assert block["inserted"]["drv"] == "nbd"
                node = block["inserted"]["node-name"]
                assert await tls_objects(dom) == [f"obj{node}_tls0"]
                assert await dom.detach_device(disk) is True
                assert await tls_objects(dom) == []
            finally:
                await destroy_all(conn)


# -- encrypted keys -------------------------------------------------------------------------------

KEY_PASSWORD = "the keys' own password"
KEY_SECRET = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


async def test_encrypted_keys_are_unlocked_with_the_password_secret(
    root, test_guest, tmp_path, tmp_path_factory
):
    pki = make_tls_dir(tmp_path_factory.mktemp("pki-encrypted"), key_password=KEY_PASSWORD)
    settings = (
        f'vnc_tls = true\nchardev_tls = true\ndefault_tls_x509_secret_uuid = "{KEY_SECRET}"\n'
    )
    tls_config(root, pki, settings)
    port = free_tcp_port()
    devices = (
        "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>"
        f"<serial type='tcp'><source mode='bind' host='127.0.0.1' service='{port}'/>"
        "<target port='1'/></serial>"
    )
    async with asvirt.open(embed_uri(root)) as conn:
        try:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
            # No such secret: refused before QEMU runs, naming what needs it.
            with pytest.raises(asvirt.NoSecretError) as info:
                await dom.start(paused=True)
            assert f"no secret with matching uuid '{KEY_SECRET}'" in str(info.value)
            assert "[qemu] vnc_tls_x509_secret_uuid" in str(info.value)
            assert not await dom.is_active()
            # A secret of that UUID for another usage: refused as libvirt does.
            wrong = await conn.secret_define_xml(
                f"<secret><uuid>{KEY_SECRET}</uuid><usage type='volume'><volume>/v</volume>"
                "</usage></secret>"
            )
            await wrong.set_value(KEY_PASSWORD.encode())
            with pytest.raises(asvirt.InvalidArgError) as bad:
                await dom.start(paused=True)
            assert str(bad.value) == (
                f"secret with uuid {KEY_SECRET} is of type 'volume' not expected 'tls' type"
            )
            assert not await dom.is_active()
            await wrong.undefine()
            secret = await conn.secret_define_xml(
                f"<secret ephemeral='no' private='yes'><uuid>{KEY_SECRET}</uuid>"
                "<usage type='tls'><name>qemu keys</name></usage></secret>"
            )
            # A wrong password: QEMU cannot read its key, and says so.
            await secret.set_value(b"not the password")
            with pytest.raises(asvirt.OperationFailedError, match="Decryption has failed"):
                await dom.start(paused=True)
            assert not await dom.is_active()

            await secret.set_value(KEY_PASSWORD.encode())
            await dom.start(paused=True)
            cmdline = (Path("/proc") / str(qemu_pid(root, "vm1")) / "cmdline").read_bytes()
            assert KEY_PASSWORD.encode() not in cmdline
            assert b'"passwordid":"vnc-tls-creds0-secret0"' in cmdline
            # Both servers present the certificate of the key they unlocked.
            live = await dom.xml_desc()
            vnc_port = int(live.split("<graphics type='vnc' port='")[1].split("'")[0])
            _, subtypes, der = await trio.to_thread.run_sync(rfb_vencrypt_x509, vnc_port, pki)
            assert 260 in subtypes and der == server_der(pki)
            der = await trio.to_thread.run_sync(lambda: handshake(connect(port), pki))
            assert der == server_der(pki)
            objects = {o["name"] for o in await dom.qmp("qom-list", {"path": "/objects"})}
            assert {"vnc-tls-creds0-secret0", "charserial1-secret0"} <= objects
        finally:
            await destroy_all(conn)


async def test_nbd_disk_plugged_with_an_encrypted_client_key(
    root, test_guest, tmp_path, tmp_path_factory
):
    pki = make_tls_dir(tmp_path_factory.mktemp("pki-encrypted"), key_password=KEY_PASSWORD)
    image = tmp_path / "export.raw"
    qemu_img("create", "-q", "-f", "raw", image, "4M")
    with image.open("r+b") as f:
        f.write(MARKER)
    tls_config(root, pki, f'nbd_tls = true\nnbd_tls_x509_secret_uuid = "{KEY_SECRET}"\n')
    port = free_tcp_port()
    disk = scsi_nbd_disk(port)
    with qemu_nbd(image, "raw", port=port, tls_dir=pki, key_password=KEY_PASSWORD):
        async with asvirt.open(embed_uri(root)) as conn:
            try:
                dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=SCSI))
                await dom.start(paused=True)  # no TLS endpoint yet: no secret needed
                live = await dom.xml_desc()
                with pytest.raises(asvirt.NoSecretError, match=r"nbd_tls_x509_secret_uuid"):
                    await dom.attach_device(disk)
                assert await dom.xml_desc() == live  # nothing was plugged
                secret = await conn.secret_define_xml(
                    f"<secret ephemeral='no' private='yes'><uuid>{KEY_SECRET}</uuid>"
                    "<usage type='tls'><name>nbd key</name></usage></secret>"
                )
                await secret.set_value(KEY_PASSWORD.encode())
                await dom.attach_device(disk)
                [block] = [b for b in await dom.qmp("query-block") if "scsi0-0-0-1" in b["qdev"]]
                node = block["inserted"]["node-name"]
                log = root / "log" / "qemu" / "vm1.log"
                assert await qemu_io_read(dom, node, len(MARKER), log) == MARKER
                names = {o["name"] for o in await dom.qmp("qom-list", {"path": "/objects"})}
                creds = f"obj{node}_tls0"
                assert {creds, f"{creds}-secret0"} <= names
                assert await dom.detach_device(disk) is True
                names = {o["name"] for o in await dom.qmp("qom-list", {"path": "/objects"})}
                assert not {creds, f"{creds}-secret0"} & names
            finally:
                await destroy_all(conn)
