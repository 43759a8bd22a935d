"""The engine over 2 ranks of one host (torchrun, gloo, CPU) equals the engine in one process: logits
within float32 rounding, the same greedy tokens; each rank holds and reads only its share (its experts,
its vocabulary rows, its attention heads)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model.parallel import Parallel, shard_model
from v4.model.random_checkpoint import init_checkpoint
from v4.model.weights import native_name

from .parallel_worker import free_port, relative_error, run_checks

WORLD = 2
WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[2]
EXPERT = re.compile(r"\.experts\.(\d+)\.")


@pytest.fixture(scope="module")
def native_fp8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Native names, FP8 linears and FP4 experts as DeepSeek ships them, with an MTP block."""
    return init_checkpoint(tmp_path_factory.mktemp("tiny_parallel") / "ckpt", "tiny", seed=3, fp8=True)


@pytest.fixture(scope="module")
def runs(hf_checkpoint, native_fp8_checkpoint, tmp_path_factory) -> list[tuple[Path, dict, list[dict]]]:
    """(checkpoint, one process's results, each rank's results) for both checkpoints; one torchrun."""
    paths = [hf_checkpoint[0], native_fp8_checkpoint]
    out = tmp_path_factory.mktemp("parallel_out")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "V4_KERNELS": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
               "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(WORKER), str(out), *map(str, paths)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    single = [run_checks(model.load(path, device="cpu", dtype="float32", parallel=False)) for path in paths]
    return [(path, single[i], [ranks[r][i] for r in range(WORLD)]) for i, path in enumerate(paths)]


def test_two_ranks_give_the_logits_and_tokens_of_one_process(runs) -> None:
    for path, single, ranks in runs:
        for result in ranks:
            assert result["world"] == WORLD
            assert relative_error(result["whole"], single["whole"]) < 1e-5, path
            assert relative_error(result["chunked"], single["chunked"]) < 1e-5, path
            assert result["greedy"] == single["greedy"], path
            if "draft" in single:
                assert relative_error(result["draft"], single["draft"]) < 1e-5, path
        assert torch.equal(ranks[0]["whole"], ranks[1]["whole"])  # every rank samples from the same logits
    assert any("draft" in single for _, single, _ in runs)  # the MTP block ran sharded too


def _expected_share(config: model.V4Config, layers: int, rank: int) -> int:
    """Elements a rank does not hold, from the sharding rules (not from model/parallel.py)."""
    hidden, vocab, experts = config.hidden_size, config.vocab_size, config.n_routed_experts
    held_vocab = min(vocab, (rank + 1) * -(-vocab // WORLD)) - min(vocab, rank * -(-vocab // WORLD))
    dropped = 2 * (vocab - held_vocab) * hidden  # embedding and head rows
    dropped += layers * (experts - experts // WORLD) * 3 * hidden * config.moe_intermediate_size
    heads, dim, groups, rank_o = config.num_attention_heads, config.head_dim, config.o_groups, config.o_lora_rank
    other_heads, other_groups = heads - heads // WORLD, groups - groups // WORLD
    dropped += layers * (other_heads * dim * config.q_lora_rank + other_heads  # wq_b rows, sinks
                         + other_groups * rank_o * (heads * dim // groups)  # wo_a rows
                         + hidden * other_groups * rank_o)  # wo_b columns
    return dropped


def test_each_rank_holds_its_share(runs) -> None:
    for path, single, ranks in runs:
        config = model.V4Config.from_json(path)
        layers = config.num_hidden_layers + (config.num_nextn_predict_layers if "draft" in single else 0)
        for rank, result in enumerate(ranks):
            assert result["parameters"] == single["parameters"] - _expected_share(config, layers, rank), (path, rank)
            held = {int(m.group(1)) for name in result["names"] if (m := EXPERT.search(name))}
            per = config.n_routed_experts // WORLD
            assert held == set(range(rank * per, (rank + 1) * per))


def test_each_rank_reads_only_its_experts(runs) -> None:
    for path, _, ranks in runs:
        config = model.V4Config.from_json(path)
        per = config.n_routed_experts // WORLD
        for rank, result in enumerate(ranks):
            experts = set()
            for key, expert in result["read"]:
                if expert is not None:  # a slice of a fused [experts, ...] tensor (transformers' saves)
                    experts.add(expert)
                elif m := EXPERT.search(native_name(key)):
                    experts.add(int(m.group(1)))
            assert experts == set(range(rank * per, (rank + 1) * per)), (path, rank)


def test_sharding_a_meta_model_allocates_nothing_and_keeps_checkpoint_names() -> None:
    config = _tiny_config()
    with torch.device("meta"):
        transformer = model.Transformer(config)
    names = set(transformer.state_dict())
    narrow = shard_model(transformer, Parallel(rank=1, world=WORLD))
    assert all(p.is_meta for p in transformer.parameters())
    assert set(transformer.state_dict()) <= names and set(narrow) <= set(transformer.state_dict())
    assert narrow["layers.0.attn.wo_b.weight"][0] == 1  # wo_b keeps input columns


def _tiny_config() -> model.V4Config:
    from v4.model.config import CSA, HCA, SLIDING
    from v4.model.random_checkpoint import PRESETS

    data = {"model_type": "deepseek_v4", **PRESETS["tiny"]}
    ratios = data.pop("compress_ratios")
    data["layer_types"] = [{0: SLIDING, 4: CSA, 8: HCA}[r] for r in ratios]
    return model.V4Config.from_dict(data)


def test_world_size_one_is_the_single_process_engine(monkeypatch) -> None:
    from v4.model.parallel import current, init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env("cpu") is None and current() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env("cpu") is None
    assert [Parallel(r, 2).span(97) for r in range(2)] == [(0, 49), (49, 97)]
