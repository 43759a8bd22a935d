"""Block-scaled FP8 and FP4 weights of DeepSeek checkpoints: dequantise to float32, and quantise back.

DeepSeek V4 ships most linear weights as FP8 and the routed experts as FP4. This module turns a
(weight, scale) pair into a float32 matrix on CPU, in pure vectorised PyTorch, and does the
inverse so tests can build quantised checkpoints. Naming is the caller's business: the pair is
`X.weight` + `X.scale` under DeepSeek's native names and `X.weight` + `X.weight_scale_inv` under
transformers' names (DeepSeek-V3 `inference/convert.py` renames `weight_scale_inv` -> `scale`);
despite "inv" the scale is a multiplier in both.

Conventions, as read from the sources named. DeepSeek-V4's reference code (`inference/model.py`,
`kernel.py`, `config.json` of the Hugging Face repo deepseek-ai/DeepSeek-V4-Flash) was read through
copies vendored on GitHub, some adapted (e.g. Mockingjay1316/deepseek-v4-flash-spark `inference/`).

FP8 (deepseek-ai/DeepSeek-V3 `inference/kernel.py`: `weight_dequant_kernel`, `weight_quant_kernel`;
`inference/fp8_cast_bf16.py`; DeepSeek-V4 `inference/model.py` `Linear`; transformers
`integrations/finegrained_fp8.py` `_dequantize_fp8_weight`, `FP8Linear`):
  - weight float8_e4m3fn [out, in]; scale [ceil(out/128), ceil(in/128)]; the last block row/column
    covers the ragged edge (kernel masks it, the scale grid is ceil-divided).
  - dequantised[i, j] = float(weight[i, j]) * scale[i // 128, j // 128].
  - scale dtype float32 in V3/V3.2 (`weight_quant`: scale = amax / 448) and, per vLLM's notes, in
    V4 checkpoints with FP8 experts (Flash-Base); float8_e8m0fnu (a bare power-of-two exponent,
    bias 127) in V4 with FP4 experts (`Linear` allocates e8m0 scales; `Transformer.__init__` sets
    scale_dtype = float8_e8m0fnu when scale_dtype == "fp8"). Both are accepted here, and bfloat16.
    ue8m0 scales are amax / 448 rounded UP to a power of two (V4 `kernel.py` `fast_round_scale`
    = 2 ** ceil(log2(amax / max)), so nothing saturates).

FP4 (DeepSeek-V4 `inference/model.py` `Linear`, `inference/kernel.py` `fp4_gemm_kernel`,
`fp4_quant_kernel`; transformers `integrations/finegrained_fp8.py` `FP8Experts`, `Fp8Dequantize`):
  - e2m1 codes 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign (codes 8..15 are the negatives).
  - two codes per byte, packed along the input (K) dimension: the LOW nibble is column 2j, the
    HIGH nibble column 2j+1 (transformers `_unpack_fp4`; NVIDIA's `__nv_fp4x2_e2m1` layout that
    torch.float4_e2m1fn_x2 and TileLang's FP4 follow).
  - packed weight [out, in/2]: float4_e2m1fn_x2 in the reference model, int8 on disk (safetensors
    "I8"; transformers allocates FP4 experts as int8 with K halved). uint8 is accepted too.
  - scale float8_e8m0fnu [out, in/32] (1x32 groups along K); amax / 6 rounded up to a power of
    two, amax floored at 6 * 2**-126.
  - dequantised[i, j] = e2m1(code[i, j]) * scale[i, j // 32].

config.json (V4 Flash, as replicated in vLLM tests and other loaders' fixtures):
"quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
"scale_fmt": "ue8m0", "weight_block_size": [128, 128]}, and the FP4 experts are flagged by a
top-level "expert_dtype": "fp4" (DeepSeek's `inference/config.json` likewise has "dtype": "fp8",
"scale_fmt": "ue8m0", "expert_dtype": "fp4"). transformers' DeepseekV4Config folds that key into
quantization_config["expert_dtype"] (where V4.1 ships it); its FineGrainedFP8Config accepts
expert_dtype "fp8" | "fp4" and scale_fmt "float" | "ue8m0".
"""

