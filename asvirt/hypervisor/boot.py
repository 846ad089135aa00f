"""Once per boot: what autostart needs to know (libvirt autostarts once after the host boots).

libvirt keeps a marker in a tmpfs that a reboot empties. A node's run directory may survive
reboots (an embed root on disk), so the marker here holds the kernel's boot id instead.
"""

from __future__ import annotations

from pathlib import Path

from .. import fsutil

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def first_open_since_boot(marker: Path) -> bool:
    """True (once per boot, per marker file) if the host booted since ``marker`` was written;
    writes it. Without a readable boot id, every call is a first one."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = ""
    try:
        if boot and fsutil.read_nofollow(marker).decode().strip() == boot:
            return False
    except (OSError, ValueError):
        pass
    try:
        fsutil.atomic_write(marker, boot.encode())
    except OSError:
        pass  # autostart happens; it may happen again at the next open
    return True


__all__ = ["first_open_since_boot"]
