"""Checkpoints stored as DeepSeek ships V4 (FP8 linears, FP4 routed experts) load to the same model as
their dequantised weights stored plainly, under native and transformers' names; bad pairs are named."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from v4 import model
from v4.model import WeightsError, load_transformer
from v4.model.checkpoint import model_info
from v4.model.quant import FP4_GROUP
from v4.model.random_checkpoint import PRESETS, init_checkpoint
from v4.model.weights import native_name, read_tensors

CHUNKS = (17, 1, 1, 30, 11)  # 60 tokens: a prefill, two decode steps, two more prefills
TOLERANCE = 1e-4
# Native name -> transformers' module names, applied in order (the inverse of weights.HF_TO_NATIVE).
TO_TRANSFORMERS: list[tuple[str, str]] = [
    (r"^embed\.", "embed_tokens."),
    (r"^head\.", "lm_head."),
    (r"^hc_head_(fn|base|scale)$", r"hc_head.hc_\1"),
    (r"\.attn\.indexer\.weights_proj\.", ".self_attn.compressor.indexer.scorer.weights_proj."),
    (r"\.attn\.indexer\.wq_b\.", ".self_attn.compressor.indexer.q_b_proj."),
    (r"\.attn\.indexer\.compressor\.", ".self_attn.compressor.indexer."),
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.", ".mlp."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_(attn|ffn)_(fn|base|scale)$", r".\1_hc.\2"),
    (r"\.attn_sink$", ".sinks"),
    (r"\.(compressor|indexer)\.norm\.", r".\1.kv_norm."),
    (r"\.(compressor|indexer)\.ape$", r".\1.position_bias"),
    (r"\.(compressor|indexer)\.wkv\.", r".\1.kv_proj."),
    (r"\.(compressor|indexer)\.wgate\.", r".\1.gate_proj."),
    (r"\.self_attn\.wq_a\.", ".self_attn.q_a_proj."),
    (r"\.self_attn\.q_norm\.", ".self_attn.q_a_norm."),
    (r"\.self_attn\.wq_b\.", ".self_attn.q_b_proj."),
    (r"\.self_attn\.wkv\.", ".self_attn.kv_proj."),
    (r"\.self_attn\.wo_a\.", ".self_attn.o_a_proj."),
    (r"\.self_attn\.wo_b\.", ".self_attn.o_b_proj."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"),
    (r"\.shared_experts\.w1\.", ".shared_experts.gate_proj."),
    (r"\.shared_experts\.w2\.", ".shared_experts.down_proj."),
    (r"\.shared_experts\.w3\.", ".shared_experts.up_proj."),
]


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _logits(engine: model.Engine, ids: list[int], chunks: tuple[int, ...] | None = None) -> torch.Tensor:
    """Logits of `ids` fed whole, or in `chunks` continuing one state."""
    state = engine.new_state(max_tokens=len(ids))
    sizes = chunks or (len(ids),)
    assert sum(sizes) == len(ids)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return torch.cat([engine.forward(ids[s : s + n], state) for s, n in zip(starts, sizes)])


def _copy_config(source: Path, directory: Path, drop: tuple[str, ...] = ()) -> None:
    data = json.loads((source / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({k: v for k, v in data.items() if k not in drop}))


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("fp8") / "tiny", "tiny", seed=7, fp8=True)


@pytest.fixture(scope="module")
def dequantised_dir(fp8_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP8 checkpoint's tensors as `read_tensors` gives them (float32 where quantised), stored plainly."""
    directory = tmp_path_factory.mktemp("dequantised")
    save_file(dict(read_tensors(fp8_dir)), str(directory / "model.safetensors"))
    _copy_config(fp8_dir, directory, drop=("quantization_config", "expert_dtype"))
    return directory


@pytest.fixture(scope="module")
def token_ids() -> list[int]:
    return torch.randint(0, PRESETS["tiny"]["vocab_size"], (60,), generator=torch.Generator().manual_seed(11)).tolist()


@pytest.fixture(scope="module")
def expected(dequantised_dir: Path, token_ids: list[int]) -> torch.Tensor:
    """The reference logits: the dequantised weights, whole sequence."""
    return _logits(model.load(dequantised_dir, device="cpu", dtype="float32"), token_ids)


def test_presets_have_whole_fp4_groups() -> None:
    for preset in PRESETS.values():
        assert preset["hidden_size"] % FP4_GROUP == 0 and preset["moe_intermediate_size"] % FP4_GROUP == 0


