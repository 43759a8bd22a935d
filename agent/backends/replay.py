"""The replay backend: scripted answers, one per call, for tests and demos (no model at all)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..chat_format import Message
from .protocol import BackendError, Usage


@dataclass
class ReplayBackend:
    """Scripted answers, one per call, from a JSON file: a list of strings, or {"responses": [...]}."""

    responses: list[str]
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
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise BackendError(f"{path}: a replay file is a JSON list of strings or {{\"responses\": [...]}}")
        return cls(list(responses))

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The next scripted answer, in 64-character pieces; usage guessed at 4 characters a token."""
        if len(self.calls) >= len(self.responses):
            raise BackendError(f"the replay script has only {len(self.responses)} responses")
        self.calls.append(list(messages))
        text = self.responses[len(self.calls) - 1]
        self.last_usage = Usage(prompt_tokens=sum(len(m.content) // 4 for m in messages),
                                completion_tokens=len(text) // 4)
        for start in range(0, len(text), 64):
            yield text[start : start + 64]

    def count_tokens(self, text: str) -> int | None:
        return None
