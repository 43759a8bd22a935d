"""Prefetch (model/offload.py): while layer L computes, the experts layer L+1's router picks for layer L's
input are copied into L+1's cache (exactly its choice when L+1 routes by token-id hash). On the CPU the
copies are plain copies, so this checks the prediction and the bookkeeping: what was prefetched, and
that the next call counts the prefetched experts it needs as hits; outputs stay exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model.random_checkpoint import init_checkpoint

from .test_offload import _call, _numbered_cache


def _router(ids: list[list[int]]) -> Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]:
    """A stand-in router that always picks `ids` (and says it is not hash-routed)."""
    def route(x: torch.Tensor, token_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(len(ids), len(ids[0])), torch.tensor(ids)
    return route


def test_the_next_layers_predicted_experts_are_prefetched_and_count_as_hits() -> None:
    layer, following = _numbered_cache(num_experts=16, slots=4), _numbered_cache(num_experts=16, slots=4)
    layer.next = (following, _router([[5, 6]]))
    _call(following, [[1, 2], [3, 4]])  # the next layer's cache is full: 1..4
    _call(layer, [[0, 1]])
    assert sorted(following.prefetched) == [5, 6] and following.stats.prefetched == 2
    assert {5, 6} <= set(following.expert_in)  # they replaced the coldest two
    hits, misses = following.stats.hits, following.stats.misses
    assert _call(following, [[5, 7]]).tolist() == [12.0]
    assert following.stats.hits - hits == 1 and following.stats.misses - misses == 1
    assert following.stats.prefetch_hits == 1 and not following.prefetched  # 6 was a wrong guess
    _call(layer, [[0, 1]])
    assert following.stats.prefetched == 2 + 1  # 5 was resident: only 6 copied again


def test_nothing_is_predicted_for_a_call_larger_than_the_next_cache() -> None:
    layer, following = _numbered_cache(num_experts=16, slots=4), _numbered_cache(num_experts=16, slots=4)
    layer.next = (following, _router([[5, 6], [7, 8], [9, 10]]))
    _call(layer, [[0, 1], [2, 3], [0, 2]])  # 6 pairs: a prefill-sized call for a 4-slot cache
    assert following.stats.prefetched == 0


def test_prefetch_stops_while_the_guesses_are_wrong_and_resumes_when_they_improve() -> None:
    """Predictions are scored whether copied or not: below half right (after the warm-up count),
    nothing is copied on them; once they are right again, copying resumes."""
    layer, following = _numbered_cache(num_experts=16, slots=4), _numbered_cache(num_experts=16, slots=4)
    layer.next = (following, _router([[5, 6]]))
    calls = 0
    while following.prefetch_pays():  # 5 and 6 predicted every time, 1 and 2 needed
        _call(layer, [[0, 1]])
        _call(following, [[1, 2]])
        calls += 1
        assert calls < 20
    assert following.predictions >= 8 and following.predictions_right == 0
    copied = following.stats.prefetched
    _call(layer, [[0, 1]])
    assert following.stats.prefetched == copied  # wrong guesses: no longer copied
    _call(following, [[5, 6]])  # ...but still scored
    while not following.prefetch_pays():
        _call(layer, [[0, 1]])
        _call(following, [[5, 6]])
        calls += 1
        assert calls < 60
    layer.next = (following, _router([[7, 8]]))  # right often enough again: a new guess is copied
    before = following.stats.prefetched
    _call(layer, [[0, 1]])
    assert following.stats.prefetched == before + 2 and {7, 8} <= set(following.expert_in)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Layers 0 and 1 hash-routed (layer 1's experts follow from the token ids), 2 and 3 score-routed."""
    path = tmp_path_factory.mktemp("prefetch") / "tiny"
    init_checkpoint(path, "tiny", seed=7, fp8=True, overrides={"num_hash_layers": 2})
    return path


def test_decoding_with_prefetch_equals_resident(checkpoint: Path) -> None:
    resident = model.load(checkpoint, device="cpu", dtype="float32", quantized=True)
    offloaded = model.load(checkpoint, device="cpu", dtype="float32", quantized=True, offload_experts=4)
    caches = [layer.ffn.strategy.offload for layer in offloaded.model.layers]
    assert [c.next[0] if c.next else None for c in caches] == [*caches[1:], None]  # linked in layer order
    ids = torch.randint(0, 32000, (26,), generator=torch.Generator().manual_seed(8)).tolist()
    a_state, b_state = resident.new_state(64), offloaded.new_state(64)
    assert torch.equal(resident.forward(ids[:6], a_state), offloaded.forward(ids[:6], b_state))
    before = [(c.stats.misses, c.stats.hits) for c in caches]
    for token in ids[6:]:
        assert torch.equal(resident.forward([token], a_state), offloaded.forward([token], b_state))
    hashed = caches[1].stats  # predicted exactly by layer 0 from the token ids: every decode lookup hits
    assert hashed.misses == before[1][0] and hashed.prefetch_hits > 0
    assert hashed.hits - before[1][1] == 2 * 20  # two distinct experts per token (top-2), all hits
    scored = caches[2].stats  # predicted by its router on layer 1's input: some guesses land
    assert scored.prefetched > 0 and 0 < scored.prefetch_hits <= scored.prefetched
