"""FP8 activation quantisation and the FP8 x FP8 block-scaled GEMM of V4's dense projections.

Format (DeepSeek-V3/V4 `inference/kernel.py`): activations are quantised per 1 x 128 group along K,
scale = max(amax, 1e-4) / 448, rounded up to a power of two when the checkpoint's scale_fmt is ue8m0
(V4); weights are float8_e4m3fn [N, K] with one scale per 128 x 128 block (float32, bfloat16 or
float8_e8m0fnu). The product sums, per 128-wide K block, the FP8 dot times both scales, in float32:
Hopper's FP8 tensor cores accumulate at reduced precision, so partial sums are promoted to float32
every 128 K (DeepSeek-V3 report, section 3.3.2), which is also where the scales change.

Bytes and FLOPs per call (x [M, K], W [N, K]): FLOPs 2MNK; bytes NK (weight) + MK + 2MN + scales.
Prefill (M = 8192) is compute-bound, decode (M <= 8) reads the weight once and is memory-bound.

- `act_quant`: grid (cdiv(M, 32), K / 128), one [32, 128] group tile per program: memory-bound,
  one read of x and one write of q and scales.
- `fp8_gemm`, M > 64: grid of BLOCK_M x BLOCK_N output tiles (grouped along M for L2 reuse), BLOCK_K =
  128 so each K step has one scale per row of A and per 128 rows of B; per step
  `acc += dot(a, b^T) * a_s[:, None] * b_s[None, :]` with the FP8 dot on tensor cores. A tile of at
  most 128 columns sits in one block row of B, so its rescale is one FMA per element (row scale x
  tile scale): the CUDA-core work that competes with the tensor cores stays at 1/128 of the dot's.
  Configs are autotuned per (M bucket, N, K) from a short list; the decode path never autotunes, so
  it can be captured in a CUDA graph.
- `fp8_gemm`, M <= 64 (decode): BLOCK_M = 16/32/64, BLOCK_N = 128 (DecodeTiles), and split-K when the output tiles
  cannot fill the GPU, so the weight streams from every SM: each split writes float32 partials
  [S, M, N]; the split that finishes a tile last (an atomic arrival count per tile) sums that tile's
  partials in split order (deterministic: the same bits as a separate sum kernel, one launch fewer per
  projection, which in a decode step's CUDA graph was ~3.7 us each, 6% of the step).
- `fp8_linear`: for M <= 64 the activation is quantised inside the GEMM (each program quantises its
  [BLOCK_M, 128] slice of x in registers, bit-identical to `act_quant`): one launch less and no FP8
  copy of x. For larger M, `act_quant` then `fp8_gemm` (quantising in every N tile would cost more ALU
  than the dot).

Interpreter (TRITON_INTERPRET=1): its float32 -> float8 cast truncates and drops mantissa carries, so
when interpreting only, values are first rounded to the e4m3 grid (round to nearest even) in float32;
on the GPU the hardware conversion (cvt.rn.satfinite) does it. The FP8 tl.dot runs as is in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import arrival_counters, interpreting, num_sms, to_e4m3

FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128  # quantisation block along K (and along N for weights)
AMAX_FLOOR = 1e-4  # DeepSeek-V4 act_quant: an all-zero group gets a finite scale
SMALL_M = 64  # at or below: decode path (small tiles, split-K, fused activation quantisation)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
WEIGHT_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e8m0fnu)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every output and workspace is allocated here (tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# References: the semantics, in float32.


def _pow2_ceil(t: Tensor) -> Tensor:
    """Smallest power of two >= t (t > 0, normal float32), exact: from the float's exponent bits."""
    bits = t.contiguous().view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exponent << 23).view(torch.float32)


