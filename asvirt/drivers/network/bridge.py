"""Bridges and their addresses, over netlink (pyroute2); blocking, run them in a thread.

Every link asvirt creates carries an *alias* (``IFLA_IFALIAS``, ``ip link`` shows it) that
names the root and the network it belongs to, so that whoever cleans up after a killed
supervisor removes only links that are ours, never a same-named bridge somebody else made.
The kernel takes no alias in the request that creates a link, only in a second one: a
supervisor killed between the two leaves a bridge with no alias. Such a bridge is still
recognised as ours by what the creating request did set, its MAC address (the network's,
recorded before the bridge was made): see :func:`delete_link`.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...errors import SystemCallError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

#: ``IFA_F_NODAD``: an IPv6 address usable at once (no duplicate detection on a new bridge).
_IFA_F_NODAD = 0x02


def host_error(err: Exception, doing: str) -> SystemCallError:
    """asvirt's error for a refused netlink request or system call: ``cannot DOING: REASON``.

    An OSError's reason is its own words (asvirt's for a missing or taken name); pyroute2's
    NetlinkError carries the kernel's errno in ``.code``."""
    if isinstance(err, OSError):
        code: int | None = err.errno
        reason = err.strerror or str(err)
    else:
        found = getattr(err, "code", None)
        code = found if isinstance(found, int) else None
        reason = os.strerror(code) if code is not None else str(err)
    return SystemCallError(f"cannot {doing}: {reason}", errno=code)


@contextlib.contextmanager
def netlink() -> Iterator[IPRoute]:
    """A netlink socket of the current network namespace."""
    # Imported here: pyroute2 costs ~150 ms to import, which only network work should pay.
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        yield ipr


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_alias(ipr: IPRoute, index: int) -> str | None:
    links = ipr.get_links(index)
    if not links:
        return None
    alias: str | None = links[0].get_attr("IFLA_IFALIAS")
    return alias


def link_exists(name: str) -> bool:
    with netlink() as ipr:
        return link_index(ipr, name) is not None


def owned_by(name: str, owner: str) -> bool:
    """True if the link ``name`` exists and carries the alias ``owner``."""
    with netlink() as ipr:
        index = link_index(ipr, name)
        return index is not None and link_alias(ipr, index) == owner


def create_bridge(
    name: str,
    *,
    owner: str,
    mac: str | None,
    mtu: int | None,
    stp: bool,
    delay: int,
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
) -> None:
    """Create the bridge ``name``, give it its addresses and bring it up.

    Raises OSError(EEXIST) if a link of that name exists (it is not touched). On any other
    failure the half-made bridge is deleted before the error propagates.
    """
    with netlink() as ipr:
        if link_index(ipr, name) is not None:
            raise OSError(errno.EEXIST, f"a network interface named '{name}' already exists")
        attrs: dict[str, Any] = {
            "ifname": name,
            "kind": "bridge",
            "br_stp_state": 1 if stp else 0,
            # The kernel counts forward delay in hundredths of a second.
            "br_forward_delay": delay * 100,
        }
        if mac is not None:
            attrs["address"] = mac
        ipr.link("add", **attrs)
        try:
            index = link_index(ipr, name)
            assert index is not None
            ipr.link("set", index=index, ifalias=owner)
            if mtu is not None:
                # Set on the bridge made, not in the message that makes it: only then does
                # the kernel keep it (as libvirt's bridge keeps it). A bridge created with
                # it follows its ports instead: down to the smallest tap's MTU while one is
                # plugged, and to 1500 once the last guest has gone.
                ipr.link("set", index=index, mtu=mtu)
            # Before it is up, so that it never has a link-local address nor solicits routers.
            set_ipv6_sysctls(name, enabled=any(a.version == 6 for a in addresses))
            for addr in addresses:
                extra: dict[str, Any] = {}
                if addr.version == 4:
                    extra["broadcast"] = str(addr.network.broadcast_address)
                else:
                    extra["flags"] = _IFA_F_NODAD
                ipr.addr(
                    "add",
                    index=index,
                    address=str(addr.ip),
                    prefixlen=addr.network.prefixlen,
                    **extra,
                )
            ipr.link("set", index=index, state="up")
        except BaseException:
            with contextlib.suppress(Exception):
                ipr.link("del", ifname=name)
            raise


def set_ipv6_sysctls(name: str, *, enabled: bool) -> None:
    """IPv6 on the bridge ``name`` as libvirt sets it: on only if the network has an IPv6
    address (else off: no link-local address, no router solicitations; and on where the
    host defaults to off), and in either case no autoconfiguration, nor routes taken from
    the adverts of guests. A kernel without IPv6 has none of these knobs: nothing to turn
    off there (and a network with IPv6 fails later, adding its address)."""
    if not os.path.isdir(f"/proc/sys/net/ipv6/conf/{name}"):
        return
    for key, value in (
        ("disable_ipv6", "0" if enabled else "1"),
        ("accept_ra", "0"),
        ("autoconf", "0"),
    ):
        set_sysctl(f"net/ipv6/conf/{name}/{key}", value)


