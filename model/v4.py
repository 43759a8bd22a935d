"""The DeepSeek V4 transformer: embedding -> blocks (attention + MoE, each wrapped in mHC) -> hc head
-> norm -> head. Module and parameter names are DeepSeek's checkpoint names, so loading is a rename
table (weights.py)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .config import V4Config
from .layers import RMSNorm
from .mhc import collapse, expand, hc_weights, head_weights
from .moe import MoE
from .state import DecodeState, LayerState, new_decode_state


def _hc_params(config: V4Config) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    n = config.hc_mult
    mixes = (2 + n) * n  # pre, post, comb
    return (nn.Parameter(torch.empty(mixes, n * config.hidden_size, dtype=torch.float32)),
            nn.Parameter(torch.zeros(mixes, dtype=torch.float32)),
            nn.Parameter(torch.ones(3, dtype=torch.float32)))


class Block(nn.Module):
    """One layer: mHC around attention, then mHC around the MoE."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__()
        self.config = config
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = MoE(config, layer)
        self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale = _hc_params(config)
        self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale = _hc_params(config)

    def forward(self, streams: torch.Tensor, token_ids: torch.Tensor, start: int, state: LayerState) -> torch.Tensor:
        """streams: `[B, S, hc_mult, hidden]` at positions start.. -> the same shape."""
        pre, post, comb = hc_weights(streams, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale, self.config)
        streams = expand(self.attn(self.attn_norm(collapse(streams, pre)), start, state), streams, post, comb)
        pre, post, comb = hc_weights(streams, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale, self.config)
        return expand(self.ffn(self.ffn_norm(collapse(streams, pre)), token_ids), streams, post, comb)


class Transformer(nn.Module):
    """DeepSeek V4: `forward` continues a DecodeState (or runs a whole sequence with a fresh one)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, layer) for layer in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        n = config.hc_mult
        self.hc_head_fn = nn.Parameter(torch.empty(n, n * config.hidden_size, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def forward(self, token_ids: torch.Tensor, state: DecodeState | None = None) -> torch.Tensor:
        """token_ids: `[B, S]` int64, continuing `state` (None: a fresh sequence) -> logits `[B, S, vocab]` float32."""
        batch, seq_len = token_ids.shape
        if state is None:
            state = new_decode_state(self.config, seq_len, "transient", self.embed.weight.dtype,
                                     token_ids.device, batch)
        start = state.num_tokens
        x = self.embed(token_ids)
        streams = x.unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1).contiguous()
        for block, layer_state in zip(self.layers, state.layers):
            streams = block(streams, token_ids, start, layer_state)
        state.num_tokens += seq_len
        pre = head_weights(streams, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.config)
        return self.head(self.norm(collapse(streams, pre))).float()
