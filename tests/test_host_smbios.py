"""<os><smbios mode='host'/>: the guest gets the host's BIOS and system SMBIOS strings (all
but the UUID, which stays the domain's), read from the kernel's /sys/class/dmi/id at start; a
host without SMBIOS refuses the start saying so, leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

import asvirt
from asvirt.drivers.qemu.hostsmbios import DMI_ROOT, host_smbios

from .guest import paused_xml
from .helpers import qemu_pid, qemus_naming


def test_the_host_tables_are_read_as_the_kernel_exports_them(tmp_path: Path) -> None:
    dmi = tmp_path / "id"
    dmi.mkdir()
    for name, value in {
        "bios_vendor": "SeaBIOS",
        "bios_version": "1.16.2-debian-1.16.2-1",
        "bios_date": "04/01/2014",
        "sys_vendor": "QEMU",
        "product_name": "Standard PC (Q35 + ICH9, 2009)",
        "product_version": "pc-q35-7.2",
        "product_family": "",  # empty on this firmware: left out, as dmidecode's blanks
    }.items():
        (dmi / name).write_text(value + "\n")
    assert host_smbios(dmi) == {
        "bios": [
            ("vendor", "SeaBIOS"),
            ("version", "1.16.2-debian-1.16.2-1"),
            ("date", "04/01/2014"),
        ],
        "system": [
            ("manufacturer", "QEMU"),
            ("product", "Standard PC (Q35 + ICH9, 2009)"),
            ("version", "pc-q35-7.2"),
        ],
    }
    with pytest.raises(asvirt.ConfigUnsupportedError, match="has none"):
        host_smbios(tmp_path / "absent")


async def test_a_domain_copies_the_host_smbios_or_is_refused_saying_why(
    conn, test_guest, tmp_path, root
):
    xml = paused_xml(test_guest, tmp_path).replace("</os>", "<smbios mode='host'/></os>", 1)
    dom = await conn.define_xml(xml)
    assert "<smbios mode='host'/>" in await dom.xml_desc()
    if not DMI_ROOT.is_dir():
        with pytest.raises(asvirt.ConfigUnsupportedError, match=f"this host has none.*{DMI_ROOT}"):
            await dom.start(paused=True)
        assert not await dom.is_active()
        assert not qemus_naming([dom.uuid])
        assert not (root / "run" / "qemu" / "vm1.status").exists()
        return
    await dom.start(paused=True)
    argv = Path(f"/proc/{qemu_pid(root, 'vm1')}/cmdline").read_bytes().split(b"\0")
    tables = [argv[i + 1].decode() for i, a in enumerate(argv[:-1]) if a == b"-smbios"]
    product = (DMI_ROOT / "product_name").read_text().strip()
    if product:
        assert any(
            t.startswith("type=1,") and f"product={product}" in t.replace(",,", ",") for t in tables
        )
    assert not any("uuid=" in t for t in tables)  # the domain's own UUID, not the host's
