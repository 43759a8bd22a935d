"""What the agent needs from a model, whichever backend answers: the `Backend` Protocol (stream the
assistant's turn for a conversation as typed events, report token usage), its `Usage`, its
`BackendError`, and the events: `TextDelta` (the answer), `ReasoningDelta` (thinking) and `ToolCall`
(a complete call, from `dsml.py`: the embedded engine's DSML and an endpoint's `tool_calls` alike).

The adapters beside this module are thin: `embedded.py` (a chat format over the engine's runner),
`http.py` (an OpenAI-compatible endpoint: vLLM, SGLang, `v4 serve`, a hosted V4) and `replay.py`
(scripted answers for tests and demos). This module loads no engine, so an agent on an endpoint
never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..chat_format import Message
from ..dsml import ToolCall


class BackendError(RuntimeError):
    """A backend that cannot answer (unreachable endpoint, exhausted replay, bad checkpoint)."""


@dataclass(slots=True)
class Usage:
    """Tokens of one call: the prompt (of which `cached` were reused from an earlier call) and the answer."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"prompt": self.prompt_tokens, "cached": self.cached_tokens,
                "completion": self.completion_tokens, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer, as generated."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's thinking (never parsed for edits, shown collapsed)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallError:
    """The model tried to call a tool, but its call could not be read; `message` says why, for the model."""

    message: str


Event = TextDelta | ReasoningDelta | ToolCall | ToolCallError


def answer_text(events: Iterator[Event]) -> Iterator[str]:
    """The answer's text pieces of a turn's events (what every backend's `stream` gives)."""
    for event in events:
        if isinstance(event, TextDelta):
            yield event.text
Tool = Mapping[str, Any]  # {"name", "description", "parameters": JSON schema}, as tools.py defines them


@dataclass(frozen=True, slots=True)
class Thinking:
    """Whether the model thinks before answering, and how hard ("high" or "max"; None: the model's default)."""

    enabled: bool = True
    effort: str | None = None

    def __post_init__(self) -> None:
        if self.effort not in (None, "high", "max"):
            raise ValueError(f"effort must be high or max, not {self.effort!r}")


class Backend(Protocol):
    """What the session needs from a model."""

    name: str
    context_length: int  # tokens the backend can hold (prompt + answer)
    last_usage: Usage

    def events(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        """The assistant's turn for `messages`: thinking, answer and tool calls, as they are generated.
        `thinking` None: off (plain chat); `tools`: what the model may call (none: it cannot)."""
        ...

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The answer's text pieces only, without thinking or tools (the OpenAI server's raw path, tests)."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens `text` costs in this backend's tokenizer (None: unknown)."""
        ...
