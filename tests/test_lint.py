"""The code is kept as the README says: ruff-clean, ruff-formatted, and type-checked by mypy.

Run here so that CI, which runs the test suite and nothing cleverer, enforces them too.
"""

from __future__ import annotations

import subprocess
import sys

from .guest import REPO


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_code_is_ruff_formatted():
    proc = _run("ruff", "format", "--no-cache", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_no_type_errors():
    proc = _run("mypy")  # what [tool.mypy] in pyproject.toml says: the whole package
    assert proc.returncode == 0, proc.stdout + proc.stderr
