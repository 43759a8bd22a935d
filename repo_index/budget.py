"""Fitting the repository into the token budget: rank files, then choose full, outline or omitted.

Ranking is PageRank over the reference graph (references -> definitions, plus imports), with the
identifier weights Aider's repo map found useful. Pure functions; weights are named here. PageRank
runs as a few sparse matrix-vector products (scipy) over integer node ids, which at 3,000 files and
hundreds of thousands of edges is two orders faster than building a networkx graph for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .graph import FileFacts, family

IMPORT_EDGE_WEIGHT = 1.0
LONG_NAME_MIN_LEN = 8
LONG_NAME_MULTIPLIER = 10.0  # a long snake_case/camelCase name means one thing
PRIVATE_NAME_MULTIPLIER = 0.1  # `_helper` is rarely what a reader needs to see
COMMON_NAME_DEFINERS = 5
COMMON_NAME_MULTIPLIER = 0.1  # defined in many files: says little about any of them
DAMPING = 0.85
MAX_PAGERANK_ITERATIONS = 100
# A name defined in more files than this links nothing in particular (`get`, `__init__`); leaving it
# out keeps the graph linear in the repository's size.
MAX_RANK_DEFINERS = 20

FULL, OUTLINE, OMITTED = "full", "outline", "omitted"


def rank_files(files: Mapping[str, FileFacts]) -> dict[str, float]:
    """PageRank of each file over weighted reference -> definition and import edges.

    Edge weight A -> B: for each name A uses and B defines (same language family, at most
    MAX_RANK_DEFINERS definers), multiplier(name) * sqrt(uses in A) / number of definers; plus
    IMPORT_EDGE_WEIGHT per resolved import. Built as sparse products: refs (files x names) times
    defs (names x files).
    """
    import numpy as np
    from scipy import sparse

    paths = sorted(files)
    position = {path: i for i, path in enumerate(paths)}
    key_ids: dict[tuple[str, str], int] = {}
    ref_rows, ref_cols, ref_vals, def_rows, def_cols, imp_rows, imp_cols = [], [], [], [], [], [], []
    for row, path in enumerate(paths):
        facts = files[path]
        group = family(facts.language)
        for name in {name for name, _ in facts.definitions}:
            def_rows.append(row)
            def_cols.append(key_ids.setdefault((group, name), len(key_ids)))
        for name, count in facts.references:
            ref_rows.append(row)
            ref_cols.append(key_ids.setdefault((group, name), len(key_ids)))
            ref_vals.append(count)
        for target in facts.imports:
            if target in position and target != path:
                imp_rows.append(row)
                imp_cols.append(position[target])
    num_files, num_keys = len(paths), len(key_ids)
    defs = sparse.csr_array((np.ones(len(def_rows)), (def_rows, def_cols)), shape=(num_files, num_keys))
    refs = sparse.csr_array((np.sqrt(np.asarray(ref_vals, dtype=np.float64)), (ref_rows, ref_cols)),
                            shape=(num_files, num_keys))
    num_definers = np.asarray(defs.sum(axis=0)).ravel()
    names = [name for (_, name) in key_ids]
    multiplier = np.fromiter((_name_multiplier(n, int(d)) for n, d in zip(names, num_definers)),
                             dtype=np.float64, count=num_keys)
    usable = (num_definers > 0) & (num_definers <= MAX_RANK_DEFINERS)
    scale = np.divide(multiplier, num_definers, out=np.zeros(num_keys), where=usable)
    weights = (refs @ sparse.diags_array(scale) @ defs.T).tocsr()
    weights.setdiag(0)  # a file's use of its own names is no edge
    weights = weights + sparse.csr_array((np.full(len(imp_rows), IMPORT_EDGE_WEIGHT), (imp_rows, imp_cols)),
                                         shape=(num_files, num_files))
    weights.eliminate_zeros()
    ranks = pagerank(weights)
    return {path: ranks[i] for i, path in enumerate(paths)}


def pagerank(weights: "sparse.csr_array", tolerance: float = 1e-10) -> list[float]:
    """PageRank by power iteration over a square weight matrix (row -> column); dangling rows spread
    uniformly, as networkx does."""
    import numpy as np
    from scipy import sparse

    num_nodes = weights.shape[0]
    if num_nodes == 0:
        return []
    out_weight = np.asarray(weights.sum(axis=1)).ravel()
    dangling = out_weight == 0
    scale = np.divide(1.0, out_weight, out=np.zeros_like(out_weight), where=~dangling)
    transition = (sparse.diags_array(scale) @ weights).T.tocsr()
    rank = np.full(num_nodes, 1.0 / num_nodes)
    for _ in range(MAX_PAGERANK_ITERATIONS):
        spread = DAMPING * rank[dangling].sum() / num_nodes + (1.0 - DAMPING) / num_nodes
        updated = DAMPING * (transition @ rank) + spread
        converged = np.abs(updated - rank).sum() < num_nodes * tolerance
        rank = updated
        if converged:
            break
    return rank.tolist()


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


def all_fit(paths: list[str], full_cost: Callable[[str], int], budget: int,
            full_lower_bound: Callable[[str], int] = lambda _: 0) -> bool:
    """Whether every file fits in full. True lower bounds decide a clear overflow without counting;
    otherwise files are counted in the given order up to the first overflow."""
    if sum(full_lower_bound(p) for p in paths) > budget:
        return False
    used = 0
    for path in paths:
        used += full_cost(path)
        if used > budget:
            return False
    return True


def choose_modes(
    ranked: list[str],
    full_cost: Callable[[str], int],
    outline_cost: Callable[[str], int | None],
    budget: int,
    full_floor: Callable[[str], int] = lambda _: 0,
) -> dict[str, str]:
    """Mode per file when not everything fits (see `all_fit`); `ranked` is most important first.

    The highest-ranked files keep an outline for as long as the outlines fit (files with no
    outline are omitted), then files are upgraded to full in rank order wherever the remaining
    budget allows. Costs are asked for lazily, in rank order, and a file whose `full_floor` (a
    cheap, plausible minimum of its full cost) exceeds the room left is passed over uncounted, so
    a repository many times the budget is never tokenized whole. Every cost used is exact.
    """
    modes = dict.fromkeys(ranked, OMITTED)
    cost = dict.fromkeys(ranked, 0)
    used = 0
    for path in ranked:
        outline = outline_cost(path)
        if outline is None:
            continue
        if used + outline > budget:
            break  # this one and every lower-ranked outline stay omitted
        modes[path], cost[path] = OUTLINE, outline
        used += outline
    for path in ranked:
        remaining = budget - used + cost[path]
        if full_floor(path) > remaining:
            continue
        full = full_cost(path)
        if full <= remaining and full > cost[path]:
            used += full - cost[path]
            modes[path], cost[path] = FULL, full
    return modes
