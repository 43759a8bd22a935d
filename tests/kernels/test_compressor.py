"""The compressor's pooling kernel against its reference, and the reference against model/attention.py."""

from __future__ import annotations

import pytest
import torch
import triton

from v4.kernels.compressor import _compress_windows, _plan, compress_windows, compress_windows_reference
from v4.model.attention import Compressor
from v4.model.config import V4Config
from v4.model.layers import rope_cos_sin, rope_inv_freq
from v4.model.state import CompressorState

from .device import KERNEL_DEVICE, needs_kernel

# channels past D are all -inf in the interpreter's numpy softmax (then zeroed): not a failure
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16]
EPS = 1e-6


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere (an unwritten element) makes it NaN."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def random_windows(batch: int, windows: int, slots: int, dim: int, rope_dim: int, dtype: torch.dtype,
                   device: str | None = None) -> tuple[torch.Tensor, ...]:
    """kv, gate `[B, W, L, D]` with window 0's first half masked (CSA's first window), weight, cos, sin."""
    kv = torch.randn(batch, windows, slots, dim, device=device).to(dtype)
    gate = (torch.randn(batch, windows, slots, dim, device=device) * 2).to(dtype)
    gate[:, 0, : slots // 2] = float("-inf")
    weight = torch.randn(dim, device=device) + 1
    angles = torch.rand(windows, rope_dim // 2, device=device) * 6.3
    return kv, gate, weight, angles.cos(), angles.sin()


# ----------------------------------------------------------------------------- the reference vs the model

def tiny_compressor(overlap: bool, dtype: torch.dtype) -> tuple[Compressor, V4Config]:
    config = V4Config(hidden_size=32, head_dim=16, num_attention_heads=8, partial_rotary_factor=0.5,
                      num_hidden_layers=2)
    module = Compressor(config, rate=4, dim=16, overlap=overlap)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape) * 0.5 + (1 if parameter.dim() == 1 else 0))
    module.to(dtype)
    module.norm.weight.data = module.norm.weight.data.float()  # float32, as the model loads it
    return module, config


