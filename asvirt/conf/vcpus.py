"""The per-vCPU ``<vcpus>`` element of the domain XML: which vCPUs are enabled, which are
hot-pluggable, and in what order the hot-pluggable ones were plugged.

libvirt writes it into a running domain's XML once a vCPU has been plugged (its
``individualvcpus``), so that a restore, a managed-save start or a revert to a snapshot
starts QEMU with the same CPU devices the saved state holds: the enabled vCPUs that are not
hot-pluggable boot (``-smp N`` boots vCPUs 0..N-1), the enabled hot-pluggable ones are
``device_add``-ed in ``order`` before the state is loaded. Without it QEMU boots every vCPU
and refuses the image ("Bad config data").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigUnsupportedError, XMLError
from .xmlnode import Node, XElem


@dataclass(slots=True)
class VcpuState:
    """One ``<vcpu id= enabled= hotpluggable= order=/>`` of ``<vcpus>``."""

    id: int
    enabled: bool
    hotpluggable: bool
    #: The place of an enabled vCPU in plug order (1-based), None if not said.
    order: int | None = None


def parse_vcpus(node: Node, *, max_vcpus: int, current: int | None) -> list[VcpuState] | None:
    """The ``<vcpus>`` child of ``<domain>``, one state per vCPU up to ``max_vcpus``, or None.

    ``current`` is ``<vcpu current=...>`` if given: it must agree with the enabled count
    (which otherwise sets it). vCPUs the element leaves out keep what ``current`` says:
    the first ones booted, the rest absent and pluggable.
    """
    el = node.child("vcpus")
    if el is None:
        return None
    booted = current if current is not None else max_vcpus
    states = {i: VcpuState(i, i < booted, i >= booted) for i in range(max_vcpus)}
    seen: set[int] = set()
    for v in el.children("vcpu"):
        vid = v.to_int(v.required("id"), "id", minimum=0)
        if vid >= max_vcpus:
            raise XMLError(f"vcpu id '{vid}' is out of range of maximum vcpu count {max_vcpus}")
        if vid in seen:
            raise XMLError(f"duplicate vcpu id '{vid}' in <vcpus>")
        seen.add(vid)
        enabled = v.yesno("enabled")
        if enabled is None:
            raise XMLError("missing attribute 'enabled' of <vcpus>/<vcpu>")
        hotpluggable = v.yesno("hotpluggable")
        order = v.integer("order", minimum=0, maximum=max_vcpus)
        states[vid] = VcpuState(
            vid,
            enabled,
            # libvirt's default: a vCPU that is off can only come as a plugged device.
            hotpluggable if hotpluggable is not None else not enabled,
            (order or None) if enabled else None,
        )
        v.finish()
    el.finish()
    result = [states[i] for i in range(max_vcpus)]
    validate_vcpus(result, current=current)
    return result


def validate_vcpus(states: list[VcpuState], *, current: int | None = None) -> None:
    """The rules QEMU's CPU model puts on ``<vcpus>`` (libvirt's
    ``qemuProcessValidateHotpluggableVcpus``), before anything is done with it."""
    enabled = sum(1 for s in states if s.enabled)
    if current is not None and enabled != current:
        raise XMLError(
            f"<vcpus> enables {enabled} vCPUs but <vcpu current='{current}'> says {current}"
        )
    if not states[0].enabled or states[0].hotpluggable:
        raise ConfigUnsupportedError(
            "unsupported configuration: vcpu 0 must be enabled and not hotpluggable"
        )
    booted = [s.id for s in states if s.enabled and not s.hotpluggable]
    if booted != list(range(len(booted))):
        # QEMU boots vCPUs 0..N-1 with -smp N: any other set is not a command line.
        raise ConfigUnsupportedError(
            "unsupported configuration: the enabled vCPUs that are not hotpluggable must be "
            f"the first ones (0-{len(booted) - 1}), not {', '.join(map(str, booted))}"
        )
    orders = [s.order for s in states if s.enabled and s.order is not None]
    if len(set(orders)) != len(orders):
        dup = next(o for o in orders if orders.count(o) > 1)
        raise ConfigUnsupportedError(f"unsupported configuration: duplicate vcpu order '{dup}'")


def format_vcpus(root: XElem, states: list[VcpuState] | None) -> None:
    """Write ``<vcpus>`` (nothing when the definition has none)."""
    if states is None:
        return
    el = root.add("vcpus")
    for s in states:
        el.add(
            "vcpu",
            {"id": s.id, "enabled": s.enabled, "hotpluggable": s.hotpluggable, "order": s.order},
        )


def boot_vcpus(states: list[VcpuState] | None, current: int) -> int:
    """How many vCPUs QEMU boots (``-smp N``): the enabled ones that are not hotpluggable,
    or ``current`` without ``<vcpus>``."""
    if states is None:
        return current
    return sum(1 for s in states if s.enabled and not s.hotpluggable)


def plug_order(states: list[VcpuState] | None) -> list[int]:
    """The ids of the enabled hotpluggable vCPUs, in the order they are plugged at start:
    by ``order``, those without one last, then by id."""
    if states is None:
        return []
    plugged = [s for s in states if s.enabled and s.hotpluggable]
    plugged.sort(key=lambda s: (s.order is None, s.order or 0, s.id))
    return [s.id for s in plugged]


def states_from_qemu(
    previous: list[VcpuState] | None, plugged: dict[int, bool], max_vcpus: int
) -> list[VcpuState]:
    """The ``<vcpus>`` of a running guest from what QEMU lists: ``plugged`` maps the id of
    each present vCPU to whether it was plugged as a device. Orders of vCPUs still present
    are kept; newly plugged ones come after them, by id (asvirt plugs lowest first)."""
    before = {s.id: s for s in previous or ()}
    states: list[VcpuState] = []
    for i in range(max_vcpus):
        if i in plugged:
            prev = before.get(i)
            order = prev.order if prev is not None and prev.enabled else None
            states.append(VcpuState(i, True, plugged[i], order))
        else:
            states.append(VcpuState(i, False, True, None))
    taken = [s.order for s in states if s.order is not None]
    nxt = max(taken, default=0) + 1
    for s in states:
        if s.enabled and s.order is None:
            s.order = nxt
            nxt += 1
    return states


__all__ = [
    "VcpuState",
    "boot_vcpus",
    "format_vcpus",
    "parse_vcpus",
    "plug_order",
    "states_from_qemu",
    "validate_vcpus",
]
