"""Forwarding and NAT rules for a network: one nftables table of its own, applied atomically.

Each network that needs rules gets the table ``inet asvirt_<UUID hex>`` (libvirt's nftables
backend keeps one shared table; one per network makes "remove exactly what starting added"
a single ``delete table``). The whole table is replaced in one ``nft -f`` transaction, so the
kernel never runs half a ruleset; removal is one transaction too.

What the rules do, per mode (libvirt's, ``src/network/network_nftables.c``):

* every mode with rules: guests may talk to each other across the bridge; traffic that
  enters from the bridge with a source outside the network's subnets is rejected (no
  spoofing), and so is anything forwarded *to* the bridge that the mode does not allow;
* ``nat``: guests may go out (``<forward dev>``: only through that interface); only replies
  come back in; their IPv4 source is masqueraded (TCP and UDP to ports 1024-65535, or the
  ``<nat><port>`` range; to ``<nat><address>`` if given) unless the destination is in the
  subnet or multicast/broadcast; IPv6 is routed, not masqueraded, unless ``<nat ipv6='yes'>``;
* ``route``: guests may go out, and anything may come in to the subnet: nothing is rewritten;
* isolated (no ``<forward>``): nothing enters or leaves but guest-to-guest traffic;
* ``open`` and ``bridge``: no rules at all (no table).

The rules only add restrictions of their own: an ``accept`` here does not override another
table's ``drop`` (a host firewall stays in charge of what it decides).
"""

from __future__ import annotations

import trio

from ...errors import OperationFailedError
from .model import IPNetwork, NetworkDef

#: What libvirt masquerades TCP and UDP to when <nat><port> says nothing.
DEFAULT_NAT_PORTS = (1024, 65535)


def table_name(uuid: str) -> str:
    return "asvirt_" + uuid.replace("-", "")


def needs_rules(defn: NetworkDef) -> bool:
    return defn.forward_mode not in ("open", "bridge")


def ruleset(defn: NetworkDef) -> str:
    """The nft script that (re)creates the network's table, replacing any previous one."""
    table = table_name(defn.uuid)
    assert defn.bridge is not None
    br = _quote(defn.bridge)
    mode = defn.forward_mode
    dev = _quote(defn.forward_dev) if defn.forward_dev else None
    out_dev = f" oifname {dev}" if dev else ""
    in_dev = f" iifname {dev}" if dev else ""
    v4 = [ip.network for ip in defn.ipv4()]
    v6 = [ip.network for ip in defn.ipv6()]
    forward = [
        f"iifname {br} oifname {br} accept",
    ]
    for fam, nets in (("ip", v4), ("ip6", v6)):
        for net in nets:
            if mode == "nat":
                forward.append(
                    f"oifname {br}{in_dev} {fam} daddr {net} ct state related,established accept"
                )
                forward.append(f"iifname {br}{out_dev} {fam} saddr {net} accept")
            elif mode == "route":
                forward.append(f"oifname {br}{in_dev} {fam} daddr {net} accept")
                forward.append(f"iifname {br}{out_dev} {fam} saddr {net} accept")
    forward += [
        f"iifname {br} reject",
        f"oifname {br} reject",
    ]
    lines = [
        # Create it if it is missing, so that the delete never fails: one transaction then
        # replaces whatever was there (or nothing) by the table below.
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *(f"    {rule}" for rule in forward),
        "  }",
    ]
    if mode == "nat":
        nat = _nat_rules(defn, v4, v6 if defn.nat_ipv6 else [], out_dev)
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            *(f"    {rule}" for rule in nat),
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nat_rules(
    defn: NetworkDef, v4: list[IPNetwork], v6: list[IPNetwork], out_dev: str
) -> list[str]:
    first, last = defn.nat_ports or DEFAULT_NAT_PORTS
    rules = []
    for fam, nets in (("ip", v4), ("ip6", v6)):
        for net in nets:
            src = f"{fam} saddr {net}"
            if fam == "ip":
                # Multicast and broadcast stay local (libvirt's exceptions).
                rules.append(f"{src} ip daddr 224.0.0.0/24 return")
                rules.append(f"{src} ip daddr 255.255.255.255 return")
            outward = f"{src} {fam} daddr != {net}{out_dev}"
            if defn.nat_addresses is not None and fam == "ip":
                a, b = defn.nat_addresses
                to = f"{a}-{b}" if a != b else f"{a}"
                rules.append(
                    f"{outward} meta l4proto {{ tcp, udp }} snat ip to {to}:{first}-{last}"
                )
                rules.append(f"{outward} snat ip to {to}")
            else:
                rules.append(f"{outward} meta l4proto {{ tcp, udp }} masquerade to :{first}-{last}")
                rules.append(f"{outward} masquerade")
    return rules


def removal(uuid: str) -> str:
    """The nft script that removes the network's table, whether it exists or not."""
    table = table_name(uuid)
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def _quote(name: str) -> str:
    # Interface names are checked (letters, digits, '-', '_', '.', '+'), so quoting suffices.
    return f'"{name}"'


async def nft(script: str, *, binary: str = "nft") -> None:
    """Run ``nft -f -`` with ``script`` as one transaction; OperationFailedError if refused."""
    try:
        proc = await trio.run_process(
            [binary, "-f", "-"],
            stdin=script.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    except OSError as err:
        raise OperationFailedError(f"cannot run '{binary}': {err.strerror or err}") from None
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise OperationFailedError(
            f"nft refused the firewall rules: {' '.join(why[:3]) or f'status {proc.returncode}'}"
        )


async def table_exists(uuid: str, *, binary: str = "nft") -> bool:
    try:
        proc = await trio.run_process(
            [binary, "list", "table", "inet", table_name(uuid)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    except OSError:
        return False
    return proc.returncode == 0


__all__ = [
    "DEFAULT_NAT_PORTS",
    "needs_rules",
    "nft",
    "removal",
    "ruleset",
    "table_exists",
    "table_name",
]
