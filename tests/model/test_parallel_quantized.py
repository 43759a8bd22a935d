"""Quantised weights over 2 ranks (torchrun, gloo, CPU; `quantized=True` as CUDA's default): each rank
holds its slice of the stored FP8 bytes and scales and its routed experts as stored, and gives the
logits of one quantised process. A checkpoint whose slices would cut 128x128 scale blocks still loads,
those slices dequantised, and equals one process holding the same weights dequantised."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from v4 import model
from v4.model.engine import load_transformer
from v4.model.parallel import Parallel
from v4.model.random_checkpoint import init_checkpoint
from v4.model.weights import Stored, scale_slice

from .parallel_worker import FP8_TOLERANCE, dequantize_modules, free_port, relative_error, run_checks

WORLD = 2
WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[2]
# Every slice whole 128-row/column blocks: 2 heads of 512 per rank (wq_b), 1 group of 128 (wo_a, wo_b).
ALIGNED = {"head_dim": 512, "qk_rope_head_dim": 64, "index_head_dim": 64, "o_lora_rank": 128}
SPLIT = re.compile(r"\.attn\.(wq_b|wo_a|wo_b)$")  # the tensor-parallel projections
EXPERT = re.compile(r"\.experts\.(\d+)\.w[123]$")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parallel_quantized")
    return {"aligned": init_checkpoint(root / "aligned", "tiny", seed=5, fp8=True, overrides=ALIGNED),
            "cut": init_checkpoint(root / "cut", "tiny", seed=6, fp8=True)}  # head_dim 32: slices cut blocks


@pytest.fixture(scope="module")
def ranks(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Each rank's results for each checkpoint, loaded quantised; one torchrun."""
    out = tmp_path_factory.mktemp("parallel_quantized_out")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "V4_KERNELS": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(WORKER), str(out), "--quantized",
               *map(str, checkpoints.values())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return {name: [results[r][i] for r in range(WORLD)] for i, name in enumerate(checkpoints)}


def _single(path: Path, dequantized: set[str] = frozenset()) -> dict:
    engine = model.load(path, device="cpu", dtype="float32", parallel=False, quantized=True)
    dequantize_modules(engine.model, dequantized)
    return run_checks(engine)


def _assert_same_logits(ranks: list[dict], single: dict) -> None:
    for result in ranks:
        assert result["world"] == WORLD
        for key in ("whole", "chunked", "draft"):
            if key in single:
                assert relative_error(result[key], single[key]) < FP8_TOLERANCE, key
        assert result["greedy"] == single["greedy"]
    assert torch.equal(ranks[0]["whole"], ranks[1]["whole"])


def _stored_slice(path: Path, name: str, rank: int, config: model.V4Config) -> torch.Tensor:
    """What rank `rank` should hold of stored tensor `name`, from the sharding rules (not parallel.py)."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        tensor = handle.get_tensor(name)
    owner = name.rsplit(".", 1)[0]
    if not SPLIT.search(owner):
        return tensor
    per_rank = {"wq_b": config.num_attention_heads // WORLD * config.head_dim,
                "wo_a": config.o_groups // WORLD * config.o_lora_rank,
                "wo_b": config.o_groups // WORLD * config.o_lora_rank}[owner.rsplit(".", 1)[1]]
    block = 128 if name.endswith(".scale") else 1
    dim = 1 if owner.endswith("wo_b") else 0
    return tensor.narrow(dim, rank * per_rank // block, per_rank // block)


@pytest.fixture(scope="module")
def aligned_single(checkpoints: dict[str, Path]) -> dict:
    return _single(checkpoints["aligned"])


def test_aligned_slices_stay_as_stored_and_give_one_processs_logits(checkpoints, ranks, aligned_single) -> None:
    path, single = checkpoints["aligned"], aligned_single
    config = model.V4Config.from_json(path)
    _assert_same_logits(ranks["aligned"], single)
    per = config.n_routed_experts // WORLD
    for rank, result in enumerate(ranks["aligned"]):
        assert all(result["kinds"][name] == "FP8Linear" for name in result["kinds"] if SPLIT.search(name))
        experts = {name: kind for name, kind in result["kinds"].items() if EXPERT.search(name)}
        assert set(experts.values()) == {"FP4Linear"}
        assert {int(EXPERT.search(name).group(1)) for name in experts} == set(range(rank * per, (rank + 1) * per))
        quantized = {name for name, kind in single["kinds"].items() if kind != "Linear"}  # one process
        assert {name for name, kind in result["kinds"].items() if kind != "Linear"} == \
            {name for name in quantized if not EXPERT.search(name) or name in experts}
        for name, held in result["quantized"].items():
            stored = _stored_slice(path, name, rank, config)
            assert held.dtype == stored.dtype and torch.equal(held.view(torch.uint8), stored.view(torch.uint8)), name
        assert any(SPLIT.search(name.rsplit(".", 1)[0]) for name in result["quantized"])


def test_a_quantised_rank_holds_less_than_a_dequantised_one(checkpoints, ranks, aligned_single) -> None:
    path = checkpoints["aligned"]
    for rank, result in enumerate(ranks["aligned"]):
        dequantized = load_transformer(path, torch.float32, "cpu", parallel=Parallel(rank, WORLD), quantized=False)
        assert result["bytes"] < sum(t.nbytes for t in dequantized.state_dict().values())
        assert result["bytes"] < aligned_single["bytes"]  # the whole quantised model


def test_slices_that_cut_scale_blocks_are_dequantised_and_give_one_processs_logits(checkpoints, ranks) -> None:
    path = checkpoints["cut"]
    for result in ranks["cut"]:
        split = {name for name in result["kinds"] if SPLIT.search(name)}
        assert split and {result["kinds"][name] for name in split} == {"Linear"}
        assert result["kinds"]["layers.0.attn.wq_a"] == "FP8Linear"
        assert {kind for name, kind in result["kinds"].items() if EXPERT.search(name)} == {"FP4Linear"}
    _assert_same_logits(ranks["cut"], _single(path, split))


@pytest.mark.parametrize(("dtype", "narrow", "expected"), [
    ("F8_E4M3", (0, 128, 256), (0, 1, 2)), ("F8_E4M3", (1, 256, 512), (1, 2, 4)),
    ("F8_E4M3", (0, 64, 128), None), ("F8_E4M3", (1, 0, 320), None),
    ("I8", (0, 3, 7), (0, 3, 7)), ("I8", (1, 0, 256), None)])
def test_a_scale_is_cut_only_at_block_boundaries(dtype: str, narrow: tuple[int, int, int],
                                                 expected: tuple[int, int, int] | None) -> None:
    fp8 = dtype == "F8_E4M3"
    scale = Stored(Path("x"), "w.scale", (2, 4) if fp8 else (256, 16), "F8_E8M0", 8 if fp8 else 4096)
    dim, start, end = narrow
    shape = [256, 512]
    shape[dim] = end - start
    cut = scale_slice(Stored(Path("x"), "w.weight", tuple(shape), dtype, 0, scale=scale, narrow=narrow))
    if expected is None:
        assert cut is None
        return
    assert cut.narrow == expected and cut.key == "w.scale"
    sliced = list(scale.shape)
    sliced[expected[0]] = expected[2] - expected[1]
    assert cut.shape == tuple(sliced) and cut.nbytes == sliced[0] * sliced[1]
