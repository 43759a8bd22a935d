"""V4 attention: shared K=V MQA over a sliding window, plus compressed entries (CSA with the lightning
indexer's top-k, or HCA over all of them), learnable sinks, inverse RoPE and a grouped output projection.

Every call continues a LayerState from position `start`, so a whole prefill, any chunking of it, and
token-by-token decoding run the same code and give the same result. A state of kv_format "fp8" keeps
entries and indexer keys in DeepSeek's FP8 layout, and attention reads the window's keys FP8-rounded
too, as DeepSeek's inference does: every key a query sees went through the same rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .config import CSA, FP8_KV, SLIDING, V4Config
from .layers import RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq
from .quantized_linear import grouped_linear
from .state import CompressorState, LayerState, read_partial, write_partial


class StateOverflowError(ValueError):
    """More tokens than the decode state was allocated for."""


class Compressor(nn.Module):
    """Pools each window of `rate` tokens into one entry: per-channel softmax over `wgate x + ape`
    of `wkv x`, RMSNorm, RoPE at the window's first position. With `overlap` (CSA) each token feeds
    two series, and entry w pools window w-1's first series with window w's second."""

    def __init__(self, config: V4Config, rate: int, dim: int, overlap: bool) -> None:
        super().__init__()
        self.rate, self.dim, self.overlap = rate, dim, overlap
        width = 2 * dim if overlap else dim
        self.wkv = nn.Linear(config.hidden_size, width, bias=False)
        self.wgate = nn.Linear(config.hidden_size, width, bias=False)
        self.ape = nn.Parameter(torch.zeros(rate, width, dtype=torch.float32))  # float32 in any model dtype, as loaded
        self.norm = RMSNorm(dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, start: int, state: CompressorState, inv_freq: torch.Tensor) -> torch.Tensor:
        """Feed `x` (`[B, S, hidden]`, positions start..start+S-1); returns all entries so far `[B, T, dim]`
        (as stored: packed FP8 rows or e4m3 keys in an FP8 state)."""
        rate = self.rate
        batch, seq_len = x.shape[:2]
        slots = (torch.arange(seq_len, device=x.device) + start) % rate  # windows start at multiples of rate
        held_kv, held_gate, carried = read_partial(state, start, batch)
        kv = torch.cat([held_kv, self.wkv(x)], dim=1)
        gate = torch.cat([held_gate, self.wgate(x) + self.ape[slots]], dim=1)
        windows = kv.shape[1] // rate
        usable = windows * rate
        first = start // rate
        if windows:
            if first + windows > state.entries.shape[1]:
                raise StateOverflowError(f"the decode state holds {state.entries.shape[1] * rate} tokens; "
                                         "allocate it with a larger max_tokens")
            chunk_kv = kv[:, :usable].unflatten(1, (windows, rate))
            chunk_gate = gate[:, :usable].unflatten(1, (windows, rate))
            if self.overlap:
                chunk_kv, chunk_gate, carried = self._overlap(chunk_kv, chunk_gate, carried)
            cos, sin = rope_cos_sin(inv_freq, (torch.arange(windows, device=x.device) + first) * rate)
            pooled = ops.compress_windows(chunk_kv, chunk_gate, self.norm.weight, self.norm.eps, cos, sin)
            store_entries(state, first, pooled.to(state.partial_kv.dtype))
        write_partial(state, start + seq_len, kv[:, usable:], gate[:, usable:], carried if windows else None)
        return state.entries[:batch, : first + windows]

    def _overlap(self, kv: torch.Tensor, gate: torch.Tensor, carried: tuple[torch.Tensor, torch.Tensor] | None
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Slots [0, rate): the previous window's first series (`carried` for the first window; masked
        out before any); slots [rate, 2 rate): this window's second series. Also returns the last
        window's first series, which the next window pools."""
        first_kv, second_kv = kv[..., : self.dim], kv[..., self.dim :]
        first_gate, second_gate = gate[..., : self.dim], gate[..., self.dim :]
        if carried is not None:
            carried_kv, carried_gate = carried[0][:, None], carried[1][:, None]
        else:
            carried_kv = torch.zeros_like(first_kv[:, :1])
            carried_gate = torch.full_like(first_gate[:, :1], float("-inf"))
        previous_kv = torch.cat([carried_kv, first_kv[:, :-1]], dim=1)
        previous_gate = torch.cat([carried_gate, first_gate[:, :-1]], dim=1)
        assembled = torch.cat([previous_kv, second_kv], dim=2), torch.cat([previous_gate, second_gate], dim=2)
        return *assembled, (first_kv[:, -1], first_gate[:, -1])


