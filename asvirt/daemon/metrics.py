"""The daemon's Prometheus endpoint: ``GET /metrics`` on the address ``[metrics] listen`` names.

Figures are gathered when Prometheus scrapes, not polled in between: one
:meth:`~asvirt.hypervisor.domain_driver.DomainDriver.get_all_domain_stats` for every domain
(each measured at once, a QEMU that does not answer in time only lacks its figures), then
``prometheus_client`` writes them out from a collector holding that snapshot. HTTP is served
by a small trio handler in the daemon's nursery: no thread outlives the daemon, and a slow
scraper holds up nothing else.

Metric names. A domain's figures carry the names of the established libvirt exporter
(prometheus-libvirt-exporter: ``libvirt_up``, ``libvirt_domain_info_state``,
``libvirt_domain_info_cpu_time_seconds_total``, ``libvirt_domain_block_stats_read_bytes_total``,
``libvirt_domain_interface_stats_receive_bytes_total``...), with its ``domain`` and
``target_device`` labels, on its port (9177) if you like: dashboards and alert rules written
for a libvirt host keep working when asvirt replaces libvirt there — the reason the CLI prints
virsh's output byte for byte. (asvirt replaces libvirtd on that host, so no libvirt exporter
runs beside it to collide with.) The supervisor's own figures have no libvirt counterpart and
are ``asvirt_*``: events published, subscribers, events lost by slow subscribers, gaps in
replays, QMP deadlines missed, connected clients, and how long the last gathering took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..drivers.base import DomainStats, StatsGroup
from ..errors import AsvirtError
from ..hypervisor.node import Node
from ..log import get_logger

log = get_logger("asvirt.daemon")

#: Prometheus' classic text format, which ``generate_latest`` writes (every asvirt metric
#: name is a legacy one) and which every Prometheus version reads.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: The longest request head a scraper may send, and how long it may take to send it.
MAX_REQUEST = 16 * 1024
REQUEST_TIMEOUT = 10.0

#: libvirt's words for each ``virDomainState`` (the exporter's ``state_desc`` label).
STATE_DESCRIPTIONS = (
    "no state",
    "the domain is running",
    "the domain is blocked on resource",
    "the domain is paused by user",
    "the domain is being shut down",
    "the domain is shut off",
    "the domain is crashed",
    "the domain is suspended by guest power management",
)

#: How a libvirt figure becomes a Prometheus one (base units: bytes, seconds).
KIB, NS, ONE = "KiB", "ns", ""

#: Per-domain gauges and counters from one stats field each: (field, metric, kind, help,
#: unit). Kind "c" is a counter (Prometheus adds ``_total``).
_DOMAIN_FIELDS: tuple[tuple[str, str, str, str, str], ...] = (
    ("balloon.maximum", "libvirt_domain_info_maximum_memory_bytes", "g",
     "Maximum allowed memory of the domain, in bytes", KIB),
    ("balloon.current", "libvirt_domain_info_memory_usage_bytes", "g",
     "Memory usage of the domain (its balloon's size), in bytes", KIB),
    ("vcpu.current", "libvirt_domain_info_virtual_cpus", "g",
     "Number of virtual CPUs for the domain", ONE),
    ("cpu.time", "libvirt_domain_info_cpu_time_seconds", "c",
     "Amount of CPU time used by the domain, in seconds", NS),
    ("vcpu.current", "libvirt_domain_vcpu_current", "g",
     "Number of current online vCPUs", ONE),
    ("vcpu.maximum", "libvirt_domain_vcpu_maximum", "g",
     "Number of maximum online vCPUs", ONE),
    ("balloon.swap_in", "libvirt_domain_memory_stats_swap_in_bytes", "g",
     "Memory swapped in by the guest, in bytes", KIB),
    ("balloon.swap_out", "libvirt_domain_memory_stats_swap_out_bytes", "g",
     "Memory swapped out by the guest, in bytes", KIB),
    ("balloon.major_fault", "libvirt_domain_memory_stats_major_fault", "c",
     "Page faults in the guest that needed disk I/O", ONE),
    ("balloon.minor_fault", "libvirt_domain_memory_stats_minor_fault", "c",
     "Page faults in the guest that needed no disk I/O", ONE),
    ("balloon.unused", "libvirt_domain_memory_stats_unused_bytes", "g",
     "Memory the guest leaves unused, in bytes", KIB),
    ("balloon.available", "libvirt_domain_memory_stats_available_bytes", "g",
     "Memory available to the guest, in bytes", KIB),
    ("balloon.usable", "libvirt_domain_memory_stats_usable_bytes", "g",
     "Memory usable by the guest without swapping ('Available' in its /proc/meminfo)", KIB),
    ("balloon.disk_caches", "libvirt_domain_memory_stats_disk_caches_bytes", "g",
     "Memory the guest uses for disk caches, in bytes", KIB),
    ("balloon.hugetlb_pgalloc", "libvirt_domain_memory_stats_hugetlb_pgalloc", "c",
     "Successful huge page allocations in the guest", ONE),
    ("balloon.hugetlb_pgfail", "libvirt_domain_memory_stats_hugetlb_pgfail", "c",
     "Failed huge page allocations in the guest", ONE),
    ("balloon.last-update", "libvirt_domain_memory_stats_last_update_timestamp_seconds", "g",
     "When the guest last updated its memory statistics (seconds since the epoch)", ONE),
    ("balloon.current", "libvirt_domain_memory_stats_current_balloon_bytes", "g",
     "Current size of the balloon (the memory the guest has), in bytes", KIB),
    ("balloon.maximum", "libvirt_domain_memory_stats_maximum_bytes", "g",
     "Maximum memory the guest may have, in bytes", KIB),
    ("balloon.rss", "libvirt_domain_memory_stats_rss_bytes", "g",
     "Resident set size of the process running the domain, in bytes", KIB),
)  # fmt: skip

#: Per-vCPU fields: (suffix, metric, kind, help, unit).
_VCPU_FIELDS = (
    ("state", "libvirt_domain_vcpu_state", "g", "State of the vCPU (1: running)", ONE),
    ("time", "libvirt_domain_vcpu_time_seconds", "c", "Time spent by the vCPU", NS),
    ("wait", "libvirt_domain_vcpu_wait_seconds", "c",
     "Time the vCPU wanted to run while the host ran something else", NS),
    ("delay", "libvirt_domain_vcpu_delay_seconds", "c",
     "Time the vCPU waited in the host's run queue", NS),
)  # fmt: skip

#: Per-disk fields: (suffix, metric, kind, help, unit).
_BLOCK_FIELDS = (
    ("rd.bytes", "libvirt_domain_block_stats_read_bytes", "c",
     "Number of bytes read from a block device", ONE),
    ("rd.reqs", "libvirt_domain_block_stats_read_requests", "c",
     "Number of read requests from a block device", ONE),
    ("rd.times", "libvirt_domain_block_stats_read_time_seconds", "c",
     "Time spent reading from a block device", NS),
    ("wr.bytes", "libvirt_domain_block_stats_write_bytes", "c",
     "Number of bytes written to a block device", ONE),
    ("wr.reqs", "libvirt_domain_block_stats_write_requests", "c",
     "Number of write requests to a block device", ONE),
    ("wr.times", "libvirt_domain_block_stats_write_time_seconds", "c",
     "Time spent writing to a block device", NS),
    ("fl.reqs", "libvirt_domain_block_stats_flush_requests", "c",
     "Number of flush requests to a block device", ONE),
    ("fl.times", "libvirt_domain_block_stats_flush_time_seconds", "c",
     "Time spent flushing a block device", NS),
    ("capacity", "libvirt_domain_block_stats_capacity_bytes", "g",
     "Logical size of a block device (what the guest sees), in bytes", ONE),
    ("allocation", "libvirt_domain_block_stats_allocation", "g",
     "Host storage a block device's image occupies, in bytes", ONE),
    ("physical", "libvirt_domain_block_stats_physicalsize_bytes", "g",
     "Host size of a block device's image, in bytes", ONE),
)  # fmt: skip

#: Per-interface fields (from the guest's side, as libvirt counts them).
_NET_FIELDS = (
    ("rx.bytes", "libvirt_domain_interface_stats_receive_bytes", "c",
     "Number of bytes received on a network interface", ONE),
    ("rx.pkts", "libvirt_domain_interface_stats_receive_packets", "c",
     "Number of packets received on a network interface", ONE),
    ("rx.errs", "libvirt_domain_interface_stats_receive_errors", "c",
     "Number of packet receive errors on a network interface", ONE),
    ("rx.drop", "libvirt_domain_interface_stats_receive_drops", "c",
     "Number of packet receive drops on a network interface", ONE),
    ("tx.bytes", "libvirt_domain_interface_stats_transmit_bytes", "c",
     "Number of bytes transmitted on a network interface", ONE),
    ("tx.pkts", "libvirt_domain_interface_stats_transmit_packets", "c",
     "Number of packets transmitted on a network interface", ONE),
    ("tx.errs", "libvirt_domain_interface_stats_transmit_errors", "c",
     "Number of packet transmit errors on a network interface", ONE),
    ("tx.drop", "libvirt_domain_interface_stats_transmit_drops", "c",
     "Number of packet transmit drops on a network interface", ONE),
)  # fmt: skip


class _Families:
    """Metric families by name, created on first use, in the order first used."""

    def __init__(self) -> None:
        self._by_name: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def add(self, name: str, kind: str, doc: str, labels: dict[str, str], value: float) -> None:
        family = self._by_name.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "c" else GaugeMetricFamily
            family = cls(name, doc, labels=list(labels))
            self._by_name[name] = family
        family.add_metric(list(labels.values()), value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def domain_families(records: Iterable[DomainStats], families: _Families) -> None:
    """The libvirt exporter's metrics for each domain's statistics record."""
    count = 0
    for record in records:
        count += 1
        params = record.params
        dom = {"domain": record.name}
        state = params.get("state.state")
        if isinstance(state, int):
            desc = STATE_DESCRIPTIONS[state] if 0 <= state < len(STATE_DESCRIPTIONS) else "?"
            families.add(
                "libvirt_domain_info_state",
                "g",
                "Code of the domain state, with its description",
                {**dom, "state_desc": desc},
                state,
            )
        for field, name, kind, doc, unit in _DOMAIN_FIELDS:
            _add(families, params, field, name, kind, doc, dom, unit)
        available, usable = params.get("balloon.available"), params.get("balloon.usable")
        if isinstance(available, int) and isinstance(usable, int) and available > 0:
            # The exporter's figure: what the guest uses of what it has, in percent.
            families.add(
                "libvirt_domain_memory_stats_used_percent",
                "g",
                "Memory the guest uses, in percent of what it has",
                dom,
                (available - usable) * 100 / available,
            )
        for i in range(_int(params.get("vcpu.current"))):
            for suffix, name, kind, doc, unit in _VCPU_FIELDS:
                labels = {**dom, "vcpu": str(i)}
                _add(families, params, f"vcpu.{i}.{suffix}", name, kind, doc, labels, unit)
        for i in range(_int(params.get("block.count"))):
            target = params.get(f"block.{i}.name")
            if isinstance(target, str):
                labels = {**dom, "target_device": target}
                for suffix, name, kind, doc, unit in _BLOCK_FIELDS:
                    _add(families, params, f"block.{i}.{suffix}", name, kind, doc, labels, unit)
        for i in range(_int(params.get("net.count"))):
            target = params.get(f"net.{i}.name")
            if isinstance(target, str):
                labels = {**dom, "target_device": target}
                for suffix, name, kind, doc, unit in _NET_FIELDS:
                    _add(families, params, f"net.{i}.{suffix}", name, kind, doc, labels, unit)
    families.add("libvirt_domains", "g", "Number of domains", {}, count)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _add(
    families: _Families,
    params: dict[str, Any],
    field: str,
    name: str,
    kind: str,
    doc: str,
    labels: dict[str, str],
    unit: str,
) -> None:
    value = params.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        scaled = value * 1024 if unit == KIB else value / 1e9 if unit == NS else value
        families.add(name, kind, doc, labels, scaled)


class _Snapshot(Collector):
    """A collector that hands out families gathered beforehand (``collect()`` cannot
    await: the gathering is done, at scrape time, before it is called)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


