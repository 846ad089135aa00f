"""libvirt's domain snapshot XML (``<domainsnapshot>``): parse and format.

Two dialects, as in libvirt:

* what a user writes to create a snapshot (``virsh snapshot-create DOM FILE``): a name, a
  description, whether to save the memory state (``<memory snapshot='internal|no'/>``) and
  per-disk choices (``<disks><disk name='vda' snapshot='internal|no'/></disks>``). What only a
  driver may say (state, creation time, parent, the domain) is ignored there, as libvirt
  ignores it unless a snapshot is redefined;
* what a driver keeps and shows (``snapshot-dumpxml``): everything above, plus the state the
  domain was in, when it was taken, its parent, and the domain's definition at that moment
  (``<domain>``). The copy kept on disk also says whether it is the domain's current snapshot
  (``<active>1</active>``, libvirt's own marker).

Nothing here knows QEMU: the rules for which disks can be snapshotted live in
:mod:`asvirt.hypervisor.snapshots`.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import ConfigUnsupportedError, XMLError
from .domain import hide_secrets
from .names import validate_name
from .xmlnode import Node, XElem
from .xmlsafe import parse_xml

#: ``<memory snapshot=...>``: the memory state is saved inside a qcow2 disk, not at all, or
#: in a file of its own (external: asvirt refuses it).
MEMORY_MODES = ("internal", "no", "external")
#: ``<disk snapshot=...>`` of a snapshot (libvirt's virDomainSnapshotLocation).
DISK_MODES = ("internal", "no", "external", "manual")
#: ``<state>``: what the domain was doing when the snapshot was taken (libvirt's
#: virDomainSnapshotState names; asvirt takes the first three).
STATES = ("running", "paused", "shutoff", "disk-snapshot", "blocked", "shutdown", "crashed")


@dataclasses.dataclass(slots=True)
class SnapshotDisk:
    """``<disk name= snapshot=>``: what a snapshot does with one of the domain's disks."""

    #: The disk's target (``vda``), or its source path as a user may write it.
    name: str
    snapshot: str
    #: An external snapshot's new image (``<source file=...>``): the overlay the disk moves
    #: onto, its old image below it. None: not said (libvirt's default: ``IMAGE.SNAPNAME``).
    source: str | None = None
    #: The overlay's format (``<driver type=...>``; qcow2, the only one asvirt makes).
    driver: str | None = None


@dataclasses.dataclass(slots=True)
class SnapshotDef:
    """One snapshot of a domain, as libvirt describes it."""

    name: str
    description: str | None = None
    #: The domain's state when it was taken: ``running``, ``paused`` or ``shutoff``.
    state: str = "shutoff"
    #: Seconds since the epoch.
    creation_time: int = 0
    #: ``internal`` (the memory state is in the snapshot) or ``no``; None: not said.
    memory: str | None = None
    disks: list[SnapshotDisk] = dataclasses.field(default_factory=list)
    parent: str | None = None
    #: The domain's definition when it was taken (libvirt-format XML): the one it ran with
    #: for a snapshot of a running domain.
    domain_xml: str | None = None
    #: A running domain's persistent definition when it was taken (libvirt's
    #: ``<inactiveDomain>``), if it differed; reverting restores it as the configuration.
    inactive_xml: str | None = None

    @property
    def has_memory(self) -> bool:
        """Whether reverting to it restores a running (or paused) guest."""
        return self.memory == "internal"

    @property
    def is_external(self) -> bool:
        """Whether any of it is outside the disks' images (libvirt's
        virDomainSnapshotDefIsExternal): a disk's overlay, or a memory file."""
        return self.memory == "external" or any(d.snapshot == "external" for d in self.disks)

    def disk_mode(self, target: str) -> str | None:
        """What the snapshot says of the disk ``target`` (None: nothing)."""
        for disk in self.disks:
            if disk.name == target:
                return disk.snapshot
        return None

    def copy(self) -> SnapshotDef:
        return dataclasses.replace(self, disks=[dataclasses.replace(d) for d in self.disks])

    def to_xml(self, *, current: bool | None = None, secure: bool = True) -> str:
        """The snapshot's XML; ``current`` (True or False) adds libvirt's ``<active>``
        marker of the copy kept on disk; ``secure=False`` leaves out its domain's secrets
        (see :meth:`DomainDef.to_xml`)."""
        root = XElem("domainsnapshot")
        root.add("name", text=self.name)
        if self.description is not None:
            root.add("description", text=self.description)
        root.add("state", text=self.state)
        if self.parent is not None:
            root.add("parent").add("name", text=self.parent)
        root.add("creationTime", text=str(self.creation_time))
        if self.memory is not None:
            root.add("memory", {"snapshot": self.memory})
        if self.disks:
            disks = root.add("disks")
            for disk in self.disks:
                if disk.source is None and disk.driver is None:
                    disks.add("disk", {"name": disk.name, "snapshot": disk.snapshot})
                    continue
                # As libvirt writes an external disk: its type, the overlay's format, its file.
                el = disks.add("disk", {"name": disk.name, "snapshot": disk.snapshot})
                el.set("type", "file")
                if disk.driver is not None:
                    el.add("driver", {"type": disk.driver})
                if disk.source is not None:
                    el.add("source", {"file": disk.source})
        text = root.serialize()
        end = "</domainsnapshot>\n"
        parts = [text[: -len(end)]]
        domain_xml, inactive_xml = self.domain_xml, self.inactive_xml
        if not secure:
            domain_xml = hide_secrets(domain_xml) if domain_xml is not None else None
            inactive_xml = hide_secrets(inactive_xml) if inactive_xml is not None else None
        if domain_xml is not None:
            parts.append(_indent(domain_xml))
        if inactive_xml is not None:
            parts.append(_indent(_renamed(inactive_xml, "domain", "inactiveDomain")))
        if current is not None:
            parts.append(f"  <active>{int(current)}</active>\n")
        parts.append(end)
        return "".join(parts)


