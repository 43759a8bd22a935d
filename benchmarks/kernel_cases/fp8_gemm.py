"""FP8 dense projection cases at V4-Flash shapes: act_quant, the block-scaled GEMM, and peers.

Projections (K -> N): wq_a 4096 -> 1024, wq_b 1024 -> 64 x 512, wkv 4096 -> 512, wo_b 8 x 1024 -> 4096,
each at M = 1 and 8 (decode: memory-bound, the weight is read once) and 8192 (prefill: compute-bound).
Weights are FP8 e4m3 with ue8m0 128 x 128 block scales (model.quant), activations quantised per 1 x 128.
A decode weight fits in L2 (2-32 MB), so decode cases rotate through enough weights to span twice L2,
as the 43 layers' weights stream through it in the model.

Peers in the same run: `bf16 linear` (what the engine does today with dequantised weights; its shape
names no "fp8", so its FLOP share is against the bf16 ceiling) and `torch._scaled_mm` with row-wise
scales at M = 8192 (cuBLAS FP8, coarser scaling than ours: a second FP8 ceiling at these shapes).
`tiny=True` shrinks every size for a CPU smoke run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from benchmarks.kernel_cases import Case
from v4.kernels.fp8_gemm import (act_quant, act_quant_reference, fp8_gemm, fp8_gemm_reference, fp8_linear,
                              fp8_linear_reference)
from v4.model.quant import quantize_fp8

PROJECTIONS = {"wq_a": (4096, 1024), "wq_b": (1024, 64 * 512), "wkv": (4096, 512), "wo_b": (8 * 1024, 4096)}
ROWS = (1, 8, 8192)
L2_BYTES = 50 * 2**20
PREFILL_GOAL = ">= 50-60% of the FP8 matmul ceiling"
DECODE_GOAL = "near copy bandwidth on the weight (launch-bound below a few MB)"


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _weight(n: int, k: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return quantize_fp8(torch.randn(n, k, device=device, generator=g) * k**-0.5, ue8m0=True)


def _activations(m: int, k: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)


def _rotating(fn: Callable, sets: list[tuple], *head: object) -> Callable[[], object]:
    """A no-argument call fn(*head, *set) on the next input set each time."""
    cycle = itertools.cycle(sets)
    return lambda: fn(*head, *next(cycle))


def _compile(fn: Callable) -> Callable:
    """torch.compile(fn, dynamic=False), built on the first call (the harness makes it outside the
    timing). Dynamo recompiles a function at most 8 times by default, then silently runs it eagerly;
    this module has more shapes, so that first, compiling call lifts the limit (not later calls: the
    patch costs ~0.1 ms)."""
    compiled: list[Callable] = []

    def call(*args: object) -> object:
        if compiled:
            return compiled[0](*args)
        compiled.append(torch.compile(fn, dynamic=False))
        with torch._dynamo.config.patch(recompile_limit=64):
            return compiled[0](*args)

    return call


def _gemm_bytes(m: int, n: int, k: int, x_bytes: int) -> int:
    """x (FP8 + f32 scales, or bf16 for fp8_linear) + FP8 weight + e8m0 scales + bf16 output, once each."""
    x = m * k * x_bytes + (m * (k // 128) * 4 if x_bytes == 1 else 0)
    return x + n * k + -(-n // 128) * (k // 128) + m * n * 2


def _gemm_cases(name: str, k: int, n: int, weights: list[tuple], device: str, tiny: bool) -> list[Case]:
    """fp8_gemm at every M; fp8_linear (activation quantisation fused) at decode; the peers."""
    g = torch.Generator(device=device).manual_seed(7)
    bf16_weights = [(torch.randn(n, k, device=device, generator=g).to(torch.bfloat16),) for _ in weights]
    out = []
    for m in ROWS if not tiny else (1, 8, 70):
        decode = m <= 8
        sets = weights if decode else weights[:1]
        a = act_quant_reference(_activations(m, k, device, seed=m))
        compiled = _compile(fp8_gemm_reference)

        def check(m: int = m) -> float:
            fresh = (*act_quant_reference(_activations(m, k, device, 100)), *_weight(n, k, device, 101))
            return _rel(fp8_gemm(*fresh), fp8_gemm_reference(*fresh))

        # FLOPs: the product's multiply-adds, 2MNK (the per-block rescale adds 2MN per 128 K: < 2%).
        out.append(Case("fp8_gemm", f"{name} fp8 M={m} N={n} K={k}", _gemm_bytes(m, n, k, 1), 2 * m * n * k,
                        "memory" if decode else "compute", _rotating(fp8_gemm, sets, *a),
                        _rotating(fp8_gemm_reference, sets, *a), check, _rotating(compiled, sets, *a),
                        DECODE_GOAL if decode else PREFILL_GOAL, extra={"input_sets": len(sets)}))
        if decode:
            out.append(_linear_case(name, m, n, k, sets, device))
        out.append(_bf16_peer(name, m, n, k, bf16_weights if decode else bf16_weights[:1], device))
        if not decode and not tiny:
            out.append(_scaled_mm_peer(name, m, n, k, device))
    return out


def _linear_case(name: str, m: int, n: int, k: int, sets: list[tuple], device: str) -> Case:
    """fp8_linear on bf16 activations: the decode projection as the engine calls it."""
    x = _activations(m, k, device, seed=m)

    def check() -> float:
        fresh = (_activations(m, k, device, 102), *_weight(n, k, device, 103))
        return _rel(fp8_linear(*fresh), fp8_linear_reference(*fresh))

    return Case("fp8_linear", f"{name} fp8 bf16-x M={m} N={n} K={k}", _gemm_bytes(m, n, k, 2), 2 * m * n * k,
                "memory", _rotating(fp8_linear, sets, x), _rotating(fp8_linear_reference, sets, x), check,
                goal=DECODE_GOAL + "; one launch (+ split-K sum), no FP8 copy of x", extra={"input_sets": len(sets)})


def _bf16_peer(name: str, m: int, n: int, k: int, sets: list[tuple], device: str) -> Case:
    """x @ W^T in bf16 with a dequantised weight: the engine's path before these kernels."""
    x = _activations(m, k, device, seed=m)
    linear = torch.nn.functional.linear
    return Case("bf16 linear (peer)", f"{name} bf16 M={m} N={n} K={k}", 2 * (m * k + n * k + m * n), 2 * m * n * k,
                "memory" if m <= 8 else "compute", _rotating(linear, sets, x), _rotating(linear, sets, x),
                lambda: _rel(linear(x, sets[0][0]), x.float() @ sets[0][0].float().T),
                goal="peer", extra={"input_sets": len(sets)})