def delete_link(name: str, *, owner: str | None = None, mac: str | None = None) -> bool:
    """Delete the link ``name``; True if deleted.

    With ``owner``, only a link that is ours: one that carries the alias ``owner``, or —
    given the ``mac`` it was created with — a bridge with no alias yet and that MAC (its
    creator killed before it could set the alias). A same-named link of anybody else's
    (another alias, or none and another MAC) is left alone.
    """
    with netlink() as ipr:
        # One request answers all: its index, its alias, its kind and address.
        try:
            links = ipr.link("get", ifname=name)
        except Exception as err:
            if getattr(err, "code", None) == errno.ENODEV:
                return False
            raise
        if not links:
            return False
        index = links[0]["index"]
        if owner is not None and not _ours(links[0], owner, mac):
            return False
        try:
            ipr.link("del", index=index)
        except Exception as err:
            if getattr(err, "code", None) == errno.ENODEV:
                return False
            raise
        return True


def _ours(link: Any, owner: str, mac: str | None) -> bool:
    alias = link.get_attr("IFLA_IFALIAS")
    if alias == owner:
        return True
    if alias or mac is None:
        return False
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    address = link.get_attr("IFLA_ADDRESS") or ""
    return kind == "bridge" and address.lower() == mac.lower()


def bridge_of(name: str) -> str | None:
    """The bridge the link ``name`` is a port of, if any."""
    with netlink() as ipr:
        index = link_index(ipr, name)
        if index is None:
            return None
        master = ipr.get_links(index)[0].get_attr("IFLA_MASTER")
        if not master:
            return None
        links = ipr.get_links(master)
        return links[0].get_attr("IFLA_IFNAME") if links else None


def is_bridge(name: str) -> bool:
    with netlink() as ipr:
        index = link_index(ipr, name)
        if index is None:
            return False
        info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        return info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge"


def link_mtu(name: str) -> int | None:
    with netlink() as ipr:
        index = link_index(ipr, name)
        if index is None:
            return None
        mtu: int | None = ipr.get_links(index)[0].get_attr("IFLA_MTU")
        return mtu


def plug(tap: str, bridge: str | None, *, mac: str, mtu: int | None, up: bool = True) -> None:
    """Make the tap ``tap`` a port of ``bridge``, with ``mac`` and the bridge's MTU; with no
    bridge (an ``ethernet`` interface), only give it ``mac`` (and ``mtu``, if one)."""
    with netlink() as ipr:
        tap_index = link_index(ipr, tap)
        if tap_index is None:
            raise OSError(errno.ENODEV, f"no tap named '{tap}'")
        attrs: dict[str, Any] = {"address": mac}
        if bridge is not None:
            bridge_index = link_index(ipr, bridge)
            if bridge_index is None:
                raise OSError(errno.ENODEV, f"no bridge named '{bridge}'")
            attrs["master"] = bridge_index
            if mtu is None:
                mtu = ipr.get_links(bridge_index)[0].get_attr("IFLA_MTU")
        if mtu is not None:
            attrs["mtu"] = mtu
        ipr.link("set", index=tap_index, **attrs)
        if up:
            ipr.link("set", index=tap_index, state="up")


#: Names asvirt gives macvtaps the XML leaves unnamed (libvirt's: macvtapN).
MACVTAP_TEMPLATE = "macvtap%d"


def create_macvtap(name: str | None, parent: str, *, mode: str, mac: str) -> tuple[str, int]:
    """Make a macvtap on ``parent`` (``name``, else the first free ``macvtapN``) with the
    guest's ``mac``, up; returns its name and interface index."""
    with netlink() as ipr:
        parent_index = link_index(ipr, parent)
        if parent_index is None:
            raise OSError(errno.ENODEV, f"no host interface named '{parent}'")
        candidates = [name] if name else [MACVTAP_TEMPLATE % n for n in range(4096)]
        for candidate in candidates:
            if link_index(ipr, candidate) is not None:
                if name:
                    raise OSError(errno.EEXIST, f"an interface named '{name}' exists")
                continue
            ipr.link(
                "add",
                ifname=candidate,
                kind="macvtap",
                link=parent_index,
                macvtap_mode=mode,
                address=mac,
            )
            index = link_index(ipr, candidate)
            assert index is not None
            ipr.link("set", index=index, state="up")
            return candidate, index
    raise OSError(errno.ENOSPC, "no free macvtap name")


def delete_macvtap(name: str) -> bool:
    """Delete the macvtap ``name`` (only a macvtap); True if there was one."""
    with netlink() as ipr:
        index = link_index(ipr, name)
        if index is None:
            return False
        info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "macvtap":
            return False
        ipr.link("del", index=index)
        return True


def set_sysctl(key: str, value: str) -> None:
    """Write ``value`` to ``/proc/sys/KEY`` (of this network namespace)."""
    fd = os.open(f"/proc/sys/{key}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def get_sysctl(key: str) -> str | None:
    try:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()
    except OSError:
        return None


__all__ = [
    "MACVTAP_TEMPLATE",
    "bridge_of",
    "create_bridge",
    "create_macvtap",
    "delete_link",
    "delete_macvtap",
    "get_sysctl",
    "host_error",
    "is_bridge",
    "link_exists",
    "link_mtu",
    "netlink",
    "owned_by",
    "plug",
    "set_ipv6_sysctls",
    "set_sysctl",
]
