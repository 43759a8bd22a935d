"""Random checkpoints (`v4 model init`) and what a checkpoint costs (`v4 model info`).

Tests and demos build their models here: config.json, safetensors under DeepSeek's native names, and
a tokenizer.json given by the caller. Nothing is downloaded.

With `fp8=True` the tensors are stored the way DeepSeek ships V4-Flash, so the quantised loading path
is exercised without the real checkpoint. Which tensors are quantised was read from DeepSeek-V4-Flash
`inference/model.py` (through copies on GitHub) and transformers' `modeling_deepseek_v4.py`:
  - FP4 e2m1 (int8 packed, 1x32 ue8m0 scales): the routed experts, `MoE` builds them with
    expert_dtype "fp4" (main layers and MTP blocks alike).
  - FP8 e4m3 (128x128 ue8m0 block scales): every other `Linear` built with the default dtype, i.e.
    attention wq_a, wq_b, wkv, wo_a ("wo_a is FP8 in checkpoint"), wo_b, the indexer's wq_b, the
    shared experts and the MTP blocks' e_proj/h_proj.
  - BF16, no scale: the embedding, the head ("lm_head in the checkpoint is stored in bf16"), the
    compressors' wkv/wgate ("stored in bf16", transformers' `_keep_in_fp32_modules` for the
    compressor and indexer kv_proj/gate_proj), the indexer's weights_proj (`dtype=torch.bfloat16`)
    and the router's gate weight (a plain parameter, not a Linear).
  - F32: norms, mHC (hc_*), attention sinks, ape and the gate bias (float32 parameters); tid2eid I32.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CSA, HCA, SLIDING, V4Config
from .formats import FP8_QUANTIZATION_CONFIG, as_shipped, linear_weights
from .quant import FP4_GROUP
from .v4 import Transformer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PRESETS: dict[str, dict] = {
    "tiny": {
        "vocab_size": 32128, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32,
        "qk_rope_head_dim": 8, "q_lora_rank": 24, "o_groups": 2, "o_lora_rank": 16, "sliding_window": 8,
        "compress_ratios": [0, 4, 8, 4], "compress_rates": {CSA: 4, HCA: 8}, "index_n_heads": 8,
        "index_head_dim": 16, "index_topk": 4, "n_routed_experts": 8, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "num_hash_layers": 1, "max_position_embeddings": 65536,
    },
    "small": {
        "vocab_size": 32128, "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "head_dim": 64,
        "qk_rope_head_dim": 16, "q_lora_rank": 128, "o_groups": 4, "o_lora_rank": 64, "sliding_window": 32,
        "compress_ratios": [0, 4, 32, 4, 32, 4, 32, 4], "compress_rates": {CSA: 4, HCA: 32}, "index_n_heads": 8,
        "index_head_dim": 32, "index_topk": 16, "n_routed_experts": 16, "num_experts_per_tok": 4,
        "moe_intermediate_size": 128, "num_hash_layers": 2, "max_position_embeddings": 262144,
    },
}
INIT_STD = 0.02
FP8_KV_SCALE_BLOCK = 64  # non-RoPE dims per ue8m0 scale in DeepSeek's FP8 KV rows
# The strings DeepSeek V4's chat encoding builds prompts from (agent/chat_format.py renders them; model/
# may not import agent). As in DeepSeek's tokenizer.json, BOS and EOS are special tokens and the role and
# thinking markers are added tokens that are not special, so decoding keeps `</think>` in the text.
V4_BOS, V4_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
V4_MARKERS = ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>")


def init_checkpoint(directory: Path, preset: str, seed: int = 0, tokenizer_json: Path | None = None,
                    fp8: bool = False, overrides: dict | None = None) -> Path:
    """Write a random V4 checkpoint of `preset` to `directory` (which must be empty or absent).

    `fp8`: store the same random weights as DeepSeek ships V4 (FP8 linears, FP4 routed experts; see
    the module docstring), with the matching quantization_config and expert_dtype in config.json.
    `tokenizer_json` is written with DeepSeek V4's prompt tokens added (`v4_tokenizer`), next to a
    tokenizer_config.json naming V4's BOS/EOS (no chat template: V4 ships its own encoding), and their
    ids become config.json's bos_token_id/eos_token_id. `overrides` replaces preset keys (e.g. head_dim
    512 and qk_rope_head_dim 64, the sizes DeepSeek's FP8 decode-state rows are fixed at).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty; choose a new directory")
    data = {"model_type": "deepseek_v4", **PRESETS[preset], **(overrides or {})}
    tokenizer = None if tokenizer_json is None else v4_tokenizer(tokenizer_json)
    if tokenizer is not None:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size > data["vocab_size"]:
            raise ValueError(f"the tokenizer has {size} tokens; preset {preset!r} has vocab_size {data['vocab_size']}")
        data.update(bos_token_id=tokenizer.token_to_id(V4_BOS), eos_token_id=tokenizer.token_to_id(V4_EOS))
    ratios = data.pop("compress_ratios")
    data["layer_types"] = [{0: SLIDING, data["compress_rates"][CSA]: CSA, data["compress_rates"][HCA]: HCA}[r]
                           for r in ratios]
    config = V4Config.from_dict(data)
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(config)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensors[name] = _random_like(name, tensor, config, generator)
    if fp8:
        _check_fp4_widths(config)
        tensors = as_shipped(tensors, linear_weights(model))
        data.update(quantization_config=copy.deepcopy(FP8_QUANTIZATION_CONFIG), expert_dtype="fp4")
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(data, indent=1) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(directory / "tokenizer.json"))
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": V4_BOS, "eos_token": V4_EOS}
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1, ensure_ascii=False)
                                                         + "\n")
    return directory


def v4_tokenizer(tokenizer_json: Path) -> Tokenizer:
    """The tokenizer at `tokenizer_json` extended with DeepSeek V4's prompt tokens, so that a rendered
    prompt encodes each of them as one id (BOS and EOS special, the markers plain added tokens)."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (V4_BOS, V4_EOS)])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in V4_MARKERS])
    return tokenizer


def _random_like(name: str, tensor: torch.Tensor, config: V4Config, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("tid2eid"):  # each token's hash experts: k distinct experts
        return torch.stack([torch.randperm(config.n_routed_experts, generator=generator)[: tensor.shape[1]]
                            for _ in range(tensor.shape[0])])
    if name.endswith("norm.weight") or name.endswith("_scale"):
        return torch.ones_like(tensor)
    if name.endswith(("_base", "attn_sink", "gate.bias", "ape")):
        return torch.zeros_like(tensor)
    return torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype) * INIT_STD


def _check_fp4_widths(config: V4Config) -> None:
    """FP4 scales cover 1x32 groups of an expert's input: DeepSeek's layout needs whole groups."""
    for key in ("hidden_size", "moe_intermediate_size"):
        if getattr(config, key) % FP4_GROUP:
            raise ValueError(f"FP4 experts need {key} to be a multiple of {FP4_GROUP}, got {getattr(config, key)}")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `v4 model info` reports."""

    num_parameters: int
    num_active_parameters: int
    num_mtp_parameters: int  # the MTP draft blocks, not counted above (as DeepSeek counts)
    layer_types: list[str]
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
    return ModelInfo(total, total - inactive, mtp, list(config.layer_types), dtypes,
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
