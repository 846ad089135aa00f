"""The lease script dnsmasq runs (``--dhcp-script``): the real wrapper, shell and helper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from asvirt.drivers.network import dnsmasq, leases


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script), *args], capture_output=True, text=True, check=True, timeout=60
    )


def test_init_tells_dnsmasq_the_recorded_leases_and_nothing_without_a_database(
    tmp_path: Path,
) -> None:
    db = tmp_path / "net.leases"
    script = tmp_path / "net.leasescript"
    script.write_text(dnsmasq.lease_script(sys.executable, dnsmasq.helper_path(), db))

    # A first start: no database, nothing to tell (and the helper is not even run: it
    # would have made its lock file).
    assert run_script(script, "init").stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.leasescript"]

    # A lease given, then dnsmasq restarted: init hands the lease back.
    env = {"DNSMASQ_LEASE_EXPIRES": "4000000000", "DNSMASQ_INTERFACE": "virbr0"}
    leases.update(str(db), ["add", "52:54:00:12:34:56", "192.168.122.50", "vm1"], env)
    out = run_script(script, "init").stdout
    assert out == "4000000000 52:54:00:12:34:56 192.168.122.50 vm1 *\n"
    # And a change through the script reaches the database.
    run_script(script, "del", "52:54:00:12:34:56", "192.168.122.50")
    assert run_script(script, "init").stdout == ""
    assert leases.current_leases(str(db)) == []
