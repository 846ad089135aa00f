"""What happens after a guest powers off, reboots or panics: libvirt's on_* follow-up policy.

Every hypervisor driver applies the same policy (``<on_poweroff>``, ``<on_reboot>``,
``<on_crash>``), so it is decided here, once. A driver's state machine reports *that* a guest
shut down, reset itself with ``on_reboot=destroy``, or panicked (a :class:`GuestEvent`); this
module says what the supervisor does about it (a :class:`FollowUpAction`); the driver carries
it out (reset and continue QEMU, stop QEMU, or leave it as it is).
"""

from __future__ import annotations

import dataclasses
import enum


class GuestEvent(enum.Enum):
    """A guest did something that calls for a follow-up by the supervisor."""

    #: The guest has shut down (QEMU is paused, not gone): on_poweroff, or the end of a reboot.
    SHUTDOWN = "guest-shutdown"
    #: The guest reset itself and on_reboot says destroy.
    REBOOT_DESTROY = "guest-reboot-destroy"
    #: The guest panicked: on_crash.
    PANICKED = "guest-panicked"


class FollowUpAction(enum.Enum):
    """What the supervisor does next."""

    #: Leave the guest as it is (``preserve``).
    NOTHING = "nothing"
    #: Reset the virtual machine and run it again; a boot follows (``restart``).
    RESTART = "restart"
    #: Finish a reboot asked through the API: reset and run, with no new STARTED event.
    FINISH_REBOOT = "finish-reboot"
    #: Stop QEMU; the domain ends shut off with reason SHUTDOWN.
    STOP_SHUTDOWN = "stop-shutdown"
    #: Stop QEMU; the domain ends shut off with reason CRASHED.
    STOP_CRASHED = "stop-crashed"


#: on_crash values that restart the guest (libvirt's coredump-restart and rename-restart
#: restart too; asvirt takes no core dump and renames nothing).
_RESTARTING_CRASH = ("restart", "coredump-restart", "rename-restart")


@dataclasses.dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """A domain's ``<on_poweroff>``, ``<on_reboot>`` and ``<on_crash>``."""

    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"

    def decide(self, event: GuestEvent, *, rebooting: bool) -> FollowUpAction:
        """The follow-up for ``event``; ``rebooting``: a reboot() asked for this shutdown."""
        if event is GuestEvent.SHUTDOWN:
            if rebooting:
                return FollowUpAction.FINISH_REBOOT
            if self.on_poweroff == "restart":
                return FollowUpAction.RESTART
            if self.on_poweroff == "preserve":
                return FollowUpAction.NOTHING
            return FollowUpAction.STOP_SHUTDOWN
        if event is GuestEvent.REBOOT_DESTROY:
            return FollowUpAction.STOP_SHUTDOWN
        if self.on_crash in _RESTARTING_CRASH:
            return FollowUpAction.RESTART
        if self.on_crash == "preserve":
            return FollowUpAction.NOTHING
        return FollowUpAction.STOP_CRASHED


__all__ = ["FollowUpAction", "GuestEvent", "LifecyclePolicy"]
