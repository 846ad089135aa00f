"""Small helpers for tests: embed roots, processes, waiting for events, domain XML and
QEMU command lines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import trio

import asvirt
from asvirt.drivers.qemu.capabilities import QemuCapabilities
from asvirt.drivers.qemu.command import domxml_to_native
from asvirt.drivers.qemu.tls import TlsConfig


def embed_uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def run_cli(
    root: Path,
    *args: str,
    check: bool = True,
    prefix: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``asvirt ARGS`` in a process of its own, on the embed root ``root``, as a user runs it.

    ``prefix`` runs it under another command (``ip netns exec NS``: in a network namespace);
    ``cwd``: in that directory (else the checkout's), with this checkout's asvirt still.
    """
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ASVIRT_DEFAULT_URI": embed_uri(root)}
    if cwd is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "asvirt", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or repo,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_in_process(uri: str, capsys: Any) -> Callable[..., str]:
    """``asvirt -c URI ARGS`` in this process (quicker than :func:`run_cli`), through
    pytest's ``capsys``: ``run(*args, status=0)`` asserts the exit status and returns the
    output, or the error output of a command expected to fail."""
    from asvirt.cli.main import main as cli_main

    def run(*args: str, status: int = 0) -> str:
        assert cli_main(["-c", uri, *args]) == status
        out = capsys.readouterr()
        return out.out if status == 0 else out.err

    return run


async def destroy_all(conn: asvirt.Connection) -> None:
    """Destroy every domain still running on ``conn`` (a fixture's teardown: it cannot be
    cancelled, and a domain that stops meanwhile is no error)."""
    with trio.CancelScope(shield=True):
        for dom in await conn.list_all_domains(active=True):
            try:
                await dom.destroy()
            except asvirt.AsvirtError:
                pass


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def disk_snapshots(path: str | Path) -> list[str]:
    """The names of the internal snapshots qemu-img sees in a qcow2 image (``info``: it
    reads an encrypted one's without its passphrase, which ``snapshot -l`` needs)."""
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", "-f", "qcow2", "--", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def overlay(path: Path, backing: Path) -> Path:
    """A qcow2 image at ``path`` whose backing file is the qcow2 image ``backing``."""
    qemu_img("create", "-f", "qcow2", "-b", backing, "-F", "qcow2", path)
    return path


#: Bytes in a MiB.
MiB = 1024 * 1024


def image_with_data(path: Path, size: int, *, at: int, fill: bytes = b"\xab") -> Path:
    """A qcow2 image of ``size`` bytes with 64 KiB of data at offset ``at``."""
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        f.seek(at)
        f.write(fill * 65536)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, path)
    raw.unlink()
    return path


def damaged_image(path: Path) -> Path:
    """A 1 GiB qcow2 image whose second half cannot be read: QEMU finds the L2 table for it
    at an unaligned offset, declares the image corrupt and fails the read with EIO. The first
    half is intact (QEMU itself reads the first sectors while it starts)."""
    image_with_data(path, 1024 * MiB, at=1024 * MiB - 65536)
    with open(path, "r+b") as f:
        l1_table = struct.unpack(">Q", f.read(48)[40:48])[0]
        f.seek(l1_table + 8)  # L1 entry 1: guest bytes 512 MiB .. 1 GiB
        (entry,) = struct.unpack(">Q", f.read(8))
        assert entry & 0x00FFFFFFFFFFFE00, "the image should have an L2 table there"
        f.seek(l1_table + 8)
        f.write(struct.pack(">Q", entry + 512))
    return path


def disk_xml(
    path: Path,
    target: str = "vda",
    *,
    error_policy: str | None = None,
    fmt: str = "qcow2",
    device: str = "disk",
    bus: str = "virtio",
    extra: str = "",
) -> str:
    """A file-backed <disk>; ``extra`` is more XML inside it (``<readonly/>``...)."""
    policy = f" error_policy='{error_policy}'" if error_policy else ""
    return f"""
    <disk type='file' device='{device}'>
      <driver name='qemu' type='{fmt}'{policy}/>
      <source file='{path}'/>
      <target dev='{target}' bus='{bus}'/>{extra}
    </disk>"""


def write_config(root: Path, text: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "asvirt.toml").write_text(text)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going between open and read
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"


def pid_exists(pid: int) -> bool:
    """True if ``pid`` exists at all, zombies included."""
    return os.path.exists(f"/proc/{pid}")


