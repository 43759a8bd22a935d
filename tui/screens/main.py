"""MainScreen: the chat, the context panel and the status bar over one session."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from v4.agent.watch.ai_comments import AIRequest
from v4.agent.attachments import describe
from v4.agent.bootstrap import BackendInfo, offload_words
from v4.agent.init_draft import InitError, instruction_target
from v4.agent.options import AgentOptions, BackendOptions, ConversationOptions
from v4.agent.sessions import SessionRecord
from v4.agent.workspace import UndoPlan

from .. import messages as m
from ..controllers.chat import tool_line, turn_notes
from ..controllers.init import draft_instructions, init_note
from ..controllers.review import ReviewController, ReviewOutcome, undo_question
from ..controllers.slash import SlashError, completions, parse_slash, think_argument, thinking_note
from ..controllers.sessions import conversation_entries, resumed_note
from ..controllers.startup import Services, StartupController
from ..state import SessionState
from ..widgets.chat_log import ChatLog
from ..widgets.context_panel import ContextPanel
from ..widgets.startup_panel import StartupPanel
from ..widgets.status_bar import StatusBar
from .approval import ApprovalScreen
from .choice import Choice, ChoiceScreen
from .review import ReviewScreen
from .sessions import SessionsScreen
from .watching import WatchHandlers

CHANGE_POLL_S = 3.0  # how often "changed since cached" is checked while watch mode is off
BOUND = ("backend", "model", "random_weights", "tokens_per_s", "ttft_s", "kv_bytes", "watching", "pending_files",
         "busy", "reused_tokens", "offload")  # SessionState vars the status bar shows


class MainScreen(SessionState, WatchHandlers, Screen[None]):
    """Routes messages: controllers' events become state and chat entries, the user's input becomes
    questions or commands. Every action here is also a key binding, a slash command and a palette entry."""

    CSS_PATH = "main.tcss"
    BINDINGS = [
        Binding("ctrl+r", "review", "Review"),
        Binding("ctrl+t", "files", "Files"),
        Binding("ctrl+b", "toggle_context", "Context"),
        Binding("ctrl+o", "model", "Model", show=False),
        Binding("ctrl+l", "clear", "Clear chat", show=False),
        Binding("f5", "watch", "Watch", show=False),
        Binding("ctrl+y", "toggle_thinking", "Thinking", show=False,
                tooltip="show or hide the model's newest thinking (a click on its title does too)"),
        Binding("escape", "stop", "Stop answer", show=False),
    ]

    def __init__(self, root: Path, options: BackendOptions, review: ReviewController,
                 agent: AgentOptions | None = None, conversation: ConversationOptions | None = None) -> None:
        super().__init__()
        self.root = root
        self.review = review
        self.startup = StartupController(root=root, options=options, review=review, post_message=self.post_message,
                                         agent=agent, conversation=conversation)
        self.services: Services | None = None
        self.info: BackendInfo | None = None
        self.startup_error: str | None = None
        self.startup_hint = ""  # how to fix a failed start, for each request that cannot be sent
        self.ai_requests: deque[AIRequest] = deque()  # from watch mode, run one at a time

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            with ChatLog(id="chat"):
                yield StartupPanel()
            yield ContextPanel(id="context").data_bind(SessionState.context, SessionState.changed,
                                                       SessionState.attached, status=SessionState.context_status)
        yield Input(placeholder="Ask v4 to change something, or /help", id="prompt",
                    suggester=SuggestFromList(completions(), case_sensitive=False))
        yield StatusBar().data_bind(**{name: getattr(SessionState, name) for name in BOUND})
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#prompt", Input).focus()
        self.run_worker(self.startup.run, thread=True, exclusive=True, group="startup")
        self.set_interval(CHANGE_POLL_S, self.check_changes)

    def on_unmount(self) -> None:
        """Leaving (quit, or a test's app closing): the watch worker and the background prefill end
        too, or the app would wait for their threads."""
        if self.services is not None:
            self.services.watch.stop()
            self.services.warmer.close(wait=False)
            self.services.approvals.close()  # a turn waiting for an answer gets a deny

    # -- start-up ------------------------------------------------------------------------------

    def on_startup_step(self, event: m.StartupStep) -> None:
        self.query_one(StartupPanel).update_step(event.step, event.label, event.done, event.total, event.finished)
        if event.step == "index" and event.finished:  # the plan needs the model's budget: say what it waits for
            self.context_status = "repository indexed; planned once the model is loaded"

    def on_startup_ready(self, event: m.StartupReady) -> None:
        self.services, self.info = event.services, event.info
        self.backend, self.model, self.random_weights = event.info.kind, event.info.model, event.info.random_weights
        self.offload = offload_words(event.info.offload)
        self.context, self.pending_files, self.ready = event.context, event.pending_files, True
        if event.prefill is not None:
            self._set_kv(event.prefill.tokens)
        chat = self.query_one(ChatLog)
        if event.info.random_weights:
            chat.note("The model is the demo checkpoint with random weights: its answers are noise. "
                      "Start v4 with --model DIR, --endpoint URL or $V4_MODEL for a real one.", "reflection")
        if event.resumed is not None:
            self._show_conversation(event.resumed, event.prefill)
        if event.pending_files:
            chat.note(f"{event.pending_files} file(s) hold v4 changes from before, still pending: "
                      "review them with ctrl+r (/review).", "reflection")
        chat.note("Ready. Ask for a change; F1 or /help lists keys and commands.")

    def on_startup_failed(self, event: m.StartupFailed) -> None:
        self.startup_error, self.startup_hint = event.error, event.hint
        self.backend, self.context_status = "not started", "not planned: v4 could not start"
        self.query_one(StartupPanel).fail(event.error)
        self.query_one(ChatLog).note(f"v4 could not start: {event.error}\n{event.hint}".rstrip(), "error")

    # -- asking --------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.clear()
        if not text:
            return
        if text.startswith("/"):
            self.run_slash(text)
        else:
            self.ask(text)

    def run_slash(self, text: str) -> None:
        try:
            command, argument = parse_slash(text)
        except SlashError as exc:
            self.query_one(ChatLog).note(str(exc), "error")
            return
        action = getattr(self, f"action_{command.action}", None) or getattr(self.app, f"action_{command.action}")
        if command.argument:
            action(argument)
        else:
            action()

    def ask(self, text: str) -> None:
        self.query_one(ChatLog).prompt(text)  # shown even when it cannot be sent: a request never vanishes
        if not self._can_run("asking"):
            return
        self.busy = True
        self._work(partial(self.services.chat.ask, text), "turn")

    def on_answer_started(self, event: m.AnswerStarted) -> None:
        chat = self.query_one(ChatLog)
        chat.end_answer(more=True)
        if event.reflection:
            chat.note(f"↩ v4 told the model its edits did not apply:\n{event.reflection}", "reflection")
        chat.start_answer()

    def on_thinking_delta(self, event: m.ThinkingDelta) -> None:
        self.query_one(ChatLog).add_thinking(event.text)

    def on_answer_delta(self, event: m.AnswerDelta) -> None:
        self.query_one(ChatLog).add_answer(event.text)

    def on_answer_metrics(self, event: m.AnswerMetrics) -> None:
        self.ttft_s, self.tokens_per_s = event.ttft_s, event.tokens_per_s
        if event.offload is not None:
            self.offload = offload_words(event.offload)
        self._set_kv(event.context_tokens)
        self.query_one(ChatLog).end_thinking()  # the answer is over: its thinking too, whatever followed it

    def on_tool_call_ran(self, event: m.ToolCallRan) -> None:
        self.query_one(ChatLog).note(*tool_line(event.event))

    def on_approval_requested(self, event: m.ApprovalRequested) -> None:
        """The model asks to run a command; the turn's worker waits for the answer (the Future)."""
        if not event.future.done():  # a stop answers the questions not yet shown
            self.app.push_screen(ApprovalScreen(event.command, event.prefix), event.resolve)

    def on_turn_finished(self, event: m.TurnFinished) -> None:
        chat = self.query_one(ChatLog)
        chat.end_answer()
        self.busy, self.pending_files = False, event.pending_files
        if event.result.attached:  # the plan's report: what the conversation holds beyond the repository
            shown = [describe(a) for a in event.result.attached if a["attached"]]
            self.attached = tuple(dict.fromkeys([*self.attached, *shown]))
        for text, kind in turn_notes(event.result):
            chat.note(text, kind)
        self.check_changes()
        self._next_request()

    def action_stop(self) -> None:
        if self.busy and self.services is not None:
            self.services.chat.stop()

    # -- commands (keys, slash commands and the palette all land here) -------------------------

    def action_review(self) -> None:
        if self.busy:
            self.query_one(ChatLog).note("Wait for the answer to finish (escape stops it), then review.", "error")
            return
        self.app.push_screen(ReviewScreen(self.review), self._reviewed)

    def _reviewed(self, outcome: ReviewOutcome | None) -> None:
        if outcome is not None:
            self.query_one(ChatLog).note(outcome.summary, "error" if outcome.error else "success")
        self.refresh_pending()

    def action_undo(self) -> None:
        """Undo the last v4 commit, after the user confirms which commit and files (no key: ctrl+z is
        text undo to most people, and undoing a commit must never happen by accident)."""
        if self.busy:
            self.query_one(ChatLog).note("Wait for the answer to finish, then undo.", "error")
            return
        self._work(self._plan_undo, "git")

    def _plan_undo(self) -> None:
        plan = self.review.undo_plan()  # git: in the worker thread; the question is asked on the loop
        self.app.call_from_thread(self._confirm_undo, plan)

    def _confirm_undo(self, plan: UndoPlan | str) -> None:
        if isinstance(plan, str):
            self.query_one(ChatLog).note(plan, "error")
            return
        choices = [Choice("undo", "Undo commit", "y", "error"), Choice("cancel", "Cancel", "n")]
        self.app.push_screen(ChoiceScreen(*undo_question(plan), choices, focus="cancel"),
                             partial(self._undo_chosen, plan.sha))

    def _undo_chosen(self, sha: str, choice: str | None) -> None:
        if choice == "undo":
            self._work(partial(self._undo, sha), "git")
        else:
            self.query_one(ChatLog).note("Undo cancelled; nothing changed.", "info")

    def _undo(self, sha: str) -> None:
        done, text = self.review.undo(sha)
        self.app.call_from_thread(self._undone, done, text)

    def _undone(self, done: bool, text: str) -> None:
        self.query_one(ChatLog).note(text, "success" if done else "error")
        self.check_changes()

    def action_files(self) -> None:
        """A palette of every file, to add or drop."""
        if self._can_run("changing the context"):
            paths = self.services.context.paths()
            self.app.search_commands([(f"add {p}", partial(self.action_add_file, p)) for p in paths]
                                     + [(f"drop {p}", partial(self.action_drop_file, p)) for p in paths],
                                     placeholder="add or drop a file…")

    def action_add_file(self, path: str | None = None) -> None:
        self._force(path, add=True)

    def action_drop_file(self, path: str | None = None) -> None:
        self._force(path, add=False)

    def on_context_panel_force_requested(self, event: ContextPanel.ForceRequested) -> None:
        self._force(event.path, event.add)

    def _force(self, path: str | None, add: bool) -> None:
        if path is None:
            self.action_files()
        elif self._can_run("changing the context"):
            self.busy = True
            work = self.services.context.add if add else self.services.context.drop
            self._work(partial(work, path), "turn")

    def on_context_updated(self, event: m.ContextUpdated) -> None:
        if event.finished:
            self.busy = False  # an /add, /drop or /think finished
        if event.context is not None:
            self.context = event.context
        self.changed = event.changed
        if event.note:
            self.query_one(ChatLog).note(event.note, "error" if event.error else "success")

    def action_think(self, argument: str | None = None) -> None:
        """/think: thinking on or off for the next turns, or its effort; the context is prefilled again
        for the new rendering in the background, as after /add."""
        if not self._can_run("changing thinking"):
            return
        options = self.services.session.options
        try:
            thinking, effort = think_argument(options.thinking, options.effort, argument)
        except SlashError as exc:
            self.query_one(ChatLog).note(str(exc), "error")
            return
        self.query_one(ChatLog).note(thinking_note(thinking, effort), "success")
        self.busy = True
        self._work(partial(self.services.context.set_thinking, thinking, effort), "turn")

    def action_init(self) -> None:
        """/init: the model drafts AGENTS.md from the repository map (or improves the AGENTS.md or
        CLAUDE.md there) in a turn that may edit only that file; the draft waits in review."""
        if not self._can_run("/init"):
            return
        chat = self.query_one(ChatLog)
        try:
            path, existing = instruction_target(self.services.session.root)
        except InitError as exc:
            chat.note(str(exc), "error")
            return
        chat.note(init_note(path, existing), "info")
        self.busy = True
        self._work(partial(draft_instructions, chat=self.services.chat, context=self.services.context, path=path,
                           existing=existing), "turn")

    def action_toggle_thinking(self) -> None:
        if not self.query_one(ChatLog).toggle_thinking():
            self.query_one(ChatLog).note("No thinking to show yet: it appears above the model's answers.", "info")

    def action_toggle_context(self) -> None:
        panel = self.query_one(ContextPanel)
        panel.display = not panel.display

    def action_model(self) -> None:
        info, chat = self.info, self.query_one(ChatLog)
        if info is None:
            chat.note(f"The model is not loaded: {self.startup_error or 'still starting'}.", "info")
            return
        per_token = f"{info.state_bytes_per_token:,.0f} bytes of decode state per token" \
            if info.state_bytes_per_token else "decode state kept by the backend"
        chat.note(f"Backend {info.kind}, model {info.model}" + (" (random weights)" if info.random_weights else "")
                  + f"; {info.context_text()}, repository budget {info.budget:,}; {per_token}. "
                  "To switch, restart v4 with --model DIR, --endpoint URL or --replay FILE.", "info")

    def action_clear(self) -> None:
        if self.busy:
            self.query_one(ChatLog).note("Wait for the answer to finish, then clear.", "error")
            return
        self.query_one(ChatLog).clear(keep=tuple(self.query(StartupPanel)))
        self.attached = ()
        if self.services is not None:
            self.services.chat.clear()

    def action_help(self) -> None:
        self.app.action_help()

    def action_sessions(self) -> None:
        """/sessions: pick a saved conversation of this repository and continue it here."""
        if not self._can_run("/sessions"):
            return
        records, warnings = self.services.sessions.saved()
        chat = self.query_one(ChatLog)
        for warning in warnings:
            chat.note(warning, "error")
        if not records:
            chat.note("No saved conversations yet: each one is saved under .v4/sessions/ after its first turn.")
            return
        self.app.push_screen(SessionsScreen(records, self.services.sessions.current()), self._session_chosen)

    def _session_chosen(self, session_id: str | None) -> None:
        if session_id is None or self.services is None:
            return
        if session_id == self.services.sessions.current():
            self.query_one(ChatLog).note(f"Session {session_id} is the one in this chat already.")
            return
        self.busy = True
        self._work(partial(self.services.sessions.resume, session_id), "sessions")

    def action_compact(self) -> None:
        """/compact: the older turns become a summary now (the repository prefix stays cached)."""
        if not self._can_run("/compact"):
            return
        self.busy = True
        self._work(self._compact, "sessions")

    def _compact(self) -> None:
        try:
            self.services.sessions.compact()
        finally:
            self.call_from_thread(setattr, self, "busy", False)

    def on_conversation_compacted(self, event: m.ConversationCompacted) -> None:
        chat = self.query_one(ChatLog)
        if event.event is None:
            chat.note(f"Not compacted: {event.error}", "error")
            return
        done = event.event
        chat.note(f"Compacted the {done.turns} oldest turn(s) into a summary ({done.tokens_before:,} → "
                  f"{done.tokens_after:,} tokens); the repository stays cached, the newest turns stay as they were "
                  "and v4's pending changes are listed in the summary.", "reflection")

    def on_session_resumed(self, event: m.SessionResumed) -> None:
        self.busy = False
        chat = self.query_one(ChatLog)
        if event.record is None:
            chat.note(f"Could not continue it: {event.error}", "error")
            return
        chat.clear(keep=tuple(self.query(StartupPanel)))
        self.attached = ()  # another conversation: nothing attached in it yet (attachments.forget)
        self._show_conversation(event.record, event.prefill)
        if event.error:
            chat.note(event.error, "error")

    def _show_conversation(self, record: SessionRecord, prefill: object | None) -> None:
        """A continued conversation in the chat, and what the engine reused of it (status bar too)."""
        chat = self.query_one(ChatLog)
        for kind, text in conversation_entries(record):
            if kind == "prompt":
                chat.prompt(text)
            elif kind == "answer":
                chat.start_answer()
                chat.add_answer(text)
                chat.end_answer()
            else:
                chat.note(text, "tool")
        reused = getattr(prefill, "reused_tokens", None)
        self.reused_tokens = reused
        chat.note(resumed_note(record, reused, getattr(prefill, "tokens", None)), "success")

    # -- helpers -------------------------------------------------------------------------------

    def check_changes(self) -> None:
        if self.services is not None and not self.busy and not self.watching:  # watching tells us itself
            self._work(self.services.context.check_changes, "changes")
        self.refresh_pending()

    def refresh_pending(self) -> None:
        self._work(self._count_pending, "pending")

    def _work(self, function: Callable[[], object], group: str) -> None:
        """Run blocking `function` in a thread worker; a failure becomes a chat note, not a crash."""
        self.run_worker(function, thread=True, exclusive=True, group=group, exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group != "startup":
            error = event.worker.error
            if event.worker.group == "watch":
                self.watching = False  # the watcher died with its worker
            else:
                self.busy = False
            self.query_one(ChatLog).note(f"Internal error ({event.worker.group}): {type(error).__name__}: {error}",
                                         "error")

    def _count_pending(self) -> None:
        count = self.review.pending_files()
        self.app.call_from_thread(setattr, self, "pending_files", count)

    def _can_run(self, what: str) -> bool:
        chat = self.query_one(ChatLog)
        if self.services is None:
            chat.note(f"{what.capitalize()} needs the model, and v4 could not start: {self.startup_error}\n"
                      f"{self.startup_hint}".rstrip()
                      if self.startup_error else f"Still starting; try {what} again in a moment.", "error")
            return False
        if self.busy:
            chat.note("v4 is busy with the last request (escape stops an answer).", "error")
            return False
        return True

    def _set_kv(self, tokens: int) -> None:
        per_token = self.info.state_bytes_per_token if self.info else None
        self.kv_bytes = None if per_token is None else int(per_token * tokens)
