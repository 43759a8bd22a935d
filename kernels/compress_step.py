"""One decode token through a compressor in one launch: its partial-window writes, then its window pooled.

The static decoder (model/static_decode.py) keeps each compressor's partial windows in buffers
`[B + 1, L, dim]` (layout: model/decode_positions.py; the last row is scratch for inactive rows). Per
token it writes the token's kv and gate (each series at its slot), then pools the window the token is in
to that window's entry, exact once the window is full. In PyTorch that is the gate's `ape` added, two
index_puts, two gathers of the window, a `where` for the token's exact float32 gate and the pooling
kernel: about eight launches per compressor and token (three compressors per CSA + HCA layer pair).
Here one launch does all of it (a program per row, or per row and block of channels for HCA's long
windows, whose norm and RoPE then take one more launch):
- the writes go out as stores; the pooled window is read from the buffers with the token's own slot
  taken from registers instead (so no store is read back within the launch: no ordering needed, and the
  pool sees the float32 gate the eager path pools, not its rounded stored copy);
- the pooling is `compressor.compress_windows_reference`'s arithmetic: per-channel softmax over the
  window's slots (online over chunks of slots for HCA's 128), each probability and product rounded to
  kv's dtype, RMSNorm, RoPE on the last channels.
An inactive row (write row = the scratch row) still pools its own window, token included, into an entry
the caller writes to a scratch slot: it is never read. A step that feeds T tokens per row calls this
once per token, in order (a token may start the window
whose first half the token before it pools).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import check_device, round_to
from .compressor import _pool, compress_windows_reference
from .norm_rope import rms_norm_rope, rms_normalize, rotate_pairs

TILE_ELEMENTS = 4096  # slots x channels per loaded tile
SPLIT_D = 32  # channels per program for windows over one tile (HCA's 512 channels: 16 programs a row)


@triton.jit
def _window_tile(kv_ptr, gate_ptr, base, start, cur, new_kv, new_gate, cols, col_ok, num_slots, dim,
                 BLOCK_L: tl.constexpr):
    """Slots [start, start + BLOCK_L) of the pooled window: kv and float32 gate `[BLOCK_L, BLOCK_D]`, the
    token's own slot `cur` from registers, slots past the window masked (gate -inf)."""
    slots = start + tl.arange(0, BLOCK_L)
    mask = (slots < num_slots)[:, None] & col_ok[None, :]
    offsets = base + slots[:, None] * dim + cols[None, :]
    own = (slots == cur)[:, None]
    kv = tl.load(kv_ptr + offsets, mask=mask & ~own, other=0.0)
    kv = tl.where(own, new_kv[None, :].to(kv.dtype), kv)
    gate = tl.load(gate_ptr + offsets, mask=mask & ~own, other=float("-inf")).to(tl.float32)
    gate = tl.where(own & mask, new_gate[None, :], gate)
    return kv, gate


