"""Taps for domain interfaces, created as libvirt does: open ``/dev/net/tun``, pass the fd.

A tap made with ``TUNSETIFF`` and not made persistent exists exactly as long as a descriptor
on it is open. asvirt opens it, plugs it into the bridge, hands the descriptor to QEMU
(``-netdev tap,fd=N``; a multiqueue tap has one per queue, ``fds=N:M:...``) and closes
its own copy: from then on the tap lives and dies with QEMU. A supervisor killed at any
point leaves no tap behind (its own descriptors close with it), and a QEMU that exits takes
its tap with it — no cleanup can be forgotten.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct

from ...fsutil import open_char_device

#: The kernel's tun device (misc 10:200), and the device number an interface's
#: ``<backend tap=PATH>`` must have.
TUN_DEVICE = "/dev/net/tun"
TUN_RDEV = os.makedev(10, 200)
#: The kernel picks the first free number for '%d' (libvirt names its taps vnetN too).
DEFAULT_TEMPLATE = "vnet%d"
#: Names libvirt reserves for taps it makes up; a <target dev> that starts so is generated
#: anew at each start (and not kept by define), as in libvirt.
RESERVED_PREFIXES = ("vnet", "vif", "macvtap", "macvlan")

_TUNSETIFF = 0x400454CA
_TUNGETIFF = 0x800454D2
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_MULTI_QUEUE = 0x0100
_IFF_VNET_HDR = 0x4000


def open_tap(
    name: str = DEFAULT_TEMPLATE, queues: int = 1, device: str = TUN_DEVICE
) -> tuple[list[int], str]:
    """Create a tap (``name`` may hold one ``%d``); returns its descriptors and its name.
    ``device``: where the kernel's tun device is (``<backend tap=>``; it must be that
    device, :data:`TUN_RDEV`).

    ``queues`` > 1: a multiqueue tap (``IFF_MULTI_QUEUE``), opened once per queue, as QEMU
    takes one descriptor per queue pair (``-netdev tap,fds=A:B:...``). The descriptors are
    close-on-exec: only processes they are explicitly passed to get them. Raises OSError
    (EBUSY when a tap of that name is held open elsewhere; EINVAL when an existing tap was
    made without multiqueue and more than one queue is asked of it); on failure no
    descriptor stays open.
    """
    flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR | (_IFF_MULTI_QUEUE if queues > 1 else 0)
    fds: list[int] = []
    actual = name
    try:
        for _ in range(queues):
            fd = open_char_device(device, TUN_RDEV)
            fds.append(fd)
            # The first open names the tap (a template becomes vnetN); the others attach
            # queues to that same tap.
            result = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", actual.encode(), flags))
            actual = result[:16].split(b"\0", 1)[0].decode()
    except BaseException as err:
        for fd in fds:
            os.close(fd)
        if isinstance(err, OSError) and err.errno == errno.EBUSY:
            raise OSError(errno.EBUSY, f"the tap '{name}' is in use by another process") from None
        raise
    return fds, actual


_SIOCETHTOOL = 0x8946
_ETHTOOL_GCOALESCE = 0x0E
_ETHTOOL_SCOALESCE = 0x0F
#: struct ethtool_coalesce: the command and 22 u32 settings (rx_max_coalesced_frames 2nd).
_COALESCE = struct.Struct("23I")


def _ethtool_coalesce(name: str, frames: int | None) -> int:
    """Read (``frames`` None) or set the interface ``name``'s rx_max_coalesced_frames, with
    ethtool's ioctl; returns the value read, or set."""
    buf = array.array("B", _COALESCE.pack(_ETHTOOL_GCOALESCE, *[0] * 22))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for cmd in (_ETHTOOL_GCOALESCE, _ETHTOOL_SCOALESCE):
            if cmd == _ETHTOOL_SCOALESCE:
                if frames is None:
                    break
                fields = list(_COALESCE.unpack(buf.tobytes()))
                fields[0], fields[2] = cmd, frames
                buf[:] = array.array("B", _COALESCE.pack(*fields))
            ifr = struct.pack("16sP", name.encode(), buf.buffer_info()[0]).ljust(40, b"\0")
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifr)
    return int(_COALESCE.unpack(buf.tobytes())[2])


def set_rx_coalesce_frames(name: str, frames: int) -> None:
    """``<coalesce><rx><frames max=N>``: how many received frames the tap ``name`` lets the
    kernel batch (libvirt's ``ethtool -C rx-frames``; the tun driver holds it to 64)."""
    _ethtool_coalesce(name, frames)


def rx_coalesce_frames(name: str) -> int:
    """The rx_max_coalesced_frames the kernel reports for the interface ``name``."""
    return _ethtool_coalesce(name, None)


def open_macvtap(index: int, queues: int = 1) -> list[int]:
    """Open the character device of the macvtap with interface index ``index`` (close-on-
    exec) once per queue (each open is a queue of a macvtap), with virtio-net headers on as
    QEMU expects of a tap descriptor (libvirt's way). On failure none stays open."""
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = os.open(f"/dev/tap{index}", os.O_RDWR | os.O_CLOEXEC)
            fds.append(fd)
            ifr = fcntl.ioctl(fd, _TUNGETIFF, struct.pack("16sH", b"", 0))
            flags = struct.unpack("16sH", ifr[:18])[1]
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", b"", flags | _IFF_VNET_HDR))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def tap_mac(guest_mac: str) -> str:
    """The host side's MAC: the guest's with the first byte 0xfe, as libvirt does, so that
    the bridge (which takes the lowest MAC of its ports) never takes a guest's address."""
    return "fe" + guest_mac[2:]


__all__ = ["DEFAULT_TEMPLATE", "RESERVED_PREFIXES", "open_macvtap", "open_tap", "tap_mac"]
