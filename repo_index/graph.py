"""The file dependency graph and the context order: dependencies first, cycles kept together.

Pure functions of parsed facts; git history arrives as a stability key per file. The order is a
lexicographic topological sort of the strongly connected components, keyed by stability then path,
so it is deterministic for the same tree and an edit invalidates as short a tail as possible.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import networkx as nx

# A reference orders two files only when it is unambiguous: the name is used bare (a member access
# `x.run()` says little about which `run` it is), is defined in exactly one other file, is not
# private-looking or too short to mean one thing, and names a top-level kind of definition.
# In languages where every name from another file arrives through an import (Python, JS/TS), the
# resolved imports are the dependencies and reference edges would only add name collisions; Go
# (same-package files), C/C++ (declared in one file, defined in another), Java (same package) and
# Rust need them. All languages' references feed the ranking (budget.py).
IMPORT_COMPLETE_LANGUAGES = frozenset({"python", "javascript", "typescript", "tsx"})
# Names link files of one language family only: a Go call to `Add` says nothing of a Python `Add`.
LANGUAGE_FAMILY = {"c": "c", "cpp": "c", "javascript": "js", "typescript": "js", "tsx": "js"}
MAX_DEFINERS_FOR_ORDER_EDGE = 1
MIN_ORDER_NAME_LEN = 3
ORDER_DEFINITION_KINDS = frozenset({
    "function", "class", "interface", "type", "enum", "constant", "macro", "module", "struct", "trait",
})

StabilityKey = tuple[int | float | str, ...]


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What ordering and ranking need to know of one file."""

    path: str
    language: str
    imports: tuple[str, ...]  # files of the repository this file imports (resolved)
    definitions: tuple[tuple[str, str], ...]  # (name, kind)
    references: tuple[tuple[str, int], ...]  # (name, count), every kind of use
    bare_references: tuple[str, ...] = ()  # names used other than as a member (`x.name`), sorted


def family(language: str) -> str:
    """The language family whose files can use each other's names."""
    return LANGUAGE_FAMILY.get(language, language)


def definers_by_name(files: Mapping[str, FileFacts]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(family, name) -> sorted (path, kind) of every file of that family defining the name."""
    found: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for facts in files.values():
        group = family(facts.language)
        for name, kind in facts.definitions:
            found[group, name].add((facts.path, kind))
    return {key: sorted(pairs) for key, pairs in found.items()}


def order_key(facts: FileFacts) -> tuple:
    """What of a file can move the order: its imports, and in languages with reference edges its
    definitions and bare references. An edit that keeps this keeps the order."""
    if facts.language in IMPORT_COMPLETE_LANGUAGES:
        return (facts.language, facts.imports)
    return (facts.language, facts.imports, facts.definitions, facts.bare_references)


def dependency_edges(files: Mapping[str, FileFacts]) -> dict[str, tuple[str, ...]]:
    """path -> the files it depends on: its imports plus unambiguous reference -> definition edges."""
    definers = definers_by_name(files)
    edges: dict[str, tuple[str, ...]] = {}
    for path, facts in files.items():
        targets = {t for t in facts.imports if t in files}
        names = () if facts.language in IMPORT_COMPLETE_LANGUAGES else facts.bare_references
        group = family(facts.language)
        for name in names:
            if len(name) < MIN_ORDER_NAME_LEN or name.startswith("_"):
                continue
            owners = {p for p, kind in definers.get((group, name), ()) if kind in ORDER_DEFINITION_KINDS}
            if 0 < len(owners) <= MAX_DEFINERS_FOR_ORDER_EDGE and path not in owners:
                targets.update(owners)
        targets.discard(path)
        edges[path] = tuple(sorted(targets))
    return edges


def context_order(edges: Mapping[str, tuple[str, ...]], stability: Mapping[str, StabilityKey]) -> list[list[str]]:
    """Groups of files in context order: each group is a strongly connected set, dependencies first.

    Ready groups (all dependencies placed) are taken most-stable first, then by path; files inside a
    group are sorted the same way.
    """
    def key(path: str) -> tuple:
        return (stability.get(path, ()), path)

    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(edges))
    for path in sorted(edges):
        for target in edges[path]:
            graph.add_edge(target, path)  # dependency -> dependent: the sort puts it first
    condensed = nx.condensation(graph)
    group_key = {node: min(key(p) for p in condensed.nodes[node]["members"]) for node in condensed.nodes}
    groups = []
    for node in nx.lexicographical_topological_sort(condensed, key=group_key.__getitem__):
        groups.append(sorted(condensed.nodes[node]["members"], key=key))
    return groups


def git_stability(paths: list[str], commit_counts: Mapping[str, int], tracked: Mapping[str, bool]) -> dict[str, StabilityKey]:
    """Inside git: tracked before untracked, then fewest commits touching the file first."""
    return {p: (0 if tracked.get(p, False) else 1, commit_counts.get(p, 0)) for p in paths}


def mtime_stability(mtimes: Mapping[str, float]) -> dict[str, StabilityKey]:
    """Outside git: the longest-unchanged file first."""
    return {p: (mtime,) for p, mtime in mtimes.items()}
