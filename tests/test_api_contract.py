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

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trio
import trio.lowlevel
from lxml import etree

import asvirt
from asvirt import DomainState as S
from asvirt.conf.domain import parse_domain_xml
from asvirt.conf.postparse import postparse_domain

from .contract import Backend, drain, drain_lifecycle, make_backend, run_status
from .daemon import Daemon, session_runtime_dir
from .guest import GUEST_DIR, TestGuest
from .helpers import collect_until, destroy_all, lifecycle, lifecycle_until, pid_exists

LC = asvirt.EventKind.LIFECYCLE
REBOOT = asvirt.EventKind.REBOOT

F = TypeVar("F", bound=Callable[..., Any])


def needs_guest(fn: F) -> F:
    """This test needs a guest that runs (booted under TCG on QEMU, simulated on test)."""
    fn._needs_guest = True  # type: ignore[attr-defined]
    return fn


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_kind" not in metafunc.fixturenames:
        return
    qemu_marks = [pytest.mark.qemu]
    if getattr(metafunc.function, "_needs_guest", False):
        qemu_marks.append(pytest.mark.guest)
    metafunc.parametrize(
        "backend_kind",
        [
            pytest.param("test", id="test"),
            pytest.param("qemu", id="qemu", marks=qemu_marks),
            pytest.param("session", id="session", marks=qemu_marks),
        ],
    )


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, backend_kind: str, tmp_path, monkeypatch
) -> Iterator[Backend]:
    if backend_kind == "test":
        root, guest = None, TestGuest(GUEST_DIR)  # its XML only: nothing boots
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)
        return
    root = request.getfixturevalue("fast_config")
    guest = request.getfixturevalue("test_guest")
    if backend_kind == "qemu":
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)
        return
    # qemu:///session: a daemon of the test's own serves the root, at the socket the
    # session URI leads to (the test's $XDG_RUNTIME_DIR).
    runtime = session_runtime_dir(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    daemon = Daemon(
        root,
        socket_path=runtime / "asvirt" / "asvirt-sock",
        caps_cache=request.getfixturevalue("caps_cache"),
    ).start()
    try:
        yield make_backend(backend_kind, guest=guest, tmp=tmp_path, root=root)
    finally:
        daemon.stop()
        shutil.rmtree(runtime, ignore_errors=True)
        # The daemon leaves VMs running when it stops, as it should; a test may not.
        leftovers = daemon.kill_qemus()
        assert not leftovers, f"the test left QEMUs running in the daemon: {leftovers}"


@pytest.fixture
async def api(backend: Backend) -> AsyncIterator[Backend]:
    """The backend with an open connection; whatever still runs is destroyed afterwards."""
    async with backend.open() as conn:
        backend.conn = conn
        try:
            yield backend
        finally:
            await destroy_all(conn)


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
        "<devices><hostdev mode='subsystem' type='pci'/></devices></domain>",
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


async def test_suspend_and_resume_are_idempotent(api):
    dom = await api.define("vm1")
    await dom.start(paused=True)
    await dom.resume()
    async with api.conn.subscribe(dom) as events:
        await dom.suspend()
        assert await dom.state() == (S.PAUSED, asvirt.PausedReason.USER)
        await dom.suspend()  # already paused: nothing to do, no error, no event
        await dom.resume()
        assert await dom.state() == (S.RUNNING, asvirt.RunningReason.UNPAUSED)
        await dom.resume()
        assert drain_lifecycle(events) == [("SUSPENDED", "PAUSED"), ("RESUMED", "UNPAUSED")]


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
