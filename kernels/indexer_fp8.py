"""The lightning indexer's scores with FP8 queries as well as FP8 keys, on FP8 tensor cores (prefill).

Why: a prefill chunk scores every (query, key) pair, 2 * Hi * Di = 16K FLOPs each, so at 1M tokens
(T = 256K keys) the indexer is the term that grows fastest. `kernels/indexer.py` widens the FP8 keys to
the queries' bf16 and runs bf16 MMAs; here the queries are quantised to e4m3 too, as DeepSeek's
inference does (`act_quant(q, 128, scale_fmt)`, the q scale folded into the head weights, then
`fp8_index`), so the MMA runs at the FP8 rate, twice bf16's on Hopper.

Query format (decided here, documented in `quantize_index_queries_fp8`): one float32 scale per query
head row of Di (Di = 128 in V4: DeepSeek's 128-wide act_quant block), scale = max(amax, 1e-4) / 448
rounded up to a power of two (ue8m0, V4's scale_fmt, as `kernels/fp8_gemm.act_quant`), codes
q / scale clamped to +-448 and rounded to nearest even. With a power-of-two scale, dividing is exact,
so the quantised query is exactly codes * scale. The keys are `indexer.quantize_index_keys_fp8`'s
(per-key amax / 448 scales, not rounded to powers of two).

score[b, s, t] = ks[t] * sum_h (w[h] * qs[h] * scale) * relu(q8[h] . k8[t]), -inf while key t is not
visible (t >= (start + s + 1) // rate). Both scales are >= 0, so they pass through the relu: the q
scale joins the head weight (once per program) and the key scale multiplies the head sum (once per
key and query), so the only per-(key, head) CUDA-core work is relu, * w and the head sum.

`_scores_fp8_kernel` is `indexer._scores_kernel`'s layout (grid: T splits, groups of G queries, B;
acc = keys [BLOCK_T, Di] @ q^T [Di, G * Hi], heads along accumulator rows) with two changes: each
program quantises its queries in registers once (no FP8 copy of q in memory, no extra launch), and the
dot takes e4m3 on both sides. Queries are held as [G * Hi, Di] and transposed in the dot, as `fp8_gemm`
holds its weights: Hopper's FP8 MMA reads both operands K-major. Compiled offline for sm_90 (triton 3.9,
Di = 128, Hi = 64): the loop is cp.async-pipelined QGMMA, no spills, 127-176 registers, and about half
the instructions of the float-query loop, which widens every key to bf16. Accumulation: Triton's
default for an FP8 dot on sm_90 keeps the tensor cores' own accumulator for the whole K = 128, as
DeepSeek's kernels do per 128-wide block (the V3 report, section 3.3.2: ~14 significant bits), so
scores differ from a float32 sum of the same quantised inputs by ~1e-4 relative on the GPU; under the
interpreter the dot is exact.

What changes against the float-query path: only the queries' rounding (3 mantissa bits). The top-k
then agrees with the float-query top-k on most entries (the benchmark and the tests report the
overlap); it equals exactly the top-k of `indexer_scores_fp8q_reference`, which quantises the
queries the same way. `model/ops.py` takes this path for FP8 keys and prefill-sized query counts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, num_sms
from .indexer import (FP8_MAX, _check_inputs, _indexer_topk, _output, _store_scores, dequantize_index_keys_fp8,
                      indexer_scores_reference, quantize_query_rows, topk_indices_reference, visible_keys)
from .indexer_select import CHUNK

AMAX_FLOOR = 1e-4  # DeepSeek's act_quant: an all-zero row gets a finite scale (and zero codes)
MIN_DOT_DIM = 32  # an FP8 tl.dot needs K >= 32 on sm_90


# ----------------------------------------------------------------------------- references


def _pow2_ceil(t: Tensor) -> Tensor:
    """Smallest power of two >= t (t > 0, normal float32), exact: from the float's exponent bits."""
    bits = t.contiguous().view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exponent << 23).view(torch.float32)


