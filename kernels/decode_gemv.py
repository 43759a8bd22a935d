"""Decode GEMV for the FP8 dense projections: M <= 8 rows against an e4m3 weight with 128 x 128 scales.

Why a second kernel beside fp8_gemm.py: at decode a projection reads its weight once and does almost no
arithmetic, so its time is bytes over bandwidth plus latency. fp8_gemm's decode path tiles N by 128 and,
when those tiles cannot fill the GPU, splits K and sums the partials (an arrival counter per tile, or a
second kernel): measured on an H100 (benchmarks/results/fp8_split_sum_h100.json), a 2-4 MB weight takes
8-9 us there, 4-6x its transfer time. Here each program owns BLOCK_N output columns (weight rows) and
streams the full K of them, so nothing is reduced across programs; small N is covered with narrow
BLOCK_N (down to 2 rows) instead of a split.

Two inner products, chosen per call (`GemvConfig.use_dot`):
- CUDA cores (default for narrow tiles): a [BLOCK_N, BLOCK_K] weight tile is loaded with 16-byte
  vector loads, converted to float32 in registers and multiplied by each row of x in float32. The
  activation and weight scales are folded into x (q * s_x * s_w, exact for the power-of-two ue8m0
  scales), so the weight costs one convert and one FMA per element and row.
- Tensor cores ("swap AB"): the weight tile is the MMA's wide side, x (quantised, padded to 16 rows)
  the narrow one: acc[BLOCK_N, 16] += dot(w, q^T) * s_w * s_x per 128-wide K block, as fp8_gemm does with
  the roles swapped. Costs no CUDA-core FMAs per row, which matters at M = 8 on wide weights.

Activations are quantised exactly as fp8_gemm's fused decode path does (`_quantize_groups`: 1 x 128
groups, ue8m0 scales, e4m3 round to nearest even), inside each program: x is a few KB and stays in L1/L2.
Numerics are the reference's (fp8_linear_reference): the float32 sum of the dequantised products.

Grouped form (`fp8_gemv_grouped`): x [..., G, K] against a weight [G * R, K], group g through rows
[g R, (g + 1) R): attention's grouped wo_a in one launch instead of one GEMM per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, num_sms, round_to
from .fp8_gemm import (BLOCK, _check_act, _check_weight, _expand_blocks, _load_scale, _quantize_groups,
                       act_quant_reference, fp8_linear_reference)

MAX_ROWS = 8  # the GEMV's row limit: one register accumulator row per x row
DOT_ROWS = 16  # x padded to the MMA's narrow side


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every output is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class GemvConfig:
    """One launch: weight rows per program (a power of two <= 128, so a tile has one scale row), K per
    loop step (a multiple of 128), tensor cores or CUDA cores, warps and pipeline stages."""

    block_n: int
    block_k: int
    use_dot: bool = False
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        if self.block_n & (self.block_n - 1) or not 2 <= self.block_n <= 128:
            raise ValueError(f"block_n must be a power of two in [2, 128], got {self.block_n}")
        if self.block_k & (self.block_k - 1) or self.block_k < BLOCK:
            raise ValueError(f"block_k must be a power of two >= {BLOCK}, got {self.block_k}")
        if self.use_dot and self.block_n < 16:
            raise ValueError("the tensor-core path needs block_n >= 16")


def pick_config(m: int, n: int, k: int, groups: int, device: torch.device) -> GemvConfig:
    """A first guess, to be tuned on the device (benchmarks/bench_decode_gemv.py sweeps candidates):
    about two programs per SM, as wide a tile as that allows; tensor cores once a tile is 64 rows and x
    has more than 2 rows (CUDA-core FMAs per weight byte grow with M); ~8-16 KB of weight per step."""
    sms = num_sms(device, 8)
    rows_per_group = n // groups
    limit = rows_per_group & -rows_per_group if groups > 1 else 128  # a tile stays in one group
    block_n = 2
    while block_n * 2 <= min(128, limit) and triton.cdiv(n, block_n * 2) >= 2 * sms:
        block_n *= 2
    if m > 2 and rows_per_group >= 64:  # the H100 sweep's best for the grouped wo_a at 8 rows: 18.5 vs 66.7 us
        return GemvConfig(64, BLOCK, use_dot=True, num_warps=4, num_stages=4)
    block_k = min(max(BLOCK, 16384 // block_n), triton.next_power_of_2(k), 4096)
    if interpreting():
        block_k = min(block_k, 256)
    return GemvConfig(block_n, block_k, num_warps=4 if block_n * block_k <= 16384 else 8, num_stages=2)


# ---------------------------------------------------------------------------------------------------
# References.


def fp8_gemv_reference(x: Tensor, weight: Tensor, weight_scale: Tensor) -> Tensor:
    """x [..., K] @ dequantised weight [N, K]^T in x's dtype, x quantised as V4 does: fp8_linear_reference."""
    return fp8_linear_reference(x, weight, weight_scale)