def _indent(xml: str) -> str:
    """Every line of ``xml`` two spaces in (:func:`_dedent` undoes exactly this)."""
    return "".join(f"  {line}\n" for line in xml.strip("\n").split("\n"))


def _renamed(xml: str, old: str, new: str) -> str:
    """``xml`` with its root element ``<old>`` called ``<new>``."""
    head, tail = xml.strip(), f"</{old}>"
    if not head.startswith(f"<{old}") or not head.endswith(tail):
        raise ValueError(f"not a <{old}> element")
    body = head[len(old) + 1 : -len(tail)]
    return f"<{new}{body}</{new}>\n"


def _dedent(xml: str) -> str:
    lines = xml.split("\n")
    return "\n".join([lines[0], *(ln[2:] if ln.startswith("  ") else ln for ln in lines[1:])])


def parse_snapshot_xml(text: str | bytes, *, stored: bool = False) -> tuple[SnapshotDef, bool]:
    """Parse ``<domainsnapshot>`` XML; returns the snapshot and whether it is marked current.

    ``stored=False``: a user's request to create one (only name, description, memory and
    disks are read; libvirt ignores the rest there too). ``stored=True``: a copy a driver
    kept, read in full. Raises XMLError naming what is wrong.
    """
    root = parse_xml(text)
    if root.tag != "domainsnapshot":
        raise XMLError(f"expected a <domainsnapshot> document, not <{root.tag}>")
    node = Node(root, ("domainsnapshot",))
    name = node.child_text("name")
    snap = SnapshotDef(name=name or "")
    if name is not None:
        validate_name(name, what="snapshot")
    elif stored:
        raise XMLError("a stored snapshot must have a <name>")
    desc = node.child("description")
    if desc is not None:
        snap.description = desc.el.text or ""
        desc.finish()
    memory = node.child("memory")
    if memory is not None:
        snap.memory = memory.choice("snapshot", MEMORY_MODES)
        file = memory.attr("file")
        if file is not None and snap.memory is None:
            snap.memory = "external"
        memory.finish()
    disks = node.child("disks")
    if disks is not None:
        seen: set[str] = set()
        for disk in disks.children("disk"):
            disk_name = disk.required("name")
            if disk_name in seen:
                raise XMLError(f"disk '{disk_name}' is named twice in the snapshot's <disks>")
            seen.add(disk_name)
            mode = disk.choice("snapshot", DISK_MODES)
            source = driver = None
            src = disk.child("source")
            if src is not None:
                source = src.attr("file")
                src.ignore("dev", "index")
                src.finish()
            drv = disk.child("driver")
            if drv is not None:
                driver = drv.attr("type")
                drv.ignore("metadata_cache")
                drv.finish()
            if src is not None or drv is not None:
                # Only external snapshots say where their new files go.
                mode = mode or "external"
            disk.choice("type", ("file",))  # asvirt makes overlays as files
            if source is not None and mode != "external":
                raise ConfigUnsupportedError(
                    f"unsupported configuration: file '{source}' for disk '{disk_name}' "
                    "requires use of external snapshot mode"
                )
            snap.disks.append(SnapshotDisk(disk_name, mode or "", source, driver))
            disk.finish()
        disks.finish()
    current = False
    if stored:
        state = node.child_text("state")
        if state not in STATES:
            raise XMLError(f"invalid snapshot state '{state}'")
        snap.state = state
        created = node.child("creationTime")
        if created is None:
            raise XMLError("a stored snapshot must have a <creationTime>")
        snap.creation_time = created.to_int(created.text(), "creationTime", minimum=0)
        created.finish()
        parent = node.child("parent")
        if parent is not None:
            snap.parent = parent.child_text("name")
            parent.finish()
        source = text.decode() if isinstance(text, bytes) else text
        for tag in ("domain", "inactiveDomain"):
            if node.child(tag) is None:
                continue
            # Verbatim, as written (quotes and all): a running domain's definition is
            # compared with the one a snapshot holds.
            m = re.search(rf"^  <{tag}[ >].*?^  </{tag}>$", source, re.S | re.M)
            if m is None:
                raise XMLError(f"the snapshot's <{tag}> is not laid out as asvirt writes it")
            raw = _dedent(m.group(0)[2:])
            if tag == "domain":
                snap.domain_xml = raw + "\n"
            else:
                snap.inactive_xml = _renamed(raw, "inactiveDomain", "domain")
        active = node.child_text("active")
        current = active == "1"
    else:
        # Said by the driver, not the user (libvirt reads them only to redefine a snapshot).
        node.ignore("state", "creationTime", "parent", "domain", "active", "cookie")
        node.ignore("inactiveDomain")
    node.finish()
    return snap, current


__all__ = [
    "DISK_MODES",
    "MEMORY_MODES",
    "STATES",
    "SnapshotDef",
    "SnapshotDisk",
    "parse_snapshot_xml",
]
