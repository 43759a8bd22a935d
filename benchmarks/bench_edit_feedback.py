"""Cost of a SEARCH that misses: the whole plan, "did you mean" included, against growing files.

Issue 20: with difflib, a miss against one 20,000-character line took 95 s (60,000: over 300 s), on
every reflection. This measures the same misses now, for long single lines and for many lines, so
the scaling is visible in one run: seconds per MB of file should stay flat. Correctness first: each
miss must be refused with an excerpt (or a plain "no similar lines"), or no timing is printed.

    python benchmarks/bench_edit_feedback.py [--rounds 3] [--out benchmarks/results/edit_feedback_cpu.json]
"""

from __future__ import annotations

import argparse, json, platform, statistics, subprocess, sys, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4.agent.edits import EditError, parse_edits, plan_changes  # noqa: E402


def long_line_file(width: int) -> str:
    line = "DATA = [" + ", ".join(str(i % 997) for i in range(width // 5)) + "]"
    return f"import os\n{line[:width]}\nprint(len(DATA))\n"


def many_lines_file(count: int) -> str:
    return "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(count // 3))


def miss(source: str, search: str) -> tuple[float, str]:
    response = f"f.py\n```python\n<<<<<<< SEARCH\n{search}=======\nx = 1\n>>>>>>> REPLACE\n```\n"
    start = time.perf_counter()
    try:
        plan_changes(parse_edits(response), {"f.py": source}.get)
    except EditError as error:
        return time.perf_counter() - start, error.message
    raise SystemExit("a SEARCH that is not in the file was applied")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cases = [(f"one line of {w:,} chars", long_line_file(w), "import os\nDATA = [0, 1, 2, 3, 4, 5]\n")
             for w in (20_000, 60_000, 200_000)]
    cases += [(f"{n:,} lines", many_lines_file(n), "def function_1234(value):\n    return value * 1243\n")
              for n in (3_000, 30_000, 300_000)]
    rows = []
    for name, source, search in cases:
        seconds, message = miss(source, search)  # warm-up, and the correctness check
        if "SEARCH does not match" not in message:
            raise SystemExit(f"{name}: unexpected message {message[:200]!r}")
        times = [miss(source, search)[0] for _ in range(args.rounds)]
        megabytes = len(source.encode()) / 1e6
        row = {"case": name, "bytes": len(source.encode()), "warmup_s": seconds, "median_s": statistics.median(times),
               "s_per_mb": statistics.median(times) / megabytes, "excerpt": "Did you mean" in message}
        rows.append(row)
        print(f"{name:>28}: {row['median_s'] * 1e3:8.1f} ms  ({row['s_per_mb']:.3f} s/MB, "
              f"excerpt {'yes' if row['excerpt'] else 'no'})")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    result = {"device": platform.processor() or platform.machine(), "python": platform.python_version(),
              "git_sha": sha, "command": " ".join(sys.argv), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