def fp8_gemv_grouped_reference(x: Tensor, weight: Tensor, weight_scale: Tensor) -> Tensor:
    """Group g of x [..., G, K] through rows [g R, (g+1) R) of weight [G R, K] -> [..., G, R] (x's dtype):
    per group, fp8_linear_reference's product on the group's rows of the dequantised weight (any R)."""
    groups, k = x.shape[-2:]
    x2 = x.reshape(-1, k)
    n = _check(x2, weight, weight_scale, max_rows=None)
    q, s = act_quant_reference(x2, BLOCK, True)
    a32 = (q.float() * _expand_blocks(s, q.shape[0], k, 1, BLOCK)).view(-1, groups, k)
    b32 = (weight.float() * _expand_blocks(weight_scale, n, k, BLOCK, BLOCK)).view(groups, n // groups, k)
    out = torch.stack([a32[:, g] @ b32[g].T for g in range(groups)], dim=1)
    return out.to(x.dtype).view(*x.shape[:-1], n // groups)


# ---------------------------------------------------------------------------------------------------
# The kernel.


@triton.jit
def _fp8_gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, R, stride_xm, stride_xg, stride_wn, stride_sn,
                     stride_om, S_E8M0: tl.constexpr, INTERPRET: tl.constexpr, USE_DOT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[m, n] = sum_k xq[m, k] s_x[m, k / 128] w[n, k] s_w[n / 128, k / 128] for this program's
    BLOCK_N columns n and every row m < M; x rows come from group n / R (R = N when ungrouped)."""
    n0 = tl.program_id(0) * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    x_ptr += (n0 // R) * stride_xg
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    s_row = s_ptr + (n0 // 128) * stride_sn  # BLOCK_N divides 128: one scale row for the tile
    if USE_DOT:
        rows = tl.arange(0, BLOCK_M)
        ks = tl.arange(0, 128)
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, K, 128):
            x = tl.load(x_ptr + rows[:, None] * stride_xm + (k0 + ks)[None, :], mask=rows[:, None] < M, other=0.0)
            q, s_x = _quantize_groups(x.to(tl.float32), True, INTERPRET)
            w = tl.load(w_rows + (k0 + ks)[None, :], mask=col_ok[:, None], other=0.0)
            s_w = _load_scale(s_row + k0 // 128, n0 < N, S_E8M0)
            acc += tl.dot(w, tl.trans(q)) * (s_x * s_w)[None, :]
        out_ptrs = out_ptr + rows[None, :] * stride_om + cols[:, None]
        out_mask = (rows[None, :] < M) & col_ok[:, None]
        tl.store(out_ptrs, round_to(acc, out_ptr.dtype.element_ty, INTERPRET), mask=out_mask)
    else:
        rows = tl.arange(0, BLOCK_M)
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < K
            w = tl.load(w_rows + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            s_w = _load_scale(s_row + kk // 128, k_ok, S_E8M0)  # [BLOCK_K], constant over each 128
            for m in tl.static_range(BLOCK_M):
                if m < M:
                    x = tl.load(x_ptr + m * stride_xm + kk, mask=k_ok, other=0.0).to(tl.float32)
                    q, s_x = _quantize_groups(tl.reshape(x, (BLOCK_K // 128, 128)), True, INTERPRET)
                    xd = tl.reshape(q.to(tl.float32) * s_x[:, None], (BLOCK_K,)) * s_w
                    part = tl.sum(w * xd[None, :], axis=1)
                    acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
        out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
        out_mask = (rows[:, None] < M) & col_ok[None, :]
        tl.store(out_ptrs, round_to(acc, out_ptr.dtype.element_ty, INTERPRET), mask=out_mask)


# ---------------------------------------------------------------------------------------------------
# Launchers.


def _launch(x3: Tensor, weight: Tensor, weight_scale: Tensor, out: Tensor, config: GemvConfig | None) -> None:
    """out [M, G R] = group-wise x3 [M, G, K] @ weight [G R, K]^T (G = 1: a plain projection)."""
    m, groups, k = x3.shape
    n = weight.shape[0]
    rows_per_group = n // groups
    cfg = config or pick_config(m, n, k, groups, x3.device)
    if groups > 1 and rows_per_group % cfg.block_n:
        raise ValueError(f"block_n ({cfg.block_n}) must divide the rows per group ({rows_per_group})")
    e8m0 = weight_scale.dtype == torch.float8_e8m0fnu
    scale = weight_scale.view(torch.uint8) if e8m0 else weight_scale
    block_m = DOT_ROWS if cfg.use_dot else max(1, triton.next_power_of_2(m))
    _fp8_gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
        x3, weight, scale, out, m, n, k, rows_per_group, x3.stride(0), x3.stride(1), weight.stride(0),
        scale.stride(0), out.stride(0), S_E8M0=e8m0, INTERPRET=interpreting(), USE_DOT=cfg.use_dot,
        BLOCK_M=block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)


def _check(x2: Tensor, weight: Tensor, weight_scale: Tensor, max_rows: int | None = MAX_ROWS) -> int:
    """N after the checks fp8_linear makes, plus the row limit (the kernels') and the K stride."""
    _check_act(x2, BLOCK)
    n = _check_weight(weight, weight_scale, x2.shape[1])
    if max_rows is not None and x2.shape[0] > max_rows:
        raise ValueError(f"the decode GEMV takes at most {MAX_ROWS} rows, got {x2.shape[0]} (use fp8_linear)")
    if len({x2.device, weight.device, weight_scale.device}) != 1:
        raise ValueError("x, weight and weight_scale must be on one device")
    if weight.stride(1) != 1:
        raise ValueError("weight must be contiguous along K")
    return n


def fp8_gemv(x: Tensor, weight: Tensor, weight_scale: Tensor, *, config: GemvConfig | None = None) -> Tensor:
    """Triton `fp8_gemv_reference` for at most MAX_ROWS rows: x [..., K] (bf16/f16/f32) -> [..., N] in x's
    dtype; weight float8_e4m3fn [N, K], weight_scale [ceil(N/128), K/128] (f32, bf16 or e8m0)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    n = _check(x2, weight, weight_scale)
    out = _empty((x2.shape[0], n), x.dtype, x.device)
    if x2.shape[0] and n:
        x2 = x2 if x2.stride(1) == 1 else x2.contiguous()
        _launch(x2.unsqueeze(1), weight, weight_scale, out, config)
    return out.view(*x.shape[:-1], n)


def fp8_gemv_grouped(x: Tensor, weight: Tensor, weight_scale: Tensor, *,
                     config: GemvConfig | None = None) -> Tensor:
    """Triton `fp8_gemv_grouped_reference`: x [..., G, K] -> [..., G, R], weight [G R, K], in one launch."""
    groups, k = x.shape[-2:]
    x3 = x.reshape(-1, groups, k)
    n = _check(x3[:, 0], weight, weight_scale)
    if n % groups:
        raise ValueError(f"weight rows ({n}) must split into {groups} equal groups")
    out = _empty((x3.shape[0], n), x.dtype, x.device)
    if x3.shape[0] and n:
        x3 = x3 if x3.stride(2) == 1 else x3.contiguous()
        _launch(x3, weight, weight_scale, out, config)
    return out.view(*x.shape[:-1], n // groups)
