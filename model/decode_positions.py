"""What one static decode step derives from the rows' positions alone, computed once for every layer.

Ring slots, window indices, the compressors' write slots and window rows, visibility masks, attention
indices and RoPE angles depend on (position, active) and on the buffer layout, never on a layer's
weights, so a 43-layer step computes them once instead of 43 times (issue 27: these small kernels were
most of the decode step's launches). RoPE angles are shared by every layer whose frequency table has
the same values (all sliding layers, all compressed layers).

A step feeds `tokens` consecutive positions per row (1 for plain decoding, 2 for the speculative verify
step: static_verify.py); every index below has a token axis `[B, T, ...]`, RoPE angles are flattened to
`[B * T, R/2]` for the rows-first kernels.

The layout (state.py's, which the eager path shares), per row:
- `kv` `[entries + ring + 1, row]`: the compressed entries (entry w in slot w), the sliding window as
  a ring of `ring` = window + MAX_STEP_TOKENS - 1 slots (position p in slot entries + p % ring, so a step's later
  token never overwrites a position its earlier token still sees), then one scratch slot. Entries come first so the
  indexer's top-k indices address `kv` as they are; the attention's index list keeps the window first.
- indexer keys (and their FP8 scales) `[entries + 1, ...]`: entry w in slot w, then one scratch slot.
- each compressor's partial windows, `[B + 1, L, dim]`: the last row is scratch. Without overlap (HCA)
  `L = rate` and token slot s is window slot s. With overlap (CSA) `L = 2 * 2 * rate`: two assembled
  windows by parity, each `[previous window's first series (rate) | this window's second series (rate)]`;
  a token of window w writes its second series into window w's half and its first series into window
  w + 1's, so a closing window is read as one contiguous block, never concatenated.

Inactive rows write to the scratch slot or row: one index_put per write, and nothing visible changes.

Every index lives in a buffer allocated once here (views of a few stacked tensors), and `update` fills
them with 2 + (compression rates) launches (kernels/step_indices.py via ops; torch ops on CPU), so the
graphed step holds no PyTorch glue kernels for its positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import ops
from .config import CSA, SLIDING, V4Config


@dataclass(slots=True)
class Rope:
    """cos, sin and -sin `[B, R/2]` float32 at the rows' positions (-sin undoes the rotation)."""

    cos: Tensor
    sin: Tensor
    neg_sin: Tensor


@dataclass(slots=True)
class WindowStep:
    """One compression rate's indices for this step (shared by every compressor of that rate)."""

    ape_slot: Tensor  # [B, T] the token's slot in its window (for `ape`)
    write_rows: Tensor  # [B, 1]: the row each token writes its partial window in (scratch row if inactive)
    write_slots: Tensor  # [B, T, 1] (or [B, T, 2] with overlap: first series, second series)
    window_rows: Tensor | None  # [B, T] overlap: rows of the `[(B + 1) * 2, 2 * rate, dim]` view to pool
    current: Tensor  # [B, T, L, 1] bool: the pooled window's slot holding this token (its exact gate goes there)
    # [B, T]: the entry this token's window writes in `kv` (scratch slot if inactive, or if the step's next
    # token continues the same window: its entry supersedes this one, and one index_put has no write order)
    entry_slot: Tensor
    key_slot: Tensor  # [B, T]: the same entry in the indexer keys (scratch slot likewise)
    closed: Tensor  # [B, T] int32: how many entries a query sees (entries 0.. in `kv`)
    rope: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # by table: cos, sin [B, T, R/2] at the window's start


