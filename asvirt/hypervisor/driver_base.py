"""What the domain driver's call groups (snapshots, saves) use of the driver.

:class:`~.domain_driver.DomainDriver` is made of its own calls and of mixins that each add a
group of calls (:class:`~.snapshots.SnapshotCalls`, :class:`~.saves.SaveCalls`). They share
the driver's table, bus and backend, and a few of its helpers, declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..conf.devices import Interface
    from ..conf.domain import DomainDef
    from ..drivers.base import DomainRef, NetworkDHCPLease, StorageDriver
    from ..errors import AsvirtError
    from ..events import EventBus, LifecycleEvent
    from .domain_driver import HypervisorBackend, StartableRuntime
    from .domains import DomainObj, DomainRuntime, DomainTable
    from .guest_state import StartOrigin


class DomainDriverBase:
    """The parts of the domain driver its call groups rely on."""

    table: DomainTable
    bus: EventBus
    backend: HypervisorBackend
    storage: StorageDriver | None

    if TYPE_CHECKING:

        def _runtime(self, obj: DomainObj) -> DomainRuntime: ...

        def _affected(self, obj: DomainObj, live: bool, config: bool) -> tuple[bool, bool]: ...

        async def _store_config(self, obj: DomainObj, defn: DomainDef) -> None: ...

        async def _nic_leases(
            self, obj: DomainObj
        ) -> list[tuple[Interface, list[NetworkDHCPLease]]]: ...

        def _new_runtime(
            self, obj: DomainObj, live_def: DomainDef, *, owner: object | None
        ) -> StartableRuntime: ...

        async def _start(
            self,
            obj: DomainObj,
            runtime: StartableRuntime,
            *,
            paused: bool,
            origin: StartOrigin = None,
        ) -> None: ...

        async def _start_new_or_inactive(
            self,
            defn: DomainDef,
            *,
            owner: object | None,
            start: Callable[[DomainObj, StartableRuntime], Awaitable[None]],
            running: Callable[[str], AsvirtError],
        ) -> DomainRef: ...

        def _publish_lifecycle(
            self, obj: DomainObj, type_: LifecycleEvent, detail: Any
        ) -> None: ...


__all__ = ["DomainDriverBase"]
