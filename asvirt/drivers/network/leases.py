"""The DHCP lease database of a network, kept by dnsmasq's lease-change script.

dnsmasq runs with ``--leasefile-ro`` and ``--dhcp-script`` (libvirt's design, with its
``leaseshelper``): it writes no lease file of its own but runs this module as a script on
every lease change (``add``, ``old``, ``del``), and once at start-up (``init``) to learn the
leases it gave before it was restarted. The script keeps the leases in one JSON file,
replaced atomically under a lock, so a reader never sees half a database — unlike dnsmasq's
own lease file, which it truncates and rewrites in place.

This file must run with the standard library only (``python -I -S leases.py DB ACTION ...``):
it starts for every lease change and cannot afford to import asvirt.

The database: ``{"format": 1, "server_duid": str | null, "leases": [LEASE, ...]}`` where a
lease is ``{"ip", "mac", "iaid", "hostname", "client_id", "expiry", "iface"}``; ``iaid`` is
set for DHCPv6 leases only, ``expiry`` is seconds since the epoch (0: never).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from typing import Any

FORMAT = 1


def read_db(path: str) -> dict[str, Any]:
    """The database at ``path`` (an empty one if there is none or it is unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return _empty()
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(16 * 1024 * 1024) or b"{}")
    except (OSError, ValueError):
        return _empty()
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return _empty()
    leases = data.get("leases")
    if not isinstance(leases, list):
        return _empty()
    data["leases"] = [lease for lease in leases if _valid(lease)]
    return data


def current_leases(path: str, *, now: float | None = None) -> list[dict[str, Any]]:
    """The leases in the database at ``path`` that have not expired."""
    now = time.time() if now is None else now
    return [lease for lease in read_db(path)["leases"] if not _expired(lease, now)]


def _empty() -> dict[str, Any]:
    return {"format": FORMAT, "server_duid": None, "leases": []}


def _valid(lease: object) -> bool:
    return (
        isinstance(lease, dict)
        and isinstance(lease.get("ip"), str)
        and isinstance(lease.get("expiry"), int)
        and isinstance(lease.get("mac"), str | type(None))
    )


def _expired(lease: dict[str, Any], now: float) -> bool:
    return bool(lease["expiry"]) and lease["expiry"] <= now


def _write_db(path: str, db: dict[str, Any]) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".leases.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(db, f, indent=1)
            f.flush()
            os.fchmod(f.fileno(), 0o600)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _expiry(env: dict[str, str]) -> int:
    if "DNSMASQ_LEASE_EXPIRES" in env:
        return int(env["DNSMASQ_LEASE_EXPIRES"])
    length = int(env.get("DNSMASQ_LEASE_LENGTH", "0"))
    return int(time.time()) + length if length else 0


def update(path: str, argv: list[str], env: dict[str, str]) -> str:
    """Apply one dnsmasq script call (``argv``: action, MAC or DUID, IP, [hostname]).

    Returns what to print on stdout (the lease lines for ``init``, else nothing).
    """
    action = argv[0] if argv else ""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        db = read_db(path)
        now = time.time()
        db["leases"] = [lease for lease in db["leases"] if not _expired(lease, now)]
        if action == "init":
            return _lease_file(db)
        if action not in ("add", "old", "del") or len(argv) < 3:
            return ""  # tftp, arp... : nothing to do with leases
        ident, ip = argv[1], argv[2]
        hostname = argv[3] if len(argv) > 3 and argv[3] else None
        v6 = "DNSMASQ_IAID" in env
        leases = [lease for lease in db["leases"] if lease["ip"] != ip]
        if action != "del":
            leases.append(
                {
                    "ip": ip,
                    # For DHCPv6, dnsmasq passes the client's DUID instead of its MAC.
                    "mac": (env.get("DNSMASQ_MAC") or None) if v6 else ident.lower(),
                    "iaid": env.get("DNSMASQ_IAID") if v6 else None,
                    "hostname": hostname or env.get("DNSMASQ_SUPPLIED_HOSTNAME") or None,
                    "client_id": ident if v6 else (env.get("DNSMASQ_CLIENT_ID") or None),
                    "expiry": _expiry(env),
                    "iface": env.get("DNSMASQ_INTERFACE"),
                }
            )
        if v6 and env.get("DNSMASQ_SERVER_DUID"):
            db["server_duid"] = env["DNSMASQ_SERVER_DUID"]
        db["leases"] = leases
        _write_db(path, db)
        return ""


def _lease_file(db: dict[str, Any]) -> str:
    """The leases in dnsmasq's lease-file format (what ``init`` must print)."""
    v4 = [lease for lease in db["leases"] if lease.get("iaid") is None]
    v6 = [lease for lease in db["leases"] if lease.get("iaid") is not None]
    lines = [
        f"{lease['expiry']} {lease['mac']} {lease['ip']} {lease.get('hostname') or '*'} "
        f"{lease.get('client_id') or '*'}"
        for lease in v4
        if lease.get("mac")
    ]
    if v6 and db.get("server_duid"):
        lines.append(f"duid {db['server_duid']}")
        lines += [
            f"{lease['expiry']} {lease['iaid']} {lease['ip']} {lease.get('hostname') or '*'} "
            f"{lease.get('client_id') or '*'}"
            for lease in v6
        ]
    return "".join(line + "\n" for line in lines)


def main(argv: list[str]) -> int:
    """``leases.py DB ACTION [ARGS...]``, as dnsmasq's ``--dhcp-script`` (through a wrapper)."""
    if len(argv) < 2:
        print("usage: leases.py DB ACTION [MAC IP [HOSTNAME]]", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(update(argv[0], argv[1:], dict(os.environ)))
    except (OSError, ValueError) as err:
        # dnsmasq logs what the script writes on stderr; a lost lease must not kill it.
        print(f"asvirt lease helper: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
