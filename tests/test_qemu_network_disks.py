"""Network disks opened by a real QEMU: NBD served by a real ``qemu-nbd`` (unix socket and
TCP on 127.0.0.1) and HTTP served by a Python server on 127.0.0.1, both started and stopped
by the test on images it makes. The domains only need to be paused (KVM where it works)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import asvirt
from asvirt.drivers.base import StatsGroup
from asvirt.drivers.qemu.netdisk import missing_module

from .guest import SharedGuest, TestGuest, paused_xml, shared_guest, wait_for_serial
from .helpers import free_tcp_port, qemu_img, qemu_io_read, qemu_nbd, qemu_pid
from .test_qemu_luks import MARKER, PASSPHRASE, define_secret, make_luks

pytestmark = [pytest.mark.qemu]


class _RangeHandler(SimpleHTTPRequestHandler):
    """Files with byte ranges (QEMU's curl driver reads nothing else); with a ``cookie``,
    only to requests whose ``Cookie:`` header is exactly that (others get 403)."""

    cookie: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is not the place for an access log

    def send_head(self) -> Any:
        if self.cookie is not None and self.headers.get("Cookie") != self.cookie:
            self.send_error(403, "no entry without the cookie")
            return None
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        first, last = 0, size - 1
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            a, _, b = spec[6:].partition("-")
            first, last = int(a), min(int(b) if b else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        f = path.open("rb")
        f.seek(first)
        self._left = last - first + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        while self._left > 0:
            chunk = source.read(min(65536, self._left))
            if not chunk:
                break
            outputfile.write(chunk)
            self._left -= len(chunk)


@contextmanager
def http_server(directory: Path, *, cookie: str | None = None) -> Iterator[int]:
    """An HTTP server of ``directory`` on 127.0.0.1 (its port is yielded), stopped at the end;
    with ``cookie``, serving only requests that send it."""
    kind = type("_Handler", (_RangeHandler,), {"cookie": cookie})

    def handler(*args: Any) -> _RangeHandler:
        return kind(*args, directory=str(directory))  # type: ignore[no-any-return]

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def nbd_disk(target: str, host: str, *, fmt: str = "raw", readonly: bool = False) -> str:
    return (
        f"<disk type='network' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source protocol='nbd' name='export'>{host}</source>"
        f"<target dev='{target}' bus='virtio'/>{'<readonly/>' if readonly else ''}</disk>"
    )


async def inserted(dom: asvirt.Domain, alias: str) -> dict[str, Any]:
    """What QEMU says is in the drive of device ``alias`` (``query-block``)."""
    for dev in await dom.qmp("query-block", None):
        qdev = dev.get("qdev", "")
        if qdev == alias or f"/{alias}/" in qdev:
            image: dict[str, Any] = dev["inserted"]
            return image
    raise AssertionError(f"QEMU has no drive of {alias}: {await dom.qmp('query-block', None)}")


async def start_paused(conn: asvirt.Connection, guest: TestGuest, tmp: Path, devices: str):
    dom = await conn.define_xml(paused_xml(guest, tmp, devices=devices))
    await dom.start(paused=True)
    return dom


async def test_nbd_over_unix_and_tcp_is_opened(conn, test_guest, tmp_path):
    raw = tmp_path / "a.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "8M")
    qcow = tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", qcow, "32M")
    sock, port = tmp_path / "nbd.sock", free_tcp_port()
    with qemu_nbd(raw, "raw", socket=sock), qemu_nbd(qcow, "raw", port=port):
        devices = nbd_disk("vdb", f"<host transport='unix' socket='{sock}'/>") + nbd_disk(
            "vdc", f"<host name='127.0.0.1' port='{port}'/>", fmt="qcow2"
        )
        dom = await start_paused(conn, test_guest, tmp_path, devices)
        unix = await inserted(dom, "virtio-disk1")
        assert unix["drv"] == "nbd" and unix["image"]["virtual-size"] == 8 << 20
        assert str(sock) in unix["file"]
        # qcow2 over NBD: QEMU's qcow2 layer on the nbd node reads the guest's 32 MiB.
        tcp = await inserted(dom, "virtio-disk2")
        assert tcp["drv"] == "qcow2" and tcp["image"]["virtual-size"] == 32 << 20
        assert f"127.0.0.1:{port}" in tcp["file"]
        stats = await dom.stats(StatsGroup.BLOCK)
        count = stats["block.count"]
        paths = {stats[f"block.{i}.name"]: stats.get(f"block.{i}.path") for i in range(count)}
        assert paths == {"vdb": "export", "vdc": "export"}  # the name, as virsh shows it
        assert "block.0.capacity" not in stats  # no image on this host to measure
        with pytest.raises(asvirt.AsvirtError, match="network disk"):
            await dom.block_info("vdb")
        # An internal snapshot cannot be taken of media asvirt does not hold.
        with pytest.raises(asvirt.OperationUnsupportedError, match=r"network disk \(nbd\)"):
            await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
        assert await dom.list_all_snapshots() == []
        await dom.destroy()


@pytest.fixture(scope="module")
def guest(test_guest: TestGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedGuest]:
    """A booted guest: it releases an unplugged disk, and says when one comes and goes."""
    with shared_guest(test_guest, tmp_path_factory.mktemp("netdisk-guest")) as shared:
        yield shared


@pytest.mark.guest
async def test_nbd_disk_hotplugged_and_detached(guest, tmp_path):
    added = guest.said("ASVIRT-DISK-add vda")
    raw = tmp_path / "a.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "8M")
    sock = tmp_path / "nbd.sock"
    xml = nbd_disk("vdb", f"<host transport='unix' socket='{sock}'/>")
    with qemu_nbd(raw, "raw", socket=sock):
        async with guest.connect() as (_conn, dom):
            await dom.attach_device(xml)
            await wait_for_serial(guest.serial, "ASVIRT-DISK-add vda", times=added + 1)
            image = await inserted(dom, "virtio-disk1")
            assert image["drv"] == "nbd" and image["image"]["virtual-size"] == 8 << 20
            live = await dom.xml_desc()
            assert "<source protocol='nbd' name='export' index=" in live
            assert await dom.detach_device(xml) is True
            nodes = await dom.qmp("query-named-block-nodes", None)
            assert [n for n in nodes if n["node-name"].startswith("libvirt-")] == []
            assert "protocol='nbd'" not in await dom.xml_desc()


async def test_http_cdrom_is_opened_read_only(conn, test_guest, tmp_path):
    if (why := missing_module("http")) is not None:
        pytest.skip(why)
    served = tmp_path / "www"
    served.mkdir()
    qemu_img("create", "-q", "-f", "raw", served / "disk.iso", "4M")
    with http_server(served) as port:
        devices = (
            "<disk type='network' device='cdrom'><driver name='qemu' type='raw'/>"
            f"<source protocol='http' name='/disk.iso'><host name='127.0.0.1' port='{port}'/>"
            "</source><target dev='sdb' bus='sata'/><readonly/></disk>"
        )
        dom = await start_paused(conn, test_guest, tmp_path, devices)
        image = await inserted(dom, "sata0-0-1")
        assert image["drv"] == "http" and image["ro"] is True
        assert image["image"]["virtual-size"] == 4 << 20
        assert f"127.0.0.1:{port}/disk.iso" in image["file"]
        await dom.destroy()


async def test_start_without_the_protocols_module_names_the_package(
    conn, test_guest, tmp_path, monkeypatch
):
    # QEMU's own variable: an empty module directory is a host without qemu-block-extra.
    empty = tmp_path / "modules"
    empty.mkdir()
    monkeypatch.setenv("QEMU_MODULE_DIR", str(empty))
    devices = (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='rbd' name='pool/image'><host name='127.0.0.1'/></source>"
        "<target dev='vdb' bus='virtio'/></disk>"
    )
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=devices))
    with pytest.raises(asvirt.OperationFailedError, match=r"block-rbd\.so.*qemu-block-extra"):
        await dom.start(paused=True)
    assert not await dom.is_active()
    # Plugged into a running domain: refused the same way, before QEMU is asked.
    other = await conn.define_xml(paused_xml(test_guest, tmp_path, name="vm2"))
    await other.start(paused=True)
    live = await other.xml_desc()
    with pytest.raises(asvirt.OperationFailedError, match="qemu-block-extra"):
        await other.attach_device(devices)
    assert await other.xml_desc() == live
    await other.destroy()


def _files_holding(root: Path, secret: bytes) -> dict[Path, int]:
    """The files of ``root`` that hold ``secret``, with their modes."""
    return {
        f: f.stat().st_mode & 0o777
        for f in root.rglob("*")
        if f.is_file() and not f.is_symlink() and secret in f.read_bytes()
    }


async def test_luks_image_over_nbd_is_unlocked_with_the_secret(conn, test_guest, tmp_path, root):
    image = tmp_path / "export.luks"
    make_luks(image, "luks", PASSPHRASE, MARKER)
    await define_secret(conn, PASSPHRASE, usage="luks-export")
    sock = tmp_path / "nbd.sock"
    enc = "<encryption format='luks'><secret type='passphrase' usage='luks-export'/></encryption>"
    # The LUKS container is what qemu-nbd serves (raw); QEMU's luks layer opens it.
    devices = nbd_disk("vdb", f"<host transport='unix' socket='{sock}'/>{enc}")
    with qemu_nbd(image, "raw", socket=sock):
        dom = await start_paused(conn, test_guest, tmp_path, devices)
        image_info = await inserted(dom, "virtio-disk1")
        assert image_info["drv"] == "luks"
        log = root / "log" / "qemu" / "vm1.log"
        got = await qemu_io_read(dom, image_info["node-name"], len(MARKER), log)
        assert got == MARKER.encode()
        cmdline = Path(f"/proc/{qemu_pid(root, 'vm1')}/cmdline").read_bytes()
        assert PASSPHRASE.encode() not in cmdline
        # Written back where it was given: in <source>, after the server.
        live = await dom.xml_desc()
        assert f"socket='{sock}'/>\n        <encryption format='luks'>" in live
        await dom.destroy()


COOKIE = "s3cr3t-c00kie"


def http_disk(port: int, target: str, *, cookies: bool = True, bus: str = "virtio") -> str:
    jar = (
        f"<cookies><cookie name='session'>{COOKIE}</cookie><cookie name='lang'>en</cookie>"
        "</cookies>"
    )
    return (
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='http' name='/disk.img'><host name='127.0.0.1' port='{port}'/>"
        f"{jar if cookies else ''}</source><target dev='{target}' bus='{bus}'/><readonly/></disk>"
    )


async def test_http_disk_sends_its_cookies_through_a_secret_object(
    conn, test_guest, tmp_path, root
):
    if (why := missing_module("http")) is not None:
        pytest.skip(why)
    served = tmp_path / "www"
    served.mkdir()
    qemu_img("create", "-q", "-f", "raw", served / "disk.img", "4M")
    with (served / "disk.img").open("r+b") as f:
        f.write(MARKER.encode())
    scsi = "<controller type='scsi' index='0' model='virtio-scsi'/>"
    # The server serves nothing to a request without both cookies, as curl joins them.
    with http_server(served, cookie=f"session={COOKIE}; lang=en") as port:
        dom = await start_paused(conn, test_guest, tmp_path, http_disk(port, "vdb") + scsi)
        image = await inserted(dom, "virtio-disk1")
        assert image["drv"] == "http"
        log = root / "log" / "qemu" / "vm1.log"
        assert await qemu_io_read(dom, image["node-name"], len(MARKER), log) == MARKER.encode()
        # Never in QEMU's command line nor its log; in the root only in the definitions
        # (libvirt keeps them in the domain XML too), which no one else may read.
        cmdline = Path(f"/proc/{qemu_pid(root, 'vm1')}/cmdline").read_bytes()
        assert COOKIE.encode() not in cmdline
        holding = _files_holding(root, COOKIE.encode())
        assert log not in holding
        assert holding and all(mode & 0o077 == 0 for mode in holding.values()), holding
        # Shown only to who asks for the secure XML (as a display password).
        assert f"<cookie name='session'>{COOKIE}</cookie>" in await dom.xml_desc(secure=True)
        assert COOKIE not in await dom.xml_desc() and "<cookies>" not in await dom.xml_desc()

        # Plugged while it runs: its cookies go over the monitor, and leave with it.
        async def cookie_objects() -> list[str]:
            objs = await dom.qmp("qom-list", {"path": "/objects"})
            return sorted(o["name"] for o in objs if o["name"].endswith("httpcookie-secret0"))

        hot = http_disk(port, "sdb", bus="scsi")
        await dom.attach_device(hot)
        plugged = await inserted(dom, "scsi0-0-0-1")
        got = await qemu_io_read(dom, plugged["node-name"], len(MARKER), log)
        assert got == MARKER.encode()
        assert len(await cookie_objects()) == 2
        assert await dom.detach_device(hot) is True
        assert len(await cookie_objects()) == 1
        await dom.destroy()
        await dom.undefine()

        # Without them, the server turns QEMU away and the start fails saying so.
        plain = await conn.define_xml(
            paused_xml(test_guest, tmp_path, devices=http_disk(port, "vdb", cookies=False))
        )
        with pytest.raises(asvirt.OperationFailedError, match="403"):
            await plain.start(paused=True)
        assert not await plain.is_active()
