"""[workstation] issue 28's table: V4-Flash with its routed experts offloaded, at GPU-memory budgets of
24, 48 and 80 GB on one GPU, with and without prefetching and CPU expert compute, beside the PCIe and
CPU-bandwidth bounds measured in the same run.

How a budget is made real on one 80 GB card:
  - The planner (model/offload_plan.py) places V4-Flash as published (43 layers + MTP, FP8 linears, FP4
    experts) in the budget: that gives the routed experts per layer the GPU holds (`slots`).
  - The model here has fewer layers (`--layers`; host RAM holds 43 layers' experts on few machines) with
    V4-Flash's layer shapes and random weights, built as bench_offload.py builds it; its caches get the
    plan's slots per layer.
  - A filler tensor takes the GPU bytes the plan gives the layers this model lacks, and the process is
    capped at the budget (`torch.cuda.set_per_process_memory_fraction`): the run has the memory the
    full model would have left, no more.
  - Figures are per layer, then extrapolated to 43 layers as head + 43/L x the rest.

Modes (each a fresh StaticDecoder continuing one prefilled state):
  - cache: experts copied on a miss, no prefetch; prefetch: layer L's copies of layer L+1's predicted
    experts (model/offload.py); both in the piecewise CUDA graph (B=8 needs 48 slots, else eager).
  - cpu policy: graphed, prefetch on and `ExpertCosts` (measured at start) choosing per miss between a copy
    and the CPU; cpu forced: graphed, the CPU taken as cheaper for every miss (one hotter than the
    coldest resident expert is still re-placed): the CPU path's rate.
  - resident: every expert on the GPU (no budget): the compute floor of these layers.
Bounds, for 43 layers at B=1: PCIe = pinned H2D GB/s / bytes copied per token; CPU = the host's read
GB/s / the missed experts' bytes per token (each miss computed on the CPU at memory speed); CPU-all =
every routed expert on the CPU (KTransformers' split).

Routing with random weights is near uniform over 256 experts: the cache's worst case.

    python benchmarks/bench_offload_budgets.py --out $OUT/offload_budgets.json
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_offload import FLASH_LAYERS, build, caches, decode, pinned_copy_gbs, resize  # noqa: E402
from bench_perf import GIB, Results, cuda_ms, timed_prefill  # noqa: E402
from tests.model.flash_layout import FLASH_CONFIG  # noqa: E402
from v4.model.config import EngineConfig, V4Config  # noqa: E402
from v4.model.cpu_experts import ExpertCosts, measure_costs  # noqa: E402
from v4.model.engine import Engine, prefer_expandable_segments  # noqa: E402
from v4.model.moe import MoE  # noqa: E402
from v4.model.offload_plan import OffloadPlan, plan_offload, runtime_reserve, sizes_from_config  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402

TOP_K = 6
FORCE_CPU = ExpertCosts(copy_s=math.inf, cpu_fixed_s=0.0, cpu_token_s=0.0)


def cpu_read_gbs(gib: int = 4) -> float:
    """The host's memory read rate with every thread: a sum over `gib` GiB of float32 (best of 3)."""
    data = torch.ones(gib * GIB // 4, dtype=torch.float32)
    data.sum()
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - t0)
    return gib * GIB / best / 1e9


def flash_plan(budget_bytes: int) -> OffloadPlan:
    """V4-Flash as published, placed in `budget_bytes` of GPU memory (host memory assumed ample)."""
    config = V4Config.from_dict(dict(FLASH_CONFIG))
    sizes = sizes_from_config(config, quantized=True, dtype=torch.bfloat16)
    return plan_offload(sizes, budget_bytes, runtime_reserve(config, dtype_bytes=2), host_bytes=1 << 50)


def configure(net: Transformer, prefetch: bool, costs: ExpertCosts | None) -> None:
    """Link each layer's cache to the next layer's (prefetch) or not, and give every cache `costs`."""
    moes = [m for m in net.layers.modules() if isinstance(m, MoE) and m.strategy.offload is not None]
    for moe, following in zip(moes, moes[1:] + [None]):
        cache = moe.strategy.offload
        cache.costs = costs
        cache.next = (following.strategy.offload, following.gate) if prefetch and following is not None else None


