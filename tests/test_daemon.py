"""The daemon's guarantees, proved against real asvirtd processes, real QEMU, real sockets.

What a client may do on each socket, what it learns about the client, what a client that
misbehaves (malformed, oversized or random messages, silence, not reading) gets and cannot
do, the files it leaves and their permissions, and how it stops. Raw clients speak the wire
protocol by hand (JSON lines on a unix socket: :class:`Raw`); real ones use ``asvirt.open``.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
import typing
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asvirt
from asvirt import DomainState as S
from asvirt import fsutil, protocol
from asvirt.rpc import wire

from .daemon import Daemon, session_runtime_dir
from .guest import REPO, TestGuest, paused_xml, start_with_disk, wait_for_serial
from .helpers import (
    MiB,
    collect_until,
    embed_uri,
    image_with_data,
    lifecycle,
    lifecycle_until,
    overlay,
    peer_pid,
    pid_alive,
    qemu_pid,
    wait_for,
)

pytestmark = pytest.mark.qemu

LC = asvirt.EventKind.LIFECYCLE
EVENT_KINDS = [k for k in asvirt.EventKind if k is not asvirt.EventKind.GAP]
#: What a read-only socket refuses: calls that change state, and those that read a secret.
MUTATING = sorted(name for name, c in protocol.CALLS.items() if not c.read_only_ok)
READING = sorted(name for name, c in protocol.CALLS.items() if c.read_only_ok)
#: ... and those it answers unless asked for secrets (domain_xml_desc's ``secure``).
SECURE_ARGS = sorted(n for n, c in protocol.CALLS.items() if c.read_only_ok and c.secure_args)
#: Reading calls that name a snapshot of the VM (which has none).
NEED_A_SNAPSHOT = ("domain_snapshot_info", "domain_snapshot_xml_desc")
#: Reading calls that name one disk or interface of the VM (which has none).
NEED_A_DEVICE = (
    "domain_block_info",
    "domain_block_job_info",
    "domain_interface_stats",
    "domain_block_io_tune",
)
#: Reading calls answered by the guest (its agent): the paused VM cannot.
NEED_A_RUNNING_GUEST = (
    "domain_get_time",
    "domain_get_hostname",
    "domain_get_fs_info",
    "domain_get_guest_info",
)
#: Reading calls that name a metadata item of the VM (which has none).
NEED_METADATA = ("domain_get_metadata",)
#: The daemon's own methods, besides the declared calls.
SESSION_METHODS = ("hello", "bye", "events.subscribe", "events.unsubscribe")


# -- a client speaking the wire protocol by hand ---------------------------------------------


class Raw:
    """A client that writes lines of JSON to a daemon's socket and reads its lines back.

    Blocking: from an async test, wait on it in a thread when the test's own tasks must run
    meanwhile (a real client answering keepalives).
    """

    def __init__(self, path: Path, *, timeout: float = 30) -> None:
        self.sock = fsutil.connect_unix(path)
        self.sock.settimeout(timeout)
        self._buf = b""
        self._ids = itertools.count(1)
        #: Notifications (events, pings) seen while waiting for replies.
        self.notices: list[dict[str, Any]] = []

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next message; None once the daemon has closed the connection."""
        while b"\n" not in self._buf:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def next_reply(self) -> dict[str, Any]:
        """The next response (notifications are kept in :attr:`notices`)."""
        while True:
            msg = self.receive()
            assert msg is not None, "the daemon closed the connection"
            if "id" in msg:
                return msg
            self.notices.append(msg)

    def notification(self) -> dict[str, Any]:
        """The next notification other than a keepalive ping (responses are dropped)."""
        while True:
            msg = self.receive()
            assert msg is not None, "the daemon closed the connection"
            if "id" not in msg and msg.get("method") != "keepalive.ping":
                return msg

    def reply_to(self, msg_id: object) -> dict[str, Any]:
        """Messages until the response to ``msg_id`` (other responses are dropped)."""
        while True:
            msg = self.next_reply()
            if msg["id"] == msg_id:
                return msg

    def request(self, method: str, params: object = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            body["params"] = params
        self.send(json.dumps(body).encode() + b"\n")
        return self.reply_to(msg_id)

    def call(self, method: str, **params: Any) -> Any:
        """A request that must succeed: its result."""
        reply = self.request(method, params)
        assert "result" in reply, f"{method}: {reply}"
        return reply["result"]

    def hello(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("hello")
        assert result["protocol"] == wire.PROTOCOL_VERSION
        return result

    def until_closed(self) -> list[dict[str, Any]]:
        """Read until the daemon closes the connection; what it sent meanwhile."""
        seen = []
        while (msg := self.receive()) is not None:
            seen.append(msg)
        return seen


def error_of(reply: dict[str, Any]) -> tuple[int, str | None]:
    """(code, error class) of an error response."""
    assert "error" in reply and "result" not in reply, reply
    assert reply["jsonrpc"] == "2.0"
    err = reply["error"]
    assert isinstance(err["message"], str) and err["message"]
    data = err.get("data") or {}
    return err["code"], data.get("error")


# -- daemons ------------------------------------------------------------------------------------


@pytest.fixture
def daemons(tmp_path: Path, caps_cache: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts daemons on state directories under ``tmp_path`` (``Daemon``'s arguments); at
    the end, stops those still running and fails the test if it left a QEMU running."""
    started: list[Daemon] = []

    def start(name: str = "state", **kw: Any) -> Daemon:
        daemon = Daemon(tmp_path / name, caps_cache=caps_cache, **kw).start()
        started.append(daemon)
        return daemon

    yield start
    leftovers = []
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        leftovers += daemon.kill_qemus()
    assert not leftovers, f"the test left QEMUs running in a daemon: {leftovers}"


async def start_paused(
    conn: asvirt.Connection, guest: TestGuest, tmp_path: Path, name: str = "vm1"
) -> asvirt.Domain:
    dom = await conn.define_xml(paused_xml(guest, tmp_path, name))
    await dom.start(paused=True)
    return dom


def start_paused_raw(raw: Raw, guest: TestGuest, tmp_path: Path, name: str = "vm1") -> str:
    """The same through a raw client; the domain's UUID."""
    ref = raw.call("define_xml", xml=paused_xml(guest, tmp_path, name))
    raw.call("domain_start", uuid=ref["uuid"], paused=True, autodestroy=False)
    return str(ref["uuid"])


def memory_kib(pid: int) -> dict[str, int]:
    """A process's VmRSS (resident now) and VmHWM (its peak), in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracebacks(daemon: Daemon) -> list[str]:
    text = daemon.log_text(whole=True)
    return [line for line in text.splitlines() if "Traceback" in line or '"exception"' in line]


# -- 1. the read-only socket ----------------------------------------------------------------


def arguments(c: protocol.Call, *, uuid: str, name: str, xml: Callable[[str], str]) -> dict:
    """Real arguments for the call ``c``: the paused VM's UUID and name, XML that would
    define something new. Allowed, every mutating call would change something; a declared
    argument this table does not know fails the test (give it a value)."""
    values: dict[str, Any] = {
        "uuid": uuid,
        "name": name,
        "xml": xml(c.name),
        "pool_uuid": str(uuidlib.uuid4()),
        "paused": False,
        "autodestroy": False,
        "command": "quit",  # ends QEMU
        "arguments": None,
        "native_format": "qemu-argv",
        "inactive": False,
        "secure": False,  # allowed read-only; true is refused (test below)
        "active": None,
        "persistent": None,
        "autostart": True,
        "nvram": True,
        "keep_tpm": False,
        "cpumap": [True],  # pinned to the first host CPU
        "iothread": 1,
        "vcpu": 0,
        "start_cpu": -1,  # totals
        "ncpus": 1,
        "params": {"total_bytes_sec": 1048576},
        "mac": None,
        "source": 0,  # InterfaceAddressSource.LEASE, HostnameSource.DEFAULT
        "path": "/nonexistent",
        "source_pool_uuid": str(uuidlib.uuid4()),
        "source_name": "intruder",
        "prealloc_metadata": False,
        "progress": False,
        "capacity": 1,
        "allocate": False,
        "delta": False,
        "shrink": False,
        "transfer": 1,
        "offset": 0,
        "length": 1,
        "data": "aW50cnVkZXI=",  # base64
        "force_boot": True,
        "snapshots_metadata": True,
        "managed_save": True,
        "disk_only": False,
        "no_metadata": False,
        "reuse_external": False,
        "quiesce": False,
        "halt": True,
        "running": False,
        "of": None,
        "descendants": False,
        "roots": False,
        "leaves": None,
        "children": True,
        "children_only": False,
        "metadata_only": False,
        "period": 10,
        "live": True,
        "config": False,
        "device": "",  # every disk, where a call takes that
        "stats": 0,  # every group
        "uuids": None,
        "kib": 65536,
        "count": 1,
        "maximum": False,
        "force": True,
        "timeout": 1.0,
        "console": 1,
        "mountpoints": None,
        "seconds": 0,
        "nseconds": 0,
        "sync": False,
        "mode": 1,  # ShutdownMode.ACPI
        "value": "aW50cnVkZXI=",  # base64
        "usage_type": 2,  # SecretUsageType.CEPH
        "usage_id": "intruder",
        "ephemeral": None,
        "private": None,
        "types": 0,  # every group
        "user": "root",
        "password": "intruder",
        "encrypted": False,
        "codeset": 0,  # linux
        "holdtime": 0,
        "keycodes": [30],
        "screen": 0,
        "type": 0,  # MetadataType.DESCRIPTION
        "metadata": "intruder",
        "key": None,
        "uri": None,
        "new_name": "intruder",
        "target": 0,  # NodeSuspendTarget.MEM
        "duration": 0,
        "screenshot": 1,
        "size": 1,
        "extend": False,
        "bandwidth": 0,
        "base": None,
        "top": None,
        "shallow": False,
        "pivot": False,
        "wait": True,
        "dest_xml": "<disk><source file='/nonexistent/copy'/></disk>",
        "reuse_ext": False,
    }
    unknown = [p for p, _ in c.params if p not in values]
    assert not unknown, f"{c.name}: no test value for argument(s) {unknown}"
    return {p: values[p] for p, _ in c.params}


def xml_for(guest: TestGuest, tmp_path: Path, vm_xml: str) -> Callable[[str], str]:
    def xml(call: str) -> str:
        if call in ("define_xml", "create_xml"):
            return paused_xml(guest, tmp_path, "intruder")
        if call == "network_define_xml":
            return "<network><name>intruder</name></network>"
        if call == "storage_pool_define_xml":
            target = f"<target><path>{tmp_path}</path></target>"
            return f"<pool type='dir'><name>intruder</name>{target}</pool>"
        if call == "secret_define_xml":
            return "<secret><usage type='ceph'><name>intruder</name></usage></secret>"
        if call == "storage_vol_create_xml":
            return "<volume><name>intruder</name><capacity>1</capacity></volume>"
        if call in ("domain_attach_device", "domain_detach_device", "domain_update_device"):
            return "<interface type='user'><mac address='52:54:00:00:00:99'/></interface>"
        return vm_xml

    return xml


def node_view(raw: Raw, uuid: str) -> dict[str, Any]:
    """What a client can see of the node: domains, the VM's state, networks and pools."""
    asked = {
        "domains": ("list_all_domains", {"active": None, "persistent": None}),
        "state": ("domain_state", {"uuid": uuid}),
        "xml": ("domain_xml_desc", {"uuid": uuid, "inactive": False}),
        "networks": ("list_all_networks", {"active": None}),
        "pools": ("list_all_storage_pools", {"active": None}),
        "secrets": ("list_all_secrets", {"ephemeral": None, "private": None}),
    }
    view = {}
    for what, (method, params) in asked.items():
        reply = raw.request(method, params)
        view[what] = reply.get("result", reply.get("error"))
    return view


async def test_read_only_socket_refuses_every_mutating_call(daemons, test_guest, tmp_path):
    daemon = daemons()
    assert {"define_xml", "domain_destroy", "domain_qmp", "create_xml"} <= set(MUTATING)
    assert "domain_xml_desc" in SECURE_ARGS
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path)
        pid = qemu_pid(daemon.state_dir, "vm1")
        vm_xml = await dom.xml_desc()
        xml = xml_for(test_guest, tmp_path, vm_xml)
        with Raw(daemon.socket_ro) as ro:
            assert ro.hello()["read_only"] is True
            before = node_view(ro, dom.uuid)
            for name in MUTATING:
                c = protocol.CALLS[name]
                reply = ro.request(name, arguments(c, uuid=dom.uuid, name="vm1", xml=xml))
                assert error_of(reply) == (6, "OperationDeniedError"), name
                # Refused whatever the arguments: no hint of what exists.
                assert error_of(ro.request(name, {})) == (6, "OperationDeniedError"), name
            # Calls read-only clients may make, but not asking for secrets (secure XML).
            for name in SECURE_ARGS:
                c = protocol.CALLS[name]
                args = arguments(c, uuid=dom.uuid, name="vm1", xml=xml)
                for arg in c.secure_args:
                    reply = ro.request(name, {**args, arg: True})
                    assert error_of(reply) == (6, "OperationDeniedError"), (name, arg)
            # Nothing changed: the VM runs paused in the same QEMU, nothing was defined.
            assert node_view(ro, dom.uuid) == before
            assert before["state"] == [S.PAUSED.value, asvirt.PausedReason.USER.value]
            assert qemu_pid(daemon.state_dir, "vm1") == pid and pid_alive(pid)
            configs = daemon.state_dir / "etc" / "qemu"
            assert sorted(p.name for p in configs.glob("*.xml")) == ["vm1.xml"]
            assert not list(configs.glob("autostart/*"))  # nothing was marked autostart

            # Every other call works there.
            for name in READING:
                c = protocol.CALLS[name]
                reply = ro.request(name, arguments(c, uuid=dom.uuid, name="vm1", xml=xml))
                if name in NEED_A_DEVICE:  # no such device: refused for that, not by the socket
                    assert error_of(reply) == (8, "InvalidArgError"), (name, reply)
                elif name in NEED_A_RUNNING_GUEST:  # paused: refused for that
                    assert error_of(reply) == (55, "OperationInvalidError"), (name, reply)
                elif name in NEED_METADATA:  # the VM has none
                    assert error_of(reply) == (80, "NoDomainMetadataError"), (name, reply)
                elif c.target is protocol.Target.DOMAINS and name not in NEED_A_SNAPSHOT:
                    assert "result" in reply, (name, reply)
                elif name in NEED_A_SNAPSHOT:  # the VM has none: no such snapshot
                    assert error_of(reply) == (72, "NoDomainSnapshotError"), (name, reply)
                elif "error" in reply:  # a node may serve no networks or pools
                    assert error_of(reply)[0] != 6, (name, reply)
            # ... events too: a definition made on the other socket reaches it.
            ro.call("events.subscribe", sub=1, domain=None, kinds=["lifecycle"], since=None)
            other = await conn.define_xml(paused_xml(test_guest, tmp_path, "other"))
            await other.undefine()
            event = ro.notification()
            assert event["method"] == "event", event
            assert event["params"]["event"]["domain"] == "other"
            assert event["params"]["event"]["type"] == asvirt.LifecycleEvent.DEFINED

        # The public API on the read-only socket: reads work, changes raise.
        async with asvirt.open(daemon.uri_ro) as ro_conn:
            seen = await ro_conn.lookup_by_name("vm1")
            assert await seen.state() == (S.PAUSED, asvirt.PausedReason.USER)
            assert (await seen.info()).state is S.PAUSED
            assert await seen.xml_desc() == vm_xml
            assert [d.name for d in await ro_conn.list_all_domains()] == ["vm1"]
            with pytest.raises(asvirt.OperationDeniedError) as denied:
                await seen.destroy()
            assert denied.value.code == asvirt.ErrorCode.OPERATION_DENIED
            with pytest.raises(asvirt.OperationDeniedError):
                await ro_conn.define_xml(paused_xml(test_guest, tmp_path, "intruder"))
            with pytest.raises(asvirt.OperationDeniedError):
                await seen.qmp("quit")
            with pytest.raises(asvirt.OperationDeniedError, match="secure"):
                await seen.xml_desc(secure=True)
            async with ro_conn.subscribe(domain="vm1", kinds=LC) as events:
                # The daemon answers in order: once this is answered, it has subscribed.
                await seen.state()
                await dom.resume()  # on the read-write connection
                (resumed,) = await collect_until(events, lambda seen: len(seen) >= 1)
                assert lifecycle(resumed) == ("RESUMED", "UNPAUSED")
        assert qemu_pid(daemon.state_dir, "vm1") == pid
        await dom.destroy()


# -- 2. permissions; one daemon per state directory ---------------------------------------------


def daemon_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid for {pid}")


async def test_an_active_commit_pivots_through_the_daemon(daemons, test_guest, tmp_path):
    # A backup script's round: commit the overlay, wait for READY, pivot; over the wire.
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top = overlay(tmp_path / "top.qcow2", base)
    daemon = daemons()
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_with_disk(conn, test_guest, tmp_path, top)
        async with conn.subscribe(dom, kinds={asvirt.EventKind.BLOCK_JOB}) as events:
            await dom.block_commit("vda", active=True)
            ready = await events.receive()
            assert (ready.data["disk"], ready.data["status"]) == ("vda", "ready")
            info = await dom.block_job_info("vda")
            assert info is not None and info.type is asvirt.BlockJobType.ACTIVE_COMMIT
            await dom.block_job_abort("vda", pivot=True)
            done = await events.receive()
        assert (done.data["job"], done.data["status"]) == ("active-commit", "completed")
        assert f"<source file='{base}'" in await dom.xml_desc()
        assert await dom.block_job_info("vda") is None
        await dom.destroy()


async def test_the_backup_recipes_snapshot_goes_through_the_daemon(daemons, test_guest, tmp_path):
    # snapshot-create-as --disk-only --no-metadata --diskspec vda,file=..., over the wire.
    base = image_with_data(tmp_path / "base.qcow2", 16 * MiB, at=0)
    top = tmp_path / "overlay.qcow2"
    daemon = daemons()
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_with_disk(conn, test_guest, tmp_path, base)
        snap = await dom.snapshot_create_xml(
            f"<domainsnapshot><name>b</name><disks><disk name='vda'><source file='{top}'/>"
            "</disk></disks></domainsnapshot>",
            disk_only=True,
            atomic=True,
            no_metadata=True,
        )
        assert snap.name == "b" and await dom.list_all_snapshots() == []
        assert f"<source file='{top}'" in await dom.xml_desc()
        taken = tmp_path / "taken.qcow2"
        taken.write_bytes(b"")
        try:
            with pytest.raises(asvirt.OperationInvalidError, match="already exists"):
                await dom.snapshot_create_xml(
                    f"<domainsnapshot><disks><disk name='vda'><source file='{taken}'/>"
                    "</disk></disks></domainsnapshot>",
                    disk_only=True,
                )
            assert taken.read_bytes() == b""
        finally:
            await dom.destroy()


async def test_sockets_and_state_files_are_private(daemons, test_guest, tmp_path):
    daemon = daemons()
    uid = daemon_uid(daemon.pid)
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path)
        assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(daemon.socket_ro.stat().st_mode) == 0o666
        for path in [daemon.state_dir, *daemon.state_dir.rglob("*")]:
            try:
                st = path.lstat()
            except FileNotFoundError:  # an atomic write's temporary file, renamed meanwhile
                continue
            mode = stat.S_IMODE(st.st_mode)
            assert st.st_uid == uid, path
            if stat.S_ISDIR(st.st_mode):
                assert mode == 0o700, f"{path}: {mode:o}"
            elif stat.S_ISREG(st.st_mode):
                assert mode == 0o600, f"{path}: {mode:o}"
            elif path not in (daemon.socket, daemon.socket_ro):
                assert stat.S_ISSOCK(st.st_mode), path
                assert not mode & 0o022, f"{path}: {mode:o}"  # nobody else may connect
        for name in ("run/qemu/vm1.status", "etc/qemu/vm1.xml", "log/qemu/vm1.log"):
            assert (daemon.state_dir / name).is_file()
        assert list((daemon.state_dir / "lib" / "events").iterdir())
        await dom.destroy()


async def test_a_second_daemon_on_the_same_state_dir_refuses(daemons, test_guest, tmp_path):
    daemon = daemons()
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path)
        pid = qemu_pid(daemon.state_dir, "vm1")
        with Raw(daemon.socket) as first:
            first.hello()
            second = await trio.to_thread.run_sync(
                lambda: subprocess.run(daemon.argv, cwd=REPO, capture_output=True, timeout=60)
            )
            assert second.returncode == 1
            stderr = second.stderr.decode()
            assert "in use by another process" in stderr, stderr
            assert "Traceback" not in stderr, stderr
            # The first goes on: its connections, its sockets, its VM.
            first.hello()
        assert daemon.proc is not None and daemon.proc.poll() is None
        with Raw(daemon.socket) as again, Raw(daemon.socket_ro) as again_ro:
            again.hello()
            again_ro.hello()
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        assert qemu_pid(daemon.state_dir, "vm1") == pid and pid_alive(pid)
        await dom.destroy()
    assert daemon.stop() == 0


async def test_a_screenshot_is_read_in_chunks_by_its_client_only(daemons, test_guest, tmp_path):
    """A screenshot is kept for the client that took it and read a chunk per call, so that
    an image of any size goes through messages of bounded size; another client cannot read
    it, and it is gone once read to its end."""
    daemon = daemons()
    vga = "<video><model type='vga'/></video>"
    async with asvirt.open(daemon.uri) as conn:
        dom = await conn.define_xml(paused_xml(test_guest, tmp_path, devices=vga))
        await dom.start(paused=True)
        _, image = await dom.screenshot()  # the remote client reads the chunks itself
        assert image.startswith(b"P6\n")
        with Raw(daemon.socket) as raw, Raw(daemon.socket) as other:
            raw.hello()
            other.hello()
            shot = raw.call("domain_screenshot", uuid=dom.uuid, screen=0)
            read = {"screenshot": shot, "length": 100_000}
            assert error_of(other.request("domain_screenshot_read", read)) == (
                8,
                "InvalidArgError",
            )
            chunks = []
            while data := base64.b64decode(raw.call("domain_screenshot_read", **read)):
                chunks.append(data)
            assert len(chunks) == -(-len(image) // 100_000)  # a paused guest's screen
            assert b"".join(chunks) == image
            assert error_of(raw.request("domain_screenshot_read", read)) == (8, "InvalidArgError")
            too_big = {"screenshot": shot, "length": 64 * 1024 * 1024}
            shot = raw.call("domain_screenshot", uuid=dom.uuid, screen=0)
            too_big["screenshot"] = shot
            assert error_of(raw.request("domain_screenshot_read", too_big)) == (
                8,
                "InvalidArgError",
            )
        await dom.destroy()
    assert daemon.stop() == 0


# -- 3. malformed requests ----------------------------------------------------------------------

MAX_MESSAGE = 16 * 1024


def req(msg_id: object, method: object, params: object = None, **more: object) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method, **more}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


#: A bad line, the error code it gets, and the id of that response.
MALFORMED = [
    pytest.param(b"this is not json", wire.PARSE_ERROR, None, id="not-json"),
    pytest.param(b'{"jsonrpc": "2.0", "id": 1, "method": "hel', wire.PARSE_ERROR, None, id="cut"),
    pytest.param(b"\xff\xfe\x00garbage", wire.PARSE_ERROR, None, id="not-utf8"),
    pytest.param(b"[" * 5000 + b"]" * 5000, wire.PARSE_ERROR, None, id="deep-nesting"),
    pytest.param(b"[1, 2, 3]", wire.INVALID_REQUEST, None, id="array"),
    pytest.param(b'"hello"', wire.INVALID_REQUEST, None, id="string"),
    pytest.param(b"42", wire.INVALID_REQUEST, None, id="number"),
    pytest.param(b"null", wire.INVALID_REQUEST, None, id="null"),
    pytest.param(
        b'{"jsonrpc": "1.0", "id": 1, "method": "hello"}', wire.INVALID_REQUEST, None, id="1.0"
    ),
    pytest.param(b'{"id": 1, "method": "hello"}', wire.INVALID_REQUEST, None, id="no-version"),
    pytest.param(req([1], "hello"), wire.INVALID_REQUEST, None, id="id-list"),
    pytest.param(req(True, "hello"), wire.INVALID_REQUEST, None, id="id-bool"),
    pytest.param(b'{"jsonrpc": "2.0", "id": 7}', wire.INVALID_REQUEST, 7, id="no-method"),
    pytest.param(req(8, 42), wire.INVALID_REQUEST, 8, id="method-number"),
    pytest.param(req(9, "no_such_call"), wire.METHOD_NOT_FOUND, 9, id="unknown-method"),
    pytest.param(req("x", "domain_nope", {}), wire.METHOD_NOT_FOUND, "x", id="unknown-str-id"),
    pytest.param(req(10, "lookup_by_name", {"name": 5}), wire.INVALID_PARAMS, 10, id="param-type"),
    pytest.param(
        req(11, "lookup_by_name", {"name": "vm1", "flags": 0}),
        wire.INVALID_PARAMS,
        11,
        id="param-unknown",
    ),
    pytest.param(req(12, "lookup_by_name", {}), wire.INVALID_PARAMS, 12, id="param-missing"),
    pytest.param(req(13, "lookup_by_name", ["vm1"]), wire.INVALID_PARAMS, 13, id="params-list"),
    pytest.param(
        req(14, "domain_start", {"uuid": "u", "paused": "yes", "autodestroy": False}),
        wire.INVALID_PARAMS,
        14,
        id="param-bool",
    ),
    pytest.param(
        req(15, "events.subscribe", {"sub": "one"}), wire.INVALID_PARAMS, 15, id="sub-type"
    ),
    pytest.param(
        req(16, "events.subscribe", {"sub": 1, "kinds": ["nope"]}),
        wire.INVALID_PARAMS,
        16,
        id="sub-kind",
    ),
    pytest.param(
        req(17, "events.subscribe", {"sub": 1, "colour": "red"}),
        wire.INVALID_PARAMS,
        17,
        id="sub-unknown",
    ),
    pytest.param(req(18, "events.subscribe", [1]), wire.INVALID_PARAMS, 18, id="sub-list"),
    pytest.param(
        req(19, "events.unsubscribe", {"sub": 99}), wire.INVALID_PARAMS, 19, id="unsub-none"
    ),
    pytest.param(
        req(20, "hello", {"pad": "x" * (2 * MAX_MESSAGE)}),
        wire.INVALID_REQUEST,
        None,
        id="oversized",
    ),
    pytest.param(b"x" * (50 * MAX_MESSAGE), wire.INVALID_REQUEST, None, id="oversized-garbage"),
]


@pytest.fixture(scope="module")
def small_messages(tmp_path_factory: pytest.TempPathFactory, caps_cache: Path) -> Iterator[Daemon]:
    """A daemon that takes messages of up to MAX_MESSAGE bytes (one for these tests: they
    start no VM)."""
    state = tmp_path_factory.mktemp("small") / "state"
    daemon = Daemon(state, caps_cache=caps_cache, config=f"[daemon]\nmax_message = {MAX_MESSAGE}\n")
    yield daemon.start()
    assert daemon.stop() == 0


@pytest.mark.parametrize(("line", "code", "reply_id"), MALFORMED)
def test_a_malformed_request_gets_an_error_and_the_connection_goes_on(
    small_messages, line, code, reply_id
):
    with Raw(small_messages.socket) as raw:
        raw.send(line + b"\n")
        reply = raw.next_reply()
        assert error_of(reply)[0] == code, reply
        assert reply["id"] == reply_id
        if code == wire.INVALID_PARAMS:
            assert error_of(reply)[1] == "InvalidArgError"
        assert raw.hello()["read_only"] is False
    assert not tracebacks(small_messages)


def test_bad_notifications_get_no_answer_and_the_connection_goes_on(small_messages):
    """Requests without an id are notifications: nothing answers them, even bad ones."""
    with Raw(small_messages.socket) as raw:
        raw.send(b'{"jsonrpc": "2.0", "method": "no_such_call"}\n')
        raw.send(b'{"jsonrpc": "2.0", "method": "domain_destroy", "params": {"uuid": 1}}\n')
        raw.send(b'{"jsonrpc": "2.0", "method": "keepalive.pong"}\n')
        raw.send(req(1, "hello") + b"\n")
        reply = raw.next_reply()
        assert reply["id"] == 1 and "result" in reply


def test_a_message_at_the_limit_passes_and_one_over_it_in_pieces_does_not(small_messages):
    with Raw(small_messages.socket) as raw:
        head = req(1, "hello", {"pad": ""})
        exact = req(1, "hello", {"pad": "x" * (MAX_MESSAGE - len(head))})
        assert len(exact) == MAX_MESSAGE
        raw.send(exact + b"\n")
        assert "result" in raw.next_reply()  # hello takes (and ignores) any params
        # One over the limit, sent in pieces: the daemon skips it as it comes in.
        over = req(2, "hello", {"pad": "x" * (3 * MAX_MESSAGE)})
        for i in range(0, len(over), 100):
            raw.send(over[i : i + 100])
        raw.send(b"\n")
        assert error_of(raw.next_reply())[0] == wire.INVALID_REQUEST
        raw.hello()


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_arguments_nested_as_deep_as_the_daemon_parses_get_an_answer(daemons, log_format):
    """Near the depth where JSON parsing gives up, every call gets an answer (it has no such
    domain, or the JSON is too deep); logging what such a call asked crashes nothing."""
    daemon = daemons(args=("--log-format", log_format))
    answers = set()
    with Raw(daemon.socket) as raw:
        for depth in range(850, 1100):
            arguments = b'{"a":' * depth + b"1" + b"}" * depth
            raw.send(
                b'{"jsonrpc":"2.0","id":%d,"method":"domain_qmp","params":{"uuid":"%s",'
                b'"command":"stop","arguments":%s}}\n'
                % (depth, str(uuidlib.uuid4()).encode(), arguments)
            )
            reply = raw.next_reply()
            assert reply["id"] in (depth, None)
            answers.add(error_of(reply))
        raw.hello()
    # The sweep crosses the limit: answers from the driver, then parse errors.
    assert {(42, "NoDomainError"), (wire.PARSE_ERROR, None)} <= answers
    assert answers <= {(42, "NoDomainError"), (wire.PARSE_ERROR, None), (8, "InvalidArgError")}
    assert not tracebacks(daemon)


# -- 4. fuzzing ----------------------------------------------------------------------------------

FUZZ_MESSAGES = 10_000
FUZZ_BATCH = 25

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=4,
)


