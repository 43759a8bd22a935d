"""Decode state: everything a layer must remember to continue a sequence, in plain tensors the Engram
store can copy. Per layer: the last `sliding_window` K=V vectors; for CSA/HCA the compressed entries
so far (append-only), the partial window not yet compressed, and for CSA the previous window's first
series (the overlap) plus the same three for the indexer's keys.

With kv_format "fp8" the entries and indexer keys, the part that grows with the sequence, are kept in
DeepSeek's FP8 layout (`ops.quantize_kv_fp8` rows, e4m3 keys with a float32 scale each); the windows,
a fixed cost, stay in the model's dtype."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch

from . import ops
from .config import CSA, FLOAT_KV, FP8_KV, KV_FORMATS, SLIDING, ConfigError, V4Config
from .engram import EngramState, new_engram_state


@dataclass(slots=True)
class CompressorState:
    """One compressor's memory: entries `[B, max_entries, dim]` (the first `num_entries` valid), the
    partial window `[B, rate, width]` (the first `num_partial` valid), and for overlapping compressors
    the last closed window's first series `[B, rate, dim]`.

    FP8 entries are either packed K=V rows `[B, max_entries, ops.FP8_KV_ROW_BYTES]` uint8 or indexer
    keys `[B, max_entries, dim]` float8_e4m3fn with `entry_scale` `[B, max_entries]` float32 (append-only
    like the entries; None otherwise)."""

    entries: torch.Tensor
    partial_kv: torch.Tensor
    partial_gate: torch.Tensor
    overlap_kv: torch.Tensor | None = None
    overlap_gate: torch.Tensor | None = None
    entry_scale: torch.Tensor | None = None
    num_entries: int = 0
    num_partial: int = 0
    has_overlap: bool = False

    @classmethod
    def empty(cls, batch: int, max_entries: int, rate: int, dim: int, overlap: bool,
              dtype: torch.dtype, device: torch.device | str, fp8: str | None = None) -> CompressorState:
        """`fp8`: None (entries in `dtype`), "rows" (packed K=V rows) or "keys" (scaled e4m3 indexer keys)."""
        width = 2 * dim if overlap else dim
        make = lambda *shape, kind=dtype: torch.zeros(*shape, dtype=kind, device=device)  # noqa: E731
        scale = make(batch, max_entries, kind=torch.float32) if fp8 == "keys" else None
        if fp8 == "rows":
            entries = make(batch, max_entries, ops.FP8_KV_ROW_BYTES, kind=torch.uint8)
        else:
            entries = make(batch, max_entries, dim, kind=torch.float8_e4m3fn if fp8 == "keys" else dtype)
        return cls(entries, make(batch, rate, width), make(batch, rate, width),
                   make(batch, rate, dim) if overlap else None, make(batch, rate, dim) if overlap else None, scale)


@dataclass(slots=True)
class LayerState:
    """One attention layer's memory: the sliding window `[B, sliding_window, head_dim]` (its last
    `num_window` rows valid, oldest first) and, for compressed layers, the compressors' states.
    `kv_format` "fp8": attention reads every key FP8-rounded (the window's quantised as it is read)."""

    window: torch.Tensor
    num_window: int = 0
    compressor: CompressorState | None = None
    indexer: CompressorState | None = None
    engram: EngramState | None = None
    kv_format: str = FLOAT_KV


@dataclass(slots=True, weakref_slot=True)
class DecodeState:
    """The whole model's memory of a sequence: `num_tokens` fed so far and one LayerState per layer.
    `owner` ties it to the engine that made it: a state is meaningless under other weights. (Weakly
    referable: a driven engine's workers drop their copy when the driver's state is collected.)

    With MTP blocks, `mtp_layers` are their layers' states; the MTP block at position t reads the final
    streams at t and token t+1, so it runs one position behind: `mtp_pending` holds the last position's
    streams `[B, 1, hc, hidden]` until the next token is known.
    """

    layers: list[LayerState]
    max_tokens: int
    owner: str
    num_tokens: int = 0
    batch: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    mtp_layers: list[LayerState] = field(default_factory=list)
    mtp_pending: torch.Tensor | None = None
    kv_format: str = FLOAT_KV  # how every layer keeps its entries (config.KV_FORMATS)


@dataclass(frozen=True, slots=True)
class CompressorMark:
    partial_kv: torch.Tensor
    partial_gate: torch.Tensor
    overlap_kv: torch.Tensor | None
    overlap_gate: torch.Tensor | None
    num_entries: int
    num_partial: int
    has_overlap: bool


@dataclass(frozen=True, slots=True)
class LayerMark:
    window: torch.Tensor
    num_window: int
    compressor: CompressorMark | None
    indexer: CompressorMark | None
    engram: tuple[torch.Tensor, torch.Tensor, int] | None  # n-gram context ids, conv inputs, tokens seen


@dataclass(frozen=True, slots=True)
class StateMark:
    """What `rewind` needs to undo the tokens fed after `mark`: the small mutable parts (windows,
    partial windows, overlaps) copied and the counters; entries (and FP8 entry scales) are append-only,
    so rewinding only lowers their counts. Costs O(layers x window), not O(tokens)."""

    num_tokens: int
    layers: tuple[LayerMark, ...]
    mtp_layers: tuple[LayerMark, ...]
    mtp_pending: torch.Tensor | None


def _mark_compressor(state: CompressorState | None) -> CompressorMark | None:
    if state is None:
        return None
    clone = lambda t: None if t is None else t.clone()  # noqa: E731
    return CompressorMark(state.partial_kv.clone(), state.partial_gate.clone(), clone(state.overlap_kv),
                          clone(state.overlap_gate), state.num_entries, state.num_partial, state.has_overlap)


def _rewind_compressor(state: CompressorState | None, mark: CompressorMark | None) -> None:
    if state is None or mark is None:
        return
    state.partial_kv.copy_(mark.partial_kv)
    state.partial_gate.copy_(mark.partial_gate)
    if mark.overlap_kv is not None:
        state.overlap_kv.copy_(mark.overlap_kv)  # type: ignore[union-attr]
        state.overlap_gate.copy_(mark.overlap_gate)  # type: ignore[union-attr]
    state.num_entries, state.num_partial, state.has_overlap = mark.num_entries, mark.num_partial, mark.has_overlap


def _mark_layers(layers: list[LayerState]) -> tuple[LayerMark, ...]:
    return tuple(LayerMark(layer.window.clone(), layer.num_window, _mark_compressor(layer.compressor),
                           _mark_compressor(layer.indexer),
                           None if layer.engram is None else
                           (layer.engram.tokens.clone(), layer.engram.conv.clone(), layer.engram.num_tokens))
                 for layer in layers)


def mark(state: DecodeState, main_layers: bool = True) -> StateMark:
    """A point `rewind` can return `state` to (speculative decoding's rejected drafts); without
    `main_layers`, only the MTP layers (a draft that feeds nothing else)."""
    pending = None if state.mtp_pending is None else state.mtp_pending.clone()
    layers = _mark_layers(state.layers) if main_layers else ()
    return StateMark(state.num_tokens, layers, _mark_layers(state.mtp_layers), pending)


def rewind(state: DecodeState, to: StateMark) -> None:
    """Return `state` to the mark `to` (taken from this state, with no rewind past it since)."""
    for layers, marks in ((state.layers, to.layers), (state.mtp_layers, to.mtp_layers)):
        for layer, saved in zip(layers, marks):
            layer.window.copy_(saved.window)
            layer.num_window = saved.num_window
            _rewind_compressor(layer.compressor, saved.compressor)
            _rewind_compressor(layer.indexer, saved.indexer)
            if layer.engram is not None and saved.engram is not None:
                tokens, conv, seen = saved.engram
                layer.engram.tokens.copy_(tokens)
                layer.engram.conv.copy_(conv)
                layer.engram.num_tokens = seen
    state.num_tokens, state.mtp_pending = to.num_tokens, to.mtp_pending


def check_kv_format(config: V4Config, kv_format: str) -> None:
    """ConfigError unless `config`'s states can be kept in `kv_format`: DeepSeek's FP8 rows are fixed at
    512 dims of which 64 are RoPE (7 scaled blocks of 64 e4m3 codes, then bf16)."""
    if kv_format not in KV_FORMATS:
        raise ConfigError(f"kv_format must be one of {list(KV_FORMATS)}, got {kv_format!r}")
    fixed = (ops.FP8_KV_DIM, ops.FP8_KV_ROPE_DIM)
    if kv_format == FP8_KV and (config.head_dim, config.qk_rope_head_dim) != fixed:
        raise ConfigError(f"kv_format 'fp8' stores DeepSeek's {ops.FP8_KV_ROW_BYTES}-byte KV rows, which need "
                         f"head_dim {fixed[0]} and qk_rope_head_dim {fixed[1]}; this model has head_dim "
                         f"{config.head_dim} and qk_rope_head_dim {config.qk_rope_head_dim}")


def new_decode_state(config: V4Config, max_tokens: int, owner: str, dtype: torch.dtype,
                     device: torch.device | str, batch: int = 1, mtp_layers: int = 0,
                     kv_format: str = FLOAT_KV) -> DecodeState:
    """A state for up to `max_tokens` tokens (and `mtp_layers` MTP blocks), allocated once at full size,
    its entries and indexer keys in `kv_format` ("float": `dtype`; "fp8": DeepSeek's layout)."""
    check_kv_format(config, kv_format)
    n = config.num_hidden_layers
    layers = [_new_layer_state(config, layer, max_tokens, dtype, device, batch, kv_format)
              for layer in range(n + mtp_layers)]
    return DecodeState(layers[:n], max_tokens, owner, batch=batch, mtp_layers=layers[n:], kv_format=kv_format)


def _new_layer_state(config: V4Config, layer: int, max_tokens: int, dtype: torch.dtype,
                     device: torch.device | str, batch: int, kv_format: str) -> LayerState:
    layer_type = config.attention_type(layer)
    state = LayerState(torch.zeros(batch, config.sliding_window, config.head_dim, dtype=dtype, device=device),
                       kv_format=kv_format)
    if config.engram is not None and layer in config.engram.layer_ids:
        state.engram = new_engram_state(config.engram, batch, config.hc_mult, config.hidden_size, dtype, device)
    if layer_type != SLIDING:
        rate = config.compress_rates[layer_type]
        overlap = layer_type == CSA
        fp8 = kv_format == FP8_KV
        state.compressor = CompressorState.empty(batch, max_tokens // rate, rate, config.head_dim, overlap,
                                                 dtype, device, "rows" if fp8 else None)
        if overlap:
            state.indexer = CompressorState.empty(batch, max_tokens // rate, rate, config.index_head_dim, True,
                                                  dtype, device, "keys" if fp8 else None)
    return state
