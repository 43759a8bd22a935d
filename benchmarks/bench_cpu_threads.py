"""CPU threads for the embedded engine: prefill time of a tiny random checkpoint per torch thread count,
on an idle machine and with every core busy (as when tests, an editor or an indexer run beside v4).

    python benchmarks/bench_cpu_threads.py --tokens 641 --out benchmarks/results/cpu_threads.json

Each setting runs in its own process (torch's thread pool is per process), warm-up timed apart, median of
`--repeats`. The logits are checked equal across thread counts before any time is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time, torch

from v4 import model
engine = model.load({path!r}, device="cpu", cpu_threads={threads})
ids = list(range(5, 5 + {tokens}))
started = time.perf_counter(); logits = engine.prefill(ids, engine.new_state()); warm = time.perf_counter() - started
times = []
for _ in range({repeats}):
    started = time.perf_counter(); logits = engine.prefill(ids, engine.new_state()); times.append(time.perf_counter() - started)
print(json.dumps({{"threads": torch.get_num_threads(), "warmup_s": warm, "times_s": times,
                  "logits_head": logits[:8].tolist()}}))
"""


def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def run(path: Path, threads: int, tokens: int, repeats: int) -> dict:
    code = CHILD.format(threads=threads, path=str(path), tokens=tokens, repeats=repeats)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=641)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from v4.model.random_checkpoint import init_checkpoint

    cores = os.cpu_count() or 1
    counts = sorted({1, max(1, cores // 2), cores})
    rows = []
    with tempfile.TemporaryDirectory() as work:
        path = init_checkpoint(Path(work) / "tiny", "tiny", seed=0)
        for load in ("idle", "all cores busy"):
            workers = []
            if load != "idle":
                stop_at = time.time() + 600
                workers = [multiprocessing.Process(target=_busy, args=(stop_at,), daemon=True) for _ in range(cores)]
                for worker in workers:
                    worker.start()
            try:
                results = {n: run(path, n, args.tokens, args.repeats) for n in counts}
            finally:
                for worker in workers:
                    worker.terminate()
            heads = [r["logits_head"] for r in results.values()]
            assert all(max(abs(a - b) for a, b in zip(h, heads[0])) < 1e-4 for h in heads), "logits differ"
            for n, result in results.items():
                rows.append({"load": load, "threads": n, "median_s": statistics.median(result["times_s"]),
                             "max_s": max(result["times_s"]), "warmup_s": result["warmup_s"]})
                print(f"{load:>15}  threads {n:>2}: prefill {args.tokens} tokens median "
                      f"{rows[-1]['median_s']:.3f} s (max {rows[-1]['max_s']:.3f} s, warm-up {result['warmup_s']:.3f} s)")
    if args.out:
        document = {"cores": cores, "tokens": args.tokens, "repeats": args.repeats, "rows": rows,
                    "torch": __import__("torch").__version__, "command": " ".join(sys.argv),
                    "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                          cwd=ROOT).stdout.strip()}
        args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
