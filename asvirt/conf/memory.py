"""Guest memory layout: ``<maxMemory>``, NUMA cells (``<cpu><numa>``), ``<numatune>`` and
memory devices (``<memory model='dimm'|'virtio-mem'>``), parsed and written as libvirt does.

libvirt's rule for sizes, kept here: with NUMA cells the initial memory is the sum of the
cells; ``<memory>`` is the initial memory plus every memory device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import XMLError
from .addresses import DimmAddress, PCIAddress, parse_address
from .devices import DeviceBase, _parse_alias
from .units import parse_kib
from .xmlnode import Node, XElem

MEMORY_MODELS = ("dimm", "virtio-mem", "nvdimm", "virtio-pmem", "sgx-epc")
#: Memory devices backed by a host file (``<source><path>``).
FILE_MEMORY_MODELS = ("nvdimm", "virtio-pmem")
NUMATUNE_MODES = ("strict", "preferred", "interleave", "restrictive")


@dataclass(slots=True)
class NUMACell:
    """``<cell id=... cpus=... memory=...>`` of ``<cpu><numa>``."""

    id: int
    cpus: str | None
    memory_kib: int
    mem_access: str | None = None  # shared | private
    discard: bool | None = None

    def format_xml(self, parent: XElem) -> None:
        parent.add(
            "cell",
            {
                "id": self.id,
                "cpus": self.cpus,
                "memory": self.memory_kib,
                "unit": "KiB",
                "memAccess": self.mem_access,
                "discard": self.discard,
            },
        )


def parse_numa(node: Node, parse_cpuset: object) -> list[NUMACell]:
    """The cells of ``<numa>``, in id order (ids must be 0, 1, 2...)."""
    cells: list[NUMACell] = []
    for cn in node.children("cell"):
        cid = cn.integer("id", minimum=0, maximum=255)
        cpus = cn.attr("cpus")
        if cpus is not None and cpus != "":
            parse_cpuset(cpus)  # type: ignore[operator]
        mem = cn.attr("memory")
        if mem is None:
            raise XMLError(f"missing attribute 'memory' of {cn.where}")
        cell = NUMACell(
            id=len(cells) if cid is None else cid,
            cpus=cpus or None,
            memory_kib=parse_kib(mem, cn.attr("unit"), what="NUMA cell memory"),
            mem_access=cn.choice("memAccess", ("shared", "private")),
            discard=cn.yesno("discard"),
        )
        cn.finish()
        cells.append(cell)
    node.finish()
    cells.sort(key=lambda c: c.id)
    if [c.id for c in cells] != list(range(len(cells))):
        raise XMLError("NUMA cell ids must be 0, 1, 2... each once")
    return cells


@dataclass(slots=True)
class MemNode:
    """``<numatune><memnode cellid=... mode=... nodeset=...>``."""

    cellid: int
    mode: str
    nodeset: str


@dataclass(slots=True)
class NUMATune:
    """``<numatune>``: which host NUMA nodes back guest memory."""

    mode: str | None = None
    nodeset: str | None = None
    memnodes: list[MemNode] = field(default_factory=list)
    #: ``<memory placement='auto'>``: the nodes numad advises at start (``nodeset`` in the
    #: running definition, not shown).
    placement_auto: bool = False

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("numatune")
        if self.placement_auto:
            el.add("memory", {"mode": self.mode, "placement": "auto"})
        elif self.mode is not None or self.nodeset is not None:
            el.add("memory", {"mode": self.mode, "nodeset": self.nodeset})
        for mn in self.memnodes:
            el.add("memnode", {"cellid": mn.cellid, "mode": mn.mode, "nodeset": mn.nodeset})


def parse_numatune(node: Node, parse_cpuset: object) -> NUMATune:
    nt = NUMATune()
    mem = node.child("memory")
    if mem is not None:
        nt.mode = mem.choice("mode", NUMATUNE_MODES)
        nt.placement_auto = mem.choice("placement", ("static", "auto")) == "auto"
        nt.nodeset = mem.attr("nodeset")
        if nt.placement_auto and nt.nodeset is not None:
            raise XMLError("nodeset for NUMA memory tuning must not be given with placement='auto'")
        if nt.nodeset is not None:
            parse_cpuset(nt.nodeset)  # type: ignore[operator]
        mem.finish()
    for mn in node.children("memnode"):
        cellid = mn.integer("cellid", minimum=0, maximum=255)
        mode = mn.choice("mode", NUMATUNE_MODES)
        nodeset = mn.attr("nodeset")
        if cellid is None or nodeset is None:
            raise XMLError(f"{mn.where} needs a cellid and a nodeset")
        parse_cpuset(nodeset)  # type: ignore[operator]
        mn.finish()
        if any(m.cellid == cellid for m in nt.memnodes):
            raise XMLError(f"<memnode cellid='{cellid}'> is given twice")
        nt.memnodes.append(MemNode(cellid, mode or "strict", nodeset))
    node.finish()
    return nt


@dataclass(slots=True)
class MemoryDevice(DeviceBase):
    """``<memory model=...>``: a DIMM or a virtio-mem device, plugged into ``<maxMemory>``."""

    model: str = "dimm"
    size_kib: int = 0
    node: int | None = None
    #: virtio-mem: the granularity it plugs memory in, and how much the guest should have.
    block_kib: int | None = None
    requested_kib: int | None = None
    access: str | None = None  # shared | private
    discard: bool | None = None
    #: nvdimm, virtio-pmem: ``<source><path>``, the host file behind the device, with its
    #: ``<alignsize>`` and ``<pmem/>`` (the file is on real persistent memory).
    path: str | None = None
    align_kib: int | None = None
    pmem: bool = False
    #: nvdimm: ``<target><label><size>`` (the namespace label area) and ``<readonly/>``.
    label_kib: int | None = None
    readonly: bool = False
    #: virtio-pmem: ``<target><address base=...>``, where it maps in guest memory.
    target_base: int | None = None

    @property
    def in_ram(self) -> bool:
        """Whether it is part of the guest's ``<memory>`` (an SGX enclave page cache is not:
        the guest cannot use it as RAM)."""
        return self.model != "sgx-epc"

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add(
            "memory", {"model": self.model, "access": self.access, "discard": self.discard}
        )
        if self.path is not None:
            src = el.add("source")
            src.add("path", text=self.path)
            if self.align_kib is not None:
                src.add("alignsize", {"unit": "KiB"}, text=str(self.align_kib))
            if self.pmem:
                src.add("pmem")
        tgt = el.add("target")
        tgt.add("size", {"unit": "KiB"}, text=str(self.size_kib))
        if self.node is not None:
            tgt.add("node", text=str(self.node))
        if self.label_kib is not None:
            tgt.add("label").add("size", {"unit": "KiB"}, text=str(self.label_kib))
        if self.block_kib is not None:
            tgt.add("block", {"unit": "KiB"}, text=str(self.block_kib))
        if self.requested_kib is not None:
            tgt.add("requested", {"unit": "KiB"}, text=str(self.requested_kib))
        if self.readonly:
            tgt.add("readonly")
        if self.target_base is not None:
            tgt.add("address", {"base": f"{self.target_base:#x}"})
        self._format_tail(el, live)


def parse_memory_device(node: Node) -> MemoryDevice:
    model = node.choice("model", MEMORY_MODELS)
    if model is None:
        raise XMLError("missing attribute 'model' of <memory>")
    md = MemoryDevice(
        model=model,
        access=node.choice("access", ("shared", "private")),
        discard=node.yesno("discard"),
    )
    src = node.child("source")
    if src is not None:
        if model not in FILE_MEMORY_MODELS:
            raise node.unsupported("<source> (only nvdimm and virtio-pmem memory has a file)")
        md.path = src.child_text("path")
        if md.path is None or not md.path.startswith("/"):
            raise XMLError(f"{src.where} needs an absolute <path>")
        align = src.child("alignsize")
        if align is not None:
            md.align_kib = parse_kib(align.text(), align.attr("unit"), what="alignsize")
            align.finish()
        pmem = src.child("pmem")
        if pmem is not None:
            pmem.finish()
            md.pmem = True
        src.finish()
    elif model in FILE_MEMORY_MODELS:
        raise XMLError(f"<memory model='{model}'> needs <source><path>, the file behind it")
    tgt = node.child("target")
    if tgt is None:
        raise XMLError("missing <target> of <memory>")
    size = tgt.child("size")
    if size is None:
        raise XMLError(f"missing <size> of {tgt.where}")
    md.size_kib = parse_kib(size.text(), size.attr("unit"), what="memory device size")
    size.finish()
    nd = tgt.child_text("node")
    if nd is not None:
        md.node = tgt.to_int(nd, "NUMA node", minimum=0, maximum=255)
    for tag in ("block", "requested"):
        sub = tgt.child(tag)
        if sub is not None:
            if model != "virtio-mem":
                raise XMLError(f"<{tag}> is for virtio-mem memory")
            setattr(md, f"{tag}_kib", parse_kib(sub.text(), sub.attr("unit"), what=tag))
            sub.finish()
    label = tgt.child("label")
    if label is not None:
        if model != "nvdimm":
            raise XMLError("<label> is for nvdimm memory")
        lsize = label.child("size")
        if lsize is None:
            raise XMLError(f"missing <size> of {label.where}")
        md.label_kib = parse_kib(lsize.text(), lsize.attr("unit"), what="label size")
        lsize.finish()
        label.finish()
    ro = tgt.child("readonly")
    if ro is not None:
        if model != "nvdimm":
            raise XMLError("<readonly/> is for nvdimm memory")
        ro.finish()
        md.readonly = True
    base = tgt.child("address")
    if base is not None:
        if model != "virtio-pmem":
            raise tgt.unsupported("<address> (only virtio-pmem memory is placed so)")
        md.target_base = base.integer("base", minimum=0, maximum=(1 << 64) - 1, hex_ok=True)
        if md.target_base is None:
            raise XMLError(f"missing attribute 'base' of {base.where}")
        base.finish()
    tgt.finish()
    if md.size_kib == 0:
        raise XMLError("a memory device needs a size")
    _parse_alias(node, md)
    slotted = model in ("dimm", "nvdimm")
    md.address = parse_address(
        node, (DimmAddress,) if slotted else (PCIAddress,) if model != "sgx-epc" else ()
    )
    node.finish()
    return md


__all__ = [
    "MemNode",
    "MemoryDevice",
    "NUMACell",
    "NUMATune",
    "parse_memory_device",
    "parse_numa",
    "parse_numatune",
]
