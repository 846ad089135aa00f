"""The guest agent: Debian's qemu-ga in the test guest (TCG), driven as virsh users drive it.

The test guest starts qemu-ga on the virtio-serial port ``org.qemu.guest_agent.0`` when its
domain has that channel (unless ``asvirt.agent=off``); everything here waits for the agent's
AGENT_LIFECYCLE event, never for time.
"""

from __future__ import annotations

import json
import time

import pytest
import trio

import asvirt
from asvirt import AgentLifecycleReason as Reason
from asvirt import AgentLifecycleState as State
from asvirt import InterfaceAddressSource, ShutdownMode

from .guest import AGENT_CHANNEL_XML, define, wait_for_serial
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
