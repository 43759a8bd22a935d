"""mHC (manifold-constrained hyper-connections): the stream weights + collapse before each sub-layer
(`hc_pre`), the expand back into the streams after it (`hc_post`), and the final head collapse (`hc_head`).

Per token at V4-Flash sizes (N = 4 streams, D = 4096, K = N * D = 16384, 24 mixes), bf16 streams:
- hc_pre must read the 32 KB streams row and write an 8 KB `x`; it does 2 * 24 * K + 4 K = 0.85 MFLOP
  (the 24 length-K dot products dominate) plus an [N, N] Sinkhorn. That is 21 FLOP per byte: at the
  3 TB/s copy ceiling about 62 TFLOP/s, the whole float32 CUDA-core peak, so the dots go to the tensor
  cores. fn (24 x K float32, 1.5 MB) comes from HBM once per call and from L2 after; at decode it is
  the traffic (1.5 MB against 32 KB of streams per token).
- hc_post reads `output` (8 KB) and the streams (32 KB) and writes new streams (32 KB), 9 FLOP per
  element written: memory bound; one launch, one pass over each byte.

hc_pre and hc_head are two launches and read the streams twice (the only traffic above the minimum;
the benchmark states it): `pre` needs all K columns of a token through a sigmoid before the collapse,
and a program must own about 64 tokens to amortise fn, far more than the registers hold (32 KB each).
- A `_hc_mix_kernel`, grid (K splits, token blocks of BLOCK_M): partial [x . fn_j | sum x^2] over one
  K slice with tl.dot, one [T, 32] float32 slot per split (24 mixes padded to 32; the sum of squares
  rides in column 24, so the RMS needs no pass of its own). For bf16 streams the float32 fn tile is
  split into three bf16 parts (hi + mid + lo carry its 24 bits), so the bf16 tensor cores give float32
  accuracy at 3 x 2 x 32 FLOP per streams element (about 130 TFLOP/s at the copy ceiling); float32 and
  float16 streams use an IEEE float32 dot. Splitting K keeps the SMs busy at decode (the 1.5 MB fn
  read spreads over up to 64 programs); prefill needs only a few splits.
- B `_hc_finish_kernel`, grid (token blocks of BLOCK_T, D splits): sums the split partials, applies
  the RMS scale and the sigmoid, collapses its D slice into `x` (float32 sum, one rounding), then
  computes post and the softmax + Sinkhorn comb in float32 registers ([BLOCK_T, N, N], 20 iterations)
  after the streaming, so it overlaps other programs' loads. The first D split stores the weights.
  Token blocks run in reverse, so the first programs reread the rows kernel A read last, still in L2.
Interpreter (TRITON_INTERPRET=1, INTERPRET): its bf16 tl.dot multiplies the raw uint16 bits and its
float32 -> bf16 cast truncates, so there the three bf16 parts are widened to float32 before the dot and
bf16 results are rounded on the bits first (`common.round_to`); on the GPU these are the plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, num_sms, round_to

STREAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_SPLITS = 64  # K splits of kernel A (decode): partials kernel B sums in one or a few loads


# ----------------------------------------------------------------------------- references

def _rms_mixes(streams: Tensor, fn: Tensor, rms_eps: float) -> Tensor:
    flat = streams.flatten(2).float()
    flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + rms_eps)
    return F.linear(flat, fn.float())


def _collapse_reference(streams: Tensor, pre: Tensor) -> Tensor:
    return (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)


def hc_pre_reference(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float, hc_eps: float,
                     sinkhorn_iters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """model/mhc.py `hc_weights` then `collapse`, op for op.

    Args:
        streams: `[B, S, N, D]`; fn: `[2N + N^2, N * D]`; base: `[2N + N^2]`; scale: `[3]` (float32).
    Returns: x `[B, S, D]` in streams' dtype, post `[B, S, N]`, comb `[B, S, N, N]`, pre `[B, S, N]` float32.
    """
    n = streams.shape[2]
    pre_w, post_w, comb_w = _rms_mixes(streams, fn, rms_eps).split([n, n, n * n], dim=-1)
    pre_b, post_b, comb_b = base.float().split([n, n, n * n])
    pre_s, post_s, comb_s = scale.float().unbind(0)
    pre = torch.sigmoid(pre_w * pre_s + pre_b) + hc_eps
    post = 2 * torch.sigmoid(post_w * post_s + post_b)
    comb = torch.softmax(comb_w.unflatten(-1, (n, n)) * comb_s + comb_b.view(n, n), dim=-1) + hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    for _ in range(sinkhorn_iters - 1):  # Sinkhorn: rows, then columns
        comb = comb / (comb.sum(dim=-1, keepdim=True) + hc_eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    return _collapse_reference(streams, pre), post, comb, pre


def hc_post_reference(output: Tensor, streams: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """model/mhc.py `expand`: new streams `post * output + comb^T streams`, `[B, S, N, D]` in streams' dtype."""
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * output.unsqueeze(-2) + torch.matmul(comb.to(dtype).transpose(-1, -2), streams)


