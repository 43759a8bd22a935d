"""Decode GEMVs against the kernels they replace, at V4-Flash decode shapes, on one CUDA GPU (issue 27).

    python benchmarks/bench_decode_gemv.py [--out PREFIX] [--quick] [--sections projections,experts]
    (PREFIX defaults to $OUT/decode_gemv; about 5-8 minutes with the sweep on an H100, 1-2 with --quick)

First a copy ceiling (1 GiB device-to-device copy, bytes read + written over time). Then, per section,
parity on CUDA (new and old kernel against the PyTorch reference on fresh inputs; a case whose new kernel
misses its tolerance is not timed), then times: each call captured in a CUDA graph over enough distinct
weights (or expert choices) to stream past L2, replays timed with triton's do_bench_cudagraph (median),
divided by the calls per replay. Reported per case: us, the fewest bytes the call must move (weights,
scales, x, out), GB/s and its share of the copy ceiling, for the old kernel, the new one with its default
launch and, unless --quick, the best of a sweep of launches (the data for tuning pick_config, DEFAULT and
the row thresholds). Sections: FP8 projections (hidden 4096: wq_a, wq_b, wkv, the grouped wo_a, wo_b,
the shared expert) at M = 1, 8; routed experts 256 x (2048 x 4096), top 6, FP4 and FP8, at B = 1, 8.
JSON and markdown are rewritten after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from v4.kernels import decode_gemv, decode_moe, fp8_gemm, moe  # noqa: E402
from v4.model.quant import quantize_fp4, quantize_fp8  # noqa: E402

PROJECTIONS = {  # name: (N, K, groups); wo_a is 8 groups of 1024 rows, each group's x 4096 wide
    "wq_a": (1024, 4096, 1), "wq_b": (32768, 1024, 1), "wkv": (512, 4096, 1), "wo_a": (8192, 4096, 8),
    "wo_b": (4096, 8192, 1), "shared w1/w3": (2048, 4096, 1), "shared w2": (4096, 2048, 1)}
EXPERTS, HIDDEN, INTER, TOPK = 256, 4096, 2048, 6
GEMV_SWEEP = [decode_gemv.GemvConfig(bn, bk, num_warps=w) for bn in (2, 4, 8, 16, 32) for bk in (1024, 2048, 4096)
              for w in (4, 8) if 4096 <= bn * bk <= 4096 * w] + \
    [decode_gemv.GemvConfig(bn, 128, True, 4, s) for bn in (16, 32, 64, 128) for s in (3, 4)]
MOE_SWEEP = [decode_moe.ExpertGemvConfig(gn, gk, dn, dk, w) for gn, gk, dn, dk in
             ((8, 512, 8, 512), (16, 512, 16, 512), (32, 512, 32, 512), (16, 1024, 16, 1024), (16, 256, 16, 256),
              (32, 1024, 32, 1024), (8, 1024, 16, 512)) for w in (4, 8)]


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def replay_us(fn, calls: int, rep_ms: int) -> float:
    """Median us per call: `fn` makes `calls` calls; it is captured once and its graph replayed."""
    import triton.testing

    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")) * 1e3 / calls


def copy_ceiling() -> float:
    import triton.testing

    src = torch.randn(256 * 2**20, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def timed(row: dict, name: str, fn, calls: int, rep: int, ceiling: float) -> None:
    us = replay_us(fn, calls, rep)
    row[name] = {"us": us, "GBps": row["bytes"] / us / 1e3, "share": row["bytes"] / us / 1e3 / ceiling}


def sweep(row: dict, make, configs: list, calls: int, rep: int, ceiling: float) -> None:
    """The best launch of `configs` (`make(cfg)` -> a timed callable, or None where cfg does not fit)."""
    best = None
    for cfg in configs:
        fn = make(cfg)
        if fn is None:
            continue
        try:
            us = replay_us(fn, calls, rep)
        except Exception as exc:  # noqa: BLE001 - a launch that does not compile is skipped, and said
            print(f"  sweep {cfg}: {exc!r:.120}", flush=True)
            continue
        if best is None or us < best[0]:
            best = (us, cfg)
    if best:
        row["best"] = {"us": best[0], "GBps": row["bytes"] / best[0] / 1e3,
                       "share": row["bytes"] / best[0] / 1e3 / ceiling, "config": repr(best[1])}


def projections(result: dict, quick: bool, rep: int, save, rows_list: tuple[int, ...] = (1, 8)) -> None:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    for name, (n, k, groups) in PROJECTIONS.items():
        sets = [quantize_fp8(torch.randn(n, k, device="cuda") * k**-0.5, ue8m0=True)
                for _ in range(max(2, min(32, -(-4 * l2 // (n * k)))))]
        for m in rows_list:
            x = torch.randn(m, groups, k, device="cuda").bfloat16()
            if groups == 1:
                x = x[:, 0]
                ref, new, old = fp8_gemm.fp8_linear_reference, decode_gemv.fp8_gemv, fp8_gemm.fp8_linear
            else:
                ref, new = decode_gemv.fp8_gemv_grouped_reference, decode_gemv.fp8_gemv_grouped
                rows = n // groups

                def old(x, w, s, rows=rows):  # the model's path before: one FP8 GEMM per group
                    first = [g * rows // 128 for g in range(x.shape[1])]
                    return torch.stack([fp8_gemm.fp8_linear(x[:, g], w[g * rows:(g + 1) * rows],
                                                            s[f:f + -(-rows // 128)]) for g, f in enumerate(first)], 1)
            row = {"case": f"{name} fp8 M={m} N={n} K={k}" + (f" groups={groups}" if groups > 1 else ""),
                   "bytes": n * k + (-(-n // 128)) * (k // 128) + 2 * m * k * groups + 2 * m * n,
                   "weight_sets": len(sets)}
            expected = ref(x, *sets[0])
            row["err_new"], row["err_old"] = rel(new(x, *sets[0]), expected), rel(old(x, *sets[0]), expected)
            if not row["err_new"] < 1e-2:
                row["error"] = "new kernel misses the reference (bf16 tolerance 1e-2): not timed"
            else:
                timed(row, "old", lambda: [old(x, *s) for s in sets], len(sets), rep, result["copy_GBps"])
                timed(row, "new", lambda: [new(x, *s) for s in sets], len(sets), rep, result["copy_GBps"])
                if not quick:
                    def make(cfg, rows=n // groups):
                        if groups > 1 and rows % cfg.block_n or cfg.block_k > k:
                            return None
                        return lambda: [new(x, *s, config=cfg) for s in sets]
                    sweep(row, make, GEMV_SWEEP, len(sets), rep, result["copy_GBps"])
            result["projections"].append(row)
            save(row)
        sets.clear()
        torch.cuda.empty_cache()


def experts(result: dict, quick: bool, rep: int, save, rows_list: tuple[int, ...] = (1, 8),
            kinds: tuple[str, ...] = ("fp4", "fp8")) -> None:
    for kind in kinds:
        stacks = []
        for rows, cols in ((INTER, HIDDEN), (INTER, HIDDEN), (HIDDEN, INTER)):
            ws, ss = [], []
            for e in range(0, EXPERTS, 32):  # quantised in slices: the float copy stays small
                w = torch.randn(32, rows, cols, device="cuda") * cols**-0.5
                q, s = quantize_fp4(w) if kind == "fp4" else quantize_fp8(w, ue8m0=True)
                ws.append(q)
                ss.append(s)
            stacks += [torch.cat(ws), torch.cat(ss)]
            del ws, ss
        new = decode_moe.moe_experts_gemv_fp4 if kind == "fp4" else decode_moe.moe_experts_gemv_fp8
        old = moe.moe_experts_fp4 if kind == "fp4" else moe.moe_experts_fp8
        ref = moe.moe_experts_fp4_reference if kind == "fp4" else moe.moe_experts_fp8_reference
        per_expert = sum(stacks[i][0].numel() * stacks[i].element_size() for i in range(0, 6))
        for tokens in rows_list:
            x = torch.randn(tokens, HIDDEN, device="cuda").bfloat16()
            routes = []
            for _ in range(8):  # distinct expert choices per call: the weights stream from memory
                ids = torch.stack([torch.randperm(EXPERTS, device="cuda")[:TOPK] for _ in range(tokens)])
                weights = torch.softmax(torch.randn(tokens, TOPK, device="cuda"), -1)
                routes.append((weights, ids))
            used = sum(len(torch.unique(ids)) for _, ids in routes) / len(routes)
            row = {"case": f"{kind} experts B={tokens} top{TOPK} E={EXPERTS} H={HIDDEN} I={INTER} "
                           f"({used:.1f} used)", "bytes": int(used * per_expert) + 4 * tokens * HIDDEN}
            w, ids = routes[0]
            expected = ref(x, w, ids, *stacks, 10.0)
            row["err_new"] = rel(new(x, w, ids, *stacks, 10.0), expected)
            row["err_old"] = rel(old(x, w, ids, *stacks, 10.0), expected)
            if not row["err_new"] < 1e-2:
                row["error"] = "new kernel misses the reference (bf16 tolerance 1e-2): not timed"
            else:
                ceiling = result["copy_GBps"]
                timed(row, "old", lambda: [old(x, w, i, *stacks, 10.0) for w, i in routes], len(routes), rep, ceiling)
                timed(row, "new", lambda: [new(x, w, i, *stacks, 10.0) for w, i in routes], len(routes), rep, ceiling)
                if not quick:
                    sweep(row, lambda cfg: lambda: [new(x, w, i, *stacks, 10.0, config=cfg) for w, i in routes],
                          MOE_SWEEP, len(routes), rep, ceiling)
            result["experts"].append(row)
            save(row)
        stacks.clear()
        torch.cuda.empty_cache()


def markdown(result: dict) -> str:
    lines = [f"# Decode GEMVs on {result['device']}", "",
             f"Copy ceiling measured in the same run: {result['copy_GBps']:.0f} GB/s (read + write). Times: CUDA-graph "
             "replays over weights that stream past L2, per call.", "",
             "| case | MB | err new / old | old us (GB/s, share) | new us (GB/s, share) | best us (share) | best launch |",
             "|---|---|---|---|---|---|---|"]

    def cell(t: dict | None) -> str:
        return f"{t['us']:.1f} ({t['GBps']:.0f}, {t['share']:.0%})" if t else ""

    for r in result["projections"] + result["experts"]:
        best = r.get("best")
        best_cell = "{:.1f} ({:.0%})".format(best["us"], best["share"]) if best else ""
        lines.append(f"| {r['case']} | {r['bytes'] / 1e6:.1f} | {r['err_new']:.1e} / {r['err_old']:.1e} | "
                     f"{cell(r.get('old'))} | {cell(r.get('new'))} | {best_cell} | "
                     f"{best['config'] if best else r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results")) / "decode_gemv")
    parser.add_argument("--quick", action="store_true", help="no launch sweep, shorter timing")
    parser.add_argument("--rows", default="1,8", help="comma-separated rows (tokens) per call, e.g. 2 for a verify step")
    parser.add_argument("--sections", default="projections,experts", help="comma-separated: projections, experts")
    parser.add_argument("--kinds", default="fp4,fp8", help="comma-separated expert formats: fp4, fp8")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_decode_gemv: needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    torch.manual_seed(0)
    started = time.time()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "command": " ".join(sys.argv), "copy_GBps": copy_ceiling(), "projections": [], "experts": []}
    print(f"copy ceiling {result['copy_GBps']:.0f} GB/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict | None = None) -> None:
        """Progress on stdout; both files rewritten, so a timeout keeps every finished case."""
        if row is not None:
            print(json.dumps(row), flush=True)
        result["seconds"] = time.time() - started
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        args.out.with_suffix(".md").write_text(markdown(result))

    rep = 20 if args.quick else 40
    for section in (projections, experts):
        if section.__name__ not in args.sections.split(","):
            continue
        print(f"== {section.__name__}", flush=True)
        try:
            rows = tuple(int(r) for r in args.rows.split(","))
            if section is experts:
                experts(result, args.quick, rep, save, rows, tuple(args.kinds.split(",")))
            else:
                section(result, args.quick, rep, save, rows)
        except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
            import traceback

            result[f"{section.__name__}_error"] = traceback.format_exc()[-2000:]
            print(f"{section.__name__} failed: {exc!r}", flush=True)
        save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
