"""Rules every hypervisor driver applies the same way: name/UUID clashes and wrong states.

Users' code is written against one behaviour, whichever driver runs it (the test driver
exists so that code can be tested without QEMU), so these checks live in one place.
"""

from __future__ import annotations

from ..errors import DomainExistsError, OperationInvalidError
from ..states import DomainState


def check_define_clash(
    name: str, uuid: str, *, name_of_uuid: str | None, uuid_of_name: str | None
) -> None:
    """Refuse a definition whose name or UUID belongs to another domain.

    ``name_of_uuid`` is the name of the domain that has ``uuid`` (None if none does),
    ``uuid_of_name`` the UUID of the domain called ``name``. Same name and UUID is a
    redefinition, which is allowed.
    """
    if name_of_uuid is not None and name_of_uuid != name:
        raise DomainExistsError(f"domain '{name_of_uuid}' already exists with uuid {uuid}")
    if uuid_of_name is not None and uuid_of_name != uuid:
        raise DomainExistsError(f"domain '{name}' already exists with uuid {uuid_of_name}")


def needs_suspend(name: str, state: DomainState) -> bool:
    """False if already paused (a no-op); OperationInvalidError unless running."""
    if state is DomainState.PAUSED:
        return False
    if state is not DomainState.RUNNING:
        raise OperationInvalidError(f"domain '{name}' is {state.label}, not running")
    return True


def needs_resume(name: str, state: DomainState) -> bool:
    """False if already running (a no-op); OperationInvalidError unless paused."""
    if state is DomainState.RUNNING:
        return False
    if state is not DomainState.PAUSED:
        raise OperationInvalidError(f"domain '{name}' is {state.label}, not paused")
    return True


def require_state(name: str, state: DomainState, *allowed: DomainState) -> None:
    """OperationInvalidError unless ``state`` is one of ``allowed``."""
    if state not in allowed:
        raise OperationInvalidError(f"domain '{name}' is {state.label}")


#: States in which the guest can see the ACPI power button (shutdown()).
SHUTDOWN_STATES = (DomainState.RUNNING, DomainState.PAUSED)
#: States in which reboot() makes sense: a paused guest cannot react to the button.
REBOOT_STATES = (DomainState.RUNNING,)
