"""Expert offload (model/offload.py): routed experts in host memory with a cache of a few per layer on
the engine's device. On the CPU the cache is host memory too, but the bookkeeping (which expert is in
which slot, LRU eviction, streaming through the halves when a call needs more experts than slots) is
the same code the GPU runs, so the results must equal the resident model's exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.kernels.common import interpreting
from v4.model.config import ConfigError
from v4.model.moe import ExpertShard, ExpertStrategy, MoE
from v4.model.offload import ExpertCache, OffloadError, has_offload, offload_experts
from v4.model.random_checkpoint import init_checkpoint
from v4.model.static_decode import StaticDecodeError, StaticDecoder

CHUNKS = (40, 1, 1, 9)  # a prefill that streams, two decode steps, a short chunk


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module", params=[False, True], ids=["float", "fp8-fp4"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    path = tmp_path_factory.mktemp("offload") / "tiny"
    init_checkpoint(path, "tiny", seed=2, fp8=request.param)
    return path, request.param


def _feed(engine: model.Engine, ids: list[int]) -> list[torch.Tensor]:
    state, out, start = engine.new_state(128), [], 0
    for size in CHUNKS:
        out.append(engine.forward(ids[start : start + size], state))
        start += size
    return out


@pytest.mark.parametrize("slots", [3, 8])
def test_offloaded_logits_equal_resident(checkpoint: tuple[Path, bool], slots: int) -> None:
    """Exact on the CPU: the reference loops over the same experts, whatever slot holds them."""
    path, quantized = checkpoint
    resident = model.load(path, device="cpu", dtype="float32", quantized=quantized)
    offloaded = model.load(path, device="cpu", dtype="float32", quantized=quantized, offload_experts=slots)
    ids = _ids(sum(CHUNKS), 1)
    for a, b in zip(_feed(resident, ids), _feed(offloaded, ids)):
        assert torch.equal(a, b)
    caches = [m.strategy.offload for m in offloaded.model.modules() if isinstance(m, MoE)]
    assert caches and all(c.slots == min(slots, 8) for c in caches)
    stats = caches[-1].stats
    if slots < 8:  # the 40-token prefill needs more experts than slots: it streamed them
        assert stats.streamed_calls >= 1
    assert stats.calls == len(CHUNKS) and stats.bytes_copied == stats.misses * caches[-1].expert_bytes
    assert list(resident.generate(ids[:6], 6)) == list(offloaded.generate(ids[:6], 6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("tokens", [40, 1], ids=["streamed", "fetched"])
def test_offloaded_moe_equals_resident_on_cuda(checkpoint: tuple[Path, bool], tokens: int) -> None:
    """Each MoE layer on CUDA: offloaded (streamed through 3 slots, or fetched into them) against the
    same experts resident on the GPU. Compared per layer, not on logits: with 3 slots instead of 8
    experts the grouped kernel may tune another tile config (float32 rounding), and a whole random
    model amplifies rounding through the indexer's discrete top-k choices."""
    path, quantized = checkpoint
    engine = model.load(path, device="cuda", dtype="float32", quantized=quantized, offload_experts=3)
    generator = torch.Generator(device="cuda").manual_seed(tokens)
    for moe in [m for m in engine.model.modules() if isinstance(m, MoE)]:
        hidden = engine.model.config.hidden_size
        x = torch.randn(1, tokens, hidden, device="cuda", generator=generator)
        ids = torch.randint(0, engine.model.config.vocab_size, (1, tokens), device="cuda", generator=generator)
        offloaded = moe(x, ids).reshape(tokens, -1)
        flat = x.reshape(tokens, -1)
        weights, experts = moe.gate(flat, ids.reshape(-1))
        stacks = tuple(t.to("cuda") for t in moe.strategy.offload.host)
        resident = moe._run_experts(flat, weights, experts, stacks) + moe.shared_experts(flat)
        assert torch.allclose(offloaded, resident, rtol=1e-5, atol=1e-6)


