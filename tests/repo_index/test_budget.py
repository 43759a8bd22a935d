"""Budget trimming: rank, whole files first, outlines within their share, omit the rest, keep the dependency order."""

from __future__ import annotations

from pathlib import Path

import pytest

from v4.repo_index import RepoIndex
from v4.repo_index.budget import OUTLINE_SHARE, all_fit, choose_modes
from tests.conftest import make_repo


def _module(name: str, uses: list[str], body_lines: int = 40) -> str:
    imports = "".join(f"from .{u} import {u}_api\n" for u in uses)
    calls = "".join(f"    {u}_api()\n" for u in uses)
    body = "".join(f"    value_{i} = {i} * 2  # body line {i}\n" for i in range(body_lines))
    return f'{imports}\n\ndef {name}_api(\n    first: int = 0,\n    second: int = 1,\n) -> int:\n{calls}{body}    return 0\n\n\nclass {name.title()}Thing:\n    def method(self) -> None:\n        pass\n'


@pytest.fixture
def ranked_repo(tmp_path: Path) -> Path:
    # core is used by everyone, util by two, leaf modules by nobody: PageRank puts core first.
    files = {"pkg/__init__.py": "", "pkg/core.py": _module("core", []), "pkg/util.py": _module("util", ["core"])}
    for i in range(6):
        files[f"pkg/leaf{i}.py"] = _module(f"leaf{i}", ["core", "util"] if i < 2 else ["core"])
    return make_repo(tmp_path / "repo", files)


def test_everything_fits_in_a_large_budget(ranked_repo: Path, tokenizer) -> None:
    plan = RepoIndex(ranked_repo, tokenizer=tokenizer).plan(1_000_000)
    assert {s.mode for s in plan.segments} == {"full"}


def test_a_tight_budget_outlines_low_ranked_files_and_keeps_the_order(ranked_repo: Path, tokenizer) -> None:
    index = RepoIndex(ranked_repo, tokenizer=tokenizer)
    full = index.plan(1_000_000)
    budget = full.total_tokens // 2
    plan = index.plan(budget)
    assert plan.total_tokens <= budget
    modes = {s.path: s.mode for s in plan.segments}
    assert modes["pkg/core.py"] == "full"  # the most referenced file stays whole
    assert "outline" in modes.values()
    assert [s.path for s in plan.segments] == [s.path for s in full.segments]  # same dependency order
    outline = next(s for s in plan.segments if s.mode == "outline")
    assert outline.text.startswith(f"==> {outline.path} (outline) <==\n")
    assert "def " in outline.text and "first: int = 0," in outline.text  # the whole multi-line signature
    assert "body line" not in outline.text  # no body lines
    assert "⋮" in outline.text
    assert list(outline.token_ids) == tokenizer.encode(outline.text)
    assert outline.full_tokens > len(outline.token_ids)