def assembled_windows(module: Compressor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kv, gate `[B, W, L, D]` as Compressor.forward assembles them from position 0 (overlap included)."""
    rate = module.rate
    slots = torch.arange(x.shape[1]) % rate
    kv = module.wkv(x).unflatten(1, (-1, rate))
    gate = (module.wgate(x) + module.ape[slots]).unflatten(1, (-1, rate))
    if module.overlap:
        kv, gate, _ = module._overlap(kv, gate, None)  # nothing before the first window
    return kv, gate


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overlap", [False, True], ids=["hca", "csa"])
def test_reference_is_the_model_compressor(overlap: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    module, config = tiny_compressor(overlap, dtype)
    x = torch.randn(2, 13, 32).to(dtype)  # 3 whole windows and one token left over
    state = CompressorState.empty(2, 8, 4, 16, overlap, dtype, "cpu")
    inv_freq = rope_inv_freq(config.rope_parameters["compress"], config.qk_rope_head_dim)
    with torch.no_grad():
        entries = module(x, 0, state, inv_freq)
        kv, gate = assembled_windows(module, x[:, :12])
    if overlap:
        assert torch.isinf(gate[:, 0, :4]).all()  # the first window's previous half is masked
    cos, sin = rope_cos_sin(inv_freq, torch.arange(3) * 4)
    ref = compress_windows_reference(kv, gate, module.norm.weight, config.rms_norm_eps, cos, sin)
    torch.testing.assert_close(ref, entries, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- the kernel

SHAPES = [  # B, W, L, D, R
    (1, 3, 8, 64, 16),  # CSA-like: 2 x rate 4
    (2, 3, 6, 40, 8),  # ragged L and D
    (1, 2, 20, 96, 32),  # L beyond one chunk
    (2, 2, 5, 16, 16),  # rope over the whole row
]


def plans(slots: int, dim: int) -> dict[str, tuple[int, int]]:
    """(BLOCK_D, BLOCK_L) for each code path: whole rows in one or several chunks, or split channels."""
    whole = triton.next_power_of_2(dim)
    one_pass = max(2, triton.next_power_of_2(slots))
    return {"fused": (whole, one_pass), "fused_chunked": (whole, 4),
            "split": (max(16, whole // 4), one_pass), "split_chunked": (max(16, whole // 4), 4)}


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["fused", "fused_chunked", "split", "split_chunked"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_compress_windows_paths(shape: tuple[int, ...], path: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    batch, windows, slots, dim, rope_dim = shape
    kv, gate, weight, cos, sin = random_windows(*shape, dtype, KERNEL_DEVICE)
    out = torch.full((batch, windows, dim), float("nan"), dtype=dtype, device=KERNEL_DEVICE)
    block_d, block_l = plans(slots, dim)[path]
    _compress_windows(kv, gate, weight, EPS, cos, sin, out, block_d, block_l)
    assert rel_error(out, compress_windows_reference(kv, gate, weight, EPS, cos, sin)) < TOLERANCE[dtype]


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_compress_windows_on_the_model_windows(dtype: torch.dtype) -> None:
    """The public entry point on what Compressor.forward pools, -inf overlap half and all."""
    torch.manual_seed(0)
    module, config = tiny_compressor(True, dtype)
    with torch.no_grad():
        kv, gate = assembled_windows(module, torch.randn(2, 12, 32).to(dtype))
    angles = torch.rand(3, 4) * 6.3
    args = (module.norm.weight.detach(), config.rms_norm_eps, angles.cos(), angles.sin())
    kv, gate = kv.to(KERNEL_DEVICE), gate.to(KERNEL_DEVICE)
    args = tuple(a.to(KERNEL_DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    out = compress_windows(kv, gate, *args)
    assert rel_error(out, compress_windows_reference(kv, gate, *args)) < TOLERANCE[dtype]


@needs_kernel
def test_compress_windows_writes_into_a_state_slice() -> None:
    """`out=` a strided slice of the entries: the new rows written, every other row left alone."""
    torch.manual_seed(0)
    kv, gate, weight, cos, sin = random_windows(2, 3, 8, 64, 16, torch.float32, KERNEL_DEVICE)
    entries = torch.full((2, 6, 64), float("nan"), device=KERNEL_DEVICE)
    compress_windows(kv, gate, weight, EPS, cos, sin, out=entries[:, 1:4])
    assert rel_error(entries[:, 1:4], compress_windows_reference(kv, gate, weight, EPS, cos, sin)) < 1e-5
    assert entries[:, 0].isnan().all() and entries[:, 4:].isnan().all()


def test_plan_fills_the_gpu() -> None:
    """V4-Flash prefill of 8192 tokens: CSA (1024 windows) and the indexer keep whole rows in one
    chunk; HCA (64 windows of 128) splits channels to have programs for every SM."""
    assert _plan(1024, 8, 512) == (512, 8)
    assert _plan(1024, 8, 128) == (128, 8)
    block_d, block_l = _plan(64, 128, 512)
    assert block_d < 512 and 64 * 512 // block_d >= 264 and block_l == 128  # split, one pass
    assert _plan(1024, 128, 512) == (512, 16)  # long prefill: whole rows, two passes


@needs_kernel
@pytest.mark.parametrize("change,message", [
    (lambda a: {**a, "gate": a["gate"][..., :-2]}, "kv and gate"),
    (lambda a: {**a, "gate": a["gate"].double()}, "dtype"),
    (lambda a: {**a, "kv": a["kv"][..., :-1], "gate": a["gate"][..., :-1]}, "D even"),
    (lambda a: {**a, "norm_weight": a["norm_weight"][:-1]}, "norm_weight"),
    (lambda a: {**a, "cos": a["cos"][:-1], "sin": a["sin"][:-1]}, "cos and sin"),
    (lambda a: {**a, "cos": a["cos"].double(), "sin": a["sin"].double()}, "float32"),
])
def test_rejects_bad_inputs(change, message: str) -> None:
    kv, gate, weight, cos, sin = random_windows(1, 3, 8, 64, 16, torch.float32, KERNEL_DEVICE)
    args = {"kv": kv, "gate": gate, "norm_weight": weight, "eps": EPS, "cos": cos, "sin": sin}
    with pytest.raises(ValueError, match=message):
        compress_windows(**change(args))
