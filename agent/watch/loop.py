"""Watch mode's work per change: the index updated, the context re-planned and re-prefilled in the
background, and AI comments turned into agent runs. `v4 watch` and the TUI's watch toggle drive it.

    Watcher.next_batch ─► WatchLoop.apply ─► RepoIndex.update, RepositoryContext.plan ─► Changed
                                           ─► ContextWarmer.refresh (background) ─────► Warmed
                                           ─► AICommentTracker.observe ─► AIRequest
    AIRequest ─► WatchLoop.run_request (headless) or the TUI's chat ─► Session.run ─► AgentFinished

Every event is a typed dataclass with `to_json()` (the `--json` line) and `describe()` (the human one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .ai_comments import AICommentTracker, AIRequest
from ..context import ContextError, ContextView, RepositoryContext
from ..prompts import system_message
from ..session import Session
from ..turn import TurnResult
from ..warm import ContextWarmer, WarmReport
from .watcher import ChangeBatch
from ..workspace import WorkspaceError

if TYPE_CHECKING:
    from v4.model.prefix_store import PrefillStats  # the engine's, loaded only to type-check


@dataclass(frozen=True, slots=True)
class Ready:
    """Watching: the repository indexed and planned, the context being prefilled."""

    root: str
    files: int
    context_tokens: int
    budget: int
    watched_dirs: int
    index_s: float
    event: str = "ready"

    def to_json(self) -> dict:
        return {"event": self.event, "root": self.root, "files": self.files, "context_tokens": self.context_tokens,
                "budget": self.budget, "watched_dirs": self.watched_dirs, "index_s": round(self.index_s, 4)}

    def describe(self) -> str:
        return (f"watching {self.root}: {self.files} files, {self.context_tokens:,} of {self.budget:,} context tokens "
                f"(indexed in {self.index_s:.2f} s); Ctrl+C stops")


@dataclass(frozen=True, slots=True)
class Changed:
    """A batch of changes is in the index and the context plan."""

    paths: tuple[str, ...]
    deleted: tuple[str, ...]
    index_s: float  # updating the index and re-planning the context
    since_save_s: float  # from the first event of the batch to the plan being ready
    context_tokens: int
    num_events: int
    rescan: bool
    view: ContextView | None = field(default=None, compare=False)  # for the TUI's context panel
    event: str = "change"

    def to_json(self) -> dict:
        return {"event": self.event, "paths": list(self.paths), "deleted": list(self.deleted),
                "index_s": round(self.index_s, 4), "since_save_s": round(self.since_save_s, 4),
                "context_tokens": self.context_tokens, "events": self.num_events, "rescan": self.rescan}

    def describe(self) -> str:
        names = _names(self.paths)
        gone = f" ({len(self.deleted)} deleted)" if self.deleted else ""
        return (f"changed {names}{gone}: index updated in {self.index_s * 1000:.0f} ms, "
                f"{self.since_save_s * 1000:.0f} ms after the save; context {self.context_tokens:,} tokens")


@dataclass(frozen=True, slots=True)
class Warmed:
    """The context after a change is prefilled (or the prefill gave way to a question)."""

    paths: tuple[str, ...]
    stats: PrefillStats | None  # None: the backend keeps no state here (HTTP, replay)
    since_save_s: float
    event: str = "prefill"

    def to_json(self) -> dict:
        stats = self.stats.to_json() if self.stats is not None else None
        return {"event": self.event, "paths": list(self.paths), "reprefill": stats,
                "since_save_s": round(self.since_save_s, 4)}

    def describe(self) -> str:
        if self.stats is None:
            return f"context of {_names(self.paths)} handed to the backend (it keeps its own cache)"
        s = self.stats
        if s.cancelled:
            return (f"re-prefill after {_names(self.paths)} gave way to the agent after {s.computed_tokens:,} tokens "
                    f"({s.held_tokens:,} of {s.tokens:,} ready)")
        return (f"re-prefilled {s.computed_tokens:,} tokens ({s.reused_tokens:,} reused) in {s.seconds:.2f} s, "
                f"{self.since_save_s:.2f} s after the save")


@dataclass(frozen=True, slots=True)
class AgentStarted:
    """AI comments asked for a run."""

    kind: str  # "AI!" | "AI?"
    files: tuple[str, ...]
    num_comments: int
    event: str = "agent_start"

    def to_json(self) -> dict:
        return {"event": self.event, "kind": self.kind, "files": list(self.files), "comments": self.num_comments}

    def describe(self) -> str:
        return f"{self.kind}: {self.num_comments} AI comment(s) in {_names(self.files)}; asking the agent"


@dataclass(frozen=True, slots=True)
class AgentFinished:
    """What the run did: edits applied to the work tree (never committed), an answer, or why not."""

    kind: str
    outcome: str  # "applied" | "answered" | "no edit" | "refused" | "error"
    files: tuple[str, ...]  # edited (for review with `v4 review`)
    error: str | None
    answer: str
    seconds: float
    event: str = "agent"

    def to_json(self) -> dict:
        return {"event": self.event, "kind": self.kind, "outcome": self.outcome, "files": list(self.files),
                "error": self.error, "answer": self.answer, "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        if self.outcome == "applied":
            return (f"{self.kind} applied to {_names(self.files)} (not committed: `v4 review`, then `v4 commit`) "
                    f"in {self.seconds:.1f} s")
        if self.outcome == "answered":
            return f"{self.kind} answered in {self.seconds:.1f} s:\n{_indent(self.answer)}"
        return f"{self.kind} {self.outcome}: {self.error or 'the model proposed no change'}"


WatchEvent = Ready | Changed | Warmed | AgentStarted | AgentFinished


def outcome_of(result: TurnResult, question: bool) -> str:
    """One word for how a run ended."""
    if result.applied:
        return "applied"
    if result.refused:
        return "refused"
    if result.error and not result.answer:
        return "error"  # the backend gave no answer at all
    return "answered" if question else "no edit"


class WatchLoop:
    """Applies change batches to the context and the engine's state, and finds AI requests."""

    def __init__(self, *, context: RepositoryContext, session: Session, warmer: ContextWarmer, budget: int,
                 emit: Callable[[WatchEvent], None], lock: threading.Lock | None = None) -> None:
        self.context = context
        self.session = session
        self.warmer = warmer
        self.budget = budget
        self.emit = emit
        self.lock = lock or threading.Lock()  # the context (index + plan) is not thread-safe
        self.tracker = AICommentTracker(context.root)
        self.view: ContextView | None = None

    def apply(self, batch: ChangeBatch) -> AIRequest | None:
        """Put `batch` in the index and the plan, start the re-prefill, and say whether its files
        hold AI comments that ask for a run."""
        started = time.perf_counter()
        with self.lock:
            if batch.rescan:
                self.context.index.refresh()
            else:
                self.context.index.update(batch.paths)
            self.view = self.context.plan(self.budget, stable=True)
            system = system_message(self.context.repository_text(), self.session.instructions)
        index_s = time.perf_counter() - started
        self.emit(Changed(batch.paths, batch.deleted, index_s, time.monotonic() - batch.first_event_s,
                          self.view.total_tokens, batch.num_events, batch.rescan, self.view))
        self.warmer.refresh(system, (batch.paths, batch.first_event_s))
        changed = [p for p in batch.paths if p not in batch.deleted]
        own = self._own_changes(changed)
        return self.tracker.observe(changed, own)

    def on_warmed(self, report: WarmReport) -> None:
        """The warmer's callback: report a refresh of the changes tagged `(paths, time.monotonic() of
        the first event)`; the time is from the oldest change it covers."""
        tags = [t for t in report.tags if isinstance(t, tuple)]
        if tags and report.stats is not None:  # None: the backend keeps no state here
            paths = sorted({p for t in tags for p in t[0]})
            self.emit(Warmed(tuple(paths), report.stats, report.finished_s - min(t[1] for t in tags)))

    def include_in_full(self, request: AIRequest) -> None:
        """Make sure the files with AI comments are in the context in full (the agent edits them)."""
        modes = {f.path: f.mode for f in (self.view.files if self.view else ())}
        wanted = [p for p in request.files if modes.get(p) not in (None, "full")]
        if not wanted:
            return
        with self.lock:
            for path in wanted:
                try:
                    self.context.add(path)
                except ContextError:
                    continue
            self.view = self.context.plan(self.budget)
            system = system_message(self.context.repository_text(), self.session.instructions)
        self.warmer.refresh(system)

    def run_request(self, request: AIRequest) -> AgentFinished:
        """Headless: run the agent on `request` now (a running re-prefill gives way)."""
        self.include_in_full(request)
        question = request.action == "?"
        self.emit(AgentStarted(request.kind, request.files, len(request.comments)))
        started = time.perf_counter()
        with self.warmer.foreground():
            self.session.history.clear()  # each request stands alone: the comments say everything
            result = self.session.run(request.instruction(), user_edited=request.files, answer_only=question)
        finished = AgentFinished(request.kind, outcome_of(result, question), tuple(result.files), result.error,
                                 result.answer if question else "", time.perf_counter() - started)
        self.emit(finished)
        return finished

    def _own_changes(self, paths: list[str]) -> set[str]:
        try:
            return self.session.workspace.own_changes(paths)
        except WorkspaceError:  # an unreadable pending file must not stop watching
            return set()


def _names(paths: tuple[str, ...] | list[str], limit: int = 3) -> str:
    if not paths:
        return "nothing"
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in (text.strip() or "(empty answer)").splitlines())
