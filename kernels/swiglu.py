"""The shared expert's clamped SwiGLU, `silu(min(gate, limit)) * clamp(up, -limit, limit)`, in one kernel.

In PyTorch it is four elementwise kernels (two clamps, silu, the product); at decode each is a ~2 us
launch over 2,048 values per token, four per layer (issue 27). Here one pass reads gate and up and
writes the product, rounded once as the model rounds: silu's result to the input dtype, then the
product (both computed in float32, as PyTorch computes bf16 elementwise ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.nn import functional as F

from .common import check_device, interpreting, round_to

BLOCK = 1024


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n, limit, BLOCK: tl.constexpr, INTERPRET: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < n
    dtype = out_ptr.dtype.element_ty
    gate = tl.minimum(tl.load(gate_ptr + offsets, mask=ok, other=0.0).to(tl.float32), limit)
    up = tl.load(up_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    silu = round_to(gate / (1.0 + tl.exp(-gate)), dtype, INTERPRET).to(tl.float32)
    tl.store(out_ptr + offsets, round_to(silu * up, dtype, INTERPRET), mask=ok)


def clamped_swiglu(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """Triton `clamped_swiglu_reference` for same-shape float tensors."""
    if gate.shape != up.shape or gate.dtype != up.dtype or not gate.is_floating_point():
        raise ValueError(f"gate and up must be float tensors of one shape and dtype, got {gate.dtype} "
                         f"{tuple(gate.shape)} and {up.dtype} {tuple(up.shape)}")
    check_device(gate, up)
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _swiglu_kernel[(triton.cdiv(n, BLOCK),)](gate, up, out, n, float(limit), BLOCK=BLOCK,
                                                 INTERPRET=interpreting(), num_warps=4)
    return out


def clamped_swiglu_reference(gate: Tensor, up: Tensor, limit: float) -> Tensor:
    """model/moe.py's Expert activation, as transformers' DeepseekV4 computes it."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(min=-limit, max=limit)
