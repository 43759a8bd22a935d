"""Prefill attention over the FP8 state at V4-Flash shapes (64 heads x 512, window 128, CSA top-512 at rate 4,
HCA at rate 128), the way the tree before ran it against the way it runs now, in one device call:

    python benchmarks/bench_prefill_attention.py --out benchmarks/results/prefill_attention_h100 [--quick]

One chunk of S queries ends a context of C tokens (the chunk's keys: the 127 held window rows, the chunk's
S rows, then the layer's compressed entries, FP8-packed as the state keeps them).
- before: each query's slots as an index list (HCA: window + every entry, built as the old model built it,
  [S, 128 + C/128]) and the FP8 kernel, which dequantises every gathered tile per query and 16-head block;
- now: the rows dequantised once (`dequantize_kv_rows`) and the bf16 kernel (64-head blocks); HCA's entries
  as a KeyPrefix (one length per query), no index list.
Both are checked against each other (relative error) before timing. Times are triton do_bench medians;
TFLOP/s counts 4 H D flops per visible (query, slot) pair. Growth per doubling of C is what the layer's
attention adds to the prefill's growth; a flat time is a linear prefill. Results go to <out>.json and
<out>.md after every shape, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from v4.kernels import sparse_attention as sa  # noqa: E402 - after the path

HEADS, DIM, WINDOW, TOPK, CSA_RATE, HCA_RATE = 64, 512, 128, 512, 4, 128


def chunk_inputs(seq_len: int, context: int, rate: int, seed: int) -> dict:
    """q, packed keys (held window, chunk, entries), window indices [1, S, 128], the entries' first row and
    per-query closed-entry counts for a chunk ending at `context`."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    held, entries = WINDOW - 1, context // rate
    q = torch.randn(1, seq_len, HEADS, DIM, generator=gen, device="cuda").bfloat16()
    keys = torch.randn(1, held + seq_len + entries, DIM, generator=gen, device="cuda").bfloat16()
    rows = torch.arange(seq_len, device="cuda", dtype=torch.int32)
    window = (rows[:, None] + held - torch.arange(WINDOW, device="cuda", dtype=torch.int32)[None, :])[None]
    positions = rows + context - seq_len
    return {"q": q, "packed": sa.quantize_kv_fp8(keys), "window": window, "first": held + seq_len,
            "entries": entries, "closed": ((positions + 1) // rate).to(torch.int32),
            "sink": torch.randn(HEADS, generator=gen, device="cuda"), "scale": DIM**-0.5}


def hca_before(x: dict) -> torch.Tensor:
    """The old HCA: every closed entry as an index list (built as the model built it), FP8 tiles."""
    slots = torch.arange(x["entries"], device="cuda", dtype=torch.int32)
    chosen = torch.where(slots[None, :] < x["closed"][:, None], slots[None, :], -1)[None]
    chosen = torch.where(chosen >= 0, chosen + x["first"], chosen)
    indices = torch.cat([x["window"], chosen], dim=-1)
    return sa._launch(x["q"], x["packed"], indices, x["sink"], x["scale"], fp8=True)


def hca_now(x: dict) -> torch.Tensor:
    prefix = sa.KeyPrefix(x["first"], x["entries"], x["closed"])
    return sa.sparse_attention_fp8(x["q"], x["packed"], x["window"], x["sink"], x["scale"], prefix)


def csa_indices(x: dict, seed: int) -> torch.Tensor:
    """Window + top-512 distinct closed entries per query (ascending, -1 where fewer are closed)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    scores = torch.rand(x["q"].shape[1], x["entries"], generator=gen, device="cuda")
    closed = torch.arange(x["entries"], device="cuda")[None, :] < x["closed"][:, None]
    top = scores.masked_fill(~closed, -1.0).topk(min(TOPK, x["entries"]), dim=-1)
    picked = torch.where(top.values >= 0, top.indices + x["first"], -1).sort(dim=-1).values
    return torch.cat([x["window"], picked[None].to(torch.int32)], dim=-1)


def csa_before(x: dict, indices: torch.Tensor) -> torch.Tensor:
    return sa._launch(x["q"], x["packed"], indices, x["sink"], x["scale"], fp8=True)


def csa_now(x: dict, indices: torch.Tensor) -> torch.Tensor:
    return sa.sparse_attention_fp8(x["q"], x["packed"], indices, x["sink"], x["scale"])


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def measure(seq_len: int, context: int, layer: str) -> dict:
    from triton.testing import do_bench

    rate = CSA_RATE if layer == "csa" else HCA_RATE
    x = chunk_inputs(seq_len, context, rate, seed=context + seq_len)
    if layer == "csa":
        indices = csa_indices(x, seed=context)
        before, now = (lambda: csa_before(x, indices)), (lambda: csa_now(x, indices))
        pairs = float((indices >= 0).sum())
    else:
        before, now = (lambda: hca_before(x)), (lambda: hca_now(x))
        pairs = float(WINDOW * seq_len + x["closed"].clamp(max=x["entries"]).sum())  # window slots: all used here
    error = rel(now(), before())
    ms_before, ms_now = do_bench(before, warmup=5, rep=60), do_bench(now, warmup=5, rep=60)
    dequant_ms = do_bench(lambda: sa.dequantize_kv_rows(x["packed"], torch.bfloat16), warmup=5, rep=30)
    flops = 4 * HEADS * DIM * pairs
    return {"layer": layer, "S": seq_len, "context": context, "entries": x["entries"], "rel_error": error,
            "ms_before": ms_before, "ms_now": ms_now, "speedup": ms_before / ms_now, "dequant_ms": dequant_ms,
            "tflops_before": flops / ms_before / 1e9, "tflops_now": flops / ms_now / 1e9}


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"# Prefill attention over the FP8 state, before and now, {device}", "",
             "One chunk of S queries ending a context; V4-Flash shapes (64 heads x 512, window 128, CSA top-512 "
             "at rate 4, HCA rate 128). before: per-query index lists, FP8 tiles dequantised per query and "
             "16-head block; now: rows dequantised once + the bf16 kernel, HCA entries as a prefix run.", "",
             "| layer | S | context | entries | before ms (TFLOP/s) | now ms (TFLOP/s) | speed-up | of which dequant ms "
             "| growth before | growth now | rel. error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    previous: dict = {}
    for r in rows:
        key = (r["layer"], r["S"])
        last = previous.get(key)
        growth = (f"{r['ms_before'] / last['ms_before']:.2f}", f"{r['ms_now'] / last['ms_now']:.2f}") if last else ("", "")
        lines.append(f"| {r['layer']} | {r['S']} | {r['context'] // 1024}K | {r['entries']} | {r['ms_before']:.2f} "
                     f"({r['tflops_before']:.0f}) | {r['ms_now']:.2f} ({r['tflops_now']:.0f}) | {r['speedup']:.2f}x | "
                     f"{r['dequant_ms']:.2f} | {growth[0]} | {growth[1]} | {r['rel_error']:.1e} |")
        previous[key] = r
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="writes <out>.json and <out>.md")
    parser.add_argument("--quick", action="store_true", help="S = 8,192 only, contexts 128K..1M")
    args = parser.parse_args()
    device = torch.cuda.get_device_name()
    chunks = (8192,) if args.quick else (4096, 8192)
    contexts = [2**k for k in (range(17, 21) if args.quick else range(15, 21))]
    rows: list[dict] = []
    for layer in ("hca", "csa"):
        for seq_len in chunks:
            for context in contexts:
                row = measure(seq_len, context, layer)
                if row["rel_error"] > 2e-2:
                    raise SystemExit(f"before and now disagree: {row}")
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    args.out.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
                    args.out.with_suffix(".md").write_text(markdown(rows, device))
                torch.cuda.empty_cache()
    print(markdown(rows, device))


if __name__ == "__main__":
    main()
