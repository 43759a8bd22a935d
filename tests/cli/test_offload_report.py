"""Where the weights live, as the command line reports it (issue 28): `v4 generate --json` and
`v4 refactor --json` carry the engine's offload report (GiB per place, experts per layer on the GPU,
the expert caches' hit rate) when experts are offloaded, by `--offload-experts` or by `--gpu-memory`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import git, make_repo, tiny_chat_checkpoint
from v4.cli.main import main
from v4.model.offload_plan import GIB, plan_checkpoint

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("offload_report"), seed=2)


def _generate(checkpoint: Path, capsys: pytest.CaptureFixture[str], *options: str) -> dict:
    assert main(["generate", PROMPT, "--model", str(checkpoint), "--device", "cpu", "--max-new-tokens", "6",
                 "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_reports_the_offload(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    resident = _generate(checkpoint, capsys)
    assert resident["offload"] is None and resident["new_tokens"] == 6
    offloaded = _generate(checkpoint, capsys, "--offload-experts", "3")
    assert offloaded["text"] == resident["text"]
    report = offloaded["offload"]
    assert report["experts_per_layer_on_gpu"] == 3 and report["experts_per_layer"] == 8
    assert report["pinned_bytes"] > 0 and report["copied_bytes"] > 0  # the experts on the host; what crossed
    assert report["mmap_bytes"] == 0 and report["budget_bytes"] is None
    assert 0 <= report["hit_rate"] <= 1 and report["hits"] + report["misses"] > 0


def test_generate_json_with_a_gpu_memory_budget(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_checkpoint(checkpoint, torch.float32, False, "cpu", gpu_bytes=64 * GIB)
    budget = (plan.reserve.total + plan.dense_bytes + plan.num_moe_layers * 4 * plan.expert_bytes) / GIB
    report = _generate(checkpoint, capsys, "--gpu-memory", repr(budget))["offload"]
    assert report["experts_per_layer_on_gpu"] == 4 and report["budget_bytes"] == int(budget * GIB)
    assert main(["generate", PROMPT, "--model", str(checkpoint), "--device", "cpu", "--gpu-memory", "0.5"]) == 1
    assert "other than routed experts need" in capsys.readouterr().err  # the plan's refusal, one line


def test_refactor_json_reports_the_offload(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    git(repo, "config", "user.name", "Dev")
    git(repo, "config", "user.email", "dev@example.com")
    main(["refactor", "rename add to plus", "--repo", str(repo), "--json", "--yes", "--model", str(checkpoint),
          "--device", "cpu", "--offload-experts", "3", "--no-store", "--max-tokens", "4", "--budget", "256",
          "--no-tools"])
    report = json.loads(capsys.readouterr().out)["offload"]  # random weights: no edit, but the report is there
    assert report["experts_per_layer_on_gpu"] == 3 and report["hits"] + report["misses"] > 0
