"""Decode state: everything a layer must remember to continue a sequence, in one layout that the eager
path (attention.py), the shape-static decoder (static_decode.py: its rows are a state's rows), the
prefix-state store and the parallel sync all read and write, so a state feature is written once (issue 27).

Per layer, for B rows:
- `kv` `[B, entries + ring + 1, row]`: the compressed entries (entry w in slot w), the sliding window as
  a ring (position p in slot entries + p % ring; ring = window + MAX_STEP_TOKENS - 1, so a step feeding
  two tokens never overwrites a position its first token still sees), then one scratch slot. With
  kv_format "fp8" a row is DeepSeek's packed FP8 K=V row (`ops.quantize_kv_fp8`), quantised as it is
  written, window included; else `head_dim` values in the model's dtype.
- each compressor's partial windows `[B + 1, L, dim]` (row B is scratch), kept as the windows it pools
  (decode_positions.py: for CSA two assembled windows by parity).
- for CSA the indexer's keys `[B, entries + 1, index_head_dim]` (e4m3 with a float32 scale each in FP8).

Every count is the state's `num_tokens` (a layer that has seen n tokens holds n // rate entries and
n % rate partial tokens; an MTP layer runs one position behind): nothing else can disagree with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import torch

from . import ops
from .config import CSA, FLOAT_KV, FP8_KV, KV_FORMATS, SLIDING, ConfigError, V4Config
from .engram import EngramState, new_engram_state

MAX_STEP_TOKENS = 2  # the most tokens a decode step feeds per row (the speculative verify step's two)


@dataclass(slots=True)
class CompressorState:
    """One compressor's memory: its partial windows `[B + 1, L, dim]` (decode_positions.py) and the entries it has
    made, a view `[B, capacity, ...]` of its layer's `kv` (attention) or `index_keys` (indexer), with the
    FP8 indexer keys' scales `[B, capacity]` (None otherwise)."""

    entries: torch.Tensor
    partial_kv: torch.Tensor
    partial_gate: torch.Tensor
    rate: int
    overlap: bool
    entry_scale: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, max_entries: int, rate: int, dim: int, overlap: bool, dtype: torch.dtype,
              device: torch.device | str) -> CompressorState:
        """A compressor's state with entries of its own `[B, max_entries, dim]` in `dtype` (a layer's
        compressors use its tensors: new_layer_state)."""
        entries = torch.zeros(batch, max_entries, dim, dtype=dtype, device=device)
        return _new_compressor(entries, rate, dim, overlap, batch, dtype, device)


@dataclass(slots=True)
class LayerState:
    """One attention layer's memory (module docstring): `kv`, and for compressed layers `entries` slots
    of it, the compressors' partial windows and for CSA the indexer's keys."""

    kv: torch.Tensor
    entries: int
    ring: int
    compressor: CompressorState | None = None
    index_keys: torch.Tensor | None = None
    index_scales: torch.Tensor | None = None
    indexer: CompressorState | None = None
    engram: EngramState | None = None
    kv_format: str = FLOAT_KV

    def ring_slots(self, first: int, end: int) -> torch.Tensor:
        """The `kv` slots of positions first..end-1 (at most `ring` of them)."""
        return self.entries + torch.arange(first, end, device=self.kv.device) % self.ring

    def window_rows(self, tokens: int, window: int) -> torch.Tensor:
        """The window's rows as stored, oldest first, after `tokens` tokens: `[B, min(tokens, window), row]`."""
        return self.kv[:, self.ring_slots(tokens - min(tokens, window), tokens)]


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
    # the decoders that step this state in place (Engine.state_decoder), by kind: kept with the state,
    # their graphs live exactly as long as it does
    decoders: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def mtp_tokens(self) -> int:
        """Positions the MTP layers have seen: all but the pending one."""
        return self.num_tokens - 1 if self.mtp_pending is not None else 0


@dataclass(frozen=True, slots=True)
class LayerMark:
    ring: torch.Tensor  # kv's ring and scratch slots
    partials: tuple[torch.Tensor, ...]  # each compressor's partial kv and gate
    engram: tuple[torch.Tensor, torch.Tensor, int] | None  # n-gram context ids, conv inputs, tokens seen


@dataclass(frozen=True, slots=True)
class StateMark:
    """What `rewind` needs to undo the tokens fed after `mark`: the small mutable parts (ring, partial
    windows) copied and the count; entries (and FP8 entry scales) are append-only and a position only
    ever writes its own window's entry, so rewinding only lowers the count. Costs O(layers x window)."""

    num_tokens: int
    layers: tuple[LayerMark, ...]
    mtp_layers: tuple[LayerMark, ...]
    mtp_pending: torch.Tensor | None


