"""The command table: every `v4` command once, as name -> parser builder -> handler.

`main.build_parser` registers the table in order and dispatches on it; a command module exposes only
`build*(parser)` functions (its options) and handlers taking the parsed arguments and returning an
exit code (`exit_codes`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from . import (index_command, model_command, refactor_command, review_command, serve_command, sessions_command,
               store_command, watch_command)

Build = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Command:
    """One `v4 NAME` command."""

    name: str
    help: str  # the line in `v4 --help`
    description: str  # the paragraph in `v4 NAME --help`
    build: Build
    run: Handler
    aliases: tuple[str, ...] = ()  # old names that still work


COMMANDS: tuple[Command, ...] = (
    Command("index", "show the ordered, token-counted context plan of a repository",
            "Order the repository with tree-sitter and fit it to a token budget.",
            index_command.build, index_command.run),
    Command("model", "make or inspect a DeepSeek V4 checkpoint",
            "Make a random DeepSeek V4 checkpoint or describe one.",
            model_command.build_model, model_command.run_model),
    Command("generate", "stream a completion from a checkpoint",
            "Stream a completion of TEXT from the checkpoint in --model.",
            model_command.build_generate, model_command.run_generate),
    Command("refactor", "headless: apply a multi-file change described in words",
            "Run the agent on one instruction without a terminal UI.",
            refactor_command.build, refactor_command.run),
    Command("sessions", "list this repository's saved conversations, or show one",
            "List the conversations saved under .v4/sessions/ (the last first), or print one; continue one "
            "with `v4 --continue` (the last) or `v4 --resume ID`, in the TUI or with `v4 refactor`.",
            sessions_command.build, sessions_command.run),
    Command("review", "review v4's pending changes hunk by hunk",
            "Show v4's uncommitted changes per file and hunk; accept or reject them.",
            review_command.build_review, review_command.run_review),
    Command("commit", "commit v4's accepted changes (with a Co-authored-by trailer)",
            "Commit the changes v4 wrote (exactly its blobs; your later edits stay uncommitted).",
            review_command.build_commit, review_command.run_commit),
    Command("undo", "revert the last commit v4 made (if HEAD, unpushed, tree clean)",
            "Remove v4's last commit from the branch when nothing else depends on it.",
            review_command.build_undo, review_command.run_undo),
    Command("serve", "serve the engine as an OpenAI-compatible endpoint",
            "An OpenAI-compatible server on the embedded engine (loopback by default).",
            serve_command.build, serve_command.run),
    Command("prefill", "prefill a repository's context into the prefix-state store",
            "Prefill the agent's prompt for a repository (the system message with the whole context plan) "
            "and keep the state for the next session.",
            store_command.build_prefill, store_command.run_prefill),
    Command("store", "the prefix-state store of prefilled repositories: stats, clear, verify",
            "Look after the on-disk store of prefilled states (`v4 engram` is its old name).",
            store_command.build_store, store_command.run_store, aliases=("engram",)),
    Command("watch", "keep the index and the model's context warm as files change; act on AI comments",
            "Watch the repository: update the index and re-prefill the context as files change, and run "
            "the agent on comments ending in AI! (make this change) or AI? (answer this). Edits are "
            "applied for review (`v4 review`), never committed.",
            watch_command.build, watch_command.run),
)
