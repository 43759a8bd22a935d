"""Messages from the controllers, which run in thread workers, to the main screen.

Workers never touch widgets: they post these (post_message is thread-safe) and the screen sets
state and widget attributes. A widget's own messages are nested in the widget (HunkView.Decided).

    StartupController ─ StartupStep ───► MainScreen ─► StartupPanel (one row per step)
      (thread)        ─ StartupReady ──►            ─► SessionState ─► StatusBar, ContextPanel
                      ─ StartupFailed ─►            ─► ChatLog error note
    Input.Submitted ─► MainScreen ─► a slash command (controllers/slash.py) or ChatController.ask
    ChatController.ask (thread) ─► Session.run ─► MeteredBackend.events, once per answer:
        ─ AnswerStarted ─► MainScreen ─► ChatLog: the reflection sent, a new AnswerView
        ─ ThinkingDelta ─► MainScreen ─► ChatLog: a collapsed ThinkingView above the answer
        ─ AnswerDelta ───► MainScreen ─► AnswerView.append (edit blocks drawn as diffs)
        ─ AnswerMetrics ─► MainScreen ─► SessionState: tokens/s, TTFT, KV size; the thinking ends
      Session.on_event ─ ToolCallRan ─► MainScreen ─► ChatLog: one line per tool call
      AskUser ─► ApprovalController.ask (thread, blocks on a Future)
        ─ ApprovalRequested ─► MainScreen ─► ApprovalScreen ─ dismiss ─► ApprovalRequested.resolve
      then ─ TurnFinished ─► MainScreen ─► ChatLog notes (applied, error), pending count
      Session.on_event ─ Compacted / CompactionFailed ─► ConversationCompacted ─► MainScreen ─► ChatLog note
    /compact ─► SessionsController.compact (thread) ─ ConversationCompacted ─► MainScreen ─► ChatLog note
    /sessions ─► SessionsScreen ─ id ─► SessionsController.resume (thread) ─ SessionResumed ─► MainScreen ─► ChatLog
    /think ─► MainScreen (the new state in the chat) ─► ContextController.set_thinking (thread)
        ─ ContextUpdated ─► MainScreen (the prompt is free again)
    ContextController (thread) ─ ContextUpdated ─► MainScreen ─► SessionState.context/.changed
    WatchController.run (thread, while watch is on) ─ WatchUpdate ─► MainScreen ─► context panel, ChatLog note
                                                    ─ AiRequested ─► MainScreen ─► queued, then as a turn:
        WatchController.ask (thread) ─► ChatController.ask ─► ... TurnFinished (the next request, if any)
                                                    ─ WatchStopped ─► MainScreen ─► SessionState.watching off
    ReviewScreen workers ─► ReviewController ─► HunkView per hunk
    HunkView ─ HunkView.Decided ─► ReviewScreen ─ dismiss(ReviewOutcome) ─► MainScreen ─► ChatLog
      (leaving with rejections not applied: ChoiceScreen asks apply / discard / stay first)
    /undo, palette ─► ReviewController.undo_plan (thread) ─► ChoiceScreen (which commit, which files)
        ─ "undo" ─► ReviewController.undo(sha) (thread) ─► ChatLog
"""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from v4.agent.approval import Answer
from v4.agent.bootstrap import BackendInfo
from v4.agent.context import ContextView
from v4.agent.sessions import SessionRecord
from v4.agent.turn import Compacted, ToolRan, TurnResult
from v4.agent.watch.ai_comments import AIRequest
from v4.agent.watch.loop import WatchEvent

if TYPE_CHECKING:
    from v4.agent.bootstrap import PrefillStats  # the engine's type, named through agent/


@dataclass
class StartupStep(Message):
    """A start-up step moved: `total` 0 means "no count yet" (an indeterminate bar)."""

    step: str  # "model" | "index" | "plan" | "prefill"
    label: str
    done: int = 0
    total: int = 0
    finished: bool = False


@dataclass
class StartupReady(Message):
    """Everything is loaded: the services the main screen drives from now on."""

    services: object  # controllers.startup.Services
    info: BackendInfo
    context: ContextView
    prefill: PrefillStats | None
    pending_files: int
    resumed: SessionRecord | None = None  # the saved conversation it continues (--continue, --resume)


@dataclass
class ConversationCompacted(Message):
    """The oldest turns were summarised (at a turn's start, or /compact): `event` says how much, or
    `error` why not (the conversation is unchanged then)."""

    event: Compacted | None
    error: str | None = None


@dataclass
class SessionResumed(Message):
    """/sessions continued a saved conversation (`record` None: it could not be loaded; `error` says why)."""

    record: SessionRecord | None
    prefill: PrefillStats | None
    error: str | None = None


@dataclass
class StartupFailed(Message):
    """Start-up stopped; `error` and `hint` (how to fix it) are written for the user."""

    error: str
    hint: str = ""


@dataclass
class AnswerStarted(Message):
    """The model is asked again; `reflection` is the feedback v4 sent it (None for the first attempt)."""

    attempt: int
    reflection: str | None


@dataclass
class AnswerDelta(Message):
    """A piece of the streamed answer."""

    text: str


@dataclass
class ThinkingDelta(Message):
    """A piece of the model's thinking, streamed before its answer."""

    text: str


@dataclass
class ToolCallRan(Message):
    """A tool call of the model ran, or was refused (`event.allowed` False: nothing ran)."""

    event: ToolRan


@dataclass
class ApprovalRequested(Message):
    """The model asks to run `command`; a turn's worker waits on `future` until the user answers.
    `prefix` is what "always" would allow (empty: only once or deny can be offered)."""

    command: str
    prefix: tuple[str, ...]
    future: Future[Answer]

    def resolve(self, answer: str | Answer | None) -> None:
        """Answer the request (an Answer or its value; None, from escape, is a deny). The first answer
        wins: a stop or the app closing may have denied it already."""
        try:
            self.future.set_result(Answer(answer) if answer is not None else Answer.DENY)
        except InvalidStateError:
            pass


@dataclass
class AnswerMetrics(Message):
    """Timing of one answer, for the status bar."""

    ttft_s: float | None
    tokens_per_s: float | None
    context_tokens: int  # prompt + answer tokens now in the backend's state
    offload: dict[str, object] | None = None  # the engine's offload report after the answer (embedded only)


@dataclass
class TurnFinished(Message):
    """A turn is over (answered, applied, failed or stopped)."""

    result: TurnResult
    pending_files: int


@dataclass
class ContextUpdated(Message):
    """The context plan or the files changed since it was cached."""

    context: ContextView | None
    changed: tuple[str, ...]
    note: str | None = None  # what to tell the user (after /add, /drop, /think)
    error: bool = False  # the note says why /add or /drop could not be done
    finished: bool = False  # an /add, /drop or /think is done: the prompt is free again


@dataclass
class WatchUpdate(Message):
    """Watch mode did something: `event` is the agent's watch event (None: watching started, with
    `watched_dirs` directories under watch)."""

    event: WatchEvent | None
    watched_dirs: int = 0


@dataclass
class AiRequested(Message):
    """A change left AI comments that ask for a run (AI! or AI?)."""

    request: AIRequest


@dataclass
class WatchStopped(Message):
    """Watching ended: turned off, or `error` (written for the user)."""

    error: str | None
