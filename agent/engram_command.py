"""`v4 prefill` (put a repository's prefilled state in the Engram store) and `v4 engram
stats|clear|verify` (look after the store)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from .backend_options import add_backend_arguments

    prefill = commands.add_parser("prefill", help="prefill a repository's context into the Engram store",
                                  description="Prefill the agent's prompt for a repository (the system message with "
                                              "the whole context plan) and keep the state for the next session.")
    prefill.add_argument("path", nargs="?", default=".", type=Path, help="repository (default: .)")
    add_backend_arguments(prefill)
    prefill.add_argument("--json", action="store_true")

    engram = commands.add_parser("engram", help="the Engram store of prefilled states: stats, clear, verify")
    engram.add_argument("action", choices=["stats", "clear", "verify"])
    engram.add_argument("--engram-dir", type=Path, default=None, help="store directory (default: $V4_ENGRAM_DIR "
                        "or the user cache dir)")
    engram.add_argument("--json", action="store_true")


def store_from_args(args: argparse.Namespace) -> object:
    """The store `--engram-dir` names (StoreError for a file, a foreign directory or an old store)."""
    from v4.model.engram_store import EngramStore, default_store_dir

    return EngramStore(args.engram_dir or default_store_dir(), warn=lambda m: print(m, file=sys.stderr))


def run_engram(args: argparse.Namespace) -> int:
    from v4.model.engram_store import StoreError

    try:
        store = store_from_args(args)
        if args.action == "stats":
            result: object = store.stats()
        elif args.action == "clear":
            result = {"deleted_files": store.clear()}
        else:
            bad = store.verify()
            result = {"bad_files_deleted": bad, "ok": not bad}
    except StoreError as exc:  # refused before anything was read or deleted
        print(f"v4 engram: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in (result.items() if isinstance(result, dict) else []):
            print(f"{key:<20} {value if not isinstance(value, int) else f'{value:,}'}")
    return 0


def run_prefill(args: argparse.Namespace) -> int:
    from v4.repo_index import DiscoveryConfig, IndexConfig, RepoIndex
    from v4.repo_index.tokens import load_tokenizer

    from .backend_options import backend_from_args
    from .backends import BackendError, EmbeddedBackend
    from .session import repository_text, system_message

    if args.model is None or args.endpoint or args.replay:
        print("v4 prefill: needs --model DIR (the embedded engine); endpoints keep their own caches", file=sys.stderr)
        return 2
    from .workspace import repository_root

    if not args.path.is_dir():
        print(f"v4 prefill: not a directory: {args.path.resolve()}", file=sys.stderr)
        return 2
    root = repository_root(args.path)  # the same root a session from any subdirectory uses
    try:
        chosen = backend_from_args(args)
    except BackendError as exc:
        print(f"v4 prefill: {exc}", file=sys.stderr)
        return 1
    backend = chosen.backend
    assert isinstance(backend, EmbeddedBackend)
    if backend.store is None:
        print("v4 prefill: the Engram store is off (--no-engram)", file=sys.stderr)
        return 2
    config = IndexConfig(discovery=DiscoveryConfig(include_secrets=args.include_secrets))  # as the session will
    plan = RepoIndex(root, tokenizer=load_tokenizer(chosen.tokenizer_dir), config=config).plan(chosen.budget)
    ids, boundaries = backend.encode_with_boundaries([system_message(repository_text(plan.segments))],
                                                     add_generation_prompt=False)
    from v4.model.engram_store import StoreError

    try:
        _, _, stats = backend.store.prefill(backend.engine, ids, boundaries, backend.context_length)
    except StoreError as exc:  # raised before the prefill is computed
        print(f"v4 prefill: {exc}", file=sys.stderr)
        return 2
    document = {k: v for k, v in stats.to_json().items() if k != "snapshots_written"}
    document["store_bytes"] = backend.store.stats()["bytes"]
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(f"prefilled {stats.tokens:,} tokens: {stats.reused_tokens:,} from the Engram store in "
              f"{stats.load_s:.2f} s, {stats.computed_tokens:,} computed in {stats.prefill_s:.2f} s; "
              f"store {document['store_bytes']:,} bytes")
    return 0
