"""[perf] expert offload on one GPU: a V4-Flash-shaped model whose weights exceed the GPU's memory runs
with its routed experts in pinned host memory and a cache of `slots` experts per layer on the GPU
(model/offload.py).

The model: V4-Flash layer shapes (hidden 4096, 64 heads x 512, 256 experts x 2048 top 6, CSA/HCA
alternating), random weights, FP8 linears + FP4 routed experts as DeepSeek ships them; as many layers as
it takes for the weights to exceed the GPU's memory (each layer is built on the GPU in bf16, quantised
there and its experts moved to the host before the next, so the GPU never holds them all). Random
routing is close to uniform over the 256 experts: the cache's worst case (a trained model's routing is
skewed, so hot experts hit more often).

Measured, per cache size: the checks (offloaded logits == the same layers with experts resident, on a
short prompt, for the first two layers), prefill tokens/s (every chunk streams all 256 experts of every
layer through the cache), decode ms/token at batch 1 (eager: the host decides which experts to copy)
and batch 8, the cache hit rate, host->GPU GB/s achieved against the measured pinned-copy ceiling, and
the same extrapolated to V4-Flash's 43 layers.

    python benchmarks/bench_offload.py --out $OUT/offload.json
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_perf import GIB, Results, cuda_ms, timed_prefill  # noqa: E402
from v4.model.config import CSA, HCA, EngineConfig, V4Config  # noqa: E402
from v4.model.engine import Engine  # noqa: E402
from v4.model.formats import keeps_float32  # noqa: E402
from v4.model.moe import ExpertStrategy, MoE  # noqa: E402
from v4.model.offload import ExpertCache, to_host  # noqa: E402
from v4.model.quantized_linear import FP4Linear, quantize_model  # noqa: E402
from v4.model.random_checkpoint import INIT_STD  # noqa: E402
from v4.model.static_decode import StaticDecoder  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402
from v4.model.weights import _assign  # noqa: E402

FLASH_LAYERS = 43
SEEDS = itertools.count(100)


def pinned_copy_gbs() -> float:
    """Host (pinned) -> GPU GB/s of a 1 GiB copy: the ceiling for fetching experts."""
    src = torch.empty(GIB, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(GIB, dtype=torch.uint8, device="cuda")
    ms = cuda_ms(lambda: dst.copy_(src, non_blocking=True), 5)
    return GIB / (ms / 1e3) / 1e9


def flash_config(layers: int) -> V4Config:
    """V4-Flash's shapes (V4Config's defaults) with `layers` layers alternating CSA and HCA."""
    return V4Config.from_dict({"model_type": "deepseek_v4", "num_hidden_layers": layers,
                               "layer_types": [CSA, HCA] * (layers // 2), "num_hash_layers": 0,
                               "num_nextn_predict_layers": 0, "max_position_embeddings": 1 << 20})


def fill_random(module: nn.Module, prefix: str, generator: torch.Generator, skip: str = "\0") -> None:
    """Give every tensor of `module` (built on the meta device) a random value on the GPU, by
    random_checkpoint.py's rules, in the dtype the loader would give it; names containing `skip` stay on meta."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            full = f"{prefix}{name}"
            if skip in full or tensor.device.type != "meta":
                continue
            dtype = torch.float32 if keeps_float32(full) else torch.bfloat16
            if full.endswith(("norm.weight", "_scale")):
                value = torch.ones(tensor.shape, device="cuda", dtype=dtype)
            elif full.endswith(("_base", "attn_sink", "gate.bias", "ape")):
                value = torch.zeros(tensor.shape, device="cuda", dtype=dtype)
            else:
                value = (torch.randn(tensor.shape, device="cuda", generator=generator) * INIT_STD).to(dtype)
            _assign(module, name, value)