from __future__ import annotations

import torch
from torch import Tensor


class QuantError(ValueError):
    """A weight/scale pair whose dtypes or shapes do not fit a known format; names the tensor."""


FP8_BLOCK = 128
FP4_GROUP = 32
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP4_MAX = 6.0  # largest e2m1
E8M0_BIAS = 127

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Both values of every byte, low nibble first: one gather decodes a byte into two columns.
_E2M1 = torch.tensor(E2M1_VALUES, dtype=torch.float32)
_BYTE_PAIRS = torch.stack([_E2M1[torch.arange(256) & 0xF], _E2M1[torch.arange(256) >> 4]], dim=1)
# The same pairs as bf16 (e2m1 is exact in bf16) packed in one int32 each: a gather of 4-byte elements,
# which torch vectorises (about 9x faster on CPU than gathering float32 pairs).
_BYTE_PAIRS_BF16 = _BYTE_PAIRS.to(torch.bfloat16).view(torch.int32).reshape(256)
# Rounding a magnitude to e2m1: the midpoints between neighbouring codes 0..7.
_E2M1_MIDPOINTS = (_E2M1[:7] + _E2M1[1:8]) / 2

FP4_WEIGHT_DTYPES = (torch.int8, torch.uint8, torch.float4_e2m1fn_x2)
FP8_SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e8m0fnu)
FP4_SCALE_DTYPES = (torch.float8_e8m0fnu, torch.float32)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_scale(name: str, kind: str, weight_shape: tuple[int, ...], scale: Tensor,
                 expected: tuple[int, ...], dtypes: tuple[torch.dtype, ...], layout: str) -> None:
    if scale.dtype not in dtypes:
        raise QuantError(f"{name}: {kind} scale must be one of {[str(d) for d in dtypes]}, got {scale.dtype}")
    if tuple(scale.shape) != expected:
        raise QuantError(f"{name}: {kind} scale has shape {tuple(scale.shape)} but weight {weight_shape} "
                         f"needs {expected} ({layout})")


def _scale_f32(scale: Tensor) -> Tensor:
    """Float32 scales; e8m0 casts exactly (byte b -> 2**(b - 127))."""
    return scale.to(torch.float32)


def _apply_scale(w: Tensor, scale: Tensor, rows: int, cols: int) -> Tensor:
    """Multiply w [..., out, in] in place by scale [..., ceil(out/rows), ceil(in/cols)], block-wise.

    Only the row direction is expanded (a small [..., out, ceil(in/cols)] tensor); columns broadcast
    through a view, so no weight-sized scale tensor is ever built. Ragged edge blocks are exact.
    """
    out, n = w.shape[-2], w.shape[-1]
    s = scale if rows == 1 else scale.repeat_interleave(rows, dim=-2)[..., :out, :]
    full = n // cols
    if full:
        w[..., : full * cols].unflatten(-1, (full, cols)).mul_(s[..., :full, None])
    if n % cols:
        w[..., full * cols:].mul_(s[..., full:])
    return w


def _pow2_ceil(x: Tensor) -> Tensor:
    """Exponents e with 2**e the smallest power of two >= x (x > 0), via frexp so it is exact."""
    mantissa, exponent = torch.frexp(x)
    return torch.where(mantissa == 0.5, exponent - 1, exponent)


def _e8m0(exponent: Tensor) -> Tensor:
    """float8_e8m0fnu holding 2**exponent (clamped to the finite range 2**-127 .. 2**127)."""
    return (exponent.clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8).view(torch.float8_e8m0fnu)


