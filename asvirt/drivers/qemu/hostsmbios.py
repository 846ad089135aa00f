"""The host's SMBIOS tables, for ``<os><smbios mode='host'/>``.

libvirt copies the host's BIOS (type 0) and system (type 1) tables into the guest, all but the
system UUID, which stays the domain's. It reads them with dmidecode; the kernel exports the
same strings under ``/sys/class/dmi/id`` (the serial only to root), so no tool is needed.
A host without that directory (some virtual machines have no SMBIOS at all) has nothing to
copy: the start is refused saying so.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigUnsupportedError

DMI_ROOT = Path("/sys/class/dmi/id")

#: SMBIOS table -> (libvirt's entry name, the sysfs file holding it), in libvirt's order.
_ENTRIES = {
    "bios": (
        ("vendor", "bios_vendor"),
        ("version", "bios_version"),
        ("date", "bios_date"),
        ("release", "bios_release"),
    ),
    "system": (
        ("manufacturer", "sys_vendor"),
        ("product", "product_name"),
        ("version", "product_version"),
        ("serial", "product_serial"),
        ("sku", "product_sku"),
        ("family", "product_family"),
    ),
}


def host_smbios(root: Path = DMI_ROOT) -> dict[str, list[tuple[str, str]]]:
    """The host's ``bios`` and ``system`` entries (empty values left out), as ``<sysinfo>``'s
    tables hold them. Raises :class:`ConfigUnsupportedError` when the host has none."""
    if not root.is_dir():
        raise ConfigUnsupportedError(
            f"unsupported configuration: <smbios mode='host'> copies the host's SMBIOS tables, "
            f"and this host has none ({root} is absent); use mode='sysinfo' with a <sysinfo>"
        )
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, entries in _ENTRIES.items():
        found = [(name, value) for name, file in entries if (value := _read(root / file))]
        if found:
            tables[table] = found
    return tables


def _read(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:  # absent on this firmware, or root's only (the serial)
        return ""