def partial_slots(rate: int, tokens: int, overlap: bool) -> tuple[slice, slice, slice | None]:
    """Where a row after `tokens` tokens keeps its partial window (decode_positions.py's layout): the
    slots of the filled tokens' first series, of their second series (the same without overlap) and of
    the previous window's first series (None without overlap)."""
    window_index, filled = divmod(tokens, rate)
    if not overlap:
        return slice(0, filled), slice(0, filled), None
    this, following = (window_index % 2) * 2 * rate, ((window_index + 1) % 2) * 2 * rate
    return slice(following, following + filled), slice(this + rate, this + rate + filled), slice(this, this + rate)


def read_partial(comp: CompressorState, tokens: int, batch: int
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Rows 0..batch-1's partial window after `tokens` tokens as the eager path pools it: kv and gate
    `[B, filled, width]` (the two series side by side with overlap) and, with overlap once a window has
    closed, the previous window's first series (kv, gate) `[B, rate, dim]`."""
    first, second, previous = partial_slots(comp.rate, tokens, comp.overlap)
    kv, gate = comp.partial_kv[:batch], comp.partial_gate[:batch]
    if not comp.overlap:
        return kv[:, first], gate[:, first], None
    carried = (kv[:, previous], gate[:, previous]) if tokens >= comp.rate else None
    return (torch.cat([kv[:, first], kv[:, second]], dim=-1), torch.cat([gate[:, first], gate[:, second]], dim=-1),
            carried)


def write_partial(comp: CompressorState, tokens: int, kv: torch.Tensor, gate: torch.Tensor,
                  carried: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Keep what `read_partial` returns at `tokens` tokens: the partial window `kv`, `gate` `[B, filled,
    width]` and, with overlap, the last closed window's first series `carried` (None: unchanged)."""
    first, second, previous = partial_slots(comp.rate, tokens, comp.overlap)
    batch, dim = kv.shape[0], comp.partial_kv.shape[-1]
    for target, values, index in ((comp.partial_kv, kv, 0), (comp.partial_gate, gate, 1)):
        if comp.overlap:
            target[:batch, first] = values[..., :dim]
            target[:batch, second] = values[..., dim:]
            if carried is not None:
                target[:batch, previous] = carried[index]
        else:
            target[:batch, first] = values


def _partials(layer: LayerState) -> list[torch.Tensor]:
    return [t for comp in (layer.compressor, layer.indexer) if comp is not None
            for t in (comp.partial_kv, comp.partial_gate)]


def _mark_layers(layers: list[LayerState]) -> tuple[LayerMark, ...]:
    return tuple(LayerMark(layer.kv[:, layer.entries :].clone(), tuple(t.clone() for t in _partials(layer)),
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
            layer.kv[:, layer.entries :].copy_(saved.ring)
            for target, held in zip(_partials(layer), saved.partials):
                target.copy_(held)
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


def ring_size(config: V4Config) -> int:
    """The sliding window's ring slots in every state: room for a step of MAX_STEP_TOKENS per row."""
    return config.sliding_window + MAX_STEP_TOKENS - 1


def new_decode_state(config: V4Config, max_tokens: int, owner: str, dtype: torch.dtype,
                     device: torch.device | str, batch: int = 1, mtp_layers: int = 0,
                     kv_format: str = FLOAT_KV) -> DecodeState:
    """A state for up to `max_tokens` tokens (and `mtp_layers` MTP blocks), allocated once at full size,
    its entries and indexer keys in `kv_format` ("float": `dtype`; "fp8": DeepSeek's layout)."""
    check_kv_format(config, kv_format)
    n = config.num_hidden_layers
    layers = [new_layer_state(config, layer, max_tokens, dtype, device, batch, kv_format)
              for layer in range(n + mtp_layers)]
    return DecodeState(layers[:n], max_tokens, owner, batch=batch, mtp_layers=layers[n:], kv_format=kv_format)


def new_layer_state(config: V4Config, layer: int, max_tokens: int, dtype: torch.dtype,
                    device: torch.device | str, batch: int, kv_format: str) -> LayerState:
    """Layer `layer`'s empty state for `batch` rows of up to `max_tokens` tokens."""
    zeros = lambda *shape, kind=dtype: torch.zeros(*shape, dtype=kind, device=device)  # noqa: E731
    fp8 = kv_format == FP8_KV
    row = (ops.FP8_KV_ROW_BYTES, torch.uint8) if fp8 else (config.head_dim, dtype)
    layer_type, ring = config.attention_type(layer), ring_size(config)
    rate = config.compress_rates[layer_type] if layer_type != SLIDING else 0
    entries = -(-max_tokens // rate) if rate else 0  # the open window's too: the decoder writes it before it closes
    state = LayerState(zeros(batch, entries + ring + 1, row[0], kind=row[1]), entries, ring, kv_format=kv_format)
    if config.engram is not None and layer in config.engram.layer_ids:
        state.engram = new_engram_state(config.engram, batch, config.hc_mult, config.hidden_size, dtype, device)
    if not rate:
        return state
    overlap = layer_type == CSA
    state.compressor = _new_compressor(state.kv[:, :entries], rate, config.head_dim, overlap, batch, dtype, device)
    if overlap:
        state.index_keys = zeros(batch, entries + 1, config.index_head_dim,
                                 kind=torch.float8_e4m3fn if fp8 else dtype)
        state.index_scales = zeros(batch, entries + 1, kind=torch.float32) if fp8 else None
        state.indexer = _new_compressor(state.index_keys[:, :entries], rate, config.index_head_dim, True, batch,
                                        dtype, device,
                                        None if state.index_scales is None else state.index_scales[:, :entries])
    return state


def _new_compressor(entries: torch.Tensor, rate: int, dim: int, overlap: bool, batch: int, dtype: torch.dtype,
                    device: torch.device | str, entry_scale: torch.Tensor | None = None) -> CompressorState:
    """Empty partial windows; with overlap, window 0's previous half masked (gate -inf: nothing comes
    before the first window)."""
    slots = 4 * rate if overlap else rate
    kv, gate = (torch.zeros(batch + 1, slots, dim, dtype=dtype, device=device) for _ in range(2))
    if overlap:
        gate[:, :rate] = float("-inf")
    return CompressorState(entries, kv, gate, rate, overlap, entry_scale)


def _copy_layer(held: LayerState, into: LayerState, source: int | slice, target: int | slice, made: int) -> None:
    """Row(s) `source` of `held` into row(s) `target` of `into`: the ring and scratch slots, the partial
    windows and the first `made` entries (and indexer keys and scales). One layout: plain copies."""
    into.kv[target, into.entries :].copy_(held.kv[source, held.entries :])
    for a, b in zip(_partials(held), _partials(into)):
        b[target].copy_(a[source])
    into.kv[target, :made].copy_(held.kv[source, :made])
    for a, b in ((held.index_keys, into.index_keys), (held.index_scales, into.index_scales)):
        if a is not None and b is not None:
            b[target, :made].copy_(a[source, :made])


def copy_rows(source: DecodeState, source_row: int, target: DecodeState, target_row: int, tokens: int,
              mtp_tokens: int) -> None:
    """Copy row `source_row` of `source`, holding `tokens` tokens (`mtp_tokens` in the MTP layers), into
    row `target_row` of `target`. States of other capacities may exchange rows that fit both."""
    if source.kv_format != target.kv_format:
        raise ValueError(f"a {source.kv_format!r} state's rows cannot move into a {target.kv_format!r} state")
    if tokens > min(source.max_tokens, target.max_tokens):
        raise ValueError(f"{tokens} tokens do not fit a state of {min(source.max_tokens, target.max_tokens)}")
    pairs = [(s, t, tokens) for s, t in zip(source.layers, target.layers)]
    pairs += [(s, t, mtp_tokens) for s, t in zip(source.mtp_layers, target.mtp_layers)]
    for held, into, seen in pairs:
        made = seen // held.compressor.rate if held.compressor is not None else 0
        _copy_layer(held, into, source_row, target_row, made)


def grow_state(state: DecodeState, config: V4Config, max_tokens: int, dtype: torch.dtype) -> None:
    """Make room in `state` for `max_tokens` tokens per row, keeping all it holds. In place: the state's
    layer lists get the new layers, so whoever holds the state sees them (`dtype`: the model's)."""
    if max_tokens <= state.max_tokens:
        return
    first_mtp = config.num_hidden_layers
    for layers, offset in ((state.layers, 0), (state.mtp_layers, first_mtp)):
        for index, old in enumerate(layers):
            new = new_layer_state(config, offset + index, max_tokens, dtype, old.kv.device, state.batch,
                                  state.kv_format)
            _copy_layer(old, new, slice(None), slice(None), old.entries)
            new.engram = old.engram
            layers[index] = new
    state.max_tokens = max_tokens
