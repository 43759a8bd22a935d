"""mHC kernel cases at V4-Flash shapes (hc_mult 4, hidden 4096, 24 mixes, 20 Sinkhorn iterations, bf16 streams).

Decode (1 and 8 tokens) and prefill (8192 tokens) for hc_pre and hc_post, prefill for hc_head. A decode
input set is far smaller than L2 (fn alone is 1.5 MB), so those cases rotate through enough sets to
span twice L2, as the 43 layers' own fn matrices do in the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from v4.kernels.mhc import hc_head, hc_head_reference, hc_post, hc_post_reference, hc_pre, hc_pre_reference

from . import Case

N, DIM, RMS_EPS, HC_EPS, ITERS = 4, 4096, 1e-6, 1e-6, 20
L2_BYTES = 50 * 2**20
TOKENS = {"decode B=1": (1, 1), "decode B=8": (8, 1), "prefill": (1, 8192)}


def _pre_inputs(tokens: tuple[int, int], dim: int, head: bool, device: str) -> tuple:
    mix = N if head else (2 + N) * N
    streams = torch.randn(*tokens, N, dim, device=device).bfloat16()
    fn = torch.randn(mix, N * dim, device=device) * (N * dim) ** -0.5
    base = torch.randn(mix, device=device) * 0.5
    scale = torch.rand(1 if head else 3, device=device) + 0.5
    return (streams, fn, base, scale)


def _post_inputs(tokens: tuple[int, int], dim: int, device: str) -> tuple:
    streams, fn, base, scale = _pre_inputs(tokens, dim, False, device)
    _, post, comb, _ = hc_pre_reference(streams, fn, base, scale, RMS_EPS, HC_EPS, ITERS)
    return (torch.randn(*tokens, dim, device=device).bfloat16(), streams, post, comb)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _rotating(fn: Callable, sets: list[tuple], *tail: object) -> Callable[[], object]:
    """A no-argument call of fn on the next input set each time."""
    cycle = itertools.cycle(sets)
    return lambda: fn(*next(cycle), *tail)


def _lazy_compile(reference: Callable) -> Callable:
    """torch.compile(reference, dynamic=False), built at its first call (importing dynamo takes seconds)."""
    compiled: list[Callable] = []

    def call(*args: object) -> object:
        if not compiled:
            compiled.append(torch.compile(reference, dynamic=False))
        return compiled[0](*args)

    return call


def _case(name: str, shape: str, make: Callable[[], tuple], kernel: Callable, reference: Callable, tail: tuple,
          counts: tuple[int, int], goal: str, max_sets: int, extra: dict) -> Case:
    first = make()
    set_bytes = sum(t.numel() * t.element_size() for t in first)
    sets = [first] + [make() for _ in range(min(max_sets - 1, 2 * L2_BYTES // set_bytes))]

    def check() -> float:
        args = make()
        out, ref = kernel(*args, *tail), reference(*args, *tail)
        pairs = zip(out, ref) if isinstance(out, tuple) else [(out, ref)]
        return max(_rel(o, r) for o, r in pairs)

    compiled = _lazy_compile(reference)
    return Case(kernel_name=name, shape=shape, bytes_moved=counts[0], flops=counts[1], bound="memory",
                kernel=_rotating(kernel, sets, *tail), eager=_rotating(reference, sets, *tail), check=check,
                compiled=_rotating(compiled, sets, *tail), goal=goal, extra={"input_sets": len(sets), **extra})


def _pre_case(label: str, tokens: tuple[int, int], dim: int, head: bool, device: str, max_sets: int) -> Case:
    """hc_pre (or hc_head): bytes and FLOPs counted here."""
    count, k = tokens[0] * tokens[1], N * dim
    mix = N if head else (2 + N) * N
    # in: streams (bf16), fn, base, scale (f32); out: x (bf16), and pre/post/comb (f32) for hc_pre
    weights_out = 0 if head else count * (N + N + N * N) * 4
    fewest = count * k * 2 + 4 * (mix * k + mix + (1 if head else 3)) + count * dim * 2 + weights_out
    actual = fewest + count * k * 2  # kernel B reads the streams a second time
    # per token: sum of squares 2K, the mixes 2 * mix * K, the collapse 2 * N * D; Sinkhorn: per
    # iteration two normalisations of N^2 entries (an add and a divide each)
    flops = count * (2 * k + 2 * mix * k + 2 * N * dim + (0 if head else 4 * ITERS * N * N))
    goal = (f"2 launches; the streams are read twice ({actual / fewest:.2f}x the fewest bytes): near the copy "
            "ceiling on the bytes it moves, faster than torch.compile")
    kernel, reference, tail = ((hc_head, hc_head_reference, (RMS_EPS, HC_EPS)) if head else
                               (hc_pre, hc_pre_reference, (RMS_EPS, HC_EPS, ITERS)))
    return _case("hc_head" if head else "hc_pre", f"{label}: tokens={count} N={N} D={dim} bf16",
                 lambda: _pre_inputs(tokens, dim, head, device), kernel, reference, tail, (fewest, flops), goal,
                 max_sets, {"bytes_actual": actual})


def _post_case(label: str, tokens: tuple[int, int], dim: int, device: str, max_sets: int) -> Case:
    """hc_post: bytes and FLOPs counted here."""
    count = tokens[0] * tokens[1]
    # in: output (bf16), streams (bf16), post and comb (f32); out: new streams (bf16)
    fewest = count * (dim * 2 + N * dim * 2 + (N + N * N) * 4 + N * dim * 2)
    flops = count * N * dim * (1 + 2 * N)  # per new element: post * output, then N multiply-adds
    goal = "1 launch, one pass: near the copy ceiling, faster than torch.compile"
    return _case("hc_post", f"{label}: tokens={count} N={N} D={dim} bf16", lambda: _post_inputs(tokens, dim, device),
                 hc_post, hc_post_reference, (), (fewest, flops), goal, max_sets, {})


def cases(device: str, tiny: bool = False) -> list[Case]:
    """hc_pre and hc_post at decode and prefill sizes, hc_head at prefill (`tiny`: D = 64, a CPU smoke test)."""
    dim, max_sets = (64, 2) if tiny else (DIM, 64)
    tokens_by_name = {k: (v[0], min(v[1], 17)) if tiny else v for k, v in TOKENS.items()}
    out: list[Case] = []
    for label, tokens in tokens_by_name.items():
        out.append(_pre_case(label, tokens, dim, False, device, max_sets))
        out.append(_post_case(label, tokens, dim, device, max_sets))
    out.append(_pre_case("prefill", tokens_by_name["prefill"], dim, True, device, max_sets))
    return out
