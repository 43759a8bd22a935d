"""Routed experts computed on the CPU (model/cpu_experts.py) for offload misses: the tiled dequantise-and-
multiply equals the experts' reference (kernels/moe.py through model/ops.py) for FP4, FP8 and float
weights; the offload cache sends a miss to the CPU when the injected costs say so, unless the expert is
hot enough to re-place; and a model computing misses on the CPU gives the resident model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model import ops
from v4.model.cpu_experts import TILE_ROWS, ExpertCosts, cpu_expert, measure_costs
from v4.model.moe import MoE
from v4.model.offload import ExpertCache
from v4.model.quant import quantize_fp4, quantize_fp8
from v4.model.random_checkpoint import init_checkpoint

CPU_CHEAPER = ExpertCosts(copy_s=1.0, cpu_fixed_s=0.0, cpu_token_s=0.0)
COPY_CHEAPER = ExpertCosts(copy_s=0.0, cpu_fixed_s=1.0, cpu_token_s=0.0)
LIMIT = 10.0


def _experts(fmt: str | None, num_experts: int, hidden: int, inter: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Stacks w1, w3, w2 (each followed by its scale when quantised), as an offload cache holds them."""
    generator = torch.Generator().manual_seed(seed)
    shapes = ((inter, hidden), (inter, hidden), (hidden, inter))
    stacks: list[torch.Tensor] = []
    for rows, cols in shapes:
        weight = torch.randn(num_experts, rows, cols, generator=generator) * 0.05
        if fmt is None:
            stacks.append(weight)
        else:
            stacks.extend((quantize_fp4 if fmt == "fp4" else quantize_fp8)(weight))
    return tuple(stacks)


def _reference(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, fmt: str | None,
               stacks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if fmt is None:
        return ops.moe_experts(x, weights, ids, *stacks, LIMIT)
    return ops.moe_experts_quantized(x, weights, ids, fmt, *stacks, LIMIT)


@pytest.mark.parametrize("fmt", [None, "fp8", "fp4"], ids=["float", "fp8", "fp4"])
@pytest.mark.parametrize("tokens", [1, 5])
def test_cpu_expert_equals_the_reference(fmt: str | None, tokens: int) -> None:
    """Rows past one tile and ragged FP8 blocks (320 = 2.5 x 128) cross every tile edge."""
    hidden, inter = 320, TILE_ROWS + 64
    stacks = _experts(fmt, 3, hidden, inter)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(1))
    for expert in range(3):
        ids = torch.full((tokens, 1), expert)
        expected = _reference(x, torch.ones(tokens, 1), ids, fmt, stacks)
        got = cpu_expert(x, [t[expert] for t in stacks], fmt, LIMIT)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def _cache(fmt: str | None, slots: int, num_experts: int = 16) -> tuple[ExpertCache, tuple[torch.Tensor, ...]]:
    stacks = _experts(fmt, num_experts, 64, 32, seed=2)
    cache = ExpertCache(stacks, slots, "cpu", fmt, LIMIT)
    cache.costs = CPU_CHEAPER
    return cache, stacks


class _Replay:
    """A stand-in for a piecewise graph being replayed: the host callback between two pieces runs as
    the piece before it ends, so `ExpertCache._routed_in_graph` computes what a replay would."""

    def split(self, callback) -> None:
        callback()


