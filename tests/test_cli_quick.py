"""A one-shot CLI command through a daemon starts as a small client: it prints virsh's output
and imports neither the event loop, the XML stack, the logging stack nor urllib (issue 9:
a one-shot command must feel like virsh; its start-up cost is what a user waits for)."""

from __future__ import annotations

import os
import subprocess
import sys

import asvirt

from .daemon import Daemon
from .guest import REPO, paused_xml

#: Modules (and their submodules) a one-shot `list`, `domstate` or `dominfo` must not import.
FORBIDDEN = (
    "trio",
    "anyio",
    "asyncio",
    "lxml",
    "structlog",
    "msgspec",
    "xml.sax",
    "urllib",
    "email",
    "http",
    "asvirt.drivers.qemu",
    "asvirt.hypervisor",
    "asvirt.connection",
    # What the client's own modules once cost it more than its requests: the dataclasses of
    # the driver API's records (and inspect, ast, dis behind them), shutil for argparse's
    # help width, socket's Python half for one connect.
    "dataclasses",
    "inspect",
    "shutil",
    "socket",
    "base64",
    # typing and what it imports (re, contextlib), argparse (gettext, locale) and json's
    # Python half (re): with them a one-shot command took twice virsh's instructions. The
    # driver API's declaration needs typing: the client reads the table generated from it.
    "typing",
    "re",
    "contextlib",
    "argparse",
    "gettext",
    "locale",
    "json",
    "asvirt.protocol",
    # importlib's package imports warnings; the handles a command on domains does not make
    # (their modules load with the first call that returns one).
    "importlib",
    "warnings",
    "asvirt.storage",
    "asvirt.snapshot",
    "asvirt.network",
    "asvirt.secret",
)


def imported_by(uri: str, *args: str) -> tuple[str, set[str]]:
    """``asvirt -c URI ARGS``'s output and the modules it imported (``-X importtime``). Run
    without site (``-S``, site-packages on PYTHONPATH): a development install's import hook
    imports urllib at start-up, which would hide asvirt's own imports."""
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site_packages)}
    # As the console script runs it (-m would import runpy, and contextlib behind it).
    script = "import sys; from asvirt.cli import process_main; sys.exit(process_main())"
    argv = [sys.executable, "-S", "-X", "importtime", "-c", script, "-c", uri, *args]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return proc.stdout, modules


async def test_one_shot_commands_import_only_what_they_need(caps_cache, test_guest, tmp_path):
    daemon = Daemon(tmp_path / "state", caps_cache=caps_cache).start()
    try:
        async with asvirt.open(daemon.uri) as conn:
            dom = await conn.define_xml(paused_xml(test_guest, tmp_path, "vm1"))
            await dom.start(paused=True)
            await conn.define_xml(paused_xml(test_guest, tmp_path, "vm2"))
            uuid = dom.uuid
        cases = [
            (["list"], " Id   Name   State\n---------------------\n 1    vm1    paused\n\n"),
            (
                ["list", "--all"],
                " Id   Name   State\n-----------------------\n 1    vm1    paused\n"
                " -    vm2    shut off\n\n",
            ),
            (["domstate", "vm1"], "paused\n\n"),
            (["domstate", "--reason", uuid], "paused (user)\n\n"),
        ]
        for args, want in cases:
            out, modules = imported_by(daemon.uri, *args)
            assert out == want, args
            bad = sorted(m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + "."))
            assert not bad, f"asvirt {' '.join(args)} imported {bad}"
        out, modules = imported_by(daemon.uri, "dominfo", "vm1")
        assert out.startswith(f"Id:             1\nName:           vm1\nUUID:           {uuid}\n")
        assert "State:          paused\n" in out
        assert not [m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + ".")]
        async with asvirt.open(daemon.uri) as conn:
            await (await conn.lookup_by_name("vm1")).destroy()
    finally:
        daemon.stop_and_reap()


