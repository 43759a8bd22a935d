"""Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams mixed around each sub-layer.

Per sub-layer, weights come from the RMS-normalised flattened streams times `hc_*_fn`:
`pre = sigmoid() + eps` collapses the streams into the sub-layer's input, `post = 2 * sigmoid()`
spreads its output back, and `comb` (row softmax + eps, then Sinkhorn towards doubly stochastic)
mixes the old streams: `x' = post * F(sum_i pre_i x_i) + comb^T x`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import V4Config
from .layers import unweighted_rms_norm


def hc_weights(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
               config: V4Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, post, comb) for `streams` `[B, S, N, D]`: `[B, S, N]`, `[B, S, N]`, `[B, S, N, N]`, float32."""
    n = config.hc_mult
    flat = unweighted_rms_norm(streams.flatten(2).float(), config.rms_norm_eps)
    mixes = F.linear(flat, fn.float())
    pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
    pre_b, post_b, comb_b = base.float().split([n, n, n * n])
    pre_s, post_s, comb_s = scale.float().unbind(0)
    pre = torch.sigmoid(pre_w * pre_s + pre_b) + config.hc_eps
    post = 2 * torch.sigmoid(post_w * post_s + post_b)
    comb = torch.softmax(comb_w.unflatten(-1, (n, n)) * comb_s + comb_b.view(n, n), dim=-1) + config.hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + config.hc_eps)
    for _ in range(config.hc_sinkhorn_iters - 1):  # Sinkhorn: rows, then columns
        comb = comb / (comb.sum(dim=-1, keepdim=True) + config.hc_eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + config.hc_eps)
    return pre, post, comb


def collapse(streams: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """The sub-layer input `sum_i pre_i x_i`: `[B, S, D]` in the streams' dtype."""
    return (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)


def expand(output: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """New streams `post * output + comb^T streams`: `[B, S, N, D]`."""
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * output.unsqueeze(-2) + torch.matmul(comb.to(dtype).transpose(-1, -2), streams)


def head_weights(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                 config: V4Config) -> torch.Tensor:
    """`pre` of the final collapse before the output norm (`hc_head_*` in the checkpoint): `[B, S, N]`."""
    flat = unweighted_rms_norm(streams.flatten(2).float(), config.rms_norm_eps)
    mixes = F.linear(flat, fn.float())
    return torch.sigmoid(mixes * scale.float() + base.float()) + config.hc_eps