def test_experts_live_on_the_host_under_their_names(checkpoint: tuple[Path, bool]) -> None:
    path, quantized = checkpoint
    engine = model.load(path, device="cpu", dtype="float32", quantized=quantized, offload_experts=3)
    moe = engine.model.layers[1].ffn
    stacks = moe.stacked_quantized() if quantized else moe.stacked_weights()
    # the experts' parameters are views of the host stacks, not copies
    assert [t.data_ptr() for t in stacks] == [t.data_ptr() for t in moe.strategy.offload.host]
    names = {n for n in engine.model.state_dict() if ".ffn.experts." in n}
    resident = model.load(path, device="cpu", dtype="float32", quantized=quantized)
    assert names == {n for n in resident.model.state_dict() if ".ffn.experts." in n}
    assert moe.strategy.offload.cache[0].shape[0] == 3 and has_offload(engine.model)


def _decoder_with_rows(engine: model.Engine, prompts: list[list[int]], use_graph: bool,
                       decode_model: torch.nn.Module | None = None) -> tuple[StaticDecoder, list]:
    """A decoder (on `decode_model`, default the engine's) with a row per prompt, each prefilled by `engine`."""
    decoder = StaticDecoder(decode_model or engine.model, batch=len(prompts), capacity=32, use_graph=use_graph)
    states = []
    for row, prompt in enumerate(prompts):
        state = engine.new_state(64, draft=False)
        engine.forward(prompt, state)
        decoder.load_row(row, state)
        states.append(state)
    return decoder, states


