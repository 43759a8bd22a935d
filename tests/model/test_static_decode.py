"""Static batched decoding equals the eager path: same logits for every row at its own position,
across window closes (sliding, CSA with the indexer, HCA), with idle rows, through page growth, and
back into eager states that continue exactly."""

from __future__ import annotations

import pytest
import torch

from v4 import model
from v4.model.static_decode import StaticDecodeError, StaticDecoder

PAGE = 64


@pytest.fixture(scope="module")
def engine(hf_checkpoint) -> model.Engine:
    path, _ = hf_checkpoint
    return model.load(path, device="cpu", dtype="float32")


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def _prefilled(engine: model.Engine, ids: list[int]) -> model.DecodeState:
    state = engine.new_state(512)
    if ids:
        engine.forward(ids, state)
    return state


def test_batched_static_steps_match_eager_decoding_per_row(engine) -> None:
    """Rows at lengths 0, 13 and 30 decode 24 tokens each: every step's logits equal the eager
    path's for that row (window closes at every rate land on different steps in different rows)."""
    prompts = [[], _ids(13, 1), _ids(30, 2)]
    continuations = [_ids(24, 10 + row) for row in range(3)]
    decoder = StaticDecoder(engine.model, batch=3, capacity=64, page_tokens=PAGE)
    eager = []
    for row, prompt in enumerate(prompts):
        decoder.load_row(row, _prefilled(engine, prompt))
        eager.append(_prefilled(engine, prompt))
    worst = 0.0
    for step in range(24):
        logits = decoder.step([continuations[row][step] for row in range(3)])
        for row in range(3):
            expected = engine.forward([continuations[row][step]], eager[row])[-1]
            worst = max(worst, _relative_error(logits[row], expected))
    assert worst < 1e-5


def test_inactive_rows_change_nothing_and_rows_go_back_to_eager_states(engine) -> None:
    prompt = _ids(21, 3)
    decoder = StaticDecoder(engine.model, batch=2, capacity=64, page_tokens=PAGE)
    decoder.load_row(0, _prefilled(engine, prompt))
    decoder.load_row(1, _prefilled(engine, prompt))
    follow = _ids(11, 4)
    for token in follow:  # row 1 idles (fed junk) while row 0 decodes
        decoder.step([token, 96], active=[True, False])
    assert decoder.lengths == [32, 21]
    back = engine.new_state(512)
    decoder.store_row(0, back)
    idle = engine.new_state(512)
    decoder.store_row(1, idle)
    probe = _ids(9, 6)
    expected = engine.forward(prompt + follow + probe, engine.new_state(512))[-len(probe):]
    assert _relative_error(engine.forward(probe, back), expected) < 1e-5
    expected_idle = engine.forward(prompt + probe, engine.new_state(512))[-len(probe):]
    assert _relative_error(engine.forward(probe, idle), expected_idle) < 1e-5


def test_capacity_grows_by_pages_and_keeps_the_state(engine) -> None:
    prompt = _ids(PAGE - 3, 7)
    decoder = StaticDecoder(engine.model, batch=1, capacity=16, page_tokens=PAGE)
    assert decoder.capacity == PAGE
    eager = engine.new_state(4 * PAGE)
    engine.forward(prompt, eager)
    decoder.load_row(0, eager)
    eager_copy = engine.new_state(4 * PAGE)
    engine.forward(prompt, eager_copy)
    for token in _ids(8, 8):  # crosses the page boundary
        logits = decoder.step([token])[0]
        assert _relative_error(logits, engine.forward([token], eager_copy)[-1]) < 1e-5
    assert decoder.capacity == 2 * PAGE


def test_bad_input_is_a_clear_error(engine) -> None:
    decoder = StaticDecoder(engine.model, batch=2, capacity=16)
    with pytest.raises(StaticDecodeError, match="2 token ids"):
        decoder.step([1])
    with pytest.raises(StaticDecodeError, match="token ids must be in"):
        decoder.step([1, 97])
    with pytest.raises(StaticDecodeError, match="out of range"):
        decoder.load_row(2, engine.new_state(16))
    with pytest.raises(StaticDecodeError, match="multiple of every compression rate"):
        StaticDecoder(engine.model, batch=1, capacity=16, page_tokens=12)
    assert decoder.lengths == [0, 0]


def test_static_generation_yields_the_eager_ids_and_leaves_the_same_state(engine) -> None:
    prompt = _ids(17, 9)
    eager_state, static_state = engine.new_state(128, draft=False), engine.new_state(128, draft=False)
    eager = list(engine.generate(prompt, 12, state=eager_state, static=False))
    static = list(engine.generate(prompt, 12, state=static_state, static=True))
    assert static == eager
    assert static_state.num_tokens == eager_state.num_tokens == 17 + 11
    probe = _ids(5, 11)
    assert _relative_error(engine.forward(probe, static_state), engine.forward(probe, eager_state)) < 1e-5


def test_batched_generation_equals_one_prompt_at_a_time(engine) -> None:
    prompts = [_ids(5, 12), _ids(19, 13), _ids(2, 14)]
    one_by_one = [list(engine.generate(p, 10, static=False)) for p in prompts]
    stop = one_by_one[1][3]  # row 1 stops early and idles while the others go on
    expected = [ids[: ids.index(stop) + 1] if stop in ids else ids for ids in one_by_one]
    assert engine.generate_batch(prompts, 10, stop=[stop]) == expected
    assert engine.static_decoder(3, 64).batch == 4  # three prompts ran in the batch-4 bucket, one row idle
    assert engine.static_decoder(1, 64).batch == 1 and engine.static_decoder(65, 64).batch == 65


