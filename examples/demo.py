"""Boot a tiny VM on asvirt's embedded QEMU driver and print its events as they happen.

    .venv/bin/python examples/demo.py [--kvm] [--root DIR]

The VM is the project's test guest (a Debian cloud kernel and a busybox initramfs, built by
scripts/setup). It is started, paused, resumed, rebooted and shut down through ACPI, and every
event asvirt publishes is printed the moment it arrives.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import trio

import asvirt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.guest import GUEST_DIR, READY, TestGuest, wait_for_serial  # noqa: E402


async def print_events(events: asvirt.Subscription) -> None:
    async for ev in events:
        stamp = datetime.datetime.fromtimestamp(ev.timestamp).strftime("%H:%M:%S.%f")[:-3]
        print(f"  event #{ev.seq:<3} {stamp}  {ev.describe()}", flush=True)


async def step(text: str) -> None:
    # Let the events of the previous step print first, so the output reads in order.
    await trio.sleep(0.05)
    print(f"\n>>> {text}", flush=True)


async def main(kvm: bool, root: Path) -> None:
    guest = TestGuest(GUEST_DIR)
    if not guest.exists():
        sys.exit(f"the test guest is missing in {GUEST_DIR}: run scripts/setup first")
    serial = root / "demo.serial"
    xml = guest.xml("demo", serial, domain_type="kvm" if kvm else "qemu")

    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        print(f"connected to {conn.uri}")
        async with trio.open_nursery() as nursery:
            events = conn.subscribe()
            nursery.start_soon(print_events, events)

            await step("define the domain")
            dom = await conn.define_xml(xml)
            await step("start it (under TCG emulation)" if not kvm else "start it (KVM)")
            await dom.start()
            await wait_for_serial(serial, READY)
            await step(f"the guest booted; state is {(await dom.state())[0].label}")

            await step("suspend and resume")
            await dom.suspend()
            await dom.resume()

            await step("reboot (ACPI power button, turned into a reset as libvirt does)")
            serial.write_text("")
            await dom.reboot()
            await wait_for_serial(serial, READY)
            await step("the guest is back")

            await step("shut down through ACPI and wait for QEMU to exit")
            async with conn.subscribe(dom, asvirt.EventKind.LIFECYCLE) as mine:
                await dom.shutdown()
                async for ev in mine:
                    if ev.type is asvirt.LifecycleEvent.STOPPED:
                        break
            state, reason = await dom.state()
            await step(f"state is {state.label} ({reason.label}); undefine it")
            await dom.undefine()
            await trio.sleep(0.1)
            events.close()
    print(f"\ndone; QEMU's log is in {root}/log/qemu/demo.log")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvm", action="store_true", help="use KVM instead of TCG")
    parser.add_argument("--root", type=Path, help="embed root (default: a new temporary dir)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="asvirt-demo-"))
    try:
        trio.run(main, args.kvm, root)
    except asvirt.AsvirtError as err:
        sys.exit(f"error: {err}")