def test_the_checkpoint_stores_what_deepseek_quantises(fp8_dir: Path, tmp_path: Path) -> None:
    with safe_open(str(fp8_dir / "model.safetensors"), framework="pt") as handle:
        dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
    expected = {
        "layers.1.attn.wq_a.weight": "F8_E4M3", "layers.1.attn.wq_a.scale": "F8_E8M0",
        "layers.1.attn.wo_a.weight": "F8_E4M3", "layers.1.attn.indexer.wq_b.weight": "F8_E4M3",
        "layers.0.ffn.shared_experts.w2.weight": "F8_E4M3", "mtp.0.e_proj.weight": "F8_E4M3",
        "layers.0.ffn.experts.3.w1.weight": "I8", "layers.0.ffn.experts.3.w1.scale": "F8_E8M0",
        "mtp.0.ffn.experts.0.w2.weight": "I8",
        "embed.weight": "BF16", "head.weight": "BF16", "layers.1.ffn.gate.weight": "BF16",
        "layers.1.attn.compressor.wkv.weight": "BF16", "layers.1.attn.indexer.compressor.wgate.weight": "BF16",
        "layers.1.attn.indexer.weights_proj.weight": "BF16",
        "layers.1.attn.kv_norm.weight": "BF16", "mtp.0.enorm.weight": "BF16", "norm.weight": "BF16",
        "layers.1.hc_attn_fn": "F32", "layers.1.attn.attn_sink": "F32",
        "layers.1.attn.compressor.ape": "F32", "layers.1.ffn.gate.bias": "F32", "layers.0.ffn.gate.tid2eid": "I64",
    }
    assert {key: dtypes[key] for key in expected} == expected
    assert "head.scale" not in dtypes and "layers.1.attn.compressor.wkv.scale" not in dtypes
    config = json.loads((fp8_dir / "config.json").read_text())
    assert config["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                             "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
    assert config["expert_dtype"] == "fp4"
    assert {"F8_E4M3", "F8_E8M0", "I8"} <= set(model_info(fp8_dir).dtypes)  # sizes: tests/agent/test_model_cli.py
    # The same seed without fp8 gives the weights these quantise. Measured relative errors: FP8 and BF16
    # at most 0.028, FP4 (1 mantissa bit, on Gaussian weights) 0.124.
    plain = dict(read_tensors(init_checkpoint(tmp_path / "plain", "tiny", seed=7)))
    for name, tensor in read_tensors(fp8_dir):
        bound = 0.2 if ".experts." in name and "shared" not in name else 0.06
        error = (tensor.float() - plain[name].float()).norm() / plain[name].float().norm().clamp(min=1e-30)
        assert error < bound, name


def test_fp8_logits_match_the_dequantised_weights_whole_and_chunked(
        fp8_dir: Path, token_ids: list[int], expected: torch.Tensor) -> None:
    engine = model.load(fp8_dir, device="cpu", dtype="float32")
    whole, chunked = _logits(engine, token_ids), _logits(engine, token_ids, CHUNKS)
    assert whole.shape == expected.shape == (60, PRESETS["tiny"]["vocab_size"])
    # measured (seeds 7, 1, 2): 0.0 whole (the same float32 weights), 4.1e-7 to 4.4e-7 chunked
    assert _relative_error(whole, expected) < TOLERANCE
    assert _relative_error(chunked, expected) < TOLERANCE


def transformers_name(native: str) -> str:
    """A native tensor name under transformers' module names (`model.` prefix except the head)."""
    name = native
    for pattern, replacement in TO_TRANSFORMERS:
        name = re.sub(pattern, replacement, name)
    return name if name.startswith("lm_head.") else "model." + name


def _as_transformers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The main model's tensors (transformers drops MTP) with scales as `...weight_scale_inv`."""
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith("mtp."):
            continue
        weight = name.removesuffix("scale") + "weight"
        hf = transformers_name(weight) + "_scale_inv" if name.endswith(".scale") and weight in tensors \
            else transformers_name(name)
        assert native_name(hf) == name, (name, hf)
        renamed[hf] = tensor
    return renamed


def test_fp8_weights_under_transformers_names_load_too(
        fp8_dir: Path, tmp_path: Path, token_ids: list[int], expected: torch.Tensor) -> None:
    tensors = _as_transformers(load_file(str(fp8_dir / "model.safetensors")))
    assert {"model.layers.1.self_attn.q_a_proj.weight_scale_inv", "model.layers.1.mlp.shared_experts.down_proj.weight",
            "model.layers.1.self_attn.compressor.indexer.q_b_proj.weight_scale_inv",
            "model.layers.0.mlp.experts.5.w2.weight_scale_inv"} <= set(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _copy_config(fp8_dir, tmp_path)
    engine = model.load(tmp_path, device="cpu", dtype="float32")
    assert not engine.has_draft_head
    assert _relative_error(_logits(engine, token_ids, CHUNKS), expected) < TOLERANCE


def _edited(fp8_dir: Path, directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    shutil.copyfile(fp8_dir / "config.json", directory / "config.json")
    return directory


def _e8m0_ones(*shape: int) -> torch.Tensor:
    return torch.full(shape, 127, dtype=torch.uint8).view(torch.float8_e8m0fnu)


def test_an_fp8_scale_of_the_wrong_shape_is_named(fp8_dir: Path, tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.1.attn.wq_b.scale"] = _e8m0_ones(2, 1)  # [128, 24] needs one 128x128 block

    with pytest.raises(WeightsError, match=r"layers\.1\.attn\.wq_b.*scale has shape \(2, 1\)"):
        load_transformer(_edited(fp8_dir, tmp_path, edit))


def test_an_fp4_expert_of_the_wrong_packed_width_is_named(fp8_dir: Path, tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:  # 16 bytes = 32 values per row, not 64
        tensors["layers.2.ffn.experts.3.w1.weight"] = tensors["layers.2.ffn.experts.3.w1.weight"][:, :16].clone()
        tensors["layers.2.ffn.experts.3.w1.scale"] = _e8m0_ones(32, 1)

    with pytest.raises(WeightsError, match=r"layers\.2\.ffn\.experts\.3\.w1\.weight has shape \(32, 32\)"):
        load_transformer(_edited(fp8_dir, tmp_path, edit))


@pytest.mark.parametrize(("scale", "message"), [
    ("layers.0.attn.wo_b.scale", r"layers\.0\.attn\.wo_b\.weight is quantised \(F8_E4M3\)"),
    ("layers.3.ffn.experts.0.w2.scale", r"layers\.3\.ffn\.experts\.0\.w2\.weight is quantised \(I8\)"),
])
def test_a_quantised_weight_without_its_scale_is_named(fp8_dir: Path, tmp_path: Path, scale: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        load_transformer(_edited(fp8_dir, tmp_path, lambda tensors: tensors.pop(scale)))
