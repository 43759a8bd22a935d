"""Decode FP4 routed experts on tensor cores: Triton's microscaling dot (`tl.dot_scaled`) on V4's weights.

V4's FP4 experts are the OCP MX format exactly: e2m1 values two per byte (low nibble first) with one
ue8m0 scale per 32 along K. `tl.dot_scaled` takes them as stored; on Hopper, which has no FP4 MMA,
Triton upcasts each tile to bf16 (the scale folded in: e2m1 x 2^k is exact in bf16) with bit operations
and feeds the MMA. decode_moe.py's CUDA-core GEMV instead decodes to float32 and multiplies on the FP32
units, which bounds it at ~0.8 TB/s on an H100 (issue 27); here the decode is a few integer operations
per byte and the products run on the tensor cores, and the K loop is software-pipelined.

The weight tile is the MMA's M side (`BLOCK_N` output rows, >= 64 for Hopper's wgmma), the tokens its
N side (`BLOCK_M` = 16 columns, the rows routed to the expert, zero-padded): the usual swap for a
GEMV-shaped product. Same pipeline and routing rule as decode_moe.py (`_expert_rows`: the program of a
(token, slot) pair whose expert appears first computes every row routed to that expert), the same
function: h = silu(min(x w1^T, limit)) * clamp(x w3^T, +-limit) rounded to x's dtype, then
y = weight * (h w2^T), then the float32 sum over the k slots. Only ue8m0 scales (float32 scales keep
decode_moe.py's kernel, which rounds w * s per element as moe.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, round_to
from .decode_moe import MAX_TOKENS, _alloc, _expert_rows
from .moe import FP4, _check_experts

BLOCK_M = 16  # token columns per MMA (at most MAX_TOKENS rows are real)


@dataclass(frozen=True)
class MxConfig:
    """Output rows per program and K per pipelined step for the two products (bench_decode_gemv.py sweeps)."""

    gate_up_n: int = 64
    gate_up_k: int = 256
    down_n: int = 64
    down_k: int = 256
    num_warps: int = 4
    num_stages: int = 3


DEFAULT = MxConfig()
INTERPRET_CONFIG = MxConfig(64, 64, 64, 64, 4, 1)


@triton.jit
def _mx_dot(w_ptr, s_ptr, rows_ptr, row_ok, n0, N, K, stride_wn, stride_sn, acc, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, NUM_STAGES: tl.constexpr):
    """acc[n, r] += dequantised w[n0 + n] . rows[r] over K: `[BLOCK_N, BLOCK_M]` float32."""
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    s_rows = s_ptr + cols.to(tl.int64)[:, None] * stride_sn
    half = tl.arange(0, BLOCK_K // 2)
    groups = tl.arange(0, BLOCK_K // 32)
    ks = tl.arange(0, BLOCK_K)
    for k0 in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        k_ok = k0 + ks < K
        w = tl.load(w_rows + (k0 // 2 + half)[None, :], mask=col_ok[:, None] & (k0 + 2 * half < K)[None, :], other=0)
        s = tl.load(s_rows + (k0 // 32 + groups)[None, :], mask=col_ok[:, None] & (k0 + 32 * groups < K)[None, :],
                    other=127)
        x = tl.load(rows_ptr + (k0 + ks)[:, None], mask=k_ok[:, None] & row_ok[None, :], other=0.0)  # [K, M]
        acc = tl.dot_scaled(w, s, "e2m1", x, None, "bf16", acc)
    return acc


@triton.jit
def _gate_up_mx_kernel(x_ptr, ids_ptr, w1_ptr, w3_ptr, s1_ptr, s3_ptr, h_ptr, P, TOPK, H, I, limit, stride_we,
                       stride_wn, stride_se, stride_sn, INTERPRET: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       NUM_STAGES: tl.constexpr):
    leads, expert, count, pairs, tokens = _expert_rows(ids_ptr, P, TOPK, BLOCK_P, BLOCK_M)
    if leads:
        n0 = tl.program_id(0) * BLOCK_N
        row_ok = tl.arange(0, BLOCK_M) < count
        rows = x_ptr + tokens.to(tl.int64)[None, :] * H
        zero = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
        gate = _mx_dot(w1_ptr + expert * stride_we, s1_ptr + expert * stride_se, rows, row_ok, n0, I, H, stride_wn,
                       stride_sn, zero, BLOCK_N, BLOCK_K, BLOCK_M, NUM_STAGES)
        up = _mx_dot(w3_ptr + expert * stride_we, s3_ptr + expert * stride_se, rows, row_ok, n0, I, H, stride_wn,
                     stride_sn, zero, BLOCK_N, BLOCK_K, BLOCK_M, NUM_STAGES)
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        cols = n0 + tl.arange(0, BLOCK_N)
        mask = (cols < I)[:, None] & row_ok[None, :]
        tl.store(h_ptr + pairs.to(tl.int64)[None, :] * I + cols[:, None],
                 round_to(gate * tl.sigmoid(gate) * up, h_ptr.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit
def _down_mx_kernel(h_ptr, ids_ptr, rw_ptr, w2_ptr, s2_ptr, y_ptr, P, TOPK, H, I, stride_we, stride_wn, stride_se,
                    stride_sn, INTERPRET: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    leads, expert, count, pairs, tokens = _expert_rows(ids_ptr, P, TOPK, BLOCK_P, BLOCK_M)
    if leads:
        n0 = tl.program_id(0) * BLOCK_N
        row_ok = tl.arange(0, BLOCK_M) < count
        rows = h_ptr + pairs.to(tl.int64)[None, :] * I
        acc = _mx_dot(w2_ptr + expert * stride_we, s2_ptr + expert * stride_se, rows, row_ok, n0, H, I, stride_wn,
                      stride_sn, tl.zeros((BLOCK_N, BLOCK_M), tl.float32), BLOCK_N, BLOCK_K, BLOCK_M, NUM_STAGES)
        acc *= tl.load(rw_ptr + pairs, mask=row_ok, other=0.0)[None, :]
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(y_ptr + pairs.to(tl.int64)[None, :] * H + cols[:, None],
                 round_to(acc, y_ptr.dtype.element_ty, INTERPRET), mask=(cols < H)[:, None] & row_ok[None, :])


def supports(x: Tensor, scales: Tensor, w1: Tensor) -> bool:
    """At most MAX_TOKENS bf16 tokens, ue8m0 scales, H and I multiples of 32 (whole scale groups)."""
    return (x.shape[0] <= MAX_TOKENS and x.dtype == torch.bfloat16 and scales.dtype == torch.float8_e8m0fnu
            and x.shape[1] % 32 == 0 and w1.shape[1] % 32 == 0)


def moe_experts_mx_fp4(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                       w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float, *,
                       config: MxConfig | None = None) -> Tensor:
    """`moe_experts_fp4_reference` for at most MAX_TOKENS bf16 tokens on tensor cores: packed e2m1
    `[E, out, in/2]` weights with `[E, out, in/32]` ue8m0 scales -> `[N, H]` bf16."""
    _check_experts(x, weights, ids, (w1, w3, w2), (w1_scale, w3_scale, w2_scale), FP4)
    if not supports(x, w1_scale, w1):
        raise ValueError("the MX decode kernel takes at most 8 bf16 tokens, ue8m0 scales and H, I multiples of 32")
    (num_tokens, hidden), topk, inter = x.shape, ids.shape[1], w1.shape[1]
    num_pairs = num_tokens * topk
    if num_pairs == 0:
        return torch.zeros_like(x)
    cfg = config or (INTERPRET_CONFIG if interpreting() else DEFAULT)
    x = x.contiguous()
    w1, w3, w2 = (t.view(torch.uint8) for t in (w1, w3, w2))
    s1, s3, s2 = (s.view(torch.uint8) for s in (w1_scale, w3_scale, w2_scale))
    ids_flat = ids.reshape(-1).contiguous()
    common = dict(INTERPRET=interpreting(), BLOCK_P=triton.next_power_of_2(num_pairs), BLOCK_M=BLOCK_M,
                  NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps)
    h = _alloc((num_pairs, inter), x.dtype, x.device)
    _gate_up_mx_kernel[(triton.cdiv(inter, cfg.gate_up_n), num_pairs)](
        x, ids_flat, w1, w3, s1, s3, h, num_pairs, topk, hidden, inter, float(limit), w1.stride(0), w1.stride(1),
        s1.stride(0), s1.stride(1), **common, BLOCK_N=cfg.gate_up_n, BLOCK_K=cfg.gate_up_k)
    y = _alloc((num_pairs, hidden), x.dtype, x.device)
    _down_mx_kernel[(triton.cdiv(hidden, cfg.down_n), num_pairs)](
        h, ids_flat, weights.reshape(-1).float().contiguous(), w2, s2, y, num_pairs, topk, hidden, inter,
        w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1), **common, BLOCK_N=cfg.down_n, BLOCK_K=cfg.down_k)
    return y.view(num_tokens, topk, hidden).sum(dim=1)
