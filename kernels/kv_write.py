"""Quantise-and-write for the decode step's FP8 state: one launch per write instead of ~15.

The graphed decode step writes, per compressed layer, each token's K=V row into the ring, its window's
entry into the entries, and (CSA) the indexer's key, all in DeepSeek's FP8 layouts. Written in PyTorch,
each write is the quantisation (abs, amax, frexp, exp2, clamp, casts, a concatenation) and an index_put:
about 15 small kernels of ~2 us each, ~30 per CSA layer (issue 27's profile). Here one program per token
quantises its row in registers and stores the bytes at its slot.

The bytes are those of `sparse_attention.quantize_kv_fp8` and `indexer.quantize_index_keys_fp8`,
bit for bit (the tests compare them, on CUDA too): power-of-two block scales chosen from the exponent
bits as frexp does, amax times the float32 reciprocal of 448 (as the references compute it), the keys'
IEEE division (`div_rn`), round-to-nearest-even casts (common.to_e4m3 / round_to).

Both take `slots` `[B, T]` (token t of row b goes to `dest[b, slots[b, t]]`; a scratch slot for rows
that must not change) and sources `[B, T, dim]`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import check_device, interpreting, round_to, to_e4m3
from .indexer import quantize_index_keys_fp8
from .sparse_attention import KV_DIM, NOPE_DIM, PACKED_DIM, ROPE_DIM, SCALE_BLOCK, SCALES_AT, quantize_kv_fp8

_BLOCKS = NOPE_DIM // SCALE_BLOCK  # 7 scaled blocks of e4m3 codes


@triton.jit
def _write_kv_fp8_kernel(src_ptr, slots_ptr, dest_ptr, dest16_ptr, T, stride_src, stride_b, stride_s,
                         BLOCKS: tl.constexpr, BLOCK: tl.constexpr, ROPE: tl.constexpr, SCALES_AT: tl.constexpr,
                         INTERPRET: tl.constexpr):
    n = tl.program_id(0)
    src = src_ptr + n.to(tl.int64) * stride_src
    slot = tl.load(slots_ptr + n).to(tl.int64)
    at = (n // T).to(tl.int64) * stride_b + slot * stride_s  # the row's first byte in dest
    blocks = tl.arange(0, 8)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    in_nope = (blocks < BLOCKS) & (cols < BLOCK)
    x = tl.load(src + blocks * BLOCK + cols, mask=in_nope, other=0.0).to(tl.float32)
    # 2^e >= amax / 448 with e tight: frexp's exponent, less one where the mantissa is exactly 0.5
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 448.0 * 1.1754943508222875e-38)
    bits = (amax * (1.0 / 448.0)).to(tl.int32, bitcast=True)  # the references' float32 reciprocal
    exponent = ((bits >> 23) & 0xFF) - 126 - ((bits & 0x7FFFFF) == 0).to(tl.int32)  # [8]
    inverse = ((127 - exponent) << 23).to(tl.float32, bitcast=True)  # 2^-e, exact
    y = tl.minimum(tl.maximum(x * inverse[:, None], -448.0), 448.0)
    codes = to_e4m3(y, INTERPRET).to(tl.uint8, bitcast=True)
    tl.store(dest_ptr + at + blocks * BLOCK + cols, codes, mask=in_nope)
    r = tl.arange(0, ROPE)
    rope = round_to(tl.load(src + BLOCKS * BLOCK + r).to(tl.float32), tl.bfloat16, True)
    tl.store(dest16_ptr + at // 2 + (BLOCKS * BLOCK) // 2 + r, rope.to(tl.int16, bitcast=True))
    j = tl.arange(0, 8)
    scale_bytes = tl.where(j < BLOCKS, exponent + 127, 0).to(tl.uint8)
    tl.store(dest_ptr + at + SCALES_AT + j, scale_bytes)  # 7 scales, then the zero pad byte


@triton.jit
def _write_index_keys_kernel(src_ptr, slots_ptr, keys_ptr, scales_ptr, T, D, stride_src, stride_kb, stride_ks,
                             stride_sb, stride_ss, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    n = tl.program_id(0)
    slot = tl.load(slots_ptr + n).to(tl.int64)
    b = (n // T).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ok = d < D
    x = tl.load(src_ptr + n.to(tl.int64) * stride_src + d, mask=ok, other=0.0).to(tl.float32)
    scale = tl.max(tl.abs(x), axis=0) * (1.0 / 448.0)
    divisor = tl.where(scale > 0, scale, 1.0)
    y = tl.div_rn(x, tl.zeros_like(x) + divisor)
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    tl.store(keys_ptr + b * stride_kb + slot * stride_ks + d, to_e4m3(y, INTERPRET).to(tl.uint8, bitcast=True),
             mask=ok)
    tl.store(scales_ptr + b * stride_sb + slot * stride_ss, scale)


def _check(dest: Tensor, slots: Tensor, src: Tensor, dim: int) -> tuple[int, int]:
    if src.dim() != 3 or src.shape[-1] != dim or slots.shape != src.shape[:2]:
        raise ValueError(f"sources must be [B, T, {dim}] with slots [B, T], got {tuple(src.shape)} and "
                         f"{tuple(slots.shape)}")
    if dest.shape[0] < src.shape[0]:
        raise ValueError(f"dest has {dest.shape[0]} rows for {src.shape[0]} source rows")
    if not src.is_floating_point() or slots.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sources must be float and slots integer, got {src.dtype} and {slots.dtype}")
    return src.shape[0], src.shape[1]


def write_kv_fp8(dest: Tensor, slots: Tensor, kv: Tensor) -> None:
    """dest[b, slots[b, t]] = quantize_kv_fp8(kv[b, t]): dest `[R, S, 584]` uint8, kv `[B, T, 512]`."""
    batch, tokens = _check(dest, slots, kv, KV_DIM)
    if dest.dtype != torch.uint8 or dest.shape[-1] != PACKED_DIM or dest.stride(-1) != 1 or dest.stride(1) % 2:
        raise ValueError(f"dest must be packed rows [R, S, {PACKED_DIM}] uint8, got {dest.dtype} {tuple(dest.shape)}")
    check_device(dest, slots, kv)
    src = kv.reshape(batch * tokens, KV_DIM)
    if src.stride(-1) != 1:
        src = src.contiguous()
    _write_kv_fp8_kernel[(batch * tokens,)](
        src, slots.contiguous(), dest, dest.view(torch.int16), tokens, src.stride(0), dest.stride(0), dest.stride(1),
        BLOCKS=_BLOCKS, BLOCK=SCALE_BLOCK, ROPE=ROPE_DIM, SCALES_AT=SCALES_AT, INTERPRET=interpreting(), num_warps=4)


def write_kv_fp8_reference(dest: Tensor, slots: Tensor, kv: Tensor) -> None:
    rows = torch.arange(kv.shape[0], device=kv.device)[:, None]
    dest[rows, slots] = quantize_kv_fp8(kv)


def write_index_keys_fp8(keys: Tensor, scales: Tensor, slots: Tensor, src: Tensor) -> None:
    """keys[b, slots[b, t]], scales[b, slots[b, t]] = quantize_index_keys_fp8(src)[.., b, t]: keys
    `[R, S, D]` float8_e4m3fn, scales `[R, S]` float32, src `[B, T, D]`."""
    batch, tokens = _check(keys, slots, src, keys.shape[-1])
    if keys.dtype != torch.float8_e4m3fn or scales.dtype != torch.float32 or keys.stride(-1) != 1:
        raise ValueError(f"keys must be float8_e4m3fn and scales float32, got {keys.dtype} and {scales.dtype}")
    check_device(keys, scales, slots, src)
    flat = src.reshape(batch * tokens, src.shape[-1])
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    _write_index_keys_kernel[(batch * tokens,)](
        flat, slots.contiguous(), keys.view(torch.uint8), scales, tokens, flat.shape[1], flat.stride(0),
        keys.stride(0), keys.stride(1), scales.stride(0), scales.stride(1),
        BLOCK_D=triton.next_power_of_2(flat.shape[1]), INTERPRET=interpreting(), num_warps=1)


def write_index_keys_fp8_reference(keys: Tensor, scales: Tensor, slots: Tensor, src: Tensor) -> None:
    rows = torch.arange(src.shape[0], device=src.device)[:, None]
    codes, scale = quantize_index_keys_fp8(src)
    keys.view(torch.uint8)[rows, slots] = codes.view(torch.uint8)  # not every backend's index_put takes float8
    scales[rows, slots] = scale
