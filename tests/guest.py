"""The test guest: where it lives, and domain XML that boots it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import trio

import asvirt
from asvirt.drivers.qemu.capabilities import kvm_usable

from .helpers import destroy_all, disk_xml, embed_uri, wait_for, write_config

REPO = Path(__file__).resolve().parents[1]
GUEST_DIR = Path(
    os.environ.get("ASVIRT_GUEST_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asvirt" / "test-guest"
)
#: The same guest on Debian's generic kernel with USB host controller and usb-storage modules
#: (``scripts/build-test-guest --usb``): the cloud kernel has no USB. Slower to boot: only
#: tests of USB devices the guest must see use it.
USB_GUEST_DIR = Path(
    os.environ.get("ASVIRT_USB_GUEST_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "asvirt"
    / "test-guest-usb"
)
READY = "ASVIRT-GUEST-READY"
#: The guest agent's channel (the guest starts qemu-ga on it unless ``asvirt.agent=off``).
AGENT_CHANNEL_XML = """
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>"""

#: Kernel flags that skip boot work no test needs. Under TCG they halve the instructions the
#: guest runs before /init (counted with QEMU's -icount): the crypto API's self-tests of every
#: algorithm, the KDF self-test and the kprobe tracer's setup.
FAST_BOOT = "cryptomgr.notests initcall_blacklist=crypto_kdf108_init,init_kprobe_trace"

#: The domain type for tests that only need a paused (or never booted) VM: KVM when it works,
#: for speed. A guest that must boot runs under TCG ('qemu'): on these machines /dev/kvm is
#: nested and Linux guests do not boot on it.
PAUSED_DOMAIN_TYPE = "kvm" if kvm_usable()[0] else "qemu"


class TestGuest:
    """Domain XML for the tiny guest (Debian cloud kernel + busybox initramfs)."""

    __test__ = False  # not a test class

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.kernel = directory / "vmlinuz"
        self.initrd = directory / "initrd.cpio"

    def exists(self) -> bool:
        return self.kernel.is_file() and self.initrd.is_file() and (self.dir / "VERSION").is_file()

    def xml(
        self,
        name: str,
        serial_log: Path,
        *,
        domain_type: str = "qemu",
        action: str | None = None,
        delay: int = 0,
        acpi: str = "on",
        on_poweroff: str = "destroy",
        on_reboot: str = "restart",
        on_crash: str = "destroy",
        uuid: str | None = None,
        memory_mib: int = 128,
        current_memory_mib: int | None = None,
        vcpus: int = 1,
        max_vcpus: int | None = None,
        memballoon: str = "none",
        balloon_period: int | None = None,
        devices: str = "",
        cmdline: str = "",
        serial: str = "file",
    ) -> str:
        """The guest's domain XML. ``memballoon`` is the balloon's model (``balloon_period``:
        its ``<stats period>``); ``devices`` is more device XML, added as it is (disks, a
        watchdog...); ``cmdline`` more kernel command line flags (``asvirt.net=dhcp``...: see
        scripts/build-test-guest). ``vcpus`` below ``max_vcpus``: ``<vcpu current=...>``,
        room to hot-plug vCPUs; ``current_memory_mib``: ``<currentMemory>``; ``serial='pty'``
        gives the serial port a pty (for the console) that still logs to ``serial_log``."""
        extra = cmdline
        cmdline = f"console=ttyS0 quiet panic=0 {FAST_BOOT}"
        if extra:
            cmdline += f" {extra}"
        if action:
            cmdline += f" asvirt.action={action}"
        if delay:
            cmdline += f" asvirt.delay={delay}"
        if acpi != "on":
            cmdline += f" asvirt.acpi={acpi}"
        uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
        current = ""
        if current_memory_mib is not None:
            current = f"\n  <currentMemory unit='MiB'>{current_memory_mib}</currentMemory>"
        vcpu = f"<vcpu>{vcpus}</vcpu>"
        if max_vcpus is not None and max_vcpus != vcpus:
            vcpu = f"<vcpu current='{vcpus}'>{max_vcpus}</vcpu>"
        balloon = f"<memballoon model='{memballoon}'/>"
        if balloon_period is not None:
            balloon = (
                f"<memballoon model='{memballoon}'><stats period='{balloon_period}'/></memballoon>"
            )
        serial_el = f"""<serial type='file'>
      <source path='{escape(str(serial_log))}'/>
      <target port='0'/>
    </serial>"""
        if serial == "pty":
            serial_el = f"""<serial type='pty'>
      <log file='{escape(str(serial_log))}'/>
      <target port='0'/>
    </serial>"""
        return f"""<domain type='{domain_type}'>
  <name>{escape(name)}</name>{uuid_el}
  <memory unit='MiB'>{memory_mib}</memory>{current}
  {vcpu}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(self.kernel))}</kernel>
    <initrd>{escape(str(self.initrd))}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>{on_poweroff}</on_poweroff>
  <on_reboot>{on_reboot}</on_reboot>
  <on_crash>{on_crash}</on_crash>
  <devices>
    {serial_el}
    <panic model='isa'/>
    {balloon}{devices}
  </devices>
