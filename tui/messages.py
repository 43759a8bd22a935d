"""Messages from the controllers, which run in thread workers, to the main screen.

Workers never touch widgets: they post these (post_message is thread-safe) and the screen sets
state and widget attributes. A widget's own messages are nested in the widget (HunkView.Decided).

    StartupController ─ StartupStep ───► MainScreen ─► StartupPanel (one row per step)
      (thread)        ─ StartupReady ──►            ─► SessionState ─► StatusBar, ContextPanel
                      ─ StartupFailed ─►            ─► ChatLog error note
    Input.Submitted ─► MainScreen ─► a slash command (controllers/slash.py) or ChatController.ask
    ChatController.ask (thread) ─► Session.run ─► MeteredBackend.stream, once per attempt:
        ─ AnswerStarted ─► MainScreen ─► ChatLog: the reflection sent, a new AnswerView
        ─ AnswerDelta ───► MainScreen ─► AnswerView.append (edit blocks drawn as diffs)
        ─ AnswerMetrics ─► MainScreen ─► SessionState: tokens/s, TTFT, KV size
      then ─ TurnFinished ─► MainScreen ─► ChatLog notes (applied, error), pending count
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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from v4.agent.bootstrap import BackendInfo
from v4.agent.context import ContextView
from v4.agent.turn import TurnResult
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
class AnswerMetrics(Message):
    """Timing of one answer, for the status bar."""

    ttft_s: float | None
    tokens_per_s: float | None
    context_tokens: int  # prompt + answer tokens now in the backend's state


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
    note: str | None = None  # what to tell the user (after /add, /drop)
    error: bool = False  # the note says why /add or /drop could not be done


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
