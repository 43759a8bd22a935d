"""The decode step's FP8 writes (kernels/kv_write.py) against quantise-then-index_put, byte for byte."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.kv_write import (write_index_keys_fp8, write_index_keys_fp8_reference, write_kv_fp8,
                                 write_kv_fp8_reference)

from .device import KERNEL_DEVICE, needs_kernel

DTYPES = [torch.bfloat16, torch.float32]


def hard_rows(batch: int, tokens: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows over twelve decades, an all-zero block, a block whose amax / 448 is a power of two exactly,
    and values that round half-way on the e4m3 grid."""
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, dim) * torch.logspace(-6, 6, batch * tokens).view(batch, tokens, 1)
    x[0, 0, :64] = 0
    x[-1, -1] = 0
    x[-1, -1, 32:64] = 448 * 2.0**-5  # the block's (and the key's) amax / 448 a power of two
    x[-1, 0, : dim // 2] = torch.linspace(-1.0625, 1.0625, dim // 2) * 448 * 2.0**-3
    return x.to(dtype).to(KERNEL_DEVICE)


def slots_for(batch: int, tokens: int, capacity: int) -> torch.Tensor:
    """Distinct slots per row (one index_put has no write order for repeats), in no particular order."""
    return torch.stack([torch.randperm(capacity)[:tokens] for _ in range(batch)]).to(KERNEL_DEVICE)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_kv_rows_equal_the_reference_bytes(dtype: torch.dtype, tokens: int) -> None:
    batch, capacity = 3, 9
    kv = hard_rows(batch, tokens, 512, dtype)
    slots = slots_for(batch, tokens, capacity)
    # a destination with a spare row (the static decoder's scratch row) and poisoned bytes elsewhere
    out = torch.full((batch + 1, capacity, 584), 0xAB, dtype=torch.uint8, device=KERNEL_DEVICE)
    ref = out.clone()
    write_kv_fp8(out, slots, kv)
    write_kv_fp8_reference(ref, slots, kv)
    assert torch.equal(out, ref)
    assert (out[batch] == 0xAB).all()  # untouched


@needs_kernel
def test_kv_rows_take_a_strided_source() -> None:
    """The decoder passes a rows-first view; a non-contiguous source must give the same bytes."""
    kv = hard_rows(2, 6, 512, torch.bfloat16)[:, ::2]
    slots = slots_for(2, 3, 5)
    out = torch.zeros(2, 5, 584, dtype=torch.uint8, device=KERNEL_DEVICE)
    ref = out.clone()
    write_kv_fp8(out, slots, kv)
    write_kv_fp8_reference(ref, slots, kv.contiguous())
    assert torch.equal(out, ref)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [128, 96])
def test_index_keys_equal_the_reference(dtype: torch.dtype, dim: int) -> None:
    batch, tokens, capacity = 3, 2, 7
    keys = hard_rows(batch, tokens, dim, dtype)
    keys[1, 0] = 0  # an all-zero key: scale 0, codes 0
    slots = slots_for(batch, tokens, capacity)
    out_keys = torch.zeros(batch + 1, capacity, dim, dtype=torch.float8_e4m3fn, device=KERNEL_DEVICE)
    out_scales = torch.full((batch + 1, capacity), -1.0, device=KERNEL_DEVICE)
    ref_keys, ref_scales = out_keys.clone(), out_scales.clone()
    write_index_keys_fp8(out_keys, out_scales, slots, keys)
    write_index_keys_fp8_reference(ref_keys, ref_scales, slots, keys)
    assert torch.equal(out_keys.view(torch.uint8), ref_keys.view(torch.uint8))
    assert torch.equal(out_scales, ref_scales)


def test_bad_shapes_are_refused() -> None:
    dest = torch.zeros(2, 4, 584, dtype=torch.uint8)
    with pytest.raises(ValueError, match="slots"):
        write_kv_fp8(dest, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, 512))
    with pytest.raises(ValueError, match="packed rows"):
        write_kv_fp8(dest.view(torch.int8), torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, 512))
    with pytest.raises(ValueError, match="float8"):
        write_index_keys_fp8(torch.zeros(2, 4, 8), torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.long),
                             torch.zeros(2, 1, 8))