async def scrape(node: Node, *, clients: Callable[[], int] | None = None) -> bytes:
    """The text Prometheus gets: every domain's figures and the supervisor's own."""
    families = _Families()
    # The exporters' own health figure, first as theirs is: dashboards and alert rules
    # (libvirt_up == 0) expect it. The daemon is the hypervisor's supervisor itself, so
    # an answer means it is up.
    families.add("libvirt_up", "g", "Whether scraping libvirt's metrics was successful", {}, 1)
    started = time.perf_counter()
    records = await node.domains.get_all_domain_stats(StatsGroup(0), None, None, None)
    took = time.perf_counter() - started
    domain_families(records, families)
    counters = node.counters()
    supervisor = (
        ("asvirt_events_published", "c", "Events numbered and journaled since the node "
         "opened", counters.events_published),
        ("asvirt_event_subscribers", "g", "Event subscriptions open now",
         counters.event_subscribers),
        ("asvirt_events_lost", "c", "Events subscribers lost because they did not keep up",
         counters.events_lost),
        ("asvirt_event_gaps", "c", "Replays that asked for events the journal no longer "
         "retains", counters.event_gaps),
        ("asvirt_qmp_timeouts", "c", "QMP commands QEMU did not answer within their "
         "deadline", counters.qmp_timeouts),
        ("asvirt_stats_collection_seconds", "g", "How long gathering the domains' "
         "statistics for this scrape took", took),
    )  # fmt: skip
    for name, kind, doc, value in supervisor:
        families.add(name, kind, doc, {}, value)
    if clients is not None:
        families.add("asvirt_daemon_clients", "g", "Clients connected now", {}, clients())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)


