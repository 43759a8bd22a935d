"""Imports run one way (STYLE.md): checked by parsing every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cli", "agent", "model", "kernels", "repo_index", "tui")
# package -> project packages it must not import
# The layers, top down: cli -> tui -> agent -> (repo_index, model) -> kernels; no exceptions.
FORBIDDEN = {
    "cli": {"kernels"},
    "kernels": {"cli", "agent", "model", "repo_index", "tui"},
    "model": {"cli", "agent", "tui", "repo_index"},
    "repo_index": {"cli", "agent", "model", "kernels", "tui"},
    "tui": {"cli", "model", "kernels", "repo_index"},
    "agent": {"cli", "tui", "kernels"},
}
# Calls whose first argument names a module by its dotted name.
NAMED_MODULE_CALLS = {"files", "import_module", "find_spec", "patch"}


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
        violations.extend(f"{rel} imports {imported}" for imported in sorted(_imported_packages(path) & FORBIDDEN[package]))
    assert violations == []


def test_model_reaches_kernels_only_through_ops() -> None:
    offenders = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "model").rglob("*.py"))
                 if p.name != "ops.py" and "kernels" in _imported_packages(p)]
    assert offenders == []


# --- one layer per package: no import cycles, no oversized modules (issue 23) ---

MAX_MODULE_LINES = 500


def _modules(package: str) -> dict[str, Path]:
    return {f"{package}/{p.relative_to(ROOT / package).with_suffix('').as_posix()}": p
            for p in sorted((ROOT / package).rglob("*.py")) if p.name != "__init__.py"}


def _module_imports(package: str, name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `package` that module `name` imports anywhere in its body (late imports too)."""
    here = name.rsplit("/", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name.replace(".", "/").removeprefix("v4/") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "/".join(here.split("/")[:len(here.split("/")) - node.level + 1])
                module = f"{base}/{node.module.replace('.', '/')}" if node.module else base
            else:
                module = (node.module or "").replace(".", "/").removeprefix("v4/")
            candidates = [module] + [f"{module}/{alias.name}" for alias in node.names]
        found.update(c for c in candidates if c in known and c != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.add(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycle_inside_a_package() -> None:
    cycles: set[frozenset[str]] = set()
    for package in PACKAGES:
        known = _modules(package)
        graph = {name: _module_imports(package, name, path, known) for name, path in known.items()}
        cycles |= _cycles(graph)
    assert sorted(sorted(cycle) for cycle in cycles) == [], "import cycles (break them; a late import only hides one)"


def test_no_module_over_the_split_limit() -> None:
    sizes = {name + ".py": len(path.read_text().splitlines())
             for package in PACKAGES for name, path in _modules(package).items()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("package", ["model", "agent", "cli"])
def test_the_package_docstring_maps_every_module(package: str) -> None:
    """A newcomer's first read: the package's `__init__.py` names each module (and subpackage), in
    data-flow order."""
    import re

    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    listed = {a or b for a, b in re.findall(r"\b(\w+\.py)\b|`(\w+)/`", doc)}
    present = {p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py"}
    present |= {p.name for p in (ROOT / package).iterdir() if (p / "__init__.py").is_file()}
    assert sorted(present - listed) == [], "modules the package docstring does not name"
    assert sorted(listed - present) == [], "names in the package docstring that are not modules"


def test_only_cli_parses_arguments() -> None:
    """Nothing below `cli/` sees argparse: the packages take typed options (agent/options.py)."""
    offenders = [p.relative_to(ROOT).as_posix() for package in PACKAGES if package != "cli"
                 for p in sorted((ROOT / package).rglob("*.py")) if "argparse" in _absolute_imports(p)]
    assert offenders == []
