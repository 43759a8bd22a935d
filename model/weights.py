"""Checkpoint loading: safetensors under DeepSeek's native names or transformers' names, one rename table.

Every tensor the model needs must be in the checkpoint with its exact shape; anything missing, extra
or mis-shaped is a WeightsError naming the tensor, and the model is left untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


class WeightsError(ValueError):
    """A checkpoint that does not match the model; names the tensor or file."""


# transformers name (after dropping `model.`) -> native name, rule by rule in order. It covers both the
# names of transformers' modules and the near-native names its `save_pretrained` writes.
HF_TO_NATIVE: list[tuple[str, str]] = [
    (r"^embed_tokens\.", "embed."),
    (r"^lm_head\.", "head."),
    (r"^hc_head\.hc_(fn|base|scale)$", r"hc_head_\1"),
    (r"\.self_attn\.compressor\.indexer\.scorer\.weights_proj\.", ".attn.indexer.weights_proj."),
    (r"\.self_attn\.compressor\.indexer\.q_b_proj\.", ".attn.indexer.wq_b."),
    (r"\.self_attn\.compressor\.indexer\.", ".attn.indexer.compressor."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.", ".ffn."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.(attn|ffn)_hc\.(fn|base|scale)$", r".hc_\1_\2"),
    (r"\.attn\.sinks$", ".attn.attn_sink"),
    (r"\.compressor\.kv_norm\.", ".compressor.norm."),
    (r"\.compressor\.position_bias$", ".compressor.ape"),
    (r"\.compressor\.kv_proj\.", ".compressor.wkv."),
    (r"\.compressor\.gate_proj\.", ".compressor.wgate."),
    (r"\.attn\.q_a_proj\.", ".attn.wq_a."),
    (r"\.attn\.q_a_norm\.", ".attn.q_norm."),
    (r"\.attn\.norm\.", ".attn.kv_norm."),  # how transformers' save_pretrained spells the KV norm
    (r"\.attn\.q_b_proj\.", ".attn.wq_b."),
    (r"\.attn\.kv_proj\.", ".attn.wkv."),
    (r"\.attn\.o_a_proj\.", ".attn.wo_a."),
    (r"\.attn\.o_b_proj\.", ".attn.wo_b."),
    (r"\.ffn\.gate\.e_score_correction_bias$", ".ffn.gate.bias"),
    (r"\.ffn\.shared_experts\.gate_proj\.", ".ffn.shared_experts.w1."),
    (r"\.ffn\.shared_experts\.down_proj\.", ".ffn.shared_experts.w2."),
    (r"\.ffn\.shared_experts\.up_proj\.", ".ffn.shared_experts.w3."),
]
FUSED_EXPERTS = re.compile(r"^(layers\.\d+\.ffn\.experts)\.(gate_up_proj|down_proj)$")


def native_name(name: str) -> str:
    """The native name of a transformers tensor name (native names come back unchanged)."""
    if name.startswith("model."):
        name = name[len("model."):]
    for pattern, replacement in HF_TO_NATIVE:
        name = re.sub(pattern, replacement, name)
    return name


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or a sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"{index}: not a safetensors index ({exc})") from exc
        return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{path}: no *.safetensors files")
    return files


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(native name, tensor) for every tensor of the checkpoint; fused HF experts come out split."""
    for file in checkpoint_files(path):
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise WeightsError(f"{file}: cannot read safetensors ({exc})") from exc
        with handle:
            for raw in handle.keys():
                try:
                    tensor = handle.get_tensor(raw)
                except Exception as exc:
                    raise WeightsError(f"{file}: tensor {raw} cannot be read ({exc})") from exc
                name = native_name(raw)
                fused = FUSED_EXPERTS.match(name)
                if fused is None:
                    yield name, tensor
                    continue
                prefix, kind = fused.groups()
                for expert, weight in enumerate(tensor):
                    if kind == "down_proj":
                        yield f"{prefix}.{expert}.w2.weight", weight
                    else:
                        gate, up = weight.chunk(2, dim=0)
                        yield f"{prefix}.{expert}.w1.weight", gate
                        yield f"{prefix}.{expert}.w3.weight", up


def load_into(model: nn.Module, path: Path, dtype: torch.dtype) -> None:
    """Fill every parameter and persistent buffer of `model` from the checkpoint at `path`.

    Norm weights, mHC parameters, sinks and the gate bias stay float32 (as DeepSeek keeps them);
    other floating tensors take `dtype`.
    """
    expected = dict(model.state_dict())
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in read_tensors(path):
        if name not in expected:
            raise WeightsError(f"unexpected tensor {name} in {path}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise WeightsError(f"tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                               f"{tuple(expected[name].shape)}")
        loaded[name] = tensor
    missing = sorted(set(expected) - set(loaded))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightsError(f"checkpoint {path} lacks {shown}")
    for name, tensor in loaded.items():
        if tensor.is_floating_point():
            loaded[name] = tensor.to(torch.float32 if _keeps_float32(name) else dtype)
    model.load_state_dict(loaded, strict=True, assign=True)


def _keeps_float32(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf.startswith("hc_") or leaf in ("attn_sink", "bias") or name.endswith("norm.weight") or \
        name.endswith("ape")
