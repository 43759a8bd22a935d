"""`v4 review`, `v4 commit` and `v4 undo`: look after the changes v4 applied to the work tree."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .exit_codes import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from v4.agent.workspace_diff import FileDiff, Hunk


def build_review(parser: argparse.ArgumentParser) -> None:
    """`v4 review [--accept ID...] [--reject ID...]`."""
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository (default: .)")
    parser.add_argument("--accept", nargs="*", metavar="HUNK", help="accept these hunk ids (all: no ids)")
    parser.add_argument("--reject", nargs="*", metavar="HUNK", help="reject (revert) these hunk ids (all: no ids)")
    parser.add_argument("--json", action="store_true", help="print the pending changes as JSON")


def build_commit(parser: argparse.ArgumentParser) -> None:
    """`v4 commit [-m MESSAGE]`."""
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository (default: .)")
    parser.add_argument("-m", "--message", default=None, help="commit message (default: one from the change)")


def build_undo(parser: argparse.ArgumentParser) -> None:
    """`v4 undo`."""
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository (default: .)")


def run_review(args: argparse.Namespace) -> int:
    from v4.agent.workspace import Workspace, WorkspaceError

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
        before = {hunk.id: hunk for diff in pending for hunk in diff.hunks}
        if decisions:
            pending = workspace.review(decisions)
    except WorkspaceError as exc:
        print(f"v4 review: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([{"path": d.path, "status": d.status,
                           "hunks": [{"id": h.id, "header": h.header, "lines": list(h.lines)} for h in d.hunks]}
                          for d in pending], indent=1))
        return EXIT_OK
    _print_decisions(decisions, before)
    if not pending:
        print("v4: no pending changes" + (" left" if decisions else ""))
    elif decisions:
        print("v4: still pending:")
    for diff in pending:
        print(f"── {diff.path} ({diff.status})")
        for hunk in diff.hunks:
            print(f"   hunk {hunk.id}  {hunk.header}")
            for line in hunk.lines:
                print(f"   {line}")
    if pending:
        print("accept or reject with `v4 review --accept ID...` / `--reject ID...`; then `v4 commit`")
    return EXIT_OK


def _print_decisions(decisions: dict[str, bool], hunks: dict[str, Hunk]) -> None:
    """What `review` just did: each rejected hunk (reverted, with its lines) and each accepted one."""
    rejected = [hunks[i] for i, keep in decisions.items() if not keep]
    accepted = [hunks[i] for i, keep in decisions.items() if keep]
    if rejected:
        print(f"v4: rejected {len(rejected)} hunk{'s' * (len(rejected) != 1)} (reverted in the work tree):")
        for hunk in rejected:
            print(f"   {hunk.path}  hunk {hunk.id}  {hunk.header}")
            print("".join(f"      {line}\n" for line in hunk.lines if not line.startswith(" ")), end="")
    if accepted:
        print(f"v4: accepted {len(accepted)} hunk{'s' * (len(accepted) != 1)} (kept in the work tree; "
              "`v4 commit` commits them):")
        for hunk in accepted:
            print(f"   {hunk.path}  hunk {hunk.id}  {hunk.header}")


def _ask_per_hunk(pending: list[FileDiff]) -> dict[str, bool]:
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
    from v4.agent.workspace import Workspace, WorkspaceError

    try:
        workspace = Workspace(args.repo)
        skipped = workspace.uncommittable()
        sha = workspace.commit(args.message)
    except WorkspaceError as exc:
        print(f"v4 commit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"v4: committed {sha[:12]}")
    if skipped:
        print(f"v4: not committed (ignored by git, still pending): {', '.join(skipped)}", file=sys.stderr)
    return EXIT_OK


def run_undo(args: argparse.Namespace) -> int:
    from v4.agent.workspace import Workspace, WorkspaceError

    try:
        sha = Workspace(args.repo).undo()
    except WorkspaceError as exc:
        print(f"v4 undo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"v4: undid {sha[:12]}; its changes are gone from the branch (the commit stays in the reflog)")
    return EXIT_OK
