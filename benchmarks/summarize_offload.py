"""The markdown table of bench_offload_budgets.py's JSON (issue 28's budgets), printed for the README.

    python benchmarks/summarize_offload.py benchmarks/results/offload_budgets_h100.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLASH_LAYERS, TOP_K = 43, 6

MODES = (("b1_cache", "B=1, cache only"), ("b1_prefetch", "B=1, + prefetch"),
         ("b1_cpu_policy", "B=1, + prefetch + CPU when cheaper"),
         ("b1_cpu_forced", "B=1, CPU taken as cheaper for every miss"),
         ("b8_cache", "B=8, cache only"), ("b8_prefetch", "B=8, + prefetch"))


def cell(run: dict | None, h2d_gbs: float) -> str:
    """tok/s at 43 layers, then in brackets: the hit rate, GiB copied per token and the tok/s those
    copies alone would allow at the pinned ceiling (the PCIe bound of that run)."""
    if not run:
        return "-"
    graph = "" if run.get("graph") else ", eager"
    copied = run["copied_gib_per_token_43_layers"]
    bound = f"{h2d_gbs / (copied * 2**30 / 1e9):.0f}" if copied else "inf"
    return (f"**{run['tokens_per_s_43_layers']:.1f}** (hit {run['hit_rate']:.0%}, {copied:.2f} GiB/tok, "
            f"PCIe bound {bound}{graph})")


def table(data: dict) -> str:
    budgets = sorted((k for k in data if k.startswith("budget_")), key=lambda k: float(k.split("_")[1]))
    head = "| 43 layers | " + " | ".join(f"{data[b]['budget_gib']:.0f} GiB: {data[b]['slots']}/256 per layer"
                                          for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    h2d = data["ceilings"]["pinned_h2d_gbs"]
    for key, label in MODES:
        lines.append(f"| {label} | " + " | ".join(cell(data[b].get(key), h2d) if "error" not in data[b]
                                                   else "out of GPU memory under the cap" for b in budgets) + " |")
    lines.append("| prefill tok/s | " + " | ".join(
        f"{data[b]['prefill']['tokens_per_s_43_layers']:.0f}" if "prefill" in data[b] else "-" for b in budgets) + " |")
    cpu_gbs, expert = data["ceilings"]["cpu_read_gbs"] * 1e9, data["expert_costs"]["expert_mib"] * 2**20
    per_token = FLASH_LAYERS * TOP_K * expert  # routed-expert bytes a token reads at 43 layers
    misses = [data[b]["b1_cache"]["hit_rate"] if "b1_cache" in data[b] else None for b in budgets]
    lines.append("| bound: the B=1 cache-only misses on the CPU at memory speed | " + " | ".join(
        "-" if hit is None else f"{cpu_gbs / (per_token * (1 - hit)):.1f}" for hit in misses) + " |")
    lines.append("| bound: every routed expert on the CPU at memory speed | " + " | ".join(
        f"{cpu_gbs / per_token:.1f}" for _ in budgets) + " |")
    resident = data.get("resident", {})
    if resident:
        lines.append("")
        lines.append(f"Every expert resident (same layers, 43-layer extrapolation): B=1 "
                     f"{resident['b1']['tokens_per_s_43_layers']:.1f} tok/s, B=8 "
                     f"{resident['b8']['tokens_per_s_43_layers']:.1f} tok/s.")
    ceilings, costs = data.get("ceilings", {}), data.get("expert_costs", {})
    if ceilings and costs:
        lines.append(f"Pinned H2D {ceilings['pinned_h2d_gbs']:.1f} GB/s; host read {ceilings['cpu_read_gbs']:.1f} GB/s "
                     f"({ceilings['cpu_threads']} threads). One FP4 expert ({costs['expert_mib']:.2f} MiB): copy "
                     f"{costs['copy_ms']:.2f} ms, CPU {costs['cpu_fixed_ms']:.2f} ms + {costs['cpu_token_ms']:.2f} ms/token.")
    return "\n".join(lines)


def main() -> None:
    print(table(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
