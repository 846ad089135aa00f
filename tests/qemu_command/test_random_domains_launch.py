"""Random valid domains (hypothesis) start under the real QEMU, paused.

The strategy is the one the parser property tests use; every generated configuration is
prepared, turned into a command line, started with ``-S`` and checked over QMP. A command
line QEMU refuses is a bug in asvirt, whatever the combination of devices.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from qemu_launch import QemuRefused, launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.command import domxml_to_native
from asvirt.drivers.qemu.helpers import ensure_nvram
from asvirt.drivers.qemu.membacking import MemoryDirs
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.drivers.qemu.tuning import hugetlbfs_mount
from tests.caps import REPO, Caps

# The strategies live next to the parser's property tests (a directory without a package).
_spec = importlib.util.spec_from_file_location(
    "domain_strategies", REPO / "tests" / "conf" / "domain_strategies.py"
)
assert _spec is not None and _spec.loader is not None
strategies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strategies)

#: Each example starts a QEMU (~50 ms); ASVIRT_HYPOTHESIS_LAUNCHES raises the count.
LAUNCHES = int(os.environ.get("ASVIRT_HYPOTHESIS_LAUNCHES", "40"))

pytestmark = pytest.mark.qemu


def _materialize(xml: str, tmp: Path) -> str:
    """Point the generated paths at real scratch files, TCG only, no kernel to boot."""
    xml = xml.replace("/images/", f"{tmp}/").replace("type='kvm'", "type='qemu'")
    if "<locked/>" in xml:
        # Locked memory (-overcommit mem-lock=on) locks TCG's translation cache too, 1 GiB
        # by default: QEMU populates it before it answers (7 s and 1.2 GB on an idle host,
        # over the launch deadline on a loaded one). A small cache keeps what is tested.
        tcg = "<tcg><tb-cache unit='MiB'>16</tb-cache></tcg>"
        if "<features>" in xml:
            xml = xml.replace("<features>", f"<features>{tcg}", 1)
        else:
            xml = xml.replace("</os>", f"</os><features>{tcg}</features>", 1)
    xml = xml.replace("/tmp/serial.log", f"{tmp}/serial.log")
    xml = xml.replace("/tmp/qga.sock", f"{tmp}/qga.sock")
    xml = xml.replace("/tmp/share", str(tmp)).replace("/tmp/nvram.fd", f"{tmp}/nvram.fd")
    xml = xml.replace("/tmp/egd.sock", f"{tmp}/egd.sock")
    for scratch in ("/tmp/fwd", "/tmp/mem", "/tmp/erst"):  # guestfwd sockets, memory files
        xml = xml.replace(scratch, f"{tmp}/{scratch[5:]}")
    # Shared memory objects live in /dev/shm under names of this example's (removed after).
    xml = xml.replace("<shmem name='hyp-", f"<shmem name='{tmp.name}-")
    if not os.path.exists("/dev/vhost-vsock"):  # QEMU cannot open this host's side of it
        xml = re.sub(r"<vsock .*?</vsock>", "", xml)
    # Huge pages: only where the host mounts hugetlbfs of every size asked for (and has the
    # pages: a start checks, see test_argv_membacking); else ordinary RAM.
    sizes = {int(k) for k in re.findall(r"<page size='(\d+)' unit='KiB'", xml)}
    if "<hugepages>" in xml and not all(hugetlbfs_mount(k or None) for k in sizes or {0}):
        xml = re.sub(r"<hugepages>.*?</hugepages>", "", xml)
    # What a start makes on the host (taps, macvtaps) or needs of it (a SCSI disk): tested
    # where those exist (test_network_host, test_argv_more_devices); not run here.
    xml = re.sub(r"<interface type='(ethernet|direct)'>.*?</interface>", "", xml)
    xml = re.sub(r"<disk type='block' device='lun'.*?</disk>", "", xml)
    # Network disks are opened at start, from servers this test does not run: started
    # against real qemu-nbd and HTTP servers in test_qemu_network_disks.
    xml = re.sub(r"<disk type='network'.*?</disk>", "", xml)
    xml = xml.replace("<controller type='scsi' index='7' model='virtio-scsi'/>", "")
    xml = xml.replace("<kernel>/boot/vmlinuz</kernel>", "")
    xml = re.sub(r"<cmdline>.*?</cmdline>", "", xml, flags=re.S)
    for m in re.finditer(r"<driver name='qemu' type='(\w+)'[^>]*/><source file='([^']+)'", xml):
        fmt, path = m.groups()
        if fmt == "qcow2":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "1M"], check=True)
        else:
            Path(path).write_bytes(b"\0" * (1 << 20))
    return xml


@settings(
    max_examples=LAUNCHES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(strategies.domains())
def test_random_domains_start(caps: Caps, xml: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    # Not tmp_path: it is shared by every example, and O_DIRECT (cache='none') needs a real
    # file system, which /var/tmp is and /tmp may not be.
    tmp = Path(tempfile.mkdtemp(prefix="asvirt-launch-", dir="/var/tmp"))
    try:
        xml = _materialize(xml, tmp)
        argv = domxml_to_native(
            xml, caps, monitor_path=str(tmp / "m.sock"), memory_backing_dir=str(tmp / "ram")
        )
        d = prepare_domain(parse_domain_xml(xml), caps, nvram_dir=str(tmp))
        ensure_nvram(d)  # what start does: the UEFI variable store from its template
        MemoryDirs.of(d, tmp / "ram").create(None)  # and file-backed RAM's directory
        try:
            got = launch_paused(argv, tmp)
        except QemuRefused as err:
            pytest.fail(f"QEMU refused the command line: {err}\n{xml}\n{argv}")
        assert got.status == "prelaunch"
        assert got.vcpus == d.vcpus
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for shm in Path("/dev/shm").glob(f"{tmp.name}-*"):
            shm.unlink(missing_ok=True)
