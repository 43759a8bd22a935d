"""V4Config against transformers' DeepseekV4Config: the same model from modern and legacy keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.model.conftest import TINY
from v4.model.config import CSA, HCA, SLIDING, ConfigError, EngineConfig, V4Config
from v4.model.formats import keeps_float32
from v4.model.v4 import Transformer

transformers = pytest.importorskip("transformers")

LEGACY = {
    "model_type": "deepseek_v4", "num_hidden_layers": 4, "hidden_size": 256, "head_dim": 128,
    "num_attention_heads": 8, "o_groups": 2, "compress_ratios": [0, 4, 128, 4, 0], "num_hash_layers": 1,
    "qk_rope_head_dim": 32, "num_nextn_predict_layers": 1,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                     "beta_fast": 32, "beta_slow": 1},
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
}
DERIVED = ("layer_types", "mlp_layer_types", "qk_rope_head_dim", "compress_rates", "rope_parameters",
           "partial_rotary_factor")


def _reference(data: dict):
    return transformers.DeepseekV4Config(**{k: v for k, v in data.items() if k != "model_type"})


def _same_model(ours: V4Config, theirs) -> None:
    for key in DERIVED:
        assert getattr(ours, key) == getattr(theirs, key), key


def test_defaults_are_v4_flash_as_transformers_has_them() -> None:
    ours = V4Config.from_dict({"model_type": "deepseek_v4"})
    theirs = transformers.DeepseekV4Config()
    _same_model(ours, theirs)
    assert (ours.num_hidden_layers, ours.hidden_size, ours.n_routed_experts, ours.num_experts_per_tok) == (43, 4096, 256, 6)
    assert ours.num_hash_layers == 3 and ours.qk_rope_head_dim == 64


def test_legacy_keys_fold_in_as_transformers_folds_them() -> None:
    ours = V4Config.from_dict(LEGACY)
    _same_model(ours, _reference(LEGACY))
    assert ours.layer_types == [SLIDING, CSA, HCA, CSA]  # the MTP layer's ratio is not a layer
    assert [ours.compress_rate(i) for i in range(4)] == [0, 4, 128, 4]
    assert ours.quantization_config["weight_block_size"] == [128, 128]


def test_a_saved_transformers_config_loads_without_unknown_keys(tmp_path: Path) -> None:
    reference = _reference(LEGACY)
    reference.save_pretrained(tmp_path)
    warnings: list[str] = []
    ours = V4Config.from_json(tmp_path, warn=warnings.append)
    assert warnings == []
    _same_model(ours, reference)


def test_an_unknown_key_is_reported_once_by_name() -> None:
    warnings: list[str] = []
    V4Config.from_dict({"model_type": "deepseek_v4", "brand_new_knob": 3}, warn=warnings.append)
    assert warnings == ["config.json: ignoring unknown keys ['brand_new_knob']"]


@pytest.mark.parametrize(("change", "message"), [
    ({"model_type": "llama"}, "model_type must be 'deepseek_v4'"),
    ({"model_type": None}, "model_type must be 'deepseek_v4'"),
    ({"hidden_size": "4096"}, "hidden_size must be int"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be float"),
    ({"layer_types": [SLIDING] * 3}, "layer_types has 3 entries but num_hidden_layers is 4"),
    ({"layer_types": [SLIDING, "full_attention", SLIDING, SLIDING]}, "unknown layer types ['full_attention']"),
    ({"compress_ratios": [0, 4]}, "compress_ratios must list one ratio per layer"),
    ({"compress_ratios": [0, 4, 64, 4]}, "unsupported ratios [64]"),
    ({"num_hash_layers": 9}, "num_hash_layers must be an integer in [0, 4]"),
    ({"o_groups": 3}, "not a multiple of o_groups"),
    ({"num_key_value_heads": 8}, "num_key_value_heads must be 1"),
    ({"num_experts_per_tok": 300}, "exceeds n_routed_experts"),
    ({"qk_rope_head_dim": 33}, "even whole number"),
    ({"scoring_func": "relu"}, "scoring_func must be one of"),
    ({"rope_scaling": {"type": "yarn", "factor": 16}}, "YaRN needs 'original_max_position_embeddings'"),
    ({"compress_rate_csa": 0}, "compress_rates['compressed_sparse_attention'] must be a positive integer"),
])
def test_inconsistent_configs_are_clear_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        V4Config.from_dict({**LEGACY, **change})
    assert message in str(error.value)


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        V4Config.from_json(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        V4Config.from_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="must be a JSON object"):
        V4Config.from_json(tmp_path)


def test_engine_config_is_checked() -> None:
    assert EngineConfig().dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        EngineConfig(dtype="int8")
    with pytest.raises(ConfigError, match="positive"):
        EngineConfig(max_seq_len=0)


def test_a_model_built_in_bf16_keeps_v4s_float32_parameters_float32() -> None:
    """Norms, mHC, sinks, the gate bias and every compressor's `ape` are float32 whatever the default
    dtype at construction, as a loaded checkpoint has them: the decode kernels take them so."""
    config = V4Config.from_dict({**TINY, "model_type": "deepseek_v4"})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            net = Transformer(config)
    finally:
        torch.set_default_dtype(previous)
    kept = {name: p.dtype for name, p in net.named_parameters() if keeps_float32(name)}
    assert any(name.endswith("ape") for name in kept)
    assert {name: dtype for name, dtype in kept.items() if dtype != torch.float32} == {}
    assert net.embed.weight.dtype == torch.bfloat16
