"""StartupController: from the backend options to a ready session, off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from v4.agent.backends import BackendError
from v4.agent.bootstrap import (answer_tokens, describe_backend, open_backend, open_session, prefill_session,
                                saved_session)
from v4.agent.context import ContextError, RepositoryContext
from v4.agent.demo import demo_checkpoint
from v4.agent.options import AgentOptions, BackendOptions, ConversationOptions
from v4.agent.session import Session, SessionOptions
from v4.agent.sessions import SessionStoreError
from v4.agent.turn import Compacted, CompactionFailed, ToolRan, TurnEvent
from v4.agent.warm import ContextWarmer
from v4.agent.workspace import WorkspaceError

from ..messages import ConversationCompacted, StartupFailed, StartupReady, StartupStep, ToolCallRan
from .approval import ApprovalController
from .chat import ChatController
from .context import ContextController
from .metering import MeteredBackend
from .review import ReviewController
from .sessions import SessionsController
from .watch import WatchController

if TYPE_CHECKING:
    from v4.agent.bootstrap import PrefillStats  # the engine's type, named through agent/



class Cancelled(Exception):
    """The app is closing: start-up stops at the next step or progress report."""


@dataclass(slots=True)
class Services:
    """What start-up builds and the main screen drives from then on."""

    session: Session
    chat: ChatController
    context: ContextController
    watch: WatchController
    warmer: ContextWarmer
    approvals: ApprovalController
    sessions: SessionsController


class StartupController:
    """Indexes the repository, loads the model (making the demo checkpoint on first use), plans the
    context and prefills it, posting a StartupStep as each moves. `run` blocks: a thread worker."""

    def __init__(self, *, root: Path, options: BackendOptions, review: ReviewController,
                 post_message: Callable[[Message], object], agent: AgentOptions | None = None,
                 conversation: ConversationOptions | None = None) -> None:
        self.root = root
        self.options = options
        self.agent = agent or AgentOptions()
        self.conversation = conversation or ConversationOptions()
        self.review = review
        self._post = post_message
        self._cancelled = threading.Event()
        self._started = threading.Event()  # after start-up, re-reads of changed files are not start-up steps

    def cancel(self) -> None:
        """Stop at the next step (a model load or prefill in progress cannot be cut short)."""
        self._cancelled.set()

    def run(self) -> None:
        try:
            ready = self._start()
            self._started.set()
            self._post(ready)
        except Cancelled:
            pass
        except (BackendError, WorkspaceError, ContextError, SessionStoreError, OSError, ValueError) as exc:
            self._post(StartupFailed(str(exc), fix_hint(self.options)))
        except Exception as exc:  # noqa: BLE001 - anything else from a checkpoint or engine: say it, stay open
            self._post(StartupFailed(f"{type(exc).__name__}: {exc}", fix_hint(self.options)))

    def _start(self) -> StartupReady:
        options = self.options
        record = saved_session(self.root, self.conversation)  # a wrong id is said before the model loads
        if options.names_no_model:
            self._step("model", "creating the demo checkpoint (random weights, first run only)…")
            options = options.with_model(demo_checkpoint())
        context = RepositoryContext(self.root, options.model if options.embedded else None,
                                    self._index_progress,
                                    include_secrets=options.include_secrets)
        self._step("index", "indexing the repository…")
        context.scan()
        self._step("index", "repository indexed", finished=True)
        self._step("model", f"loading {Path(options.model).name if options.embedded else 'the backend'}…")
        # 256 for random weights, else room to think (32K) even if thinking starts off: /think turns it on
        wanted = answer_tokens(options, None, thinking=True)
        chosen = open_backend(options, answer_tokens=wanted)
        info = describe_backend(chosen, options)
        self._step("model", f"model: {info.kind} {info.model}" + (" (random weights)" if info.random_weights else ""),
                   finished=True)
        self._step("plan", "planning the context…")
        metered = MeteredBackend(chosen.backend, post_message=self._post)
        approvals = ApprovalController(post_message=self._post)
        session_options = SessionOptions(max_answer_tokens=min(wanted, chosen.answer_tokens))
        opened = open_session(context, chosen, session_options, endpoint=options.endpoint, backend=metered,
                              on_event=self._turn_event, agent=self.agent, ask=approvals.ask,
                              include_secrets=options.include_secrets, record=record,
                              save=self.conversation.save, backend_options=options)
        session, view = opened.session, opened.view
        session.compactor.backend = chosen.backend  # a summary is not an answer: it is not streamed to the chat
        self._step("plan", f"context: {sum(f.mode != 'dropped' for f in view.files)} files, "
                           f"{view.total_tokens:,} of {view.budget:,} tokens", finished=True)
        if opened.secrets_warning:  # shown before the prefill sends the context (issue 22)
            self._step("plan", opened.secrets_warning, finished=True)
        if opened.tools_warning:
            self._step("plan", opened.tools_warning, finished=True)
        if opened.instructions_warning:
            self._step("plan", opened.instructions_warning, finished=True)
        self._step("prefill", "prefilling the " + ("conversation…" if record is not None else "context…"))
        report = prefill_session(chosen.backend, session)
        self._step("prefill", _prefill_label(report), finished=True)
        warmer = ContextWarmer(session, chosen.backend)
        chat = ChatController(session=session, backend=metered, pending_files=self.review.pending_files,
                              post_message=self._post, warmer=warmer, approvals=approvals)
        controller = ContextController(context=context, session=session, backend=chosen.backend,
                                       budget=chosen.budget, post_message=self._post, warmer=warmer)
        watch = WatchController(root=self.root, context=context, session=session, warmer=warmer,
                                budget=chosen.budget, lock=controller.lock, post_message=self._post)
        sessions = SessionsController(session=session, backend=chosen.backend, post_message=self._post, warmer=warmer)
        return StartupReady(Services(session, chat, controller, watch, warmer, approvals, sessions), info, view,
                            report, self.review.pending_files(), record)

    def _turn_event(self, event: TurnEvent) -> None:
        """The session's events, from the turn's worker thread: tool calls become chat lines (answers
        are followed through the metered backend)."""
        if isinstance(event, ToolRan):
            self._post(ToolCallRan(event))
        elif isinstance(event, Compacted):
            self._post(ConversationCompacted(event))
        elif isinstance(event, CompactionFailed):
            self._post(ConversationCompacted(None, event.reason))

    def _index_progress(self, phase: str, done: int, total: int) -> None:
        """The index's progress callback: a start-up step while starting, nothing after (the same
        index re-reads changed files later, in watch mode and on /add, with its own notes)."""
        if not self._started.is_set():
            self._step("index", f"indexing: {phase}", done, total)

    def _step(self, step: str, label: str, done: int = 0, total: int = 0, finished: bool = False) -> None:
        if self._cancelled.is_set():
            raise Cancelled
        self._post(StartupStep(step, label, done, total, finished))


def fix_hint(options: BackendOptions) -> str:
    """How to get past a failed start, for the chat: what to check for the model named, then restart."""
    if options.replay:
        check = f"check the replay file {options.replay} (a JSON list of answers)"
    elif options.endpoint:
        check = (f"check that {options.endpoint} is up and OpenAI-compatible, and its key "
                 "(--api-key or $V4_API_KEY)")
    elif options.model:
        check = f"check the checkpoint directory {options.model} (config.json, the tokenizer, the weights)"
    else:
        check = "name a model with --model DIR, --endpoint URL or --replay FILE"
    return f"To fix: {check}, then restart v4 (ctrl+q quits). /review and /undo work meanwhile."


def _prefill_label(report: PrefillStats | None) -> str:
    if report is None:
        return "prefill: the backend keeps its own cache"
    source = "from the prefix-state store" if report.from_store else "already held"
    return (f"prefilled {report.tokens:,} tokens: {report.reused_tokens:,} reused {source}, "
            f"{report.computed_tokens:,} computed in {report.seconds:.1f} s")
