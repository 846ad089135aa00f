"""The test driver itself: default objects, node files, shared state, the simulated guest,
networks and storage, and the CLI on top of it.

What the test driver shares with the QEMU driver (states, errors, events) is tested once for
both, in ``test_api_contract.py``; this file covers what only the test driver has.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import asvirt
from asvirt import DomainState as S
from asvirt.drivers import test as testdrv
from asvirt.drivers.base import DomainRef
from asvirt.drivers.test.state import current_default

from .guest import GUEST_DIR, REPO, TestGuest
from .helpers import lifecycle

DEFAULT = "test:///default"
LC = asvirt.EventKind.LIFECYCLE
GUEST = TestGuest(GUEST_DIR)  # only its XML is used: nothing boots here


def guest_xml(name: str, **kw: object) -> str:
    return GUEST.xml(name, Path(f"/nonexistent/{name}.serial"), **kw)  # type: ignore[arg-type]


async def settle() -> None:
    """Let the simulated guests act on everything that is due now."""
    await trio.testing.wait_all_tasks_blocked()


def drain(events: asvirt.Subscription) -> list[tuple[str, str] | None]:
    out = []
    while True:
        try:
            out.append(lifecycle(events.receive_nowait()))
        except trio.WouldBlock:
            return out


# -- the default node ------------------------------------------------------------------------


async def test_default_objects_are_libvirts():
    async with asvirt.open(DEFAULT) as conn:
        [dom] = await conn.list_all_domains()
        assert (dom.name, dom.uuid) == ("test", "6695eb01-f6a4-8304-79aa-97f2502e193f")
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        assert await dom.id() == 1
        assert await dom.is_persistent()
        info = await dom.info()
        assert (info.max_memory_kib, info.memory_kib, info.vcpus) == (8388608, 2097152, 2)
        assert "type='test'" in await dom.xml_desc()

        [net] = await conn.list_all_networks()
        assert net.name == "default" and net.uuid == "dd8fe884-6c02-601e-7551-cca97df1c5df"
        assert await net.is_active() and await net.is_persistent()
        assert not await net.autostart()
        xml = await net.xml_desc()
        assert "192.168.122.1" in xml and "255.255.255.0" in xml and "virbr0" in xml

        [pool] = await conn.list_all_storage_pools()
        assert pool.name == "default-pool"
        assert await pool.is_active()
        pinfo = await pool.info()
        assert pinfo == asvirt.StoragePoolInfo(
            state=2, capacity=100 * 1024**3, allocation=0, available=100 * 1024**3
        )
        assert await pool.list_all_volumes() == []
        assert "<path>/default-pool</path>" in await pool.xml_desc()
        assert conn.hostname()
        assert "<domain type='test'/>" in await conn.capabilities()


async def test_connections_to_default_share_one_node():
    async with asvirt.open(DEFAULT) as a, asvirt.open(DEFAULT) as b:
        dom_a = await a.define_xml(guest_xml("shared"))
        dom_b = await b.lookup_by_name("shared")
        assert dom_b.uuid == dom_a.uuid
        await dom_b.start(paused=True)
        assert await dom_a.state() == (S.PAUSED, asvirt.PausedReason.USER)


async def test_events_reach_every_connection_with_the_nodes_numbers():
    async with asvirt.open(DEFAULT) as a:
        dom = await a.lookup_by_name("test")
        await dom.suspend()  # events before b connects: numbered all the same
        await dom.resume()
        async with (
            asvirt.open(DEFAULT) as b,
            a.subscribe(kinds=LC) as ev_a,
            b.subscribe(kinds=LC) as ev_b,
        ):
            await (await b.lookup_by_name("test")).suspend()
            got_a, got_b = ev_a.receive_nowait(), ev_b.receive_nowait()
    # One event, one number, whichever connection sees it: the node numbers it. Raw QMP
    # events nobody subscribed to are not numbered: SUSPENDED (1), RESUMED (2), SUSPENDED.
    assert got_a == got_b
    assert lifecycle(got_b) == ("SUSPENDED", "PAUSED")
    assert got_b.seq == 3


async def test_state_lives_while_any_connection_is_open_and_no_longer():
    async with asvirt.open(DEFAULT) as keeper:
        async with asvirt.open(DEFAULT) as conn:
            await conn.define_xml(guest_xml("kept"))
            await (await conn.lookup_by_name("test")).destroy()
        assert await keeper.lookup_by_name("kept")
        assert (await (await keeper.lookup_by_name("test")).state())[0] is S.SHUTOFF
    assert current_default() is None, "the last close frees the node"
    async with asvirt.open(DEFAULT) as conn:
        with pytest.raises(asvirt.NoDomainError):
            await conn.lookup_by_name("kept")
        dom = await conn.lookup_by_name("test")
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        assert await dom.id() == 1


async def test_autodestroy_on_a_shared_node_follows_the_connection_that_started_it():
    async with asvirt.open(DEFAULT) as keeper, keeper.subscribe(kinds=LC) as events:
        async with asvirt.open(DEFAULT) as conn:
            dom = await conn.define_xml(guest_xml("auto"))
            await dom.start(autodestroy=True)
            await conn.create_xml(guest_xml("tauto"), autodestroy=True)
            other = await conn.define_xml(guest_xml("stays"))
            await other.start()
        auto = await keeper.lookup_by_name("auto")
        assert await auto.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        with pytest.raises(asvirt.NoDomainError):
            await keeper.lookup_by_name("tauto")
        assert await (await keeper.lookup_by_name("stays")).is_active()
        seen = [(e.domain, lifecycle(e)) for e in _all(events)]
    assert ("auto", ("STOPPED", "DESTROYED")) in seen
    assert ("tauto", ("STOPPED", "DESTROYED")) in seen
    assert ("stays", ("STOPPED", "DESTROYED")) not in seen


def _all(events: asvirt.Subscription) -> list[asvirt.DomainEvent]:
    out = []
    while events.pending():
        out.append(events.receive_nowait())
    return out


# -- node files --------------------------------------------------------------------------------

NODE_XML = """<node xmlns:test='http://libvirt.org/schemas/domain/test'>
  <!-- a libvirt test-driver node description -->
  <cpu><nodes>1</nodes></cpu>
  <domain type='test'>
    <name>runs</name>
    <uuid>11111111-0000-0000-0000-000000000001</uuid>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
  </domain>
  <domain type='qemu'>
    <name>off</name>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='kvm'>
    <name>paused</name>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <test:runstate>3</test:runstate>
  </domain>
  <domain type='test'>
    <name>fleeting</name>
    <memory unit='MiB'>64</memory>
    <os><type>hvm</type></os>
    <test:transient/>
  </domain>
  <domain file='external.xml'/>
  <network>
    <name>lan</name>
    <ip address='10.0.0.1' prefix='24'/>
  </network>
  <pool type='dir'>
    <name>images</name>
    <capacity unit='GiB'>10</capacity>
    <target><path>/images</path></target>
    <volume>
      <name>disk1.img</name>
      <capacity unit='GiB'>4</capacity>
      <allocation unit='GiB'>1</allocation>
    </volume>
    <volume file='vol2.xml'/>
  </pool>
