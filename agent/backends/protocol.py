"""What the agent needs from a model, whichever backend answers: the `Backend` Protocol (stream the
assistant's text for a conversation, report token usage), its `Usage` and its `BackendError`.

The adapters beside this module are thin: `embedded.py` (a chat format over the engine's runner),
`http.py` (an OpenAI-compatible endpoint: vLLM, SGLang, `v4 serve`, a hosted V4) and `replay.py`
(scripted answers for tests and demos). This module loads no engine, so an agent on an endpoint
never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..chat_format import Message


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


class Backend(Protocol):
    """What the session needs from a model."""

    name: str
    context_length: int  # tokens the backend can hold (prompt + answer)
    last_usage: Usage

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The assistant's answer to `messages`, as text pieces while they are generated."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens `text` costs in this backend's tokenizer (None: unknown)."""
        ...
