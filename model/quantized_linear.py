"""Quantised weights held as DeepSeek ships them, on the device: no dequantised copies.

`FP8Linear` takes an nn.Linear's place with its float8_e4m3fn weight and 128x128 block scales and runs
`ops.fp8_linear` (the FP8 GEMM on CUDA, its reference elsewhere; both quantise activations per 1x128
group, as DeepSeek's inference does). `FP4Linear` holds a routed expert's packed e2m1 weight and 1x32
scales: the MoE runs its experts from stacks of them (`MoE.stacked_quantized`, `ops.moe_experts_quantized`),
so its own forward (dequantise, then matmul) is only a fallback. Which weights are quantised is
model/formats.py's `stored_format`: the one list of what DeepSeek ships in which format.

Two ways in: `quantize_model` converts a loaded float model in place, module by module;
`quantize_for_checkpoint` swaps in the quantised modules on the meta device before loading, so the
loader places the stored bytes as they are (model/engine.py `load(quantized=True)`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops, quant
from .formats import FP4_DTYPES, STORED_DTYPES, linear_weights, stored_format
from .moe import MoE
from .weights import Stored, WeightsError, keep_quantized, scale_slice

EXPERT_LEAVES = ("w1", "w2", "w3")
# At or below this many rows an FP8 projection runs the decode GEMV (kernels/decode_gemv.py: no split-K),
# above it the FP8 GEMM. Measured on an H100 (benchmarks/results/decode_gemv_h100.md, V4-Flash shapes):
# at 1 row the GEMV takes 4.8 / 3.6 / 7.1 / 6.0 us for wq_a / wkv / shared w1 / w2 against 10.0 / 8.7 /
# 9.4 / 8.7 and ties on wq_b and wo_b; at 8 rows the GEMM wins (e.g. wo_b 17.7 vs 33+ us). The grouped
# wo_a (all 8 groups in one launch) wins at both: 16.3 vs 78.6 us at 1 row, 18.5 vs 83.7 at 8.
GEMV_MAX_ROWS = 1
# At 2 rows (the MTP verify step) the GEMV still wins on the small weights and loses on the large ones
# (decode_gemv_h100.md, rows 2): wq_a 8.4 vs 10.2 us, wkv 4.8 vs 9.0, shared w2 8.6 vs 9.2, w1 10.2 vs 9.9;
# wq_b 21.2 vs 15.6, wo_b 24.2 vs 17.8. So 2 rows take it up to this many weights (an 8.4 MB FP8 matrix).
GEMV_TWO_ROWS_MAX_WEIGHTS = 4096 * 2048
GROUPED_GEMV_MAX_ROWS = 8


class _Quantized(nn.Module):
    """A Linear (no bias) whose weight is kept quantised: frozen parameters `weight` and `scale`, named
    as in DeepSeek's checkpoints (`X.weight`, `X.scale`)."""

    fmt: ClassVar[str]
    pack: ClassVar[int]  # weight columns per stored column

    def __init__(self, in_features: int, out_features: int, weight_dtype: torch.dtype, scale_dtype: torch.dtype,
                 device: torch.device | str | None = None, name: str = "weight") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        weight = torch.empty(out_features, in_features // self.pack, dtype=weight_dtype, device=device)
        scale = torch.empty(self.scale_shape(in_features, out_features), dtype=scale_dtype, device=device)
        self.check(weight, scale, name)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)

    @staticmethod
    def scale_shape(in_features: int, out_features: int) -> tuple[int, int]:
        raise NotImplementedError

    @staticmethod
    def check(weight: Tensor, scale: Tensor, name: str) -> None:
        """QuantError naming `name` unless the pair fits the format."""
        raise NotImplementedError

    @staticmethod
    def quantize(weight: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @classmethod
    def from_quantized(cls, weight: Tensor, scale: Tensor, name: str = "weight") -> _Quantized:
        """The module holding `weight` and `scale` themselves (no copy); QuantError if they do not fit."""
        cls.check(weight, scale, name)
        module = cls(weight.shape[-1] * cls.pack, weight.shape[0], weight.dtype, scale.dtype, "meta", name)
        module.weight = nn.Parameter(weight, requires_grad=False)
        module.scale = nn.Parameter(scale, requires_grad=False)
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "weight") -> _Quantized:
        """`linear`'s weight quantised (model/quant.py, ue8m0 scales as V4 ships them), on its device."""
        if linear.bias is not None:
            raise ValueError(f"{name}: quantised linears have no bias")
        return cls.from_quantized(*cls.quantize(linear.weight.detach()), name)

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        """A temporary float copy of the weight `[out, in]`."""
        return quant.dequantize(self.weight, self.scale, "weight").to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt}, " \
               f"scale={str(self.scale.dtype).removeprefix('torch.')}"


