"""What a static decode step derives from its rows' positions alone, in 2 + (compression rates) launches.

A step feeds T tokens per row b at positions p_b + t. Every index a layer needs (ring slots, window
indices, the compressors' write slots and pooled rows, the entries' slots, how many entries a query
sees, RoPE angles) depends only on (p, active) and the buffer layout that model/decode_positions.py
documents. Computed with torch ops these were ~90 small kernels per step, each a launch inside the
CUDA graph (issue 27: "no PyTorch glue kernels in the graphed step"). Here:

- `_ring_kernel`, grid (B, T, E) over the E distinct kv layouts (entry counts): the token's ring slot
  (the scratch slot if the row is inactive) and its window's kv indices, newest first, -1 before
  position 0; the window part of CSA's index list too, and the rows' partial-window write rows.
- `_window_kernel`, grid (B, T), once per compression rate: the token's slots in its partial windows
  (two with overlap), the pooled row and the slot that holds the token, the entry's slots in `kv` and
  in the indexer keys (scratch when inactive or when the step's next token continues the window), and
  how many entries the query sees ((p + 1) // rate: windows closed).
- `_rope_kernel`, grid (J, B * T): cos, sin and -sin for J jobs (table, rate): rate 1 at the tokens'
  positions, rate r at their windows' first position. Angles are `float32(position) * inv_freq`, as
  model/layers.py's `rope_cos_sin`; cos and sin are libdevice's (CUDA's cosf/sinf, as torch's), and
  the interpreter's numpy ones on CPU.

The launchers write into buffers the caller allocated once, so a captured graph replays into the same
memory. `*_reference` compute the same with torch ops: the CPU path and the tests' oracle.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from .common import check_device, interpreting


@triton.jit
def _ring_kernel(pos_ptr, act_ptr, entries_ptr, slot_ptr, win_ptr, rows_ptr, csa_ptr, B, T, ring, csa_layout,
                 csa_stride, WINDOW: tl.constexpr, BLOCK_W: tl.constexpr):
    b, t, e = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    on = tl.load(act_ptr + b) != 0
    token = tl.load(pos_ptr + b) + t  # int64
    entries = tl.load(entries_ptr + e)
    flat = (e * B + b) * T + t
    tl.store(slot_ptr + flat, tl.where(on, entries + token % ring, entries + ring))
    w = tl.arange(0, BLOCK_W)
    behind = token - w
    index = tl.where(behind >= 0, behind % ring + entries, -1).to(tl.int32)  # % only where behind >= 0
    tl.store(win_ptr + flat * WINDOW + w, index, mask=w < WINDOW)
    if e == csa_layout:
        tl.store(csa_ptr + (b * T + t) * csa_stride + w, index, mask=w < WINDOW)
    if (e == 0) & (t == 0):
        tl.store(rows_ptr + b, tl.where(on, b, B).to(tl.int64))


@triton.jit
def _window_kernel(pos_ptr, act_ptr, ape_ptr, wslot_ptr, wrow_ptr, cur_ptr, entry_ptr, key_ptr, closed_ptr, T, rate,
                   entries, ring, OVERLAP: tl.constexpr, SPAN: tl.constexpr, BLOCK_S: tl.constexpr):
    b, t = tl.program_id(0), tl.program_id(1)
    on = tl.load(act_ptr + b) != 0
    token = tl.load(pos_ptr + b) + t
    index, slot = token // rate, token % rate
    parity = index % 2
    flat = b * T + t
    tl.store(ape_ptr + flat, slot)
    if OVERLAP:  # first series -> window index + 1's half, second series -> this window's second half
        tl.store(wslot_ptr + flat * 2, (1 - parity) * 2 * rate + slot)
        tl.store(wslot_ptr + flat * 2 + 1, parity * 2 * rate + rate + slot)
        tl.store(wrow_ptr + flat, b * 2 + parity)
        current = slot + rate
    else:
        tl.store(wslot_ptr + flat, slot)
        current = slot
    s = tl.arange(0, BLOCK_S)
    tl.store(cur_ptr + flat * SPAN + s, (s == current).to(tl.uint8), mask=s < SPAN)
    writes = on & ((t == T - 1) | ((token + 1) // rate != index))  # else the next token writes this entry
    tl.store(entry_ptr + flat, tl.where(writes, index, entries + ring))
    tl.store(key_ptr + flat, tl.where(writes, index, entries))
    tl.store(closed_ptr + flat, ((token + 1) // rate).to(tl.int32))


@triton.jit
def _rope_kernel(pos_ptr, jobs_ptr, tables_ptr, cos_ptr, sin_ptr, neg_ptr, T, rows, HALF,
                 BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    j, i = tl.program_id(0), tl.program_id(1)
    table, rate = tl.load(jobs_ptr + 2 * j), tl.load(jobs_ptr + 2 * j + 1)
    token = tl.load(pos_ptr + i // T) + i % T
    f = tl.arange(0, BLOCK)
    ok = f < HALF
    angle = (token // rate * rate).to(tl.float32) * tl.load(tables_ptr + table * HALF + f, mask=ok, other=0.0)
    if INTERPRET:
        cos, sin = tl.cos(angle), tl.sin(angle)
    else:  # CUDA's cosf/sinf (full range reduction), not the approximate instructions
        cos, sin = libdevice.cos(angle), libdevice.sin(angle)
    out = (j * rows + i) * HALF + f
    tl.store(cos_ptr + out, cos, mask=ok)
    tl.store(sin_ptr + out, sin, mask=ok)
    tl.store(neg_ptr + out, -sin, mask=ok)


# ----------------------------------------------------------------------------- references


def ring_indices_reference(positions: Tensor, active: Tensor, entries: Tensor, ring: int, slots: Tensor,
                           windows: Tensor, write_rows: Tensor, csa: tuple[Tensor, int] | None = None) -> None:
    """Fill `slots` `[E, B, T]` int64, `windows` `[E, B, T, W]` int32 and `write_rows` `[B]` int64 (and
    `csa[0][:, :, :W]` with layout `csa[1]`'s window indices)."""
    batch, tokens, window = slots.shape[1], slots.shape[2], windows.shape[-1]
    token = positions[:, None] + torch.arange(tokens, device=positions.device)  # [B, T]
    on = active[:, None]
    offsets = entries[:, None, None]
    slots.copy_(torch.where(on, token % ring + offsets, offsets + ring))
    behind = token[..., None] - torch.arange(window, device=positions.device)
    windows.copy_(torch.where(behind >= 0, behind % ring + offsets[..., None], -1))
    write_rows.copy_(torch.where(active, torch.arange(batch, device=positions.device), batch))
    if csa is not None:
        csa[0][:, :, :window] = windows[csa[1]]


def window_indices_reference(positions: Tensor, active: Tensor, rate: int, entries: int, ring: int, overlap: bool,
                             out: dict[str, Tensor | None]) -> None:
    """Fill `out`'s `ape_slot`, `write_slots`, `window_rows` (overlap), `current`, `entry_slot`, `key_slot` and
    `closed` (shapes: model/decode_positions.py's WindowStep) for one compression rate."""
    tokens = out["ape_slot"].shape[1]
    device = positions.device
    token = positions[:, None] + torch.arange(tokens, device=device)
    index, slot = token // rate, token % rate
    parity = index % 2
    if overlap:
        out["write_slots"].copy_(torch.stack([(1 - parity) * 2 * rate + slot, parity * 2 * rate + rate + slot], -1))
        out["window_rows"].copy_(torch.arange(token.shape[0], device=device)[:, None] * 2 + parity)
        current = slot + rate
    else:
        out["write_slots"].copy_(slot[..., None])
        current = slot
    out["ape_slot"].copy_(slot)
    span = out["current"].shape[2]
    out["current"].copy_((torch.arange(span, device=device) == current[..., None])[..., None])
    writes = active[:, None] & ((token + 1) // rate != index)
    writes[:, -1] = active
    out["entry_slot"].copy_(torch.where(writes, index, entries + ring))
    out["key_slot"].copy_(torch.where(writes, index, entries))
    out["closed"].copy_((token + 1) // rate)


def rope_angles_reference(positions: Tensor, tokens: int, tables: Tensor, jobs: Tensor, cos: Tensor, sin: Tensor,
                          neg_sin: Tensor) -> None:
    """Fill `cos`, `sin`, `neg_sin` `[J, B * T, R/2]` for jobs `[J, 2]` (table, rate) over `tables` `[N, R/2]`."""
    flat = (positions[:, None] + torch.arange(tokens, device=positions.device)).reshape(-1)
    for j in range(jobs.shape[0]):  # tensors throughout: no host sync, as the kernel
        table, rate = jobs[j, 0], jobs[j, 1]
        angles = (flat // rate * rate).to(torch.float32)[:, None] * tables[table][None, :]
        cos[j].copy_(angles.cos())
        sin[j].copy_(angles.sin())
        neg_sin[j].copy_(-sin[j])


# ----------------------------------------------------------------------------- launchers


def _check_rows(positions: Tensor, active: Tensor) -> None:
    if positions.dtype != torch.int64 or active.dtype != torch.bool or positions.shape != active.shape:
        raise ValueError(f"positions must be int64 and active bool, both [B], got {positions.dtype} "
                         f"{tuple(positions.shape)} and {active.dtype} {tuple(active.shape)}")


def ring_indices(positions: Tensor, active: Tensor, entries: Tensor, ring: int, slots: Tensor, windows: Tensor,
                 write_rows: Tensor, csa: tuple[Tensor, int] | None = None) -> None:
    """Triton `ring_indices_reference`, one launch for every layout.

    Args:
        positions: `[B]` int64, each row's first token; active: `[B]` bool.
        entries: `[E]` int64, the layouts' entry counts (the ring follows them in `kv`).
        slots, windows, write_rows: contiguous outputs `[E, B, T]` int64, `[E, B, T, W]` int32, `[B]` int64.
        csa: (int32 `[B, T, W + k]` index list, rows contiguous, the layout whose window it starts with).
    """
    _check_rows(positions, active)
    num_layouts, batch, tokens = slots.shape
    window = windows.shape[-1]
    if not all(t.is_contiguous() for t in (slots, windows, write_rows)) or windows.dtype != torch.int32:
        raise ValueError("slots, windows and write_rows must be contiguous, windows int32")
    check_device(positions, active, entries, slots, windows, write_rows)
    target, layout = csa if csa is not None else (windows, -1)
    if csa is not None and (target.stride(-1) != 1 or target.stride(0) != tokens * target.stride(1)):
        raise ValueError("the CSA index list's rows must be evenly strided with contiguous last dim")
    _ring_kernel[(batch, tokens, num_layouts)](
        positions, active.view(torch.uint8), entries, slots, windows, write_rows, target, batch, tokens, ring, layout,
        target.stride(1), WINDOW=window, BLOCK_W=triton.next_power_of_2(window))


def window_indices(positions: Tensor, active: Tensor, rate: int, entries: int, ring: int, overlap: bool,
                   out: dict[str, Tensor | None]) -> None:
    """Triton `window_indices_reference` (every output contiguous; `current` bool `[B, T, span, 1]`)."""
    _check_rows(positions, active)
    batch, tokens = out["ape_slot"].shape
    span = out["current"].shape[2]
    if not all(t.is_contiguous() for t in out.values() if t is not None):
        raise ValueError("every window index output must be contiguous")
    check_device(positions, active, *(t for t in out.values() if t is not None))
    rows = out["window_rows"] if overlap else out["ape_slot"]  # an unused pointer without overlap
    _window_kernel[(batch, tokens)](
        positions, active.view(torch.uint8), out["ape_slot"], out["write_slots"], rows, out["current"].view(torch.uint8),
        out["entry_slot"], out["key_slot"], out["closed"], tokens, rate, entries, ring, OVERLAP=overlap, SPAN=span,
        BLOCK_S=triton.next_power_of_2(span))


def rope_angles(positions: Tensor, tokens: int, tables: Tensor, jobs: Tensor, cos: Tensor, sin: Tensor,
                neg_sin: Tensor) -> None:
    """Triton `rope_angles_reference`: jobs `[J, 2]` int64 (table, rate), outputs contiguous float32."""
    num_jobs, rows, half = cos.shape
    if tables.dtype != torch.float32 or not tables.is_contiguous() or tables.shape[1] != half:
        raise ValueError(f"tables must be contiguous float32 [N, {half}], got {tables.dtype} {tuple(tables.shape)}")
    if not all(t.is_contiguous() and t.shape == cos.shape for t in (cos, sin, neg_sin)):
        raise ValueError("cos, sin and neg_sin must be contiguous and of one shape")
    check_device(positions, tables, jobs, cos, sin, neg_sin)
    _rope_kernel[(num_jobs, rows)](positions, jobs, tables, cos, sin, neg_sin, tokens, rows, half,
                                   BLOCK=triton.next_power_of_2(half), INTERPRET=interpreting())
