"""Memory and vCPUs of running domains: the balloon, vCPU hotplug and what a real guest sees
(the API's rules on every driver are in the shared suite, test_api_contract.py)."""

from __future__ import annotations

import json

import pytest
import trio

import asvirt
from asvirt.cli.main import main as cli_main
from asvirt.conf import vcpus as conf_vcpus
from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu import vcpus
from asvirt.drivers.qemu.statemachine import DomainStateMachine

from .guest import AGENT_CHANNEL_XML, paused_xml, wait_for_serial
from .helpers import (
    assert_libvirt_schema,
    cli_in_process,
    collect_until,
    disk_xml,
    embed_uri,
    qemu_img,
    run_cli,
    write_config,
)

# -- planning hotplug from what QEMU lists, without QEMU -------------------------------------


def _reply(booted: int, plugged: set[int], total: int) -> list[dict[str, object]]:
    """A pc machine's query-hotpluggable-cpus answer (QEMU lists the slots backwards)."""
    entries: list[dict[str, object]] = []
    for i in reversed(range(total)):
        entry: dict[str, object] = {
            "props": {"core-id": 0, "thread-id": 0, "socket-id": i},
            "vcpus-count": 1,
            "type": "qemu64-x86_64-cpu",
        }
        if i < booted:
            entry["qom-path"] = f"/machine/unattached/device[{i}]"
        elif i in plugged:
            entry["qom-path"] = f"/machine/peripheral/vcpu{i}"
        entries.append(entry)
    return entries


def test_vcpus_are_plugged_lowest_first_and_unplugged_highest_first():
    slots = vcpus.cpu_slots(_reply(1, set(), 4))
    assert [s.index for s in slots] == [0, 1, 2, 3]
    plan = vcpus.plan_vcpus(slots, 3)
    assert [s.alias for s in plan.plug] == ["vcpu1", "vcpu2"] and plan.unplug == []
    assert plan.plug[0].props == {"core-id": 0, "thread-id": 0, "socket-id": 1}
    slots = vcpus.cpu_slots(_reply(1, {1, 3}, 4))  # someone plugged vcpu3 too
    assert vcpus.plugged_vcpus(slots) == 3
    assert [s.alias for s in vcpus.plan_vcpus(slots, 1).unplug] == ["vcpu3", "vcpu1"]
    assert [s.alias for s in vcpus.plan_vcpus(slots, 4).plug] == ["vcpu2"]
    # The vCPUs the guest booted with cannot go: nothing is planned, nothing done.
    with pytest.raises(asvirt.ConfigUnsupportedError, match="hotpluggable"):
        vcpus.plan_vcpus(vcpus.cpu_slots(_reply(2, set(), 4)), 1)


def test_the_live_vcpus_keep_plug_order():
    """<vcpus> from what QEMU lists: vCPUs still present keep their order, newly plugged ones
    come after; a vCPU that went is disabled and loses its order (libvirt's live XML)."""
    first = conf_vcpus.states_from_qemu(None, {0: False, 1: True}, 4)
    assert [(v.enabled, v.hotpluggable, v.order) for v in first] == [
        (True, False, 1), (True, True, 2), (False, True, None), (False, True, None),
    ]  # fmt: skip
    later = conf_vcpus.states_from_qemu(first, {0: False, 3: True, 2: True}, 4)
    assert [(v.id, v.order) for v in later if v.enabled] == [(0, 1), (2, 2), (3, 3)]
    assert conf_vcpus.plug_order(later) == [2, 3]
    assert conf_vcpus.boot_vcpus(later, 3) == 1 and conf_vcpus.boot_vcpus(None, 3) == 3


def test_the_events_that_say_a_vcpu_went():
    # What QEMU 7.2 sends when a guest ejects vcpu1: no DEVICE_DELETED for the CPU itself.
    ost_pending = {
        "event": "ACPI_DEVICE_OST",
        "data": {"info": {"device": "vcpu1", "source": 3, "status": 0x84, "slot": "1",
                          "slot-type": "CPU"}},
    }  # fmt: skip
    lapic = {"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/vcpu1/lapic"}}
    ost_done = {
        "event": "ACPI_DEVICE_OST",
        "data": {"info": {"source": 3, "status": 0, "slot": "1", "slot-type": "CPU"}},
    }
    assert all(vcpus.vcpu_unplug_event(e) for e in (ost_pending, lapic, ost_done))
    assert all(vcpus.vcpu_eject_refused(e) is None for e in (ost_pending, lapic, ost_done))
    disk = {"event": "DEVICE_DELETED", "data": {"device": "virtio-disk1", "path": "/x"}}
    assert not vcpus.vcpu_unplug_event(disk)
    busy = {
        "event": "ACPI_DEVICE_OST",
        "data": {"info": {"device": "vcpu2", "source": 3, "status": 0x82, "slot-type": "CPU"}},
    }
    assert vcpus.vcpu_eject_refused(busy) == "vcpu2"
    # A vCPU is no device to libvirt's DEVICE_REMOVED; a disk is.
    machine = DomainStateMachine()
    vcpu_gone = {"event": "DEVICE_DELETED", "data": {"device": "vcpu1", "path": "/m/vcpu1"}}
    kinds = [e.kind for e in machine.on_qmp_event(vcpu_gone).events]
    assert kinds == [asvirt.EventKind.QMP]
    kinds = [e.kind for e in machine.on_qmp_event(disk).events]
    assert kinds == [asvirt.EventKind.QMP, asvirt.EventKind.DEVICE_REMOVED]


