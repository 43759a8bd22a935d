"""Decode state: everything a layer must remember to continue a sequence, in plain tensors the Engram
store can copy. Per layer: the last `sliding_window` K=V vectors; for CSA/HCA the compressed entries
so far (append-only), the partial window not yet compressed, and for CSA the previous window's first
series (the overlap) plus the same three for the indexer's keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch

from .config import CSA, SLIDING, V4Config


@dataclass(slots=True)
class CompressorState:
    """One compressor's memory: entries `[B, max_entries, dim]` (the first `num_entries` valid), the
    partial window `[B, rate, width]` (the first `num_partial` valid), and for overlapping compressors
    the last closed window's first series `[B, rate, dim]`."""

    entries: torch.Tensor
    partial_kv: torch.Tensor
    partial_gate: torch.Tensor
    overlap_kv: torch.Tensor | None = None
    overlap_gate: torch.Tensor | None = None
    num_entries: int = 0
    num_partial: int = 0
    has_overlap: bool = False

    @classmethod
    def empty(cls, batch: int, max_entries: int, rate: int, dim: int, overlap: bool,
              dtype: torch.dtype, device: torch.device | str) -> CompressorState:
        width = 2 * dim if overlap else dim
        make = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        return cls(make(batch, max_entries, dim), make(batch, rate, width), make(batch, rate, width),
                   make(batch, rate, dim) if overlap else None, make(batch, rate, dim) if overlap else None)


@dataclass(slots=True)
class LayerState:
    """One attention layer's memory: the sliding window `[B, sliding_window, head_dim]` (its last
    `num_window` rows valid, oldest first) and, for compressed layers, the compressors' states."""

    window: torch.Tensor
    num_window: int = 0
    compressor: CompressorState | None = None
    indexer: CompressorState | None = None


@dataclass(slots=True)
class DecodeState:
    """The whole model's memory of a sequence: `num_tokens` fed so far and one LayerState per layer.
    `owner` ties it to the engine that made it: a state is meaningless under other weights."""

    layers: list[LayerState]
    max_tokens: int
    owner: str
    num_tokens: int = 0
    batch: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


def new_decode_state(config: V4Config, max_tokens: int, owner: str, dtype: torch.dtype,
                     device: torch.device | str, batch: int = 1) -> DecodeState:
    """A state for up to `max_tokens` tokens, allocated once at full size."""
    layers = []
    for layer_type in config.layer_types:
        state = LayerState(torch.zeros(batch, config.sliding_window, config.head_dim, dtype=dtype, device=device))
        if layer_type != SLIDING:
            rate = config.compress_rates[layer_type]
            overlap = layer_type == CSA
            state.compressor = CompressorState.empty(batch, max_tokens // rate, rate, config.head_dim, overlap,
                                                     dtype, device)
            if overlap:
                state.indexer = CompressorState.empty(batch, max_tokens // rate, rate, config.index_head_dim, True,
                                                      dtype, device)
        layers.append(state)
    return DecodeState(layers, max_tokens, owner, batch=batch)
