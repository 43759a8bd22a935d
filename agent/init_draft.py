"""/init's material: a compact map of the repository and the request that asks the model to write its
AGENTS.md from it (or to improve the AGENTS.md or CLAUDE.md it has), as Claude Code's and Codex's /init do.

Why a map when the repository is already in the system message: over budget, the system message holds
outlines or nothing of many files, and the facts an AGENTS.md needs most (how to build, test and lint)
sit in files the planner ranks low (a Makefile, CI YAML). The map gathers them from the index, which
has already left out secrets, binaries, vendored and ignored files, into a few kilobytes: languages,
layout, the highest-ranked files with their main definitions, the commands the build files and CI
state, and the docs' headings. It is cut to `max_chars`, so the request stays small on any repository.
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
import tomllib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from . import prompts
from .instructions import INSTRUCTION_NAMES, root_instructions

if TYPE_CHECKING:
    from v4.repo_index.index import FileEntry

    from .context import RepositoryContext

MAX_MAP_CHARS = 6_000  # about 1,500-2,000 tokens: Aider's default map is 1,024 tokens
MAX_LANGUAGES = 8
MAX_LAYOUT_ROWS = 20
MAX_RANKED_FILES = 30
MAX_NAMES_PER_FILE = 8
MAX_COMMANDS_PER_FILE = 15
MAX_HEADINGS = 20
MAX_LINE_CHARS = 160
KIND_ORDER = {"class": 0, "interface": 0, "type": 0, "enum": 0, "module": 0, "function": 1, "macro": 1,
              "constant": 2}  # methods, impls and templates are left out: the file's API is enough
CI_FILES = re.compile(r"^(\.github/workflows/[^/]+\.ya?ml|\.gitlab-ci\.yml|\.circleci/config\.yml|\.travis\.yml"
                      r"|azure-pipelines\.yml|bitbucket-pipelines\.yml|Jenkinsfile)$")
BUILD_FILES = ("setup.py", "setup.cfg", "tox.ini", "noxfile.py", "requirements.txt", "uv.lock", "poetry.lock",
               "Cargo.toml", "go.mod", "CMakeLists.txt", "pom.xml", "build.gradle", "build.gradle.kts", "Gemfile",
               "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Dockerfile", ".pre-commit-config.yaml",
               ".editorconfig")
_CI_KEY = re.compile(r"^(\s*)(?:-\s+)?(?:run|script|before_script|commands?):\s*(.*)$")
_MAKE_TARGET = re.compile(r"^([A-Za-z0-9][\w./ -]*?)\s*::?(?!=)")


class InitError(ValueError):
    """The root's instruction file exists but cannot be read (a link out of the repository, not UTF-8)."""


def instruction_target(root: Path) -> tuple[str, str | None]:
    """The file /init writes, and its text when it exists: the root's AGENTS.md, else its CLAUDE.md,
    else a new AGENTS.md (text None). InitError when the existing file was refused (instructions.py)."""
    for name in INSTRUCTION_NAMES:
        if (Path(root) / name).is_file() or (Path(root) / name).is_symlink():
            found = root_instructions(root)
            if found.warnings and not found.text:
                raise InitError(f"/init cannot improve {name}: {found.warning}")
            return name, found.text
    return INSTRUCTION_NAMES[0], None


def init_request(map_text: str, existing: str | None, path: str = "AGENTS.md") -> str:
    """The user message of /init: what to write (prompts.INIT_PROMPT), whether to create `path` or to
    improve its `existing` text in place, then the repository map."""
    if existing is None:
        task = prompts.INIT_CREATE.format(path=path)
    elif not existing.strip():
        task = prompts.INIT_EMPTY.format(path=path)
    else:
        longest = max((len(run) for run in re.findall(r"`+", existing)), default=0)
        task = prompts.INIT_IMPROVE.format(path=path, fence="`" * max(3, longest + 1), text=existing)
    return f"{prompts.INIT_PROMPT}\n\n{task}\n\n# Repository map\n\n{map_text}"


def repository_map(context: RepositoryContext, max_chars: int = MAX_MAP_CHARS) -> str:
    """The repository as /init's request shows it, at most `max_chars` characters: languages, layout,
    build/test/lint commands and docs first (small, and what AGENTS.md needs most), then the
    highest-ranked files with their main definitions in what room is left."""
    files = context.index.files()
    ranks = context.index.ranks()
    head = f"Repository {context.root.name}: {len(files):,} files indexed."
    sections = [_languages(files.values()), _layout(files), _commands(files), _docs(files)]
    fixed = [head] + [section for section in sections if section]
    room = max_chars - sum(len(s) + 2 for s in fixed)
    ranked = _ranked(files, ranks, room)
    parts = [head, *(s for s in sections[:2] if s), *([ranked] if ranked else []), *(s for s in sections[2:] if s)]
    return _cut("\n\n".join(parts), max_chars)


