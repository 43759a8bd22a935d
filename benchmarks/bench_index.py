"""Index benchmark: v4's repo_index against Aider's RepoMap on the same ~3,000-file real tree.

One run measures, side by side and alternating (the machine is noisy): cold ingest (no cache),
Aider's cold map, the one-file update + re-plan (a body edit, and an edit that adds a definition),
a warm new process over the disk cache, tokenizer throughput and peak memory. Each side runs in its
own process so peak RSS is its own. Correctness first: both cold plans must be the same order and
fit the budget, or no timing is printed.

    python benchmarks/bench_index.py [--rounds 2] [--num-files 3000] [--out benchmarks/results/index.json]
"""

from __future__ import annotations

import argparse, json, os, platform, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AIDER_VENV = HERE / ".work" / "aider-venv"


def child(root: Path, budget: int, edits: int) -> dict:
    """Runs in a fresh process: cold plan, then one-file updates, then the tokenizer's throughput."""
    from v4.repo_index import RepoIndex

    started = time.perf_counter()
    index = RepoIndex(root)
    index.refresh()
    refreshed = time.perf_counter()
    plan = index.plan(budget)
    done = time.perf_counter()
    result = {"cold_s": done - started, "refresh_s": refreshed - started, "plan_s": done - refreshed,
              "files": len(plan.segments), "skipped": len(plan.skipped), "total_tokens": plan.total_tokens,
              "order": [s.path for s in plan.segments], "modes": {m: sum(s.mode == m for s in plan.segments)
                                                                  for m in ("full", "outline", "omitted")}}
    targets = [root / s.path for s in plan.segments if s.language == "python"][:: max(1, len(plan.segments) // edits)][:edits]
    for kind, suffix in (("body", "\n# edited\n"), ("definition", "\n\ndef added_by_bench():\n    return 1\n")):
        updates, replans = [], []
        for path in targets:
            path.write_text(path.read_text() + suffix)
            t0 = time.perf_counter()
            index.update([path])
            t1 = time.perf_counter()
            index.plan(budget)
            updates.append(t1 - t0)
            replans.append(time.perf_counter() - t1)
        result[f"update_{kind}_s"] = statistics.median(updates)
        result[f"replan_{kind}_s"] = statistics.median(replans)
    texts = [s.text for s in plan.included]  # ~budget tokens of real segments, full and outline
    t0 = time.perf_counter()
    counted = sum(map(len, index.tokenizer.encode_batch(texts)))
    result["tokenizer_tokens_per_s"] = counted / (time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def warm_child(root: Path, budget: int) -> dict:
    from v4.repo_index import RepoIndex

    started = time.perf_counter()
    plan = RepoIndex(root).plan(budget)
    return {"warm_process_s": time.perf_counter() - started, "total_tokens": plan.total_tokens,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_tree(workdir: Path, num_files: int, round_number: int) -> Path:
    sys.path.insert(0, str(HERE))
    from make_tree import make_tree

    return make_tree(workdir / f"tree-{round_number}", num_files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--num-files", type=int, default=3000)
    parser.add_argument("--budget", type=int, default=1_000_000)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    parser.add_argument("--child", choices=["cold", "warm"])
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    if args.child:
        out = child(args.root, args.budget, args.edits) if args.child == "cold" else warm_child(args.root, args.budget)
        print(json.dumps(out))
        return
    subprocess.run(["bash", str(HERE / "setup_aider.sh"), str(AIDER_VENV)], check=True, stdout=subprocess.DEVNULL)
    me = [sys.executable, str(Path(__file__).resolve())]
    rounds = []
    with tempfile.TemporaryDirectory(dir=HERE / ".work") as workdir:
        for number in range(args.rounds):
            ours_tree = fresh_tree(Path(workdir), args.num_files, 2 * number)
            aider_tree = fresh_tree(Path(workdir), args.num_files, 2 * number + 1)
            ours = run_json([*me, "--child", "cold", "--root", str(ours_tree), "--budget", str(args.budget),
                             "--edits", str(args.edits)])
            warm = run_json([*me, "--child", "warm", "--root", str(ours_tree), "--budget", str(args.budget)])
            aider = run_json([str(AIDER_VENV / "bin" / "python"), str(HERE / "aider_repomap_probe.py"), str(aider_tree)])
            rounds.append({"ours": ours, "warm": warm, "aider": aider})
    orders = {tuple(r["ours"].pop("order")) for r in rounds}
    if len(orders) != 1 or any(r["ours"]["total_tokens"] > args.budget for r in rounds):
        sys.exit("correctness check failed: cold plans differ between rounds or exceed the budget")
    best = lambda side, key: min(r[side][key] for r in rounds)  # noqa: E731
    summary = {
        "cold_ingest_s": best("ours", "cold_s"), "aider_cold_s": best("aider", "elapsed_s"),
        "cold_ratio_aider_over_ours": statistics.median(r["aider"]["elapsed_s"] / r["ours"]["cold_s"] for r in rounds),
        "update_body_ms": 1e3 * best("ours", "update_body_s"), "replan_body_ms": 1e3 * best("ours", "replan_body_s"),
        "update_definition_ms": 1e3 * best("ours", "update_definition_s"),
        "replan_definition_ms": 1e3 * best("ours", "replan_definition_s"),
        "warm_new_process_s": best("warm", "warm_process_s"),
        "context_tokens": rounds[0]["ours"]["total_tokens"],
        "context_tokens_per_cold_s": rounds[0]["ours"]["total_tokens"] / best("ours", "cold_s"),
        "tokenizer_tokens_per_s": max(r["ours"]["tokenizer_tokens_per_s"] for r in rounds),
        "peak_rss_mb": max(r["ours"]["peak_rss_mb"] for r in rounds), "aider_peak_rss_mb": max(r["aider"]["peak_rss_mb"] for r in rounds),
    }
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"summary": summary, "rounds": rounds, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
              "python": platform.python_version()}, "git_sha": sha, "command": " ".join(sys.argv),
              "num_files": args.num_files, "budget": args.budget}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(" ".join(f"{k}={v:.4g}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
