"""`v4 index`: show how v4 reads a repository, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from v4.repo_index import DEFAULT_BUDGET, ContextPlan, DiscoveryConfig, IndexConfig, RepoIndex
from v4.repo_index.files import DEFAULT_MAX_FILE_BYTES
from v4.repo_index.index import Encoder

from .progress import index_progress


def build(parser: argparse.ArgumentParser) -> None:
    """`v4 index`'s options."""
    parser.add_argument("path", nargs="?", default=".", help="repository root (default: the current directory)")
    parser.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET, help="token budget (default: 1,000,000)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--model", metavar="DIR", help="count tokens with this checkpoint's tokenizer.json")
    parser.add_argument("--max-file-bytes", type=positive_int, default=DEFAULT_MAX_FILE_BYTES,
                        help="skip files larger than this (default: 1,000,000)")
    parser.add_argument("--include-secrets", action="store_true", help="include .env files, keys and the like")
    parser.add_argument("--include-vendored", action="store_true", help="include vendor/, node_modules/, ...")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the index cache (kept in the git directory; .v4/ outside git)")


def positive_int(text: str) -> int:
    """An argparse type: a positive whole number, `1_000` and `1,000` accepted."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Build the plan and print it; 1 on a bad path or tokenizer, with the reason on stderr."""
    from v4.repo_index.tokens import TokenizerError, load_tokenizer

    from v4.agent.workspace import repository_root

    if not Path(args.path).is_dir():
        print(f"v4 index: not a directory: {args.path}", file=sys.stderr)
        return 1
    root = repository_root(args.path)  # the git top level, as a session from any subdirectory uses
    try:
        tokenizer = load_tokenizer(args.model)
    except TokenizerError as exc:
        print(f"v4 index: {exc}", file=sys.stderr)
        return 1
    config = IndexConfig(
        discovery=DiscoveryConfig(max_file_bytes=args.max_file_bytes, include_secrets=args.include_secrets,
                                  include_vendored=args.include_vendored),
        use_cache=not args.no_cache,
    )
    plan = _plan_with_progress(root, tokenizer, config, args.budget, show=not args.json and sys.stderr.isatty())
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_table(plan)
    return 0


def _plan_with_progress(root: Path, tokenizer: Encoder, config: IndexConfig, budget: int, show: bool) -> ContextPlan:
    with index_progress(show) as progress:
        return RepoIndex(root, tokenizer=tokenizer, config=config, progress=progress).plan(budget)


def _print_table(plan: ContextPlan) -> None:
    from rich.table import Table

    from rich.console import Console

    console = Console(file=sys.stdout)
    table = Table(title=f"context plan of {plan.root}", show_lines=False, header_style="bold")
    for column, justify in (("#", "right"), ("path", "left"), ("language", "left"), ("mode", "left"),
                            ("tokens", "right")):
        table.add_column(column, justify=justify)
    for number, segment in enumerate(plan.segments, 1):
        style = {"outline": "yellow", "omitted": "dim"}.get(segment.mode, "")
        table.add_row(str(number), segment.path, segment.language or "text", segment.mode,
                      f"{segment.num_tokens:,}", style=style)
    console.print(table)
    modes = Counter(s.mode for s in plan.segments)
    console.print(f"{plan.total_tokens:,} of {plan.budget:,} tokens; {modes['full']} full, "
                  f"{modes['outline']} outline, {modes['omitted']} omitted; {len(plan.skipped)} skipped; "
                  f"{plan.elapsed_s:.2f}s")
    if plan.skipped:
        skipped = Table(title="skipped", header_style="bold")
        skipped.add_column("path")
        skipped.add_column("reason")
        for item in plan.skipped:
            skipped.add_row(item.path, item.reason)
        console.print(skipped)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}", markup=True, highlight=False)
