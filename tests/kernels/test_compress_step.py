"""The decode compressor step (kernels/compress_step.py) against its PyTorch reference: the same partial
windows written, bit for bit, and the same entries to the pooling kernel's tolerance."""

from __future__ import annotations

import pytest
import torch

from v4.kernels import compress_step as module
from v4.kernels.compress_step import compress_step, compress_step_reference

from .device import KERNEL_DEVICE, needs_kernel

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
EPS = 1e-6


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def step_inputs(overlap: bool, rate: int, dim: int, dtype: torch.dtype, gate_dtype: torch.dtype) -> dict:
    """Two rows, the second inactive (it writes the scratch row 2), at slots 1 and rate - 1 of windows
    of either parity; partial windows holding earlier tokens, CSA's first-window half masked."""
    torch.manual_seed(0)
    batch, series = 2, 2 if overlap else 1
    slots = 4 * rate if overlap else rate
    device = KERNEL_DEVICE
    slot = torch.tensor([1, rate - 1], device=device)
    parity = torch.tensor([0, 1], device=device)
    write_rows = torch.tensor([0, batch], device=device)
    if overlap:
        write_slots = torch.stack([(1 - parity) * 2 * rate + slot, parity * 2 * rate + rate + slot], dim=-1)
        window_rows = torch.arange(batch, device=device) * 2 + parity
    else:
        write_slots, window_rows = slot[:, None], None
    buf_gate = (torch.randn(batch + 1, slots, dim, device=device) * 2).to(gate_dtype)
    if overlap:
        buf_gate[0, :rate] = float("-inf")  # row 0 is in its first window: nothing before it
    half = dim // 4
    angles = torch.rand(batch, half, device=device) * 6.3
    return dict(kv_new=torch.randn(batch, series * dim, device=device).to(dtype),
                gate_new=torch.randn(batch, series * dim, device=device).to(dtype),
                ape=torch.randn(rate, series * dim, device=device), slot=slot,
                buf_kv=torch.randn(batch + 1, slots, dim, device=device).to(dtype), buf_gate=buf_gate,
                write_rows=write_rows, write_slots=write_slots, window_rows=window_rows,
                norm_weight=torch.randn(dim, device=device) + 1, eps=EPS, cos=angles.cos(), sin=angles.sin())


def run_both(inputs: dict) -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    ours = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
    theirs = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}
    return compress_step(**ours), ours, compress_step_reference(**theirs), theirs


CASES = [  # overlap, rate, dim, dtype, gate dtype
    (True, 4, 64, torch.bfloat16, torch.bfloat16),  # CSA, narrow
    (True, 4, 40, torch.float32, torch.float32),  # ragged channels, float model
    (False, 16, 64, torch.bfloat16, torch.bfloat16),  # HCA-like, one tile
    (False, 128, 512, torch.bfloat16, torch.bfloat16),  # HCA at V4's shape: chunks of slots
]


@needs_kernel
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{'csa' if c[0] else 'hca'}-r{c[1]}-d{c[2]}-{c[3]}")
def test_compress_step_matches_the_reference(case: tuple) -> None:
    overlap, rate, dim, dtype, gate_dtype = case
    out, ours, ref, theirs = run_both(step_inputs(overlap, rate, dim, dtype, gate_dtype))
    assert torch.equal(ours["buf_kv"], theirs["buf_kv"])
    assert torch.equal(ours["buf_gate"], theirs["buf_gate"])
    # the active row (an inactive row's entry goes to a scratch slot: the reference pools its window
    # without the token's kv, the kernel with it; neither is ever read)
    assert rel_error(out[:1], ref[:1]) < TOLERANCE[dtype]
    assert not out.isnan().any()


@needs_kernel
def test_compress_step_chunks_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window over several tiles (online softmax across chunks) gives the one-tile entry."""
    inputs = step_inputs(False, 16, 64, torch.float32, torch.float32)
    whole, *_ = run_both(inputs)
    monkeypatch.setattr(module, "TILE_ELEMENTS", 256)  # 4 slots per tile
    chunked, _, ref, _ = run_both(inputs)
    assert rel_error(chunked, whole) < 1e-6 and rel_error(chunked[:1], ref[:1]) < 1e-5


def test_bad_inputs_are_refused() -> None:
    inputs = step_inputs(True, 4, 16, torch.float32, torch.float32) if KERNEL_DEVICE else None
    if inputs is None:
        pytest.skip("needs a kernel device for the inputs' device")
    with pytest.raises(ValueError, match="write_slots"):
        compress_step_reference(**{**inputs, "window_rows": None})
    with pytest.raises(ValueError, match="ape"):
        compress_step_reference(**{**inputs, "ape": inputs["ape"].double()})
