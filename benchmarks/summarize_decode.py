"""[decode] bench_perf.py results side by side: the graphed step per layer and fixed, before and after.

    python benchmarks/summarize_decode.py perf_base.json perf_new.json [--md out.md]

Per layer is bench_perf's margin (the model with its layers repeated less the 2-layer step, over 2),
fixed is what is left of the 2-layer step (embedding, head, the per-step position work); 43 layers =
fixed + 43 x per layer. GB/s per layer is against the layer's bytes (the step's bytes less the head's,
over 2), its share against the copy ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = (("bf16", "bf16"), ("fp8_fp4", "FP8 linears + FP4 experts"))


def rows(path: Path) -> tuple[dict, list[dict]]:
    """(run facts, one row per variant and batch) from a bench_perf JSON (missing sections skipped)."""
    data = json.loads(path.read_text())
    hf = data.get("flash_transformers", {})
    ceiling = hf.get("copy_ceiling_gbs")
    facts = {"device": data.get("device"), "ceiling_gbs": ceiling,
             "transformers_ms_b1": hf.get("transformers_decode_ms_b1")}
    out = []
    for key, name in VARIANTS:
        timings = data.get(f"flash_decode_{key}")
        if not timings:
            continue
        for batch in (1, 8):
            if f"per_layer_ms_b{batch}" not in timings:
                continue
            gbs = timings[f"per_layer_gbs_b{batch}"]
            out.append({"variant": name, "batch": batch, "step_ms": timings[f"graph_ms_b{batch}"],
                        "per_layer_ms": timings[f"per_layer_ms_b{batch}"], "per_layer_gbs": gbs,
                        "share": gbs / ceiling if ceiling else None, "fixed_ms": timings[f"fixed_ms_b{batch}"],
                        "tok_s_43": timings[f"tokens_per_s_b{batch}_43_layers"]})
    return facts, out


def table(before: Path | None, after: Path) -> str:
    facts, new = rows(after)
    old = {(r["variant"], r["batch"]): r for r in rows(before)[1]} if before and before.exists() else {}
    lines = [f"Device: {facts['device']}; copy ceiling {facts['ceiling_gbs']:.0f} GB/s; transformers' eager step "
             f"(bf16, B=1) {facts['transformers_ms_b1'] or float('nan'):.2f} ms.", "",
             "| weights | B | 2-layer step ms | per layer ms | per layer GB/s (share of ceiling) | fixed ms "
             "| 43 layers tok/s |", "|---|---|---|---|---|---|---|"]

    def pair(key: str, r: dict, fmt: str) -> str:
        was = old.get((r["variant"], r["batch"]))
        now = fmt.format(r[key])
        return f"{fmt.format(was[key])} -> {now}" if was else now

    for r in new:
        share = pair("share", r, "{:.0%}") if r["share"] is not None else ""
        lines.append(f"| {r['variant']} | {r['batch']} | {pair('step_ms', r, '{:.3f}')} | "
                     f"{pair('per_layer_ms', r, '{:.3f}')} | {pair('per_layer_gbs', r, '{:.0f}')} ({share}) | "
                     f"{pair('fixed_ms', r, '{:.3f}')} | {pair('tok_s_43', r, '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the tree before (may be missing)")
    parser.add_argument("after", type=Path)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args()
    text = table(args.before, args.after)
    print(text)
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
