"""A skip (or xfail) in a trio test is reported with its own reason and line
(tests/trio_skips.py), in a pytest run of its own on a small test file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .guest import REPO

TESTS = """
import pytest
import trio


async def test_skips_in_its_body():
    pytest.skip("the reason of the body")


async def skip_in_a_task():
    pytest.skip("the reason of the task")


async def test_skips_in_a_nursery():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(skip_in_a_task)


async def test_expects_to_fail():
    pytest.xfail("the reason of the xfail")
"""


def test_a_skip_in_a_trio_test_keeps_its_reason_and_line(tmp_path: Path):
    (tmp_path / "test_inner.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.trio_skips",
            "-rsx",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = TESTS.splitlines()

    def line_of(text: str) -> int:
        return 1 + next(i for i, line in enumerate(lines) if text in line)

    for reason in ("the reason of the body", "the reason of the task"):
        # Each where it was called, with its reason.
        expected = f"SKIPPED [1] test_inner.py:{line_of(reason)}: {reason}"
        assert expected in proc.stdout, proc.stdout
    assert "XFAIL test_inner.py::test_expects_to_fail - the reason of the xfail" in proc.stdout
    assert "_pytest" not in proc.stdout
