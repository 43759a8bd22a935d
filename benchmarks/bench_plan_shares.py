"""Plan shares: how the outline cap (budget.OUTLINE_SHARE) splits an over-budget plan.

For each share, on a generated tree several times the budget and on a real tree (make_tree.py's
sympy + torch sources at the default 1M budget), reports files and tokens in full / outline /
omitted: tokens as shares of the budget used, bytes as shares of the repository, and the PageRank
mass each mode covers. Correctness first: every plan must fit its budget, keep the dependency
order of the all-full plan, and keep outlines within the share, or nothing is reported.

    python benchmarks/bench_plan_shares.py [--shares 0.1 0.2 0.3 0.4] [--out benchmarks/results/plan_shares.json]
"""

from __future__ import annotations

import argparse, json, os, platform, random, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_tree import FIXED_DATE, GIT, make_tree  # noqa: E402

MODES = ("full", "outline", "omitted")


def generated_tree(dest: Path, num_files: int = 400, seed: int = 0) -> Path:
    """Python modules importing lower-numbered ones (a few hubs), 2-20 helpers of 3-25 lines; committed."""
    rng = random.Random(seed)
    for i in range(num_files):
        uses = sorted({min(int(rng.paretovariate(1.2)) - 1, i - 1) for _ in range(3)}) if i else []
        uses = [u for u in uses if u >= 0]
        head = "".join(f"from pkg.m{u} import m{u}_api\n" for u in uses)
        calls = "".join(f"    m{u}_api()\n" for u in uses)
        helpers = "".join(f"\n\ndef helper_{i}_{k}(first: int, second: str = '') -> int:\n"
                          + "".join(f"    value_{j} = {j} * {k}  # line {j}\n" for j in range(rng.randint(3, 25)))
                          + "    return 0\n" for k in range(rng.randint(2, 20)))
        text = (f"{head}\n\ndef m{i}_api(first: int = 0) -> int:\n{calls}    return 0\n{helpers}\n\n"
                f"class Thing{i}:\n    def method(self) -> None:\n        pass\n")
        (dest / "pkg").mkdir(parents=True, exist_ok=True)
        (dest / "pkg" / f"m{i}.py").write_text(text)
    (dest / "pkg" / "__init__.py").write_text("")
    env = {**os.environ, "GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "--no-verify", "-m", "generated"]):
        subprocess.run([*GIT, "-C", str(dest), *args], check=True, env=env)
    return dest


def measure(root: Path, budget: int | None, shares: list[float], over: float = 5.0) -> dict:
    """Plans `root` at each share; `budget` None means the all-full size divided by `over`."""
    from v4.repo_index import RepoIndex
    from v4.repo_index.budget import rank_files

    index = RepoIndex(root)
    index.refresh()
    if budget is None:
        budget = int(index.plan(10**12).total_tokens / over)
    reference = None
    ranks = rank_files(index._facts())  # the ranking plan() uses; read here only to report rank mass
    num_bytes = {p: e.num_bytes for p, e in index._entries.items()}
    rows = []
    for share in shares:
        started = time.perf_counter()
        plan = index.plan(budget, outline_share=share)
        elapsed = time.perf_counter() - started
        order = [s.path for s in plan.segments]
        reference = reference or order
        by_mode = {m: [s for s in plan.segments if s.mode == m] for m in MODES}
        used = {m: sum(s.num_tokens for s in by_mode[m]) for m in MODES}
        assert plan.total_tokens <= budget, (share, plan.total_tokens, budget)
        assert order == reference, "modes changed the context order"
        assert used["outline"] <= budget * share, (share, used["outline"])
        total_bytes, total_rank = sum(num_bytes[p] for p in order), sum(ranks.get(p, 0.0) for p in order)
        rows.append({
            "share": share, "plan_s": round(elapsed, 3), "used_tokens": plan.total_tokens,
            "files": {m: len(by_mode[m]) for m in MODES},
            "used_token_share": {m: round(used[m] / max(plan.total_tokens, 1), 4) for m in ("full", "outline")},
            "repo_byte_share": {m: round(sum(num_bytes[s.path] for s in by_mode[m]) / total_bytes, 4) for m in MODES},
            "rank_mass": {m: round(sum(ranks.get(s.path, 0.0) for s in by_mode[m]) / total_rank, 4) for m in MODES},
        })
    return {"root_files": len(reference or []), "repo_mb": round(sum(num_bytes.values()) / 1e6, 1),
            "budget": budget, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    ap.add_argument("--budget", type=int, default=1_000_000, help="budget on the real tree")
    ap.add_argument("--num-files", type=int, default=3000, help="files of the real tree (make_tree.py)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {"generated": measure(generated_tree(Path(tmp) / "gen"), None, a.shares),
                   "real": measure(make_tree(Path(tmp) / "real", a.num_files), a.budget, a.shares)}
    sha = subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    from v4.repo_index.budget import OUTLINE_SHARE

    out = {"machine": platform.machine(), "python": platform.python_version(), "git_sha": sha,
           "command": " ".join(sys.argv), "chosen_share": OUTLINE_SHARE, **results}
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    for name, res in results.items():
        for r in res["rows"]:
            f, t, b = r["files"], r["used_token_share"], r["repo_byte_share"]
            print(f"{name} budget={res['budget']} share={r['share']}: files {f['full']}/{f['outline']}/{f['omitted']} "
                  f"used full {t['full']:.0%} outline {t['outline']:.0%}; repo bytes {b['full']:.1%}/{b['outline']:.1%}"
                  f"/{b['omitted']:.1%}; rank mass {r['rank_mass']['full']:.1%}/{r['rank_mass']['outline']:.1%}")


if __name__ == "__main__":
    main()
