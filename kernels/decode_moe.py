"""Decode grouped GEMV for FP4 and FP8 routed experts: at most 8 tokens, each expert's weights read once.

Why beside moe.py: at decode (B <= 8 tokens x top-6) nearly every used expert gets one row, so the
grouped GEMM's 16-row MMA tiles are mostly padding and its time is the dequantisation: an FP4 tile
decoded to bf16 for tl.dot costs ~15 instructions per weight byte, more than an SM can issue at the
bandwidth (moe.py's FP4 decode runs at ~0.8 TB/s on an H100, benchmarks/results/kernels_h100.md).
Here the inner product runs on CUDA cores in float32, and the decode is cheap:
- FP4: weights are read as 32-bit words (8 e2m1 codes, 16-byte vector loads). Two codes 16 bits apart
  become one f16x2 pair with two shifts and one AND-OR per pair: the code's sign to bit 15, its
  exponent and mantissa to bits 11..9, so each half is the e2m1 value times 2^-14 (the hardware
  f16 -> f32 convert decodes the subnormal 0.5 exactly). The 2^14 goes into the 1 x 32 group scale,
  applied once per 32 products: for power-of-two (ue8m0) scales, sum(w s x) = s sum(w x) exactly.
- FP8: e4m3 bytes converted by the hardware, the 128 x 128 block scale folded into x (exact likewise).
Float32 (or bfloat16) scales that are not powers of two are applied per element and the product is
rounded to x's dtype first, as moe.py does, so both kernels compute the same function.

Pipeline (no host sync, grid fixed by shapes, so the decode step can be CUDA-graphed):
  1. `_gate_up_kernel`, grid (I blocks, pairs): the program of a (token, slot) pair whose expert
     appears first at that pair computes every row routed to that expert (at most one per token);
     the others exit. h[pair] = silu(min(x w1^T, limit)) * clamp(x w3^T, +-limit), rounded to x's dtype.
  2. `_down_kernel`, grid (H blocks, pairs), the same way: y[pair] = weight * (h[pair] @ w2^T).
  3. out = y.view(N, k, H).sum(1) (float32 accumulation), as moe.py does, optionally + an addend (the
     shared expert's output): done by the down kernel's last program per column block (an arrival
     counter, kernels/common.py), so the MoE's sum and the shared expert's add take no launches of their own.
A pair whose id is NO_EXPERT (-1, moe.py) leads nothing and reads no weights: its own program of the
down kernel writes its row of y as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import arrival_counters, interpreting, round_to
from .moe import FP4, FP8, _check_experts, _scale_f32, moe_experts_fp4_reference, moe_experts_fp8_reference

MAX_TOKENS = 8  # rows per expert are at most the tokens: one accumulator row each


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the launcher fills (tests replace it to poison outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class ExpertGemvConfig:
    """Output rows per program and K (weight columns, unpacked) per step for the two GEMVs; to be tuned on
    the device (benchmarks/bench_decode_gemv.py). block_n <= 128 keeps one FP8 scale row per tile; FP4's
    K steps are whole 32-column scale groups."""

    gate_up_n: int = 16
    gate_up_k: int = 512
    down_n: int = 16
    down_k: int = 512
    num_warps: int = 4


DEFAULT = ExpertGemvConfig()  # FP8 experts: the best of the H100 sweep at B = 1 and 8 (decode_gemv_h100.md)
# FP4: the H100 sweep's best at B = 1, 2 and 8 (benchmarks/results/decode_experts_fp4_h100.md)
FP4_DEFAULT = ExpertGemvConfig(16, 256, 16, 256, 4)
INTERPRET_CONFIG = ExpertGemvConfig(16, 64, 16, 64, 4)


# --------------------------------------------------------------------------------------------- the kernels


@triton.jit
def _expert_rows(ids_ptr, P, TOPK, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr):
    """(leads, expert, count, pairs [BLOCK_R], tokens [BLOCK_R]) for program_id(1)'s pair p: whether p
    leads a chunk of its expert's pairs (the first, or every BLOCK_R-th: a token routed twice to one
    expert makes more pairs than tokens), the expert (int64), and the chunk's pairs from p on, in order.
    A NO_EXPERT pair (negative id) leads nothing."""
    p = tl.program_id(1)
    idx = tl.arange(0, BLOCK_P)
    ids = tl.load(ids_ptr + idx, mask=idx < P, other=-1)
    expert = tl.load(ids_ptr + p)
    same = (ids == expert) & (idx < P)
    rank = tl.sum((same & (idx < p)).to(tl.int32), axis=0)
    leads = (rank % BLOCK_R == 0) & (expert >= 0)
    count = tl.minimum(tl.sum(same.to(tl.int32), axis=0) - rank, BLOCK_R)
    r = tl.arange(0, BLOCK_R)
    pairs = tl.zeros((BLOCK_R,), tl.int32)
    prev = p - 1
    for j in tl.static_range(BLOCK_R):
        nxt = tl.min(tl.where(same & (idx > prev), idx, BLOCK_P), axis=0)
        pairs = tl.where(r == j, nxt, pairs)
        prev = nxt
    pairs = tl.where(r < count, pairs, 0)
    return leads, expert.to(tl.int64), count, pairs, pairs // TOPK


@triton.jit
def _rows_dot(x_ptr, x_rows, count, w_ptr, s_ptr, n0, N, K, stride_wn, stride_sn, FMT: tl.constexpr,
              SCALE_E8M0: tl.constexpr, ROUND_W: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_R: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WHOLE_GROUPS: tl.constexpr):
    """acc[r, n] = x[x_rows[r]] . dequantised w[n0 + n] for r < count: [BLOCK_R, BLOCK_N] float32."""
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    r_idx = tl.arange(0, BLOCK_R)
    dtype = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_R, BLOCK_N), tl.float32)
    if FMT == 2:
        for r in range(count):  # a row's whole dot before the next: one 2-D accumulator, reduced once
            x_row = x_ptr + tl.sum(tl.where(r_idx == r, x_rows, 0), axis=0)
            row = _fp4_row_dot(x_row, w_ptr, s_ptr, cols, col_ok, K, stride_wn, stride_sn, dtype, SCALE_E8M0,
                               ROUND_W, INTERPRET, BLOCK_N, BLOCK_K, WHOLE_GROUPS)
            acc = tl.where(r_idx[:, None] == r, row[None, :], acc)
    else:
        w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
        ks = tl.arange(0, BLOCK_K)
        s_row = s_ptr + (n0 // 128) * stride_sn  # BLOCK_N divides 128: one scale row for the tile
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < K
            w = tl.load(w_rows + kk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            s = _scale_f32(tl.load(s_row + kk // 128, mask=k_ok, other=0), SCALE_E8M0, 0)  # [BLOCK_K]
            if ROUND_W:
                w = round_to(w * s[None, :], dtype, INTERPRET).to(tl.float32)
            for r in range(count):
                x_row = x_ptr + tl.sum(tl.where(r_idx == r, x_rows, 0), axis=0)
                x = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
                if not ROUND_W:
                    x = x * s
                acc = tl.where(r_idx[:, None] == r, acc + tl.sum(w * x[None, :], axis=1)[None, :], acc)
    return acc


@triton.jit
def _fp4_row_dot(x_row, w_ptr, s_ptr, cols, col_ok, K, stride_wn, stride_sn, dtype: tl.constexpr,
                 SCALE_E8M0: tl.constexpr, ROUND_W: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, WHOLE_GROUPS: tl.constexpr):
    """x_row . dequantised FP4 w[cols] as [BLOCK_N] float32. Tiles are [BLOCK_N, groups, 4 words]: a
    32-column scale group is one 16-byte load, its scale is read and applied once, and partial sums stay
    in a [BLOCK_N, groups] accumulator across the K loop (one cross-thread reduction at the end, not one
    per step). With the next step's tile loaded ahead and the PTX decode, the sm_90 SASS of the K loop at
    16 x 1024 tiles went from 882 to 675 instructions per step, 163 to 127 registers
    (benchmarks/sass_decode_moe.py)."""
    groups = tl.arange(0, BLOCK_K // 32)
    quads = tl.arange(0, 4)
    w_rows = w_ptr + cols.to(tl.int64)[:, None, None] * stride_wn
    s_rows = s_ptr + cols.to(tl.int64)[:, None] * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_K // 32), tl.float32)
    w_next, s_next = _fp4_tile(w_rows, s_rows, col_ok, 0, K, groups, quads, WHOLE_GROUPS)
    for k0 in range(0, K, BLOCK_K):
        # the next step's tile is loaded before this one is decoded: its latency hides behind the math
        w, s_raw = w_next, s_next
        w_next, s_next = _fp4_tile(w_rows, s_rows, col_ok, k0 + BLOCK_K, K, groups, quads,
                                   WHOLE_GROUPS)
        wj = k0 // 8 + groups[:, None] * 4 + quads[None, :]  # [groups, 4] word index
        s = _scale_f32(s_raw, SCALE_E8M0, 14)  # [BLOCK_N, groups]
        x_at = x_row + wj * 8
        x_ok = wj * 8 < K
        t = tl.zeros((BLOCK_N, BLOCK_K // 32, 4), tl.float32)
        for c in tl.static_range(4):  # a pair's decode beside its products: few values live at once
            lo, hi = _fp4_pair(w, c, INTERPRET)
            if ROUND_W:  # per element, rounded to x's dtype (moe.py's dequantisation)
                lo = round_to(lo * s[:, :, None], dtype, INTERPRET).to(tl.float32)
                hi = round_to(hi * s[:, :, None], dtype, INTERPRET).to(tl.float32)
            t += lo * tl.load(x_at + c, mask=x_ok, other=0.0).to(tl.float32)[None, :, :]
            t += hi * tl.load(x_at + c + 4, mask=x_ok, other=0.0).to(tl.float32)[None, :, :]
        if ROUND_W:
            acc += tl.sum(t, axis=2)
        else:
            acc += tl.sum(t, axis=2) * s
    return tl.sum(acc, axis=1)


@triton.jit
def _fp4_tile(w_rows, s_rows, col_ok, k0, K, groups, quads, WHOLE_GROUPS: tl.constexpr):
    """Words [BLOCK_N, groups, 4] (int32) and raw scales [BLOCK_N, groups] of columns k0.. (none past K).
    WHOLE_GROUPS (K a multiple of 32): masks constant over a group's 4 words, so each is one 16-byte load."""
    wj = k0 // 8 + groups[:, None] * 4 + quads[None, :]
    g_ok = (k0 // 32 + groups) * 32 < K
    if WHOLE_GROUPS:
        w = tl.load(w_rows + wj[None, :, :], mask=col_ok[:, None, None] & g_ok[None, :, None], other=0)
    else:
        in_k = (wj < tl.cdiv(K, 8))[None, :, :]
        w = tl.load(w_rows + wj[None, :, :], mask=col_ok[:, None, None] & in_k, other=0)
    s = tl.load(s_rows + (k0 // 32 + groups)[None, :], mask=col_ok[:, None] & g_ok[None, :], other=0)
    return w, s


def _pair_decode_ptx(c: int) -> str:
    """PTX for one f16x2 pair of `_fp4_pair`: the codes at bits 4c and 4c + 16 of word $2 -> float32 $0 and
    $1, with two shifts, two masks and an OR, each half converted where it lies (Triton's lowering of the
    same bit ops repacked the halves with an extra PRMT per pair, ~10% of the loop's instructions)."""
    sign = f"shl.b32 a, $2, {12 - 4 * c};" if c < 3 else "mov.b32 a, $2;"
    mag = f"shl.b32 b, $2, {9 - 4 * c};" if c < 3 else "shr.b32 b, $2, 3;"
    return "\n".join(["{", ".reg .b32 a, b;", ".reg .b16 lo, hi;", sign, mag, "and.b32 a, a, 0x80008000;",
                      "and.b32 b, b, 0x0E000E00;", "or.b32 a, a, b;", "mov.b32 {lo, hi}, a;", "cvt.f32.f16 $0, lo;",
                      "cvt.f32.f16 $1, hi;", "}"])


PAIR0_PTX, PAIR1_PTX, PAIR2_PTX, PAIR3_PTX = (tl.constexpr(_pair_decode_ptx(c)) for c in range(4))


@triton.jit
def _fp4_pair(w, C: tl.constexpr, INTERPRET: tl.constexpr):
    """The codes at bits 4C and 4C + 16 of each word (columns 8j + C and 8j + C + 4) -> two float32 tensors,
    each the e2m1 value times 2^-14: an f16x2 pair built with two shifts and an AND-OR, the sign to bit 15
    and exponent and mantissa to bits 11..9; the hardware's f16 -> f32 convert decodes the subnormal 0.5
    exactly. Inline PTX on the GPU, the same bit ops interpreted."""
    if INTERPRET:
        w = w.to(tl.uint32, bitcast=True)
        if C == 3:
            lo, hi = _halves((w & 0x80008000) | ((w >> 3) & 0x0E000E00))
        else:
            lo, hi = _halves(((w << (12 - 4 * C)) & 0x80008000) | ((w << (9 - 4 * C)) & 0x0E000E00))
    elif C == 0:
        lo, hi = tl.inline_asm_elementwise(PAIR0_PTX, "=f,=f,r", [w], dtype=(tl.float32, tl.float32), is_pure=True,
                                           pack=1)
    elif C == 1:
        lo, hi = tl.inline_asm_elementwise(PAIR1_PTX, "=f,=f,r", [w], dtype=(tl.float32, tl.float32), is_pure=True,
                                           pack=1)
    elif C == 2:
        lo, hi = tl.inline_asm_elementwise(PAIR2_PTX, "=f,=f,r", [w], dtype=(tl.float32, tl.float32), is_pure=True,
                                           pack=1)
    else:
        lo, hi = tl.inline_asm_elementwise(PAIR3_PTX, "=f,=f,r", [w], dtype=(tl.float32, tl.float32), is_pure=True,
                                           pack=1)
    return lo, hi


@triton.jit
def _halves(pair):
    """An f16x2 pair in a uint32 -> (low, high) as float32."""
    lo = (pair & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (pair >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _gate_up_kernel(x_ptr, ids_ptr, w1_ptr, w3_ptr, s1_ptr, s3_ptr, h_ptr, P, TOPK, H, I, limit,
                    stride_we, stride_wn, stride_se, stride_sn, FMT: tl.constexpr, SCALE_E8M0: tl.constexpr,
                    ROUND_W: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WHOLE_GROUPS: tl.constexpr):
    """h[pair, n] = silu(min(x w1^T, limit)) * clamp(x w3^T, +-limit) for the rows of one expert."""
    leads, expert, count, pairs, tokens = _expert_rows(ids_ptr, P, TOPK, BLOCK_P, BLOCK_R)
    if leads:
        n0 = tl.program_id(0) * BLOCK_N
        x_rows = tokens.to(tl.int64) * H
        gate = _rows_dot(x_ptr, x_rows, count, w1_ptr + expert * stride_we, s1_ptr + expert * stride_se, n0, I, H,
                         stride_wn, stride_sn, FMT, SCALE_E8M0, ROUND_W, INTERPRET, BLOCK_R, BLOCK_N, BLOCK_K,
                         WHOLE_GROUPS)
        up = _rows_dot(x_ptr, x_rows, count, w3_ptr + expert * stride_we, s3_ptr + expert * stride_se, n0, I, H,
                       stride_wn, stride_sn, FMT, SCALE_E8M0, ROUND_W, INTERPRET, BLOCK_R, BLOCK_N, BLOCK_K,
                       WHOLE_GROUPS)
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        cols = n0 + tl.arange(0, BLOCK_N)
        mask = (tl.arange(0, BLOCK_R) < count)[:, None] & (cols < I)[None, :]
        tl.store(h_ptr + pairs.to(tl.int64)[:, None] * I + cols[None, :],
                 round_to(gate * tl.sigmoid(gate) * up, h_ptr.dtype.element_ty, INTERPRET), mask=mask)


@triton.jit
def _down_kernel(h_ptr, ids_ptr, rw_ptr, w2_ptr, s2_ptr, y_ptr, out_ptr, add_ptr, counter_ptr, P, TOPK, H, I,
                 stride_we, stride_wn, stride_se, stride_sn, FMT: tl.constexpr, SCALE_E8M0: tl.constexpr,
                 ROUND_W: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WHOLE_GROUPS: tl.constexpr, SUM: tl.constexpr,
                 ADD: tl.constexpr):
    """y[pair, n] = routing weight * (h[pair] @ w2^T)[n] for the rows of one expert; 0 for a NO_EXPERT pair.
    With SUM, the last of a column block's programs to arrive (an arrival counter per block, reset by it)
    also writes out[t] = sum of token t's k rows of y in slot order (float32, then x's dtype), plus
    add[t] with ADD, rounded again: `y.view(N, k, H).sum(1)` and then `+ add` without two more launches."""
    leads, expert, count, pairs, tokens = _expert_rows(ids_ptr, P, TOPK, BLOCK_P, BLOCK_R)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if expert < 0:  # this program's own pair: no expert, a zero row
        tl.store(y_ptr + tl.program_id(1).to(tl.int64) * H + cols, tl.zeros((BLOCK_N,), y_ptr.dtype.element_ty),
                 mask=cols < H)
    if leads:
        n0 = tl.program_id(0) * BLOCK_N
        acc = _rows_dot(h_ptr, pairs.to(tl.int64) * I, count, w2_ptr + expert * stride_we, s2_ptr + expert * stride_se,
                        n0, H, I, stride_wn, stride_sn, FMT, SCALE_E8M0, ROUND_W, INTERPRET, BLOCK_R, BLOCK_N, BLOCK_K,
                        WHOLE_GROUPS)
        rows_ok = tl.arange(0, BLOCK_R) < count
        acc *= tl.load(rw_ptr + pairs, mask=rows_ok, other=0.0)[:, None]
        tl.store(y_ptr + pairs.to(tl.int64)[:, None] * H + cols[None, :],
                 round_to(acc, y_ptr.dtype.element_ty, INTERPRET), mask=rows_ok[:, None] & (cols < H)[None, :])
    if SUM:
        tl.debug_barrier()  # every thread's rows are stored before the release below publishes them
        arrived = tl.atomic_add(counter_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(1) - 1:
            ok = cols < H
            for t in range(P // TOPK):
                total = tl.zeros((BLOCK_N,), tl.float32)
                for k in range(TOPK):  # in slot order: deterministic
                    total += tl.load(y_ptr + (t * TOPK + k) * H + cols, mask=ok, other=0.0,
                                     cache_modifier=".cg").to(tl.float32)
                out = round_to(total, out_ptr.dtype.element_ty, INTERPRET)
                if ADD:
                    out = round_to(out.to(tl.float32) + tl.load(add_ptr + t * H + cols, mask=ok,
                                                                other=0.0).to(tl.float32),
                                   out_ptr.dtype.element_ty, INTERPRET)
                tl.store(out_ptr + t * H + cols, out, mask=ok)  # < 8 x 8 rows: int32 offsets
            tl.atomic_xchg(counter_ptr + tl.program_id(0), 0)  # ready for the next call (and graph replay)


# ------------------------------------------------------------------------------------------------ launcher


def supports(x: Tensor, fmt: str, w1: Tensor) -> bool:
    """Whether these shapes take the decode GEMV: at most MAX_TOKENS tokens and, for FP4, whole 32-bit
    words per weight row (H and I multiples of 8)."""
    if x.shape[0] > MAX_TOKENS or fmt not in ("fp4", "fp8"):
        return False
    return fmt == "fp8" or (x.shape[1] % 8 == 0 and w1.shape[1] % 8 == 0)


def _experts_gemv(x: Tensor, weights: Tensor, ids: Tensor, w: tuple[Tensor, Tensor, Tensor],
                  scales: tuple[Tensor, Tensor, Tensor], limit: float, fmt: int,
                  config: ExpertGemvConfig | None, addend: Tensor | None, fused_sum: bool) -> Tensor:
    """Check, launch the two GEMVs; the k slots summed (and `addend` added) by the down kernel's last
    program per column block, or by PyTorch where no arrival counters can be had (first call inside a
    graph capture)."""
    num_experts, inter = _check_experts(x, weights, ids, w, scales, fmt)
    (num_tokens, hidden), topk = x.shape, ids.shape[1]
    if num_tokens > MAX_TOKENS:
        raise ValueError(f"the decode GEMV takes at most {MAX_TOKENS} tokens, got {num_tokens} (use moe.py)")
    if fmt == FP4 and (hidden % 8 or inter % 8):
        raise ValueError(f"FP4 rows must be whole 32-bit words: H ({hidden}) and I ({inter}) multiples of 8")
    num_pairs = num_tokens * topk
    if addend is not None and (addend.shape != x.shape or addend.dtype != x.dtype):
        raise ValueError(f"addend must be [N, H] in x's dtype like x {tuple(x.shape)} {x.dtype}, got "
                         f"{tuple(addend.shape)} {addend.dtype}")
    if num_pairs == 0:
        return torch.zeros_like(x) if addend is None else addend.clone()
    cfg = config or (INTERPRET_CONFIG if interpreting() else FP4_DEFAULT if fmt == FP4 else DEFAULT)
    if fmt == FP8 and max(cfg.gate_up_n, cfg.down_n) > 128:
        raise ValueError("FP8 tiles must lie in one 128-row scale block (block_n <= 128)")
    if fmt == FP4 and (cfg.gate_up_k % 32 or cfg.down_k % 32):
        raise ValueError("FP4 K steps must be whole 32-column scale groups (block_k a multiple of 32)")
    x = x.contiguous()
    addend = addend.contiguous() if addend is not None else None
    if fmt == FP4:  # packed bytes read as words: [E, out, in / 8] int32
        w1, w3, w2 = (t.view(torch.uint8).view(torch.int32) for t in w)
    else:
        w1, w3, w2 = w
    e8m0 = scales[0].dtype == torch.float8_e8m0fnu
    s1, s3, s2 = (s.view(torch.uint8) if e8m0 else s for s in scales)
    round_w = not e8m0 and x.dtype != torch.float32  # float scales: round w * s to x's dtype first
    ids_flat = ids.reshape(-1).contiguous()
    common = dict(FMT=fmt, SCALE_E8M0=e8m0, ROUND_W=round_w, INTERPRET=interpreting(),
                  WHOLE_GROUPS=hidden % 32 == 0 and inter % 32 == 0,
                  BLOCK_P=triton.next_power_of_2(num_pairs), BLOCK_R=triton.next_power_of_2(num_tokens),
                  num_warps=cfg.num_warps)
    h = _alloc((num_pairs, inter), x.dtype, x.device)
    _gate_up_kernel[(triton.cdiv(inter, cfg.gate_up_n), num_pairs)](
        x, ids_flat, w1, w3, s1, s3, h, num_pairs, topk, hidden, inter, float(limit), w1.stride(0), w1.stride(1),
        s1.stride(0), s1.stride(1), **common, BLOCK_N=cfg.gate_up_n, BLOCK_K=cfg.gate_up_k)
    y = _alloc((num_pairs, hidden), x.dtype, x.device)
    blocks = triton.cdiv(hidden, cfg.down_n)
    counters = arrival_counters(x.device, blocks) if fused_sum else None
    out = _alloc((num_tokens, hidden), x.dtype, x.device) if counters is not None else y
    _down_kernel[(blocks, num_pairs)](
        h, ids_flat, weights.reshape(-1).float().contiguous(), w2, s2, y, out,
        addend if addend is not None else out, counters if counters is not None else ids_flat, num_pairs, topk,
        hidden, inter, w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1), **common, BLOCK_N=cfg.down_n,
        BLOCK_K=cfg.down_k, SUM=counters is not None, ADD=addend is not None)
    if counters is not None:
        return out
    routed = y.view(num_tokens, topk, hidden).sum(dim=1)
    return routed if addend is None else routed + addend


def moe_experts_gemv_fp8(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                         w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float, *,
                         config: ExpertGemvConfig | None = None, addend: Tensor | None = None,
                         fused_sum: bool = True) -> Tensor:
    """Triton `moe_experts_fp8_reference` for at most MAX_TOKENS tokens: e4m3 [E, out, in] weights with
    [E, out/128, in/128] scales -> [N, H] in x's dtype, plus `addend` [N, H] (rounded as `routed + addend`)."""
    return _experts_gemv(x, weights, ids, (w1, w3, w2), (w1_scale, w3_scale, w2_scale), limit, FP8, config, addend,
                         fused_sum)


def moe_experts_gemv_fp4(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                         w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float, *,
                         config: ExpertGemvConfig | None = None, addend: Tensor | None = None,
                         fused_sum: bool = True) -> Tensor:
    """Triton `moe_experts_fp4_reference` for at most MAX_TOKENS tokens: packed e2m1 [E, out, in/2] weights
    with [E, out, in/32] e8m0 (or float32) scales -> [N, H] in x's dtype, plus `addend` [N, H] (rounded as
    `routed + addend`)."""
    return _experts_gemv(x, weights, ids, (w1, w3, w2), (w1_scale, w3_scale, w2_scale), limit, FP4, config, addend,
                         fused_sum)


moe_experts_gemv_fp8_reference = moe_experts_fp8_reference
moe_experts_gemv_fp4_reference = moe_experts_fp4_reference
