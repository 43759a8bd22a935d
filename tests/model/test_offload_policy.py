"""Which experts the offload cache keeps (model/offload.py): each layer counts its router's choices with
decay and evicts the coldest resident expert, so a skewed routing converges to its hot set and a run of
one-off experts does not push the favourites out (it would under LRU). The stand-in kernel of
test_offload.py shows which expert each slot holds; the tiny model checks outputs stay exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model.moe import MoE
from v4.model.offload import ExpertCache
from v4.model.random_checkpoint import init_checkpoint

from .test_offload import _call, _numbered_cache


def _window_hit_rate(cache: ExpertCache, calls: list[list[list[int]]]) -> float:
    before = (cache.stats.hits, cache.stats.misses)
    for ids in calls:
        expected = [float(sum(row)) for row in ids]
        assert _call(cache, ids).tolist() == expected  # the slots always hold the experts asked for
    hits, misses = cache.stats.hits - before[0], cache.stats.misses - before[1]
    return hits / (hits + misses)


def test_steady_favourites_survive_a_run_of_one_off_experts() -> None:
    """Each call needs one of the hot experts 0, 1, 2 and an expert never seen before. With 4 slots the
    counts keep 0, 1, 2 and cycle the fourth: every hot lookup hits. LRU would evict each hot expert
    two calls before it is needed again and hit nothing."""
    cache = _numbered_cache(num_experts=64, slots=4)
    calls = [[[i % 3, 3 + i]] for i in range(60)]
    _window_hit_rate(cache, calls[:6])
    assert _window_hit_rate(cache, calls[6:]) == 0.5
    assert {0, 1, 2} <= set(cache.expert_in)
    assert cache.coldest(set())[0] == 3 + 59  # the one-off expert goes first


def test_skewed_routing_converges_to_the_hot_set() -> None:
    """Zipf-like routing over 32 experts, 8 slots: the hit rate rises as the counts build up, and the
    most chosen experts end up resident."""
    generator = torch.Generator().manual_seed(0)
    popularity = 1.0 / torch.arange(1, 33, dtype=torch.float64) ** 1.2
    picks = torch.multinomial(popularity.expand(400, -1), 2, replacement=False, generator=generator)
    cache = _numbered_cache(num_experts=32, slots=8)
    calls = [[pair] for pair in picks.tolist()]
    first = _window_hit_rate(cache, calls[:40])
    _window_hit_rate(cache, calls[40:200])
    last = _window_hit_rate(cache, calls[200:])
    assert last > first and last > 0.6
    top = sorted(range(32), key=lambda e: -cache.stats.selections[e])[:4]
    assert set(top) <= set(cache.expert_in)
    assert cache.stats.selections == torch.bincount(picks.reshape(-1), minlength=32).tolist()


def test_the_stream_leaves_the_hottest_resident() -> None:
    """A call needing more experts than slots streams them coldest first, so the hottest stay."""
    cache = _numbered_cache(num_experts=12, slots=4)
    for _ in range(3):
        _call(cache, [[7, 9]])
    ids = [[e, (e + 1) % 12] for e in range(12)]
    assert _call(cache, ids).tolist() == [float(a + b) for a, b in ids]
    assert {7, 9} <= set(cache.expert_in)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "tiny"
    init_checkpoint(path, "tiny", seed=3, fp8=True)
    return path


def test_decoding_through_the_counted_cache_equals_resident(checkpoint: Path) -> None:
    """Token-by-token decoding (each step a cache lookup that may evict) gives the resident model's
    logits exactly; every (token, expert) pair is counted once per layer."""
    resident = model.load(checkpoint, device="cpu", dtype="float32", quantized=True)
    offloaded = model.load(checkpoint, device="cpu", dtype="float32", quantized=True, offload_experts=3)
    ids = torch.randint(0, 32000, (30,), generator=torch.Generator().manual_seed(4)).tolist()
    a_state, b_state = resident.new_state(64), offloaded.new_state(64)
    for token in ids:
        assert torch.equal(resident.forward([token], a_state), offloaded.forward([token], b_state))
    k = offloaded.model.config.num_experts_per_tok
    for moe in (m for m in offloaded.model.modules() if isinstance(m, MoE)):
        stats = moe.strategy.offload.stats
        if moe is offloaded.model.mtp[0].ffn:
            continue  # the MTP block runs on drafts, not on every fed token
        assert sum(stats.selections) == len(ids) * k and stats.calls == len(ids)
        assert stats.hits + stats.misses >= len(ids) and 0 < stats.hit_rate < 1
