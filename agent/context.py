"""The repository's part of the context: the index's plan with the user's `/add` and `/drop`
applied, kept stable across re-plans in watch mode, and the files changed since it was made."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .prompts import repository_text

if TYPE_CHECKING:
    from v4.repo_index.plan import Segment, Skipped

STABLE_SLACK = 0.02  # watch mode lets the context run this far over its budget before re-planning it
Progress = Callable[[str, int, int], None]  # (phase, done, total), as repo_index reports it


class ContextError(ValueError):
    """An /add or /drop the repository's index cannot do; the message says why."""


@dataclass(frozen=True, slots=True)
class ContextFile:
    """One row of the context panel, in context order."""

    path: str
    mode: str  # "full" | "outline" | "omitted" | "dropped"
    tokens: int
    forced: str | None = None  # "added" (/add) or "dropped" (/drop)


@dataclass(frozen=True, slots=True)
class ContextView:
    """The plan as the context panel shows it."""

    files: tuple[ContextFile, ...]
    total_tokens: int
    budget: int
    num_skipped: int


class RepositoryContext:
    """The repository's context plan, with the user's forced-in (/add) and forced-out (/drop) files.

    repo_index has no API for forcing files, so it is done over its plan: the budget is first
    corrected by what dropped files free and what added files cost in full, the plan is made again
    with it, then dropped segments are filtered out and added ones re-rendered in full. The result
    can be a little over or under the budget (the planner may spend the correction differently);
    the budget meter shows the real total.
    """

    def __init__(self, root: Path, tokenizer_dir: Path | None, progress: Progress | None = None, *,
                 include_secrets: bool = False) -> None:
        from v4.repo_index import DiscoveryConfig, IndexConfig, RepoIndex
        from v4.repo_index.tokens import TokenizerError, load_tokenizer

        try:
            self.tokenizer = load_tokenizer(tokenizer_dir)
        except TokenizerError as exc:
            raise ContextError(str(exc)) from exc
        config = IndexConfig(discovery=DiscoveryConfig(include_secrets=include_secrets))
        self.index = RepoIndex(root, tokenizer=self.tokenizer, config=config, progress=progress)
        self.root = self.index.root
        self.forced_in: set[str] = set()
        self.forced_out: set[str] = set()
        self.segments: list[Segment] = []  # what the system message holds, in order
        self._view: ContextView | None = None
        self._skipped: dict[str, str] = {}  # path -> why the index left it out
        self.secrets_sent: list[Skipped] = []  # files that look like credentials, in the context (--include-secrets)
        self._stamps: dict[str, tuple[int, int] | None] = {}  # path -> (mtime_ns, size) when planned

    def scan(self) -> None:
        """Discover and parse every file (the slow part; progress goes to the callback)."""
        self.index.refresh()

    def plan(self, budget: int, stable: bool = False) -> ContextView:
        """Plan the context for `budget` tokens with the forced files applied; re-reads changed files first.

        `stable` (watch mode, after a change): files keep the mode they had in the last plan while the
        total stays within STABLE_SLACK of the budget. The planner fills a tight budget greedily, so a
        few tokens more in one file can swap small files in or out anywhere, often at the front of
        the order, and the engine would recompute the whole context for a one-line edit."""
        previous = {s.path: s for s in self.segments} if stable else {}
        changed = self.changed_files()
        if changed:
            self.index.update(changed)
        first = self.index.plan(budget)
        correction = sum(s.num_tokens for s in first.segments if s.path in self.forced_out)
        correction -= sum(self._full_cost(s.path) - s.num_tokens for s in first.segments
                          if s.path in self.forced_in and s.mode != "full")
        plan = self.index.plan(max(budget + correction, 1)) if correction else first
        rows, kept = [], []
        for segment in plan.segments:
            if segment.path in self.forced_out:
                rows.append(ContextFile(segment.path, "dropped", 0, "dropped"))
                continue
            if segment.path in self.forced_in and segment.mode != "full":
                segment = self._full(segment)
            kept.append(segment)
            rows.append(ContextFile(segment.path, segment.mode, segment.num_tokens,
                                    "added" if segment.path in self.forced_in else None))
        if previous:
            kept, rows = self._keep_modes(kept, rows, previous, budget)
        self.segments = kept
        self._skipped = {s.path: s.reason for s in plan.skipped}
        shown = {s.path for s in kept if s.mode != "omitted"}
        self.secrets_sent = [s for s in plan.secrets if s.path in shown]
        self._stamps = {s.path: _stamp(self.root / s.path) for s in kept if s.mode != "omitted"}
        self._view = ContextView(tuple(rows), sum(s.num_tokens for s in kept), budget, len(plan.skipped))
        return self._view

    def _keep_modes(self, kept: list[Segment], rows: list[ContextFile], previous: dict[str, Segment],
                    budget: int) -> tuple[list[Segment], list[ContextFile]]:
        """`kept` (the fresh plan) with each file back in its previous mode, if the total still fits
        within STABLE_SLACK of `budget`; otherwise the fresh plan as it is."""
        stable = []
        for segment in kept:
            old = previous.get(segment.path)
            if old is None or old.mode == segment.mode or segment.path in self.forced_in:
                stable.append(segment)
            elif old.sha256 == segment.sha256:
                stable.append(old)  # an unchanged file: its old segment is still exact
            elif old.mode == "full":
                stable.append(self._full(segment))
            elif old.mode == "omitted":
                stable.append(dataclasses.replace(segment, mode="omitted", text="", token_ids=()))
            else:
                stable.append(segment)  # a changed outline: the planner's new choice
        if sum(s.num_tokens for s in stable) > budget * (1 + STABLE_SLACK):
            return kept, rows
        by_path = {s.path: s for s in stable}
        rows = [row if row.path not in by_path else dataclasses.replace(row, mode=by_path[row.path].mode,
                                                                       tokens=by_path[row.path].num_tokens)
                for row in rows]
        return stable, rows

    def repository_text(self) -> str:
        """The repository part of the system message for the last plan."""
        return repository_text(self.segments)

    def holds(self, path: str, sha256: str) -> bool:
        """The system message shows `path` in full with exactly this content (its bytes' sha256)."""
        return any(s.path == path and s.mode == "full" and s.sha256 == sha256 for s in self.segments)

    def add(self, path: str) -> str:
        """Force `path` into the context in full (re-plan afterwards); returns its normalised path."""
        rel = self._known(path)
        self.forced_out.discard(rel)
        self.forced_in.add(rel)
        return rel

    def drop(self, path: str) -> str:
        """Force `path` out of the context (re-plan afterwards); returns its normalised path."""
        rel = self._known(path)
        self.forced_in.discard(rel)
        self.forced_out.add(rel)
        return rel

    def paths(self) -> list[str]:
        """Every file the index knows, in context order (for completion and the file palette)."""
        return [f.path for f in self._view.files] if self._view else []

    def changed_files(self) -> list[str]:
        """Files in the context whose content changed (or that went away) since the last plan."""
        changed = []
        hashes = {s.path: s.sha256 for s in self.segments}
        for path, stamp in self._stamps.items():
            file = self.root / path
            now = _stamp(file)
            if now == stamp:
                continue
            if now is None or hashlib.sha256(file.read_bytes()).hexdigest() != hashes[path]:
                changed.append(path)
        return sorted(changed)

    def _known(self, path: str) -> str:
        rel = os.path.normpath(path.strip()).replace(os.sep, "/").removeprefix("./")
        if self._view is None or rel not in {f.path for f in self._view.files}:
            if rel in self._skipped:
                raise ContextError(f"{rel} is left out of the index: {self._skipped[rel]}")
            raise ContextError(f"{rel} is not a file of this repository that v4 indexes")
        return rel

    def _full_text(self, path: str) -> str:
        from v4.repo_index.files import decode_text
        from v4.repo_index.plan import render_full

        return render_full(path, decode_text((self.root / path).read_bytes()))

    def _full_cost(self, path: str) -> int:
        return len(self.tokenizer.encode(self._full_text(path)))

    def _full(self, segment: Segment) -> Segment:
        text = self._full_text(segment.path)
        ids = tuple(self.tokenizer.encode(text))
        return dataclasses.replace(segment, mode="full", text=text, token_ids=ids, full_tokens=len(ids))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size
