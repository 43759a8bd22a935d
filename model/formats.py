"""What DeepSeek ships: the one place that knows a V4 checkpoint's stored names, formats and dtypes.

Which tensor is stored how was read from DeepSeek-V4-Flash `inference/model.py` (through copies on
GitHub) and transformers' `modeling_deepseek_v4.py`:
  - FP4 e2m1 (int8 packed, 1x32 ue8m0 scales): the routed experts (`ROUTED_EXPERT`), which `MoE`
    builds with expert_dtype "fp4" (main layers and MTP blocks alike).
  - FP8 e4m3 (128x128 ue8m0 block scales): every other `Linear` built with the default dtype, i.e.
    attention wq_a, wq_b, wkv, wo_a ("wo_a is FP8 in checkpoint"), wo_b, the indexer's wq_b, the
    shared experts and the MTP blocks' e_proj/h_proj.
  - BF16, no scale: the embedding, the head ("lm_head in the checkpoint is stored in bf16"), the
    compressors' wkv/wgate ("stored in bf16", transformers' `_keep_in_fp32_modules` for the
    compressor and indexer kv_proj/gate_proj), the indexer's weights_proj (`dtype=torch.bfloat16`),
    the router's gate weight (a plain parameter, not a Linear) and every RMSNorm weight ("rmsnorm in
    the checkpoint is stored in bf16"; held in float32 once loaded, `keeps_float32`).
  - F32: mHC (hc_*), attention sinks, ape and the gate bias. tid2eid I64 (DeepSeek's `Gate` declares
    int32; the loader takes either).
The published V4-Flash headers agree (hebo1221/nano-deepseek-v4 `references/DeepSeek-V4-Flash-validation.
summary.json`, a scan of all 46 shards): 69,187 tensors, BF16 433, F32 417, F8_E4M3 375, F8_E8M0 34,167
(every scale), I8 33,792, I64 3; tests/model/test_flash_layout.py checks these rules reproduce the counts.
Loading (weights.py), quantising a built model (quantized_linear.py), sharding (parallel.py) and building
random checkpoints (random_checkpoint.py) all ask this module rather than keep their own patterns.
"""

from __future__ import annotations

import re

import torch
from torch import nn

# config.json keys of DeepSeek-V4-Flash's FP8 weights with FP4 routed experts.
FP8_QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                           "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
# A routed expert's tensor under native names: groups (the MoE, the expert id, w1|w2|w3, weight|scale).
ROUTED_EXPERT = re.compile(r"^((?:layers|mtp)\.\d+\.ffn)\.experts\.(\d+)\.(w[123])\.(weight|scale)$")
BF16_WEIGHTS = re.compile(r"^(embed|head)\.weight$|\.compressor\.(wkv|wgate)\.weight$"
                          r"|\.indexer\.weights_proj\.weight$|\.ffn\.gate\.weight$|norm\.weight$")

# safetensors dtype strings. FP4 is stored two e2m1 codes per byte ("I8"/"U8", the packed shape) or as
# "F4" (headers giving the unpacked shape).
PACKED_FP4_DTYPES = ("I8", "U8")
FP4_DTYPES = (*PACKED_FP4_DTYPES, "F4")
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
               "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5}
# The torch dtype a quantised weight or its scale is held in ("F4": packed e2m1, read as bytes).
STORED_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E8M0": torch.float8_e8m0fnu, "F32": torch.float32,
                 "BF16": torch.bfloat16, "F16": torch.float16, "I8": torch.int8, "U8": torch.uint8, "F4": torch.int8}


def is_routed_expert(name: str) -> bool:
    """Whether native tensor `name` belongs to a routed expert (weight or scale)."""
    return ROUTED_EXPERT.match(name) is not None


def keeps_float32(name: str) -> bool:
    """Whether tensor `name` stays float32 whatever dtype the model runs in (norms, mHC, sinks, gate
    bias, ape), as DeepSeek keeps them, and the router's gate weight: DeepSeek's Gate scores in float32
    (`linear(x.float(), weight.float())`), so holding it upcast once (exact, 2 MB more a layer) spares
    every step a float32 copy of it (a 6 MB round trip and a launch per layer at decode)."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf.startswith("hc_") or leaf in ("attn_sink", "bias") or name.endswith("norm.weight") or \
        name.endswith("ape") or name.endswith("ffn.gate.weight")


def linear_weights(model: nn.Module) -> set[str]:
    """Names of the weights of `model`'s Linear layers: DeepSeek's FP8 candidates."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def stored_format(name: str, linear: set[str]) -> str:
    """How DeepSeek ships tensor `name`: "fp4", "fp8", "bf16" or "as is" (float32 mHC, sinks, ape,
    gate bias; integer tables)."""
    match = ROUTED_EXPERT.match(name)
    if match is not None and match.group(4) == "weight":
        return "fp4"
    if BF16_WEIGHTS.search(name):
        return "bf16"
    return "fp8" if name in linear else "as is"
