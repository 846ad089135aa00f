"""The device commands of the CLI, with virsh's names, options and output: ``attach-device``,
``detach-device``, ``update-device``, ``attach-disk``, ``detach-disk``, ``attach-interface``,
``detach-interface``, ``change-media``, ``domblklist``, ``domiflist`` and ``edit``.

The flags are virsh's: ``--live``, ``--config``, ``--current`` (the default: the running
guest if it runs, else the configuration) and ``--persistent`` (the configuration, and the
running guest too if it runs).
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
from collections.abc import Callable
from xml.sax.saxutils import quoteattr

from lxml import etree

import asvirt
from asvirt.calls import ConnectionCalls

from . import render
from .main import _domain, _read_file, command


async def _affect(dom: asvirt.Domain, args: argparse.Namespace) -> tuple[bool, bool]:
    """virsh's --live/--config/--current/--persistent as the API's (live, config)."""
    if args.current and (args.live or args.config or getattr(args, "persistent", False)):
        raise asvirt.InvalidArgError("--current is exclusive with --live, --config, --persistent")
    live, config = args.live, args.config
    if getattr(args, "persistent", False):
        config = True
        live = live or await dom.is_active()
    return live, config


def _attr(name: str, value: str | None) -> str:
    return f" {name}={quoteattr(value)}" if value is not None else ""


def _xml_root(text: str) -> etree._Element:
    return etree.fromstring(text.encode())


# -- whole devices from XML files ----------------------------------------------------------------


@command("attach-device", "attach device from an XML file")
async def cmd_attach_device(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    await dom.attach_device(_read_file(args.file), live=live, config=config)
    print("Device attached successfully\n")
    return 0


@command("detach-device", "detach device from an XML file")
async def cmd_detach_device(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    gone = await dom.detach_device(_read_file(args.file), live=live, config=config)
    print("Device detached successfully\n" if gone else "Device detach request sent successfully\n")
    return 0


@command("update-device", "update device from an XML file")
async def cmd_update_device(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    await dom.update_device(_read_file(args.file), live=live, config=config, force=args.force)
    print("Device updated successfully\n")
    return 0


# -- disks ------------------------------------------------------------------------------------


def _disk_xml(args: argparse.Namespace) -> str:
    source_type = args.sourcetype or (
        "block" if args.source and args.source.startswith("/dev/") else "file"
    )
    device = args.type or "disk"
    key = "dev" if source_type == "block" else "file"
    driver = ""
    if args.driver or args.subdriver or args.cache:
        driver = (
            f"<driver{_attr('name', args.driver or 'qemu')}{_attr('type', args.subdriver)}"
            f"{_attr('cache', args.cache)}/>"
        )
    source = f"<source {key}={quoteattr(args.source)}/>" if args.source else ""
    mode = {"readonly": "<readonly/>", "shareable": "<shareable/>"}.get(args.mode or "", "")
    return (
        f"<disk type={quoteattr(source_type)} device={quoteattr(device)}>{driver}{source}"
        f"<target dev={quoteattr(args.target)}{_attr('bus', args.targetbus)}/>{mode}</disk>\n"
    )


@command("attach-disk", "attach disk device")
async def cmd_attach_disk(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    xml = _disk_xml(args)
    if args.print_xml:
        print(xml)
        return 0
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    await dom.attach_device(xml, live=live, config=config)
    print("Disk attached successfully\n")
    return 0


async def _disk_element(dom: asvirt.Domain, name: str, inactive: bool) -> etree._Element:
    """The ``<disk>`` whose target or source is ``name``, as virsh finds it."""
    for disk in _xml_root(await dom.xml_desc(inactive=inactive)).iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        paths = {source.get("file"), source.get("dev")} if source is not None else set()
        if (target is not None and target.get("dev") == name) or name in paths:
            return disk
    raise asvirt.DeviceMissingError(f"No disk found whose source path or target is {name}")


@command("detach-disk", "detach disk device")
async def cmd_detach_disk(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    disk = await _disk_element(dom, args.target, inactive=config and not live)
    xml = etree.tostring(disk, encoding="unicode")
    gone = await dom.detach_device(xml, live=live, config=config)
    print("Disk detached successfully\n" if gone else "Disk detach request sent successfully\n")
    return 0


@command("change-media", "change media of CD or floppy drive")
async def cmd_change_media(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    action = "eject" if args.eject else "insert" if args.insert else "update"
    if action == "eject" and args.source:
        raise asvirt.InvalidArgError("--eject takes no source")
    if action != "eject" and not args.source:
        raise asvirt.InvalidArgError(f"--{action} needs a source")
    disk = await _disk_element(dom, args.path, inactive=config and not live)
    if disk.get("device") not in ("cdrom", "floppy"):
        raise asvirt.OperationInvalidError(f"The disk device '{args.path}' is not removable")
    current = disk.find("source")
    if action == "insert" and current is not None:
        raise asvirt.OperationFailedError("The disk device already has media")
    if current is not None:
        disk.remove(current)
    if args.source:
        kind = "block" if args.block else "file"
        disk.set("type", kind)
        source = etree.Element("source", {"dev" if kind == "block" else "file": args.source})
        target = disk.find("target")
        assert target is not None
        target.addprevious(source)
    for live_only in ("alias", "address"):
        el = disk.find(live_only)
        if el is not None:
            disk.remove(el)
    xml = etree.tostring(disk, encoding="unicode")
    if args.print_xml:
        print(xml)
        return 0
    await dom.update_device(xml, live=live, config=config, force=args.force)
    done = {"eject": "ejected", "insert": "inserted", "update": "updated"}[action]
    print(f"Successfully {done} media.\n")
    return 0


@command("domblklist", "list all domain blocks")
async def cmd_domblklist(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    rows: list[tuple[str, ...]] = []
    for disk in _xml_root(await dom.xml_desc(inactive=args.inactive)).iterfind("devices/disk"):
        target = disk.find("target")
        source = disk.find("source")
        if source is None:
            where = "-"
        elif disk.get("type") == "volume":
            where = f"{source.get('pool')}/{source.get('volume')}"
        else:
            # A network disk shows its name (export, pool/image...), as virsh does.
            where = source.get("file") or source.get("dev") or source.get("name") or "-"
        dev = target.get("dev", "") if target is not None else ""
        if args.details:
            rows.append((disk.get("type", ""), disk.get("device", ""), dev, where))
        else:
            rows.append((dev, where))
    header = ("Type", "Device", "Target", "Source") if args.details else ("Target", "Source")
    print(render.table(header, rows))
    return 0


# -- interfaces ---------------------------------------------------------------------------------


@command("attach-interface", "attach network interface")
async def cmd_attach_interface(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    kind = args.type
    if kind not in ("network", "bridge", "user"):
        raise asvirt.ConfigUnsupportedError(
            f"unsupported configuration: interface type '{kind}' (use network, bridge or user)"
        )
    if kind != "user" and not args.source:
        raise asvirt.InvalidArgError(f"an interface of type '{kind}' needs a source")
    parts = [f"<interface type={quoteattr(kind)}>"]
    if kind != "user":
        parts.append(
            f"<source {'network' if kind == 'network' else 'bridge'}={quoteattr(args.source)}/>"
        )
    if args.mac:
        parts.append(f"<mac address={quoteattr(args.mac)}/>")
    if args.target:
        parts.append(f"<target dev={quoteattr(args.target)}/>")
    if args.model:
        parts.append(f"<model type={quoteattr(args.model)}/>")
    parts.append("</interface>\n")
    xml = "".join(parts)
    if args.print_xml:
        print(xml)
        return 0
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    await dom.attach_device(xml, live=live, config=config)
    print("Interface attached successfully\n")
    return 0


@command("detach-interface", "detach network interface")
async def cmd_detach_interface(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    live, config = await _affect(dom, args)
    root = _xml_root(await dom.xml_desc(inactive=config and not live))
    found = []
    for nic in root.iterfind("devices/interface"):
        mac = nic.find("mac")
        address = mac.get("address") if mac is not None else None
        if nic.get("type") != args.type:
            continue
        if args.mac and (address or "").lower() != args.mac.lower():
            continue
        found.append(nic)
    if not found:
        raise asvirt.DeviceMissingError(
            f"No interface found whose type is {args.type}"
            + (f" and MAC address is {args.mac}" if args.mac else "")
        )
    if len(found) > 1:
        raise asvirt.OperationFailedError(
            f"Domain has {len(found)} interfaces. Please specify which one to detach using --mac"
        )
    xml = etree.tostring(found[0], encoding="unicode")
    gone = await dom.detach_device(xml, live=live, config=config)
    print(
        "Interface detached successfully\n"
        if gone
        else "Interface detach request sent successfully\n"
    )
    return 0


@command("domiflist", "list all domain virtual interfaces")
async def cmd_domiflist(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    rows = []
    for nic in _xml_root(await dom.xml_desc(inactive=args.inactive)).iterfind("devices/interface"):
        target, source = nic.find("target"), nic.find("source")
        model, mac = nic.find("model"), nic.find("mac")
        src = "-"
        if source is not None:
            src = source.get("network") or source.get("bridge") or "-"
        rows.append(
            (
                target.get("dev", "-") if target is not None else "-",
                nic.get("type", ""),
                src,
                model.get("type", "-") if model is not None else "-",
                mac.get("address", "") if mac is not None else "",
            )
        )
    print(render.table(("Interface", "Type", "Source", "Model", "MAC"), rows))
    return 0


# -- edit ---------------------------------------------------------------------------------------


@command("edit", "edit XML configuration for a domain", needs_loop=True)
async def cmd_edit(conn: ConnectionCalls, args: argparse.Namespace) -> int:
    dom = await _domain(conn, args.domain)
    # With its secrets, as virsh edits it: what is not shown would be lost when stored.
    original = await dom.xml_desc(inactive=True, secure=True)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    fd, path = tempfile.mkstemp(prefix=f"asvirt-{dom.name}-", suffix=".xml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(original)
        import trio

        # The editor has the terminal (stdin too) until it is done.
        proc = await trio.run_process([*shlex.split(editor), path], check=False, stdin=None)
        status = proc.returncode
        if status != 0:
            raise asvirt.OperationFailedError(
                f"the editor '{editor}' exited with status {status}; nothing was changed"
            )
        edited = _read_file(path)
        if edited == original:
            print(f"Domain '{dom.name}' XML configuration not changed.\n")
            return 0
        # Checked as define would check it before anything is stored: bad XML, or XML
        # for another domain, changes nothing.
        normal = await conn.domain_xml_normalize(edited)
        if _name_and_uuid(normal) != (dom.name, dom.uuid):
            raise asvirt.OperationInvalidError(
                "the edited XML names another domain (its <name> and <uuid> must stay); "
                "nothing was changed"
            )
        await conn.define_xml(edited)
    finally:
        os.unlink(path)
    print(f"Domain '{dom.name}' XML configuration edited.\n")
    return 0


def _name_and_uuid(xml: str) -> tuple[str | None, str | None]:
    root = _xml_root(xml)
    return root.findtext("name"), root.findtext("uuid")


# -- arguments ----------------------------------------------------------------------------------


def _affect_flags(p: argparse.ArgumentParser, *, persistent: bool = True) -> None:
    p.add_argument("--live", action="store_true", help="affect running domain")
    p.add_argument("--config", action="store_true", help="affect next boot")
    p.add_argument("--current", action="store_true", help="affect current domain")
    if persistent:
        p.add_argument(
            "--persistent",
            action="store_true",
            help="make live change persistent (the configuration, and the running domain)",
        )


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the device commands' arguments (``add(name, *positional)`` makes a subparser)."""
    for name in ("attach-device", "detach-device", "update-device"):
        p = add(name, "domain", "file")
        _affect_flags(p)
        if name == "update-device":
            p.add_argument("--force", action="store_true", help="force device update")
    p = add("attach-disk", "domain", "source", "target")
    _affect_flags(p)
    p.add_argument("--targetbus", help="target bus of disk device (virtio, scsi, sata, ide)")
    p.add_argument("--driver", help="driver of disk device (qemu)")
    p.add_argument("--subdriver", help="subdriver of disk device (the format: raw, qcow2)")
    p.add_argument("--cache", help="cache mode of disk device")
    p.add_argument("--type", help="target device type (disk, cdrom)")
    p.add_argument("--mode", help="mode of device reading and writing (readonly, shareable)")
    p.add_argument("--sourcetype", help="type of source (file, block)")
    p.add_argument("--print-xml", action="store_true", help="print XML document rather than attach")
    p = add("detach-disk", "domain", "target")
    _affect_flags(p)
    p = add("change-media", "domain", "path")
    p.add_argument("source", nargs="?", help="source of the media")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--eject", action="store_true", help="eject the media")
    what.add_argument("--insert", action="store_true", help="insert the media")
    what.add_argument("--update", action="store_true", help="update the media")
    _affect_flags(p, persistent=False)
    p.add_argument("--force", action="store_true", help="force media changing")
    p.add_argument("--print-xml", action="store_true", help="print XML document rather than change")
    p.add_argument("--block", action="store_true", help="source media is a block device")
    p = add("domblklist", "domain")
    p.add_argument(
        "--inactive", action="store_true", help="get inactive rather than running configuration"
    )
    p.add_argument(
        "--details", action="store_true", help="additionally display the type and device value"
    )
    p = add("attach-interface", "domain", "type")
    p.add_argument("source", nargs="?", help="source of network interface")
    _affect_flags(p)
    p.add_argument("--target", help="target network name")
    p.add_argument("--mac", help="MAC address")
    p.add_argument("--model", help="model type")
    p.add_argument("--print-xml", action="store_true", help="print XML document rather than attach")
    p = add("detach-interface", "domain", "type")
    p.add_argument("--mac", help="MAC address")
    _affect_flags(p)
    p = add("domiflist", "domain")
    p.add_argument(
        "--inactive", action="store_true", help="get inactive rather than running configuration"
    )
    add("edit", "domain")
