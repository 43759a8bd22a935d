"""A miniature DeepSeek-V4-Flash checkpoint with exactly the published layout, for the conformance test
(tests/model/test_flash_layout.py). Tiny sizes, but every naming, dtype and packing rule is the one
deepseek-ai/DeepSeek-V4-Flash ships, so what loads here is what the real checkpoint asks of the loader.

What is reproduced, and where each fact was read (public copies, read for facts, none copied):
  - config.json: every key of the published file (the values of a full-size copy are `FLASH_CONFIG`;
    read from a verbatim copy of the V4-Flash-0731 config.json in a Rust test, less its four dspark_*
    keys and with the base model's 44 compress_ratios, as other loaders' fixtures of the base config have
    them); the miniature keeps every key and changes only sizes.
  - inference/config.json: DeepSeek's `ModelArgs` keys as shipped (`PUBLISHED_INFERENCE_CONFIG`, from
    Mockingjay1316/deepseek-v4-flash-spark `inference/config.json` less the one key that fork adds,
    n_routed_experts_score, which no other copy has), derived from config.json by `inference_config`.
  - 46 shards named `model-000NN-of-00046.safetensors`, every one a real file named by
    `model.safetensors.index.json` (`{"metadata": {"total_size"}, "weight_map"}`): shard 1 the embedding,
    shards 2-44 the layers in order (the published checkpoint has layer L in shard L + 2; the miniature's
    few layers are spread over those 43 files, a weight always beside its scale), shard 45 the head,
    final norm and hc_head_*, shard 46 every `mtp.0.*` tensor (as published: 1,575 MTP tensors, shard 46).
  - DeepSeek's native names (`embed`, `layers.N.attn.wq_a`, `...ffn.experts.E.w1`, `hc_attn_fn`,
    `mtp.0.e_proj`, ...) with `X.scale` beside every quantised `X.weight`; dtypes as model/formats.py
    says (BF16 433, F32 417, F8_E4M3 375, F8_E8M0 34,167, I8 33,792, I64 3 at full size: the test
    checks the rules reproduce those published counts): FP8 e4m3 linears with 128x128 block scales,
    FP4 routed experts two e2m1 codes per byte stored I8 with one E8M0 scale per 32, norms BF16, mHC,
    sinks, ape and gate bias F32, tid2eid I64.
  - `encoding/` (DeepSeek ships its chat encoder as Python there) and a tokenizer_config.json with no
    chat_template.
Variants the published Flash checkpoint does not have but its code accepts: `tid2eid_dtype=torch.int32`
(DeepSeek's `Gate` declares int32) and `fp8_scale_dtype="F32"` (float32 block scales, as V4 checkpoints
with FP8 experts ship them per model/quant.py's notes; every scale of V4-Flash is E8M0).
Not reproduced: the real tokenizer.json (no download; the loader runs without one) and the encoder's
Python source (a placeholder file stands for it).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from v4.model.config import V4Config
from v4.model.formats import linear_weights, stored_format
from v4.model.random_checkpoint import as_shipped, random_state
from v4.model.v4 import Transformer

NUM_SHARDS = 46
PUBLISHED_TENSOR_COUNT = 69187
PUBLISHED_MTP_TENSOR_COUNT = 1575
PUBLISHED_DTYPE_COUNTS = {"BF16": 433, "F32": 417, "F8_E4M3": 375, "F8_E8M0": 34167, "I64": 3, "I8": 33792}
FLASH_COMPRESS_RATIOS = [0, 0] + [4, 128] * 20 + [4, 0]  # 43 layers, then the MTP block
FLASH_CONFIG: dict = {
    "architectures": ["DeepseekV4ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "expert_dtype": "fp4", "hc_eps": 1e-06, "hc_mult": 4,
    "hc_sinkhorn_iters": 20, "head_dim": 512, "hidden_act": "silu", "hidden_size": 4096, "index_head_dim": 128,
    "index_n_heads": 64, "index_topk": 512, "initializer_range": 0.02, "max_position_embeddings": 1048576,
    "model_type": "deepseek_v4", "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
    "norm_topk_prob": True, "num_attention_heads": 64, "num_experts_per_tok": 6, "num_hidden_layers": 43,
    "num_hash_layers": 3, "num_key_value_heads": 1, "num_nextn_predict_layers": 1, "o_groups": 8,
    "o_lora_rank": 1024, "q_lora_rank": 1024, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 65536,
                     "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.5, "scoring_func": "sqrtsoftplus", "sliding_window": 128,
    "swiglu_limit": 10.0, "tie_word_embeddings": False, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.57.1", "use_cache": True, "vocab_size": 129280, "compress_rope_theta": 160000,
    "compress_ratios": FLASH_COMPRESS_RATIOS,
}
PUBLISHED_INFERENCE_CONFIG: dict = {
    "vocab_size": 129280, "dim": 4096, "moe_inter_dim": 2048, "n_layers": 43, "n_hash_layers": 3, "n_heads": 64,
    "n_routed_experts": 256, "n_shared_experts": 1, "n_activated_experts": 6, "score_func": "sqrtsoftplus",
    "route_scale": 1.5, "swiglu_limit": 10.0, "q_lora_rank": 1024, "head_dim": 512, "rope_head_dim": 64,
    "o_groups": 8, "o_lora_rank": 1024, "window_size": 128, "original_seq_len": 65536, "rope_theta": 10000,
    "rope_factor": 16, "beta_fast": 32, "beta_slow": 1, "index_n_heads": 64, "index_head_dim": 128,
    "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20, "dtype": "fp8", "scale_fmt": "ue8m0",
    "expert_dtype": "fp4", "compress_rope_theta": 160000, "compress_ratios": FLASH_COMPRESS_RATIOS,
}
# Sizes only: 5 layers in the published schedule's shape (2 sliding, then CSA/HCA alternating, a CSA
# last, a sliding MTP block); hidden 160 so FP8 linears have ragged 128x128 blocks and FP4 whole 1x32
# groups; heads, groups, experts and vocabulary split evenly over 2 ranks.
MINIATURE_SIZES = {
    "hidden_size": 160, "num_hidden_layers": 5, "num_attention_heads": 4, "head_dim": 32, "qk_rope_head_dim": 8,
    "q_lora_rank": 24, "o_groups": 2, "o_lora_rank": 16, "sliding_window": 8, "index_n_heads": 4,
    "index_head_dim": 16, "index_topk": 2, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 64, "vocab_size": 512, "max_position_embeddings": 4096,
    "rope_scaling": {**FLASH_CONFIG["rope_scaling"], "original_max_position_embeddings": 256},
    "compress_ratios": [0, 0, 4, 128, 4, 0],
}
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def miniature_config() -> dict:
    """config.json of the miniature: the published keys, in the published order, tiny sizes."""
    return {key: MINIATURE_SIZES.get(key, value) for key, value in FLASH_CONFIG.items()}


def inference_config(config: dict) -> dict:
    """inference/config.json for `config` (a config.json): DeepSeek's ModelArgs keys, in shipped order."""
    rope = config["rope_scaling"]
    values = {
        "vocab_size": config["vocab_size"], "dim": config["hidden_size"], "moe_inter_dim": config["moe_intermediate_size"],
        "n_layers": config["num_hidden_layers"], "n_hash_layers": config["num_hash_layers"],
        "n_heads": config["num_attention_heads"], "n_routed_experts": config["n_routed_experts"],
        "n_shared_experts": config["n_shared_experts"], "n_activated_experts": config["num_experts_per_tok"],
        "score_func": config["scoring_func"], "route_scale": config["routed_scaling_factor"],
        "swiglu_limit": config["swiglu_limit"], "q_lora_rank": config["q_lora_rank"], "head_dim": config["head_dim"],
        "rope_head_dim": config["qk_rope_head_dim"], "o_groups": config["o_groups"], "o_lora_rank": config["o_lora_rank"],
        "window_size": config["sliding_window"], "original_seq_len": rope["original_max_position_embeddings"],
        "rope_theta": config["rope_theta"], "rope_factor": rope["factor"], "beta_fast": rope["beta_fast"],
        "beta_slow": rope["beta_slow"], "index_n_heads": config["index_n_heads"],
        "index_head_dim": config["index_head_dim"], "index_topk": config["index_topk"], "hc_mult": config["hc_mult"],
        "hc_sinkhorn_iters": config["hc_sinkhorn_iters"], "dtype": "fp8",
        "scale_fmt": config["quantization_config"]["scale_fmt"], "expert_dtype": config["expert_dtype"],
        "compress_rope_theta": config["compress_rope_theta"], "compress_ratios": config["compress_ratios"],
    }
    return {key: values[key] for key in PUBLISHED_INFERENCE_CONFIG}


