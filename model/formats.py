"""What DeepSeek ships: which tensor of a V4 checkpoint is stored in which format (FP4 routed experts,
FP8 linears with ue8m0 block scales, BF16 embeddings, compressor, indexer and gate weights, float32 or
integer for the rest), and the `quantization_config` that says so. Kept apart from `checkpoint.py`
(which builds models) so that the modules that quantise a built model can read it without a cycle."""

from __future__ import annotations

import re

import torch
from torch import nn

from .quant import quantize_fp4, quantize_fp8

# config.json keys of DeepSeek-V4-Flash's FP8 weights with FP4 routed experts.
FP8_QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                           "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
FP4_WEIGHTS = re.compile(r"^(layers|mtp)\.\d+\.ffn\.experts\.\d+\.w[123]\.weight$")
BF16_WEIGHTS = re.compile(r"^(embed|head)\.weight$|\.compressor\.(wkv|wgate)\.weight$"
                          r"|\.indexer\.weights_proj\.weight$|\.ffn\.gate\.weight$")


def linear_weights(model: nn.Module) -> set[str]:
    """Names of the weights of `model`'s Linear layers: DeepSeek's FP8 candidates."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def stored_format(name: str, linear: set[str]) -> str:
    """How DeepSeek ships tensor `name`: "fp4", "fp8", "bf16" or "as is" (float32 norms, mHC, sinks,
    ape, gate bias; integer tables)."""
    if FP4_WEIGHTS.match(name):
        return "fp4"
    if BF16_WEIGHTS.search(name):
        return "bf16"
    return "fp8" if name in linear else "as is"


def as_shipped(tensors: dict[str, torch.Tensor], linear: set[str]) -> dict[str, torch.Tensor]:
    """`tensors` stored as DeepSeek ships V4: quantised weights gain an `X.scale` sibling."""
    shipped = {}
    for name, tensor in tensors.items():
        kind = stored_format(name, linear)
        if kind in ("fp4", "fp8"):
            weight, scale = quantize_fp4(tensor) if kind == "fp4" else quantize_fp8(tensor)
            shipped[name], shipped[name.removesuffix("weight") + "scale"] = weight, scale
        elif kind == "bf16":
            shipped[name] = tensor.to(torch.bfloat16)
        elif name.endswith("tid2eid"):
            shipped[name] = tensor.to(torch.int32)  # DeepSeek's table is int32
        else:
            shipped[name] = tensor
    return shipped
