"""What a user sees when the root's disk is full (run as a process, on a full filesystem).

    python -m tests.full_disk_check ROOT XMLFILE

The test runs this inside a mount namespace of its own, on a small tmpfs (the host's mounts
are untouched). It defines a domain, fills the disk, and tries what users try: define
another, start the first. It prints what happened as one JSON object.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import trio

import asvirt
from asvirt.drivers.qemu.process import find_qemus


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return filler


def error(err: BaseException) -> dict[str, object]:
    return {
        "type": type(err).__name__,
        "asvirt": isinstance(err, asvirt.AsvirtError),
        "code": int(err.code) if isinstance(err, asvirt.AsvirtError) else None,
        "message": str(err),
    }


async def main(root: Path, xml: str) -> dict[str, object]:
    out: dict[str, object] = {}
    async with asvirt.open(f"qemu:///embed?root={root}") as conn:
        dom = await conn.define_xml(xml)
        filler = fill(root.parent)
        try:
            await conn.define_xml(xml.replace(f"<name>{dom.name}</name>", "<name>second</name>"))
            out["define"] = "succeeded"
        except BaseException as err:
            out["define"] = error(err)
        try:
            await dom.start(paused=True)
            out["start"] = "succeeded"
        except BaseException as err:
            out["start"] = error(err)
        out["state"] = (await dom.state())[0].name
        out["qemus"] = len(find_qemus(str(root)))
        out["configs"] = sorted(p.name for p in (root / "etc" / "qemu").iterdir())
        out["run"] = sorted(p.name for p in (root / "run" / "qemu").iterdir())
        # Room again: the same start works.
        os.unlink(filler)
        await dom.start(paused=True)
        out["start_after"] = (await dom.state())[0].name
        await dom.destroy()
    return out


if __name__ == "__main__":
    result = trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]).read_text())
    print(json.dumps(result))
