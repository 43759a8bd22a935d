"""The shared expert's clamped SwiGLU kernel against the model's PyTorch activation."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.swiglu import clamped_swiglu, clamped_swiglu_reference

from .device import KERNEL_DEVICE, needs_kernel


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 2048), (3, 5, 96), (0, 8)])
def test_clamped_swiglu_matches_the_model(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    gate = (torch.randn(shape) * 8).to(dtype).to(KERNEL_DEVICE)  # past the limit both ways
    up = (torch.randn(shape) * 8).to(dtype).to(KERNEL_DEVICE)
    out, ref = clamped_swiglu(gate, up, 7.0), clamped_swiglu_reference(gate, up, 7.0)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    if ref.numel():
        # bf16: at most one rounding step apart; float32: the GPU's exp is a few ulp from PyTorch's
        steps = 2 if dtype == torch.bfloat16 else 16
        ulp = torch.finfo(dtype).eps * ref.abs().clamp(min=1e-3)
        assert ((out.float() - ref.float()).abs() <= ulp.float() * steps).all()
        if dtype == torch.bfloat16:  # float32 exps differ in the last bits; bf16 rounds that away
            assert (out == ref).float().mean() > 0.95
        assert (out.abs() <= 7.0 * 7.0 * 1.01).all()  # both clamps applied


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        clamped_swiglu(torch.zeros(2, 3), torch.zeros(2, 4), 7.0)
