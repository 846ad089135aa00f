"""Capabilities of the real QEMU on this machine (test helper).

The probe runs QEMU once (``-machine none``, no guest); the result is cached on disk as the
driver caches it. Tests take it from the session fixtures ``caps`` and ``caps_cache``
(``tests/conftest.py``), so the whole run shares one probe.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import trio

from asvirt.drivers.qemu.capabilities import CapabilitiesCache, QemuCapabilities
from asvirt.drivers.qemu.monitor import monitor_host

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO / ".." / "shared" / "conformance"


class Caps(QemuCapabilities):
    """The capabilities, with a short repr: they appear in hypothesis' falsifying examples
    and in tracebacks, where the full dataclass would print every device type."""

    def __repr__(self) -> str:
        return f"<caps of QEMU {self.version_string}>"


def probe_caps(cache_dir: Path) -> Caps:
    """Probe (or read from ``cache_dir``) the capabilities of the QEMU on PATH."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        pytest.skip("QEMU is not installed (no qemu-system-x86_64 on PATH)")

    async def main() -> QemuCapabilities:
        async with monitor_host() as host:
            return await CapabilitiesCache(cache_dir, host, timeout=30).get(binary)

    cache_dir.mkdir(parents=True, exist_ok=True)
    caps = trio.run(main)
    return Caps(**{f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)})


def _qemu_refusal(*args: str) -> str | None:
    """What QEMU says when it refuses to start paused with ``args`` (None if it starts)."""
    import subprocess

    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "QEMU is not installed"
    qmp = b'{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n{"execute":"quit"}\n'
    argv = [binary, *args, "-m", "64", "-display", "none", "-nodefaults", "-S", "-qmp", "stdio"]
    proc = subprocess.run(argv, input=qmp, capture_output=True, timeout=30)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    errors = [ln for ln in lines if "error" in ln]
    return (errors or lines or [f"exit status {proc.returncode}"])[-1]


def _kvm_refusal(*args: str) -> str | None:
    """Why QEMU cannot start under KVM with ``args`` here (KVM's absence included)."""
    from asvirt.drivers.qemu.capabilities import kvm_usable

    ok, why = kvm_usable()
    return why if not ok else _qemu_refusal("-accel", "kvm", *args)


def kvm_host_cpu_failure() -> str | None:
    """Why QEMU cannot run ``-cpu host`` under KVM on this machine, or None if it can.

    Nested, limited KVMs (as on the CI machines) accept ``/dev/kvm`` but abort QEMU when it
    programs the host CPU's MSRs into a vCPU. That is the machine, not the command line:
    tests that launch host-passthrough guests skip with this reason.
    """
    why = _kvm_refusal("-cpu", "host", "-machine", "pc")
    return None if why is None else f"this machine's KVM cannot run QEMU with -cpu host ({why})"


def kvm_smm_failure() -> str | None:
    """Why QEMU cannot give a KVM guest System Management Mode here, or None if it can.

    Secure Boot firmware needs SMM (``-machine q35,smm=on``); some nested KVMs accept
    ``/dev/kvm`` and ``-cpu host`` but not SMM, and QEMU refuses to start then. That is the
    machine: tests of UEFI guests run them under TCG there, saying so.
    """
    why = _kvm_refusal("-machine", "q35,smm=on")
    return None if why is None else f"this machine's KVM cannot give guests SMM ({why})"


def hyperv_vpindex_failure(accel: str) -> str | None:
    """Why QEMU cannot give a guest Hyper-V's VP_INDEX under ``accel`` here, or None.

    QEMU 7.2 asks the kernel for it (under TCG too) and refuses to start when the kernel
    does not allow it, as on this project's nested machines: that is the machine. Tests of
    Windows guests drop vpindex and the enlightenments that need it then, saying so.
    """
    why = _qemu_refusal("-accel", accel, "-cpu", "qemu64,hv-vpindex=on", "-machine", "q35")
    return None if why is None else f"QEMU cannot give guests Hyper-V VP_INDEX here ({why})"