</node>
"""


def write_node(tmp_path: Path, text: str = NODE_XML) -> str:
    (tmp_path / "external.xml").write_text(
        "<domain type='test'><name>external</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    (tmp_path / "vol2.xml").write_text(
        "<volume><name>disk2.img</name><capacity unit='GiB'>2</capacity></volume>"
    )
    path = tmp_path / "node.xml"
    path.write_text(text)
    return f"test://{path}"


async def test_node_file_is_loaded(tmp_path):
    async with asvirt.open(write_node(tmp_path)) as conn:
        states = {d.name: await d.state() for d in await conn.list_all_domains()}
        assert states == {
            "external": (S.RUNNING, asvirt.RunningReason.BOOTED),
            "fleeting": (S.RUNNING, asvirt.RunningReason.BOOTED),
            "off": (S.SHUTOFF, asvirt.ShutoffReason.UNKNOWN),
            "paused": (S.PAUSED, asvirt.PausedReason.USER),
            "runs": (S.RUNNING, asvirt.RunningReason.BOOTED),
        }
        fleeting = await conn.lookup_by_name("fleeting")
        assert not await fleeting.is_persistent()
        assert (await conn.lookup_by_name("runs")).uuid == "11111111-0000-0000-0000-000000000001"
        off = await conn.lookup_by_name("off")
        assert "test:" not in await off.xml_desc()  # the test namespace is not kept
        [net] = await conn.list_all_networks()
        assert net.name == "lan" and await net.is_active()
        pool = await conn.lookup_storage_pool_by_name("images")
        vols = {v.name: v for v in await pool.list_all_volumes()}
        assert sorted(vols) == ["disk1.img", "disk2.img"]
        assert vols["disk1.img"].path == "/images/disk1.img" == vols["disk1.img"].key
        assert await vols["disk1.img"].info() == asvirt.StorageVolInfo(0, 4 * 1024**3, 1024**3)
        info = await pool.info()
        assert (info.capacity, info.allocation, info.available) == (
            10 * 1024**3,
            3 * 1024**3,
            7 * 1024**3,
        )
        await fleeting.destroy()
        with pytest.raises(asvirt.NoDomainError):
            await conn.lookup_by_name("fleeting")


async def test_node_file_connections_do_not_share(tmp_path):
    uri = write_node(tmp_path)
    async with asvirt.open(uri) as a, asvirt.open(uri) as b:
        await (await a.lookup_by_name("runs")).destroy()
        assert await (await b.lookup_by_name("runs")).is_active()


@pytest.mark.parametrize(
    ("content", "error", "words"),
    [
        ("<node><domain>", asvirt.XMLError, "malformed XML"),
        ("<nodes/>", asvirt.XMLError, "expected a <node>"),
        ("<node><spaceship/></node>", asvirt.XMLError, "unknown element <spaceship>"),
        (
            "<node><domain type='test'><name>a/b</name><memory>1</memory>"
            "<os><type>hvm</type></os></domain></node>",
            asvirt.XMLError,
            "must not contain '/'",
        ),
        (
            "<node><domain type='xen'><name>x</name><memory>1</memory></domain></node>",
            asvirt.ConfigUnsupportedError,
            "xen",
        ),
        (
            "<node>"
            + (
                "<domain type='test'><name>twice</name><memory>1</memory>"
                "<os><type>hvm</type></os></domain>"
            )
            * 2
            + "</node>",
            asvirt.DomainExistsError,
            "twice",
        ),
        ("<node><domain file='missing.xml'/></node>", asvirt.NoConnectError, "missing.xml"),
        ("<node><network><name>n</name><ip address='10.0.0.300'/></network></node>", None, "IP"),
        (
            "<node><pool type='dir'><name>p</name><volume><name>v</name></volume></pool></node>",
            asvirt.XMLError,
            "capacity",
        ),
        ("<!DOCTYPE node [<!ENTITY x 'y'>]><node>&x;</node>", asvirt.XMLError, "DOCTYPE"),
    ],
)
async def test_bad_node_files_are_refused_clearly(tmp_path, content, error, words):
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(error or asvirt.XMLError) as info:
        async with asvirt.open(f"test://{path}"):
            pass
    assert words in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "uri",
    [
        "test:///",
        "test://",
        "test://example.com/default",
        "test+unix:///default",
        "test:///default?mode=x",
        "test:///no/such/node.xml",
    ],
)
async def test_bad_test_uris(uri):
    with pytest.raises(asvirt.NoConnectError):
        async with asvirt.open(uri):
            pass


async def test_unknown_scheme_names_the_test_uris():
    with pytest.raises(asvirt.NoConnectError) as info:
        async with asvirt.open("bogus:///x"):
            pass
    assert "test:///default" in str(info.value)


# -- domain XML ---------------------------------------------------------------------------------


async def test_test_dialect_of_domain_xml():
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.define_xml(
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test'>"
            "<name>t</name><memory unit='MiB'>1</memory><os><type>hvm</type></os>"
            "<test:runstate>5</test:runstate></domain>"
        )
        assert "<domain type='test'>" in await dom.xml_desc()
        with pytest.raises(asvirt.XMLError):
            await conn.define_xml(
                "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test'>"
                "<name>u</name><memory>1</memory><test:warpdrive/></domain>"
            )
        with pytest.raises(asvirt.InvalidArgError):
            await conn.domxml_to_native("vmx", guest_xml("n"))
        with pytest.raises(asvirt.OperationUnsupportedError):
            await conn.domxml_to_native("qemu-argv", guest_xml("n"))


# -- the simulated guest ----------------------------------------------------------------------


async def test_guest_reacts_to_the_power_button_after_the_call_returns():
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.lookup_by_name("test")
        await dom.shutdown()
        # As with a real guest, shutdown() only asked.
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        await settle()
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)


async def test_paused_guest_acts_on_the_button_once_resumed():
    async with asvirt.open(DEFAULT) as conn, conn.subscribe(kinds=LC) as events:
        dom = await conn.lookup_by_name("test")
        await dom.suspend()
        await dom.shutdown()
        await settle()
        assert (await dom.state())[0] is S.PAUSED
        await dom.resume()
        await settle()
        assert drain(events) == [
            ("SUSPENDED", "PAUSED"),
            ("RESUMED", "UNPAUSED"),
            ("SHUTDOWN", "GUEST"),
            ("STOPPED", "SHUTDOWN"),
        ]


async def test_reset_forgets_a_pending_button_press():
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.lookup_by_name("test")
        await dom.suspend()
        await dom.shutdown()
        await dom.reset()
        await dom.resume()
        await settle()
        assert (await dom.state())[0] is S.RUNNING


@pytest.mark.parametrize(
    ("action", "kw", "expected", "final"),
    [
        (
            testdrv.guest_panic,
            {"on_crash": "destroy"},
            [("CRASHED", "PANICKED"), ("STOPPED", "CRASHED")],
            (S.SHUTOFF, asvirt.ShutoffReason.CRASHED),
        ),
        (
            testdrv.guest_panic,
            {"on_crash": "preserve"},
            [("CRASHED", "PANICKED")],
            (S.CRASHED, asvirt.CrashedReason.PANICKED),
        ),
        (
            testdrv.guest_panic,
            {"on_crash": "restart"},
            [("CRASHED", "PANICKED"), ("STARTED", "BOOTED")],
            (S.RUNNING, asvirt.RunningReason.BOOTED),
        ),
        (
            testdrv.guest_poweroff,
            {},
            [("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")],
            (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN),
        ),
        (
            testdrv.guest_poweroff,
            {"on_poweroff": "restart"},
            [("SHUTDOWN", "GUEST"), ("STARTED", "BOOTED")],
            (S.RUNNING, asvirt.RunningReason.BOOTED),
        ),
        (
            testdrv.guest_poweroff,
            {"on_poweroff": "preserve"},
            [("SHUTDOWN", "GUEST")],
            (S.SHUTDOWN, asvirt.ShutdownReason.USER),
        ),
        (testdrv.guest_reboot, {}, [], (S.RUNNING, asvirt.RunningReason.BOOTED)),
        (
            testdrv.guest_reboot,
            {"on_reboot": "destroy"},
            # The exact sequence is the shared suite's business (as on QEMU).
            [..., ("STOPPED", "SHUTDOWN")],
            (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN),
        ),
    ],
)
async def test_guest_actions(action, kw, expected, final):
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.define_xml(guest_xml("g", **kw))
        await dom.start()
        async with conn.subscribe(dom) as events:
            await action(dom)
            # The guest acted before the call returned.
            seen = _all(events)
        got = [lifecycle(e) for e in seen if lifecycle(e)]
        if expected and expected[0] is ...:
            assert got[-len(expected) + 1 :] == expected[1:]
        else:
            assert got == expected
        if action is testdrv.guest_reboot:
            assert any(e.kind is asvirt.EventKind.REBOOT for e in seen)
        assert await dom.state() == final


async def test_guest_actions_need_a_running_guest_and_a_test_connection(tmp_path):
    async with asvirt.open(DEFAULT) as conn:
        test = await conn.lookup_by_name("test")
        with pytest.raises(asvirt.OperationInvalidError, match="panic"):
            await testdrv.guest_panic(test)  # no <panic> device: QEMU would not see it
        await test.suspend()
        with pytest.raises(asvirt.OperationInvalidError):
            await testdrv.guest_poweroff(test)
        await test.destroy()
        with pytest.raises(asvirt.OperationInvalidError):
            await testdrv.guest_reboot(test)
    root = tmp_path / "root"
    async with asvirt.open(f"qemu:///embed?root={root}") as qconn:
        handle = asvirt.Domain(qconn, DomainRef("x", "6695eb01-f6a4-8304-79aa-97f2502e193f"))
        with pytest.raises(asvirt.OperationUnsupportedError):
            await testdrv.guest_panic(handle)


async def test_command_line_actions_follow_boot_and_delay(autojump_clock):
    async with asvirt.open(DEFAULT) as conn, conn.subscribe(kinds=LC) as events:
        dom = await conn.define_xml(guest_xml("p", action="panic", delay=5, on_crash="restart"))
        await dom.start(paused=True)
        await trio.sleep(60)  # virtual time: a minute in which nothing may happen
        assert (await dom.state())[0] is S.PAUSED, "a paused guest does nothing"
        drain(events)
        await dom.resume()
        start = trio.current_time()
        crashes = []
        while len(crashes) < 2:
            ev = await events.receive()
            if lifecycle(ev) == ("CRASHED", "PANICKED"):
                crashes.append(trio.current_time() - start)
        # Each boot panics BOOT_SECONDS + delay after it, and on_crash=restart boots again.
        step = testdrv.BOOT_SECONDS + 5
        assert crashes == pytest.approx([step, 2 * step])
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        await dom.destroy()


async def test_guest_ignoring_acpi(autojump_clock):
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.define_xml(guest_xml("deaf", acpi="ignore"))
        await dom.start()
        await dom.shutdown()
        await dom.reboot()
        await trio.sleep(3600)  # virtual time: an hour in which nothing may happen
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


async def test_cpu_time_advances_only_while_running(autojump_clock):
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.lookup_by_name("test")
        await dom.suspend()
        frozen = (await dom.info()).cpu_time_ns
        await trio.sleep(1)  # virtual time: a second in which the counter must not move
        assert (await dom.info()).cpu_time_ns == frozen
        await dom.resume()
        for _ in range(1000):
            if (await dom.info()).cpu_time_ns > frozen:
                break
        assert (await dom.info()).cpu_time_ns > frozen


# -- QMP ----------------------------------------------------------------------------------------


async def test_simulated_qmp():
    async with asvirt.open(DEFAULT) as conn:
        dom = await conn.define_xml(guest_xml("q", on_crash="preserve"))
        await dom.start(paused=True)
        assert await dom.qmp("query-status") == {
            "status": "prelaunch",
            "singlestep": False,
            "running": False,
        }
        assert (await dom.qmp("query-version"))["qemu"]["major"] == 7
        assert await dom.qmp("query-name") == {"name": "q"}
        assert await dom.qmp("query-uuid") == {"UUID": dom.uuid}
        async with (
            conn.subscribe(dom, kinds=LC) as events,
            conn.subscribe(dom, kinds=asvirt.EventKind.QMP) as raw,
        ):
            assert await dom.qmp("cont") == {}
            await dom.qmp("cont")  # nothing: already running
            await dom.qmp("stop")
            await dom.qmp("stop")  # nothing: already stopped
            assert drain(events) == [("RESUMED", "UNPAUSED"), ("SUSPENDED", "PAUSED")]
            names = [e.data["event"] for e in _all(raw)]
            assert names == ["RESUME", "STOP"]
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.UNKNOWN)
        assert (await dom.qmp("query-status"))["status"] == "paused"
        await dom.resume()
        await testdrv.guest_panic(dom)
        assert (await dom.qmp("query-status"))["status"] == "guest-panicked"
        async with conn.subscribe(dom) as events:
            await dom.qmp("cont")  # allowed, as in QEMU: the vCPUs run, the guest stays dead
            await dom.qmp("system_powerdown")
            await settle()
            assert drain(events) == [("RESUMED", "UNPAUSED")]
            with pytest.raises(asvirt.OperationInvalidError, match="crashed"):
                await testdrv.guest_poweroff(dom)
            await dom.qmp("system_reset")  # the guest boots again, and hears the button again
            await dom.shutdown()
            await settle()
            assert drain(events)[-2:] == [("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")]
        dom = await conn.define_xml(guest_xml("q2", on_poweroff="preserve"))
        await dom.start()
        await testdrv.guest_poweroff(dom)
        assert (await dom.qmp("query-status"))["status"] == "shutdown"
        with pytest.raises(asvirt.QMPError) as err:
            await dom.qmp("cont")
        assert err.value.error_class == "GenericError"
        async with conn.subscribe(dom) as events:
            await dom.qmp("system_reset")
            assert (await dom.qmp("query-status"))["status"] == "prelaunch"
            await dom.qmp("cont")
            kinds = [(e.kind, lifecycle(e)) for e in _all(events)]
        assert kinds == [
            (asvirt.EventKind.REBOOT, None),
            (asvirt.EventKind.LIFECYCLE, ("RESUMED", "UNPAUSED")),
        ]
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        with pytest.raises(asvirt.OperationUnsupportedError):
            await dom.qmp("query-block")
        with pytest.raises(asvirt.QMPError):
            await dom.qmp("stop", {"bogus": 1})
        with pytest.raises(asvirt.InvalidArgError):
            await dom.qmp("")


async def test_qmp_powerdown_behind_asvirts_back():
    async with asvirt.open(DEFAULT) as conn, conn.subscribe(kinds=LC) as events:
        dom = await conn.lookup_by_name("test")
        await dom.qmp("system_powerdown")
        await settle()
        assert drain(events) == [("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")]


# -- networks -----------------------------------------------------------------------------------

NET = (
    "<network><name>{name}</name>{uuid}<ip address='10.1.0.1' netmask='255.255.0.0'>"
    "<dhcp><range start='10.1.0.10' end='10.1.0.99'/></dhcp></ip></network>"
)


async def test_network_lifecycle():
    async with asvirt.open(DEFAULT) as conn:
        net = await conn.network_define_xml(NET.format(name="lab", uuid=""))
        assert not await net.is_active() and await net.is_persistent()
        assert [n.name for n in await conn.list_all_networks(active=False)] == ["lab"]
        assert (await conn.lookup_network_by_uuid(net.uuid.upper())) == net
        assert f"<uuid>{net.uuid}</uuid>" in await net.xml_desc()
        with pytest.raises(asvirt.OperationInvalidError):
            await net.destroy()
        await net.create()
        with pytest.raises(asvirt.OperationInvalidError):
            await net.create()
        await net.undefine()  # active: it becomes transient
        assert not await net.is_persistent()
        await net.destroy()
        with pytest.raises(asvirt.NoNetworkError):
            await conn.lookup_network_by_name("lab")
        with pytest.raises(asvirt.NoNetworkError):
            await net.is_active()


async def test_network_errors():
    async with asvirt.open(DEFAULT) as conn:
        with pytest.raises(asvirt.NetworkExistsError):
            await conn.network_define_xml(NET.format(name="default", uuid=""))
        with pytest.raises(asvirt.NetworkExistsError):
            await conn.network_define_xml(
                NET.format(name="other", uuid="<uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>")
            )
        for bad in (
            "<network/>",
            "<network><name>../x</name></network>",
            "<network><name>n</name><uuid>nope</uuid></network>",
            "<network><name>n</name><ip address='10.0.0.1' prefix='33'/></network>",
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'>"
            "<dhcp><range start='10.0.1.2' end='10.0.0.9'/></dhcp></ip></network>",
            "<domain/>",
        ):
            with pytest.raises(asvirt.XMLError):
                await conn.network_define_xml(bad)
        with pytest.raises(asvirt.NoNetworkError):
            await conn.lookup_network_by_name("nope")
        with pytest.raises(asvirt.InvalidArgError):
            await conn.lookup_network_by_uuid("nope")


# -- storage ------------------------------------------------------------------------------------


async def test_volumes_in_the_default_pool():
    async with asvirt.open(DEFAULT) as conn:
        pool = await conn.lookup_storage_pool_by_name("default-pool")
        vol = await pool.create_volume_xml(
            "<volume><name>disk.qcow2</name><capacity unit='G'>10</capacity>"
            "<allocation>0</allocation><target><format type='qcow2'/></target></volume>"
        )
        assert (vol.name, vol.path, vol.key) == (
            "disk.qcow2",
            "/default-pool/disk.qcow2",
            "/default-pool/disk.qcow2",
        )
        assert await vol.info() == asvirt.StorageVolInfo(0, 10 * 1024**3, 0)
        assert "<format type='qcow2'/>" in await vol.xml_desc()
        full = await pool.create_volume_xml(
            "<volume><name>full.img</name><capacity unit='GiB'>30</capacity></volume>"
        )
        assert (await pool.info()).allocation == 30 * 1024**3
        assert [v.name for v in await pool.list_all_volumes()] == ["disk.qcow2", "full.img"]
        assert await pool.lookup_volume_by_name("full.img") == full
        with pytest.raises(asvirt.StorageVolExistsError):
            await pool.create_volume_xml(
                "<volume><name>full.img</name><capacity>1</capacity></volume>"
            )
        with pytest.raises(asvirt.OperationFailedError):
            await pool.create_volume_xml(
                "<volume><name>huge.img</name><capacity unit='TiB'>1</capacity></volume>"
            )
        with pytest.raises(asvirt.XMLError):
            await pool.create_volume_xml("<volume><name>nocap</name></volume>")
        with pytest.raises(asvirt.XMLError):
            await pool.create_volume_xml("<volume><name>a/b</name><capacity>1</capacity></volume>")
        await full.delete()
        assert (await pool.info()).allocation == 0
        with pytest.raises(asvirt.NoStorageVolError):
            await full.info()
        with pytest.raises(asvirt.NoStorageVolError):
            await pool.lookup_volume_by_name("full.img")


async def test_pool_lifecycle():
    async with asvirt.open(DEFAULT) as conn:
        pool = await conn.storage_pool_define_xml(
            "<pool type='dir'><name>scratch</name><capacity unit='MiB'>100</capacity>"
            "<target><path>/scratch</path></target></pool>"
        )
        assert not await pool.is_active()
        assert (await pool.info()).state == 0
        with pytest.raises(asvirt.OperationInvalidError):
            await pool.list_all_volumes()  # libvirt: the pool is not active
        with pytest.raises(asvirt.SystemCallError, match="No such file or directory"):
            await pool.create()  # as on a QEMU node: its directory is not built yet
        await pool.build()
        await pool.create()
        vol = await pool.create_volume_xml(
            "<volume><name>v</name><capacity unit='MiB'>10</capacity></volume>"
        )
        assert (await pool.info()).available == 90 * 1024**2
        with pytest.raises(asvirt.OperationInvalidError):
            await pool.undefine()
        await pool.destroy()
        with pytest.raises(asvirt.OperationInvalidError):
            await vol.info()
        await pool.create()
        assert [v.name for v in await pool.list_all_volumes()] == ["v"]  # volumes are kept
        await pool.destroy()
        await pool.undefine()
        with pytest.raises(asvirt.NoStoragePoolError):
            await conn.lookup_storage_pool_by_name("scratch")
        with pytest.raises(asvirt.XMLError):
            await conn.storage_pool_define_xml("<pool><name>typeless</name></pool>")
        with pytest.raises(asvirt.OperationFailedError):
            await conn.storage_pool_define_xml(
                "<pool type='dir'><name>default-pool</name><target><path>/x</path></target></pool>"
            )


# -- the CLI ------------------------------------------------------------------------------------


def asvirt_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("asvirt")
    env = {**os.environ, "ASVIRT_DEFAULT_URI": DEFAULT}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )


async def test_cli_on_the_test_driver():
    listing = await trio.to_thread.run_sync(asvirt_cli, "-c", DEFAULT, "list", "--all")
    assert listing.returncode == 0, listing.stderr
    assert "Id   Name   State" in listing.stdout
    assert " 1    test   running" in listing.stdout
    state = await trio.to_thread.run_sync(asvirt_cli, "domstate", "--reason", "test")
    assert "running (booted)" in state.stdout
    for cmd in (["net-list"], ["pool-list"], ["vol-list", "default-pool"], ["dominfo", "test"]):
        result = await trio.to_thread.run_sync(asvirt_cli, *cmd)
        assert result.returncode == 0, (cmd, result.stderr)
    assert "default-pool" in (await trio.to_thread.run_sync(asvirt_cli, "pool-list")).stdout
    missing = await trio.to_thread.run_sync(asvirt_cli, "dominfo", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
