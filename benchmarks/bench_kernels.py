"""Check and time every Triton kernel against its PyTorch reference, in one device call.

    python benchmarks/bench_kernels.py --out benchmarks/results/kernels_h100 [--only moe,mhc] [--quick]

First the two ceilings of this GPU, measured in the same run: a device-to-device copy (bytes read +
written over time) and a large bf16 matrix product (and an FP8 one through `torch._scaled_mm` when the
GPU has it). Then, per case of `benchmarks/kernel_cases/<family>.py` (V4-Flash shapes): the kernel's
relative error against the reference on fresh random inputs, and the median time of the kernel, the
eager reference and `torch.compile` of it, each launched from Python and as CUDA-graph replays (the
engine's decode runs in graphs, so small calls are judged by their graph time). Reported: achieved bandwidth (bytes the call must move / time)
and FLOP/s, each as a share of its ceiling, and the speed-ups. Times are medians of
`triton.testing.do_bench`, which clears L2 between runs. A case that fails is recorded with its error
and the run goes on. Writes `<out>.json` and `<out>.md`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = ("sparse_attention", "indexer", "compressor", "norm_rope", "mhc", "moe", "fp8_gemm")


def median_ms(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def ceilings(device: str) -> dict:
    """Copy bandwidth (read + write), bf16 matmul and FP8 matmul rates on random data."""
    out = {}
    src = torch.randn(256 * 1024 * 1024, device=device, dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    out["copy_GBps"] = 2 * src.numel() * 4 / ms / 1e6
    del src, dst
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ b)
    out["bf16_matmul_TFLOPs"] = 2 * n**3 / ms / 1e9
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=device)
        ms = median_ms(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
        out["fp8_matmul_TFLOPs"] = 2 * n**3 / ms / 1e9
    except Exception as exc:  # noqa: BLE001 - older GPUs have no FP8 matmul
        out["fp8_matmul_error"] = repr(exc)[:200]
    del a, b
    torch.cuda.empty_cache()
    return out


def graph_ms(fn, rep_ms: float) -> float | None:
    """Median time of CUDA-graph replays of `fn`: the GPU time without Python's launch cost, which
    decides small decode-time calls; None when `fn` cannot be captured (a host sync, say)."""
    import triton.testing

    try:
        fn()
        torch.cuda.synchronize()
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    except Exception:  # noqa: BLE001 - not capturable: events only
        torch.cuda.synchronize()
        return None


def timings(fn, rep_ms: float) -> dict:
    return {"events": median_ms(fn, rep_ms=rep_ms), "graph": graph_ms(fn, rep_ms)}


def time_case(case, ceiling: dict, quick: bool) -> dict:
    """Error first; then each callable timed two ways: launched from Python (events around each call,
    L2 cleared between calls) and as CUDA-graph replays. Ratios compare like with like: graph times
    when both sides could be captured, else event times."""
    row = {"kernel": case.kernel_name, "shape": case.shape, "bound": case.bound, "goal": case.goal,
           "bytes": case.bytes_moved, "flops": case.flops, **case.extra}
    row["rel_error"] = float(case.check())
    rep = 30 if quick else 100
    kernel = timings(case.kernel, rep)
    eager = timings(case.eager, rep)
    row["kernel_events_ms"], row["kernel_graph_ms"] = kernel["events"], kernel["graph"]
    row["eager_events_ms"], row["eager_graph_ms"] = eager["events"], eager["graph"]
    row["timing"] = "graph" if kernel["graph"] is not None else "events"
    row["kernel_ms"] = kernel["graph"] if kernel["graph"] is not None else kernel["events"]
    compiled = None
    if case.compiled is not None:
        try:
            case.compiled()  # compile outside the timing
            compiled = timings(case.compiled, rep)
            row["compiled_events_ms"], row["compiled_graph_ms"] = compiled["events"], compiled["graph"]
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            row["compiled_error"] = repr(exc)[:300]
    seconds = row["kernel_ms"] / 1e3
    row["GBps"] = case.bytes_moved / seconds / 1e9
    row["TFLOPs"] = case.flops / seconds / 1e12
    row["bw_share"] = row["GBps"] / ceiling["copy_GBps"]
    matmul = ceiling.get("fp8_matmul_TFLOPs") if "fp8" in case.shape.lower() else None
    row["flop_share"] = row["TFLOPs"] / (matmul or ceiling["bf16_matmul_TFLOPs"])

    def ratio(other: dict) -> float:
        if other["graph"] is not None and kernel["graph"] is not None:
            return other["graph"] / kernel["graph"]
        return other["events"] / kernel["events"]

    row["speedup_eager"] = ratio(eager)
    if compiled is not None:
        row["speedup_compiled"] = ratio(compiled)
    return row


def markdown(result: dict) -> str:
    c = result["ceilings"]
    lines = [f"# Kernels on {result['device']}", "",
             f"Ceilings measured in the same run: copy {c['copy_GBps']:.0f} GB/s (read + write), bf16 matmul "
             f"{c['bf16_matmul_TFLOPs']:.0f} TFLOP/s" + (f", FP8 matmul {c['fp8_matmul_TFLOPs']:.0f} TFLOP/s"
                                                         if "fp8_matmul_TFLOPs" in c else "") + ".", "",
             "| kernel | shape | rel. error | kernel ms (timing) | GB/s (share of copy) | TFLOP/s (share of matmul) "
             "| vs eager | vs compiled | goal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['shape']} | FAILED: {r['error'][:80]} | | | | | | |")
            continue
        compiled = f"{r['speedup_compiled']:.2f}x" if "speedup_compiled" in r else r.get("compiled_error", "")[:40]
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['rel_error']:.1e} | {r['kernel_ms']:.4f} | "
                     f"{r['GBps']:.0f} ({r['bw_share']:.0%}) | {r['TFLOPs']:.1f} ({r['flop_share']:.0%}) | "
                     f"{r['speedup_eager']:.2f}x | {compiled} | {r['goal']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="path prefix for .json and .md")
    parser.add_argument("--only", default="", help="comma-separated families")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    device = "cuda"
    torch.manual_seed(0)
    started = time.time()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "ceilings": ceilings(device), "rows": []}
    import triton

    result["triton"] = triton.__version__
    print("ceilings:", json.dumps(result["ceilings"]), flush=True)
    families = [f for f in args.only.split(",") if f] or list(FAMILIES)
    for family in families:
        try:
            cases = importlib.import_module(f"benchmarks.kernel_cases.{family}").cases(device)
        except Exception as exc:  # noqa: BLE001
            result["rows"].append({"kernel": family, "shape": "(cases)", "error": repr(exc)[:500],
                                   "trace": traceback.format_exc()[-2000:]})
            print(f"{family}: cases failed: {exc!r}", flush=True)
            continue
        for case in cases:
            try:
                row = time_case(case, result["ceilings"], args.quick)
            except Exception as exc:  # noqa: BLE001
                row = {"kernel": case.kernel_name, "shape": case.shape, "error": repr(exc)[:500],
                       "trace": traceback.format_exc()[-2000:]}
            result["rows"].append(row)
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()
                              if k != "trace"}), flush=True)
        del cases
        torch.cuda.empty_cache()
    result["seconds"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