def check_cpu_experts(net: Transformer) -> dict:
    """Layer 0's routed experts for 2 tokens computed on the CPU (what a miss served there adds)
    against the GPU kernel on the same experts made resident: max |difference| relative to the output's."""
    moe = net.layers[0].ffn
    cache = moe.strategy.offload
    generator = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(2, net.config.hidden_size, device="cuda", dtype=torch.bfloat16, generator=generator)
    ids = torch.randint(0, net.config.vocab_size, (2,), device="cuda", generator=generator)
    weights, experts = moe.gate(x, ids)
    resident = moe._run_experts(x, weights, experts, tuple(t.to("cuda") for t in cache.host)).float()
    host_ids = experts.cpu()
    on_cpu = cache._cpu_sums(x, weights, host_ids, torch.unique(host_ids).tolist()).to("cuda")
    scale = resident.abs().max().item()
    torch.cuda.empty_cache()
    return {"max_abs": (on_cpu - resident).abs().max().item(), "output_max_abs": scale,
            "relative": (on_cpu - resident).abs().max().item() / scale}


def head_ms(net: Transformer) -> float:
    """The head's ms per decode step (final mHC, norm, the vocabulary GEMV): the fixed cost per step."""
    streams = net.embed_streams(torch.tensor([[1]], device="cuda"))
    return cuda_ms(lambda: net.logits(streams), 10)


def extrapolate(run: dict, head: float, layers: int, batch: int) -> dict:
    ms = head + FLASH_LAYERS * (run["ms_per_step"] - head) / layers
    return {**run, "ms_43_layers": ms, "tokens_per_s_43_layers": batch * 1e3 / ms,
            "copied_gib_per_token_43_layers": run["copied_mib_per_step"] / 1024 * FLASH_LAYERS / layers / batch}


def prefilled(engine: Engine, net: Transformer, prefill: int, chunk: int) -> tuple[object, float]:
    """A state holding `prefill` random tokens and the seconds the prefill took."""
    prompt = torch.randint(0, net.config.vocab_size, (prefill,), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(1))
    engine.forward(prompt[:256], engine.new_state(256, draft=False))  # the kernels' first calls
    state = engine.new_state(prefill + 512, draft=False)
    return state, timed_prefill(engine, prompt, state, chunk)


