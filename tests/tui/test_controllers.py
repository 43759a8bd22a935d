"""Controllers with fakes: no app, messages collected in a list."""

from __future__ import annotations

from pathlib import Path

import pytest

from v4.agent.backends import BackendError, ReplayBackend, Usage
from v4.agent.chat_format import Message
from v4.agent.options import BackendOptions
from v4.agent.session import Session
from v4.agent.turn import TurnResult
from v4.agent.workspace import Workspace
from tests.tui.conftest import CALC, TYPED, git
from v4.tui import messages as m
from v4.tui.controllers.chat import ChatController, describe_failure, turn_notes
from v4.tui.controllers.metering import STOPPED, MeteredBackend
from v4.tui.controllers.review import ReviewController, leave_question, undo_question
from v4.tui.controllers.startup import StartupController, fix_hint


class Clock:
    """A fake clock: each reading is one second after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_metered_backend_reports_attempts_pieces_and_timing() -> None:
    posted: list = []
    inner = ReplayBackend(["a" * 100, "b" * 10])
    backend = MeteredBackend(inner, post_message=posted.append, clock=Clock())
    backend.begin_turn()
    question = [Message("user", "q")]
    assert "".join(backend.stream(question, 100)) == "a" * 100
    assert "".join(backend.stream([*question, Message("user", "your edit failed")], 100)) == "b" * 10
    started = [p for p in posted if isinstance(p, m.AnswerStarted)]
    assert [(s.attempt, s.reflection) for s in started] == [(0, None), (1, "your edit failed")]
    assert "".join(p.text for p in posted[:4] if isinstance(p, m.AnswerDelta)) == "a" * 100
    metrics = [p for p in posted if isinstance(p, m.AnswerMetrics)][0]
    # clock: start 1, first piece 2, end 3 -> TTFT 1 s; 25 completion tokens, 24 after the first in 1 s
    assert (metrics.ttft_s, metrics.tokens_per_s) == (1.0, 24.0)


def test_metered_backend_stops_between_pieces() -> None:
    backend = MeteredBackend(ReplayBackend(["x" * 200]), post_message=lambda _: None)
    pieces = backend.stream([Message("user", "q")], 100)
    next(pieces)
    backend.stop()
    with pytest.raises(BackendError, match=STOPPED):
        next(pieces)


def test_chat_controller_runs_a_turn_and_reports_pending_files(repo: Path) -> None:
    posted: list = []
    backend = MeteredBackend(ReplayBackend([TYPED]), post_message=posted.append)
    session = Session(repo, backend, "==> calc.py <==\n" + CALC)
    review = ReviewController(workspace=Workspace(repo))
    chat = ChatController(session=session, backend=backend, pending_files=review.pending_files,
                          post_message=posted.append)
    result = chat.ask("add type hints")
    assert result.applied and result.files == ["calc.py"]
    finished = posted[-1]
    assert isinstance(finished, m.TurnFinished) and finished.pending_files == 1
    chat.clear()
    assert session.history == []


def test_review_controller_keeps_reverts_commits_and_undoes(repo: Path) -> None:
    session = Session(repo, ReplayBackend([TYPED]), "")
    session.run("add type hints")
    review = ReviewController(workspace=Workspace(repo))
    first, second = review.pending()[0].hunks
    kept = review.finish({second.id: False}, commit=False, message=None)
    assert (kept.reverted, kept.kept, kept.commit) == (1, 1, None)
    assert "def sub(a, b):" in (repo / "calc.py").read_text()
    committed = review.finish({}, commit=True, message="typed add")
    assert committed.commit and "committed" in committed.summary
    assert git(repo, "log", "-1", "--format=%s").strip() == "typed add"
    plan = review.undo_plan()
    assert plan.sha == committed.commit and plan.paths == ("calc.py",)
    question, details = undo_question(plan)
    assert plan.sha[:12] in question and "typed add" in details and "  calc.py" in details
    assert review.undo(plan.sha)[0] and (repo / "calc.py").read_text() == CALC
    assert review.undo_plan().startswith("Undo refused")
    done, text = review.undo(plan.sha)
    assert not done and "Undo refused" in text


def test_leaving_review_asks_only_when_a_rejection_is_not_applied() -> None:
    assert leave_question({}) is None and leave_question({"a#1": True}) is None
    question, details = leave_question({"a#1": False, "a#2": True, "b#1": False})
    assert "2 rejected hunks not reverted yet" in question and "Discard" in details


def test_rejecting_everything_then_committing_says_there_is_nothing(repo: Path) -> None:
    Session(repo, ReplayBackend([TYPED]), "").run("add type hints")
    review = ReviewController(workspace=Workspace(repo))
    decisions = {h.id: False for d in review.pending() for h in d.hunks}
    outcome = review.finish(decisions, commit=True, message=None)
    assert outcome.error and "nothing to commit" in outcome.error and (repo / "calc.py").read_text() == CALC


def _options(**values: object) -> BackendOptions:
    return BackendOptions(use_store=False, **values)


def test_startup_reports_each_step_then_ready(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "replay.json"
    script.write_text('["hello"]')
    posted: list = []
    review = ReviewController(workspace=Workspace(repo))
    StartupController(root=repo, options=_options(replay=script), review=review, post_message=posted.append).run()
    finished = [p.step for p in posted if isinstance(p, m.StartupStep) and p.finished]
    # a machine without bubblewrap adds the sandbox's warning as one more "plan" note
    assert list(dict.fromkeys(finished)) == ["index", "model", "plan", "prefill"]
    ready = posted[-1]
    assert isinstance(ready, m.StartupReady) and ready.info.kind == "replay" and ready.prefill is None
    assert sorted(f.path for f in ready.context.files) == ["calc.py", "notes.md"]
    assert "==> calc.py <==" in ready.services.session.system.content


def test_startup_failure_is_a_message_not_an_exception(repo: Path, tmp_path: Path) -> None:
    posted: list = []
    review = ReviewController(workspace=Workspace(repo))
    options = _options(replay=tmp_path / "none.json", endpoint="http://127.0.0.1:9")
    StartupController(root=repo, options=options, review=review, post_message=posted.append).run()
    assert isinstance(posted[-1], m.StartupFailed) and "choose one model" in posted[-1].error
    assert "To fix: check the replay file" in posted[-1].hint and "restart v4" in posted[-1].hint


@pytest.mark.parametrize("options, says", [
    (dict(replay=Path("r.json")), "check the replay file r.json"),
    (dict(endpoint="http://h:1/v1"), "check that http://h:1/v1 is up"),
    (dict(model=Path("/ckpt")), "check the checkpoint directory /ckpt"),
    ({}, "name a model with --model DIR"),
])
def test_a_failed_start_says_how_to_fix_it(options: dict, says: str) -> None:
    assert fix_hint(_options(**options)).startswith(f"To fix: {says}")


def test_usage_is_forwarded() -> None:
    inner = ReplayBackend(["abcd" * 4])
    backend = MeteredBackend(inner, post_message=lambda _: None)
    list(backend.stream([Message("user", "q")], 10))
    assert isinstance(backend.last_usage, Usage) and backend.last_usage.completion_tokens == 4


def test_startup_cancelled_before_a_step_posts_nothing_more(repo: Path, tmp_path: Path) -> None:
    posted: list = []
    review = ReviewController(workspace=Workspace(repo))
    startup = StartupController(root=repo, options=_options(replay=tmp_path / "r.json"), review=review,
                                post_message=posted.append)
    startup.cancel()
    startup.run()
    assert posted == []


@pytest.mark.parametrize("result, expected", [
    (TurnResult(), None),
    (TurnResult(error="Your edits were not applied.\nblock 1 failed", reflections=3),
     "✗ The model's edits did not apply after 3 reflections: Your edits were not applied."),
    (TurnResult(error="v4 will not edit files with uncommitted changes", refused=True), "v4 did not edit: v4 will"),
    (TurnResult(error=STOPPED), "Stopped."),
    (TurnResult(error="cannot reach http://x"), "✗ The turn failed: cannot reach"),
    (TurnResult(error="the tests still fail", applied=True), "Applied, but: the tests still fail"),
])
def test_describe_failure_says_whose_fault_it_was(result: TurnResult, expected: str | None) -> None:
    text = describe_failure(result)
    assert text == expected if expected is None else text.startswith(expected)


@pytest.mark.parametrize("result, expected", [
    (TurnResult(), [("No changes proposed: the answer has no edits.", "info")]),
    (TurnResult(declined=True), [("Not applied.", "info")]),
    (TurnResult(error=STOPPED), [("Stopped.", "info")]),
    (TurnResult(applied=True, files=["a.py"]), [("✓ Applied to a.py (in the work tree, not committed). "
                                                 "Review with ctrl+r or /review.", "success")]),
])
def test_every_turn_ends_with_a_word(result: TurnResult, expected: list[tuple[str, str]]) -> None:
    assert turn_notes(result) == expected
