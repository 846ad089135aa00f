"""A running QEMU's memory balloon and vCPU hotplug: the part of the runner behind
``set_memory()`` and ``set_vcpus()``.

Memory goes through the balloon (QMP ``balloon``): QEMU asks the guest's driver, which gives
memory back or takes it when it gets to it; every change it makes QEMU reports with a
``BALLOON_CHANGE`` event, which becomes asvirt's BALLOON_CHANGE event and the live
definition's ``<currentMemory>`` (as libvirt's ``qemuProcessHandleBalloonChange``). The
call returns once the balloon has been asked: nothing polls the guest.

vCPUs are QEMU's hot-pluggable CPU objects. A domain whose ``<vcpu current='N'>`` is below
its maximum starts with ``-smp N,maxcpus=MAX``: ``query-hotpluggable-cpus`` then lists one
slot per possible vCPU (socket/core/thread ids), the N booted ones with a QOM path. Plugging
is ``device_add`` of a slot's CPU type with its ids, lowest slot first, named ``vcpuI`` (I:
the vCPU's index, as libvirt names them); unplugging is ``device_del`` of plugged ones,
highest first, then waiting for the guest to release them (ACPI eject), within ``[qemu]
unplug_timeout`` seconds: the events that say so (see :func:`vcpu_unplug_event`) make it ask
QEMU which remain; nothing polls. The vCPUs the guest booted
with have no id and cannot be unplugged (libvirt's ``hotpluggable='no'``). Whatever
happened, the live definition's count is then read back from QEMU, and a guest that
releases a vCPU after the deadline is still counted when its DEVICE_DELETED comes.

What QEMU lists also becomes the live definition's ``<vcpus>`` (see
:mod:`asvirt.conf.vcpus`) once a vCPU is plugged: which vCPUs are devices, in plug order. A
QEMU started from such a definition boots the others and plugs these before its guest runs
or a saved state loads (:meth:`ResourceOps.plug_defined_vcpus`), so the state finds the
devices it was saved with.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import trio

from ...conf.vcpus import plug_order, states_from_qemu
from ...errors import ConfigUnsupportedError, OperationFailedError, OperationTimeoutError, QMPError
from .savevm import RESYNC_EVENT

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from structlog.stdlib import BoundLogger

    from ...conf.domain import DomainDef
    from .runner import RunnerEnv

#: The QOM container of devices added with an id: only those can be unplugged.
PERIPHERAL = "/machine/peripheral/"
#: The prefix of the ids asvirt gives hot-plugged vCPUs (libvirt's aliases: ``vcpu1``).
VCPU_ALIAS_PREFIX = "vcpu"
#: The topology ids of a slot, most significant first: their order is the vCPUs' order.
_TOPOLOGY = ("node-id", "drawer-id", "book-id", "socket-id", "die-id", "cluster-id", "core-id")


#: ACPI ``_OST`` for an eject request (source 3): done, or still in progress; any other
#: status is the guest refusing (busy, not supported...).
_OST_EJECT = 3
_OST_DONE = 0
_OST_IN_PROGRESS = 0x84


def is_vcpu_alias(device: object) -> bool:
    """Whether a device id names a vCPU asvirt (or libvirt) plugged: ``vcpuN``."""
    return (
        isinstance(device, str)
        and device.startswith(VCPU_ALIAS_PREFIX)
        and device[len(VCPU_ALIAS_PREFIX) :].isdigit()
    )


def vcpu_unplug_event(event: dict[str, Any]) -> bool:
    """Whether a QMP event may mean that the guest released a hot-plugged vCPU.

    QEMU 7.2 does not report a CPU's own DEVICE_DELETED, only its APIC's (a child, no id:
    ``/machine/peripheral/vcpu1/lapic``), and the guest's ACPI ``_OST`` saying the eject is
    done (the slot, no device). Either one makes the runner ask QEMU which vCPUs remain.
    """
    data = event.get("data") or {}
    if event.get("event") == "DEVICE_DELETED":
        path = data.get("path") or ""
        head = path[len(PERIPHERAL) :].split("/")[0] if path.startswith(PERIPHERAL) else ""
        return is_vcpu_alias(data.get("device")) or is_vcpu_alias(head)
    if event.get("event") == "ACPI_DEVICE_OST":
        info = data.get("info") or {}
        return info.get("slot-type") == "CPU" and info.get("source") == _OST_EJECT
    return False


def vcpu_eject_refused(event: dict[str, Any]) -> str | None:
    """The slot of a vCPU whose eject the guest refused (ACPI ``_OST``), else None."""
    if event.get("event") != "ACPI_DEVICE_OST":
        return None
    info = (event.get("data") or {}).get("info") or {}
    if info.get("slot-type") != "CPU" or info.get("source") != _OST_EJECT:
        return None
    if info.get("status") in (_OST_DONE, _OST_IN_PROGRESS):
        return None
    return str(info.get("device") or info.get("slot"))


def unplug_refused(domain: str, alias: str, err: QMPError) -> OperationFailedError:
    """The caller's error for a vCPU unplug QEMU refused. QEMU asks the guest's ACPI to
    eject a CPU; a guest that has not booted an OS (paused at start: QEMU 7.2 says "device
    unplug request for not supported device type") or whose OS does not handle it cannot
    be asked."""
    return OperationFailedError(
        f"cannot unplug vCPU {alias} of domain '{domain}': the guest must be running an "
        f"operating system that handles ACPI CPU hot-unplug ({err})"
    )


@dataclasses.dataclass(frozen=True)
class CpuSlot:
    """One entry of ``query-hotpluggable-cpus``: where a CPU object can be (or is) plugged."""

    #: The vCPU index of its first vCPU (its place in topology order).
    index: int
    type: str
    props: dict[str, Any]
    #: vCPUs this object brings (a core or socket may carry several on some machines).
    vcpus: int
    #: Its QOM path when plugged, else None.
    qom_path: str | None

    @property
    def removable(self) -> bool:
        """Plugged as a device with an id (not one the guest booted with)."""
        return self.qom_path is not None and self.qom_path.startswith(PERIPHERAL)

    @property
    def alias(self) -> str:
        """The id it is (or would be) plugged with."""
        if self.removable:
            assert self.qom_path is not None
            return self.qom_path[len(PERIPHERAL) :]
        return f"{VCPU_ALIAS_PREFIX}{self.index}"


def cpu_slots(reply: list[dict[str, Any]]) -> list[CpuSlot]:
    """The slots of a ``query-hotpluggable-cpus`` reply, in vCPU order (QEMU lists them
    backwards)."""

    def key(entry: dict[str, Any]) -> tuple[int, ...]:
        props = entry.get("props") or {}
        return tuple(int(props.get(k, 0)) for k in (*_TOPOLOGY, "thread-id"))

    slots = []
    index = 0
    for entry in sorted(reply, key=key):
        count = int(entry.get("vcpus-count", 1))
        slots.append(
            CpuSlot(
                index=index,
                type=str(entry.get("type", "")),
                props=dict(entry.get("props") or {}),
                vcpus=count,
                qom_path=entry.get("qom-path"),
            )
        )
        index += count
    return slots


def plugged_vcpus(slots: list[CpuSlot]) -> int:
    return sum(s.vcpus for s in slots if s.qom_path is not None)


@dataclasses.dataclass(frozen=True)
class VcpuPlan:
    """What to plug or unplug to reach a vCPU count (one of the two is empty)."""

    plug: list[CpuSlot]
    unplug: list[CpuSlot]


def plan_vcpus(slots: list[CpuSlot], count: int) -> VcpuPlan:
    """The slots to plug (lowest first) or unplug (highest first) to have ``count`` vCPUs;
    ConfigUnsupportedError if no choice makes it, before anything is done (as libvirt's
    ``qemuDomainSelectHotplugVcpuEntities``)."""
    current = plugged_vcpus(slots)
    plug: list[CpuSlot] = []
    unplug: list[CpuSlot] = []
    if count > current:
        for slot in slots:
            if current >= count:
                break
            if slot.qom_path is None:
                plug.append(slot)
                current += slot.vcpus
    elif count < current:
        for slot in reversed(slots):
            if current <= count:
                break
            if slot.removable:
                unplug.append(slot)
                current -= slot.vcpus
    if current != count:
        raise ConfigUnsupportedError(
            "failed to find appropriate hotpluggable vcpus to reach the desired target vcpu "
            f"count {count} (the guest has {plugged_vcpus(slots)}; the vCPUs it booted with "
            "cannot be unplugged)"
        )
    return VcpuPlan(plug, unplug)


class ResourceOps:
    """The balloon and vCPU hotplug of a QEMU runner (a mixin of QemuRunner)."""

    if TYPE_CHECKING:
        # What it uses of the runner.
        exited: bool
        log: BoundLogger
        _name: str
        _live_def: DomainDef
        _live_xml: str | None

        _env: RunnerEnv

        async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        def _forget_vcpu_threads(self) -> None: ...

        async def _call(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...

        def watch_events(
            self, *names: str
        ) -> AbstractContextManager[trio.MemoryReceiveChannel[dict[str, Any]]]: ...

        def mark_dirty(self) -> None: ...

        async def _apply_tuning(self) -> None: ...

    async def set_balloon(self, kib: int) -> None:
        """Ask the guest's balloon for ``kib`` KiB; its BALLOON_CHANGE events follow."""
        await self.execute("balloon", {"value": kib * 1024})

    def balloon_changed(self, kib: int) -> None:
        """The balloon reported its new size: the live ``<currentMemory>`` says it."""
        if kib > 0 and kib != self._live_def.current_memory_kib:
            self._live_def.current_memory_kib = kib
            self._live_xml = None
            self.mark_dirty()

    async def plug_defined_vcpus(self) -> None:
        """Plug the enabled hotpluggable vCPUs of ``<vcpus>``, in their order, into a QEMU
        that has not run yet: a restored or reverted guest's state holds them as devices,
        and QEMU loads it only into the same devices (libvirt's
        ``qemuProcessSetupHotpluggableVcpus``)."""
        ids = plug_order(self._live_def.vcpu_states)
        if not ids:
            return
        slots = {s.index: s for s in cpu_slots(await self._call("query-hotpluggable-cpus"))}
        for vid in ids:
            slot = slots.get(vid)
            if slot is None or slot.vcpus != 1:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: QEMU has no slot to plug vCPU {vid} into "
                    "alone (<vcpus> of this machine and topology)"
                )
            await self._call("device_add", {"driver": slot.type, "id": slot.alias, **slot.props})

    async def set_vcpus(self, count: int) -> None:
        """Hot(un)plug vCPUs until the guest has ``count``."""
        slots = cpu_slots(await self.execute("query-hotpluggable-cpus"))
        plan = plan_vcpus(slots, count)
        try:
            for slot in plan.plug:
                await self.execute(
                    "device_add", {"driver": slot.type, "id": slot.alias, **slot.props}
                )
            if plan.plug:
                # The new threads get their <cputune> pins, policies, bandwidth and resctrl
                # group, as the first ones did (libvirt sets up a plugged vCPU the same way).
                await self._apply_tuning()
            if plan.unplug:
                await self._unplug_vcpus(plan.unplug)
        finally:
            with trio.CancelScope(shield=True):
                await self.refresh_vcpus()

    async def _unplug_vcpus(self, slots: list[CpuSlot]) -> None:
        pending = {s.alias for s in slots}
        with self.watch_events("DEVICE_DELETED", "ACPI_DEVICE_OST") as events:
            for slot in slots:
                try:
                    await self.execute("device_del", {"id": slot.alias})
                except QMPError as err:
                    if err.error_class is None:
                        raise  # no refusal of QEMU's: the monitor (or the domain) went
                    raise unplug_refused(self._name, slot.alias, err) from None
            with trio.move_on_after(self._env.config.unplug_timeout):
                async for event in events:
                    refused = vcpu_eject_refused(event)
                    if refused is not None:
                        raise OperationFailedError(
                            f"the guest of domain '{self._name}' refused to release vCPU "
                            f"{refused} (ACPI status {event['data']['info'].get('status')})"
                        )
                    if event.get("event") == RESYNC_EVENT or vcpu_unplug_event(event):
                        # Ask QEMU which are still there (also when events were lost).
                        reply = await self.execute("query-hotpluggable-cpus")
                        pending &= {s.alias for s in cpu_slots(reply) if s.removable}
                    if not pending:
                        return
                raise OperationFailedError(f"QEMU of domain '{self._name}' exited")
        raise OperationTimeoutError(
            f"vcpu unplug request timed out: the guest of domain '{self._name}' did not "
            f"release {', '.join(sorted(pending))} within {self._env.config.unplug_timeout:g} s "
            "(it may still: the live vCPU count follows it)"
        )

    async def refresh_vcpus(self) -> None:
        """Read from QEMU how many vCPUs are plugged into the live definition."""
        if self.exited:
            return
        try:
            slots = cpu_slots(await self.execute("query-hotpluggable-cpus"))
        except (QMPError, OperationTimeoutError) as err:
            self.log.warning("cannot read the plugged vCPUs", error=str(err))
            return
        count = plugged_vcpus(slots)
        live = self._live_def
        states = live.vcpu_states
        if any(s.removable for s in slots) or states is not None:
            # The live XML says which vCPUs are plugged devices (<vcpus>), so that a save,
            # managed save or snapshot of it is restored into the same devices.
            present = {
                s.index + k: s.removable
                for s in slots
                if s.qom_path is not None
                for k in range(s.vcpus)
            }
            states = states_from_qemu(live.vcpu_states, present, live.max_vcpus)
        if count and (count != live.vcpus or states != live.vcpu_states):
            live.vcpus = count
            live.vcpu_states = states
            self._forget_vcpu_threads()  # the statistics ask QEMU for the new threads
            self._live_xml = None
            self.mark_dirty()


__all__ = [
    "CpuSlot",
    "ResourceOps",
    "VcpuPlan",
    "cpu_slots",
    "is_vcpu_alias",
    "plan_vcpus",
    "plugged_vcpus",
    "unplug_refused",
    "vcpu_eject_refused",
    "vcpu_unplug_event",
]
