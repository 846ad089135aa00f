"""The shared suite: the same behavioural tests against every driver, so they cannot drift.

Each test runs twice: on ``test:///default`` (``[test]``) and on the embedded QEMU driver
with a fresh root (``[qemu]``). A test decorated with :func:`needs_guest` needs a guest
that really runs its init (it reacts to the power button, panics, reboots); on QEMU that is
the real test guest booted under TCG (marked ``guest``), on the test driver the simulated
guest, which reads the same kernel command line. Other tests only need a paused or running
VM, so the QEMU variant uses KVM when it is usable and never waits for a boot.

Where the drivers may legitimately differ (where state lives between connections, how long
a guest takes to boot), the test goes through :class:`~tests.contract.Backend`; everything
else is the public API, the same calls with the same expectations.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.lowlevel
from lxml import etree

import asvirt
from asvirt import DomainState as S
from asvirt.conf.domain import parse_domain_xml
from asvirt.conf.postparse import postparse_domain
from asvirt.conf.tuning import IOTUNE_ORDER

from .contract import Backend, drain, drain_lifecycle, needs_guest, run_status
from .guest import wait_for_serial
from .helpers import (
    assert_libvirt_schema,
    collect_until,
    cpus_allowed,
    lifecycle,
    lifecycle_until,
    pid_exists,
    wait_for,
)

LC = asvirt.EventKind.LIFECYCLE
REBOOT = asvirt.EventKind.REBOOT

# -- defining ---------------------------------------------------------------------------------


async def test_define_redefine_undefine(api):
    async with api.conn.subscribe(kinds=LC) as events:
        dom = await api.define("vm1")
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.UNKNOWN)
        assert await dom.is_persistent() and not await dom.is_active()
        assert await dom.id() is None
        if not api.simulated:
            assert api.config_file("vm1").is_file()
        again = await api.define("vm1", uuid=dom.uuid)
        assert again == dom
        await dom.undefine()
        if not api.simulated:
            assert not api.config_file("vm1").exists()
        assert drain_lifecycle(events) == [
            ("DEFINED", "ADDED"),
            ("DEFINED", "UPDATED"),
            ("UNDEFINED", "REMOVED"),
        ]
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_name("vm1")
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_uuid(dom.uuid)
    with pytest.raises(asvirt.NoDomainError):
        await dom.state()


BAD_XML = [
    ("<domain type='qemu'><name>x</name>", asvirt.XMLError),
    ("<network/>", asvirt.XMLError),
    (
        "<domain type='xen'><name>x</name><memory>1024</memory></domain>",
        asvirt.ConfigUnsupportedError,
    ),
    ("<domain type='qemu'><name>a/b</name><memory>1024</memory></domain>", asvirt.XMLError),
    ("<domain type='qemu'><name>m</name><memory>0</memory></domain>", asvirt.XMLError),
    (
        "<domain type='qemu'><name>m</name><memory unit='parsec'>1</memory></domain>",
        asvirt.XMLError,
    ),
    (
        "<domain type='qemu'><name>m</name><memory>1024</memory><os><type>hvm</type></os>"
        "<devices><hostdev mode='capabilities' type='storage'/></devices></domain>",
        asvirt.ConfigUnsupportedError,
    ),
    (
        "<!DOCTYPE d [<!ENTITY x 'y'>]><domain type='qemu'><name>&x;</name></domain>",
        asvirt.XMLError,
    ),
    # Refused by the generic post-parse, which both drivers run.
    (
        "<domain type='qemu'><name>m</name><memory>1024</memory><os><type>hvm</type></os>"
        "<devices><serial type='pty'><target port='1'/></serial>"
        "<serial type='pty'><target port='1'/></serial></devices></domain>",
        asvirt.XMLError,
    ),
    (
        "<domain type='qemu'><name>m</name><memory>1024</memory><vcpu>2</vcpu>"
        "<os><type>hvm</type></os><cpu><topology sockets='1' cores='1' threads='1'/></cpu>"
        "</domain>",
        asvirt.XMLError,
    ),
]


async def test_the_node_and_its_domains_describe_themselves_as_libvirt_does(api):
    # virsh's nodeinfo, version and dominfo ask these. The test driver answers as libvirt's
    # test driver does; the QEMU driver describes this host and its QEMU.
    node = await api.conn.node_info()
    assert node.cpus == node.nodes * node.sockets * node.cores * node.threads > 0
    assert node.memory_kib > 0
    version = await api.conn.hypervisor_version()
    model = await api.conn.security_model()
    dom = await api.define("vm1")
    label = await dom.security_label()
    if api.simulated:
        assert node == asvirt.NodeInfo("i686", 3145728, 16, 1400, 2, 2, 2, 2)
        assert version == asvirt.HypervisorVersion("TEST", "0.0.2")
        assert model == asvirt.SecurityModel("testSecurity", "")
        assert label == asvirt.SecurityLabel("libvirt-test", True)
        assert await dom.os_type() == "linux"
    else:
        assert node.model == os.uname().machine
        assert version.type == "QEMU" and version.version.split(".")[0].isdigit()
        assert model == asvirt.SecurityModel("none", "0")
        assert label == asvirt.SecurityLabel("", False)
        assert await dom.os_type() == "hvm"
    await dom.undefine()
    with pytest.raises(asvirt.NoDomainError):
        await dom.os_type()


async def test_both_drivers_refuse_the_same_xml(api):
    before = await api.baseline()
    for xml, error in BAD_XML:
        for call in (api.conn.define_xml, api.conn.create_xml):
            with pytest.raises(error):
                await call(xml)
    assert await api.baseline() == before


#: Devices whose defaults the generic post-parse fills in, added to the test guest.
GENERIC_DEVICES = (
    "<interface type='user'><mac address='52:54:00:12:34:56'/></interface>"
    "<input type='tablet'/><graphics type='vnc'/><video><model type='vga'/></video>"
    "<watchdog model='i6300esb'/><rng model='virtio'><backend model='random'/></rng>"
    # and the last of libvirt's devices (issue 12)
    "<disk type='file' device='floppy'><source file='/var/tmp/fd.img'/><target dev='fda'/></disk>"
    "<interface type='udp'><mac address='52:54:00:12:34:57'/>"
    "<source address='127.0.0.1' port='5555'><local address='127.0.0.1' port='5556'/>"
    "</source></interface>"
    "<channel type='unix'><source mode='bind' path='/tmp/fwd.sock'/>"
    "<target type='guestfwd' address='10.0.2.1' port='4600'/></channel>"
    "<crypto model='virtio' type='qemu'><backend model='builtin'/></crypto>"
    "<graphics type='dbus' p2p='yes'/>"
)
#: What the QEMU driver may change in what the generic post-parse produced: the machine
#: type it canonicalizes ('pc' -> 'pc-i440fx-N'). Everything else it may only add to.
QEMU_CHANGES = {("type", "machine")}


def _covered(generic: etree._Element, out: etree._Element, where: str) -> list[str]:
    """Where ``out`` lacks or changes something of ``generic`` (an empty list: it has all).

    Attributes and text must be equal; children are matched in order, so ``out`` may hold
    more elements between them (implicit devices), more attributes and more children
    (addresses, models), but must not drop or change any of generic's.
    """
    here = f"{where}/{generic.tag}"
    problems = []
    for name, value in generic.attrib.items():
        if out.get(name) != value and (generic.tag, name) not in QEMU_CHANGES:
            problems.append(f"{here}/@{name}: {value!r} became {out.get(name)!r}")
    if (generic.text or "").strip() != (out.text or "").strip():
        problems.append(f"{here}: text {generic.text!r} became {out.text!r}")
    candidates = list(out)
    for child in generic:
        for i, cand in enumerate(candidates):
            if cand.tag == child.tag and not _covered(child, cand, here):
                del candidates[: i + 1]
                break
        else:
            same = [c for c in out if c.tag == child.tag]
            detail = _covered(child, same[0], here) if same else ["missing"]
            problems.append(f"{here}: no match for <{child.tag}>: {detail}")
    return problems


async def test_normalize_keeps_the_generic_post_parse(api):
    """dumpxml agrees between the drivers on everything libvirt's generic post-parse does.

    Each driver's normalized XML must contain, unchanged, all that postparse_domain makes of
    the same document (a console for the serial port, currentMemory, input buses, video
    sizes, RNG path, watchdog action, VNC listen...): the test driver exactly that, the QEMU
    driver that and only additions of its own (addresses, models, implicit controllers and
    devices) besides the canonical machine type.
    """
    xml = api.xml("gen", uuid="c7a5fdbd-edaf-9455-926a-d65c16db1809")
    xml = xml.replace(
        "</features>", "</features><cpu><topology sockets='1' cores='1' threads='1'/></cpu>"
    )
    xml = xml.replace("</devices>", GENERIC_DEVICES + "</devices>")
    generic = postparse_domain(parse_domain_xml(xml)).to_xml()
    assert "<console type='file'>" in generic and "<currentMemory unit='KiB'>131072<" in generic
    out = await api.conn.domain_xml_normalize(xml)
    problems = _covered(etree.fromstring(generic), etree.fromstring(out), "")
    assert not problems, "\n".join(problems)
    if api.simulated:
        assert out == generic  # the test driver runs the generic post-parse and nothing else
    else:  # QEMU's own post-parse added to it, and changed only the machine's name
        machine = etree.fromstring(out).find("os/type")
        assert machine is not None and machine.get("machine", "").startswith("pc-i440fx-")


async def test_duplicate_names_and_uuids_are_refused(api):
    dom = await api.define("vm1")
    with pytest.raises(asvirt.DomainExistsError):
        await api.define("vm1")  # same name, another (generated) UUID
    with pytest.raises(asvirt.DomainExistsError):
        await api.define("vm2", uuid=dom.uuid)
    await dom.start(paused=True)
    with pytest.raises(asvirt.DomainExistsError):
        await api.conn.create_xml(api.xml("vm1", uuid=dom.uuid))  # already running


async def test_lookups(api):
    dom = await api.define("vm1")
    assert await api.conn.lookup_by_name("vm1") == dom
    assert await api.conn.lookup_by_uuid(dom.uuid.upper()) == dom
    assert await api.conn.lookup_by_uuid(dom.uuid.replace("-", "")) == dom
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_name("nope")
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_uuid("c7a5fdbd-edaf-9455-926a-d65c16db1809")
    with pytest.raises(asvirt.InvalidArgError):
        await api.conn.lookup_by_uuid("not-a-uuid")


async def test_list_all_domains_filters(api):
    base = await api.baseline()
    base_active = {d.name for d in await api.conn.list_all_domains(active=True)}
    await api.define("off")
    await (await api.define("on")).start(paused=True)
    await api.conn.create_xml(api.xml("fleeting"), paused=True)

    async def names(**kw: bool | None) -> set[str]:
        return {d.name for d in await api.conn.list_all_domains(**kw)}

    assert await names() - base == {"off", "on", "fleeting"}
    assert await names(active=True) - base_active == {"on", "fleeting"}
    assert await names(active=False) - base == {"off"}
    assert await names(persistent=False) == {"fleeting"}
    assert await names(persistent=True) - base == {"off", "on"}
    assert await names(active=True, persistent=True) - base_active == {"on"}
    listed = [d.name for d in await api.conn.list_all_domains()]
    assert listed == sorted(listed)


# -- starting and pausing -------------------------------------------------------------------


async def test_start_paused_then_resume(api):
    dom = await api.define("vm1")
    async with api.conn.subscribe(dom) as events:
        await dom.start(paused=True)
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        assert drain_lifecycle(events) == [("STARTED", "BOOTED"), ("SUSPENDED", "PAUSED")]
        assert await dom.is_active()
        dom_id = await dom.id()
        assert isinstance(dom_id, int) and dom_id > 0
        assert f"id='{dom_id}'" in await dom.xml_desc()
        assert "id=" not in (await dom.xml_desc(inactive=True)).split(">", 1)[0]
        assert run_status(await dom.qmp("query-status")) == (False, "prelaunch")
        await dom.resume()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        assert drain_lifecycle(events) == [("RESUMED", "UNPAUSED")]
        assert (await dom.qmp("query-status"))["running"] is True


@needs_guest
async def test_start_boots_and_runs(api):
    dom = await api.define("vm1", boots=True)
    async with api.conn.subscribe(dom) as events:
        await dom.start()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        assert drain_lifecycle(events) == [("STARTED", "BOOTED")]
    await api.wait_booted(dom)
    info = await dom.info()
    assert info.state is S.RUNNING
    assert (info.max_memory_kib, info.memory_kib, info.vcpus) == (128 * 1024, 128 * 1024, 1)
    assert info.cpu_time_ns > 0
    assert run_status(await dom.qmp("query-status")) == (True, "running")
    if not api.simulated:
        # QEMU's stderr goes to the per-domain log, which starts with the command line it ran.
        log = api.log_file("vm1").read_text()
        assert "qemu-system-x86_64" in log and dom.uuid in log


async def test_suspend_is_idempotent_and_resume_of_a_running_domain_fails(api):
    # As libvirt's QEMU driver (and virsh on it): suspending a paused domain does nothing;
    # resuming a running one fails with "domain is already running".
    dom = await api.define("vm1")
    await dom.start(paused=True)
    await dom.resume()
    async with api.conn.subscribe(dom) as events:
        await dom.suspend()
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        await dom.suspend()  # already paused: nothing to do, no error, no event
        await dom.resume()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        with pytest.raises(asvirt.OperationInvalidError) as err:
            await dom.resume()
        assert err.value.code is asvirt.ErrorCode.OPERATION_INVALID
        assert err.value.message == "domain is already running"
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        with pytest.raises(asvirt.OperationInvalidError):
            await dom.start()  # running: start fails too
        assert drain_lifecycle(events) == [("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED")]


async def test_calls_on_a_shut_off_domain_fail_as_libvirt(api):
    # libvirt's QEMU driver: suspend, resume, shutdown, reboot, reset and destroy of a domain
    # that is not running fail with OPERATION_INVALID and change nothing.
    dom = await api.define("vm1")
    await dom.start(paused=True)
    await dom.destroy()
    async with api.conn.subscribe(dom) as events:
        for call in (dom.suspend, dom.resume, dom.shutdown, dom.reboot, dom.reset, dom.destroy):
            with pytest.raises(asvirt.OperationInvalidError) as err:
                await call()
            assert err.value.code is asvirt.ErrorCode.OPERATION_INVALID
            assert "not running" in err.value.message
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        assert drain_lifecycle(events) == []


async def test_wrong_states_are_refused(api):
    dom = await api.define("vm1")
    for call in (dom.suspend, dom.resume, dom.shutdown, dom.reboot, dom.reset, dom.destroy):
        with pytest.raises(asvirt.OperationInvalidError):
            await call()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.qmp("query-status")
    await dom.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.start()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.reboot()  # a paused guest cannot react to the power button
    assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)


async def test_destroy(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    await dom.resume()
    pid = None if api.simulated else api.pid("vm1")
    async with api.conn.subscribe(dom) as events:
        await dom.destroy()
        # destroy() returns once the domain is shut off and says so, and QEMU is gone.
        assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
        assert pid is None or not pid_exists(pid), "QEMU must be gone and reaped"
        assert drain_lifecycle(events) == [("STOPPED", "DESTROYED")]
    assert not await dom.is_active()
    assert await dom.id() is None
    info = await dom.info()
    assert (info.state, info.cpu_time_ns) == (S.SHUTOFF, 0)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.destroy()
    await dom.start(paused=True)  # and it starts again
    assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)


async def test_reset_reports_a_reboot_and_keeps_the_state(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    async with api.conn.subscribe(dom) as events:
        await dom.reset()
        assert [e.kind for e in await _until_reboot(api, dom, events)] == [REBOOT]
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        await dom.resume()
        await dom.reset()
        kinds = [(e.kind, lifecycle(e)) for e in await _until_reboot(api, dom, events)]
        assert kinds == [(LC, ("RESUMED", "UNPAUSED")), (REBOOT, None)]
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)


async def _until_reboot(
    api: Backend, dom: asvirt.Domain, events: asvirt.Subscription
) -> list[asvirt.DomainEvent]:
    """The events up to a reset's REBOOT event, and any that were due with it.

    QEMU resets the machine after it has answered ``system_reset``, so the event may come
    after ``reset()`` returns: wait for it, then settle to catch what came along.
    """
    seen = await collect_until(events, lambda s: any(e.kind is REBOOT for e in s), timeout=10)
    await api.settle(dom)
    return seen + drain(events)


# -- the guest's side -------------------------------------------------------------------------


@needs_guest
async def test_acpi_shutdown(api):
    dom = await api.define("vm1", boots=True)
    await dom.start()
    await api.wait_booted(dom)
    pid = None if api.simulated else api.pid("vm1")
    async with api.conn.subscribe(dom) as events:
        await dom.shutdown()
        seen = await lifecycle_until(events, ("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN"))
    assert seen == [("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")]
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)
    assert await dom.id() is None
    assert pid is None or not pid_exists(pid), "QEMU must be gone and reaped"


@needs_guest
async def test_guest_ignoring_acpi_keeps_running(api):
    dom = await api.define("vm1", boots=True, acpi="ignore")
    await dom.start()
    await api.wait_booted(dom)
    async with api.conn.subscribe(dom, kinds=LC) as events:
        await dom.shutdown()
        # The point of the test: nothing happens. Watch for a while (no event stands for it).
        await trio.sleep(api.quiet_period)
        assert drain(events) == []
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
@pytest.mark.parametrize(
    ("kw", "expected", "state"),
    [
        pytest.param(
            {"action": "poweroff"},
            [("STARTED", "BOOTED"), ("SHUTDOWN", "GUEST"), ("STOPPED", "SHUTDOWN")],
            (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN),
            id="poweroff",
        ),
        pytest.param(
            {"action": "panic"},  # on_crash's default: destroy
            [("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STOPPED", "CRASHED")],
            (S.SHUTOFF, asvirt.ShutoffReason.CRASHED),
            id="panic-destroys-by-default",
        ),
        pytest.param(
            # The guest panics 1 s after each boot; a restart shows as a second boot.
            {"action": "panic", "delay": 1, "on_crash": "restart"},
            [("STARTED", "BOOTED"), ("CRASHED", "PANICKED"), ("STARTED", "BOOTED")],
            (S.RUNNING, asvirt.RunningReason.BOOTED),
            id="panic-restart-boots-again",
        ),
    ],
)
async def test_what_the_guest_does_by_itself(api, kw, expected, state):
    dom = await api.define("vm1", boots=True, **kw)
    async with api.conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(events, *expected)
        assert await dom.state() == state
    assert seen == expected


@needs_guest
async def test_poweroff_with_on_poweroff_restart_boots_again(api):
    dom = await api.define("vm1", boots=True, on_poweroff="restart")
    await dom.start()
    await api.wait_booted(dom)
    async with api.conn.subscribe(dom) as events:
        await dom.shutdown()
        seen = await lifecycle_until(events, ("SHUTDOWN", "GUEST"), ("STARTED", "BOOTED"))
    assert seen == [("SHUTDOWN", "GUEST"), ("STARTED", "BOOTED")]
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
async def test_panic_preserve_keeps_the_crashed_guest(api):
    dom = await api.define("vm1", boots=True, action="panic", on_crash="preserve")
    async with api.conn.subscribe(dom) as events:
        await dom.start()
        seen = await lifecycle_until(events, ("CRASHED", "PANICKED"))
    assert seen == [("STARTED", "BOOTED"), ("CRASHED", "PANICKED")]
    assert await dom.state() == (S.CRASHED, asvirt.CrashedReason.PANICKED)
    assert await dom.is_active()
    assert run_status(await dom.qmp("query-status")) == (False, "guest-panicked")
    for call in (dom.resume, dom.suspend, dom.shutdown, dom.reboot):
        with pytest.raises(asvirt.OperationInvalidError):
            await call()
    async with api.conn.subscribe(dom, kinds=LC) as events:
        # Behind asvirt's back, QEMU accepts cont: the vCPUs run the dead kernel again.
        await dom.qmp("cont")
        assert drain_lifecycle(events) == [("RESUMED", "UNPAUSED")]
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
async def test_poweroff_with_on_poweroff_preserve_needs_a_reset(api):
    dom = await api.define("vm1", boots=True, on_poweroff="preserve")
    await dom.start()
    await api.wait_booted(dom)
    async with api.conn.subscribe(dom) as events:
        await dom.shutdown()
        assert await lifecycle_until(events, ("SHUTDOWN", "GUEST")) == [("SHUTDOWN", "GUEST")]
        # The point of the test: QEMU is kept, not stopped. Watch for a while that it stays.
        await trio.sleep(api.quiet_period)
        assert await dom.state() == (S.SHUTDOWN, asvirt.ShutdownReason.USER)
        assert run_status(await dom.qmp("query-status")) == (False, "shutdown")
        with pytest.raises(asvirt.QMPError) as err:
            await dom.qmp("cont")
        assert err.value.error_class == "GenericError"
        drain(events)
        await dom.qmp("system_reset")
        assert run_status(await dom.qmp("query-status")) == (False, "prelaunch")
        await dom.qmp("cont")
        assert drain_lifecycle(events) == [("RESUMED", "UNPAUSED")]
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
async def test_reboot_reports_reboots_and_keeps_running(api):
    dom = await api.define("vm1", boots=True)
    await dom.start()
    await api.wait_booted(dom)
    api.forget_boot(dom)
    async with api.conn.subscribe(dom) as events:
        await dom.reboot()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)
        seen = await collect_until(events, lambda s: any(e.kind is REBOOT for e in s))
        await api.wait_booted(dom)  # the guest comes back
        seen += drain(events)
    # No lifecycle event: the domain stays RUNNING throughout. (On QEMU the firmware may
    # reset the guest again while it boots, and each reset is a REBOOT event too.)
    assert {e.kind for e in seen} == {REBOOT}
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
async def test_guest_reboot_is_reported(api):
    dom = await api.define("vm1", boots=True, action="reboot", delay=1)
    async with api.conn.subscribe(dom, kinds=REBOOT) as events:
        await dom.start()
        with trio.fail_after(30):
            ev = await events.receive()
    assert ev.kind is REBOOT
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.BOOTED)


@needs_guest
async def test_guest_reboot_with_on_reboot_destroy_stops(api):
    dom = await api.define("vm1", boots=True, action="reboot", on_reboot="destroy")
    async with api.conn.subscribe(dom) as events:
        await dom.start()
        seen = await collect_until(
            events, lambda s: any(lifecycle(e) and lifecycle(e)[0] == "STOPPED" for e in s)
        )
    assert REBOOT in [e.kind for e in seen]
    assert [lifecycle(e) for e in seen if lifecycle(e)] == [
        ("STARTED", "BOOTED"),
        ("STOPPED", "SHUTDOWN"),
    ]
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.SHUTDOWN)


# -- QMP --------------------------------------------------------------------------------------


async def test_qmp_stop_and_cont_behind_asvirts_back(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    await dom.resume()
    async with api.conn.subscribe(dom, kinds=LC) as events:
        assert await dom.qmp("stop") == {}
        assert drain_lifecycle(events) == [("SUSPENDED", "PAUSED")]
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.UNKNOWN)
        assert run_status(await dom.qmp("query-status")) == (False, "paused")
        await dom.qmp("stop")  # already stopped: QEMU sends nothing
        assert await dom.qmp("cont") == {}
        assert drain_lifecycle(events) == [("RESUMED", "UNPAUSED")]
        await dom.qmp("cont")  # already running: QEMU says nothing
        assert drain_lifecycle(events) == []
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)


async def test_raw_qmp_events_are_opt_in(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    async with (
        api.conn.subscribe(dom, kinds=asvirt.EventKind.QMP) as raw,
        api.conn.subscribe(dom) as typed,
    ):
        await dom.resume()
        await dom.suspend()
        raw_events = drain(raw)
        assert [e.data["event"] for e in raw_events] == ["RESUME", "STOP"]
        assert all(e.kind is asvirt.EventKind.QMP and e.timestamp > 0 for e in raw_events)
        # Without asking for them, no raw events: only typed ones.
        assert [lifecycle(e) for e in drain(typed)] == [
            ("RESUMED", "UNPAUSED"),
            ("SUSPENDED", "PAUSED"),
        ]


async def test_qmp_answers(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    version = await dom.qmp("query-version")
    assert isinstance(version["qemu"]["major"], int) and isinstance(version["package"], str)
    with pytest.raises(asvirt.AsvirtError):
        # QEMU: QMPError (CommandNotFound); test driver: OperationUnsupportedError.
        await dom.qmp("no-such-command")
    with pytest.raises(asvirt.InvalidArgError):
        await dom.qmp("")
    with pytest.raises(asvirt.InvalidArgError):
        await dom.qmp("query-status", ["not", "a", "dict"])  # type: ignore[arg-type]


# -- renaming -----------------------------------------------------------------------------------


async def test_rename(api):
    """A shut-off persistent domain takes a new name, with its UUID, configuration and
    autostart mark (found again by another connection); what libvirt refuses is refused."""
    dom = await api.define("vm1")
    await dom.set_metadata(asvirt.MetadataType.TITLE, "kept")
    await dom.set_autostart(True)
    async with api.conn.subscribe(kinds=LC) as events:
        await dom.rename("vm2")
        seen = drain(events)
    assert [(e.domain, *lifecycle(e)) for e in seen] == [
        ("vm1", "UNDEFINED", "RENAMED"),
        ("vm2", "DEFINED", "RENAMED"),
    ]
    assert dom.name == "vm2"
    assert await api.conn.lookup_by_name("vm2") == dom
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_name("vm1")
    assert await dom.metadata(asvirt.MetadataType.TITLE) == "kept"
    assert "<name>vm2</name>" in await dom.xml_desc()
    if not api.simulated:
        assert api.config_file("vm2").is_file() and not api.config_file("vm1").exists()
    async with api.open() as other:
        again = await other.lookup_by_name("vm2")
        assert again.uuid == dom.uuid and await again.autostart()

    other_dom = await api.define("other")
    for name, error in (
        ("vm2", asvirt.OperationInvalidError),  # to itself
        ("other", asvirt.OperationInvalidError),  # taken
        ("a/b", asvirt.XMLError),
    ):
        with pytest.raises(error):
            await dom.rename(name)
    await dom.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError, match="active"):
        await dom.rename("vm3")
    await dom.destroy()
    transient = await api.conn.create_xml(api.xml("fleeting"), paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await transient.rename("vm3")
    names = {d.name for d in await api.conn.list_all_domains()}
    assert {"fleeting", "other", "vm2"} <= names and "vm3" not in names
    await dom.rename("vm1")  # and back
    assert await api.conn.lookup_by_name("vm1") == dom
    del other_dom


# -- title, description, metadata --------------------------------------------------------------


async def test_title_description_and_metadata(api):
    """virsh desc and metadata: what is set shows in the XML, live and config apart, each
    change announced by one METADATA_CHANGE event; what is refused changes nothing."""
    T, D, E = (
        asvirt.MetadataType.TITLE,
        asvirt.MetadataType.DESCRIPTION,
        asvirt.MetadataType.ELEMENT,
    )
    uri = "http://example.org/asvirt/1"
    dom = await api.define("vm1")
    async with api.conn.subscribe(dom, kinds={asvirt.EventKind.METADATA_CHANGE}) as events:
        await dom.set_metadata(T, "A title")
        await dom.set_metadata(D, "Line one\nline two")
        await dom.set_metadata(E, '<app version="2"><tier>web</tier></app>', "ex", uri)
        assert [e.data for e in drain(events)] == [
            {"type": int(T), "nsuri": None},
            {"type": int(D), "nsuri": None},
            {"type": int(E), "nsuri": uri},
        ]
    assert await dom.metadata(T) == "A title"
    assert await dom.metadata(D) == "Line one\nline two"
    assert await dom.metadata(E, uri) == '<app version="2"><tier>web</tier></app>'
    xml = await dom.xml_desc()
    assert "<title>A title</title>" in xml
    assert f'<ex:app xmlns:ex="{uri}" version="2">' in xml
    if not api.simulated:
        assert "<title>A title</title>" in api.config_file("vm1").read_text()

    # Refused, changing nothing: a title with a newline, an element without a key, bad XML.
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_metadata(T, "two\nlines")
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_metadata(E, "<x/>", None, uri)
    with pytest.raises(asvirt.XMLError):
        await dom.set_metadata(E, "<x/><y/>", "ex", uri)
    assert await dom.xml_desc() == xml
    with pytest.raises(asvirt.NoDomainMetadataError) as err:
        await dom.metadata(E, "http://example.org/none")
    assert err.value.code == asvirt.ErrorCode.NO_DOMAIN_METADATA

    # Running: the live XML and the configuration apart.
    await dom.start(paused=True)
    await dom.set_metadata(T, "Live only")
    assert await dom.metadata(T) == "Live only"
    assert await dom.metadata(T, config=True) == "A title"
    await dom.set_metadata(E, None, None, uri, live=True, config=True)  # removed from both
    for live in (True, False):
        with pytest.raises(asvirt.NoDomainMetadataError):
            await dom.metadata(E, uri, live=live, config=not live)
    await dom.set_metadata(D, "", config=True)  # empty: removed
    with pytest.raises(asvirt.NoDomainMetadataError):
        await dom.metadata(D, config=True)
    assert await dom.metadata(D) == "Line one\nline two"
    await dom.destroy()
    assert await dom.metadata(T) == "A title"  # the live change went with the guest


# -- keyboard, NMI, screen --------------------------------------------------------------------


async def test_keys_nmi_and_screenshot(api):
    """What the guest makes of them is tests/test_qemu_display.py's; here, that each driver
    takes them, refuses the same things, and gives a screenshot as a binary PPM."""
    dom = await api.define("vm1", devices="<video><model type='vga'/></video>")
    plain = await api.define("plain")
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.send_key(asvirt.KeycodeSet.LINUX, 0, ["KEY_A"])
    await dom.start(paused=True)
    await plain.start(paused=True)
    await dom.send_key(asvirt.KeycodeSet.LINUX, 0, ["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_DELETE"])
    await dom.send_key("atset1", 20, [0xE053])
    with pytest.raises(asvirt.InvalidArgError):
        await dom.send_key(asvirt.KeycodeSet.XT, 0, [0xE053])  # no single-byte scancode
    await dom.inject_nmi()
    mime, image = await dom.screenshot()
    assert mime == "image/x-portable-pixmap"
    magic, size, depth, pixels = image.split(b"\n", 3)
    width, height = (int(n) for n in size.split())
    assert (magic, depth, len(pixels)) == (b"P6", b"255", width * height * 3)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.screenshot(1)
    with pytest.raises(asvirt.OperationFailedError):
        await plain.screenshot()


# -- statistics --------------------------------------------------------------------------------


async def test_statistics_have_libvirts_fields_in_libvirts_order(api):
    dom = await api.define("vm1", memballoon="virtio")
    off = await api.define("off")
    await dom.start(paused=True)
    records = await api.conn.get_all_domain_stats(domains=[dom, off])
    assert [d for d, _ in records] == [dom, off]
    params, off_params = records[0][1], records[1][1]
    groups = list(dict.fromkeys(k.split(".")[0] for k in params))
    assert groups == ["state", "cpu", "balloon", "vcpu", "net", "block"]
    paused_by_user = (S.PAUSED, asvirt.PausedReason.USER.value)
    assert (params["state.state"], params["state.reason"]) == paused_by_user
    assert params["cpu.time"] == params["cpu.user"] + params["cpu.system"]
    assert params["balloon.current"] == params["balloon.maximum"] == 131072
    assert params["balloon.rss"] > 0
    assert (params["vcpu.current"], params["vcpu.maximum"], params["vcpu.0.state"]) == (1, 1, 1)
    assert params["net.count"] == 0 and params["block.count"] == 0
    # A shut-off domain: what its definition says, nothing measured.
    assert off_params == {
        "state.state": S.SHUTOFF,
        "state.reason": asvirt.ShutoffReason.UNKNOWN.value,
        "balloon.current": 131072,
        "balloon.maximum": 131072,
        "vcpu.current": 1,
        "vcpu.maximum": 1,
        "block.count": 0,
    }
    # Groups and filters; one domain's record.
    only = await api.conn.get_all_domain_stats(
        asvirt.StatsGroup.STATE | asvirt.StatsGroup.VCPU, domains=[dom, off], active=True
    )
    assert [d for d, _ in only] == [dom]
    assert {k.split(".")[0] for k in only[0][1]} == {"state", "vcpu"}
    assert (await off.stats(asvirt.StatsGroup.STATE))["state.state"] == S.SHUTOFF
    assert list(await dom.stats()) == list(params)
    stats = await dom.memory_stats()
    assert next(iter(stats)) == "actual" and list(stats)[-1] == "rss"
    assert stats["actual"] == 131072
    with pytest.raises(asvirt.OperationInvalidError):
        await off.memory_stats()
    with pytest.raises(asvirt.InvalidArgError):
        await dom.block_stats("vdz")
    with pytest.raises(asvirt.InvalidArgError):
        await dom.interface_stats("vnet99")


async def test_memory_stats_period_follows_live_and_config(api):
    dom = await api.define("vm1", memballoon="virtio", balloon_period=5)
    await dom.start(paused=True)
    assert "<stats period='5'/>" in await dom.xml_desc()
    await dom.set_memory_stats_period(4)  # running: the live definition only
    assert "<stats period='4'/>" in await dom.xml_desc()
    assert "<stats period='5'/>" in await dom.xml_desc(inactive=True)
    await dom.set_memory_stats_period(6, config=True)
    assert "<stats period='6'/>" in await dom.xml_desc(inactive=True)
    assert "<stats period='4'/>" in await dom.xml_desc()
    await dom.set_memory_stats_period(2, live=True, config=True)
    assert "<stats period='2'/>" in await dom.xml_desc(inactive=True)
    assert "<stats period='2'/>" in await dom.xml_desc()
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_memory_stats_period(-1)
    await dom.destroy()
    await dom.set_memory_stats_period(0)  # shut off: its configuration
    assert "<stats period='0'/>" in await dom.xml_desc()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.set_memory_stats_period(1, live=True)
    nob = await api.define("nob")  # <memballoon model='none'/>
    with pytest.raises(asvirt.OperationInvalidError):
        await nob.set_memory_stats_period(1)
    tvm = await api.conn.create_xml(api.xml("tvm", memballoon="virtio"), paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await tvm.set_memory_stats_period(1, config=True)


# -- memory and vCPUs -------------------------------------------------------------------------


async def test_set_memory_follows_live_and_config(api):
    dom = await api.define("vm1", memballoon="virtio")
    await dom.start(paused=True)
    async with api.conn.subscribe(dom, kinds=asvirt.EventKind.BALLOON_CHANGE) as events:
        await dom.set_memory(98304)  # running: the balloon is asked, nothing else
        await api.settle(dom)
        # A guest that never ran has no balloon driver to comply: nothing changes (yet).
        assert drain(events) == []
    assert (await dom.info()).memory_kib == 131072
    assert "<currentMemory unit='KiB'>131072</currentMemory>" in await dom.xml_desc(inactive=True)
    await dom.set_memory(65536, config=True)
    assert "<currentMemory unit='KiB'>65536</currentMemory>" in await dom.xml_desc(inactive=True)
    with pytest.raises(asvirt.InvalidArgError, match="higher than max memory"):
        await dom.set_memory(131073, live=True, config=True)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_memory(0)
    # The maximum is the configuration's alone, as libvirt: refused while running.
    with pytest.raises(asvirt.OperationInvalidError, match="active domain"):
        await dom.set_max_memory(262144)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.set_max_memory(262144, live=True, config=True)
    await dom.set_max_memory(262144, config=True)
    await dom.set_memory(196608, config=True)  # above the running guest's maximum: config only
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_memory(196608, live=True)
    inactive = await dom.xml_desc(inactive=True)
    assert "<memory unit='KiB'>262144</memory>" in inactive
    assert "<currentMemory unit='KiB'>196608</currentMemory>" in inactive
    assert "<memory unit='KiB'>131072</memory>" in await dom.xml_desc()
    await dom.destroy()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.set_memory(65536, live=True)
    await dom.set_max_memory(98304)  # shut off: its configuration; currentMemory follows
    info = await dom.info()
    assert (info.max_memory_kib, info.memory_kib) == (98304, 98304)
    nob = await api.define("nob")  # <memballoon model='none'/>
    await nob.set_memory(65536)  # shut off: only the configuration, no balloon needed
    await nob.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError, match="balloon"):
        await nob.set_memory(32768)
    tvm = await api.conn.create_xml(api.xml("tvm", memballoon="virtio"), paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await tvm.set_memory(65536, config=True)


async def test_vcpus_follow_live_and_config(api):
    dom = await api.define("vm1", vcpus=1, max_vcpus=3)
    counts = {
        "config": await dom.vcpus_count(config=True),
        "max": await dom.vcpus_count(config=True, maximum=True),
    }
    assert counts == {"config": 1, "max": 3}
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.vcpus_count(live=True)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.vcpus_count(live=True, config=True)
    await dom.start(paused=True)
    if not api.simulated:
        # libvirt's command line: the vCPUs beyond the current ones can be plugged.
        assert "-smp 1,maxcpus=3,sockets=3,cores=1,threads=1" in api.log_file("vm1").read_text()
    await dom.set_vcpus(3)  # running: hot-plugged into the live guest only
    assert (await dom.info()).vcpus == 3
    assert await dom.vcpus_count() == 3
    assert await dom.vcpus_count(config=True) == 1
    live = await dom.xml_desc()
    assert "<vcpu placement='static'>3</vcpu>" in live
    # The live XML says which vCPUs are plugged devices (libvirt's <vcpus>), in plug order.
    assert (
        "<vcpus>\n    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>\n"
        "    <vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>\n"
        "    <vcpu id='2' enabled='yes' hotpluggable='yes' order='3'/>\n  </vcpus>"
    ) in live
    vcpu_stats = await dom.stats(asvirt.StatsGroup.VCPU)
    assert (vcpu_stats["vcpu.current"], vcpu_stats["vcpu.maximum"]) == (3, 3)
    assert "vcpu.2.time" in vcpu_stats  # the new vCPUs' threads are measured too
    if not api.simulated:
        assert len(await dom.qmp("query-cpus-fast")) == 3
    with pytest.raises(asvirt.InvalidArgError, match="greater than max"):
        await dom.set_vcpus(4)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_vcpus(0)
    # The guest never ran: nobody can release a vCPU (QEMU refuses to ask).
    with pytest.raises(asvirt.OperationFailedError, match="handles ACPI CPU hot-unplug"):
        await dom.set_vcpus(2)
    assert await dom.vcpus_count() == 3
    await dom.set_vcpus(2, config=True)
    assert "<vcpu placement='static' current='2'>3</vcpu>" in await dom.xml_desc(inactive=True)
    # The maximum: a configuration's only (libvirt's flags and errors).
    with pytest.raises(asvirt.InvalidArgError, match="required"):
        await dom.set_vcpus(4, maximum=True)
    with pytest.raises(asvirt.ConfigUnsupportedError, match="live domain"):
        await dom.set_vcpus(4, live=True, config=True, maximum=True)
    await dom.set_vcpus(4, config=True, maximum=True)
    assert await dom.vcpus_count(config=True, maximum=True) == 4
    assert await dom.vcpus_count(maximum=True) == 3  # the running guest's
    await dom.destroy()
    await dom.set_vcpus(1, config=True, maximum=True)  # lowers the current count with it
    assert (await dom.vcpus_count(), await dom.vcpus_count(maximum=True)) == (1, 1)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.set_vcpus(2)
    await dom.set_vcpus(2, maximum=True, config=True)
    await dom.set_vcpus(2)  # shut off: its configuration
    assert "<vcpu placement='static'>2</vcpu>" in await dom.xml_desc()
    tvm = await api.conn.create_xml(api.xml("tvm", vcpus=2, max_vcpus=3), paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await tvm.set_vcpus(2, config=True)
    # The vCPUs a guest booted with stay (libvirt: hotpluggable='no').
    with pytest.raises(asvirt.ConfigUnsupportedError, match="hotpluggable"):
        await tvm.set_vcpus(1)
    assert await tvm.vcpus_count() == 2
    with pytest.raises(asvirt.OperationInvalidError):
        await tvm.vcpus_count(config=True)


async def test_vcpu_and_emulator_pinning_live_and_config(api):
    """virsh vcpuinfo/vcpupin/emulatorpin: the threads' affinity (read back from the kernel
    on QEMU), the live and persistent <cputune>, and refusals that change nothing."""
    host = (await api.conn.node_info()).cpus
    if not api.simulated and not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("pinning to different CPUs needs CPUs 0 and 1")
    only = {n: [i == n for i in range(host)] for n in (0, 1)}
    every = [True] * host
    dom = await api.define("vm1", vcpus=2, max_vcpus=3)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.vcpus()
    assert await dom.vcpu_pin_info() == [every] * 3  # shut off: its configuration's
    await dom.start(paused=True)
    vcpus = await dom.vcpus()
    assert [(v.number, v.state) for v in vcpus] == [(0, asvirt.VcpuState.RUNNING), (1, 1)]
    assert all(len(v.cpumap) == host for v in vcpus)
    threads: dict[int, int] = {}
    if not api.simulated:
        pid = api.pid("vm1")
        threads = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
        for v in vcpus:
            allowed = [str(i) for i, used in enumerate(v.cpumap) if used]
            assert cpus_allowed(pid, threads[v.number]) == f"{allowed[0]}-{allowed[-1]}"
            assert 0 <= v.cpu < host
    # Live only: the thread and the live XML; the configuration keeps its own.
    await dom.pin_vcpu(0, only[1])
    assert (await dom.vcpus())[0].cpumap == only[1]
    assert await dom.vcpu_pin_info(live=True) == [only[1], every, every]
    assert await dom.vcpu_pin_info(config=True) == [every] * 3
    assert "<vcpupin vcpu='0' cpuset='1'/>" in await dom.xml_desc()
    assert "<cputune>" not in await dom.xml_desc(inactive=True)
    # Config only: the running thread keeps its affinity.
    await dom.pin_vcpu_flags(1, only[0], config=True)
    assert (await dom.vcpus())[1].cpumap == every
    assert "<vcpupin vcpu='1' cpuset='0'/>" in await dom.xml_desc(inactive=True)
    # An offline vCPU: recorded live, applied when it is plugged.
    await dom.pin_vcpu_flags(2, only[0], live=True)
    await dom.set_vcpus(3)
    assert (await dom.vcpus())[2].cpumap == only[0]
    await dom.pin_emulator(only[0], live=True, config=True)
    assert await dom.emulator_pin_info() == only[0]
    assert await dom.emulator_pin_info(config=True) == only[0]
    assert "<emulatorpin cpuset='0'/>" in await dom.xml_desc(inactive=True)
    if not api.simulated:
        threads = {c["cpu-index"]: c["thread-id"] for c in await dom.qmp("query-cpus-fast")}
        assert cpus_allowed(pid, threads[0]) == "1"
        assert cpus_allowed(pid, threads[1]) == f"0-{host - 1}"
        assert cpus_allowed(pid, threads[2]) == "0"
        emulator = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - set(threads.values())
        assert emulator and all(cpus_allowed(pid, t) == "0" for t in emulator)
    # Refusals (libvirt's errors) change nothing.
    live, config = await dom.xml_desc(), await dom.xml_desc(inactive=True)
    with pytest.raises(asvirt.InvalidArgError, match="out of range of live cpu count 3"):
        await dom.pin_vcpu(3, only[0])
    with pytest.raises(asvirt.InvalidArgError, match="Empty cpu list"):
        await dom.pin_vcpu(0, [False] * host)
    with pytest.raises(asvirt.InvalidArgError, match="out of range"):
        await dom.pin_emulator([*[False] * host, True], live=True)
    with pytest.raises(asvirt.InvalidArgError, match="mutually exclusive"):
        await dom.vcpu_pin_info(live=True, config=True)
    assert (await dom.xml_desc(), await dom.xml_desc(inactive=True)) == (live, config)
    if not api.simulated:
        assert cpus_allowed(pid, threads[0]) == "1"
    await dom.destroy()
    with pytest.raises(asvirt.OperationInvalidError, match="not running"):
        await dom.pin_vcpu(0, only[0])
    await dom.pin_vcpu_flags(0, only[1])  # shut off: the configuration
    assert (await dom.vcpu_pin_info())[:2] == [only[1], only[0]]
    assert_libvirt_schema(await dom.xml_desc())


async def test_iothread_pinning_live_and_config(api):
    """virsh iothreadinfo/iothreadpin: the running I/O threads' affinity (read back from the
    kernel on QEMU) and the live and persistent <iothreadpin>."""
    host = (await api.conn.node_info()).cpus
    if not api.simulated and not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("pinning to different CPUs needs CPUs 0 and 1")
    only = {n: [i == n for i in range(host)] for n in (0, 1)}
    every = [True] * host
    xml = api.xml("vm1").replace("<os>", "<iothreads>2</iothreads><os>", 1)
    dom = await api.conn.define_xml(xml)
    bare = await api.define("bare")
    assert await bare.iothread_info() == []
    expected = [asvirt.IOThreadInfo(iothread_id=n, cpumap=every) for n in (1, 2)]
    assert await dom.iothread_info() == expected  # shut off: the configuration's
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.iothread_info(live=True)
    await dom.start(paused=True)
    assert await dom.iothread_info() == expected
    await dom.pin_iothread(1, only[1])  # running: the thread and the live XML
    await dom.pin_iothread(2, only[0], config=True)
    live = await dom.iothread_info()
    assert [(t.iothread_id, t.cpumap) for t in live] == [(1, only[1]), (2, every)]
    config = await dom.iothread_info(config=True)
    assert [(t.iothread_id, t.cpumap) for t in config] == [(1, every), (2, only[0])]
    assert "<iothreadpin iothread='1' cpuset='1'/>" in await dom.xml_desc()
    assert "<iothreadpin iothread='2' cpuset='0'/>" in await dom.xml_desc(inactive=True)
    if not api.simulated:
        pid = api.pid("vm1")
        threads = {t["id"]: t["thread-id"] for t in await dom.qmp("query-iothreads")}
        assert cpus_allowed(pid, threads["iothread1"]) == "1"
        assert cpus_allowed(pid, threads["iothread2"]) == f"0-{host - 1}"
    before = (await dom.xml_desc(), await dom.xml_desc(inactive=True))
    with pytest.raises(asvirt.InvalidArgError, match="iothread 3 not found"):
        await dom.pin_iothread(3, only[0], live=True, config=True)
    with pytest.raises(asvirt.InvalidArgError, match="Empty cpu list"):
        await dom.pin_iothread(1, [False] * host)
    assert (await dom.xml_desc(), await dom.xml_desc(inactive=True)) == before


async def test_block_io_tune_live_and_config(api):
    """virsh blkdeviotune: libvirt's parameters and families, the running disk's throttle as
    QEMU applies it (its throttle group's limits), a group's disks together, the
    configuration's <iotune>, and refusals that change nothing."""
    from .helpers import disk_xml, qemu_img

    for name in "abcd":
        qemu_img("create", "-q", "-f", "qcow2", api.tmp / f"{name}.qcow2", "16M")

    def iotune(text: str) -> str:
        return f"<iotune>{text}</iotune>"

    devices = "".join(
        (
            disk_xml(
                api.tmp / "a.qcow2",
                "vda",
                extra=iotune("<total_bytes_sec>2097152</total_bytes_sec>"),
            ),
            disk_xml(api.tmp / "b.qcow2", "vdb"),
            disk_xml(
                api.tmp / "c.qcow2",
                "vdc",
                extra=iotune("<total_iops_sec>100</total_iops_sec><group_name>g</group_name>"),
            ),
            disk_xml(
                api.tmp / "d.qcow2",
                "vdd",
                extra=iotune("<total_iops_sec>100</total_iops_sec><group_name>g</group_name>"),
            ),
        )
    )
    dom = await api.define("vm1", devices=devices)
    unset = {name: 0 for name in IOTUNE_ORDER} | {"group_name": ""}
    assert await dom.block_io_tune("vda") == unset | {"total_bytes_sec": 2097152}
    assert list(await dom.block_io_tune("vdb")) == list(IOTUNE_ORDER)  # libvirt's order
    await dom.start(paused=True)

    async def qemu_limits() -> dict[str, dict[str, int]]:
        """Each throttle group's limits, as QEMU has them (what is set, by QEMU's names)."""
        groups = [
            o["name"]
            for o in await dom.qmp("qom-list", {"path": "/objects"})
            if o["type"] == "child<throttle-group>"
        ]
        out = {}
        for group in groups:
            limits = await dom.qmp("qom-get", {"path": f"/objects/{group}", "property": "limits"})
            out[group] = {k: v for k, v in limits.items() if v and not k.endswith("-length")}
        return out

    assert await dom.block_io_tune("vda") == unset | {"total_bytes_sec": 2097152}
    await dom.set_block_io_tune("vda", {"total_bytes_sec": 1048576, "read_iops_sec": 100})
    live = unset | {"total_bytes_sec": 1048576, "read_iops_sec": 100}
    assert await dom.block_io_tune("vda") == live
    assert await dom.block_io_tune("vda", config=True) == unset | {"total_bytes_sec": 2097152}
    assert "<total_bytes_sec>1048576</total_bytes_sec>" in await dom.xml_desc()
    # A family given replaces the whole family; the others stay (libvirt's rule).
    await dom.set_block_io_tune("vda", {"read_bytes_sec": 5000}, live=True)
    live = unset | {"read_bytes_sec": 5000, "read_iops_sec": 100}
    assert await dom.block_io_tune("vda") == live
    # A group's disks share its limits.
    await dom.set_block_io_tune("vdc", {"total_iops_sec": 300})
    assert (await dom.block_io_tune("vdd"))["total_iops_sec"] == 300
    if not api.simulated:
        assert await qemu_limits() == {
            "throttle-virtio-disk0": {"bps-read": 5000, "iops-read": 100},
            "throttle-g": {"iops-total": 300},
        }
    await dom.set_block_io_tune("vda", {"total_iops_sec": 50}, config=True)
    assert await dom.block_io_tune("vda", config=True) == unset | {
        "total_bytes_sec": 2097152,
        "total_iops_sec": 50,
    }
    # Refusals change nothing.
    before = (await dom.xml_desc(), await dom.xml_desc(inactive=True))
    with pytest.raises(asvirt.InvalidArgError, match="total and read/write of bytes_sec"):
        await dom.set_block_io_tune(
            "vda", {"total_bytes_sec": 1, "read_bytes_sec": 1}, live=True, config=True
        )
    with pytest.raises(asvirt.InvalidArgError, match="cannot be lower"):
        await dom.set_block_io_tune("vda", {"read_bytes_sec_max": 10})
    with pytest.raises(asvirt.InvalidArgError, match="unknown"):
        await dom.set_block_io_tune("vda", {"bytes": 1})
    with pytest.raises(asvirt.InvalidArgError, match="invalid path"):
        await dom.set_block_io_tune("vdz", {"total_bytes_sec": 1})
    if not api.simulated:
        # No throttle filter to change on a disk started without <iotune>, nor another group.
        with pytest.raises(asvirt.OperationUnsupportedError, match="without <iotune>"):
            await dom.set_block_io_tune("vdb", {"total_bytes_sec": 1}, live=True, config=True)
        with pytest.raises(asvirt.OperationUnsupportedError, match="group_name"):
            await dom.set_block_io_tune("vdc", {"group_name": "h"}, live=True)
        assert await qemu_limits() == {
            "throttle-virtio-disk0": {"bps-read": 5000, "iops-read": 100},
            "throttle-g": {"iops-total": 300},
        }
    assert (await dom.xml_desc(), await dom.xml_desc(inactive=True)) == before
    assert await dom.block_io_tune("vda") == live
    # Every limit removed from the configuration: no <iotune> left, as libvirt.
    await dom.set_block_io_tune("vda", {"total_bytes_sec": 0, "total_iops_sec": 0}, config=True)
    # Every limit removed from the running disk: QEMU throttles it no more.
    await dom.set_block_io_tune("vda", {"read_bytes_sec": 0, "read_iops_sec": 0}, live=True)
    assert await dom.block_io_tune("vda") == unset
    if not api.simulated:
        assert (await qemu_limits())["throttle-virtio-disk0"] == {}
    # What the XML then says is libvirt's (valid under its schema).
    for xml in (await dom.xml_desc(), await dom.xml_desc(inactive=True)):
        assert_libvirt_schema(xml)
    config = etree.fromstring((await dom.xml_desc(inactive=True)).encode())
    assert config.xpath("devices/disk[target/@dev='vda']/iotune") == []
    assert config.xpath("devices/disk[target/@dev='vdc']/iotune/group_name/text()") == ["g"]


async def test_cpu_stats_of_a_running_domain(api):
    """virsh cpu-stats: the totals on every driver; per host CPU where the host keeps such
    figures (the test driver's simulated ones; QEMU's only in a cgroup v1 cpuacct
    hierarchy, which these domains are not in: refused, as libvirt refuses)."""
    host = (await api.conn.node_info()).cpus
    dom = await api.define("vm1")
    with pytest.raises(asvirt.OperationInvalidError, match="not running"):
        await dom.get_cpu_stats(True)
    await dom.start(paused=True)
    (total,) = await dom.get_cpu_stats(True)
    assert list(total) == ["cpu_time", "user_time", "system_time"]
    assert total["cpu_time"] >= total["user_time"] >= 0
    if api.simulated:
        per_cpu = await dom.get_cpu_stats(False)
        assert len(per_cpu) == host
        assert all(list(c) == ["cpu_time", "vcpu_time"] for c in per_cpu)
        assert len(await dom.get_cpu_stats(False, start=host - 1, count=5)) == 1
    else:
        with pytest.raises(asvirt.OperationInvalidError, match="CPUACCT"):
            await dom.get_cpu_stats(False)
    with pytest.raises(asvirt.InvalidArgError):
        await dom.get_cpu_stats(False, start=host)


def _balloon_at(seen: list[asvirt.DomainEvent], kib: int) -> bool:
    return bool(seen) and seen[-1].data["actual_kib"] == kib


@needs_guest
async def test_a_running_guest_follows_its_balloon_and_vcpus(api):
    dom = await api.define(
        "vm1", boots=True, memballoon="virtio", vcpus=1, max_vcpus=2, cmdline="asvirt.hotplug=watch"
    )
    await dom.start()
    await api.wait_booted(dom)
    async with api.conn.subscribe(dom, kinds=asvirt.EventKind.BALLOON_CHANGE) as events:
        await dom.set_memory(112 * 1024)
        # The guest's balloon driver complies; QEMU reports each step it takes.
        await collect_until(events, lambda seen: _balloon_at(seen, 112 * 1024), timeout=60)
    assert (await dom.info()).memory_kib == 112 * 1024
    assert (await dom.memory_stats())["actual"] == 112 * 1024
    assert "<currentMemory unit='KiB'>114688</currentMemory>" in await dom.xml_desc()
    assert "<currentMemory unit='KiB'>131072</currentMemory>" in await dom.xml_desc(inactive=True)
    if not api.simulated:
        # The guest sees it too: its /init reports MemTotal (kB), 16 MiB less now.
        def guest_memory() -> list[int]:
            text = api.serial("vm1").read_text(errors="replace")
            return [int(line.split()[1]) for line in text.splitlines() if "ASVIRT-MEM" in line]

        def shrunk() -> bool:  # from what it had at boot (told before READY)
            seen = guest_memory()
            return len(seen) > 1 and seen[-1] <= seen[0] - 16000

        await wait_for(shrunk, timeout=30)
    await dom.set_vcpus(2)
    assert (await dom.info()).vcpus == 2
    if not api.simulated:  # ... and brings the new vCPU online
        await wait_for_serial(api.serial("vm1"), "ASVIRT-CPUS 2")
    await dom.set_vcpus(1)  # the guest releases the vCPU it was given
    assert (await dom.info()).vcpus == 1
    if not api.simulated:
        assert len(await dom.qmp("query-cpus-fast")) == 1
        await wait_for_serial(api.serial("vm1"), "ASVIRT-CPUS 1\n")
    assert await dom.vcpus_count(config=True) == 1


def _targets(xml: str) -> list[str]:
    return [t.get("dev") for t in etree.fromstring(xml.encode()).iterfind("devices/disk/target")]


def _links(xml: str) -> list[str | None]:
    root = etree.fromstring(xml.encode())
    return [
        nic.find("link").get("state") if nic.find("link") is not None else None
        for nic in root.iterfind("devices/interface")
    ]


async def test_devices_follow_live_and_config(api):
    from .helpers import disk_xml, qemu_img

    for name in ("b", "c"):
        qemu_img("create", "-q", "-f", "qcow2", api.tmp / f"{name}.qcow2", "16M")
    # A SCSI disk: QEMU unplugs it at once, no guest needed.
    dom = await api.define("vm1", devices="<controller type='scsi' model='virtio-scsi'/>")
    sdb = disk_xml(api.tmp / "b.qcow2", "sdb", bus="scsi")
    sdc = disk_xml(api.tmp / "c.qcow2", "sdc", bus="scsi")
    await dom.attach_device(sdb)  # shut off: the configuration
    assert _targets(await dom.xml_desc(inactive=True)) == ["sdb"]
    await dom.start(paused=True)
    await dom.attach_device(sdc)  # running: the live definition only
    assert _targets(await dom.xml_desc()) == ["sdb", "sdc"]
    assert _targets(await dom.xml_desc(inactive=True)) == ["sdb"]
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.attach_device(sdc, config=True, live=True)  # a target the live one has
    assert _targets(await dom.xml_desc(inactive=True)) == ["sdb"]
    async with api.conn.subscribe(dom, kinds={asvirt.EventKind.DEVICE_REMOVED}) as events:
        assert await dom.detach_device(sdb, live=True, config=True) is True
        await collect_until(events, lambda seen: bool(seen))
    assert _targets(await dom.xml_desc()) == ["sdc"]
    assert _targets(await dom.xml_desc(inactive=True)) == []
    with pytest.raises(asvirt.DeviceMissingError):
        await dom.detach_device(sdb)
    nic = "<interface type='user'><mac address='52:54:00:00:00:07'/></interface>"
    await dom.attach_device(nic, live=True, config=True)
    down = nic.replace("</interface>", "<link state='down'/></interface>")
    await dom.update_device(down)
    assert _links(await dom.xml_desc()) == ["down"]
    assert _links(await dom.xml_desc(inactive=True)) == [None]
    tvm = await api.conn.create_xml(api.xml("tvm"), paused=True)
    with pytest.raises(asvirt.OperationInvalidError):
        await tvm.attach_device(nic, config=True)


def _usb_input_types(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [el.get("type") for el in root.iterfind("devices/input[@bus='usb']")]


async def test_usb_inputs_attach_and_detach_live_and_config(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    tablet = "<input type='tablet' bus='usb'/>"
    await dom.attach_device(tablet, live=True, config=True)
    await dom.attach_device("<input type='keyboard' bus='usb'/>")  # live only
    assert _usb_input_types(await dom.xml_desc()) == ["tablet", "keyboard"]
    assert _usb_input_types(await dom.xml_desc(inactive=True)) == ["tablet"]
    async with api.conn.subscribe(dom, kinds={asvirt.EventKind.DEVICE_REMOVED}) as events:
        assert await dom.detach_device(tablet, live=True, config=True) is True
        await collect_until(events, lambda seen: bool(seen))
    assert _usb_input_types(await dom.xml_desc()) == ["keyboard"]
    assert _usb_input_types(await dom.xml_desc(inactive=True)) == []
    with pytest.raises(asvirt.DeviceMissingError):
        await dom.detach_device(tablet)


async def test_volume_disks_attach_as_their_path_live_and_as_volumes_in_the_config(api):
    pool = await api.define_pool("p")
    await pool.create_volume_xml(vol_xml("v.qcow2", extra=QCOW2))
    dom = await api.define("vm1", devices="<controller type='scsi' model='virtio-scsi'/>")
    await dom.start(paused=True)
    disk = (
        "<disk type='volume' device='disk'><source pool='p' volume='v.qcow2'/>"
        "<target dev='sdb' bus='scsi'/></disk>"
    )
    await dom.attach_device(disk, live=True, config=True)
    path = str(api.pool_dir("p") / "v.qcow2")
    live = etree.fromstring((await dom.xml_desc()).encode()).find("devices/disk")
    assert live.get("type") == "file" and live.find("source").get("file") == path
    assert live.find("driver").get("type") == "qcow2"
    config = etree.fromstring((await dom.xml_desc(inactive=True)).encode()).find("devices/disk")
    assert config.get("type") == "volume" and config.find("source").get("volume") == "v.qcow2"
    with pytest.raises(asvirt.NoStorageVolError):
        await dom.attach_device(disk.replace("v.qcow2", "nope").replace("sdb", "sdc"))
    assert _targets(await dom.xml_desc()) == ["sdb"]


# -- persistence, transience, autodestroy ---------------------------------------------------


async def test_transient_domain_vanishes_when_it_stops(api):
    before = await api.baseline()
    async with api.conn.subscribe(kinds=LC) as events:
        dom = await api.conn.create_xml(api.xml("tvm"), paused=True)
        assert not await dom.is_persistent()
        assert await dom.is_active()
        if not api.simulated:
            assert not api.config_file("tvm").exists()
        with pytest.raises(asvirt.OperationInvalidError):
            await dom.undefine()
        await dom.destroy()
        assert drain_lifecycle(events) == [
            ("STARTED", "BOOTED"),
            ("SUSPENDED", "PAUSED"),
            ("STOPPED", "DESTROYED"),
        ]
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_name("tvm")
    with pytest.raises(asvirt.NoDomainError):
        await dom.state()
    assert await api.baseline() == before


async def test_undefine_running_domain_makes_it_transient(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    async with api.conn.subscribe(dom, kinds=LC) as events:
        await dom.undefine()
        assert await dom.is_active()
        assert not await dom.is_persistent()
        if not api.simulated:
            assert not api.config_file("vm1").exists()
        await dom.destroy()
        assert drain_lifecycle(events) == [("UNDEFINED", "REMOVED"), ("STOPPED", "DESTROYED")]
    with pytest.raises(asvirt.NoDomainError):
        await api.conn.lookup_by_uuid(dom.uuid)


async def test_defining_a_transient_domain_makes_it_persistent(api):
    dom = await api.conn.create_xml(api.xml("tvm"), paused=True)
    async with api.conn.subscribe(dom, kinds=LC) as events:
        again = await api.conn.define_xml(api.xml("tvm", uuid=dom.uuid))
        assert again == dom
        assert drain_lifecycle(events) == [("DEFINED", "ADDED")]
    assert await dom.is_persistent()
    await dom.destroy()
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)


async def test_redefining_a_running_domain_changes_only_the_next_boot(api):
    dom = await api.define("vm1", memory_mib=128)
    await dom.start(paused=True)
    async with api.conn.subscribe(dom, kinds=LC) as events:
        await api.define("vm1", uuid=dom.uuid, memory_mib=256)
        assert drain_lifecycle(events) == [("DEFINED", "UPDATED")]
    assert (await dom.info()).max_memory_kib == 128 * 1024
    assert parse_domain_xml(await dom.xml_desc()).memory_kib == 128 * 1024
    assert parse_domain_xml(await dom.xml_desc(inactive=True)).memory_kib == 256 * 1024
    await dom.destroy()
    assert (await dom.info()).max_memory_kib == 256 * 1024


async def test_xml_desc_round_trips(api):
    dom = await api.define("vm1", on_crash="preserve")
    xml = await dom.xml_desc()
    defn = parse_domain_xml(xml)
    assert (defn.name, defn.uuid, defn.on_crash) == ("vm1", dom.uuid, "preserve")
    async with api.conn.subscribe(dom, kinds=LC) as events:
        assert await api.conn.define_xml(xml) == dom
        assert drain_lifecycle(events) == [("DEFINED", "UPDATED")]
    assert await dom.xml_desc() == xml


async def test_handles_of_a_vanished_domain(api):
    dom = await api.define("vm1")
    await dom.undefine()
    calls = [
        dom.start,
        dom.suspend,
        dom.resume,
        dom.shutdown,
        dom.reboot,
        dom.reset,
        dom.destroy,
        dom.undefine,
        dom.state,
        dom.info,
        dom.xml_desc,
        dom.is_active,
        dom.is_persistent,
        dom.id,
        lambda: dom.qmp("query-status"),
    ]
    for call in calls:
        with pytest.raises(asvirt.NoDomainError):
            await call()


async def test_closing_a_connection_autodestroys_only_what_it_asked_for(backend):
    async with backend.state_kept():
        async with backend.open() as conn:
            backend.conn = conn
            auto = await backend.define("auto")
            await auto.start(paused=True, autodestroy=True)
            tauto = await conn.create_xml(backend.xml("tauto"), paused=True, autodestroy=True)
            assert await tauto.is_active()
            kept = await backend.define("kept")
            await kept.start(paused=True)
            pids = [] if backend.simulated else [backend.pid("auto"), backend.pid("tauto")]
        # Closing returns once what it autodestroys is gone.
        assert not any(pid_exists(pid) for pid in pids)
        async with backend.open() as conn:
            auto = await conn.lookup_by_name("auto")
            assert await auto.state() == (S.SHUTOFF, asvirt.ShutoffReason.DESTROYED)
            with pytest.raises(asvirt.NoDomainError):
                await conn.lookup_by_name("tauto")
            kept = await conn.lookup_by_name("kept")
            try:
                assert await kept.state() == (S.PAUSED, asvirt.PausedReason.USER)
            finally:
                await kept.destroy()


async def test_create_xml_with_autodestroy_then_close(backend):
    async with backend.state_kept():
        async with backend.open() as conn:
            dom = await conn.create_xml(backend.xml("tvm"), autodestroy=True, paused=True)
            assert await dom.is_active()
        async with backend.open() as conn:
            assert "tvm" not in {d.name for d in await conn.list_all_domains()}


# -- events -----------------------------------------------------------------------------------


async def test_event_callbacks_sync_and_async(api):
    got_sync: list[asvirt.DomainEvent] = []
    got_async: list[asvirt.DomainEvent] = []
    done = trio.Event()

    async def on_event(ev: asvirt.DomainEvent) -> None:
        await trio.lowlevel.checkpoint()
        got_async.append(ev)
        if lifecycle(ev) == ("STOPPED", "DESTROYED"):
            done.set()

    cb1 = api.conn.register_event_callback(got_sync.append, kinds=LC)
    cb2 = api.conn.register_event_callback(on_event, domain="cb")
    dom = await api.define("cb")
    await dom.start(paused=True)
    await dom.destroy()
    with trio.fail_after(5):
        await done.wait()
    api.conn.deregister_event_callback(cb1)
    api.conn.deregister_event_callback(cb2)
    expected = [
        ("DEFINED", "ADDED"),
        ("STARTED", "BOOTED"),
        ("SUSPENDED", "PAUSED"),
        ("STOPPED", "DESTROYED"),
    ]
    assert [lifecycle(e) for e in got_sync] == expected
    assert [lifecycle(e) for e in got_async if lifecycle(e)] == expected
    seqs = [e.seq for e in got_async]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert all(e.domain == "cb" and e.uuid == dom.uuid and e.timestamp > 0 for e in got_async)
    with pytest.raises(asvirt.InvalidArgError):
        api.conn.deregister_event_callback(cb1)
    with pytest.raises(asvirt.InvalidArgError):
        api.conn.register_event_callback("not callable")  # type: ignore[arg-type]


async def test_subscriptions_filter_by_domain_and_kind(api):
    a = await api.define("a")
    b = await api.define("b")
    async with (
        api.conn.subscribe(a) as only_a,
        api.conn.subscribe(b.uuid) as only_b,
        api.conn.subscribe("a", kinds={asvirt.EventKind.QMP}) as raw_a,
    ):
        await a.start(paused=True)
        await b.start(paused=True)
        await a.resume()
        assert {e.domain for e in drain(only_a)} == {"a"}
        assert {e.domain for e in drain(only_b)} == {"b"}
        assert [e.data["event"] for e in drain(raw_a)] == ["RESUME"]


async def test_late_subscribers_can_replay(api):
    before = api.conn.subscribe()
    seq0 = 0
    async with before:
        dom = await api.define("vm1")
        await dom.start(paused=True)
        seq0 = drain(before)[0].seq - 1
    async with api.conn.subscribe(dom, since=seq0) as late:
        # In-process the replay is there at once; through a daemon it is on its way.
        assert await lifecycle_until(late, ("SUSPENDED", "PAUSED"), timeout=5) == [
            ("DEFINED", "ADDED"),
            ("STARTED", "BOOTED"),
            ("SUSPENDED", "PAUSED"),
        ]


async def test_every_connection_sees_an_event_with_the_same_number(api):
    # Events are numbered by the node, not per connection: a cursor means the same everywhere.
    async with (
        api.open() as other,
        api.conn.subscribe(kinds=LC) as mine,
        other.subscribe(kinds=LC) as theirs,
    ):
        dom = await api.define("vm1")
        await (await other.lookup_by_name("vm1")).start(paused=True)
        await dom.destroy()

        def stopped(seen: list[asvirt.DomainEvent]) -> bool:
            return ("STOPPED", "DESTROYED") in map(lifecycle, seen)

        seen_mine = await collect_until(mine, stopped)
        seen_theirs = await collect_until(theirs, stopped)
    assert [(e.seq, lifecycle(e)) for e in seen_mine] == [
        (e.seq, lifecycle(e)) for e in seen_theirs
    ]
    assert seen_mine == seen_theirs
    assert [lifecycle(e) for e in seen_mine] == [
        ("DEFINED", "ADDED"),
        ("STARTED", "BOOTED"),
        ("SUSPENDED", "PAUSED"),
        ("STOPPED", "DESTROYED"),
    ]


async def test_replay_meets_live_events_with_no_gap_and_no_duplicate(api):
    # A subscriber replays the node's history from the start while events keep coming:
    # every number once, in order, none missing where the replay ends and live events begin.
    dom = await api.define("vm1")
    await dom.start(paused=True)
    rounds = 30
    async with api.conn.subscribe(kinds=LC) as watch:
        done = trio.Event()

        async def publish() -> None:
            for _ in range(rounds):
                await dom.resume()
                await dom.suspend()
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            # Subscribe in the middle of it: after the first few events are out.
            await collect_until(watch, lambda seen: len(seen) >= 4)
            every_kind = set(asvirt.EventKind) - {asvirt.EventKind.QMP}
            async with api.conn.subscribe(kinds=every_kind, since=0) as late:
                await done.wait()

                def all_in(seen: list[asvirt.DomainEvent]) -> bool:
                    told = [lifecycle(e) for e in seen if e.domain == "vm1"]
                    return told.count(("SUSPENDED", "PAUSED")) == rounds + 1

                got = await collect_until(late, all_in, timeout=30)
    seqs = [e.seq for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a duplicate"
    assert seqs[0] == 1 or got[0].kind is asvirt.EventKind.GAP
    assert [lifecycle(e) for e in got if e.domain == "vm1"][-2 * rounds :] == [
        ("RESUMED", "UNPAUSED"),
        ("SUSPENDED", "PAUSED"),
    ] * rounds
    await dom.destroy()


# -- a user's script ----------------------------------------------------------------------------


async def user_script(uri: str, xml: str) -> list[str]:
    """What a user might write against qemu:///embed: only the URI changes between drivers."""
    seen: list[str] = []
    undefined = trio.Event()

    def on_event(ev: asvirt.DomainEvent) -> None:
        seen.append(ev.describe())
        if ev.type is asvirt.LifecycleEvent.UNDEFINED:
            undefined.set()

    async with asvirt.open(uri) as conn:
        conn.register_event_callback(on_event, kinds=LC)
        dom = await conn.define_xml(xml)
        async with conn.subscribe(dom, kinds=LC) as events:
            await dom.start(paused=True)
            await dom.resume()
            await dom.suspend()
            await dom.resume()
            if (await dom.info()).state is S.RUNNING:
                await dom.destroy()
            async for ev in events:
                if ev.type is asvirt.LifecycleEvent.STOPPED:
                    break
        await dom.undefine()
        with trio.fail_after(5):
            await undefined.wait()  # the callback has seen the last event
    return seen


async def test_a_user_script_runs_unchanged(backend):
    seen = await user_script(backend.uri, backend.xml("mine"))
    assert seen == [
        "event 'lifecycle' for domain 'mine': Defined Added",
        "event 'lifecycle' for domain 'mine': Started Booted",
        "event 'lifecycle' for domain 'mine': Suspended Paused",
        "event 'lifecycle' for domain 'mine': Resumed Unpaused",
        "event 'lifecycle' for domain 'mine': Suspended Paused",
        "event 'lifecycle' for domain 'mine': Resumed Unpaused",
        "event 'lifecycle' for domain 'mine': Stopped Destroyed",
        "event 'lifecycle' for domain 'mine': Undefined Removed",
    ]


# -- networks -----------------------------------------------------------------------------------
#
# Both network drivers, on networks that create nothing on the host: NAT networks are defined
# and undefined but never started here, and the one started is a forward mode 'bridge'
# network (an existing host bridge, used as it is: nothing is made). Starting real bridges,
# dnsmasq and nft tables happens in test_network_host.py, inside network namespaces.

NET = asvirt.EventKind.NETWORK_LIFECYCLE

LAB_NET = (
    "<network><name>lab</name>{uuid}<forward/><ip address='10.77.0.1' prefix='24'>"
    "<dhcp><range start='10.77.0.10' end='10.77.0.99'/></dhcp></ip></network>"
)
#: Names a host bridge no host has: starting this network must not create it.
EXT_NET = "<network><name>ext</name><forward mode='bridge'/><bridge name='asvirt-nobr'/></network>"


def net_events(events: asvirt.Subscription) -> list[str]:
    return [e.describe() for e in drain(events) if e.kind is NET]


async def test_network_define_redefine_undefine(api):
    async with api.conn.subscribe(kinds=NET) as events, api.conn.subscribe() as default:
        net = await api.conn.network_define_xml(LAB_NET.format(uuid=""))
        assert not await net.is_active() and await net.is_persistent()
        assert not await net.autostart()
        assert await api.conn.lookup_network_by_name("lab") == net
        assert await api.conn.lookup_network_by_uuid(net.uuid.upper()) == net
        assert net in await api.conn.list_all_networks(active=False)
        assert net not in await api.conn.list_all_networks(active=True)
        xml = await net.xml_desc()
        assert f"<uuid>{net.uuid}</uuid>" in xml and "<forward mode='nat'/>" in xml
        again = await api.conn.network_define_xml(
            LAB_NET.format(uuid=f"<uuid>{net.uuid}</uuid>").replace("10.77.0.99", "10.77.0.50")
        )
        assert again == net and "10.77.0.50" in await net.xml_desc()
        if not api.simulated:
            assert (api.root / "etc" / "network" / "lab.xml").is_file()
        with pytest.raises(asvirt.NetworkExistsError):
            await api.conn.network_define_xml(LAB_NET.format(uuid=""))  # same name, new UUID
        with pytest.raises(asvirt.OperationInvalidError):
            await net.destroy()
        await net.undefine()
        assert net_events(events) == [
            "event 'lifecycle' for network lab: Defined",
            "event 'lifecycle' for network lab: Defined",
            "event 'lifecycle' for network lab: Undefined",
        ]
        # Opt-in, as libvirt registers network events apart: domain subscribers see none.
        assert [e for e in drain(default) if e.kind is NET] == []
    if not api.simulated:
        assert not (api.root / "etc" / "network" / "lab.xml").exists()
    for lookup in (api.conn.lookup_network_by_name("lab"), net.is_active()):
        with pytest.raises(asvirt.NoNetworkError):
            await lookup


async def test_network_start_stop_and_transience(api):
    async with api.conn.subscribe(kinds=NET) as events:
        net = await api.conn.network_define_xml(EXT_NET)
        await net.create()
        assert await net.is_active()
        assert await net.bridge_name() == "asvirt-nobr"
        assert await net.dhcp_leases() == []
        with pytest.raises(asvirt.OperationInvalidError):
            await net.create()
        await net.undefine()  # running: it lives on, transient
        assert await net.is_active() and not await net.is_persistent()
        with pytest.raises(asvirt.OperationInvalidError):
            await net.set_autostart(True)
        await net.destroy()
        assert net_events(events) == [
            "event 'lifecycle' for network ext: Defined",
            "event 'lifecycle' for network ext: Started",
            "event 'lifecycle' for network ext: Undefined",
            "event 'lifecycle' for network ext: Stopped",
        ]
    with pytest.raises(asvirt.NoNetworkError):
        await api.conn.lookup_network_by_name("ext")
    assert not os.path.exists("/sys/class/net/asvirt-nobr")  # nothing was made on the host


async def test_network_autostart_is_kept(backend):
    api = backend  # no connection held: the QEMU node is opened afresh below
    async with api.state_kept():
        async with api.open() as conn:
            net = await conn.network_define_xml(EXT_NET)
            await net.set_autostart(True)
            assert await net.autostart()
        async with api.open() as conn:
            net = await conn.lookup_network_by_name("ext")
            assert await net.autostart()
            if api.kind == "qemu":
                # The embedded QEMU node opened afresh starts autostart networks (a daemon's
                # node stays open between connections: it started them when it started).
                assert await net.is_active()
                await net.destroy()
            await net.set_autostart(False)
            await net.undefine()
            if not api.simulated:
                assert list((api.root / "etc" / "network").iterdir()) == []


@pytest.mark.parametrize(
    "xml,error",
    [
        (
            "<network><name>n</name><forward mode='passthrough'/></network>",
            asvirt.ConfigUnsupportedError,
        ),
        ("<network><name>n</name><ip address='10.0.0.1' prefix='33'/></network>", asvirt.XMLError),
        ("<network><name>../n</name></network>", asvirt.XMLError),
        ("<network><name>n</name><bandwidth/></network>", asvirt.ConfigUnsupportedError),
        ("<domain/>", asvirt.XMLError),
    ],
)
async def test_both_network_drivers_refuse_the_same_xml(api, xml, error):
    before = await api.conn.list_all_networks()
    with pytest.raises(error):
        await api.conn.network_define_xml(xml)
    assert await api.conn.list_all_networks() == before


# -- autostart ------------------------------------------------------------------------------------


async def test_autostart_is_kept_and_refused_for_transient_domains(api):
    dom = await api.define("auto1")
    assert not await dom.autostart()
    await dom.set_autostart(True)
    assert await dom.autostart()
    async with api.open() as other:
        assert await (await other.lookup_by_name("auto1")).autostart()
    await dom.set_autostart(False)
    assert not await dom.autostart()
    transient = await api.conn.create_xml(api.xml("fleeting"), paused=True)
    with pytest.raises(asvirt.OperationInvalidError, match="transient"):
        await transient.set_autostart(True)
    await dom.set_autostart(True)
    await dom.undefine()  # forgets it: a domain defined again later starts without it
    dom = await api.define("auto1")
    assert not await dom.autostart()


# -- storage ------------------------------------------------------------------------------------
# The same calls on both storage drivers: the QEMU node's dir pools on real files, the test
# driver's in memory. Where a real file shows what the API says, the QEMU variant checks it.

MiB = 1024**2


def vol_xml(name: str, capacity: str = "1", unit: str = "MiB", *, extra: str = "") -> str:
    return (
        f"<volume><name>{name}</name><capacity unit='{unit}'>{capacity}</capacity>{extra}</volume>"
    )


RAW_SPARSE = "<allocation>0</allocation>"
QCOW2 = "<target><format type='qcow2'/></target>"


async def read_all(vol: asvirt.StorageVol, **kw: int) -> bytes:
    async with vol.download(**kw) as stream:
        return b"".join([chunk async for chunk in stream])


async def test_pool_lifecycle_on_both_drivers(api):
    pool = await api.define_pool("p", start=False)
    assert not await pool.is_active() and await pool.is_persistent()
    assert await pool.info() == asvirt.StoragePoolInfo(0, 0, 0, 0)
    with pytest.raises(asvirt.SystemCallError, match="No such file or directory"):
        await pool.create()  # its directory does not exist yet
    await pool.build()
    if not api.simulated:
        assert api.pool_dir("p").is_dir()
    await pool.create()
    info = await pool.info()
    assert info.state == 2 and info.capacity > 0 and info.available <= info.capacity
    with pytest.raises(asvirt.OperationInvalidError):
        await pool.create()
    with pytest.raises(asvirt.OperationInvalidError):
        await pool.build()  # libvirt: not while it runs
    with pytest.raises(asvirt.OperationInvalidError):
        await pool.undefine()
    assert not await pool.autostart()
    await pool.set_autostart(True)
    assert await pool.autostart()
    assert pool in await api.conn.list_all_storage_pools(active=True)
    assert await api.conn.lookup_storage_pool_by_uuid(pool.uuid.upper()) == pool
    live = await pool.xml_desc()
    assert f"<path>{api.pool_dir('p')}</path>" in live and "<capacity unit='bytes'>" in live
    assert "<capacity" not in await pool.xml_desc(inactive=True)
    await pool.destroy()
    assert pool in await api.conn.list_all_storage_pools(active=False)
    await pool.delete()
    if not api.simulated:
        assert not api.pool_dir("p").exists()
    with pytest.raises(asvirt.SystemCallError):
        await pool.create()
    await pool.undefine()
    with pytest.raises(asvirt.NoStoragePoolError):
        await api.conn.lookup_storage_pool_by_name("p")


async def test_a_pool_with_volumes_cannot_be_deleted(api):
    pool = await api.define_pool("p")
    await pool.create_volume_xml(vol_xml("v.img", extra=RAW_SPARSE))
    await pool.destroy()
    with pytest.raises(asvirt.SystemCallError, match="not empty"):
        await pool.delete()
    await pool.create()
    assert [v.name for v in await pool.list_all_volumes()] == ["v.img"]  # volumes are kept


BAD_POOLS = [
    (
        "<pool type='dir'><name>q</name><target><path>relative/dir</path></target></pool>",
        "absolute",
    ),
    ("<pool type='dir'><name>q</name><target><path>/a/../etc</path></target></pool>", r"'\.\.'"),
    ("<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>", "'/'"),
    ("<pool><name>q</name></pool>", "type"),
    ("<pool type='dir'><name>q</name><uuid>nope</uuid></pool>", "UUID"),
]


@pytest.mark.parametrize("xml,match", BAD_POOLS)
async def test_bad_pools_are_refused_alike(api, xml, match):
    before = await api.conn.list_all_storage_pools()
    with pytest.raises(asvirt.XMLError, match=match):
        await api.conn.storage_pool_define_xml(xml)
    assert await api.conn.list_all_storage_pools() == before


async def test_pools_may_not_share_names_uuids_or_directories(api):
    pool = await api.define_pool("p", start=False)
    with pytest.raises(asvirt.OperationFailedError, match="storage source conflict"):
        await api.conn.storage_pool_define_xml(
            f"<pool type='dir'><name>other</name>"
            f"<target><path>{api.pool_dir('p')}/</path></target></pool>"
        )
    with pytest.raises(asvirt.OperationFailedError, match="already exists"):
        await api.conn.storage_pool_define_xml(
            "<pool type='dir'><name>p</name><target><path>/x</path></target></pool>"
        )
    with pytest.raises(asvirt.OperationFailedError, match="already exists"):
        await api.conn.storage_pool_define_xml(
            f"<pool type='dir'><name>p2</name><uuid>{pool.uuid}</uuid></pool>"
        )


async def test_volumes_on_both_drivers(api):
    pool = await api.define_pool("p")
    raw = await pool.create_volume_xml(vol_xml("disk.img"))
    path = str(api.pool_dir("p") / "disk.img")
    assert (raw.name, raw.path, raw.key) == ("disk.img", path, path)
    assert await raw.info() == asvirt.StorageVolInfo(0, MiB, MiB)  # allocation: all of it
    sparse = await pool.create_volume_xml(vol_xml("sparse.img", "64", extra=RAW_SPARSE))
    assert await sparse.info() == asvirt.StorageVolInfo(0, 64 * MiB, 0)
    qcow = await pool.create_volume_xml(vol_xml("disk.qcow2", "1", "GiB", extra=QCOW2))
    assert (await qcow.info()).capacity == 1024**3
    assert "<format type='qcow2'/>" in await qcow.xml_desc()
    assert [v.name for v in await pool.list_all_volumes()] == [
        "disk.img",
        "disk.qcow2",
        "sparse.img",
    ]
    assert await pool.lookup_volume_by_name("disk.qcow2") == qcow
    assert await api.conn.lookup_storage_vol_by_path(path) == raw
    assert await api.conn.lookup_storage_vol_by_key(qcow.key) == qcow
    if not api.simulated:
        assert os.stat(path).st_size == MiB and os.stat(path).st_blocks * 512 == MiB
        assert os.stat(sparse.path).st_blocks == 0
    with pytest.raises(asvirt.StorageVolExistsError):
        await pool.create_volume_xml(vol_xml("disk.img"))
    await sparse.delete()
    with pytest.raises(asvirt.NoStorageVolError):
        await sparse.info()
    with pytest.raises(asvirt.NoStorageVolError):
        await api.conn.lookup_storage_vol_by_path(sparse.path)
    if not api.simulated:
        assert not os.path.exists(sparse.path)
    await pool.destroy()
    with pytest.raises(asvirt.OperationInvalidError):
        await raw.info()  # libvirt: the pool is not active
    with pytest.raises(asvirt.OperationInvalidError):
        await pool.create_volume_xml(vol_xml("late.img"))


BAD_VOLUMES = [
    (vol_xml("a/b"), asvirt.XMLError, "'/'"),
    (vol_xml(".."), asvirt.XMLError, r"'\.\.'"),
    (vol_xml(".hidden"), asvirt.XMLError, "start with '.'"),
    (vol_xml("-rf"), asvirt.XMLError, "start with '-'"),
    (vol_xml("x.img", "ten"), asvirt.XMLError, "whole number"),
    (vol_xml("x.img", "1", "parsec"), asvirt.XMLError, "unit"),
    ("<volume><name>x.img</name></volume>", asvirt.XMLError, "capacity"),
    ("<domain/>", asvirt.XMLError, "volume"),
    (
        vol_xml("x.qcow2", extra=QCOW2 + "<backingStore><path>/etc/passwd</path></backingStore>"),
        asvirt.InvalidArgError,
        "not a volume of an active storage pool",
    ),
    (
        vol_xml("x.img", extra="<backingStore><path>/etc/passwd</path></backingStore>"),
        asvirt.InvalidArgError,
        "raw volume cannot have a backing store",
    ),
]


@pytest.mark.parametrize("xml,error,match", BAD_VOLUMES)
async def test_bad_volumes_are_refused_alike_and_change_nothing(api, xml, error, match):
    pool = await api.define_pool("p")
    with pytest.raises(error, match=match):
        await pool.create_volume_xml(xml)
    assert await pool.list_all_volumes() == []
    if not api.simulated:
        assert os.listdir(api.pool_dir("p")) == []


async def test_a_volume_that_does_not_fit_is_refused(api):
    pool = await api.define_pool("p")
    free = (await pool.info()).available
    with pytest.raises(asvirt.OperationFailedError, match="not enough free space"):
        await pool.create_volume_xml(vol_xml("huge.img", str(free * 2), "bytes"))
    assert await pool.list_all_volumes() == []
    if not api.simulated:
        assert os.listdir(api.pool_dir("p")) == []


async def test_upload_download_round_trip(api):
    pool = await api.define_pool("p")
    vol = await pool.create_volume_xml(vol_xml("data.img", "4", extra=RAW_SPARSE))
    payload = os.urandom(3 * MiB + 123)
    seen: list[float] = []
    assert await vol.upload(payload, progress=seen.append) == len(payload)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    data = await read_all(vol)
    assert len(data) == 4 * MiB
    assert data[: len(payload)] == payload and data[len(payload) :] == bytes(
        len(data) - len(payload)
    )
    assert await read_all(vol, offset=MiB, length=100) == payload[MiB : MiB + 100]

    async def chunks():
        yield b"abc"
        yield b"defgh"

    # At most ``length`` bytes are taken from the source.
    assert await vol.upload(chunks(), offset=10, length=5) == 5
    assert await read_all(vol, length=16) == payload[:10] + b"abcde" + payload[15:16]
    # A local file as the source, and a download into one.
    src = api.tmp / "in.bin"
    src.write_bytes(payload[:1000])
    assert await vol.upload(src) == 1000
    out = api.tmp / "out.bin"
    assert await vol.download_to(out, length=1000) == 1000
    assert out.read_bytes() == payload[:1000]
    # Writing past the end of a raw volume makes it larger, as a file grows.
    await vol.upload(b"tail", offset=4 * MiB)
    assert (await vol.info()).capacity == 4 * MiB + 4
    with pytest.raises(asvirt.InvalidArgError):
        await vol.upload(b"x", offset=-1)
    with pytest.raises(asvirt.InvalidArgError):
        await vol.upload(12345)  # type: ignore[arg-type]


async def test_clone_copies_the_data(api):
    pool = await api.define_pool("p")
    other = await api.define_pool("other")
    vol = await pool.create_volume_xml(vol_xml("orig.img", "2", extra=RAW_SPARSE))
    payload = os.urandom(MiB)
    await vol.upload(payload, offset=4096)
    seen: list[float] = []
    copy = await vol.clone("copy.img", progress=seen.append)
    assert seen and seen[-1] == 1.0
    assert (await copy.info()).capacity == 2 * MiB
    assert await read_all(copy) == await read_all(vol)
    elsewhere = await vol.clone("copy.img", pool=other)
    assert elsewhere.path == str(api.pool_dir("other") / "copy.img")
    assert await read_all(elsewhere) == await read_all(vol)
    with pytest.raises(asvirt.StorageVolExistsError):
        await vol.clone("copy.img")
    # A larger capacity asked for is kept; a smaller one becomes the source's.
    big = await pool.create_volume_xml_from(vol_xml("big.img", "3"), vol)
    small = await pool.create_volume_xml_from(vol_xml("small.img", "1"), vol)
    assert (await big.info()).capacity == 3 * MiB and (await small.info()).capacity == 2 * MiB
    # A conversion: the copy is qcow2.
    converted = await pool.create_volume_xml_from(vol_xml("conv.qcow2", extra=QCOW2), vol)
    assert "<format type='qcow2'/>" in await converted.xml_desc()


async def test_resize_follows_virsh_rules(api):
    pool = await api.define_pool("p")
    vol = await pool.create_volume_xml(vol_xml("r.img", "4", extra=RAW_SPARSE))
    await vol.upload(b"\x01" * (3 * MiB))
    await vol.resize("8M")
    assert (await vol.info()).capacity == 8 * MiB
    with pytest.raises(asvirt.InvalidArgError, match="shrink"):
        await vol.resize(2 * MiB)
    assert (await vol.info()).capacity == 8 * MiB
    await vol.resize(MiB, delta=True)
    assert (await vol.info()).capacity == 9 * MiB
    await vol.resize(2 * MiB, shrink=True)
    assert (await vol.info()).capacity == 2 * MiB
    assert await read_all(vol) == b"\x01" * (2 * MiB)
    await vol.resize(MiB, shrink=True, delta=True)
    assert (await vol.info()).capacity == MiB
    await vol.resize(2 * MiB, allocate=True)
    assert (await vol.info()).allocation >= 2 * MiB - 4096
    with pytest.raises(asvirt.InvalidArgError):
        await vol.resize("a lot")
    qcow = await pool.create_volume_xml(vol_xml("r.qcow2", extra=QCOW2))
    await qcow.resize("1G")
    assert (await qcow.info()).capacity == 1024**3


async def test_wipe_makes_a_volume_read_as_zeros(api):
    pool = await api.define_pool("p")
    dense = await pool.create_volume_xml(vol_xml("dense.img"))
    sparse = await pool.create_volume_xml(vol_xml("sparse.img", "2", extra=RAW_SPARSE))
    for vol in (dense, sparse):
        await vol.upload(os.urandom(MiB))
        await vol.wipe()
        assert await read_all(vol) == bytes((await vol.info()).capacity)


async def test_overlays_name_their_backing_volume(api):
    pool = await api.define_pool("p")
    base = await pool.create_volume_xml(vol_xml("base.qcow2", "1", "GiB", extra=QCOW2))
    overlay = await pool.create_volume_xml(
        "<volume><name>top.qcow2</name><target><format type='qcow2'/></target>"
        f"<backingStore><path>{base.path}</path></backingStore></volume>"
    )
    assert (await overlay.info()).capacity == 1024**3  # the backing volume's
    xml = await overlay.xml_desc()
    assert f"<backingStore>\n    <path>{base.path}</path>\n    <format type='qcow2'/>" in xml
    with pytest.raises(asvirt.InvalidArgError, match="not raw"):
        await pool.create_volume_xml(
            vol_xml(
                "bad.qcow2",
                extra=QCOW2
                + f"<backingStore><path>{base.path}</path><format type='raw'/></backingStore>",
            )
        )
    await overlay.wipe()
    assert f"<path>{base.path}</path>" in await overlay.xml_desc()  # still an overlay


async def test_volumes_in_use_cannot_go(api):
    pool = await api.define_pool("p")
    vol = await pool.create_volume_xml(vol_xml("busy.img"))
    async with vol.download() as stream:
        assert len(await stream.receive_some(100)) == 100
        with pytest.raises(asvirt.OperationInvalidError, match="in use"):
            await vol.delete()
        with pytest.raises(asvirt.OperationInvalidError, match="asynchronous jobs"):
            await pool.destroy()
        with pytest.raises(asvirt.OperationInvalidError, match="asynchronous jobs"):
            await pool.refresh()
    await vol.delete()  # released once the stream is closed
    assert await pool.list_all_volumes() == []


def volume_disk(pool: str, volume: str, *, target: str = "vdb", extra: str = "") -> str:
    return (
        f"<disk type='volume' device='disk'>{extra}<source pool='{pool}' volume='{volume}'/>"
        f"<target dev='{target}' bus='virtio'/></disk>"
    )


async def test_volume_disks_are_resolved_at_start(api):
    pool = await api.define_pool("p")
    vol = await pool.create_volume_xml(vol_xml("d.qcow2", "64", extra=QCOW2))
    dom = await api.define("vm1", devices=volume_disk("p", "d.qcow2"))
    inactive = await dom.xml_desc(inactive=True)
    assert "<source pool='p' volume='d.qcow2'/>" in inactive
    assert "type='qcow2'" not in inactive  # the volume's format is known at start only
    await dom.start(paused=True)
    live = etree.fromstring(await dom.xml_desc())
    [disk] = live.xpath("devices/disk[target/@dev='vdb']")
    assert disk.get("type") == "file"
    assert disk.find("source").get("file") == vol.path
    assert disk.find("driver").get("type") == "qcow2"
    assert "<source pool='p' volume='d.qcow2'/>" in await dom.xml_desc(inactive=True)
    await dom.destroy()


async def test_a_domain_whose_volume_cannot_be_used_does_not_start(api):
    pool = await api.define_pool("p")
    dom = await api.define("vm1", devices=volume_disk("p", "missing.img"))
    with pytest.raises(asvirt.NoStorageVolError):
        await dom.start(paused=True)
    other = await api.define("vm2", devices=volume_disk("nopool", "x.img"))
    with pytest.raises(asvirt.NoStoragePoolError):
        await other.start(paused=True)
    await pool.create_volume_xml(vol_xml("missing.img"))
    await pool.destroy()
    with pytest.raises(asvirt.OperationInvalidError, match="not active"):
        await dom.start(paused=True)
    assert await dom.state() == (S.SHUTOFF, asvirt.ShutoffReason.UNKNOWN)
    with pytest.raises(asvirt.XMLError):
        await api.define("vm3", devices=volume_disk("p", "../x"))


async def test_undefine_can_remove_the_domains_volumes(api):
    pool = await api.define_pool("p")
    by_volume = await pool.create_volume_xml(vol_xml("a.img"))
    by_path = await pool.create_volume_xml(vol_xml("b.img"))
    kept = await pool.create_volume_xml(vol_xml("c.img"))
    outside = api.tmp / "outside.img"
    outside.write_bytes(bytes(MiB))
    devices = (
        volume_disk("p", "a.img")
        + f"<disk type='file'><source file='{by_path.path}'/><target dev='vdc'/></disk>"
        + f"<disk type='file'><source file='{outside}'/><target dev='vdd'/></disk>"
    )
    dom = await api.define("vm1", devices=devices)
    await dom.start(paused=True)
    with pytest.raises(asvirt.OperationInvalidError, match="stopped domains"):
        await dom.undefine(remove_storage=True)
    assert await dom.is_persistent()
    await dom.destroy()
    with pytest.raises(asvirt.InvalidArgError, match="vdz"):
        await dom.undefine(remove_storage=["vdz"])
    assert await dom.is_persistent()  # a bad request changes nothing
    removed = await dom.undefine(remove_storage=True)
    assert sorted(v.name for v in removed) == ["a.img", "b.img"]
    assert [v.name for v in await pool.list_all_volumes()] == [kept.name]
    assert outside.exists()  # no volume of any pool: left alone
    with pytest.raises(asvirt.NoDomainError):
        await dom.state()
    del by_volume


async def test_undefine_removes_only_the_named_volumes(api):
    pool = await api.define_pool("p")
    await pool.create_volume_xml(vol_xml("a.img"))
    b = await pool.create_volume_xml(vol_xml("b.img"))
    dom = await api.define(
        "vm1", devices=volume_disk("p", "a.img") + volume_disk("p", "b.img", target="vdc")
    )
    removed = await dom.undefine(remove_storage=["vdb"])
    assert [v.name for v in removed] == ["a.img"]
    assert await pool.list_all_volumes() == [b]


# -- the guest agent --------------------------------------------------------------------------


@needs_guest
async def test_guest_agent(api):
    """The agent connects once the guest booted (AGENT_LIFECYCLE), answers, and shuts the
    guest down; the simulated guest runs a simulated qemu-ga, the real one Debian's."""
    from .guest import AGENT_CHANNEL_XML

    dom = await api.define("vm1", boots=True, devices=AGENT_CHANNEL_XML)
    plain = await api.define("plain", boots=True)
    async with api.conn.subscribe(dom, kinds={asvirt.EventKind.AGENT_LIFECYCLE}) as events:
        await dom.start()
        seen = await collect_until(
            events,
            lambda s: any(e.data["state"] == asvirt.AgentLifecycleState.CONNECTED for e in s),
            timeout=60,
        )
    assert seen[-1].data["reason"] == asvirt.AgentLifecycleReason.CHANNEL
    assert seen[0].data == {
        "state": asvirt.AgentLifecycleState.DISCONNECTED,
        "reason": asvirt.AgentLifecycleReason.DOMAIN_STARTED,
    }
    assert await dom.agent_command('{"execute": "guest-ping"}') == '{"return":{}}'
    frozen = await dom.fs_freeze()
    assert await dom.fs_thaw() == frozen
    await dom.set_time(2_000_000_000)
    assert 2_000_000_000 <= (await dom.get_time())[0] < 2_000_000_060
    # Who the guest is: the test guest's host name and os-release, nothing mounted from a
    # disk (it runs from its initramfs), nobody logged in.
    assert await dom.hostname() == "asvirt-guest"
    assert await dom.fs_info() == []
    info = await dom.guest_info()
    assert info["hostname"] == "asvirt-guest"
    assert (info["os.id"], info["os.version-id"]) == ("asvirt-guest", "12")
    assert (info["user.count"], info["fs.count"]) == (0, 0)
    assert info["timezone.offset"] == 0
    os_only = await dom.guest_info(asvirt.GuestInfoTypes.OS)
    assert os_only and all(k.startswith("os.") for k in os_only)
    await dom.set_user_password("asvirt", "pw")
    with pytest.raises(asvirt.InternalError):
        await dom.set_user_password("nosuchuser", "pw")
    await plain.start()
    with pytest.raises(asvirt.ArgumentUnsupportedError):
        await plain.agent_command('{"execute": "guest-ping"}')
    with pytest.raises(asvirt.ArgumentUnsupportedError):
        await plain.hostname()
    with pytest.raises(asvirt.NoHostnameError):
        await plain.hostname(asvirt.HostnameSource.LEASE)
    # Suspended to RAM through the agent, woken up by QEMU.
    async with api.conn.subscribe(dom, kinds=LC) as events:
        await dom.pm_suspend_for_duration(asvirt.NodeSuspendTarget.MEM)
        await lifecycle_until(events, ("PMSUSPENDED", "MEMORY"), timeout=60)
        await dom.pm_wakeup()
        await lifecycle_until(events, ("STARTED", "WAKEUP"), timeout=60)
    assert await dom.state() == (S.RUNNING, asvirt.RunningReason.WAKEUP)
    with pytest.raises(asvirt.AsvirtError, match="not in suspended state"):
        await dom.pm_wakeup()  # awake: nothing to wake
    await plain.destroy()
    async with api.conn.subscribe(dom) as events:
        await dom.shutdown(mode=asvirt.ShutdownMode.AGENT)
        await lifecycle_until(events, ("STOPPED", "SHUTDOWN"), timeout=60)