@triton.jit
def _compress_step_kernel(kv_new_ptr, gate_new_ptr, ape_ptr, slot_ptr, buf_kv_ptr, buf_gate_ptr, write_rows_ptr,
                          write_slots_ptr, window_rows_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
                          rate, num_slots, dim, first_pair, half_rope, eps, s_new, s_cos, s_out,
                          SERIES: tl.constexpr, OVERLAP: tl.constexpr, BLOCK_L: tl.constexpr,
                          BLOCK_D: tl.constexpr, FUSED: tl.constexpr):
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    slot = tl.load(slot_ptr + b)
    row = tl.load(write_rows_ptr + b).to(tl.int64)
    new_kv = tl.zeros([BLOCK_D], tl.float32)
    new_gate = tl.zeros([BLOCK_D], tl.float32)
    for s in tl.static_range(SERIES):  # the writes; the last series is the one this window pools
        at = b.to(tl.int64) * s_new + s * dim + cols
        new_kv = tl.load(kv_new_ptr + at, mask=col_ok, other=0.0).to(tl.float32)
        new_gate = tl.load(gate_new_ptr + at, mask=col_ok, other=0.0).to(tl.float32) \
            + tl.load(ape_ptr + slot * SERIES * dim + s * dim + cols, mask=col_ok, other=0.0)
        target = (row * num_slots + tl.load(write_slots_ptr + b * SERIES + s)) * dim + cols
        tl.store(buf_kv_ptr + target, new_kv.to(buf_kv_ptr.dtype.element_ty), mask=col_ok)
        tl.store(buf_gate_ptr + target, round_to(new_gate, buf_gate_ptr.dtype.element_ty, True), mask=col_ok)
    if OVERLAP:  # the assembled window: a row of the [(B + 1) * 2, 2 * rate, dim] view
        window = 2 * rate
        base = tl.load(window_rows_ptr + b).to(tl.int64) * window * dim
        cur = slot + rate
    else:
        window = rate
        base = b.to(tl.int64) * num_slots * dim
        cur = slot
    top = tl.full([BLOCK_D], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, window, BLOCK_L):
        _, g = _window_tile(buf_kv_ptr, buf_gate_ptr, base, start, cur, new_kv, new_gate, cols, col_ok, window,
                            dim, BLOCK_L)
        new_top = tl.maximum(top, tl.max(g, axis=0))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - shift) + tl.sum(tl.exp(g - shift[None, :]), axis=0)
        top = new_top
    pooled = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, window, BLOCK_L):
        kv, g = _window_tile(buf_kv_ptr, buf_gate_ptr, base, start, cur, new_kv, new_gate, cols, col_ok, window,
                             dim, BLOCK_L)
        pooled += _pool(kv, g, top, total)
    y = tl.expand_dims(round_to(tl.where(col_ok, pooled, 0.0), out_ptr.dtype.element_ty, True), 0)
    if FUSED:  # the whole row is here: norm and rotate it before the one store
        y = rms_normalize(y, tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32), dim, eps, True)
        pair = tl.arange(0, BLOCK_D // 2) - first_pair
        active = tl.expand_dims((pair >= 0) & (pair < half_rope), 0)
        cos = tl.load(cos_ptr + b * s_cos + pair[None, :], mask=active, other=1.0)
        sin = tl.load(sin_ptr + b * s_cos + pair[None, :], mask=active, other=0.0)
        y = rotate_pairs(y, cos, sin, active, 1, BLOCK_D)
    tl.store(out_ptr + b * s_out + cols[None, :], y, mask=col_ok[None, :])  # else the pooled slice


def _check(kv_new: Tensor, gate_new: Tensor, ape: Tensor, slot: Tensor, buf_kv: Tensor, buf_gate: Tensor,
           write_rows: Tensor, write_slots: Tensor, window_rows: Tensor | None) -> tuple[int, int, int]:
    """(batch, series, dim), or ValueError naming what does not fit."""
    batch, dim = kv_new.shape[0], buf_kv.shape[-1]
    series = write_slots.shape[-1] if write_slots.dim() == 2 else 0
    if series not in (1, 2) or write_slots.shape[0] != batch or (series == 2) != (window_rows is not None):
        raise ValueError(f"write_slots must be [B, 1] (or [B, 2] with window_rows), got {tuple(write_slots.shape)}")
    if kv_new.shape != (batch, series * dim) or gate_new.shape != kv_new.shape:
        raise ValueError(f"kv_new and gate_new must be [{batch}, {series * dim}], got {tuple(kv_new.shape)} and "
                         f"{tuple(gate_new.shape)}")
    if buf_gate.shape != buf_kv.shape or buf_kv.shape[0] <= batch or buf_kv.dtype != kv_new.dtype:
        raise ValueError(f"the buffers must be [B + 1, L, dim] in kv_new's dtype, got {tuple(buf_kv.shape)} "
                         f"{buf_kv.dtype} and {tuple(buf_gate.shape)}")
    if ape.dim() != 2 or ape.shape[1] != series * dim or ape.dtype != torch.float32:
        raise ValueError(f"ape must be float32 [rate, {series * dim}], got {ape.dtype} {tuple(ape.shape)}")
    if slot.shape != (batch,) or write_rows.shape != (batch,):
        raise ValueError("slot and write_rows must be [B]")
    return batch, series, dim


def compress_step(kv_new: Tensor, gate_new: Tensor, ape: Tensor, slot: Tensor, buf_kv: Tensor, buf_gate: Tensor,
                  write_rows: Tensor, write_slots: Tensor, window_rows: Tensor | None, norm_weight: Tensor,
                  eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """One token per row into its partial windows, and its window's entry `[B, dim]` in kv's dtype.

    Args:
        kv_new, gate_new: `[B, series * dim]` the compressor's projections of the token (gate before `ape`).
        ape: `[rate, series * dim]` float32; slot: `[B]` the token's slot in its window.
        buf_kv, buf_gate: the partial windows `[B + 1, L, dim]` (gate in kv's dtype or float32), written.
        write_rows: `[B]` the row each token writes (the scratch row B for inactive rows);
        write_slots: `[B, series]`; window_rows: `[B]` with overlap, the pooled row of the
        `[(B + 1) * 2, 2 * rate, dim]` view (None without overlap: row b's `[rate, dim]`).
        cos, sin: `[B, R/2]` float32 at the window's first position.
    """
    batch, series, dim = _check(kv_new, gate_new, ape, slot, buf_kv, buf_gate, write_rows, write_slots, window_rows)
    check_device(kv_new, gate_new, ape, slot, buf_kv, buf_gate, write_rows, write_slots, norm_weight, cos, sin)
    out = torch.empty(batch, dim, dtype=kv_new.dtype, device=kv_new.device)
    window = ape.shape[0] * (2 if window_rows is not None else 1)
    block_d, block_l = _plan(window, dim)
    fused = block_d >= dim
    pooled = out if fused else torch.empty_like(out)
    kv_new, gate_new, cos, sin = kv_new.contiguous(), gate_new.contiguous(), cos.contiguous(), sin.contiguous()
    rows = write_rows if window_rows is None else window_rows
    _compress_step_kernel[(batch, triton.cdiv(dim, block_d))](
        kv_new, gate_new, ape.contiguous(), slot.contiguous(), buf_kv, buf_gate, write_rows.contiguous(),
        write_slots.contiguous(), rows.contiguous(), norm_weight, cos, sin, pooled, ape.shape[0], buf_kv.shape[1],
        dim, dim // 2 - cos.shape[1], cos.shape[1], float(eps), kv_new.stride(0), cos.stride(0), pooled.stride(0),
        SERIES=series, OVERLAP=window_rows is not None, BLOCK_L=block_l, BLOCK_D=block_d, FUSED=fused,
        num_warps=max(4, min(8, block_l * block_d // 512)))
    if not fused:
        rms_norm_rope(pooled[None], norm_weight, eps, cos, sin, out=out[None])
    return out


def _plan(window: int, dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L): whole rows (norm and RoPE in the same program) when the window fits one tile
    at full width (CSA's 8 slots); otherwise (HCA's 128) channel blocks of `SPLIT_D`, each program one
    tile of the whole window, and the norm and RoPE in one more launch: one program looping over a
    128-slot window alone was measured at ~130 us on the H100 (issue 27)."""
    whole = triton.next_power_of_2(dim)
    if window * whole <= TILE_ELEMENTS:
        return whole, max(2, triton.next_power_of_2(window))
    block_d = min(whole, SPLIT_D)
    return block_d, max(2, min(triton.next_power_of_2(window), TILE_ELEMENTS // block_d))


def compress_step_reference(kv_new: Tensor, gate_new: Tensor, ape: Tensor, slot: Tensor, buf_kv: Tensor,
                            buf_gate: Tensor, write_rows: Tensor, write_slots: Tensor, window_rows: Tensor | None,
                            norm_weight: Tensor, eps: float, cos: Tensor, sin: Tensor) -> Tensor:
    """`compress_step` in PyTorch: write, gather the window, put the token's exact gate in, pool."""
    batch, series, dim = _check(kv_new, gate_new, ape, slot, buf_kv, buf_gate, write_rows, write_slots, window_rows)
    rate = ape.shape[0]
    gate = gate_new + ape[slot]  # float32, as the eager path has it
    buf_kv[write_rows[:, None], write_slots] = kv_new.view(batch, series, dim)
    buf_gate[write_rows[:, None], write_slots] = gate.view(batch, series, dim).to(buf_gate.dtype)
    if window_rows is not None:
        kv, pooled_gate = (t.view(-1, 2 * rate, dim)[window_rows] for t in (buf_kv, buf_gate))
        current = slot + rate
    else:
        kv, pooled_gate, current = buf_kv[:batch], buf_gate[:batch], slot
    if pooled_gate.dtype != torch.float32:
        # earlier tokens' gates as stored (rounded), this token's still float32: what the eager path pools
        own = torch.arange(kv.shape[1], device=kv.device) == current[:, None]
        pooled_gate = torch.where(own[..., None], gate[:, None, -dim:], pooled_gate)
    return compress_windows_reference(kv[None], pooled_gate[None], norm_weight, eps, cos, sin)[0]
