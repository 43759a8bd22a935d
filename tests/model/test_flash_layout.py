"""Conformance with the published DeepSeek-V4-Flash layout (issue 28, "Real checkpoint layout"): a
miniature checkpoint laid out exactly as deepseek-ai/DeepSeek-V4-Flash ships it (tests/model/flash_layout.py
says what is reproduced and from which sources) loads through `v4.model.load`, the path `v4 model info`
and `v4 generate` take, in one process and sharded over 2 gloo ranks; a damaged copy is refused with
the tensor named."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from v4 import model
from v4.agent.chat_format import DeepSeekV4Format, chat_format_for
from v4.cli.main import main
from v4.model.quant import dequantize
from v4.model.v4 import Transformer

from .flash_layout import (FLASH_CONFIG, NUM_SHARDS, PUBLISHED_DTYPE_COUNTS, PUBLISHED_INFERENCE_CONFIG,
                           PUBLISHED_MTP_TENSOR_COUNT, PUBLISHED_TENSOR_COUNT, inference_config, shard_name,
                           shipped_dtypes, write_flash_checkpoint)
from .parallel_worker import FP8_TOLERANCE, dequantize_modules, free_port, relative_error, run_checks

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("parallel_worker.py")  # one rank of a torchrun launch (gloo on CPU)

SEED = 1
PROMPT = torch.randint(0, 512, (300,), generator=torch.Generator().manual_seed(7)).tolist()  # 2 HCA entries


@pytest.fixture(scope="module")
def flash_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flash_checkpoint(tmp_path_factory.mktemp("flash") / "DeepSeek-V4-Flash-mini", seed=SEED)


@pytest.fixture(scope="module")
def engine(flash_dir: Path) -> model.Engine:
    return model.load(flash_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def logits(engine: model.Engine) -> torch.Tensor:
    return engine.forward(PROMPT, engine.new_state())


def _headers(directory: Path) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Stored name -> (shard file, safetensors dtype, shape), from every shard's header."""
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                sliced = handle.get_slice(key)
                out[key] = (file.name, sliced.get_dtype(), tuple(sliced.get_shape()))
    return out


def test_the_layout_rules_give_the_published_flash_inventory() -> None:
    """At full size the naming and dtype rules give the published checkpoint's tensors, dtype by dtype."""
    with torch.device("meta"):
        full = Transformer(model.V4Config.from_dict(FLASH_CONFIG))
    dtypes = shipped_dtypes(full)
    assert len(dtypes) == PUBLISHED_TENSOR_COUNT
    assert Counter(dtypes.values()) == PUBLISHED_DTYPE_COUNTS
    assert sum(name.startswith("mtp.0.") for name in dtypes) == PUBLISHED_MTP_TENSOR_COUNT
    assert inference_config(FLASH_CONFIG) == PUBLISHED_INFERENCE_CONFIG


