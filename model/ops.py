"""The one dispatch point between the engine and `kernels/`: the Triton kernel on CUDA, the PyTorch
reference beside it everywhere else.

Every hot path of the model calls a function here, never a kernel module directly, so the CPU path
(and the transformers parity tests) run exactly the references the kernels are tested against.
`V4_KERNELS=0` forces the references on CUDA too (to compare, or to work around a kernel);
`V4_KERNELS=interpret` runs the kernels on CPU tensors under `TRITON_INTERPRET=1` (tests only: slow).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from v4.kernels import common as _common
from v4.kernels import compress_step as _compress_step
from v4.kernels import compressor as _compressor
from v4.kernels import decode_gemv as _decode_gemv
from v4.kernels import decode_moe as _decode_moe
from v4.kernels import fp8_gemm as _fp8_gemm
from v4.kernels import indexer as _indexer
from v4.kernels import indexer_fp8 as _indexer_fp8
from v4.kernels import kv_write as _kv_write
from v4.kernels import mhc as _mhc
from v4.kernels import moe as _moe
from v4.kernels import moe_route as _moe_route
from v4.kernels import norm_rope as _norm_rope
from v4.kernels import sparse_attention as _attention
from v4.kernels import step_indices as _step_indices
from v4.kernels import swiglu as _swiglu


# DeepSeek's FP8 rows for compressed KV entries: e4m3 codes of the non-RoPE dims in blocks with ue8m0
# scales, the RoPE dims in bf16; the layout is fixed at these sizes.
FP8_KV_DIM, FP8_KV_ROPE_DIM, FP8_KV_ROW_BYTES = _attention.KV_DIM, _attention.ROPE_DIM, _attention.PACKED_DIM

# Attention slots given as a run of consecutive rows and a length per query (HCA's compressed entries)
# rather than an index list per query.
KeyPrefix = _attention.KeyPrefix

# The expert id of a (token, slot) pair that runs no expert here (expert parallel: another rank's
# expert): every routed-expert kernel and reference reads no weights for it and gives it a zero row.
NO_EXPERT = _moe.NO_EXPERT

# The indexer over FP8 keys rounds its queries to FP8 too, one scale per head row (as DeepSeek does),
# whatever the number of queries, so a query selects the same keys in a prefill chunk, alone, in a
# decode or a verify step: the state stays chunking-proof. From this many queries per call on, the
# rounded queries are scored on FP8 tensor cores (kernels/indexer_fp8.py): a prefill chunk (4,096 on
# CUDA) is compute-bound there. Fewer queries (decode, verify steps, short chunks) are bound by reading
# the keys: they keep the float kernel, fed the rounded queries (products of FP8 values with power-of-two
# scales are exact in float32, so the two paths differ only in the order of float32 sums).
FP8_QUERY_MIN_ROWS = 1024


def kernels_enabled(t: Tensor) -> bool:
    """Whether `t`'s computation goes to the Triton kernels."""
    mode = os.environ.get("V4_KERNELS", "1")
    if mode == "0":
        return False
    if t.is_cuda:
        return True
    return mode == "interpret" and _common.interpreting()


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMSNorm over the last dim (weight None: unweighted), float32 inside, cast back."""
    fn = _norm_rope.rms_norm if kernels_enabled(x) else _norm_rope.rms_norm_reference
    return fn(x, weight, eps)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Interleaved RoPE on the trailing `2 * cos.shape[-1]` channels (`-sin` undoes it)."""
    fn = _norm_rope.apply_rope if kernels_enabled(x) else _norm_rope.apply_rope_reference
    return fn(x, cos, sin)


