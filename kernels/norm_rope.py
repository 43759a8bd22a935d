"""RMSNorm, interleaved partial RoPE, and the two fused (V4's q and kv paths), as one row kernel.

Per call the work is a few FLOPs per element against 2 bytes read and 2 written (bf16): memory bound
by two orders of magnitude, so the only goal is to touch each byte once. One kernel covers the three
ops through constexpr switches (NORM, WEIGHTED, ROPE). Grid: one program per `BLOCK_M` rows of the
last dim `N` (`BLOCK_M * BLOCK_N` about 4096 elements, so short rows such as 512-wide heads are
batched and a 16384-wide mHC row takes a program of its own); the whole row sits in registers, so the
norm's sum of squares and the rotation need no second pass over memory. Rows are addressed through
`[B, S, H]` strides (last dim contiguous), so a permuted attention output needs no copy.

RoPE pairs are interleaved (x0, x1), (x2, x3), ... over the trailing `R` channels: the tile is viewed
as `[BLOCK_M, BLOCK_N / 2, 2]` and split into even/odd halves in registers (no strided loads), and
pairs before the rope part pass through unchanged. The rounding sequence follows model/layers.py:
the norm rounds to the storage dtype before the rotation, which computes in float32 and rounds again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import check_device, round_to

TILE_ELEMENTS = 4096  # elements per program: 8 KB of bf16 in flight per program, registers to spare
MAX_N = 16384  # one row per program in registers: 32 fp32 values per thread at 16 warps
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- references

def rms_norm_reference(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """RMS-normalise the last dim exactly as model/layers.py does.

    Args:
        x: `[..., N]` any float dtype.
        weight: `[N]` (float32 in the model) or None for `unweighted_rms_norm` (scale rounded to x's
            dtype, product in x's dtype).
    Returns: `[..., N]` in x's dtype.
    """
    if weight is None:
        return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * x32).to(x.dtype)


def apply_rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the trailing `2 * cos.shape[-1]` channels in interleaved pairs (model/layers.py apply_rope).

    Args:
        x: `[B, S, H, D]` or `[B, S, D]`.
        cos, sin: `[S, R / 2]` float32; `-sin` undoes the rotation.
    Returns: x's shape and dtype.
    """
    rope_dim = 2 * cos.shape[-1]
    if x.dim() == 4:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[None], sin[None]
    nope, rope = x[..., :-rope_dim], x[..., -rope_dim:].float()
    even, odd = rope[..., 0::2], rope[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat([nope, rotated.to(x.dtype)], dim=-1)


def rms_norm_rope_reference(x: Tensor, weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rope(rms_norm(x))`: V4's q (per-head, unweighted) and kv (`kv_norm`) paths."""
    return apply_rope_reference(rms_norm_reference(x, weight, eps), cos, sin)


# ----------------------------------------------------------------------------- kernel

@triton.jit
def rms_normalize(x, w, n, eps, WEIGHTED: tl.constexpr):
    """x: `[M, BLOCK]` in storage dtype, zero past `n`; w: `[BLOCK]` float32 -> normalised rows, storage dtype."""
    x32 = x.to(tl.float32)
    scale = tl.rsqrt(tl.sum(x32 * x32, axis=1) / n + eps)
    if WEIGHTED:
        y = w[None, :] * (x32 * scale[:, None])
    else:  # unweighted_rms_norm rounds the scale to x's dtype and multiplies in it
        y = x32 * round_to(scale, x.dtype, True).to(tl.float32)[:, None]
    return round_to(y, x.dtype, True)


@triton.jit
def rotate_pairs(y, cos, sin, active, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y: `[BLOCK_M, BLOCK_N]` storage dtype; cos, sin, active: `[BLOCK_M, BLOCK_N / 2]` -> y rotated where active."""
    even, odd = tl.split(tl.reshape(y.to(tl.float32), [BLOCK_M, BLOCK_N // 2, 2]))
    new_even = tl.where(active, even * cos - odd * sin, even)
    new_odd = tl.where(active, odd * cos + even * sin, odd)
    return round_to(tl.reshape(tl.join(new_even, new_odd), [BLOCK_M, BLOCK_N]), y.dtype, True)


@triton.jit
def _norm_rope_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
                      num_rows, seq_len, num_heads, n, first_pair, half_rope, eps,
                      x_sb, x_ss, x_sh, o_sb, o_ss, o_sh,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      NORM: tl.constexpr, WEIGHTED: tl.constexpr, ROPE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_rows
    rows = rows.to(tl.int64)
    head = rows % num_heads  # rows enumerate [B, S, H] in order
    pos = (rows // num_heads) % seq_len
    batch = rows // (num_heads * seq_len)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n
    mask = row_ok[:, None] & col_ok[None, :]
    x_rows = batch * x_sb + pos * x_ss + head * x_sh
    y = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0)
    if NORM:
        w = tl.zeros([BLOCK_N], tl.float32)
        if WEIGHTED:
            w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = rms_normalize(y, w, n, eps, WEIGHTED)
    if ROPE:
        pair = tl.arange(0, BLOCK_N // 2) - first_pair  # index into cos/sin; negative before the rope part
        active = row_ok[:, None] & ((pair >= 0) & (pair < half_rope))[None, :]
        trig = pos[:, None] * half_rope + pair[None, :]
        cos = tl.load(cos_ptr + trig, mask=active, other=1.0)
        sin = tl.load(sin_ptr + trig, mask=active, other=0.0)
        y = rotate_pairs(y, cos, sin, active, BLOCK_M, BLOCK_N)
    out_rows = batch * o_sb + pos * o_ss + head * o_sh
    tl.store(out_ptr + out_rows[:, None] + cols[None, :], y, mask=mask)


# ----------------------------------------------------------------------------- launchers

def _check_rope(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be [B, S, H, D] or [B, S, D], got shape {tuple(x.shape)}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] != x.shape[1]:
        raise ValueError(f"cos and sin must both be [S={x.shape[1]}, R/2], "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise ValueError(f"cos and sin must be float32, got {cos.dtype} and {sin.dtype}")
    rope_dim, dim = 2 * cos.shape[1], x.shape[-1]
    if not 0 < rope_dim <= dim or dim % 2:
        raise ValueError(f"rope dim {rope_dim} must be in (0, D={dim}] and D even (pairs start at even channels)")


def _check_x(x: Tensor, weight: Tensor | None) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() == 0 or not 0 < x.shape[-1] <= MAX_N:
        raise ValueError(f"the last dim of x must be in [1, {MAX_N}], got shape {tuple(x.shape)}")
    if weight is not None and (weight.shape != (x.shape[-1],) or weight.dtype not in FLOAT_DTYPES):
        raise ValueError(f"weight must be a float [{x.shape[-1]}] tensor, got {weight.dtype} {tuple(weight.shape)}")


def _output(x: Tensor, out: Tensor | None) -> Tensor:
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or out.stride(-1) != 1:
        raise ValueError(f"out must be {x.dtype} {tuple(x.shape)} on {x.device} with a contiguous last dim")
    return out


def _rows(t: Tensor) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(B, S, H) sizes and strides of the rows of a 2D, 3D (H = 1) or 4D tensor."""
    if t.dim() == 4:
        return tuple(t.shape[:3]), tuple(t.stride()[:3])
    if t.dim() == 3:
        return (t.shape[0], t.shape[1], 1), (t.stride(0), t.stride(1), 0)
    return (t.shape[0], 1, 1), (t.stride(0), 0, 0)


def _launch(x: Tensor, weight: Tensor | None, eps: float, cos: Tensor | None, sin: Tensor | None,
            out: Tensor | None, norm: bool) -> Tensor:
    """Shared launcher: checks, output, block sizes, grid."""
    _check_x(x, weight)
    check_device(*[t for t in (x, weight, cos, sin, out) if t is not None])
    rope = cos is not None
    if rope:
        _check_rope(x, cos, sin)
        cos, sin = cos.contiguous(), sin.contiguous()
    out = _output(x, out)
    rows_x, rows_out = x, out
    if x.dim() not in (3, 4):  # any leading dims: flatten to rows (a view when the layout allows)
        if not out.is_contiguous():
            raise ValueError("out must be contiguous when x is not 3D or 4D")
        rows_x, rows_out = x.reshape(-1, x.shape[-1]), out.view(-1, x.shape[-1])
    if rows_x.stride(-1) != 1:
        rows_x = rows_x.contiguous()
    (batch, seq_len, heads), x_strides = _rows(rows_x)
    _, out_strides = _rows(rows_out)
    num_rows, n = batch * seq_len * heads, x.shape[-1]
    if num_rows == 0:
        return out
    block_n = max(2, triton.next_power_of_2(n))
    block_m = max(1, min(TILE_ELEMENTS // block_n, triton.next_power_of_2(num_rows)))
    half_rope = cos.shape[1] if rope else 0
    unused = rows_x  # stands in for absent pointers: the constexpr switches remove their loads
    _norm_rope_kernel[(triton.cdiv(num_rows, block_m),)](
        rows_x, weight if weight is not None else unused, cos if rope else unused, sin if rope else unused,
        rows_out, num_rows, seq_len, heads, n, n // 2 - half_rope, half_rope, float(eps), *x_strides, *out_strides,
        BLOCK_M=block_m, BLOCK_N=block_n, NORM=norm, WEIGHTED=weight is not None, ROPE=rope,
        num_warps=_num_warps(block_m * block_n))
    return out


def _num_warps(tile: int) -> int:
    """About 16 elements per thread: 4 warps up to 2048 elements, 16 from 8192."""
    return max(4, min(16, tile // 512))


def rms_norm(x: Tensor, weight: Tensor | None, eps: float, *, out: Tensor | None = None) -> Tensor:
    """Triton `rms_norm_reference`: x `[..., N]` (N up to 16384), weight `[N]` or None -> x's shape and dtype."""
    return _launch(x, weight, eps, None, None, out, norm=True)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Triton `apply_rope_reference`: x `[B, S, H, D]` or `[B, S, D]`, cos/sin `[S, R/2]` float32."""
    return _launch(x, None, 0.0, cos, sin, out, norm=False)


def rms_norm_rope(x: Tensor, weight: Tensor | None, eps: float, cos: Tensor, sin: Tensor,
                  *, out: Tensor | None = None) -> Tensor:
    """Triton `rms_norm_rope_reference` in one pass: norm each row, round, rotate its trailing R channels."""
    return _launch(x, weight, eps, cos, sin, out, norm=True)