def _processes() -> dict[int, tuple[int, bytes]]:
    """Every process now: pid -> (its parent's pid, its name), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.index(b"(") + 1 : stat.rindex(b")")]
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        found[int(entry)] = (ppid, name)
    return found


def children(name: bytes, *, prefix: bool = False, parent: int | None = None) -> list[int]:
    """The children of ``parent`` (this process by default) named ``name`` (or whose name
    starts with it), zombies included. Names are cut to 15 bytes, as the kernel keeps them."""
    parent = os.getpid() if parent is None else parent
    return [
        pid
        for pid, (ppid, comm) in _processes().items()
        if ppid == parent and (comm.startswith(name) if prefix else comm == name)
    ]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    below: dict[int, list[int]] = {}
    for child, (ppid, _) in _processes().items():
        below.setdefault(ppid, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        more = below.get(todo.pop(), [])
        found += more
        todo += more
    return found


def qemus_naming(markers: Iterable[str]) -> dict[str, list[int]]:
    """The pids of live QEMU processes whose command line holds each of ``markers`` (UUIDs,
    file paths); markers no QEMU holds are left out. From the process table alone, not from
    what asvirt records, so that a test can check asvirt's view against it."""
    wanted = list(markers)
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" not in cmdline or not pid_alive(int(entry)):
            continue
        for marker in wanted:
            if marker.encode() in cmdline:
                found.setdefault(marker, []).append(int(entry))
    return found


def peer_pid(sock: Path) -> int:
    """The pid of the process listening on the unix socket ``sock`` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def qemu_pid(root: Path, name: str) -> int:
    """The pid asvirt recorded for a running domain (from its status file)."""
    return int(_status(root, name)["pid"])


def cpus_allowed(pid: int, tid: int) -> str:
    """A thread's affinity as the kernel shows it (``Cpus_allowed_list``: ``0-1``)."""
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


def monitor_path(root: Path, name: str) -> Path:
    """The QMP socket of a running domain (from its status file)."""
    return Path(_status(root, name)["monitor"])


async def raw_qmp(
    monitor: Path, *commands: dict[str, Any], until: str | None = None, timeout: float = 60
) -> None:
    """Speak QMP on a domain's monitor socket directly, as another tool would (while no
    supervisor holds it): each command is ``{"execute": ..., "arguments": ...}``. ``until``:
    then wait (within ``timeout``) for QEMU's event of that name, on this connection, so
    that no supervisor can see it."""
    from asvirt import fsutil

    sock = trio.socket.from_stdlib_socket(fsutil.connect_unix(monitor))
    with sock:
        buf = b""
        seen: set[str] = set()

        async def line() -> dict[str, Any]:
            nonlocal buf
            while b"\n" not in buf:
                data = await sock.recv(65536)
                if not data:
                    raise AssertionError("QEMU closed its monitor")
                buf += data
            raw, buf = buf.split(b"\n", 1)
            reply: dict[str, Any] = json.loads(raw)
            if "event" in reply:
                seen.add(reply["event"])
            return reply

        with trio.fail_after(5):
            await line()  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, *commands):
                await sock.send(json.dumps(cmd).encode() + b"\n")
                while True:
                    reply = await line()
                    if "error" in reply:
                        raise AssertionError(f"QEMU refused {cmd}: {reply['error']}")
                    if "return" in reply:
                        break
        with trio.fail_after(timeout):
            while until is not None and until not in seen:
                await line()


def _status(root: Path, name: str) -> dict[str, object]:
    import json

    status: dict[str, object] = json.loads((root / "run" / "qemu" / f"{name}.status").read_text())
    return status


def lifecycle(ev: asvirt.DomainEvent) -> tuple[str, str] | None:
    """("STARTED", "BOOTED") for lifecycle events, None for others."""
    if ev.kind is not asvirt.EventKind.LIFECYCLE:
        return None
    assert ev.type is not None and ev.detail is not None
    return ev.type.name, ev.detail.name


async def collect_until(
    events: asvirt.Subscription,
    done: Callable[[list[asvirt.DomainEvent]], bool],
    *,
    timeout: float = 30,
) -> list[asvirt.DomainEvent]:
    """Receive events until ``done(events_so_far)`` is true; fails the test after ``timeout``
    (TimeoutError; under trio or asyncio)."""
    seen: list[asvirt.DomainEvent] = []
    with anyio.fail_after(timeout):
        while not done(seen):
            seen.append(await events.receive())
    return seen


