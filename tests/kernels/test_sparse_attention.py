"""Sparse attention: the reference against the model's attention math, the Triton kernels (bf16/fp32 and
FP8 cache, one split and split-K) against the reference, and the FP8 row layout byte by byte."""

from __future__ import annotations

import pytest
import torch

import v4.kernels.sparse_attention as sa
from v4.kernels.sparse_attention import (KeyPrefix, dequantize_kv_fp8, dequantize_kv_rows, quantize_kv_fp8,
                                      sparse_attention, sparse_attention_fp8, sparse_attention_fp8_reference,
                                      sparse_attention_reference)

from .device import KERNEL_DEVICE, needs_kernel

# bf16: the output's own rounding is ~1e-3; Triton's interpreter also truncates p to bf16 (the GPU rounds).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def random_indices(batch: int, seq_len: int, num_keys: int, num_slots: int, generator: torch.Generator,
                   holes: float = 0.25) -> torch.Tensor:
    """Distinct keys per row in random order, about `holes` of the slots -1, the last row of batch 0 all -1;
    slots beyond num_keys are -1."""
    rows = []
    for _ in range(batch * seq_len):
        row = torch.full((num_slots,), -1, dtype=torch.int64)
        taken = min(num_slots, num_keys)
        row[:taken] = torch.randperm(num_keys, generator=generator)[:taken]
        rows.append(row[torch.randperm(num_slots, generator=generator)])
    indices = torch.stack(rows).view(batch, seq_len, num_slots)
    indices[torch.rand(indices.shape, generator=generator) < holes] = -1
    indices[0, -1] = -1
    return indices


def random_inputs(batch: int, seq_len: int, heads: int, dim: int, num_keys: int, num_slots: int,
                  dtype: torch.dtype, seed: int = 0, index_dtype: torch.dtype = torch.int32):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, heads, dim, generator=generator).to(dtype)
    kv = torch.randn(batch, num_keys, dim, generator=generator).to(dtype)
    indices = random_indices(batch, seq_len, num_keys, num_slots, generator).to(index_dtype)
    sink = torch.randn(heads, generator=generator)
    return q, kv, indices, sink


def gathered_attention(q, kv, indices, sink, scale) -> torch.Tensor:
    """The contract written out per (b, s, h) in float64, by gathering: an independent oracle."""
    batch, seq_len, heads, dim = q.shape
    out = torch.zeros(batch, seq_len, heads, dim, dtype=torch.float64)
    for b in range(batch):
        for s in range(seq_len):
            used = indices[b, s][indices[b, s] >= 0].long()
            keys = kv[b, used].double()  # [n, D]
            for h in range(heads):
                logits = keys @ q[b, s, h].double() * scale
                top = torch.cat([logits, sink[h : h + 1].double()]).max()
                weights = torch.exp(logits - top)
                out[b, s, h] = weights @ keys / (weights.sum() + torch.exp(sink[h].double() - top))
    return out


# --------------------------------------------------------------------------------- reference semantics
def test_reference_matches_gathered_formula() -> None:
    q, kv, indices, sink = random_inputs(2, 5, 3, 16, 23, 11, torch.float32, seed=1)
    ref = sparse_attention_reference(q, kv, indices, sink, 0.3)
    assert rel_error(ref, gathered_attention(q, kv, indices, sink, 0.3)) < 1e-6
    assert torch.equal(ref[0, -1], torch.zeros_like(ref[0, -1]))  # no used slot: zeros


def test_reference_ignores_slot_order_and_keeps_dtype() -> None:
    q, kv, indices, sink = random_inputs(1, 4, 2, 32, 30, 12, torch.bfloat16, seed=2, index_dtype=torch.int64)
    shuffled = indices[..., torch.randperm(indices.shape[-1])]
    ref = sparse_attention_reference(q, kv, indices, sink, 0.2)
    assert ref.dtype == torch.bfloat16
    assert torch.equal(ref, sparse_attention_reference(q, kv, shuffled, sink, 0.2))


