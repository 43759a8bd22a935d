"""`v4 watch`: watch mode without the TUI. One line per event (one JSON object with --json): what
changed and how long the index took, the tokens re-prefilled, agent runs started by AI comments and
how they ended. Edits are applied to the work tree for review, never committed. Ctrl+C stops.

Exit codes: 0 stopped (Ctrl+C or SIGTERM), 2 usage error (no model, not a git repository).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .backend_args import add_agent_arguments, add_backend_arguments, agent_options, backend_options, print_warning
from .exit_codes import EXIT_OK, EXIT_USAGE
from .progress import shard_progress

if TYPE_CHECKING:
    from v4.agent.watch.loop import WatchEvent

def build(parser: argparse.ArgumentParser) -> None:
    """`v4 watch`'s options."""
    add_backend_arguments(parser)
    add_agent_arguments(parser)
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--json", action="store_true", help="one JSON object per event")
    parser.add_argument("--debounce", type=float, default=0.3, metavar="S",
                        help="a batch of changes closes after this many quiet seconds (default 0.3)")
    parser.add_argument("--max-delay", type=float, default=2.0, metavar="S",
                        help="... or this long after its first change, however busy the tree (default 2)")
    parser.add_argument("--no-ai-comments", action="store_true",
                        help="keep the context warm only; ignore AI comments")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="longest answer, in tokens (default 4,096; 256 for a checkpoint of random weights)")


def run(args: argparse.Namespace) -> int:
    from v4.agent.backends import BackendError
    from v4.agent.bootstrap import answer_tokens, open_backend, open_session
    from v4.agent.context import ContextError, RepositoryContext
    from v4.agent.session import SessionOptions
    from v4.agent.warm import ContextWarmer
    from v4.agent.watch.loop import Ready, WatchLoop
    from v4.agent.watch.watcher import WatchConfig, Watcher
    from v4.agent.workspace import WorkspaceError, repository_root

    if not args.repo.is_dir():
        return _usage(f"not a directory: {args.repo.resolve()}")
    root = repository_root(args.repo)
    try:
        config = WatchConfig(quiet_s=args.debounce, max_delay_s=max(args.max_delay, args.debounce))
        options, agent = backend_options(args), agent_options(args)
        wanted = answer_tokens(options, args.max_tokens, agent.thinking)
        with shard_progress() as progress:
            chosen = open_backend(options, progress, warn=print_warning, answer_tokens=wanted)
        started = time.perf_counter()
        context = RepositoryContext(root, chosen.tokenizer_dir, include_secrets=options.include_secrets)
        context.scan()
        session_options = SessionOptions(max_answer_tokens=min(wanted, chosen.answer_tokens), require_edits=True)
        opened = open_session(context, chosen, session_options, endpoint=options.endpoint, agent=agent,
                              include_secrets=options.include_secrets)
    except (BackendError, ContextError, WorkspaceError, ValueError) as exc:
        return _usage(str(exc))
    if opened.secrets_warning:  # before the first prefill sends anything (issue 22)
        print(f"v4: {opened.secrets_warning}", file=sys.stderr, flush=True)
    session, view = opened.session, opened.view
    index_s = time.perf_counter() - started
    printer = Printer(args.json)
    warmer = ContextWarmer(session, chosen.backend)
    loop = WatchLoop(context=context, session=session, warmer=warmer, budget=chosen.budget, emit=printer)
    warmer.on_report = loop.on_warmed
    watcher = Watcher(root, config)
    stop = threading.Event()
    previous = _on_stop_signals(stop)
    try:
        watcher.start()
        printer(Ready(str(root), len(view.files), view.total_tokens, chosen.budget, len(watcher.watched), index_s))
        warmer.refresh(session.system, ((), time.monotonic()))  # the first prefill, in the background too
        while not stop.is_set():
            batch = watcher.next_batch(timeout=0.5)
            if batch is None:
                continue
            request = loop.apply(batch)
            if request is not None and not args.no_ai_comments:
                loop.run_request(request)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
        warmer.close()
        context.index.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    printer.stopped()
    return EXIT_OK


class Printer:
    """Prints events, one line each (JSON with --json); called from the loop and the warmer's thread."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        line = json.dumps(event.to_json()) if self.as_json else f"{time.strftime('%H:%M:%S')} {event.describe()}"
        with self._lock:
            print(line, flush=True)

    def stopped(self) -> None:
        with self._lock:
            print(json.dumps({"event": "stopped"}) if self.as_json else "stopped watching", flush=True)


def _on_stop_signals(stop: threading.Event) -> dict[int, object]:
    """Ctrl+C and SIGTERM stop watching: they interrupt what runs (an agent turn) and also set `stop`,
    which the loop checks between batches, so an interrupt swallowed inside a library still ends it.
    Returns the previous handlers (none off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(_signum: int, _frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def _usage(message: str) -> int:
    print(f"v4 watch: {message}", file=sys.stderr)
    return EXIT_USAGE
