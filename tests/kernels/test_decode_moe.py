"""The decode grouped GEMV for quantised routed experts (kernels/decode_moe.py) against moe.py's references.

Tolerances as test_moe.py: 1e-5 in float32, 1e-2 in bfloat16 (the reference rounds every intermediate to
bf16; the kernel only h and each slot's output).
"""

from __future__ import annotations

import pytest
import torch

from v4.kernels import decode_moe, moe

from .device import KERNEL_DEVICE, needs_kernel
from .test_moe import LIMIT, TOL, poison, quantized, rel_error, routed


@pytest.fixture(autouse=True)
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """h and y start as NaN: a pair no program writes shows."""
    monkeypatch.setattr(decode_moe, "_alloc", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                     dtype=dtype, device=device))


def run(kind: str, ids: torch.Tensor, weights: torch.Tensor, hidden: int, inter: int, experts: int,
        scale_dtype: torch.dtype, dtype: torch.dtype, config: decode_moe.ExpertGemvConfig | None = None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(decode GEMV, reference) on random x and model.quant-built experts."""
    x = torch.randn(ids.shape[0], hidden, generator=torch.Generator().manual_seed(hidden)).to(dtype)
    x, ids, weights = x.to(KERNEL_DEVICE), ids.to(KERNEL_DEVICE), weights.to(KERNEL_DEVICE)
    w = quantized(kind, experts, hidden, inter, scale_dtype, seed=inter)
    kernel, reference = ((decode_moe.moe_experts_gemv_fp4, moe.moe_experts_fp4_reference) if kind == "fp4" else
                         (decode_moe.moe_experts_gemv_fp8, moe.moe_experts_fp8_reference))
    return kernel(x, weights, ids, *w, LIMIT, config=config), reference(x, weights, ids, *w, LIMIT)


@needs_kernel
@pytest.mark.parametrize("kind,tokens,hidden,inter,experts,k,scale_dtype,dtype", [
    ("fp4", 1, 64, 96, 8, 3, torch.float8_e8m0fnu, torch.bfloat16),   # B = 1: most experts unused
    ("fp4", 2, 80, 64, 6, 3, torch.float32, torch.float32),           # a ragged 32-group (H = 80)
    ("fp4", 8, 64, 40, 6, 2, torch.float32, torch.bfloat16),          # float scales: w * s rounded first
    ("fp8", 1, 160, 96, 4, 2, torch.float8_e8m0fnu, torch.bfloat16),  # ragged 128-blocks both ways
    ("fp8", 2, 128, 136, 5, 3, torch.float32, torch.float32),
    ("fp8", 8, 96, 64, 6, 2, torch.bfloat16, torch.bfloat16),
])
def test_matches_reference(kind: str, tokens: int, hidden: int, inter: int, experts: int, k: int,
                           scale_dtype: torch.dtype, dtype: torch.dtype) -> None:
    weights, ids = routed(tokens, experts, k, seed=tokens)
    out, ref = run(kind, ids, weights, hidden, inter, experts, scale_dtype, dtype)
    assert out.shape == (tokens, hidden) and out.dtype == dtype
    assert rel_error(out, ref) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("kind", ["fp4", "fp8"])
def test_experts_repeated_across_tokens_and_unused(kind: str) -> None:
    """8 tokens: expert 2 in every token (8 rows on one expert's weights), expert 5 in three, experts
    1, 4 and 6 in none."""
    ids = torch.tensor([[2, 0], [3, 2], [2, 5], [7, 2], [2, 5], [0, 2], [2, 3], [5, 2]])
    weights = torch.rand(8, 2, generator=torch.Generator().manual_seed(1)) + 0.5
    out, ref = run(kind, ids, weights, 64, 32, 8, torch.float8_e8m0fnu, torch.float32)
    assert rel_error(out, ref) < TOL[torch.float32]


@needs_kernel
def test_a_token_routed_twice_to_one_expert() -> None:
    """More pairs than tokens on one expert (routing never does this; the kernel stays right): the
    expert's pairs are taken in chunks of at most B rows."""
    ids = torch.tensor([[1, 1, 1], [1, 0, 1]])
    weights = torch.rand(2, 3, generator=torch.Generator().manual_seed(2))
    out, ref = run("fp4", ids, weights, 64, 32, 3, torch.float8_e8m0fnu, torch.float32)
    assert rel_error(out, ref) < TOL[torch.float32]


@needs_kernel
@pytest.mark.parametrize("kind,ids", [
    ("fp4", [[-1], [0], [-1], [2], [0], [-1]]),  # expert parallel's layout: one pair per row
    ("fp8", [[-1], [0], [-1], [2], [0], [-1]]),
    ("fp4", [[0, -1, 2], [-1, -1, -1], [2, 0, -1]]),  # NO_EXPERT slots; token 1 has none left
])
def test_no_expert_pairs_are_zero_and_read_no_weights(kind: str, ids: list) -> None:
    """From NaN-poisoned h and y, NO_EXPERT pairs add exact zeros; experts 1 and 3, which no pair uses,
    and the memory before expert 0 have NaN scales, so reading them would show."""
    ids = torch.tensor(ids)
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    x = torch.randn(ids.shape[0], 64, generator=torch.Generator().manual_seed(4)).to(KERNEL_DEVICE)
    w = quantized(kind, 4, 64, 32, torch.float8_e8m0fnu, seed=5)
    w = poison(kind, w, [1, 3])
    kernel, reference = ((decode_moe.moe_experts_gemv_fp4, moe.moe_experts_fp4_reference) if kind == "fp4" else
                         (decode_moe.moe_experts_gemv_fp8, moe.moe_experts_fp8_reference))
    ids, weights = ids.to(KERNEL_DEVICE), weights.to(KERNEL_DEVICE)
    out, ref = kernel(x, weights, ids, *w, LIMIT), reference(x, weights, ids, *w, LIMIT)
    skipped = (ids == moe.NO_EXPERT).all(1)
    assert (out[skipped] == 0).all() and (ref[skipped] == 0).all()
    assert rel_error(out, ref) < TOL[torch.float32]


@needs_kernel
@pytest.mark.parametrize("kind", ["fp4", "fp8"])
def test_agrees_with_the_grouped_gemm(kind: str) -> None:
    """The same function as moe.py's kernels, other tiles (one K step holds two FP4 groups, two N blocks)."""
    weights, ids = routed(3, 6, 2, seed=9)
    x = torch.randn(3, 128).bfloat16().to(KERNEL_DEVICE)
    weights, ids = weights.to(KERNEL_DEVICE), ids.to(KERNEL_DEVICE)
    w = quantized(kind, 6, 128, 64, torch.float8_e8m0fnu, seed=4)
    config = decode_moe.ExpertGemvConfig(32, 128, 16, 64, 4)
    if kind == "fp4":
        new, old = decode_moe.moe_experts_gemv_fp4(x, weights, ids, *w, LIMIT, config=config), \
            moe.moe_experts_fp4(x, weights, ids, *w, LIMIT)
    else:
        new, old = decode_moe.moe_experts_gemv_fp8(x, weights, ids, *w, LIMIT, config=config), \
            moe.moe_experts_fp8(x, weights, ids, *w, LIMIT)
    assert rel_error(new, old) < TOL[torch.bfloat16]


def test_rejects_what_it_does_not_take() -> None:
    x = torch.zeros(9, 64)
    ids, weights = torch.zeros(9, 2, dtype=torch.long), torch.ones(9, 2)
    w = quantized("fp4", 2, 64, 32, torch.float8_e8m0fnu, seed=0)
    with pytest.raises(ValueError, match="at most 8 tokens"):
        decode_moe.moe_experts_gemv_fp4(x, weights, ids, *[t.cpu() for t in w], LIMIT)
    assert not decode_moe.supports(x, "fp4", w[0])
    assert decode_moe.supports(x[:8], "fp4", w[0]) and not decode_moe.supports(x[:8, :60], "fp4", w[0])


def test_moe_dispatch_by_token_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """MoE._run_experts takes the GEMV up to GEMV_MAX_TOKENS[fmt] quantised tokens, by shape alone."""
    from v4.model import moe as model_moe
    from v4.model import ops

    calls = []
    monkeypatch.setattr(ops, "moe_experts_gemv", lambda *a: calls.append("gemv") or a[0])
    monkeypatch.setattr(ops, "moe_experts_quantized", lambda *a: calls.append("gemm") or a[0])
    layer = model_moe.MoE.__new__(model_moe.MoE)
    torch.nn.Module.__init__(layer)
    layer.strategy, layer.limit = model_moe.ExpertStrategy(fmt="fp4"), LIMIT
    stacks = quantized("fp4", 2, 64, 32, torch.float8_e8m0fnu, seed=0)
    most = model_moe.GEMV_MAX_TOKENS["fp4"]
    for tokens in (1, most, most + 1):
        layer._run_experts(torch.zeros(tokens, 64), torch.ones(tokens, 2), torch.zeros(tokens, 2), stacks)
    assert calls == ["gemv", "gemv", "gemm"]


def test_fp4_gpu_path_assembles_for_hopper() -> None:
    """The GPU path's inline PTX (the e2m1 pair decode) is not run by the interpreter: both kernels are
    compiled here for sm_90 with Triton's bundled ptxas by benchmarks/sass_decode_moe.py (a child process,
    without TRITON_INTERPRET), so a PTX mistake fails on a CPU machine too. Their arithmetic is checked
    against the reference by the tests above when they run on CUDA."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sass_decode_moe.py"
    done = subprocess.run([sys.executable, str(script), "--tiles", "16x256"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for kernel in ("_gate_up_kernel", "_down_kernel"):
        assert f"{kernel} fp4 16x256" in done.stdout
    assert done.stdout.count("'HADD2'") >= 3  # the f16 -> f32 converts of the decode, in each K loop


@needs_kernel
@pytest.mark.parametrize("kind,tokens,k", [("fp4", 1, 3), ("fp8", 3, 3), ("fp4", 4, 2)])
def test_in_kernel_sum_and_add_equal_the_separate_ones(kind: str, tokens: int, k: int) -> None:
    """The down kernel's last program per column block sums the k slots and adds the addend: the same
    bits as the PyTorch sum and add after the kernel (fused_sum=False), every arrival counter back at 0."""
    from v4.kernels import common

    weights, ids = routed(tokens, 6, k, seed=tokens + 5)
    x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(3)).bfloat16().to(KERNEL_DEVICE)
    addend = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(4)).bfloat16().to(KERNEL_DEVICE)
    weights, ids = weights.to(KERNEL_DEVICE), ids.to(KERNEL_DEVICE)
    w = quantized(kind, 6, 64, 96, torch.float8_e8m0fnu, seed=2)
    kernel = decode_moe.moe_experts_gemv_fp4 if kind == "fp4" else decode_moe.moe_experts_gemv_fp8
    config = decode_moe.ExpertGemvConfig(16, 64, 16, 64, 4)  # 4 column blocks, each summed by its last program
    fused = kernel(x, weights, ids, *w, LIMIT, config=config, addend=addend)
    separate = kernel(x, weights, ids, *w, LIMIT, config=config, addend=addend, fused_sum=False)
    plain = kernel(x, weights, ids, *w, LIMIT, config=config)
    assert torch.equal(fused, separate) and torch.equal(plain, kernel(x, weights, ids, *w, LIMIT, config=config,
                                                                       fused_sum=False))
    assert torch.equal(fused, plain + addend)
    device = torch.device(KERNEL_DEVICE) if KERNEL_DEVICE == "cpu" else x.device
    assert int(common._COUNTERS[device].abs().sum()) == 0
    with pytest.raises(ValueError, match="addend"):
        kernel(x, weights, ids, *w, LIMIT, addend=addend.float())
