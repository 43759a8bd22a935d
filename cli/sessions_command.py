"""`v4 sessions`: the conversations saved under `.v4/sessions/`, the last first, or one of them in full.

Exit codes: 0 listed or shown, 2 usage error (no such session, not a directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .exit_codes import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from v4.agent.sessions import SessionRecord


def build(parser: argparse.ArgumentParser) -> None:
    """`v4 sessions [ID]`'s options."""
    parser.add_argument("id", nargs="?", metavar="ID", help="print this session's conversation (or the start of its id)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args: argparse.Namespace) -> int:
    from v4.agent.sessions import SessionStore, SessionStoreError
    from v4.agent.workspace import repository_root

    if not args.repo.is_dir():
        print(f"v4 sessions: not a directory: {args.repo.resolve()}", file=sys.stderr)
        return EXIT_USAGE
    store = SessionStore(repository_root(args.repo))
    if args.id:
        try:
            record = store.load(args.id)
        except SessionStoreError as exc:
            print(f"v4 sessions: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(record.to_json(), indent=1, ensure_ascii=False))
        else:
            _print_conversation(record)
        return EXIT_OK
    warnings: list[str] = []
    records = store.list(warnings)
    for warning in warnings:
        print(f"v4 sessions: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"id": r.id, "created": r.created, "updated": r.updated, "title": r.title,
                           "turns": r.turn_count, "backend": r.backend, "compactions": r.compactions}
                          for r in records], indent=1, ensure_ascii=False))
        return EXIT_OK
    if not records:
        print(f"no saved sessions in {store.directory} yet: `v4` saves each conversation there")
        return EXIT_OK
    for record in records:
        model = record.backend.get("model") or record.backend.get("kind", "")
        print(f"{record.id}  {record.updated[:16].replace('T', ' ')}  {record.turn_count:>3} turn(s)  "
              f"{model:<20.20}  {record.title}")
    print(f"\ncontinue the last with `v4 --continue`, another with `v4 --resume ID` (in {store.directory})")
    return EXIT_OK


def _print_conversation(record: SessionRecord) -> None:
    """The conversation as text: each message under its role, tool calls by name."""
    print(f"session {record.id}: {record.title} ({record.turn_count} turn(s), updated {record.updated})")
    for message in record.messages:
        print(f"\n── {message.role}" + (f" (result of {message.tool_call_id})" if message.tool_call_id else ""))
        if message.content:
            print(message.content)
        for call in message.tool_calls:
            print(f"[calls {call.name} {json.dumps(call.arguments, ensure_ascii=False)}]")
