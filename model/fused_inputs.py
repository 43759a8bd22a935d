"""One GEMM for the plain linears that read the same input: the decode step's per-layer projections.

An attention layer projects its input x through up to seven linears that all read x: wq_a and wkv (when
not FP8), the compressor's wkv and wgate, and for CSA the indexer compressor's wkv and wgate and the
indexer's weights_proj. At decode each is a GEMV of a few MB, and cuBLAS runs each as a split-K kernel
plus its reduction: ~14 launches per CSA layer for ~22 MB of bf16 weights (issue 27's profile). Stacked
into one `[sum of outputs, hidden]` weight they are one GEMM, and the outputs are column slices of it.

The stacked tensor holds the weights once: each module's weight becomes a view into it (as the MoE's
expert stacks do), so nothing is held twice and the modules still compute what they did. Plain
`nn.Linear` layers without bias, of one dtype and device, are stacked into one GEMM; FP8 linears that
read one input (wq_a and wkv; wq_b and the indexer's wq_b, which both read the normed q_residual) into
one FP8 GEMV, their 128 x 128 block scales stacked with them (every output width a multiple of 128, so
each block stays whole). Fewer than two of a kind leave the modules untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .quant import FP8_BLOCK
from .quantized_linear import FP8Linear, fp8_linear


@dataclass(frozen=True, slots=True)
class FusedInputs:
    """The stacked weight (and FP8 block scales) and each stacked module's name and output width, in order."""

    weight: Tensor
    names: tuple[str, ...]
    widths: tuple[int, ...]
    scale: Tensor | None = None

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Every stacked module's output for `x` `[..., hidden]`, by name (column slices of one GEMM)."""
        y = F.linear(x, self.weight) if self.scale is None else fp8_linear(x, self.weight, self.scale)
        return dict(zip(self.names, torch.split(y, self.widths, dim=-1)))


def _plain(module: nn.Module | None) -> bool:
    return type(module) is nn.Linear and module.bias is None


def fuse_inputs(linears: dict[str, nn.Module | None]) -> FusedInputs | None:
    """Stack the plain linears among `linears` (name -> module, None for absent ones) that share the
    first plain one's dtype, device and input width; None when fewer than two qualify."""
    chosen = {name: m for name, m in linears.items() if _plain(m)}
    if chosen:
        first = next(iter(chosen.values())).weight
        chosen = {name: m for name, m in chosen.items() if m.weight.dtype == first.dtype and
                  m.weight.device == first.device and m.weight.shape[1] == first.shape[1]}
    if len(chosen) < 2:
        return None
    names, widths = tuple(chosen), tuple(m.weight.shape[0] for m in chosen.values())
    stacked = _already_stacked([m.weight for m in chosen.values()])
    if stacked is not None:  # a decoder before this one stacked them: share its tensor
        return FusedInputs(stacked, names, widths)
    with torch.no_grad():
        weight = torch.cat([m.weight.detach() for m in chosen.values()])
        start = 0
        for module in chosen.values():
            rows = module.weight.shape[0]
            module.weight = nn.Parameter(weight[start : start + rows], requires_grad=module.weight.requires_grad)
            start += rows
    return FusedInputs(weight, names, widths)


def fuse_fp8_inputs(linears: dict[str, nn.Module | None]) -> FusedInputs | None:
    """Stack the FP8 linears among `linears` that read the first one's input width, each with whole
    128-row scale blocks; the modules' weights and scales become views of the stacks. None when fewer
    than two qualify."""
    chosen = {name: m for name, m in linears.items() if isinstance(m, FP8Linear) and m.out_features % FP8_BLOCK == 0}
    if chosen:
        first = next(iter(chosen.values()))
        chosen = {name: m for name, m in chosen.items() if m.in_features == first.in_features and
                  m.weight.device == first.weight.device and m.scale.dtype == first.scale.dtype}
    if len(chosen) < 2:
        return None
    names, widths = tuple(chosen), tuple(m.out_features for m in chosen.values())
    modules = list(chosen.values())
    weight = _already_stacked([m.weight for m in modules])
    scale = _already_stacked([m.scale for m in modules])
    if weight is None or scale is None:
        with torch.no_grad():
            weight, scale = (torch.cat([getattr(m, leaf).detach() for m in modules]) for leaf in ("weight", "scale"))
            rows = blocks = 0
            for module in modules:
                n, b = module.weight.shape[0], module.scale.shape[0]
                module.weight = nn.Parameter(weight[rows : rows + n], requires_grad=False)
                module.scale = nn.Parameter(scale[blocks : blocks + b], requires_grad=False)
                rows, blocks = rows + n, blocks + b
    return FusedInputs(weight, names, widths, scale)


def _already_stacked(weights: list[Tensor]) -> Tensor | None:
    """The `[sum of rows, hidden]` tensor `weights` are consecutive row blocks of, if they are."""
    first = weights[0]
    storage, offset, cols = first.untyped_storage().data_ptr(), first.storage_offset(), first.shape[1]
    for weight in weights:
        if weight.untyped_storage().data_ptr() != storage or weight.storage_offset() != offset or \
                not weight.is_contiguous():
            return None
        offset += weight.numel()
    rows = sum(w.shape[0] for w in weights)
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(
        first.untyped_storage(), first.storage_offset(), (rows, cols), (cols, 1))


def attention_inputs(attn: nn.Module) -> list[FusedInputs]:
    """An attention layer's linears that read its input, stacked by kind (plain, FP8), named as the static
    decoder asks for them: wq_a, wkv, kv, gate (its compressor), index_kv, index_gate, index_weights (CSA)."""
    compressor, indexer = attn.compressor, attn.indexer
    linears = {"wq_a": attn.wq_a, "wkv": attn.wkv,
               "kv": compressor and compressor.wkv, "gate": compressor and compressor.wgate,
               "index_kv": indexer and indexer.compressor.wkv, "index_gate": indexer and indexer.compressor.wgate,
               "index_weights": indexer and indexer.weights_proj}
    return [f for f in (fuse_inputs(linears), fuse_fp8_inputs(linears)) if f is not None]


def shared_expert_pair(expert: nn.Module) -> FusedInputs | None:
    """A shared expert's FP8 w1 and w3 (both read the MoE's input) stacked, for `Expert.pair`."""
    return fuse_fp8_inputs({"w1": expert.w1, "w3": expert.w3})


def query_inputs(attn: nn.Module) -> FusedInputs | None:
    """The FP8 linears that read an attention layer's normed q_residual, stacked: wq_b and (CSA) the
    indexer's wq_b."""
    return fuse_fp8_inputs({"wq_b": attn.wq_b, "index_wq_b": attn.indexer and attn.indexer.wq_b})
