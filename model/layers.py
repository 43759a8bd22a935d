"""Building blocks shared by the V4 modules: RMS norms and the interleaved partial RoPE (plain and YaRN)."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import ops


class RMSNorm(nn.Module):
    """RMSNorm with a float32 weight, computed in float32 and cast back once (as DeepSeek does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


def unweighted_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim with no weight (V4's per-head q norm and mHC input norm)."""
    return ops.rms_norm(x, None, eps)


def rope_inv_freq(params: dict, rope_dim: int) -> torch.Tensor:
    """Inverse frequencies, one per rotated pair: `[rope_dim // 2]`, float32.

    `params` is one of the config's `rope_parameters` entries (`main` or `compress`); YaRN blends
    interpolated and extrapolated frequencies with a linear ramp between the correction dims, and,
    as in DeepSeek's reference, does not scale cos/sin by YaRN's mscale.
    """
    base = float(params["rope_theta"])
    exponents = torch.arange(0, rope_dim, 2, dtype=torch.float32) / rope_dim
    extrapolated = 1.0 / (base**exponents)
    if params.get("rope_type", "default") != "yarn":
        return extrapolated
    factor = float(params["factor"])
    original = float(params["original_max_position_embeddings"])
    beta_fast = float(params.get("beta_fast") or 32)
    beta_slow = float(params.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return rope_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rope_dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(rope_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate (low frequencies)
    return extrapolated / factor * (1 - keep) + extrapolated * keep


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin at `positions` (`[S]` int): each `[S, rope_dim // 2]` float32."""
    angles = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device)[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the trailing `2 * cos.shape[-1]` channels of `x` in interleaved pairs (x0,x1), (x2,x3), ...

    Args:
        x: `[B, S, H, D]` (heads) or `[B, S, D]`.
        cos, sin: `[S, rope_dim // 2]` float32; pass `-sin` to undo the rotation.
    """
    return ops.apply_rope(x, cos, sin)
