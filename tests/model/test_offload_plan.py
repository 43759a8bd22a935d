"""The offload planner (model/offload_plan.py): where V4-Flash's weights go for a GPU budget, from its
published config alone (tests/model/flash_layout.py), and the tiny and Flash-layout checkpoints loaded
through `model.load(gpu_memory_gb=...)` with a budget that forces offload (on the CPU the "GPU" and the
host are both host memory, as in test_offload.py), the experts pinned or memory-mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.cli.main import main
from v4.model import offload_plan
from v4.model.config import ConfigError, V4Config
from v4.model.offload_plan import (GIB, OffloadPlanError, available_host_bytes, plan_checkpoint, plan_offload,
                                   runtime_reserve, sizes_from_config, sizes_from_stored)
from v4.model.moe import MoE
from v4.model.random_checkpoint import init_checkpoint
from v4.model.weights import scan

from .flash_layout import FLASH_CONFIG, miniature_config, write_flash_checkpoint

MIB = 2**20


@pytest.fixture(scope="module")
def flash_sizes() -> dict[str, int]:
    """V4-Flash's tensors as a CUDA engine places them (FP8 linears and FP4 experts kept, the rest bf16)."""
    return sizes_from_config(V4Config.from_dict(dict(FLASH_CONFIG)), quantized=True, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def flash_reserve() -> offload_plan.Reserve:
    return runtime_reserve(V4Config.from_dict(dict(FLASH_CONFIG)), dtype_bytes=2)


def test_flash_sizes_and_reserve(flash_sizes: dict[str, int], flash_reserve: offload_plan.Reserve) -> None:
    """The numbers the plans below rest on: 12.75 MiB per FP4 expert (3 x 4096 x 2048 / 2 bytes + a scale
    byte per 32), 256 experts in 43 layers + the MTP block, 8.4 GiB of everything else."""
    plan = plan_offload(flash_sizes, 80 * GIB, flash_reserve, host_bytes=512 * GIB)
    assert plan.expert_bytes == 3 * (4096 * 2048 // 2 + 4096 * 2048 // 32) == 12.75 * MIB
    assert (plan.num_experts, plan.num_moe_layers) == (256, 44)
    assert 8.3 * GIB < plan.dense_bytes < 8.5 * GIB
    assert flash_reserve.context_tokens == 131_072
    assert 0.8 * GIB < flash_reserve.state_bytes < 0.9 * GIB  # ~6.9 KB of compressed entries per token
    assert 1.8 * GIB < flash_reserve.activation_bytes < 1.9 * GIB  # a 4,096-token prefill chunk
    assert flash_reserve.fixed_bytes == GIB


@pytest.mark.parametrize("budget_gib, slots", [(24, 21), (48, 65), (80, 123)])  # 80: the float32 gate weights
def test_flash_plans_for_24_48_and_80_gib(flash_sizes: dict[str, int], flash_reserve: offload_plan.Reserve,
                                          budget_gib: int, slots: int) -> None:
    plan = plan_offload(flash_sizes, budget_gib * GIB, flash_reserve, host_bytes=512 * GIB)
    left = budget_gib * GIB - flash_reserve.total - plan.dense_bytes
    assert plan.slots == slots == left // (44 * plan.expert_bytes)
    assert plan.host == "pinned" and plan.offload
    assert plan.gpu_weight_bytes == plan.dense_bytes + 44 * slots * plan.expert_bytes <= budget_gib * GIB
    assert plan.host_expert_bytes == 44 * 256 * 12.75 * MIB  # 140.25 GiB: every expert has its host copy
    placed = plan.placement()
    assert placed["experts_per_layer_on_gpu"] == slots and placed["pinned_bytes"] == 140.25 * GIB
    assert placed["mmap_bytes"] == 0 and f"{slots} of 256 routed experts per layer" in plan.describe()


def test_flash_experts_are_memory_mapped_when_host_memory_is_short(flash_sizes: dict[str, int],
                                                                   flash_reserve: offload_plan.Reserve) -> None:
    plan = plan_offload(flash_sizes, 24 * GIB, flash_reserve, host_bytes=100 * GIB)
    assert plan.host == "mmap" and plan.placement()["mmap_bytes"] == 140.25 * GIB
    with pytest.raises(OffloadPlanError, match=r"140 GiB of host memory and 100 GiB are available"):
        plan_offload(flash_sizes, 24 * GIB, flash_reserve, host_bytes=100 * GIB, mappable=False)


def test_flash_fits_whole_or_is_refused(flash_sizes: dict[str, int], flash_reserve: offload_plan.Reserve) -> None:
    whole = plan_offload(flash_sizes, 160 * GIB, flash_reserve, host_bytes=0)
    assert not whole.offload and whole.host is None and whole.experts_on_gpu == 256
    with pytest.raises(OffloadPlanError, match=r"other than routed experts need 8.48 GiB; 8 GiB of GPU memory less "
                                               r"3.66 GiB kept .* leaves 4.34 GiB"):
        plan_offload(flash_sizes, 8 * GIB, flash_reserve)
    with pytest.raises(OffloadPlanError, match=r"2 routed experts in each of 44 MoE layers need 1.1 GiB"):
        plan_offload(flash_sizes, 12.5 * GIB, flash_reserve)


def test_sizes_from_the_config_equal_sizes_from_the_headers(tmp_path: Path) -> None:
    """The Flash-layout miniature: the planner's two sources of sizes agree tensor by tensor, so the
    Flash numbers above are what its headers would give."""
    directory = write_flash_checkpoint(tmp_path / "mini")
    config = V4Config.from_dict(miniature_config())
    for quantized, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        assert sizes_from_stored(scan(directory), quantized, dtype) == sizes_from_config(config, quantized, dtype)
    plan = plan_checkpoint(directory, torch.float32, True, "cpu", slots=3, host_bytes=0)
    assert plan.slots == 3 and plan.host == "mmap" and plan.gpu_bytes is None
    engine = model.load(directory, device="cpu", dtype="float32", quantized=True, offload_experts=3)
    resident = model.load(directory, device="cpu", dtype="float32", quantized=True)
    ids = list(range(40))
    assert engine.plan is not None and engine.plan.slots == 3
    assert torch.equal(engine.forward(ids, engine.new_state(64)), resident.forward(ids, resident.new_state(64)))


# ------------------------------------------------------------------ the tiny checkpoint, end to end


@pytest.fixture(scope="module", params=[False, True], ids=["float", "fp8-fp4"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    path = tmp_path_factory.mktemp("plan") / "tiny"
    init_checkpoint(path, "tiny", seed=2, fp8=request.param)
    return path, request.param


def _budget_for(path: Path, quantized: bool, slots: int) -> float:
    """The GiB that hold the reserve, the dense weights and `slots` experts per layer, and no more."""
    plan = plan_checkpoint(path, torch.float32, quantized, "cpu", gpu_bytes=64 * GIB)
    return (plan.reserve.total + plan.dense_bytes + plan.num_moe_layers * slots * plan.expert_bytes) / GIB


@pytest.mark.parametrize("host", ["pinned", "mmap"])
def test_a_budget_that_forces_offload(tiny: tuple[Path, bool], host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path, quantized = tiny
    if host == "mmap":
        monkeypatch.setattr(offload_plan, "available_host_bytes", lambda: 0)
    resident = model.load(path, device="cpu", dtype="float32", quantized=quantized)
    engine = model.load(path, device="cpu", dtype="float32", quantized=quantized,
                        gpu_memory_gb=_budget_for(path, quantized, 3))
    assert engine.plan.slots == 3 and engine.plan.host == host
    caches = [m.strategy.offload for m in engine.model.modules() if isinstance(m, MoE)]
    assert len(caches) == engine.plan.num_moe_layers and all(c.slots == 3 for c in caches)
    assert isinstance(caches[0].host[0], list) == (host == "mmap")  # views of the mapped files, unstacked
    ids = torch.randint(0, 32000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    assert torch.equal(engine.forward(ids, engine.new_state(64)), resident.forward(ids, resident.new_state(64)))


def test_enough_budget_means_no_offload(tiny: tuple[Path, bool]) -> None:
    path, quantized = tiny
    engine = model.load(path, device="cpu", dtype="float32", quantized=quantized,
                        gpu_memory_gb=_budget_for(path, quantized, 8))
    assert not engine.plan.offload and "no offload" in engine.plan.describe()
    assert not any(m.strategy.offload for m in engine.model.modules() if isinstance(m, MoE))


def test_a_budget_too_small_is_refused_naming_the_numbers(tiny: tuple[Path, bool]) -> None:
    path, quantized = tiny
    with pytest.raises(OffloadPlanError, match=r"2 routed experts in each of 5 MoE layers need"):
        model.load(path, device="cpu", dtype="float32", quantized=quantized,
                   gpu_memory_gb=_budget_for(path, quantized, 1.5))
    with pytest.raises(OffloadPlanError, match=r"the weights other than routed experts need"):
        model.load(path, device="cpu", dtype="float32", quantized=quantized, gpu_memory_gb=1.0)


@pytest.mark.parametrize("tiny", [True], ids=["fp8-fp4"], indirect=True)
def test_dequantised_experts_cannot_be_mapped(tiny: tuple[Path, bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """(Float32 experts stored as float32 map as they are: test_a_budget_that_forces_offload.)"""
    path, _ = tiny
    monkeypatch.setattr(offload_plan, "available_host_bytes", lambda: 0)
    with pytest.raises(OffloadPlanError, match=r"memory-mapped from the checkpoint only if loaded as stored"):
        model.load(path, device="cpu", dtype="float32", quantized=False, offload_experts=3)


def test_gpu_memory_and_offload_experts_do_not_combine(tiny: tuple[Path, bool], capsys) -> None:
    path, _ = tiny
    with pytest.raises(ConfigError, match="give one"):
        model.load(path, device="cpu", dtype="float32", offload_experts=3, gpu_memory_gb=2.0)
    with pytest.raises(ConfigError, match="gpu_memory_gb"):
        model.load(path, device="cpu", dtype="float32", gpu_memory_gb=0.0)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--model", str(path), "--offload-experts", "3", "--gpu-memory", "2"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_available_host_memory_keeps_a_margin(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       263000000 kB\nMemAvailable:   200000000 kB\n")
    available = 200_000_000 * 1024
    assert available_host_bytes(meminfo) == available - int(0.1 * available)
    meminfo.write_text("MemAvailable:   4000000 kB\n")
    assert available_host_bytes(meminfo) == 0  # less than the 8 GiB margin


def test_the_default_budget_never_offloads_a_model_that_fits(tiny: tuple[Path, bool],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The default budget (what is free on the GPU) loads a model whose weights fit whole, as before
    there was a planner, whatever the reserve's estimate; only a model that does not fit is planned."""
    path, quantized = tiny
    total = sum(sizes_from_stored(scan(path), quantized, torch.float32).values())
    monkeypatch.setattr(offload_plan, "free_gpu_bytes", lambda device: total)
    assert not plan_checkpoint(path, torch.float32, quantized, "cuda").offload  # the reserve would not fit
    monkeypatch.setattr(offload_plan, "free_gpu_bytes", lambda device: total - 1)
    with pytest.raises(OffloadPlanError, match="kept for the decode state"):  # planned: here, 1 GiB short
        plan_checkpoint(path, torch.float32, quantized, "cuda")
