"""The indexer's prefill scores with FP8 queries (kernels/indexer_fp8.py) against float queries over the same
FP8 keys (kernels/indexer.py), V4-Flash shapes (64 heads x 128, top-512, rate 4), in one device call.

    python benchmarks/bench_indexer_fp8.py --out benchmarks/results/indexer_fp8_h100 [--quick]

1. Ceilings measured in the same run (bf16 and FP8 matmul, bench_kernels.ceilings).
2. Parity on fresh inputs: each kernel against its reference (new: queries rounded as the kernel rounds
   them); the new top-k exact on the kernel's own scores; the new top-k's overlap with the float-query
   top-k. If parity fails, no timings are taken.
3. Timings (triton do_bench medians, L2 cleared between calls): chunks of S = 4,096 and 8,192 queries
   against T = 8K..256K keys (the chunk ends a 4T-token context: start = 4T - S), old vs new scores,
   then old vs new top-k (scores + selection), with TFLOP/s over 2 * Hi * Di per visible (query, key)
   pair and the top-k overlap at that shape. The first call of each kernel (autotuning) is timed apart.
Results go to <out>.json and <out>.md after every section, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from v4.kernels import indexer as ix  # noqa: E402 - after the path
from v4.kernels import indexer_fp8 as f8  # noqa: E402

HEADS, HEAD_DIM, TOPK, RATE = 64, 128, 512, 4
PARITY_BOUND = 2e-3  # the FP8 MMA keeps ~14 bits over K = 128; float32 sums alone give ~1e-6


def inputs(seq_len: int, num_keys: int, seed: int) -> tuple:
    """(q, weights, keys_fp8, key_scale, start, rate, scale): random bf16 queries, keys FP8 as stored."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, seq_len, HEADS, HEAD_DIM, generator=gen, device="cuda").bfloat16()
    weights = torch.randn(1, seq_len, HEADS, generator=gen, device="cuda") * HEADS**-0.5
    keys = torch.randn(1, num_keys, HEAD_DIM, generator=gen, device="cuda")
    return (q, weights, *ix.quantize_index_keys_fp8(keys), RATE * num_keys - seq_len, RATE, HEAD_DIM**-0.5)


def overlap(got: torch.Tensor, want: torch.Tensor) -> float:
    """Share of `want`'s selected keys that `got` selects too (both ascending, -1 padded at the end)."""
    ordered = torch.where(got >= 0, got, torch.iinfo(torch.int32).max).long().contiguous()  # still ascending
    at = torch.searchsorted(ordered, want.long().contiguous()).clamp(max=ordered.shape[-1] - 1)
    hits = (ordered.gather(-1, at) == want.long()) & (want >= 0)
    return float(hits.sum() / (want >= 0).sum().clamp(min=1))


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(out)):
        return float("inf")
    return float((out[finite] - ref[finite]).norm() / ref[finite].norm())


def parity() -> list[dict]:
    rows = []
    for seq_len, num_keys in ((512, 4096), (256, 32768), (2048, 2048), (1024, 256)):  # the last: start 0
        args = inputs(seq_len, num_keys, seed=seq_len + num_keys)
        q, w, k8, ks, start, rate, scale = args
        new = f8.indexer_scores_fp8q(*args)
        old = ix.indexer_scores(q, w, k8, start, rate, scale, ks)
        old_ref = ix.indexer_scores_reference(q, w, ix.dequantize_index_keys_fp8(k8, ks), start, rate, scale)
        new_top = f8.indexer_topk_fp8q(*args, TOPK)
        old_top = ix.indexer_topk_fp8(q, w, k8, ks, start, rate, scale, TOPK)
        rows.append({"S": seq_len, "T": num_keys, "new_vs_fp8q_ref": rel(new, f8.indexer_scores_fp8q_reference(*args)),
                     "old_vs_ref": rel(old, old_ref), "new_vs_float_query_ref": rel(new, old_ref),
                     "new_topk_exact_on_own_scores": bool(torch.equal(new_top, ix.topk_indices_reference(new, TOPK))),
                     "topk_overlap_new_vs_old": overlap(new_top, old_top)})
        print("parity", json.dumps(rows[-1]), flush=True)
    return rows


