"""V4 attention: shared K=V MQA over a sliding window, plus compressed entries (CSA with the lightning
indexer's top-k, or HCA over all of them), learnable sinks, inverse RoPE and a grouped output projection.

This is the reference path over a whole sequence from position 0 (the decode state comes next).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CSA, HCA, SLIDING, V4Config
from .layers import RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq, unweighted_rms_norm


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
        self.ape = nn.Parameter(torch.zeros(rate, width))
        self.norm = RMSNorm(dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """x: `[B, S, hidden]` from position 0 -> entries `[B, S // rate, dim]` (complete windows only)."""
        batch, seq_len, _ = x.shape
        windows = seq_len // self.rate
        usable = windows * self.rate
        kv = self.wkv(x[:, :usable]).view(batch, windows, self.rate, -1)
        gate = self.wgate(x[:, :usable]).view(batch, windows, self.rate, -1) + self.ape
        if self.overlap:  # slots [0, rate): window w-1's first series; [rate, 2 rate): window w's second
            first_kv, second_kv = kv[..., : self.dim], kv[..., self.dim :]
            first_gate, second_gate = gate[..., : self.dim], gate[..., self.dim :]
            previous_kv = torch.cat([torch.zeros_like(first_kv[:, :1]), first_kv[:, :-1]], dim=1)
            previous_gate = torch.cat([torch.full_like(first_gate[:, :1], float("-inf")), first_gate[:, :-1]], dim=1)
            kv = torch.cat([previous_kv, second_kv], dim=2)
            gate = torch.cat([previous_gate, second_gate], dim=2)
        pooled = (kv * gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)).sum(dim=2)
        entries = self.norm(pooled)
        cos, sin = rope_cos_sin(inv_freq, torch.arange(windows, device=x.device) * self.rate)
        return apply_rope(entries, cos, sin)


class Indexer(nn.Module):
    """The lightning indexer: scores compressed keys with `sum_h w_h relu(q_h . k)` and keeps the top k."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.config = config
        self.rate = config.compress_rates[CSA]
        self.wq_b = nn.Linear(config.q_lora_rank, config.index_n_heads * config.index_head_dim, bias=False)
        self.weights_proj = nn.Linear(config.hidden_size, config.index_n_heads, bias=False)
        self.compressor = Compressor(config, self.rate, config.index_head_dim, overlap=True)

    def forward(self, x: torch.Tensor, q_residual: torch.Tensor, inv_freq: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Which compressed entries each query attends: `[B, S, T]` bool."""
        config = self.config
        batch, seq_len, _ = x.shape
        keys = self.compressor(x, inv_freq)  # [B, T, I]
        q = apply_rope(self.wq_b(q_residual).view(batch, seq_len, config.index_n_heads, -1), cos, sin)
        scores = F.relu(torch.einsum("bshi,bti->bsht", q.float(), keys.float())) * config.index_head_dim**-0.5
        weights = self.weights_proj(x).float() * config.index_n_heads**-0.5  # [B, S, H]
        scores = (scores * weights.unsqueeze(-1)).sum(dim=2)  # [B, S, T]
        visible = _compressed_visibility(seq_len, keys.shape[1], self.rate, x.device).expand(batch, -1, -1)
        scores = scores.masked_fill(~visible, float("-inf"))
        # Ties (sums of ReLUs are often exactly 0) go to the lowest entry, whatever the call's shape.
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., : config.index_topk]
        chosen = torch.zeros_like(visible).scatter_(-1, order, True)
        return chosen & visible


def _compressed_visibility(seq_len: int, num_entries: int, rate: int, device: torch.device) -> torch.Tensor:
    """Query t sees entry w once its window has closed: w < (t + 1) // rate. `[S, T]`."""
    threshold = (torch.arange(seq_len, device=device) + 1) // rate
    return torch.arange(num_entries, device=device)[None, :] < threshold[:, None]


class Attention(nn.Module):
    """One V4 attention layer of type sliding, CSA or HCA (module names are DeepSeek's checkpoint names)."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer_type = config.layer_types[layer]
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
        self.compressor = None
        self.indexer = None
        if self.layer_type != SLIDING:
            rate = config.compress_rates[self.layer_type]
            self.compressor = Compressor(config, rate, head_dim, overlap=self.layer_type == CSA)
        if self.layer_type == CSA:
            self.indexer = Indexer(config)
        rope = config.rope_parameters["main" if self.layer_type == SLIDING else "compress"]
        self.register_buffer("inv_freq", rope_inv_freq(rope, config.qk_rope_head_dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: `[B, S, hidden]`, the sequence from position 0 -> `[B, S, hidden]`."""
        config = self.config
        batch, seq_len, _ = x.shape
        cos, sin = rope_cos_sin(self.inv_freq, torch.arange(seq_len, device=x.device))
        q_residual = self.q_norm(self.wq_a(x))
        q = self.wq_b(q_residual).view(batch, seq_len, config.num_attention_heads, config.head_dim)
        q = apply_rope(unweighted_rms_norm(q, config.rms_norm_eps), cos, sin)  # [B, S, H, D]
        kv = apply_rope(self.kv_norm(self.wkv(x)), cos, sin)  # [B, S, D]: K = V
        positions = torch.arange(seq_len, device=x.device)
        distance = positions[:, None] - positions[None, :]
        local = (distance >= 0) & (distance < config.sliding_window)  # [S, S]
        keys, visible = kv, local[None].expand(batch, -1, -1)
        if self.compressor is not None:
            entries = self.compressor(x, self.inv_freq)  # [B, T, D]
            if self.indexer is not None:
                chosen = self.indexer(x, q_residual, self.inv_freq, cos, sin)
            else:
                chosen = _compressed_visibility(seq_len, entries.shape[1], self.compressor.rate, x.device)
                chosen = chosen[None].expand(batch, -1, -1)
            keys = torch.cat([kv, entries], dim=1)
            visible = torch.cat([visible, chosen], dim=-1)
        scores = torch.einsum("bshd,btd->bhst", q, keys) * config.head_dim**-0.5
        scores = scores.masked_fill(~visible[:, None], float("-inf"))
        sink = self.attn_sink.to(scores.dtype).view(1, -1, 1, 1).expand(batch, -1, seq_len, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        out = torch.einsum("bhst,btd->bshd", probs.to(keys.dtype), keys)
        out = apply_rope(out, cos, -sin)  # undo the rotation: outputs depend on relative position only
        groups = out.reshape(batch, seq_len, config.o_groups, -1)
        wo_a = self.wo_a.weight.view(config.o_groups, config.o_lora_rank, -1)
        return self.wo_b(torch.einsum("bsgi,goi->bsgo", groups, wo_a).flatten(2))
