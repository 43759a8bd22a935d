"""Random V4 checkpoints (`v4 model init`): tests and demos build their models here, nothing is downloaded.

A checkpoint is config.json, safetensors under DeepSeek's native names, and optionally the caller's
tokenizer.json extended with V4's prompt tokens. With `fp8=True` the same random weights are stored the
way DeepSeek ships V4-Flash (formats.py says which tensor takes which format), so the quantised loading
path is exercised without the real checkpoint. What a checkpoint costs is checkpoint.py's business.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save

from .config import CSA, HCA, SLIDING, V4Config
from .formats import FP8_QUANTIZATION_CONFIG, linear_weights, stored_format
from .quant import FP4_GROUP, quantize_fp4, quantize_fp8
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
# The strings DeepSeek V4's chat encoding builds prompts from (agent/chat_format.py renders them; model/
# may not import agent). As in DeepSeek's tokenizer.json, BOS and EOS are special tokens and the role and
# thinking markers are added tokens that are not special, so decoding keeps `</think>` in the text.
V4_BOS, V4_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
RANDOM_MARKER = "RANDOM_WEIGHTS"  # a file in the checkpoint directory: front ends say its answers are noise
V4_MARKERS = ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜")


def init_checkpoint(directory: Path, preset: str, seed: int = 0, tokenizer_json: Path | None = None,
                    fp8: bool = False, overrides: dict | None = None) -> Path:
    """Write a random V4 checkpoint of `preset` to `directory` (which must be empty or absent).

    `fp8`: store the same random weights as DeepSeek ships V4 (FP8 linears, FP4 routed experts; see
    formats.py), with the matching quantization_config and expert_dtype in config.json.
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
    model = Transformer(config)
    tensors = random_state(model, seed)
    if fp8:
        _check_fp4_widths(config)
        tensors = as_shipped(tensors, linear_weights(model))
        data.update(quantization_config=copy.deepcopy(FP8_QUANTIZATION_CONFIG), expert_dtype="fp4")
    directory.mkdir(parents=True, exist_ok=True)
    # Written through open() so the file gets the umask's mode like its siblings (safetensors'
    # save_file creates it 0600).
    (directory / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    (directory / RANDOM_MARKER).write_text("random weights from `v4 model init`: its answers are noise\n")
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


def random_state(model: Transformer, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random value for every tensor of `model`'s state dict (norms one, biases zero, hash tables k
    distinct experts per token), the same for the same seed: what `init_checkpoint` stores."""
    generator = torch.Generator().manual_seed(seed)
    return {name: _random_like(name, tensor, model.config, generator) for name, tensor in model.state_dict().items()}


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
            shipped[name] = tensor.to(torch.int64)  # as V4-Flash's headers have it (formats.py)
        else:
            shipped[name] = tensor
    return shipped