# -- a real guest -----------------------------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.guest
async def test_the_guest_keeps_its_balloon_and_vcpus_across_supervisors(root, test_guest, tmp_path):
    """<currentMemory> below <memory> is applied at boot; hot-plugged vCPUs and the balloon's
    size survive the supervisor (the next one re-attaches), and it can unplug them."""
    write_config(root, "[qemu]\ndestroy_grace = 2.0\n")
    serial = tmp_path / "vm1.serial"
    xml = test_guest.xml(
        "vm1",
        serial,
        memballoon="virtio",
        current_memory_mib=112,
        vcpus=1,
        max_vcpus=2,
        cmdline="asvirt.hotplug=watch",
    )
    async with asvirt.open(embed_uri(root)) as conn:
        dom = await conn.define_xml(xml)
        async with conn.subscribe(dom, kinds=asvirt.EventKind.BALLOON_CHANGE) as events:
            await dom.start()
            seen = await collect_until(
                events, lambda s: bool(s) and s[-1].data["actual_kib"] == 112 * 1024, timeout=60
            )
        assert seen[-1].domain == "vm1" and seen[-1].data == {"actual_kib": 114688}
        await wait_for_serial(serial)
        assert "vcpu.0.time" in await dom.stats(asvirt.StatsGroup.VCPU)  # its thread known
        await dom.set_vcpus(2)
        await wait_for_serial(serial, "ASVIRT-CPUS 2")
        # The statistics follow the plugged vCPU's thread.
        vcpus = await dom.stats(asvirt.StatsGroup.VCPU)
        assert vcpus["vcpu.current"] == 2 and vcpus["vcpu.1.state"] == 1
        assert "vcpu.1.time" in vcpus
    try:
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.lookup_by_name("vm1")
            info = await dom.info()
            assert (info.vcpus, info.memory_kib) == (2, 112 * 1024)
            assert "<vcpu placement='static' current='2'>2</vcpu>" not in await dom.xml_desc()
            assert "<vcpu placement='static'>2</vcpu>" in await dom.xml_desc()
            await dom.set_vcpus(1)  # the vCPU plugged under the previous supervisor
            assert len(await dom.qmp("query-cpus-fast")) == 1
            await wait_for_serial(serial, "ASVIRT-CPUS 1\n")
            vcpus = await dom.stats(asvirt.StatsGroup.VCPU)
            assert vcpus["vcpu.current"] == 1 and "vcpu.0.time" in vcpus
            assert "vcpu.1.time" not in vcpus
    finally:
        with trio.CancelScope(shield=True):
            async with asvirt.open(embed_uri(root)) as conn:
                for d in await conn.list_all_domains(active=True):
                    await d.destroy()


@pytest.mark.qemu
@pytest.mark.guest
async def test_plugged_vcpus_survive_save_managed_save_and_snapshot_revert(
    conn, test_guest, tmp_path
):
    """A guest's hot-plugged vCPU is in its live XML (<vcpus>), so a restore, a managed-save
    start and a revert from shut-off start QEMU with it plugged as a device, as the saved
    state holds it: QEMU refused the image before ("Bad config data", "Error -22"). Each
    time the guest runs on with both vCPUs online (its agent says so); at the end it
    releases the restored vCPU when asked (ACPI eject). (No vCPU is plugged again after
    an unplug: QEMU 7.2 under TCG crashes on that, "double free or corruption".)"""
    disk = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", disk, "16M")
    serial = tmp_path / "vm1.serial"
    xml = test_guest.xml(
        "vm1", serial, vcpus=1, max_vcpus=2, cmdline="asvirt.hotplug=watch",
        devices=disk_xml(disk) + AGENT_CHANNEL_XML,
    )  # fmt: skip
    dom = await conn.define_xml(xml)
    await dom.start()
    await wait_for_serial(serial)
    await dom.set_vcpus(2, live=True)
    await wait_for_serial(serial, "ASVIRT-CPUS 2")
    live = await dom.xml_desc()
    assert "<vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>" in live
    assert "<vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>" in live
    # The live XML is libvirt's (valid under its schema) and parses back with the same states.
    assert_libvirt_schema(live)
    again = parse_domain_xml(live).vcpu_states
    assert again is not None and [(v.enabled, v.hotpluggable) for v in again] == [
        (True, False),
        (True, True),
    ]

    async def alive_with_the_plugged_vcpu() -> None:
        assert (await dom.state())[0] is asvirt.DomainState.RUNNING
        assert (await dom.info()).vcpus == 2
        slots = vcpus.cpu_slots(await dom.qmp("query-hotpluggable-cpus"))
        assert [s.alias for s in slots if s.removable] == ["vcpu1"]
        assert "<vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>" in await dom.xml_desc()
        # The guest runs, and still has both vCPUs online.
        reply = json.loads(await dom.agent_command('{"execute":"guest-get-vcpus"}', timeout=30))
        assert sorted((c["logical-id"], c["online"]) for c in reply["return"]) == [
            (0, True),
            (1, True),
        ]

    image = tmp_path / "vm1.save"
    await dom.save(str(image))
    await conn.restore(str(image))
    await alive_with_the_plugged_vcpu()

    await dom.managed_save()
    assert await dom.has_managed_save_image()
    await dom.start()
    await alive_with_the_plugged_vcpu()

    await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
    await dom.destroy()
    await dom.revert_to_snapshot("s1")
    await alive_with_the_plugged_vcpu()
    # The restored vCPU is a device the guest can give back, and the live XML follows.
    await dom.set_vcpus(1, live=True)
    await wait_for_serial(serial, "ASVIRT-CPUS 1\n")
    assert "<vcpu id='1' enabled='no' hotpluggable='yes'/>" in await dom.xml_desc()
    # Its configuration never had the vCPU plugged.
    assert "<vcpus>" not in await dom.xml_desc(inactive=True)