def test_static_decoder_with_offloaded_experts(checkpoint: tuple[Path, bool]) -> None:
    """On the CPU the static step runs eagerly through the offload: it equals the eager engine. A graph
    cannot be forced when the cache has fewer slots than a step's (row, expert) pairs."""
    path, quantized = checkpoint
    engine = model.load(path, device="cpu", dtype="float32", quantized=quantized, offload_experts=4)
    with pytest.raises(StaticDecodeError, match="offload cache holds 4"):
        StaticDecoder(engine.model, batch=3, capacity=32, use_graph=True)
    decoder, states = _decoder_with_rows(engine, [_ids(7, 3), _ids(11, 4)], use_graph=False)
    for step in range(6):
        tokens = [_ids(6, 10 + row)[step] for row in range(2)]
        logits = decoder.step(tokens)
        for row in range(2):
            expected = engine.forward([tokens[row]], states[row])[-1]
            assert torch.allclose(logits[row], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_piecewise_graph_equals_the_eager_static_step(checkpoint: tuple[Path, bool]) -> None:
    """On CUDA the step is a piecewise graph (a piece per MoE layer, the host fetching experts between
    pieces): it must replay exactly what the same decoder computes eagerly, step by step."""
    path, quantized = checkpoint
    engine = model.load(path, device="cuda", dtype="float32", quantized=quantized, offload_experts=4)
    prompts = [_ids(7, 3), _ids(11, 4)]
    graphed, _ = _decoder_with_rows(engine, prompts, use_graph=True)
    eager, _ = _decoder_with_rows(engine, prompts, use_graph=False)
    for step in range(6):
        tokens = [_ids(6, 10 + row)[step] for row in range(2)]
        assert torch.allclose(graphed.step(tokens), eager.step(tokens), rtol=1e-6, atol=1e-6)
    assert len(graphed._graph.pieces) == len(engine.model.layers) + 1
    assert not StaticDecoder(engine.model, batch=3, capacity=32).use_graph  # 3 x 2 experts > 4 slots: eager
    with pytest.raises(StaticDecodeError, match="offload cache holds 4"):
        StaticDecoder(engine.model, batch=3, capacity=32, use_graph=True)


def _numbered_cache(num_experts: int, slots: int) -> ExpertCache:
    """A cache whose expert e holds the value e everywhere, to see which expert each slot holds."""
    host = (torch.arange(num_experts, dtype=torch.float32)[:, None, None].expand(num_experts, 2, 3).contiguous(),)
    return ExpertCache(host, slots, "cpu")


def _which_expert(x: torch.Tensor, weights: torch.Tensor, slot_ids: torch.Tensor, cache: tuple[torch.Tensor, ...]):
    """A stand-in grouped kernel: each token's sum of weight x (the expert number its slot holds)."""
    held = cache[0][slot_ids, 0, 0]  # [N, k]
    return (weights * held).sum(1, keepdim=True).expand(-1, x.shape[1]).to(x.dtype)


def _call(cache: ExpertCache, ids: list[list[int]]) -> torch.Tensor:
    ids_t = torch.tensor(ids)
    weights = torch.ones(ids_t.shape)
    x = torch.zeros(len(ids), 4)
    routed, shared = cache.routed(x, weights, ids_t, _which_expert, lambda: torch.ones(1))
    assert torch.equal(shared, torch.ones(1))
    return routed[:, 0]


def test_cache_evicts_the_least_recently_used() -> None:
    cache = _numbered_cache(num_experts=10, slots=4)
    assert _call(cache, [[1, 2], [3, 4]]).tolist() == [3.0, 7.0]
    assert (cache.stats.hits, cache.stats.misses) == (0, 4)
    assert _call(cache, [[1, 1]]).tolist() == [2.0]  # 1 is now the most recent; 2 the least
    assert _call(cache, [[5, 6]]).tolist() == [11.0]  # evicts 2 and 3
    assert sorted(e for e in cache.expert_in if e >= 0) == [1, 4, 5, 6]
    assert (cache.stats.hits, cache.stats.misses) == (1, 6)
    assert _call(cache, [[4, 1], [5, 6]]).tolist() == [5.0, 11.0]
    assert cache.stats.misses == 6 and cache.stats.bytes_copied == 6 * cache.expert_bytes


def test_more_experts_than_slots_stream_through_the_halves() -> None:
    cache = _numbered_cache(num_experts=12, slots=4)
    ids = [[e, (e * 5 + 3) % 12] for e in range(12)]
    expected = [float(a + b) for a, b in ids]
    assert _call(cache, ids).tolist() == expected
    assert cache.stats.streamed_calls == 1 and cache.stats.misses == 12
    held = [(e, s) for s, e in enumerate(cache.expert_in) if e >= 0]
    assert all(int(cache.slot_of[e]) == s for e, s in held)  # the table says what the slots hold
    assert _call(cache, [[held[0][0], held[1][0]]]).tolist() == [float(held[0][0] + held[1][0])]
    assert cache.stats.hits == 2  # what the stream left resident is reused


def test_bad_offload_requests_are_refused(checkpoint: tuple[Path, bool]) -> None:
    path, _ = checkpoint
    with pytest.raises(ConfigError, match="offload_experts"):
        model.load(path, device="cpu", dtype="float32", offload_experts=1)
    with pytest.raises(OffloadError, match="at least 2"):
        _numbered_cache(4, 1)
    engine = model.load(path, device="cpu", dtype="float32")
    engine.model.layers[1].ffn.strategy = ExpertStrategy(shard=ExpertShard(0, 4, lambda routed: routed))
    with pytest.raises(OffloadError, match="expert parallelism"):
        offload_experts(engine.model, 2)


def test_kernels_under_the_interpreter_read_the_cache(checkpoint: tuple[Path, bool], monkeypatch) -> None:
    """The grouped Triton kernel (interpreted) on the cache's slots == the kernel on all experts."""
    if not interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)")
    path, quantized = checkpoint
    monkeypatch.setenv("V4_KERNELS", "interpret")
    resident = model.load(path, device="cpu", dtype="float32", quantized=quantized)
    offloaded = model.load(path, device="cpu", dtype="float32", quantized=quantized, offload_experts=3)
    ids = _ids(8, 5)
    a = resident.forward(ids, resident.new_state(32))
    b = offloaded.forward(ids, offloaded.new_state(32))
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