@pytest.mark.parametrize("layer", [0, 1, 2], ids=["sliding", "csa", "hca"])
def test_reference_matches_model_attention(layer: int) -> None:
    """A tiny model's Attention.forward equals its own math with the core replaced by the reference over
    the indices of the keys it lets each query see (window, then the compressed entries chosen)."""
    from v4.model.attention import Attention
    from v4.model.config import CSA, HCA, SLIDING, V4Config
    from v4.model.layers import apply_rope, rope_cos_sin, unweighted_rms_norm
    from v4.model.state import new_decode_state

    config = V4Config(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, head_dim=32,
                      q_lora_rank=24, o_groups=2, o_lora_rank=16, sliding_window=8, partial_rotary_factor=0.25,
                      layer_types=[SLIDING, CSA, HCA], compress_rates={CSA: 4, HCA: 8}, index_n_heads=4,
                      index_head_dim=16, index_topk=3, n_routed_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32)
    torch.manual_seed(layer)
    attn = Attention(config, layer)
    with torch.no_grad():
        for name, tensor in attn.named_parameters():
            scale = 0.5 if tensor.dim() <= 1 else tensor.shape[-1] ** -0.5
            tensor.copy_(torch.randn(tensor.shape) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
        batch, seq_len = 2, 21
        x = torch.randn(batch, seq_len, config.hidden_size)
        expected = attn(x, 0, new_decode_state(config, 64, "a", torch.float32, "cpu", batch).layers[layer])

        state = new_decode_state(config, 64, "b", torch.float32, "cpu", batch).layers[layer]
        positions = torch.arange(seq_len)
        cos, sin = rope_cos_sin(attn.inv_freq, positions)
        q_residual = attn.q_norm(attn.wq_a(x))
        q = attn.wq_b(q_residual).view(batch, seq_len, config.num_attention_heads, config.head_dim)
        q = apply_rope(unweighted_rms_norm(q, config.rms_norm_eps), cos, sin)
        keys = apply_rope(attn.kv_norm(attn.wkv(x)), cos, sin)
        distance = positions[:, None] - positions[None, :]
        visible = ((distance >= 0) & (distance < config.sliding_window)).expand(batch, -1, -1)
        if attn.compressor is not None:
            entries = attn.compressor(x, 0, state.compressor, attn.inv_freq)
            if attn.indexer is not None:
                picked = attn.indexer(x, q_residual, 0, state.indexer, attn.inv_freq, cos, sin).long()
                picked = torch.where(picked >= 0, picked, entries.shape[1])  # -1 -> a dropped extra column
                chosen = torch.zeros(batch, seq_len, entries.shape[1] + 1, dtype=torch.bool)
                chosen = chosen.scatter(-1, picked, True)[..., :-1]
            else:
                window_ends = (torch.arange(entries.shape[1]) + 1) * attn.compressor.rate - 1
                chosen = (window_ends[None, :] <= positions[:, None]).expand(batch, -1, -1)  # closed windows
            assert chosen.any()
            keys, visible = torch.cat([keys, entries], dim=1), torch.cat([visible, chosen], dim=-1)
        slots = torch.where(visible, torch.arange(keys.shape[1]), -1)
        indices = slots.gather(-1, torch.argsort(torch.rand(slots.shape), dim=-1))  # shuffled, with -1 holes
        out = sparse_attention_reference(q, keys, indices, attn.attn_sink, config.head_dim**-0.5)
        out = apply_rope(out, cos, -sin).reshape(batch, seq_len, config.o_groups, -1)
        wo_a = attn.wo_a.weight.view(config.o_groups, config.o_lora_rank, -1)
        got = attn.wo_b(torch.einsum("bsgi,goi->bsgo", out, wo_a).flatten(2))
    assert rel_error(got, expected) < 1e-5


# ------------------------------------------------------------------------------------------- kernels
def nan_workspace(rows: int, num_splits: int, heads: int, dim: int, device: torch.device):
    return (torch.full((rows, num_splits, heads, dim), float("nan"), device=device),
            torch.full((rows, num_splits, heads), float("nan"), device=device))


def run_kernel(q, kv, indices, sink, scale, fp8: bool, num_splits: int) -> torch.Tensor:
    """The launcher into a NaN-filled output, with a forced number of splits."""
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    return sa._launch(q, kv, indices, sink, scale, fp8=fp8, num_splits=num_splits, out=out)


SHAPES = [  # B, S, H, D, T, K: ragged against BLOCK_H = BLOCK_N = 16 (interpreter config)
    (1, 3, 1, 64, 45, 37),  # one head
    (2, 2, 8, 64, 70, 50),
    (1, 2, 24, 32, 20, 29),  # two head blocks; more slots than keys
    (1, 2, 8, 512, 90, 40),  # V4-Flash head_dim
    (2, 1, 4, 48, 33, 21),  # head_dim not a power of two
]


@needs_kernel
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(shape, dtype, num_splits, monkeypatch) -> None:
    monkeypatch.setattr(sa, "_workspace", nan_workspace)
    batch, seq_len, heads, dim, num_keys, num_slots = shape
    q, kv, indices, sink = (t.to(KERNEL_DEVICE) for t in random_inputs(*shape, dtype, seed=sum(shape)))
    out = run_kernel(q, kv, indices, sink, dim**-0.5, fp8=False, num_splits=num_splits)
    ref = sparse_attention_reference(q, kv, indices, sink, dim**-0.5)
    assert out.dtype == dtype and not out.isnan().any()
    assert rel_error(out, ref) < TOLERANCE[dtype]
    assert torch.equal(out[0, -1].float(), torch.zeros_like(out[0, -1].float()))  # the all -1 row


@needs_kernel
def test_kernel_public_entry_strided_kv_and_int64() -> None:
    """The public launcher (its own split choice: 2 under the interpreter) on a kv sliced from a larger buffer."""
    q, kv, indices, sink = (t.to(KERNEL_DEVICE) for t in random_inputs(2, 1, 8, 64, 360, 300, torch.bfloat16, seed=5,
                                                                         index_dtype=torch.int64))
    buffer = torch.randn(2, 400, 64, device=KERNEL_DEVICE).to(torch.bfloat16)
    buffer[:, :360] = kv
    out = sparse_attention(q, buffer[:, :360], indices, sink, 0.125)
    assert rel_error(out, sparse_attention_reference(q, kv, indices, sink, 0.125)) < TOLERANCE[torch.bfloat16]


# ----------------------------------------------------------------------------------------- FP8 cache
def test_fp8_layout_of_a_hand_made_vector() -> None:
    v = torch.zeros(512)
    v[0], v[1], v[63] = 1.0, -0.5, 448.0  # block 0: amax 448 -> scale 2**0
    v[128] = 1.0  # block 2: amax 1 -> 2**ceil(log2(1/448)) = 2**-8, so 1.0 is stored as 256
    v[448], v[449] = 1.0, -2.0  # RoPE dims, bf16 0x3F80 and 0xC000
    packed = quantize_kv_fp8(v)
    assert packed.dtype == torch.uint8 and packed.shape == (584,)
    expected = torch.zeros(584, dtype=torch.uint8)
    expected[[0, 1, 63, 128]] = torch.tensor([0x38, 0xB0, 0x7E, 0x78], dtype=torch.uint8)  # e4m3 codes
    expected[448:452] = torch.tensor([0x80, 0x3F, 0x00, 0xC0], dtype=torch.uint8)  # little-endian bf16
    expected[576:583] = torch.tensor([127, 1, 119, 1, 1, 1, 1], dtype=torch.uint8)  # zero blocks: 2**-126
    assert torch.equal(packed, expected)
    assert torch.equal(dequantize_kv_fp8(packed, torch.float32), v)


def test_fp8_round_trip_error_bound() -> None:
    generator = torch.Generator().manual_seed(3)
    kv = torch.randn(3, 7, 512, generator=generator) * torch.logspace(-3, 2, 7).view(1, 7, 1)
    kv[0, 0, :64] = 0.0  # an all-zero block
    packed = quantize_kv_fp8(kv.to(torch.bfloat16))
    back = dequantize_kv_fp8(packed, torch.float32)
    blocks = kv[..., :448].unflatten(-1, (7, 64))
    step = 2.0 ** torch.ceil(torch.log2(blocks.abs().amax(-1, keepdim=True).clamp(min=1e-30) / 448)) * 2.0**-9
    error = (back[..., :448].unflatten(-1, (7, 64)) - blocks).abs()
    # e4m3: 3 mantissa bits (relative 2**-4 after rounding), subnormal step 2**-9 x scale; plus bf16 input rounding
    assert (error <= blocks.abs() * (2.0**-4 + 2.0**-8) + step).all()
    assert torch.equal(back[..., 448:], kv[..., 448:].to(torch.bfloat16).float())
    # dequantised rows quantise back to the same values (a block whose amax rounded down may halve its scale)
    assert torch.equal(dequantize_kv_fp8(quantize_kv_fp8(back), torch.float32), back)


def test_fp8_bad_layout_raises() -> None:
    with pytest.raises(ValueError, match="D == 512"):
        quantize_kv_fp8(torch.randn(2, 256))
    with pytest.raises(ValueError, match="rope_dim == 64"):
        quantize_kv_fp8(torch.randn(2, 512), rope_dim=32)
    with pytest.raises(ValueError, match="uint8"):
        dequantize_kv_fp8(torch.zeros(2, 580, dtype=torch.uint8))


@needs_kernel
@pytest.mark.parametrize("num_splits", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fp8_kernel_matches_fp8_reference(dtype, num_splits, monkeypatch) -> None:
    monkeypatch.setattr(sa, "_workspace", nan_workspace)
    q, kv, indices, sink = random_inputs(2, 1, 8, 512, 77, 45, dtype, seed=7)
    packed = quantize_kv_fp8(kv * 3.0).to(KERNEL_DEVICE)
    q, indices, sink = q.to(KERNEL_DEVICE), indices.to(KERNEL_DEVICE), sink.to(KERNEL_DEVICE)
    out = run_kernel(q, packed, indices, sink, 512**-0.5, fp8=True, num_splits=num_splits)
    ref = sparse_attention_fp8_reference(q, packed, indices, sink, 512**-0.5)
    assert not out.isnan().any()
    assert rel_error(out, ref) < TOLERANCE[dtype]


@needs_kernel
def test_fp8_public_entry() -> None:
    q, kv, indices, sink = (t.to(KERNEL_DEVICE) for t in random_inputs(1, 2, 8, 512, 40, 20, torch.bfloat16, seed=8))
    packed = quantize_kv_fp8(kv)
    out = sparse_attention_fp8(q, packed, indices, sink, 0.05)
    assert rel_error(out, sparse_attention_fp8_reference(q, packed, indices, sink, 0.05)) < TOLERANCE[torch.bfloat16]


# ------------------------------------------------------------------------------ key prefix (HCA's entries)
def prefix_inputs(batch: int, seq_len: int, heads: int, dim: int, dtype: torch.dtype, per_batch: bool, seed: int):
    """Rows 0..W-1 listed (a causal window, -1 holes), then a run of `count` entries after them; lengths
    0..count (the first query sees none, the last all), and two outside that range."""
    generator = torch.Generator().manual_seed(seed)
    window, count = 20, 37
    q = torch.randn(batch, seq_len, heads, dim, generator=generator).to(dtype)
    kv = torch.randn(batch, window + count + 3, dim, generator=generator).to(dtype)  # 3 rows past the run
    indices = random_indices(batch, seq_len, window, 11, generator, holes=0.2).to(torch.int32)
    shape = (batch, seq_len) if per_batch else (seq_len,)
    lengths = torch.randint(0, count + 1, shape, generator=generator, dtype=torch.int32)
    flat = lengths.view(-1)
    flat[0], flat[1], flat[2], flat[-1] = 0, count + 5, -3, count  # out of [0, count]: clamped to it
    return q, kv, indices, torch.randn(heads, generator=generator), KeyPrefix(window, count, lengths)


def test_prefix_reference_is_the_listed_form() -> None:
    """A prefix is the same attention as the index list it stands for (the gathered float64 oracle)."""
    q, kv, indices, sink, prefix = prefix_inputs(2, 3, 4, 32, torch.float32, per_batch=True, seed=1)
    listed = torch.cat([indices, prefix.as_indices(torch.int32)], dim=-1)
    assert listed.shape == (2, 3, 11 + 37) and int((listed >= 20).sum()) == int(prefix.lengths.clamp(0, 37).sum())
    ref = sparse_attention_reference(q, kv, indices, sink, 0.2, prefix)
    assert rel_error(ref, gathered_attention(q, kv, listed, sink, 0.2)) < 1e-6


@needs_kernel
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("per_batch", [True, False], ids=["lengths_BS", "lengths_S"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefix_kernel_matches_reference(dtype, per_batch, num_splits, monkeypatch) -> None:
    monkeypatch.setattr(sa, "_workspace", nan_workspace)
    q, kv, indices, sink, prefix = prefix_inputs(2, 3, 8, 64, dtype, per_batch, seed=2 + num_splits)
    q, kv, indices, sink = (t.to(KERNEL_DEVICE) for t in (q, kv, indices, sink))
    prefix = KeyPrefix(prefix.first, prefix.count, prefix.lengths.to(KERNEL_DEVICE))
    out = torch.full(q.shape, float("nan"), dtype=dtype, device=KERNEL_DEVICE)
    out = sa._launch(q, kv, indices, sink, 0.125, fp8=False, num_splits=num_splits, out=out, prefix=prefix)
    ref = sparse_attention_reference(q, kv, indices, sink, 0.125, prefix)
    assert not out.isnan().any()
    assert rel_error(out, ref) < TOLERANCE[dtype]


def test_prefix_bad_inputs_raise() -> None:
    q, kv, indices, sink, prefix = prefix_inputs(1, 3, 4, 32, torch.float32, per_batch=False, seed=3)
    with pytest.raises(ValueError, match="not within"):
        sparse_attention(q, kv, indices, sink, 1.0, KeyPrefix(30, 37, prefix.lengths))
    with pytest.raises(ValueError, match="prefix lengths"):
        sparse_attention(q, kv, indices, sink, 1.0, KeyPrefix(20, 37, prefix.lengths[None, None]))


# ----------------------------------------------------------------------------- FP8 rows dequantised once
@needs_kernel
def test_dequantize_kv_rows_is_exact() -> None:
    """The kernel's dequantisation gives the reference's values bit for bit, strided input included."""
    generator = torch.Generator().manual_seed(9)
    kv = torch.randn(2, 21, 512, generator=generator) * torch.logspace(-4, 3, 21).view(1, 21, 1)
    packed = torch.zeros(2, 24, 584, dtype=torch.uint8)
    packed[:, :21] = quantize_kv_fp8(kv)
    packed = packed.to(KERNEL_DEVICE)[:, :21]  # a slice of a larger state: row stride 584, batch stride 24 rows
    for dtype in (torch.bfloat16, torch.float32):
        got = dequantize_kv_rows(packed, dtype)
        assert got.dtype == dtype and got.shape == (2, 21, 512)
        assert torch.equal(got.cpu(), dequantize_kv_fp8(packed.cpu(), dtype))
    with pytest.raises(ValueError, match="uint8"):
        dequantize_kv_rows(packed[..., :580], torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("with_prefix", [False, True], ids=["listed", "prefix"])
def test_fp8_prefill_rows_dequantise_once(with_prefix, monkeypatch) -> None:
    """From DEQUANT_MIN_ROWS query rows on, the FP8 entry point runs the bf16 kernel on rows dequantised once,
    and matches the FP8 reference like the per-tile path does."""
    q, kv, indices, sink, prefix = prefix_inputs(1, 4, 8, 512, torch.bfloat16, per_batch=False, seed=4)
    packed = quantize_kv_fp8(kv * 2.0).to(KERNEL_DEVICE)
    q, indices, sink = q.to(KERNEL_DEVICE), indices.to(KERNEL_DEVICE), sink.to(KERNEL_DEVICE)
    prefix = KeyPrefix(prefix.first, prefix.count, prefix.lengths.to(KERNEL_DEVICE)) if with_prefix else None
    ref = sparse_attention_fp8_reference(q, packed, indices, sink, 0.04, prefix)
    calls: list[bool] = []
    launch = sa._launch
    monkeypatch.setattr(sa, "_launch", lambda *a, **k: calls.append(k["fp8"]) or launch(*a, **k))
    for min_rows, fp8_tiles in ((4, False), (5, True)):  # 4 query rows: dequantised once; under 5: per tile
        monkeypatch.setattr(sa, "DEQUANT_MIN_ROWS", min_rows)
        out = sparse_attention_fp8(q, packed, indices, sink, 0.04, prefix)
        assert calls[-1] is fp8_tiles
        assert rel_error(out, ref) < TOLERANCE[torch.bfloat16]


# ------------------------------------------------------------------------------------------- inputs
def test_bad_inputs_raise() -> None:
    q, kv, indices, sink = random_inputs(1, 2, 4, 32, 10, 5, torch.float32)
    with pytest.raises(ValueError, match="kv must be"):
        sparse_attention(q, kv.to(torch.bfloat16), indices, sink, 1.0)
    with pytest.raises(ValueError, match="indices must be"):
        sparse_attention(q, kv, indices.float(), sink, 1.0)
    with pytest.raises(ValueError, match="sink must be"):
        sparse_attention(q, kv, indices, sink[:2], 1.0)
    with pytest.raises(ValueError, match="multiple of 16"):
        sparse_attention(q[..., :24], kv[..., :24], indices, sink, 1.0)
    with pytest.raises(ValueError, match="FP8 path"):
        sparse_attention_fp8(q, quantize_kv_fp8(torch.randn(1, 10, 512)), indices, sink, 1.0)


@needs_kernel
def test_benchmark_cases_at_tiny_scale() -> None:
    from benchmarks.kernel_cases.sparse_attention import cases

    for case in cases(KERNEL_DEVICE, tiny=True):
        assert case.bytes_moved > 0 and case.flops > 0
        assert case.check() < 1e-2, case.shape