def test_bfloat16_static_decoding_pools_the_same_values_as_eager(hf_checkpoint) -> None:
    """In bfloat16 the eager path pools earlier tokens' gates as stored (rounded) and the newest one
    in float32; the static path must do the same, or top-k choices drift apart."""
    path, _ = hf_checkpoint
    engine = model.load(path, device="cpu", dtype="bfloat16")
    prompt = _ids(21, 4)
    decoder = StaticDecoder(engine.model, batch=1, capacity=64, page_tokens=PAGE)
    state = _prefilled(engine, prompt)
    decoder.load_row(0, state)
    for token in _ids(30, 9):
        assert torch.equal(decoder.step([token])[0], engine.forward([token], state)[-1])


def _held(decoder: StaticDecoder, row: int) -> list[torch.Tensor]:
    """Copies of everything `row` holds (scratch slots and rows excluded)."""
    held = []
    for buffers in decoder.layers:
        held.append(buffers.kv[row, :-1].clone())
        for partial in (buffers.compressor, buffers.indexer):
            if partial is not None:
                held += [partial.partial_kv[row].clone(), partial.partial_gate[row].clone()]
        for keys in (buffers.index_keys, buffers.index_scales):
            if keys is not None:
                held.append(keys[row, :-1].clone())
    return held


def test_an_inactive_row_leaves_every_buffer_byte_identical(engine) -> None:
    """Across ring wraps and window closes of every rate, an idle row's bytes do not change at all."""
    decoder = StaticDecoder(engine.model, batch=3, capacity=64, page_tokens=PAGE)
    for row, length in enumerate((5, 11, 16)):
        decoder.load_row(row, _prefilled(engine, _ids(length, 20 + row)))
    before = _held(decoder, 1)
    for token in _ids(17, 23):
        decoder.step([token, 96, token], active=[True, False, True])
    after = _held(decoder, 1)
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(before, after))
    assert decoder.lengths == [22, 11, 33]


def test_rows_at_window_and_compression_boundaries_match_eager_decoding(engine) -> None:
    """Rows loaded just before, at and after the ring's wrap and the windows' closes (window 8, rates 4
    and 8), and one row never loaded (a fresh decoder at position 0, its first window masked as the
    eager path masks it), decode as the eager path does."""
    lengths = [None, 3, 4, 7, 8, 9, 15, 16]
    decoder = StaticDecoder(engine.model, batch=len(lengths), capacity=64, page_tokens=PAGE)
    eager = []
    for row, length in enumerate(lengths):
        prompt = _ids(length or 0, 30 + row)
        if length is not None:
            decoder.load_row(row, _prefilled(engine, prompt))
        eager.append(_prefilled(engine, prompt))
    worst = 0.0
    for step in range(10):
        tokens = _ids(len(lengths), 40 + step)
        logits = decoder.step(tokens)
        for row, state in enumerate(eager):
            worst = max(worst, _relative_error(logits[row], engine.forward([tokens[row]], state)[-1]))
    assert worst < 1e-5


def test_fp8_projections_of_one_input_run_stacked_and_decode_as_separate_ones(monkeypatch) -> None:
    """With FP8 linears whose widths are whole 128-row scale blocks (V4's), the decoder stacks wq_a + wkv,
    wq_b + the indexer's wq_b and the shared expert's w1 + w3 into one FP8 GEMV each (fused_inputs.py);
    the logits are those of the same decoder running them one by one."""
    from v4.model import fused_inputs
    from v4.model.config import CSA, HCA, V4Config
    from v4.model.quantized_linear import quantize_model
    from v4.model.random_checkpoint import random_state
    from v4.model.v4 import Transformer

    config = V4Config.from_dict({
        "model_type": "deepseek_v4", "vocab_size": 97, "hidden_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "head_dim": 128, "qk_rope_head_dim": 64, "q_lora_rank": 128, "o_groups": 2,
        "o_lora_rank": 128, "index_n_heads": 2, "index_head_dim": 64, "index_topk": 4, "n_routed_experts": 4,
        "num_experts_per_tok": 2, "moe_intermediate_size": 128, "layer_types": [CSA, HCA], "num_hash_layers": 0,
        "num_nextn_predict_layers": 0, "sliding_window": 8, "max_position_embeddings": 4096})
    torch.manual_seed(0)
    net = Transformer(config, with_mtp=False).eval()
    net.load_state_dict(random_state(net), strict=False)
    net = quantize_model(net, linears="fp8", experts=None)
    net.materialize_buffers(torch.device("cpu"))
    ids = _ids(20, 3)

    def decode() -> tuple[StaticDecoder, list[torch.Tensor]]:
        decoder = StaticDecoder(net, batch=1, capacity=32, use_graph=False)
        return decoder, [decoder.step([token]).clone() for token in ids]

    stacked, ours = decode()
    assert [f is not None for f in stacked._query_inputs.values()] == [True, False]  # CSA's two, HCA's one
    assert any(f.scale is not None for fused in stacked._inputs.values() for f in fused)
    assert all(block.ffn.shared_experts.pair is not None for block in net.layers)  # w1 + w3
    monkeypatch.setattr(fused_inputs, "fuse_fp8_inputs", lambda linears: None)
    monkeypatch.setattr("v4.model.static_decode.query_inputs", lambda attn: None)
    monkeypatch.setattr("v4.model.static_decode.shared_expert_pair", lambda expert: None)
    _, theirs = decode()
    assert max(_relative_error(a, b) for a, b in zip(ours, theirs, strict=True)) < 1e-5