def test_the_console_script_turns_the_collector_off_before_the_command_line_loads():
    """The console script's entry point lives in asvirt.cli's __init__, which (like asvirt's)
    imports nothing: the cycle collector is off before the command line's modules load."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["asvirt"] == "asvirt.cli:process_main"
    script = "import asvirt.cli, sys; print(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bare = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; print(' '.join(sorted(sys.modules)))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    loaded = subprocess.run(
        [sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(loaded) - set(bare) == {"asvirt", "asvirt.cli"}


def test_a_socket_path_longer_than_an_address_is_reached_without_the_event_loop(tmp_path):
    # The one-shot client connects with socket's C core; a path longer than sun_path's 107
    # bytes goes through fsutil's /proc/self/fd/N form instead of the full client.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    daemon = Daemon(tmp_path / "state", socket_path=deep / "asvirt-sock").start()
    try:
        assert len(os.fsencode(daemon.socket)) > 108
        out, modules = imported_by(daemon.uri, "list", "--all")
        assert out == " Id   Name   State\n--------------------\n\n"
        allowed = {"socket", "contextlib"}  # fsutil's, for that path
        bad = [m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + ".")]
        assert not set(bad) - allowed
    finally:
        daemon.stop_and_reap()


def test_the_command_table_names_what_each_module_registers():
    """asvirt.cli.main imports a command module only for its commands: its table must say
    which module registers which command."""
    from asvirt.cli import main

    main.build_parser()  # imports every command module
    registered = {
        name: fn.__module__.rsplit(".", 1)[1]
        for name, (fn, _) in main._COMMANDS.items()
        if fn.__module__ != main.__name__
    }
    assert registered == main._MODULE_OF


class StandIn:
    """A peer on a real unix socket that answers one connection as told: another daemon's
    answers than asvirtd would give (another protocol version, a failing hello)."""

    def __init__(self, path: str, answers: list[dict[str, object]]) -> None:
        import socket
        import threading

        self.received = b""
        self._answers = answers
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        import json

        conn, _ = self._listener.accept()
        with conn:
            # The one-shot client's first write: its hello and its first request, together.
            self.received = conn.recv(1 << 16)
            conn.sendall(b"".join(json.dumps(a).encode() + b"\n" for a in self._answers))
            while conn.recv(1 << 16):  # until the client closes
                pass

    def join(self) -> None:
        self._thread.join(timeout=30)
        self._listener.close()
        assert not self._thread.is_alive()


def run_cli(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "asvirt", "-c", uri, *args]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_hello_travels_with_the_first_request_and_its_failure_is_reported(tmp_path):
    import json

    path = str(tmp_path / "sock")
    uri = f"qemu+unix:///system?socket={path}"
    listing = {"jsonrpc": "2.0", "id": 2, "result": []}
    hello = {"jsonrpc": "2.0", "id": 1, "result": {"protocol": 1, "hostname": "h"}}
    empty = " Id   Name   State\n--------------------\n\n"
    for answers, want in [
        ([hello, listing], (0, empty, "")),
        ([listing, hello], (0, empty, "")),  # answered in any order, each is found
        (
            [{**hello, "result": {"protocol": 99, "hostname": "h"}}, listing],
            (1, "", f"error: the daemon at {path} speaks another protocol\n"),
        ),
        (
            [
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "error": {"code": 6, "message": "access denied", "data": {"error": "x"}},
                },
                listing,
            ],
            (1, "", "error: access denied\n"),
        ),
    ]:
        peer = StandIn(path, answers)
        try:
            proc = run_cli(uri, "list")
        finally:
            peer.join()
            os.unlink(path)
        lines = [json.loads(line) for line in peer.received.splitlines()]
        assert [m["method"] for m in lines] == ["hello", "list_all_domains"]
        assert (proc.returncode, proc.stdout, proc.stderr) == want


#: The network and storage drivers' modules: a node loads them at open only for a root that
#: has a network or a pool, else when first needed.
SECONDARY = ("asvirt.drivers.network.driver", "asvirt.drivers.storage.driver")


def test_an_embedded_root_without_networks_or_pools_opens_without_their_drivers(tmp_path):
    from .helpers import embed_uri, run_cli

    root = tmp_path / "root"
    uri = embed_uri(root)
    out, modules = imported_by(uri, "list", "--all")
    assert out == " Id   Name   State\n--------------------\n\n"
    assert "asvirt.drivers.qemu.driver" in modules  # the node did open
    assert not [m for m in SECONDARY if m in modules]
    # A pool call loads the storage driver on demand; then the root has a pool, and the
    # next open loads (and takes up) the pool at once, as before.
    images = tmp_path / "images"
    run_cli(root, "pool-define-as", "p1", "dir", "--target", str(images))
    run_cli(root, "pool-build", "p1")
    run_cli(root, "pool-start", "p1")
    out, modules = imported_by(uri, "list", "--all")
    assert "asvirt.drivers.storage.driver" in modules
    assert "asvirt.drivers.network.driver" not in modules
    listed = run_cli(root, "pool-list").stdout
    assert "p1" in listed and "active" in listed
    run_cli(root, "pool-destroy", "p1")
