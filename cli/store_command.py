"""`v4 prefill` (put a repository's prefilled state in the prefix-state store) and `v4 store
stats|clear|verify` (look after the store; `v4 engram` is its old name).

Exit codes: 0 done, 1 the model or backend could not be opened (prefill) or `verify` found bad entries
(and deleted them), 2 usage error or a store refused before anything was read, computed or deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backend_args import (add_agent_arguments, add_backend_arguments, add_store_argument, agent_options,
                           backend_options, print_warning, store_dir)
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .progress import shard_progress


def build_prefill(parser: argparse.ArgumentParser) -> None:
    """`v4 prefill [PATH] --model DIR`."""
    parser.add_argument("path", nargs="?", default=".", type=Path, help="repository (default: .)")
    add_backend_arguments(parser)
    add_agent_arguments(parser)  # thinking and tools are part of the prompt: prefill what sessions will send
    parser.add_argument("--json", action="store_true", help="print the prefill's statistics as JSON")


def build_store(parser: argparse.ArgumentParser) -> None:
    """`v4 store stats|clear|verify`."""
    parser.add_argument("action", choices=["stats", "clear", "verify"],
                        help="stats: sizes; clear: delete every entry; verify: check every file, delete bad ones")
    add_store_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_store(args: argparse.Namespace) -> int:
    from v4.model.prefix_store import PrefixStore, StoreError, default_store_dir

    try:  # not `prepare`d: looking at an absent store must not create it
        store = PrefixStore(store_dir(args) or default_store_dir(), warn=print_warning)
        if args.action == "stats":
            stats = store.stats()
            document: dict[str, object] = stats
            lines = [f"{key:<10} {value:,}" if isinstance(value, int) else f"{key:<10} {value}"
                     for key, value in stats.items()]
        elif args.action == "clear":
            deleted = store.clear()
            document = {"deleted_files": deleted}
            lines = [f"deleted {deleted:,} file(s) from {store.directory}"]
        else:
            verified = store.verify()
            document = verified.to_json()
            lines = [f"checked {verified.checked:,} file(s), {verified.bytes:,} bytes, in {store.directory}: "
                     + ("all good" if not verified.bad else
                        f"{len(verified.bad)} bad, deleted (they are recomputed when next needed):")]
            lines += [f"  {why}" for why in verified.bad]
    except StoreError as exc:  # refused before anything was read or deleted
        print(f"v4 {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(document, indent=1) if args.json else "\n".join(lines))
    return EXIT_FAILED if document.get("bad_files_deleted") else EXIT_OK


def run_prefill(args: argparse.Namespace) -> int:
    """Prefill exactly the system message a session in this repository would send (`open_session`),
    so the next session resumes from the store."""
    from v4.agent.backends import BackendError, EmbeddedBackend
    from v4.agent.bootstrap import open_backend, open_session
    from v4.agent.context import ContextError, RepositoryContext
    from v4.agent.session import SessionOptions
    from v4.agent.workspace import WorkspaceError, repository_root
    from v4.model.prefix_store import StoreError

    options = backend_options(args)
    if options.model is None or options.endpoint or options.replay:
        return _usage("needs --model DIR (the embedded engine); endpoints keep their own caches")
    if not options.use_store:
        return _usage("the prefix-state store is off (--no-store)")
    if not args.path.is_dir():
        return _usage(f"not a directory: {args.path.resolve()}")
    root = repository_root(args.path)  # the same root a session from any subdirectory uses
    try:
        with shard_progress() as progress:
            chosen = open_backend(options, progress, warn=print_warning)
    except BackendError as exc:
        print(f"v4 prefill: {exc}", file=sys.stderr)
        return EXIT_FAILED
    backend = chosen.backend
    assert isinstance(backend, EmbeddedBackend) and backend.store is not None
    try:
        context = RepositoryContext(root, chosen.tokenizer_dir, include_secrets=options.include_secrets)
        opened = open_session(context, chosen, SessionOptions(), agent=agent_options(args))
    except (ContextError, WorkspaceError) as exc:
        return _usage(str(exc))
    thinking, tools = opened.session.prompt_style()
    ids, boundaries = backend.encode_with_boundaries([opened.session.system], False, thinking=thinking, tools=tools)
    print(f"v4: prefilling {len(ids):,} tokens ({len(opened.view.files):,} files) into {backend.store.directory}…",
          file=sys.stderr, flush=True)  # minutes for a large repository on a CPU: say what runs
    try:
        _, _, stats = backend.store.prefill(backend.engine, ids, boundaries, backend.context_length)
    except StoreError as exc:  # raised before the prefill is computed
        return _usage(str(exc))
    document = {k: v for k, v in stats.to_json().items() if k != "snapshots_written"}
    document["store_bytes"] = backend.store.stats()["bytes"]
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(f"prefilled {stats.tokens:,} tokens: {stats.reused_tokens:,} from the prefix-state store in "
              f"{stats.load_s:.2f} s, {stats.computed_tokens:,} computed in {stats.prefill_s:.2f} s; "
              f"store {document['store_bytes']:,} bytes")
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"v4 prefill: {message}", file=sys.stderr)
    return EXIT_USAGE
