"""FP8 activation quantisation and block-scaled GEMM against their references (and the model's FP8 math).

Tolerances: act_quant is bit-exact. GEMM outputs in bfloat16 < 1e-2 (the interpreter's float32 ->
bfloat16 cast truncates, a GPU's rounds to nearest: up to one bf16 ulp, ~4e-3 relative). Float32
outputs < 1e-5 under the interpreter; < 2e-3 on a GPU, where Hopper's FP8 tensor cores accumulate
each 128-wide K block at reduced precision (~14 bits, DeepSeek-V3 report section 3.3.2) before the
kernel adds it in float32.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from v4.kernels import fp8_gemm as fp8
from v4.kernels import common
from v4.kernels.common import to_e4m3
from v4.model.quant import dequantize_fp8, quantize_fp8

from .device import KERNEL_DEVICE, needs_kernel

FP32_TOL = 1e-5 if KERNEL_DEVICE == "cpu" else 2e-3
TOL = {torch.float32: FP32_TOL, torch.bfloat16: 1e-2}
# e4m3 keeps 3 mantissa bits: rounding to nearest moves a normal value by at most 2^-4 of itself, a
# subnormal one (below 2^-6 of the scale) by at most half the subnormal spacing, 2^-10 of the scale.
E4M3_REL, E4M3_SUBNORMAL = 2.0**-4, 2.0**-10


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm())


def activations(m: int, k: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Random rows spanning six decades of magnitude (each 1 x 128 group gets its own scale)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 10.0 ** torch.empty(m, 1).uniform_(-3, 3, generator=g)
    return x.to(dtype)


def weight(n: int, k: int, scale_dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """An FP8 weight as checkpoints ship it (model.quant), with 128 x 128 block scales of that dtype."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 10.0 ** torch.empty(n, 1).uniform_(-2, 1, generator=g)
    q, s = quantize_fp8(w, ue8m0=scale_dtype == torch.float8_e8m0fnu)
    return q, s if scale_dtype == torch.float8_e8m0fnu else s.to(scale_dtype)


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Every output/workspace the kernels allocate starts as NaN; returns the allocations made."""
    made = []

    def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=device)
        if dtype == torch.float8_e4m3fn:
            t.view(torch.uint8).fill_(0x7F)  # e4m3's NaN
        else:
            t.fill_(float("nan"))
        made.append((tuple(shape), dtype))
        return t

    monkeypatch.setattr(fp8, "_empty", empty)
    return made


# --- references against the model's FP8 math (always run) ---------------------------------------


def test_act_quant_reference_matches_model_quantize_fp8() -> None:
    x = activations(9, 384)
    q, s = fp8.act_quant_reference(x, 128, ue8m0=True)
    # 1 x 128 groups as quantize_fp8's [..., 1, 128] matrices: same rule (amax / 448 rounded up to 2^e)
    mq, ms = quantize_fp8(x.view(9, 3, 1, 128), ue8m0=True)
    assert torch.equal(q.view(torch.uint8), mq.view(9, 384).view(torch.uint8))
    assert torch.equal(s, ms.float().view(9, 3))


@pytest.mark.parametrize("ue8m0", [True, False])
def test_act_quant_reference_round_trip(ue8m0: bool) -> None:
    x = activations(16, 512)
    x[3, 128:256] = 0.0  # an all-zero group: floored amax, finite scale, zeros out
    q, s = fp8.act_quant_reference(x, 128, ue8m0)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (16, 4)
    if ue8m0:
        mantissa, _ = torch.frexp(s)
        assert torch.all(mantissa == 0.5), "ue8m0 scales must be exact powers of two"
    deq = (q.float().view(16, 4, 128) * s[..., None]).view(16, 512)
    bound = E4M3_REL * x.abs() + E4M3_SUBNORMAL * s.repeat_interleave(128, dim=1)
    assert torch.all((deq - x).abs() <= bound)
    assert torch.all(q.float().abs() <= 448.0) and torch.all(q[3, 128:256].float() == 0)
    amax = x.view(16, 4, 128).abs().amax(-1)
    peak = (amax / s)[amax > fp8.AMAX_FLOOR]  # a group's amax in units of its scale
    if ue8m0:  # rounded up to a power of two: within a factor of 2 below the e4m3 maximum, never above
        assert torch.all((peak > 224.0) & (peak <= 448.0))
    else:  # amax maps to 448 (up to float32 rounding of amax / 448; the clamp catches the excess)
        assert torch.allclose(peak, torch.full_like(peak, 448.0), rtol=1e-6, atol=0)


def test_fp8_gemm_reference_is_the_blockwise_sum() -> None:
    a, sa = fp8.act_quant_reference(activations(7, 384))
    b, sb = weight(200, 384, torch.float8_e8m0fnu)
    out = fp8.fp8_gemm_reference(a, sa, b, sb, torch.float32)
    truth = torch.zeros(7, 200, dtype=torch.float64)  # the docstring's formula, in float64
    sb_rows = sb.double().repeat_interleave(128, dim=0)[:200]
    for kb in range(3):
        cols = slice(128 * kb, 128 * (kb + 1))
        truth += (a[:, cols].double() @ b[:, cols].double().T) * sa[:, kb, None].double() * sb_rows[None, :, kb]
    assert rel_error(out, truth) < 1e-6
    deq_a = a.float() * sa.repeat_interleave(128, dim=1)
    assert rel_error(out, deq_a @ dequantize_fp8(b, sb).T) < 1e-6  # what the model computes today


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_reference_error_is_activation_quantisation(dtype: torch.dtype) -> None:
    """Against x @ dequantised W^T only x's rounding remains: independent errors of at most 2^-4 of
    each value (uniform, rms <= 2^-4 / sqrt(3)) against random weights give rel. error <= 2^-4/sqrt(3)
    ~ 0.036 in expectation (measured ~0.026); bf16 output adds 2^-9. Above 2^-7: x really is quantised."""
    x = activations(24, 512, dtype)
    b, sb = weight(256, 512, torch.float8_e8m0fnu)
    err = rel_error(fp8.fp8_linear_reference(x, b, sb), x.float() @ dequantize_fp8(b, sb).T)
    assert 2.0**-7 < err < E4M3_REL / 3**0.5 + 2.0**-9


def test_bad_inputs_raise_value_errors() -> None:
    a, sa = fp8.act_quant_reference(activations(4, 256))
    b, sb = weight(64, 256, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        fp8.act_quant(activations(4, 200), 128)
    with pytest.raises(ValueError, match="power of two"):
        fp8.act_quant(activations(4, 300), 100)
    with pytest.raises(ValueError, match="a must be"):
        fp8.fp8_gemm(a.float(), sa, b, sb)
    with pytest.raises(ValueError, match="a_scale"):
        fp8.fp8_gemm(a, sa[:, :1], b, sb)
    with pytest.raises(ValueError, match="weight scale"):
        fp8.fp8_gemm(a, sa, b, sb.half())
    with pytest.raises(ValueError, match="weight must be"):
        fp8.fp8_linear(activations(4, 128), b, sb)
    with pytest.raises(ValueError, match="out_dtype"):
        fp8.fp8_gemm(a, sa, b, sb, torch.int32)


def test_empty_batch_launches_nothing() -> None:
    b, sb = weight(64, 256, torch.float32)
    assert fp8.fp8_linear(torch.zeros(0, 256), b, sb).shape == (0, 64)
    q, s = fp8.act_quant(torch.zeros(0, 256))
    assert q.shape == (0, 256) and s.shape == (0, 2)


# --- kernels against the references ------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("m,k", [(1, 128), (37, 384), (70, 256)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ue8m0", [True, False])
def test_act_quant_is_bit_exact(poisoned: list, m: int, k: int, dtype: torch.dtype, ue8m0: bool) -> None:
    x = activations(m, k + 128, dtype)[:, :k].to(KERNEL_DEVICE)  # rows strided: stride K + 128
    q, s = fp8.act_quant(x, 128, ue8m0)
    rq, rs = fp8.act_quant_reference(x, 128, ue8m0)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert torch.equal(s, rs)


@needs_kernel
def test_act_quant_edge_values_are_bit_exact(poisoned: list) -> None:
    """Zero groups, -0.0, values in e4m3's subnormal range and far below it, exact ties."""
    x = activations(4, 384)
    x[0, :128] = 0.0
    x[1, :128] = -0.0
    x[2, 128:256] *= torch.logspace(-12, 0, 128, base=2.0)  # down to 2^-12 of the group's max
    x[3, 256:] = torch.tensor([448.0, 1.0, 1.0625, 1.1875, -0.5, 2.0**-10, 3 * 2.0**-11, -(2.0**-10)]).repeat(16)
    x = x.to(KERNEL_DEVICE)
    for ue8m0 in (True, False):
        (q, s), (rq, rs) = fp8.act_quant(x, 128, ue8m0), fp8.act_quant_reference(x, 128, ue8m0)
        assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)


