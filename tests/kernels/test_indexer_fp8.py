"""kernels/indexer_fp8.py: FP8 queries and keys. The query rounding against our other FP8 quantiser, the
FP8-query reference against the float-query one (top-k overlap), the kernel against its reference
(under TRITON_INTERPRET=1 the FP8 tl.dot is emulated exactly, so no float stand-in is needed), and the
dispatch in model/ops.py."""

from __future__ import annotations

import pytest
import torch

from v4.kernels import indexer as ix
from v4.kernels import indexer_fp8 as f8

from .device import KERNEL_DEVICE, needs_kernel
from .test_indexer import as_mask, indexer_inputs

# ||out - ref|| / ||ref|| of the scores: the interpreter's FP8 dot is exact, so only float32 sum order
# differs; the GPU's FP8 MMA keeps ~14 significant bits over K = 128 (DeepSeek-V3 report, 3.3.2).
TOLERANCE = 1e-5 if KERNEL_DEVICE == "cpu" else 2e-3


def fp8_inputs(batch: int, seq_len: int, heads: int, head_dim: int, num_keys: int, dtype: torch.dtype,
               seed: int = 0, device: str | None = KERNEL_DEVICE) -> tuple[torch.Tensor, ...]:
    """(q, weights, keys_fp8, key_scale): q in `dtype`, keys FP8 as an FP8 state stores them."""
    q, weights, keys = indexer_inputs(batch, seq_len, heads, head_dim, num_keys, torch.float32, seed, device)
    return (q.to(dtype), weights, *ix.quantize_index_keys_fp8(keys))


def overlap(got: torch.Tensor, want: torch.Tensor, num_keys: int) -> float:
    """Share of `want`'s selected keys that `got` selects too."""
    a, b = as_mask(got.cpu(), num_keys), as_mask(want.cpu(), num_keys)
    return float((a & b).sum() / b.sum().clamp(min=1))


# ----------------------------------------------------------------------------- references


def test_query_rounding_is_act_quant_per_head_row() -> None:
    """The same codes and scales as fp8_gemm's act_quant (V4's ue8m0, 1e-4 amax floor) on 128-wide rows;
    exact dequantisation; all-zero rows; a wide dynamic range (subnormal codes)."""
    from v4.kernels.fp8_gemm import act_quant_reference

    q = torch.randn(2, 3, 4, 128) * torch.logspace(-6, 3, 4)[None, None, :, None]
    q[1, 2, 3] = 0.0
    q[0, 1, 2, :64] *= 1e-4
    codes, scale = f8.quantize_index_queries_fp8(q.bfloat16())
    want_codes, want_scale = act_quant_reference(q.bfloat16().reshape(-1, 128), 128, ue8m0=True)
    assert codes.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32 and scale.shape == (2, 3, 4)
    assert torch.equal(codes.reshape(-1, 128).view(torch.uint8), want_codes.view(torch.uint8))
    assert torch.equal(scale.reshape(-1, 1), want_scale)
    assert torch.equal(torch.log2(scale), torch.log2(scale).round())  # powers of two
    back = f8.dequantize_index_queries_fp8(codes, scale)
    assert torch.equal(back[1, 2, 3], torch.zeros(128))
    amax = q.bfloat16().float().abs().amax(-1)
    assert float(((back - q.bfloat16().float()).abs().amax(-1) / amax.clamp(min=1e-30)).max()) <= 2**-3


def test_fp8_queries_keep_most_of_the_float_query_top_k() -> None:
    """Rounding the queries to e4m3 moves near-tied scores only: on V4's head shape with random inputs
    the top-k sets overlap by 97-98% (measured at k = 64 of 600 and 512 of 2K/8K keys), bound 95%."""
    q, weights, keys_fp8, key_scale = fp8_inputs(1, 32, 64, 128, 600, torch.bfloat16, seed=5, device="cpu")
    start, k = 4 * 600 - 32, 64
    floating = ix.indexer_topk_fp8_reference(q, weights, keys_fp8, key_scale, start, 4, 128**-0.5, k)
    rounded = f8.indexer_topk_fp8q_reference(q, weights, keys_fp8, key_scale, start, 4, 128**-0.5, k)
    assert 0.95 <= overlap(rounded, floating, 600) < 1.0


