"""[workstation] the host's share of an offloaded decode step: what `ExpertCache.routed` costs in Python
per MoE call (reading the routing, counting use, choosing slots and victims, issuing copies), with
a stand-in kernel and copies between host tensors, so only the bookkeeping is timed. In a graphed
offloaded decode this runs between two graph pieces at every layer while the GPU waits: at 43 layers,
100 us per call is 4.3 ms per token.

Each tree given (a repository root: this one, or `git archive REV` of another) is timed in its own
subprocess, the trees alternating for `--rounds`, so a comparison is side by side on one machine.

    python benchmarks/bench_offload_host.py --trees . benchmarks/.work/base --out host.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

EXPERTS, TOP_K = 256, 6
SLOTS = (21, 65, 118)  # V4-Flash's experts per layer at 24/48/80 GiB (offload_plan.py)

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from v4.model.offload import ExpertCache
torch.set_num_threads(1)
out = {}
for slots in SLOTS:
    for batch in (1, 8):
        if batch * TOP_K > slots:
            continue
        cache = ExpertCache((torch.zeros(EXPERTS, 2, 2),), slots, "cpu")
        generator = torch.Generator().manual_seed(slots + batch)
        calls = [torch.stack([torch.randperm(EXPERTS, generator=generator)[:TOP_K] for _ in range(batch)])
                 for _ in range(CALLS)]
        x, weights = torch.zeros(batch, 4), torch.ones(batch, TOP_K)
        run = lambda x, w, slot_ids, held: x
        for ids in calls[: CALLS // 4]:  # fill the cache first
            cache.routed(x, weights, ids, run, lambda: x)
        start = time.perf_counter()
        for ids in calls[CALLS // 4 :]:
            cache.routed(x, weights, ids, run, lambda: x)
        out[f"slots{slots}_b{batch}"] = (time.perf_counter() - start) / (CALLS - CALLS // 4) * 1e6
print(json.dumps(out))
"""


def time_tree(root: Path, calls: int) -> dict[str, float]:
    """Microseconds per call for each (slots, batch), measured in a fresh interpreter on `root`'s code."""
    prelude = f"EXPERTS, TOP_K, SLOTS, CALLS = {EXPERTS}, {TOP_K}, {SLOTS}, {calls}\n"
    done = subprocess.run([sys.executable, "-c", prelude + CHILD, str(root.resolve())], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path(".")])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {str(tree): [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            runs[str(tree)].append(time_tree(tree, args.calls))
    result = {tree: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
              for tree, rounds in runs.items()}
    keys = list(next(iter(result.values())))
    print("| us per MoE call | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for tree, row in result.items():
        print(f"| {tree} | " + " | ".join(f"{row[k]:.0f}" for k in keys) + " |")
    if args.out:
        args.out.write_text(json.dumps({"rounds": args.rounds, "calls": args.calls, "median_us": result,
                                        "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