async def lifecycle_until(
    events: asvirt.Subscription, *wanted: tuple[str, str], timeout: float = 30
) -> list[tuple[str, str]]:
    """Receive events until the lifecycle events ``wanted`` have been seen in this order.

    Returns every lifecycle event seen (others may come between the wanted ones).
    """

    def done(seen: list[asvirt.DomainEvent]) -> bool:
        it = iter(x for x in map(lifecycle, seen) if x is not None)
        return all(w in it for w in wanted)

    seen = await collect_until(events, done, timeout=timeout)
    return [x for x in map(lifecycle, seen) if x is not None]


async def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 10, interval: float = 0.02
) -> None:
    """Poll ``predicate``: only for facts no event announces, like a file or a process in
    /proc. Whatever asvirt reports, wait for its event instead (subscribe before acting)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


# -- domain XML and QEMU command lines, for tests that run no QEMU ------------------------


#: The UUID :func:`dom` writes: fixed, so that outputs can be compared; upper case, as a user
#: may spell it (asvirt writes it in lower case).
DOM_UUID = "C7A5FDBD-EDAF-9455-926A-D65C16DB1809"


def dom(
    devices: str = "",
    *,
    body: str = "",
    dtype: str = "qemu",
    arch: str = "x86_64",
    machine: str | None = "pc",
    uuid: str | None = DOM_UUID,
) -> str:
    """A small domain XML named vm1 (128 MiB, ``DOM_UUID``) with ``devices`` in <devices>
    and ``body`` (more elements: <cpu>, <clock>, <features>...) after <os>. Nothing boots it:
    for the parser and the command line builder. ``machine=None`` and ``uuid=None`` leave
    them out (what a driver or the post-parse must fill in)."""
    uuid_element = "" if uuid is None else f"<uuid>{uuid}</uuid>"
    machine_attr = "" if machine is None else f" machine='{machine}'"
    return (
        f"<domain type='{dtype}'><name>vm1</name>{uuid_element}"
        "<memory unit='MiB'>128</memory>"
        f"<os><type arch='{arch}'{machine_attr}>hvm</type></os>"
        f"{body}<devices>{devices}</devices></domain>"
    )


#: The opening of an <interface> of each type QEMU gets a tap (or macvtap) for, with its
#: source (the NIC's model and the rest follow, then </interface>).
TAP_NIC_SOURCES = [
    "<interface type='network'><source network='default'/>",
    "<interface type='bridge'><source bridge='br0'/>",
    "<interface type='ethernet'>",
    "<interface type='direct'><source dev='eth0' mode='bridge'/>",
]


#: One source of each protocol, with the options each may carry.
NET_DISK_SOURCES = {
    "nbd-tcp": "<source protocol='nbd' name='export'><host name='127.0.0.1' port='10809'/>"
    "</source>",
    "nbd-unix": "<source protocol='nbd'><host transport='unix' socket='/run/nbd.sock'/></source>",
    "nbd-tls": "<source protocol='nbd' name='export' tls='yes' tlsHostname='nbd.example.org'>"
    "<host name='127.0.0.1' port='10809'/></source>",
    "http": "<source protocol='http' name='/img/a.iso' query='x=1&amp;y=2'>"
    "<host name='example.org'/><readahead size='65536'/><timeout seconds='10'/></source>",
    "https": "<source protocol='https' name='a.img'><host name='example.org' port='8443'/>"
    "<ssl verify='no'/></source>",
    "ftp": "<source protocol='ftp' name='a.img'><host name='example.org'/></source>",
    "ftps": "<source protocol='ftps' name='a.img'><host name='example.org'/></source>",
    "iscsi": "<source protocol='iscsi' name='iqn.1992-01.com.example/1'>"
    "<host name='example.org'/><auth username='myname'>"
    "<secret type='iscsi' usage='libvirtiscsi'/></auth>"
    "<initiator><iqn name='iqn.2013-07.com.example:c'/></initiator>"
    "</source>",
    "rbd": "<source protocol='rbd' name='pool/image'><host name='mon1' port='6322'/>"
    "<host name='mon2'/><snapshot name='s'/><config file='/etc/ceph/ceph.conf'/>"
    "<auth username='admin'><secret type='ceph' uuid='6a4c2f4e-6f0d-4d35-9d2c-0f5e8f1e7a11'/>"
    "</auth></source>",
    "gluster": "<source protocol='gluster' name='Volume/Image.qcow2'><host name='example.org'/>"
    "<host transport='unix' socket='/run/gl.sock'/></source>",
    "ssh": "<source protocol='ssh' name='/test.img'><host name='example.org' port='2222'/>"
    "</source>",
    "nfs": "<source protocol='nfs' name='/foo/bar.img'><host name='example.org'/></source>",
    "https-cookies": "<source protocol='https' name='a.img'><host name='example.org'/>"
    "<ssl verify='yes'/><cookies><cookie name='session'>s3cr3t-v4lue</cookie>"
    "<cookie name='lang'>\"en\"</cookie></cookies><timeout seconds='5'/></source>",
    "nbd-luks": "<source protocol='nbd' name='export'><host name='127.0.0.1' port='10809'/>"
    "<encryption format='luks'><secret type='passphrase' usage='luks-export'/></encryption>"
    "</source>",
}


def net_disk(source: str, *, readonly: bool = True, device: str = "disk", extra: str = "") -> str:
    """A domain (:func:`dom`) with network disk vdb of ``source`` (see NET_DISK_SOURCES)."""
    ro = "<readonly/>" if readonly else ""
    return dom(
        f"<disk type='network' device='{device}'><driver name='qemu' type='raw'/>{source}"
        f"<target dev='vdb' bus='virtio'/>{ro}{extra}</disk>"
    )


@contextlib.contextmanager
def qemu_nbd(
    image: Path,
    fmt: str,
    *,
    socket: Path | None = None,
    port: int | None = None,
    tls_dir: Path | None = None,
    key_password: str | None = None,
) -> Iterator[int]:
    """A ``qemu-nbd`` (its pid yielded) serving ``image`` (read as ``fmt``) as export
    ``export``, on a unix socket or a TCP port of 127.0.0.1 (over TLS only, with the
    certificates of ``tls_dir`` (:func:`make_tls_dir`), if given); stopped (and waited for)
    at the end. qemu-nbd comes with qemu-img (Debian's qemu-utils), which the tests need
    anyway. ``key_password``: the password of the (encrypted) server key, given to qemu-nbd in
    a file of its own beside ``image``."""
    pidfile = image.with_suffix(".nbd.pid")
    where = ["-k", str(socket)] if socket is not None else ["-b", "127.0.0.1", "-p", str(port)]
    if tls_dir is not None:
        creds = f"tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir={tls_dir}"
        if key_password is not None:
            keyfile = image.with_suffix(".nbd.key-password")
            keyfile.touch(mode=0o600)
            keyfile.write_text(key_password)
            where += ["--object", f"secret,id=keysec0,file={keyfile}"]
            creds += ",passwordid=keysec0"
        where += ["--object", creds, "--tls-creds=tls0"]
    # --fork: the parent exits once the server listens, so the test waits on no timer.
    serve = ["--fork", f"--pid-file={pidfile}", "-f", fmt, "-x", "export", "-t", "-e", "4"]
    subprocess.run(
        ["qemu-nbd", *serve, *where, str(image)],
        check=True,
        timeout=30,
    )
    pid = int(pidfile.read_text())
    pidfd = os.pidfd_open(pid)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], 10)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
        os.close(pidfd)


async def qemu_io_read(dom: asvirt.Domain, node: str, length: int, log: Path) -> bytes:
    """The first ``length`` bytes QEMU reads from its block node ``node``, through all that
    is under it (NBD, TLS, curl, LUKS...): qemu-io's ``read -v`` over the human monitor,
    whose dump QEMU writes on its stdout, the domain's ``log`` (read from where it ended)."""
    before = log.stat().st_size
    await dom.qmp("human-monitor-command", {"command-line": f'qemu-io {node} "read -v 0 {length}"'})
    data = bytearray()
    for line in log.read_bytes()[before:].decode(errors="replace").splitlines():
        # 00000000:  41 53 56 49 ...  ASVI...
        found = re.match(r"[0-9a-f]{8}:\s+((?:[0-9a-f]{2} )+)", line)
        if found:
            data += bytes.fromhex(found.group(1))
    return bytes(data)


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a server a test starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


#: Makes the kernel refuse pidfd_open (434 on x86-64) with ENOSYS in this process and its
#: children, as a kernel older than 5.3 does: a seccomp filter, set with prctl through ctypes.
NO_PIDFD = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    insn(0x20, 0, 0, 4), insn(0x15, 1, 0, 0xC000003E), insn(0x06, 0, 0, 0x7FFF0000),
    insn(0x20, 0, 0, 0), insn(0x15, 0, 1, 434), insn(0x06, 0, 0, 0x00050000 | 38),
    insn(0x06, 0, 0, 0x7FFF0000),
])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP
"""


def in_own_network(argv: list[str]) -> list[str]:
    """``argv`` run in a network namespace of its own with only loopback up: what it binds
    (the fixed ports of libvirt's cases: VNC display 0, websocket 5700) cannot collide with
    the automatic ports of the domains other tests run at the same time. Needs root and
    util-linux's unshare; as it is otherwise."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return argv
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def argv_of(
    caps: QemuCapabilities, xml: str, tmp: Path | None = None, *, tls: TlsConfig | None = None
) -> list[str]:
    """The QEMU command line for ``xml``, its monitor socket in ``tmp`` (or a fixed path);
    ``tls``: which TLS the driver's configuration turns on (default: none)."""
    mon = str((tmp or Path("/run/asvirt-test")) / "m.sock")
    return domxml_to_native(xml, caps, monitor_path=mon, tls=tls)


def make_tls_dir(
    directory: Path, *, names: tuple[str, ...] = ("localhost",), key_password: str | None = None
) -> Path:
    """A directory of TLS credentials as QEMU and libvirt lay them out, made with openssl:
    ``ca-cert.pem`` (a CA of the test's own, its key in ``ca-key.pem``), ``server-cert.pem``
    and ``server-key.pem`` for the DNS ``names`` and 127.0.0.1, ``client-cert.pem`` and
    ``client-key.pem``. The key usages are the ones GnuTLS (QEMU) insists on. With
    ``key_password``, the server's and client's keys are encrypted with it (AES-256, PKCS#8),
    ``ROLE-key-plain.pem`` keeping them in the clear for the test's own peers."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=directory)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=asvirt test CA",
        "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    sans = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1"])
    for role, purpose, cn in (("server", "serverAuth", names[0]), ("client", "clientAuth", "vm")):
        ext = directory / f"{role}.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={purpose}\n"
            + (f"subjectAltName={sans}\n" if role == "server" else "")
        )
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{role}-key.pem", "-out", f"{role}.csr",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{role}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", f"{role}-cert.pem",
        )  # fmt: skip
    if key_password is not None:
        (directory / "client-key.pem").rename(directory / "client-key-plain.pem")
        (directory / "server-key.pem").rename(directory / "server-key-plain.pem")
        for role in ("server", "client"):
            # The password through a pipe (stdin), not in openssl's argv.
            subprocess.run(
                ["openssl", "pkey", "-in", f"{role}-key-plain.pem", "-aes256",
                 "-passout", "stdin", "-out", f"{role}-key.pem"],
                input=key_password.encode(), check=True, capture_output=True, cwd=directory,
            )  # fmt: skip
            assert b"ENCRYPTED PRIVATE KEY" in (directory / f"{role}-key.pem").read_bytes()
    return directory


def opts(argv: list[str], name: str) -> list[str]:
    """The values of every ``name`` option (``-device``, ``-blockdev``...) in ``argv``."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]


def devices(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(v) for v in opts(argv, "-device")]


def device(argv: list[str], dev_id: str) -> dict[str, Any]:
    for d in devices(argv):
        if d.get("id") == dev_id:
            return d
    raise AssertionError(f"no -device with id {dev_id}")


def blockdevs(argv: list[str]) -> list[dict[str, Any]]:
    return [json.loads(v) for v in opts(argv, "-blockdev")]


def assert_libvirt_schema(xml: str) -> None:
    """``xml`` (a domain's) is valid under libvirt's schema, when ../shared has it."""
    from lxml import etree

    from .caps import CONFORMANCE

    schema = CONFORMANCE / "schemas" / "domain.rng"
    if schema.exists():
        rng = etree.RelaxNG(file=str(schema))
        assert rng.validate(etree.fromstring(xml.encode())), rng.error_log


def dumpxml_roundtrip(caps: QemuCapabilities, xml: str) -> str:
    """What dumpxml shows for ``xml``: valid under libvirt's schema (when ../shared has it),
    and stable when defined again."""
    from asvirt.conf.domain import parse_domain_xml
    from asvirt.drivers.qemu.postparse import prepare_domain

    out = prepare_domain(parse_domain_xml(xml), caps).to_xml()
    assert_libvirt_schema(out)
    assert prepare_domain(parse_domain_xml(out), caps).to_xml() == out
    return out


@contextlib.contextmanager
def vhost_user_backend(directory: Path) -> Iterator[Path]:
    """A real vhost-user network backend listening on ``directory/vhost.sock``: DPDK's
    testpmd with a vhost PMD of two queue pairs (interactive, so that nothing polls while
    the test runs); skips the test where Debian's dpdk is not installed. One client (QEMU
    NIC) at a time."""
    import pytest

    testpmd = shutil.which("dpdk-testpmd")
    if testpmd is None:
        pytest.skip("dpdk-testpmd (Debian's dpdk) is not installed: no vhost-user backend")
    sock = directory / "vhost.sock"
    prefix = f"asvirt-{directory.name}"
    proc = subprocess.Popen(
        [
            testpmd, "--no-huge", "-m", "512", "--no-pci", f"--file-prefix={prefix}",
            "-l", "0-1", "--vdev", f"net_vhost0,iface={sock},queues=2",
            "--", "-i", "--rxq=2", "--txq=2", "--total-num-mbufs=2048",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # its own word that the socket listens
            if "binding succeeded" in line:
                break
        else:
            pytest.fail(f"testpmd exited ({proc.wait()}) without listening on {sock}")
        yield sock
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)


#: The target a :func:`tgtd` serves (LUN 1 is the image; LUN 0 is tgtd's own controller).
ISCSI_IQN = "iqn.2026-12.org.asvirt:target1"


@contextlib.contextmanager
def tgtd(directory: Path, image: Path, *, chap: tuple[str, str] | None = None) -> Iterator[int]:
    """A real iSCSI target, Linux's ``tgtd`` (Debian's tgt), of the test's own: listening on
    127.0.0.1 only, at a free port (yielded), and managed through a control port of its own
    (``-C``, a unix socket ``/var/run/tgtd/socket.N``), so that it never meets the machine's
    tgtd. It serves target :data:`ISCSI_IQN` with ``image`` as LUN 1 to any initiator; with
    ``chap`` (user, password) only to one logging in with that CHAP account. Killed and its
    control socket removed at the end; ``directory/tgtd.log`` holds what it said. Skips the
    test where tgt is not installed."""
    import pytest

    daemon, admin = (
        shutil.which("tgtd", path="/usr/sbin:/sbin"),
        shutil.which("tgtadm", path="/usr/sbin:/sbin"),
    )
    if daemon is None or admin is None:
        pytest.skip("tgtd/tgtadm (Debian's tgt) are not installed: no iSCSI target")
    port = free_tcp_port()
    # The control port only names a unix socket (tgtd takes 0 to 32767): one nobody holds.
    control = port % 32000 + 700
    while os.path.exists(f"/var/run/tgtd/socket.{control}"):
        control = control % 32000 + 701
    log = (directory / "tgtd.log").open("wb")
    proc = subprocess.Popen(
        [daemon, "-f", "--iscsi", f"portal=127.0.0.1:{port}", "-C", str(control)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def tgtadm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [admin, "-C", str(control), "--lld", "iscsi", *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def configure(*args: str) -> None:
        done = tgtadm(*args)
        assert done.returncode == 0, f"tgtadm {' '.join(args)}: {done.stderr}"

    try:
        # tgtd answers its control socket only from its event loop, once its portal listens:
        # the first answer says it is ready (there is no other word of it to wait on).
        for _ in range(3000):  # 30 s
            if proc.poll() is not None:
                log.flush()
                pytest.fail(
                    f"tgtd exited ({proc.returncode}): {(directory / 'tgtd.log').read_text()}"
                )
            if tgtadm("--op", "show", "--mode", "target").returncode == 0:
                break
            select.select([], [], [], 0.01)
        else:
            pytest.fail(f"tgtd did not answer on its control port {control}")
        configure("--op", "new", "--mode", "target", "--tid", "1", "-T", ISCSI_IQN)
        configure(
            "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", str(image)
        )
        configure("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
        if chap is not None:
            user, password = chap
            configure("--op", "new", "--mode", "account", "--user", user, "--password", password)
            configure("--op", "bind", "--mode", "account", "--tid", "1", "--user", user)
        yield port
    finally:
        # tgtd ignores SIGTERM while it serves targets.
        proc.kill()
        proc.wait()
        log.close()
        for leftover in (f"socket.{control}", f"socket.{control}.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/var/run/tgtd/{leftover}")