def hc_head_reference(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float,
                      hc_eps: float) -> Tensor:
    """model/mhc.py `head_weights` then `collapse`: fn `[N, N * D]`, base `[N]`, scale `[1]` -> `[B, S, D]`."""
    pre = torch.sigmoid(_rms_mixes(streams, fn, rms_eps) * scale.float() + base.float()) + hc_eps
    return _collapse_reference(streams, pre)


# ----------------------------------------------------------------------------- kernel A: mixes

@triton.jit
def _dot_bf16x3(x, w, acc, INTERPRET: tl.constexpr):
    """acc + x @ w for bf16 x and float32 w at float32 accuracy: w = hi + mid + lo, each exact in bf16."""
    hi = w.to(tl.bfloat16)
    rest = w - hi.to(tl.float32)
    mid = rest.to(tl.bfloat16)
    lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
    if INTERPRET:  # its bf16 tl.dot multiplies the raw uint16 bits: widen the parts instead
        xf = x.to(tl.float32)
        acc = tl.dot(xf, lo.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(xf, mid.to(tl.float32), acc, input_precision="ieee")
        acc = tl.dot(xf, hi.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(x, lo, acc)
        acc = tl.dot(x, mid, acc)
        acc = tl.dot(x, hi, acc)
    return acc


@triton.jit
def _hc_mix_kernel(x_ptr, fn_ptr, ws_ptr, num_tokens, K, k_per_split,
                   MIX: tl.constexpr, MIX_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                   BF16X3: tl.constexpr, INTERPRET: tl.constexpr):
    """ws[split, t, :MIX] = x[t, slice] @ fn[:, slice]^T, ws[split, t, MIX] = sum x[t, slice]^2."""
    pid_k = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, MIX_PAD)
    row_ok = rows < num_tokens
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * K
    fn_cols = fn_ptr + cols[None, :] * K
    acc = tl.zeros((BLOCK_M, MIX_PAD), tl.float32)
    sumsq = tl.zeros((BLOCK_M,), tl.float32)
    k_start = pid_k * k_per_split
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(fn_cols + ks[:, None], mask=(cols < MIX)[None, :] & k_ok[:, None], other=0.0).to(tl.float32)
        xf = x.to(tl.float32)
        sumsq += tl.sum(xf * xf, axis=1)
        if BF16X3:
            acc = _dot_bf16x3(x, w, acc, INTERPRET)
        else:
            acc = tl.dot(xf, w, acc, input_precision="ieee")
    acc = tl.where(cols[None, :] == MIX, sumsq[:, None], acc)
    ws = ws_ptr + (pid_k * num_tokens + rows.to(tl.int64))[:, None] * MIX_PAD + cols[None, :]
    tl.store(ws, acc, mask=row_ok[:, None])


# ----------------------------------------------------------------------------- kernel B: weights + collapse

@triton.jit
def _sum_splits(ws_ptr, toks, cols, col_ok, num_tokens, num_splits, MIX_PAD: tl.constexpr,
                SPLIT_BLOCK: tl.constexpr):
    """sum over kernel A's splits of ws[s, toks, cols]: toks `[BT]` x cols `[C]` -> `[BT, C]` float32."""
    acc = tl.zeros((toks.shape[0], cols.shape[0]), tl.float32)
    for s0 in range(0, num_splits, SPLIT_BLOCK):
        s = s0 + tl.arange(0, SPLIT_BLOCK)
        rows = s.to(tl.int64)[:, None] * num_tokens + toks[None, :]
        mask = ((s < num_splits)[:, None] & (toks < num_tokens)[None, :])[:, :, None] & col_ok[None, None, :]
        part = tl.load(ws_ptr + rows[:, :, None] * MIX_PAD + cols[None, None, :], mask=mask, other=0.0)
        acc += tl.sum(part, axis=0)
    return acc


@triton.jit
def _sinkhorn(logits, hc_eps, sinkhorn_iters, N: tl.constexpr, NP: tl.constexpr):
    """`[BT, NP, NP]` logits -> row softmax + eps, then column / row normalisations; padding stays 0."""
    i = tl.arange(0, NP)
    valid = (i < N)[None, :, None] & (i < N)[None, None, :]
    logits = tl.where((i < N)[None, None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=2)[:, :, None])
    comb = tl.where(valid, e / tl.sum(e, axis=2)[:, :, None] + hc_eps, 0.0)
    comb = comb / (tl.sum(comb, axis=1)[:, None, :] + hc_eps)
    for _it in range(sinkhorn_iters - 1):
        comb = comb / (tl.sum(comb, axis=2)[:, :, None] + hc_eps)
        comb = comb / (tl.sum(comb, axis=1)[:, None, :] + hc_eps)
    return comb


@triton.jit
def _post_comb(ws_ptr, base_ptr, scale_ptr, post_ptr, comb_ptr, toks, rs, write, num_tokens, num_splits,
               hc_eps, sinkhorn_iters, N: tl.constexpr, NP: tl.constexpr, MIX_PAD: tl.constexpr,
               SPLIT_BLOCK: tl.constexpr):
    """post = 2 sigmoid, comb = Sinkhorn(softmax) for a token block; stored where `write` `[BT]`."""
    i = tl.arange(0, NP)
    post_w = _sum_splits(ws_ptr, toks, N + i, i < N, num_tokens, num_splits, MIX_PAD, SPLIT_BLOCK) * rs
    post_b = tl.load(base_ptr + N + i, mask=i < N, other=0.0).to(tl.float32)
    post = 2 * tl.sigmoid(post_w * tl.load(scale_ptr + 1).to(tl.float32) + post_b[None, :])
    tl.store(post_ptr + toks[:, None] * N + i[None, :], post, mask=write[:, None] & (i < N)[None, :])
    f = tl.arange(0, NP * NP)
    f_ok = (f // NP < N) & (f % NP < N)
    cols = 2 * N + (f // NP) * N + f % NP
    comb_w = _sum_splits(ws_ptr, toks, cols, f_ok, num_tokens, num_splits, MIX_PAD, SPLIT_BLOCK) * rs
    comb_b = tl.load(base_ptr + cols, mask=f_ok, other=0.0).to(tl.float32)
    logits = comb_w * tl.load(scale_ptr + 2).to(tl.float32) + comb_b[None, :]
    comb = _sinkhorn(tl.reshape(logits, (toks.shape[0], NP, NP)), hc_eps, sinkhorn_iters, N, NP)
    offs = toks[:, None, None] * (N * N) + i[None, :, None] * N + i[None, None, :]
    mask = write[:, None, None] & (i < N)[None, :, None] & (i < N)[None, None, :]
    tl.store(comb_ptr + offs, comb, mask=mask)


@triton.jit
def _collapse(x_ptr, out_ptr, pre, toks, d_start, d_per_split, num_tokens, dim, N: tl.constexpr,
              NP: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    """out[t, d] = sum_i pre[t, i] x[t, i, d] over one D slice (float32 sum, rounded once)."""
    i = tl.arange(0, NP)
    tok_ok = toks < num_tokens
    rows = x_ptr + toks.to(tl.int64)[:, None, None] * (N * dim) + (i * dim)[None, :, None]
    row_ok = tok_ok[:, None, None] & (i < N)[None, :, None]
    outs = out_ptr + toks.to(tl.int64)[:, None] * dim
    pre3 = pre[:, :, None]
    for d0 in range(d_start, d_start + d_per_split, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(rows + d[None, None, :], mask=row_ok & (d < dim)[None, None, :], other=0.0)
        y = tl.sum(x.to(tl.float32) * pre3, axis=1)
        y = round_to(y, out_ptr.dtype.element_ty, INTERPRET)
        tl.store(outs + d[None, :], y, mask=tok_ok[:, None] & (d < dim)[None, :])


@triton.jit
def _hc_finish_kernel(ws_ptr, x_ptr, base_ptr, scale_ptr, out_ptr, pre_ptr, post_ptr, comb_ptr,
                      num_tokens, dim, num_splits, d_per_split, rms_eps, hc_eps, sinkhorn_iters,
                      N: tl.constexpr, NP: tl.constexpr, MIX: tl.constexpr, MIX_PAD: tl.constexpr,
                      SPLIT_BLOCK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                      WITH_COMB: tl.constexpr, INTERPRET: tl.constexpr):
    """Weights of BLOCK_T tokens from kernel A's partials, then their collapse over one D slice."""
    pid_t = tl.num_programs(0) - 1 - tl.program_id(0)  # reversed: kernel A's last rows are still in L2
    pid_d = tl.program_id(1)
    toks = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    write = toks < tl.where(pid_d == 0, num_tokens, 0)  # one D slice stores the weights
    two = tl.arange(0, 2)
    sumsq = _sum_splits(ws_ptr, toks, MIX + two, two < 1, num_tokens, num_splits, MIX_PAD, SPLIT_BLOCK)
    sumsq = tl.sum(sumsq, axis=1)  # [BT, 2] with the second column masked: a column vector load
    rs = tl.rsqrt(sumsq / (N * dim) + rms_eps)[:, None]
    i = tl.arange(0, NP)
    pre_w = _sum_splits(ws_ptr, toks, i, i < N, num_tokens, num_splits, MIX_PAD, SPLIT_BLOCK) * rs
    pre_b = tl.load(base_ptr + i, mask=i < N, other=0.0).to(tl.float32)
    pre = tl.sigmoid(pre_w * tl.load(scale_ptr).to(tl.float32) + pre_b[None, :]) + hc_eps
    pre = tl.where((i < N)[None, :], pre, 0.0)
    _collapse(x_ptr, out_ptr, pre, toks, pid_d * d_per_split, d_per_split, num_tokens, dim, N, NP, BLOCK_D, INTERPRET)
    if WITH_COMB:
        tl.store(pre_ptr + toks[:, None] * N + i[None, :], pre, mask=write[:, None] & (i < N)[None, :])
        _post_comb(ws_ptr, base_ptr, scale_ptr, post_ptr, comb_ptr, toks, rs, write, num_tokens, num_splits,
                   hc_eps, sinkhorn_iters, N, NP, MIX_PAD, SPLIT_BLOCK)


# ----------------------------------------------------------------------------- kernel C: expand

@triton.jit
def _hc_post_kernel(o_ptr, x_ptr, post_ptr, comb_ptr, new_ptr, num_tokens, dim,
                    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                    INTERPRET: tl.constexpr):
    """new[t, j, d] = post[t, j] o[t, d] + sum_i comb[t, i, j] x[t, i, d] for a [BLOCK_T, BLOCK_D] tile."""
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j = tl.arange(0, NP)
    t3 = toks.to(tl.int64)[:, None, None]
    tok_ok = (toks < num_tokens)[:, None, None]
    d3 = d[None, None, :]
    td_ok = tok_ok & (d3 < dim)
    tj_ok = tok_ok & (j < N)[None, :, None]
    dtype = x_ptr.dtype.element_ty  # rounded to it where the model's ops in this dtype round
    o = tl.load(o_ptr + t3 * dim + d3, mask=td_ok, other=0.0).to(tl.float32)
    post = tl.load(post_ptr + t3 * N + j[None, :, None], mask=tj_ok, other=0.0)
    post = round_to(post, dtype, INTERPRET).to(tl.float32)
    mixed = tl.zeros((BLOCK_T, NP, BLOCK_D), tl.float32)
    for src in tl.static_range(N):
        x = tl.load(x_ptr + (t3 * N + src) * dim + d3, mask=td_ok, other=0.0).to(tl.float32)
        c = tl.load(comb_ptr + t3 * (N * N) + src * N + j[None, :, None], mask=tj_ok, other=0.0)
        mixed += round_to(c, dtype, INTERPRET).to(tl.float32) * x
    new = round_to(post * o, dtype, INTERPRET).to(tl.float32) + round_to(mixed, dtype, INTERPRET).to(tl.float32)
    new = round_to(new, dtype, INTERPRET)
    tl.store(new_ptr + (t3 * N + j[None, :, None]) * dim + d3, new, mask=tj_ok & (d3 < dim))


# ----------------------------------------------------------------------------- launchers

def _check(name: str, t: Tensor, shape: tuple[int, ...], device: torch.device, dtypes: tuple[torch.dtype, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, streams on {device}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be one of {dtypes}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_streams(streams: Tensor) -> tuple[int, int, int, int]:
    if streams.dim() != 4:
        raise ValueError(f"streams must be [B, S, N, D], got shape {list(streams.shape)}")
    _check("streams", streams, tuple(streams.shape), streams.device, STREAM_DTYPES)
    return tuple(streams.shape)


def _mix_config(num_tokens: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) of kernel A, sized so nothing spills on sm_90 (64 x 128 tiles do:
    the bf16x3 split and the pipelined loads live in registers). The interpreter takes 256-wide K
    blocks: it pays per op, not per element."""
    block_m = min(64, max(16, triton.next_power_of_2(num_tokens)))
    if interpreting():
        return block_m, 256, 4
    return {16: (16, 64, 4), 32: (32, 32, 4)}.get(block_m, (64, 32, 8))


def _mixes(streams: Tensor, fn: Tensor, mix: int, mix_pad: int) -> tuple[Tensor, int]:
    """Kernel A: per-split partial mixes and sums of squares, `[splits, T, mix_pad]` float32."""
    num_tokens, k = streams.shape[0] * streams.shape[1], streams.shape[2] * streams.shape[3]
    block_m, block_k, num_warps = _mix_config(num_tokens, streams.device)
    m_blocks, k_blocks = triton.cdiv(num_tokens, block_m), triton.cdiv(k, block_k)
    splits = max(1, min(MAX_SPLITS, k_blocks, triton.cdiv(2 * num_sms(streams.device, 2), m_blocks)))
    k_per_split = triton.cdiv(k_blocks, splits) * block_k
    splits = triton.cdiv(k, k_per_split)
    ws = torch.empty(splits, num_tokens, mix_pad, dtype=torch.float32, device=streams.device)
    _hc_mix_kernel[(splits, m_blocks)](
        streams, fn, ws, num_tokens, k, k_per_split, MIX=mix, MIX_PAD=mix_pad, BLOCK_M=block_m, BLOCK_K=block_k,
        BF16X3=streams.dtype == torch.bfloat16, INTERPRET=interpreting(), num_warps=num_warps,
        num_stages=3)
    return ws, splits


def _finish(ws: Tensor, splits: int, streams: Tensor, base: Tensor, scale: Tensor, out: Tensor,
            weights: tuple[Tensor, Tensor, Tensor] | None, rms_eps: float, hc_eps: float, sinkhorn_iters: int) -> None:
    """Kernel B: weights (pre, post, comb, or pre only when `weights` is None) and the collapse into `out`."""
    batch, seq, n, dim = streams.shape
    num_tokens, np2 = batch * seq, triton.next_power_of_2(n)
    block_t, block_d = min(4, triton.next_power_of_2(num_tokens)), 256 if num_tokens >= 64 else 128
    t_blocks, d_blocks = triton.cdiv(num_tokens, block_t), triton.cdiv(dim, block_d)
    d_splits = max(1, min(d_blocks, triton.cdiv(4 * num_sms(streams.device, 2), t_blocks)))
    d_per_split = triton.cdiv(d_blocks, d_splits) * block_d
    split_block = max(2, min(triton.next_power_of_2(splits), 1024 // (block_t * np2 * np2)))
    pre, post, comb = weights if weights is not None else (out, out, out)  # unused pointers without comb
    _hc_finish_kernel[(t_blocks, triton.cdiv(dim, d_per_split))](
        ws, streams, base, scale, out, pre, post, comb, num_tokens, dim, splits, d_per_split, rms_eps, hc_eps,
        sinkhorn_iters, N=n, NP=np2, MIX=(2 + n) * n if weights is not None else n, MIX_PAD=ws.shape[2],
        SPLIT_BLOCK=split_block, BLOCK_T=block_t, BLOCK_D=block_d, WITH_COMB=weights is not None,
        INTERPRET=interpreting(), num_warps=4)


def _mix_pad(mix: int) -> int:
    return max(16, triton.next_power_of_2(mix + 1))  # + the sum-of-squares column; tl.dot needs N >= 16


def hc_pre(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float, hc_eps: float,
           sinkhorn_iters: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused `hc_pre_reference` (two launches): same arguments and returns (x, post, comb, pre)."""
    batch, seq, n, dim = _check_streams(streams)
    mix, floats = (2 + n) * n, (torch.float32, torch.bfloat16)
    _check("fn", fn, (mix, n * dim), streams.device, floats)
    _check("base", base, (mix,), streams.device, floats)
    _check("scale", scale, (3,), streams.device, floats)
    x = torch.empty(batch, seq, dim, dtype=streams.dtype, device=streams.device)
    pre, post = (torch.empty(batch, seq, n, dtype=torch.float32, device=streams.device) for _ in range(2))
    comb = torch.empty(batch, seq, n, n, dtype=torch.float32, device=streams.device)
    if batch * seq > 0:
        ws, splits = _mixes(streams, fn, mix, _mix_pad(mix))
        _finish(ws, splits, streams, base, scale, x, (pre, post, comb), rms_eps, hc_eps, sinkhorn_iters)
    return x, post, comb, pre


def hc_head(streams: Tensor, fn: Tensor, base: Tensor, scale: Tensor, rms_eps: float, hc_eps: float) -> Tensor:
    """Fused `hc_head_reference` (two launches): fn `[N, N * D]`, base `[N]`, scale `[1]` -> `[B, S, D]`."""
    batch, seq, n, dim = _check_streams(streams)
    floats = (torch.float32, torch.bfloat16)
    _check("fn", fn, (n, n * dim), streams.device, floats)
    _check("base", base, (n,), streams.device, floats)
    _check("scale", scale, (1,), streams.device, floats)
    x = torch.empty(batch, seq, dim, dtype=streams.dtype, device=streams.device)
    if batch * seq > 0:
        ws, splits = _mixes(streams, fn, n, _mix_pad(n))
        _finish(ws, splits, streams, base, scale, x, None, rms_eps, hc_eps, 0)
    return x


def hc_post(output: Tensor, streams: Tensor, post: Tensor, comb: Tensor) -> Tensor:
    """Fused `hc_post_reference` (one launch, one pass): output `[B, S, D]` in streams' dtype -> `[B, S, N, D]`."""
    batch, seq, n, dim = _check_streams(streams)
    _check("output", output, (batch, seq, dim), streams.device, (streams.dtype,))
    _check("post", post, (batch, seq, n), streams.device, (torch.float32,))
    _check("comb", comb, (batch, seq, n, n), streams.device, (torch.float32,))
    new = torch.empty_like(streams)
    num_tokens = batch * seq
    if num_tokens > 0:
        block_t = min(2, triton.next_power_of_2(num_tokens))  # [2, 4, 256] float32 accumulator: 64 registers
        block_d = 256 if num_tokens >= 64 else 128
        grid = (triton.cdiv(num_tokens, block_t), triton.cdiv(dim, block_d))
        _hc_post_kernel[grid](output, streams, post, comb, new, num_tokens, dim, N=n, NP=triton.next_power_of_2(n),
                              BLOCK_T=block_t, BLOCK_D=block_d, INTERPRET=interpreting(), num_warps=4)
    return new
