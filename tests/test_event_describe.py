"""DomainEvent.describe(): virsh's ``event`` wording for every kind, type and detail.

The expected strings are virsh's (tools/virsh-domain-event.c: the ``virshDomainEvent*`` enums
and the ``virshEvent*Print`` formats; block job types from virsh-domain.c). No QEMU involved.
"""

from __future__ import annotations

from typing import Any

import pytest

from asvirt import (
    DomainEvent,
    EventKind,
    LifecycleEvent,
    NetworkLifecycleEvent,
    SecretLifecycleEvent,
)
from asvirt.events.types import EventDetail

#: virsh's words for each lifecycle type, and for its details in libvirt's integer order.
VIRSH_LIFECYCLE: dict[LifecycleEvent, tuple[str, list[str]]] = {
    LifecycleEvent.DEFINED: ("Defined", ["Added", "Updated", "Renamed", "Snapshot"]),
    LifecycleEvent.UNDEFINED: ("Undefined", ["Removed", "Renamed"]),
    LifecycleEvent.STARTED: (
        "Started",
        ["Booted", "Migrated", "Restored", "Snapshot", "Event wakeup", "Recreation"],
    ),
    LifecycleEvent.SUSPENDED: (
        "Suspended",
        [
            "Paused",
            "Migrated",
            "I/O Error",
            "Watchdog",
            "Restored",
            "Snapshot",
            "API error",
            "Post-copy",
            "Post-copy Error",
        ],
    ),
    LifecycleEvent.RESUMED: (
        "Resumed",
        ["Unpaused", "Migrated", "Snapshot", "Post-copy", "Post-copy Error"],
    ),
    LifecycleEvent.STOPPED: (
        "Stopped",
        [
            "Shutdown",
            "Destroyed",
            "Crashed",
            "Migrated",
            "Saved",
            "Failed",
            "Snapshot",
            "Recreation",
        ],
    ),
    LifecycleEvent.SHUTDOWN: (
        "Shutdown",
        ["Finished", "Finished after guest request", "Finished after host request"],
    ),
    LifecycleEvent.PMSUSPENDED: ("PMSuspended", ["Memory", "Disk"]),
    LifecycleEvent.CRASHED: ("Crashed", ["Panicked", "Crashloaded"]),
}


def event(kind: EventKind, data: dict[str, Any] | None = None, **kw: Any) -> DomainEvent:
    return DomainEvent(
        seq=1, timestamp=1700000000.5, domain="vm1", uuid="u-1", kind=kind, data=data, **kw
    )


def test_every_lifecycle_type_and_detail_has_virsh_words():
    assert set(VIRSH_LIFECYCLE) == set(LifecycleEvent)
    for type_, (_, details) in VIRSH_LIFECYCLE.items():
        assert [int(d) for d in type_.details] == list(range(len(details))), type_


@pytest.mark.parametrize(
    ("type_", "detail"),
    [(t, d) for t in LifecycleEvent for d in t.details],
    ids=lambda x: x.name,
)
def test_lifecycle(type_: LifecycleEvent, detail: EventDetail):
    words, details = VIRSH_LIFECYCLE[type_]
    ev = event(EventKind.LIFECYCLE, type=type_, detail=detail)
    assert ev.describe() == f"event 'lifecycle' for domain 'vm1': {words} {details[int(detail)]}"


IO_ERROR = {
    "device": "vdb",
    "alias": "virtio-disk1",
    "path": "/var/lib/images/data.qcow2",
    "node-name": "libvirt-1-format",
    "operation": "read",
    "action": "stop",
    "reason": "Input/output error",
    "nospace": False,
}
HEAD = "event '{}' for domain 'vm1'"

