"""vhost-net: the kernel moving a virtio NIC's packets between its rings and its tap.

As libvirt does (``qemuInterfaceOpenVhostNet``), asvirt opens ``/dev/vhost-net`` itself, once
per queue pair, and hands the descriptors to QEMU (``-netdev tap,...,vhost=on,vhostfd=N``,
``vhostfds=N:M`` for a multiqueue NIC; ``getfd`` names for ``netdev_add``), so that QEMU
needs no access to the device of its own. It is for virtio NICs on a tap or macvtap
(``network``, ``bridge``, ``ethernet``, ``direct`` interfaces):

* ``<driver name='vhost'>`` demands it: a host without the device (or that will not open
  it) refuses the start, before QEMU exists, saying so;
* no ``name``: used where the host has it, silently left out where it does not (QEMU then
  moves the packets itself, as with ``name='qemu'``);
* ``<driver name='qemu'>``: never.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ...conf.devices import TAP_NIC_TYPES, Interface
from ...conf.domain import DomainDef
from ...errors import OperationFailedError
from ...fsutil import open_char_device
from ...log import get_logger

log = get_logger("asvirt.qemu.vhostnet")

#: The kernel's vhost-net device (module ``vhost_net``; misc 10:238, the number an
#: interface's ``<backend vhost=PATH>`` must have).
VHOST_NET = "/dev/vhost-net"
VHOST_NET_RDEV = os.makedev(10, 238)


def wants_vhost(nic: Interface) -> bool:
    """Whether ``nic`` (prepared: its model known) is one vhost-net can serve and its XML
    does not turn it off."""
    return nic.type in TAP_NIC_TYPES and nic.model == "virtio" and nic.driver_name != "qemu"


def open_vhost_net(nic: Interface) -> list[int]:
    """Open vhost-net for ``nic``, once per queue pair (close-on-exec descriptors); [] when
    it is not to be used, or not demanded and this host cannot give it. Raises
    :class:`OperationFailedError` when ``<driver name='vhost'>`` asks for it and it cannot
    be opened; then no descriptor stays open."""
    if not wants_vhost(nic):
        return []
    fds: list[int] = []
    device = nic.backend_vhost or VHOST_NET
    try:
        for _ in range(nic.queues or 1):
            fds.append(open_char_device(device, VHOST_NET_RDEV))
    except OSError as err:
        close_all(fds)
        if nic.driver_name == "vhost" or nic.backend_vhost is not None:
            why = (
                "this host has no such device (load the vhost_net kernel module)"
                if not os.path.exists(device)
                else f"it cannot be opened: {err.strerror}"
            )
            asks = "<driver name='vhost'>" if nic.driver_name == "vhost" else "<backend vhost=>"
            raise OperationFailedError(
                f"interface {nic.mac} asks for vhost-net ({asks}), and {device} "
                f"is unavailable: {why}; use <driver name='qemu'> to leave it out"
            ) from None
        log.info(
            "vhost-net unavailable; QEMU moves the packets itself",
            interface=nic.alias,
            error=err.strerror,
        )
        return []
    return fds


def open_all(defn: DomainDef) -> dict[str, list[int]]:
    """:func:`open_vhost_net` for every interface of ``defn``, by alias (those given none
    left out). On an error none stays open."""
    out: dict[str, list[int]] = {}
    try:
        for nic in defn.interfaces:
            fds = open_vhost_net(nic)
            if fds:
                out[nic.alias or ""] = fds
    except BaseException:
        close_all(fd for fds in out.values() for fd in fds)
        raise
    return out


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        os.close(fd)


__all__ = ["VHOST_NET", "close_all", "open_all", "open_vhost_net", "wants_vhost"]
