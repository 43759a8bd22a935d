"""Engram layers inside the model: enabled by config.json, loaded from the checkpoint, carried by the
decode state (chunked == whole, rewind exact), tables kept on their own device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from v4 import model
from v4.model import ConfigError, V4Config
from v4.model.state import mark, rewind
from v4.model.v4 import Transformer

ENGRAM = {"engram_layer_ids": [1, 2], "engram_max_ngram_size": 3, "engram_n_embed_per_ngram": 32,
          "engram_n_head_per_ngram": 4, "engram_table_size": 1009, "engram_kernel_size": 4}
BASE = {
    "model_type": "deepseek_v4", "vocab_size": 300, "hidden_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "head_dim": 32, "qk_rope_head_dim": 8, "q_lora_rank": 24, "o_groups": 2,
    "o_lora_rank": 16, "sliding_window": 8, "layer_types": ["sliding_attention", "compressed_sparse_attention",
                    "heavily_compressed_attention", "compressed_sparse_attention"],
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    "index_n_heads": 8, "index_head_dim": 16, "index_topk": 4, "n_routed_experts": 8, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "num_hash_layers": 1, "max_position_embeddings": 1024,
}


def write_random_checkpoint(directory: Path, data: dict, seed: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = V4Config.from_dict(data)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, tensor in Transformer(config, with_mtp=False).state_dict().items():
        if name.endswith("tid2eid"):
            tensors[name] = torch.stack([torch.randperm(8, generator=generator)[:2] for _ in range(tensor.shape[0])])
        elif name.endswith("norm.weight"):
            tensors[name] = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
        else:
            tensors[name] = torch.randn(tensor.shape, generator=generator) * tensor.shape[-1] ** -0.5
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({**data, "num_nextn_predict_layers": 0}))
    return directory


@pytest.fixture(scope="module")
def engram_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("engram") / "ckpt", {**BASE, **ENGRAM}, seed=2)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_engram_layers_come_from_config_and_checkpoint(engram_dir: Path) -> None:
    engine = model.load(engram_dir, device="cpu", dtype="float32")
    layers = engine.model.layers
    assert [i for i, block in enumerate(layers) if block.engram is not None] == [1, 2]
    assert layers[1].engram.embed.weight.abs().sum() > 0 and layers[1].engram.moduli.device.type == "cpu"


def test_chunked_and_token_by_token_match_one_forward(engram_dir: Path) -> None:
    engine = model.load(engram_dir, device="cpu", dtype="float32")
    ids = _ids(70, seed=1)
    whole = engine.forward(ids, engine.new_state())
    state = engine.new_state()
    parts, at = [], 0
    for size in (23, 1, 1, 30, 1, 14):
        parts.append(engine.forward(ids[at : at + size], state))
        at += size
    assert _relative(torch.cat(parts), whole) < 1e-5
    state = engine.new_state()
    steps = [engine.forward([token], state) for token in ids[:20]]
    assert _relative(torch.cat(steps), whole[:20]) < 1e-5


def test_the_memory_changes_the_logits(engram_dir: Path) -> None:
    engine = model.load(engram_dir, device="cpu", dtype="float32")
    ids = _ids(30, seed=3)
    before = engine.forward(ids, engine.new_state())
    with torch.no_grad():
        engine.model.layers[2].engram.embed.weight.mul_(3.0)
    assert _relative(engine.forward(ids, engine.new_state()), before) > 1e-3


def test_rewind_restores_the_engram_state(engram_dir: Path) -> None:
    engine = model.load(engram_dir, device="cpu", dtype="float32")
    ids = _ids(40, seed=4)
    state = engine.new_state()
    engine.forward(ids[:25], state)
    point = mark(state)
    first = engine.forward(ids[25:], state)
    engine.forward(_ids(7, seed=5), state)
    rewind(state, point)
    assert torch.equal(engine.forward(ids[25:], state), first)


def test_tables_stay_on_their_own_device_and_dtype(engram_dir: Path) -> None:
    plain = model.load(engram_dir, device="cpu", dtype="bfloat16")
    hosted = model.load(engram_dir, device="cpu", dtype="bfloat16", engram_table_device="cpu")
    engram = hosted.model.layers[1].engram
    assert engram.table_device == torch.device("cpu")
    ids = _ids(20, seed=6)
    assert torch.equal(plain.forward(ids, plain.new_state()), hosted.forward(ids, hosted.new_state()))
    hosted.model.to(torch.float32)  # a later cast (or move) changes everything but the tables
    assert engram.embed.weight.dtype == torch.bfloat16 and engram.key_proj.weight.dtype == torch.float32


def test_engram_layer_ids_beyond_the_model_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"engram_layer_ids \[7\]"):
        V4Config.from_dict({**BASE, **ENGRAM, "engram_layer_ids": [1, 7]})
    with pytest.raises(ConfigError, match="engram_max_ngram_size"):
        V4Config.from_dict({**BASE, **ENGRAM, "engram_max_ngram_size": 1})
