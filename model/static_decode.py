"""Shape-static, batched decoding: one token for each of B sequences per step, every tensor a fixed
size, so the whole step can be captured once in a CUDA graph and replayed.

The eager path (attention.py) grows tensors with the sequence and decides on the host when a
compression window closes; a graph can do neither. Here each row carries its own position in a
device tensor, and per layer the state lives in buffers sized for `capacity` tokens:

- `kv` `[B, entries + ring + 1, head_dim]`: the compressed entries, then the sliding window as a ring
  (position p in slot entries + p % ring; ring = window, or window + 1 in a decoder whose steps feed two
  tokens per row), then a scratch slot, so attention reads one tensor and nothing is concatenated;
- each compressor's partial windows, kept as the windows it pools (for CSA two assembled windows by
  parity: the previous window's first series beside this one's second), plus a scratch row;
- the indexer's compressed keys `[B, entries + 1, index_head_dim]`.

decode_positions.py owns this layout and computes, once per step for all layers, every index the
positions decide (slots, window indices, visibility, attention indices, RoPE angles), so a layer's
bookkeeping is one launch per write (kernels/kv_write.py, or an index_put in a float decoder) and one
per compressor and token (kernels/compress_step.py) (issue 27).

Every step writes the entry of the window its position is in, complete or not; an entry only becomes
visible to queries once its window has closed, by which time the last write made it exact. Every
write depends only on (token, position), so a step replayed at the same position changes nothing:
warming up before capture and rewinding are free. Rows marked inactive write to the scratch slot or
row: nothing they hold changes. The layer code takes T tokens per row at consecutive positions (the
speculative verify step, static_verify.py, feeds two), each token's partial-window write and pooling
in order, so a window closed by one token is pooled before the next token starts the next window.

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

import torch
from torch import Tensor

from . import ops
from .attention import Attention, Compressor
from .config import CSA, FLOAT_KV, FP8_KV, SLIDING
from .decode_positions import DecodePositions, Rope, WindowStep
from .fused_inputs import attention_inputs
from .offload import expert_caches, fewest_slots, has_offload
from .parallel import world_of
from .piecewise_graph import PiecewiseGraph
from .quantized_linear import grouped_linear
from .state import CompressorState, DecodeState, LayerState, check_kv_format
from .v4 import Block, Transformer

PAGE_TOKENS = 4096  # default: capacity grows by this many tokens (a multiple of every compression rate)


class StaticDecodeError(ValueError):
    """A model or state the static path cannot run (e.g. Engram layers), or a row out of range."""


@dataclass(slots=True)
class _CompressorBuffers:
    """A compressor's partial windows `[B + 1, L, dim]` (layout: decode_positions.py; the last row is
    scratch)."""

    kv: Tensor
    gate: Tensor


@dataclass(slots=True)
class _LayerBuffers:
    kv: Tensor  # [B, entries + ring + 1, head_dim], or packed FP8 rows [..., row bytes] uint8
    entries: int = 0  # compressed entries per row (0: a sliding layer)
    table: int = 0  # the layer's RoPE frequency table (DecodePositions.tables)
    compressor: _CompressorBuffers | None = None
    index_keys: Tensor | None = None  # [B, entries + 1, index_head_dim] (float8_e4m3fn in an FP8 decoder)
    indexer: _CompressorBuffers | None = None
    index_scales: Tensor | None = None  # [B, entries + 1] float32: the FP8 keys' scales


def _rows_first(x: Tensor, batch: int | None = None) -> Tensor:
    """`[B, T, ...]` -> `[1, B * T, ...]` (or back, given `batch`): the rope/compress kernels take one
    position per sequence slot, so B rows of T tokens at their own positions run as one sequence."""
    if batch is None:
        return x.reshape(1, -1, *x.shape[2:])
    return x.reshape(batch, -1, *x.shape[2:])


class StaticDecoder:
    """B decode rows over `model`, each at its own position; `step` is graph-captured on CUDA.

    Rows are filled from prefilled eager states (`load_row`) and written back (`store_row`); their
    `kv_format` must be the decoder's. `max_step_tokens` (tokens a step may feed per row) sizes the
    ring; `mtp_layers` of the model's MTP blocks get buffers after the main layers' (static_verify.py).
    """

    def __init__(self, model: Transformer, batch: int, capacity: int, use_graph: bool | None = None,
                 page_tokens: int = PAGE_TOKENS, kv_format: str = FLOAT_KV, *, max_step_tokens: int = 1,
                 mtp_layers: int = 0) -> None:
        config = model.config
        check_kv_format(config, kv_format)
        self.kv_format, self.fp8 = kv_format, kv_format == FP8_KV
        if page_tokens % max(config.compress_rates.values(), default=1):
            raise StaticDecodeError(f"page_tokens must be a multiple of every compression rate, got {page_tokens}")
        self.page_tokens = page_tokens
        if config.engram is not None:
            raise StaticDecodeError("static decoding does not run Engram layers yet; use the eager path")
        self.model, self.config, self.batch = model, config, batch
        self.ring = config.sliding_window + max_step_tokens - 1
        self._blocks = list(model.layers) + list(model.mtp[:mtp_layers])  # each has a _LayerBuffers
        self.device, self.dtype = model.embed.weight.device, model.embed.weight.dtype
        # Offloaded experts are fetched after a host sync per layer: the step is then a piecewise graph,
        # which needs a cache slot for every (row, expert) pair; with fewer the step runs eagerly.
        self.piecewise = has_offload(model)
        slots = fewest_slots(model)
        fits = slots is None or slots >= batch * config.num_experts_per_tok
        if use_graph and not fits:
            raise StaticDecodeError(f"a graphed step of {batch} rows may need {batch * config.num_experts_per_tok} "
                                    f"experts per layer; the offload cache holds {slots}")
        # A model sharded over ranks (parallel.py) runs the same sync-free step (moe.py gives other ranks'
        # pairs NO_EXPERT) but stays eager unless asked: NCCL collectives in a graph are untried (no GPUs here).
        fits = fits and world_of(model) == 1
        self.use_graph = self.device.type == "cuda" and fits if use_graph is None else use_graph
        self.capacity = 0
        self.layers: list[_LayerBuffers] = []
        self.token_ids = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.active = torch.ones(batch, dtype=torch.bool, device=self.device)
        self.lengths = [0] * batch  # tokens each row holds (host copy of positions for bookkeeping)
        self._rows = torch.arange(batch, device=self.device)
        self._tables, self._table_of = _rope_tables(self._blocks)
        # each layer's plain projections of its input in one GEMM (fused_inputs.py; shared by decoders)
        self._inputs = {id(block.attn): attention_inputs(block.attn) for block in self._blocks}
        # What every layer of one step derives from the positions alone, computed once per step
        self._positions: DecodePositions | None = None
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
        self.layers = [self._new_layer(layer, capacity) for layer in range(len(self._blocks))]
        ring = self.ring
        for new, held in zip(self.layers, old):
            new.kv[:, : held.entries].copy_(held.kv[:, : held.entries])
            new.kv[:, new.entries : new.entries + ring].copy_(held.kv[:, held.entries : held.entries + ring])
            for name in ("compressor", "indexer"):
                if getattr(held, name) is not None:
                    getattr(new, name).kv.copy_(getattr(held, name).kv)
                    getattr(new, name).gate.copy_(getattr(held, name).gate)
            if held.index_keys is not None:
                new.index_keys[:, : held.entries].copy_(held.index_keys[:, : held.entries])
            if held.index_scales is not None:
                new.index_scales[:, : held.entries].copy_(held.index_scales[:, : held.entries])
        self.capacity = capacity
        self._positions = self._decode_positions(1)
        self._graph = None  # buffers moved: capture again

    def _decode_positions(self, tokens: int) -> DecodePositions:
        """The per-step indices of a step feeding `tokens` per row (allocated anew when buffers grow)."""
        return DecodePositions(self.config, self.batch, self.capacity, self._tables, self._table_of, self.device,
                               tokens, self.ring)

    def _new_layer(self, layer: int, capacity: int) -> _LayerBuffers:
        config, batch, ring = self.config, self.batch, self.ring
        zeros = lambda *shape, kind=self.dtype: torch.zeros(*shape, dtype=kind, device=self.device)  # noqa: E731
        row = (ops.FP8_KV_ROW_BYTES, torch.uint8) if self.fp8 else (config.head_dim, self.dtype)
        attention = config.attention_type(layer)
        table = self._table_of[layer]
        if attention == SLIDING:
            return _LayerBuffers(zeros(batch, ring + 1, row[0], kind=row[1]), table=table)
        rate = config.compress_rates[attention]
        overlap = attention == CSA
        entries = capacity // rate
        buffers = _LayerBuffers(zeros(batch, entries + ring + 1, row[0], kind=row[1]), entries, table,
                                self._partial_buffers(rate, config.head_dim, overlap))
        if overlap:
            key_dtype = torch.float8_e4m3fn if self.fp8 else self.dtype
            buffers.index_keys = zeros(batch, entries + 1, config.index_head_dim, kind=key_dtype)
            buffers.index_scales = zeros(batch, entries + 1, kind=torch.float32) if self.fp8 else None
            buffers.indexer = self._partial_buffers(rate, config.index_head_dim, overlap)
        return buffers

    def _partial_buffers(self, rate: int, dim: int, overlap: bool) -> _CompressorBuffers:
        """Empty partial windows; with overlap, window 0's previous half masked (gate -inf) as the
        eager path masks a first window (load_row sets it again for a row it loads)."""
        slots = 4 * rate if overlap else rate
        buffers = _CompressorBuffers(*(torch.zeros(self.batch + 1, slots, dim, dtype=self.dtype, device=self.device)
                                       for _ in range(2)))
        if overlap:
            buffers.gate[:, :rate] = float("-inf")
        return buffers

    def _as_stored(self, kv: Tensor) -> Tensor:
        """K=V rows as `kv` holds them: packed FP8 rows in an FP8 decoder."""
        return ops.quantize_kv_fp8(kv) if self.fp8 else kv

    def _write_kv(self, kv: Tensor, slots: Tensor, rows: Tensor) -> None:
        """kv[b, slots[b, t]] = rows[b, t] as stored (FP8: quantised and written in one kernel)."""
        if self.fp8:
            ops.write_kv_fp8(kv, slots, rows)
        else:
            kv[self._rows[:, None], slots] = rows

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
        for layer, (buffers, held) in enumerate(zip(self.layers, state.layers)):
            self._load_layer(row, layer, buffers, held, n)
        self.lengths[row] = n
        self.positions[row] = n

    def _load_layer(self, row: int, layer: int, buffers: _LayerBuffers, held: LayerState, n: int) -> None:
        """`held` (a layer's eager state after `n` tokens) into `row` of `buffers`."""
        window = self.config.sliding_window
        kept = held.num_window
        slots = buffers.entries + torch.arange(n - kept, n, device=self.device) % self.ring
        buffers.kv[row, slots] = self._as_stored(held.window[0, window - kept :])
        if held.compressor is not None:
            rate = self.config.compress_rate(layer)
            entries = held.compressor.num_entries
            buffers.kv[row, :entries] = held.compressor.entries[0, :entries]
            self._load_partial(row, buffers.compressor, held.compressor, rate, n)
        if held.indexer is not None:
            entries = held.indexer.num_entries
            buffers.index_keys[row, :entries] = held.indexer.entries[0, :entries]
            if held.indexer.entry_scale is not None:
                buffers.index_scales[row, :entries] = held.indexer.entry_scale[0, :entries]
            self._load_partial(row, buffers.indexer, held.indexer, rate, n)

    def store_row(self, row: int, state: DecodeState) -> None:
        """Write `row` back into a single-sequence eager state (which must have room for it)."""
        n = self.lengths[row]
        if state.batch != 1 or state.max_tokens < n:
            raise StaticDecodeError(f"the state must be single-sequence with room for {n} tokens")
        self._check_format(state)
        for layer, (buffers, held) in enumerate(zip(self.layers, state.layers)):
            self._store_layer(row, layer, buffers, held, n)
        state.num_tokens = n
        state.mtp_pending = None  # the draft head did not follow these tokens

    def _store_layer(self, row: int, layer: int, buffers: _LayerBuffers, held: LayerState, n: int) -> None:
        """The first `n` tokens of `row` in `buffers` into `held` (a layer's eager state)."""
        window = self.config.sliding_window
        kept = min(window, n)
        slots = buffers.entries + torch.arange(n - kept, n, device=self.device) % self.ring
        held.window[0, window - kept :] = self._as_read(buffers.kv[row, slots])
        held.num_window = kept
        if held.compressor is not None:
            rate = self.config.compress_rate(layer)
            entries = n // rate
            held.compressor.entries[0, :entries] = buffers.kv[row, :entries]
            self._store_partial(row, buffers.compressor, held.compressor, rate, n)
        if held.indexer is not None:
            held.indexer.entries[0, : n // rate] = buffers.index_keys[row, : n // rate]
            if held.indexer.entry_scale is not None:
                held.indexer.entry_scale[0, : n // rate] = buffers.index_scales[row, : n // rate]
            self._store_partial(row, buffers.indexer, held.indexer, rate, n)

    def _check_row(self, row: int, state: DecodeState) -> None:
        if not 0 <= row < self.batch:
            raise StaticDecodeError(f"row {row} is out of range [0, {self.batch})")
        if state.batch != 1:
            raise StaticDecodeError("load_row takes a single-sequence state")
        self._check_format(state)

    def _check_format(self, state: DecodeState) -> None:
        if state.kv_format != self.kv_format:
            raise StaticDecodeError(f"a {state.kv_format!r} state cannot move into a {self.kv_format!r} decoder")

    @staticmethod
    def _partial_slots(rate: int, n: int, overlap: bool) -> tuple[slice, slice, slice | None]:
        """Where a row at `n` tokens keeps its partial window (decode_positions.py's layout): slots of the
        filled tokens' first series, of their second series (the same without overlap) and of the
        previous window's first series (None without overlap)."""
        window_index, filled = divmod(n, rate)
        if not overlap:
            return slice(0, filled), slice(0, filled), None
        this, following = (window_index % 2) * 2 * rate, ((window_index + 1) % 2) * 2 * rate
        return slice(following, following + filled), slice(this + rate, this + rate + filled), slice(this, this + rate)

    def _load_partial(self, row: int, buffers: _CompressorBuffers, held: CompressorState, rate: int, n: int) -> None:
        filled = n % rate
        overlap = held.overlap_kv is not None
        first, second, previous = self._partial_slots(rate, n, overlap)
        dim = buffers.kv.shape[-1]
        for target, partial, carried, masked in ((buffers.kv, held.partial_kv, held.overlap_kv, 0.0),
                                                 (buffers.gate, held.partial_gate, held.overlap_gate, float("-inf"))):
            if overlap:
                target[row, first] = partial[0, :filled, :dim]
                target[row, second] = partial[0, :filled, dim:]
                if held.has_overlap:
                    target[row, previous] = carried[0]
                else:  # a first window: nothing before it (the eager path masks it the same way)
                    target[row, previous] = masked
            else:
                target[row, first] = partial[0, :filled]

    def _store_partial(self, row: int, buffers: _CompressorBuffers, held: CompressorState, rate: int, n: int) -> None:
        window_index, filled = divmod(n, rate)
        overlap = held.overlap_kv is not None
        first, second, previous = self._partial_slots(rate, n, overlap)
        dim = buffers.kv.shape[-1]
        for source, partial, carried in ((buffers.kv, held.partial_kv, held.overlap_kv),
                                         (buffers.gate, held.partial_gate, held.overlap_gate)):
            if overlap:
                partial[0, :filled, :dim] = source[row, first]
                partial[0, :filled, dim:] = source[row, second]
                if window_index >= 1:
                    carried[0] = source[row, previous]
            else:
                partial[0, :filled] = source[row, first]
        held.num_entries, held.num_partial = window_index, filled
        if overlap:
            held.has_overlap = window_index >= 1

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
        self._graph, self._logits = self._capture(self._forward)

    def _capture(self, forward: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph | PiecewiseGraph, Tensor]:
        """`forward` run twice on a side stream, then captured: the graph and its output tensor."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.piecewise:
            graph = PiecewiseGraph(self.device, expert_caches(self.model))
            return graph, graph.capture(forward)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward()
        return graph, out

    def _forward(self) -> Tensor:
        self._positions.update(self.positions, self.active)  # type: ignore[union-attr]
        return self.model.logits(self._main(self.token_ids[:, None], self._positions))[:, 0]

    def _main(self, ids: Tensor, steps: DecodePositions) -> Tensor:
        """The main layers over `ids` `[B, T]` at the positions `steps` was updated for: the final
        streams `[B, T, hc, hidden]`."""
        model = self.model
        streams = model.embed_streams(ids)
        for block, buffers in zip(model.layers, self.layers):
            streams = block.mix(streams, ids, lambda x, a=block.attn, b=buffers: self._attend(a, x, b, steps))
        return streams

    def _attend(self, attn: Attention, x: Tensor, buffers: _LayerBuffers, steps: DecodePositions) -> Tensor:
        """Attention for T tokens per row (`x` `[B, T, hidden]`) at the positions of `steps`: the
        step's ring writes first (the ring holds window + T - 1), then each query its own window."""
        config = self.config
        batch, tokens = x.shape[:2]
        rope = steps.rope[buffers.table]
        fused = self._inputs[id(attn)]
        outs = fused(x) if fused is not None else {}
        project = lambda name, linear: outs[name] if name in outs else linear(x)  # noqa: E731
        q_residual = attn.q_norm(project("wq_a", attn.wq_a))
        q = attn.wq_b(q_residual).view(batch, tokens, attn.num_heads, config.head_dim)
        q = _rows_first(ops.rms_norm_rope(_rows_first(q), None, config.rms_norm_eps, rope.cos, rope.sin), batch)
        kv = ops.rms_norm_rope(_rows_first(project("wkv", attn.wkv)), attn.kv_norm.weight, attn.kv_norm.eps, rope.cos,
                               rope.sin)
        self._write_kv(buffers.kv, steps.ring_slot[buffers.entries], _rows_first(kv, batch))
        if attn.compressor is None:
            indices = steps.window_indices[buffers.entries]
        else:
            step = steps.windows[attn.compressor.rate]
            compressor = attn.compressor
            entry = self._compress(compressor, project("kv", compressor.wkv), project("gate", compressor.wgate),
                                   buffers.compressor, step, buffers.table)
            self._write_kv(buffers.kv, step.entry_slot, entry)
            if attn.indexer is not None:
                indices = steps.csa_indices
                indexer = attn.indexer
                keys = self._compress(indexer.compressor, project("index_kv", indexer.compressor.wkv),
                                      project("index_gate", indexer.compressor.wgate), buffers.indexer, step,
                                      buffers.table)
                weights = project("index_weights", indexer.weights_proj)
                indices[:, :, config.sliding_window :] = self._select(attn, keys, weights, q_residual, buffers, rope,
                                                                      step)
            else:
                indices = step.attention
        attend = ops.sparse_attention_fp8 if self.fp8 else ops.sparse_attention
        out = attend(q, buffers.kv, indices, attn.attn_sink, config.head_dim**-0.5)
        out = _rows_first(ops.apply_rope(_rows_first(out), rope.cos, rope.neg_sin), batch)
        groups = out.reshape(batch, tokens, attn.num_groups, -1)
        out = attn.wo_b(grouped_linear(attn.wo_a, groups).flatten(2))
        return out if attn.reduce is None else attn.reduce(out)

    def _compress(self, compressor: Compressor, new_kv: Tensor, new_gate: Tensor, buffers: _CompressorBuffers,
                  step: WindowStep, table: int) -> Tensor:
        """Put each token (its projections `new_kv`, `new_gate` `[B, T, width]`) in its partial windows;
        return its window's entry `[B, T, dim]` as it stands (exact once the window is full). Each
        token's write and pooling in order (ops.compress_step): a token may start the window whose half
        the previous one pools."""
        tokens = new_kv.shape[1]
        cos, sin = step.rope[table]
        rows = step.window_rows
        entries = [ops.compress_step(new_kv[:, t], new_gate[:, t], compressor.ape, step.ape_slot[:, t], buffers.kv,
                                     buffers.gate, step.write_rows[:, 0], step.write_slots[:, t],
                                     None if rows is None else rows[:, t], compressor.norm.weight,
                                     compressor.norm.eps, cos[:, t], sin[:, t]) for t in range(tokens)]
        return torch.stack(entries, dim=1) if tokens > 1 else entries[0][:, None]

    def _select(self, attn: Attention, entry: Tensor, weights: Tensor, q_residual: Tensor, buffers: _LayerBuffers,
                rope: Rope, step: WindowStep) -> Tensor:
        """The lightning indexer over each query's closed entries, its key `entry` `[B, T, index_head_dim]`
        just compressed, `weights` its weights_proj output: `[B, T, index_topk]` int32, -1 padded."""
        indexer, config, rows, entries = attn.indexer, self.config, self._rows[:, None], buffers.entries
        batch, tokens = entry.shape[:2]
        if self.fp8:
            ops.write_index_keys_fp8(buffers.index_keys, buffers.index_scales, step.key_slot, entry)
        else:
            buffers.index_keys[rows, step.key_slot] = entry
        q = indexer.wq_b(q_residual).view(batch, tokens, config.index_n_heads, -1)
        q = _rows_first(ops.apply_rope(_rows_first(q), rope.cos, rope.sin), batch)
        weights = weights.float() * config.index_n_heads**-0.5
        keys = buffers.index_keys[:, :entries]
        scales = buffers.index_scales[:, :entries] if self.fp8 else None
        # a start at which every key counts as closed; each query's own visibility is the mask below
        scores = ops.indexer_scores(q, weights, keys, entries * indexer.rate, indexer.rate,
                                    config.index_head_dim**-0.5, scales)
        scores = torch.where(step.visible, scores, float("-inf"))
        return ops.topk_indices(scores, config.index_topk)


def _rope_tables(blocks: list[Block]) -> tuple[list[Tensor], list[int]]:
    """The distinct RoPE frequency tables of `blocks` (by value) and each block's table, so layers
    sharing a table share its angles in a step."""
    tables: list[Tensor] = []
    table_of = []
    for block in blocks:
        freqs = block.attn.inv_freq
        same = [i for i, table in enumerate(tables) if table.shape == freqs.shape and torch.equal(table, freqs)]
        if not same:
            tables.append(freqs)
        table_of.append(same[0] if same else len(tables) - 1)
    return tables, table_of

