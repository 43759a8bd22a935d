"""The embedded backend's answers on the static decoder (the CUDA-graphed path on a GPU; eager on the
CPU, same code otherwise): the same text, usage and follow-up turns as token-by-token eager decoding,
and the state left as the eager path leaves it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4.agent.backends import EmbeddedBackend
from v4.agent.chat_format import Message, chat_format_for
from tests.conftest import tiny_chat_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> object:
    from v4 import model

    return model.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("static"), seed=4), device="cpu")


def _backend(engine: object, static: bool) -> EmbeddedBackend:
    return EmbeddedBackend(engine, chat_format_for(Path(engine.checkpoint)), 4096, static_decode=static)


def _turns(backend: EmbeddedBackend) -> list[tuple[str, int, int]]:
    messages = [Message("system", "You edit code."), Message("user", "Rename f to g in a.py")]
    out = []
    for question in ("and b.py too", "now explain"):
        text = "".join(backend.stream(messages, max_tokens=24))
        usage = backend.last_usage
        out.append((text, usage.cached_tokens, usage.completion_tokens))
        messages = [*messages, Message("assistant", text), Message("user", question)]
    return out


def test_static_answers_equal_eager_answers(engine: object) -> None:
    assert engine.has_draft_head  # the state carries MTP layers, which static decoding leaves behind
    eager, static = _backend(engine, False), _backend(engine, True)
    turns = _turns(static)
    assert turns == _turns(eager)
    assert all(completion > 1 for _, _, completion in turns) and turns[1][1] > 0  # decoded; prefix reused
    assert static._decoder is None  # written back into the state after each answer
    assert static._state.num_tokens == eager._state.num_tokens
    for a, b in zip(static._state.layers, eager._state.layers):
        assert torch.allclose(a.window, b.window, atol=1e-5)


def test_an_abandoned_answer_is_written_back_before_the_next_prompt(engine: object) -> None:
    backend = _backend(engine, True)
    messages = [Message("system", "You edit code."), Message("user", "hello")]
    stream = backend.stream(messages, max_tokens=24)
    next(stream)
    assert backend._decoder is not None
    again = "".join(_backend(engine, False).stream(messages, max_tokens=24))
    assert "".join(backend.stream(messages, max_tokens=24)) == again  # the first stream is never closed