def store_entries(state: CompressorState, first: int, entries: torch.Tensor) -> None:
    """Write `entries` `[B, W, dim]` (model dtype) at `first`, quantised when the state keeps FP8: the
    rounding happens once, where the entry is made, so every later read sees the same key."""
    rows, end = entries.shape[0], first + entries.shape[1]
    if state.entry_scale is not None:
        state.entries[:rows, first:end], state.entry_scale[:rows, first:end] = ops.quantize_index_keys_fp8(entries)
    elif state.entries.dtype == torch.uint8:
        state.entries[:rows, first:end] = ops.quantize_kv_fp8(entries)
    else:
        state.entries[:rows, first:end] = entries


def closed_entries(positions: torch.Tensor, rate: int) -> torch.Tensor:
    """How many compressed entries the query at position t sees: entry w once its window has closed,
    w < (t + 1) // rate. int32 `[S]`."""
    return ((positions + 1) // rate).to(torch.int32)


class Indexer(nn.Module):
    """The lightning indexer: scores compressed keys with `sum_h w_h relu(q_h . k)` and keeps the top k."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.config = config
        self.rate = config.compress_rates[CSA]
        self.wq_b = nn.Linear(config.q_lora_rank, config.index_n_heads * config.index_head_dim, bias=False)
        self.weights_proj = nn.Linear(config.hidden_size, config.index_n_heads, bias=False)
        self.compressor = Compressor(config, self.rate, config.index_head_dim, overlap=True)

    def forward(self, x: torch.Tensor, q_residual: torch.Tensor, start: int, state: CompressorState,
                inv_freq: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The compressed entries each query attends: `[B, S, index_topk]` int32 indices, ascending,
        -1 where fewer are visible; ties go to the lowest index, so every chunking selects the same. (With
        FP8 keys the queries are rounded to FP8 as well, per head row, as DeepSeek does, in every call;
        from ops.FP8_QUERY_MIN_ROWS queries on they are scored on FP8 tensor cores.)"""
        config = self.config
        batch, seq_len, _ = x.shape
        keys = self.compressor(x, start, state, inv_freq)  # [B, T, I]
        q = apply_rope(self.wq_b(q_residual).view(batch, seq_len, config.index_n_heads, -1), cos, sin)
        weights = self.weights_proj(x).float() * config.index_n_heads**-0.5  # [B, S, H]
        scale, k = config.index_head_dim**-0.5, config.index_topk
        if state.entry_scale is None:
            return ops.indexer_topk(q, weights, keys, start, self.rate, scale, k)
        key_scale = state.entry_scale[:batch, : keys.shape[1]]
        return ops.indexer_topk_fp8(q, weights, keys, key_scale, start, self.rate, scale, k)


class Attention(nn.Module):
    """One V4 attention layer of type sliding, CSA or HCA (module names are DeepSeek's checkpoint names)."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer_type = config.attention_type(layer)
        heads, head_dim = config.num_attention_heads, config.head_dim
        self.wq_a = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.wq_b = nn.Linear(config.q_lora_rank, heads * head_dim, bias=False)
        self.wkv = nn.Linear(config.hidden_size, head_dim, bias=False)
        self.kv_norm = RMSNorm(head_dim, config.rms_norm_eps)
        # Grouped output projection: each of o_groups head groups to o_lora_rank, then all to hidden.
        self.wo_a = nn.Linear(heads * head_dim // config.o_groups, config.o_groups * config.o_lora_rank, bias=False)
        self.wo_b = nn.Linear(config.o_groups * config.o_lora_rank, config.hidden_size, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(heads, dtype=torch.float32))
        # Tensor parallel (model/parallel.py) keeps this rank's heads and head groups and sums wo_b's
        # partial outputs with `reduce`; the single-process engine holds them all (reduce None).
        self.num_heads, self.num_groups = heads, config.o_groups
        self.reduce = None
        self.compressor = None
        self.indexer = None
        if self.layer_type != SLIDING:
            rate = config.compress_rates[self.layer_type]
            self.compressor = Compressor(config, rate, head_dim, overlap=self.layer_type == CSA)
        if self.layer_type == CSA:
            self.indexer = Indexer(config)
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        rope = self.config.rope_parameters["main" if self.layer_type == SLIDING else "compress"]
        return rope_inv_freq(rope, self.config.qk_rope_head_dim)

    def materialize_buffers(self, device: torch.device | str) -> None:
        """Recompute the non-persistent RoPE frequencies (a model built on the meta device has none)."""
        with torch.device("cpu"):  # computed where the eager model computes it: bit-identical
            self.inv_freq = self._inv_freq().to(device)

    def forward(self, x: torch.Tensor, start: int, state: LayerState) -> torch.Tensor:
        """x: `[B, S, hidden]` at positions start..start+S-1, continuing `state` -> `[B, S, hidden]`."""
        config = self.config
        batch, seq_len, _ = x.shape
        positions = torch.arange(seq_len, device=x.device) + start
        cos, sin = rope_cos_sin(self.inv_freq, positions)
        q_residual = self.q_norm(self.wq_a(x))
        q = self.wq_b(q_residual).view(batch, seq_len, self.num_heads, config.head_dim)
        q = ops.rms_norm_rope(q, None, config.rms_norm_eps, cos, sin)  # [B, S, H, D]
        kv = ops.rms_norm_rope(self.wkv(x), self.kv_norm.weight, self.kv_norm.eps, cos, sin)  # [B, S, D]: K = V
        fp8 = state.kv_format == FP8_KV
        # the window and this chunk as stored (FP8: rounded as the entries are, row by row: chunking-proof)
        keys, indices = self._sliding_window(ops.quantize_kv_fp8(kv) if fp8 else kv, start, state)
        prefix = None
        if self.compressor is not None:
            entries = self.compressor(x, start, state.compressor, self.inv_freq)  # [B, T, D]
            if self.indexer is not None:
                chosen = self.indexer(x, q_residual, start, state.indexer, self.inv_freq, cos, sin)
                chosen = torch.where(chosen >= 0, chosen + keys.shape[1], chosen)  # entries follow the window's keys
                indices = torch.cat([indices, chosen.to(indices.dtype)], dim=-1)
            else:  # HCA: every entry whose window has closed, w < (t + 1) // rate: a run, one length per query
                closed = closed_entries(positions, self.compressor.rate)
                prefix = ops.KeyPrefix(keys.shape[1], entries.shape[1], closed)
            keys = torch.cat([keys, entries], dim=1)
        attend = ops.sparse_attention_fp8 if fp8 else ops.sparse_attention
        out = attend(q, keys, indices, self.attn_sink, config.head_dim**-0.5, prefix)
        out = apply_rope(out, cos, -sin)  # undo the rotation: outputs depend on relative position only
        groups = out.reshape(batch, seq_len, self.num_groups, -1)
        out = self.wo_b(grouped_linear(self.wo_a, groups).flatten(2))
        return out if self.reduce is None else self.reduce(out)

    def _sliding_window(self, rows: torch.Tensor, start: int, state: LayerState) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (the window kept in the state's ring, then this chunk's `rows` as stored) and, per query,
        the indices of the `sliding_window` keys it sees (itself and the ones before it; -1 before the
        sequence starts): `[B, held + S, row]` and `[B, S, window]` int32. Writes the chunk's last rows
        (as many as the ring holds) into the ring."""
        window = self.config.sliding_window
        batch, seq_len = rows.shape[:2]
        held = state.window_rows(start, window)[:batch]
        keys = torch.cat([held, rows], dim=1)
        kept = min(seq_len, state.ring)
        state.kv[:batch, state.ring_slots(start + seq_len - kept, start + seq_len)] = rows[:, seq_len - kept :]
        indices = (torch.arange(seq_len, device=rows.device, dtype=torch.int32)[:, None] + held.shape[1]
                   - torch.arange(window, device=rows.device, dtype=torch.int32)[None, :])
        indices = torch.where(indices >= 0, indices, -1).expand(batch, -1, -1)
        return keys, indices
