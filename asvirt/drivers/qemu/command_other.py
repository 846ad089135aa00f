"""Command-line arguments of the rarer x86 devices: IOMMUs, vsock, ivshmem, panic devices and
RNGs, as libvirt builds them (ids, JSON ``-device`` and ``-object`` properties).

Called by :class:`~asvirt.drivers.qemu.command._Builder`; each function appends to its argv.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ...conf.devices import virtio_props
from ...conf.domain import parse_cpuset
from . import command_extra as extra
from .hostsmbios import host_smbios
from .membacking import backend_props, memory_backend
from .postparse_other import RNG_DEVICE, SMARTCARD_DEVICE, VSOCK_DEVICE

if TYPE_CHECKING:
    from ...conf.domain import DomainDef
    from .command import _Builder


def _json(props: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in props.items() if v is not None}, separators=(",", ":"))


def _kv(value: str) -> str:
    return value.replace(",", ",,")


#: ``<iommu><driver>`` attribute -> intel-iommu property.
_INTEL_IOMMU_PROPS = {
    "intremap": "intremap",
    "caching_mode": "caching-mode",
    "eim": "eim",
    "iotlb": "device-iotlb",
}


def intel_iommu_args(b: _Builder) -> None:
    """The intel-iommu comes before every PCI device: QEMU wires them up as they are created."""
    io = b.d.iommu
    if io is not None and io.model == "intel":
        props: dict[str, Any] = {"driver": "intel-iommu", "id": io.alias}
        for name, value in io.driver.items():
            # intremap and eim are OnOffAuto properties; the others are booleans.
            on = value == "on"
            props[_INTEL_IOMMU_PROPS[name]] = value if name in ("intremap", "eim") else on
        props["aw-bits"] = io.aw_bits
        b.device(props)


def virtio_iommu_args(b: _Builder) -> None:
    """The virtio-iommu sits on a PCI bus (after its controllers), before the other devices."""
    io = b.d.iommu
    if io is not None and io.model == "virtio":
        b.device(b._pci({"driver": "virtio-iommu-pci", "id": io.alias}, io.address, "the IOMMU"))


def auto_cid(d: DomainDef) -> int:
    """The context id of a ``<cid auto='yes'>`` vsock: stable per domain, never a reserved one.

    libvirt probes ``/dev/vhost-vsock`` for a free id; asvirt takes one from the UUID (2^32
    choices), so the id is the same at every start and known before QEMU runs.
    """
    digest = int.from_bytes(hashlib.sha256(d.uuid.encode()).digest()[:4], "big")
    return 3 + digest % ((1 << 32) - 4)


def vsock_args(b: _Builder) -> None:
    vs = b.d.vsock
    if vs is None:
        return
    cid = vs.cid if vs.cid is not None else auto_cid(b.d)
    props: dict[str, Any] = {
        "driver": VSOCK_DEVICE[vs.model or "virtio"],
        "id": vs.alias,
        "guest-cid": cid,
    }
    b.device(b._pci(props, vs.address, "the vsock device"))


def shmem_args(b: _Builder) -> None:
    for i, sh in enumerate(b.d.shmems):
        props: dict[str, Any] = {"driver": sh.model, "id": sh.alias}
        if sh.model == "ivshmem-plain":
            mem = f"shmmem-{sh.alias}"
            b.add(
                "-object",
                _json(
                    {
                        "qom-type": "memory-backend-file",
                        "id": mem,
                        "mem-path": f"/dev/shm/{sh.name}",
                        "size": (sh.size_kib or 0) * 1024,
                        "share": True,
                    }
                ),
            )
            props["memdev"] = mem
        else:
            cid = f"char{sh.alias}"
            b.add("-chardev", f"socket,id={cid},path={_kv(sh.server_path or '')}")
            props["chardev"] = cid
            props["vectors"] = sh.msi_vectors
            if sh.msi_ioeventfd is not None:
                props["ioeventfd"] = sh.msi_ioeventfd == "on"
        if sh.role is not None:
            props["master"] = "on" if sh.role == "master" else "off"
        b.device(b._pci(props, sh.address, f"shmem {i}"))


def panic_args(b: _Builder) -> None:
    for panic in b.d.panics:
        if panic.model == "isa":
            props: dict[str, Any] = {"driver": "pvpanic"}
            addr = panic.address
            if addr is not None and addr.iobase is not None:  # type: ignore[union-attr]
                props["ioport"] = addr.iobase  # type: ignore[union-attr]
            b.device(props)
        elif panic.model == "pvpanic":
            b.device(b._pci({"driver": "pvpanic-pci"}, panic.address, "the PCI panic device"))
        # hyperv: hv-crash on the -cpu (cpu_options)


def rng_args(b: _Builder) -> None:
    for i, rng in enumerate(b.d.rngs):
        obj = f"obj{rng.alias}"
        if rng.backend == "builtin":
            b.add("-object", _json({"qom-type": "rng-builtin", "id": obj}))
        elif rng.backend == "egd":
            cid = f"char{rng.alias}"
            if rng.egd_type == "tcp":
                opts = [f"socket,id={cid},host={rng.egd_host or ''},port={rng.egd_service}"]
                opts += b.socket_tls(cid, None, server=rng.egd_mode == "bind")
            else:
                opts = [f"socket,id={cid},path={_kv(rng.egd_path or '')}"]
            if rng.egd_mode == "bind":
                opts.append("server=on,wait=off")
            b.add("-chardev", ",".join(opts))
            b.add("-object", _json({"qom-type": "rng-egd", "id": obj, "chardev": cid}))
        else:
            b.add(
                "-object",
                _json({"qom-type": "rng-random", "id": obj, "filename": rng.backend_path}),
            )
        props: dict[str, Any] = {"driver": RNG_DEVICE[rng.model], "rng": obj, "id": rng.alias}
        if rng.rate_bytes is not None:
            props["max-bytes"] = rng.rate_bytes
            props["period"] = rng.rate_period or 1000
        props.update(virtio_props(rng.virtio))
        b.device(b._pci(props, rng.address, f"rng {i}"))


def smartcard_args(b: _Builder) -> None:
    d = b.d
    for ctl in d.controllers:
        if ctl.type == "ccid":
            reader_props = {"driver": "usb-ccid", "id": ctl.alias}
            b.device(b._usb(reader_props, ctl.address, f"CCID controller {ctl.index}"))
    for i, sc in enumerate(d.smartcards):
        reader = d.controller("ccid", getattr(sc.address, "controller", 0))
        props: dict[str, Any] = {"driver": SMARTCARD_DEVICE[sc.mode]}
        if sc.mode == "host":
            props["backend"] = "nss-emulated"
        elif sc.mode == "host-certificates":
            props["backend"] = "certificates"
            for n, cert in enumerate(sc.certificates, start=1):
                props[f"cert{n}"] = cert
            props["db"] = sc.database or "/etc/pki/nssdb"
        else:
            cid = f"char{sc.alias}"
            if sc.type == "spicevmc":
                b.add("-chardev", f"spicevmc,id={cid},name=smartcard")
            else:
                bind = sc.source_mode == "bind"
                opts = [f"socket,id={cid},host={sc.host or ''},port={sc.service}"]
                opts += b.socket_tls(cid, None, server=bind)
                b.add("-chardev", ",".join(opts) + (",server=on,wait=off" if bind else ""))
            props["chardev"] = cid
        props["id"] = sc.alias
        props["bus"] = f"{reader.alias if reader else f'ccid{i}'}.0"
        b.device(props)


def redir_filter(d: DomainDef) -> str | None:
    """usb-redir's ``filter`` property for the domain's ``<redirfilter>`` (None: none)."""
    if d.redirfilter is None or not d.redirfilter.rules:
        return None
    return "|".join(rule.qemu() for rule in d.redirfilter.rules)


# -- SMBIOS, fw_cfg, the VM generation id, I/O threads --------------------------------------------

#: SMBIOS table number of each ``<sysinfo>`` table.
_SMBIOS_TYPE = {"bios": 0, "system": 1, "baseBoard": 2, "chassis": 3}


def system_args(b: _Builder) -> None:
    d = b.d
    for tid in d.iothread_ids:
        b.add("-object", _json({"qom-type": "iothread", "id": f"iothread{tid}"}))
    for info in d.sysinfos:
        if info.type == "fwcfg":
            for name, value, file in info.fwcfg:
                what = f"file={_kv(file)}" if file is not None else f"string={_kv(value or '')}"
                b.add("-fw_cfg", f"name={name},{what}")
        elif d.os.smbios_mode == "sysinfo":
            _smbios_args(b, info.tables)
            for value in info.oem_strings:
                b.add("-smbios", f"type=11,value={_kv(value)}")
    if d.os.smbios_mode == "host":
        # libvirt's host mode: the host's BIOS and system tables, the UUID left to QEMU
        # (the domain's own), read when the command line is built, i.e. at start.
        _smbios_args(b, {table: [entries] for table, entries in host_smbios().items()})
    if d.genid is not None:
        b.device({"driver": "vmgenid", "guid": d.genid, "id": "vmgenid0"})


def _smbios_args(b: _Builder, tables: dict[str, list[list[tuple[str, str]]]]) -> None:
    for table, number in _SMBIOS_TYPE.items():
        for entries in tables.get(table, []):
            opts = [f"type={number}"]
            opts += [f"{name}={_kv(value)}" for name, value in entries if value]
            if len(opts) > 1:
                b.add("-smbios", ",".join(opts))


# -- memory: NUMA cells, DIMMs, virtio-mem ------------------------------------------------------

#: ``<numatune>`` mode -> QEMU's host-memory policy ('restrictive' sets none: libvirt leaves
#: that one to cgroups).
_NUMA_POLICY = {"strict": "bind", "preferred": "preferred", "interleave": "interleave"}


def memory_size(d: DomainDef) -> str:
    """``-m``: the boot memory, and the hotplug region memory devices go into."""
    size = f"size={-(-d.initial_memory_kib // 1024) * 1024}k"
    if d.max_memory_kib is not None:
        size += f",slots={d.max_memory_slots or 0},maxmem={d.max_memory_kib}k"
    return size


def host_nodes(d: DomainDef, cell: int | None) -> dict[str, Any]:
    """host-nodes and policy of the RAM behind guest NUMA ``cell`` (None: all of RAM)."""
    nt = d.numatune
    if nt is None:
        return {}
    mode, nodeset = nt.mode or "strict", nt.nodeset
    for mn in nt.memnodes:
        if mn.cellid == cell:
            mode, nodeset = mn.mode, mn.nodeset
    if nodeset is None or mode not in _NUMA_POLICY:
        return {}
    return {"host-nodes": sorted(parse_cpuset(nodeset)), "policy": _NUMA_POLICY[mode]}


def needs_ram_object(d: DomainDef) -> bool:
    """Whether guest RAM (without NUMA cells) is an explicit ``pc.ram`` object."""
    if d.cpu is not None and d.cpu.numa:
        return False
    return memory_backend(d) is not None or bool(host_nodes(d, None))


def ram_backend(
    b: _Builder,
    obj_id: str,
    size_kib: int,
    *,
    node: int | None,
    access: str | None = None,
    discard: bool | None = None,
) -> dict[str, Any]:
    """A memory backend object as libvirt builds it from ``<memoryBacking>`` (see
    :mod:`.membacking`) and ``<numatune>``, for guest NUMA node ``node``."""
    d = b.d
    props = backend_props(
        d, obj_id, size_kib, node=node, memory_dir=b.memory_dir, access=access, discard=discard
    )
    props.update(host_nodes(d, node))
    return props


def _cpus_opts(cpus: str) -> str:
    """``cpus=`` ranges of a -numa node (QEMU takes one range per key)."""
    ranges: list[str] = []
    ids = sorted(parse_cpuset(cpus))
    start = prev = ids[0]
    for cpu in [*ids[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(f"cpus={start}" if start == prev else f"cpus={start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return "," + ",".join(ranges)


def numa_args(b: _Builder) -> None:
    d = b.d
    cells = d.cpu.numa if d.cpu is not None else []
    for cell in cells:
        obj = f"ram-node{cell.id}"
        props = ram_backend(
            b, obj, cell.memory_kib, node=cell.id, access=cell.mem_access, discard=cell.discard
        )
        b.add("-object", _json(props))
        cpus = _cpus_opts(cell.cpus) if cell.cpus else ""
        b.add("-numa", f"node,nodeid={cell.id}{cpus},memdev={obj}")


def memory_device_args(b: _Builder) -> None:
    d = b.d
    for i, md in enumerate(d.memory_devices):
        if md.model not in ("dimm", "virtio-mem"):
            extra.memory_device_args(b, i, md)  # file-backed and SGX memory
            continue
        obj = f"mem{md.alias}"
        props = ram_backend(b, obj, md.size_kib, node=md.node, access=md.access, discard=md.discard)
        dev: dict[str, Any] = {"node": md.node}
        if md.model == "virtio-mem":
            props["reserve"] = False  # plugged in blocks as the guest asks: reserve nothing
            # QEMU refuses prealloc with reserve=off: the device preallocates each block it
            # plugs instead, as libvirt has it.
            prealloc = props.pop("prealloc", None)
            dev["prealloc"] = prealloc
            dev.update(
                {
                    "driver": "virtio-mem-pci",
                    "block-size": (md.block_kib or 0) * 1024,
                    "requested-size": (md.requested_kib or 0) * 1024,
                    "memdev": obj,
                    "id": md.alias,
                }
            )
            dev = b._pci(dev, md.address, f"memory device {i}")
        else:
            addr = md.address
            dev.update({"driver": "pc-dimm", "memdev": obj, "id": md.alias})
            dev["slot"] = getattr(addr, "slot", None)
            dev["addr"] = getattr(addr, "base", None)
        b.add("-object", _json(props))
        b.device(dev)


__all__ = [
    "auto_cid",
    "host_nodes",
    "memory_size",
    "needs_ram_object",
    "numa_args",
    "ram_backend",
    "redir_filter",
]