def test_the_miniature_has_the_published_files_names_and_dtypes(flash_dir: Path) -> None:
    index = json.loads((flash_dir / "model.safetensors.index.json").read_text())
    headers = _headers(flash_dir)
    shards = [shard_name(n) for n in range(1, NUM_SHARDS + 1)]
    assert shards[0] == "model-00001-of-00046.safetensors" and shards[-1] == "model-00046-of-00046.safetensors"
    assert sorted(p.name for p in flash_dir.glob("*.safetensors")) == shards  # every shard a real file
    assert index["weight_map"] == {key: file for key, (file, _, _) in headers.items()}
    assert index["metadata"]["total_size"] == sum(p.stat().st_size for p in flash_dir.glob("*.safetensors")) - \
        sum(8 + _header_bytes(p) for p in flash_dir.glob("*.safetensors"))
    with torch.device("meta"):
        mini = Transformer(model.V4Config.from_json(flash_dir))
    assert {key: dtype for key, (_, dtype, _) in headers.items()} == shipped_dtypes(mini)
    assert {file for key, (file, _, _) in headers.items() if key.startswith("mtp.")} == {shard_name(46)}
    assert headers["embed.weight"][0] == shard_name(1) and headers["hc_head_fn"][0] == shard_name(45)
    assert {file for key, (file, _, _) in headers.items() if key.startswith("layers.")} == set(shards[1:44])
    assert headers["layers.3.ffn.experts.5.w1.weight"][1:] == ("I8", (64, 80))  # two e2m1 codes a byte
    assert headers["layers.3.ffn.experts.5.w1.scale"][1:] == ("F8_E8M0", (64, 5))  # one scale per 32
    assert headers["mtp.0.e_proj.scale"][1:] == ("F8_E8M0", (2, 2))  # 160 x 160 in ragged 128x128 blocks
    assert headers["layers.0.ffn.gate.tid2eid"][1:] == ("I64", (512, 2))
    assert list(json.loads((flash_dir / "config.json").read_text())) == list(FLASH_CONFIG)
    assert list(json.loads((flash_dir / "inference" / "config.json").read_text())) == list(PUBLISHED_INFERENCE_CONFIG)


def _header_bytes(file: Path) -> int:
    return int.from_bytes(file.read_bytes()[:8], "little")


def test_config_as_shipped_reads_without_warnings_and_agrees_with_inference_config(flash_dir: Path) -> None:
    warnings: list[str] = []
    config = model.V4Config.from_json(flash_dir, warn=warnings.append)
    assert warnings == []
    inference = json.loads((flash_dir / "inference" / "config.json").read_text())
    assert (config.num_hidden_layers, config.num_hash_layers, config.hidden_size, config.moe_intermediate_size) == \
        (inference["n_layers"], inference["n_hash_layers"], inference["dim"], inference["moe_inter_dim"])
    assert [config.compress_rate(layer) for layer in range(config.num_hidden_layers + 1)] == \
        inference["compress_ratios"]
    assert config.rope_parameters["compress"]["rope_type"] == "yarn"
    assert config.rope_parameters["compress"]["factor"] == inference["rope_factor"]
    with pytest.raises(model.ConfigError, match="topk_method"):
        model.V4Config.from_dict({**FLASH_CONFIG, "topk_method": "group_limited_greedy"})


def test_the_chat_encoding_directory_means_deepseeks_own_format(flash_dir: Path) -> None:
    assert (flash_dir / "encoding").is_dir()
    assert "chat_template" not in json.loads((flash_dir / "tokenizer_config.json").read_text())
    assert isinstance(chat_format_for(flash_dir), DeepSeekV4Format)


def test_it_loads_and_runs_through_the_engine(engine: model.Engine, logits: torch.Tensor) -> None:
    assert logits.shape == (len(PROMPT), 512) and logits.isfinite().all()
    assert engine.has_draft_head  # the mtp.0.* block loaded
    state = engine.new_state()
    engine.forward(PROMPT[:20], state)
    assert engine.draft(state, PROMPT[20]).isfinite().all()


def test_quantised_weights_equal_their_dequantised_values(flash_dir: Path, engine: model.Engine) -> None:
    """Every FP8/FP4 weight the engine holds is the reference dequantisation of the stored pair; the
    rest are the stored values (BF16 norms widened, the I64 table as is)."""
    held = engine.model.state_dict()
    kinds: Counter[str] = Counter()
    for file in sorted(flash_dir.glob("*.safetensors")):
        stored = load_file(str(file))
        for key, tensor in stored.items():
            if key.endswith(".scale"):
                continue
            scale = stored.get(key.removesuffix("weight") + "scale")
            expected = tensor if scale is None else dequantize(tensor, scale, key)
            assert torch.equal(held[key], expected.to(held[key].dtype)), key
            kinds[str(tensor.dtype) if scale is None else f"{tensor.dtype} + {scale.dtype}"] += 1
    assert kinds["torch.float8_e4m3fn + torch.float8_e8m0fnu"] > 0 and kinds["torch.int8 + torch.float8_e8m0fnu"] > 0
    assert kinds["torch.int64"] == 3 and kinds["torch.bfloat16"] > 0