def fuzz_messages(vm_uuid: str) -> st.SearchStrategy[bytes]:
    """Lines a client might send: requests for random methods with random or plausible
    arguments, and requests mutated, truncated, nested deeply, or not JSON at all.

    The VM's UUID appears only in reading calls: a mutating call on it would legitimately
    change the VM, which the test checks is untouched."""

    names = st.sampled_from(["", "vm1", "x" * 300, "qemu-argv", "<domain/>", "stop", "quit"])

    def typed(type_: Any, reading: bool) -> st.SearchStrategy[Any]:
        """A value of the declared type (an argument the call may get as far as the driver
        with), or now and then any JSON value."""
        if type_ is bool:
            value: st.SearchStrategy[Any] = st.booleans()
        elif type_ is int:
            value = st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
        elif type_ is str:
            value = names | st.text(max_size=20) | st.uuids().map(str)
            if reading:
                value = value | st.just(vm_uuid)
        elif typing.get_origin(type_) in (types.UnionType, typing.Union):
            value = st.one_of([typed(t, reading) for t in typing.get_args(type_)])
        elif type_ is type(None):
            value = st.none()
        elif typing.get_origin(type_) is dict:
            value = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
        else:
            value = json_values
        return st.one_of(value, value, value, json_values)

    @functools.cache
    def params(name: str) -> st.SearchStrategy[Any]:
        c = protocol.CALLS.get(name)
        if c is None:  # the session's own methods
            known = {
                "sub": st.integers(0, 3),
                "since": st.none() | st.integers(-1, 10),
                "kinds": st.none() | st.lists(st.sampled_from([k.value for k in EVENT_KINDS])),
                "domain": st.none() | names | st.just(vm_uuid),
            }
            any_keys = st.dictionaries(st.sampled_from(sorted(known)), json_values)
            return st.fixed_dictionaries({}, optional=known) | any_keys | json_values
        fields = {p: typed(t, not c.mutates) for p, t in c.params}
        complete = st.fixed_dictionaries(fields)
        some = st.fixed_dictionaries({}, optional=fields)
        extra = st.fixed_dictionaries(fields, optional={"flags": json_values})
        return st.one_of(complete, complete, complete, some, extra, json_values)

    # Hypothesis draws the first of a list most often: a call whose arguments are any JSON.
    calls = sorted(protocol.CALLS, key=lambda name: (name != "domain_qmp", name))
    method = st.one_of(
        st.sampled_from(calls),
        st.sampled_from(calls),
        st.sampled_from(SESSION_METHODS),
        st.text(max_size=12),
    )
    msg_id = st.one_of(st.integers(), st.integers(), st.text(max_size=6), json_values)

    @st.composite
    def request(draw: st.DrawFn) -> bytes:
        name = draw(method)
        # Hypothesis draws 0 most often: 0 is a well-formed request.
        body: dict[str, Any] = {"jsonrpc": "2.0"}
        if draw(st.integers(0, 9)) == 9:
            body["jsonrpc"] = draw(json_values)
        if draw(st.integers(0, 9)) < 9:  # else a notification: no answer
            body["id"] = draw(msg_id)
        body["method"] = name
        if draw(st.integers(0, 9)) < 9:
            body["params"] = draw(params(name))
        return json.dumps(body).encode()

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        line = bytearray(draw(request()))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(line) - 1))
            line[at] = draw(st.integers(0, 255))
        return bytes(line)

    @st.composite
    def truncated(draw: st.DrawFn) -> bytes:
        line = draw(request())
        return line[: draw(st.integers(0, len(line) - 1))]

    @st.composite
    def nested(draw: st.DrawFn) -> bytes:
        # Around the depth where parsing gives up, and anywhere.
        depth = draw(st.integers(800, 1100) | st.integers(1, 20_000))
        shape = draw(st.sampled_from(["array", "object", "params"]))
        if shape == "array":
            return b"[" * depth + b"]" * depth
        inner = b'{"a":' * depth + b"1" + b"}" * depth
        if shape == "object":
            return inner
        return (
            b'{"jsonrpc":"2.0","id":1,"method":"domain_qmp","params":{"uuid":"'
            + str(uuidlib.uuid4()).encode()
            + b'","command":"stop","arguments":'
            + inner
            + b"}}"
        )

    huge_numbers = st.sampled_from(
        [
            b'{"jsonrpc":"2.0","id":1e999,"method":"hello"}',
            b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"hello"}',
            b'{"jsonrpc":"2.0","id":1,"method":"events.subscribe","params":{"sub":1,"since":'
            + b"9" * 400
            + b"}}",
            b'{"jsonrpc":"2.0","id":2,"method":"list_all_domains","params":{"active":1e308}}',
            b'{"jsonrpc":"2.0","id":-0.0,"method":"hello"}',
        ]
    )
    line = st.one_of(
        request(),
        request(),
        request(),
        request(),
        mutated(),
        truncated(),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        nested(),
        huge_numbers,
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
    return line.map(lambda b: b + b"\n")


def test_fuzzed_messages_crash_nothing_and_disturb_no_vm(daemons, test_guest, tmp_path):
    daemon = daemons(config=f"[daemon]\nmax_message = {64 * 1024}\n", args=("--log-format", "json"))
    with Raw(daemon.socket) as setup:
        vm_uuid = start_paused_raw(setup, test_guest, tmp_path)
        pid = qemu_pid(daemon.state_dir, "vm1")
        state = setup.call("domain_state", uuid=vm_uuid)
        assert state == [S.PAUSED.value, asvirt.PausedReason.USER.value]
    clients = [Raw(daemon.socket), Raw(daemon.socket), Raw(daemon.socket_ro)]
    sent = [0]
    syncs = itertools.count()
    #: Per client, the request that follows its last batch, and that batch.
    pending: dict[int, tuple[str, list[bytes]]] = {}

    def survived(k: int) -> None:
        """The daemon answers the request after client k's last batch: the connection
        survived everything in it (the daemon read the batch meanwhile, while the next
        one was made: the two processes work at once)."""
        if k not in pending:
            return
        sync_id, batch = pending.pop(k)
        try:
            assert "result" in clients[k].reply_to(sync_id)
        except (AssertionError, OSError) as err:
            raise AssertionError(
                f"the connection did not survive {batch!r}"[:3000] + "\n" + daemon.log_text()
            ) from err

    @settings(
        max_examples=FUZZ_MESSAGES // FUZZ_BATCH,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(fuzz_messages(vm_uuid), min_size=FUZZ_BATCH, max_size=FUZZ_BATCH))
    def send(batch: list[bytes]) -> None:
        i = next(syncs)
        k = i % len(clients)
        survived(k)
        sync_id = f"sync-{i}"
        clients[k].send(b"".join(batch) + req(sync_id, "hello") + b"\n")
        pending[k] = (sync_id, batch)
        sent[0] += len(batch)

    began, cpu = time.monotonic(), cpu_seconds(daemon.pid)
    try:
        send()
        for k in list(pending):
            survived(k)
    finally:
        elapsed, cpu = time.monotonic() - began, cpu_seconds(daemon.pid) - cpu
        for raw in clients:
            raw.close()
        print(f"\nfuzz: {sent[0]} messages in {elapsed:.1f} s (the daemon's CPU: {cpu:.1f} s)")
    assert sent[0] >= FUZZ_MESSAGES
    with Raw(daemon.socket) as after:
        after.hello()
        assert after.call("domain_state", uuid=vm_uuid) == state
        assert [
            d["name"] for d in after.call("list_all_domains", active=None, persistent=None)
        ] == ["vm1"]
    assert qemu_pid(daemon.state_dir, "vm1") == pid and pid_alive(pid)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert not tracebacks(daemon), tracebacks(daemon)[:5]
    with Raw(daemon.socket) as done:
        done.call("domain_destroy", uuid=vm_uuid)


async def test_a_client_older_than_an_event_kind_skips_it_and_goes_on(
    daemons, test_guest, tmp_path, caplog, monkeypatch
):
    # The client is made older than the daemon: its codec no longer knows device-removed
    # (as a client from before that kind was added). The daemon sends real events, over its
    # real socket; the client skips the kind it does not know, warns once, and delivers the
    # events after it.
    import logging

    from asvirt.events import codec

    caplog.set_level(logging.WARNING, logger="asvirt")
    old_kinds = {k: v for k, v in codec._KINDS.items() if k != "device-removed"}
    monkeypatch.setattr(codec, "_KINDS", old_kinds)
    daemon = daemons()
    kinds = {asvirt.EventKind.LIFECYCLE, asvirt.EventKind.DEVICE_REMOVED}
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path)
        async with (
            conn.subscribe(dom, kinds=kinds) as events,
            conn.subscribe(dom, kinds={asvirt.EventKind.QMP}) as qmp_events,
        ):
            for n in (1, 2):
                await dom.qmp("device_add", {"driver": "usb-tablet", "id": f"t{n}", "bus": "usb.0"})
                await dom.qmp("device_del", {"id": f"t{n}"})
                # QEMU finishes the unplug a moment after device_del returns: destroying
                # before then would mean no DEVICE_DELETED at all.
                with trio.fail_after(10):
                    async for ev in qmp_events:
                        if ev.data.get("event") == "DEVICE_DELETED":
                            break
            await dom.destroy()
            with trio.fail_after(10):
                ev = await events.receive()
        assert ev.kind is asvirt.EventKind.LIFECYCLE
        assert ev.type is asvirt.LifecycleEvent.STOPPED
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per kind, not per event
    assert "device-removed" in warnings[0]


# -- 5. keepalive, and clients that do not read ---------------------------------------------------

INTERVAL = 0.3


@pytest.mark.parametrize("count", [1, 3])
async def test_keepalive_drops_a_silent_client_and_keeps_one_that_answers(daemons, count):
    daemon = daemons(
        config=f"[daemon]\nkeepalive_interval = {INTERVAL}\nkeepalive_count = {count}\n",
        args=("--log-format", "json"),
    )
    async with asvirt.open(daemon.uri) as conn:
        for _ in range(2):
            # Each silent client gets `count` pings, an interval apart, and is dropped an
            # interval after the last; the real client, connected all along and as silent
            # (it only answers pings), stays.
            began = time.monotonic()
            with Raw(daemon.socket) as silent:
                seen = await trio.to_thread.run_sync(silent.until_closed)
            elapsed = time.monotonic() - began
            assert [m["method"] for m in seen] == ["keepalive.ping"] * count
            assert elapsed >= INTERVAL * (count + 1)
        assert conn.hostname()
        assert await conn.list_all_domains() == []
    records = daemon.log_records()
    dropped = [
        r for r in records if r["message"] == "client stopped answering keepalives; disconnecting"
    ]
    assert len(dropped) == 2
    connected = [r for r in records if r["message"] == "client connected"]
    # The real client connected once (never dropped, so never reconnected); the two silent
    # ones; and Daemon.start's probe of the socket.
    assert len(connected) == 4


async def test_a_daemon_that_polled_for_a_busy_client_sleeps_once_it_is_quiet(daemons):
    # The daemon keeps looking for the next request for a while after each one (up to
    # busy_poll_us, longer the closer requests follow each other); a client making calls
    # back to back makes it look the longest it may. Once the client stops, the daemon must
    # stop looking and sleep: its CPU time over a quiet second stays near nothing (looking
    # without end would cost the whole second).
    daemon = daemons(config="[daemon]\nbusy_poll_us = 2000\n")
    with Raw(daemon.socket) as raw:
        raw.hello()

        def back_to_back() -> None:
            for _ in range(2000):
                assert raw.call("list_all_domains", active=None, persistent=None) == []

        await trio.to_thread.run_sync(back_to_back)
        before = cpu_seconds(daemon.pid)
        await trio.sleep(1.0)  # the quiet second measured, not a wait for something
        assert cpu_seconds(daemon.pid) - before < 0.1
        # Still awake to the client.
        assert raw.call("list_all_domains", active=None, persistent=None) == []


async def test_a_client_that_does_not_read_is_dropped_and_memory_stays_bounded(
    daemons, test_guest, tmp_path
):
    backlog = 64
    daemon = daemons(config=f"[daemon]\nmax_backlog = {backlog}\n", args=("--log-format", "json"))

    def last_seq() -> int:
        with Raw(daemon.socket) as raw:
            return int(raw.hello()["last_seq"])

    def dropped() -> bool:
        # Only the daemon's log says so (the client, not reading, cannot know yet).
        return any(
            r["message"] == "client does not read; disconnecting" for r in daemon.log_records()
        )

    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path, "flood")
        with Raw(daemon.socket) as lazy:
            lazy.call("events.subscribe", sub=1, domain=None, kinds=[k.value for k in EVENT_KINDS])
            first = last_seq()
            rss_before = memory_kib(daemon.pid)["VmRSS"]
            # Stop and cont make events (QMP's and lifecycle ones) for a client that reads
            # none of them, until the socket's buffers and its backlog are full.
            pairs = 0
            while not dropped():
                for _ in range(25):
                    await dom.qmp("stop")
                    await dom.qmp("cont")
                pairs += 25
                assert pairs < 5000, "the client that does not read was never dropped"
            memory = memory_kib(daemon.pid)
            events = last_seq() - first
            # It gets what was in the socket's buffers, then the end of the connection.
            received = await trio.to_thread.run_sync(lazy.until_closed)
        print(
            f"\nbacklog: {events} events, {len(received)} received before the drop; daemon RSS "
            f"{rss_before} KiB before, {memory['VmRSS']} KiB after, peak {memory['VmHWM']} KiB"
        )
        assert 0 < len(received) < events
        said = [r for r in daemon.log_records() if r["message"].startswith("client does not read")]
        assert len(said) == 1, said  # once, however many events came meanwhile
        assert memory["VmHWM"] - rss_before < 16 * 1024
        # The daemon and the other client go on.
        assert (await dom.state())[0] is S.RUNNING
        await dom.destroy()


