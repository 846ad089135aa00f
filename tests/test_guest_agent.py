"""The guest agent: Debian's qemu-ga in the test guest (TCG), driven as virsh users drive it.

The test guest starts qemu-ga on the virtio-serial port ``org.qemu.guest_agent.0`` when its
domain has that channel (unless ``asvirt.agent=off``); everything here waits for the agent's
AGENT_LIFECYCLE event, never for time.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import trio

import asvirt
from asvirt import AgentLifecycleReason as Reason
from asvirt import AgentLifecycleState as State
from asvirt import InterfaceAddressSource, ShutdownMode

from .guest import AGENT_CHANNEL_XML, define, guest_exec, wait_for_serial
from .helpers import collect_until, destroy_all, embed_uri, lifecycle_until, run_cli

pytestmark = [pytest.mark.qemu, pytest.mark.guest]

K = asvirt.EventKind
#: A NIC on QEMU's user network: the guest gets 10.0.2.15/24 from QEMU's own DHCP server.
USER_NIC = """
    <interface type='user'>
      <mac address='52:54:00:aa:bb:01'/>
      <model type='virtio'/>
    </interface>"""


def agent_event(state: State, reason: Reason | None = None):
    def done(seen: list[asvirt.DomainEvent]) -> bool:
        return any(
            ev.kind is K.AGENT_LIFECYCLE
            and ev.data["state"] == state
            and (reason is None or ev.data["reason"] == reason)
            for ev in seen
        )

    return done


async def start_with_agent(conn, test_guest, tmp_path, **kw):
    """Define and start the guest with the agent's channel; returns once the agent is
    connected (its AGENT_LIFECYCLE event), with the events seen."""
    kw["devices"] = AGENT_CHANNEL_XML + kw.get("devices", "")
    dom, serial = await define(conn, test_guest, tmp_path, **kw)
    async with conn.subscribe(dom, kinds={K.AGENT_LIFECYCLE}) as events:
        await dom.start()
        seen = await collect_until(events, agent_event(State.CONNECTED), timeout=60)
    return dom, serial, seen


async def test_agent_commands(conn, test_guest, tmp_path):
    dom, serial, seen = await start_with_agent(
        conn, test_guest, tmp_path, devices=USER_NIC, cmdline="asvirt.net=dhcp"
    )
    # At start QEMU says the port is closed (libvirt reports that too), then qemu-ga opens it.
    assert [(ev.data["state"], ev.data["reason"]) for ev in seen] == [
        (State.DISCONNECTED, Reason.DOMAIN_STARTED),
        (State.CONNECTED, Reason.CHANNEL),
    ]
    assert seen[-1].describe() == (
        "event 'agent-lifecycle' for domain 'vm1': state: 'connected' reason: 'channel'"
    )
    assert "state='connected'" in await dom.xml_desc()

    # Raw commands, as virsh qemu-agent-command prints them.
    assert await dom.agent_command('{"execute": "guest-ping"}') == '{"return":{}}'
    info = json.loads(await dom.agent_command('{"execute":"guest-info"}', timeout=10))
    assert info["return"]["version"].startswith("7.")
    with pytest.raises(asvirt.InternalError) as err:
        await dom.agent_command('{"execute": "guest-no-such-command"}')
    assert err.value.code == asvirt.ErrorCode.INTERNAL_ERROR
    assert "unable to execute QEMU agent command 'guest-no-such-command'" in str(err.value)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.agent_command("not json")

    # Interface addresses as the guest sees them.
    await wait_for_serial(serial, "ASVIRT-NET-UP")
    ifaces = {i.name: i for i in await dom.interface_addresses(InterfaceAddressSource.AGENT)}
    eth0 = ifaces["eth0"]
    assert eth0.hwaddr == "52:54:00:aa:bb:01"
    assert [(a.type, a.addr, a.prefix) for a in eth0.addrs if a.type == 0] == [
        (asvirt.drivers.base.IPAddrType.IPV4, "10.0.2.15", 24)
    ]
    assert "lo" in ifaces

    # Filesystems: the initramfs (rootfs) cannot be frozen, so qemu-ga freezes none of them
    # and the guest stays thawed; the calls' shapes are what is checked.
    frozen = await dom.fs_freeze()
    assert frozen == 0
    assert await dom.fs_thaw() == 0
    status = json.loads(await dom.agent_command('{"execute":"guest-fsfreeze-status"}'))
    assert status == {"return": "thawed"}

    # The guest's clock.
    seconds, _ = await dom.get_time()
    assert abs(seconds - time.time()) < 120
    await dom.set_time(2_000_000_000, 5)
    seconds, _ = await dom.get_time()
    assert 2_000_000_000 <= seconds < 2_000_000_000 + 60
    await dom.set_time(int(time.time()))
    seconds, _ = await dom.get_time()
    assert abs(seconds - time.time()) < 60
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_time(1, 1_000_000_000)

    # Shut down through the agent: qemu-ga runs the guest's shutdown.
    async with conn.subscribe(dom) as events:
        await dom.shutdown(mode=ShutdownMode.AGENT)
        await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)
    assert (await dom.state())[0] is asvirt.DomainState.SHUTOFF


async def test_agent_that_stops_answering(conn, test_guest, tmp_path):
    """An agent that hangs fails calls with AGENT_UNRESPONSIVE after their timeout; the
    domain and its monitor are not held up; once it answers again, it is in step."""
    dom, _, _ = await start_with_agent(conn, test_guest, tmp_path, serial="pty")
    stop = {"path": "/bin/busybox", "arg": ["killall", "-STOP", "qemu-ga"]}
    # qemu-ga stops itself (it may not even answer this one); when the child it runs does
    # that is announced by nothing: ask until it no longer answers.
    with pytest.raises(asvirt.AgentUnresponsiveError):
        await dom.agent_command(json.dumps({"execute": "guest-exec", "arguments": stop}))
        for _ in range(30):
            await dom.agent_command('{"execute": "guest-ping"}', timeout=2)
    began = trio.current_time()
    with pytest.raises(asvirt.AgentUnresponsiveError) as err:
        await dom.agent_command('{"execute": "guest-ping"}', timeout=1)
    assert 1 <= trio.current_time() - began < 5
    assert err.value.code == asvirt.ErrorCode.AGENT_UNRESPONSIVE
    assert str(err.value) == "Guest agent is not responding: Guest agent not available for now"
    # The domain itself is not held up.
    assert (await dom.state())[0] is asvirt.DomainState.RUNNING
    await dom.qmp("query-status")
    # Woken up (from the serial console's shell), the agent answers the questions it
    # missed first: they are dropped (each exchange begins with guest-sync-delimited).
    async with await dom.open_console() as console:
        await console.send_all(b"killall -CONT qemu-ga; echo woken-$((6 * 7))\n")
        with trio.fail_after(60):
            seen = b""
            while b"woken-42" not in seen:
                seen += await console.receive_some()
    assert await dom.agent_command('{"execute": "guest-ping"}') == '{"return":{}}'
    info = json.loads(await dom.agent_command('{"execute": "guest-info"}'))
    assert "version" in info["return"]
    # Stopped again, so that the default shutdown below finds no agent.
    with pytest.raises(asvirt.AgentUnresponsiveError):
        await dom.agent_command(json.dumps({"execute": "guest-exec", "arguments": stop}))
        for _ in range(30):
            await dom.agent_command('{"execute": "guest-ping"}', timeout=2)
    # Shutdown in the default mode falls back to the power button when the agent fails.
    async with conn.subscribe(dom) as events:
        await dom.shutdown()
        await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)


async def test_without_agent(conn, test_guest, tmp_path):
    """A guest whose agent never starts: calls fail at once with AGENT_UNRESPONSIVE (QEMU
    said the port is closed); a domain without the channel: ARGUMENT_UNSUPPORTED."""
    dom, serial = await define(
        conn, test_guest, tmp_path, devices=AGENT_CHANNEL_XML, cmdline="asvirt.agent=off"
    )
    plain, _ = await define(conn, test_guest, tmp_path, name="plain", action="poweroff")
    await dom.start()
    await wait_for_serial(serial)
    began = trio.current_time()
    with pytest.raises(asvirt.AgentUnresponsiveError) as err:
        await dom.fs_freeze()
    assert trio.current_time() - began < 1
    assert "QEMU guest agent is not connected" in str(err.value)
    with pytest.raises(asvirt.AgentUnresponsiveError):
        await dom.shutdown(mode=ShutdownMode.AGENT)
    async with conn.subscribe(dom) as events:
        await dom.shutdown()  # the agent is not there: the power button
        await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)

    await plain.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await plain.agent_command('{"execute": "guest-ping"}')  # paused: cannot answer
    await plain.resume()
    with pytest.raises(asvirt.ArgumentUnsupportedError) as err2:
        await plain.agent_command('{"execute": "guest-ping"}')
    assert err2.value.code == asvirt.ErrorCode.ARGUMENT_UNSUPPORTED
    assert str(err2.value) == "QEMU guest agent is not configured"
    await plain.destroy()


async def test_cli(root, fast_config, test_guest, tmp_path):
    """virsh's agent commands, on a guest a previous supervisor started (the agent's state
    is found again from QEMU when the CLI attaches)."""
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _, _ = await start_with_agent(conn, test_guest, tmp_path)
    try:
        out = run_cli(root, "qemu-agent-command", "vm1", '{"execute":"guest-ping"}').stdout
        assert out == '{"return":{}}\n'
        out = run_cli(root, "qemu-agent-command", "vm1", "--pretty", '{"execute":"guest-ping"}')
        assert out.stdout == '{\n  "return": {}\n}\n'
        assert run_cli(root, "domfsfreeze", "vm1").stdout == "Froze 0 filesystem(s)\n\n"
        assert run_cli(root, "domfsthaw", "vm1").stdout == "Thawed 0 filesystem(s)\n\n"
        assert run_cli(root, "domtime", "vm1", "--time", "2000000000").stdout == ""
        out = run_cli(root, "domtime", "vm1").stdout
        assert out.startswith("Time: 2000000") and out.endswith("\n")
        run_cli(root, "domtime", "vm1", "--now")
        assert run_cli(root, "domtime", "vm1", "--pretty").stdout.startswith("Time: 20")
        assert run_cli(root, "domhostname", "vm1").stdout == "asvirt-guest\n\n"
        out = run_cli(root, "domhostname", "vm1", "--source", "agent").stdout
        assert out == "asvirt-guest\n\n"
        bad = run_cli(root, "domhostname", "vm1", "--source", "lease", check=False)
        assert bad.returncode == 1
        assert bad.stderr == (
            "error: failed to get hostname\nerror: no hostname found for domain vm1\n"
        )
        bad = run_cli(root, "domhostname", "vm1", "--source", "arp", check=False)
        assert bad.returncode == 1 and bad.stderr == "error: Unknown data source 'arp'\n"
        bad = run_cli(root, "domfsinfo", "vm1", check=False)
        assert bad.returncode == 1
        assert bad.stderr == "error: No filesystems are mounted in the domain\n"
        out = run_cli(root, "guestinfo", "vm1", "--hostname", "--os").stdout
        assert out.startswith("os.id               : asvirt-guest\n")
        assert "hostname            : asvirt-guest\n" in out
        out = run_cli(root, "guestinfo", "vm1").stdout
        assert "user.count          : 0\n" in out and "timezone.offset     : 0\n" in out
        out = run_cli(root, "set-user-password", "vm1", "asvirt", "pw").stdout
        assert out == "Password set successfully for asvirt in vm1\n"
        bad = run_cli(root, "set-user-password", "vm1", "nosuch", "pw", check=False)
        assert bad.returncode == 1 and "failed to set user password" in bad.stderr
        bad = run_cli(root, "dompmsuspend", "vm1", "bogus", check=False)
        assert bad.returncode == 1 and bad.stderr == "error: Invalid target\n"
        bad = run_cli(root, "dompmsuspend", "vm1", "mem", "--duration", "5", check=False)
        assert bad.stderr == (
            "error: Domain 'vm1' could not be suspended\n"
            "error: invalid argument: Duration not supported. Use 0 for now\n"
        )
        # Awake already: QEMU refuses (the suspend itself is test_pm_suspend_and_wakeup's).
        bad = run_cli(root, "dompmwakeup", "vm1", check=False)
        assert bad.returncode == 1
        assert bad.stderr.startswith("error: Domain 'vm1' could not be woken up\nerror: ")
        assert "guest is not in suspended state" in bad.stderr
        out = run_cli(root, "domifaddr", "vm1", "--source", "agent").stdout.splitlines()
        assert out[0].split() == ["Name", "MAC", "address", "Protocol", "Address"]
        assert any(line.split()[0] == "lo" for line in out[2:] if line)
        bad = run_cli(root, "shutdown", "vm1", "--mode", "nosuch", check=False)
        assert bad.returncode == 1 and "Unknown mode nosuch" in bad.stderr
        out = run_cli(root, "shutdown", "vm1", "--mode", "agent").stdout
        assert out == "Domain 'vm1' is being shutdown\n\n"
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            async with conn.subscribe(dom) as events:
                if await dom.is_active():
                    await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)
    finally:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)


async def test_agent_identity(conn, root, test_guest, tmp_path):
    """domhostname, domfsinfo, guestinfo and set-user-password on the test guest: its host
    name, its os-release, a real ext4 disk mounted in it (mapped to the domain's vdb), and a
    password changed in its /etc/shadow as busybox chpasswd writes it."""
    image = tmp_path / "fs.img"
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    await trio.run_process(["mkfs.ext4", "-q", "-F", "-L", "asvirtfs", str(image)])
    disk = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{image}'/>
      <target dev='vdb' bus='virtio'/>
      <serial>asvirt-fs</serial>
    </disk>"""
    dom, _, _ = await start_with_agent(conn, test_guest, tmp_path, devices=disk)

    assert await dom.hostname() == "asvirt-guest"
    assert await dom.hostname(asvirt.HostnameSource.AGENT) == "asvirt-guest"
    with pytest.raises(asvirt.NoHostnameError) as no_lease:
        await dom.hostname(asvirt.HostnameSource.LEASE)  # no network interface
    assert no_lease.value.code == asvirt.ErrorCode.NO_HOSTNAME

    # Everything is in the initramfs: nothing on a disk is mounted, until the guest mounts
    # the ext4 disk (the guest calls its first disk vda whatever its target).
    assert await dom.fs_info() == []
    status = await guest_exec(dom, "/bin/sh", "-c", "mkdir -p /mnt && mount /dev/vda /mnt")
    assert status["exitcode"] == 0, status
    assert await dom.fs_info() == [asvirt.DomainFSInfo("/mnt", "vda", "ext4", ("vdb",))]

    info = await dom.guest_info()
    assert info["hostname"] == "asvirt-guest"
    assert info["os.id"] == "asvirt-guest"
    assert info["os.pretty-name"] == "asvirt test guest (busybox)"
    assert info["os.version-id"] == "12"
    assert info["os.machine"] == "x86_64"
    assert info["os.kernel-release"].endswith("-cloud-amd64")
    assert info["timezone.offset"] == 0
    assert info["user.count"] == 0  # nobody logged in (the guest keeps no utmp)
    assert info["fs.count"] == 1
    assert info["fs.0.mountpoint"] == "/mnt"
    assert info["fs.0.fstype"] == "ext4"
    assert info["fs.0.disk.count"] == 1
    assert info["fs.0.disk.0.alias"] == "vdb"
    assert info["fs.0.disk.0.device"] == "/dev/vda"
    assert 0 < info["fs.0.used-bytes"] < info["fs.0.total-bytes"] <= 16 * 1024 * 1024
    disks = {info[f"disk.{i}.name"]: i for i in range(info["disk.count"])}
    vda = disks["/dev/vda"]
    assert info[f"disk.{vda}.partition"] is False
    assert info[f"disk.{vda}.alias"] == "vdb"
    # qemu-ga 7.2 has no guest-get-load: left out of "everything", refused when asked for.
    assert not any(k.startswith("load.") for k in info)
    with pytest.raises(asvirt.InternalError, match="guest-get-load"):
        await dom.guest_info(asvirt.GuestInfoTypes.LOAD)
    only = await dom.guest_info(asvirt.GuestInfoTypes.HOSTNAME | asvirt.GuestInfoTypes.TIMEZONE)
    assert set(only) == {"hostname", "timezone.name", "timezone.offset"}

    # A password in clear: chpasswd hashes it into /etc/shadow.
    secret = "s3cret-passw0rd-never-logged"
    await dom.set_user_password("asvirt", secret)
    shadow = await guest_shadow(dom)
    hashed = shadow["asvirt"]
    assert hashed.startswith("$") and secret not in hashed
    _, method, salt, _ = hashed.split("$", 3)
    assert await crypt_with(secret, method, salt) == hashed
    assert shadow["root"] == "!"  # the other user is left alone
    # An already-hashed password is written as it is.
    hashed = await crypt_with("another one", "6", "asvirtsalt")
    await dom.set_user_password("asvirt", hashed, encrypted=True)
    assert (await guest_shadow(dom))["asvirt"] == hashed
    with pytest.raises(asvirt.InternalError, match="failed to set user password"):
        await dom.set_user_password("nosuchuser", "x")
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_user_password("asvirt", "two\nlines")
    # The password is in no log or file of asvirt's.
    for path in root.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert secret.encode() not in path.read_bytes(), path

    await dom.suspend()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.hostname()
    await dom.destroy()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.fs_info()


async def guest_shadow(dom: asvirt.Domain) -> dict[str, str]:
    """The password field of each user in the guest's /etc/shadow."""
    status = await guest_exec(dom, "/bin/cat", "/etc/shadow")
    text = base64.b64decode(status["out-data"]).decode()
    return {line.split(":")[0]: line.split(":")[1] for line in text.splitlines() if line}


async def crypt_with(password: str, method: str, salt: str) -> str:
    """crypt(3) of ``password`` with that method (``1``, ``5``, ``6``) and salt, as openssl
    computes it (the password on stdin, not in argv)."""
    out = await trio.run_process(
        ["openssl", "passwd", f"-{method}", "-salt", salt, "-stdin"],
        stdin=(password + "\n").encode(),
        capture_stdout=True,
    )
    return out.stdout.decode().strip()


async def test_pm_suspend_and_wakeup(conn, test_guest, tmp_path):
    """dompmsuspend mem: qemu-ga writes "mem" to the guest's /sys/power/state, QEMU says
    SUSPEND (PMSUSPENDED); dompmwakeup wakes it (STARTED/WAKEUP) and the agent answers."""
    dom, _, _ = await start_with_agent(conn, test_guest, tmp_path)
    with pytest.raises(asvirt.InvalidArgError, match="Duration not supported"):
        await dom.pm_suspend_for_duration(asvirt.NodeSuspendTarget.MEM, 10)
    async with conn.subscribe(dom) as events:
        await dom.pm_suspend_for_duration(asvirt.NodeSuspendTarget.MEM)
        await lifecycle_until(events, ("PMSUSPENDED", "MEMORY"), timeout=60)
        assert (await dom.state())[0] is asvirt.DomainState.PMSUSPENDED
        with pytest.raises(asvirt.OperationInvalidError):
            await dom.agent_command('{"execute": "guest-ping"}')  # asleep: cannot answer
        await dom.pm_wakeup()
        await lifecycle_until(events, ("STARTED", "WAKEUP"), timeout=60)
    assert await dom.state() == (asvirt.DomainState.RUNNING, asvirt.RunningReason.WAKEUP)
    # Awake, the guest's agent answers again (the exchange waits for it).
    assert await dom.agent_command('{"execute": "guest-ping"}', timeout=60) == '{"return":{}}'
    await dom.destroy()
