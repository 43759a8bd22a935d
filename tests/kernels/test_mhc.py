"""mHC kernels (kernels/mhc.py) against their references, and the references against model/mhc.py."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.mhc import hc_head, hc_head_reference, hc_post, hc_post_reference, hc_pre, hc_pre_reference

from .device import KERNEL_DEVICE, needs_kernel

RMS_EPS, HC_EPS, ITERS = 1e-6, 1e-6, 20
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # ||out - ref|| / ||ref|| of streams-dtype outputs
WEIGHT_TOL = 1e-5  # pre / post / comb are float32 whatever the streams' dtype
# (tokens as (B, S), streams N, hidden D): ragged token counts and D not a multiple of the blocks
SHAPES = [((1, 1), 4, 64), ((1, 7), 4, 96), ((4, 5), 4, 64), ((3, 11), 4, 64), ((1, 2), 4, 4096), ((2, 3), 3, 40)]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def _mhc_inputs(tokens: tuple[int, int], n: int, dim: int, dtype: torch.dtype, head: bool, device: str,
                seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random streams and hc parameters scaled as trained ones roughly are (mixes of order 1)."""
    g = torch.Generator().manual_seed(seed)
    mix = n if head else (2 + n) * n
    streams = torch.randn(*tokens, n, dim, generator=g).to(dtype)
    fn = torch.randn(mix, n * dim, generator=g) * (n * dim) ** -0.5
    base = torch.randn(mix, generator=g) * 0.5
    scale = torch.rand(1 if head else 3, generator=g) + 0.5
    return tuple(t.to(device) for t in (streams, fn, base, scale))


def _poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output the launchers allocate starts as NaN, so an unwritten element fails the test."""
    import v4.kernels.mhc as mhc

    class PoisonedTorch:
        def __getattr__(self, name: str) -> object:
            return getattr(torch, name)

        @staticmethod
        def empty(*args: object, **kwargs: object) -> torch.Tensor:
            return torch.full(torch.empty(*args, **kwargs).shape, float("nan"), **kwargs)

        @staticmethod
        def empty_like(t: torch.Tensor) -> torch.Tensor:
            return torch.full_like(t, float("nan"))

    monkeypatch.setattr(mhc, "torch", PoisonedTorch())


# ----------------------------------------------------------------------------- kernels

@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,n,dim", SHAPES)
def test_hc_pre(tokens: tuple[int, int], n: int, dim: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    _poison(monkeypatch)
    args = _mhc_inputs(tokens, n, dim, dtype, head=False, device=KERNEL_DEVICE)
    x, post, comb, pre = hc_pre(*args, RMS_EPS, HC_EPS, ITERS)
    rx, rpost, rcomb, rpre = hc_pre_reference(*args, RMS_EPS, HC_EPS, ITERS)
    assert x.dtype == dtype and x.shape == rx.shape and comb.shape == rcomb.shape
    for out, ref in ((post, rpost), (comb, rcomb), (pre, rpre)):
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert _rel(out, ref) < WEIGHT_TOL
    assert _rel(x, rx) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,n,dim", SHAPES)
def test_hc_head(tokens: tuple[int, int], n: int, dim: int, dtype: torch.dtype,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    _poison(monkeypatch)
    args = _mhc_inputs(tokens, n, dim, dtype, head=True, device=KERNEL_DEVICE)
    x = hc_head(*args, RMS_EPS, HC_EPS)
    ref = hc_head_reference(*args, RMS_EPS, HC_EPS)
    assert x.dtype == dtype and x.shape == ref.shape
    assert _rel(x, ref) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,n,dim", SHAPES + [((5, 13), 4, 200)])
def test_hc_post(tokens: tuple[int, int], n: int, dim: int, dtype: torch.dtype,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    _poison(monkeypatch)
    streams, fn, base, scale = _mhc_inputs(tokens, n, dim, dtype, head=False, device=KERNEL_DEVICE)
    _, post, comb, _ = hc_pre_reference(streams, fn, base, scale, RMS_EPS, HC_EPS, ITERS)
    output = torch.randn(*tokens, dim, generator=torch.Generator().manual_seed(1)).to(dtype).to(KERNEL_DEVICE)
    new = hc_post(output, streams, post, comb)
    ref = hc_post_reference(output, streams, post, comb)
    assert new.dtype == dtype and new.shape == ref.shape
    assert _rel(new, ref) < TOL[dtype]


@needs_kernel
def test_hc_pre_many_k_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode-like plans: 24 K splits of 16 columns, summed by kernel B in two chunks of 16."""
    import v4.kernels.mhc as mhc

    _poison(monkeypatch)
    monkeypatch.setattr(mhc, "_mix_config", lambda num_tokens, device: (16, 16, 4))
    monkeypatch.setattr(mhc, "num_sms", lambda device, fallback: 16)
    args = _mhc_inputs((2, 4), 4, 96, torch.bfloat16, head=False, device=KERNEL_DEVICE)
    x, post, comb, pre = hc_pre(*args, RMS_EPS, HC_EPS, ITERS)
    rx, rpost, rcomb, rpre = hc_pre_reference(*args, RMS_EPS, HC_EPS, ITERS)
    assert max(_rel(post, rpost), _rel(comb, rcomb), _rel(pre, rpre)) < WEIGHT_TOL
    assert _rel(x, rx) < TOL[torch.bfloat16]