def timing(seq_len: int, num_keys: int, quick: bool, out: torch.Tensor) -> dict:
    import triton.testing

    q, w, k8, ks, start, rate, scale = args = inputs(seq_len, num_keys, seed=1)
    scores = out[: seq_len * num_keys].view(1, seq_len, num_keys)
    calls = {"old_scores": lambda: ix.indexer_scores(q, w, k8, start, rate, scale, ks, out=scores),
             "new_scores": lambda: f8.indexer_scores_fp8q(*args, out=scores),
             "old_topk": lambda: ix.indexer_topk_fp8(q, w, k8, ks, start, rate, scale, TOPK),
             "new_topk": lambda: f8.indexer_topk_fp8q(*args, TOPK)}
    visible = sum(min(num_keys, (start + s + 1) // RATE) for s in range(seq_len))
    row = {"S": seq_len, "T": num_keys, "context_tokens": RATE * num_keys,
           "GFLOP": 2 * HEADS * HEAD_DIM * visible / 1e9}
    for name, fn in calls.items():
        first = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        row[f"{name}_first_s"] = time.perf_counter() - first  # autotuning on a kernel's first shape
        row[f"{name}_ms"] = float(triton.testing.do_bench(fn, warmup=25 if quick else 50, rep=60 if quick else 200,
                                                          return_mode="median"))
        row[f"{name}_TFLOPs"] = row["GFLOP"] / row[f"{name}_ms"]
    row["scores_speedup"] = row["old_scores_ms"] / row["new_scores_ms"]
    row["topk_speedup"] = row["old_topk_ms"] / row["new_topk_ms"]
    row["topk_overlap_new_vs_old"] = overlap(calls["new_topk"](), calls["old_topk"]())
    return row


def markdown(result: dict) -> str:
    c = result.get("ceilings", {})
    lines = [f"# Indexer prefill scores, FP8 queries vs float queries (FP8 keys), {result['device']}", "",
             f"Ceilings in the same run: bf16 matmul {c.get('bf16_matmul_TFLOPs', 0):.0f} TFLOP/s, FP8 matmul "
             f"{c.get('fp8_matmul_TFLOPs', 0):.0f} TFLOP/s. Hi={HEADS}, Di={HEAD_DIM}, k={TOPK}, rate {RATE}.", "",
             "| S | T | new vs its ref | old vs its ref | new vs float-query ref | top-k exact | top-k overlap |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['S']} | {r['T']} | {r['new_vs_fp8q_ref']:.1e} | {r['old_vs_ref']:.1e} | "
              f"{r['new_vs_float_query_ref']:.1e} | {r['new_topk_exact_on_own_scores']} | "
              f"{r['topk_overlap_new_vs_old']:.2%} |" for r in result.get("parity", [])]
    fp8_rate, bf16_rate = c.get("fp8_matmul_TFLOPs") or float("nan"), c.get("bf16_matmul_TFLOPs") or float("nan")
    lines += ["", "| S | T (context) | old scores ms (TFLOP/s, of bf16) | new scores ms (TFLOP/s, of FP8) | ratio | "
              "old top-k ms | "
              "new top-k ms | ratio | top-k overlap |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['S']} | {r['T']} | FAILED: {r['error'][:100]} | | | | | | |")
            continue
        lines.append(f"| {r['S']} | {r['T']} ({r['context_tokens'] // 1024}K) | {r['old_scores_ms']:.2f} "
                     f"({r['old_scores_TFLOPs']:.0f}, {r['old_scores_TFLOPs'] / bf16_rate:.0%}) | {r['new_scores_ms']:.2f} "
                     f"({r['new_scores_TFLOPs']:.0f}, {r['new_scores_TFLOPs'] / fp8_rate:.0%}) | "
                     f"{r['scores_speedup']:.2f}x | {r['old_topk_ms']:.2f} | {r['new_topk_ms']:.2f} | "
                     f"{r['topk_speedup']:.2f}x | {r['topk_overlap_new_vs_old']:.2%} |")
    return "\n".join(lines) + "\n"


def save(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="path prefix for .json and .md")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, S = 4,096 only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_indexer_fp8: needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from benchmarks.bench_kernels import ceilings

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on the device machine
        sha = ""
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "python": platform.python_version(), "git": sha or "unknown", "command": " ".join(sys.argv)}
    started = time.time()
    result["ceilings"] = ceilings("cuda")
    print("ceilings:", json.dumps(result["ceilings"]), flush=True)
    save(result, args.out)
    result["parity"] = parity()
    save(result, args.out)
    if any(max(r["new_vs_fp8q_ref"], r["old_vs_ref"]) > PARITY_BOUND or not r["new_topk_exact_on_own_scores"]
           for r in result["parity"]):
        print(f"parity failed (bound {PARITY_BOUND}): no timings", flush=True)
        return 1
    chunks = (4096,) if args.quick else (4096, 8192)
    biggest = max(chunks) * 256 * 1024
    out = torch.empty(biggest, dtype=torch.float32, device="cuda")  # one scores buffer for every shape
    result["rows"] = []
    for seq_len in chunks:
        for num_keys in (8192, 16384, 32768, 65536, 131072, 262144):
            try:
                row = timing(seq_len, num_keys, args.quick, out)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                row = {"S": seq_len, "T": num_keys, "error": repr(exc)[:400]}
            result["rows"].append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            torch.cuda.empty_cache()
            result["configs"] = {"old": str(getattr(ix._scores_kernel, "best_config", None)),  # autotuned
                                 "new": str(getattr(f8._scores_fp8_kernel, "best_config", None))}
            save(result, args.out)
    result["seconds"] = time.time() - started
    save(result, args.out)
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
