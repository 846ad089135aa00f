"""``<sysinfo>`` (the SMBIOS tables a guest reads, or fw_cfg entries) and ``<iothreads>``,
parsed and written as libvirt does."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import XMLError
from .xmlnode import Node, XElem

#: SMBIOS table -> the entry names libvirt knows for it (in libvirt's order).
SMBIOS_ENTRIES = {
    "bios": ("vendor", "version", "date", "release"),
    "system": ("manufacturer", "product", "version", "serial", "uuid", "sku", "family"),
    "baseBoard": ("manufacturer", "product", "version", "serial", "asset", "location"),
    "chassis": ("manufacturer", "version", "serial", "asset", "sku"),
}


@dataclass(slots=True)
class SysInfo:
    """``<sysinfo type='smbios'|'fwcfg'>``."""

    type: str = "smbios"
    #: smbios: table -> list of (entry name, value); baseBoard may repeat, so each table
    #: holds a list of tables.
    tables: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    oem_strings: list[str] = field(default_factory=list)
    #: fwcfg: (name, value, file) entries.
    fwcfg: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def format_xml(self, parent: XElem) -> None:
        el = parent.add("sysinfo", {"type": self.type})
        for table in SMBIOS_ENTRIES:
            for entries in self.tables.get(table, []):
                tel = el.add(table)
                for name, value in entries:
                    tel.add("entry", {"name": name}, text=value)
        if self.oem_strings:
            oem = el.add("oemStrings")
            for oem_value in self.oem_strings:
                oem.add("entry", text=oem_value)
        for fw_name, fw_value, fw_file in self.fwcfg:
            el.add("entry", {"name": fw_name, "file": fw_file}, text=fw_value)


def parse_sysinfo(node: Node) -> SysInfo:
    kind = node.choice("type", ("smbios", "fwcfg"))
    if kind is None:
        raise XMLError("missing attribute 'type' of <sysinfo>")
    info = SysInfo(type=kind)
    if kind == "fwcfg":
        for en in node.children("entry"):
            name = en.required("name")
            if not name.startswith("opt/") or len(name) > 55:
                raise XMLError(f"fw_cfg entry '{name}' must be 'opt/...' (at most 55 characters)")
            file = en.attr("file")
            if file is not None and not file.startswith("/"):
                raise XMLError(f"fw_cfg file '{file}' must be an absolute path")
            value = en.el.text or None
            if (file is None) == (value is None):
                raise XMLError(f"fw_cfg entry '{name}' needs either a value or a file")
            en.finish()
            info.fwcfg.append((name, value, file))
        node.finish()
        return info
    for table, allowed in SMBIOS_ENTRIES.items():
        for tn in node.children(table):
            entries: list[tuple[str, str]] = []
            for en in tn.children("entry"):
                entry = en.choice("name", allowed)
                if entry is None:
                    raise XMLError(f"missing attribute 'name' of {en.where}")
                entries.append((entry, en.el.text or ""))
                en.finish()
            tn.finish()
            if table != "baseBoard" and table in info.tables:
                raise XMLError(f"<sysinfo> has more than one <{table}>")
            info.tables.setdefault(table, []).append(entries)
    oem = node.child("oemStrings")
    if oem is not None:
        for en in oem.children("entry"):
            info.oem_strings.append(en.el.text or "")
            en.finish()
        oem.finish()
    node.finish()
    return info


def parse_iothreads(node: Node) -> tuple[list[int], bool]:
    """The I/O thread ids of ``<iothreads>N</iothreads>`` and ``<iothreadids>`` (and
    whether the ids were given, so that they are written back)."""
    count_node = node.child("iothreads")
    ids_node = node.child("iothreadids")
    count = 0
    if count_node is not None:
        count = count_node.to_int(count_node.text(), "iothreads", minimum=0, maximum=16384)
        count_node.finish()
    ids: list[int] = []
    if ids_node is not None:
        for it in ids_node.children("iothread"):
            tid = it.integer("id", minimum=1, maximum=(1 << 31) - 1)
            if tid is None:
                raise XMLError(f"missing attribute 'id' of {it.where}")
            if tid in ids:
                raise XMLError(f"I/O thread id {tid} is given twice")
            it.finish()
            ids.append(tid)
        ids_node.finish()
    # As libvirt: the count may exceed the ids given; the rest take the lowest free ids.
    nxt = 1
    while len(ids) < count:
        while nxt in ids:
            nxt += 1
        ids.append(nxt)
    return ids, ids_node is not None


__all__ = ["SMBIOS_ENTRIES", "SysInfo", "parse_iothreads", "parse_sysinfo"]
