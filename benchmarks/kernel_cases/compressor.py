"""Compressor pooling cases at V4-Flash shapes (head_dim 512, indexer head_dim 128, rope dim 64, bf16).

Prefill of 8192 tokens: CSA (rate 4, overlapping: 1024 windows of L = 8), HCA (rate 128: 64 windows of
L = 128) and the indexer's CSA compressor (1024 windows of 8, D = 128); plus one HCA decode step at
batch 8 (one window per sequence closes), which is launch bound. `tiny=True` shrinks the window counts
for a CPU smoke test under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from v4.kernels.compressor import compress_windows, compress_windows_reference

from . import Case

EPS, ROPE_DIM = 1e-6, 64
SHAPES = {  # name: (B, W, L, D)
    "CSA prefill 8192 tokens": (1, 1024, 8, 512),
    "HCA prefill 8192 tokens": (1, 64, 128, 512),
    "indexer CSA prefill 8192 tokens": (1, 1024, 8, 128),
    "HCA decode B=8": (8, 1, 128, 512),
}
GOAL = "memory bound: near the copy ceiling, faster than torch.compile of the reference"


def _inputs(batch: int, windows: int, slots: int, dim: int, device: str) -> tuple:
    """kv, gate (bf16, window 0's first half masked as in CSA's first window), norm weight, eps, cos, sin."""
    kv = torch.randn(batch, windows, slots, dim, device=device).bfloat16()
    gate = (torch.randn(batch, windows, slots, dim, device=device) * 2).bfloat16()
    gate[:, 0, : slots // 2] = float("-inf")
    weight = torch.randn(dim, device=device) + 1
    angles = torch.rand(windows, ROPE_DIM // 2, device=device) * 6.3
    return kv, gate, weight, EPS, angles.cos(), angles.sin()


def _counts(batch: int, windows: int, slots: int, dim: int) -> tuple[int, int]:
    """(fewest bytes, FLOPs) of one call."""
    # in: kv and gate (bf16), norm weight (f32), cos and sin (f32 per window); out: entries (bf16)
    entries = batch * windows
    fewest = 2 * entries * slots * dim * 2 + dim * 4 + 2 * windows * ROPE_DIM // 2 * 4 + entries * dim * 2
    # per pooled element: max, subtract, exp, sum, divide, multiply, add (7); per entry channel: square,
    # add, scale, weight (4); per rotated pair: 4 multiplies and 2 adds (3 per rope channel)
    flops = batch * windows * (7 * slots * dim + 4 * dim + 3 * ROPE_DIM)
    return fewest, flops


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _case(name: str, shape: tuple[int, int, int, int], device: str) -> Case:
    args = _inputs(*shape, device)
    compiled = torch.compile(compress_windows_reference, dynamic=False)

    def check() -> float:
        fresh = _inputs(*shape, device)
        return _rel(compress_windows(*fresh), compress_windows_reference(*fresh))

    def call(fn: Callable) -> Callable[[], object]:
        return lambda: fn(*args)

    batch, windows, slots, dim = shape
    fewest, flops = _counts(*shape)
    label = f"{name}: B={batch} W={windows} L={slots} D={dim} R={ROPE_DIM} bf16"
    return Case("compress_windows", label, fewest, flops, "memory", call(compress_windows),
                call(compress_windows_reference), check, call(compiled), GOAL)


def cases(device: str, tiny: bool = False) -> list[Case]:
    """One case per shape in SHAPES (`tiny`: at most 4 windows each)."""
    return [_case(name, (b, min(w, 4), s, d) if tiny else (b, w, s, d), device)
            for name, (b, w, s, d) in SHAPES.items()]
