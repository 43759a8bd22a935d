"""RMSNorm / RoPE kernels against their references, and the references against model/layers.py."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.norm_rope import (apply_rope, apply_rope_reference, rms_norm, rms_norm_reference, rms_norm_rope,
                               rms_norm_rope_reference)
from v4.model.layers import RMSNorm, unweighted_rms_norm
from v4.model.layers import apply_rope as model_apply_rope

from .device import KERNEL_DEVICE, needs_kernel

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16]
EPS = 1e-6


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere (an unwritten element) makes it NaN."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def rope_tables(seq_len: int, half: int, device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin `[S, half]` float32 of random angles (a real rotation, so -sin undoes it)."""
    angles = torch.rand(seq_len, half, device=device) * 6.3
    return angles.cos(), angles.sin()


def random_x(shape: tuple[int, ...], dtype: torch.dtype, device: str | None = None) -> torch.Tensor:
    return (torch.randn(shape, device=device) * 3 + 0.5).to(dtype)


def poisoned_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)


# ----------------------------------------------------------------------------- references vs the model

@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_reference_is_the_model_norm(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = random_x((2, 5, 48), dtype)
    norm = RMSNorm(48, EPS)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
        assert torch.equal(rms_norm_reference(x, norm.weight, EPS), norm(x))
    assert torch.equal(rms_norm_reference(x, None, EPS), unweighted_rms_norm(x, EPS))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 40), (2, 5, 40)])
def test_apply_rope_reference_is_the_model_rope(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = random_x(shape, dtype)
    cos, sin = rope_tables(shape[1], 8)
    assert torch.equal(apply_rope_reference(x, cos, sin), model_apply_rope(x, cos, sin))


# ----------------------------------------------------------------------------- kernels

@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("shape", [(3, 40), (2, 3, 130), (2, 2, 3, 96), (2, 16384)])
def test_rms_norm(shape: tuple[int, ...], weighted: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = random_x(shape, dtype, KERNEL_DEVICE)
    weight = torch.randn(shape[-1], device=KERNEL_DEVICE) if weighted else None
    out = rms_norm(x, weight, EPS, out=poisoned_like(x))
    assert rel_error(out, rms_norm_reference(x, weight, EPS)) < TOLERANCE[dtype]


@needs_kernel
def test_rms_norm_allocates_and_takes_strided_rows() -> None:
    torch.manual_seed(0)
    x = random_x((4, 6, 64), torch.float32, KERNEL_DEVICE).transpose(0, 1)  # rows not in memory order
    weight = torch.randn(64, device=KERNEL_DEVICE)
    out = rms_norm(x, weight, EPS)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_error(out, rms_norm_reference(x, weight, EPS)) < 1e-5


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,rope_dim", [((2, 5, 3, 40), 8), ((2, 7, 24), 24), ((1, 3, 2, 512), 64),
                                            ((1, 2, 5, 6), 2)])
def test_apply_rope(shape: tuple[int, ...], rope_dim: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = random_x(shape, dtype, KERNEL_DEVICE)
    cos, sin = rope_tables(shape[1], rope_dim // 2, KERNEL_DEVICE)
    out = apply_rope(x, cos, sin, out=poisoned_like(x))
    ref = apply_rope_reference(x, cos, sin)
    assert rel_error(out, ref) < TOLERANCE[dtype]
    assert torch.equal(out[..., :-rope_dim], x[..., :-rope_dim])  # channels before the rope part are copied


@needs_kernel
def test_apply_rope_on_a_permuted_attention_output() -> None:
    """The model undoes RoPE on einsum("bhst,btd->bshd") output: a view with heads before positions."""
    torch.manual_seed(0)
    x = random_x((2, 3, 5, 40), torch.float32, KERNEL_DEVICE).transpose(1, 2)  # [B, S, H, D], strided
    cos, sin = rope_tables(5, 4, KERNEL_DEVICE)
    assert rel_error(apply_rope(x, cos, -sin), apply_rope_reference(x, cos, -sin)) < 1e-5


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 5, 3, 40), (2, 5, 40)])
def test_inverse_rope_round_trip(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = random_x(shape, torch.float32, KERNEL_DEVICE)
    cos, sin = rope_tables(shape[1], 16, KERNEL_DEVICE)
    rotated = apply_rope(x, cos, sin)
    assert rel_error(rotated, x) > 0.1
    assert rel_error(apply_rope(rotated, cos, -sin), x) < 1e-6


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,weighted", [((2, 5, 3, 48), False), ((2, 5, 48), True), ((1, 3, 130), True)])
def test_rms_norm_rope(shape: tuple[int, ...], weighted: bool, dtype: torch.dtype) -> None:
    """V4's q path (per-head unweighted norm, then RoPE) and kv path (kv_norm, then RoPE)."""
    torch.manual_seed(0)
    x = random_x(shape, dtype, KERNEL_DEVICE)
    weight = torch.randn(shape[-1], device=KERNEL_DEVICE) if weighted else None
    cos, sin = rope_tables(shape[1], 8, KERNEL_DEVICE)
    out = rms_norm_rope(x, weight, EPS, cos, sin, out=poisoned_like(x))
    assert rel_error(out, rms_norm_rope_reference(x, weight, EPS, cos, sin)) < TOLERANCE[dtype]


@needs_kernel
def test_bf16_rounds_where_the_model_rounds() -> None:
    """Every rounding to bf16 happens where the model's does (and rounds to nearest even)."""
    torch.manual_seed(0)
    x = random_x((2, 4, 3, 64), torch.bfloat16, KERNEL_DEVICE)
    cos, sin = rope_tables(4, 8, KERNEL_DEVICE)
    out = rms_norm_rope(x, None, EPS, cos, sin)
    ref = rms_norm_rope_reference(x, None, EPS, cos, sin)
    assert (out != ref).float().mean().item() < 0.01  # only where float32 sums differ in the last bit


@needs_kernel
@pytest.mark.parametrize("call,message", [
    (lambda x, c, s: apply_rope(x, c[:3], s[:3]), "cos and sin"),
    (lambda x, c, s: apply_rope(x[..., :39], c, s), "even"),
    (lambda x, c, s: apply_rope(x, c.double(), s.double()), "float32"),
    (lambda x, c, s: apply_rope(x[0, 0], c, s), r"\[B, S, H, D\]"),
    (lambda x, c, s: rms_norm(x.int(), None, EPS), "float32, bfloat16"),
    (lambda x, c, s: rms_norm(x, torch.ones(7, device=x.device), EPS), "weight"),
    (lambda x, c, s: rms_norm(x, None, EPS, out=torch.empty(3, device=x.device)), "out"),
])
def test_rejects_bad_inputs(call, message: str) -> None:
    x = random_x((2, 5, 3, 40), torch.float32, KERNEL_DEVICE)
    cos, sin = rope_tables(5, 4, KERNEL_DEVICE)
    with pytest.raises(ValueError, match=message):
        call(x, cos, sin)
