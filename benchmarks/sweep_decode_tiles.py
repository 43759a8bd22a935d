"""[perf] measure the decode launch configs of the two weight-streaming kernels on the GPU.

A decode step's time is mostly weights streaming through two kernels: the FP8 block-scaled GEMM of
every dense projection (kernels/fp8_gemm.py, M = batch rows) and the grouped FP4 expert GEMM
(kernels/moe.py, a few rows per used expert). Their decode configs were first guesses; this sweeps
the candidates at V4-Flash's shapes (every FP8 projection of a CSA and an HCA layer, the routed experts
at batch 1 and 8) and reports each one's time. Each candidate is timed as the engine runs it, inside
a CUDA graph (20 calls per replay, so graph launch gaps count as they do in a decode step), and
checked against the current default's output (the same bits: tiles change the schedule, not the sums).

    python benchmarks/sweep_decode_tiles.py --out $OUT/sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_offload import flash_config  # noqa: E402
from bench_perf import Results  # noqa: E402
from v4.kernels import fp8_gemm, moe  # noqa: E402
from v4.model.quantized_linear import FP8Linear, quantize_model  # noqa: E402
from v4.model.v4 import Transformer  # noqa: E402

CALLS = 20


def graph_us(fn) -> float:
    """Microseconds per call of `fn`, CALLS calls captured in one CUDA graph, median of 15 replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    times = []
    for _ in range(15):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    del graph
    return sorted(times)[len(times) // 2]


def fp8_shapes() -> list[tuple[str, int, int]]:
    """(name, N, K) of every FP8 projection of one CSA and one HCA V4-Flash layer (built on meta)."""
    with torch.device("meta"):
        net = Transformer(flash_config(2), with_mtp=False)
    for block in net.layers:
        block.ffn.experts = torch.nn.ModuleList()  # the routed experts are the MoE kernel's
    quantize_model(net, linears="fp8", experts=None)
    seen, shapes = set(), []
    for name, module in net.named_modules():
        if isinstance(module, FP8Linear):
            n, k = module.weight.shape
            if (n, k) not in seen:
                seen.add((n, k))
                shapes.append((name, n, k))
    return shapes


def fp8_case(m: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bf16 activations [m, k] and an FP8 weight [n, k] with 2^-7 ue8m0 block scales."""
    weight = torch.randn(n, k, device="cuda").clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = torch.full((-(-n // 128), k // 128), 127 - 7, dtype=torch.uint8, device="cuda").view(torch.float8_e8m0fnu)
    return torch.randn(m, k, device="cuda", dtype=torch.bfloat16), weight, scale


def sweep_fp8(results: Results) -> None:
    candidates = [fp8_gemm.DecodeTiles(bn, w, st, p) for bn, w, st, p in
                  itertools.product((32, 64, 128), (2, 4), (3, 4, 6), (1, 2, 4))]
    default = fp8_gemm.DECODE_TILES
    out: dict = {"default": vars(default), "shapes": {}}
    totals = {i: 0.0 for i in range(len(candidates))}
    for (name, n, k), m in itertools.product(fp8_shapes(), (1, 8)):
        x, weight, scale = fp8_case(m, n, k)
        expected = fp8_gemm.fp8_linear(x, weight, scale, tiles=default)
        row = {}
        for index, cand in enumerate(candidates):
            same = torch.equal(fp8_gemm.fp8_linear(x, weight, scale, tiles=cand), expected)
            us = graph_us(lambda: fp8_gemm.fp8_linear(x, weight, scale, tiles=cand))
            row[str(index)] = {"us": us, "same": same}
            totals[index] += us
        best = min(row, key=lambda i: row[i]["us"])
        out["shapes"][f"{name} N={n} K={k} M={m}"] = {
            "default_us": row[str(candidates.index(default))]["us"] if default in candidates else None,
            "best": vars(candidates[int(best)]), "best_us": row[best]["us"],
            "gbs_best": n * k / (row[best]["us"] * 1e-6) / 1e9, "all_same_bits": all(r["same"] for r in row.values())}
    ranked = sorted(totals, key=totals.get)
    out["ranked_by_total_us"] = [{"tiles": vars(candidates[i]), "total_us": totals[i]} for i in ranked[:8]]
    out["default_total_us"] = totals[candidates.index(default)] if default in candidates else None
    results.put("fp8_decode", out)


def compare_split_sum(results: Results) -> None:
    """The decode tiles with the split-K partials summed by the tile's last split (fused) and by the
    separate sum kernel, side by side per shape in CUDA graphs; both give the same bits."""
    out: dict = {"tiles": vars(fp8_gemm.DECODE_TILES), "shapes": {}}
    fused_total = separate_total = 0.0
    unfused = dataclasses.replace(fp8_gemm.DECODE_TILES, fuse_split_sum=False)
    for (name, n, k), m in itertools.product(fp8_shapes(), (1, 8)):
        x, weight, scale = fp8_case(m, n, k)
        fused_out = fp8_gemm.fp8_linear(x, weight, scale)
        fused = graph_us(lambda: fp8_gemm.fp8_linear(x, weight, scale))
        same = torch.equal(fp8_gemm.fp8_linear(x, weight, scale, tiles=unfused), fused_out)
        separate = graph_us(lambda: fp8_gemm.fp8_linear(x, weight, scale, tiles=unfused))
        fused_total, separate_total = fused_total + fused, separate_total + separate
        out["shapes"][f"{name} N={n} K={k} M={m}"] = {"fused_us": fused, "separate_us": separate, "same_bits": same}
    out["fused_total_us"], out["separate_total_us"] = fused_total, separate_total
    results.put("fp8_split_sum", out)


def fp4_experts(hidden: int, inter: int, experts: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    weights, scales = [], []
    for rows, cols in ((inter, hidden), (inter, hidden), (hidden, inter)):
        weights.append(torch.randint(-128, 128, (experts, rows, cols // 2), device="cuda", dtype=torch.int8))
        scales.append(torch.full((experts, rows, cols // 32), 127 - 7, dtype=torch.uint8,
                                 device="cuda").view(torch.float8_e8m0fnu))
    return tuple(weights), tuple(scales)


def sweep_moe(results: Results) -> None:
    config = flash_config(2)
    hidden, inter, experts, k = config.hidden_size, config.moe_intermediate_size, config.n_routed_experts, 6
    w, s = fp4_experts(hidden, inter, experts)
    default = moe._DECODE
    gate_up = [moe._Tiles(bn, bk, wp, st) for bn, bk, wp, st in
               itertools.product((16, 32, 64), (128, 256), (2, 4, 8), (3, 5))]
    down = [moe._Tiles(bn, bk, wp, st) for bn, bk, wp, st in
            itertools.product((32, 64, 128), (64, 128, 256), (2, 4), (3, 5))]
    out: dict = {"default": repr(default)}
    for tokens in (1, 8):
        x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
        ids = torch.stack([torch.randperm(experts, device="cuda")[:k] for _ in range(tokens)])
        rw = torch.rand(tokens, k, device="cuda")
        run = lambda cfg: moe._experts(x, rw, ids, w, s, config.swiglu_limit, moe.FP4, cfg)  # noqa: E731
        expected = run(default)
        weight_bytes = tokens * k * 3 * hidden * inter * (0.5 + 1 / 32)  # upper bound: every pair a new expert
        section: dict = {"default_us": graph_us(lambda: run(default))}
        rows = []
        for tiles in gate_up:
            cfg = moe.GemmConfig(default.block_m, tiles, default.down)
            rows.append((graph_us(lambda: run(cfg)), repr(tiles), torch.equal(run(cfg), expected)))
        rows.sort()
        section["gate_up_top"] = rows[:6]
        best_gate_up = next(t for t in gate_up if repr(t) == rows[0][1])
        rows = []
        for tiles in down:
            cfg = moe.GemmConfig(default.block_m, best_gate_up, tiles)
            rows.append((graph_us(lambda: run(cfg)), repr(tiles), torch.equal(run(cfg), expected)))
        rows.sort()
        section["down_top"] = rows[:6]
        section["best_us"] = rows[0][0]
        section["best_gbs"] = weight_bytes / (rows[0][0] * 1e-6) / 1e9
        section["default_gbs"] = weight_bytes / (section["default_us"] * 1e-6) / 1e9
        out[f"tokens_{tokens}"] = section
        results.put("moe_fp4_decode", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", choices=("fp8", "moe", "split-sum"), default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    results = Results(args.out)
    with torch.no_grad():
        if args.only in (None, "moe"):
            sweep_moe(results)
        if args.only in (None, "fp8"):
            sweep_fp8(results)
        if args.only in (None, "split-sum"):
            compare_split_sum(results)
    results.put("wall_s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
