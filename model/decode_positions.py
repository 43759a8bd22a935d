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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import closed_entries
from .config import CSA, SLIDING, V4Config
from .layers import rope_cos_sin


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
    rope: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # by table: cos, sin [B, T, R/2] at the window's start
    closed: Tensor | None = None  # [B, T] int32: how many entries a query sees (entries 0.. in `kv`)


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
        self.tables = tables
        self.window = config.sliding_window
        self.tokens, self.ring = tokens, ring or self.window
        if self.ring < self.window + tokens - 1:
            raise ValueError(f"a ring of {self.ring} slots cannot hold a window of {self.window} and {tokens} tokens")
        self.rates: dict[int, bool] = {}  # rate -> overlap
        self.rate_tables: dict[int, set[int]] = {}  # rate -> the tables its layers rotate entries with
        self.entry_counts = set()  # of the layers' kv buffers (0: sliding layers)
        for layer in range(len(table_of)):
            kind = config.attention_type(layer)
            rate = config.compress_rates[kind] if kind != SLIDING else 0
            self.entry_counts.add(self.entries(rate))
            if rate:
                self.rates[rate] = kind == CSA
                self.rate_tables.setdefault(rate, set()).add(table_of[layer])
        # filled by `update`
        self.rope: list[Rope] = []  # by table, [B * T, R/2]
        self.write_rows: Tensor | None = None  # [B]: each row, or the scratch row B if inactive
        self.ring_slot: dict[int, Tensor] = {}  # by entries: [B, T] the token's ring slot in `kv` (scratch if inactive)
        self.window_indices: dict[int, Tensor] = {}  # by entries: [B, T, window] int32, newest first, -1 before 0
        self.windows: dict[int, WindowStep] = {}
        self.csa_indices: Tensor | None = None  # [B, T, window + index_topk] int32: window part filled

    def entries(self, rate: int) -> int:
        """Compressed entries a row holds at `rate` (0: a sliding layer)."""
        return -(-self.capacity // rate) if rate else 0  # as state.new_layer_state allocates them

    def update(self, positions: Tensor, active: Tensor) -> None:
        """Recompute everything for rows whose first token is at `positions` `[B]` (int64), the others
        following it, with `active` `[B]` (bool)."""
        window, batch, device, ring_size = self.window, self.batch, self.device, self.ring
        tokens = positions[:, None] + torch.arange(self.tokens, device=device)  # [B, T]
        flat = tokens.reshape(-1)
        self.rope = [Rope(cos, sin, -sin) for cos, sin in (rope_cos_sin(t, flat) for t in self.tables)]
        rows = torch.arange(batch, device=device)
        self.write_rows = torch.where(active, rows, batch)
        on = active[:, None]
        behind = tokens[:, :, None] - torch.arange(window, device=device)
        seen = behind >= 0
        ring = tokens % ring_size
        for entries in self.entry_counts:
            self.ring_slot[entries] = torch.where(on, ring + entries, entries + ring_size)
            self.window_indices[entries] = torch.where(seen, behind % ring_size + entries, -1).to(torch.int32)
        for rate, overlap in self.rates.items():
            self.windows[rate] = self._window_step(tokens, on, rows, self.write_rows[:, None], rate, overlap)

    def _window_step(self, tokens: Tensor, on: Tensor, rows: Tensor, write_rows: Tensor, rate: int,
                     overlap: bool) -> WindowStep:
        window, device, entries, batch = self.window, self.device, self.entries(rate), self.batch
        index, slot = tokens // rate, tokens % rate  # [B, T]
        parity = index % 2
        if overlap:  # first series -> window index + 1's half, second series -> this window's second half
            write_slots = torch.stack([(1 - parity) * 2 * rate + slot, parity * 2 * rate + rate + slot], dim=-1)
            window_rows, span = rows[:, None] * 2 + parity, 2 * rate
            current = torch.arange(span, device=device) == (slot + rate)[..., None]
        else:
            write_slots, window_rows, span = slot[..., None], None, rate
            current = torch.arange(span, device=device) == slot[..., None]
        # a token whose window the step's next token continues leaves that entry to the next token
        writes = on & torch.cat([index[:, :-1] != index[:, 1:], torch.ones_like(on)], dim=1)
        step = WindowStep(slot, write_rows, write_slots, window_rows, current[..., None],
                          torch.where(writes, index, entries + self.ring), torch.where(writes, index, entries))
        starts = index * rate
        for table in sorted(self.rate_tables[rate]):
            cos, sin = rope_cos_sin(self.tables[table], starts.reshape(-1))
            step.rope[table] = cos.view(batch, self.tokens, -1), sin.view(batch, self.tokens, -1)
        step.closed = closed_entries(tokens, rate)  # [B, T]: HCA attends them as a run, CSA's indexer scores them
        if overlap:
            topk = self.config.index_topk
            self.csa_indices = torch.empty(batch, self.tokens, window + topk, dtype=torch.int32, device=device)
            self.csa_indices[:, :, :window] = self.window_indices[entries]
        return step
