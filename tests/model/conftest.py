"""Tiny random DeepSeek V4 checkpoints written by transformers itself (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4.model.random_checkpoint import init_checkpoint

TINY = {
    "vocab_size": 97, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32,
    "q_lora_rank": 24, "o_groups": 2, "o_lora_rank": 16, "sliding_window": 8, "qk_rope_head_dim": 8,
    "layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                    "compressed_sparse_attention"],
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    "index_n_heads": 8, "index_head_dim": 16, "index_topk": 3, "hc_mult": 4, "hc_sinkhorn_iters": 20,
    "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "num_hash_layers": 1,
    "swiglu_limit": 10.0, "routed_scaling_factor": 1.5, "max_position_embeddings": 1024,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1},
}


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter and buffer random (transformers initialises sinks, biases and tables to 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("tid2eid"):
                experts = model.config.n_routed_experts
                rows = torch.stack([torch.randperm(experts, generator=generator)[: tensor.shape[1]]
                                    for _ in range(tensor.shape[0])])
                tensor.copy_(rows)
            elif name.endswith("inv_freq"):
                continue
            elif tensor.is_floating_point():
                scale = 0.5 if tensor.dim() <= 1 else tensor.shape[-1] ** -0.5
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale
                             + (1.0 if name.endswith("norm.weight") else 0.0))


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """(directory, the transformers model) of a tiny random V4 saved with `save_pretrained`."""
    transformers = pytest.importorskip("transformers")
    config = transformers.DeepseekV4Config(**TINY)
    torch.manual_seed(0)
    model = transformers.DeepseekV4ForCausalLM(config).eval()
    randomize(model, seed=1)
    path = tmp_path_factory.mktemp("tiny_v4")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def tiny_mtp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "tiny" random checkpoint of random_checkpoint.py with seed 4 (window 8, CSA rate 4, HCA rate 8,
    an MTP block), written once for every module that loads it."""
    return init_checkpoint(tmp_path_factory.mktemp("tiny_mtp") / "tiny", "tiny", seed=4)
