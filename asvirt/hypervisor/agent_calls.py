"""The guest agent calls, once for every hypervisor (libvirt's ``qemuDomain*`` agent calls).

A runtime runs agent commands (:meth:`~.domains.DomainRuntime.agent_command`); these calls
give them libvirt's meaning: raw commands (virsh qemu-agent-command), freezing and thawing the
guest's filesystems, its clock, its interfaces' addresses as the guest sees them, and shutdown
through the agent. As in libvirt, they take no job: an agent that does not answer holds up
only agent calls (and every one of them has a deadline), never the monitor.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import trio

from ..conf.addresses import DriveAddress, PCIAddress
from ..conf.domain import DomainDef
from ..drivers.base import (
    DomainFSInfo,
    DomainInterface,
    GuestInfoTypes,
    HostnameSource,
    InterfaceAddress,
    IPAddrType,
    NodeSuspendTarget,
)
from ..errors import (
    AgentCommandNotFoundError,
    ArgumentUnsupportedError,
    InternalError,
    InvalidArgError,
    NoHostnameError,
    OperationInvalidError,
    OperationUnsupportedError,
)
from ..states import DomainState
from .domains import DomainObj, DomainRuntime
from .driver_base import DomainDriverBase

#: The largest time set_time() accepts (libvirt's limit: what fits in nanoseconds).
_MAX_SECONDS = (2**63 - 1) // 1_000_000_000
#: guest-get-osinfo's fields, named as libvirt's ``os.*`` guest info parameters are.
_OS_FIELDS = ("id", "name", "pretty-name", "version", "version-id", "kernel-release",
              "kernel-version", "machine", "variant", "variant-id")  # fmt: skip
#: The controller type a disk on a drive address hangs off, by the disk's bus.
_DRIVE_CONTROLLERS = {"scsi": "scsi", "ide": "ide", "sata": "sata", "fdc": "fdc"}


def _disk_target(definition: DomainDef, address: Any) -> str | None:
    """The target (``vda``) of the domain's disk at the address qemu-ga gives for one of its
    disks (libvirt's ``virDomainDiskByAddress``): a disk on that PCI address (virtio), or on
    that bus/target/unit of the controller at that PCI address (SCSI, IDE, SATA)."""
    if not isinstance(address, dict):
        return None
    pci = address.get("pci-controller")
    if not isinstance(pci, dict):
        return None
    try:
        where = PCIAddress(
            domain=int(pci["domain"]), bus=int(pci["bus"]), slot=int(pci["slot"]),
            function=int(pci["function"]),
        )  # fmt: skip
        drive = (int(address["bus"]), int(address["target"]), int(address["unit"]))
    except (KeyError, TypeError, ValueError):
        return None

    def same_pci(addr: object) -> bool:
        return isinstance(addr, PCIAddress) and (
            addr.domain,
            addr.bus,
            addr.slot,
            addr.function,
        ) == (where.domain, where.bus, where.slot, where.function)

    controller = next((c for c in definition.controllers if same_pci(c.address)), None)
    for disk in definition.disks:
        if same_pci(disk.address):
            return disk.target
        addr = disk.address
        if (
            controller is not None
            and isinstance(addr, DriveAddress)
            and _DRIVE_CONTROLLERS.get(disk.bus) == controller.type
            and addr.controller == controller.index
            and (addr.bus, addr.target, addr.unit) == drive
        ):
            return disk.target
    return None


class AgentCalls(DomainDriverBase):
    """The guest agent calls of the shared domain driver (a mixin of
    :class:`~.domain_driver.DomainDriver`)."""

    def _agent_runtime(self, obj: DomainObj) -> DomainRuntime:
        runtime = self._runtime(obj)
        if runtime.state[0] is not DomainState.RUNNING:
            # A paused guest cannot answer (libvirt: qemuDomainAgentAvailable).
            raise OperationInvalidError(f"domain '{obj.name}' is not running")
        return runtime

    async def _agent(
        self,
        uuid: str,
        execute: str,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The ``return`` value of an agent command."""
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        reply = await self._agent_runtime(obj).agent_command(execute, arguments, timeout)
        if not isinstance(reply, dict) or "return" not in reply:
            raise InternalError(f"the guest agent's reply to '{execute}' has no return value")
        return reply["return"]

    async def domain_agent_command(self, uuid: str, command: str, timeout: float | None) -> str:
        """Run a raw agent command (JSON text); the agent's whole reply as compact JSON text
        (libvirt's ``virDomainQemuAgentCommand``), "" for a command it does not answer."""
        try:
            request = json.loads(command)
        except (TypeError, ValueError) as err:
            raise InvalidArgError(f"the agent command is not JSON: {err}") from None
        if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
            raise InvalidArgError('the agent command must be an object with an "execute" name')
        arguments = request.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidArgError('the agent command\'s "arguments" must be an object')
        if timeout is not None and not timeout > 0:
            raise InvalidArgError(f"the agent timeout must be positive, not {timeout}")
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        runtime = self._agent_runtime(obj)
        reply = await runtime.agent_command(request["execute"], arguments, timeout)
        return "" if reply is None else json.dumps(reply, separators=(",", ":"))

    async def domain_fs_freeze(self, uuid: str, mountpoints: list[str] | None) -> int:
        if mountpoints:
            return int(
                await self._agent(uuid, "guest-fsfreeze-freeze-list", {"mountpoints": mountpoints})
            )
        return int(await self._agent(uuid, "guest-fsfreeze-freeze"))

    async def domain_fs_thaw(self, uuid: str, mountpoints: list[str] | None) -> int:
        if mountpoints:
            raise ArgumentUnsupportedError("specifying mountpoints is not supported for thaw")
        return int(await self._agent(uuid, "guest-fsfreeze-thaw"))

    async def domain_get_time(self, uuid: str) -> list[int]:
        nanoseconds = int(await self._agent(uuid, "guest-get-time"))
        return [nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000]

    async def domain_set_time(
        self, uuid: str, seconds: int | None, nseconds: int, sync: bool
    ) -> None:
        if sync:
            # The agent reads the guest's RTC (hwclock) into the system clock.
            await self._agent(uuid, "guest-set-time")
            return
        if seconds is None:
            raise InvalidArgError("set_time needs seconds, or sync")
        if not 0 <= nseconds < 1_000_000_000:
            raise InvalidArgError(f"nseconds must be below one second, not {nseconds}")
        if not 0 <= seconds <= _MAX_SECONDS:
            raise InvalidArgError(f"time {seconds} is out of range")
        await self._agent(uuid, "guest-set-time", {"time": seconds * 1_000_000_000 + nseconds})

    async def domain_get_hostname(self, uuid: str, source: HostnameSource) -> str:
        obj = self.table.get(uuid)
        if source in (HostnameSource.AGENT, HostnameSource.DEFAULT):
            reply = await self._agent(uuid, "guest-get-host-name")
            name = reply.get("host-name") if isinstance(reply, dict) else None
            if not isinstance(name, str):
                raise InternalError("malformed return value of 'guest-get-host-name'")
            return name
        if source is not HostnameSource.LEASE:
            raise InvalidArgError(f"unknown host name source {source!r}")
        # libvirt's lease source: the first lease of a network the domain's interfaces are
        # on that carries the guest's host name, matched by MAC.
        for _, leases in await self._nic_leases(obj):
            for lease in leases:
                if lease.hostname:
                    return lease.hostname
        raise NoHostnameError(f"no hostname found for domain {obj.name}")

    async def _fs_info(self, uuid: str) -> tuple[DomainDef, list[dict[str, Any]]]:
        """The guest's guest-get-fsinfo entries (well-formed ones), and the live definition
        their disks are matched against."""
        reply = await self._agent(uuid, "guest-get-fsinfo")
        if not isinstance(reply, list):
            raise InternalError("malformed return value of 'guest-get-fsinfo'")
        for fs in reply:
            if not isinstance(fs, dict) or not all(
                isinstance(fs.get(k), str) for k in ("name", "mountpoint", "type")
            ):
                raise InternalError("malformed return value of 'guest-get-fsinfo'")
        definition = self._runtime(self.table.get(uuid)).live_def
        return definition, reply

    async def domain_get_fs_info(self, uuid: str) -> list[DomainFSInfo]:
        definition, reply = await self._fs_info(uuid)
        found = []
        for fs in reply:
            targets = (_disk_target(definition, d) for d in fs.get("disk") or [])
            found.append(
                DomainFSInfo(
                    mountpoint=fs["mountpoint"],
                    name=fs["name"],
                    fstype=fs["type"],
                    dev_aliases=tuple(t for t in targets if t is not None),
                )
            )
        return found

    async def domain_get_guest_info(self, uuid: str, types: GuestInfoTypes) -> dict[str, Any]:
        """libvirt's ``virDomainGetGuestInfo``: each group's typed parameters. With no
        ``types``, every group, and a group whose command the agent lacks is left out; a
        group asked for by name fails then (libvirt's ``report_unsupported``)."""
        asked = GuestInfoTypes(types)
        if asked & ~GuestInfoTypes(sum(GuestInfoTypes)):
            raise InvalidArgError(f"unknown guest info types {int(types):#x}")
        wanted = asked or GuestInfoTypes(sum(GuestInfoTypes))
        params: dict[str, Any] = {}
        groups = (
            (GuestInfoTypes.USERS, self._guest_users),
            (GuestInfoTypes.OS, self._guest_os),
            (GuestInfoTypes.TIMEZONE, self._guest_timezone),
            (GuestInfoTypes.HOSTNAME, self._guest_hostname),
            (GuestInfoTypes.FILESYSTEM, self._guest_filesystems),
            (GuestInfoTypes.DISKS, self._guest_disks),
            (GuestInfoTypes.INTERFACES, self._guest_interfaces),
            (GuestInfoTypes.LOAD, self._guest_load),
        )
        for group, fill in groups:
            if not wanted & group:
                continue
            try:
                params.update(await fill(uuid))
            except AgentCommandNotFoundError:
                if asked:
                    raise
        return params

    async def _agent_typed(self, uuid: str, execute: str, kind: type) -> Any:
        """An agent command's return value, which must be a ``kind`` (dict, list)."""
        reply = await self._agent(uuid, execute)
        if not isinstance(reply, kind):
            raise InternalError(f"malformed return value of '{execute}'")
        return reply

    async def _guest_users(self, uuid: str) -> dict[str, Any]:
        users = [u for u in await self._agent_typed(uuid, "guest-get-users", list)
                 if isinstance(u, dict)]  # fmt: skip
        params: dict[str, Any] = {"user.count": len(users)}
        for i, user in enumerate(users):
            params[f"user.{i}.name"] = str(user.get("user", ""))
            if isinstance(user.get("domain"), str):
                params[f"user.{i}.domain"] = user["domain"]
            # qemu-ga gives seconds (a float); libvirt milliseconds.
            login = user.get("login-time", 0)
            seconds = float(login) if isinstance(login, int | float) else 0.0
            params[f"user.{i}.login-time"] = int(seconds * 1000)
        return params

    async def _guest_os(self, uuid: str) -> dict[str, Any]:
        info = await self._agent_typed(uuid, "guest-get-osinfo", dict)
        return {f"os.{k}": info[k] for k in _OS_FIELDS if isinstance(info.get(k), str)}

    async def _guest_timezone(self, uuid: str) -> dict[str, Any]:
        zone = await self._agent_typed(uuid, "guest-get-timezone", dict)
        params: dict[str, Any] = {}
        if isinstance(zone.get("zone"), str):
            params["timezone.name"] = zone["zone"]
        offset = zone.get("offset", 0)
        params["timezone.offset"] = offset if isinstance(offset, int) else 0
        return params

    async def _guest_hostname(self, uuid: str) -> dict[str, Any]:
        return {"hostname": await self.domain_get_hostname(uuid, HostnameSource.AGENT)}

    async def _guest_filesystems(self, uuid: str) -> dict[str, Any]:
        definition, reply = await self._fs_info(uuid)
        params: dict[str, Any] = {"fs.count": len(reply)}
        for i, fs in enumerate(reply):
            p = f"fs.{i}."
            params[p + "mountpoint"] = fs["mountpoint"]
            params[p + "name"] = fs["name"]
            params[p + "fstype"] = fs["type"]
            for key in ("total-bytes", "used-bytes"):
                if isinstance(fs.get(key), int):
                    params[p + key] = fs[key]
            disks = [d for d in fs.get("disk") or [] if isinstance(d, dict)]
            params[p + "disk.count"] = len(disks)
            for j, disk in enumerate(disks):
                target = _disk_target(definition, disk)
                if target is not None:
                    params[f"{p}disk.{j}.alias"] = target
                if isinstance(disk.get("serial"), str):
                    params[f"{p}disk.{j}.serial"] = disk["serial"]
                if isinstance(disk.get("dev"), str):
                    params[f"{p}disk.{j}.device"] = disk["dev"]
        return params

    async def _guest_disks(self, uuid: str) -> dict[str, Any]:
        reply = await self._agent_typed(uuid, "guest-get-disks", list)
        definition = self._runtime(self.table.get(uuid)).live_def
        disks = [d for d in reply or [] if isinstance(d, dict) and isinstance(d.get("name"), str)]
        params: dict[str, Any] = {"disk.count": len(disks)}
        for i, disk in enumerate(disks):
            p = f"disk.{i}."
            params[p + "name"] = disk["name"]
            params[p + "partition"] = bool(disk.get("partition"))
            deps = [d for d in disk.get("dependencies") or [] if isinstance(d, str)]
            params[p + "dependency.count"] = len(deps)
            for j, dep in enumerate(deps):
                params[f"{p}dependency.{j}.name"] = dep
            address = disk.get("address")
            if isinstance(address, dict):
                if isinstance(address.get("serial"), str):
                    params[p + "serial"] = address["serial"]
                target = _disk_target(definition, address)
                if target is not None:
                    params[p + "alias"] = target
            if isinstance(disk.get("alias"), str):
                params[p + "guest_alias"] = disk["alias"]
        return params

    async def _guest_interfaces(self, uuid: str) -> dict[str, Any]:
        ifaces = await self._agent_interfaces(uuid)
        params: dict[str, Any] = {"if.count": len(ifaces)}
        for i, iface in enumerate(ifaces):
            p = f"if.{i}."
            params[p + "name"] = iface.name
            if iface.hwaddr:
                params[p + "hwaddr"] = iface.hwaddr
            params[p + "addr.count"] = len(iface.addrs)
            for j, addr in enumerate(iface.addrs):
                kind = "ipv4" if addr.type is IPAddrType.IPV4 else "ipv6"
                params[f"{p}addr.{j}.type"] = kind
                params[f"{p}addr.{j}.addr"] = addr.addr
                params[f"{p}addr.{j}.prefix"] = addr.prefix
        return params

    async def _guest_load(self, uuid: str) -> dict[str, Any]:
        load = await self._agent_typed(uuid, "guest-get-load", dict)
        return {
            f"load.{k}": float(load[k])
            for k in ("1m", "5m", "15m")
            if isinstance(load.get(k), int | float)
        }

    async def domain_set_user_password(
        self, uuid: str, user: str, password: str, encrypted: bool
    ) -> None:
        if not isinstance(user, str) or not user or any(c in user for c in ":\n\0"):
            raise InvalidArgError("the user name must be a non-empty name without ':' or newlines")
        if not isinstance(password, str) or any(c in password for c in "\n\0"):
            raise InvalidArgError("the password must be text without newlines")
        # The agent takes it base64-encoded; it is never logged (the agent logs no arguments).
        await self._agent(
            uuid,
            "guest-set-user-password",
            {
                "username": user,
                "password": base64.b64encode(password.encode()).decode(),
                "crypted": bool(encrypted),
            },
        )

    async def domain_pm_suspend_for_duration(
        self, uuid: str, target: NodeSuspendTarget, duration: int
    ) -> None:
        """libvirt's ``virDomainPMSuspendForDuration``: the agent's guest-suspend-*; the
        PMSUSPENDED event follows when QEMU sees the guest suspend."""
        target = NodeSuspendTarget(target)
        if duration:
            raise InvalidArgError("Duration not supported. Use 0 for now")
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        pm = self._agent_runtime(obj).live_def
        if target in (NodeSuspendTarget.MEM, NodeSuspendTarget.HYBRID) and (
            pm.suspend_to_mem is False
        ):
            raise OperationUnsupportedError("S3 state is disabled for this domain")
        if target in (NodeSuspendTarget.DISK, NodeSuspendTarget.HYBRID) and (
            pm.suspend_to_disk is False
        ):
            raise OperationUnsupportedError("S4 state is disabled for this domain")
        command = {
            NodeSuspendTarget.MEM: "guest-suspend-ram",
            NodeSuspendTarget.DISK: "guest-suspend-disk",
            NodeSuspendTarget.HYBRID: "guest-suspend-hybrid",
        }[target]
        await self._agent_runtime(obj).agent_command(command, None, None)

    async def domain_pm_wakeup(self, uuid: str) -> None:
        obj = self.table.get(uuid)
        await trio.lowlevel.checkpoint()
        await self._runtime(obj).pm_wakeup()

    async def _agent_interfaces(self, uuid: str) -> list[DomainInterface]:
        found = []
        for iface in await self._agent(uuid, "guest-network-get-interfaces") or []:
            if not isinstance(iface, dict) or not isinstance(iface.get("name"), str):
                continue
            addrs = []
            for ip in iface.get("ip-addresses") or []:
                kind = ip.get("ip-address-type")
                if kind not in ("ipv4", "ipv6") or not isinstance(ip.get("ip-address"), str):
                    continue
                addr_type = IPAddrType.IPV4 if kind == "ipv4" else IPAddrType.IPV6
                addrs.append(
                    InterfaceAddress(addr_type, ip["ip-address"], int(ip.get("prefix", 0)))
                )
            found.append(
                DomainInterface(iface["name"], iface.get("hardware-address") or "", tuple(addrs))
            )
        return found


__all__ = ["AgentCalls"]