#: (kind, data, what virsh prints after the head); every non-lifecycle kind at least once.
CASES: list[tuple[EventKind, dict[str, Any] | None, str]] = [
    (EventKind.REBOOT, {"guest": True, "reason": "guest-reset"}, ""),
    (EventKind.REBOOT, None, ""),
    (EventKind.RTC_CHANGE, {"offset": 318202333}, ": 318202333"),
    (EventKind.RTC_CHANGE, {"offset": -3600}, ": -3600"),
    (EventKind.RTC_CHANGE, {"offset": 0}, ": 0"),
    # QEMU's watchdog actions are virsh's words already.
    *[
        (EventKind.WATCHDOG, {"action": a}, f": {a}")
        for a in ("none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi")
    ],
    # io-error-reason: path (alias) action due to reason, with libvirt's action names.
    (
        EventKind.IO_ERROR,
        IO_ERROR,
        ": /var/lib/images/data.qcow2 (virtio-disk1) pause due to Input/output error",
    ),
    (
        EventKind.IO_ERROR,
        {**IO_ERROR, "action": "report"},
        ": /var/lib/images/data.qcow2 (virtio-disk1) report due to Input/output error",
    ),
    (
        EventKind.IO_ERROR,
        {**IO_ERROR, "action": "ignore", "nospace": True, "reason": "No space left on device"},
        ": /var/lib/images/data.qcow2 (virtio-disk1) none due to enospc",
    ),
    # A node that is no disk of the domain: libvirt prints empty path and alias.
    (
        EventKind.IO_ERROR,
        {**IO_ERROR, "device": "", "alias": "", "path": None, "reason": ""},
        ":  () pause",
    ),
    (
        EventKind.DEVICE_REMOVED,
        {"device": "tablet1", "path": "/machine/peripheral/tablet1"},
        ": tablet1",
    ),
    # virsh: "event 'device-removal-failed' for domain 'vm1': virtio-disk1"
    (EventKind.DEVICE_REMOVAL_FAILED, {"device": "virtio-disk1"}, ": virtio-disk1"),
    (EventKind.BALLOON_CHANGE, {"actual_kib": 98304}, ": 98304KiB"),
    # virsh event --event agent-lifecycle
    (
        EventKind.AGENT_LIFECYCLE,
        {"state": 1, "reason": 2},
        ": state: 'connected' reason: 'channel'",
    ),
    (
        EventKind.AGENT_LIFECYCLE,
        {"state": 2, "reason": 1},
        ": state: 'disconnected' reason: 'domain started'",
    ),
    # virsh event --event metadata-change
    (EventKind.METADATA_CHANGE, {"type": 1, "nsuri": None}, ": type title, uri <null>"),
    (
        EventKind.METADATA_CHANGE,
        {"type": 2, "nsuri": "http://example.org/x"},
        ": type element, uri http://example.org/x",
    ),
    *[
        (EventKind.BLOCK_JOB, {"device": "pull-vda", "type": qemu, "status": status}, out)
        for qemu, status, out in (
            ("stream", "completed", ": Block Pull for pull-vda completed"),
            ("mirror", "ready", ": Block Copy for pull-vda ready"),
            ("commit", "failed", ": Block Commit for pull-vda failed"),
            ("backup", "canceled", ": Backup for pull-vda canceled"),
            ("create", "completed", ": Unknown job for pull-vda completed"),
        )
    ],
    # With the disk and libvirt's job type (virsh's block-job-2 line).
    *[
        (
            EventKind.BLOCK_JOB,
            {"device": dev, "type": qemu, "disk": "vda", "job": job, "status": st},
            out,
        )
        for dev, qemu, job, st, out in (
            (
                "active-commit-vda",
                "commit",
                "active-commit",
                "ready",
                ": Active Block Commit for vda ready",
            ),
            ("commit-vda", "commit", "commit", "completed", ": Block Commit for vda completed"),
            ("pull-vda", "stream", "pull", "canceled", ": Block Pull for vda canceled"),
        )
    ],
]


@pytest.mark.parametrize(
    ("kind", "data", "tail"), CASES, ids=[f"{k.value}-{i}" for i, (k, _, _) in enumerate(CASES)]
)
def test_other_kinds(kind: EventKind, data: dict[str, Any] | None, tail: str):
    assert event(kind, data).describe() == HEAD.format(kind.value) + tail


def test_every_kind_is_described():
    covered = {kind for kind, _, _ in CASES} | {
        EventKind.LIFECYCLE,
        EventKind.QMP,
        EventKind.GAP,
        EventKind.NETWORK_LIFECYCLE,
        EventKind.SECRET_LIFECYCLE,
        EventKind.SECRET_VALUE_CHANGED,
    }
    assert covered == set(EventKind)


@pytest.mark.parametrize(
    ("type_", "word"),
    [(SecretLifecycleEvent.DEFINED, "Defined"), (SecretLifecycleEvent.UNDEFINED, "Undefined")],
)
def test_secret_events_read_as_virsh_secret_event(type_: SecretLifecycleEvent, word: str):
    # virsh-secret.c: "event '%s' for secret %s: %s", and no ": ..." for value-changed
    u = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
    ev = DomainEvent(1, 0.0, u, u, EventKind.SECRET_LIFECYCLE, type_)
    assert ev.describe() == f"event 'lifecycle' for secret {u}: {word}"
    ev = DomainEvent(2, 0.0, u, u, EventKind.SECRET_VALUE_CHANGED)
    assert ev.describe() == f"event 'value-changed' for secret {u}"


def test_gap_markers_say_which_events_are_gone():
    gap = DomainEvent(
        seq=120,
        timestamp=0.0,
        domain="",
        uuid="",
        kind=EventKind.GAP,
        data={"first": 5, "last": 120},
    )
    assert gap.describe() == "event 'gap': events 5-120 are no longer retained"


def test_raw_qmp_events_name_the_qemu_event():
    # No virsh 'event' wording: these are what 'virsh qemu-monitor-event' shows.
    ev = event(EventKind.QMP, {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}})
    assert ev.describe() == "event 'qemu-monitor' for domain 'vm1': STOP"


@pytest.mark.parametrize(
    ("type_", "word"),
    [
        (NetworkLifecycleEvent.DEFINED, "Defined"),
        (NetworkLifecycleEvent.UNDEFINED, "Undefined"),
        (NetworkLifecycleEvent.STARTED, "Started"),
        (NetworkLifecycleEvent.STOPPED, "Stopped"),
    ],
)
def test_network_lifecycle_reads_as_virsh_net_event(type_: NetworkLifecycleEvent, word: str):
    # virsh-network.c: "event 'lifecycle' for network %s: %s" (no quotes, no detail)
    ev = DomainEvent(1, 0.0, "default", "u", EventKind.NETWORK_LIFECYCLE, type_)
    assert ev.describe() == f"event 'lifecycle' for network default: {word}"
    assert int(type_) == ["Defined", "Undefined", "Started", "Stopped"].index(word)