# -- 6. who the client is (SO_PEERCRED) ------------------------------------------------------

CLIENT = """
import sys, trio, asvirt

async def main(uri, action):
    async with asvirt.open(uri) as conn:
        if action == "define":
            await conn.define_xml(sys.stdin.read())
        else:
            try:
                await (await conn.lookup_by_name("vm1")).destroy()
            except asvirt.OperationDeniedError:
                print("denied")

trio.run(main, *sys.argv[1:])
"""


def reachable_by_others(path: Path) -> bool:
    """Whether a user who is neither the owner nor in its group can reach ``path``: every
    directory above it searchable by others (a checkout in ``mktemp -d`` is not)."""
    return all(p.stat().st_mode & 0o001 for p in Path(path).absolute().parents)


def run_client(
    uri: str, action: str, *, stdin: str = "", user: int | None = None
) -> tuple[int, str]:
    """A client in a process of its own (as ``user``, through setpriv, as QEMU is run): its
    pid and what it printed."""
    argv = [sys.executable, "-c", CLIENT, uri, action]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(stdin, timeout=60)
    assert proc.returncode == 0, err
    return proc.pid, out


async def test_the_log_names_the_client_of_a_mutating_call(daemons, test_guest, tmp_path):
    daemon = daemons(args=("--log-format", "json"))
    xml = paused_xml(test_guest, tmp_path, "vm1")
    pid, _ = await trio.to_thread.run_sync(lambda: run_client(daemon.uri, "define", stdin=xml))
    (call,) = [r for r in daemon.log_records() if r["message"] == "call"]
    assert call["method"] == "define_xml"
    assert (call["uid"], call["pid"]) == (os.getuid(), pid)
    assert call["level"] == "info" and isinstance(call["client"], int)
    assert "xml" not in call  # a domain's XML may hold secrets
    (connected,) = [
        r for r in daemon.log_records() if r["message"] == "client connected" and r["pid"] == pid
    ]
    assert connected["client"] == call["client"] and connected["read_only"] is False


