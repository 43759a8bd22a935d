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
# The one place `agent/` may open the TUI: the CLI's default command, imported lazily.
ALLOWED = {("agent/cli.py", "tui")}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


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
