"""Imports run one way (STYLE.md): checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "model", "kernels", "repo_index", "tui")
# package -> project packages it must not import
FORBIDDEN = {
    "kernels": {"agent", "model", "repo_index", "tui"},
    "model": {"agent", "tui", "repo_index"},
    "repo_index": {"agent", "model", "kernels", "tui"},
    "tui": {"model", "kernels", "repo_index"},
    "agent": {"tui", "kernels"},
}
# Calls whose first argument names a module by its dotted name.
NAMED_MODULE_CALLS = {"files", "import_module", "find_spec", "patch"}
# The one place `agent/` may open the TUI: the CLI's default command, imported lazily.
ALLOWED = {("agent/cli.py", "tui")}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _absolute_imports(path: Path) -> list[str]:
    """Every absolute module name `path` imports (`from v4 import model` counts as `v4.model`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) in NAMED_MODULE_CALLS and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found.append(node.args[0].value)  # resources.files("v4.repo_index"), import_module(...), patch(...)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            if node.module == "v4":
                found.extend(f"v4.{alias.name}" for alias in node.names)
    return found


def _imported_packages(path: Path) -> set[str]:
    """The project packages `path` imports, by their folder names (`v4.model.engine` -> `model`)."""
    parts = (name.split(".") for name in _absolute_imports(path))
    return {p[1] for p in parts if len(p) > 1 and p[0] == "v4" and p[1] in PACKAGES}


@pytest.mark.parametrize("folder", (*PACKAGES, "tests", "benchmarks"))
def test_project_packages_are_imported_only_through_the_v4_namespace(folder: str) -> None:
    """`import model` from the repository root would load a second copy of the package (its classes
    unequal to v4.model's), and would not work from a wheel at all."""
    offenders = [f"{path.relative_to(ROOT).as_posix()}: {name}"
                 for path in sorted((ROOT / folder).rglob("*.py"))
                 for name in _absolute_imports(path) if name.split(".")[0] in PACKAGES]
    assert offenders == []


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_run_one_way(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for imported in sorted(_imported_packages(path) & FORBIDDEN[package]):
            if (rel, imported) not in ALLOWED:
                violations.append(f"{rel} imports {imported}")
    assert violations == []


def test_model_reaches_kernels_only_through_ops() -> None:
    offenders = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "model").rglob("*.py"))
                 if p.name != "ops.py" and "kernels" in _imported_packages(p)]
    assert offenders == []
