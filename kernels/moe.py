"""The grouped expert GEMM of DeepSeek V4's routed experts (model/moe.py).

The two numbers, per call of N tokens x k slots (P = N*k pairs), E experts of hidden H, intermediate I:
FLOPs = 2 * P * 3 * H * I; bytes >= the used experts' weights once, plus x and out. Decode (P << 16 E)
is weight-bandwidth bound; prefill (V4-Flash: N = 8192, k = 6, E = 256, ~192 rows per expert) is MMA
bound for FP8/FP4 weights and near the ridge for bf16 ones, so prefill tiles are sized for intensity.

Pipeline, with no host sync (a decode step can be CUDA-graphed; the grid never depends on the data):
  1. plan: torch.sort(ids, stable) groups the pairs by expert; `_tiles_kernel` (one program) binary-
     searches each expert's range and writes a table of BLOCK_M-row tiles (expert, first, end row),
     T_MAX = P // BLOCK_M + min(E + 1, P) long, an upper bound on the tiles any routing needs: no padding
     copies, and unused table entries make their programs exit at once.
  2. `_gate_up_kernel`, grid (tile, I block), I block fastest so the programs that share a tile's
     gathered x rows and an expert's weight rows run together (L2 reuse): w1 x and w3 x in two
     accumulators, clamp + SwiGLU in registers, h [P, I] written in sorted order (x dtype).
  3. `_down_kernel`, grid (tile, H block): h @ w2^T times the routing weight, each row written to its
     pair's row of y [P, H]: no atomics, so the result is deterministic.
  4. out = y.view(N, k, H).sum(1): the sum over the k slots (f32 accumulation, deterministic).
FP8 (e4m3, 128x128 block scales) and FP4 (e2m1, two per byte, low nibble = even column, 1x32 ue8m0
scales) weights are dequantised as their tiles load, exactly as model.quant does (value * scale in
f32, then rounded to x's dtype). BLOCK_N and BLOCK_K divide 128, so an FP8 tile has one scale. An FP4
nibble is moved into e4m3 bit positions (e2m1 is e4m3 with the top exponent bits clear, times 2^6), so
the hardware fp8 conversion decodes it, subnormal 0.5 included; the 2^6 goes into the group scale.
Activations stay in x's dtype (bf16 in the engine): nothing is quantised on the activation side.

A pair whose id is NO_EXPERT (-1; expert parallel gives it to the pairs of another rank's experts, so
the shapes never depend on the routing) gets no expert tile and reads no weights: it sorts first, and
the table gives its rows tiles of expert -1 that the down kernel only fills with zeros. Its output is
exactly zero; the references skip it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, round_to

PLAIN, FP8, FP4 = 0, 1, 2
NO_EXPERT = -1  # an id for a pair that runs no expert here: its output row is zero
FP8_BLOCK, FP4_GROUP = 128, 32
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e8m0fnu)
FP4_SCALE_DTYPES = (torch.float32, torch.float8_e8m0fnu)
FP4_WEIGHT_DTYPES = (torch.int8, torch.uint8)


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the launchers fill (tests replace it to poison outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------- references


def dequantize_fp8_reference(weight: Tensor, scale: Tensor) -> Tensor:
    """float8_e4m3fn [..., out, in] with [..., ceil(out/128), ceil(in/128)] scales -> float32 (model.quant)."""
    rows, cols = weight.shape[-2:]
    s = scale.to(torch.float32).repeat_interleave(FP8_BLOCK, -2)[..., :rows, :]
    return weight.to(torch.float32) * s.repeat_interleave(FP8_BLOCK, -1)[..., :cols]


def dequantize_fp4_reference(weight: Tensor, scale: Tensor) -> Tensor:
    """Packed e2m1 [..., out, in/2] (low nibble = even column) with [..., out, in/32] scales -> float32."""
    codes = weight.view(torch.uint8).long()
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=weight.device)
    values = torch.stack([table[codes & 0xF], table[codes >> 4]], dim=-1).flatten(-2)
    return values * scale.to(torch.float32).repeat_interleave(FP4_GROUP, -1)[..., : values.shape[-1]]


def _expert_loop(x: Tensor, weights: Tensor, ids: Tensor, expert: Callable[[int], tuple[Tensor, Tensor, Tensor]],
                 limit: float) -> Tensor:
    """MoE.forward's routed part: loop over the used experts, index_add in x's dtype (NO_EXPERT pairs add
    nothing)."""
    out = torch.zeros_like(x)
    for e in torch.unique(ids).tolist():
        if e < 0:
            continue
        token, slot = torch.where(ids == e)
        w1, w3, w2 = expert(e)
        xe = x[token]
        gate = F.linear(xe, w1).clamp(max=limit)
        up = F.linear(xe, w3).clamp(min=-limit, max=limit)
        y = F.linear(F.silu(gate) * up, w2)
        out.index_add_(0, token, y * weights[token, slot, None].to(x.dtype))
    return out


def moe_experts_reference(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w3: Tensor, w2: Tensor,
                          limit: float) -> Tensor:
    """sum_j weights[n, j] * expert_{ids[n, j]}(x[n]), expert(x) = w2 (silu(clamp(w1 x)) * clamp(w3 x)).

    Args: x [N, H]; weights [N, k] float32; ids [N, k] (NO_EXPERT: the pair adds 0); w1, w3 [E, I, H];
    w2 [E, H, I] (x's dtype).
    Returns: [N, H] in x's dtype.
    """
    return _expert_loop(x, weights, ids, lambda e: (w1[e], w3[e], w2[e]), limit)


def _dequantized_loop(dequantize: Callable[[Tensor, Tensor], Tensor], x: Tensor, weights: Tensor, ids: Tensor,
                      pairs: tuple[tuple[Tensor, Tensor], ...], limit: float) -> Tensor:
    """The expert loop on weights dequantised to x's dtype one used expert at a time (no full f32 copy)."""
    return _expert_loop(x, weights, ids, lambda e: tuple(dequantize(w[e], s[e]).to(x.dtype) for w, s in pairs), limit)


def moe_experts_fp8_reference(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                              w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float) -> Tensor:
    """`moe_experts_reference` on the FP8 weights dequantised (model.quant's math) to x's dtype."""
    pairs = ((w1, w1_scale), (w3, w3_scale), (w2, w2_scale))
    return _dequantized_loop(dequantize_fp8_reference, x, weights, ids, pairs, limit)


def moe_experts_fp4_reference(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                              w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float) -> Tensor:
    """`moe_experts_reference` on the FP4 weights dequantised (model.quant's math) to x's dtype."""
    pairs = ((w1, w1_scale), (w3, w3_scale), (w2, w2_scale))
    return _dequantized_loop(dequantize_fp4_reference, x, weights, ids, pairs, limit)


# ------------------------------------------------------------------------------------- grouped expert GEMM


@triton.jit
def _lower_bound(sorted_ptr, P, target, steps):
    """First position of each target in the sorted expert ids (vectorised binary search)."""
    lo = tl.zeros_like(target)
    hi = lo + P
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        value = tl.load(sorted_ptr + mid, mask=active, other=0)
        lo = tl.where(active & (value < target), mid + 1, lo)
        hi = tl.where(active & (value >= target), mid, hi)
    return lo


@triton.jit
def _tiles_kernel(sorted_ptr, tiles_ptr, P, E, T_MAX, steps,
                  BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_T: tl.constexpr):
    """tiles [3, T_MAX]: expert, first and end sorted row of each BLOCK_M-row tile; (-1, 0, 0) past the end.
    The NO_EXPERT rows (sorted first) come first, in tiles of expert -1 with their rows."""
    experts = tl.arange(0, BLOCK_E)
    starts = _lower_bound(sorted_ptr, P, experts, steps)
    ends = _lower_bound(sorted_ptr, P, experts + 1, steps)
    counts = tl.where(experts < E, ends - starts, 0)
    num_tiles = (counts + BLOCK_M - 1) // BLOCK_M
    skipped = tl.sum(tl.where(experts == 0, starts, 0), axis=0)  # rows with a negative id
    num_skip = (skipped + BLOCK_M - 1) // BLOCK_M
    last = tl.cumsum(num_tiles, 0) + num_skip  # tiles of experts <= e
    first = last - num_tiles
    for t0 in range(0, T_MAX, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        inside = (first[None, :] <= t[:, None]) & (t[:, None] < last[None, :])  # one expert per used tile
        valid = tl.sum(inside.to(tl.int32), axis=1) > 0
        expert = tl.sum(tl.where(inside, experts[None, :], 0), axis=1)
        row0 = tl.sum(tl.where(inside, starts[None, :] + (t[:, None] - first[None, :]) * BLOCK_M, 0), axis=1)
        row1 = tl.minimum(row0 + BLOCK_M, tl.sum(tl.where(inside, ends[None, :], 0), axis=1))
        skip = t < num_skip
        row0 = tl.where(skip, t * BLOCK_M, tl.where(valid, row0, 0))
        row1 = tl.where(skip, tl.minimum(t * BLOCK_M + BLOCK_M, skipped), tl.where(valid, row1, 0))
        tmask = t < T_MAX
        tl.store(tiles_ptr + t, tl.where(valid, expert, -1), mask=tmask)
        tl.store(tiles_ptr + T_MAX + t, row0, mask=tmask)
        tl.store(tiles_ptr + 2 * T_MAX + t, row1, mask=tmask)


@triton.jit
def _scale_f32(s, E8M0: tl.constexpr, SHIFT: tl.constexpr):
    """Scales as float32 times 2^SHIFT; e8m0 bytes exactly (2^(b - 127), 0 is 2^-127, 255 is NaN)."""
    if E8M0:
        b = s.to(tl.int32)
        e = tl.minimum(b + SHIFT, 255)
        bits = tl.where(e == 0, 0x00400000, e << 23)
        out = tl.where(b == 255, 0x7FC00000, bits).to(tl.float32, bitcast=True)
    else:
        out = s.to(tl.float32) * (1 << SHIFT)
    return out


@triton.jit
def _weight_tile(w_ptr, s_ptr, n0, k0, n_rows, n_cols, stride_wn, stride_sn, FMT: tl.constexpr,
                 SCALE_E8M0: tl.constexpr, DTYPE: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Rows n0.. and columns k0.. of one expert's [n_rows, n_cols] weight, dequantised to DTYPE (float32
    values of DTYPE under the interpreter)."""
    rows = n0 + tl.arange(0, BLOCK_N)
    rmask = rows < n_rows
    if FMT == 2:
        packed = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        b = tl.load(w_ptr + rows[:, None] * stride_wn + packed[None, :],
                    mask=rmask[:, None] & (packed < n_cols // 2)[None, :], other=0)
        # e2m1 bits s.ee.m -> e4m3 bits s.000ee.m00: the same value times 2^-6 (ee = 0, m = 1 is subnormal)
        lo = (((b << 2) & 0x1C) | ((b << 4) & 0x80)).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
        hi = (((b >> 2) & 0x1C) | (b & 0x80)).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
        w = tl.join(lo.to(tl.float32), hi.to(tl.float32)).reshape(BLOCK_N, BLOCK_K)  # low nibble: even column
        groups = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        s = tl.load(s_ptr + rows[:, None] * stride_sn + groups[None, :],
                    mask=rmask[:, None] & (groups < tl.cdiv(n_cols, 32))[None, :], other=0)
        w = w.reshape(BLOCK_N, BLOCK_K // 32, 32) * _scale_f32(s, SCALE_E8M0, 6)[:, :, None]
        w = w.reshape(BLOCK_N, BLOCK_K)
    else:
        cols = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + rows[:, None] * stride_wn + cols[None, :],
                    mask=rmask[:, None] & (cols < n_cols)[None, :], other=0.0)
        if FMT == 1:  # BLOCK_N and BLOCK_K divide 128: one scale for the whole tile
            w = w.to(tl.float32) * _scale_f32(tl.load(s_ptr + (n0 // 128) * stride_sn + k0 // 128), SCALE_E8M0, 0)
    if FMT != 0:
        w = round_to(w, DTYPE, INTERPRET)
    if INTERPRET:  # the interpreter's bf16/fp16 tl.dot multiplies raw bits: it gets float32 operands
        w = w.to(tl.float32)
    return w


@triton.jit
def _tile_rows(tiles_ptr, tile, T_MAX, BLOCK_M: tl.constexpr):
    """(expert as int64, sorted row ids [BLOCK_M], their mask, whether the tile has rows, whether they run
    an expert) of one tile; an unused tile masks all rows, a NO_EXPERT tile has rows but no expert."""
    expert = tl.load(tiles_ptr + tile)
    row0 = tl.load(tiles_ptr + T_MAX + tile)
    row1 = tl.load(tiles_ptr + 2 * T_MAX + tile)
    rows = row0 + tl.arange(0, BLOCK_M)
    return tl.maximum(expert, 0).to(tl.int64), rows, rows < row1, row0 < row1, expert >= 0


@triton.jit
def _gate_up_kernel(x_ptr, order_ptr, tiles_ptr, w1_ptr, w3_ptr, s1_ptr, s3_ptr, h_ptr, H, I, TOPK, T_MAX, limit,
                    stride_we, stride_wn, stride_se, stride_sn, FMT: tl.constexpr, SCALE_E8M0: tl.constexpr,
                    PRECISION: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """h[rows, n] = silu(min(x w1^T, limit)) * clamp(x w3^T, +-limit) for one (tile, I block)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(I, BLOCK_N)
    expert, rows, rmask, used, routed = _tile_rows(tiles_ptr, pid // num_n, T_MAX, BLOCK_M)
    if used & routed:  # NO_EXPERT rows get no h: the down kernel writes their y as zeros
        n0 = (pid % num_n) * BLOCK_N
        pairs = tl.load(order_ptr + rows, mask=rmask, other=0)
        x_rows = x_ptr + (pairs // TOPK)[:, None] * H
        w1_ptr += expert * stride_we
        w3_ptr += expert * stride_we
        s1_ptr += expert * stride_se
        s3_ptr += expert * stride_se
        dtype = x_ptr.dtype.element_ty
        acc1 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, H, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(x_rows + cols[None, :], mask=rmask[:, None] & (cols < H)[None, :], other=0.0)
            if INTERPRET:
                a = a.to(tl.float32)
            b1 = _weight_tile(w1_ptr, s1_ptr, n0, k0, I, H, stride_wn, stride_sn, FMT, SCALE_E8M0, dtype, INTERPRET,
                              BLOCK_N, BLOCK_K)
            b3 = _weight_tile(w3_ptr, s3_ptr, n0, k0, I, H, stride_wn, stride_sn, FMT, SCALE_E8M0, dtype, INTERPRET,
                              BLOCK_N, BLOCK_K)
            acc1 = tl.dot(a, tl.trans(b1), acc1, input_precision=PRECISION)
            acc3 = tl.dot(a, tl.trans(b3), acc3, input_precision=PRECISION)
        gate = tl.minimum(acc1, limit)
        up = tl.minimum(tl.maximum(acc3, -limit), limit)
        cols_n = n0 + tl.arange(0, BLOCK_N)
        tl.store(h_ptr + rows.to(tl.int64)[:, None] * I + cols_n[None, :],
                 round_to(gate * tl.sigmoid(gate) * up, h_ptr.dtype.element_ty, INTERPRET),
                 mask=rmask[:, None] & (cols_n < I)[None, :])


@triton.jit
def _down_kernel(h_ptr, order_ptr, tiles_ptr, rw_ptr, w2_ptr, s2_ptr, y_ptr, H, I, T_MAX,
                 stride_we, stride_wn, stride_se, stride_sn, FMT: tl.constexpr, SCALE_E8M0: tl.constexpr,
                 PRECISION: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """y[pair, n] = routing weight * (h[rows] @ w2^T)[:, n] for one (tile, H block)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(H, BLOCK_N)
    expert, rows, rmask, used, routed = _tile_rows(tiles_ptr, pid // num_n, T_MAX, BLOCK_M)
    if used:
        n0 = (pid % num_n) * BLOCK_N
        pairs = tl.load(order_ptr + rows, mask=rmask, other=0)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if routed:  # a NO_EXPERT tile reads no weights and writes zeros
            h_rows = h_ptr + rows.to(tl.int64)[:, None] * I
            w2_ptr += expert * stride_we
            s2_ptr += expert * stride_se
            dtype = h_ptr.dtype.element_ty
            for k0 in range(0, I, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                a = tl.load(h_rows + cols[None, :], mask=rmask[:, None] & (cols < I)[None, :], other=0.0)
                if INTERPRET:
                    a = a.to(tl.float32)
                b = _weight_tile(w2_ptr, s2_ptr, n0, k0, H, I, stride_wn, stride_sn, FMT, SCALE_E8M0, dtype,
                                 INTERPRET, BLOCK_N, BLOCK_K)
                acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
            acc *= tl.load(rw_ptr + pairs, mask=rmask, other=0.0)[:, None]
        cols_n = n0 + tl.arange(0, BLOCK_N)
        tl.store(y_ptr + pairs[:, None] * H + cols_n[None, :], round_to(acc, y_ptr.dtype.element_ty, INTERPRET),
                 mask=rmask[:, None] & (cols_n < H)[None, :])


@dataclass(frozen=True)
class _Tiles:
    """Block shape and launch parameters of one grouped GEMM."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class GemmConfig:
    """Rows per tile (pairs of one expert) and the two GEMMs' tiles. BLOCK_N, BLOCK_K divide 128 for FP8."""

    block_m: int
    gate_up: _Tiles
    down: _Tiles


# Mean rows per used expert -> config (H100 guesses, not yet measured). Decode: weight-bandwidth bound,
# narrow N blocks for many programs. Prefill: 128-row tiles for MMA intensity (gate_up's two
# accumulators make its 128-wide block a 256-wide one); quantised weights use shorter K steps to leave
# registers for dequantisation.
_DECODE = GemmConfig(16, _Tiles(32, 128, 4, 4), _Tiles(64, 128, 4, 4))
_SMALL = GemmConfig(32, _Tiles(32, 128, 4, 4), _Tiles(64, 128, 4, 4))
_MEDIUM = GemmConfig(64, _Tiles(64, 64, 4, 4), _Tiles(128, 64, 4, 4))
_PREFILL = GemmConfig(128, _Tiles(128, 64, 8, 3), _Tiles(256, 64, 8, 3))
_PREFILL_QUANT = GemmConfig(128, _Tiles(128, 32, 8, 4), _Tiles(128, 64, 8, 3))
_FP32 = GemmConfig(64, _Tiles(64, 32, 4, 2), _Tiles(64, 32, 4, 2))
_INTERPRET = GemmConfig(16, _Tiles(64, 64, 4, 1), _Tiles(64, 64, 4, 1))


def _pick_config(num_pairs: int, num_experts: int, fmt: int, dtype: torch.dtype, on_gpu: bool) -> GemmConfig:
    """Config by mean rows per used expert under uniform routing (the interpreter: few, small programs)."""
    if not on_gpu:
        return _INTERPRET
    rows = num_pairs / min(num_experts, num_pairs)
    if rows <= 16:
        return _DECODE
    if rows <= 32:
        return _SMALL
    if dtype == torch.float32:
        return _FP32
    if rows <= 96:
        return _MEDIUM
    return _PREFILL if fmt == PLAIN else _PREFILL_QUANT


def _plan(ids: Tensor, num_experts: int, block_m: int) -> tuple[Tensor, Tensor, int]:
    """(pair ids sorted by expert [P] int64, tile table [3, T_MAX] int32, T_MAX); no host sync."""
    sorted_ids, order = torch.sort(ids.reshape(-1), stable=True)
    num_pairs = sorted_ids.numel()
    t_max = num_pairs // block_m + min(num_experts + 1, num_pairs)  # the NO_EXPERT rows' tiles may be one more
    tiles = _alloc((3, t_max), torch.int32, ids.device)
    block_e = triton.next_power_of_2(num_experts)
    block_t = max(1, min(triton.next_power_of_2(t_max), 8192 // block_e))
    _tiles_kernel[(1,)](sorted_ids, tiles, num_pairs, num_experts, t_max, num_pairs.bit_length(),
                        BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_T=block_t, num_warps=8)
    return order, tiles, t_max


def _check_experts(x: Tensor, weights: Tensor, ids: Tensor, w: tuple[Tensor, Tensor, Tensor],
                   scales: tuple[Tensor, Tensor, Tensor] | None, fmt: int) -> tuple[int, int]:
    """(E, I) after checking every shape and dtype against x [N, H] and the format; ValueError names the tensor."""
    if x.dim() != 2 or x.dtype not in ACT_DTYPES:
        raise ValueError(f"x must be [N, H] in one of {ACT_DTYPES}, got {x.dtype} {tuple(x.shape)}")
    if ids.dim() != 2 or ids.shape[0] != x.shape[0] or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32/int64 [N, k] with N = {x.shape[0]}, got {ids.dtype} {tuple(ids.shape)}")
    if weights.shape != ids.shape or not weights.is_floating_point():
        raise ValueError(f"weights must be float [N, k] = {tuple(ids.shape)}, got {weights.dtype} "
                         f"{tuple(weights.shape)}")
    if w[0].dim() != 3:
        raise ValueError(f"w1 must be [E, I, H], got {tuple(w[0].shape)}")
    num_experts, inter, hidden = w[0].shape[0], w[0].shape[1], x.shape[1]
    pack = 2 if fmt == FP4 else 1
    dtypes = {PLAIN: (x.dtype,), FP8: (torch.float8_e4m3fn,), FP4: FP4_WEIGHT_DTYPES}[fmt]
    shapes = ((num_experts, inter, hidden), (num_experts, inter, hidden), (num_experts, hidden, inter))
    for name, t, (e, rows, cols) in zip(("w1", "w3", "w2"), w, shapes):
        if t.dtype not in dtypes or tuple(t.shape) != (e, rows, cols // pack) or cols % pack:
            raise ValueError(f"{name} must be {[str(d) for d in dtypes]} [{e}, {rows}, {cols // pack}] (E, out, "
                             f"in{'/2' if pack == 2 else ''}), got {t.dtype} {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    for name, t, (e, rows, cols) in zip(("w1_scale", "w3_scale", "w2_scale"), scales or (), shapes):
        expected = (e, -(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)) if fmt == FP8 else (e, rows, -(-cols // FP4_GROUP))
        allowed = FP8_SCALE_DTYPES if fmt == FP8 else FP4_SCALE_DTYPES
        if t.dtype not in allowed or tuple(t.shape) != expected or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {[str(d) for d in allowed]} {expected}, got {t.dtype} "
                             f"{tuple(t.shape)}")
    if scales is not None and len({t.dtype for t in scales}) > 1:
        raise ValueError(f"w1_scale, w3_scale and w2_scale must share a dtype, got {[str(t.dtype) for t in scales]}")
    devices = {t.device for t in (x, weights, ids, *w, *(scales or ()))}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    return num_experts, inter


def _experts(x: Tensor, weights: Tensor, ids: Tensor, w: tuple[Tensor, Tensor, Tensor],
             scales: tuple[Tensor, Tensor, Tensor] | None, limit: float, fmt: int,
             config: GemmConfig | None = None) -> Tensor:
    """Check, plan and launch the two grouped GEMMs, then sum the k slots."""
    num_experts, inter = _check_experts(x, weights, ids, w, scales, fmt)
    (num_tokens, hidden), topk = x.shape, ids.shape[1]
    num_pairs = num_tokens * topk
    if num_pairs == 0:
        return torch.zeros_like(x)
    cfg = config or _pick_config(num_pairs, num_experts, fmt, x.dtype, not interpreting())
    order, tiles, t_max = _plan(ids, num_experts, cfg.block_m)
    x = x.contiguous()
    w1, w3, w2 = (t.view(torch.uint8) if fmt == FP4 else t for t in w)
    e8m0 = scales is not None and scales[0].dtype == torch.float8_e8m0fnu
    s1, s3, s2 = (s.view(torch.uint8) if e8m0 else s for s in scales) if scales is not None else (w1, w3, w2)
    common = dict(FMT=fmt, SCALE_E8M0=e8m0, PRECISION="ieee" if x.dtype == torch.float32 or interpreting() else "tf32",
                  INTERPRET=interpreting(), BLOCK_M=cfg.block_m)
    h = _alloc((num_pairs, inter), x.dtype, x.device)
    g = cfg.gate_up
    _gate_up_kernel[(t_max * triton.cdiv(inter, g.block_n),)](
        x, order, tiles, w1, w3, s1, s3, h, hidden, inter, topk, t_max, float(limit), w1.stride(0), w1.stride(1),
        s1.stride(0), s1.stride(1), **common, BLOCK_N=g.block_n, BLOCK_K=g.block_k, num_warps=g.num_warps,
        num_stages=g.num_stages)
    y = _alloc((num_pairs, hidden), x.dtype, x.device)
    d = cfg.down
    _down_kernel[(t_max * triton.cdiv(hidden, d.block_n),)](
        h, order, tiles, weights.reshape(-1).float().contiguous(), w2, s2, y, hidden, inter, t_max,
        w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1), **common, BLOCK_N=d.block_n, BLOCK_K=d.block_k,
        num_warps=d.num_warps, num_stages=d.num_stages)
    return y.view(num_tokens, topk, hidden).sum(dim=1)


def moe_experts(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w3: Tensor, w2: Tensor, limit: float) -> Tensor:
    """Triton `moe_experts_reference` with bf16/fp16/fp32 weights (x's dtype): [N, H] in x's dtype."""
    return _experts(x, weights, ids, (w1, w3, w2), None, limit, PLAIN)


def moe_experts_fp8(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                    w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float) -> Tensor:
    """Triton `moe_experts_fp8_reference`: float8_e4m3fn [E, out, in] weights, [E, out/128, in/128] scales
    (float32, bfloat16 or float8_e8m0fnu), dequantised in the kernel."""
    return _experts(x, weights, ids, (w1, w3, w2), (w1_scale, w3_scale, w2_scale), limit, FP8)


def moe_experts_fp4(x: Tensor, weights: Tensor, ids: Tensor, w1: Tensor, w1_scale: Tensor, w3: Tensor,
                    w3_scale: Tensor, w2: Tensor, w2_scale: Tensor, limit: float) -> Tensor:
    """Triton `moe_experts_fp4_reference`: packed e2m1 int8 [E, out, in/2] weights (low nibble = even
    column), [E, out, in/32] float8_e8m0fnu (or float32) scales, dequantised in the kernel."""
    return _experts(x, weights, ids, (w1, w3, w2), (w1_scale, w3_scale, w2_scale), limit, FP4)