# ----------------------------------------------------------------------------- the kernel


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_rounds_queries_exactly_as_the_reference(dtype: torch.dtype) -> None:
    """Keys +-e_d (scale 1) and one head weighted 1 per query make each score one query element,
    relu(+-q_h[d]) after rounding: the kernel's in-register quantisation must give the same bits."""
    heads, head_dim, seq_len = 4, 32, 12
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, seq_len, heads, head_dim, generator=gen) * torch.logspace(-7, 4, seq_len)[None, :, None, None]
    # Query s is read through head s % 4. Rows whose amax sits on the scale's boundaries: amax / 448 a
    # power of two (448 * 2^k), one bf16 step above or below it, near and under the 1e-4 floor, zero.
    q[0, 3, 3] = 0.0
    q[0, 5, 1, :8] = torch.tensor([0.0, 1.0625, 1.1875, -3.25, 480.0, 2**-12, -(2**-10), 0.09375])
    for s, amax in ((6, 448.0), (7, -450.0), (8, 446.0), (9, 0.21875), (10, 1.75 * 2**-13), (11, 3e-5)):
        q[0, s, s % heads] *= 0.01 * abs(amax) / q[0, s, s % heads].abs().max()
        q[0, s, s % heads, 3] = amax
        q[0, s, s % heads, 5:7] = torch.tensor([3e-5, -1.1e-5]) * amax  # subnormal codes: the scale shows
    q = q.to(dtype)
    eye = torch.eye(head_dim)
    keys_fp8 = torch.cat([eye, -eye])[None].to(torch.float8_e4m3fn)
    key_scale = torch.ones(1, 2 * head_dim)
    head = torch.arange(seq_len) % heads
    weights = torch.nn.functional.one_hot(head, heads).float()[None]
    start = 8 * head_dim  # every key visible to every query
    args = (q, weights, keys_fp8, key_scale, start, 4, 1.0)
    out = f8.indexer_scores_fp8q(*(a.to(KERNEL_DEVICE) if isinstance(a, torch.Tensor) else a for a in args)).cpu()
    rounded = f8.dequantize_index_queries_fp8(*f8.quantize_index_queries_fp8(q))[0, torch.arange(seq_len), head]
    assert torch.equal(out[0], torch.cat([rounded.relu(), (-rounded).relu()], dim=-1))
    assert torch.equal(out, f8.indexer_scores_fp8q_reference(*args))


@needs_kernel
@pytest.mark.parametrize(("batch", "seq_len", "heads", "head_dim", "num_keys", "start", "dtype"), [
    (2, 3, 1, 16, 77, 310, torch.float32),  # ragged T, start off the rate, Di padded to the FP8 dot's 32
    (1, 6, 4, 32, 150, 0, torch.float32),  # start 0: the first queries see nothing
    (1, 2, 4, 32, 90, 101, torch.bfloat16),  # two queries per program (G = 2)
    (1, 1, 64, 128, 100, 399, torch.bfloat16),  # one query at V4's head shape (G = 1)
    (1, 9, 64, 128, 70, 270, torch.bfloat16),  # a prefill chunk at V4's head shape, G > 1, ragged groups
])
def test_scores_kernel_matches_the_fp8_query_reference(batch: int, seq_len: int, heads: int, head_dim: int,
                                                       num_keys: int, start: int, dtype: torch.dtype) -> None:
    from .test_indexer import relative_error

    q, weights, keys_fp8, key_scale = fp8_inputs(batch, seq_len, heads, head_dim, num_keys, dtype, seed=num_keys)
    out = torch.full((batch, seq_len, num_keys), float("nan"), device=KERNEL_DEVICE)  # poison
    f8.indexer_scores_fp8q(q, weights, keys_fp8, key_scale, start, 4, head_dim**-0.5, out=out)
    ref = f8.indexer_scores_fp8q_reference(q, weights, keys_fp8, key_scale, start, 4, head_dim**-0.5)
    assert relative_error(out, ref) < TOLERANCE


@needs_kernel
@pytest.mark.parametrize(("batch", "seq_len", "heads", "head_dim", "num_keys", "start", "k"), [
    (2, 4, 1, 16, 93, 333, 20),  # one head: many exact zero scores, ties to the lowest index
    (1, 7, 4, 32, 60, 0, 9),  # rows with fewer visible keys than k: -1 padding
    (1, 5, 64, 128, 130, 515, 32),  # V4's head shape
])
def test_topk_matches_the_fp8_query_reference(batch: int, seq_len: int, heads: int, head_dim: int, num_keys: int,
                                              start: int, k: int) -> None:
    from benchmarks.kernel_cases.indexer import selection_error

    q, weights, keys_fp8, key_scale = fp8_inputs(batch, seq_len, heads, head_dim, num_keys, torch.float32, seed=k)
    args = (q, weights, keys_fp8, key_scale, start, 4, head_dim**-0.5)
    out = torch.full((batch, seq_len, k), -7, dtype=torch.int32, device=KERNEL_DEVICE)  # poison
    f8.indexer_topk_fp8q(*args, k, out=out)
    want = f8.indexer_topk_fp8q_reference(*args, k)
    kernel_scores = f8.indexer_scores_fp8q(*args)
    # Exact on the kernel's own scores; against the reference's, equal up to near-tied scores.
    assert torch.equal(out, ix.topk_indices_reference(kernel_scores, k))
    assert selection_error(f8.indexer_scores_fp8q_reference(*args), out, want) < TOLERANCE
    assert torch.equal(out < 0, want < 0)