async def test_the_log_names_another_user_refused_on_the_read_only_socket(
    daemons, test_guest, tmp_path
):
    if os.geteuid() != 0:
        pytest.skip("running a client as another user needs root")
    for needed in (REPO, Path(sys.executable)):
        if not reachable_by_others(needed):
            pytest.skip(f"another user cannot reach {needed} (a directory above it is private)")
    nobody = 65534
    # The read-only socket where another user can reach it: a directory open to all (the
    # state directory is the daemon's own).
    public = Path(f"/tmp/asvirt-test-ro-{os.getpid()}")
    public.mkdir(mode=0o755)
    try:
        daemon = daemons(args=("--log-format", "json", "--socket-ro", str(public / "ro")))
        async with asvirt.open(daemon.uri) as conn:
            await conn.define_xml(paused_xml(test_guest, tmp_path, "vm1"))
        ro_uri = f"qemu+unix:///system?socket={public / 'ro'}"
        pid, out = await trio.to_thread.run_sync(lambda: run_client(ro_uri, "destroy", user=nobody))
        assert out.strip() == "denied"
        (refused,) = [r for r in daemon.log_records() if r["message"] == "call refused"]
        assert refused["method"] == "domain_destroy"
        assert (refused["uid"], refused["pid"]) == (nobody, pid)
    finally:
        for leftover in public.iterdir():
            leftover.unlink()
        public.rmdir()