def test_v4_model_info_describes_it(flash_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["model", "info", str(flash_dir)]) == 0
    out = capsys.readouterr().out
    dtypes = next(line for line in out.splitlines() if line.startswith("tensor dtypes"))
    for dtype, count in Counter(dtype for _, dtype, _ in _headers(flash_dir).values()).items():
        assert f"{dtype}: {count}" in dtypes
    assert "2 sliding_attention, 2 compressed_sparse_attention, 1 heavily_compressed_attention" in out
    assert "fp8 e4m3 weights, 128x128 blocks, ue8m0 scales; routed experts fp4" in out


def test_an_int32_table_and_float32_scales_load_to_the_same_model(tmp_path: Path, logits: torch.Tensor) -> None:
    """DeepSeek's Gate declares tid2eid int32 and its Linear takes float32 block scales: both load, and
    (e8m0 scales being powers of two) give exactly the same logits."""
    variant = write_flash_checkpoint(tmp_path / "variant", seed=SEED, tid2eid_dtype=torch.int32, fp8_scale_dtype="F32")
    headers = _headers(variant)
    assert headers["layers.2.ffn.gate.tid2eid"][1] == "I32" and headers["layers.2.attn.wq_b.scale"][1] == "F32"
    assert headers["layers.2.ffn.experts.0.w3.scale"][1] == "F8_E8M0"
    other = model.load(variant, device="cpu", dtype="float32")
    assert torch.equal(other.forward(PROMPT, other.new_state()), logits)


def _damage(directory: Path, key: str, tensor: torch.Tensor | None) -> None:
    """Replace (or, with None, remove) stored tensor `key` in its shard, keeping the index true."""
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = directory / index["weight_map"][key]
    tensors = load_file(str(shard))
    if tensor is None:
        del tensors[key], index["weight_map"][key]
        index_path.write_text(json.dumps(index))
    else:
        tensors[key] = tensor
    save_file(tensors, str(shard), metadata={"format": "pt"})