async def serve_metrics(
    node: Node,
    address: tuple[str, int],
    *,
    clients: Callable[[], int] | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``address`` until cancelled; reports the bound addresses."""
    host, port = address
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = []
    for listener in listeners:
        sockname = listener.socket.getsockname()
        bound.append((str(sockname[0]), int(sockname[1])))
    log.info("serving metrics", address=", ".join(f"{h}:{p}" for h, p in bound))
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _answer(stream, node, clients)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, node: Node, clients: Callable[[], int] | None) -> None:
    head = b""
    with trio.move_on_after(REQUEST_TIMEOUT):
        while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    request = head.split(b"\n", 1)[0].decode("latin-1").split()
    if len(request) != 3 or not request[2].startswith("HTTP/"):
        await _respond(stream, 400, b"bad request\n")
        return
    method, target = request[0], request[1].split("?", 1)[0]
    if target != "/metrics":
        await _respond(stream, 404, b"not found: try /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _respond(stream, 405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
        return
    try:
        body = await scrape(node, clients=clients)
    except AsvirtError as err:
        await _respond(stream, 503, f"cannot gather metrics: {err}\n".encode())
        return
    await _respond(stream, 200, body, content_type=CONTENT_TYPE, head_only=method == "HEAD")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}  # fmt: skip


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + b"\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
    )
    await stream.send_all(head if head_only else head + body)


__all__ = ["STATE_DESCRIPTIONS", "domain_families", "scrape", "serve_metrics"]