def _blocks_amax(w: Tensor, rows: int, cols: int) -> Tensor:
    """Per-block max |w| of w [..., out, in] -> [..., ceil(out/rows), ceil(in/cols)]; zero-padding is harmless."""
    out, n = w.shape[-2:]
    pad_r, pad_c = _cdiv(out, rows) * rows - out, _cdiv(n, cols) * cols - n
    a = torch.nn.functional.pad(w.abs(), (0, pad_c, 0, pad_r))
    a = a.unflatten(-1, (-1, cols)).unflatten(-3, (-1, rows))  # [..., R, rows, C, cols]
    return a.amax(dim=(-3, -1))


def check_fp8(weight: Tensor, scale: Tensor, name: str = "weight", block: int = FP8_BLOCK) -> None:
    """QuantError naming `name` unless (weight, scale) is an FP8 pair: float8_e4m3fn [..., out, in] with
    [..., ceil(out/b), ceil(in/b)] block scales of a known dtype (shapes and dtypes only: meta works)."""
    if weight.dtype != torch.float8_e4m3fn:
        raise QuantError(f"{name}: FP8 weight must be float8_e4m3fn, got {weight.dtype}")
    if weight.dim() < 2:
        raise QuantError(f"{name}: FP8 weight must be a matrix, got shape {tuple(weight.shape)}")
    shape = tuple(weight.shape)
    expected = (*shape[:-2], _cdiv(shape[-2], block), _cdiv(shape[-1], block))
    _check_scale(name, "FP8", shape, scale, expected, FP8_SCALE_DTYPES, f"one per {block}x{block} block")


def dequantize_fp8(weight: Tensor, scale: Tensor, name: str = "weight", block: int = FP8_BLOCK) -> Tensor:
    """float8_e4m3fn weight [..., out, in] with [..., ceil(out/b), ceil(in/b)] block scales -> float32."""
    check_fp8(weight, scale, name, block)
    return _apply_scale(weight.to(torch.float32), _scale_f32(scale), block, block)


def quantize_fp8(weight: Tensor, block: int = FP8_BLOCK, ue8m0: bool = True) -> tuple[Tensor, Tensor]:
    """The FP8 pair for a float weight [..., out, in]: per-block scale amax/448 (a power of two, rounded
    up so nothing saturates, stored as float8_e8m0fnu when ue8m0; float32 otherwise)."""
    if weight.dim() < 2 or not weight.is_floating_point():
        raise QuantError(f"quantize_fp8 needs a float matrix, got {weight.dtype} {tuple(weight.shape)}")
    w = weight.to(torch.float32)
    amax = _blocks_amax(w, block, block)
    if ue8m0:
        scale = _e8m0(_pow2_ceil(amax.clamp(min=FP8_MAX * 2.0**-126) / FP8_MAX))
    else:
        scale = amax.clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
    inverse = _scale_f32(scale).reciprocal()
    q = _apply_scale(w.clone(), inverse, block, block).clamp_(-FP8_MAX, FP8_MAX)
    return q.to(torch.float8_e4m3fn), scale


def check_fp4(weight: Tensor, scale: Tensor, name: str = "weight", group: int = FP4_GROUP) -> None:
    """QuantError naming `name` unless (weight, scale) is a packed FP4 pair: [..., out, in/2] bytes
    (int8, uint8 or float4_e2m1fn_x2) with [..., out, in/group] scales (shapes and dtypes only)."""
    if weight.dtype not in FP4_WEIGHT_DTYPES:
        raise QuantError(f"{name}: packed FP4 weight must be one of {[str(d) for d in FP4_WEIGHT_DTYPES]}, "
                         f"got {weight.dtype}")
    if weight.dim() < 2:
        raise QuantError(f"{name}: FP4 weight must be a matrix, got shape {tuple(weight.shape)}")
    shape = tuple(weight.shape)
    n = 2 * shape[-1]
    _check_scale(name, "FP4", shape, scale, (*shape[:-1], _cdiv(n, group)), FP4_SCALE_DTYPES,
                 f"one per 1x{group} group of the {n} unpacked columns")


