"""The replay backend: scripted answers, one per call, for tests and demos (no model at all).

A replay file is a JSON list (or `{"responses": [...]}`) with one entry per model call, in order: a
string (the answer's text), or an object with any of `"reasoning"` (thinking text), `"content"` (the
answer) and `"tool_calls"` (a list of `{"name", "arguments"}` objects, with an optional `"id"`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat_format import Message
from ..dsml import ToolCall
from .protocol import BackendError, Event, ReasoningDelta, TextDelta, Thinking, Tool, Usage, answer_text


@dataclass
class ReplayBackend:
    """Scripted answers, one per call, from a JSON file: a list of strings, or {"responses": [...]}."""

    responses: list[str | dict[str, Any]]
    name: str = "replay"
    context_length: int = 1_048_576
    last_usage: Usage = field(default_factory=Usage)
    calls: list[list[Message]] = field(default_factory=list)  # what each call was asked, for tests

    @classmethod
    def from_file(cls, path: Path) -> ReplayBackend:
        """The script in `path`; BackendError naming the file when it is unreadable or malformed."""
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read replay file {path}: {exc}") from exc
        responses = data.get("responses") if isinstance(data, dict) else data
        if not isinstance(responses, list) or not all(isinstance(r, (str, dict)) for r in responses):
            raise BackendError(f"{path}: a replay file is a JSON list of answers (strings or objects) or "
                               f"{{\"responses\": [...]}}")
        for number, response in enumerate(responses, 1):
            if isinstance(response, dict):
                _check_response(path, number, response)
        return cls(list(responses))

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The next scripted answer's text."""
        return answer_text(self.events(messages, max_tokens, temperature))

    def events(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        """The next scripted turn: its reasoning, its text in 64-character pieces, then its tool calls;
        usage guessed at 4 characters a token."""
        if len(self.calls) >= len(self.responses):
            raise BackendError(f"the replay script has only {len(self.responses)} responses")
        self.calls.append(list(messages))
        response = self.responses[len(self.calls) - 1]
        turn = {"content": response} if isinstance(response, str) else response
        text, reasoning = turn.get("content") or "", turn.get("reasoning") or ""
        self.last_usage = Usage(prompt_tokens=sum(len(m.content) // 4 for m in messages),
                                completion_tokens=(len(text) + len(reasoning)) // 4)
        if reasoning:
            yield ReasoningDelta(reasoning)
        for start in range(0, len(text), 64):
            yield TextDelta(text[start : start + 64])
        for index, call in enumerate(turn.get("tool_calls") or []):
            yield ToolCall(call.get("id") or f"call_{len(self.calls)}_{index}", call["name"], dict(call["arguments"]))

    def count_tokens(self, text: str) -> int | None:
        return None


def _check_response(path: Path, number: int, response: dict[str, Any]) -> None:
    """An object answer's keys and types, or BackendError naming the answer."""
    unknown = set(response) - {"content", "reasoning", "tool_calls"}
    calls = response.get("tool_calls") or []
    good = (not unknown and all(isinstance(response.get(k, ""), str) for k in ("content", "reasoning"))
            and isinstance(calls, list)
            and all(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
                    for c in calls))
    if not good:
        raise BackendError(f"{path}: answer {number} must be a string or an object of \"content\", \"reasoning\" "
                           f"(strings) and \"tool_calls\" (a list of {{\"name\", \"arguments\"}} objects)")
