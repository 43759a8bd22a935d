"""Fitting the repository into the token budget: rank files, then choose full, outline or omitted.

Ranking is PageRank over the reference graph (references -> definitions, plus imports), with the
identifier weights Aider's repo map found useful. Pure functions; weights are named here. PageRank
runs as a few sparse matrix-vector products (scipy) over integer node ids, which at 3,000 files and
hundreds of thousands of edges is two orders faster than building a networkx graph for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .graph import FileFacts, family

if TYPE_CHECKING:  # scipy stays a lazy import at run time
    from scipy import sparse

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
# When the repository does not fit, outlines may take at most this share of the budget; the rest goes
# to the highest-ranked files in full. Measured by benchmarks/bench_plan_shares.py (README, "Ordering,
# budget and incremental updates"): with no cap, outlines filled a 1M budget and left 2 files in full.
OUTLINE_SHARE = 0.2

FULL, OUTLINE, OMITTED = "full", "outline", "omitted"


class RankCache:
    """Name ids and per-file rows kept between rankings, so an edit re-derives one file's row.

    Ids are only ever added; a name no file uses any more is an empty column.
    """

    def __init__(self) -> None:
        self.key_ids: dict[tuple[str, str], int] = {}
        self.base_multiplier: list[float] = []  # per key id: the name's own weight
        self.rows: dict[str, tuple[FileFacts, object, object, object]] = {}

    def _id(self, key: tuple[str, str]) -> int:
        found = self.key_ids.get(key)
        if found is None:
            found = self.key_ids[key] = len(self.key_ids)
            self.base_multiplier.append(_name_multiplier(key[1]))
        return found

    def row(self, facts: FileFacts) -> tuple:
        """(definition ids, reference ids, sqrt of reference counts) of one file."""
        import numpy as np

        cached = self.rows.get(facts.path)
        if cached is not None and cached[0] is facts:
            return cached[1:]
        group = family(facts.language)
        definition_ids = np.array(sorted({self._id((group, n)) for n, _ in facts.definitions}), dtype=np.int64)
        reference_ids = np.array([self._id((group, n)) for n, _ in facts.references], dtype=np.int64)
        weights = np.sqrt(np.array([c for _, c in facts.references], dtype=np.float64))
        self.rows[facts.path] = (facts, definition_ids, reference_ids, weights)
        return definition_ids, reference_ids, weights


def rank_files(files: Mapping[str, FileFacts], cache: RankCache | None = None) -> dict[str, float]:
    """PageRank of each file over weighted reference -> definition and import edges.

    Edge weight A -> B: for each name A uses and B defines (same language family, at most
    MAX_RANK_DEFINERS definers), multiplier(name) * sqrt(uses in A) / number of definers; plus
    IMPORT_EDGE_WEIGHT per resolved import. Built as sparse products: refs (files x names) times
    defs (names x files). Ranks are rounded to 12 digits so that the summation order (which a
    `cache` built over many edits changes) cannot reorder ties.
    """
    import numpy as np
    from scipy import sparse

    cache = cache or RankCache()
    paths = sorted(files)
    for gone in set(cache.rows) - set(files):
        del cache.rows[gone]
    rows = [cache.row(files[p]) for p in paths]
    num_files, num_keys = len(paths), len(cache.key_ids)
    file_ids = np.arange(num_files)

    def matrix(ids: list, values: list) -> "sparse.csr_array":
        lengths = [len(i) for i in ids]
        cols = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        vals = np.concatenate(values) if values else np.zeros(0)
        return sparse.csr_array((vals, (np.repeat(file_ids, lengths), cols)), shape=(num_files, num_keys))

    defs = matrix([r[0] for r in rows], [np.ones(len(r[0])) for r in rows])
    refs = matrix([r[1] for r in rows], [r[2] for r in rows])
    num_definers = np.asarray(defs.sum(axis=0)).ravel()
    multiplier = np.asarray(cache.base_multiplier) * np.where(num_definers > COMMON_NAME_DEFINERS,
                                                              COMMON_NAME_MULTIPLIER, 1.0)
    usable = (num_definers > 0) & (num_definers <= MAX_RANK_DEFINERS)
    scale = np.divide(multiplier, num_definers, out=np.zeros(num_keys), where=usable)
    weights = (refs @ sparse.diags_array(scale) @ defs.T).tocsr()
    weights.setdiag(0)  # a file's use of its own names is no edge
    position = {path: i for i, path in enumerate(paths)}
    imports = [(position[p], position[t]) for p in paths for t in files[p].imports if t in position and t != p]
    if imports:
        rows_, cols_ = zip(*imports)
        weights = weights + sparse.csr_array((np.full(len(imports), IMPORT_EDGE_WEIGHT), (rows_, cols_)),
                                             shape=(num_files, num_files))
    weights.eliminate_zeros()
    ranks = pagerank(weights)
    return {path: float(f"{ranks[i]:.12g}") for i, path in enumerate(paths)}


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


def _name_multiplier(name: str) -> float:
    """A name's own weight (the many-definers factor is applied per ranking)."""
    multiplier = 1.0
    is_long = len(name) >= LONG_NAME_MIN_LEN and ("_" in name.strip("_") or name != name.lower())
    if is_long:
        multiplier *= LONG_NAME_MULTIPLIER
    if name.startswith("_"):
        multiplier *= PRIVATE_NAME_MULTIPLIER
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
    outline_share: float = OUTLINE_SHARE,
) -> dict[str, str]:
    """Mode per file when not everything fits (see `all_fit`); `ranked` is most important first.

    Outlines never take more than `outline_share` of the budget, so that they cannot crowd out
    whole files. Three passes, each in rank order: files go in full within the budget less the
    outline share; the files left get outlines within the share (files with no outline are
    omitted); whatever room is still free upgrades more files to full. Costs are asked for lazily,
    and a file whose `full_floor` (a cheap, plausible minimum of its full cost) exceeds the room
    left is passed over uncounted, so a repository many times the budget is never tokenized whole.
    Every cost used is exact. Only modes are chosen here: the context order is the caller's.
    """
    if not 0.0 <= outline_share <= 1.0:
        raise ValueError(f"outline_share must be within [0, 1], got {outline_share}")
    max_outline = int(budget * outline_share)
    modes = dict.fromkeys(ranked, OMITTED)
    cost = dict.fromkeys(ranked, 0)
    used = outlined = 0

    def upgrade(limit: int) -> None:
        nonlocal used, outlined
        for path in ranked:
            if modes[path] == FULL:
                continue
            room = limit - used + cost[path]
            if full_floor(path) > room:
                continue
            full = full_cost(path)
            if full <= room and full > cost[path]:
                used += full - cost[path]
                outlined -= cost[path]
                modes[path], cost[path] = FULL, full

    upgrade(budget - max_outline)
    for path in ranked:
        if outlined >= max_outline or used >= budget:
            break
        outline = outline_cost(path) if modes[path] == OMITTED else None
        # a large outline (a generated API file) is skipped, not a stop: smaller ones still fit
        if outline is not None and outlined + outline <= max_outline and used + outline <= budget:
            modes[path], cost[path] = OUTLINE, outline
            used += outline
            outlined += outline
    upgrade(budget)
    return modes
