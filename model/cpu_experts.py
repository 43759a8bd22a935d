"""Routed experts computed on the CPU from their host copies (issue 28, KTransformers' split): for an
expert the GPU cache does not hold, multiplying its few tokens on the CPU can cost less than copying its
weights over PCIe. Used by model/offload.py's ExpertCache when `ExpertCosts` says so.

The weights are dequantised in row tiles (`TILE_ROWS`, a multiple of FP8's 128-row scale blocks) to
float32 and multiplied with torch's CPU matmul, which runs on oneDNN/MKL kernels that use the machine's
vector units (AVX2/AVX-512/AMX): the well-kept library, rather than kernels of our own. A tile is
~4 MiB at V4-Flash's 4,096 columns, so dequantised weights stay in cache-sized pieces and an expert is
never held whole in float32. The result equals the grouped kernel's per expert to float32 rounding
(bf16 engines: the GPU kernels round their inputs to bf16 first, the CPU does not).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import ops
from .quant import FP8_BLOCK, dequantize_fp4, dequantize_fp8

TILE_ROWS = 256  # weight rows dequantised at once (FP8 needs whole 128-row scale blocks)
MEASURE_TOKENS = (1, 8)  # token counts the CPU side is timed at, to fit a line through


def _dequantized_rows(weight: Tensor, scale: Tensor | None, fmt: str | None, start: int, end: int) -> Tensor:
    """Rows [start, end) of one expert projection as float32 `[end - start, in]`."""
    if fmt is None:
        return weight[start:end].float()
    if fmt == "fp4":
        return dequantize_fp4(weight[start:end], scale[start:end])
    return dequantize_fp8(weight[start:end], scale[start // FP8_BLOCK : math.ceil(end / FP8_BLOCK)])


def tiled_linear(x: Tensor, weight: Tensor, scale: Tensor | None, fmt: str | None) -> Tensor:
    """x `[n, in]` float32 @ the (quantised) weight `[out, in]`^T, dequantised TILE_ROWS rows at a time:
    `[n, out]` float32."""
    rows = weight.shape[0]
    # Each tile's product is its own tensor, joined at the end: `matmul(out=` a column slice) copies
    # through a temporary and was a third of the time.
    return torch.cat([x @ _dequantized_rows(weight, scale, fmt, start, min(start + TILE_ROWS, rows)).T
                      for start in range(0, rows, TILE_ROWS)], dim=1)


def cpu_expert(x: Tensor, tensors: Sequence[Tensor], fmt: str | None, limit: float) -> Tensor:
    """One routed expert on host tensors: `w2(clamped_swiglu(w1 x, w3 x))` for x `[n, hidden]` -> `[n, hidden]`
    float32. `tensors` are the expert's w1, w3, w2 (each followed by its scale when `fmt` is "fp8"/"fp4"),
    in the order of the offload cache's host stacks."""
    step = 1 if fmt is None else 2
    (w1, s1), (w3, s3), (w2, s2) = ((tensors[i], tensors[i + 1] if fmt else None) for i in range(0, 3 * step, step))
    x = x.float()
    hidden = ops.clamped_swiglu(tiled_linear(x, w1, s1, fmt), tiled_linear(x, w3, s3, fmt), limit)
    return tiled_linear(hidden, w2, s2, fmt)


def pair_inputs(x: Tensor, weights: Tensor, pairs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The tokens `[P, hidden]` and routing weights `[P]` float32 of `pairs` (flat (token, slot) indices
    into a call's `[N, k]` routing), copied to the host."""
    return x[(pairs // k).to(x.device)].cpu(), weights.reshape(-1)[pairs.to(x.device)].float().cpu()


def weighted_pairs(host: Sequence[Sequence[Tensor]], fmt: str | None, limit: float, x: Tensor, weights: Tensor,
                   pair_experts: Tensor, experts: list[int]) -> Tensor:
    """Each pair's expert output times its routing weight `[P, hidden]` float32, on the CPU, one expert
    of `experts` at a time (every pair's expert is one of them); `host` as an offload cache holds them."""
    out = torch.empty(len(pair_experts), x.shape[-1], dtype=torch.float32)
    for expert in experts:
        rows = (pair_experts == expert).nonzero().squeeze(1)
        out[rows] = cpu_expert(x[rows], [held[expert] for held in host], fmt, limit) * weights[rows, None]
    return out


@dataclass(frozen=True, slots=True)
class ExpertCosts:
    """What serving one expert costs: `copy_s` to copy it to the GPU, `cpu_fixed_s + tokens x
    cpu_token_s` to compute it on the CPU (reading its weights is the fixed part; each token adds
    three GEMV rows). Measured once at load (`measure_costs`); tests inject their own."""

    copy_s: float
    cpu_fixed_s: float
    cpu_token_s: float

    def cpu_faster(self, tokens: int) -> bool:
        """Whether `tokens` tokens of an expert cost less on the CPU than its copy."""
        return self.cpu_fixed_s + tokens * self.cpu_token_s < self.copy_s


def measure_costs(host: Sequence[Sequence[Tensor]], cache: Sequence[Tensor], fmt: str | None, limit: float,
                  repeats: int = 3) -> ExpertCosts:
    """Time expert 0's copy from `host` into slot 0 of `cache` (on its device; synchronised) and its CPU
    computation at MEASURE_TOKENS tokens, best of `repeats` each."""
    device = cache[0].device

    def copy() -> None:
        for cached, held in zip(cache, host):
            cached[0].copy_(held[0], non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    expert = [held[0] for held in host]
    hidden = expert[-2 if fmt is not None else -1].shape[0]
    times = []
    for tokens in MEASURE_TOKENS:
        x = torch.randn(tokens, hidden)
        times.append(_best(lambda: cpu_expert(x, expert, fmt, limit), repeats))
    (n1, n2), (t1, t2) = MEASURE_TOKENS, times
    per_token = max(0.0, (t2 - t1) / (n2 - n1))
    return ExpertCosts(copy_s=_best(copy, repeats), cpu_fixed_s=max(0.0, t1 - n1 * per_token), cpu_token_s=per_token)


def _best(run: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats + 1):  # the first run warms caches and allocators
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