DAMAGE = {  # what is changed -> (the tensor's new value, None: removed; what the error must name)
    "missing FP8 scale": ("layers.2.attn.wq_b.scale", None, "layers.2.attn.wq_b.scale"),
    "missing FP4 scale": ("mtp.0.ffn.experts.5.w2.scale", None, "mtp.0.ffn.experts.5.w2.scale"),
    "missing tensor": ("layers.1.hc_ffn_fn", None, "layers.1.hc_ffn_fn"),
    "scale dtype": ("layers.0.attn.wq_a.scale", torch.ones(1, 2, dtype=torch.int32), "layers.0.attn.wq_a"),
    "scale shape": ("layers.3.ffn.experts.1.w1.scale", torch.ones(64, 4, dtype=torch.float8_e8m0fnu),
                    "layers.3.ffn.experts.1.w1"),
    "tensor shape": ("layers.4.attn.attn_sink", torch.zeros(5), "layers.4.attn.attn_sink"),
    "table as floats": ("layers.1.ffn.gate.tid2eid", torch.zeros(512, 2), "layers.1.ffn.gate.tid2eid"),
    "weight dtype": ("layers.2.attn.compressor.ape", torch.zeros(4, 64, dtype=torch.int32),
                     "layers.2.attn.compressor.ape"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_the_tensor(flash_dir: Path, tmp_path: Path, case: str) -> None:
    key, tensor, named = DAMAGE[case]
    damaged = shutil.copytree(flash_dir, tmp_path / "damaged")
    _damage(damaged, key, tensor)
    with pytest.raises(model.WeightsError, match=named.replace(".", r"\.")):
        model.load(damaged, device="cpu", dtype="float32")


def test_an_index_that_disagrees_with_its_shards_is_refused(flash_dir: Path, tmp_path: Path) -> None:
    damaged = shutil.copytree(flash_dir, tmp_path / "damaged")
    index = json.loads((damaged / "model.safetensors.index.json").read_text())
    index["weight_map"]["layers.2.attn.wkv.weight"] = shard_name(45)  # the tensor is not there
    (damaged / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(model.WeightsError, match=r"layers\.2\.attn\.wkv\.weight.*model-00045-of-00046"):
        model.load(damaged, device="cpu", dtype="float32")
    (damaged / shard_name(46)).unlink()
    with pytest.raises(model.WeightsError, match="model-00046-of-00046.safetensors"):
        model.load(damaged, device="cpu", dtype="float32")


def test_two_gloo_ranks_give_the_logits_of_one_process(flash_dir: Path, tmp_path: Path) -> None:
    """Experts split over the ranks, attention heads and vocabulary too, each rank reading its share of
    the FP8/FP4 shards: the same logits, greedy tokens and draft as one process, dequantised and kept
    quantised (each rank's experts as stored; the miniature's attention slices cut 128x128 scale blocks,
    so those are dequantised on the ranks and compared with one process holding them so)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "V4_KERNELS": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=1",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(WORKER), str(tmp_path), str(flash_dir),
               "--quantized", str(flash_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    single = run_checks(model.load(flash_dir, device="cpu", dtype="float32", parallel=False))
    kept = model.load(flash_dir, device="cpu", dtype="float32", parallel=False, quantized=True)
    split = {name for name, _ in kept.model.named_modules() if re.search(r"\.attn\.(wq_b|wo_a|wo_b)$", name)}
    dequantize_modules(kept.model, split)
    alone_kept = run_checks(kept)
    for rank in range(2):
        dequantised, quantised = torch.load(tmp_path / f"rank{rank}.pt")
        # kept quantised, measured: 2.1e-5 on the chunked prefill (an FP8 activation rounded one step
        # apart, see FP8_TOLERANCE), under 7e-7 everywhere else
        for result, alone, tolerance in ((dequantised, single, 1e-5), (quantised, alone_kept, FP8_TOLERANCE)):
            assert result["world"] == 2
            assert relative_error(result["whole"], alone["whole"]) < tolerance
            assert relative_error(result["chunked"], alone["chunked"]) < tolerance
            assert relative_error(result["draft"], alone["draft"]) < tolerance
            assert result["greedy"] == alone["greedy"]
            experts = {int(key.split(".")[4]) for key, _ in result["read"] if ".ffn.experts." in key}
            assert experts == set(range(4 * rank, 4 * rank + 4))
        kinds = quantised["kinds"]
        assert {kind for name, kind in kinds.items() if ".ffn.experts." in name} == {"FP4Linear"}
        assert {kinds[name] for name in split} == {"Linear"} and kinds["layers.3.attn.wq_a"] == "FP8Linear"


def test_it_loads_kept_quantised_as_a_cuda_engine_would(flash_dir: Path) -> None:
    """`quantized=True` (the default on CUDA for this config) places the stored FP8/FP4 bytes as they are."""
    from v4.model.quantized_linear import FP4Linear, FP8Linear

    kept = model.load(flash_dir, device="cpu", dtype="float32", quantized=True)
    layer = kept.model.layers[3]
    assert isinstance(layer.attn.wq_a, FP8Linear) and isinstance(layer.ffn.experts[5].w1, FP4Linear)
    with safe_open(str(flash_dir / _where(flash_dir, "layers.3.ffn.experts.5.w1.weight")), framework="pt") as handle:
        assert torch.equal(layer.ffn.experts[5].w1.weight, handle.get_tensor("layers.3.ffn.experts.5.w1.weight"))
    assert kept.forward(PROMPT, kept.new_state()).isfinite().all()


def _where(directory: Path, key: str) -> str:
    return json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"][key]