class DecodePositions:
    """Per-step indices for a decoder of `batch` rows and `capacity` tokens per row, `tokens` per row a step.

    Args:
        tables: the distinct RoPE frequency tables `[R/2]`; `table_of[i]` names the i-th buffered layer's
            (the main layers, then any MTP layer the decoder keeps).
        ring: the sliding window's ring slots (default: the window; at least window + tokens - 1).
    """

    def __init__(self, config: V4Config, batch: int, capacity: int, tables: list[Tensor], table_of: list[int],
                 device: torch.device, tokens: int = 1, ring: int | None = None) -> None:
        self.config, self.batch, self.capacity, self.device = config, batch, capacity, device
        self.window = config.sliding_window
        self.tokens, self.ring = tokens, ring or self.window
        if self.ring < self.window + tokens - 1:
            raise ValueError(f"a ring of {self.ring} slots cannot hold a window of {self.window} and {tokens} tokens")
        if len({tuple(t.shape) for t in tables}) > 1:
            raise ValueError("every RoPE table of a decoder must have the same length")
        rates: dict[int, bool] = {}  # rate -> overlap
        rate_tables: dict[int, set[int]] = {}  # rate -> the tables its layers rotate entries with
        layouts = set()  # the layers' kv entry counts (0: sliding layers)
        for layer in range(len(table_of)):
            kind = config.attention_type(layer)
            rate = config.compress_rates[kind] if kind != SLIDING else 0
            layouts.add(self.entries(rate))
            if rate:
                rates[rate] = kind == CSA
                rate_tables.setdefault(rate, set()).add(table_of[layer])
        self.rates = rates
        self._allocate(sorted(layouts), rate_tables, tables)

    def entries(self, rate: int) -> int:
        """Compressed entries a row holds at `rate` (0: a sliding layer)."""
        return -(-self.capacity // rate) if rate else 0  # as state.new_layer_state allocates them

    def _allocate(self, layouts: list[int], rate_tables: dict[int, set[int]], tables: list[Tensor]) -> None:
        """Every buffer `update` fills, once: stacked per kind, handed out as views."""
        batch, tokens, window, device = self.batch, self.tokens, self.window, self.device
        dims = (batch, tokens)
        self._layouts = torch.tensor(layouts, dtype=torch.long, device=device)
        self._slots = torch.zeros(len(layouts), *dims, dtype=torch.long, device=device)
        self._windows = torch.zeros(len(layouts), *dims, window, dtype=torch.int32, device=device)
        self.write_rows = torch.zeros(batch, dtype=torch.long, device=device)  # each row, or scratch row B if inactive
        self.ring_slot = {e: self._slots[i] for i, e in enumerate(layouts)}  # [B, T]: the token's ring slot in `kv`
        self.window_indices = {e: self._windows[i] for i, e in enumerate(layouts)}  # [B, T, window], -1 before 0
        self.csa_indices: Tensor | None = None  # [B, T, window + index_topk] int32: the window part filled here
        self._csa_layout = -1
        jobs = [(table, 1) for table in range(len(tables))]  # the tokens' own angles, then windows' starts
        window_jobs: dict[int, dict[int, int]] = {}  # rate -> table -> its job
        self.windows: dict[int, WindowStep] = {}
        self._window_outs: dict[int, dict[str, Tensor | None]] = {}  # rate -> what window_indices fills
        for rate, overlap in self.rates.items():
            span = 2 * rate if overlap else rate  # a pooled window: [previous first series | second series]
            step = WindowStep(
                ape_slot=torch.zeros(dims, dtype=torch.long, device=device), write_rows=self.write_rows[:, None],
                write_slots=torch.zeros(*dims, 2 if overlap else 1, dtype=torch.long, device=device),
                window_rows=torch.zeros(dims, dtype=torch.long, device=device) if overlap else None,
                current=torch.zeros(*dims, span, 1, dtype=torch.bool, device=device),
                entry_slot=torch.zeros(dims, dtype=torch.long, device=device),
                key_slot=torch.zeros(dims, dtype=torch.long, device=device),
                closed=torch.zeros(dims, dtype=torch.int32, device=device))
            window_jobs[rate] = {}
            for table in sorted(rate_tables[rate]):
                window_jobs[rate][table] = len(jobs)
                jobs.append((table, rate))
            self.windows[rate] = step
            self._window_outs[rate] = {name: getattr(step, name) for name in (
                "ape_slot", "write_slots", "window_rows", "current", "entry_slot", "key_slot", "closed")}
            if overlap:
                self.csa_indices = torch.zeros(*dims, window + self.config.index_topk, dtype=torch.int32,
                                               device=device)
                self._csa_layout = layouts.index(self.entries(rate))
        self._jobs = torch.tensor(jobs, dtype=torch.long, device=device)
        self._tables = torch.stack([t.to(device=device, dtype=torch.float32) for t in tables]).contiguous()
        half = self._tables.shape[1]
        self._cos, self._sin, self._neg_sin = (torch.zeros(len(jobs), batch * tokens, half, device=device)
                                               for _ in range(3))
        self.rope = [Rope(self._cos[j], self._sin[j], self._neg_sin[j]) for j in range(len(tables))]  # by table
        for rate, step in self.windows.items():
            step.rope = {table: (self._cos[j].view(*dims, half), self._sin[j].view(*dims, half))
                         for table, j in window_jobs[rate].items()}

    def update(self, positions: Tensor, active: Tensor) -> None:
        """Recompute everything for rows whose first token is at `positions` `[B]` (int64), the others
        following it, with `active` `[B]` (bool): 2 + (compression rates) launches, no host sync."""
        csa = None if self.csa_indices is None else (self.csa_indices, self._csa_layout)
        ops.ring_indices(positions, active, self._layouts, self.ring, self._slots, self._windows, self.write_rows, csa)
        for rate, overlap in self.rates.items():
            ops.window_indices(positions, active, rate, self.entries(rate), self.ring, overlap, self._window_outs[rate])
        ops.rope_angles(positions, self.tokens, self._tables, self._jobs, self._cos, self._sin, self._neg_sin)