# -- 7. stopping ------------------------------------------------------------------------------


async def test_sigterm_leaves_vms_running_and_the_next_daemon_reattaches(
    daemons, test_guest, tmp_path
):
    daemon = daemons()
    paused_again = (("RESUMED", "UNPAUSED"), ("SUSPENDED", "PAUSED"))
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path)
        pid = qemu_pid(daemon.state_dir, "vm1")
        async with conn.subscribe(kinds=LC, since=0) as events:
            await dom.resume()
            await dom.suspend()
            before = await lifecycle_until(events, *paused_again)
        assert daemon.stop() == 0
    assert pid_alive(pid) and qemu_pid(daemon.state_dir, "vm1") == pid
    assert "Traceback" not in daemon.log_text(whole=True)

    daemon.start()
    async with asvirt.open(daemon.uri) as conn:
        dom = await conn.lookup_by_name("vm1")
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        assert (await dom.qmp("query-status"))["status"] == "paused"  # its monitor answers
        assert qemu_pid(daemon.state_dir, "vm1") == pid
        # Nothing happened to it while no daemon ran, and nothing was journaled: the next
        # event after those from before is the next thing done to it.
        async with conn.subscribe(kinds=LC, since=0) as events:
            await dom.resume()
            after = await lifecycle_until(events, *paused_again, ("RESUMED", "UNPAUSED"))
        assert after == [*before, ("RESUMED", "UNPAUSED")]
        await dom.destroy()
    assert not pid_alive(pid)