def random_fp4_experts(moe: MoE, slots: int, generator: torch.Generator) -> None:
    """`moe`'s routed experts as random FP4 bytes with 2**-7 scales (std ~0.025, like INIT_STD), made on
    the GPU one stack at a time and kept in pinned host memory, then its cache of `slots`; slots=0 keeps
    them on the GPU instead (no offload)."""
    config, host = moe.gate.config, []
    hidden, inter, experts = config.hidden_size, config.moe_intermediate_size, config.n_routed_experts
    e8m0_2_pow_minus_7 = 127 - 7
    for rows, cols in ((inter, hidden), (inter, hidden), (hidden, inter)):
        weight = torch.randint(-128, 128, (experts, rows, cols // 2), device="cuda", dtype=torch.int8,
                               generator=generator)
        scale = torch.full((experts, rows, cols // 32), e8m0_2_pow_minus_7, dtype=torch.uint8, device="cuda")
        scale = scale.view(torch.float8_e8m0fnu)
        host += [weight, scale] if slots == 0 else [to_host(weight, pin=True), to_host(scale, pin=True)]
        del weight, scale
    for expert_index, expert in enumerate(moe.experts):
        for proj_index, proj in enumerate(("w1", "w3", "w2")):
            weight, scale = host[2 * proj_index][expert_index], host[2 * proj_index + 1][expert_index]
            setattr(expert, proj, FP4Linear.from_quantized(weight, scale))
    cache = ExpertCache(tuple(host), slots, "cuda", "fp4", moe.limit) if slots else None
    moe.strategy = ExpertStrategy(fmt="fp4", offload=cache)
    moe.hold_stacks(tuple(host))


def build(layers: int, slots: int) -> tuple[Transformer, dict]:
    """The model: FP8 linears quantised on the GPU, routed experts random FP4 in pinned host memory
    (slots=0: on the GPU), built layer by layer."""
    config = flash_config(layers)
    with torch.device("meta"):
        net = Transformer(config, with_mtp=False)
    generator = torch.Generator(device="cuda").manual_seed(0)
    t0 = time.perf_counter()
    for name, child in net.named_children():
        if name != "layers":
            fill_random(child, f"{name}.", generator)
    fill_random(net, "", generator, skip="layers.")
    for index, block in enumerate(net.layers):
        fill_random(block, f"layers.{index}.", generator, skip=".ffn.experts.")
        holder = nn.Module()
        holder.layers = nn.ModuleDict({str(index): block})  # checkpoint names, for stored_format
        quantize_model(holder, linears="fp8", experts=None)
        random_fp4_experts(block.ffn, slots, generator)
        torch.cuda.empty_cache()
    net.materialize_buffers("cuda")
    net.eval()
    host = sum(t.numel() * t.element_size() for c in caches(net) for t in c.host)
    cache = sum(t.numel() * t.element_size() for c in caches(net) for t in c.cache)
    on_gpu = sum(t.numel() * t.element_size() for t in list(net.parameters()) + list(net.buffers()) if t.is_cuda)
    total_gpu = torch.cuda.get_device_properties(0).total_memory
    pinned = all(t.is_pinned() for c in caches(net) for t in c.host)
    info = {"layers": layers, "build_s": time.perf_counter() - t0, "experts_host_gib": host / GIB,
            "experts_pinned": pinned, "weights_on_gpu_gib": on_gpu / GIB, "weights_total_gib": (host + on_gpu) / GIB,
            "gpu_memory_gib": total_gpu / GIB, "weights_exceed_gpu_memory": host + on_gpu > total_gpu,
            "cache_gib_at_build": cache / GIB}
    return net, info


def caches(net: Transformer) -> list[ExpertCache]:
    return [m.strategy.offload for m in net.modules() if isinstance(m, MoE) and m.strategy.offload is not None]


def resize(net: Transformer, slots: int) -> None:
    """A fresh cache of `slots` experts per layer over the same host stacks."""
    for moe in net.modules():
        if isinstance(moe, MoE):
            host = moe.strategy.offload.host
            moe.strategy = replace(moe.strategy, offload=None)
            gc.collect()
            torch.cuda.empty_cache()
            moe.strategy = replace(moe.strategy, offload=ExpertCache(host, slots, "cuda", moe.strategy.fmt, moe.limit))


def totals(net: Transformer) -> dict:
    stats = [c.stats for c in caches(net)]
    return {"hits": sum(s.hits for s in stats), "misses": sum(s.misses for s in stats),
            "bytes": sum(s.bytes_copied for s in stats)}


def delta(after: dict, before: dict) -> dict:
    d = {k: after[k] - before[k] for k in after}
    looked = d["hits"] + d["misses"]
    d["hit_rate"] = d["hits"] / looked if looked else 0.0
    return d


def check_against_resident(net: Transformer) -> dict:
    """Layer 0's MoE offloaded (a prefill-sized call that streams, a decode-sized call that fetches)
    against the same experts resident on the GPU through the same kernel: equal outputs."""
    moe = net.layers[0].ffn
    config = net.config
    generator = torch.Generator(device="cuda").manual_seed(3)
    out = {}
    for tokens in (512, 1):
        x = torch.randn(1, tokens, config.hidden_size, device="cuda", dtype=torch.bfloat16, generator=generator)
        ids = torch.randint(0, config.vocab_size, (1, tokens), device="cuda", generator=generator)
        offloaded = moe(x, ids)
        flat = x.reshape(tokens, -1)
        weights, experts = moe.gate(flat, ids.reshape(-1))
        resident_stacks = tuple(t.to("cuda") for t in moe.strategy.offload.host)
        resident = moe._run_experts(flat, weights, experts, resident_stacks) + moe.shared_experts(flat)
        out[f"tokens_{tokens}"] = {"max_abs": (offloaded.reshape(tokens, -1) - resident).abs().max().item(),
                                   "equal": bool(torch.equal(offloaded.reshape(tokens, -1), resident))}
        del resident_stacks
    torch.cuda.empty_cache()
    return out


def decode(net: Transformer, state, batch: int, steps: int, graph: bool) -> dict:
    """`steps` decode steps of `batch` rows continuing `state` with random tokens (each step routes
    anew); the median of the steps after the first quarter (which fill the cache), and what moved."""
    decoder = StaticDecoder(net, batch=batch, capacity=state.num_tokens + steps + 64, use_graph=graph)
    for row in range(batch):
        decoder.load_row(row, state)
    generator = torch.Generator().manual_seed(next(SEEDS))  # every run its own tokens: no replayed routing
    times = []
    before = totals(net)
    for _ in range(steps):
        tokens = torch.randint(0, net.config.vocab_size, (batch,), generator=generator)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        decoder.step(tokens)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    moved = delta(totals(net), before)
    warm = sorted(times[steps // 4 :])
    ms = 1e3 * warm[len(warm) // 2]
    del decoder
    gc.collect()
    torch.cuda.empty_cache()
    return {"ms_per_step": ms, "tokens_per_s": batch * 1e3 / ms, "hit_rate": moved["hit_rate"],
            "copied_mib_per_step": moved["bytes"] / steps / 2**20,
            "h2d_gbs_while_decoding": moved["bytes"] / steps / (ms / 1e3) / 1e9}


def measure(net: Transformer, engine: Engine, slots: int, prefill: int, chunk: int, decode_steps: int,
            ceiling: float) -> dict:
    config = net.config
    out: dict = {"slots": slots, "cache_fraction": slots / config.n_routed_experts}
    prompt = torch.randint(0, config.vocab_size, (prefill,), device="cuda", generator=torch.Generator(
        device="cuda").manual_seed(1))
    engine.forward(prompt[:chunk], engine.new_state(chunk, draft=False))  # warm-up: kernels' first calls
    state = engine.new_state(prefill + 4 * decode_steps + 64, draft=False)
    before = totals(net)
    seconds = timed_prefill(engine, prompt, state, chunk)
    moved = delta(totals(net), before)
    out["prefill"] = {"tokens": prefill, "chunk": chunk, "seconds": seconds, "tokens_per_s": prefill / seconds,
                      "copied_gib": moved["bytes"] / GIB, "h2d_gbs": moved["bytes"] / seconds / 1e9,
                      "h2d_share_of_ceiling": moved["bytes"] / seconds / 1e9 / ceiling}
    out["decode_b1_eager"] = decode(net, state, 1, decode_steps, graph=False)
    out["decode_b1"] = decode(net, state, 1, decode_steps, graph=True)
    if slots >= 8 * config.num_experts_per_tok:
        out["decode_b8"] = decode(net, state, 8, decode_steps, graph=True)
    streams = net.embed_streams(torch.tensor([[1]], device="cuda"))
    head_ms = cuda_ms(lambda: net.logits(streams), 10)
    layers = config.num_hidden_layers
    for key, batch in (("decode_b1_eager", 1), ("decode_b1", 1), ("decode_b8", 8)):
        if key in out:
            extrapolated = head_ms + FLASH_LAYERS * (out[key]["ms_per_step"] - head_ms) / layers
            out[key]["ms_43_layers"] = extrapolated
            out[key]["tokens_per_s_43_layers"] = batch * 1e3 / extrapolated
    out["prefill"]["tokens_per_s_43_layers"] = out["prefill"]["tokens_per_s"] * layers / FLASH_LAYERS
    del state
    gc.collect()
    torch.cuda.empty_cache()
    return out


def auto_layers(expert_bytes_per_layer: float, other_per_layer: float, fixed: float) -> int:
    """The fewest even layer count whose weights exceed the GPU's memory by 10%, within 70% of host RAM."""
    import os

    gpu = torch.cuda.get_device_properties(0).total_memory
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    layers = 2
    while fixed + layers * (expert_bytes_per_layer + other_per_layer) < 1.1 * gpu:
        layers += 2
    if layers * expert_bytes_per_layer > 0.7 * host:
        raise SystemExit(f"{layers} layers' experts ({layers * expert_bytes_per_layer / GIB:.0f} GiB) do not fit "
                         f"in 70% of this host's {host / GIB:.0f} GiB")
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=0, help="0: enough to exceed the GPU's memory")
    parser.add_argument("--slots", default="64,max", help="GPU cache sizes per layer to measure ('max': what fits)")
    parser.add_argument("--prefill", type=int, default=16384)
    parser.add_argument("--chunk", type=int, default=16384)
    parser.add_argument("--decode-steps", type=int, default=24)
    args = parser.parse_args()
    started = time.perf_counter()
    results = Results(args.out)
    config = flash_config(2)
    expert = 3 * config.moe_intermediate_size * config.hidden_size * (0.5 + 1 / 32)  # FP4 + ue8m0 scales
    other = 0.16 * GIB  # attention (FP8) + shared expert + compressors per layer, measured in bench_perf
    fixed = 2 * config.vocab_size * config.hidden_size * 2
    layers = args.layers or auto_layers(config.n_routed_experts * expert, other, fixed)
    ceiling = pinned_copy_gbs()
    results.put("pinned_h2d_ceiling_gbs", ceiling)
    first = [s for s in args.slots.split(",") if s != "max"]
    with torch.no_grad():
        net, info = build(layers, int(first[0]) if first else 16)
        results.put("model", info)
        engine = Engine(net, EngineConfig(dtype="bfloat16", device="cuda"))
        results.put("check", check_against_resident(net))
        for spec in args.slots.split(","):
            if spec == "max":
                resize(net, 2)
                free, _ = torch.cuda.mem_get_info()
                per_slot = layers * caches(net)[0].expert_bytes
                slots = min(config.n_routed_experts, int((free - 14 * GIB) // per_slot) // 2 * 2)
            else:
                slots = int(spec)
            resize(net, slots)
            results.put(f"slots_{spec}", measure(net, engine, slots, args.prefill, args.chunk, args.decode_steps,
                                                 ceiling))
    results.put("wall_s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