def test_a_tiny_budget_omits_the_lowest_ranked(ranked_repo: Path, tokenizer) -> None:
    index = RepoIndex(ranked_repo, tokenizer=tokenizer)
    outlines_only = sum(s.num_tokens for s in index.plan(1).segments)  # what fits in 1 token: nothing
    assert outlines_only == 0
    probe = index.plan(10**9)
    core = next(s for s in probe.segments if s.path == "pkg/core.py")
    # outline_share=1.0: outlines may use the whole budget (the default share is smaller than core's outline)
    plan = index.plan(core.full_tokens // 3, outline_share=1.0)
    modes = {s.path: s.mode for s in plan.segments}
    assert plan.total_tokens <= core.full_tokens // 3
    assert "omitted" in modes.values() and "outline" in modes.values()
    assert modes["pkg/core.py"] != "omitted"
    omitted = [s for s in plan.segments if s.mode == "omitted"]
    assert all(s.text == "" and s.token_ids == () for s in omitted)
    assert all(s.path.startswith("pkg/leaf") or s.path == "pkg/__init__.py" for s in omitted)


def test_choose_modes_fills_full_then_outlines_within_the_share() -> None:
    ranked = ["a", "b", "c", "d"]
    full = {"a": 50, "b": 40, "c": 30, "d": 20}
    outline = {"a": 10, "b": 10, "c": 10, "d": None}

    def modes(budget: int, share: float) -> dict[str, str]:
        assert not all_fit(ranked, full.__getitem__, budget)
        return choose_modes(ranked, full.__getitem__, outline.__getitem__, budget, outline_share=share)

    assert all_fit(ranked, full.__getitem__, 140) and not all_fit(ranked, full.__getitem__, 139)
    # 100 at 0.2: full within 80 (a 50, b +40 no, c +30 = 80); b's outline (10 <= 20); d has no outline.
    assert modes(100, 0.2) == {"a": "full", "b": "outline", "c": "full", "d": "omitted"}
    # share 0: no outlines at all, the whole budget goes to full files in rank order.
    assert modes(100, 0.0) == {"a": "full", "b": "full", "c": "omitted", "d": "omitted"}
    # 60 at 0.5: full within 30 (c only); outlines a and b (20 <= 30); nothing left to upgrade.
    assert modes(60, 0.5) == {"a": "outline", "b": "outline", "c": "full", "d": "omitted"}
    # 15 at 1.0: no file fits in full; a's outline; b's would overflow (20 > 15).
    assert modes(15, 1.0) == {"a": "outline", "b": "omitted", "c": "omitted", "d": "omitted"}
    # a large outline is skipped, not a stop: a's (40) overflows the share of 30, b's (5) still fits;
    # the last pass spends what is left (60 - 35) on d in full.
    large = {"a": 40, "b": 5, "c": 10, "d": None}
    assert choose_modes(ranked, full.__getitem__, large.__getitem__, 60, outline_share=0.5) == {
        "a": "omitted", "b": "outline", "c": "full", "d": "full"}
    with pytest.raises(ValueError, match="outline_share"):
        choose_modes(ranked, full.__getitem__, outline.__getitem__, 100, outline_share=1.5)


def test_choose_modes_counts_lazily_and_skips_what_cannot_fit() -> None:
    ranked = [f"f{i}" for i in range(100)]
    counted: list[str] = []

    def full_cost(path: str) -> int:
        counted.append(path)
        return 1000

    assert not all_fit(ranked, full_cost, 2500)
    assert counted == ["f0", "f1", "f2"]  # counting stops at the first overflow
    counted.clear()
    modes = choose_modes(ranked, full_cost, lambda _: 10, 2500, full_floor=lambda _: 900, outline_share=0.2)
    assert list(modes.values()).count("full") == 2
    assert list(modes.values()).count("outline") == 50  # 500 tokens: the share, exactly
    # full files within 2000: f0 and f1 are counted and taken; then a lower bound of 900 rules out
    # every other file without counting it, before and after the outlines.
    assert counted == ["f0", "f1"]
    counted.clear()
    assert not all_fit(ranked, full_cost, 2500, full_lower_bound=lambda _: 100)  # 100 x 100 > 2500
    assert counted == []


@pytest.fixture
def big_repo(tmp_path: Path) -> Path:
    # 40 modules over hubs m0..m3, bodies of different lengths: several times any budget below.
    files = {"pkg/__init__.py": ""}
    for i in range(40):
        uses = [f"m{u}" for u in range(min(i, 4)) if (i + u) % 2 == 0 or u == 0]
        files[f"pkg/m{i}.py"] = _module(f"m{i}", uses, body_lines=10 + (i * 37) % 90)
    return make_repo(tmp_path / "big", files)


@pytest.mark.parametrize("share", [OUTLINE_SHARE, 0.1, 0.4])
def test_a_repository_over_budget_is_mostly_whole_files(big_repo: Path, tokenizer, share: float) -> None:
    index = RepoIndex(big_repo, tokenizer=tokenizer)
    everything = index.plan(10**9)
    assert {s.mode for s in everything.segments} == {"full"}  # it fits: all in full, as before
    budget = everything.total_tokens // 5
    plan = index.plan(budget, outline_share=share)
    used = {m: sum(s.num_tokens for s in plan.segments if s.mode == m) for m in ("full", "outline")}
    assert plan.total_tokens <= budget
    assert used["full"] >= plan.total_tokens / 2
    assert 0 < used["outline"] <= budget * share
    assert [s.path for s in plan.segments] == [s.path for s in everything.segments]  # dependency order
    again = RepoIndex(big_repo, tokenizer=tokenizer).plan(budget, outline_share=share)
    assert again.segments == plan.segments  # deterministic, in a new index too


def test_pagerank_matches_networkx() -> None:
    import random

    import networkx as nx

    from v4.repo_index.budget import pagerank

    rng = random.Random(0)
    weights: dict[tuple[int, int], float] = {}
    for _ in range(300):
        a, b = rng.randrange(50), rng.randrange(50)
        if a != b:
            weights[a, b] = weights.get((a, b), 0.0) + rng.random()
    graph = nx.DiGraph()
    graph.add_nodes_from(range(50))
    graph.add_weighted_edges_from((a, b, w) for (a, b), w in weights.items())
    reference = nx.pagerank(graph, weight="weight", tol=1e-12)
    from scipy import sparse

    rows, cols = zip(*weights)
    ours = pagerank(sparse.csr_array((list(weights.values()), (rows, cols)), shape=(50, 50)))
    assert max(abs(reference[i] - ours[i]) for i in range(50)) < 1e-8