@triton.jit
def _cast_kernel(x_ptr, q_ptr, n, INTERPRET: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(q_ptr + offs, to_e4m3(x, INTERPRET), mask=offs < n)  # the one cast every FP8 kernel uses


@needs_kernel
def test_e4m3_cast_rounds_to_nearest_even() -> None:
    """Every e4m3 value, every midpoint (ties go to the even code), signed zeros, random magnitudes."""
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[grid.isfinite()].unique()
    random = torch.randn(20000) * 10.0 ** torch.empty(20000).uniform_(-4, 2.6)
    x = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([0.0, -0.0]), random]).clamp(-448, 448)
    x = x.to(KERNEL_DEVICE)
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=KERNEL_DEVICE)
    _cast_kernel[(triton.cdiv(x.numel(), 4096),)](x, q, x.numel(), INTERPRET=fp8.interpreting(), BLOCK=4096)
    assert torch.equal(q.view(torch.uint8), x.to(torch.float8_e4m3fn).view(torch.uint8))


GEMM_CASES = [  # (M, N, K, weight scale dtype, out dtype): ragged M and N, K = 128/256/384
    (1, 64, 128, torch.float8_e8m0fnu, torch.float32),
    (5, 200, 384, torch.float8_e8m0fnu, torch.bfloat16),   # decode, split-K over 3 K blocks
    (16, 128, 256, torch.float32, torch.float32),            # decode, split-K over 2
    (64, 320, 256, torch.bfloat16, torch.bfloat16),          # largest decode tile
    (100, 200, 384, torch.float32, torch.bfloat16),          # autotuned path, ragged M and N
    (130, 96, 128, torch.float8_e8m0fnu, torch.float32),
]


