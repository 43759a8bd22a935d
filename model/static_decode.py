"""Shape-static, batched decoding: one token for each of B sequences per step, every tensor a fixed
size, so the whole step can be captured once in a CUDA graph and replayed.

The eager path (attention.py) grows tensors with the sequence and decides on the host when a
compression window closes; a graph can do neither. Here each row carries its own position in a
device tensor, and per layer the state lives in buffers sized for `capacity` tokens:

- `kv` `[B, window + entries, head_dim]`: the sliding window as a ring (position p in slot p % window)
  followed by the compressed entries, so attention reads one tensor and nothing is concatenated;
- each compressor's partial window, double-buffered by window parity for CSA: the previous window's
  first series (the overlap) is simply the other half;
- the indexer's compressed keys `[B, entries, index_head_dim]`.

Every step writes the entry of the window its position is in, complete or not; an entry only becomes
visible to queries once its window has closed, by which time the last write made it exact. Every
write depends only on (token, position), so a step replayed at the same position changes nothing:
warming up before capture and rewinding are free. Rows marked inactive write nothing.

Capacity grows by whole pages (buffers reallocated, state copied, graphs captured again), never by
concatenating per step. States move in and out of the eager `DecodeState` layout (`load_row`,
`store_row`), so prefill, the prefix-state store and everything else keep one format.

With kv_format "fp8" (the engine's, which its states share) `kv` holds DeepSeek's packed FP8 rows, ring
slots included (each token's kv quantised as it is written, as the eager path quantises the window as
it reads it), and the indexer keys are e4m3 with a float32 scale each; quantising is device work only,
so the step still captures in one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from . import ops
from .attention import Attention, Compressor
from .config import CSA, FLOAT_KV, FP8_KV, SLIDING
from .layers import rope_cos_sin
from .offload import expert_caches, fewest_slots, has_offload
from .piecewise_graph import PiecewiseGraph
from .quantized_linear import grouped_linear
from .state import CompressorState, DecodeState, check_kv_format
from .v4 import Transformer

T = TypeVar("T")
PAGE_TOKENS = 4096  # default: capacity grows by this many tokens (a multiple of every compression rate)


class StaticDecodeError(ValueError):
    """A model or state the static path cannot run (e.g. Engram layers), or a row out of range."""


@dataclass(slots=True)
class _CompressorBuffers:
    """A compressor's partial windows `[B, slots, width]`: two windows (this one and the previous,
    by parity) for overlapping compressors, one otherwise."""

    kv: Tensor
    gate: Tensor


@dataclass(slots=True)
class _LayerBuffers:
    kv: Tensor  # [B, window + entries, head_dim], or packed FP8 rows [B, window + entries, row bytes] uint8
    compressor: _CompressorBuffers | None = None
    index_keys: Tensor | None = None  # [B, entries, index_head_dim] (float8_e4m3fn in an FP8 decoder)
    indexer: _CompressorBuffers | None = None
    index_scales: Tensor | None = None  # [B, entries] float32: the FP8 keys' scales


def _rows_first(x: Tensor) -> Tensor:
    """`[B, 1, ...]` -> `[1, B, ...]`: the rope/compress kernels take one position per sequence slot,
    so B single-token rows at B positions run as one sequence of B tokens."""
    return x.transpose(0, 1)


class StaticDecoder:
    """B decode rows over `model`, each at its own position; `step` is graph-captured on CUDA.

    Rows are filled from prefilled eager states (`load_row`) and written back (`store_row`); their
    `kv_format` must be the decoder's.
    """

    def __init__(self, model: Transformer, batch: int, capacity: int, use_graph: bool | None = None,
                 page_tokens: int = PAGE_TOKENS, kv_format: str = FLOAT_KV) -> None:
        config = model.config
        check_kv_format(config, kv_format)
        self.kv_format, self.fp8 = kv_format, kv_format == FP8_KV
        if page_tokens % max(config.compress_rates.values(), default=1):
            raise StaticDecodeError(f"page_tokens must be a multiple of every compression rate, got {page_tokens}")
        self.page_tokens = page_tokens
        if config.engram is not None:
            raise StaticDecodeError("static decoding does not run Engram layers yet; use the eager path")
        self.model, self.config, self.batch = model, config, batch
        self.device, self.dtype = model.embed.weight.device, model.embed.weight.dtype
        # Offloaded experts are fetched after a host sync per layer: the step is then a piecewise graph,
        # which needs a cache slot for every (row, expert) pair; with fewer the step runs eagerly.
        self.piecewise = has_offload(model)
        slots = fewest_slots(model)
        fits = slots is None or slots >= batch * config.num_experts_per_tok
        if use_graph and not fits:
            raise StaticDecodeError(f"a graphed step of {batch} rows may need {batch * config.num_experts_per_tok} "
                                    f"experts per layer; the offload cache holds {slots}")
        self.use_graph = self.device.type == "cuda" and fits if use_graph is None else use_graph
        self.capacity = 0
        self.layers: list[_LayerBuffers] = []
        self.token_ids = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.active = torch.ones(batch, dtype=torch.bool, device=self.device)
        self.lengths = [0] * batch  # tokens each row holds (host copy of positions for bookkeeping)
        self._rows = torch.arange(batch, device=self.device)
        # What every layer of one step derives from the positions alone (rope angles per frequency
        # table, window slots, compression indices): computed once per step, not once per layer.
        self._per_step: dict[object, object] = {}
        self._graph: torch.cuda.CUDAGraph | PiecewiseGraph | None = None
        self._logits: Tensor | None = None
        self.grow(capacity)

    # ------------------------------------------------------------------ buffers

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` tokens per row (rounded up to whole pages), keeping what is held."""
        capacity = -(-capacity // self.page_tokens) * self.page_tokens
        if capacity <= self.capacity:
            return
        old = self.layers
        self.layers = [self._new_layer(layer, capacity) for layer in range(self.config.num_hidden_layers)]
        for new, held in zip(self.layers, old):
            new.kv[:, : held.kv.shape[1]].copy_(held.kv)
            for name in ("compressor", "indexer"):
                if getattr(held, name) is not None:
                    getattr(new, name).kv.copy_(getattr(held, name).kv)
                    getattr(new, name).gate.copy_(getattr(held, name).gate)
            if held.index_keys is not None:
                new.index_keys[:, : held.index_keys.shape[1]].copy_(held.index_keys)
            if held.index_scales is not None:
                new.index_scales[:, : held.index_scales.shape[1]].copy_(held.index_scales)
        self.capacity = capacity
        self._graph = None  # buffers moved: capture again

    def _new_layer(self, layer: int, capacity: int) -> _LayerBuffers:
        config, batch = self.config, self.batch
        zeros = lambda *shape, kind=self.dtype: torch.zeros(*shape, dtype=kind, device=self.device)  # noqa: E731
        row = (ops.FP8_KV_ROW_BYTES, torch.uint8) if self.fp8 else (config.head_dim, self.dtype)
        attention = config.attention_type(layer)
        if attention == SLIDING:
            return _LayerBuffers(zeros(batch, config.sliding_window, row[0], kind=row[1]))
        rate = config.compress_rates[attention]
        overlap = attention == CSA
        slots = 2 * rate if overlap else rate
        width = 2 * config.head_dim if overlap else config.head_dim
        buffers = _LayerBuffers(zeros(batch, config.sliding_window + capacity // rate, row[0], kind=row[1]),
                                _CompressorBuffers(zeros(batch, slots, width), zeros(batch, slots, width)))
        if overlap:
            key_dtype = torch.float8_e4m3fn if self.fp8 else self.dtype
            buffers.index_keys = zeros(batch, capacity // rate, config.index_head_dim, kind=key_dtype)
            buffers.index_scales = zeros(batch, capacity // rate, kind=torch.float32) if self.fp8 else None
            buffers.indexer = _CompressorBuffers(zeros(batch, slots, 2 * config.index_head_dim),
                                                 zeros(batch, slots, 2 * config.index_head_dim))
        return buffers

    def _as_stored(self, kv: Tensor) -> Tensor:
        """K=V rows as `kv` holds them: packed FP8 rows in an FP8 decoder."""
        return ops.quantize_kv_fp8(kv) if self.fp8 else kv

    def _as_read(self, rows: Tensor) -> Tensor:
        """`kv` rows back in the model's dtype (FP8 rows dequantised: the eager path, which rounds its
        window as it reads it, gets the same values back)."""
        return ops.dequantize_kv_fp8(rows, self.dtype) if self.fp8 else rows

    # ------------------------------------------------------------------ moving states in and out

    def load_row(self, row: int, state: DecodeState) -> None:
        """Copy a prefilled single-sequence eager state into `row` (its position = its token count)."""
        self._check_row(row, state)
        n = state.num_tokens
        self.grow(n + 1)
        window = self.config.sliding_window
        for layer, (buffers, held) in enumerate(zip(self.layers, state.layers)):
            kept = held.num_window
            slots = torch.arange(n - kept, n, device=self.device) % window
            buffers.kv[row, slots] = self._as_stored(held.window[0, window - kept :])
            if held.compressor is not None:
                rate = self.config.compress_rates[self.config.attention_type(layer)]
                entries = held.compressor.num_entries
                buffers.kv[row, window : window + entries] = held.compressor.entries[0, :entries]
                self._load_partial(row, buffers.compressor, held.compressor, rate, n)
            if held.indexer is not None:
                entries = held.indexer.num_entries
                buffers.index_keys[row, :entries] = held.indexer.entries[0, :entries]
                if held.indexer.entry_scale is not None:
                    buffers.index_scales[row, :entries] = held.indexer.entry_scale[0, :entries]
                self._load_partial(row, buffers.indexer, held.indexer, rate, n)
        self.lengths[row] = n
        self.positions[row] = n

    def store_row(self, row: int, state: DecodeState) -> None:
        """Write `row` back into a single-sequence eager state (which must have room for it)."""
        n = self.lengths[row]
        if state.batch != 1 or state.max_tokens < n:
            raise StaticDecodeError(f"the state must be single-sequence with room for {n} tokens")
        self._check_format(state)
        window = self.config.sliding_window
        for layer, (buffers, held) in enumerate(zip(self.layers, state.layers)):
            kept = min(window, n)
            slots = torch.arange(n - kept, n, device=self.device) % window
            held.window[0, window - kept :] = self._as_read(buffers.kv[row, slots])
            held.num_window = kept
            if held.compressor is not None:
                rate = self.config.compress_rates[self.config.attention_type(layer)]
                entries = n // rate
                held.compressor.entries[0, :entries] = buffers.kv[row, window : window + entries]
                self._store_partial(row, buffers.compressor, held.compressor, rate, n)
            if held.indexer is not None:
                held.indexer.entries[0, : n // rate] = buffers.index_keys[row, : n // rate]
                if held.indexer.entry_scale is not None:
                    held.indexer.entry_scale[0, : n // rate] = buffers.index_scales[row, : n // rate]
                self._store_partial(row, buffers.indexer, held.indexer, rate, n)
        state.num_tokens = n
        state.mtp_pending = None  # the draft head did not follow these tokens

    def _check_row(self, row: int, state: DecodeState) -> None:
        if not 0 <= row < self.batch:
            raise StaticDecodeError(f"row {row} is out of range [0, {self.batch})")
        if state.batch != 1:
            raise StaticDecodeError("load_row takes a single-sequence state")
        self._check_format(state)

    def _check_format(self, state: DecodeState) -> None:
        if state.kv_format != self.kv_format:
            raise StaticDecodeError(f"a {state.kv_format!r} state cannot move into a {self.kv_format!r} decoder")

    def _load_partial(self, row: int, buffers: _CompressorBuffers, held: CompressorState, rate: int, n: int) -> None:
        window_index, filled = divmod(n, rate)
        overlap = held.overlap_kv is not None
        base = (window_index % 2) * rate if overlap else 0
        buffers.kv[row, base : base + filled] = held.partial_kv[0, :filled]
        buffers.gate[row, base : base + filled] = held.partial_gate[0, :filled]
        if overlap and held.has_overlap:
            previous, dim = ((window_index - 1) % 2) * rate, held.overlap_kv.shape[-1]
            buffers.kv[row, previous : previous + rate, :dim] = held.overlap_kv[0]
            buffers.gate[row, previous : previous + rate, :dim] = held.overlap_gate[0]

    def _store_partial(self, row: int, buffers: _CompressorBuffers, held: CompressorState, rate: int, n: int) -> None:
        window_index, filled = divmod(n, rate)
        overlap = held.overlap_kv is not None
        base = (window_index % 2) * rate if overlap else 0
        held.partial_kv[0, :filled] = buffers.kv[row, base : base + filled]
        held.partial_gate[0, :filled] = buffers.gate[row, base : base + filled]
        held.num_entries, held.num_partial = window_index, filled
        if overlap:
            held.has_overlap = window_index >= 1
            if held.has_overlap:
                previous, dim = ((window_index - 1) % 2) * rate, held.overlap_kv.shape[-1]
                held.overlap_kv[0] = buffers.kv[row, previous : previous + rate, :dim]
                held.overlap_gate[0] = buffers.gate[row, previous : previous + rate, :dim]

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, token_ids: Tensor | list[int], active: list[bool] | None = None) -> Tensor:
        """Feed one token per row at each row's position; logits `[B, vocab]` float32.

        Rows not `active` compute but write nothing (their logits are meaningless); active rows
        advance by one.
        """
        active = list(active) if active is not None else [True] * self.batch
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        if ids.numel() != self.batch or len(active) != self.batch:
            raise StaticDecodeError(f"step takes {self.batch} token ids and flags, got {ids.numel()} and {len(active)}")
        vocab = self.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise StaticDecodeError(f"token ids must be in [0, {vocab})")
        self.grow(max(self.lengths) + 1)
        self.token_ids.copy_(ids)
        self.positions.copy_(torch.tensor(self.lengths, dtype=torch.long))
        self.active.copy_(torch.tensor(active, dtype=torch.bool))
        logits = self._run()
        for row, on in enumerate(active):
            if on:
                self.lengths[row] += 1
        return logits

    def _run(self) -> Tensor:
        if not self.use_graph:
            return self._forward()
        if self._graph is None:
            self.capture()
        return self.replay()

    def replay(self) -> Tensor:
        """Run the captured step again on the current inputs (the benchmarks time this alone)."""
        self._graph.replay()  # type: ignore[union-attr]
        return self._logits  # type: ignore[return-value]

    def capture(self) -> None:
        """Warm up on a side stream (autotuning, lazy init), then capture one step. Replaying the
        current inputs is harmless: every write is idempotent in (token, position)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.piecewise:
            graph = PiecewiseGraph(self.device, expert_caches(self.model))
            self._logits = graph.capture(self._forward)
            self._graph = graph
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self._forward()
        self._graph = graph

    def _forward(self) -> Tensor:
        model = self.model
        self._per_step.clear()
        ids = self.token_ids[:, None]
        streams = model.embed_streams(ids)
        for block, buffers in zip(model.layers, self.layers):
            streams = block.mix(streams, ids, lambda x, a=block.attn, b=buffers: self._attend(a, x, b))
        return model.logits(streams)[:, 0]

    def _attend(self, attn: Attention, x: Tensor, buffers: _LayerBuffers) -> Tensor:
        """Attention for one token per row (`x` `[B, 1, hidden]`) at `self.positions`."""
        config = self.config
        pos = self.positions
        window = config.sliding_window
        cos, sin = self._once(("rope", id(attn.inv_freq)), lambda: rope_cos_sin(attn.inv_freq, pos))  # [B, R/2]
        q_residual = attn.q_norm(attn.wq_a(x))
        q = attn.wq_b(q_residual).view(self.batch, 1, attn.num_heads, config.head_dim)
        q = _rows_first(ops.rms_norm_rope(_rows_first(q), None, config.rms_norm_eps, cos, sin))
        kv = ops.rms_norm_rope(_rows_first(attn.wkv(x)), attn.kv_norm.weight, attn.kv_norm.eps, cos, sin)[0]
        self._put(buffers.kv, pos % window, self._as_stored(kv))
        indices = self._once("window", self._window_slots)
        if attn.compressor is not None:
            rate = attn.compressor.rate
            entry, index = self._compress(attn.compressor, x, buffers.compressor, attn.inv_freq)
            self._put(buffers.kv, window + index, self._as_stored(entry))
            num_entries = buffers.kv.shape[1] - window
            closed = ((pos + 1) // rate)[:, None]  # entries a query at pos may see
            if attn.indexer is not None:
                chosen = self._select(attn, x, q_residual, buffers, cos, sin, closed)
            else:
                every = torch.arange(num_entries, device=self.device)[None, :]
                chosen = torch.where(every < closed, every, -1)
            indices = torch.cat([indices, torch.where(chosen >= 0, chosen + window, -1)], dim=1)
        attend = ops.sparse_attention_fp8 if self.fp8 else ops.sparse_attention
        out = attend(q, buffers.kv, indices[:, None].to(torch.int32), attn.attn_sink, config.head_dim**-0.5)
        out = _rows_first(ops.apply_rope(_rows_first(out), cos, -sin))
        groups = out.reshape(self.batch, 1, attn.num_groups, -1)
        out = attn.wo_b(grouped_linear(attn.wo_a, groups).flatten(2))
        return out if attn.reduce is None else attn.reduce(out)

    def _once(self, key: object, make: Callable[[], T]) -> T:
        """`make()` the first time `key` is asked for in this step, the same tensors after that."""
        if key not in self._per_step:
            self._per_step[key] = make()
        return self._per_step[key]

    def _window_slots(self) -> Tensor:
        """`[B, window]`: each row's ring slots of its window's positions, newest first (-1 before 0)."""
        window = self.config.sliding_window
        behind = self.positions[:, None] - torch.arange(window, device=self.device)[None, :]
        return torch.where(behind >= 0, behind % window, -1)

    def _put(self, target: Tensor, index: Tensor, value: Tensor) -> None:
        """`target[b, index[b]] = value[b]` for the active rows; inactive rows keep what they hold."""
        if target.dtype == torch.float8_e4m3fn:  # move FP8 keys as bytes: not every backend selects float8
            target, value = target.view(torch.uint8), value.view(torch.uint8)
        rows = self._rows
        keep = self.active.view(-1, *([1] * (value.dim() - 1)))
        target[rows, index] = torch.where(keep, value.to(target.dtype), target[rows, index])

    def _compress(self, compressor: Compressor, x: Tensor, buffers: _CompressorBuffers,
                  inv_freq: Tensor) -> tuple[Tensor, Tensor]:
        """Put this token in its window's partial buffer; return the window's entry `[B, dim]` as it
        stands (exact once the window is full) and the window's index `[B]`."""
        rate, dim, pos = compressor.rate, compressor.dim, self.positions
        rows = self._rows
        index, slot, base = self._once(("window index", rate, compressor.overlap), lambda: (
            pos // rate, pos % rate, (pos // rate % 2) * rate if compressor.overlap else torch.zeros_like(pos)))
        new_gate = compressor.wgate(x)[:, 0] + compressor.ape[slot]  # float32, as the eager path has it
        self._put(buffers.kv, base + slot, compressor.wkv(x)[:, 0])
        self._put(buffers.gate, base + slot, new_gate)
        # Earlier tokens' gates were stored in the state dtype, this token's is still float32: the
        # eager path pools exactly these values, so bfloat16 decoding matches it too.
        gates = buffers.gate.float()
        gates[rows, base + slot] = new_gate.float()
        if compressor.overlap:
            halves_kv = buffers.kv.view(self.batch, 2, rate, 2 * dim)
            halves_gate = gates.view(self.batch, 2, rate, 2 * dim)
            this, previous = index % 2, (index + 1) % 2
            has_previous = (index >= 1)[:, None, None]
            previous_kv = torch.where(has_previous, halves_kv[rows, previous, :, :dim], 0)
            previous_gate = torch.where(has_previous, halves_gate[rows, previous, :, :dim], float("-inf"))
            kv = torch.cat([previous_kv, halves_kv[rows, this, :, dim:]], dim=1)
            gate = torch.cat([previous_gate, halves_gate[rows, this, :, dim:]], dim=1)
        else:
            kv, gate = buffers.kv, gates
        cos, sin = self._once(("entry rope", id(inv_freq), rate), lambda: rope_cos_sin(inv_freq, index * rate))
        entry = ops.compress_windows(kv[None], gate[None], compressor.norm.weight, compressor.norm.eps, cos, sin)
        return entry[0].to(self.dtype), index

    def _select(self, attn: Attention, x: Tensor, q_residual: Tensor, buffers: _LayerBuffers, cos: Tensor,
                sin: Tensor, closed: Tensor) -> Tensor:
        """The lightning indexer over this row's closed entries: `[B, index_topk]`, -1 padded."""
        indexer, config = attn.indexer, self.config
        entry, index = self._compress(indexer.compressor, x, buffers.indexer, attn.inv_freq)
        if self.fp8:
            key, key_scale = ops.quantize_index_keys_fp8(entry[:, None])
            self._put(buffers.index_keys, index, key[:, 0])
            self._put(buffers.index_scales, index, key_scale[:, 0])
        else:
            self._put(buffers.index_keys, index, entry)
        q = indexer.wq_b(q_residual).view(self.batch, 1, config.index_n_heads, -1)
        q = _rows_first(ops.apply_rope(_rows_first(q), cos, sin))
        weights = indexer.weights_proj(x).float() * config.index_n_heads**-0.5
        keys = buffers.index_keys
        everything = keys.shape[1] * indexer.rate  # a start at which every key counts as closed
        scores = ops.indexer_scores(q, weights, keys, everything, indexer.rate, config.index_head_dim**-0.5,
                                    buffers.index_scales)
        visible = torch.arange(keys.shape[1], device=self.device)[None, None, :] < closed[:, :, None]
        scores = torch.where(visible, scores, float("-inf"))
        return ops.topk_indices(scores, config.index_topk)[:, 0]
