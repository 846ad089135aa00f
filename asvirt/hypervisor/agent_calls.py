"""The guest agent calls, once for every hypervisor (libvirt's ``qemuDomain*`` agent calls).

A runtime runs agent commands (:meth:`~.domains.DomainRuntime.agent_command`); these calls
give them libvirt's meaning: raw commands (virsh qemu-agent-command), freezing and thawing the
guest's filesystems, its clock, its interfaces' addresses as the guest sees them, and shutdown
through the agent. As in libvirt, they take no job: an agent that does not answer holds up
only agent calls (and every one of them has a deadline), never the monitor.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from ..drivers.base import DomainInterface, InterfaceAddress, IPAddrType
from ..errors import ArgumentUnsupportedError, InternalError, InvalidArgError, OperationInvalidError
from ..states import DomainState
from .domains import DomainObj, DomainRuntime
from .driver_base import DomainDriverBase

#: The largest time set_time() accepts (libvirt's limit: what fits in nanoseconds).
_MAX_SECONDS = (2**63 - 1) // 1_000_000_000


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
