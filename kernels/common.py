"""What every kernel module shares: the one "interpreted or CUDA" decision, the SM count, the arrival
counters of kernels whose last program sums the others' partials, and the round-to-nearest-even cast the
interpreter needs (issue 23: these were copied per file)."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (TRITON_INTERPRET=1) rather than compiling for CUDA."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(*tensors: Tensor) -> None:
    """One device, and CUDA unless Triton runs in its interpreter."""
    for t in tensors:
        if t.device != tensors[0].device:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {tensors[0].device}")
    if not tensors[0].is_cuda and not interpreting():
        raise ValueError(f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {tensors[0].device}")


@functools.lru_cache
def _cuda_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_sms(device: torch.device, fallback: int) -> int:
    """SMs to fill on a CUDA device; `fallback` elsewhere (the interpreter: small, so that small test
    shapes still exercise the split paths)."""
    return _cuda_sms(device) if device.type == "cuda" else fallback


_COUNTERS: dict[torch.device, Tensor] = {}
COUNTER_SLOTS = 4096  # tiles (or column blocks) that sum in-kernel at once: far more than any caller's


def arrival_counters(device: torch.device, tiles: int) -> Tensor | None:
    """The device's per-tile arrival counters for sums finished by a kernel's last program (all zero
    between calls, as each call's last program resets its tile's). Kernels on one device run one at a
    time per stream and such kernels are not issued on two streams at once here, so one set per device
    serves every caller (fp8_gemm's split-K, decode_moe's pair sum). None (the caller's separate sum
    instead) when too many tiles, or when the counters would have to be made inside a CUDA graph capture
    (their memory would belong to the graph)."""
    counters = _COUNTERS.get(device)
    if counters is None:
        if tiles > COUNTER_SLOTS or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return None
        counters = _COUNTERS[device] = torch.zeros(COUNTER_SLOTS, dtype=torch.int32, device=device)
    return counters if tiles <= COUNTER_SLOTS else None


@triton.jit
def round_to(x, dtype: tl.constexpr, ON_BITS: tl.constexpr):
    """float32 -> dtype, to nearest even. With ON_BITS, a bfloat16 result is rounded on the bits first:
    the interpreter truncates float32 -> bf16 where GPUs round, and this way both agree with torch bit
    for bit (finite inputs). Callers pass INTERPRET, or True to round the same way everywhere."""
    if ON_BITS and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # exactly representable afterwards
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def to_e4m3(y, INTERPRET: tl.constexpr):
    """float32 with |y| <= 448 -> float8e4nv, to nearest even. The GPU's cast (cvt.rn.satfinite) rounds;
    the interpreter's truncates, so when interpreting, y is first rounded onto the e4m3 grid in float32
    (3 mantissa bits: ulp 2^(exponent - 3), 2^-9 below the normal range) and the cast is then exact."""
    if INTERPRET:
        bits = y.to(tl.int32, bitcast=True)
        ulp = ((tl.maximum(((bits >> 23) & 0xFF) - 127, -6) - 3 + 127) << 23).to(tl.float32, bitcast=True)
        r = ((tl.abs(y) / ulp + 12582912.0) - 12582912.0) * ulp  # + 1.5 * 2^23 rounds to an integer, RTNE
        y = tl.where(bits < 0, -r, r)  # a value that rounds to zero keeps its sign
    return y.to(tl.float8e4nv)
