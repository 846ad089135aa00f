"""Devices added to, removed from and changed in a domain's definitions: the rules every
hypervisor driver shares (libvirt's ``virDomainAttachDeviceFlags`` and friends).

A device is matched as libvirt matches it: a disk by its target (``vdb``), an interface by
its MAC address (or, when the XML names none, the domain's only interface), an input by its
type and bus (and its USB port or alias, when the XML names one). A new device
may not reuse a disk target or a MAC address; disks are kept in libvirt's order (by bus,
then target), interfaces in the order they came.
"""

from __future__ import annotations

from ..conf.addresses import USBAddress
from ..conf.devices import Disk, Graphics, HotplugDevice, Input, Interface
from ..conf.domain import DomainDef, clone_device, order_disks
from ..errors import (
    DeviceMissingError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
)


def describe(dev: HotplugDevice) -> str:
    """How messages name a device: ``disk 'vdb'``, ``interface 52:54:00:...``."""
    if isinstance(dev, Disk):
        return f"disk '{dev.target}'"
    if isinstance(dev, Input):
        return f"input '{dev.alias or dev.type}' ({dev.bus or 'no'} bus)"
    return f"interface {dev.mac}" if dev.mac else f"interface of type '{dev.type}'"


def find_device(defn: DomainDef, dev: HotplugDevice) -> HotplugDevice:
    """The device of ``defn`` that ``dev`` (parsed XML) names; DeviceMissingError if none."""
    if isinstance(dev, Disk):
        for disk in defn.disks:
            if disk.target == dev.target:
                return disk
        raise DeviceMissingError(f"disk {dev.target} not found")
    if isinstance(dev, Input):
        return _find_input(defn, dev)
    if dev.mac is not None:
        for nic in defn.interfaces:
            if nic.mac == dev.mac:
                return nic
        raise DeviceMissingError(f"no interface with MAC address {dev.mac} found")
    candidates = [nic for nic in defn.interfaces if nic.type == dev.type]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DeviceMissingError(f"no interface of type '{dev.type}' found")
    raise OperationFailedError(
        f"the domain has {len(candidates)} interfaces of type '{dev.type}': name one by its "
        "<mac address=...>"
    )