</domain>
"""


def paused_xml(guest: TestGuest, tmp_path: Path, name: str = "vm1", **kw: object) -> str:
    """The guest's XML for a test that only needs a paused VM (``PAUSED_DOMAIN_TYPE``); its
    serial log goes to ``tmp_path/NAME.serial``."""
    kw.setdefault("domain_type", PAUSED_DOMAIN_TYPE)
    return guest.xml(name, tmp_path / f"{name}.serial", **kw)  # type: ignore[arg-type]


async def define(
    conn: asvirt.Connection, guest: TestGuest, tmp_path: Path, name: str = "vm1", **kw: object
) -> tuple[asvirt.Domain, Path]:
    """Define the guest as ``name`` (``kw`` as for :meth:`TestGuest.xml`); its serial log
    goes to ``tmp_path/NAME.serial``."""
    serial = tmp_path / f"{name}.serial"
    dom = await conn.define_xml(guest.xml(name, serial, **kw))  # type: ignore[arg-type]
    return dom, serial


async def start_with_disk(
    conn: asvirt.Connection, guest: TestGuest, tmp_path: Path, image: Path, fmt: str = "qcow2"
) -> asvirt.Domain:
    """Define ``vm1`` with the image ``image`` as its vda and start it paused."""
    # Block jobs run whether the vCPUs do or not: a paused VM is enough.
    dom, _ = await define(
        conn, guest, tmp_path, domain_type=PAUSED_DOMAIN_TYPE, devices=disk_xml(image, fmt=fmt)
    )
    await dom.start(paused=True)
    return dom


async def wait_for_serial(
    path: Path, text: str = READY, *, times: int = 1, timeout: float = 60
) -> None:
    """Wait until the guest has written ``text`` on its serial port (a file) ``times`` times
    (``ASVIRT-DISK-add vda`` twice: a disk came back; the guest names disks in the order it
    finds them, so the first disk of a diskless guest is vda, whatever its target).

    Polled: what the guest writes there is announced by no event.
    """

    def written() -> bool:
        try:
            return path.read_text(errors="replace").count(text) >= times
        except FileNotFoundError:
            return False

    await wait_for(written, timeout=timeout, interval=0.05)


async def guest_exec(dom: asvirt.Domain, *argv: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``argv`` in the guest through its agent (guest-exec, output captured) and return
    guest-exec-status's answer once it has exited (``exitcode``, base64 ``out-data``...).

    Polled: the agent announces no exit; each poll is one exchange with the agent."""
    started = await dom.agent_command(
        json.dumps(
            {
                "execute": "guest-exec",
                "arguments": {"path": argv[0], "arg": list(argv[1:]), "capture-output": True},
            }
        )
    )
    pid = json.loads(started)["return"]["pid"]
    status: dict[str, Any] = {}

    async def exited() -> bool:
        reply = await dom.agent_command(
            json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})
        )
        status.update(json.loads(reply)["return"])
        return bool(status.get("exited"))

    with trio.fail_after(timeout):
        while not await exited():
            await trio.sleep(0.05)
    return status


class SharedGuest:
    """One booted test guest (``vm1``) that the tests of a module share, since a TCG boot is
    slow: it runs in an embed root of its own, and each test opens a connection of its own
    (:meth:`connect`), whose supervisor re-attaches to it. A test leaves it as it found it.
    """

    def __init__(self, root: Path, serial: Path) -> None:
        self.root = root
        #: Its serial log: it keeps what earlier tests made the guest say (:meth:`said`).
        self.serial = serial

    def said(self, text: str) -> int:
        """How many times the guest has written ``text`` so far (a test waits for one more:
        ``wait_for_serial(serial, text, times=said + 1)``)."""
        return self.serial.read_text(errors="replace").count(text) if self.serial.exists() else 0

    @contextlib.asynccontextmanager
    async def connect(
        self, **qemu: float
    ) -> AsyncIterator[tuple[asvirt.Connection, asvirt.Domain]]:
        """A connection of the test's own, and the guest on it. ``qemu``: ``[qemu]`` settings
        of this connection's supervisor other than :data:`SHARED_GUEST_QEMU`'s
        (``unplug_timeout=0.5``)."""
        write_qemu_config(self.root, SHARED_GUEST_QEMU | qemu)
        try:
            async with asvirt.open(embed_uri(self.root)) as conn:
                yield conn, await conn.lookup_by_name("vm1")
        finally:
            write_qemu_config(self.root, SHARED_GUEST_QEMU)


#: The shared guest's supervisors' ``[qemu]`` settings. A guest under TCG on a loaded machine
#: can take seconds to release a device: more than the default deadline, which only a test of
#: that deadline needs to meet (it sets its own).
SHARED_GUEST_QEMU = {"destroy_grace": 2.0, "qmp_timeout": 10.0, "unplug_timeout": 60.0}


def write_qemu_config(root: Path, settings: dict[str, float]) -> None:
    write_config(root, "[qemu]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


@contextlib.contextmanager
def shared_guest(guest: TestGuest, base: Path, **kw: object) -> Iterator[SharedGuest]:
    """Boot the guest (``kw`` as for :meth:`TestGuest.xml`) under ``base`` for a module's
    tests (a module-scoped fixture's body, outside any test's event loop); destroy it after."""
    root = base / "root"
    root.mkdir(parents=True)
    write_qemu_config(root, SHARED_GUEST_QEMU)
    shared = SharedGuest(root, base / "vm1.serial")

    async def boot() -> None:
        async with asvirt.open(embed_uri(root)) as conn:
            dom = await conn.define_xml(guest.xml("vm1", shared.serial, **kw))  # type: ignore[arg-type]
            try:
                await dom.start()
                await wait_for_serial(shared.serial, timeout=120)
            except BaseException:
                await destroy_all(conn)
                raise

    async def destroy() -> None:
        async with asvirt.open(embed_uri(root)) as conn:
            await destroy_all(conn)

    trio.run(boot)
    try:
        yield shared
    finally:
        trio.run(destroy)
