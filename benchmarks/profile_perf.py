"""[perf] where the time goes: per-kernel GPU time of a V4-Flash-shaped decode step and prefill chunk.

Two V4-Flash layers (one CSA, one HCA; FP8 linears, random FP4 experts resident on the GPU, built as
bench_offload.py builds them), torch.profiler over
- decode at batch 1 and 8 after `--context` tokens: the CUDA-graphed step (kernels inside the graph
  are traced) against its replay time, so the gap between the two is what is not kernel time;
- one prefill chunk of `--chunk` tokens after `--prefill` tokens (where the indexer's quadratic share
  shows).
Kernels are grouped by name and ranked by GPU time; the tables say what a change must shrink.

    python benchmarks/profile_perf.py --out $OUT/profile.json --kv-format fp8
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_offload import build  # noqa: E402
from bench_perf import Results, cuda_ms, timed_prefill  # noqa: E402
from v4.model.config import EngineConfig  # noqa: E402
from v4.model.engine import Engine  # noqa: E402
from v4.model.static_decode import StaticDecoder  # noqa: E402


def kernel_table(prof, runs: int, top: int = 30) -> dict:
    """GPU microseconds per run of each kernel name (summed over its launches), largest first."""
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or 0
        if device_us > 0:
            rows.append((event.key[:120], event.count / runs, device_us / runs))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    return {"kernel_us_per_run": total, "launches_per_run": sum(r[1] for r in rows),
            "top": [{"kernel": k, "launches": c, "us": round(us, 1), "share": round(us / total, 4)}
                    for k, c, us in rows[:top]]}


def profiled(fn, runs: int, top: int = 30) -> dict:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    return kernel_table(prof, runs, top)


def decode_profile(engine: Engine, context: int, batch: int, top: int = 30) -> dict:
    net = engine.model
    prompt = torch.randint(0, net.config.vocab_size, (context,), device="cuda")
    state = engine.new_state(context + 64, draft=False)
    timed_prefill(engine, prompt, state, 8192)
    decoder = StaticDecoder(net, batch=batch, capacity=context + 64, kv_format=engine.config.kv_format)
    for row in range(batch):
        decoder.load_row(row, state)
    decoder.token_ids.copy_(prompt[-batch:])  # a token per row: rows route to different experts
    decoder.positions.fill_(context)
    decoder.capture()
    out = {"graph_ms": cuda_ms(decoder.replay, 50)}
    out["graph"] = profiled(decoder.replay, 10, top)
    out["kernel_share_of_replay"] = out["graph"]["kernel_us_per_run"] / 1e3 / out["graph_ms"]
    del decoder, state
    gc.collect()
    torch.cuda.empty_cache()
    return out


def prefill_profile(engine: Engine, before: int, chunk: int) -> dict:
    vocab = engine.model.config.vocab_size
    tokens = torch.randint(0, vocab, (before + 2 * chunk,), device="cuda")
    state = engine.new_state(before + 2 * chunk, draft=False)
    seconds = timed_prefill(engine, tokens[:before], state, chunk)
    from v4.model.state import mark, rewind

    saved = mark(state)

    def one_chunk():
        rewind(state, saved)
        engine.forward(tokens[before : before + chunk], state)

    out = {"before": before, "chunk": chunk, "prefill_before_s": seconds, "chunk_ms": cuda_ms(one_chunk, 3)}
    out["kernels"] = profiled(one_chunk, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kv-format", default="fp8", choices=("float", "fp8"))
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--prefill", type=int, default=262144)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--top", type=int, default=30, help="kernel names listed per decode profile")
    parser.add_argument("--batches", default="1,8", help="decode batch sizes to profile")
    args = parser.parse_args()
    started = time.perf_counter()
    results = Results(args.out)
    with torch.no_grad():
        net, info = build(2, slots=0)
        results.put("model", info)
        engine = Engine(net, EngineConfig(dtype="bfloat16", device="cuda", kv_format=args.kv_format))
        results.put("kv_format", args.kv_format)
        for batch in map(int, args.batches.split(",")):
            results.put(f"decode_b{batch}", decode_profile(engine, args.context, batch, args.top))
        gc.collect()
        results.put("prefill_chunk", prefill_profile(engine, args.prefill, args.chunk))
    results.put("wall_s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
