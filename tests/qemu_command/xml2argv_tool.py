"""Command-line converter used by the conformance runner in the tests.

    python xml2argv_tool.py --caps-cache DIR [--dumpxml] FILE.xml

prints the QEMU argv asvirt would run for FILE.xml (one shell-quoted line), or with
``--dumpxml`` the XML ``dumpxml`` would show; on a configuration asvirt refuses it prints
one line on stderr and exits 1. It is the CLI's ``domxml-to-native qemu-argv`` without an
embed root, so the conversion can be tested on its own.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import trio

# The asvirt of this checkout, not whichever one the virtualenv installed (a worktree shares
# its virtualenv with the main checkout): a script's sys.path starts at its own directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asvirt.conf.domain import parse_domain_xml
from asvirt.drivers.qemu.capabilities import CapabilitiesCache, find_emulator
from asvirt.drivers.qemu.command import domxml_to_native
from asvirt.drivers.qemu.monitor import monitor_host
from asvirt.drivers.qemu.postparse import prepare_domain
from asvirt.errors import AsvirtError


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--caps-cache", required=True, type=Path)
    ap.add_argument("--dumpxml", action="store_true")
    ap.add_argument("xml", type=Path)
    args = ap.parse_args()
    try:
        xml = args.xml.read_text()
        binary = parse_domain_xml(xml).emulator or find_emulator("x86_64")
        if not os.path.exists(binary):
            binary = find_emulator("x86_64")

        async def probe():
            async with monitor_host() as host:
                return await CapabilitiesCache(args.caps_cache, host, timeout=30).get(binary)

        caps = trio.run(probe)
        if args.dumpxml:
            sys.stdout.write(prepare_domain(parse_domain_xml(xml), caps).to_xml())
        else:
            mon = str(args.xml.resolve().parent / "monitor.sock")
            print(shlex.join(domxml_to_native(xml, caps, monitor_path=mon)))
    except AsvirtError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
