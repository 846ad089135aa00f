"""A supervisor that is killed mid-work, for the crash-safety test (run as a process).

    python -m tests.crash_supervisor ROOT XMLDIR SEED

Opens the embed root ROOT and performs random define / undefine / create / start / destroy
operations on the domains whose XML is in XMLDIR, forever, printing ``open`` once the root
is open, then one line per finished operation. The test kills it with SIGKILL at random points.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

import asvirt


async def main(root: str, xml_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    xmls = {path.stem: path.read_text() for path in sorted(xml_dir.glob("*.xml"))}
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        print("open", flush=True)  # the root is taken over: the work begins
        while True:
            name = rng.choice(sorted(xmls))
            what = rng.choice(["define", "undefine", "create", "start", "start", "destroy"])
            try:
                if what == "define":
                    await conn.define_xml(xmls[name])
                elif what == "create":
                    await conn.create_xml(xmls[name], paused=True)
                else:
                    dom = await conn.lookup_by_name(name)
                    if what == "start":
                        await dom.start(paused=True)
                    else:
                        await getattr(dom, what)()
                outcome = "ok"
            except asvirt.AsvirtError as err:
                outcome = type(err).__name__
            print(f"{what} {name} {outcome}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
