"""Issue 24's TUI findings, one pilot test each: what a newcomer meets in the first hour says what is
true, asks before it rewrites history, and never drops a request or a decision without a word."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import Input, Label, ProgressBar

from tests.tui.conftest import CALC, TYPED, MakeApp, ask, chat_text, git, ready, submit, until
from v4.tui.screens.choice import ChoiceScreen
from v4.tui.screens.help import HelpScreen
from v4.tui.screens.review import ReviewScreen
from v4.tui.widgets.context_panel import ContextPanel
from v4.tui.widgets.hunk_view import HunkView
from v4.tui.widgets.startup_panel import StartupPanel

pytestmark = pytest.mark.anyio


async def test_the_ready_line_names_a_help_key_that_works_from_the_prompt(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await until(pilot, lambda: "Ready." in chat_text(app))
        line = next(t for t in chat_text(app).splitlines() if t.startswith("Ready."))
        assert "F1" in line and "?" not in line  # `?` types a "?" in the prompt: the line must not offer it
        prompt = app.main.query_one("#prompt", Input)
        assert app.focused is prompt
        await pilot.press("question_mark")
        assert prompt.value == "?" and app.screen is app.main
        await pilot.press("f1")  # what the line says, from where the focus is
        assert isinstance(app.screen, HelpScreen)


async def committed(pilot, app) -> str:  # noqa: ANN001 - the pilot and app of the test
    """Ask, review, commit everything; the commit's sha."""
    await ask(pilot, "add type hints")
    await pilot.press("ctrl+r")
    await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
    await pilot.press("ctrl+s")
    await until(pilot, lambda: "committed" in chat_text(app))
    return git(app.root, "rev-parse", "HEAD").strip()


async def test_ctrl_z_while_typing_never_touches_a_commit(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        sha = await committed(pilot, app)
        await pilot.press(*"rename add")
        await pilot.press("ctrl+z")  # text undo, to most people
        await pilot.pause(0.3)
        assert git(repo, "rev-parse", "HEAD").strip() == sha and app.screen is app.main
        assert app.main.query_one("#prompt", Input).value == "rename add"
        assert "ctrl+z" not in HelpScreen([*app.BINDINGS, *app.main.BINDINGS]).text()


async def test_undo_asks_first_naming_the_commit_and_its_files(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        sha = await committed(pilot, app)
        await submit(pilot, "/undo")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert sha[:12] in app.screen.question and "calc.py" in app.screen.details
        assert app.focused.id == "choice-cancel"  # enter does the safe thing
        await pilot.press("enter")
        await until(pilot, lambda: "Undo cancelled; nothing changed." in chat_text(app))
        assert git(repo, "rev-parse", "HEAD").strip() == sha
        await pilot.press("ctrl+p", *"undo last")  # the palette asks too
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("escape")
        await until(pilot, lambda: chat_text(app).count("Undo cancelled") == 2)
        assert git(repo, "rev-parse", "HEAD").strip() == sha


async def test_an_answer_without_edits_says_no_changes_were_proposed(make_app: MakeApp, repo: Path) -> None:
    app = make_app("add() returns the sum of its two arguments.")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "what does add do?")
        assert chat_text(app).rstrip().endswith("No changes proposed: the answer has no edits.")
        assert (repo / "calc.py").read_text() == CALC


async def test_indexing_shows_done_while_the_model_loads(make_app: MakeApp, repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from v4.tui.controllers import startup

    loading, release = threading.Event(), threading.Event()

    def slow_open_backend(options, **keywords):  # noqa: ANN001, ANN003, ANN202 - open_backend's own signature
        loading.set()
        release.wait(30)
        return open_backend(options, **keywords)

    open_backend = startup.open_backend
    monkeypatch.setattr(startup, "open_backend", slow_open_backend)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.main.query_one(ContextPanel)
        await until(pilot, loading.is_set)
        await pilot.pause()
        status = str(panel.query_one("#context-total", Label).content)
        assert "indexing" not in status and "repository indexed" in status
        assert not panel.query_one(ProgressBar).display  # no budget meter stuck at 0%
        assert app.main.query_one("#step-index").has_class("-done")
        release.set()
        await ready(pilot)
        assert panel.query_one(ProgressBar).display
        (repo / "notes.md").write_text("# Notes\n\nChanged after start-up.\n")
        await submit(pilot, "/drop calc.py")  # re-plans: the changed file is read again, with progress
        await until(pilot, lambda: "dropped calc.py" in chat_text(app) and not app.main.busy)
        assert app.main.query_one("#step-index").has_class("-done") and not app.main.query_one(StartupPanel).running


async def test_review_escape_with_a_rejection_asks_and_apply_reverts_it(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
        await pilot.press("down", "x", "escape")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert "1 rejected hunk not reverted yet" in app.screen.question
        await pilot.press("s")  # stay: back in review, the decision still there
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        assert [v.decision for v in app.screen.query(HunkView)] == [None, False]
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("enter")  # Apply has the focus: what the user decided is done
        await until(pilot, lambda: app.screen is app.main and "reverted 1 hunk" in chat_text(app))
        text = (repo / "calc.py").read_text()
        assert "def add(a: int, b: int) -> int:" in text and "def sub(a, b):" in text
        assert git(repo, "log", "--format=%s").split() == ["start"]  # applied, not committed


async def test_review_escape_with_only_accepts_leaves_without_asking(make_app: MakeApp) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
        await pilot.press("a", "escape")  # an accepted hunk stays pending, as it would undecided
        await until(pilot, lambda: app.screen is app.main)


async def test_help_lists_every_review_key_that_applies_decisions(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.text()
        appliers = [b for b in ReviewScreen.BINDINGS if b.action.startswith("finish")]
        assert {b.key for b in appliers} == {"ctrl+s", "ctrl+k"}
        for binding in [*appliers, *ReviewScreen.BINDINGS, *HunkView.BINDINGS]:
            assert f"`{binding.key.replace(',', ', ')}` {binding.description}" in text
        assert "revert the rejected hunks now and keep the rest pending" in text
