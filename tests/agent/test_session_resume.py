"""A resumed conversation on the embedded engine (a tiny random checkpoint, CPU): the session that
saved it left its state in the prefix-state store, so the resumed one loads it, computes nothing of
it, and holds the state a cold prefill of the same conversation builds (the same logits, and the
same next step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4.agent.backends import EmbeddedBackend
from v4.agent.bootstrap import prefill_session
from v4.agent.chat_format import chat_format_for
from v4.agent.session import Session, SessionOptions
from v4.agent.sessions import SessionRecorder, SessionStore
from tests.conftest import make_repo, tiny_chat_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> object:
    from v4 import model

    return model.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("resume"), seed=0), device="cpu")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    files = {f"pkg/mod{n}.py": f"def f{n}(x):\n    return x * {n}\n" for n in range(6)}
    return make_repo(tmp_path / "repo", files)


def open_backend(engine: object, store_dir: Path) -> EmbeddedBackend:
    from v4.model.prefix_store import PrefixStore

    return EmbeddedBackend(engine, chat_format_for(Path(engine.checkpoint)), 4096, PrefixStore(store_dir))


def new_session(repo: Path, backend: EmbeddedBackend) -> Session:
    repository = "\n".join(f"==> pkg/mod{n}.py <==\ndef f{n}(x):\n    return x * {n}\n" for n in range(6))
    session = Session(repo, backend, repository, SessionOptions(max_answer_tokens=5))
    store = SessionStore(repo)
    session.recorder = SessionRecorder(store, store.create())
    return session


def test_a_resumed_session_loads_its_conversation_and_matches_a_cold_prefill(engine: object, repo: Path,
                                                                            tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first_backend = open_backend(engine, store_dir)
    first = new_session(repo, first_backend)
    prefill_session(first_backend, first)
    first.run("What does f3 do?", answer_only=True)
    first.run("And f4?", answer_only=True)
    saved_ids, _ = first_backend.conversation_ids(first.messages())

    # a new process: a new runner on the same store, the conversation from .v4/sessions/
    backend = open_backend(engine, store_dir)
    resumed = new_session(repo, backend)
    resumed.resume(SessionStore(repo).latest())
    assert resumed.messages() == first.messages()  # the resumed prompt is the saved one
    stats = prefill_session(backend, resumed)
    assert stats is not None and stats.from_store
    assert stats.tokens == len(saved_ids) and stats.reused_tokens == len(saved_ids) and stats.computed_tokens == 0
    assert backend.runner.held_ids == saved_ids

    cold = engine.new_state(4096)
    cold_logits = engine.prefill(saved_ids, cold)
    resumed_logits, _ = backend.runner.prefill(saved_ids)  # held: the logits the store gave back
    torch.testing.assert_close(resumed_logits, cold_logits, rtol=1e-5, atol=1e-5)
    token = int(cold_logits.argmax())
    step_cold = engine.forward([token], cold)[-1]
    step_resumed = engine.forward([token], backend.runner.state)[-1]
    torch.testing.assert_close(step_resumed, step_cold, rtol=1e-5, atol=1e-5)


def test_the_next_turn_after_a_resume_pays_only_for_itself(engine: object, repo: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first_backend = open_backend(engine, store_dir)
    first = new_session(repo, first_backend)
    first.run("What does f1 do?", answer_only=True)
    backend = open_backend(engine, store_dir)
    resumed = new_session(repo, backend)
    resumed.resume(SessionStore(repo).latest())
    held = prefill_session(backend, resumed).tokens
    result = resumed.run("And f2?", answer_only=True)
    assert result.error is None
    assert result.usage.cached_tokens == held  # the whole saved conversation came from the state


def test_without_a_store_a_resume_recomputes_the_conversation(engine: object, repo: Path) -> None:
    backend = EmbeddedBackend(engine, chat_format_for(Path(engine.checkpoint)), 4096, None)
    first = new_session(repo, backend)
    first.run("What does f5 do?", answer_only=True)
    other = EmbeddedBackend(engine, chat_format_for(Path(engine.checkpoint)), 4096, None)
    resumed = new_session(repo, other)
    resumed.resume(SessionStore(repo).latest())
    stats = prefill_session(other, resumed)
    assert stats.reused_tokens == 0 and stats.computed_tokens == stats.tokens > 0
