"""RMSNorm / RoPE cases at V4-Flash shapes (prefill of 8192 tokens, bf16 unless the model uses float32).

- rms_norm [8192, 4096] bf16 with a float32 weight (the per-block norms on the hidden state);
- rms_norm [8192, 16384] float32 unweighted (mHC normalises the 4 flattened streams in float32);
- apply_rope on q [1, 8192, 64, 512] bf16, rope dim 64 (and its inverse on the attention output);
- rms_norm_rope on the same q (per-head unweighted norm + RoPE) and on kv [1, 8192, 512] (kv_norm + RoPE).
`tiny=True` shrinks the token count and heads for a CPU smoke test under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from v4.kernels.norm_rope import (apply_rope, apply_rope_reference, rms_norm, rms_norm_reference, rms_norm_rope,
                               rms_norm_rope_reference)

from . import Case

TOKENS, HIDDEN, HC_MULT, HEADS, HEAD_DIM, ROPE_DIM, EPS = 8192, 4096, 4, 64, 512, 64, 1e-6
GOAL = "memory bound: near the copy ceiling, faster than torch.compile of the reference"


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _case(name: str, label: str, make: Callable[[], tuple], kernel: Callable, reference: Callable,
          fewest: int, flops: int) -> Case:
    args = make()
    compiled = torch.compile(reference, dynamic=False)

    def check() -> float:
        fresh = make()
        return _rel(kernel(*fresh), reference(*fresh))

    def call(fn: Callable) -> Callable[[], object]:
        return lambda: fn(*args)

    return Case(name, label, fewest, flops, "memory", call(kernel), call(reference), check, call(compiled), GOAL)


def _rope_tables(tokens: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(tokens, ROPE_DIM // 2, device=device) * 6.3
    return angles.cos(), angles.sin()


def _norm_cases(tokens: int, device: str) -> list[Case]:
    """The hidden-state norm (bf16, weighted) and mHC's flattened-streams norm (float32, unweighted)."""
    width = HC_MULT * HIDDEN

    def hidden() -> tuple:
        return torch.randn(tokens, HIDDEN, device=device).bfloat16(), torch.randn(HIDDEN, device=device) + 1, EPS

    def streams() -> tuple:
        return torch.randn(tokens, width, device=device), None, EPS

    # bytes: x in, y out (+ the f32 weight); FLOPs per element: square, add, scale (+ weight)
    return [_case("rms_norm", f"hidden [{tokens}, {HIDDEN}] bf16, f32 weight", hidden, rms_norm, rms_norm_reference,
                  2 * tokens * HIDDEN * 2 + HIDDEN * 4, 4 * tokens * HIDDEN),
            _case("rms_norm", f"mHC streams [{tokens}, {width}] f32, unweighted", streams, rms_norm,
                  rms_norm_reference, 2 * tokens * width * 4, 3 * tokens * width)]


def _rope_cases(tokens: int, heads: int, device: str) -> list[Case]:
    """RoPE alone on q, then fused with the norm on q (per head, unweighted) and on kv (kv_norm)."""
    q_shape, table_bytes = (1, tokens, heads, HEAD_DIM), 2 * tokens * ROPE_DIM // 2 * 4
    elements = tokens * heads * HEAD_DIM
    rope_flops = 3 * tokens * heads * ROPE_DIM  # 6 per rotated pair

    def q_rope() -> tuple:
        return (torch.randn(q_shape, device=device).bfloat16(), *_rope_tables(tokens, device))

    def q_norm_rope() -> tuple:
        return (torch.randn(q_shape, device=device).bfloat16(), None, EPS, *_rope_tables(tokens, device))

    def kv_norm_rope() -> tuple:
        return (torch.randn(1, tokens, HEAD_DIM, device=device).bfloat16(), torch.randn(HEAD_DIM, device=device) + 1,
                EPS, *_rope_tables(tokens, device))

    q_label = f"q [1, {tokens}, {heads}, {HEAD_DIM}] bf16, rope {ROPE_DIM}"
    kv_label = f"kv [1, {tokens}, {HEAD_DIM}] bf16, f32 weight, rope {ROPE_DIM}"
    return [_case("apply_rope", q_label, q_rope, apply_rope, apply_rope_reference,
                  2 * elements * 2 + table_bytes, rope_flops),
            _case("rms_norm_rope", q_label + ", unweighted", q_norm_rope, rms_norm_rope, rms_norm_rope_reference,
                  2 * elements * 2 + table_bytes, 3 * elements + rope_flops),
            _case("rms_norm_rope", kv_label, kv_norm_rope, rms_norm_rope, rms_norm_rope_reference,
                  2 * tokens * HEAD_DIM * 2 + HEAD_DIM * 4 + table_bytes,
                  4 * tokens * HEAD_DIM + 3 * tokens * ROPE_DIM)]


def cases(device: str, tiny: bool = False) -> list[Case]:
    """Norms, RoPE and the fused pair at prefill sizes (`tiny`: 16 tokens, 4 heads)."""
    tokens, heads = (16, 4) if tiny else (TOKENS, HEADS)
    return _norm_cases(tokens, device) + _rope_cases(tokens, heads, device)
