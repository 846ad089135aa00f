"""A node (one embed root) is shared by its connections: one table, one numbering, its config."""

from __future__ import annotations

import pytest
import trio

import asvirt
from asvirt.drivers.qemu.paths import EmbedPaths

from .guest import PAUSED_DOMAIN_TYPE, define
from .helpers import embed_uri, lifecycle, write_config

pytestmark = [pytest.mark.qemu]

LC = asvirt.EventKind.LIFECYCLE


async def test_two_connections_see_the_same_event_with_the_same_number(root, test_guest, tmp_path):
    async with (
        asvirt.open(embed_uri(root)) as a,
        asvirt.open(embed_uri(root)) as b,
        a.subscribe(kinds=LC) as ev_a,
        b.subscribe(kinds=LC) as ev_b,
    ):
        dom, _ = await define(a, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
        await (await b.lookup_by_name("vm1")).start(paused=True)
        await dom.destroy()
        with trio.fail_after(5):
            seen_a = [await ev_a.receive() for _ in range(4)]
            seen_b = [await ev_b.receive() for _ in range(4)]
    assert seen_a == seen_b
    assert [lifecycle(e) for e in seen_a] == [
        ("DEFINED", "ADDED"),
        ("STARTED", "BOOTED"),
        ("SUSPENDED", "PAUSED"),
        ("STOPPED", "DESTROYED"),
    ]
    assert [e.seq for e in seen_a] == sorted({e.seq for e in seen_a})


async def test_the_roots_events_settings_are_honoured(root, test_guest, tmp_path):
    # [events] in ROOT/etc/asvirt.toml sizes the subscribers' buffers.
    write_config(root, "[events]\nsubscriber_buffer = 2\n")
    async with asvirt.open(embed_uri(root)) as conn, conn.subscribe(kinds=LC) as events:
        for name in ("a", "b", "c", "d"):
            await define(conn, test_guest, tmp_path, name, domain_type=PAUSED_DOMAIN_TYPE)
        assert events.pending() == 2
        assert events.lost == 2
        assert [(await events.receive()).domain for _ in range(2)] == ["c", "d"]


async def test_closing_one_connection_leaves_the_others_supervising(root, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as keeper:
        async with asvirt.open(embed_uri(root)) as other:
            dom, _ = await define(other, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
            await dom.start(paused=True)
        # The node lives on with keeper: the QEMU is still supervised and answers.
        kept = await keeper.lookup_by_name("vm1")
        async with keeper.subscribe(kept, kinds=LC) as events:
            await kept.resume()
            assert lifecycle(await events.receive()) == ("RESUMED", "UNPAUSED")
        await kept.destroy()
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.state()  # its connection is closed


async def test_autostart_domains_start_once_per_boot_when_asked(root, test_guest, tmp_path):
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
        await dom.set_autostart(True)
    # Opened without asking: nothing starts.
    async with asvirt.open(embed_uri(root)) as conn:
        assert not await (await conn.lookup_by_name("vm1")).is_active()
    async with asvirt.open(embed_uri(root) + "&autostart=1") as conn:
        dom = await conn.lookup_by_name("vm1")
        assert await dom.is_active()
        await dom.destroy()
    # The host has not booted since: a domain the user stopped stays stopped.
    async with asvirt.open(embed_uri(root) + "&autostart=1") as conn:
        assert not await (await conn.lookup_by_name("vm1")).is_active()


async def test_a_cursor_older_than_the_journal_keeps_starts_with_a_gap(root, test_guest, tmp_path):
    # Small segments, few of them kept, few events cached: the oldest events go to disk and
    # then away, while the VM changes state.
    write_config(root, "[journal]\nsegment_bytes = 2048\nretain_bytes = 6144\ncache_events = 4\n")
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE)
        await dom.start(paused=True)
        for _ in range(40):
            await dom.resume()
            await dom.suspend()
        await dom.destroy()
    # Another node on the root (as after a restart): numbering and retention come from disk.
    async with asvirt.open(embed_uri(root)) as conn, conn.subscribe(kinds=LC, since=0) as events:
        with trio.fail_after(5):
            gap = await events.receive()
            rest = [await events.receive()]
            while lifecycle(rest[-1]) != ("STOPPED", "DESTROYED"):
                rest.append(await events.receive())
        assert events.pending() == 0
    assert gap.kind is asvirt.EventKind.GAP
    assert gap.data is not None and gap.data["first"] == 1
    assert rest[0].seq == gap.data["last"] + 1  # the first event kept follows the gap at once
    assert [e.seq for e in rest] == list(range(rest[0].seq, rest[-1].seq + 1))
    assert rest[-1].seq == 2 + 2 * 40 + 1 + 1  # every event of the node was numbered once
    assert len(rest) < 40, "retention kept everything: the test proves nothing"
    assert gap.describe() == f"event 'gap': events 1-{gap.data['last']} are no longer retained"


async def test_the_roots_socket_directory_goes_when_the_node_closes_with_nothing_running(
    root, test_guest, tmp_path
):
    # The root is deep: its sockets go to a directory of the user's named after it (under
    # /tmp/asvirt-UID or $XDG_RUNTIME_DIR/asvirt), outside the root, which nobody else removes.
    sockets = EmbedPaths(root).socket_dir
    assert not sockets.is_relative_to(root)
    async with asvirt.open(embed_uri(root)):
        assert sockets.is_dir()
    assert not sockets.exists()
    # A running domain's guest agent socket is there: the directory stays while it runs,
    # and goes when the node that saw it stop closes (with what QEMU left in it).
    agent = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    async with asvirt.open(embed_uri(root)) as conn:
        dom, _ = await define(
            conn, test_guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE, devices=agent
        )
        await dom.start(paused=True)
        assert any(p.is_socket() for p in sockets.iterdir())
    assert sockets.is_dir()
    async with asvirt.open(embed_uri(root)) as conn:
        await (await conn.lookup_by_name("vm1")).destroy()
    assert not sockets.exists()
    assert sockets.parent.is_dir()  # shared by every root of the user: left alone
