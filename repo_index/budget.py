"""Fitting the repository into the token budget: rank files, then choose full, outline or omitted.

Ranking is PageRank over the reference graph (references -> definitions, plus imports), with the
identifier weights Aider's repo map found useful. Pure functions; weights are named here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .graph import FileFacts, definers_by_name

IMPORT_EDGE_WEIGHT = 1.0
LONG_NAME_MIN_LEN = 8
LONG_NAME_MULTIPLIER = 10.0  # a long snake_case/camelCase name means one thing
PRIVATE_NAME_MULTIPLIER = 0.1  # `_helper` is rarely what a reader needs to see
COMMON_NAME_DEFINERS = 5
COMMON_NAME_MULTIPLIER = 0.1  # defined in many files: says little about any of them
DAMPING = 0.85

FULL, OUTLINE, OMITTED = "full", "outline", "omitted"


def rank_files(files: Mapping[str, FileFacts]) -> dict[str, float]:
    """PageRank of each file over weighted reference -> definition and import edges."""
    import networkx as nx  # PageRank runs on scipy through networkx

    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(files))
    definers = definers_by_name(files)
    weights: dict[tuple[str, str], float] = {}
    for path in sorted(files):
        facts = files[path]
        for target in facts.imports:
            if target in files and target != path:
                weights[path, target] = weights.get((path, target), 0.0) + IMPORT_EDGE_WEIGHT
        for name, count in facts.references:
            owners = sorted({p for p, _ in definers.get(name, ()) if p != path})
            if not owners:
                continue
            weight = _name_multiplier(name, len(definers[name])) * math.sqrt(count) / len(owners)
            for owner in owners:
                weights[path, owner] = weights.get((path, owner), 0.0) + weight
    for (source, target), weight in sorted(weights.items()):
        graph.add_edge(source, target, weight=weight)
    if graph.number_of_edges() == 0:
        return {path: 1.0 / max(1, len(files)) for path in files}
    return nx.pagerank(graph, alpha=DAMPING, weight="weight")


def _name_multiplier(name: str, num_definers: int) -> float:
    multiplier = 1.0
    is_long = len(name) >= LONG_NAME_MIN_LEN and ("_" in name.strip("_") or name != name.lower())
    if is_long:
        multiplier *= LONG_NAME_MULTIPLIER
    if name.startswith("_"):
        multiplier *= PRIVATE_NAME_MULTIPLIER
    if num_definers > COMMON_NAME_DEFINERS:
        multiplier *= COMMON_NAME_MULTIPLIER
    return multiplier


def choose_modes(
    ranked: list[str], full_tokens: Mapping[str, int], outline_tokens: Mapping[str, int | None], budget: int
) -> dict[str, str]:
    """Mode per file so the total fits `budget`; `ranked` is most important first.

    Everything fits: all full. Otherwise every file starts as its outline (files with no outline
    start omitted); if the outlines alone overflow, the lowest-ranked are omitted; then files are
    upgraded to full in rank order wherever the remaining budget allows.
    """
    if sum(full_tokens[p] for p in ranked) <= budget:
        return {p: FULL for p in ranked}
    modes: dict[str, str] = {}
    cost: dict[str, int] = {}
    for path in ranked:
        outline = outline_tokens.get(path)
        if outline is not None and outline < full_tokens[path]:
            modes[path], cost[path] = OUTLINE, outline
        else:
            modes[path], cost[path] = OMITTED, 0
    used = sum(cost.values())
    for path in reversed(ranked):
        if used <= budget:
            break
        if modes[path] == OUTLINE:
            used -= cost[path]
            modes[path], cost[path] = OMITTED, 0
    for path in ranked:
        extra = full_tokens[path] - cost[path]
        if used + extra <= budget:
            used += extra
            modes[path], cost[path] = FULL, full_tokens[path]
    return modes
