"""kernels/indexer.py: the references against the model's math, the Triton kernels against the references."""

from __future__ import annotations

import pytest
import torch

from v4.kernels import indexer as ix

from .device import KERNEL_DEVICE, needs_kernel

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # ||out - ref|| / ||ref||
NEG_INF = float("-inf")


def mixed_scores(batch: int, rows: int, num_keys: int, seed: int) -> torch.Tensor:
    """Scores with the hard cases: exact ties (relu zeros, -0.0, few distinct values), -inf tails,
    rows with fewer finite entries than k, and an all -inf row."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, rows, num_keys, generator=gen)
    scores[0, 0] = 0.0
    scores[0, 1, num_keys // 3 :] = NEG_INF
    scores[0, 2] = torch.randint(0, 3, (num_keys,), generator=gen).float()
    scores[0, 3] = NEG_INF
    scores[1] = torch.relu(scores[1]) * torch.tensor([1.0, -1.0, 0.5, -0.5])[:rows, None]
    scores[1, :, ::3] = -0.0
    return scores


def as_mask(idx: torch.Tensor, num_keys: int) -> torch.Tensor:
    """[..., k] indices (-1 padded) -> [..., num_keys] bool."""
    mask = torch.zeros(*idx.shape[:-1], num_keys + 1, dtype=torch.bool)
    mask.scatter_(-1, torch.where(idx >= 0, idx, num_keys).long(), True)  # padding lands in a dropped column
    return mask[..., :num_keys]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(out)), "the -inf (invisible) pattern differs"
    return float((out[finite] - ref[finite]).norm() / ref[finite].norm())


def indexer_inputs(batch: int, seq_len: int, heads: int, head_dim: int, num_keys: int, dtype: torch.dtype,
                   seed: int = 0, device: str | None = KERNEL_DEVICE
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, heads, head_dim, generator=gen).to(dtype)
    weights = torch.randn(batch, seq_len, heads, generator=gen) * heads**-0.5
    keys = torch.randn(batch, num_keys, head_dim, generator=gen).to(dtype)
    return q.to(device), weights.to(device), keys.to(device)


# ----------------------------------------------------------------------------- references vs the model


def test_topk_reference_is_a_stable_descending_sort_of_the_visible_scores() -> None:
    """What every chunking must select alike: the k best, ties to the lowest index (ReLU sums are
    often exactly 0), never an invisible (-inf) entry."""
    generator = torch.Generator().manual_seed(11)
    cases = [mixed_scores(2, 4, 90, seed=1)]
    for _ in range(10):
        scores = torch.randint(0, 4, (3, 7, 50), generator=generator).float()
        scores[..., 40:] = float("-inf")
        cases.append(scores)
    for scores in cases:
        for k in (1, 5, 7, 16, 40, 60, 90, 200):
            order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
            want = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True) & torch.isfinite(scores)
            got = ix.topk_indices_reference(scores, k)
            assert torch.equal(as_mask(got, scores.shape[-1]), want)
            count = want.sum(-1, keepdim=True)
            assert torch.equal(got < 0, torch.arange(k)[None, None, :] >= count)  # -1 only as trailing padding
            assert bool((got[..., 1:] > got[..., :-1])[got[..., 1:] >= 0].all())  # ascending
    positions = torch.arange(6) + 9
    visible = (torch.arange(5)[None, :] + 1) * 4 - 1 <= positions[:, None]  # entry w's window ends at 4w + 3
    scores = ix.indexer_scores_reference(*indexer_inputs(1, 6, 2, 16, 5, torch.float32, device="cpu"), 9, 4, 0.25)
    assert torch.equal(torch.isfinite(scores[0]), visible)


def test_reference_equals_the_models_indexer() -> None:
    from v4.model.attention import Indexer
    from v4.model.config import V4Config
    from v4.model.layers import apply_rope, rope_cos_sin, rope_inv_freq
    from v4.model.state import CompressorState
    from tests.model.conftest import TINY, randomize

    config = V4Config.from_dict({**TINY, "model_type": "deepseek_v4"})
    indexer = Indexer(config)
    randomize(indexer, seed=3)
    inv_freq = rope_inv_freq(config.rope_parameters["compress"], config.qk_rope_head_dim)
    gen = torch.Generator().manual_seed(4)
    state = CompressorState.empty(1, 64, indexer.rate, config.index_head_dim, True, torch.float32, "cpu")
    start = 0
    for seq_len in (13, 1, 22):  # a prefill, a decode step, a chunk: windows close inside each
        x = torch.randn(1, seq_len, config.hidden_size, generator=gen)
        q_residual = torch.randn(1, seq_len, config.q_lora_rank, generator=gen)
        cos, sin = rope_cos_sin(inv_freq, torch.arange(seq_len) + start)
        with torch.no_grad():
            chosen = indexer(x, q_residual, start, state, inv_freq, cos, sin)
            keys = state.entries[:, : (start + seq_len) // indexer.rate]
            q = apply_rope(indexer.wq_b(q_residual).view(1, seq_len, config.index_n_heads, -1), cos, sin)
            weights = indexer.weights_proj(x).float() * config.index_n_heads**-0.5
        got = ix.indexer_topk_reference(q, weights, keys, start, indexer.rate, config.index_head_dim**-0.5,
                                        config.index_topk)
        assert torch.equal(got, chosen)
        assert not bool(((got >= 0) & (got >= ((torch.arange(seq_len) + start + 1) // indexer.rate)[None, :, None])).any())
        start += seq_len


def test_fp8_key_quantisation() -> None:
    keys = torch.randn(2, 37, 128) * torch.logspace(-3, 2, 37)[None, :, None]
    keys[1, 5] = 0.0
    keys_fp8, key_scale = ix.quantize_index_keys_fp8(keys)
    assert keys_fp8.dtype == torch.float8_e4m3fn and key_scale.dtype == torch.float32
    assert torch.allclose(key_scale, keys.abs().amax(-1) / 448)
    back = ix.dequantize_index_keys_fp8(keys_fp8, key_scale)
    assert torch.equal(back[1, 5], torch.zeros(128))
    assert float((back - keys).abs().max(-1).values.div(keys.abs().amax(-1).clamp(min=1e-30)).max()) <= 2**-4


def test_bad_inputs_raise_value_errors() -> None:
    q, weights, keys = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4), torch.randn(1, 9, 16)
    bad = [
        (q[0], weights, keys, None),
        (q, weights.double(), keys, None),
        (q, weights, keys[..., :8], None),
        (q, weights, keys.bfloat16(), None),
        (q, weights, keys, torch.ones(1, 9)),  # scales with non-FP8 keys
        (q, weights, keys.to(torch.float8_e4m3fn), torch.ones(1, 8)),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            ix._check_inputs(*args, start=0, rate=4)
    with pytest.raises(ValueError):
        ix._check_inputs(q, weights, keys, None, start=0, rate=0)
    with pytest.raises(ValueError):
        ix._output(torch.empty(2, 3), (3, 2), torch.float32, torch.device("cpu"))


# ----------------------------------------------------------------------------- Triton kernels


@needs_kernel
@pytest.mark.parametrize(("num_keys", "k", "block_m", "block_c"),
                         [(100, 16, 8192, 512), (1, 4, 8192, 512), (333, 500, 8192, 512), (333, 37, 16, 2),
                          (517, 3, 32, 1)])
def test_topk_selection_is_exact_on_given_scores(num_keys: int, k: int, block_m: int, block_c: int) -> None:
    scores = mixed_scores(2, 4, num_keys, seed=num_keys + k).to(KERNEL_DEVICE)
    out = torch.full((2, 4, k), -7, dtype=torch.int32, device=KERNEL_DEVICE)  # poison
    if (block_m, block_c) == (8192, 512):
        ix.topk_indices(scores, k, out=out)  # the public entry
    else:  # small blocks: every phase loops over several blocks
        ix.launch_select(scores, ix._chunk_maxima(scores), k, out, block_m, block_c)
    assert torch.equal(out, ix.topk_indices_reference(scores, k).to(KERNEL_DEVICE))


@needs_kernel
@pytest.mark.parametrize(("batch", "seq_len", "heads", "head_dim", "num_keys", "start", "dtype"), [
    (2, 3, 1, 16, 77, 310, torch.float32),  # ragged T, start not a multiple of the rate
    (1, 6, 4, 32, 150, 0, torch.float32),  # start 0: the first queries see nothing
    (1, 2, 4, 32, 90, 101, torch.float32),  # two queries per program (G = 2)
    (1, 1, 64, 128, 200, 799, torch.bfloat16),  # decode at V4's head shape
    (1, 5, 64, 128, 70, 270, torch.bfloat16),  # a prefill chunk, G > 1
])
def test_scores_kernel_matches_reference(batch: int, seq_len: int, heads: int, head_dim: int, num_keys: int,
                                         start: int, dtype: torch.dtype) -> None:
    q, weights, keys = indexer_inputs(batch, seq_len, heads, head_dim, num_keys, dtype)
    out = torch.full((batch, seq_len, num_keys), float("nan"), device=KERNEL_DEVICE)
    ix.indexer_scores(q, weights, keys, start, 4, head_dim**-0.5, out=out)
    ref = ix.indexer_scores_reference(q, weights, keys, start, 4, head_dim**-0.5)
    assert relative_error(out, ref) < TOLERANCE[dtype]


@needs_kernel
@pytest.mark.parametrize(("batch", "seq_len", "heads", "head_dim", "num_keys", "start", "k", "fp8"), [
    (2, 4, 1, 16, 93, 333, 20, False),  # one head: many exact zero scores, ties to the lowest index
    (1, 7, 4, 32, 60, 0, 9, False),  # start 0: rows with fewer visible keys than k, -1 padding
    (1, 3, 4, 32, 130, 515, 16, True),  # FP8 keys
    (2, 1, 64, 128, 150, 599, 24, True),  # FP8 decode at V4's head shape, batch 2
])
def test_indexer_topk_matches_reference(batch: int, seq_len: int, heads: int, head_dim: int, num_keys: int,
                                        start: int, k: int, fp8: bool) -> None:
    from benchmarks.kernel_cases.indexer import selection_error

    q, weights, keys = indexer_inputs(batch, seq_len, heads, head_dim, num_keys, torch.float32, seed=k)
    scale = head_dim**-0.5
    out = torch.full((batch, seq_len, k), -7, dtype=torch.int32, device=KERNEL_DEVICE)  # poison
    if fp8:
        keys_fp8, key_scale = ix.quantize_index_keys_fp8(keys)
        ix.indexer_topk_fp8(q, weights, keys_fp8, key_scale, start, 4, scale, k, out=out)
        want = ix.indexer_topk_fp8_reference(q, weights, keys_fp8, key_scale, start, 4, scale, k)
        ref_scores = ix.indexer_scores_reference(q, weights, ix.dequantize_index_keys_fp8(keys_fp8, key_scale),
                                                 start, 4, scale)
        kernel_scores = ix.indexer_scores(q, weights, keys_fp8, start, 4, scale, key_scale)
    else:
        ix.indexer_topk(q, weights, keys, start, 4, scale, k, out=out)
        want = ix.indexer_topk_reference(q, weights, keys, start, 4, scale, k)
        ref_scores = ix.indexer_scores_reference(q, weights, keys, start, 4, scale)
        kernel_scores = ix.indexer_scores(q, weights, keys, start, 4, scale)
    assert relative_error(kernel_scores, ref_scores) < 1e-5
    # Exact against the reference selection on the kernel's own scores; against the reference scores,
    # the selected values agree (the sets may differ only between scores equal to fp32 rounding).
    assert torch.equal(out, ix.topk_indices_reference(kernel_scores, k))
    assert selection_error(ref_scores, out, want) < 1e-5
    assert torch.equal(out < 0, want < 0)


def test_per_query_counts_are_the_positions_counts_when_they_agree() -> None:
    """`visible` [B, S] replaces (start, rate): the same counts give the same scores; other counts mask
    each query's own tail (a static decode step's rows at their own positions)."""
    q, weights, keys = indexer_inputs(2, 3, 4, 16, 40, torch.float32, device="cpu")
    counts = ((torch.arange(3) + 70 + 1) // 4).to(torch.int32).expand(2, 3).contiguous()
    by_position = ix.indexer_scores_reference(q, weights, keys, 70, 4, 0.25)
    assert torch.equal(ix.indexer_scores_reference(q, weights, keys, 0, 1, 0.25, counts), by_position)
    own = torch.tensor([[0, 5, 40], [39, 1, 17]], dtype=torch.int32)
    scores = ix.indexer_scores_reference(q, weights, keys, 0, 1, 0.25, own)
    assert torch.equal(torch.isfinite(scores), torch.arange(40) < own[..., None])


@needs_kernel
@pytest.mark.parametrize(("batch", "seq_len", "heads", "num_keys", "fp8"), [
    (3, 1, 4, 70, False),  # decode rows at their own positions
    (2, 2, 64, 90, True),  # the verify step's two tokens per row, FP8 keys at V4's head count
])
def test_kernels_take_per_query_counts(batch: int, seq_len: int, heads: int, num_keys: int, fp8: bool) -> None:
    q, weights, keys = indexer_inputs(batch, seq_len, heads, 32, num_keys, torch.float32, seed=3)
    gen = torch.Generator().manual_seed(1)
    visible = torch.randint(0, num_keys + 1, (batch, seq_len), generator=gen, dtype=torch.int32)
    visible[0, 0], visible[-1, -1] = 0, num_keys  # none and all
    visible = visible.to(KERNEL_DEVICE)
    key_scale = None
    if fp8:
        keys, key_scale = ix.quantize_index_keys_fp8(keys)
        ref = ix.indexer_scores_reference(q, weights, ix.dequantize_index_keys_fp8(keys, key_scale), 0, 1, 0.5,
                                          visible)
    else:
        ref = ix.indexer_scores_reference(q, weights, keys, 0, 1, 0.5, visible)
    scores = ix.indexer_scores(q, weights, keys, 0, 1, 0.5, key_scale, visible=visible)
    assert relative_error(scores, ref) < 1e-5
    topk = ix.indexer_topk_fp8 if fp8 else ix.indexer_topk
    chosen = topk(q, weights, keys, *((key_scale,) if fp8 else ()), 0, 1, 0.5, 8, visible=visible)
    assert torch.equal(chosen, ix.topk_indices_reference(scores, 8))
    with pytest.raises(ValueError, match="visible must be int32"):
        ix.indexer_scores(q, weights, keys, 0, 1, 0.5, key_scale, visible=visible.long())


@needs_kernel
def test_weights_scaled_in_the_kernel_and_a_strided_result() -> None:
    """A decode step hands the kernel weights_proj's bf16 output (a column slice) with the head scale, and
    the window-first index list's top-k part as `out`: the same selection as float32 weights scaled
    first, written into those columns alone."""
    q, _, keys = indexer_inputs(2, 1, 4, 32, 60, torch.float32, seed=7)
    projected = torch.randn(2, 1, 10, device=KERNEL_DEVICE).bfloat16()  # [wq | weights] of one GEMM
    weights = projected[..., 6:]
    visible = torch.tensor([[60], [33]], dtype=torch.int32, device=KERNEL_DEVICE)
    want = ix.indexer_topk(q, weights.float() * 0.5, keys, 0, 1, 0.25, 8, visible=visible)
    index_list = torch.full((2, 1, 3 + 8), 77, dtype=torch.int32, device=KERNEL_DEVICE)
    ix.indexer_topk(q, weights, keys, 0, 1, 0.25, 8, visible=visible, weight_scale=0.5, out=index_list[..., 3:])
    assert torch.equal(index_list[..., 3:], want) and (index_list[..., :3] == 77).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_queries_rounded_in_the_kernel_are_the_queries_rounded_before_it(dtype: torch.dtype) -> None:
    """`round_queries` FP8-rounds each head row in registers, exactly as `indexer_fp8`'s rounding of the
    whole tensor: the scores are bit for bit those of the pre-rounded queries (no launches around it)."""
    from v4.kernels import indexer_fp8 as f8

    q, weights, keys = indexer_inputs(2, 2, 64, 128, 50, dtype, seed=5)
    q = q * torch.logspace(-6, 3, 64, device=q.device)[None, None, :, None].to(dtype)  # scales far apart
    keys_fp8, key_scale = ix.quantize_index_keys_fp8(keys)
    rounded = f8.dequantize_index_queries_fp8(*f8.quantize_index_queries_fp8(q)).to(dtype)
    want = ix.indexer_scores(rounded, weights, keys_fp8, 190, 4, 0.1, key_scale)
    got = ix.indexer_scores(q, weights, keys_fp8, 190, 4, 0.1, key_scale, round_queries=True)
    assert torch.equal(got, want) and not torch.equal(rounded, q)


@needs_kernel
def test_benchmark_cases_run_at_tiny_scale() -> None:
    from benchmarks.kernel_cases.indexer import cases

    built = cases(KERNEL_DEVICE, tiny=True)
    assert len(built) == 7 and all(c.bytes_moved > 0 and c.flops > 0 for c in built)
    assert built[0].check() < 1e-5 and built[-1].check() < 1e-5  # the last: FP8 queries
