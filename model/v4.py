"""The DeepSeek V4 transformer: embedding -> blocks (attention + MoE, each wrapped in mHC) -> hc head
-> norm -> head. Module and parameter names are DeepSeek's checkpoint names, so loading is a rename
table (weights.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import ops
from .attention import Attention
from .config import V4Config
from .engram import Engram
from .layers import RMSNorm
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
        engram = config.engram
        self.engram = None
        if engram is not None and layer in engram.layer_ids:
            self.engram = Engram(engram, layer, config.vocab_size, config.hidden_size, config.hc_mult,
                                 config.rms_norm_eps)

    def forward(self, streams: torch.Tensor, token_ids: torch.Tensor, start: int, state: LayerState) -> torch.Tensor:
        """streams: `[B, S, hc_mult, hidden]` at positions start.. -> the same shape. An Engram layer
        first adds its n-gram memory to the streams, as the Engram paper places it before attention."""
        if self.engram is not None:
            streams = streams + self.engram(streams, token_ids, state.engram)
        return self.mix(streams, token_ids, lambda x: self.attn(x, start, state))

    def mix(self, streams: torch.Tensor, token_ids: torch.Tensor,
            attend: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """mHC around `attend` (the attention sub-layer on its normed input), then around the MoE; the
        static decode path (static_decode.py) passes its own `attend` and shares the rest."""
        x, post, comb = self._hc_pre(streams, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale)
        streams = ops.hc_post(attend(self.attn_norm(x)), streams, post, comb)
        x, post, comb = self._hc_pre(streams, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale)
        return ops.hc_post(self.ffn(self.ffn_norm(x), token_ids), streams, post, comb)

    def _hc_pre(self, streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mHC before a sub-layer: its input `sum_i pre_i x_i`, and `post`, `comb` for after it."""
        c = self.config
        x, post, comb, _ = ops.hc_pre(streams, fn, base, scale, c.rms_norm_eps, c.hc_eps, c.hc_sinkhorn_iters)
        return x, post, comb


class MTPBlock(Block):
    """The multi-token-prediction block (`mtp.{k}.*`): a full block fed the main model's final streams
    at position t and the embedding of token t+1; its own hc head and norm then predict token t+2
    through the main model's head. A cheap draft head for speculative decoding."""

    def __init__(self, config: V4Config, layer: int) -> None:
        super().__init__(config, layer)
        dim = config.hidden_size
        self.e_proj = nn.Linear(dim, dim, bias=False)
        self.h_proj = nn.Linear(dim, dim, bias=False)
        self.enorm = RMSNorm(dim, config.rms_norm_eps)
        self.hnorm = RMSNorm(dim, config.rms_norm_eps)
        self.norm = RMSNorm(dim, config.rms_norm_eps)
        n = config.hc_mult
        self.hc_head_fn = nn.Parameter(torch.empty(n, n * dim, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(n, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))

    def forward(self, streams: torch.Tensor, next_ids: torch.Tensor, start: int, state: LayerState,  # type: ignore[override]
                embed: nn.Embedding) -> torch.Tensor:
        """streams: the main model's final `[B, S, hc, hidden]` at positions start..; next_ids `[B, S]`:
        the tokens after them -> this block's output streams (read by `logits`)."""
        return super().forward(self.inputs(streams, next_ids, embed), next_ids, start, state)

    def inputs(self, streams: torch.Tensor, next_ids: torch.Tensor, embed: nn.Embedding) -> torch.Tensor:
        """The block's input streams: the normed main streams and the next tokens' embeddings, projected
        and added (shared with the static verify step, static_verify.py)."""
        return self.e_proj(self.enorm(embed(next_ids))).unsqueeze(2) + self.h_proj(self.hnorm(streams))

    def logits(self, streams: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        """Logits `[B, S, vocab]` float32 of the tokens two after each position, through the shared head."""
        collapsed = ops.hc_head(streams, self.hc_head_fn, self.hc_head_base, self.hc_head_scale,
                                self.config.rms_norm_eps, self.config.hc_eps)
        return head(self.norm(collapsed)).float()


class Transformer(nn.Module):
    """DeepSeek V4: `forward` continues a DecodeState (or runs a whole sequence with a fresh one).

    `mtp` holds the checkpoint's MTP blocks (empty when it ships none, as transformers' saves do).
    """

    def __init__(self, config: V4Config, with_mtp: bool = True) -> None:
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
        mtp_layers = config.num_nextn_predict_layers if with_mtp else 0
        self.mtp = nn.ModuleList(MTPBlock(config, config.num_hidden_layers + k) for k in range(mtp_layers))

    def materialize_buffers(self, device: torch.device | str) -> None:
        """Recompute non-persistent buffers after loading into a model built on the meta device."""
        for module in self.modules():
            if isinstance(module, (Attention, Engram)):
                module.materialize_buffers(device)

    def forward(self, token_ids: torch.Tensor, state: DecodeState | None = None, return_streams: bool = False,
                last_only: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """token_ids: `[B, S]` int64, continuing `state` (None: a fresh sequence) -> logits `[B, S, vocab]`
        float32 (`[B, 1, vocab]` of the last position if `last_only`: a prefill needs no more, and the
        head over a whole chunk costs as much as a layer) and the final streams `[B, S, hc, hidden]`,
        which the MTP block reads, if asked."""
        batch, seq_len = token_ids.shape
        if state is None:
            state = new_decode_state(self.config, seq_len, "transient", self.embed.weight.dtype,
                                     token_ids.device, batch)
        start = state.num_tokens
        streams = self.embed_streams(token_ids)
        for block, layer_state in zip(self.layers, state.layers):
            streams = block(streams, token_ids, start, layer_state)
        state.num_tokens += seq_len
        logits = self.logits(streams[:, -1:] if last_only else streams)
        return (logits, streams) if return_streams else logits

    def embed_streams(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The `hc_mult` residual streams, each a copy of the embedding: `[B, S, hc, hidden]`."""
        x = self.embed(token_ids)
        return x.unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1).contiguous()

    def logits(self, streams: torch.Tensor) -> torch.Tensor:
        """The final streams collapsed, normed and projected: `[B, S, vocab]` float32."""
        collapsed = ops.hc_head(streams, self.hc_head_fn, self.hc_head_base, self.hc_head_scale,
                                self.config.rms_norm_eps, self.config.hc_eps)
        return self.head(self.norm(collapsed)).float()