@pytest.mark.guest
async def test_shutdown_vms_powers_guests_off_and_destroys_those_that_ignore_it(
    daemons, test_guest, tmp_path
):
    timeout = 5.0
    daemon = daemons(config=f"[daemon]\nshutdown_timeout = {timeout}\n", args=("--shutdown-vms",))
    async with asvirt.open(daemon.uri) as conn:
        for name, acpi in (("obeys", "on"), ("ignores", "ignore")):
            dom = await conn.define_xml(
                test_guest.xml(name, tmp_path / f"{name}.serial", acpi=acpi)
            )
            await dom.start()
        pids = {name: qemu_pid(daemon.state_dir, name) for name in ("obeys", "ignores")}
        for name in pids:
            await wait_for_serial(tmp_path / f"{name}.serial", timeout=120)
    began = time.monotonic()
    assert daemon.stop(timeout=120) == 0
    took = time.monotonic() - began
    assert not any(pid_alive(pid) for pid in pids.values())
    assert took >= timeout  # the one that ignores ACPI had its time
    # The journal says how each one stopped.
    async with asvirt.open(embed_uri(daemon.state_dir)) as conn:
        async with conn.subscribe(kinds=LC, since=0) as events:

            def both_stopped(seen: list[asvirt.DomainEvent]) -> bool:
                return {e.domain for e in seen if lifecycle(e)[0] == "STOPPED"} == set(pids)

            seen = await collect_until(events, both_stopped)
        stopped = {e.domain: lifecycle(e) for e in seen if lifecycle(e)[0] == "STOPPED"}
        assert stopped == {"obeys": ("STOPPED", "SHUTDOWN"), "ignores": ("STOPPED", "DESTROYED")}
        for name in pids:
            assert await (await conn.lookup_by_name(name)).state() in (
                (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN),
                (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED),
            )