@pytest.mark.qemu
async def test_unplugging_a_vcpu_from_a_guest_that_never_booted_says_why(
    conn, test_guest, tmp_path
):
    """A guest paused at start runs no OS to eject a vCPU: QEMU refuses the unplug ("acpi:
    device unplug request for not supported device type"), which the caller sees as an
    OperationFailedError saying what the guest needs; the vCPU stays, and the live XML says so."""
    dom = await conn.define_xml(paused_xml(test_guest, tmp_path, vcpus=1, max_vcpus=2))
    await dom.start(paused=True)
    await dom.set_vcpus(2, live=True)
    with pytest.raises(asvirt.OperationFailedError, match="ACPI CPU hot-unplug") as caught:
        await dom.set_vcpus(1, live=True)
    assert not isinstance(caught.value, asvirt.QMPError)
    assert "vcpu1" in str(caught.value) and "must be running an operating system" in str(
        caught.value
    )
    assert len(await dom.qmp("query-cpus-fast")) == 2
    assert "<vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>" in await dom.xml_desc()


# -- the CLI: virsh's commands and output -------------------------------------------------------


@pytest.mark.qemu
def test_setmem_setmaxmem_setvcpus_vcpucount(root, test_guest, tmp_path, capsys):
    uri = embed_uri(root)

    run = cli_in_process(uri, capsys)  # quicker than a process of its own

    xml = tmp_path / "vm1.xml"
    serial = tmp_path / "vm1.serial"
    xml.write_text(test_guest.xml("vm1", serial, memballoon="virtio", vcpus=1, max_vcpus=2))
    run("define", str(xml))
    # Shut off: vcpucount shows the configuration only, as virsh (a process of its own, as
    # users run it).
    assert run_cli(root, "vcpucount", "vm1").stdout == (
        "maximum      config         2\ncurrent      config         1\n\n"
    )
    assert run("setmaxmem", "vm1", "256M") == "\n"
    assert run("setmem", "vm1", "196608", "--config") == "\n"
    info = run("dominfo", "vm1")
    assert "Max memory:     262144 KiB" in info and "Used memory:    196608 KiB" in info
    # No flag: the running domain (virsh's setmem/setvcpus); a shut-off one has none.
    assert "not running" in run("setmem", "vm1", "128M", status=1)
    assert "Scaled numeric value 'lots' for <size> option is malformed" in run(
        "setmem", "vm1", "lots", status=1
    )
    assert "mutually exclusive" in run("setvcpus", "vm1", "2", "--current", "--live", status=1)
    try:
        run("start", "vm1", "--paused")
        assert run("setvcpus", "vm1", "2") == "\n"
        assert run("vcpucount", "vm1") == (
            "maximum      config         2\n"
            "maximum      live           2\n"
            "current      config         1\n"
            "current      live           2\n\n"
        )
        assert run("vcpucount", "vm1", "--maximum", "--live") == "2\n\n"
        assert run("vcpucount", "vm1", "--config") == "1\n\n"
        assert "greater than max" in run("setvcpus", "vm1", "3", status=1)
        assert "active domain" in run("setmaxmem", "vm1", "512M", status=1)
        assert run("setvcpus", "vm1", "2", "--config") == "\n"
        assert run("setvcpus", "vm1", "3", "--config", "--maximum") == "\n"
        assert run("vcpucount", "vm1", "--config", "--maximum") == "3\n\n"
        assert run("setmem", "vm1", "64M") == "\n"  # the balloon is asked
    finally:
        cli_main(["-c", uri, "destroy", "vm1"])
