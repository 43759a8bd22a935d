"""The FP8 decode GEMV (kernels/decode_gemv.py) against fp8_linear's reference, and the model's dispatch.

Tolerances as test_fp8_gemm.py: float32 outputs < 1e-5 under the interpreter (CUDA-core path: float32
products of exact dequantised values) and < 2e-3 on a GPU (the tensor-core path accumulates each 128-wide
block at reduced precision); bf16 outputs < 1e-2 (one bf16 rounding of the output; under the interpreter
the kernel rounds as torch does and lands on 0).
"""

from __future__ import annotations

import pytest
import torch

from v4.kernels import decode_gemv as gemv
from v4.kernels import fp8_gemm as fp8

from .device import KERNEL_DEVICE, needs_kernel
from .test_fp8_gemm import activations, rel_error, weight

FP32_TOL = 1e-5 if KERNEL_DEVICE == "cpu" else 2e-3
TOL = {torch.float32: FP32_TOL, torch.bfloat16: 1e-2}
CPU_CUDA_CORES = gemv.GemvConfig(16, 128)
CONFIGS = {  # each inner product, narrow and wide tiles, one and several K steps, ragged K steps
    "fma-2x128": gemv.GemvConfig(2, 128),
    "fma-16x256": gemv.GemvConfig(16, 256),
    "dot-16": gemv.GemvConfig(16, 128, use_dot=True),
    "dot-32": gemv.GemvConfig(32, 128, use_dot=True),
}


@pytest.fixture(autouse=True)
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs start as NaN: an element no program writes shows."""
    monkeypatch.setattr(gemv, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                               device=device))


def on_device(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(KERNEL_DEVICE) for t in tensors]


@needs_kernel
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("m,n,k,scale_dtype,dtype", [
    (1, 200, 384, torch.float8_e8m0fnu, torch.float32),  # odd N tail (200 = 12 x 16 + 8), 3 K blocks
    (2, 72, 256, torch.float32, torch.bfloat16),
    (8, 130, 384, torch.bfloat16, torch.float32),        # a ragged last 128-row scale block
])
def test_gemv_matches_reference(config: str, m: int, n: int, k: int, scale_dtype: torch.dtype,
                                dtype: torch.dtype) -> None:
    x, = on_device(activations(m, k, dtype, seed=m))
    w, s = on_device(*weight(n, k, scale_dtype, seed=n))
    out = gemv.fp8_gemv(x, w, s, config=CONFIGS[config])
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_error(out, gemv.fp8_gemv_reference(x, w, s)) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 256), (2, 3, 128), (5, 384)])
def test_default_launch_and_leading_dims(shape: tuple[int, ...]) -> None:
    """The launch pick_config chooses; x with leading dims, as the model passes [B, S, K]."""
    x, = on_device(activations(int(torch.tensor(shape[:-1]).prod()), shape[-1], torch.bfloat16).view(shape))
    w, s = on_device(*weight(96, shape[-1], torch.float8_e8m0fnu))
    out = gemv.fp8_gemv(x, w, s)
    assert out.shape == (*shape[:-1], 96)
    assert rel_error(out, fp8.fp8_linear_reference(x, w, s)) < TOL[torch.bfloat16]


@needs_kernel
def test_gemv_equals_the_fused_decode_gemm() -> None:
    """Same quantisation of x as fp8_gemm's fused decode path: the two kernels agree to float32 rounding."""
    x, = on_device(activations(3, 384))
    w, s = on_device(*weight(200, 384, torch.float8_e8m0fnu))
    assert rel_error(gemv.fp8_gemv(x, w, s, config=CPU_CUDA_CORES), fp8.fp8_linear(x, w, s)) < FP32_TOL


@needs_kernel
@pytest.mark.parametrize("config", [None, CONFIGS["fma-2x128"], CONFIGS["dot-16"]], ids=["default", "fma", "dot"])
def test_grouped_gemv(config: gemv.GemvConfig | None) -> None:
    """wo_a's shape in small: 4 groups of 48 rows (not a divisor of 128: groups share scale rows)."""
    x, = on_device(activations(2 * 4, 256, seed=3).view(2, 4, 256))
    w, s = on_device(*weight(4 * 48, 256, torch.float8_e8m0fnu))
    out = gemv.fp8_gemv_grouped(x, w, s, config=config)
    ref = gemv.fp8_gemv_grouped_reference(x, w, s)
    assert out.shape == (2, 4, 48) and rel_error(out, ref) < FP32_TOL
    # the reference: each group against the whole weight, its own 48 columns kept
    whole = torch.stack([fp8.fp8_linear_reference(x[:, g], w, s)[:, 48 * g : 48 * (g + 1)] for g in range(4)], 1)
    assert rel_error(ref, whole) < 1e-6


def test_bad_inputs_raise() -> None:
    w, s = weight(64, 256, torch.float32)
    with pytest.raises(ValueError, match="at most 8 rows"):
        gemv.fp8_gemv(activations(9, 256), w, s)
    with pytest.raises(ValueError, match="weight must be"):
        gemv.fp8_gemv(activations(2, 128), w, s)
    with pytest.raises(ValueError, match="equal groups"):
        gemv.fp8_gemv_grouped(activations(3, 256).view(1, 3, 256), w, s)
    with pytest.raises(ValueError, match="block_n"):
        gemv.GemvConfig(3, 128)
    with pytest.raises(ValueError, match="tensor-core"):
        gemv.GemvConfig(8, 128, use_dot=True)


def test_empty_batch() -> None:
    w, s = weight(64, 256, torch.float32)
    assert gemv.fp8_gemv(torch.zeros(0, 256), w, s).shape == (0, 64)


def test_model_dispatch_uses_the_gemv_up_to_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """quantized_linear picks the GEMV by row count (the 2-row rule for small weights is off here; the
    native-quant tests check it); both sides compute the same function."""
    from v4.model import ops, quantized_linear as ql

    monkeypatch.setattr(ql, "GEMV_TWO_ROWS_MAX_WEIGHTS", 0)
    calls = []
    monkeypatch.setattr(ops, "fp8_gemv", lambda *a: calls.append("gemv") or fp8.fp8_linear_reference(*a))
    monkeypatch.setattr(ops, "fp8_linear", lambda *a: calls.append("gemm") or fp8.fp8_linear_reference(*a))
    w, s = weight(64, 256, torch.float8_e8m0fnu)
    for rows in (1, ql.GEMV_MAX_ROWS, ql.GEMV_MAX_ROWS + 1):
        ql.fp8_linear(activations(rows, 256), w, s)
    assert calls == ["gemv", "gemv", "gemm"]
