"""asvirt.conf is libvirt's generic XML model: it knows no driver, and its imports form no cycle.

Checked two ways: statically, every import statement under ``asvirt/conf`` (at any depth,
``TYPE_CHECKING`` blocks and function bodies included); and by importing every conf module
in a fresh interpreter and looking at what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "asvirt" / "conf"
PACKAGE = CONF.parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _conf_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CONF.glob("*.py"))}


def _imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(absolute module imported, the statement, whether it sits inside a function)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, ast.stmt, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                found.extend((alias.name, child, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                found.append((target, child, in_function))
                # "from . import x" imports the submodule x
                if child.module is None:
                    found.extend(
                        (f"{target}.{alias.name}", child, in_function) for alias in child.names
                    )
            visit(child, nested)

    visit(tree, False)
    return found


def test_the_check_sees_relative_imports() -> None:
    # The resolver itself: a relative import two levels up from asvirt/conf lands in asvirt.
    src = CONF / "domain.py"
    targets = {t for t, _, _ in _imports(src)}
    assert "asvirt.errors" in targets and "asvirt.conf.devices" in targets


def test_conf_imports_nothing_from_the_drivers() -> None:
    bad = [
        f"{path.name}:{stmt.lineno} imports {target}"
        for name, path in _conf_modules().items()
        for target, stmt, _ in _imports(path)
        if target == "asvirt.drivers" or target.startswith("asvirt.drivers.")
    ]
    assert not bad, "\n".join(bad)


def test_conf_has_no_imports_inside_functions() -> None:
    # A function-level import of an asvirt module is how a cycle gets hidden; none are left.
    bad = [
        f"{path.name}:{stmt.lineno} imports {target} inside a function"
        for name, path in _conf_modules().items()
        for target, stmt, in_function in _imports(path)
        if in_function and target.startswith("asvirt")
    ]
    assert not bad, "\n".join(bad)


def test_conf_modules_import_each_other_without_cycles() -> None:
    modules = _conf_modules()
    graph = {
        name: sorted({t for t, _, _ in _imports(path) if t in modules and t != name})
        for name, path in modules.items()
    }
    # Every import counts, TYPE_CHECKING ones too: a cycle there is still a cycle.
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_importing_conf_loads_no_driver() -> None:
    # The top-level package imports the connection API (and so asvirt.drivers.base);
    # conf's own import closure is what is checked, so 'asvirt' is a bare namespace here.
    names = sorted(_conf_modules())
    code = f"""
import importlib, json, sys, types
pkg = types.ModuleType("asvirt")
pkg.__path__ = [{str(PACKAGE)!r}]
sys.modules["asvirt"] = pkg
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m == "asvirt" or m.startswith("asvirt."))))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(proc.stdout)
    assert "asvirt.conf.domain" in loaded and "asvirt.conf.postparse" in loaded
    assert [m for m in loaded if m.startswith("asvirt.drivers")] == []
    # Besides conf itself, only the error classes.
    assert {m for m in loaded if not m.startswith("asvirt.conf")} == {"asvirt", "asvirt.errors"}


def test_importing_conf_domain_for_real_does_not_load_a_hypervisor_driver() -> None:
    # With the real top-level package: asvirt.drivers.base/registry come with it, but no
    # driver (qemu, test) is imported on the way to the domain model.
    code = (
        "import sys, json, asvirt.conf.domain, asvirt.conf.postparse;"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('asvirt.drivers'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(proc.stdout)
    assert not [m for m in loaded if m.startswith(("asvirt.drivers.qemu", "asvirt.drivers.test"))]