def _find_input(defn: DomainDef, dev: Input) -> Input:
    port = dev.address.port if isinstance(dev.address, USBAddress) else None
    found = [
        inp
        for inp in defn.inputs
        if inp.type == dev.type
        and inp.bus == dev.bus
        and (not dev.user_alias or inp.alias == dev.alias)
        and (port is None or (isinstance(inp.address, USBAddress) and inp.address.port == port))
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DeviceMissingError(f"matching input device not found ({describe(dev)})")
    raise OperationFailedError(
        f"the domain has {len(found)} {dev.type} inputs on the {dev.bus} bus: name one by its "
        "<address type='usb' port=...> or its <alias name='ua-...'>"
    )


def check_new_device(defn: DomainDef, dev: HotplugDevice) -> None:
    """Refuse a device that would clash with one ``defn`` has (same target or MAC)."""
    if isinstance(dev, Disk):
        if any(disk.target == dev.target for disk in defn.disks):
            raise OperationInvalidError(f"target {dev.target} already exists")
    elif isinstance(dev, Interface) and dev.mac is not None:
        if any(nic.mac == dev.mac for nic in defn.interfaces):
            raise OperationInvalidError(f"MAC address {dev.mac} is already in use")
    elif (
        isinstance(dev, Input)
        and dev.user_alias
        and any(inp.alias == dev.alias for inp in defn.inputs)
    ):
        raise OperationInvalidError(f"a device called '{dev.alias}' already exists")


def insert_device(defn: DomainDef, dev: HotplugDevice) -> None:
    """Add ``dev`` to ``defn`` where libvirt puts it."""
    if isinstance(dev, Disk):
        defn.disks = order_disks([*defn.disks, dev])
    elif isinstance(dev, Input):
        defn.inputs.append(dev)
    else:
        defn.interfaces.append(dev)


def remove_device(defn: DomainDef, dev: HotplugDevice) -> None:
    """Take ``dev`` (one of ``defn``'s own device objects) out of ``defn``."""
    items: list[Disk] | list[Interface] | list[Input]
    if isinstance(dev, Disk):
        items = defn.disks
    elif isinstance(dev, Input):
        items = defn.inputs
    else:
        items = defn.interfaces
    for i, item in enumerate(items):
        if item is dev:
            del items[i]
            return


def fresh_copy(dev: HotplugDevice) -> HotplugDevice:
    """A copy of parsed device XML without what only a running domain's XML may say (an
    alias that is not a user's, a disk's node number): the driver assigns those."""
    copy = clone_device(dev)
    if not copy.user_alias:
        copy.alias = None
    if isinstance(copy, Disk):
        copy.node_index = None
    return copy


#: Disk devices whose media change while the drive stays (libvirt's removable disks).
REMOVABLE_MEDIA = ("cdrom", "floppy")


def updated_media(current: Disk, new: Disk) -> Disk:
    """The disk ``current`` would become with ``new``'s media (an update_device of a CD-ROM
    or a floppy): only the source (and its type, format and encryption) may differ; no
    source means ejected."""
    if current.device not in REMOVABLE_MEDIA:
        raise OperationInvalidError(
            f"disk '{current.target}' is a {current.device}: only the media of a cdrom or a "
            "floppy can change"
        )
    if new.bus != current.bus or new.device != current.device:
        raise OperationInvalidError(
            f"cannot change the bus or device type of disk '{current.target}'"
        )
    if new.type == "volume":
        raise OperationInvalidError(
            f"disk '{current.target}': a storage volume cannot be inserted as media; give its path"
        )
    result = clone_device(current)
    assert isinstance(result, Disk)
    result.source = new.source
    result.net = new.net
    result.type = new.type
    result.format = new.format or "raw"
    # An encrypted medium names its passphrase's secret; an empty drive has none.
    result.encryption = new.encryption if new.has_media else None
    return result


def updated_link(current: Interface, new: Interface) -> str | None:
    """The link state ``current`` would have with ``new``'s XML (an update_device of an
    interface: only the link may change; no ``<link>`` means up)."""
    if new.type != current.type or (new.model is not None and new.model != current.model):
        raise OperationInvalidError(
            f"{describe(current)}: only the link state of an interface can be changed"
        )
    if _driver_of(new) != _driver_of(current):
        # libvirt's refusal: QEMU cannot change a NIC's backend or virtio-net settings live.
        raise OperationUnsupportedError("cannot modify virtio network device driver attributes")
    return new.link_state


def _driver_of(nic: Interface) -> tuple[object, ...]:
    return (nic.driver_name, nic.queues, nic.virtio_net_settings())


def find_graphics(defn: DomainDef, new: Graphics) -> Graphics:
    """The display of ``defn`` an update's ``<graphics>`` names: the one of its type (libvirt
    finds it so); DeviceMissingError if there is none."""
    for gfx in defn.graphics:
        if gfx.type == new.type:
            return gfx
    raise DeviceMissingError(f"cannot find existing graphics device to modify of type '{new.type}'")


def check_graphics_update(current: Graphics, new: Graphics) -> None:
    """Refuse an update of a display that changes more than its password, expiry and
    ``connected`` (libvirt's checks and words); what the new XML leaves out stays."""
    kind = current.type
    if kind not in ("vnc", "spice"):
        raise OperationUnsupportedError(f"unable to change config on '{kind}' graphics type")
    autoport_changed = new.autoport is not None and bool(new.autoport) != bool(current.autoport)
    port_changed = not new.autoport and new.port not in (None, -1, current.port)
    if autoport_changed or port_changed or new.tls_port not in (None, -1, current.tls_port):
        raise OperationUnsupportedError(f"cannot change port settings on {kind} graphics")
    if new.listens and [(lst.type, lst.address, lst.socket) for lst in new.listens] != [
        (lst.type, lst.address, lst.socket) for lst in current.listens
    ]:
        raise OperationUnsupportedError(f"cannot change listen address setting on {kind} graphics")
    if new.keymap is not None and new.keymap != current.keymap:
        raise OperationUnsupportedError(f"cannot change keymap setting on {kind} graphics")
    others = (
        "websocket",
        "share_policy",
        "default_mode",
        "options",
        "channels",
        "gl_enable",
        "gl_rendernode",
    )
    for name in others:
        value = getattr(new, name)
        if value not in (None, {}) and value != getattr(current, name):
            raise OperationUnsupportedError(
                f"cannot change {name.replace('_', ' ')} setting on {kind} graphics"
            )


def apply_password(current: Graphics, new: Graphics) -> None:
    """Give ``current`` (a definition's display) ``new``'s password, expiry and
    ``connected``, once :func:`check_graphics_update` allowed it."""
    current.passwd, current.passwd_valid_to = new.passwd, new.passwd_valid_to
    current.connected = new.connected


def apply_update(current: HotplugDevice, new: HotplugDevice) -> None:
    """Make ``current`` (a definition's device) what update_device's ``new`` says."""
    if isinstance(current, Input):
        raise OperationInvalidError(f"{describe(current)}: an input device cannot be updated")
    if isinstance(current, Disk):
        assert isinstance(new, Disk)
        media = updated_media(current, new)
        current.type, current.source, current.format = media.type, media.source, media.format
        current.net, current.encryption = media.net, media.encryption
    else:
        assert isinstance(new, Interface)
        current.link_state = updated_link(current, new)


__all__ = [
    "REMOVABLE_MEDIA",
    "apply_password",
    "apply_update",
    "check_graphics_update",
    "check_new_device",
    "describe",
    "find_device",
    "find_graphics",
    "fresh_copy",
    "insert_device",
    "remove_device",
    "updated_link",
    "updated_media",
]
