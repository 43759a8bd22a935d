"""Our engine against transformers' DeepseekV4ForCausalLM on a tiny random checkpoint, in float32."""

from __future__ import annotations

import pytest
import torch

from v4.model import WeightsError, load_transformer

# 44 crosses 5 sliding windows (8), 11 CSA windows (4) with top-3 selection and 5 HCA windows (8);
# 130 crosses 16 sliding windows and 32 CSA windows, and passes 128 positions.
SEQ_LENS = (44, 130)


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_full_prefill_logits_match_transformers(hf_checkpoint, seq_len: int) -> None:
    path, reference = hf_checkpoint
    ours = load_transformer(path)
    token_ids = torch.randint(0, reference.config.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(token_ids, use_cache=False).logits.float()
        actual = ours(token_ids)
    assert actual.shape == expected.shape
    assert _relative_error(actual, expected) < 1e-4  # measured: 1e-7 to 7e-7 over seeds and lengths


def test_a_missing_tensor_is_named(hf_checkpoint, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = hf_checkpoint
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.layers.1.attn.indexer.wq_b.weight"]
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"lacks layers\.1\.attn\.indexer\.wq_b\.weight"):
        load_transformer(tmp_path)


def test_a_mis_shaped_and_an_extra_tensor_are_named(hf_checkpoint, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    path, _ = hf_checkpoint
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"tensor norm\.weight has shape \(3,\)"):
        load_transformer(tmp_path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors["model.surprise.weight"] = torch.ones(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected tensor surprise\.weight"):
        load_transformer(tmp_path)


def test_a_truncated_safetensors_file_is_a_clear_error(hf_checkpoint, tmp_path) -> None:
    path, _ = hf_checkpoint
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_transformer(tmp_path)