def _scaled_mm_peer(name: str, m: int, n: int, k: int, device: str) -> Case:
    """cuBLAS FP8 with one scale per row of A and of B (row-wise): the library ceiling at this shape."""
    a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn)
    sa, sb = torch.rand(m, 1, device=device) + 0.5, torch.rand(1, n, device=device) + 0.5

    def run() -> torch.Tensor:
        return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    def reference() -> torch.Tensor:
        return (a.float() * sa) @ (b.float() * sb.T).T

    return Case("torch._scaled_mm rowwise (peer)", f"{name} fp8 M={m} N={n} K={k}",
                m * k + n * k + 4 * (m + n) + 2 * m * n, 2 * m * n * k, "compute", run, reference,
                lambda: _rel(run(), reference()), goal="peer")


def _act_quant_case(device: str, tiny: bool) -> Case:
    m, k = (70, 256) if tiny else (8192, 4096)
    x = _activations(m, k, device, seed=0)

    def check() -> float:
        fresh = _activations(m, k, device, seed=1)
        (q, s), (rq, rs) = act_quant(fresh), act_quant_reference(fresh)
        return _rel(q.float().view(m, -1, 128) * s[..., None], rq.float().view(m, -1, 128) * rs[..., None])

    compiled = _compile(act_quant_reference)
    # Bytes: x (bf16) read, q (1 byte) and scales (f32 per 128) written. FLOPs: per element |x| for the
    # max, the scale multiply and the saturation (3); the per-group scale is negligible.
    return Case("act_quant", f"M={m} K={k} bf16 -> e4m3, ue8m0", m * k * 3 + m * (k // 128) * 4, 3 * m * k,
                "memory", lambda: act_quant(x), lambda: act_quant_reference(x), check, lambda: compiled(x),
                goal=">= 70% of copy bandwidth")


def cases(device: str, tiny: bool = False) -> list[Case]:
    """act_quant at prefill; per projection fp8_gemm (M 1, 8, 8192), fp8_linear (decode) and peers."""
    out = [_act_quant_case(device, tiny)]
    for name, (k, n) in PROJECTIONS.items():
        if tiny:
            k, n = max(128, k // 16), max(128, n // 64)
        num_sets = 2 if tiny else max(1, min(64, 2 * L2_BYTES // (n * k)))
        weights = [_weight(n, k, device, seed) for seed in range(num_sets)]
        out += _gemm_cases(name, k, n, weights, device, tiny)
    return out
