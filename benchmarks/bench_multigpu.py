"""The engine over the GPUs of one host (model/parallel.py: expert-parallel MoE, tensor-parallel attention,
vocabulary-parallel embedding and head) against the same model on one GPU, in one call:

    torchrun --nproc-per-node 2 benchmarks/bench_multigpu.py [--layers 4] [--out benchmarks/results/multigpu.json]
    torchrun --nproc-per-node 2 benchmarks/bench_multigpu.py --device cpu    # gloo, tiny model: a smoke run

Correctness first: rank 0 builds the whole model alone (world size 1, the single-process engine) and
measures it, then every rank builds its shard of the same weights and the same measurements run sharded.
Reported: logits of W GPUs vs 1 (relative error, bf16 rounding expected), greedy tokens (identical
expected), prefill and decode throughput W vs 1, memory per GPU.

The model is V4-Flash-shaped (hidden 4096, 64 heads x 512, 256 experts x 2048, top 6, vocab 129280)
with `--layers` layers and no MTP block, random weights drawn on the device tensor by tensor from a seed
per tensor name, so the sharded model holds exactly the slices of the whole one and no checkpoint is
written; `--checkpoint DIR` loads a real one through `model.load(..., parallel=...)` instead.
NCCL NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # before torch.distributed is initialised
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4 import model  # noqa: E402
from v4.model.config import CSA, HCA, SLIDING, EngineConfig, V4Config  # noqa: E402
from v4.model.engine import DTYPES, Engine  # noqa: E402
from v4.model.formats import keeps_float32  # noqa: E402
from v4.model.parallel import Parallel, init_from_env, shard_model  # noqa: E402
from v4.model.random_checkpoint import PRESETS  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402
from v4.model.weights import _assign  # noqa: E402


def flash_config(layers: int) -> V4Config:
    """V4-Flash's shapes (model/config.py defaults) with `layers` layers and no MTP block."""
    return V4Config(num_hidden_layers=layers, num_nextn_predict_layers=0, max_position_embeddings=65536)


def tiny_config() -> V4Config:
    data = {"model_type": "deepseek_v4", **PRESETS["tiny"]}
    ratios = data.pop("compress_ratios")
    data["layer_types"] = [{0: SLIDING, 4: CSA, 8: HCA}[r] for r in ratios]
    data["num_nextn_predict_layers"] = 0
    return V4Config.from_dict(data)


