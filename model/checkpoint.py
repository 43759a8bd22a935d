"""What a checkpoint costs (`v4 model info`): parameters in all and per token, layer types, stored
dtypes, the model's context, decode-state bytes per token and the weights' format, read from
config.json and the safetensors headers alone. Building random checkpoints is random_checkpoint.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .config import CSA, V4Config, context_length
from .v4 import Transformer

FP8_KV_SCALE_BLOCK = 64  # non-RoPE dims per ue8m0 scale in DeepSeek's FP8 KV rows


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `v4 model info` reports."""

    num_parameters: int
    num_active_parameters: int
    num_mtp_parameters: int  # the MTP draft blocks, not counted above (as DeepSeek counts)
    layer_types: list[str]
    context_length: int  # the model's context (`config.context_length`), as every command reports it
    dtypes: dict[str, int]  # stored dtype -> number of tensors (FP8/FP4 scales included)
    state_bytes_per_token_bf16: float
    state_bytes_per_token_fp8: float  # DeepSeek's layout: FP8 non-RoPE dims, BF16 RoPE dims, FP8 indexer keys, scales
    quantization: str | None = None  # what config.json says about the weights' format, if anything


def fp8_entry_bytes(config: V4Config) -> int:
    """One compressed entry in DeepSeek's FP8 layout: an e4m3 byte per non-RoPE dim, a ue8m0 scale
    byte per 64 of them, the RoPE dims in bf16, padded to 8 bytes (584 at V4's 448 + 64 dims)."""
    nope = config.head_dim - config.qk_rope_head_dim
    raw = nope + -(-nope // FP8_KV_SCALE_BLOCK) + 2 * config.qk_rope_head_dim
    return -(-raw // 8) * 8


def state_bytes_per_token(config: V4Config, fp8: bool) -> float:
    """Decode-state bytes each token adds (compressed entries and indexer keys, with their FP8 scales:
    what an "fp8" state holds); the sliding window and the partial windows are a fixed cost on top."""
    if fp8:
        entry = fp8_entry_bytes(config)
        index_key = config.index_head_dim + 4  # e4m3 codes and a float32 scale
    else:
        entry, index_key = 2 * config.head_dim, 2 * config.index_head_dim
    total = 0.0
    for layer in range(config.num_hidden_layers):
        rate = config.compress_rate(layer)
        if rate:
            total += entry / rate + (index_key / rate if config.layer_types[layer] == CSA else 0)
    return total


def model_info(directory: Path) -> ModelInfo:
    """Parameters (total and per token), layer types, tensor dtypes and state size of a checkpoint.

    Sizes come from the config (the model is built on the meta device, so a V4-Flash-shaped
    config.json alone is enough); dtypes come from the safetensors files when there are any.
    """
    directory = Path(directory)
    config = V4Config.from_json(directory)
    with torch.device("meta"):
        model = Transformer(config)
    mtp = sum(p.numel() for p in model.mtp.parameters())
    total = sum(p.numel() for p in model.parameters()) - mtp
    expert = sum(p.numel() for p in model.layers[0].ffn.experts[0].parameters())
    inactive = config.num_hidden_layers * (config.n_routed_experts - config.num_experts_per_tok) * expert
    dtypes: dict[str, int] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return ModelInfo(total, total - inactive, mtp, list(config.layer_types), context_length(config), dtypes,
                     state_bytes_per_token(config, fp8=False), state_bytes_per_token(config, fp8=True),
                     quantization_summary(config))


def quantization_summary(config: V4Config) -> str | None:
    """One line on the weights' format from config.json, e.g. "fp8 e4m3 weights, 128x128 blocks, ue8m0
    scales; routed experts fp4" (None for an unquantised checkpoint)."""
    quant = config.quantization_config or {}
    experts = config.expert_dtype or quant.get("expert_dtype")
    parts = []
    if quant:
        method = " ".join(str(quant[k]) for k in ("quant_method", "fmt") if quant.get(k))
        block = "x".join(str(n) for n in quant.get("weight_block_size") or []) or "per-tensor"
        parts.append(f"{method or 'quantised'} weights, {block} blocks, {quant.get('scale_fmt') or 'float'} scales")
    if experts:
        parts.append(f"routed experts {experts}")
    return "; ".join(parts) or None