class FP8Linear(_Quantized):
    """float8_e4m3fn weight `[out, in]`, one scale per 128x128 block `[ceil(out/128), ceil(in/128)]`."""

    fmt, pack = "fp8", 1

    @staticmethod
    def scale_shape(in_features: int, out_features: int) -> tuple[int, int]:
        return -(-out_features // quant.FP8_BLOCK), -(-in_features // quant.FP8_BLOCK)

    check = staticmethod(quant.check_fp8)
    quantize = staticmethod(quant.quantize_fp8)

    def forward(self, x: Tensor) -> Tensor:
        return fp8_linear(x, self.weight, self.scale)

    def grouped(self, x: Tensor) -> Tensor:
        """Group g of x `[..., G, in]` through rows [g r, (g+1) r) of the weight -> `[..., G, r]`
        (attention's grouped wo_a). Up to GROUPED_GEMV_MAX_ROWS rows, the grouped decode GEMV (r even); else one
        FP8 GEMM per group when each group's rows have their own scale rows (r a multiple or a divisor
        of 128, as in every V4 config); else the weight is dequantised into a temporary."""
        groups, block = x.shape[-2], quant.FP8_BLOCK
        rows = self.out_features // groups
        if x.numel() <= GROUPED_GEMV_MAX_ROWS * groups * x.shape[-1] and rows % 2 == 0:
            return ops.fp8_gemv_grouped(*_pad_k(x, self.weight), self.scale)  # all groups in one launch
        if rows % block and block % rows:
            weight = self.dequantized(x.dtype).view(groups, rows, -1)
            return torch.einsum("...gi,goi->...go", x, weight)
        outs = []
        for g in range(groups):
            first = g * rows // block
            scale = self.scale[first : first + -(-rows // block)]
            outs.append(fp8_linear(x[..., g, :], self.weight[g * rows : (g + 1) * rows], scale))
        return torch.stack(outs, dim=-2)


class FP4Linear(_Quantized):
    """Packed e2m1 weight `[out, in/2]` bytes (low nibble = even column), one scale per 1x32 group
    `[out, in/32]`: a routed expert's weight, run by the MoE's grouped kernel."""

    fmt, pack = "fp4", 2

    @staticmethod
    def scale_shape(in_features: int, out_features: int) -> tuple[int, int]:
        return out_features, -(-in_features // quant.FP4_GROUP)

    check = staticmethod(quant.check_fp4)
    quantize = staticmethod(quant.quantize_fp4)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized(x.dtype))


FORMATS: dict[str, type[_Quantized]] = {"fp8": FP8Linear, "fp4": FP4Linear}


def _pad_k(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """x and weight with K zero-padded to whole 1x128 activation groups, which the kernels take (a
    smaller or ragged K comes from test-sized models only): zeros change neither a group's amax nor the
    sum, and the scale grid already covers the padded block."""
    pad = -x.shape[-1] % quant.FP8_BLOCK
    if pad:
        x = F.pad(x, (0, pad))
        weight = F.pad(weight.view(torch.uint8), (0, pad)).view(torch.float8_e4m3fn)  # byte 0 is +0.0
    return x, weight


def fp8_linear(x: Tensor, weight: Tensor, scale: Tensor) -> Tensor:
    """`ops.fp8_linear` for any K; up to GEMV_MAX_ROWS rows (decode), and 2 rows of a small weight (the
    verify step), the decode GEMV: the same function."""
    x, weight = _pad_k(x, weight)
    rows = x.numel() // x.shape[-1]
    if rows <= GEMV_MAX_ROWS or (rows == 2 and weight.numel() <= GEMV_TWO_ROWS_MAX_WEIGHTS):
        return ops.fp8_gemv(x, weight, scale)
    return ops.fp8_linear(x, weight, scale)


def grouped_linear(linear: nn.Module, x: Tensor) -> Tensor:
    """Attention's grouped output projection: group g of x `[B, S, G, in]` through rows [g r, (g+1) r)
    of `linear`'s weight -> `[B, S, G, r]`; an FP8Linear runs FP8 GEMMs on its stored weight."""
    if isinstance(linear, FP8Linear):
        return linear.grouped(x)
    weight = linear.weight.view(x.shape[-2], -1, x.shape[-1])
    return torch.einsum("bsgi,goi->bsgo", x, weight)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, leaf, module)


def quantize_model(model: nn.Module, linears: str | None = "fp8", experts: str | None = "fp4") -> nn.Module:
    """Quantise `model`'s weights in place as DeepSeek ships them (formats.py `stored_format`): the
    FP8 ones to `linears` ("fp8" or None: keep) and the routed experts to `experts` ("fp4", "fp8" or
    None). One module at a time, its float weight released before the next, so the peak stays near
    the float model. Returns `model`."""

    if linears not in ("fp8", None) or experts not in ("fp8", "fp4", None):
        raise ValueError(f"linears must be 'fp8' or None and experts 'fp4', 'fp8' or None; got {linears!r}, "
                         f"{experts!r}")
    linear = linear_weights(model)
    routed: dict[str, set[str]] = {}
    for weight in [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
        kind = stored_format(f"{weight}.weight", linear)
        if kind == "fp8" and linears:
            _replace(model, weight, FP8Linear.from_linear(model.get_submodule(weight), f"{weight}.weight"))
        elif kind == "fp4" and experts:
            routed.setdefault(weight.rsplit(".experts.", 1)[0], set()).add(weight)
    for name, modules in routed.items():
        moe = model.get_submodule(name)
        held = {f"{name}.experts.{key}.{leaf}" for key in moe.experts._modules for leaf in EXPERT_LEAVES}
        if not isinstance(moe, MoE) or modules != held:
            raise ValueError(f"{name}: the routed experts classified as quantised are not exactly its experts")
        for key, expert in moe.experts.named_children():
            for leaf in EXPERT_LEAVES:
                setattr(expert, leaf, FORMATS[experts].from_linear(getattr(expert, leaf),
                                                                    f"{name}.experts.{key}.{leaf}.weight"))
        moe.strategy = replace(moe.strategy, fmt=experts)
        moe.stacked_quantized()  # the per-expert copies become views of one stack per tensor
    return model


def quantize_for_checkpoint(model: nn.Module, stored: dict[str, Stored]) -> tuple[dict[str, Stored], set[str]]:
    """Before loading (`model` on the meta device): every Linear whose stored weight has a scale becomes
    an FP8Linear or FP4Linear with the stored dtypes. Returns the checkpoint map reading those weights
    as stored (weights.keep_quantized) and the names the loader places as they are (weights and scales).

    A weight this rank reads a slice of (model/parallel.py's tensor-parallel attention) is kept too when
    the slice cuts no scale block (weights.scale_slice: at V4-Flash's sizes every slice is whole 128-row
    or 128-column blocks); one that would cut blocks (test-sized models) stays an nn.Linear, read by
    dequantising the whole weight and slicing it, rather than refusing the load.

    Raises QuantError (a scale dtype the format does not take) or WeightsError (a MoE whose routed
    experts are stored in mixed formats) naming the tensor, before anything is read.
    """
    kept = []
    for name, item in stored.items():
        owner = name.removesuffix(".weight")
        if item.scale is None or owner == name or not isinstance(_submodule(model, owner), nn.Linear):
            continue  # not quantised, or not a Linear of this model (match() names what does not fit)
        if scale_slice(item) is None:
            continue  # a rank's slice that cuts scale blocks: dequantised as it is read
        cls = FP8Linear if item.dtype == "F8_E4M3" else FP4Linear if item.dtype in FP4_DTYPES else None
        weight_dtype, scale_dtype = STORED_DTYPES.get(item.dtype), STORED_DTYPES.get(item.scale.dtype)
        if cls is None or weight_dtype is None or scale_dtype is None:
            raise WeightsError(f"tensor {name}: a {item.dtype} weight with a {item.scale.dtype} scale cannot be "
                               "kept quantised")
        linear = model.get_submodule(owner)
        _replace(model, owner, cls(linear.in_features, linear.out_features, weight_dtype, scale_dtype,
                                   linear.weight.device, name))
        kept.append(name)
    for name, moe in model.named_modules():
        if isinstance(moe, MoE):
            moe.strategy = replace(moe.strategy, fmt=_expert_format(name, moe))
    return keep_quantized(stored, kept), {*kept, *(n.removesuffix("weight") + "scale" for n in kept)}


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _expert_format(name: str, moe: MoE) -> str | None:
    """The format of `moe`'s routed experts: one for all of them (the grouped kernel takes one)."""
    modules = [getattr(expert, leaf) for expert in moe.experts for leaf in EXPERT_LEAVES]
    kinds = {getattr(m, "fmt", "float") for m in modules}
    scales = {m.scale.dtype for m in modules if isinstance(m, _Quantized)}
    if len(kinds) > 1 or len(scales) > 1:
        found = sorted(kinds | {str(s).removeprefix("torch.") for s in scales})
        raise WeightsError(f"{name}.experts: routed experts stored in mixed formats ({', '.join(found)}); the "
                           "grouped kernel takes one")
    return None if kinds == {"float"} else kinds.pop()


def stack_quantized_experts(model: nn.Module) -> None:
    """After loading: each quantised MoE's experts stacked now, so the model's memory is final."""
    for module in model.modules():
        if isinstance(module, MoE) and module.strategy.fmt is not None:
            module.stacked_quantized()