def dequantize_fp4(weight: Tensor, scale: Tensor, name: str = "weight", group: int = FP4_GROUP) -> Tensor:
    """Packed e2m1 weight [..., out, in/2] (int8, uint8 or float4_e2m1fn_x2) with [..., out, in/group]
    scales -> float32 [..., out, in], on the weight's device."""
    check_fp4(weight, scale, name, group)
    shape = tuple(weight.shape)
    codes = weight.view(torch.uint8).reshape(-1).to(torch.int32)
    pairs = _BYTE_PAIRS_BF16.to(weight.device)
    values = pairs.index_select(0, codes).view(torch.bfloat16).view(*shape[:-1], 2 * shape[-1]).float()
    return _apply_scale(values, _scale_f32(scale), 1, group)


def _e2m1_codes(x: Tensor) -> Tensor:
    """Nearest e2m1 code (uint8 0..15) for each value of x (|x| <= 6), ties to the even code like IEEE."""
    mag = x.abs()
    midpoints = _E2M1_MIDPOINTS.to(x.device)
    code = torch.bucketize(mag, midpoints)  # on a midpoint: the lower code
    tie = (code < 7) & (mag == midpoints[code.clamp(max=6)]) & (code % 2 == 1)
    code = code + tie.to(code.dtype)
    sign = (x < 0) & (code > 0)
    return (code + 8 * sign.to(code.dtype)).to(torch.uint8)


def quantize_fp4(weight: Tensor, group: int = FP4_GROUP) -> tuple[Tensor, Tensor]:
    """The FP4 pair for a float weight [..., out, in] (in even): int8 [..., out, in/2] as on disk, low
    nibble = even column, and float8_e8m0fnu scales amax/6 rounded up to a power of two per 1x32 group."""
    if weight.dim() < 2 or not weight.is_floating_point():
        raise QuantError(f"quantize_fp4 needs a float matrix, got {weight.dtype} {tuple(weight.shape)}")
    if weight.shape[-1] % 2:
        raise QuantError(f"quantize_fp4 needs an even number of columns to pack, got {tuple(weight.shape)}")
    w = weight.to(torch.float32)
    amax = _blocks_amax(w, 1, group)
    scale = _e8m0(_pow2_ceil(amax.clamp(min=FP4_MAX * 2.0**-126) / FP4_MAX))
    q = _apply_scale(w.clone(), _scale_f32(scale).reciprocal(), 1, group).clamp_(-FP4_MAX, FP4_MAX)
    codes = _e2m1_codes(q)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.view(torch.int8), scale


def is_fp4_packed(weight: Tensor, scale: Tensor) -> bool:
    """Whether (weight, scale) is a packed FP4 pair: a byte weight [..., out, in/2] with 1x32 group scales.

    An FP8 pair never matches: its weight is float8_e4m3fn and its scale grid is 128x coarser.
    """
    if weight.dtype not in FP4_WEIGHT_DTYPES or scale.dtype not in FP4_SCALE_DTYPES or weight.dim() < 2:
        return False
    return tuple(scale.shape) == (*weight.shape[:-1], _cdiv(2 * weight.shape[-1], FP4_GROUP))


def dequantize(weight: Tensor, scale: Tensor, name: str) -> Tensor:
    """Float32 weight of a quantised pair, FP4 or FP8 by the weight's dtype; QuantError if neither fits."""
    if weight.dtype in FP4_WEIGHT_DTYPES:
        return dequantize_fp4(weight, scale, name)
    if weight.dtype == torch.float8_e4m3fn:
        return dequantize_fp8(weight, scale, name)
    raise QuantError(f"{name}: {weight.dtype} weight with a {scale.dtype} scale {tuple(scale.shape)} is "
                     f"neither FP8 (float8_e4m3fn) nor packed FP4 ({', '.join(map(str, FP4_WEIGHT_DTYPES))})")