def _route(cache: ExpertCache, stacks: tuple[torch.Tensor, ...], ids: list[list[int]], graphed: bool = False) -> None:
    """One MoE call through the cache (eager, or as the graphed step does it), checked against all
    experts resident."""
    ids_t = torch.tensor(ids)
    x = torch.randn(len(ids), 64, generator=torch.Generator().manual_seed(len(ids) + sum(map(sum, ids))))
    weights = torch.rand(ids_t.shape, generator=torch.Generator().manual_seed(3))

    def run(x: torch.Tensor, weights: torch.Tensor, slot_ids: torch.Tensor, held: tuple[torch.Tensor, ...]
            ) -> torch.Tensor:
        return _reference(x, weights, slot_ids, cache.fmt, held)

    if graphed:
        routed, _ = cache._routed_in_graph(x, weights, ids_t, run, lambda: torch.zeros(1), _Replay(), None)
    else:
        routed, _ = cache.routed(x, weights, ids_t, run, lambda: torch.zeros(1))
    assert torch.allclose(routed, _reference(x, weights, ids_t, cache.fmt, stacks), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", [None, "fp4"], ids=["float", "fp4"])
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_misses_go_to_the_cpu_until_the_expert_is_hot_enough_to_re_place(fmt: str | None, graphed: bool) -> None:
    """Graphed: the CPU's pairs reach the kernel as NO_EXPERT slots and their sum is added after it."""
    cache, stacks = _cache(fmt, slots=4)
    for _ in range(5):  # free slots fill first: 0..3 copied and hot
        _route(cache, stacks, [[0, 1], [2, 3]], graphed)
    assert cache.stats.cpu_experts == 0 and sorted(cache.expert_in) == [0, 1, 2, 3]
    _route(cache, stacks, [[4, 0]], graphed)  # 4 is colder than every resident expert: computed on the CPU
    assert cache.stats.cpu_experts == 1 and 4 not in cache.expert_in
    calls = 1
    while 4 not in cache.expert_in:  # 1..3 cool down while 4 warms up, until 4 replaces the coldest
        _route(cache, stacks, [[4, 0]], graphed)
        calls += 1
        assert calls < 20
    assert cache.stats.cpu_experts == calls - 1 and 0 in cache.expert_in
    cache.costs = COPY_CHEAPER
    _route(cache, stacks, [[5, 6]], graphed)  # a copy is cheaper: copied, whatever the heat
    assert {5, 6} <= set(cache.expert_in) and cache.stats.cpu_experts == calls - 1


def test_costs_fit_a_line_through_the_measured_times() -> None:
    stacks = _experts("fp4", 2, 64, 32)
    cache = ExpertCache(stacks, 2, "cpu", "fp4", LIMIT)
    costs = measure_costs(cache.host, cache.cache, "fp4", LIMIT, repeats=1)
    assert costs.copy_s > 0 and costs.cpu_fixed_s >= 0 and costs.cpu_token_s >= 0
    assert ExpertCosts(1.0, 0.5, 0.1).cpu_faster(4) and not ExpertCosts(1.0, 0.5, 0.1).cpu_faster(5)


@pytest.fixture(scope="module", params=[False, True], ids=["float", "fp8-fp4"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    path = tmp_path_factory.mktemp("cpu_experts") / "tiny"
    init_checkpoint(path, "tiny", seed=5, fp8=request.param)
    return path, request.param


def _resident_and_offloaded(checkpoint: tuple[Path, bool], device: str, slots: int
                            ) -> tuple[model.Engine, model.Engine, list[ExpertCache]]:
    """The checkpoint loaded whole and with `slots` experts per layer cached, its misses computed on the CPU."""
    path, quantized = checkpoint
    resident = model.load(path, device=device, dtype="float32", quantized=quantized)
    offloaded = model.load(path, device=device, dtype="float32", quantized=quantized, offload_experts=slots)
    caches = [m.strategy.offload for m in offloaded.model.modules() if isinstance(m, MoE)]
    for cache in caches:
        cache.costs = CPU_CHEAPER
    return resident, offloaded, caches


def test_a_model_computing_misses_on_the_cpu_equals_resident(checkpoint: tuple[Path, bool]) -> None:
    resident, offloaded, caches = _resident_and_offloaded(checkpoint, "cpu", slots=3)
    ids = torch.randint(0, 32000, (24,), generator=torch.Generator().manual_seed(6)).tolist()
    a_state, b_state = resident.new_state(64), offloaded.new_state(64)
    assert torch.allclose(resident.forward(ids[:8], a_state), offloaded.forward(ids[:8], b_state), atol=1e-5)
    for token in ids[8:]:
        assert torch.allclose(resident.forward([token], a_state), offloaded.forward([token], b_state), atol=1e-5)
    assert sum(c.stats.cpu_experts for c in caches) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_graphed_decode_step_computes_misses_on_the_cpu(checkpoint: tuple[Path, bool]) -> None:
    """On CUDA the piecewise graph's host callbacks compute the misses on the CPU (each row's pairs
    there skipped by the kernel as NO_EXPERT): every step's logits equal the resident engine's."""
    from .test_offload import _decoder_with_rows

    resident, offloaded, caches = _resident_and_offloaded(checkpoint, "cuda", slots=4)
    generator = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 32000, (n,), generator=generator).tolist() for n in (7, 11)]
    decoder, states = _decoder_with_rows(resident, prompts, use_graph=True, decode_model=offloaded.model)
    assert decoder.use_graph
    for _ in range(8):
        tokens = torch.randint(0, 32000, (2,), generator=generator).tolist()
        logits = decoder.step(tokens)
        for row in range(2):
            assert torch.allclose(logits[row], resident.forward([tokens[row]], states[row])[-1], atol=1e-4, rtol=1e-4)
    assert sum(c.stats.cpu_experts for c in caches) > 0