def run_budget(net: Transformer, engine: Engine, budget_gib: float, costs: ExpertCosts, args) -> dict:
    """Every mode at one budget, the process capped at it with the missing layers' weights as filler."""
    total = torch.cuda.get_device_properties(0).total_memory
    free, _ = torch.cuda.mem_get_info()
    held = torch.cuda.memory_allocated()
    budget = min(int(budget_gib * GIB), free + held)  # an "80 GB" card: what it has free
    plan = flash_plan(budget)
    slots = plan.experts_on_gpu
    layers = net.config.num_hidden_layers
    resize(net, slots)
    out: dict = {"budget_gib": budget / GIB, "plan": plan.placement(), "plan_line": plan.describe(),
                 "slots": slots}
    filler_bytes = plan.gpu_weight_bytes - torch.cuda.memory_allocated()
    out["filler_gib"] = filler_bytes / GIB
    filler = torch.empty(max(0, filler_bytes), dtype=torch.uint8, device="cuda")
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    try:
        configure(net, prefetch=True, costs=None)
        state, seconds = prefilled(engine, net, args.prefill, args.chunk)
        out["prefill"] = {"tokens": args.prefill, "chunk": args.chunk, "tokens_per_s": args.prefill / seconds,
                          "tokens_per_s_43_layers": args.prefill / seconds * layers / FLASH_LAYERS}
        out["head_ms"] = head = head_ms(net)
        steps = args.decode_steps
        for name, prefetch, batch, graph in (("b1_cache", False, 1, True), ("b1_prefetch", True, 1, True),
                                             ("b8_cache", False, 8, True), ("b8_prefetch", True, 8, True)):
            graph = graph and slots >= batch * TOP_K
            configure(net, prefetch=prefetch, costs=None)
            run = decode(net, state, batch, steps if graph else max(6, steps // 3), graph=graph)
            out[name] = extrapolate({**run, "graph": graph}, head, layers, batch)
        configure(net, prefetch=True, costs=costs)
        out["b1_cpu_policy"] = extrapolate({**decode(net, state, 1, steps, graph=True), "graph": True},
                                           head, layers, 1)
        configure(net, prefetch=False, costs=FORCE_CPU)
        out["b1_cpu_forced"] = extrapolate({**decode(net, state, 1, args.cpu_steps, graph=True), "graph": True},
                                           head, layers, 1)
        out["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    except torch.OutOfMemoryError as error:
        out["error"] = f"out of memory under the {budget / GIB:.1f} GiB cap: {str(error).splitlines()[0]}"
    finally:
        configure(net, prefetch=False, costs=None)
        del filler
        state = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.reset_peak_memory_stats()
    return out


def bounds(out: dict, expert_bytes: int, h2d_gbs: float, cpu_gbs: float) -> dict:
    """B=1 tokens/s bounds at 43 layers for the run's measured copies and misses."""
    best = out.get("b1_cache")  # the plain cache: what prefetching and the CPU are measured against
    if best is None:
        return {}
    copied = best["copied_gib_per_token_43_layers"] * GIB
    missed = FLASH_LAYERS * TOP_K * (1 - best["hit_rate"]) * expert_bytes
    return {"pcie_tokens_per_s": h2d_gbs * 1e9 / copied if copied else math.inf,
            "cpu_misses_tokens_per_s": cpu_gbs * 1e9 / missed if missed else math.inf,
            "cpu_all_routed_tokens_per_s": cpu_gbs * 1e9 / (FLASH_LAYERS * TOP_K * expert_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--budgets", default="24,48,80", help="GPU budgets in GiB")
    parser.add_argument("--prefill", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--decode-steps", type=int, default=24)
    parser.add_argument("--cpu-steps", type=int, default=6)
    parser.add_argument("--skip-resident", action="store_true", help="skip the every-expert-resident floor")
    args = parser.parse_args()
    started = time.perf_counter()
    prefer_expandable_segments()  # as model.load does on CUDA
    results = Results(args.out)
    h2d = pinned_copy_gbs()
    cpu = cpu_read_gbs()
    results.put("ceilings", {"pinned_h2d_gbs": h2d, "cpu_read_gbs": cpu, "cpu_threads": torch.get_num_threads()})
    with torch.no_grad():
        net, info = build(args.layers, 2 * TOP_K * 8)
        results.put("model", info)
        engine = Engine(net, EngineConfig(dtype="bfloat16", device="cuda"))
        first = caches(net)[0]
        costs = measure_costs(first.host, first.cache, first.fmt, first.limit)
        expert_bytes = first.expert_bytes
        results.put("expert_costs", {"expert_mib": expert_bytes / 2**20, "copy_ms": 1e3 * costs.copy_s,
                                     "cpu_fixed_ms": 1e3 * costs.cpu_fixed_s, "cpu_token_ms": 1e3 * costs.cpu_token_s,
                                     "copy_gbs": expert_bytes / costs.copy_s / 1e9,
                                     "cpu_gbs": expert_bytes / max(costs.cpu_fixed_s, 1e-9) / 1e9})
        results.put("check_cpu_experts", check_cpu_experts(net))
        if not args.skip_resident:
            resize(net, net.config.n_routed_experts)  # every expert on the GPU: the compute floor
            state, seconds = prefilled(engine, net, args.prefill, args.chunk)
            head = head_ms(net)
            results.put("resident", {"prefill_tokens_per_s": args.prefill / seconds, "head_ms": head,
                                     **{f"b{b}": extrapolate(decode(net, state, b, args.decode_steps, graph=True),
                                                             head, args.layers, b) for b in (1, 8)}})
            del state
            gc.collect()
        for budget in args.budgets.split(","):
            out = run_budget(net, engine, float(budget), costs, args)
            out["bounds_b1_43_layers"] = bounds(out, expert_bytes, h2d, cpu)
            results.put(f"budget_{budget}", out)
    results.put("wall_s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
