"""Backends: one Protocol (`protocol.py`) and a thin adapter per kind of model: the embedded engine
(`embedded.py`, over `model/runner.py`), an OpenAI-compatible endpoint (`http.py`, speaking
`openai_wire.py`) and a replay file (`replay.py`). `from v4.agent.backends import X` names any of them;
none loads torch on import."""

from .embedded import EmbeddedBackend
from .http import HttpBackend
from .protocol import (Backend, BackendError, Event, ReasoningDelta, TextDelta, Thinking, Tool, ToolCallError,
                       Usage, answer_text)
from .replay import ReplayBackend

__all__ = ["Backend", "BackendError", "EmbeddedBackend", "Event", "HttpBackend", "ReasoningDelta", "ReplayBackend",
           "TextDelta", "Thinking", "Tool", "ToolCallError", "Usage", "answer_text"]