def _languages(files: Iterable[FileEntry]) -> str:
    counts = Counter(entry.language or "other" for entry in files)
    shown = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_LANGUAGES]
    return "## Languages (files)\n" + ", ".join(f"{language} {count}" for language, count in shown) if shown else ""


def _layout(files: dict[str, FileEntry]) -> str:
    """Top-level directories (files, main languages, a Python package's docstring) and root files."""
    directories: dict[str, Counter[str]] = {}
    root_files = []
    for path, entry in files.items():
        top, _, rest = path.partition("/")
        if rest:
            directories.setdefault(top, Counter())[entry.language or "other"] += 1
        else:
            root_files.append(path)
    rows = []
    for top in sorted(directories, key=lambda d: (-sum(directories[d].values()), d))[:MAX_LAYOUT_ROWS]:
        languages = ", ".join(language for language, _ in directories[top].most_common(2))
        count = sum(directories[top].values())
        row = f"- {top}/: {count} file{'s' * (count != 1)} ({languages})"
        init = files.get(f"{top}/__init__.py")
        summary = _docstring(init.text) if init is not None else None
        rows.append(_line(row + (f" — {summary}" if summary else "")))
    if root_files:
        shown = sorted(root_files)[:MAX_LAYOUT_ROWS]
        rows.append(_line("- root files: " + ", ".join(shown) + (" …" if len(root_files) > len(shown) else "")))
    return "## Layout\n" + "\n".join(rows) if rows else ""


def _ranked(files: dict[str, FileEntry], ranks: dict[str, float], room: int) -> str:
    """The highest-ranked files that define something, one line each, while they fit in `room`."""
    title = "## Main files (most referenced first) and their definitions"
    lines: list[str] = []
    used = len(title) + 2
    ordered = sorted(files, key=lambda p: (-ranks.get(p, 0.0), p))
    for path in ordered:
        if len(lines) >= MAX_RANKED_FILES:
            break
        entry = files[path]
        names = _main_names(entry)
        if not names:
            continue
        summary = _docstring(entry.text) if entry.language == "python" else None
        line = _line(f"- {path}: {', '.join(names)}" + (f" — {summary}" if summary else ""))
        if used + len(line) + 1 > room:
            break
        lines.append(line)
        used += len(line) + 1
    return title + "\n" + "\n".join(lines) if lines else ""


def _main_names(entry: FileEntry) -> list[str]:
    """A file's public top-level definitions (those on an unindented line), types before functions."""
    if entry.summary is None:
        return []
    unindented = {word for line in entry.text.splitlines() if line[:1] not in ("", " ", "\t")
                  for word in re.findall(r"\w+", line)}
    found = sorted(((KIND_ORDER[kind], name) for name, kind in entry.summary.definitions
                    if kind in KIND_ORDER and not name.startswith("_") and name in unindented))
    names = list(dict.fromkeys(name for _, name in found))
    extra = len(names) - MAX_NAMES_PER_FILE
    return names[:MAX_NAMES_PER_FILE] + ([f"+{extra} more"] if extra > 0 else [])


def _commands(files: dict[str, FileEntry]) -> str:
    """What the build files and CI configuration say to run, each under its file's name."""
    rows = []
    for path in sorted(files, key=lambda p: (p.count("/"), p)):
        name, depth, text = posixpath.basename(path), path.count("/"), files[path].text
        if name in ("Makefile", "makefile", "GNUmakefile") and depth <= 1:
            found = _make_targets(text)
        elif name == "pyproject.toml" and depth <= 1:
            found = _pyproject(text)
        elif name == "package.json" and depth <= 1:
            found = _package_json(text)
        elif CI_FILES.match(path):
            found = _ci_commands(text)
        else:
            continue
        if found:
            rows.append(f"{path}:\n" + "\n".join(_line(f"  {item}") for item in found[:MAX_COMMANDS_PER_FILE]))
    present = [name for name in BUILD_FILES if name in files]
    if present:
        rows.append("Also at the root: " + ", ".join(present))
    return "## Build, test and lint (as these files state them)\n" + "\n".join(rows) if rows else ""


def _make_targets(text: str) -> list[str]:
    """`make TARGET: first recipe line` for each explicit target (not .PHONY, patterns or variables)."""
    lines = text.splitlines()
    found = []
    for number, line in enumerate(lines):
        match = _MAKE_TARGET.match(line)
        if match is None or "%" in line or "$" in match.group(1):
            continue
        recipe = next((r.strip().lstrip("@-").strip() for r in lines[number + 1:number + 2] if r.startswith("\t")), "")
        for target in match.group(1).split():
            found.append(f"make {target}" + (f": {recipe}" if recipe else ""))
    return found


