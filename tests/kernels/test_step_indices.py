"""kernels/step_indices.py: a decode step's position-derived indices, the kernels against the references."""

from __future__ import annotations

import pytest
import torch

from v4.kernels import step_indices as si

from .device import KERNEL_DEVICE, needs_kernel

# rows at positions that cross every boundary: 0 (a window reaching before the start), the last slot of
# a rate-4 window, a rate-4 window's first, a large position (RoPE's range reduction), one inactive row
POSITIONS = [0, 7, 12, 1_048_571]
ACTIVE = [True, True, False, True]


def _rows(device: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(POSITIONS, dtype=torch.long, device=device),
            torch.tensor(ACTIVE, dtype=torch.bool, device=device))


def _poisoned(*shape: int, dtype: torch.dtype, device: str | None) -> torch.Tensor:
    return torch.full(shape, 99, dtype=dtype, device=device) if dtype != torch.bool else \
        torch.ones(shape, dtype=dtype, device=device)


@needs_kernel
@pytest.mark.parametrize("tokens", [1, 2])
def test_ring_indices_match_the_reference(tokens: int) -> None:
    device, batch, window, ring = KERNEL_DEVICE, len(POSITIONS), 8, 8 + tokens - 1
    positions, active = _rows(device)
    entries = torch.tensor([0, 3, 17], dtype=torch.long, device=device)
    outs = []
    for fn in (si.ring_indices, si.ring_indices_reference):
        slots = _poisoned(3, batch, tokens, dtype=torch.long, device=device)
        windows = _poisoned(3, batch, tokens, window, dtype=torch.int32, device=device)
        rows = _poisoned(batch, dtype=torch.long, device=device)
        csa = _poisoned(batch, tokens, window + 5, dtype=torch.int32, device=device)
        fn(positions, active, entries, ring, slots, windows, rows, (csa, 2))
        outs.append((slots, windows, rows, csa))
    for got, want in zip(*outs, strict=True):
        assert torch.equal(got, want)
    slots, windows, rows, csa = outs[0]
    assert rows.tolist() == [0, 1, batch, 3]  # the inactive row writes the scratch row
    assert slots[2, 2].tolist() == [17 + ring] * tokens  # ... and the scratch slot
    assert windows[1, 0, 0].tolist() == [3] + [-1] * (window - 1)  # position 0 sees itself only
    assert torch.equal(csa[..., :window], windows[2]) and (csa[..., window:] == 99).all()  # the top-k part left


@needs_kernel
@pytest.mark.parametrize(("rate", "overlap", "tokens"), [(4, True, 1), (4, True, 2), (128, False, 2)])
def test_window_indices_match_the_reference(rate: int, overlap: bool, tokens: int) -> None:
    device, batch = KERNEL_DEVICE, len(POSITIONS)
    positions, active = _rows(device)
    span = 2 * rate if overlap else rate
    outs = []
    for fn in (si.window_indices, si.window_indices_reference):
        out = {"ape_slot": _poisoned(batch, tokens, dtype=torch.long, device=device),
               "write_slots": _poisoned(batch, tokens, 2 if overlap else 1, dtype=torch.long, device=device),
               "window_rows": _poisoned(batch, tokens, dtype=torch.long, device=device) if overlap else None,
               "current": _poisoned(batch, tokens, span, 1, dtype=torch.bool, device=device),
               "entry_slot": _poisoned(batch, tokens, dtype=torch.long, device=device),
               "key_slot": _poisoned(batch, tokens, dtype=torch.long, device=device),
               "closed": _poisoned(batch, tokens, dtype=torch.int32, device=device)}
        fn(positions, active, rate, 300_000, 9, overlap, out)
        outs.append(out)
    for name, got in outs[0].items():
        assert (got is None and outs[1][name] is None) or torch.equal(got, outs[1][name]), name
    got = outs[0]
    assert got["closed"][:, 0].tolist() == [(p + 1) // rate for p in POSITIONS]
    assert got["current"].sum(dim=(2, 3)).eq(1).all()  # one slot holds each token
    assert (got["entry_slot"][2] == 300_000 + 9).all() and (got["key_slot"][2] == 300_000).all()  # inactive
    if tokens == 2 and rate == 4:  # position 7 closes its window, 8 starts the next: both write
        assert got["entry_slot"][1].tolist() == [1, 2]
        assert got["entry_slot"][0].tolist() == [300_009, 0]  # 0 and 1 share a window: the later one writes


@needs_kernel
@pytest.mark.parametrize("tokens", [1, 2])
def test_rope_angles_match_the_reference(tokens: int) -> None:
    device, batch = KERNEL_DEVICE, len(POSITIONS)
    positions, _ = _rows(device)
    gen = torch.Generator().manual_seed(0)
    tables = torch.rand(2, 12, generator=gen).to(device)
    jobs = torch.tensor([[0, 1], [1, 1], [1, 4], [0, 128]], dtype=torch.long, device=device)
    outs = []
    for fn in (si.rope_angles, si.rope_angles_reference):
        cos, sin, neg = (torch.full((4, batch * tokens, 12), 9.0, device=device) for _ in range(3))
        fn(positions, tokens, tables, jobs, cos, sin, neg)
        outs.append((cos, sin, neg))
    for got, want in zip(*outs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6)  # cos/sin of one float32 angle, to an ulp
    cos, sin, neg = outs[0]
    assert torch.equal(neg, -sin)
    first = torch.tensor(POSITIONS, device=device).repeat_interleave(tokens) + torch.arange(tokens, device=device).repeat(batch)
    want = ((first // 128 * 128).float()[:, None] * tables[0]).cos()
    torch.testing.assert_close(cos[3], want, rtol=0, atol=2e-6)  # rate 128: at each window's first position


@needs_kernel
def test_bad_buffers_raise_value_errors() -> None:
    device = KERNEL_DEVICE
    positions, active = _rows(device)
    entries = torch.zeros(1, dtype=torch.long, device=device)
    slots = torch.zeros(1, 4, 1, dtype=torch.long, device=device)
    rows = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="int32"):
        si.ring_indices(positions, active, entries, 8, slots, torch.zeros(1, 4, 1, 8, dtype=torch.long, device=device),
                        rows)
    with pytest.raises(ValueError, match="int64"):
        si.ring_indices(positions.int(), active, entries, 8, slots,
                        torch.zeros(1, 4, 1, 8, dtype=torch.int32, device=device), rows)
    with pytest.raises(ValueError, match="float32"):
        cos = torch.zeros(1, 4, 6, device=device)
        si.rope_angles(positions, 1, torch.zeros(1, 6, dtype=torch.float64, device=device),
                       torch.zeros(1, 2, dtype=torch.long, device=device), cos, cos.clone(), cos.clone())
