"""MoE cases at V4-Flash shapes: routing (N = 8192, E = 256, top 6) and the grouped expert GEMMs.

Experts: hidden 4096, intermediate 2048, top 6, swiglu limit 10. Prefill N = 8192 tokens over 256 experts
(~192 rows per expert: compute bound for FP8/FP4 weights, near the ridge for bf16); decode N = 1 and 8
(memory bound: the used experts' weights read once). FP8 (6.4 GB, e4m3 + ue8m0 128x128 scales) and FP4
(3.2 GB, e2m1 + ue8m0 1x32 scales) hold all 256 experts natively; bf16 (12.9 GB for 256) uses 64 experts
and N = 2048 so each expert still gets ~192 rows. Each format's weights are built once and shared by its
prefill and decode cases. Decode cases rotate 4 routings (different experts) so no weight sits in L2
from the previous call; routing rotates 8 logit sets (64 MB) past the 50 MB L2.

`compiled` is left out for the expert GEMMs: the reference loops over experts with `.tolist()` and
data-dependent row counts, so torch.compile graph-breaks and recompiles per count until its limit; it
would time compile churn rather than a compiled MoE. `tiny=True` shrinks every size for a CPU smoke run
under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from benchmarks.kernel_cases import Case
from v4.kernels.moe import (moe_experts, moe_experts_fp4, moe_experts_fp4_reference, moe_experts_fp8,
                         moe_experts_fp8_reference, moe_experts_reference)
from v4.kernels.moe_route import route, route_reference

HIDDEN, INTER, EXPERTS, TOPK, LIMIT, SCALING = 4096, 2048, 256, 6, 10.0, 1.5
PREFILL_TOKENS, DECODE_TOKENS = 8192, (1, 8)
BF16_EXPERTS = 64  # 12.9 GB for 256 bf16 experts is too much to hold next to the other formats
DECODE_SETS, ROUTE_SETS = 4, 8
PREFILL_GOAL = ">= 50% of the bf16 matmul ceiling"
DECODE_GOAL = "report bandwidth: the used experts' weights read once"


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _weights(fmt: str, experts: int, hidden: int, inter: int, device: str) -> tuple[torch.Tensor, ...]:
    """Random expert weights in the format's layout: (w1, w3, w2) or (w1, s1, w3, s3, w2, s2).

    FP8: e4m3 of N(0, 1) with ue8m0 scales near 2^-6 (weights ~ 1/sqrt(4096)); FP4: uniform random
    codes with ue8m0 scales near 2^-8. Any code/scale pair is a valid quantised weight."""
    g = _generator(device, 0)
    shapes = ((experts, inter, hidden), (experts, inter, hidden), (experts, hidden, inter))
    out = []
    for rows_cols in shapes:
        e, rows, cols = rows_cols
        if fmt == "bf16":
            out.append(torch.randn(rows_cols, device=device, generator=g, dtype=torch.bfloat16).mul_(cols**-0.5))
            continue
        if fmt == "fp8":
            w = torch.empty(rows_cols, device=device, dtype=torch.float8_e4m3fn)
            for i in range(0, e, 16):  # chunks keep the float32 temporary at 0.5 GB
                w[i:i + 16] = torch.randn((min(16, e - i), rows, cols), device=device, generator=g)
            scale_shape, base = (e, -(-rows // 128), -(-cols // 128)), 127 - 6
        else:
            w = torch.randint(-128, 128, (e, rows, cols // 2), device=device, generator=g, dtype=torch.int8)
            scale_shape, base = (e, rows, -(-cols // 32)), 127 - 8
        scale = torch.randint(base - 1, base + 2, scale_shape, device=device, generator=g, dtype=torch.uint8)
        out += [w, scale.view(torch.float8_e8m0fnu)]
    return tuple(out)


def _expert_bytes(fmt: str, hidden: int, inter: int) -> int:
    """Bytes of one expert's three matrices with their scales."""
    if fmt == "bf16":
        return 3 * hidden * inter * 2
    if fmt == "fp8":
        return 3 * (hidden * inter + -(-hidden // 128) * -(-inter // 128))
    return 3 * (hidden * inter // 2 + hidden * inter // 32)


def _routing(tokens: int, experts: int, hidden: int, device: str, seed: int) -> tuple[torch.Tensor, ...]:
    """(x bf16 [N, H], weights [N, k], ids [N, k]) from score routing of random logits."""
    g = _generator(device, seed)
    logits = torch.randn(tokens, experts, device=device, generator=g)
    weights, ids = route_reference(logits, None, None, TOPK, "sqrtsoftplus", True, SCALING)
    x = torch.randn(tokens, hidden, device=device, generator=g, dtype=torch.bfloat16)
    return x, weights, ids


def _rotating(fn: Callable, sets: list[tuple], tail: tuple) -> Callable[[], object]:
    """A no-argument call fn(*set, *tail, LIMIT) on the next input set each time."""
    cycle = itertools.cycle(sets)
    return lambda: fn(*next(cycle), *tail, LIMIT)


def _expert_case(fmt: str, tokens: int, experts: int, hidden: int, inter: int, weights: tuple, device: str) -> Case:
    kernel, reference = {"bf16": (moe_experts, moe_experts_reference),
                         "fp8": (moe_experts_fp8, moe_experts_fp8_reference),
                         "fp4": (moe_experts_fp4, moe_experts_fp4_reference)}[fmt]
    decode = tokens in DECODE_TOKENS
    sets = [_routing(tokens, experts, hidden, device, seed) for seed in range(DECODE_SETS if decode else 1)]
    used = sum(torch.unique(ids).numel() for _, _, ids in sets) / len(sets)
    # Bytes: the used experts' weights + scales once, x and out (bf16), routing weights (f32) and ids (i64).
    num_bytes = int(used * _expert_bytes(fmt, hidden, inter)) + 2 * tokens * hidden * 2 + tokens * TOPK * 12
    # FLOPs: per (token, slot) pair, w1 x and w3 x (2 * 2HI) and w2 h (2HI); SwiGLU and scaling are < 0.1%.
    flops = 2 * tokens * TOPK * 3 * hidden * inter

    def check() -> float:
        fresh = _routing(tokens, experts, hidden, device, seed=100 + tokens)
        return _rel(kernel(*fresh, *weights, LIMIT), reference(*fresh, *weights, LIMIT))

    rows = tokens * TOPK / experts
    shape = (f"{fmt} N={tokens} k={TOPK} E={experts} H={hidden} I={inter}"
             + (f" ({rows:.0f} rows/expert)" if not decode else f" ({used:.1f} experts used)"))
    return Case(kernel.__name__, shape, num_bytes, flops, "memory" if decode else "compute",
                _rotating(kernel, sets, weights), _rotating(reference, sets, weights), check, None,
                DECODE_GOAL if decode else PREFILL_GOAL, extra={"input_sets": len(sets), "experts_used": used})


def _route_case(tokens: int, experts: int, device: str) -> Case:
    g = _generator(device, 1)
    bias = torch.randn(experts, device=device, generator=g) * 0.1
    sets = [(torch.randn(tokens, experts, device=device, generator=g) * 2,) for _ in range(ROUTE_SETS)]
    tail = (bias, None, TOPK, "sqrtsoftplus", True, SCALING)
    compiled = torch.compile(route_reference, dynamic=False)

    def rotate(fn: Callable) -> Callable[[], object]:
        cycle = itertools.cycle(sets)
        return lambda: fn(*next(cycle), *tail)

    def check() -> float:
        """Weight error on the rows whose ids agree; inf if a row differs by more than a near-tie."""
        logits = torch.randn(tokens, experts, device=device, generator=_generator(device, 2)) * 2
        (w, ids), (rw, rids) = route(logits, *tail), route_reference(logits, *tail)
        keys = torch.nn.functional.softplus(logits).sqrt() + bias
        if not torch.allclose(keys.gather(1, ids), keys.gather(1, rids), rtol=1e-5, atol=0):
            return float("inf")
        same = (ids == rids).all(dim=1)
        return _rel(w[same], rw[same])

    # Bytes: logits (f32) and bias read; weights (f32) and ids (i64) written.
    # FLOPs: per logit ~6 for sqrt(softplus) (exp, log1p, max, add, sqrt) and 3 per argmax pass (add bias
    # once, compare, select); transcendental functions counted as one.
    return Case("route", f"sqrtsoftplus+bias N={tokens} E={experts} k={TOPK}",
                tokens * experts * 4 + experts * 4 + tokens * TOPK * 12, tokens * experts * (6 + 3 * TOPK),
                "memory", rotate(route), rotate(route_reference), check, rotate(compiled),
                "near copy bandwidth on the logits", extra={"input_sets": ROUTE_SETS})


def cases(device: str, tiny: bool = False) -> list[Case]:
    """Route at N = 8192; each weight format at prefill and decode (see the module docstring)."""
    hidden, inter, experts, bf16_experts = (64, 32, 16, 8) if tiny else (HIDDEN, INTER, EXPERTS, BF16_EXPERTS)
    prefill = 24 if tiny else PREFILL_TOKENS
    out = [_route_case(prefill, experts, device)]
    for fmt in ("bf16", "fp8", "fp4"):
        num_experts = bf16_experts if fmt == "bf16" else experts
        weights = _weights(fmt, num_experts, hidden, inter, device)
        tokens = prefill * num_experts // experts  # bf16: same rows per expert on fewer experts
        out += [_expert_case(fmt, n, num_experts, hidden, inter, weights, device) for n in (tokens, *DECODE_TOKENS)]
    return out
