"""Thinking in the TUI: streamed into a collapsed block above the answer, expanded by a click or a key,
and /think turning it off (or its effort up) for the next turns."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Collapsible
from textual.widgets._collapsible import CollapsibleTitle

from tests.tui.conftest import TYPED, MakeApp, ask, chat_text, ready, submit, until
from v4.agent.backends import ReasoningDelta, ReplayBackend, TextDelta, Thinking
from v4.agent.chat_format import Message
from v4.agent.session import Session
from v4.tui import messages as m
from v4.tui.controllers.context import ContextController
from v4.tui.controllers.metering import MeteredBackend
from v4.tui.controllers.slash import SlashError, parse_slash, think_argument, thinking_note
from v4.tui.widgets.answer_view import AnswerView
from v4.tui.widgets.chat_log import ChatLog
from v4.tui.widgets.thinking_view import ThinkingView

pytestmark = pytest.mark.anyio

REASONING = "The user wants type hints on add and sub. Both take ints and return ints."
THOUGHT = {"reasoning": REASONING, "content": TYPED}


class Clock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


class OneView(App[None]):
    def __init__(self, view: ThinkingView) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        yield self.view


async def test_thinking_counts_words_while_it_streams_then_says_how_long() -> None:
    view = ThinkingView(clock=Clock(10.0, 12.5))
    async with OneView(view).run_test(size=(60, 10)) as pilot:
        assert view.title == "Thinking… (0 words)"
        view.append("Let me see")
        view.append(" what add does.")
        await until(pilot, lambda: view.title == "Thinking… (6 words)")
        assert view.collapsed and not view.query_one(Collapsible.Contents).display
        view.finish()
        assert view.title == "Thought for 2.5 s (6 words)"
        view.finish()  # the answer's end after its first piece: the time stays
        assert view.seconds == 2.5


async def test_reasoning_is_shown_collapsed_above_the_answer_and_expands(make_app: MakeApp) -> None:
    app = make_app(THOUGHT)
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        chat = app.main.query_one(ChatLog)
        view = chat.query_one(ThinkingView)
        assert view.text == REASONING and view.seconds is not None
        assert view.title.startswith("Thought for ") and view.title.endswith("(15 words)")
        entries = list(chat.children)
        assert entries.index(view) + 1 == entries.index(chat.query_one(AnswerView))  # right above its answer
        assert view.collapsed and not view.query_one(Collapsible.Contents).display
        assert "Applied to calc.py" in chat_text(app)  # the answer is read as before: thinking has no edits

        await pilot.click(view.query_one(CollapsibleTitle))
        await pilot.pause()
        assert not view.collapsed and view.query_one(Collapsible.Contents).display
        assert REASONING in str(view.query_one(".thinking-text").render())

        await pilot.press("ctrl+y")  # the key closes it again (from the prompt, which keeps focus)
        assert view.collapsed
        await pilot.press("ctrl+y")
        assert not view.collapsed


async def test_think_turns_thinking_off_for_the_next_request_and_sets_the_effort(make_app: MakeApp) -> None:
    app = make_app(THOUGHT, "No change needed.", "Still none.")
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        replay = app.main.services.chat.backend.inner
        asked: list[Thinking | None] = []
        events = replay.events

        def recording(messages, max_tokens, temperature=0.0, *, thinking=None, tools=()):  # noqa: ANN001, ANN202
            asked.append(thinking)
            return events(messages, max_tokens, temperature, thinking=thinking, tools=tools)

        replay.events = recording
        await ask(pilot, "add type hints")
        await submit(pilot, "/think")
        await until(pilot, lambda: not app.main.busy)
        assert "Thinking off for the next turns" in chat_text(app)
        assert app.main.services.session.options.thinking is False
        await ask(pilot, "anything else?")
        await submit(pilot, "/think max")
        await until(pilot, lambda: not app.main.busy)
        assert "Thinking on (effort max) for the next turns" in chat_text(app)
        await ask(pilot, "and now?")
        assert asked == [Thinking(True, None), None, Thinking(True, "max")]
        assert len(app.main.query(ThinkingView)) == 1  # only the first answer thought

        await submit(pilot, "/think harder")
        assert "/think takes on, off, high or max" in chat_text(app)
        assert app.main.services.session.options.effort == "max"


def test_think_argument_toggles_or_sets() -> None:
    assert think_argument(True, None, None) == (False, None)
    assert think_argument(False, "max", None) == (True, "max")
    assert think_argument(True, "high", "off") == (False, "high")
    assert think_argument(False, None, "MAX") == (True, "max")
    with pytest.raises(SlashError, match="not 'low'"):
        think_argument(True, None, "low")
    assert parse_slash("/think")[1] is None and parse_slash("/think high")[1] == "high"
    assert thinking_note(False, None).startswith("Thinking off") and "(effort high)" in thinking_note(True, "high")


def test_metered_backend_posts_the_thinking_apart_from_the_answer() -> None:
    posted: list = []
    backend = MeteredBackend(ReplayBackend([{"reasoning": "hmm", "content": "Yes."}]), post_message=posted.append)
    backend.begin_turn()
    events = list(backend.events([Message("user", "q")], 100, thinking=Thinking()))
    assert events == [ReasoningDelta("hmm"), TextDelta("Yes.")]
    assert [type(p) for p in posted] == [m.AnswerStarted, m.ThinkingDelta, m.AnswerDelta, m.AnswerMetrics]
    assert posted[1].text == "hmm"


def test_set_thinking_prefills_the_system_message_as_the_next_turns_render_it(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from v4.tui.controllers import context as context_module

    session = Session(repo, ReplayBackend([]), "repository text")
    prefilled: list[tuple[Thinking | None, bool]] = []

    def prefill_session(backend, session):  # noqa: ANN001, ANN202 - bootstrap's own signature
        prefilled.append((session.prompt_style()[0], controller.lock.locked()))
        return None

    class Context:
        def changed_files(self) -> list[str]:
            return ["calc.py"]

    monkeypatch.setattr(context_module, "prefill_session", prefill_session)
    posted: list = []
    controller = ContextController(context=Context(), session=session, backend=session.backend, budget=1,
                                   post_message=posted.append)
    controller.set_thinking(True, "max")
    assert (session.options.thinking, session.options.effort) == (True, "max")
    assert prefilled == [(Thinking(True, "max"), True)]
    assert [(p.context, p.changed, p.note, p.finished) for p in posted] == [(None, ("calc.py",), None, True)]