@torch.no_grad()
def random_model(config: V4Config, parallel: Parallel | None, device: str, dtype: torch.dtype) -> Transformer:
    """The model (this rank's shard under `parallel`) with random weights that depend only on each
    tensor's name: a shard holds exactly the slices of the whole model's tensors."""
    with torch.device("meta"):
        whole = Transformer(config, with_mtp=False)
        model_ = Transformer(config, with_mtp=False)
    shapes = {name: tuple(t.shape) for name, t in whole.state_dict().items()}
    narrow = shard_model(model_, parallel) if parallel is not None else {}
    for name, tensor in model_.state_dict().items():
        generator = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()))
        shape = shapes[name]
        if name.endswith("tid2eid"):
            rows = torch.rand(shape[0], config.n_routed_experts, generator=generator, device=device)
            value = rows.argsort(dim=-1)[:, : shape[1]].contiguous()
        else:
            kind = torch.float32 if keeps_float32(name) else dtype
            value = torch.randn(shape, generator=generator, device=device, dtype=kind)
            value = value * (0.5 if len(shape) <= 1 else shape[-1] ** -0.5)
            if name.endswith("norm.weight"):
                value = value + 1.0
        if name in narrow:
            dim, start, end = narrow[name]
            value = value.narrow(dim, start, end - start).contiguous()
        assert tuple(value.shape) == tuple(tensor.shape), (name, value.shape, tensor.shape)
        _assign(model_, name, value)
    model_.materialize_buffers(device)
    return model_.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine: Engine, prompt: list[int], decode: int, repeats: int, device: str) -> dict:
    """Logits of the prompt, greedy tokens, prefill and decode throughput, memory."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    logits = engine.forward(prompt, engine.new_state(len(prompt) + decode + 1))
    greedy = list(engine.generate(prompt, decode, state=engine.new_state(len(prompt) + decode + 1)))
    prefill_s = timed(lambda: engine.forward(prompt, engine.new_state(len(prompt) + 1)), device, repeats)

    def decode_run() -> None:
        state = engine.new_state(len(prompt) + decode + 1)
        engine.forward(prompt[:16], state)
        sync(device)
        nonlocal decode_start
        decode_start = time.perf_counter()
        for token in prompt[16: 16 + decode]:
            engine.forward([token], state)

    decode_start = 0.0
    decode_times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        decode_run()
        sync(device)
        decode_times.append(time.perf_counter() - decode_start)
    decode_s = statistics.median(decode_times[1:])
    result = {"logits": logits.float().cpu(), "greedy": greedy,
              "prefill_tokens_per_s": len(prompt) / prefill_s, "prefill_s": prefill_s,
              "decode_tokens_per_s": decode / decode_s, "decode_ms_per_token": 1e3 * decode_s / decode,
              "parameters": sum(p.numel() for p in engine.model.parameters()),
              "weight_bytes": sum(p.numel() * p.element_size() for p in engine.model.parameters())}
    if device.startswith("cuda"):
        result["memory_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
        result["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def build(args: argparse.Namespace, parallel: Parallel | None, device: str, dtype: torch.dtype) -> Engine:
    if args.checkpoint:
        return model.load(args.checkpoint, device=device, dtype=dtype, parallel=parallel or False)
    config = tiny_config() if args.device == "cpu" else flash_config(args.layers)
    engine_config = EngineConfig(dtype=str(dtype).removeprefix("torch."), device=device,
                                 max_seq_len=args.prefill + args.decode + 16)
    return Engine(random_model(config, parallel, device, dtype), engine_config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--layers", type=int, default=4, help="layers of the V4-Flash-shaped model")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint to load instead of random weights")
    parser.add_argument("--prefill", type=int, default=2048, help="prompt tokens (prefill)")
    parser.add_argument("--decode", type=int, default=32, help="decode steps timed (and greedy tokens)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the report as JSON here (rank 0)")
    args = parser.parse_args()
    if args.device == "cpu":
        args.prefill, args.decode = min(args.prefill, 64), min(args.decode, 8)
    parallel = init_from_env(args.device)
    if parallel is None:
        raise SystemExit("run under torchrun with --nproc-per-node 2 (or more)")
    device = f"cuda:{parallel.local_rank}" if args.device == "cuda" else "cpu"
    dtype = DTYPES["bfloat16" if args.device == "cuda" else "float32"]
    vocab = (V4Config.from_json(args.checkpoint) if args.checkpoint else
             tiny_config() if args.device == "cpu" else flash_config(args.layers)).vocab_size
    prompt = torch.randint(0, vocab, (args.prefill,), generator=torch.Generator().manual_seed(0)).tolist()
    if args.decode + 16 > len(prompt):
        raise SystemExit("--prefill must be at least --decode + 16 (decode steps feed prompt tokens)")

    single = None
    if parallel.rank == 0:  # the single-GPU engine, alone, first
        engine = build(args, None, device, dtype)
        single = measure(engine, prompt, args.decode, args.repeats, device)
        del engine
        if args.device == "cuda":
            torch.cuda.empty_cache()
    dist.barrier()
    engine = build(args, parallel, device, dtype)
    sharded = measure(engine, prompt, args.decode, args.repeats, device)
    per_rank = [None] * parallel.world
    summary = {k: v for k, v in sharded.items() if k not in ("logits", "greedy")}
    dist.all_gather_object(per_rank, summary)
    if parallel.rank != 0:
        dist.barrier()
        dist.destroy_process_group()
        return
    logits_a, logits_b = sharded["logits"], single["logits"]
    report = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
        "world_size": parallel.world, "dtype": str(dtype), "layers": args.layers if not args.checkpoint else None,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "prefill_tokens": args.prefill, "decode_tokens": args.decode,
        "logits_relative_error": ((logits_a - logits_b).abs().max() / logits_b.abs().max()).item(),
        "last_logits_argmax_equal": bool(logits_a[-1].argmax() == logits_b[-1].argmax()),
        "greedy_identical": sharded["greedy"] == single["greedy"],
        "greedy_single": single["greedy"], "greedy_sharded": sharded["greedy"],
        "single": {k: v for k, v in single.items() if k not in ("logits", "greedy")},
        "sharded_per_rank": per_rank,
        "prefill_speedup": sharded["prefill_tokens_per_s"] / single["prefill_tokens_per_s"],
        "decode_speedup": sharded["decode_tokens_per_s"] / single["decode_tokens_per_s"],
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST")},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
