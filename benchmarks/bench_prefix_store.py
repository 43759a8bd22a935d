"""Prefix-state store benchmark: time to first token of a repository prompt, cold (prefill everything) vs
warm (resume from the store, in a new store object: the disk tier, as a new session would), and after
editing one file near the end of the order (only the tail is recomputed). Also the store's bytes per
token against the analytic V4 state size.

The prompt is real source text (sympy's files from this venv, each under a `==> path <==` header, as
repo_index renders segments), tokenized with the checkpoint's tokenizer and cut at each target length;
snapshots are taken at the segment headers. Correctness first: the warm logits must equal the cold ones
and the edited prompt's logits a cold prefill of it, or no timing is printed.

    python benchmarks/bench_prefix_store.py [--preset small] [--lengths 16384,65536,131072] [--device cpu]
"""

from __future__ import annotations

import argparse
import bisect
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from v4 import model  # noqa: E402
from v4.model.checkpoint import state_bytes_per_token  # noqa: E402
from v4.model.random_checkpoint import init_checkpoint  # noqa: E402
from v4.model.prefix_store import PrefixStore  # noqa: E402


def repository_prompt(tokenizer: object, length: int) -> tuple[list[int], list[int]]:
    """`length` token ids of real source files with segment headers, and the headers' token positions."""
    import sympy

    root = Path(sympy.__file__).parent
    parts, total = [], 0
    for file in sorted(root.rglob("*.py")):
        text = f"==> {file.relative_to(root.parent)} <==\n{file.read_text('utf-8', 'replace')}\n"
        parts.append(text)
        total += len(text) // 3
        if total > length * 1.3:
            break
    text = "".join(parts)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ids = encoding.ids[:length]
    starts = [start for start, _ in encoding.offsets]
    marks = [m.start() for m in re.finditer(r"(?m)^==> ", text)]
    boundaries = sorted({bisect.bisect_left(starts, m) for m in marks} - {0})
    return ids, [b for b in boundaries if b < length]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def measure(engine: object, ids: list[int], boundaries: list[int], work: Path, check_edit: bool) -> dict:
    directory = work / f"store-{len(ids)}"
    started = time.perf_counter()
    _, cold_logits, cold = PrefixStore(directory).prefill(engine, ids, boundaries, len(ids) + 64)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    _, warm_logits, warm = PrefixStore(directory).prefill(engine, ids, boundaries, len(ids) + 64)
    warm_s = time.perf_counter() - started
    late = [b for b in boundaries if b <= len(ids) * 0.95]
    edit_at = min((late[-1] if late else int(len(ids) * 0.9)) + 5, len(ids) - 1)  # inside a late segment
    edited = list(ids)
    edited[edit_at] = (edited[edit_at] + 1) % 32000
    started = time.perf_counter()
    _, edit_logits, after_edit = PrefixStore(directory).prefill(engine, edited, boundaries, len(ids) + 64)
    edit_s = time.perf_counter() - started
    # the edited prompt's cold prefill costs as much again: checked on the shorter prompts only
    reference = (PrefixStore(work / f"ref-{len(ids)}").prefill(engine, edited, boundaries, len(ids) + 64)[1]
                 if check_edit else None)
    store_bytes = sum(p.stat().st_size for p in directory.rglob("*.safetensors"))
    return {
        "tokens": len(ids), "segments": len(boundaries) + 1,
        "checks": {"warm_vs_cold": relative(warm_logits, cold_logits)} |
                  ({"edited_vs_cold_prefill_of_it": relative(edit_logits, reference)} if check_edit else {}),
        "cold_ttft_s": round(cold_s, 3), "warm_ttft_s": round(warm_s, 4),
        "warm_speedup": round(cold_s / warm_s, 1),
        "warm_load_s": round(warm.load_s, 4), "reused_warm": warm.reused_tokens,
        "edit": {"at_token": edit_at, "reused_tokens": after_edit.reused_tokens,
                 "computed_tokens": after_edit.computed_tokens, "ttft_s": round(edit_s, 3),
                 "speedup_vs_cold": round(cold_s / edit_s, 1)},
        "store_bytes": store_bytes, "store_bytes_per_token": round(store_bytes / len(ids), 1),
        "cold_stats": cold.to_json(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", default="16384,65536,131072")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--check-edit-upto", type=int, default=16384,
                        help="also prefill the edited prompt cold, to check it, up to this length")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = init_checkpoint(work / args.preset, args.preset, seed=0,
                               tokenizer_json=REPO / "repo_index" / "data" / "tokenizer.json")
        dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
        engine = model.load(path, device=args.device, dtype=dtype)
        config = engine.model.config
        element = torch.finfo(engine.dtype).bits // 8
        analytic = state_bytes_per_token(config, fp8=False) * element / 2  # the bf16 figure, at our dtype
        report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else
                  f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
                  "preset": args.preset, "dtype": dtype,
                  "analytic_state_bytes_per_token": analytic, "runs": []}
        for length in (int(n) for n in args.lengths.split(",")):
            ids, boundaries = repository_prompt(engine.tokenizer, length)
            run = measure(engine, ids, boundaries, work, length <= args.check_edit_upto)
            print(json.dumps(run), flush=True)
            report["runs"].append(run)
        checks_pass = all(max(r["checks"].values()) < 1e-4 for r in report["runs"])
        report["checks_pass"] = checks_pass
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if checks_pass else 1)


if __name__ == "__main__":
    main()
