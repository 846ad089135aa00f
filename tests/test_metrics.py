"""Monitoring through a real daemon: its Prometheus endpoint, the one-shot CLI's statistics
commands, and its JSON logs, as an operator would look at them."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import asvirt
from asvirt.daemon import metrics
from asvirt.drivers.base import DomainStats
from asvirt.drivers.qemu.process import find_qemus

from .daemon import Daemon
from .guest import paused_xml
from .helpers import disk_xml, qemu_img, qemu_pid, run_cli, write_config

pytestmark = [pytest.mark.qemu]

MIB = 1024 * 1024
DISK_BYTES = 64 * MIB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def daemon(root: Path, caps_cache: Path):
    write_config(root, "[qemu]\ndestroy_grace = 2.0\nstats_timeout = 1.0\n")
    port = free_port()
    d = Daemon(
        root,
        caps_cache=caps_cache,
        args=("--metrics", f"127.0.0.1:{port}", "--log-format", "json"),
    )
    d.start()
    yield d, f"http://127.0.0.1:{port}/metrics"
    d.stop()
    for qemus in find_qemus(str(root)).values():  # what the test could not destroy
        for qemu in qemus:
            os.kill(qemu.pid, signal.SIGKILL)


async def test_an_operator_monitors_a_paused_domain(daemon, root, test_guest, tmp_path):
    daemon, url = daemon
    image = tmp_path / "disk.qcow2"
    qemu_img("create", "-f", "qcow2", image, str(DISK_BYTES))
    xml = paused_xml(
        test_guest, tmp_path, devices=disk_xml(image) + "<graphics type='vnc' autoport='yes'/>"
    )

    async def cli(*args: str) -> str:
        proc = await trio.to_thread.run_sync(lambda: run_cli(root, "-c", daemon.uri, *args))
        return proc.stdout

    async with asvirt.open(daemon.uri) as conn:
        dom = await conn.define_xml(xml)
        await dom.start(paused=True)
        try:
            # The one-shot CLI, through the daemon, prints what virsh prints.
            assert await cli("domstats", "--state", "vm1") == (
                "Domain: 'vm1'\n  state.state=3\n  state.reason=1\n\n"
            )
            assert await cli("domblkstat", "vm1", "vda") == (
                "vda rd_req 0\nvda rd_bytes 0\nvda wr_req 0\nvda wr_bytes 0\n"
                "vda flush_operations 0\nvda rd_total_times 0\nvda wr_total_times 0\n"
                "vda flush_total_times 0\n\n"
            )
            st = image.stat()
            assert await cli("domblkinfo", "vm1", "vda") == (
                f"Capacity:       {DISK_BYTES}\n"
                f"Allocation:     {st.st_blocks * 512}\n"
                f"Physical:       {st.st_size}\n\n"
            )
            display = await cli("vncdisplay", "vm1")
            assert display.startswith("127.0.0.1:") and display.endswith("\n\n")
            number = int(display.strip().split(":")[1])
            assert await cli("domdisplay", "vm1") == f"vnc://127.0.0.1:{number}\n\n"
            assert (await cli("dommemstat", "vm1")).startswith("rss ")  # no balloon

            # Prometheus scrapes the daemon (while someone watches its events).
            async with conn.subscribe(dom):
                status, content_type, text = await trio.to_thread.run_sync(get, url)
            assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
            found = samples(text)

            def value(name: str, **labels: str) -> float:
                return found[(name, frozenset(labels.items()))]

            desc = "the domain is paused by user"
            assert value("libvirt_domain_info_state", domain="vm1", state_desc=desc) == 3
            assert value("libvirt_domain_info_memory_usage_bytes", domain="vm1") == 128 * MIB
            assert value("libvirt_domain_info_maximum_memory_bytes", domain="vm1") == 128 * MIB
            assert value("libvirt_domain_info_virtual_cpus", domain="vm1") == 1
            assert value("libvirt_domain_info_cpu_time_seconds_total", domain="vm1") > 0
            vda = {"domain": "vm1", "target_device": "vda"}
            assert value("libvirt_domain_block_stats_capacity_bytes", **vda) == DISK_BYTES
            assert value("libvirt_domain_block_stats_read_bytes_total", **vda) == 0
            assert value("libvirt_domain_block_stats_write_requests_total", **vda) == 0
            assert value("libvirt_domain_memory_stats_rss_bytes", domain="vm1") > 0
            assert value("libvirt_domains") == 1
            # Defined, started, suspended: numbered and journaled.
            assert value("asvirt_events_published_total") >= 3
            assert value("asvirt_event_subscribers") >= 1
            assert value("libvirt_up") == 1
            assert value("asvirt_events_lost_total") == 0
            assert value("asvirt_qmp_timeouts_total") == 0
            assert value("asvirt_daemon_clients") >= 1
            assert (await trio.to_thread.run_sync(get, url.replace("/metrics", "/x")))[0] == 404

            # A QEMU that stops answering costs the scrape its own figures, nothing more.
            pid = qemu_pid(root, "vm1")
            os.kill(pid, signal.SIGSTOP)
            try:
                with trio.fail_after(10):
                    status, _, text = await trio.to_thread.run_sync(get, url)
            finally:
                os.kill(pid, signal.SIGCONT)
            found = samples(text)
            assert status == 200
            assert value("libvirt_domain_info_state", domain="vm1", state_desc=desc) == 3
            assert value("asvirt_qmp_timeouts_total") >= 1
        finally:
            await dom.destroy()

    # Every log record kept its fields up to the handler: JSON keys, not text.
    lines = daemon.log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    started = [r for r in records if r["message"] == "QEMU started"]
    assert started and started[0]["domain"] == "vm1" and started[0]["uuid"] == dom.uuid
    assert started[0]["operation"] == "start" and started[0]["pid"] == pid
    exited = [r for r in records if r["message"] == "QEMU exited"]
    assert exited and {"domain", "uuid", "pid"} <= exited[0].keys()
    metrics = [r for r in records if r["message"] == "serving metrics"]
    assert metrics and metrics[0]["address"] == url.split("/")[2]


def test_the_exporters_names_for_every_figure():
    # A record with every group's figures (a NIC and a guest's balloon statistics, which the
    # paused domain above has not): the names, labels and units of the libvirt exporter.
    params = {
        "state.state": 1,
        "state.reason": 1,
        "cpu.time": 2_500_000_000,
        "balloon.current": 1024,
        "balloon.maximum": 2048,
        "balloon.major_fault": 3,
        "balloon.available": 1000,
        "balloon.usable": 250,
        "balloon.disk_caches": 10,
        "balloon.last-update": 1_700_000_000,
        "balloon.rss": 512,
        "vcpu.current": 1,
        "vcpu.maximum": 2,
        "vcpu.0.state": 1,
        "vcpu.0.time": 1_000_000_000,
        "net.count": 1,
        "net.0.name": "vnet0",
        "net.0.rx.bytes": 100,
        "net.0.tx.drop": 2,
        "block.count": 1,
        "block.0.name": "vda",
        "block.0.rd.times": 500_000_000,
        "block.0.allocation": 4096,
    }
    families = metrics._Families()
    metrics.domain_families([DomainStats("vm", "u", params)], families)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Snapshot(families))
    found = samples(generate_latest(registry).decode())
    vm, vnet0, vda = {"domain": "vm"}, {"target_device": "vnet0"}, {"target_device": "vda"}
    expected = {
        ("libvirt_domain_info_state", (("state_desc", "the domain is running"),)): 1,
        ("libvirt_domain_info_cpu_time_seconds_total", ()): 2.5,
        ("libvirt_domain_info_memory_usage_bytes", ()): 1024 * 1024,
        ("libvirt_domain_memory_stats_current_balloon_bytes", ()): 1024 * 1024,
        ("libvirt_domain_memory_stats_maximum_bytes", ()): 2048 * 1024,
        ("libvirt_domain_memory_stats_major_fault_total", ()): 3,
        ("libvirt_domain_memory_stats_disk_caches_bytes", ()): 10 * 1024,
        ("libvirt_domain_memory_stats_last_update_timestamp_seconds", ()): 1_700_000_000,
        ("libvirt_domain_memory_stats_used_percent", ()): 75.0,
        ("libvirt_domain_memory_stats_rss_bytes", ()): 512 * 1024,
        ("libvirt_domain_vcpu_maximum", ()): 2,
        ("libvirt_domain_vcpu_time_seconds_total", (("vcpu", "0"),)): 1.0,
        ("libvirt_domain_interface_stats_receive_bytes_total", tuple(vnet0.items())): 100,
        ("libvirt_domain_interface_stats_transmit_drops_total", tuple(vnet0.items())): 2,
        ("libvirt_domain_block_stats_read_time_seconds_total", tuple(vda.items())): 0.5,
        ("libvirt_domain_block_stats_allocation", tuple(vda.items())): 4096,
    }
    for (name, labels), want in expected.items():
        assert found[(name, frozenset({**vm, **dict(labels)}.items()))] == want, name
    assert found[("libvirt_domains", frozenset())] == 1


async def test_console_log_lines_carry_their_fields(root, caps_cache, test_guest, tmp_path):
    # asvirtd --log-format console: one readable line per record, its fields beside the text.
    daemon = Daemon(root, caps_cache=caps_cache, args=("--log-format", "console"))
    daemon.start()
    try:
        async with asvirt.open(daemon.uri) as conn:
            dom = await conn.create_xml(paused_xml(test_guest, tmp_path), paused=True)
            pid = qemu_pid(root, "vm1")
            await dom.destroy()
    finally:
        daemon.stop()
    lines = daemon.log.read_text().splitlines()
    started = [line for line in lines if " INFO asvirt.qemu: QEMU started " in line]
    assert len(started) == 1, lines
    for field in ("domain='vm1'", f"uuid='{dom.uuid}'", f"pid={pid}", "operation='start'"):
        assert field in started[0]
    assert not any(line.startswith("{") for line in lines)  # no JSON in console format
