"""Lightning indexer (V4 CSA): score every compressed key for each query and keep the top k.

score[b, s, t] = sum_h w[b, s, h] * relu(q[b, s, h] . k[b, t]) * scale, or -inf while key t is not
visible (t >= (start + s + 1) // rate, or t >= visible[b, s] when each query's count is given: the
static decoder's rows sit at their own positions); a row keeps its k largest finite scores, ties to the
lowest index, listed in ascending index order and padded with -1.

The two numbers (Hi = 64 heads, Di = 128): 2 * Hi * Di = 16K FLOPs per (query, key) pair against
2 * Di = 256 bytes per bf16 key (132 per FP8 key + scale). Decode reads every key for one query:
memory-bound, yet 64 FLOP/byte is 200 TFLOP/s at 3 TB/s, so even one query needs tensor cores.
A prefill chunk (S = 2048) reuses each key tile across queries: compute-bound.

`_scores_kernel`, grid (T splits, groups of G queries, B): q^T [Di, G * Hi] stays resident while the
program walks its keys in BLOCK_T tiles. acc = keys [BLOCK_T, Di] @ q^T puts keys on M and heads on N,
so the weighted head sum runs along accumulator rows (in-thread, then a quad) rather than across
warps; relu, * scale, * w, the per-query head sum and the causal mask follow in registers. It writes
the scores and the max of every CHUNK keys; tiles past the group's last visible key are only filled
with -inf, never read. Decode splits T so ~4 programs per SM stream the keys; prefill autotunes
G = 2 or 4 queries (N = 128-256), so each key tile fetched from L2 feeds 2-4x more MMA work (configs
whose accumulator would pass 64 registers a thread are pruned: sm_90 builds of them spill).

`_select_kernel`, one program per row: exact radix selection on order-preserving int32 keys of the
scores (8-bit digits via tl.histogram). (A) tau = the 16-bit prefix of the k-th largest chunk max, a
lower bound on the k-th largest score (k chunks each hold a score >= it). (B) the ids of chunks whose
max reaches tau, in order: about k of them unless scores cluster. (C) the exact k-th largest key and
how many of its ties to take, over the scores >= tau in those chunks. (D) emit them in index order
(a running cumsum hands ties to the lowest index), pad with -1. Phases C and D touch ~k * CHUNK scores
instead of T; every phase loops over blocks, so clustered or tied rows (all zeros) stay exact, only
slower. The first block of each phase stays in registers across its passes.

Memory: the scores round-trip (4 bytes per (s, t) written, read back ~k * CHUNK per row), plus the
maxima and chunk ids (1/16 of that each): ~3% over the bf16 keys at decode, 512 MB for S = 2048 x
T = 64K (chunk the prefill to bound it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .common import check_device, interpreting, num_sms, to_e4m3
from .indexer_select import CHUNK, launch_select

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_REF_ELEMENTS = 1 << 27  # float32 elements of one [B, S-chunk, Hi, T] product in the reference


# ----------------------------------------------------------------------------- references


def indexer_scores_reference(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float,
                             visible: Tensor | None = None) -> Tensor:
    """The indexer's scores exactly as model/attention.py computes them, in float32.

    Args:
        q: `[B, S, Hi, Di]`, queries at positions start..start+S-1.
        weights: `[B, S, Hi]` float32, already multiplied by Hi**-0.5.
        keys: `[B, T, Di]` compressed keys.
        visible: `[B, S]` int, how many keys each query sees (then start and rate are unused).
    Returns:
        `[B, S, T]` float32: sum_h weights * (relu(q . k) * scale), -inf where t >= (position + 1) // rate
        (or t >= visible).
    """
    batch, seq_len, heads, _ = q.shape
    num_keys = keys.shape[1]
    out = torch.empty(batch, seq_len, num_keys, dtype=torch.float32, device=q.device)
    step = max(1, _REF_ELEMENTS // max(1, batch * heads * num_keys))  # bounds the [B, s, Hi, T] product
    keys = keys.float()
    for s0 in range(0, seq_len, step):
        part = F.relu(torch.einsum("bshi,bti->bsht", q[:, s0 : s0 + step].float(), keys)) * scale
        out[:, s0 : s0 + step] = (part * weights[:, s0 : s0 + step].unsqueeze(-1)).sum(dim=2)
    if visible is None:
        positions = torch.arange(seq_len, device=q.device) + start
        visible = ((positions + 1) // rate).expand(batch, seq_len)
    seen = torch.arange(num_keys, device=q.device) < visible[..., None]
    return out.masked_fill_(~seen, float("-inf"))


def _stable_topk_mask(scores: Tensor, k: int) -> Tensor:
    """model.attention.stable_topk_mask restated (kernels/ does not import model; a test keeps them equal)."""
    k = min(k, scores.shape[-1])
    kth = scores.topk(k, dim=-1).values[..., -1:]
    above = scores > kth
    ties = scores == kth
    room = k - above.sum(dim=-1, keepdim=True)
    return above | (ties & (ties.cumsum(dim=-1) <= room))


def topk_indices_reference(scores: Tensor, k: int) -> Tensor:
    """`[B, S, T]` float32 -> `[B, S, k]` int32: the k largest finite scores of each row, ties to the
    lowest index (the set `stable_topk_mask(scores, k) & isfinite` keeps), ascending, -1 padded; O(T)."""
    keep = _stable_topk_mask(scores, k) & torch.isfinite(scores)
    slot = torch.where(keep, keep.cumsum(dim=-1) - 1, k)  # output position; column k is discarded
    out = torch.full((*scores.shape[:-1], k + 1), -1, dtype=torch.int64, device=scores.device)
    out.scatter_(-1, slot, torch.arange(scores.shape[-1], device=scores.device).expand_as(scores))
    return out[..., :k].to(torch.int32)


def indexer_topk_reference(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float,
                           k: int, visible: Tensor | None = None) -> Tensor:
    """Which k compressed keys each query attends: `[B, S, k]` int32 (see the two functions above)."""
    return topk_indices_reference(indexer_scores_reference(q, weights, keys, start, rate, scale, visible), k)


def quantize_index_keys_fp8(keys: Tensor) -> tuple[Tensor, Tensor]:
    """`[B, T, Di]` -> (float8_e4m3fn `[B, T, Di]`, float32 scale `[B, T]` = per-key amax / 448); an
    all-zero key gets scale 0 (it dequantises to 0)."""
    keys = keys.float()
    # times the float32 reciprocal, not divided: PyTorch on CUDA divides by a scalar that way, so this is
    # the same on every device and in kernels/kv_write.py
    key_scale = keys.abs().amax(dim=-1) * (1.0 / FP8_MAX)
    divisor = torch.where(key_scale > 0, key_scale, torch.ones_like(key_scale))
    keys_fp8 = (keys / divisor.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return keys_fp8, key_scale


def dequantize_index_keys_fp8(keys_fp8: Tensor, key_scale: Tensor) -> Tensor:
    """The float32 keys FP8 keys stand for: `keys_fp8 * key_scale[..., None]`."""
    return keys_fp8.float() * key_scale.unsqueeze(-1)


def indexer_topk_fp8_reference(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int,
                               rate: int, scale: float, k: int, visible: Tensor | None = None) -> Tensor:
    """indexer_topk_reference on the dequantised keys."""
    return indexer_topk_reference(q, weights, dequantize_index_keys_fp8(keys_fp8, key_scale), start, rate, scale, k,
                                  visible)


# ----------------------------------------------------------------------------- score kernel


def _score_configs() -> list[triton.Config]:
    """(G queries per program, BLOCK_T, warps, stages); _prune_score_configs keeps those fit for a call."""
    if interpreting():
        shapes = ((1, 32, 4, 1), (2, 32, 4, 1), (4, 32, 4, 1))
    else:
        shapes = ((1, 128, 4, 3), (1, 64, 4, 4), (1, 128, 8, 3), (1, 64, 8, 3),
                  (2, 128, 8, 3), (2, 64, 4, 3), (2, 64, 8, 4), (4, 64, 8, 3), (4, 64, 8, 4))
    return [triton.Config({"G": g, "BLOCK_T": bt}, num_warps=w, num_stages=st) for g, bt, w, st in shapes]


def _prune_score_configs(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """G = the query count when S <= 2 (keys read once), else 2 or 4; N = G * heads up to 256 (128 for
    fp32); the [BLOCK_T, N] accumulator within 64 fp32 registers a thread (sm_90 builds spill past it)."""
    s_class, itemsize = named_args["s_class"], named_args["q_ptr"].element_size()
    heads = max(16, triton.next_power_of_2(named_args["Hi"]))

    def fits(config: triton.Config) -> bool:
        group, block_t = config.kwargs["G"], config.kwargs["BLOCK_T"]
        wanted = group == s_class if s_class < 4 else group >= 2
        widest = 256 if itemsize <= 2 else 128
        return wanted and group * heads <= widest and block_t * group * heads <= 64 * 32 * config.num_warps

    kept = [c for c in configs if fits(c)] or [c for c in configs if c.kwargs["G"] == 1][:1]
    return kept[-1:] if interpreting() else kept


@triton.jit
def quantize_query_rows(q, INTERPRET: tl.constexpr):
    """q [N, DP], one query head per row -> (e4m3 codes [N, DP], float32 scales [N]), as
    `indexer_fp8.quantize_index_queries_fp8`: max(amax, 1e-4) / 448 rounded up to a power of two, codes =
    q / scale. q stays in its dtype until each element is scaled: a float32 copy of bf16 queries holds
    twice the registers through the amax."""
    amax = tl.maximum(tl.max(tl.abs(q), axis=1).to(tl.float32), 1e-4)  # exact in q's dtype
    # amax = m * 2^E, m in [1, 2), and 448 = 1.75 * 2^8: amax / 448 lies in (2^(E-9), 2^(E-8)] when
    # m <= 1.75, else in (2^(E-8), 2^(E-7)). So the power of two above the correctly rounded quotient
    # comes from amax's bits alone (the quotient never rounds onto a power of two it is not), without
    # a division: an IEEE division per row is a slow-path subroutine on the GPU.
    bits = amax.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 8 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)  # biased
    scale = (exponent << 23).to(tl.float32, bitcast=True)
    inverse = ((254 - exponent) << 23).to(tl.float32, bitcast=True)  # 1 / scale, exact: a power of two
    codes = tl.minimum(tl.maximum(q.to(tl.float32) * inverse[:, None], -448.0), 448.0)
    return to_e4m3(codes, INTERPRET), scale


@triton.jit
def visible_keys(v_ptr, sv_b, b, s_row, s0, S, start, rate, t_hi, G: tl.constexpr, PER_QUERY: tl.constexpr):
    """(keys each query of the group sees [G], the group's last visible key bounded by t_hi): from the
    positions start + s, or read from `visible[b, s]` (PER_QUERY)."""
    if PER_QUERY:
        visible = tl.load(v_ptr + b * sv_b + s_row, mask=s_row < S, other=0)
        return visible, tl.minimum(tl.max(visible, axis=0), t_hi)
    visible = (start + s_row + 1) // rate
    return visible, tl.minimum((start + tl.minimum(s0 + G, S)) // rate, t_hi)


@triton.jit
def _store_scores(s_ptr, m_ptr, score, b, s_row, t0, S, T, M, BLOCK_T: tl.constexpr, G: tl.constexpr,
                  CHUNK: tl.constexpr, WRITE_MAX: tl.constexpr):
    """score: [BLOCK_T, G] for keys t0.. of queries s_row; also the max of each CHUNK keys."""
    t = t0 + tl.arange(0, BLOCK_T)
    rows = b * S + s_row.to(tl.int64)  # [G] rows of the [B * S, T] scores
    ok = s_row < S
    tl.store(s_ptr + rows[None, :] * T + t[:, None], score, mask=ok[None, :] & (t[:, None] < T))
    if WRITE_MAX:
        c = t0 // CHUNK + tl.arange(0, BLOCK_T // CHUNK)
        best = tl.max(tl.reshape(score, [BLOCK_T // CHUNK, CHUNK, G]), axis=1)
        tl.store(m_ptr + rows[None, :] * M + c[:, None], best, mask=ok[None, :] & (c[:, None] < M))


@triton.autotune(configs=_score_configs(), key=["s_class", "Hi", "Di", "FP8"],
                 prune_configs_by={"early_config_prune": _prune_score_configs})
@triton.jit(do_not_specialize=["S", "T", "M", "start", "s_class"])  # s_class: min(S, 4) rounded up, autotune key
def _scores_kernel(q_ptr, w_ptr, k_ptr, ks_ptr, v_ptr, s_ptr, m_ptr, S, T, M, Hi, Di, start, rate, scale, w_scale,
                   s_class,
                   sq_b, sq_s, sq_h, sw_b, sw_s, sk_b, sk_t, sks_b, sks_t, sv_b,
                   G: tl.constexpr, HP: tl.constexpr, DP: tl.constexpr, BLOCK_T: tl.constexpr,
                   CHUNK: tl.constexpr, FP8: tl.constexpr, IEEE: tl.constexpr, WRITE_MAX: tl.constexpr,
                   PER_QUERY: tl.constexpr, ROUND_Q: tl.constexpr, INTERPRET: tl.constexpr):
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
    if ROUND_Q:  # each head row FP8-rounded (exact in q's dtype): as ops rounds queries for FP8 keys
        q = tl.load(q_ptr + b * sq_b + s_col[:, None] * sq_s + h[:, None] * sq_h + d[None, :],
                    mask=col_ok[:, None] & (d[None, :] < Di), other=0.0)  # [G * HP, DP]
        codes, q_scale = quantize_query_rows(q, INTERPRET)
        q = tl.trans((codes.to(tl.float32) * q_scale[:, None]).to(q_ptr.dtype.element_ty))
    else:
        q = tl.load(q_ptr + b * sq_b + s_col[None, :] * sq_s + h[None, :] * sq_h + d[:, None],
                    mask=col_ok[None, :] & (d[:, None] < Di), other=0.0)  # q^T: [DP, G * HP]
    if IEEE:
        q = q.to(tl.float32)
    # float32(w) * w_scale: what `weights.float() * w_scale` gives, without its two launches at decode
    w = tl.load(w_ptr + b * sw_b + s_col * sw_s + h, mask=col_ok, other=0.0).to(tl.float32) * w_scale
    s_row = s0 + tl.arange(0, G)
    visible, t_vis = visible_keys(v_ptr, sv_b, b, s_row, s0, S, start, rate, t_hi, G, PER_QUERY)
    t_mid = t_lo + tl.cdiv(tl.maximum(t_vis - t_lo, 0), BLOCK_T) * BLOCK_T
    for t0 in tl.range(t_lo, t_mid, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        keys = tl.load(k_ptr + b * sk_b + t[:, None] * sk_t + d[None, :],
                       mask=(t[:, None] < T) & (d[None, :] < Di), other=0.0)
        keys = keys.to(q.dtype)  # FP8: e4m3 values are exact in bf16/fp16/fp32
        if IEEE:
            acc = tl.dot(keys, q, input_precision="ieee")
        else:
            acc = tl.dot(keys, q)
        if FP8:
            acc = acc * tl.load(ks_ptr + b * sks_b + t * sks_t, mask=t < T, other=0.0)[:, None]
        acc = tl.maximum(acc, 0.0) * scale * w[None, :]
        if G == 1:
            score = tl.sum(acc, axis=1)[:, None]
        else:
            score = tl.sum(tl.reshape(acc, [BLOCK_T, G, HP]), axis=2)
        keep = (t[:, None] < visible[None, :]) & (t[:, None] < T)
        score = tl.where(keep, score, float("-inf"))
        _store_scores(s_ptr, m_ptr, score, b, s_row, t0, S, T, M, BLOCK_T, G, CHUNK, WRITE_MAX)
    for t0 in tl.range(t_mid, t_hi, BLOCK_T):
        score = tl.full([BLOCK_T, G], float("-inf"), tl.float32)
        _store_scores(s_ptr, m_ptr, score, b, s_row, t0, S, T, M, BLOCK_T, G, CHUNK, WRITE_MAX)


def _launch_scores(q: Tensor, weights: Tensor, keys: Tensor, key_scale: Tensor | None, start: int, rate: int,
                   scale: float, scores: Tensor, maxima: Tensor | None, visible: Tensor | None = None,
                   round_queries: bool = False, weight_scale: float = 1.0) -> None:
    batch, seq_len, heads, head_dim = q.shape
    num_keys = keys.shape[1]
    q, weights, keys = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, weights, keys))
    target = 4 * num_sms(q.device, 1)  # programs: ~4 per SM when the queries alone do not fill the GPU

    def grid(meta: dict) -> tuple[int, int, int]:
        num_blocks, num_groups = triton.cdiv(num_keys, meta["BLOCK_T"]), triton.cdiv(seq_len, meta["G"])
        return max(1, min(num_blocks, triton.cdiv(target, batch * num_groups))), num_groups, batch

    ks = weights if key_scale is None else key_scale  # an unused pointer when not FP8
    vis = scores if visible is None else visible  # likewise without per-query counts
    m = scores if maxima is None else maxima
    _scores_kernel[grid](
        q, weights, keys, ks, vis, scores, m, seq_len, num_keys, m.shape[-1], heads, head_dim, start, rate, scale,
        weight_scale, min(triton.next_power_of_2(seq_len), 4), q.stride(0), q.stride(1), q.stride(2),
        weights.stride(0), weights.stride(1), keys.stride(0), keys.stride(1), ks.stride(0), ks.stride(1), vis.stride(0),
        HP=max(16, triton.next_power_of_2(heads)), DP=max(16, triton.next_power_of_2(head_dim)), CHUNK=CHUNK,
        FP8=key_scale is not None, IEEE=_dot_in_fp32(q.dtype), WRITE_MAX=maxima is not None,
        PER_QUERY=visible is not None, ROUND_Q=round_queries, INTERPRET=interpreting())


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """fp32 inputs take the exact (not tf32) dot. So do bf16 ones under the interpreter, whose tl.dot
    multiplies bf16's uint16 storage (triton 3.9); bf16 products are exact in fp32 anyway."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting())


# ----------------------------------------------------------------------------- launchers


def _check_inputs(q: Tensor, weights: Tensor, keys: Tensor, key_scale: Tensor | None, start: int,
                  rate: int, visible: Tensor | None = None) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be [B, S, Hi, Di], got shape {tuple(q.shape)}")
    batch, seq_len, heads, head_dim = q.shape
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q must be bfloat16, float16 or float32, got {q.dtype}")
    if not (1 <= heads <= 256 and 1 <= head_dim <= 256):
        raise ValueError(f"q: 1..256 heads of dim 1..256 supported, got {heads} x {head_dim}")
    if tuple(weights.shape) != (batch, seq_len, heads) or weights.stride(-1) != 1 \
            or weights.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"weights must be float32/bf16/fp16 [{batch}, {seq_len}, {heads}] (heads contiguous), got "
                         f"{weights.dtype} {tuple(weights.shape)}")
    if keys.dim() != 3 or keys.shape[0] != batch or keys.shape[2] != head_dim:
        raise ValueError(f"keys must be [{batch}, T, {head_dim}], got shape {tuple(keys.shape)}")
    if key_scale is None and keys.dtype != q.dtype:
        raise ValueError(f"keys must have q's dtype {q.dtype}, got {keys.dtype}")
    if key_scale is not None:
        if keys.dtype != torch.float8_e4m3fn:
            raise ValueError(f"FP8 keys must be float8_e4m3fn, got {keys.dtype}")
        if tuple(key_scale.shape) != tuple(keys.shape[:2]) or key_scale.dtype != torch.float32:
            raise ValueError(f"key_scale must be float32 {tuple(keys.shape[:2])}, got {key_scale.dtype} "
                             f"{tuple(key_scale.shape)}")
    if start < 0 or rate < 1:
        raise ValueError(f"need start >= 0 and rate >= 1, got start={start}, rate={rate}")
    if visible is not None and (tuple(visible.shape) != (batch, seq_len) or visible.dtype != torch.int32
                                or visible.stride(-1) != 1):
        raise ValueError(f"visible must be int32 [{batch}, {seq_len}] (rows contiguous), got {visible.dtype} "
                         f"{tuple(visible.shape)}")
    check_device(q, weights, keys, *(t for t in (key_scale, visible) if t is not None))


