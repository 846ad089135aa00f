"""The device commands of the CLI (attach-disk, domblklist, edit...), each run as a user runs
it: a process of its own on an embed root, against a real paused QEMU (every command opens
the root afresh, so each also re-attaches to QEMU and reads its live XML back)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .guest import TestGuest, paused_xml
from .helpers import disk_xml, qemu_img, qemu_nbd, run_cli

pytestmark = [pytest.mark.qemu]

SCSI = "<controller type='scsi' model='virtio-scsi'/>"
EMPTY_CD = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"


@pytest.fixture
def vm(root: Path, fast_config: Path, test_guest: TestGuest, tmp_path: Path):
    """A paused vm1 with a virtio disk, a SCSI controller and an empty CD-ROM drive."""
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "16M")
    xml = tmp_path / "vm1.xml"
    devices = SCSI + disk_xml(tmp_path / "a.qcow2", "vda") + EMPTY_CD
    xml.write_text(paused_xml(test_guest, tmp_path, devices=devices))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "vm1", "--paused")
    yield root
    run_cli(root, "destroy", "vm1", check=False)


def test_disks_attached_listed_and_detached(vm: Path, tmp_path: Path):
    disk = tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", disk, "16M")
    out = run_cli(vm, "attach-disk", "vm1", str(disk), "sdb", "--subdriver", "qcow2").stdout
    assert out == "Disk attached successfully\n\n"
    rows = [line.split() for line in run_cli(vm, "domblklist", "vm1").stdout.splitlines()[2:]]
    # libvirt's order: by bus, the first disk of a new bus last.
    assert rows == [["vda", str(tmp_path / "a.qcow2")], ["hdc", "-"], ["sdb", str(disk)], []]
    details = run_cli(vm, "domblklist", "vm1", "--details").stdout.splitlines()
    assert details[0].split() == ["Type", "Device", "Target", "Source"]
    assert details[3].split() == ["file", "cdrom", "hdc", "-"]
    assert details[4].split() == ["file", "disk", "sdb", str(disk)]
    # Live only (the default for a running domain): the configuration has no sdb.
    inactive = run_cli(vm, "domblklist", "vm1", "--inactive").stdout
    assert "sdb" not in inactive
    assert run_cli(vm, "detach-disk", "vm1", "sdb").stdout == "Disk detached successfully\n\n"
    assert "sdb" not in run_cli(vm, "domblklist", "vm1").stdout
    # --persistent: the running domain and its configuration.
    run_cli(vm, "attach-disk", "vm1", str(disk), "sdc", "--subdriver", "qcow2", "--persistent")
    assert "sdc" in run_cli(vm, "domblklist", "vm1").stdout
    assert "sdc" in run_cli(vm, "domblklist", "vm1", "--inactive").stdout
    bad = run_cli(vm, "attach-disk", "vm1", str(disk), "sdc", check=False)
    assert bad.returncode == 1
    assert bad.stderr == "error: target sdc already exists\n"
    missing = run_cli(vm, "detach-disk", "vm1", "sdq", check=False)
    assert missing.returncode == 1 and "sdq" in missing.stderr


def test_domblklist_table(vm: Path, tmp_path: Path):
    out = run_cli(vm, "domblklist", "vm1").stdout
    src = str(tmp_path / "a.qcow2")
    width = max(len("Source"), len(src))
    assert out == (
        " Target   Source\n"
        + "-" * (6 + 3 + width + 3)  # as vsh-table.c rules it
        + "\n"
        + f" vda      {src}\n"
        + " hdc      -\n\n"
    )


def test_network_disks_are_listed_by_name_as_virsh_does(vm: Path, tmp_path: Path):
    image, sock = tmp_path / "served.raw", tmp_path / "nbd.sock"
    qemu_img("create", "-q", "-f", "raw", image, "8M")
    dev = tmp_path / "net.xml"
    dev.write_text(
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='nbd' name='export'><host transport='unix' socket='{sock}'/>"
        "</source><target dev='sdb' bus='scsi'/></disk>"
    )
    with qemu_nbd(image, "raw", socket=sock):
        run_cli(vm, "attach-device", "vm1", str(dev))
        details = run_cli(vm, "domblklist", "vm1", "--details").stdout.splitlines()
        assert details[4].split() == ["network", "disk", "sdb", "export"]
        # SCSI disks go at once, with no guest to ask.
        out = run_cli(vm, "detach-device", "vm1", str(dev)).stdout
        assert out == "Device detached successfully\n\n"
    assert "sdb" not in run_cli(vm, "domblklist", "vm1").stdout


def test_attach_device_from_a_file_and_config_only(vm: Path, tmp_path: Path):
    disk = tmp_path / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", disk, "16M")
    dev = tmp_path / "disk.xml"
    dev.write_text(disk_xml(disk, "sdd", bus="scsi"))
    out = run_cli(vm, "attach-device", "vm1", str(dev), "--config").stdout
    assert out == "Device attached successfully\n\n"
    assert "sdd" not in run_cli(vm, "domblklist", "vm1").stdout
    assert "sdd" in run_cli(vm, "domblklist", "vm1", "--inactive").stdout
    out = run_cli(vm, "detach-device", "vm1", str(dev), "--config").stdout
    assert out == "Device detached successfully\n\n"
    assert "sdd" not in run_cli(vm, "domblklist", "vm1", "--inactive").stdout


def test_interfaces_attached_listed_and_their_link_updated(vm: Path, tmp_path: Path):
    mac = "52:54:00:aa:bb:cc"
    out = run_cli(vm, "attach-interface", "vm1", "user", "--model", "virtio", "--mac", mac)
    assert out.stdout == "Interface attached successfully\n\n"
    lines = run_cli(vm, "domiflist", "vm1").stdout.splitlines()
    assert lines[0].split() == ["Interface", "Type", "Source", "Model", "MAC"]
    assert lines[2].split() == ["-", "user", "-", "virtio", mac]
    assert run_cli(vm, "domiflist", "vm1", "--inactive").stdout.count(mac) == 0
    nic = tmp_path / "nic.xml"
    nic.write_text(f"<interface type='user'><mac address='{mac}'/><link state='down'/></interface>")
    assert run_cli(vm, "update-device", "vm1", str(nic)).stdout == (
        "Device updated successfully\n\n"
    )
    assert "<link state='down'/>" in run_cli(vm, "dumpxml", "vm1").stdout
    # In the configuration only: attached there, detached from there.
    other = "52:54:00:aa:bb:dd"
    run_cli(vm, "attach-interface", "vm1", "user", "--mac", other, "--config")
    assert other in run_cli(vm, "domiflist", "vm1", "--inactive").stdout
    out = run_cli(vm, "detach-interface", "vm1", "user", "--mac", other, "--config").stdout
    assert out == "Interface detached successfully\n\n"
    assert other not in run_cli(vm, "domiflist", "vm1", "--inactive").stdout


def test_change_media(vm: Path, tmp_path: Path):
    iso = tmp_path / "media.iso"
    iso.write_bytes(bytes(2048 * 16))
    out = run_cli(vm, "change-media", "vm1", "hdc", str(iso), "--insert").stdout
    assert out == "Successfully inserted media.\n\n"
    assert f" hdc      {iso}" in run_cli(vm, "domblklist", "vm1").stdout
    again = run_cli(vm, "change-media", "vm1", "hdc", str(iso), "--insert", check=False)
    assert again.returncode == 1
    out = run_cli(vm, "change-media", "vm1", "hdc", "--eject").stdout
    assert out == "Successfully ejected media.\n\n"
    assert " hdc      -" in run_cli(vm, "domblklist", "vm1").stdout


def test_change_media_of_a_floppy(root: Path, fast_config: Path, test_guest, tmp_path: Path):
    one, two = tmp_path / "one.img", tmp_path / "two.img"
    for path in (one, two):
        qemu_img("create", "-q", "-f", "raw", path, "1440K")
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "16M")
    floppy = (
        f"<disk type='file' device='floppy'><source file='{one}'/><target dev='fda'/></disk>"
        + disk_xml(tmp_path / "a.qcow2", "vda")
    )
    xml = tmp_path / "vm2.xml"
    xml.write_text(paused_xml(test_guest, tmp_path, name="vm2", devices=floppy))
    run_cli(root, "define", str(xml))
    run_cli(root, "start", "vm2", "--paused")
    try:
        out = run_cli(root, "change-media", "vm2", "fda", str(two), "--update").stdout
        assert out == "Successfully updated media.\n\n"
        assert f" fda      {two}" in run_cli(root, "domblklist", "vm2").stdout
        assert f" fda      {one}" in run_cli(root, "domblklist", "vm2", "--inactive").stdout
        out = run_cli(root, "change-media", "vm2", "fda", "--eject", "--live", "--config").stdout
        assert out == "Successfully ejected media.\n\n"
        out = run_cli(root, "change-media", "vm2", "fda", str(one), "--insert", "--live").stdout
        assert out == "Successfully inserted media.\n\n"
        assert f" fda      {one}" in run_cli(root, "domblklist", "vm2").stdout
        plain = run_cli(root, "change-media", "vm2", "vda", str(two), check=False)
        assert plain.returncode == 1
        assert "The disk device 'vda' is not removable" in plain.stderr
    finally:
        run_cli(root, "destroy", "vm2", check=False)


def editor(tmp_path: Path, script: str) -> dict[str, str]:
    path = tmp_path / "editor.sh"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return {"EDITOR": str(path)}


def test_edit(vm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    before = run_cli(vm, "dumpxml", "vm1", "--inactive").stdout
    monkeypatch.setenv("EDITOR", "true")
    assert run_cli(vm, "edit", "vm1").stdout == "Domain 'vm1' XML configuration not changed.\n\n"
    # Bad XML is refused before anything is stored.
    for script in ("echo '<domain' > \"$1\"", "sed -i 's|<name>vm1<|<name>vm2<|' \"$1\""):
        monkeypatch.setenv("EDITOR", editor(tmp_path, script)["EDITOR"])
        bad = run_cli(vm, "edit", "vm1", check=False)
        assert bad.returncode == 1 and bad.stderr.startswith("error: ")
        assert run_cli(vm, "dumpxml", "vm1", "--inactive").stdout == before
        assert "vm2" not in run_cli(vm, "list", "--all").stdout
    monkeypatch.setenv(
        "EDITOR",
        editor(tmp_path, "sed -i 's|<on_crash>destroy<|<on_crash>restart<|' \"$1\"")["EDITOR"],
    )
    assert run_cli(vm, "edit", "vm1").stdout == "Domain 'vm1' XML configuration edited.\n\n"
    assert "<on_crash>restart</on_crash>" in run_cli(vm, "dumpxml", "vm1", "--inactive").stdout
    assert os.listdir(tmp_path).count("editor.sh") == 1
