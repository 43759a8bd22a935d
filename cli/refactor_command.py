"""`v4 refactor`: the agent on one instruction, headless.

Exit codes: 0 applied (or nothing to do), 1 no valid edit from the model, 2 usage error, 3 refused
because of the work tree's state, 4 tests still failing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .backend_args import (add_agent_arguments, add_backend_arguments, add_session_arguments, agent_options,
                           backend_options, conversation_options, print_warning)
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_TESTS, EXIT_USAGE
from .progress import TurnProgress, shard_progress

if TYPE_CHECKING:
    from v4.agent.backends import Backend
    from v4.agent.edits import FileChange
    from v4.agent.session import Session
    from v4.agent.turn import TurnResult


def build(parser: argparse.ArgumentParser) -> None:
    """`v4 refactor INSTRUCTION`'s options."""
    parser.add_argument("instruction", help="the change to make, in words")
    add_backend_arguments(parser)
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--files", nargs="+", metavar="PATH", help="only these files may be edited")
    parser.add_argument("--yes", action="store_true", help="apply without asking (the default without a terminal)")
    parser.add_argument("--commit", action="store_true", help="commit the applied change")
    parser.add_argument("--dirty-commit", action="store_true",
                        help="commit your uncommitted changes to the files v4 edits first, in their own commit")
    parser.add_argument("--test-cmd", metavar="CMD", help="run after applying; failures go back to the model")
    parser.add_argument("--max-reflections", type=int, default=3,
                        help="times a failed edit or test goes back to the model (default 3)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="longest answer, in tokens (default 4,096; 256 for a checkpoint of random weights)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_agent_arguments(parser)
    add_session_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from v4.agent.backends import BackendError
    from v4.agent.bootstrap import answer_tokens, describe_backend, open_backend, open_session, saved_session
    from v4.agent.context import ContextError, RepositoryContext
    from v4.agent.session import SessionOptions
    from v4.agent.sessions import SessionStoreError
    from v4.agent.workspace import WorkspaceError, repository_root

    if not args.repo.is_dir():
        return _usage(f"not a directory: {args.repo.resolve()}")
    root = repository_root(args.repo)  # the git top level: v4 acts the same from any subdirectory
    interactive = not args.yes and not args.json and sys.stdin.isatty() and sys.stdout.isatty()
    progress_bar = TurnProgress(shows_text=not args.json)
    try:
        options, agent, conversation = backend_options(args), agent_options(args), conversation_options(args)
        record = saved_session(root, conversation)  # before the model loads: a wrong id costs nothing
        wanted = answer_tokens(options, args.max_tokens, agent.thinking)
        with shard_progress() as progress:
            chosen = open_backend(options, progress, warn=print_warning, answer_tokens=wanted)
        context = RepositoryContext(root, chosen.tokenizer_dir, include_secrets=options.include_secrets)
        max_tokens = min(wanted, chosen.answer_tokens)  # what the context keeps room for
        session_options = SessionOptions(
            max_reflections=args.max_reflections, max_answer_tokens=max_tokens, dirty_commit=args.dirty_commit,
            editable=_named(root, args.files), test_cmd=args.test_cmd, require_edits=True,
            confirm=_ask_to_apply if interactive else None)
        opened = open_session(context, chosen, session_options, endpoint=options.endpoint,
                              on_text=progress_bar.text, on_event=progress_bar, agent=agent,
                              include_secrets=options.include_secrets, record=record, save=conversation.save,
                              backend_options=options)
    except (BackendError, ContextError, WorkspaceError, SessionStoreError, ValueError) as exc:
        return _usage(str(exc))
    if opened.secrets_warning:  # before the session sends anything (issue 22)
        progress_bar.note(opened.secrets_warning)
    if opened.tools_warning:
        progress_bar.note(opened.tools_warning)
    if opened.instructions_warning:
        progress_bar.note(opened.instructions_warning)
    session = opened.session
    if record is not None:
        progress_bar.note(f"continuing session {record.id} ({record.turn_count} turn(s): {record.title})")
    progress_bar.note(f"context: {opened.view.total_tokens:,} of {chosen.budget:,} tokens of the repository; "
                      f"answers of up to {max_tokens:,} tokens" + (" (random weights: pass --max-tokens for longer)"
                                                                  if args.max_tokens is None and max_tokens < 4096
                                                                  else ""))
    try:
        _prefill(session, chosen.backend, progress_bar)
    except BackendError as exc:
        return _usage(str(exc))
    result = session.run(args.instruction)
    if result.applied and args.commit and not result.tests_failed:
        try:
            result.commit = session.workspace.commit()
        except WorkspaceError as exc:
            result.error = f"applied but not committed: {exc}"
    document = result.to_json() | {"budget": chosen.budget, "context_tokens": opened.view.total_tokens}
    document |= describe_backend(chosen, options).context_json()  # the model's context, as `v4 model info` says
    if opened.record is not None:
        document["session"] = {"id": opened.record.id, "resumed": opened.resumed, "turns": opened.record.turn_count}
    offload = getattr(chosen.backend, "offload_report", None)  # the embedded engine's, when experts are offloaded
    if offload is not None and offload() is not None:
        document["offload"] = offload()
    prefill = getattr(chosen.backend, "last_prefill", None)
    if prefill is not None:  # how much of the prompt came from the prefix-state store
        document["prefix_store"] = prefill.to_json()
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        _print_result(result)
    if result.refused:
        return EXIT_REFUSED
    if result.tests_failed:
        return EXIT_TESTS
    if result.error and not result.applied:
        return EXIT_FAILED
    return EXIT_OK


def _prefill(session: Session, backend: Backend, progress: TurnProgress) -> None:
    """The repository into the embedded engine's state before the question, with its own progress lines
    (on a CPU it is most of the wait); other backends prefill on their side."""
    from v4.agent.backends import EmbeddedBackend
    from v4.agent.bootstrap import prefill_session

    if not isinstance(backend, EmbeddedBackend):
        return
    progress.note("prefilling the " + ("conversation" if session.history else "repository") + " into the model's state…")
    stats = prefill_session(backend, session)
    if stats is not None:
        progress.note(f"prefilled {stats.tokens:,} tokens in {stats.seconds:.1f} s ({stats.reused_tokens:,} reused"
                      + (" from the prefix-state store)" if stats.from_store and stats.reused_tokens else ")"))


def _named(root: Path, files: list[str] | None) -> list[str] | None:
    """`--files` as repository paths: each is taken relative to the current directory, as a shell
    user means it, so `v4 refactor --files mod.py` in `pkg/` names `pkg/mod.py`."""
    if files is None:
        return None
    named = []
    for name in files:
        absolute = Path(os.path.abspath(name))
        named.append(absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else name)
    return named


def _ask_to_apply(changes: Sequence[FileChange]) -> bool:
    """Show the proposed change as a diff and ask before writing (skipped with --yes or no terminal)."""
    import difflib

    for change in changes:
        before = (change.before or "").splitlines(keepends=True)
        after = (change.after or "").splitlines(keepends=True)
        sys.stdout.writelines(difflib.unified_diff(before, after, f"a/{change.path}", f"b/{change.path}"))
    answer = input(f"\napply these changes to {len(changes)} file(s)? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _print_result(result: TurnResult) -> None:
    if result.applied:
        print(result.diff, end="")
        print(f"v4: changed {', '.join(result.files)}" + (f"; committed {result.commit[:12]}" if result.commit else
                                                          "; review with `v4 review`, commit with `v4 commit`"))
    if result.attached:  # what the request carried beyond the repository prefix (the plan's report)
        from v4.agent.attachments import describe

        listed = ", ".join(describe(a) for a in result.attached)
        print(f"v4: attached in full after the repository context: {listed}", file=sys.stderr)
    if result.session_error:
        print(f"v4 refactor: {result.session_error}", file=sys.stderr)
    if result.error:
        print(f"v4 refactor: {result.error}", file=sys.stderr)
    elif result.declined:
        print("v4: not applied", file=sys.stderr)
    elif not result.applied:
        print("v4: the model proposed no change", file=sys.stderr)


def _usage(message: str) -> int:
    print(f"v4 refactor: {message}", file=sys.stderr)
    return EXIT_USAGE
