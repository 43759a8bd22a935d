"""The compressor's pooling: per-channel softmax over each window, weighted sum, RMSNorm, RoPE.

Per call: kv and gate `[B, W, L, D]` are read once and `[B, W, D]` written; about ten FLOPs per input
element against 4 bytes (bf16): memory bound, so the kernel reads each input byte from HBM once and
keeps everything else in registers.

Grid: one program per (window, channel block of `BLOCK_D`). Softmax and pooling are per channel, so
channel blocks are independent. A program holds up to 8192 slot x channel elements per tensor:
- the whole window fits (CSA's and the indexer's 8 slots; HCA's 128 once D is split to 64 channels):
  one load of each tile, softmax and pool in registers;
- otherwise (HCA with whole 512-channel rows): a first pass over gate for the running max and sum, a
  second over gate and kv for the pooled sum. The model rounds the probabilities to kv's dtype before
  the product, which needs the final max and sum, hence two passes; gate's re-read comes from L2.
When one block holds the whole row (`BLOCK_D >= D`), RMSNorm and RoPE run in the same program and the
row is stored once. With few windows (HCA prefill: 64 per 8192 tokens; decode: one per sequence) whole
rows would leave most SMs idle, so the launcher splits D until there are about two programs per SM,
stores the pooled rows (rounded to kv's dtype, as the model does) and normalises them with
kernels.norm_rope: one more small launch instead of idle SMs.

Masked slots hold -inf in gate (CSA's first window before any overlap): they get probability 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import check_device, round_to
from .norm_rope import (FLOAT_DTYPES, apply_rope_reference, rms_norm_reference, rms_norm_rope, rms_normalize,
                        rotate_pairs)

TILE_ELEMENTS = 8192  # L x D elements per chunk and tensor: 16 per thread at 16 warps
MAX_FUSED_D = 2048  # widest row one program normalises in registers
TARGET_PROGRAMS = 264  # two per H100 SM (132)
MIN_BLOCK_D = 64  # 128 bytes of bf16 per slot row: whole cache lines


def compress_windows_reference(kv: Tensor, gate: Tensor, norm_weight: Tensor, eps: float, cos: Tensor, sin: Tensor
                               ) -> Tensor:
    """Pool each window to one entry exactly as model/attention.py Compressor.forward does.

    Args:
        kv, gate: `[B, W, L, D]`; gate in kv's dtype or float32; gate includes `ape` and holds -inf in masked slots.
        norm_weight: `[D]` float32 (the compressor's RMSNorm).
        cos, sin: `[W, R/2]` float32 at each window's first position.
    Returns: `[B, W, D]` in kv's dtype: softmax over L (float32, rounded to kv's dtype), pooled in kv's
        dtype, RMSNorm (float32, rounded), RoPE on the last R channels.
    """
    pooled = (kv * gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)).sum(dim=2)
    return apply_rope_reference(rms_norm_reference(pooled, norm_weight, eps), cos, sin)


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _load_slots(ptr, base, slots, cols, col_ok, num_slots, dim, other):
    """`[BLOCK_L, BLOCK_D]` tile of one window: these slots, these channels."""
    mask = (slots < num_slots)[:, None] & col_ok[None, :]
    return tl.load(ptr + base + slots[:, None] * dim + cols[None, :], mask=mask, other=other)


@triton.jit
def _pool(kv, gate, top, total):
    """sum over the tile's slots of kv * p, with p and each product rounded to kv's dtype as in the model."""
    p = round_to(tl.exp(gate.to(tl.float32) - top[None, :]) / total[None, :], kv.dtype, True).to(tl.float32)
    # the exact product rounded once to kv's dtype: a bf16 multiply, spelled in float32 (the interpreter
    # has no bf16 arithmetic)
    return tl.sum(round_to(kv.to(tl.float32) * p, kv.dtype, True).to(tl.float32), axis=0)


@triton.jit
def _softmax_stats(gate_ptr, base, cols, col_ok, num_slots, dim, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-channel max and sum of exp(gate - max) over the window's slots, online across chunks."""
    top = tl.full([BLOCK_D], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, num_slots, BLOCK_L):
        slots = start + tl.arange(0, BLOCK_L)
        g = _load_slots(gate_ptr, base, slots, cols, col_ok, num_slots, dim, float("-inf")).to(tl.float32)
        new_top = tl.maximum(top, tl.max(g, axis=0))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)  # all masked so far: keep exp finite
        total = total * tl.exp(top - shift) + tl.sum(tl.exp(g - shift[None, :]), axis=0)
        top = new_top
    return top, total