@needs_kernel
@pytest.mark.parametrize("m,n,k,scale_dtype,out_dtype", GEMM_CASES)
def test_fp8_gemm_matches_reference(poisoned: list, m: int, n: int, k: int, scale_dtype: torch.dtype,
                                    out_dtype: torch.dtype) -> None:
    a, sa = fp8.act_quant_reference(activations(m, k).to(KERNEL_DEVICE))
    b, sb = (t.to(KERNEL_DEVICE) for t in weight(n, k, scale_dtype))
    out = fp8.fp8_gemm(a, sa, b, sb, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert rel_error(out, fp8.fp8_gemm_reference(a, sa, b, sb, out_dtype)) < TOL[out_dtype]


@needs_kernel
def test_fp8_gemm_wide_e8m0_exponents(poisoned: list) -> None:
    """Weight scales 2^-27 .. 2^23 (e8m0 bytes 100..150) decode exactly in the kernel."""
    a, sa = fp8.act_quant_reference(activations(3, 256).to(KERNEL_DEVICE))
    b, _ = weight(256, 256, torch.float32)
    sb = torch.randint(100, 151, (2, 2), dtype=torch.uint8).view(torch.float8_e8m0fnu)
    b, sb = b.to(KERNEL_DEVICE), sb.to(KERNEL_DEVICE)
    out = fp8.fp8_gemm(a, sa, b, sb, torch.float32)
    assert rel_error(out, fp8.fp8_gemm_reference(a, sa, b, sb, torch.float32)) < FP32_TOL


@needs_kernel
def test_split_k_partials_all_written(poisoned: list) -> None:
    """A decode shape with few output tiles takes the split-K path (NaN workspace, every slot written)."""
    if KERNEL_DEVICE != "cpu":
        pytest.skip("the split count depends on the GPU's SM count")
    a, sa = fp8.act_quant_reference(activations(5, 384))
    b, sb = weight(200, 384, torch.float32)
    out = fp8.fp8_gemm(a, sa, b, sb, torch.float32)
    assert ((3, 5, 200), torch.float32) in poisoned
    assert rel_error(out, fp8.fp8_gemm_reference(a, sa, b, sb, torch.float32)) < FP32_TOL


@needs_kernel
def test_fused_split_sum_equals_the_separate_sum_kernel(poisoned: list) -> None:
    """The last split of each tile sums the partials in the kernel: the same bits as the separate sum
    kernel, every arrival counter back at 0 afterwards (so the next call, or graph replay, starts clean)."""
    a, sa = fp8.act_quant_reference(activations(5, 384).to(KERNEL_DEVICE))
    b, sb = (t.to(KERNEL_DEVICE) for t in weight(200, 384, torch.float8_e8m0fnu))
    fused = [fp8.fp8_gemm(a, sa, b, sb, dtype) for dtype in (torch.float32, torch.bfloat16, torch.float32)]
    locks = common._COUNTERS[torch.device(KERNEL_DEVICE) if KERNEL_DEVICE == "cpu" else a.device]
    assert int(locks.abs().sum()) == 0
    unfused = fp8.DecodeTiles(fuse_split_sum=False)
    separate = [fp8.fp8_gemm(a, sa, b, sb, dtype, tiles=unfused)
                for dtype in (torch.float32, torch.bfloat16, torch.float32)]
    for x, y in zip(fused, separate):
        assert torch.equal(x, y)
    assert torch.equal(fused[0], fused[2])


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 256), (2, 3, 384), (70, 256)])  # fused decode path; act_quant + GEMM
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp8_linear_matches_reference(poisoned: list, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = activations(int(torch.tensor(shape[:-1]).prod()), shape[-1], dtype).view(shape).to(KERNEL_DEVICE)
    b, sb = (t.to(KERNEL_DEVICE) for t in weight(200, shape[-1], torch.float8_e8m0fnu))
    out = fp8.fp8_linear(x, b, sb)
    assert out.shape == (*shape[:-1], 200) and out.dtype == dtype
    assert rel_error(out, fp8.fp8_linear_reference(x, b, sb)) < TOL[dtype]


@needs_kernel
def test_fused_quantisation_equals_act_quant(poisoned: list) -> None:
    """Decode quantises x inside the GEMM: the same product as act_quant followed by fp8_gemm."""
    x = activations(6, 384).to(KERNEL_DEVICE)
    b, sb = (t.to(KERNEL_DEVICE) for t in weight(200, 384, torch.float32))
    fused = fp8.fp8_linear(x, b, sb)
    assert rel_error(fused, fp8.fp8_gemm(*fp8.act_quant(x), b, sb, torch.float32)) < 1e-6
    err = rel_error(fused, x.float() @ dequantize_fp8(b, sb).T)  # as the reference's bound above
    assert 2.0**-7 < err < E4M3_REL / 3**0.5


@needs_kernel
def test_benchmark_cases_at_tiny_scale() -> None:
    from benchmarks.kernel_cases.fp8_gemm import cases

    built = cases(KERNEL_DEVICE, tiny=True)
    assert all(c.bytes_moved > 0 and c.flops > 0 for c in built)
    assert {c.kernel_name for c in built} >= {"act_quant", "fp8_gemm", "fp8_linear", "bf16 linear (peer)"}
    for case in built:
        if case.kernel_name == "act_quant" or case.shape.startswith("wkv"):  # one projection: interpreter time
            assert case.check() < 1e-2, case.shape