def test_bad_inputs_raise_value_errors() -> None:
    q, weights = torch.randn(1, 2, 4, 32), torch.randn(1, 2, 4)
    keys_fp8, key_scale = ix.quantize_index_keys_fp8(torch.randn(1, 9, 32))
    with pytest.raises(ValueError):
        f8.indexer_scores_fp8q(q, weights, keys_fp8.float(), key_scale, 0, 4, 1.0)  # not FP8 keys
    with pytest.raises(ValueError):
        f8.indexer_scores_fp8q(q, weights, keys_fp8, key_scale[:, :8], 0, 4, 1.0)
    with pytest.raises(ValueError):
        f8.indexer_topk_fp8q(q, weights, keys_fp8, key_scale, 0, 4, 1.0, 0)


# ----------------------------------------------------------------------------- the dispatch


@pytest.mark.parametrize("seq_len", [3, 6])
def test_ops_rounds_queries_from_the_threshold_on_and_the_kernel_agrees(monkeypatch, seq_len: int) -> None:
    """model/ops.py: FP8 keys and at least FP8_QUERY_MIN_ROWS queries take the FP8 tensor-core function,
    fewer the float one on the same FP8-rounded queries (a query selects the same keys however it is
    chunked); references and kernels compute the same function."""
    from v4.kernels.common import interpreting
    from v4.model import ops

    monkeypatch.setattr(ops, "FP8_QUERY_MIN_ROWS", 5)  # the real threshold (1,024) is too slow to interpret
    q, weights, keys_fp8, key_scale = fp8_inputs(1, seq_len, 4, 32, 40, torch.float32, seed=seq_len, device="cpu")
    args = (q, weights, keys_fp8, key_scale, 150, 4, 0.125)
    fp8 = seq_len >= 5
    assert ops.fp8_queries(q, key_scale) == fp8 and not ops.fp8_queries(q, None)
    monkeypatch.setenv("V4_KERNELS", "0")
    scores = ops.indexer_scores(q, weights, keys_fp8, 150, 4, 0.125, key_scale)
    chosen = ops.indexer_topk_fp8(*args, 6)
    want = f8.indexer_scores_fp8q_reference(*args)
    assert torch.equal(scores, want) if fp8 else torch.allclose(scores, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(chosen, ix.topk_indices_reference(want, 6))
    if not interpreting():
        return
    monkeypatch.setenv("V4_KERNELS", "interpret")
    kernel_scores = ops.indexer_scores(q, weights, keys_fp8, 150, 4, 0.125, key_scale)
    finite = torch.isfinite(scores)
    assert torch.equal(finite, torch.isfinite(kernel_scores))
    assert torch.allclose(kernel_scores[finite], scores[finite], rtol=1e-5, atol=1e-6)
    assert torch.equal(ops.indexer_topk_fp8(*args, 6), chosen)


def test_a_query_selects_the_same_keys_alone_as_in_a_chunk(monkeypatch) -> None:
    """The state is chunking-proof: a query scored in a chunk over the threshold (FP8 tensor cores) and the
    same query alone (the float kernel on the rounded query, as decode and verify steps score) agree."""
    from v4.model import ops

    monkeypatch.setattr(ops, "FP8_QUERY_MIN_ROWS", 5)
    monkeypatch.setenv("V4_KERNELS", "0")
    q, weights, keys_fp8, key_scale = fp8_inputs(1, 6, 4, 32, 40, torch.float32, seed=11, device="cpu")
    chunk = ops.indexer_scores(q, weights, keys_fp8, 150, 4, 0.125, key_scale)
    for s in range(6):
        alone = ops.indexer_scores(q[:, s:s + 1], weights[:, s:s + 1], keys_fp8, 150 + s, 4, 0.125, key_scale)
        assert torch.allclose(alone[:, 0], chunk[:, s], rtol=1e-6, atol=1e-6)