def rms_norm_rope(x: Tensor, weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """RMSNorm then RoPE, fused on CUDA (queries per head, the shared KV vector)."""
    fn = _norm_rope.rms_norm_rope if kernels_enabled(x) else _norm_rope.rms_norm_rope_reference
    return fn(x, weight, eps, cos, sin)


def compress_windows(kv: Tensor, gate: Tensor, norm_weight: Tensor, eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """Softmax-gated pooling of each window, RMSNorm, RoPE at the window's first position."""
    fn = _compressor.compress_windows if kernels_enabled(kv) else _compressor.compress_windows_reference
    return fn(kv, gate, norm_weight, eps, cos, sin)


def indexer_topk(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float, k: int,
                 visible: Tensor | None = None, *, weight_scale: float = 1.0, out: Tensor | None = None) -> Tensor:
    """The lightning indexer's top-k compressed entries per query: `[B, S, k]` int32, -1 = none. A query at
    position p sees the entries of closed windows, (p + 1) // rate of them; `visible` `[B, S]` int32 gives
    each query's count instead (the static decoder's rows sit at their own positions). The head weights
    are `weights.float() * weight_scale`; the result goes to `out` when given (rows may be strided)."""
    if kernels_enabled(q):
        return _indexer.indexer_topk(q, weights, keys, start, rate, scale, k, visible=visible,
                                     weight_scale=weight_scale, out=out)
    chosen = _indexer.indexer_topk_reference(q, weights.float() * weight_scale, keys, start, rate, scale, k, visible)
    return chosen if out is None else out.copy_(chosen)


def fp8_queries(q: Tensor, key_scale: Tensor | None) -> bool:
    """Whether the indexer call scores on FP8 tensor cores: FP8 keys and at least FP8_QUERY_MIN_ROWS queries
    (below that the float kernel gets the FP8-rounded queries: `_rounded_queries`)."""
    return key_scale is not None and q.shape[1] >= FP8_QUERY_MIN_ROWS


def _rounded_queries(q: Tensor) -> Tensor:
    """`q` rounded to FP8 per head row and back (the same values the FP8 score kernel multiplies)."""
    return _indexer_fp8.dequantize_index_queries_fp8(*_indexer_fp8.quantize_index_queries_fp8(q)).to(q.dtype)


def indexer_topk_fp8(q: Tensor, weights: Tensor, keys: Tensor, key_scale: Tensor, start: int, rate: int,
                     scale: float, k: int, visible: Tensor | None = None, *, weight_scale: float = 1.0,
                     out: Tensor | None = None) -> Tensor:
    """`indexer_topk` over float8_e4m3fn keys `[B, T, Di]` with float32 per-key scales `[B, T]`; the
    queries are FP8-rounded too (on FP8 tensor cores when `fp8_queries` says so, else in the float-query
    kernel, which also scales the weights: a decode step launches nothing around it)."""
    kernels = kernels_enabled(q)
    if kernels and not fp8_queries(q, key_scale):
        return _indexer.indexer_topk_fp8(q, weights, keys, key_scale, start, rate, scale, k, visible=visible,
                                         round_queries=True, weight_scale=weight_scale, out=out)
    weights = weights.float() * weight_scale
    if fp8_queries(q, key_scale):
        if kernels:
            return _indexer_fp8.indexer_topk_fp8q(q, weights, keys, key_scale, start, rate, scale, k, visible=visible,
                                                  out=out)
        chosen = _indexer_fp8.indexer_topk_fp8q_reference(q, weights, keys, key_scale, start, rate, scale, k, visible)
    else:
        chosen = _indexer.indexer_topk_fp8_reference(_rounded_queries(q), weights, keys, key_scale, start, rate, scale,
                                                     k, visible)
    return chosen if out is None else out.copy_(chosen)


def indexer_scores(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float,
                   key_scale: Tensor | None = None) -> Tensor:
    """The indexer's scores `[B, S, T]` float32, -inf where a key's window has not closed for the query;
    with `key_scale`, `keys` are float8_e4m3fn scaled per key and the queries FP8-rounded. (The model
    calls `indexer_topk*`; this is what those select from, for inspection and tests.)"""
    kernels = kernels_enabled(q)
    if fp8_queries(q, key_scale):
        fn = _indexer_fp8.indexer_scores_fp8q if kernels else _indexer_fp8.indexer_scores_fp8q_reference
        return fn(q, weights, keys, key_scale, start, rate, scale)
    if kernels:
        return _indexer.indexer_scores(q, weights, keys, start, rate, scale, key_scale,
                                       round_queries=key_scale is not None)
    if key_scale is not None:
        q, keys = _rounded_queries(q), _indexer.dequantize_index_keys_fp8(keys, key_scale)
    return _indexer.indexer_scores_reference(q, weights, keys, start, rate, scale)


def sparse_attention(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, scale: float,
                     prefix: KeyPrefix | None = None) -> Tensor:
    """Softmax over each query's listed K=V entries (and its `prefix` run of rows) plus the per-head sink:
    `[B, S, H, D]`."""
    fn = _attention.sparse_attention if kernels_enabled(q) else _attention.sparse_attention_reference
    return fn(q, kv, indices, sink, scale, prefix)


def sparse_attention_fp8(q: Tensor, kv_packed: Tensor, indices: Tensor, sink: Tensor, scale: float,
                         prefix: KeyPrefix | None = None) -> Tensor:
    """`sparse_attention` over packed FP8 rows `[B, T, FP8_KV_ROW_BYTES]` uint8, dequantised to q's dtype."""
    fn = _attention.sparse_attention_fp8 if kernels_enabled(q) else _attention.sparse_attention_fp8_reference
    return fn(q, kv_packed, indices, sink, scale, prefix)


def quantize_kv_fp8(kv: Tensor) -> Tensor:
    """K=V rows `[..., FP8_KV_DIM]` -> packed FP8 rows `[..., FP8_KV_ROW_BYTES]` uint8 (device ops only, no
    host sync, so CUDA graphs can hold it; one implementation everywhere)."""
    return _attention.quantize_kv_fp8(kv, FP8_KV_ROPE_DIM)


def dequantize_kv_fp8(packed: Tensor, dtype: torch.dtype) -> Tensor:
    """Packed FP8 rows back to `[..., FP8_KV_DIM]` in `dtype` (exact: what attention reads)."""
    return _attention.dequantize_kv_fp8(packed, dtype)


def quantize_index_keys_fp8(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Indexer keys `[B, T, Di]` -> (float8_e4m3fn `[B, T, Di]`, float32 per-key scale `[B, T]`)."""
    return _indexer.quantize_index_keys_fp8(keys)


def compress_step(kv_new: Tensor, gate_new: Tensor, ape: Tensor, slot: Tensor, buf_kv: Tensor, buf_gate: Tensor,
                  write_rows: Tensor, write_slots: Tensor, window_rows: Tensor | None, norm_weight: Tensor,
                  eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """One decode token per row into a compressor's partial windows and its window's entry `[B, dim]`
    (kernels/compress_step.py: one kernel on CUDA)."""
    fn = _compress_step.compress_step if kernels_enabled(kv_new) else _compress_step.compress_step_reference
    return fn(kv_new, gate_new, ape, slot, buf_kv, buf_gate, write_rows, write_slots, window_rows, norm_weight, eps,
              cos, sin)


def clamped_swiglu(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """`silu(min(gate, limit)) * clamp(up, +-limit)`: one kernel on CUDA instead of four."""
    fn = _swiglu.clamped_swiglu if kernels_enabled(gate) else _swiglu.clamped_swiglu_reference
    return fn(gate, up, limit)


def write_kv_fp8(dest: Tensor, slots: Tensor, kv: Tensor) -> None:
    """dest[b, slots[b, t]] = quantize_kv_fp8(kv[b, t]) (dest `[R, S, FP8_KV_ROW_BYTES]` uint8, kv `[B, T,
    FP8_KV_DIM]`): the static decoder's ring and entry writes, one kernel each on CUDA."""
    fn = _kv_write.write_kv_fp8 if kernels_enabled(kv) else _kv_write.write_kv_fp8_reference
    fn(dest, slots, kv)


def write_index_keys_fp8(keys: Tensor, scales: Tensor, slots: Tensor, src: Tensor) -> None:
    """keys/scales[b, slots[b, t]] = quantize_index_keys_fp8(src[b, t]) (keys `[R, S, Di]` float8_e4m3fn,
    scales `[R, S]` float32), one kernel on CUDA."""
    fn = _kv_write.write_index_keys_fp8 if kernels_enabled(src) else _kv_write.write_index_keys_fp8_reference
    fn(keys, scales, slots, src)


def hc_pre(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float, hc_eps: float,
           iters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mHC before a sub-layer: (its input, post, comb, pre)."""
    impl = _mhc.hc_pre if kernels_enabled(streams) else _mhc.hc_pre_reference
    return impl(streams, fn, base, scale, rms_eps, hc_eps, iters)


def hc_post(output: Tensor, streams: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """mHC after a sub-layer: the new streams `post * output + comb^T streams`."""
    impl = _mhc.hc_post if kernels_enabled(streams) else _mhc.hc_post_reference
    return impl(output, streams, post, comb)


def hc_head(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float, hc_eps: float) -> Tensor:
    """The final collapse of the streams before the output norm."""
    impl = _mhc.hc_head if kernels_enabled(streams) else _mhc.hc_head_reference
    return impl(streams, fn, base, scale, rms_eps, hc_eps)


def route(logits: Tensor, bias: Tensor | None, hash_ids: Tensor | None, k: int, scoring: str, normalize: bool,
          scaling: float) -> tuple[Tensor, Tensor]:
    """MoE routing weights `[N, k]` float32 and expert ids `[N, k]` int64."""
    impl = _moe_route.route if kernels_enabled(logits) else _moe_route.route_reference
    return impl(logits, bias, hash_ids, k, scoring, normalize, scaling)


def moe_experts(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, limit: float) -> Tensor:
    """The routed experts' weighted sum for each token (stacked `[E, ...]` weights): `[N, hidden]`."""
    impl = _moe.moe_experts if kernels_enabled(x) else _moe.moe_experts_reference
    return impl(x, weights, ids, w1, w3, w2, limit)


def fp8_linear(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """x `[..., K]` @ an FP8 weight `[N, K]` (128x128 block `scale`)^T in x's dtype; x is quantised per
    1x128 group as V4 does (K a multiple of 128)."""
    impl = _fp8_gemm.fp8_linear if kernels_enabled(x) else _fp8_gemm.fp8_linear_reference
    return impl(x, weight, scale)


def moe_experts_quantized(x: Tensor, weights: Tensor, ids: Tensor, fmt: str, w1: Tensor, s1: Tensor, w3: Tensor,
                          s3: Tensor, w2: Tensor, s2: Tensor, limit: float) -> Tensor:
    """`moe_experts` on stacked quantised experts, `fmt` "fp8" (e4m3 `[E, out, in]`, 128x128 block scales)
    or "fp4" (packed e2m1 `[E, out, in/2]`, 1x32 scales), dequantised as the weights load: `[N, hidden]`."""
    impls = {"fp8": (_moe.moe_experts_fp8, _moe.moe_experts_fp8_reference),
             "fp4": (_moe.moe_experts_fp4, _moe.moe_experts_fp4_reference)}
    if fmt not in impls:
        raise ValueError(f"quantised experts are 'fp8' or 'fp4', got {fmt!r}")
    kernel, reference = impls[fmt]
    return (kernel if kernels_enabled(x) else reference)(x, weights, ids, w1, s1, w3, s3, w2, s2, limit)


# Decode GEMVs (kernels/decode_gemv.py, kernels/decode_moe.py): at most 8 rows, each weight streamed once.
# The references are the same functions as fp8_linear's and the quantised experts', so the CPU path does
# not depend on which side of the row threshold a call falls.


def fp8_gemv(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """`fp8_linear` for at most 8 rows of x `[..., K]` (decode): no split-K, one launch."""
    impl = _decode_gemv.fp8_gemv if kernels_enabled(x) else _decode_gemv.fp8_gemv_reference
    return impl(x, weight, scale)


def fp8_gemv_grouped(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """Group g of x `[..., G, K]` (at most 8 rows) through rows [g R, (g+1) R) of the FP8 weight `[G R, K]`
    -> `[..., G, R]`, all groups in one launch (attention's grouped wo_a)."""
    impl = _decode_gemv.fp8_gemv_grouped if kernels_enabled(x) else _decode_gemv.fp8_gemv_grouped_reference
    return impl(x, weight, scale)


def moe_experts_gemv_supported(x: Tensor, fmt: str, w1: Tensor) -> bool:
    """Whether `moe_experts_gemv` takes these shapes (at most 8 tokens; FP4 rows in whole 32-bit words)."""
    return _decode_moe.supports(x, fmt, w1)


def moe_experts_gemv(x: Tensor, weights: Tensor, ids: Tensor, fmt: str, w1: Tensor, s1: Tensor, w3: Tensor,
                     s3: Tensor, w2: Tensor, s2: Tensor, limit: float, addend: Tensor | None = None) -> Tensor:
    """`moe_experts_quantized` for a decode batch: each used expert's weights read once, no host sync;
    plus `addend` (the shared expert's output) in the same launch, rounded as `routed + addend`."""
    impls = {"fp8": (_decode_moe.moe_experts_gemv_fp8, _decode_moe.moe_experts_gemv_fp8_reference),
             "fp4": (_decode_moe.moe_experts_gemv_fp4, _decode_moe.moe_experts_gemv_fp4_reference)}
    if fmt not in impls:
        raise ValueError(f"quantised experts are 'fp8' or 'fp4', got {fmt!r}")
    kernel, reference = impls[fmt]
    if kernels_enabled(x):
        return kernel(x, weights, ids, w1, s1, w3, s3, w2, s2, limit, addend=addend)
    routed = reference(x, weights, ids, w1, s1, w3, s3, w2, s2, limit)
    return routed if addend is None else routed + addend


def ring_indices(positions: Tensor, active: Tensor, entries: Tensor, ring: int, slots: Tensor, windows: Tensor,
                 write_rows: Tensor, csa: tuple[Tensor, int] | None = None) -> None:
    """A static decode step's ring slots and window indices for every kv layout (decode_positions.py), in place."""
    fn = _step_indices.ring_indices if kernels_enabled(positions) else _step_indices.ring_indices_reference
    fn(positions, active, entries, ring, slots, windows, write_rows, csa)


def window_indices(positions: Tensor, active: Tensor, rate: int, entries: int, ring: int, overlap: bool,
                   out: dict[str, Tensor | None]) -> None:
    """A static decode step's partial-window and entry indices for one compression rate, in place."""
    fn = _step_indices.window_indices if kernels_enabled(positions) else _step_indices.window_indices_reference
    fn(positions, active, rate, entries, ring, overlap, out)


def rope_angles(positions: Tensor, tokens: int, tables: Tensor, jobs: Tensor, cos: Tensor, sin: Tensor,
                neg_sin: Tensor) -> None:
    """A static decode step's RoPE cos, sin and -sin for (table, rate) jobs, in place."""
    fn = _step_indices.rope_angles if kernels_enabled(positions) else _step_indices.rope_angles_reference
    fn(positions, tokens, tables, jobs, cos, sin, neg_sin)