def shipped_dtypes(model: nn.Module, tid2eid: str = "I64", fp8_scale: str = "F8_E8M0") -> dict[str, str]:
    """Stored name -> safetensors dtype for every tensor DeepSeek ships for `model` (scales included),
    by model/formats.py's rules; works on the meta device, so a full-size V4-Flash costs no memory."""
    linear = linear_weights(model)
    dtypes = {}
    for name in model.state_dict():
        kind = stored_format(name, linear)
        if kind in ("fp4", "fp8"):
            dtypes[name] = "I8" if kind == "fp4" else "F8_E4M3"
            dtypes[name.removesuffix("weight") + "scale"] = "F8_E8M0" if kind == "fp4" else fp8_scale
        elif kind == "bf16":
            dtypes[name] = "BF16"
        else:
            dtypes[name] = tid2eid if name.endswith("tid2eid") else "F32"
    return dtypes


def shard_name(number: int) -> str:
    """The published shard file name: model-00001-of-00046.safetensors ... model-00046-of-00046."""
    return f"model-{number:05d}-of-{NUM_SHARDS:05d}.safetensors"


def _shard_of(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Shard number per tensor, as published: 1 the embedding, 45 the head, final norm and hc_head_*,
    46 the MTP block, 2-44 the layers in order (contiguous runs, a weight beside its scale)."""
    fixed = {name: 1 if name == "embed.weight" else 46 if name.startswith("mtp.") else 45
             for name in tensors if not name.startswith("layers.")}
    units = [name for name in tensors if name.startswith("layers.") and not name.endswith(".scale")]
    shards = {}
    for i, name in enumerate(units):  # 43 runs of near-equal length, in layer order
        shards[name] = 2 + i * 43 // len(units)
        scale = name.removesuffix("weight") + "scale"
        if name.endswith(".weight") and scale in tensors:
            shards[scale] = shards[name]
    return {**fixed, **shards}


def write_flash_checkpoint(directory: Path, seed: int = 0, tid2eid_dtype: torch.dtype = torch.int64,
                           fp8_scale_dtype: str = "F8_E8M0") -> Path:
    """Write the miniature checkpoint to `directory` (created; must not exist) and return it."""
    directory = Path(directory)
    config = miniature_config()
    with torch.device("cpu"):
        model = Transformer(V4Config.from_dict(config))
    tensors = as_shipped(random_state(model, seed), linear_weights(model))
    for name, tensor in tensors.items():
        if name.endswith("tid2eid"):
            tensors[name] = tensor.to(tid2eid_dtype)
        elif fp8_scale_dtype == "F32" and name.endswith(".scale") and \
                tensors[name.removesuffix("scale") + "weight"].dtype == torch.float8_e4m3fn:
            tensors[name] = tensor.float()  # an FP8 block scale (FP4 scales keep E8M0)
    shards = _shard_of(tensors)
    assert set(shards) == set(tensors) and set(shards.values()) == set(range(1, NUM_SHARDS + 1))
    directory.mkdir(parents=True)
    weight_map, total = {}, 0
    for number in range(1, NUM_SHARDS + 1):
        names = [name for name in tensors if shards[name] == number]
        (directory / shard_name(number)).write_bytes(save({n: tensors[n] for n in names}, metadata={"format": "pt"}))
        weight_map.update(dict.fromkeys(names, shard_name(number)))
        total += sum(tensors[n].numel() * tensors[n].element_size() for n in names)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(directory / "model.safetensors.index.json", index)
    _write_json(directory / "config.json", config)
    _write_json(directory / "inference" / "config.json", inference_config(config))
    _write_json(directory / "tokenizer_config.json", {"add_bos_token": False, "add_eos_token": False,
                                                      "bos_token": BOS, "eos_token": EOS,
                                                      "tokenizer_class": "PreTrainedTokenizerFast"})
    (directory / "encoding").mkdir()
    (directory / "encoding" / "encoding_dsv4.py").write_text(
        '"""Stands for DeepSeek\'s chat encoder, which V4 ships as Python here instead of a chat template."""\n')
    return directory


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