def act_quant_reference(x: Tensor, block: int = BLOCK, ue8m0: bool = True) -> tuple[Tensor, Tensor]:
    """Quantise activations per 1 x `block` group along K.

    Args:
        x: [M, K] bfloat16/float16/float32, K a multiple of `block`.
        block: group size along K.
        ue8m0: round each scale up to a power of two (V4's scale_fmt) so it is exact in e8m0.
    Returns:
        (q float8_e4m3fn [M, K], scale float32 [M, K // block]) with x ~= q * scale per group;
        scale = max(amax, 1e-4) / 448 (then rounded up to a power of two if ue8m0), q = x / scale
        clamped to +-448 and rounded to nearest even.
    """
    _check_act(x, block)
    m, k = x.shape
    groups = x.float().view(m, k // block, block)
    amax = groups.abs().amax(dim=-1).clamp(min=AMAX_FLOOR)
    # A tensor divisor: CUDA divides by a Python scalar as a multiply by its (inexact) reciprocal.
    scale = amax / torch.full_like(amax, FP8_MAX)
    if ue8m0:
        scale = _pow2_ceil(scale)
    q = (groups / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(m, k), scale


def _expand_blocks(scale: Tensor, rows: int, cols: int, row_block: int, col_block: int) -> Tensor:
    """Block scales -> one float32 scale per element of a [rows, cols] matrix."""
    s = scale.float().repeat_interleave(row_block, dim=0)[:rows]
    return s.repeat_interleave(col_block, dim=1)[:, :cols]


def fp8_gemm_reference(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor,
                       out_dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Block-scaled FP8 product a @ b^T.

    Args:
        a: [M, K] float8_e4m3fn activations; a_scale: [M, K/128] float32 (1 x 128 groups).
        b: [N, K] float8_e4m3fn weight ([out, in]); b_scale: [ceil(N/128), K/128] float32, bfloat16
            or float8_e8m0fnu (128 x 128 blocks).
    Returns:
        [M, N] out_dtype: sum over K blocks kb of (a_kb.float() @ b_kb.float().T) * a_scale[:, kb, None]
        * b_scale[n // 128, kb]. Computed as one float32 product of the scaled operands (the same
        sum; only the float32 rounding order differs).
    """
    m, k, n = _check_gemm(a, a_scale, b, b_scale, out_dtype)
    a32 = a.float() * _expand_blocks(a_scale, m, k, 1, BLOCK)
    b32 = b.float() * _expand_blocks(b_scale, n, k, BLOCK, BLOCK)
    return (a32 @ b32.T).to(out_dtype)


def fp8_linear_reference(x: Tensor, weight: Tensor, weight_scale: Tensor) -> Tensor:
    """x [..., K] (bf16/f16/f32) @ dequantised weight^T with x quantised as V4 does (ue8m0 1 x 128)."""
    k = x.shape[-1]
    q, s = act_quant_reference(x.reshape(-1, k), BLOCK, True)
    out = fp8_gemm_reference(q, s, weight, weight_scale, x.dtype)
    return out.view(*x.shape[:-1], weight.shape[0])


# ---------------------------------------------------------------------------------------------------
# Checks shared by references and kernels.


def _check_act(x: Tensor, block: int) -> None:
    if x.dtype not in OUT_DTYPES:
        raise ValueError(f"activations must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"activations must be [M, K], got shape {tuple(x.shape)}")
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if x.shape[1] % block:
        raise ValueError(f"K ({x.shape[1]}) must be a multiple of the block ({block})")


def _check_weight(b: Tensor, b_scale: Tensor, k: int) -> int:
    if b.dtype != torch.float8_e4m3fn or b.dim() != 2 or b.shape[1] != k:
        raise ValueError(f"weight must be float8_e4m3fn [N, {k}], got {b.dtype} {tuple(b.shape)}")
    n = b.shape[0]
    expected = (triton.cdiv(n, BLOCK), k // BLOCK)
    if b_scale.dtype not in WEIGHT_SCALE_DTYPES or tuple(b_scale.shape) != expected:
        raise ValueError(f"weight scale must be {expected} in one of {[str(d) for d in WEIGHT_SCALE_DTYPES]}, "
                         f"got {b_scale.dtype} {tuple(b_scale.shape)}")
    return n


def _check_gemm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, out_dtype: torch.dtype) -> tuple[int, int, int]:
    if a.dtype != torch.float8_e4m3fn or a.dim() != 2:
        raise ValueError(f"a must be float8_e4m3fn [M, K], got {a.dtype} {tuple(a.shape)}")
    m, k = a.shape
    if k % BLOCK:
        raise ValueError(f"K ({k}) must be a multiple of {BLOCK}")
    if a_scale.dtype != torch.float32 or tuple(a_scale.shape) != (m, k // BLOCK):
        raise ValueError(f"a_scale must be float32 {(m, k // BLOCK)}, got {a_scale.dtype} {tuple(a_scale.shape)}")
    n = _check_weight(b, b_scale, k)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {[str(d) for d in OUT_DTYPES]}, got {out_dtype}")
    if len({t.device for t in (a, a_scale, b, b_scale)}) != 1:
        raise ValueError("a, a_scale, b and b_scale must be on one device")
    return m, k, n


# ---------------------------------------------------------------------------------------------------
# Triton kernels.


@triton.jit
def _quantize_groups(x, UE8M0: tl.constexpr, INTERPRET: tl.constexpr):
    """x [R, G] float32, one group per row -> (q float8e4nv [R, G], scale float32 [R])."""
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-4)
    scale = tl.math.div_rn(amax, 448.0)
    if UE8M0:
        bits = scale.to(tl.int32, bitcast=True)
        exponent = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        scale = (exponent << 23).to(tl.float32, bitcast=True)
        inverse = ((254 - exponent) << 23).to(tl.float32, bitcast=True)  # exact: a power of two
        y = x * inverse[:, None]
    else:
        y = tl.math.div_rn(x, scale[:, None])
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    return to_e4m3(y, INTERPRET), scale


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, stride_xm, stride_xk, stride_qm, stride_sm,
                      UE8M0: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_k = tl.program_id(0), tl.program_id(1)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: M * K may pass 2^31
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = rows[:, None] < M
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk, mask=mask, other=0.0)
    q, scale = _quantize_groups(x.to(tl.float32), UE8M0, INTERPRET)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q, mask=mask)
    tl.store(s_ptr + rows * stride_sm + pid_k, scale, mask=rows < M)


@triton.jit
def _load_scale(ptrs, mask, E8M0: tl.constexpr):
    """float32 scales from float32/bfloat16, or from e8m0 bytes (2^(byte - 127); byte 0 is 2^-127)."""
    if E8M0:
        byte = tl.load(ptrs, mask=mask, other=127).to(tl.int32)
        return tl.where(byte == 0, 0x400000, byte << 23).to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _fp8_gemm_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, out_ptr, lock_ptr, M, N, K_BLOCKS, BLOCKS_PER_SPLIT,
                     stride_am, stride_ak, stride_asm, stride_ask, stride_bn, stride_bk, stride_bsn, stride_bsk,
                     stride_cs, stride_cm, stride_cn, stride_om, stride_on, M_BUCKET,
                     QUANT_A: tl.constexpr, B_E8M0: tl.constexpr, INTERPRET: tl.constexpr, FIXUP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """c[split] = sum over this split's K blocks of dot(a, b^T) * a_s * b_s. M_BUCKET: autotune key only.

    QUANT_A: a is bf16/f16/f32 activations, quantised here per [BLOCK_M, 128] slice (as act_quant, ue8m0).
    FIXUP: c is the float32 split workspace; the split that finishes a tile last (a per-tile arrival
    counter in lock_ptr, left at 0 again) sums the tile's partials in split order into out.
    """
    pid, pid_k = tl.program_id(0), tl.program_id(1)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n  # tiles of GROUP_M row blocks: consecutive programs share B in L2
    first_m = (pid // group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: M * N may pass 2^31
    cols = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok, col_ok = rows < M, cols < N
    kb_start = pid_k * BLOCKS_PER_SPLIT
    kb_end = tl.minimum(kb_start + BLOCKS_PER_SPLIT, K_BLOCKS)
    ks = kb_start * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + cols[:, None] * stride_bn + ks[None, :] * stride_bk
    as_ptrs = as_ptr + rows * stride_asm + kb_start * stride_ask
    if BLOCK_N <= BLOCK_K:  # the tile lies in one 128-row block of B: one B scale per K step
        bs_ptrs = bs_ptr + (pid_n * BLOCK_N // BLOCK_K) * stride_bsn + kb_start * stride_bsk
        bs_mask = pid_n * BLOCK_N < N
    else:
        bs_ptrs = bs_ptr + (cols // BLOCK_K) * stride_bsn + kb_start * stride_bsk
        bs_mask = col_ok

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(kb_start, kb_end):
        if QUANT_A:
            x = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
            a, a_s = _quantize_groups(x, True, INTERPRET)
        else:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            a_s = tl.load(as_ptrs, mask=row_ok, other=0.0)
        b = tl.load(b_ptrs, mask=col_ok[:, None], other=0.0)
        b_s = _load_scale(bs_ptrs, bs_mask, B_E8M0)
        if BLOCK_N <= BLOCK_K:  # one FMA per element: a row scale times the tile's scale
            acc += tl.dot(a, tl.trans(b)) * (a_s * b_s)[:, None]
        else:
            acc += tl.dot(a, tl.trans(b)) * (a_s[:, None] * b_s[None, :])
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
        as_ptrs += stride_ask
        bs_ptrs += stride_bsk

    c_ptrs = c_ptr + pid_k * stride_cs + rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tile_ok = row_ok[:, None] & col_ok[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=tile_ok)
    if FIXUP:
        tl.debug_barrier()  # every thread's partial is stored before the release below publishes them
        arrived = tl.atomic_add(lock_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(1) - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            part_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn
            for split in range(tl.num_programs(1)):  # in split order: the sum is deterministic
                total += tl.load(part_ptrs + split * stride_cs, mask=tile_ok, other=0.0, cache_modifier=".cg")
            out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=tile_ok)
            tl.atomic_xchg(lock_ptr + pid, 0)  # ready for the next call (and the next graph replay)


@triton.jit
def _split_sum_kernel(ws_ptr, out_ptr, numel, num_splits, BLOCK: tl.constexpr):
    """out = sum of the float32 partials ws [num_splits, numel], in split order (deterministic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(num_splits):
        acc += tl.load(ws_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _prefill_configs() -> list[triton.Config]:
    """Large-M tiles. One config under the interpreter (autotuning there would only cost time), with
    BLOCK_N = 256 so the tests cover the per-column B scales (the decode path covers the per-tile one)."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 256, "GROUP_M": 2}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((128, 128, 8, 4), (128, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4),
                                 (128, 64, 4, 4))]


_fp8_gemm_tuned = triton.autotune(configs=_prefill_configs(), key=["M_BUCKET", "N", "K_BLOCKS"])(_fp8_gemm_kernel)


# ---------------------------------------------------------------------------------------------------
# Launchers.


@dataclass(frozen=True)
class DecodeTiles:
    """The decode path's launch (M <= SMALL_M): N block, warps, stages, and the split-K target of
    programs per SM. The defaults won benchmarks/sweep_decode_tiles.py on an H100 (54 candidates, the
    8 V4-Flash projection shapes at M = 1 and 8, in CUDA graphs): 157.6 us for all 16 against 165.0
    for the first guess (BLOCK_N 64, 4 stages); block_n <= 128 keeps one weight scale per tile.
    fuse_split_sum False sums split-K partials with the separate kernel (benchmarks compare the two)."""

    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 2
    fuse_split_sum: bool = True


DECODE_TILES = DecodeTiles()


def _split_k(tiles: int, k_blocks: int, sms: int, programs_per_sm: int = 2) -> tuple[int, int]:
    """(splits, K blocks per split): about `programs_per_sm` programs per SM when the output tiles are
    fewer than SMs."""
    splits = 1 if tiles >= sms else min(k_blocks, triton.cdiv(programs_per_sm * sms, tiles))
    per_split = triton.cdiv(k_blocks, splits)
    return triton.cdiv(k_blocks, per_split), per_split


def _launch_gemm(a: Tensor, a_scale: Tensor | None, b: Tensor, b_scale: Tensor, out: Tensor,
                 cfg: DecodeTiles) -> None:
    """out [M, N] = block-scaled a @ b^T; a_scale None: a is unquantised activations (M <= SMALL_M)."""
    m, n = out.shape
    k_blocks = b.shape[1] // BLOCK
    e8m0 = b_scale.dtype == torch.float8_e8m0fnu
    bs = b_scale.view(torch.uint8) if e8m0 else b_scale
    sa = a_scale if a_scale is not None else bs  # unread when quantising in the kernel
    sa_strides = (sa.stride(0), sa.stride(1))
    flags = dict(QUANT_A=a_scale is None, B_E8M0=e8m0, INTERPRET=interpreting(), BLOCK_K=BLOCK)
    if m > SMALL_M:
        def grid(meta: dict) -> tuple[int, int]:
            return triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), 1

        _fp8_gemm_tuned[grid](a, sa, b, bs, out, out, out, m, n, k_blocks, k_blocks, a.stride(0), a.stride(1),
                              *sa_strides, b.stride(0), b.stride(1), bs.stride(0), bs.stride(1), 0, out.stride(0),
                              out.stride(1), 0, 0, min(triton.next_power_of_2(m), 4096), FIXUP=False, **flags)
        return
    block_m, block_n = max(16, triton.next_power_of_2(m)), cfg.block_n
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    # 8 SMs under the interpreter, so that small test shapes exercise split-K
    splits, per_split = _split_k(tiles, k_blocks, num_sms(out.device, 8), cfg.programs_per_sm)
    c = out if splits == 1 else _empty((splits, m, n), torch.float32, out.device)
    c_split_stride = 0 if splits == 1 else c.stride(0)
    locks = arrival_counters(out.device, tiles) if splits > 1 and cfg.fuse_split_sum else None
    _fp8_gemm_kernel[(tiles, splits)](
        a, sa, b, bs, c, out, out if locks is None else locks, m, n, k_blocks, per_split, a.stride(0), a.stride(1),
        *sa_strides, b.stride(0), b.stride(1), bs.stride(0), bs.stride(1), c_split_stride, c.stride(-2),
        c.stride(-1), out.stride(0), out.stride(1), 0,
        BLOCK_M=block_m, BLOCK_N=block_n, GROUP_M=1, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        FIXUP=locks is not None, **flags)
    if splits > 1 and locks is None:
        _split_sum_kernel[(triton.cdiv(m * n, 1024),)](c, out, m * n, splits, BLOCK=1024, num_warps=4)


def act_quant(x: Tensor, block: int = BLOCK, ue8m0: bool = True) -> tuple[Tensor, Tensor]:
    """Triton `act_quant_reference`: x [M, K] -> (float8_e4m3fn [M, K], float32 scales [M, K // block])."""
    _check_act(x, block)
    m, k = x.shape
    q = _empty((m, k), torch.float8_e4m3fn, x.device)
    scale = _empty((m, k // block), torch.float32, x.device)
    if m:
        block_m = 32
        _act_quant_kernel[(triton.cdiv(m, block_m), k // block)](
            x, q, scale, m, x.stride(0), x.stride(1), q.stride(0), scale.stride(0),
            UE8M0=ue8m0, INTERPRET=interpreting(), BLOCK_M=block_m, BLOCK_K=block, num_warps=4)
    return q, scale


def fp8_gemm(a: Tensor, a_scale: Tensor, b: Tensor, b_scale: Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
             tiles: DecodeTiles = DECODE_TILES) -> Tensor:
    """Triton `fp8_gemm_reference`: [M, N] out_dtype = block-scaled a [M, K] @ b [N, K]^T (FP8 tensor cores);
    `tiles`: the launch when M <= SMALL_M."""
    m, _, n = _check_gemm(a, a_scale, b, b_scale, out_dtype)
    out = _empty((m, n), out_dtype, a.device)
    if m and n:
        _launch_gemm(a, a_scale, b, b_scale, out, tiles)
    return out


def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, *, tiles: DecodeTiles = DECODE_TILES) -> Tensor:
    """Triton `fp8_linear_reference`: the dense projection x [..., K] -> [..., N] in x's dtype.

    Activations are quantised as V4 does (ue8m0 scales, 1 x 128 groups): inside the GEMM for up to
    64 rows (decode, launched with `tiles`), by `act_quant` first otherwise.
    """
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    _check_act(x2, BLOCK)
    n = _check_weight(weight, weight_scale, k)
    if len({x.device, weight.device, weight_scale.device}) != 1:
        raise ValueError("x, weight and weight_scale must be on one device")
    m = x2.shape[0]
    out = _empty((m, n), x.dtype, x.device)
    if m and n:
        if m <= SMALL_M:
            _launch_gemm(x2, None, weight, weight_scale, out, tiles)
        else:
            q, s = act_quant(x2, BLOCK, True)
            _launch_gemm(q, s, weight, weight_scale, out, tiles)
    return out.view(*x.shape[:-1], n)