def _pyproject(text: str) -> list[str]:
    """The project's name and Python, its scripts and task runners' tasks, and the tools it configures."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"(not valid TOML: {exc})"]
    project, tool = data.get("project", {}), data.get("tool", {})
    found = []
    if project.get("name"):
        found.append(f"project {project['name']}" + (f", Python {project['requires-python']}"
                                                     if project.get("requires-python") else ""))
    scripts = {**project.get("scripts", {}), **tool.get("poetry", {}).get("scripts", {})}
    found += [f"script {name} = {target}" for name, target in scripts.items()]
    tasks = {**tool.get("pdm", {}).get("scripts", {}), **tool.get("taskipy", {}).get("tasks", {}),
             **tool.get("poe", {}).get("tasks", {})}
    for env in tool.get("hatch", {}).get("envs", {}).values():
        tasks.update(env.get("scripts", {}) if isinstance(env, dict) else {})
    found += [f"task {name}: {command}" for name, command in tasks.items() if isinstance(command, str)]
    pytest = tool.get("pytest", {}).get("ini_options", {})
    for key in ("testpaths", "addopts", "markers"):
        if pytest.get(key):
            value = pytest[key]
            found.append(f"pytest {key}: " + (", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    extras = [*project.get("optional-dependencies", {}), *data.get("dependency-groups", {})]
    if extras:
        found.append("extras / dependency groups: " + ", ".join(extras))
    if tool:
        found.append("tool settings: " + ", ".join(sorted(tool)))
    return found


def _package_json(text: str) -> list[str]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        return [f"(not valid JSON: {exc})"]
    if not isinstance(data, dict):
        return []
    found = [f"package manager {data['packageManager']}"] if isinstance(data.get("packageManager"), str) else []
    scripts = data.get("scripts")
    if isinstance(scripts, dict):
        found += [f"npm run {name}: {command}" for name, command in scripts.items() if isinstance(command, str)]
    return found


def _ci_commands(text: str) -> list[str]:
    """The commands of a CI file: `run:`/`script:`/`commands:` values and blocks, Jenkins' `sh '...'`."""
    lines = text.splitlines()
    found: list[str] = re.findall(r"\bsh\s+['\"](.+?)['\"]", text)
    number = 0
    while number < len(lines):
        match = _CI_KEY.match(lines[number])
        number += 1
        if match is None:
            continue
        indent, value = len(match.group(1)), match.group(2).strip()
        if value and value[0] not in "|>":
            found.append(value.strip("'\""))
            continue
        while number < len(lines) and (not lines[number].strip() or _indent(lines[number]) > indent):
            item = lines[number].strip().removeprefix("- ").strip("'\"")
            if item and not item.startswith("#"):
                found.append(item)
            number += 1
    return list(dict.fromkeys(found))


def _docs(files: dict[str, FileEntry]) -> str:
    """The root README's and CONTRIBUTING's headings; the other docs and instruction files by name."""
    rows = []
    for path in sorted(files):
        if _is_root_doc(path):
            headings = _headings(files[path].text)
            if headings:
                rows.append(f"{path} headings:\n" + "\n".join(_line(f"  {h}") for h in headings))
    nested = [p for p in sorted(files) if posixpath.basename(p) in INSTRUCTION_NAMES and "/" in p]
    if nested:
        rows.append("Instruction files in subdirectories: " + ", ".join(nested))
    others = [p for p in sorted(files) if files[p].language in ("markdown", "rst")
              and posixpath.basename(p) not in INSTRUCTION_NAMES and not _is_root_doc(p)]
    if others:
        shown = others[:MAX_LAYOUT_ROWS]
        rows.append(_line("Other docs: " + ", ".join(shown) + (" …" if len(others) > len(shown) else "")))
    return "## Docs\n" + "\n".join(rows) if rows else ""


def _is_root_doc(path: str) -> bool:
    return "/" not in path and path.upper().startswith(("README", "CONTRIBUTING"))


def _headings(text: str) -> list[str]:
    """Markdown headings of levels 1-3, outside code fences, indented by level."""
    found, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#{1,3})\s+(.+?)\s*#*$", line)):
            found.append("  " * (len(match.group(1)) - 1) + match.group(2))
    return found[:MAX_HEADINGS]


def _docstring(text: str) -> str | None:
    """The first line of a Python module's docstring, None when it has none (or does not parse)."""
    try:
        doc = ast.get_docstring(ast.parse(text))
    except (SyntaxError, ValueError):
        return None
    return doc.strip().splitlines()[0] if doc and doc.strip() else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _line(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS - 1] + "…"


def _cut(text: str, max_chars: int) -> str:
    """`text` within `max_chars`, cut at a line with a note saying so."""
    if len(text) <= max_chars:
        return text
    note = f"\n[map cut at {max_chars:,} characters]"
    kept = text[:max(max_chars - len(note), 0)]
    kept = kept[:kept.rfind("\n")] if "\n" in kept else kept
    return (kept + note)[:max_chars]