@needs_kernel
def test_hc_pre_iteration_counts_and_empty() -> None:
    """One Sinkhorn iteration (the column normalisation only) and zero tokens."""
    args = _mhc_inputs((1, 5), 4, 64, torch.float32, head=False, device=KERNEL_DEVICE)
    for out, ref in zip(hc_pre(*args, RMS_EPS, HC_EPS, 1), hc_pre_reference(*args, RMS_EPS, HC_EPS, 1)):
        assert _rel(out, ref) < WEIGHT_TOL
    streams, fn, base, scale = _mhc_inputs((1, 1), 4, 64, torch.float32, head=False, device=KERNEL_DEVICE)
    x, post, comb, pre = hc_pre(streams[:, :0], fn, base, scale, RMS_EPS, HC_EPS, ITERS)
    assert x.shape == (1, 0, 64) and comb.shape == (1, 0, 4, 4)


def test_launchers_reject_bad_inputs() -> None:
    streams, fn, base, scale = _mhc_inputs((1, 2), 4, 64, torch.float32, head=False, device="cpu")
    with pytest.raises(ValueError, match="fn must have shape"):
        hc_pre(streams, fn[:, :-1], base, scale, RMS_EPS, HC_EPS, ITERS)
    with pytest.raises(ValueError, match="streams must be"):
        hc_pre(streams[0], fn, base, scale, RMS_EPS, HC_EPS, ITERS)
    with pytest.raises(ValueError, match="streams must be one of"):
        hc_head(streams.double(), fn[:4], base[:4], scale[:1], RMS_EPS, HC_EPS)
    with pytest.raises(ValueError, match="output must be"):
        hc_post(streams[:, :, 0].bfloat16(), streams, torch.rand(1, 2, 4), torch.rand(1, 2, 4, 4))
    with pytest.raises(ValueError, match="streams must be contiguous"):
        hc_post(streams[:, :, 0], streams.transpose(-1, -2).contiguous().transpose(-1, -2), torch.rand(1, 2, 4),
                torch.rand(1, 2, 4, 4))


def test_benchmark_cases_build_at_tiny_scale() -> None:
    from benchmarks.kernel_cases.mhc import cases

    built = cases("cpu", tiny=True)
    assert {c.kernel_name for c in built} == {"hc_pre", "hc_post", "hc_head"}
    assert all(c.bytes_moved > 0 and c.flops > 0 for c in built)
    if KERNEL_DEVICE == "cpu":
        assert max(c.check() for c in built) < 1e-2