def _output(out: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
            strided_rows: bool = False) -> Tensor:
    """`out` checked (or made): contiguous, or with `strided_rows` its rows evenly strided (last dim contiguous)."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    rows_ok = out.is_contiguous() or (strided_rows and out.dim() == 3 and out.stride(-1) == 1
                                      and out.stride(0) == out.shape[1] * out.stride(1))
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device or not rows_ok:
        what = "evenly strided rows of" if strided_rows else "a contiguous"
        raise ValueError(f"out must be {what} {dtype} {shape} tensor on {device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    return out


def indexer_scores(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float,
                   key_scale: Tensor | None = None, *, out: Tensor | None = None, visible: Tensor | None = None,
                   round_queries: bool = False) -> Tensor:
    """Triton indexer_scores_reference: `[B, S, T]` float32 (FP8 keys when `key_scale` is given; the
    queries FP8-rounded first with `round_queries`, as `indexer_fp8.quantize_index_queries_fp8` does)."""
    _check_inputs(q, weights, keys, key_scale, start, rate, visible)
    out = _output(out, (*q.shape[:2], keys.shape[1]), torch.float32, q.device)
    if out.numel():
        _launch_scores(q, weights, keys, key_scale, start, rate, scale, out, None, visible, round_queries)
    return out


def _chunk_maxima(scores: Tensor) -> Tensor:
    """Max of every CHUNK scores along the last dim (the ragged tail is its own chunk)."""
    full = scores.shape[-1] // CHUNK * CHUNK
    parts = [scores[..., :full].unflatten(-1, (-1, CHUNK)).amax(dim=-1)]
    if full < scores.shape[-1]:
        parts.append(scores[..., full:].amax(dim=-1, keepdim=True))
    return torch.cat(parts, dim=-1).contiguous()


def topk_indices(scores: Tensor, k: int, *, out: Tensor | None = None) -> Tensor:
    """Triton topk_indices_reference: `[B, S, T]` float32 -> `[B, S, k]` int32 (finite or -inf scores)."""
    if scores.dim() != 3 or scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32 [B, S, T], got {scores.dtype} {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = _output(out, (*scores.shape[:2], k), torch.int32, scores.device)
    if scores.shape[-1] == 0:
        return out.fill_(-1)
    if out.numel():
        scores = scores.contiguous()
        launch_select(scores, _chunk_maxima(scores), k, out)
    return out


def _indexer_topk(q: Tensor, weights: Tensor, keys: Tensor, key_scale: Tensor | None, start: int, rate: int,
                  scale: float, k: int, out: Tensor | None, launch_scores: Callable[..., None] | None = None,
                  visible: Tensor | None = None, round_queries: bool = False, weight_scale: float = 1.0) -> Tensor:
    """Scores (with per-chunk maxima) by `launch_scores` (default: this module's kernel, which FP8-rounds
    the queries with `round_queries` and scales the weights by `weight_scale`; indexer_fp8's FP8-query
    kernel takes the same arguments but those two: it rounds the queries always and takes the weights
    scaled), then the exact top-k selection."""
    _check_inputs(q, weights, keys, key_scale, start, rate, visible)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    batch, seq_len = q.shape[:2]
    num_keys = keys.shape[1]
    out = _output(out, (batch, seq_len, k), torch.int32, q.device, strided_rows=True)
    if num_keys == 0:
        return out.fill_(-1)
    if out.numel():
        scores = torch.empty(batch, seq_len, num_keys, dtype=torch.float32, device=q.device)
        maxima = torch.empty(batch, seq_len, triton.cdiv(num_keys, CHUNK), dtype=torch.float32, device=q.device)
        if launch_scores is None:
            _launch_scores(q, weights, keys, key_scale, start, rate, scale, scores, maxima, visible, round_queries,
                           weight_scale)
        else:
            launch_scores(q, weights, keys, key_scale, start, rate, scale, scores, maxima, visible)
        launch_select(scores, maxima, k, out)
    return out


def indexer_topk(q: Tensor, weights: Tensor, keys: Tensor, start: int, rate: int, scale: float, k: int, *,
                 out: Tensor | None = None, visible: Tensor | None = None, weight_scale: float = 1.0) -> Tensor:
    """Triton indexer_topk_reference: the score kernel then the selection kernel.

    Args:
        q: `[B, S, Hi, Di]` bfloat16/float16/float32; weights: `[B, S, Hi]` float (times Hi**-0.5, or
        taken times `weight_scale` in float32 here: a decode step passes weights_proj's output as it is);
        keys: `[B, T, Di]` in q's dtype (the last dim contiguous; batch/T strides are free).
        visible: `[B, S]` int32, how many keys each query sees (instead of start and rate).
        out: the result's place; its rows may be evenly strided (a slice of a longer index list).
    Returns:
        `[B, S, k]` int32 key indices, ascending, -1 padded.
    """
    return _indexer_topk(q, weights, keys, None, start, rate, scale, k, out, visible=visible,
                         weight_scale=weight_scale)


def indexer_topk_fp8(q: Tensor, weights: Tensor, keys_fp8: Tensor, key_scale: Tensor, start: int, rate: int,
                     scale: float, k: int, *, out: Tensor | None = None, visible: Tensor | None = None,
                     round_queries: bool = False, weight_scale: float = 1.0) -> Tensor:
    """indexer_topk on float8_e4m3fn keys `[B, T, Di]` with float32 per-key scales `[B, T]` (the queries
    FP8-rounded in the kernel with `round_queries`: no launches around it in a decode step)."""
    return _indexer_topk(q, weights, keys_fp8, key_scale, start, rate, scale, k, out, visible=visible,
                         round_queries=round_queries, weight_scale=weight_scale)
