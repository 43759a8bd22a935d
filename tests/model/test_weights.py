"""Checkpoint formats: native names, sharded indexes, lazy per-shard loading with progress, bad shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from v4 import model
from v4.model import WeightsError, load_transformer
from v4.model.weights import read_tensors


def write_sharded(tensors: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    """`tensors` as `shards` safetensors files plus the index transformers writes."""
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name].contiguous() for name in names[shard::shards]}
        save_file(part, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def native_sharded(hf_checkpoint, tmp_path_factory) -> Path:
    """The transformers checkpoint rewritten under DeepSeek's native names, in 3 shards."""
    path, _ = hf_checkpoint
    directory = tmp_path_factory.mktemp("native")
    (directory / "config.json").write_text((path / "config.json").read_text())
    write_sharded(dict(read_tensors(path)), directory, shards=3)
    return directory


def test_native_sharded_checkpoint_gives_the_same_logits(hf_checkpoint, native_sharded: Path) -> None:
    path, reference = hf_checkpoint
    ids = torch.randint(0, 97, (1, 60), generator=torch.Generator().manual_seed(9))
    names = {n for n, _ in read_tensors(native_sharded)}
    assert "layers.1.attn.indexer.wq_b.weight" in names and "layers.0.ffn.experts.3.w2.weight" in names
    with torch.no_grad():
        expected = reference(ids, use_cache=False).logits.float()
    from_hf, from_native = load_transformer(path)(ids), load_transformer(native_sharded)(ids)
    # equal tensors; only memory alignment differs (CPU kernels vectorise by it): ~1e-6
    assert ((from_hf - from_native).abs().max() / from_hf.abs().max()).item() < 1e-5
    assert ((from_native - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_loading_reports_progress_per_shard_and_leaves_nothing_on_meta(native_sharded: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    engine = model.load(native_sharded, device="cpu", dtype="float32", progress=lambda *c: calls.append(c))
    shards = sorted({c[0] for c in calls})
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for shard in shards:
        done = [c[1] for c in calls if c[0] == shard]
        total = {c[2] for c in calls if c[0] == shard}
        assert done == sorted(done) and len(total) == 1 and done[-1] == total.pop()
    tensors = list(engine.model.parameters()) + list(engine.model.buffers())
    assert all(t.device.type == "cpu" for t in tensors)
    assert engine.model.layers[1].attn.inv_freq.abs().sum() > 0


def test_an_index_naming_a_missing_shard_is_named(native_sharded: Path, tmp_path: Path) -> None:
    for file in native_sharded.iterdir():
        if file.name != "model-00002-of-00003.safetensors":
            (tmp_path / file.name).write_bytes(file.read_bytes())
    with pytest.raises(WeightsError, match="model-00002-of-00003.safetensors"):
        load_transformer(tmp_path)


def test_a_tensor_stored_twice_is_an_error(hf_checkpoint, tmp_path: Path) -> None:
    path, _ = hf_checkpoint
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    tensors = dict(read_tensors(path))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "a.safetensors"))
    save_file({"norm.weight": tensors["norm.weight"]}, str(tmp_path / "b.safetensors"))
    with pytest.raises(WeightsError, match=r"norm\.weight is stored twice"):
        load_transformer(tmp_path)


def test_a_corrupt_index_is_an_error(native_sharded: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((native_sharded / "config.json").read_text())
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not a safetensors index"):
        load_transformer(tmp_path)