@triton.jit
def _compress_kernel(kv_ptr, gate_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
                     num_windows, num_slots, dim, first_pair, half_rope, eps, o_sb, o_sw,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ONE_PASS: tl.constexpr, FUSED: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * W + w
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    base = row * num_slots * dim
    if ONE_PASS:  # the whole window in one tile
        slots = tl.arange(0, BLOCK_L)
        gate = _load_slots(gate_ptr, base, slots, cols, col_ok, num_slots, dim, float("-inf"))
        kv = _load_slots(kv_ptr, base, slots, cols, col_ok, num_slots, dim, 0.0)
        top = tl.max(gate.to(tl.float32), axis=0)
        total = tl.sum(tl.exp(gate.to(tl.float32) - top[None, :]), axis=0)
        pooled = _pool(kv, gate, top, total)
    else:
        top, total = _softmax_stats(gate_ptr, base, cols, col_ok, num_slots, dim, BLOCK_L, BLOCK_D)
        pooled = tl.zeros([BLOCK_D], tl.float32)
        for start in range(0, num_slots, BLOCK_L):
            slots = start + tl.arange(0, BLOCK_L)
            gate = _load_slots(gate_ptr, base, slots, cols, col_ok, num_slots, dim, float("-inf"))
            kv = _load_slots(kv_ptr, base, slots, cols, col_ok, num_slots, dim, 0.0)
            pooled += _pool(kv, gate, top, total)
    # channels past D saw only -inf (NaN after the softmax): zero them before the norm's sum
    y = tl.expand_dims(round_to(tl.where(col_ok, pooled, 0.0), out_ptr.dtype.element_ty, True), 0)  # [1, BLOCK_D]
    window = row % num_windows
    if FUSED:
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = rms_normalize(y, w, dim, eps, True)
        pair = tl.arange(0, BLOCK_D // 2) - first_pair
        active = tl.expand_dims((pair >= 0) & (pair < half_rope), 0)
        trig = window * half_rope + pair[None, :]
        cos = tl.load(cos_ptr + trig, mask=active, other=1.0)
        sin = tl.load(sin_ptr + trig, mask=active, other=0.0)
        y = rotate_pairs(y, cos, sin, active, 1, BLOCK_D)
    out = out_ptr + (row // num_windows) * o_sb + window * o_sw + cols[None, :]
    tl.store(out, y, mask=col_ok[None, :])


# ----------------------------------------------------------------------------- launchers

def _check(kv: Tensor, gate: Tensor, norm_weight: Tensor, cos: Tensor, sin: Tensor) -> None:
    if kv.dim() != 4 or gate.shape != kv.shape:
        raise ValueError(f"kv and gate must both be [B, W, L, D], got {tuple(kv.shape)} and {tuple(gate.shape)}")
    if kv.dtype not in FLOAT_DTYPES or gate.dtype not in (kv.dtype, torch.float32):
        # float32 gate with bf16 kv: the model adds its float32 `ape` to the gate logits
        raise ValueError(f"gate must have kv's dtype or float32, got kv {kv.dtype} and gate {gate.dtype}")
    batch, windows, slots, dim = kv.shape
    if slots == 0 or dim % 2:
        raise ValueError(f"L must be positive and D even (RoPE pairs start at even channels), got L={slots} D={dim}")
    if norm_weight.shape != (dim,) or norm_weight.dtype not in FLOAT_DTYPES:
        raise ValueError(f"norm_weight must be a float [{dim}] tensor, "
                         f"got {norm_weight.dtype} {tuple(norm_weight.shape)}")
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[0] != windows or not 0 < 2 * cos.shape[1] <= dim:
        raise ValueError(f"cos and sin must both be [W={windows}, R/2] with 0 < R <= D={dim}, "
                         f"got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise ValueError(f"cos and sin must be float32, got {cos.dtype} and {sin.dtype}")


def _plan(num_rows: int, slots: int, dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L): whole rows when there are enough of them to fill the GPU, else split D."""
    block_d = min(triton.next_power_of_2(dim), MAX_FUSED_D)
    while block_d > MIN_BLOCK_D and num_rows * triton.cdiv(dim, block_d) < TARGET_PROGRAMS:
        block_d //= 2
    block_l = min(triton.next_power_of_2(slots), max(2, TILE_ELEMENTS // block_d))
    return block_d, max(2, block_l)


def _compress_windows(kv: Tensor, gate: Tensor, norm_weight: Tensor, eps: float, cos: Tensor, sin: Tensor,
                      out: Tensor, block_d: int, block_l: int) -> Tensor:
    """Launch with given block sizes (tests force both paths); `out` `[B, W, D]`, last dim contiguous."""
    batch, windows, slots, dim = kv.shape
    if batch * windows == 0:
        return out
    kv, gate, cos, sin = kv.contiguous(), gate.contiguous(), cos.contiguous(), sin.contiguous()
    fused = block_d >= dim
    pooled = out if fused else torch.empty(batch, windows, dim, dtype=kv.dtype, device=kv.device)
    half_rope = cos.shape[1]
    num_warps = max(4, min(16, block_l * block_d // 512))
    _compress_kernel[(batch * windows, triton.cdiv(dim, block_d))](
        kv, gate, norm_weight, cos, sin, pooled, windows, slots, dim, dim // 2 - half_rope, half_rope, float(eps),
        pooled.stride(0), pooled.stride(1),
        BLOCK_L=block_l, BLOCK_D=block_d, ONE_PASS=block_l >= slots, FUSED=fused, num_warps=num_warps)
    if not fused:
        rms_norm_rope(pooled, norm_weight, eps, cos, sin, out=out)
    return out


def compress_windows(kv: Tensor, gate: Tensor, norm_weight: Tensor, eps: float, cos: Tensor, sin: Tensor,
                     *, out: Tensor | None = None) -> Tensor:
    """Triton `compress_windows_reference`: `[B, W, L, D]` kv and gate -> `[B, W, D]` entries in kv's dtype.

    `out` (optional) may be a strided `[B, W, D]` view with a contiguous last dim, such as a slice of the
    decode state's entries, so the entries are written in place.
    """
    _check(kv, gate, norm_weight, cos, sin)
    check_device(*[t for t in (kv, gate, norm_weight, cos, sin, out) if t is not None])
    batch, windows, slots, dim = kv.shape
    if out is None:
        out = torch.empty(batch, windows, dim, dtype=kv.dtype, device=kv.device)
    elif out.shape != (batch, windows, dim) or out.dtype != kv.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {kv.dtype} [{batch}, {windows}, {dim}] with a contiguous last dim")
    block_d, block_l = _plan(batch * windows, slots, dim)
    return _compress_windows(kv, gate, norm_weight, eps, cos, sin, out, block_d, block_l)
