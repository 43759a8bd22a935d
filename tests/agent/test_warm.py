"""The background re-prefill on the embedded engine (a tiny random checkpoint, CPU): after a one-file
change near the end only the tail is computed, and the state is the one a cold prefill builds; a
question arriving mid-refresh stops it at a step boundary and resumes from what it left."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from v4.agent.context import RepositoryContext
from v4.agent.backends import EmbeddedBackend
from v4.agent.chat_format import Message, chat_format_for
from v4.agent.prompts import system_message
from v4.agent.session import Session
from v4.agent.warm import ContextWarmer, WarmReport
from tests.conftest import make_repo, tiny_chat_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> object:
    from v4 import model

    return model.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("warm"), seed=0), device="cpu")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    files = {f"pkg/mod{n:02}.py": f"def f{n}(x):\n    '''Return x times {n}.'''\n    return x * {n}\n\n\n"
             f"class Box{n}:\n    size = {n}\n" for n in range(24)}
    return make_repo(tmp_path / "repo", files)


class Setup:
    """A session over `repo` on the embedded backend with a prefix-state store, and a warmer with reports."""

    def __init__(self, engine: object, repo: Path, store_dir: Path, step_tokens: int) -> None:
        from v4.model.prefix_store import PrefixStore

        self.backend = EmbeddedBackend(engine, chat_format_for(Path(engine.checkpoint)), 8192,
                                       PrefixStore(store_dir))
        self.context = RepositoryContext(repo, Path(engine.checkpoint))
        self.context.scan()
        self.context.plan(8192)
        self.session = Session(repo, self.backend, self.context.repository_text())
        self.reports: list[WarmReport] = []
        self.reported = threading.Condition()
        self.warmer = ContextWarmer(self.session, self.backend, self._report, step_tokens)

    def _report(self, report: WarmReport) -> None:
        with self.reported:
            self.reports.append(report)
            self.reported.notify_all()

    def wait_report(self, count: int) -> WarmReport:
        with self.reported:
            assert self.reported.wait_for(lambda: len(self.reports) >= count, 120), "no prefill report"
            return self.reports[count - 1]

    def change(self, path: str, text: str) -> Message:
        (self.context.root / path).write_text(text)
        self.context.index.update([path])
        self.context.plan(8192)
        return system_message(self.context.repository_text())


@pytest.fixture()
def setup(engine: object, repo: Path, tmp_path: Path) -> Iterator[Setup]:
    made = Setup(engine, repo, tmp_path / "engram", step_tokens=96)
    yield made
    made.warmer.close()


def test_a_change_near_the_end_recomputes_only_the_tail(setup: Setup, engine: object, tmp_path: Path) -> None:
    from v4.model.prefix_store import PrefixStore

    setup.warmer.refresh(setup.session.system, "start")
    first = setup.wait_report(1).stats
    assert first.computed_tokens == first.tokens == first.held_tokens and not first.cancelled
    last = [s.path for s in setup.context.segments][-1]
    system = setup.change(last, (setup.context.root / last).read_text() + "\nEXTRA = 1\n")
    setup.warmer.refresh(system, "edit")
    after = setup.wait_report(2)
    stats = after.stats
    assert after.tags == ("edit",) and not stats.cancelled and stats.held_tokens == stats.tokens
    assert 0 < stats.computed_tokens < stats.tokens / 4 and stats.reused_tokens > stats.tokens / 2
    assert setup.session.system is system
    ids, boundaries = setup.backend.encode_with_boundaries([system], add_generation_prompt=False)
    _, cold, _ = PrefixStore(tmp_path / "cold").prefill(engine, ids, boundaries, len(ids) + 8)  # one go
    warm = setup.backend.runner._marks[-1].logits  # the logits after the prefilled prompt, kept with its mark
    assert setup.backend.runner.held_ids == ids and torch.equal(warm, cold)  # in steps, the same pieces: bit for bit


def test_a_question_mid_refresh_stops_it_at_a_step_and_resumes_from_there(setup: Setup) -> None:
    setup.warmer.refresh(setup.session.system, "start")
    setup.wait_report(1)
    first = [s.path for s in setup.context.segments][0]  # near the start: almost everything to redo
    system = setup.change(first, "FIRST = 0\n" + (setup.context.root / first).read_text())
    entered = threading.Event()
    forward = setup.backend.engine.forward
    calls = {"n": 0}

    def counting_forward(ids: object, state: object, **options: object) -> torch.Tensor:  # question mid-refresh
        calls["n"] += 1
        if calls["n"] == 2:
            entered.set()
        return forward(ids, state, **options)

    setup.backend.engine.forward = counting_forward
    try:
        setup.warmer.refresh(system, "edit")
        assert entered.wait(60)
        with setup.warmer.foreground():
            stopped = setup.wait_report(2).stats
            assert stopped.cancelled and 0 < stopped.held_tokens < stopped.tokens
            assert setup.session.system is system  # the turn sees the new repository
            question = setup.session.messages([Message("user", "What changed?")])
            for _ in setup.backend.stream(question, 1):
                pass
            assert setup.backend.last_usage.cached_tokens == stopped.held_tokens  # resumed where it stopped
    finally:
        del setup.backend.engine.forward  # the engine's own method again
    assert setup.warmer.idle(5)


def test_a_newer_change_replaces_a_running_refresh_and_its_report_covers_both(setup: Setup) -> None:
    setup.warmer.refresh(setup.session.system, "start")
    one = setup.change("pkg/mod00.py", "ONE = 1\n")
    setup.warmer.refresh(one, "one")
    two = setup.change("pkg/mod01.py", "TWO = 2\n")
    setup.warmer.refresh(two, "two")
    assert setup.warmer.idle(120)
    last = setup.reports[-1]
    assert last.tags[-1] == "two" and "one" in last.tags and not last.stats.cancelled
    assert setup.session.system is two
