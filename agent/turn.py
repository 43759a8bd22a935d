"""What a turn is made of, apart from the loop that runs it (`session.py`): the result of one
instruction, the events a front end follows it by, and one reply of the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backends import Usage
from .dsml import ToolCall


@dataclass(slots=True)
class TurnResult:
    """What one instruction produced (the `--json` of `v4 refactor`)."""

    applied: bool = False
    files: list[str] = field(default_factory=list)
    diff: str = ""
    commit: str | None = None
    reflections: int = 0
    error: str | None = None
    refused: bool = False  # the work tree's state forbade the edit
    tests_failed: bool = False
    declined: bool = False  # the user said no to applying
    answer: str = ""
    usage: Usage = field(default_factory=Usage)
    problem: str | None = None  # why the last answer's edits were refused, in the user's words
    model_feedback: str | None = None  # the last message that told the model so (for --json readers)
    reasoning: str = ""  # the model's thinking over the whole turn, in order
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments", "allowed", "exit_code"}
    attached: list[dict[str, Any]] = field(default_factory=list)  # files put in full after the prefix (attachments.py)
    session_error: str | None = None  # the conversation could not be saved (the turn itself is unaffected)
    compacted: Compacted | None = None  # the older turns were summarised before this turn (compaction.py)
    compaction_error: str | None = None  # they had to be, but could not be (the history is unchanged)

    def to_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "files": self.files, "diff": self.diff, "commit": self.commit,
                "reflections": self.reflections, "error": self.error, "model_feedback": self.model_feedback,
                "reasoning": self.reasoning, "tool_calls": self.tool_calls, "tokens": self.usage.to_json(),
                "attached": self.attached, "session_error": self.session_error,
                "compacted": self.compacted.to_json() if self.compacted else None,
                "compaction_error": self.compaction_error}


@dataclass(frozen=True, slots=True)
class AnswerStarted:
    """The model starts answer `number` of this turn (1, then one per reflection or test round)."""

    number: int


@dataclass(frozen=True, slots=True)
class AnswerFinished:
    """Answer `number` is complete."""

    number: int
    completion_tokens: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Retrying:
    """The answer is sent back to the model, which writes answer `number`; `reason` in the user's words."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class ToolRan:
    """A tool call of the model, and what became of it (`allowed` False: refused, nothing ran)."""

    name: str
    arguments: dict[str, Any]
    allowed: bool
    exit_code: int | None
    summary: str  # one line for a progress display
    reason: str | None = None  # why it did not run (refused), as the model was told


@dataclass(frozen=True, slots=True)
class Compacted:
    """The conversation neared the context: its `turns` oldest turns were replaced by a summary, and
    the prompt went from `tokens_before` to `tokens_after` tokens (system message included)."""

    turns: int
    tokens_before: int
    tokens_after: int

    def to_json(self) -> dict[str, int]:
        return {"turns": self.turns, "tokens_before": self.tokens_before, "tokens_after": self.tokens_after}


@dataclass(frozen=True, slots=True)
class CompactionFailed:
    """The conversation had to be compacted but was not (the summary call failed); `reason` for the user."""

    reason: str


TurnEvent = AnswerStarted | AnswerFinished | Retrying | ToolRan | Compacted | CompactionFailed


@dataclass(slots=True)
class Reply:
    """One answer of the model: its thinking, its text and the tools it called."""

    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    tool_error: str | None = None  # a call it wrote that could not be read: the feedback for the model


