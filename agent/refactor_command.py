"""`v4 refactor` (headless agent run), `v4 review`, `v4 commit` and `v4 undo`.

Exit codes of `v4 refactor`: 0 applied (or nothing to do), 1 no valid edit from the model, 2 usage
error, 3 refused because of the work tree's state, 4 tests still failing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_APPLIED, EXIT_NO_EDIT, EXIT_USAGE, EXIT_REFUSED, EXIT_TESTS = 0, 1, 2, 3, 4


def add_parsers(commands: argparse._SubParsersAction) -> None:
    from .backend_options import add_backend_arguments

    refactor = commands.add_parser("refactor", help="headless: apply a multi-file change described in words",
                                   description="Run the agent on one instruction without a terminal UI.")
    refactor.add_argument("instruction")
    add_backend_arguments(refactor)
    refactor.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    refactor.add_argument("--files", nargs="+", metavar="PATH", help="only these files may be edited")
    refactor.add_argument("--yes", action="store_true", help="apply without asking (the default without a terminal)")
    refactor.add_argument("--commit", action="store_true", help="commit the applied change")
    refactor.add_argument("--dirty-commit", action="store_true",
                          help="commit your uncommitted changes to the files v4 edits first, in their own commit")
    refactor.add_argument("--test-cmd", metavar="CMD", help="run after applying; failures go back to the model")
    refactor.add_argument("--max-reflections", type=int, default=3)
    refactor.add_argument("--max-tokens", type=int, default=4096, help="longest answer, in tokens")
    refactor.add_argument("--json", action="store_true", help="print the result as JSON")

    review = commands.add_parser("review", help="review v4's pending changes hunk by hunk",
                                 description="Show v4's uncommitted changes per file and hunk; accept or reject them.")
    review.add_argument("--repo", type=Path, default=Path("."))
    review.add_argument("--accept", nargs="*", metavar="HUNK", help="accept these hunk ids (all: no ids)")
    review.add_argument("--reject", nargs="*", metavar="HUNK", help="reject (revert) these hunk ids (all: no ids)")
    review.add_argument("--json", action="store_true")

    commit = commands.add_parser("commit", help="commit v4's accepted changes (with a Co-authored-by trailer)")
    commit.add_argument("--repo", type=Path, default=Path("."))
    commit.add_argument("-m", "--message", default=None)

    undo = commands.add_parser("undo", help="revert the last commit v4 made (if HEAD, unpushed, tree clean)")
    undo.add_argument("--repo", type=Path, default=Path("."))


def run_refactor(args: argparse.Namespace) -> int:
    from v4.repo_index import DiscoveryConfig, IndexConfig, RepoIndex
    from v4.repo_index.tokens import TokenizerError, load_tokenizer

    from .backend_options import backend_from_args, warn_secrets
    from .backends import BackendError
    from .session import Session, SessionOptions
    from .workspace import WorkspaceError, repository_root

    if not args.repo.is_dir():
        return _usage(f"not a directory: {args.repo.resolve()}")
    root = repository_root(args.repo)  # the git top level: v4 acts the same from any subdirectory
    try:
        chosen = backend_from_args(args)
        tokenizer = load_tokenizer(chosen.tokenizer_dir)
    except (BackendError, TokenizerError) as exc:
        return _usage(str(exc))
    config = IndexConfig(discovery=DiscoveryConfig(include_secrets=args.include_secrets))
    plan = RepoIndex(root, tokenizer=tokenizer, config=config).plan(chosen.budget)
    warn_secrets(args, plan.secrets_sent)  # before the session sends anything (issue 22)
    interactive = not args.yes and not args.json and sys.stdin.isatty() and sys.stdout.isatty()
    options = SessionOptions(max_reflections=args.max_reflections, max_answer_tokens=args.max_tokens,
                             dirty_commit=args.dirty_commit, editable=_named(root, args.files), test_cmd=args.test_cmd,
                             require_edits=True, confirm=_ask_to_apply if interactive else None)
    stream = None if args.json else (lambda piece: (sys.stderr.write(piece), sys.stderr.flush()))
    try:
        session = Session(root, chosen.backend, _repository(plan), options, on_text=stream)
    except WorkspaceError as exc:
        return _usage(str(exc))
    result = session.run(args.instruction)
    if stream:
        sys.stderr.write("\n")
    if result.applied and args.commit and not result.tests_failed:
        try:
            result.commit = session.workspace.commit()
        except WorkspaceError as exc:
            result.error = f"applied but not committed: {exc}"
    document = result.to_json() | {"budget": chosen.budget, "context_tokens": plan.total_tokens}
    prefill = getattr(chosen.backend, "last_prefill", None)
    if prefill is not None:  # how much of the prompt came from the Engram store
        document["engram"] = prefill.to_json()
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        _print_result(result)
    if result.refused:
        return EXIT_REFUSED
    if result.tests_failed:
        return EXIT_TESTS
    if result.error and not result.applied:
        return EXIT_NO_EDIT
    return EXIT_APPLIED


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


def _ask_to_apply(changes: list) -> bool:
    """Show the proposed change as a diff and ask before writing (skipped with --yes or no terminal)."""
    import difflib

    for change in changes:
        before = (change.before or "").splitlines(keepends=True)
        after = (change.after or "").splitlines(keepends=True)
        sys.stdout.writelines(difflib.unified_diff(before, after, f"a/{change.path}", f"b/{change.path}"))
    answer = input(f"\napply these changes to {len(changes)} file(s)? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _repository(plan: object) -> str:
    from .session import repository_text

    return repository_text(plan.segments)


def _print_result(result: object) -> None:
    if result.applied:
        print(result.diff, end="")
        print(f"v4: changed {', '.join(result.files)}" + (f"; committed {result.commit[:12]}" if result.commit else
                                                          "; review with `v4 review`, commit with `v4 commit`"))
    if result.error:
        print(f"v4 refactor: {result.error}", file=sys.stderr)
    elif result.declined:
        print("v4: not applied", file=sys.stderr)
    elif not result.applied:
        print("v4: the model proposed no change", file=sys.stderr)


def _usage(message: str) -> int:
    print(f"v4: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_review(args: argparse.Namespace) -> int:
    from .workspace import Workspace, WorkspaceError

    try:
        workspace = Workspace(args.repo)
        pending = workspace.pending()
        ids = [hunk.id for diff in pending for hunk in diff.hunks]
        decisions: dict[str, bool] = {}
        if args.reject is not None:
            decisions.update(dict.fromkeys(args.reject or ids, False))
        if args.accept is not None:
            decisions.update(dict.fromkeys(args.accept or ids, True))
        if not decisions and not args.json and sys.stdin.isatty() and pending:
            decisions = _ask_per_hunk(pending)
        if decisions:
            pending = workspace.review(decisions)
    except WorkspaceError as exc:
        print(f"v4 review: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"path": d.path, "status": d.status,
                           "hunks": [{"id": h.id, "header": h.header, "lines": list(h.lines)} for h in d.hunks]}
                          for d in pending], indent=1))
        return 0
    if not pending:
        print("v4: no pending changes")
    for diff in pending:
        print(f"── {diff.path} ({diff.status})")
        for hunk in diff.hunks:
            print(f"   hunk {hunk.id}  {hunk.header}")
            for line in hunk.lines:
                print(f"   {line}")
    if pending:
        print("accept or reject with `v4 review --accept ID...` / `--reject ID...`; then `v4 commit`")
    return 0


def _ask_per_hunk(pending: list) -> dict[str, bool]:
    """`git add -p` style: y keeps a hunk, n reverts it, q stops asking (the rest stay pending)."""
    decisions: dict[str, bool] = {}
    for diff in pending:
        for hunk in diff.hunks:
            print(f"── {diff.path} ({diff.status})  {hunk.header}")
            for line in hunk.lines:
                print(f"   {line}")
            answer = input("keep this change? [y,n,q] ").strip().lower()
            if answer == "q":
                return decisions
            if answer in ("y", "n"):
                decisions[hunk.id] = answer == "y"
    return decisions


def run_commit(args: argparse.Namespace) -> int:
    from .workspace import Workspace, WorkspaceError

    try:
        workspace = Workspace(args.repo)
        skipped = workspace.uncommittable()
        sha = workspace.commit(args.message)
    except WorkspaceError as exc:
        print(f"v4 commit: {exc}", file=sys.stderr)
        return 1
    print(f"v4: committed {sha[:12]}")
    if skipped:
        print(f"v4: not committed (ignored by git, still pending): {', '.join(skipped)}", file=sys.stderr)
    return 0


def run_undo(args: argparse.Namespace) -> int:
    from .workspace import Workspace, WorkspaceError

    try:
        sha = Workspace(args.repo).undo()
    except WorkspaceError as exc:
        print(f"v4 undo: {exc}", file=sys.stderr)
        return 1
    print(f"v4: undid {sha[:12]}; its changes are gone from the branch (the commit stays in the reflog)")
    return 0
