"""Shape-static, batched decoding: one token for each of B sequences per step, every tensor a fixed
size, so the whole step can be captured once in a CUDA graph and replayed.

The eager path (attention.py) feeds chunks of any length and decides on the host when a compression
window closes; a graph can do neither. Here each row carries its own position in a device tensor. The
rows are the rows of a `DecodeState` (state.py: the one layout every path shares, sized for `capacity`
tokens): `kv` `[B, entries + ring + 1, row]` holds the compressed entries, the sliding window as a ring
and a scratch slot, so attention reads one tensor and nothing is concatenated; each compressor keeps
its partial windows as the windows it pools, plus a scratch row; CSA keeps the indexer's keys.

decode_positions.py computes the indices of this layout and computes, once per step for all layers, every index the
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

Capacity grows by whole pages (the state reallocated and copied, graphs captured again), never by
concatenating per step. A decoder made over a single-sequence state (`state=`) steps that state
itself: prefill, decoding, marks, the prefix-state store and the parallel sync all see one set of
tensors, with no copy around an answer. A batched decoder's rows are its own state's; `load_row` and
`store_row` copy a sequence's rows in and out (plain copies: the layout is the same).

With kv_format "fp8" (the engine's, which its states share) `kv` holds DeepSeek's packed FP8 rows, ring
slots included (each token's kv quantised as it is written, as the eager path quantises the window as
it reads it), and the indexer keys are e4m3 with a float32 scale each; quantising is device work only,
so the step still captures in one graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import ops
from .attention import Attention, Compressor
from .config import FLOAT_KV, FP8_KV
from .decode_positions import DecodePositions, Rope, WindowStep
from .fused_inputs import FusedInputs, attention_inputs, query_inputs, shared_expert_pair
from .moe import MoE
from .offload import expert_caches, fewest_slots, has_offload
from .parallel import world_of
from .piecewise_graph import PiecewiseGraph
from .quantized_linear import grouped_linear
from .state import (MAX_STEP_TOKENS, CompressorState, DecodeState, LayerState, check_kv_format, copy_rows, grow_state,
                    new_decode_state, ring_size)
from .v4 import Block, Transformer

PAGE_TOKENS = 4096  # default: capacity grows by this many tokens (a multiple of every compression rate)


class StaticDecodeError(ValueError):
    """A model or state the static path cannot run (e.g. Engram layers), or a row out of range."""


def _rows_first(x: Tensor, batch: int | None = None) -> Tensor:
    """`[B, T, ...]` -> `[1, B * T, ...]` (or back, given `batch`): the rope/compress kernels take one
    position per sequence slot, so B rows of T tokens at their own positions run as one sequence."""
    if batch is None:
        return x.reshape(1, -1, *x.shape[2:])
    return x.reshape(batch, -1, *x.shape[2:])


class StaticDecoder:
    """B decode rows over `model`, each at its own position; `step` is graph-captured on CUDA.

    The rows are those of `self.state`: `state`, a single-sequence state the decoder then steps in
    place (batch 1, its `kv_format`), or one the decoder makes; `load_row` sets a row from a prefilled
    state and `store_row` writes it back (no copy for the decoder's own `state`). `max_step_tokens`
    (tokens a step may feed per row, at most state.MAX_STEP_TOKENS) is checked against the ring;
    `mtp_layers` of the model's MTP blocks follow the main layers' (static_verify.py).
    """

    def __init__(self, model: Transformer, batch: int, capacity: int, use_graph: bool | None = None,
                 page_tokens: int = PAGE_TOKENS, kv_format: str = FLOAT_KV, *, max_step_tokens: int = 1,
                 mtp_layers: int = 0, state: DecodeState | None = None) -> None:
        config = model.config
        if state is not None:
            kv_format, batch = state.kv_format, 1
            if state.batch != 1 or len(state.mtp_layers) < mtp_layers:
                raise StaticDecodeError(f"a decoder over a state needs a single-sequence state with {mtp_layers} "
                                        "MTP layers")
        check_kv_format(config, kv_format)
        self.kv_format, self.fp8 = kv_format, kv_format == FP8_KV
        if page_tokens % max(config.compress_rates.values(), default=1):
            raise StaticDecodeError(f"page_tokens must be a multiple of every compression rate, got {page_tokens}")
        if max_step_tokens > MAX_STEP_TOKENS:
            raise StaticDecodeError(f"a step feeds at most {MAX_STEP_TOKENS} tokens per row, not {max_step_tokens}")
        self.page_tokens = page_tokens
        if config.engram is not None:
            raise StaticDecodeError("static decoding does not run Engram layers yet; use the eager path")
        self.model, self.config, self.batch = model, config, batch
        self.ring = ring_size(config)
        self._mtp = mtp_layers
        self._blocks = list(model.layers) + list(model.mtp[:mtp_layers])  # each has a LayerState
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
        self.state = state if state is not None else new_decode_state(
            config, 0, "", self.dtype, self.device, batch, mtp_layers, kv_format)
        self.token_ids = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.active = torch.ones(batch, dtype=torch.bool, device=self.device)
        self.lengths = [0] * batch  # tokens each row holds (host copy of positions for bookkeeping)
        self._rows = torch.arange(batch, device=self.device)
        self._tables, self._table_of = _rope_tables(self._blocks)
        # each layer's projections of one input in one GEMM per kind (fused_inputs.py; shared by decoders)
        self._inputs = {id(block.attn): attention_inputs(block.attn) for block in self._blocks}
        self._query_inputs = {id(block.attn): query_inputs(block.attn) for block in self._blocks}
        for block in self._blocks:  # the shared expert's w1 and w3 as one FP8 GEMV at decode
            if isinstance(block.ffn, MoE):
                block.ffn.shared_experts.pair = shared_expert_pair(block.ffn.shared_experts)
        # What every layer of one step derives from the positions alone, computed once per step
        self._positions: DecodePositions | None = None
        self._graph: torch.cuda.CUDAGraph | PiecewiseGraph | None = None
        self._logits: Tensor | None = None
        self.capacity = -1
        self.grow(max(capacity, self.state.max_tokens))

    @property
    def layers(self) -> list[LayerState]:
        """The state's layers this decoder steps: the main layers, then its MTP layers."""
        return self.state.layers + self.state.mtp_layers[: self._mtp]

    # ------------------------------------------------------------------ buffers

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` tokens per row (growing the state by whole pages), keeping what is held."""
        if capacity <= self.capacity:
            return
        if capacity > self.state.max_tokens:
            grow_state(self.state, self.config, -(-capacity // self.page_tokens) * self.page_tokens, self.dtype)
        self.capacity = self.state.max_tokens
        self._positions = self._decode_positions(1)
        self._graph = None  # buffers moved: capture again

    def _decode_positions(self, tokens: int) -> DecodePositions:
        """The per-step indices of a step feeding `tokens` per row (allocated anew when buffers grow)."""
        return DecodePositions(self.config, self.batch, self.capacity, self._tables, self._table_of, self.device,
                               tokens, self.ring)

    def _write_kv(self, kv: Tensor, slots: Tensor, rows: Tensor) -> None:
        """kv[b, slots[b, t]] = rows[b, t] as stored (FP8: quantised and written in one kernel)."""
        if self.fp8:
            ops.write_kv_fp8(kv, slots, rows)
        else:
            kv[self._rows[:, None], slots] = rows

    # ------------------------------------------------------------------ moving states in and out

    def load_row(self, row: int, state: DecodeState) -> None:
        """Set `row` from a prefilled single-sequence state (its position = its token count): nothing
        to copy for the decoder's own state, else its rows copied in."""
        self._check_row(row, state)
        n = state.num_tokens
        self.grow(n + 1)
        if state is not self.state:
            copy_rows(state, 0, self.state, row, n, state.mtp_tokens)
        self.lengths[row] = n
        self.positions[row] = n

    def store_row(self, row: int, state: DecodeState) -> None:
        """Leave `row`'s tokens in a single-sequence state (which must have room for them): its count
        for the decoder's own state, else its rows copied out."""
        n = self.lengths[row]
        if state.batch != 1 or state.max_tokens < n:
            raise StaticDecodeError(f"the state must be single-sequence with room for {n} tokens")
        self._check_format(state)
        if state is not self.state:  # the MTP layers (a draft decoder's) one position behind
            copy_rows(self.state, row, state, 0, n, max(n - 1, 0))
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
        for index, (block, buffers) in enumerate(zip(model.layers, self.layers)):
            streams = block.mix(streams, ids, lambda x, a=block.attn, b=buffers, i=index: self._attend(a, x, b, steps, i))
        return streams

    def _attend(self, attn: Attention, x: Tensor, buffers: LayerState, steps: DecodePositions, layer: int) -> Tensor:
        """Attention of layer `layer` (the decoder's numbering) for T tokens per row (`x` `[B, T, hidden]`)
        at the positions of `steps`: the step's ring writes first (the ring holds window + T - 1), then
        each query its own window."""
        config = self.config
        batch, tokens = x.shape[:2]
        table = self._table_of[layer]
        rope = steps.rope[table]
        project = _projector(x, self._inputs[id(attn)])
        q_residual = attn.q_norm(project("wq_a", attn.wq_a))
        query = self._query_inputs[id(attn)]
        project_q = _projector(q_residual, [query] if query is not None else [])
        q = project_q("wq_b", attn.wq_b).view(batch, tokens, attn.num_heads, config.head_dim)
        q = _rows_first(ops.rms_norm_rope(_rows_first(q), None, config.rms_norm_eps, rope.cos, rope.sin), batch)
        kv = ops.rms_norm_rope(_rows_first(project("wkv", attn.wkv)), attn.kv_norm.weight, attn.kv_norm.eps, rope.cos,
                               rope.sin)
        self._write_kv(buffers.kv, steps.ring_slot[buffers.entries], _rows_first(kv, batch))
        indices, prefix = steps.window_indices[buffers.entries], None
        if attn.compressor is not None:
            step = steps.windows[attn.compressor.rate]
            compressor = attn.compressor
            entry = self._compress(compressor, project("kv", compressor.wkv), project("gate", compressor.wgate),
                                   buffers.compressor, step, table)
            self._write_kv(buffers.kv, step.entry_slot, entry)
            if attn.indexer is not None:
                indices = steps.csa_indices
                indexer = attn.indexer
                keys = self._compress(indexer.compressor, project("index_kv", indexer.compressor.wkv),
                                      project("index_gate", indexer.compressor.wgate), buffers.indexer, step,
                                      table)
                weights = project("index_weights", indexer.weights_proj)
                self._select(attn, keys, weights, project_q("index_wq_b", indexer.wq_b), buffers, rope, step,
                             indices[:, :, config.sliding_window :])
            else:  # HCA: the window's indices, then its closed entries as a run
                prefix = ops.KeyPrefix(0, buffers.entries, step.closed)
        attend = ops.sparse_attention_fp8 if self.fp8 else ops.sparse_attention
        out = attend(q, buffers.kv, indices, attn.attn_sink, config.head_dim**-0.5, prefix)
        out = _rows_first(ops.apply_rope(_rows_first(out), rope.cos, rope.neg_sin), batch)
        groups = out.reshape(batch, tokens, attn.num_groups, -1)
        out = attn.wo_b(grouped_linear(attn.wo_a, groups).flatten(2))
        return out if attn.reduce is None else attn.reduce(out)

    def _compress(self, compressor: Compressor, new_kv: Tensor, new_gate: Tensor, buffers: CompressorState,
                  step: WindowStep, table: int) -> Tensor:
        """Put each token (its projections `new_kv`, `new_gate` `[B, T, width]`) in its partial windows;
        return its window's entry `[B, T, dim]` as it stands (exact once the window is full). Each
        token's write and pooling in order (ops.compress_step): a token may start the window whose half
        the previous one pools."""
        tokens = new_kv.shape[1]
        cos, sin = step.rope[table]
        rows = step.window_rows
        entries = [ops.compress_step(new_kv[:, t], new_gate[:, t], compressor.ape, step.ape_slot[:, t],
                                     buffers.partial_kv, buffers.partial_gate, step.write_rows[:, 0], step.write_slots[:, t],
                                     None if rows is None else rows[:, t], compressor.norm.weight,
                                     compressor.norm.eps, cos[:, t], sin[:, t]) for t in range(tokens)]
        return torch.stack(entries, dim=1) if tokens > 1 else entries[0][:, None]

    def _select(self, attn: Attention, entry: Tensor, weights: Tensor, q: Tensor, buffers: LayerState, rope: Rope,
                step: WindowStep, out: Tensor) -> None:
        """The lightning indexer over each query's closed entries, its key `entry` `[B, T, index_head_dim]`
        just compressed, `weights` its weights_proj output, `q` its wq_b output, into `out`
        `[B, T, index_topk]` int32 (the index list's top-k part), -1 padded."""
        indexer, config, rows, entries = attn.indexer, self.config, self._rows[:, None], buffers.entries
        batch, tokens = entry.shape[:2]
        if self.fp8:
            ops.write_index_keys_fp8(buffers.index_keys, buffers.index_scales, step.key_slot, entry)
        else:
            buffers.index_keys[rows, step.key_slot] = entry
        q = q.view(batch, tokens, config.index_n_heads, -1)
        q = _rows_first(ops.apply_rope(_rows_first(q), rope.cos, rope.sin), batch)
        keys, scale = buffers.index_keys[:, :entries], config.index_head_dim**-0.5
        # each query sees its row's closed entries (step.closed), not those of a shared start; the kernel
        # takes the weights as weights_proj gives them (float32 times n_heads**-0.5 inside)
        common = dict(weight_scale=config.index_n_heads**-0.5, out=out)
        if self.fp8:
            ops.indexer_topk_fp8(q, weights, keys, buffers.index_scales[:, :entries], 0, indexer.rate, scale,
                                 config.index_topk, step.closed, **common)
        else:
            ops.indexer_topk(q, weights, keys, 0, indexer.rate, scale, config.index_topk, step.closed, **common)


def _projector(x: Tensor, stacks: list[FusedInputs]) -> Callable[[str, nn.Module], Tensor]:
    """`project(name, linear)`: the named output of one of the stacked GEMMs over `x` (run once, here),
    else `linear(x)` for a projection no stack holds."""
    outs = {name: out for fused in stacks for name, out in fused(x).items()}
    return lambda name, linear: outs[name] if name in outs else linear(x)


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

