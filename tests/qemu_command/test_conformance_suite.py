"""libvirt's own XML -> QEMU test cases, run through the shared conformance runner.

The runner feeds each case to asvirt's converter, compares the coarse facts with libvirt's
expected command line, and starts every resulting QEMU paused to check QEMU accepts it.
Skipped (with the reason) when ``../shared/conformance`` is not next to the repository.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import XMLError
from tests.caps import CONFORMANCE, Caps, kvm_host_cpu_failure
from tests.helpers import in_own_network

TOOL = Path(__file__).resolve().parent / "xml2argv_tool.py"
RUNNER = CONFORMANCE / "run-xml2argv.py"

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        not RUNNER.exists(),
        reason=f"the conformance data is not available ({CONFORMANCE.resolve()} is missing)",
    ),
]


def _tool(cache: Path, *extra: str) -> str:
    return shlex.join([sys.executable, str(TOOL), "--caps-cache", str(cache), *extra]) + " {xml}"


def _host_cpu_cases() -> list[str]:
    """Cases that run a KVM guest with the host's CPU (``<cpu mode='host-passthrough'>``)."""
    names = []
    for case in sorted((CONFORMANCE / "libvirt-xml").glob("*.xml")):
        text = case.read_text()
        if "type='kvm'" in text and "mode='host-passthrough'" in text:
            names.append(case.stem)
    return names


@pytest.fixture(scope="module")
def host_cpu_failure() -> str | None:
    return kvm_host_cpu_failure()


@pytest.mark.parametrize("case", _host_cpu_cases() if RUNNER.exists() else [])
def test_host_cpu_cases(
    case: str, host_cpu_failure: str | None, caps_cache: Path, tmp_path: Path
) -> None:
    if host_cpu_failure is not None:
        pytest.skip(host_cpu_failure)
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(RUNNER), "--cmd", _tool(caps_cache), "--json", str(report)]
    subprocess.run(
        in_own_network([*cmd, "--only", case]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    [result] = json.loads(report.read_text())
    assert result["status"] == "pass", result


def test_conformance_cases_pass(caps_cache: Path, tmp_path: Path) -> None:
    # Host-CPU cases run in test_host_cpu_cases, which knows whether this machine can.
    host_cpu = set(_host_cpu_cases())
    cases = sorted(
        case.stem
        for case in (CONFORMANCE / "libvirt-xml").glob("*.xml")
        if case.stem not in host_cpu
    )
    only = [arg for name in cases for arg in ("--only", name)]
    report = tmp_path / "report.json"
    proc = subprocess.run(
        in_own_network(
            [sys.executable, str(RUNNER), "--cmd", _tool(caps_cache), "--json", str(report), *only]
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    m = re.match(r"conformance: (\d+) passed, (\d+) failed, (\d+) unsupported of (\d+)", summary)
    assert m, proc.stdout[-2000:] + proc.stderr[-2000:]
    passed, failed, unsupported, total = map(int, m.groups())
    results = json.loads(report.read_text())
    failures = [
        f"{r['name']}: {r['status']}: {r['detail']}"
        for r in results
        if r["status"] not in ("pass", "unsupported", "skipped")
    ]
    assert failed == 0, "\n".join(failures)
    assert passed >= 111, summary  # with the host-CPU case (run apart): 112 of 115
    assert passed + unsupported == total
    for r in results:
        if r["status"] == "unsupported":
            # A refusal is one line a user can act on, never a traceback.
            assert r["detail"].startswith("error: "), r
            assert "Traceback" not in r["detail"]


def test_dumpxml_of_every_case_validates(caps: Caps, tmp_path: Path) -> None:
    # The XML dumpxml shows, inactive and live, checked by the runner's own validator.
    files = []
    for case in sorted((CONFORMANCE / "libvirt-xml").glob("*.xml")):
        try:
            prepared = prepare_domain(parse_domain_xml(case.read_bytes()), caps)
        except XMLError:
            continue
        for live in (False, True):
            out = tmp_path / f"{case.stem}{'-live' if live else ''}.xml"
            out.write_text(prepared.to_xml(live=live, domain_id=1 if live else None))
            files.append(str(out))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--validate", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    bad = [ln for ln in proc.stdout.splitlines() if ln.startswith(("INVALID", "    "))]
    assert summary == f"schema: {len(files)} passed, 0 failed", "\n".join(bad[:20])
    assert len(files) >= 220
