"""The domain XML virt-install 4.x writes (tests/data/virt-install/) runs under real QEMU.

Each file is defined as it is (accepted, and its ``dumpxml`` valid under libvirt's schema),
then started paused through the embedded driver: OVMF from the firmware descriptors, a
supervised swtpm, SPICE with its channels, USB redirection, sound. The guest's disks point
at scratch images. Where this machine cannot run what the XML asks (``-cpu host`` on its
nested KVM, Hyper-V's VP_INDEX), the launch says so and runs the rest: TCG with QEMU's
default CPU, and the enlightenments that need VP_INDEX dropped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import trio
from lxml import etree

import asvirt
from asvirt import DomainState as S
from asvirt.drivers.qemu.helpers import find_helpers
from tests.caps import (
    CONFORMANCE,
    REPO,
    hyperv_vpindex_failure,
    kvm_host_cpu_failure,
    kvm_smm_failure,
)
from tests.helpers import argv_of

pytestmark = pytest.mark.qemu

DATA = REPO / "tests" / "data" / "virt-install"
CASES = sorted(p.stem for p in DATA.glob("*.xml"))
SCHEMA = CONFORMANCE / "schemas" / "domain.rng"
#: Hyper-V enlightenments QEMU only gives with VP_INDEX (or with what needs it).
NEEDS_VPINDEX = ("vpindex", "synic", "stimer", "ipi")


def validate(xml: str) -> None:
    """libvirt's own domain schema accepts ``xml`` (when the conformance data is here)."""
    if not SCHEMA.exists():
        return
    rng = etree.RelaxNG(file=str(SCHEMA))
    assert rng.validate(etree.fromstring(xml.encode())), rng.error_log


@pytest.fixture(scope="module")
def machine_limits() -> dict[str, str | None]:
    # virt-install's guests want KVM with the host's CPU, and SMM for their Secure Boot
    # firmware: where this machine's KVM lacks either, they run under TCG.
    kvm = kvm_host_cpu_failure() or kvm_smm_failure()
    return {"kvm": kvm, "vpindex": hyperv_vpindex_failure("tcg" if kvm else "kvm")}


def runnable(xml: str, tmp: Path, limits: dict[str, str | None]) -> tuple[str, list[str]]:
    """``xml`` with scratch disks, and what this machine cannot run taken out (and why)."""
    notes = []
    for m in re.finditer(r'<source file="(/var/lib/libvirt/images/[^"]+)"/>', xml):
        path = m.group(1)
        local = tmp / Path(path).name
        if path.endswith(".qcow2"):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(local), "8M"], check=True
            )
        else:
            local.write_bytes(b"\0" * (1 << 20))
        xml = xml.replace(path, str(local))
    if limits["kvm"] is not None:
        notes.append(limits["kvm"])
        xml = xml.replace('<domain type="kvm">', '<domain type="qemu">')
        xml = xml.replace('<cpu mode="host-passthrough"/>', "")
    if limits["vpindex"] is not None and "<vpindex" in xml:
        notes.append(limits["vpindex"])
        for feature in NEEDS_VPINDEX:
            xml = re.sub(rf'\s*<{feature} state="on"/>', "", xml)
    return xml.replace("<memory>4194304</memory>", "<memory>1048576</memory>"), notes


@pytest.mark.parametrize("case", CASES)
async def test_virt_install_xml_is_accepted_and_dumps_valid_xml(conn, case, caps):
    xml = (DATA / f"{case}.xml").read_text()
    dom = await conn.define_xml(xml)
    out = await dom.xml_desc()
    validate(out)
    assert "<loader readonly='yes'" in out and "type='pflash'>/usr/share/OVMF/" in out
    assert "<nvram template='/usr/share/OVMF/" in out
    assert "<graphics type='spice'" in out and "<audio id='1' type='spice'/>" in out
    if case == "win11":
        assert "secure='yes'" in out and "<smm state='on'/>" in out
    argv = argv_of(caps, xml)  # nothing runs it: its sockets need no real directory
    assert "-spice" in argv and "-tpmdev" in argv
    assert any("pflash1=libvirt-pflash1-format" in a for a in argv)
    await dom.undefine(nvram=True)


@pytest.mark.parametrize("case", CASES)
async def test_virt_install_xml_starts_under_qemu(conn, root, case, machine_limits, display_ports):
    tmp = Path(root).parent / "images"
    tmp.mkdir()
    xml, notes = runnable((DATA / f"{case}.xml").read_text(), tmp, machine_limits)
    dom = await conn.define_xml(xml)
    await dom.start(paused=True)
    try:
        assert (await dom.state())[0] is S.PAUSED
        live = await dom.xml_desc()
        validate(live)
        tpm = await dom.qmp("query-tpm")
        assert [t["model"] for t in tpm] == ["tpm-crb"]
        assert tpm[0]["options"]["type"] == "emulator"
        spice = await dom.qmp("query-spice")
        assert spice["enabled"] and f"port='{spice['port']}'" in live
        assert len([h for h in find_helpers(str(root)) if h[1] == dom.uuid]) == 1  # swtpm
        nvram = root / "lib" / "qemu" / "nvram" / f"{case}_VARS.fd"
        assert nvram.is_file() and (nvram.stat().st_mode & 0o077) == 0
        names = {d["qdev"] for d in await dom.qmp("query-block") if d.get("qdev")}
        assert {"/machine/system.flash0", "/machine/system.flash1"} <= names
    finally:
        await dom.destroy()
    with trio.fail_after(10):
        while [h for h in find_helpers(str(root)) if h[1] == dom.uuid]:
            await trio.sleep(0.05)  # polled: nothing announces a process's end to us
    with pytest.raises(asvirt.OperationInvalidError, match="nvram"):
        await dom.undefine()
    await dom.undefine(nvram=True)
    assert not (root / "lib" / "swtpm" / dom.uuid).exists()
    for note in notes:
        print(f"{case}: adapted to this machine: {note}")
