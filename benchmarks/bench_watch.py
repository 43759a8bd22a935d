"""Watch-mode benchmark: from a file save to the index updated, and to the context re-prefilled, for a
one-file change in a large repository (3,000 real Python files, `make_tree.py`), with the embedded
engine on a random `small` checkpoint and the prefix-state store, as `v4 watch` runs them (real file events).

Cases: a file inside the context near its end (only its segment and what follows are recomputed), and
a file the budget leaves out (the index moves, the prompt does not). A warm-up save is timed apart.
Correctness first: the re-prefilled state's logits must equal a cold prefill of the same prompt.

    python benchmarks/bench_watch.py [--budget 16384] [--repeats 3] [--out benchmarks/results/watch_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4 import model  # noqa: E402
from v4.agent.context import RepositoryContext  # noqa: E402
from v4.agent.backends import EmbeddedBackend  # noqa: E402
from v4.agent.chat_format import chat_format_for  # noqa: E402
from v4.agent.session import Session  # noqa: E402
from v4.agent.warm import ContextWarmer  # noqa: E402
from v4.agent.watch.watcher import Watcher  # noqa: E402
from v4.agent.watch.loop import Changed, Warmed, WatchLoop  # noqa: E402
from benchmarks.make_tree import make_tree  # noqa: E402
from v4.model.random_checkpoint import init_checkpoint  # noqa: E402
from v4.model.prefix_store import PrefixStore  # noqa: E402


def save_and_wait(root: Path, path: str, watcher: Watcher, loop: WatchLoop, seen: list, n: int) -> dict:
    """Append a line to `path` (a real save), drive the loop until its re-prefill is reported."""
    seen.clear()
    saved = time.monotonic()
    with open(root / path, "a") as handle:
        handle.write(f"\n# watch benchmark save {n}\n")  # a body edit: the names stay, so does the order
    while not any(isinstance(e, Warmed) for e, _ in seen):
        batch = watcher.next_batch(1.0)
        if batch is not None:
            loop.apply(batch)
    changed = next((e, t) for e, t in seen if isinstance(e, Changed))
    warmed = next((e, t) for e, t in seen if isinstance(e, Warmed))
    stats = warmed[0].stats
    return {"path": path, "paths": list(changed[0].paths), "save_to_index_s": round(changed[1] - saved, 4),
            "index_s": round(changed[0].index_s, 4), "save_to_prefill_s": round(warmed[1] - saved, 4),
            "computed_tokens": stats.computed_tokens, "reused_tokens": stats.reused_tokens,
            "tokens": stats.tokens, "prefill_s": round(stats.seconds, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=16_384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "watch_cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = make_tree(work / "tree", args.files)
        checkpoint = init_checkpoint(work / "small", "small", seed=0,
                                     tokenizer_json=REPO / "repo_index" / "data" / "tokenizer.json")
        engine = model.load(checkpoint, device="cpu")
        backend = EmbeddedBackend(engine, chat_format_for(checkpoint), args.budget + 4096, PrefixStore(work / "engram"))
        started = time.perf_counter()
        context = RepositoryContext(root, checkpoint)
        context.scan()
        view = context.plan(args.budget)
        index_cold_s = time.perf_counter() - started
        session = Session(root, backend, context.repository_text())
        seen: list = []
        lock = threading.Lock()

        def emit(event: object) -> None:
            with lock:
                seen.append((event, time.monotonic()))

        warmer = ContextWarmer(session, backend)
        loop = WatchLoop(context=context, session=session, warmer=warmer, budget=args.budget, emit=emit)
        warmer.on_report = loop.on_warmed
        started = time.perf_counter()
        warmer.refresh(session.system)
        warmer.idle()
        prefill_cold_s = time.perf_counter() - started
        included = [f.path for f in view.files if f.mode == "full"]
        omitted = next(f.path for f in view.files if f.mode == "omitted")
        cases = {"in_context_near_end": included[-1], "outside_context": omitted}
        with Watcher(root) as watcher:
            warmup = save_and_wait(root, included[-2], watcher, loop, seen, 0)
            runs = {name: [save_and_wait(root, path, watcher, loop, seen, n + 1) for n in range(args.repeats)]
                    for name, path in cases.items()}
        warmer.close()
        ids, boundaries = backend.encode_with_boundaries([session.system], add_generation_prompt=False)
        warm_logits = backend.runner._marks[-1].logits  # the logits kept with the state's last mark
        _, cold_logits, _ = PrefixStore(work / "check").prefill(engine, ids, boundaries, len(ids) + 8)
        check = ((warm_logits - cold_logits).abs().max() / cold_logits.abs().max()).item()
        if backend.runner.held_ids != ids or check > 1e-4:
            sys.exit(f"check failed: re-prefilled state differs from a cold prefill (rel {check:.2e})")
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        report = {
            "device": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "torch": torch.__version__,
            "git_sha": sha.strip(), "command": " ".join(sys.argv), "preset": "small", "dtype": "float32",
            "tree_files": args.files, "budget": args.budget, "context_tokens": view.total_tokens,
            "full_files_in_context": len(included), "index_cold_s": round(index_cold_s, 2),
            "prefill_cold_s": round(prefill_cold_s, 2), "check_rel_logits_diff": check, "warmup": warmup,
            "runs": runs,
            "median": {name: {k: statistics.median(r[k] for r in rs)
                              for k in ("save_to_index_s", "save_to_prefill_s", "computed_tokens")}
                       for name, rs in runs.items()},
        }
    text = json.dumps(report, indent=1)
    args.out.write_text(text + "\n")
    near, out = report["median"]["in_context_near_end"], report["median"]["outside_context"]
    print(text)
    print(f"save -> index {near['save_to_index_s'] * 1000:.0f} ms, -> re-prefilled {near['save_to_prefill_s']:.2f} s "
          f"({near['computed_tokens']:.0f} of {view.total_tokens} tokens) in context near the end; outside the "
          f"context: index {out['save_to_index_s'] * 1000:.0f} ms, prefill {out['save_to_prefill_s']:.2f} s")


if __name__ == "__main__":
    main()
