"""The tensor-core decode kernel for FP4 routed experts (kernels/decode_moe_mx.py) against moe.py's
reference: the same function as the CUDA-core GEMV, on tl.dot_scaled."""

from __future__ import annotations

import pytest
import torch

from v4.kernels import decode_moe, decode_moe_mx, moe

from .device import KERNEL_DEVICE, needs_kernel
from .test_moe import LIMIT, TOL, quantized, rel_error, routed


@pytest.fixture(autouse=True)
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """h and y start as NaN: a pair no program writes shows."""
    monkeypatch.setattr(decode_moe_mx, "_alloc", lambda shape, dtype, device: torch.full(
        shape, float("nan"), dtype=dtype, device=device))


def run(ids: torch.Tensor, weights: torch.Tensor, hidden: int, inter: int, experts: int,
        config: decode_moe_mx.MxConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(ids.shape[0], hidden, generator=torch.Generator().manual_seed(hidden)).bfloat16()
    x, ids, weights = x.to(KERNEL_DEVICE), ids.to(KERNEL_DEVICE), weights.to(KERNEL_DEVICE)
    w = quantized("fp4", experts, hidden, inter, torch.float8_e8m0fnu, seed=inter)
    return (decode_moe_mx.moe_experts_mx_fp4(x, weights, ids, *w, LIMIT, config=config),
            moe.moe_experts_fp4_reference(x, weights, ids, *w, LIMIT))


@needs_kernel
@pytest.mark.parametrize("tokens,hidden,inter,experts,k", [
    (1, 128, 64, 8, 3),  # B = 1: most experts unused
    (2, 96, 160, 6, 3),  # K not a multiple of the K step; N over two blocks, the last ragged
    (8, 64, 64, 6, 2),  # B = 8: experts shared by several tokens
])
def test_matches_reference(tokens: int, hidden: int, inter: int, experts: int, k: int) -> None:
    weights, ids = routed(tokens, experts, k, seed=tokens)
    out, ref = run(ids, weights, hidden, inter, experts)
    assert out.shape == (tokens, hidden) and out.dtype == torch.bfloat16
    assert rel_error(out, ref) < TOL[torch.bfloat16]


@needs_kernel
def test_repeated_and_twice_routed_experts() -> None:
    """Expert 2 in every token and a token routed twice to expert 1 (more pairs than tokens)."""
    ids = torch.tensor([[2, 1, 1], [1, 2, 0], [2, 5, 1]])
    weights = torch.rand(3, 3, generator=torch.Generator().manual_seed(1)) + 0.5
    out, ref = run(ids, weights, 64, 32, 8)
    assert rel_error(out, ref) < TOL[torch.bfloat16]


@needs_kernel
def test_agrees_with_the_cuda_core_gemv() -> None:
    weights, ids = routed(4, 8, 2, seed=3)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(4)).bfloat16().to(KERNEL_DEVICE)
    w = quantized("fp4", 8, 128, 96, torch.float8_e8m0fnu, seed=5)
    ids, weights = ids.to(KERNEL_DEVICE), weights.to(KERNEL_DEVICE)
    tensor_cores = decode_moe_mx.moe_experts_mx_fp4(x, weights, ids, *w, LIMIT)
    cuda_cores = decode_moe.moe_experts_gemv_fp4(x, weights, ids, *w, LIMIT)
    assert rel_error(tensor_cores, cuda_cores) < TOL[torch.bfloat16]


def test_refuses_what_it_does_not_take() -> None:
    weights, ids = routed(2, 4, 2, seed=1)
    w = quantized("fp4", 4, 64, 32, torch.float32, seed=2)
    with pytest.raises(ValueError, match="ue8m0"):
        decode_moe_mx.moe_experts_mx_fp4(torch.randn(2, 64).bfloat16(), weights, ids, *w, LIMIT)
