"""Devices plugged into and out of a running QEMU, and CD-ROM/floppy media and link changes.

:func:`prepare_with_device` completes a new device as define would (the same post-parse:
model, MAC, drive or PCI address, alias), in the context of the definition it joins.
:class:`HotplugOps`, a part of :class:`~.runner.QemuRunner`, plugs it in with the command
line builder's own ``-blockdev`` nodes and ``-device`` properties
(:func:`~.command.disk_hotplug`, :func:`~.command.interface_hotplug`): ``blockdev-add``
then ``device_add`` for a disk; a tap (or macvtap) made as at start, its
descriptors (one per queue, and vhost-net's: :mod:`.vhostnet`) handed over with ``getfd``,
``netdev_add`` then ``device_add`` (a vhost-user one: ``chardev-add`` of its socket first)
for an interface; a ``direct`` NIC's macvtap, which outlives them, is removed when it goes.

Unplugging is the guest's to finish: ``device_del`` only asks (an ACPI or PCIe hotplug
event the guest must act on). Nothing polls: QEMU's ``DEVICE_DELETED`` event is the
device's end, whenever it comes. The runner then takes the device out of the live XML
(before DEVICE_REMOVED is published, so that whoever reads the XML on that event no longer
sees it) and removes its backend (``blockdev-del``, ``netdev_del``; a throttle group no
other disk is in, ``object-del``), and gives its file back to its owner under DAC
confinement (:meth:`~.security.DacSecurity.retain`). A detach waits for
that up to ``[qemu] unplug_timeout`` seconds; a guest that has not released the device by
then gets a DEVICE_REMOVAL_FAILED event, and the device stays in the live XML until QEMU
reports it gone.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any

import trio

from ...conf.addresses import PCIAddress
from ...conf.devices import TAP_NIC_TYPES, Disk, Graphics, HotplugDevice, Input, Interface
from ...conf.domain import DomainDef
from ...drivers.base import SecretUsageType
from ...errors import (
    AsvirtError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    OperationUnsupportedError,
    QMPError,
)
from ...events.types import EventKind
from ...hypervisor.hotplug import (
    apply_password,
    check_new_device,
    describe,
    fresh_copy,
    insert_device,
)
from .capabilities import QemuCapabilities
from .command import (
    disk_hotplug,
    disk_tls_object,
    interface_hotplug,
    media_nodes,
    netdev_id,
    tap_fds_arg,
    usb_input_hotplug,
)
from .command_extra import vhost_user_chardev_id, vhost_user_hotplug
from .command_tune import throttle_group_id, throttle_object
from .displays import display_password, set_password
from .netdisk import check_network_disk
from .nodenames import fresh_index
from .postparse import prepare_domain
from .secrets import disk_secret_objects, disk_secrets
from .tls import TlsConfig, check_disk_tls_files
from .vhostnet import close_all, open_vhost_net

if TYPE_CHECKING:
    from structlog.stdlib import BoundLogger

    from ...hypervisor.domain_driver import RuntimeCallbacks
    from .monitor import Monitor
    from .runner import RunnerEnv
    from .security import DacSecurity, QemuIdentity

_fd_names = itertools.count(1)


def prepare_with_device(
    defn: DomainDef,
    dev: HotplugDevice,
    caps: QemuCapabilities,
    *,
    live: bool,
    nvram_dir: str | None = None,
) -> tuple[DomainDef, HotplugDevice]:
    """``defn`` with ``dev`` added and completed as define completes devices (a new
    definition), and the completed device in it.

    ``live``: ``defn`` is a running domain's. The devices it has keep their ids (aliases and
    disk node numbers are QEMU's names for them, whatever the definition would give them
    now), the new device gets ids no device had, and it must fit the controllers the domain
    already has: controllers are not plugged in on the device's behalf. ``nvram_dir``: as
    for :func:`~.postparse.prepare_domain`.
    """
    new = fresh_copy(dev)
    check_new_device(defn, new)
    if live:
        check_pluggable(new)
    work = defn.copy()
    insert_device(work, new)
    prepared = prepare_domain(work, caps, nvram_dir=nvram_dir)
    added = _same_device(prepared, new, len(defn.inputs))
    if not live:
        return prepared, added
    before = {(c.type, c.index) for c in defn.controllers}
    missing = [c for c in prepared.controllers if (c.type, c.index) not in before]
    if missing:
        ctl = missing[0]
        raise OperationUnsupportedError(
            f"{describe(added)} needs {ctl.type} controller {ctl.index}, which the running "
            "domain does not have: add the device to its configuration (config=True) and "
            "restart it, or attach it where a controller is"
        )
    if len(prepared.hubs) > len(defn.hubs):
        raise OperationUnsupportedError(
            f"{describe(added)}: no free USB port, and a hub cannot be plugged in on its "
            "behalf: detach a USB device, or add a hub to the configuration and restart"
        )
    # Inputs keep their place (the new one comes last): they keep QEMU's names too.
    for inp, old_inp in zip(prepared.inputs, defn.inputs, strict=False):
        inp.alias = old_inp.alias
    old_disks = {d.target: d for d in defn.disks}
    for disk in prepared.disks:
        old = old_disks.get(disk.target)
        if old is not None:
            disk.alias, disk.node_index = old.alias, old.node_index
    old_nics = {n.mac: n for n in defn.interfaces}
    for nic in prepared.interfaces:
        old_nic = old_nics.get(nic.mac)
        if old_nic is not None:
            nic.alias = old_nic.alias
    if isinstance(added, Disk):
        added.node_index = None  # (its number is the runner's to give: nodenames)
        if added.alias in {d.alias for d in defn.disks}:
            raise OperationInvalidError(f"a device called '{added.alias}' already exists")
    elif isinstance(added, Input):
        taken = {i.alias for i in defn.inputs}
        if added.user_alias and added.alias in taken:
            raise OperationInvalidError(f"a device called '{added.alias}' already exists")
        if not added.user_alias:
            added.alias = next(f"input{i}" for i in itertools.count() if f"input{i}" not in taken)
    elif not added.user_alias:
        taken = {n.alias for n in defn.interfaces}
        added.alias = next(f"net{i}" for i in itertools.count() if f"net{i}" not in taken)
    if added.address is not None and isinstance(added.address, PCIAddress):
        bus = prepared.controller("pci", added.address.bus)
        if bus is not None and bus.model == "pcie-root":
            raise OperationUnsupportedError(
                f"{describe(added)} would go on the PCIe root bus, where devices cannot be "
                "hotplugged: give the domain a free pcie-root-port"
            )
    return prepared, added


#: Disk buses whose controllers QEMU cannot plug devices into (or out of) while it runs.
UNPLUGGABLE_BUSES = ("ide", "sata", "fdc")


def check_pluggable(dev: HotplugDevice) -> None:
    """Refuse, before QEMU is asked, a device QEMU cannot plug in or out of a running guest
    (libvirt refuses these too): an IDE or SATA disk, a floppy drive. Their media (a
    CD-ROM's, a floppy's) can change."""
    if isinstance(dev, Input) and dev.bus != "usb":
        raise OperationUnsupportedError(
            f"{describe(dev)}: only USB input devices can be plugged into or out of a running "
            "domain; change the configuration only"
        )
    if isinstance(dev, Disk) and dev.bus in UNPLUGGABLE_BUSES:
        what = "floppy drives" if dev.bus == "fdc" else f"{dev.bus} disks"
        raise OperationUnsupportedError(
            f"disk '{dev.target}': QEMU cannot plug {what} into or out of a running domain; "
            "use the virtio, scsi or usb bus (a CD-ROM's or a floppy's media can change: "
            "update_device), or change the configuration only"
        )
    rom = dev.rom if isinstance(dev, Interface) else None
    if rom is not None and rom.bar == "off" and rom.enabled is not False:
        # QEMU's rule, checked here: QEMU 7.2 refusing it keeps the device's ACPI index
        # taken until it exits.
        raise OperationUnsupportedError(
            f"{describe(dev)}: a device plugged into a running domain with its ROM hidden "
            "(<rom bar='off'>) can have no ROM: QEMU refuses it (use <rom enabled='no'>)"
        )


def _same_device(defn: DomainDef, dev: HotplugDevice, inputs_before: int) -> HotplugDevice:
    if isinstance(dev, Disk):
        return next(d for d in defn.disks if d.target == dev.target)
    if isinstance(dev, Input):
        return defn.inputs[inputs_before]  # inputs keep their order: the new one is next
    return next(n for n in defn.interfaces if n.mac == dev.mac) if dev.mac else defn.interfaces[-1]


def backend_holder(qdev: str) -> str:
    """The id of the device a block backend is attached to, from ``query-block``'s ``qdev``:
    the id itself, or a QOM path below it (``/machine/peripheral/virtio-disk1/virtio-backend``:
    a virtio-blk-pci's inner device, which has no id of its own)."""
    prefix = "/machine/peripheral/"
    return qdev[len(prefix) :].split("/")[0] if qdev.startswith(prefix) else qdev


class HotplugOps:
    """Device hotplug for a QEMU runner (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        # What it uses of the runner.
        exited: bool
        log: BoundLogger
        _name: str
        _uuid: str
        _live_def: DomainDef
        _live_xml: str | None
        _monitor: Monitor | None
        _env: RunnerEnv
        _callbacks: RuntimeCallbacks
        _nursery: trio.Nursery | None
        _unplugs: dict[str, trio.Event]
        _reported_gone: set[str]

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        async def send_fd(self, fd: int, name: str) -> None: ...

        def mark_dirty(self) -> None: ...

        def _persist_status(self, durable: bool = True) -> None: ...

        def _save_status(self, durable: bool = True) -> None: ...

        def _security(self) -> DacSecurity | None: ...

        def _qemu_identity(self) -> QemuIdentity | None: ...

        async def add_secret(self, secret_id: str, value: bytes) -> None: ...

        async def follow_block_sources(self, *, save: bool = True) -> None: ...

        def _secret_lookup(
            self, uuid: str | None, usage_type: SecretUsageType, usage_id: str | None
        ) -> tuple[str, bytes]: ...

    def _live_changed(self) -> None:
        self._live_xml = None
        self.mark_dirty()

    # -- attach ---------------------------------------------------------------------------------

    async def attach_device(self, dev: HotplugDevice) -> None:
        """Plug ``dev`` (parsed XML, volumes resolved) into the running guest and add it to
        the live definition; on failure, whatever was plugged is taken out again."""
        caps = await self._env.capabilities_for(self._live_def)
        prepared, new = prepare_with_device(self._live_def, dev, caps, live=True)
        if isinstance(new, Disk):
            new.node_index = await fresh_index(self._call, self._live_def)
        # The domain's confinement: a plugged disk is given to whom its cold-plugged disks
        # were (the node's [qemu] user, or its own DAC label's with relabel='yes'), or to
        # nobody.
        security = self._security()
        # A vhost-user NIC's socket is a file QEMU's user must reach, as a disk's image is.
        has_files = isinstance(new, Disk) or (
            isinstance(new, Interface) and new.type == "vhostuser"
        )
        try:
            if security is not None and has_files:
                security.prepare(self._uuid, prepared, prepared.emulator or caps.binary)
                self._persist_status(durable=True)  # names the file before it is given
                security.apply(self._uuid)
            if isinstance(new, Disk):
                await self._plug_disk(prepared, caps, new)
            elif isinstance(new, Input):
                await self.execute("device_add", usb_input_hotplug(prepared, caps, new))
            else:
                await self._plug_interface(prepared, caps, new)
        except BaseException:
            if security is not None and has_files:
                self._retain_files()  # the new device's file goes back to its owner
            raise
        insert_device(self._live_def, new)
        if new.alias:
            self._reported_gone.discard(new.alias)  # a new device of that name: its own events
        self._live_changed()
        if isinstance(new, Disk):
            await self._quietly_follow_block_sources()  # its chain, for the live XML
        self.log.info("device attached", operation="attach-device", device=new.alias)

    async def _plug_disk(self, prepared: DomainDef, caps: QemuCapabilities, disk: Disk) -> None:
        check_network_disk(disk, prepared.name)
        tls = self._disk_tls(disk)
        nodes, props = disk_hotplug(prepared, caps, disk, tls)
        added: list[str] = []
        group = creds = None
        # Its passphrase and credentials through pipes passed over the monitor (add_secret),
        # every one looked up before QEMU is asked anything.
        secrets = disk_secrets(disk, self._secret_lookup, tls, self._live_def.name)
        objects: list[str] = []
        # A group another disk already has exists in QEMU (and keeps its limits).
        if (
            disk.iotune is not None
            and disk.has_media
            and not self._throttle_group_users(throttle_group_id(disk))
        ):
            await self.execute("object-add", throttle_object(disk))
            group = throttle_group_id(disk)
        try:
            # Secrets first: a TLS key's password is read when its credentials are made.
            for sid, value in secrets.items():
                await self.add_secret(sid, value)
                objects.append(sid)
            creds = await self._add_disk_creds(disk, tls)
            for node in nodes:
                await self.execute("blockdev-add", node)
                added.append(str(node["node-name"]))
            await self.execute("device_add", props)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._quietly_del_nodes(reversed(added))
                if group is not None:
                    await self._quietly("object-del", {"id": group})
                if creds is not None:
                    await self._quietly("object-del", {"id": creds})
                for sid in objects:
                    await self._quietly("object-del", {"id": sid})
            raise

    async def _quietly_follow_block_sources(self) -> None:
        """The disks' chains for the live XML after a disk or medium went in (the device is
        plugged whatever QEMU answers: a chain it does not tell is left unknown)."""
        try:
            await self.follow_block_sources(save=False)
        except (QMPError, OperationTimeoutError) as err:
            self.log.warning("cannot read the disks' backing chains", error=str(err))

    def _disk_tls(self, disk: Disk) -> TlsConfig:
        """The node's TLS settings, the files a plugged disk's TLS needs being readable."""
        tls = TlsConfig.from_qemu(self._env.config)
        check_disk_tls_files(disk, tls, self._live_def.name, self._qemu_identity())
        return tls

    async def _add_disk_creds(self, disk: Disk, tls: TlsConfig) -> str | None:
        """Add the TLS credentials object of a disk about to be plugged (its id), if any."""
        creds = disk_tls_object(disk, tls)
        if creds is None:
            return None
        await self.execute("object-add", creds)
        return str(creds["id"])

    async def _del_disk_creds(self, disk: Disk) -> None:
        creds = disk_tls_object(disk, TlsConfig.from_qemu(self._env.config))
        if creds is not None:
            await self._quietly("object-del", {"id": creds["id"]})

    def _throttle_group_users(self, group: str) -> list[Disk]:
        """The live disks whose throttle filter is in QEMU's throttle-group ``group``."""
        return [
            d
            for d in self._live_def.disks
            if d.iotune is not None and d.has_media and throttle_group_id(d) == group
        ]

    async def _del_disk_backend(self, disk: Disk) -> None:
        """Remove an unplugged disk's block nodes, then its throttle group if no other live
        disk is in it (a group lives as long as its last disk: QEMU keeps the object
        otherwise, with the limits the next disk naming the group would silently inherit),
        and give its file back to its owner (as a domain's stop does) unless the domain still
        uses it."""
        try:
            await self._quietly_del_nodes(await self._open_nodes(disk.node_names))
            await self._del_disk_creds(disk)
            for sid in disk_secret_objects(disk, TlsConfig.from_qemu(self._env.config)):
                await self._quietly("object-del", {"id": sid})
            if disk.iotune is not None and disk.has_media:
                group = throttle_group_id(disk)
                if not self._throttle_group_users(group):
                    await self._quietly("object-del", {"id": group})
        finally:
            self._retain_files()

    def _retain_files(self) -> None:
        """Give back the files the domain's confinement holds that the live definition no
        longer names, then write the status record without them (in that order: a record
        naming a file already given back costs a warning to the next supervisor, one missing
        a file still given would leave it QEMU's user's for good)."""
        security = self._security()
        if security is not None and security.retain(self._uuid, self._live_def):
            self._save_status(durable=True)  # never raises: this runs in cleanups

    async def _plug_interface(
        self, prepared: DomainDef, caps: QemuCapabilities, nic: Interface
    ) -> None:
        netdev = netdev_id(nic)
        args: dict[str, Any] = {"id": netdev}
        fds: list[int] = []
        vhost_fds: list[int] = []
        # The new NIC alone: what its plugging makes on the host, and a failure removes.
        alone = prepared.copy()
        alone.interfaces = [n for n in alone.interfaces if n.mac == nic.mac]
        if nic.type == "user":
            args["type"] = "user"
        elif nic.type == "vhostuser":
            await self._plug_vhost_user(prepared, caps, nic)
            return
        elif nic.type not in TAP_NIC_TYPES:
            raise OperationUnsupportedError(
                f"interfaces of type '{nic.type}' are plugged at start only, not while running"
            )
        else:
            plug = self._env.plug_interfaces
            if plug is None:
                raise OperationUnsupportedError(
                    f"interfaces of type '{nic.type}' cannot be plugged on this node"
                )
            # vhost-net first (a refusal makes nothing), then the tap or macvtap, opened
            # once per queue, as at start.
            vhost_fds = open_vhost_net(nic)
            try:
                fds = (await plug(alone))[nic.alias or ""]
            except BaseException:
                close_all(vhost_fds)
                raise
            plugged = alone.interfaces[0]
            nic.target_dev, nic.source_bridge = plugged.target_dev, plugged.source_bridge
        names = [f"asvirt-tap{next(_fd_names)}" for _ in fds]
        vhost_names = [f"asvirt-vhost{next(_fd_names)}" for _ in vhost_fds]
        sent: list[str] = []
        try:
            try:
                if nic.type == "direct":
                    self._record_outliving(nic)
                for fd, name in zip([*fds, *vhost_fds], [*names, *vhost_names], strict=True):
                    # The tap exists while a descriptor is open: ours until QEMU has its own.
                    await self.send_fd(fd, name)
                    sent.append(name)
                if fds:
                    key, value = tap_fds_arg(names)
                    args.update(type="tap", **{key: value})
                    if nic.sndbuf is not None:
                        args["sndbuf"] = nic.sndbuf
                if vhost_names:
                    key, value = tap_fds_arg(vhost_names, "vhostfd")
                    args.update(vhost=True, **{key: value})
                await self.execute("netdev_add", args)
            finally:
                close_all([*fds, *vhost_fds])
        except BaseException:
            with trio.CancelScope(shield=True):
                # netdev_add takes the descriptors it names; a failed one leaves them with
                # the monitor, where a tap's would keep it alive.
                for name in sent:
                    await self._quietly("closefd", {"fdname": name})
                await self._remove_host_side(alone)
                if nic.type == "direct":
                    self._save_status(durable=True)  # no longer naming it
            raise
        try:
            await self.execute("device_add", interface_hotplug(prepared, caps, nic))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._quietly("netdev_del", {"id": netdev})
                await self._remove_host_side(alone)
                if nic.type == "direct":
                    self._save_status(durable=True)
            raise

    async def _plug_vhost_user(
        self, prepared: DomainDef, caps: QemuCapabilities, nic: Interface
    ) -> None:
        """``chardev-add`` (the backend's socket), ``netdev_add``, ``device_add``, as libvirt
        plugs a vhost-user NIC; each step undone if a later one fails. The netdev comes up
        once the vhost-user handshake with the backend is done: with QEMU as the server
        (``mode='server'``), QEMU waits for the backend to connect, as at start."""
        netdev = netdev_id(nic)
        chardev, net = vhost_user_hotplug(nic, netdev, caps)
        await self.execute("chardev-add", chardev)
        try:
            await self.execute("netdev_add", net)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._quietly("chardev-remove", {"id": chardev["id"]})
            raise
        try:
            await self.execute("device_add", interface_hotplug(prepared, caps, nic))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._quietly("netdev_del", {"id": netdev})
                await self._quietly("chardev-remove", {"id": chardev["id"]})
            raise

    def _record_outliving(self, nic: Interface) -> None:
        """Write the status record as if ``nic`` were plugged in already, before QEMU is
        asked: its macvtap outlives every descriptor, so a supervisor that dies before the
        plugging ends must leave a record naming it. The next one finds the NIC missing from
        QEMU (:meth:`_forget_unplugged`) and removes it as any unplugged NIC's. The live
        definition shows it only once it is plugged. SystemCallError if the record cannot
        be written (then nothing goes on)."""
        self._live_def.interfaces.append(nic)
        self._live_xml = None
        try:
            self._persist_status(durable=True)
        finally:
            self._live_def.interfaces.remove(nic)
            self._live_xml = None

    async def _remove_host_side(self, defn: DomainDef) -> None:
        """Remove what ``defn``'s interfaces left on the host that QEMU's descriptors do not
        take with them (a ``direct`` NIC's macvtap), as a stop does."""
        unplug = self._env.unplug_interfaces
        if unplug is not None and any(n.type == "direct" for n in defn.interfaces):
            await trio.to_thread.run_sync(unplug, defn)

    # -- detach ---------------------------------------------------------------------------------

    async def detach_device(self, dev: HotplugDevice) -> bool:
        """Ask the guest to release ``dev`` (one of the live definition's devices); True once
        it is gone, False if the guest has not released it within ``unplug_timeout`` (then
        DEVICE_REMOVAL_FAILED is published and it stays until QEMU reports it gone)."""
        check_pluggable(dev)
        alias = dev.alias
        if not alias:
            raise OperationFailedError(f"{describe(dev)} has no alias: it cannot be unplugged")
        gone = self._unplugs.get(alias)
        if gone is None:
            gone = self._unplugs[alias] = trio.Event()
        await self.execute("device_del", {"id": alias})
        with trio.move_on_after(self._env.config.unplug_timeout):
            await gone.wait()
        if gone.is_set():
            return True
        self.log.warning(
            "the guest has not released the device", operation="detach-device", device=alias
        )
        self._callbacks.publish(EventKind.DEVICE_REMOVAL_FAILED, data={"device": alias})
        return False

    async def _device_deleted(self, event: dict[str, Any]) -> bool:
        """QEMU's DEVICE_DELETED: a device of the live definition is gone. It leaves the live
        XML and its backend is removed (its blockdev nodes, its netdev) before this returns,
        so that whoever is told DEVICE_REMOVED (published by the pump once this returns, as
        libvirt does after its cleanup) can at once plug the same file in again.

        Called by the pump, which waits: events after this one are published after it, in
        QEMU's order. False: the removal was already reported (by :meth:`_forget_unplugged`,
        for a device QEMU had not yet finished with), and must not be again.
        """
        alias = (event.get("data") or {}).get("device")
        if not alias:
            return True
        if alias in self._reported_gone:
            self._reported_gone.discard(alias)
            return False
        live = self._live_def
        disk = next((d for d in live.disks if d.alias == alias), None)
        nic = next((n for n in live.interfaces if n.alias == alias), None)
        inp = next((i for i in live.inputs if i.alias == alias), None)
        if disk is not None:
            live.disks.remove(disk)
        elif nic is not None:
            live.interfaces.remove(nic)
        elif inp is not None:
            live.inputs.remove(inp)  # a USB input has no backend
        else:
            return True
        self._live_changed()
        self.log.info("device removed", operation="detach-device", device=alias)
        try:
            if disk is not None:
                await self._del_disk_backend(disk)
            elif nic is not None:
                await self._quietly("netdev_del", {"id": netdev_id(nic)})
                if nic.type == "vhostuser":
                    await self._quietly("chardev-remove", {"id": vhost_user_chardev_id(nic)})
                    self._retain_files()  # its socket, given to QEMU's user
                gone_def = live.copy()
                gone_def.interfaces = [nic]
                await self._remove_host_side(gone_def)
        finally:
            gone = self._unplugs.pop(alias, None)
            if gone is not None:
                gone.set()
        return True

    async def _open_nodes(self, names: list[str]) -> list[str]:
        """Those of ``names`` QEMU has open (a node it opened itself, below a block copy's
        or as a backing file, went with the last user); all of them if it cannot say."""
        if self._monitor is None or self.exited:
            return names
        try:
            nodes = await self._call("query-named-block-nodes", {"flat": True})
        except (AsvirtError, trio.BrokenResourceError):
            return names
        present = {n.get("node-name") for n in nodes}
        return [name for name in names if name in present]

    async def _quietly_del_nodes(self, names: Any) -> None:
        for name in names:
            await self._quietly("blockdev-del", {"node-name": name})

    async def _quietly(self, command: str, arguments: dict[str, Any]) -> None:
        """Clean up after a device; a failure is logged (QEMU may be gone meanwhile)."""
        if self._monitor is None or self.exited:
            return
        try:
            await self._call(command, arguments)
        except (AsvirtError, trio.BrokenResourceError) as err:
            self.log.warning("cannot remove a device's backend", command=command, error=str(err))

    async def _forget_unplugged(self) -> None:
        """After a re-attach: devices QEMU removed while nobody watched (a guest released
        one after its supervisor had gone) leave the live XML, reported as DEVICE_REMOVED
        once their backends are gone.

        QEMU takes a device out of its tree at once but frees it (its block backend, then its
        DEVICE_DELETED) only after an RCU grace period: a disk whose backend QEMU still holds
        is left alone here, as its nodes could not be deleted yet ("in use"); its
        DEVICE_DELETED is still to come, to this monitor too, and the pump handles it as any.
        """
        try:
            children = await self._call("qom-list", {"path": "/machine/peripheral"})
            blocks = await self._call("query-block")
        except (QMPError, OperationTimeoutError) as err:
            self.log.warning("cannot list QEMU's devices", error=str(err))
            return
        present = {c.get("name") for c in children if str(c.get("type", "")).startswith("child<")}
        present |= {backend_holder(str(b["qdev"])) for b in blocks if b.get("qdev")}
        gone = [
            dev.alias
            for dev in [*self._live_def.disks, *self._live_def.interfaces, *self._usb_inputs()]
            if dev.alias and dev.alias not in present
        ]
        for alias in gone:
            path = f"/machine/peripheral/{alias}"
            await self._device_deleted({"data": {"device": alias}})
            # A NIC's own DEVICE_DELETED may still come (QEMU frees the device object after
            # its backend): it is this removal, already reported.
            self._reported_gone.add(alias)
            self._callbacks.publish(EventKind.DEVICE_REMOVED, data={"device": alias, "path": path})

    def _usb_inputs(self) -> list[Input]:
        return [i for i in self._live_def.inputs if i.bus == "usb"]

    # -- update ---------------------------------------------------------------------------------

    async def change_media(self, disk: Disk, new: Disk) -> None:
        """Replace the media of the live CD-ROM or floppy ``disk`` with ``new``'s (no
        source: eject)."""
        alias = disk.alias
        assert alias
        try:
            await self._change_media(alias, disk, new)
        finally:
            self._retain_files()  # the medium taken out (or one that failed to go in)

    async def _change_media(self, alias: str, disk: Disk, new: Disk) -> None:
        caps = await self._env.capabilities_for(self._live_def)
        fresh = new
        check_network_disk(new, self._live_def.name)
        secrets: dict[str, bytes] = {}
        tls = TlsConfig.from_qemu(self._env.config)
        if new.has_media:
            fresh.node_index = await fresh_index(self._call, self._live_def)
            # An encrypted medium's passphrase (as a plugged disk's, see _plug_disk), looked
            # up before the tray opens: a missing secret changes nothing; nor does a
            # missing certificate.
            tls = self._disk_tls(fresh)
            secrets = disk_secrets(fresh, self._secret_lookup, tls, self._live_def.name)
            security = self._security()
            if security is not None:
                probe = self._live_def.copy()
                probe.disks = [fresh]
                security.prepare(self._uuid, probe, probe.emulator or caps.binary)
                self._persist_status(durable=True)
                security.apply(self._uuid)
        await self.execute("blockdev-open-tray", {"id": alias, "force": True})
        if disk.has_media:
            await self.execute("blockdev-remove-medium", {"id": alias})
            removed = dataclasses.replace(disk)  # as it was: its nodes, group and secrets go
            disk.source = disk.net = disk.encryption = None
            disk.backing_store = None
            self._live_changed()
            await self._del_disk_backend(removed)
        if fresh.has_media:
            added: list[str] = []
            group = None
            creds = None
            objects: list[str] = []
            try:
                # Secrets first: a TLS key's password is read when its credentials are made.
                for sid, value in secrets.items():
                    await self.add_secret(sid, value)
                    objects.append(sid)
                creds = await self._add_disk_creds(fresh, tls)
                # A medium's throttle group lives as a disk's does (see _plug_disk): an
                # empty drive has none in QEMU, so its first medium makes it.
                if fresh.iotune is not None and not self._throttle_group_users(
                    throttle_group_id(fresh)
                ):
                    await self.execute("object-add", throttle_object(fresh))
                    group = throttle_group_id(fresh)
                for node in media_nodes(self._live_def, caps, fresh, tls):
                    await self.execute("blockdev-add", node)
                    added.append(str(node["node-name"]))
                await self.execute("blockdev-insert-medium", {"id": alias, "node-name": added[-1]})
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._quietly_del_nodes(reversed(added))
                    if group is not None:
                        await self._quietly("object-del", {"id": group})
                    if creds is not None:
                        await self._quietly("object-del", {"id": creds})
                    for sid in objects:
                        await self._quietly("object-del", {"id": sid})
                raise
            disk.type, disk.source, disk.format = fresh.type, fresh.source, fresh.format
            disk.net, disk.encryption = fresh.net, fresh.encryption
            disk.node_index = fresh.node_index
            disk.backing_store = None
            self._live_changed()
            await self._quietly_follow_block_sources()
        await self.execute("blockdev-close-tray", {"id": alias})

    async def set_link(self, nic: Interface, state: str | None) -> None:
        """Set a live interface's link down (``down``) or up (what the guest sees)."""
        assert nic.alias
        await self.execute("set_link", {"name": nic.alias, "up": state != "down"})
        nic.link_state = state
        self._live_changed()

    async def change_display_password(self, gfx: Graphics, new: Graphics) -> None:
        """Give the live display ``gfx`` ``new``'s password, expiry and ``connected``
        (update_device; libvirt's qemuDomainChangeGraphicsPasswords), and keep them in the
        live XML (and the status file, so that a supervisor re-attaching shows them)."""
        password = display_password(new, self._env.config)
        if password is None and display_password(gfx, self._env.config) is not None:
            # QEMU cannot stop asking for a password. (libvirt leaves QEMU as it is and drops
            # the password from the live XML, which then no longer says what QEMU asks.)
            raise OperationUnsupportedError(
                f"cannot remove the password of the running {gfx.type} display: it keeps "
                "asking for one until the domain stops (give a new passwd, or an empty one "
                "to let nobody in)"
            )
        if password is not None:
            await set_password(self.execute, new, password)
        apply_password(gfx, new)
        self._live_changed()


__all__ = ["HotplugOps", "prepare_with_device"]