# -- 8. priorities ------------------------------------------------------------------------------


async def test_high_priority_calls_do_not_wait_behind_a_hung_qemu(daemons, test_guest, tmp_path):
    daemon = daemons(
        config="[daemon]\nmax_workers = 1\n",
        node_config="[qemu]\nqmp_timeout = 20.0\ndestroy_grace = 1.0\n",
        args=("--log-format", "json"),
    )
    async with asvirt.open(daemon.uri) as conn:
        dom = await start_paused(conn, test_guest, tmp_path, "hung")
        await dom.resume()
        pid = qemu_pid(daemon.state_dir, "hung")
        os.kill(pid, signal.SIGSTOP)
        try:
            outcomes: dict[str, BaseException | None] = {}

            async def pending(what: str, fn: Callable[[], Any]) -> None:
                try:
                    await fn()
                    outcomes[what] = None
                except asvirt.AsvirtError as err:
                    outcomes[what] = err

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending, "suspend", dom.suspend)

                def suspend_running() -> bool:
                    # The daemon logs a mutating call as it starts, before it waits for a
                    # worker; nothing tells the client.
                    return any(
                        r["message"] == "call" and r["method"] == "domain_suspend"
                        for r in daemon.log_records()
                    )

                await wait_for(suspend_running)
                # The only worker is taken: a call of normal priority waits for it ...
                nursery.start_soon(
                    pending,
                    "normalize",
                    lambda: conn.domain_xml_normalize(paused_xml(test_guest, tmp_path, "other")),
                )
                # ... but these answer at once.
                with trio.fail_after(3):
                    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
                    assert (await dom.info()).state is S.RUNNING
                    assert await conn.lookup_by_name("hung") == dom
                    assert await conn.lookup_by_uuid(dom.uuid) == dom
                    assert await conn.list_all_domains() == [dom]
                    assert await dom.is_active()
                    assert (await dom.xml_desc()).startswith("<domain")
                assert "suspend" not in outcomes and "normalize" not in outcomes
                with trio.fail_after(8):  # SIGTERM is held while stopped: SIGKILL after 1 s
                    await dom.destroy()
                assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
            assert isinstance(outcomes["suspend"], asvirt.AsvirtError)  # cut short by destroy
            assert outcomes["normalize"] is None
        finally:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)


