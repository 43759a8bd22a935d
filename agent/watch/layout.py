"""Which directories of a repository to watch, so that ignored ones (`.git/`, `node_modules/`, a
`build/` in .gitignore) are not watched at all: watching them costs a kernel watch per directory
(`node_modules` has tens of thousands) and a flood of events to drop.

The tree is walked breadth first without entering ignored directories, one `git check-ignore` per
level. A directory with a heavy ignored directory somewhere below it gets a watch of its own entries
and each child its own watch; every other directory is one recursive watch. Each watch is a thread
(watchdog's emitters), so their number is capped; past the cap, ignored directories stay inside
recursive watches and their events are dropped by the watcher.
"""

from __future__ import annotations

import os
from pathlib import Path

from v4.repo_index.files import ALWAYS_IGNORED_DIRS, VENDORED_DIRS, ignored_paths

# Ignored directories cheap enough to leave inside a recursive watch (their events are dropped).
LIGHT_IGNORED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"})


def watch_layout(root: Path, is_git: bool, max_watches: int = 64, include_vendored: bool = False
                 ) -> tuple[dict[str, bool], set[str]]:
    """Which directories to watch ({rel: recursive}; "" is the root) so that no heavy ignored
    directory is watched, within `max_watches`; and every ignored directory found. `.git`/`.v4` are
    never watched, whatever the budget."""
    children, heavy, tool, ignored_dirs = _walk(root, is_git, include_vendored)
    layout: dict[str, bool] = {}
    waiting = [""]
    while waiting:
        rel = waiting.pop(0)
        kids = sorted(children.get(rel, []))
        fits = len(layout) + 1 + len(waiting) + len(kids) <= max_watches
        if rel in tool or (rel in heavy and fits):
            layout[rel] = False  # its own entries; each child gets a watch
            waiting.extend(kids)
        else:
            layout[rel] = True
    return layout, ignored_dirs


def _walk(root: Path, is_git: bool, include_vendored: bool
          ) -> tuple[dict[str, list[str]], set[str], set[str], set[str]]:
    """Breadth first, not entering ignored directories: (children of each directory, directories with
    a heavy ignored one below, those with .git/.v4 below, the ignored directories)."""
    children: dict[str, list[str]] = {}
    heavy: set[str] = set()
    tool: set[str] = set()
    ignored_dirs: set[str] = set()
    level = [""]
    while level:
        found: list[tuple[str, str]] = []  # (parent, child)
        for parent in level:
            children[parent] = []
            try:
                entries = list(os.scandir(root / parent))
            except OSError:
                entries = []
            found += [(parent, f"{parent}/{e.name}" if parent else e.name) for e in entries
                      if e.is_dir(follow_symlinks=False)]
        git_ignored = ignored_paths(root, [c for _, c in found], is_git) if found else set()
        level = []
        for parent, child in found:
            name = child.rpartition("/")[2]
            if name in ALWAYS_IGNORED_DIRS or (not include_vendored and name in VENDORED_DIRS) or child in git_ignored:
                ignored_dirs.add(child)
                if name not in LIGHT_IGNORED_DIRS:
                    heavy.update(_ancestors(parent))
                if name in ALWAYS_IGNORED_DIRS:
                    tool.update(_ancestors(parent))
            else:
                children[parent].append(child)
                level.append(child)
    return children, heavy, tool, ignored_dirs


def heavy_name(rel: str) -> bool:
    """A directory name that is always ignored and worth keeping out of the watches."""
    name = rel.rpartition("/")[2]
    return (name in ALWAYS_IGNORED_DIRS or name in VENDORED_DIRS) and name not in LIGHT_IGNORED_DIRS


def _ancestors(rel: str) -> list[str]:
    """`rel` and every directory above it, up to the root ("")."""
    found = [rel]
    while rel:
        rel = rel.rpartition("/")[0]
        found.append(rel)
    return found
