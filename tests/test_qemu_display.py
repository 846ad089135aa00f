"""Keyboard, NMI and screen of the test guest (TCG), as virsh send-key, inject-nmi and
screenshot drive them: the guest's own input layer and kernel log say what it received."""

from __future__ import annotations

import json

import pytest

import asvirt

from .guest import AGENT_CHANNEL_XML, define, wait_for_serial
from .helpers import collect_until, destroy_all, embed_uri, run_cli

pytestmark = [pytest.mark.qemu, pytest.mark.guest]

VGA = "\n    <video><model type='vga'/></video>"

#: Run in the guest (through its agent): open the AT keyboard's event device, say so on the
#: serial port, then dump its input events there as they come, one per line (24 bytes on
#: x86-64: time, type, code, value).
WATCH_KEYBOARD = """
for e in /sys/class/input/event*; do
    case $(cat "$e/device/name") in *keyboard*) dev=/dev/input/${e##*/} ;; esac
done
exec 3<"$dev"
echo ASVIRT-KBD-OPEN > /dev/ttyS0
exec od -An -tx1 -v -w24 <&3 > /dev/ttyS0
"""


def key_event(code: int, value: int) -> str:
    """A Linux input event EV_KEY ``code`` ``value`` (1: pressed, 0: released) as od prints
    its last 8 bytes (type, code, value; little-endian)."""
    return f" 01 00 {code & 0xFF:02x} {code >> 8:02x} {value:02x} 00 00 00\n"


async def test_keys_nmi_and_screenshot(conn, test_guest, tmp_path):
    dom, serial = await define(conn, test_guest, tmp_path, devices=AGENT_CHANNEL_XML + VGA)
    plain, _ = await define(conn, test_guest, tmp_path, name="plain", domain_type="qemu")
    async with conn.subscribe(dom, kinds={asvirt.EventKind.AGENT_LIFECYCLE}) as events:
        await dom.start()
        await collect_until(
            events,
            lambda seen: any(e.data["state"] == asvirt.AgentLifecycleState.CONNECTED for e in seen),
            timeout=60,
        )
    await wait_for_serial(serial)
    run = {"path": "/bin/sh", "arg": ["-c", WATCH_KEYBOARD]}
    await dom.agent_command(json.dumps({"execute": "guest-exec", "arguments": run}))
    await wait_for_serial(serial, "ASVIRT-KBD-OPEN")

    # A Linux key by name, an XT scancode, a key with an 0xE0-prefixed scancode, and a
    # combination held together: the guest's keyboard driver reports each as its Linux key.
    await dom.send_key(asvirt.KeycodeSet.LINUX, 0, ["KEY_A"])
    await wait_for_serial(serial, key_event(30, 0))
    await dom.send_key("xt", 0, [0x30])  # B
    await wait_for_serial(serial, key_event(48, 0))
    await dom.send_key(asvirt.KeycodeSet.LINUX, 50, ["KEY_LEFTCTRL", "KEY_DELETE"])
    await wait_for_serial(serial, key_event(111, 0))
    log = serial.read_text(errors="replace")
    ctrl_down, del_down = log.index(key_event(29, 1)), log.index(key_event(111, 1))
    assert ctrl_down < del_down < log.index(key_event(111, 0))  # pressed together
    for bad in ([], list(range(1, 18)), ["KEY_NOPE"], [30, 30]):
        with pytest.raises(asvirt.InvalidArgError):
            await dom.send_key(asvirt.KeycodeSet.LINUX, 0, bad)
    with pytest.raises(asvirt.InvalidArgError, match="cannot translate keycode 300"):
        await dom.send_key(asvirt.KeycodeSet.LINUX, 0, [300])
    with pytest.raises(asvirt.InvalidArgError):
        await dom.send_key("nosuchset", 0, [1])

    # An NMI: nothing in the guest claims it, so its kernel says so on the console.
    await dom.inject_nmi()
    await wait_for_serial(serial, "NMI received for unknown reason")

    # The screen: the VGA text console, 720x400, as a binary PPM; no descriptor is left in
    # QEMU's fd sets.
    mime, image = await dom.screenshot()
    assert mime == "image/x-portable-pixmap"
    magic, size, depth, pixels = image.split(b"\n", 3)
    assert (magic, size, depth) == (b"P6", b"720 400", b"255")
    assert len(pixels) == 720 * 400 * 3
    assert any(pixels)  # the console shows text
    assert await dom.qmp("query-fdsets") == []
    with pytest.raises(asvirt.InvalidArgError, match="No such screen: 1"):
        await dom.screenshot(1)
    await plain.start(paused=True)
    with pytest.raises(asvirt.OperationFailedError, match="no screens"):
        await plain.screenshot()
    await destroy_all(conn)
    with pytest.raises(asvirt.OperationInvalidError):
        await dom.inject_nmi()


async def test_cli(root, fast_config, test_guest, tmp_path):
    """virsh's output: send-key and inject-nmi print virsh's empty line, screenshot where
    it saved what."""
    async with asvirt.open(embed_uri(root)) as conn:
        dom, serial = await define(conn, test_guest, tmp_path, devices=VGA)
        await dom.start()
    try:
        await wait_for_serial(serial)
        assert run_cli(root, "send-key", "vm1", "KEY_ENTER").stdout == "\n"
        assert run_cli(root, "send-key", "vm1", "--codeset", "xt", "28").stdout == "\n"
        bad = run_cli(root, "send-key", "vm1", "--codeset", "xt", "KEY_A", check=False)
        assert bad.returncode == 1 and bad.stderr == "error: invalid keycode: 'KEY_A'\n"
        bad = run_cli(root, "send-key", "vm1", *[str(k) for k in range(1, 18)], check=False)
        assert bad.returncode == 1 and bad.stderr == "error: too many keycodes\n"
        assert run_cli(root, "inject-nmi", "vm1").stdout == "\n"
        await wait_for_serial(serial, "NMI received for unknown reason")
        shot = tmp_path / "shot.ppm"
        out = run_cli(root, "screenshot", "vm1", str(shot)).stdout
        assert out == f"Screenshot saved to {shot}, with type of image/x-portable-pixmap\n"
        assert shot.read_bytes().startswith(b"P6\n720 400\n255\n")
        # A symlink where the file goes is replaced, not written through.
        target = tmp_path / "elsewhere"
        target.write_bytes(b"keep")
        link = tmp_path / "link.ppm"
        link.symlink_to(target)
        run_cli(root, "screenshot", "vm1", str(link))
        assert target.read_bytes() == b"keep" and not link.is_symlink()
        # No file name: DOMAIN-TIMESTAMP.ppm in the current directory.
        out = run_cli(root, "screenshot", "vm1", cwd=tmp_path).stdout
        name = out.split(" ")[3].rstrip(",")
        assert name.startswith("vm1-20") and name.endswith(".ppm")
        assert (tmp_path / name).read_bytes().startswith(b"P6\n")
    finally:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)
