"""Resumed sessions: what a continued conversation costs on the embedded engine, against a cold prefill.

A session on a real repository (a clone of this one by default) plans its context, prefills it and
answers `--turns` questions (short answers of random weights: the tokens are what matter), saving the
conversation under `.v4/sessions/` and its state in the prefix-state store after each turn, as `v4`
does. A new backend (a new runner and a new store object: the disk tier, as a new process) then
resumes the saved session, and a third one with no store prefills the same conversation cold.
Correctness first: the resumed prompt must equal the saved one and the resumed logits a cold
prefill's, or nothing is reported.

    python benchmarks/bench_resume.py [--preset tiny] [--budget 8192] [--turns 3] [--repo PATH]
        [--out benchmarks/results/resume_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ("What does the session module do?", "Where are edits applied?", "How is the context planned?",
             "What does the prefix-state store keep?", "How are tools approved?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--budget", type=int, default=8192, help="repository tokens in the context")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--repo", type=Path, default=REPO, help="the repository to clone and plan")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from v4 import model
    from v4.agent.backends import EmbeddedBackend
    from v4.agent.bootstrap import prefill_session
    from v4.agent.chat_format import chat_format_for
    from v4.agent.context import RepositoryContext
    from v4.agent.session import Session, SessionOptions
    from v4.agent.sessions import SessionRecorder, SessionStore
    from v4.model.prefix_store import PrefixStore
    from v4.model.random_checkpoint import init_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        clone = scratch_dir / "repo"
        subprocess.run(["git", "clone", "-q", str(args.repo), str(clone)], check=True)
        checkpoint = init_checkpoint(scratch_dir / "ckpt", args.preset, seed=0, tokenizer_json=REPO / "repo_index" / "data" / "tokenizer.json")
        engine = model.load(checkpoint, device=args.device)
        context_length = args.budget + 4 * 4096
        chat_format = chat_format_for(checkpoint)
        context = RepositoryContext(clone, checkpoint)
        context.scan()
        view = context.plan(args.budget)

        def new_session(backend: EmbeddedBackend) -> Session:
            session = Session(clone, backend, context.repository_text(),
                              SessionOptions(max_answer_tokens=args.answer_tokens))
            store = SessionStore(clone)
            session.recorder = SessionRecorder(store, store.create())
            return session

        store_dir = scratch_dir / "store"
        first_backend = EmbeddedBackend(engine, chat_format, context_length, PrefixStore(store_dir))
        first = new_session(first_backend)
        started = time.perf_counter()
        prefill_session(first_backend, first)
        first_prefill_s = time.perf_counter() - started
        turn_s = []
        for question in QUESTIONS[:args.turns]:
            started = time.perf_counter()
            result = first.run(question, answer_only=True)
            turn_s.append(time.perf_counter() - started)
            if result.error or result.session_error:
                raise SystemExit(f"turn failed: {result.error or result.session_error}")
        saved_ids, _ = first_backend.conversation_ids(first.messages())

        backend = EmbeddedBackend(engine, chat_format, context_length, PrefixStore(store_dir))
        resumed = new_session(backend)
        resumed.resume(SessionStore(clone).latest())
        if resumed.messages() != first.messages():
            raise SystemExit("the resumed prompt is not the saved one")
        started = time.perf_counter()
        stats = prefill_session(backend, resumed)
        resume_s = time.perf_counter() - started
        resumed_logits, _ = backend.runner.prefill(saved_ids)

        cold_backend = EmbeddedBackend(engine, chat_format, context_length, None)
        started = time.perf_counter()
        cold_logits, _ = cold_backend.runner.prefill(saved_ids)
        cold_s = time.perf_counter() - started
        difference = float((resumed_logits - cold_logits).abs().max())
        if difference > 1e-4:
            raise SystemExit(f"resumed logits differ from a cold prefill's by {difference}")

        report = {
            "device": f"{platform.machine()} {args.device}, {torch.get_num_threads()} threads",
            "preset": args.preset, "repository": args.repo.name, "budget": args.budget,
            "repository_tokens_in_context": view.total_tokens, "turns": args.turns,
            "conversation_tokens": len(saved_ids),
            "first_session": {"prefill_s": round(first_prefill_s, 3), "turn_s": [round(t, 3) for t in turn_s]},
            "resume": {"reused_tokens": stats.reused_tokens, "computed_tokens": stats.computed_tokens,
                       "load_s": round(stats.load_s, 4), "seconds": round(resume_s, 4)},
            "cold_prefill_s": round(cold_s, 3),
            "speedup": round(cold_s / resume_s, 1),
            "max_abs_logit_difference": difference,
        }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
