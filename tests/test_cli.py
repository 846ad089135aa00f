"""The asvirt command line, run as users run it: a separate process per command."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from .guest import TestGuest, wait_for_serial
from .helpers import monitor_path, qemu_pid, raw_qmp, run_cli

pytestmark = [pytest.mark.qemu]


run = run_cli


@pytest.fixture(autouse=True)
def destroy_what_the_cli_started(root: Path) -> Iterator[None]:
    """QEMUs started by a CLI process outlive it: whatever a test leaves running goes."""
    yield
    listed = run(root, "list", check=False).stdout.splitlines()[2:]
    for line in listed:
        if line.split():
            run(root, "destroy", line.split()[1], check=False)


@pytest.fixture
def xml_file(tmp_path: Path, test_guest: TestGuest) -> Path:
    path = tmp_path / "vm1.xml"
    path.write_text(test_guest.xml("vm1", tmp_path / "vm1.serial", domain_type="qemu"))
    return path


def test_define_start_inspect_destroy(root, xml_file):
    assert run(root, "define", str(xml_file)).stdout.startswith("Domain 'vm1' defined from")
    out = run(root, "list", "--all").stdout.splitlines()
    assert out[0].split() == ["Id", "Name", "State"]
    assert out[2].split() == ["-", "vm1", "shut", "off"]
    assert run(root, "start", "vm1", "--paused").stdout.strip() == "Domain 'vm1' started"
    assert run(root, "list").stdout.splitlines()[2].split() == ["1", "vm1", "paused"]
    assert run(root, "domstate", "--reason", "vm1").stdout.strip() == "paused (user)"
    info = dict(
        line.split(":", 1) for line in run(root, "dominfo", "vm1").stdout.splitlines() if line
    )
    assert info["State"].strip() == "paused"
    assert info["Max memory"].strip() == "131072 KiB"
    assert info["Persistent"].strip() == "yes"
    reply = run(root, "qemu-monitor-command", "vm1", '{"execute":"query-status"}').stdout
    assert '"running":false' in reply  # QEMU says "prelaunch": it never ran the guest
    assert "<domain type='qemu' id='1'>" in run(root, "dumpxml", "vm1").stdout
    assert "id=" not in run(root, "dumpxml", "--inactive", "vm1").stdout.splitlines()[0]
    assert run(root, "resume", "vm1").stdout.strip() == "Domain 'vm1' resumed"
    again = run(root, "resume", "vm1", check=False)  # running: fails as virsh on QEMU does
    assert (again.returncode, again.stdout) == (1, "\n")
    assert again.stderr == (
        "error: Failed to resume domain 'vm1'\n"
        "error: Requested operation is not valid: domain is already running\n"
    )
    assert run(root, "destroy", "vm1").stdout.strip() == "Domain 'vm1' destroyed"
    assert run(root, "domstate", "--reason", "vm1").stdout.strip() == "shut off (destroyed)"
    assert run(root, "undefine", "vm1").stdout.strip() == "Domain 'vm1' has been undefined"
    assert run(root, "list", "--all").stdout.splitlines()[2:] == [""]


def test_errors_are_one_line_without_traceback(root, tmp_path, xml_file):
    for args in (
        ("start", "nope"),
        ("define", "/nonexistent.xml"),
        ("define", "/etc/hostname"),
        ("-c", "foo:///bar", "list"),
        ("-c", "qemu:///embed", "list"),
        ("suspend", "vm1"),
    ):
        if args == ("suspend", "vm1"):
            run(root, "define", str(xml_file))
        proc = run(root, *args, check=False)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
        # virsh's two lines where the hypervisor refused: what failed, then its error in
        # libvirt's words
        if args == ("suspend", "vm1"):
            assert lines == [
                "error: Failed to suspend domain 'vm1'",
                "error: Requested operation is not valid: domain 'vm1' is not running",
            ]
        elif args == ("define", "/etc/hostname"):
            assert lines[0] == "error: Failed to define domain from /etc/hostname"
            assert lines[1].startswith("error: XML error: ") and len(lines) == 2
        else:
            assert len(lines) == 1, proc.stderr
        if args[0] != "-c":
            assert proc.stdout == "\n"  # and the empty line virsh prints after any command
    assert (
        "available: qemu:///embed?root=DIR"
        in run(root, "-c", "foo:///x", "list", check=False).stderr
    )


def test_domxml_to_native_prints_the_command_line(root, xml_file):
    argv = run(root, "domxml-to-native", "qemu-argv", str(xml_file)).stdout.strip()
    assert argv.split()[0].endswith("qemu-system-x86_64")
    assert "-no-shutdown" in argv and "guest=vm1" in argv and "-S" in argv.split()
    # Converting starts nothing and defines nothing.
    assert run(root, "list", "--all").stdout.splitlines()[2:] == [""]


def test_event_command_prints_virsh_lines(root, xml_file):
    run(root, "define", str(xml_file))
    # Each CLI command is a process of its own; the root's journal keeps the events between
    # them, numbered, so 'event --since' shows what happened before, even while nobody
    # watched: here a domain that died between two commands.
    run(root, "start", "vm1", "--paused")
    pid = qemu_pid(root, "vm1")
    os.kill(pid, signal.SIGKILL)
    proc = run(root, "event", "--since", "0", "--loop", "--timeout", "1")
    assert proc.stdout.strip().splitlines() == [
        "event 'lifecycle' for domain 'vm1': Defined Added",
        "event 'lifecycle' for domain 'vm1': Started Booted",
        "event 'lifecycle' for domain 'vm1': Suspended Paused",
        "event 'lifecycle' for domain 'vm1': Stopped Failed",
        "event loop timed out",
        "events received: 4",
    ]
    proc = run(root, "event", "--since", "2", "--loop", "--timeout", "0.5", "--seq")
    assert proc.stdout.strip().splitlines()[:2] == [
        "3: event 'lifecycle' for domain 'vm1': Suspended Paused",
        "4: event 'lifecycle' for domain 'vm1': Stopped Failed",
    ]
    proc = run(root, "event", "--timeout", "0.5", "--timestamp", check=False)
    assert proc.stdout == "event loop timed out\nevents received: 0\n\n"
    assert proc.returncode == 1 and proc.stderr == ""  # as virsh: nothing came, no error
    proc = run(root, "event", "--event", "bogus", check=False)
    assert proc.returncode == 1 and "unknown event type" in proc.stderr


def test_desc_and_metadata(root, xml_file):
    """virsh desc and metadata, each a process of its own: what one sets, the next reads
    from the stored configuration; event --event metadata-change tells of each change."""
    run(root, "define", str(xml_file))
    assert run(root, "desc", "vm1").stdout == "No description for domain: vm1\n"
    assert run(root, "desc", "vm1", "--title").stdout == "No title for domain: vm1\n"
    out = run(root, "desc", "vm1", "--new-desc", "A web server").stdout
    assert out == "Domain description updated successfully\n"
    assert run(root, "desc", "vm1", "Front", "end", "--title").stdout == (
        "Domain title updated successfully\n"
    )
    assert run(root, "desc", "vm1").stdout == "A web server\n"
    assert run(root, "desc", "vm1", "--title", "--config").stdout == "Front end\n"
    bad = run(root, "desc", "vm1", "--title", "--new-desc", "a\nb", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: Failed to set new domain title\nerror: ")
    uri = "http://example.org/app"
    bad = run(root, "metadata", "vm1", uri, check=False)
    assert bad.returncode == 1
    assert bad.stderr == "error: metadata not found: Requested metadata element is not present\n"
    bad = run(root, "metadata", "vm1", uri, "--set", "<app/>", check=False)
    assert bad.stderr == "error: namespace key is required when modifying metadata\n"
    out = run(root, "metadata", "vm1", uri, "--key", "app", "--set", '<app tier="web"/>').stdout
    assert out == "Metadata modified\n\n"
    assert run(root, "metadata", "vm1", uri).stdout == '<app tier="web"/>\n\n'
    assert f'<app:app xmlns:app="{uri}" tier="web"/>' in run(root, "dumpxml", "vm1").stdout
    assert run(root, "metadata", "vm1", uri, "--remove").stdout == "Metadata removed\n\n"
    proc = run(
        root, "event", "--since", "0", "--event", "metadata-change", "--loop", "--timeout", "1"
    )
    assert proc.stdout.strip().splitlines() == [
        "event 'metadata-change' for domain 'vm1': type description, uri <null>",
        "event 'metadata-change' for domain 'vm1': type title, uri <null>",
        f"event 'metadata-change' for domain 'vm1': type element, uri {uri}",
        f"event 'metadata-change' for domain 'vm1': type element, uri {uri}",
        "event loop timed out",
        "events received: 4",
    ]
    # domrename: as virsh, the error in libvirt's words on one line.
    assert run(root, "domrename", "vm1", "web").stdout == "Domain successfully renamed\n\n"
    assert run(root, "desc", "web").stdout == "A web server\n"
    bad = run(root, "domrename", "web", "web", check=False)
    assert bad.returncode == 1
    assert bad.stderr == "error: Requested operation is not valid: Can't rename domain to itself\n"


@pytest.mark.guest
async def test_a_guest_that_powers_off_after_the_cli_left_ends_shut_off_shutdown(
    root, xml_file, tmp_path
):
    # 'asvirt shutdown' returns once the power button is pressed; nobody supervises the
    # QEMU while the guest powers off. The next command must still end it as a shutdown.
    async def cli(*args: str) -> str:
        return (await trio.to_thread.run_sync(lambda: run(root, *args))).stdout.strip()

    await cli("define", str(xml_file))
    await cli("start", "vm1")
    await wait_for_serial(tmp_path / "vm1.serial")
    # Whoever supervises QEMU when the guest powers off sees it go ("Shutdown Finished
    # after guest request"): the 'shutdown' CLI if the guest is quick, the next command if
    # it attaches between the kernel's last words and QEMU's SHUTDOWN. So the button is
    # pressed while the guest is paused, and another tool resumes it once the CLI has left
    # and holds the monitor until QEMU has shut down.
    await cli("suspend", "vm1")
    assert await cli("shutdown", "vm1") == "Domain 'vm1' is being shutdown"
    await raw_qmp(monitor_path(root, "vm1"), {"execute": "cont"}, until="SHUTDOWN")
    assert await cli("domstate", "--reason", "vm1") == "shut off (shutdown)"
    assert await cli("domstate", "--reason", "vm1") == "shut off (shutdown)"
    # 1 Defined, 2 Started, 3 Suspended; then what the second command found and did:
    events = (await cli("event", "--since", "3", "--loop", "--timeout", "0.5")).splitlines()
    assert events == [
        "event 'lifecycle' for domain 'vm1': Shutdown Finished",
        "event 'lifecycle' for domain 'vm1': Stopped Shutdown",
        "event loop timed out",
        "events received: 2",
    ]


def test_capabilities(root):
    out = run(root, "capabilities").stdout
    assert "<capabilities>" in out and "<arch name='x86_64'>" in out.replace('"', "'")