async def test_the_session_daemon_starts_in_a_home_with_no_xdg_directories(tmp_path, monkeypatch):
    # A fresh account: no ~/.config, ~/.cache, and $XDG_STATE_HOME / $XDG_RUNTIME_DIR set
    # to directories whose parents do not exist yet either.
    home = tmp_path / "home"
    runtime = session_runtime_dir(tmp_path) / "user" / "1000"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "var" / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    sock = runtime / "asvirt" / "asvirt-sock"
    try:
        async with asvirt.open("qemu:///session") as conn:  # starts asvirtd --session
            assert await conn.list_all_domains() == []
        # What was missing was made, private to the user (XDG: mode 0700).
        for made in (
            home,
            home / ".config",
            home / ".cache",
            tmp_path / "var",
            tmp_path / "var" / "state",
            tmp_path / "var" / "state" / "asvirt",
            runtime.parent,
            runtime,
        ):
            assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
        assert (tmp_path / "var" / "state" / "asvirt" / "lib" / "events").is_dir()
    finally:
        if sock.exists():
            pid = peer_pid(sock)
            os.kill(pid, signal.SIGTERM)
            await trio.to_thread.run_sync(os.waitpid, pid, 0)  # our child: the client spawned it
        shutil.rmtree(runtime.parent.parent, ignore_errors=True)