def quantize_index_queries_fp8(q: Tensor) -> tuple[Tensor, Tensor]:
    """Indexer queries as the FP8 path rounds them: one scale per head row.

    Args:
        q: `[B, S, Hi, Di]` bfloat16/float16/float32.
    Returns:
        (float8_e4m3fn `[B, S, Hi, Di]`, float32 `[B, S, Hi]`): scale = max(amax, 1e-4) / 448 rounded
        up to a power of two (ue8m0), codes = q / scale clamped to +-448, to nearest even; the
        quantised query is exactly codes * scale.
    """
    q = q.float()
    amax = q.abs().amax(dim=-1).clamp(min=AMAX_FLOOR)
    scale = _pow2_ceil(amax / torch.full_like(amax, FP8_MAX))  # a tensor divisor: a true division on CUDA
    codes = (q / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes, scale


def dequantize_index_queries_fp8(codes: Tensor, scale: Tensor) -> Tensor:
    """The float32 queries FP8 queries stand for: `codes * scale[..., None]` (exact)."""
    return codes.float() * scale.unsqueeze(-1)


def indexer_scores_fp8q_reference(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int,
                                  rate: int, scale: float, visible: Tensor | None = None) -> Tensor:
    """`indexer.indexer_scores_reference` on FP8-rounded queries and the dequantised FP8 keys.

    Args:
        q: `[B, S, Hi, Di]` float queries (rounded here as `quantize_index_queries_fp8` does);
        weights: `[B, S, Hi]` float32; keys_fp8: `[B, T, Di]` float8_e4m3fn; key_scale: `[B, T]` float32.
    Returns:
        `[B, S, T]` float32 scores, -inf where a key's window has not closed for the query.
    """
    rounded = dequantize_index_queries_fp8(*quantize_index_queries_fp8(q))
    return indexer_scores_reference(rounded, weights, dequantize_index_keys_fp8(keys_fp8, key_scale), start, rate,
                                    scale, visible)


def indexer_topk_fp8q_reference(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int,
                                rate: int, scale: float, k: int, visible: Tensor | None = None) -> Tensor:
    """`[B, S, k]` int32: the top k of `indexer_scores_fp8q_reference` (ascending, ties low, -1 padded)."""
    return topk_indices_reference(
        indexer_scores_fp8q_reference(q, weights, keys_fp8, key_scale, start, rate, scale, visible), k)


# ----------------------------------------------------------------------------- score kernel


def _configs() -> list[triton.Config]:
    """(G queries per program, BLOCK_T, warps, stages); `_prune` keeps those fit for a call."""
    if interpreting():
        shapes = ((1, 32, 4, 1), (2, 32, 4, 1), (4, 32, 4, 1))
    else:
        shapes = ((1, 128, 4, 3), (2, 128, 8, 3), (2, 128, 8, 4), (2, 64, 4, 3), (2, 64, 4, 4),
                  (4, 64, 8, 3), (4, 64, 8, 4), (4, 128, 8, 3))
    return [triton.Config({"G": g, "BLOCK_T": bt}, num_warps=w, num_stages=st) for g, bt, w, st in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """G = the query count when S <= 2, else 2 or 4; N = G * heads up to 256; the [BLOCK_T, N] float32
    accumulator within 64 registers a thread (as in indexer.py: sm_90 builds past it spill)."""
    s_class = named_args["s_class"]
    heads = max(16, triton.next_power_of_2(named_args["Hi"]))

    def fits(config: triton.Config) -> bool:
        group, block_t = config.kwargs["G"], config.kwargs["BLOCK_T"]
        wanted = group == s_class if s_class < 4 else group >= 2
        return wanted and group * heads <= 256 and block_t * group * heads <= 64 * 32 * config.num_warps

    kept = [c for c in configs if fits(c)] or [c for c in configs if c.kwargs["G"] == 1][:1]
    return kept[-1:] if interpreting() else kept


@triton.autotune(configs=_configs(), key=["s_class", "Hi", "Di"], prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=["S", "T", "M", "start", "s_class"])  # s_class: min(S, 4) rounded up, autotune key
def _scores_fp8_kernel(q_ptr, w_ptr, k_ptr, ks_ptr, v_ptr, s_ptr, m_ptr, S, T, M, Hi, Di, start, rate, scale, s_class,
                       sq_b, sq_s, sq_h, sw_b, sw_s, sk_b, sk_t, sks_b, sks_t, sv_b,
                       G: tl.constexpr, HP: tl.constexpr, DP: tl.constexpr, BLOCK_T: tl.constexpr,
                       CHUNK: tl.constexpr, INTERPRET: tl.constexpr, WRITE_MAX: tl.constexpr,
                       PER_QUERY: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    s0 = tl.program_id(1) * G
    per = tl.cdiv(tl.cdiv(T, BLOCK_T), tl.num_programs(0)) * BLOCK_T
    t_lo = tl.program_id(0) * per
    t_hi = tl.minimum(t_lo + per, T)
    col = tl.arange(0, G * HP)  # column = query g of the group, head h
    s_col = s0 + col // HP
    h = col % HP
    col_ok = (s_col < S) & (h < Hi)
    d = tl.arange(0, DP)
    q = tl.load(q_ptr + b * sq_b + s_col[:, None] * sq_s + h[:, None] * sq_h + d[None, :],
                mask=col_ok[:, None] & (d[None, :] < Di), other=0.0)  # [G * HP, DP]
    q8, q_scale = quantize_query_rows(q, INTERPRET)
    w = tl.load(w_ptr + b * sw_b + s_col * sw_s + h, mask=col_ok, other=0.0) * q_scale * scale
    s_row = s0 + tl.arange(0, G)
    visible, t_vis = visible_keys(v_ptr, sv_b, b, s_row, s0, S, start, rate, t_hi, G, PER_QUERY)
    t_mid = t_lo + tl.cdiv(tl.maximum(t_vis - t_lo, 0), BLOCK_T) * BLOCK_T
    for t0 in tl.range(t_lo, t_mid, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        keys = tl.load(k_ptr + b * sk_b + t[:, None] * sk_t + d[None, :],
                       mask=(t[:, None] < T) & (d[None, :] < Di), other=0.0)  # e4m3 [BLOCK_T, DP]
        acc = tl.dot(keys, tl.trans(q8))  # FP8 x FP8 -> float32 [BLOCK_T, G * HP]; both operands K-major
        acc = tl.maximum(acc, 0.0) * w[None, :]
        if G == 1:
            score = tl.sum(acc, axis=1)[:, None]
        else:
            score = tl.sum(tl.reshape(acc, [BLOCK_T, G, HP]), axis=2)
        score = score * tl.load(ks_ptr + b * sks_b + t * sks_t, mask=t < T, other=0.0)[:, None]
        keep = (t[:, None] < visible[None, :]) & (t[:, None] < T)
        score = tl.where(keep, score, float("-inf"))
        _store_scores(s_ptr, m_ptr, score, b, s_row, t0, S, T, M, BLOCK_T, G, CHUNK, WRITE_MAX)
    for t0 in tl.range(t_mid, t_hi, BLOCK_T):
        score = tl.full([BLOCK_T, G], float("-inf"), tl.float32)
        _store_scores(s_ptr, m_ptr, score, b, s_row, t0, S, T, M, BLOCK_T, G, CHUNK, WRITE_MAX)


def _launch(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int, rate: int, scale: float,
            scores: Tensor, maxima: Tensor | None, visible: Tensor | None = None) -> None:
    batch, seq_len, heads, head_dim = q.shape
    num_keys = keys_fp8.shape[1]
    q, weights, keys_fp8 = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, weights, keys_fp8))
    target = 4 * num_sms(q.device, 1)  # programs: ~4 per SM when the queries alone do not fill the GPU

    def grid(meta: dict) -> tuple[int, int, int]:
        num_blocks, num_groups = triton.cdiv(num_keys, meta["BLOCK_T"]), triton.cdiv(seq_len, meta["G"])
        return max(1, min(num_blocks, triton.cdiv(target, batch * num_groups))), num_groups, batch

    m = scores if maxima is None else maxima
    vis = scores if visible is None else visible  # an unused pointer without per-query counts
    _scores_fp8_kernel[grid](
        q, weights, keys_fp8, key_scale, vis, scores, m, seq_len, num_keys, m.shape[-1], heads, head_dim, start,
        rate, scale, min(triton.next_power_of_2(seq_len), 4), q.stride(0), q.stride(1), q.stride(2),
        weights.stride(0), weights.stride(1), keys_fp8.stride(0), keys_fp8.stride(1), key_scale.stride(0),
        key_scale.stride(1), vis.stride(0), HP=max(16, triton.next_power_of_2(heads)),
        DP=max(MIN_DOT_DIM, triton.next_power_of_2(head_dim)), CHUNK=CHUNK, INTERPRET=interpreting(),
        WRITE_MAX=maxima is not None, PER_QUERY=visible is not None)


# ----------------------------------------------------------------------------- launchers


def indexer_scores_fp8q(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int, rate: int,
                        scale: float, *, out: Tensor | None = None, visible: Tensor | None = None) -> Tensor:
    """Triton `indexer_scores_fp8q_reference`: `[B, S, T]` float32.

    Args:
        q: `[B, S, Hi, Di]` bfloat16/float16/float32 (quantised inside, per head row);
        weights: `[B, S, Hi]` float32 (times Hi**-0.5); keys_fp8: `[B, T, Di]` float8_e4m3fn with
        key_scale `[B, T]` float32 (the last dims contiguous; batch/T strides are free).
    """
    _check_inputs(q, weights, keys_fp8, key_scale, start, rate, visible)
    out = _output(out, (*q.shape[:2], keys_fp8.shape[1]), torch.float32, q.device)
    if out.numel():
        _launch(q, weights, keys_fp8, key_scale, start, rate, scale, out, None, visible)
    return out


def indexer_topk_fp8q(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int, rate: int,
                      scale: float, k: int, *, out: Tensor | None = None, visible: Tensor | None = None) -> Tensor:
    """Triton `indexer_topk_fp8q_reference`: this module's scores, then indexer's selection kernel.

    Returns:
        `[B, S, k]` int32 key indices, ascending, -1 padded.
    """
    return _indexer_topk(q, weights, keys_fp8, key_scale, start, rate, scale, k, out, _launch, visible)
