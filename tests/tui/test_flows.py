"""Each flow of the app, driven by a pilot at 80x24 on a temporary git repository with replayed answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Label

from tests.tui.conftest import CALC, MISSING, TYPED, MakeApp, ask, chat_text, git, ready, submit, until
from v4.tui.screens.choice import ChoiceScreen
from v4.tui.screens.help import HelpScreen
from v4.tui.screens.review import ReviewScreen
from v4.tui.widgets.chat_log import ChatLog
from v4.tui.widgets.hunk_view import HunkView

pytestmark = pytest.mark.anyio


async def test_ask_review_accept_reject_commit_and_undo(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints", typed=True)
        shown = chat_text(app)
        assert "add type hints" in shown and "I will add type hints to both functions." in shown
        assert "<<<<<<<" not in shown and ">>>>>>>" not in shown  # edit blocks are drawn as diffs
        assert "-def add(a, b):" in shown and "+def add(a: int, b: int) -> int:" in shown
        assert "[edit calc.py]" in shown and "Applied to calc.py" in shown
        assert git(repo, "status", "--porcelain").strip() == "M calc.py"  # applied, not committed
        assert app.main.pending_files == 1 and app.main.changed == ("calc.py",)

        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
        await pilot.pause()
        first, second = app.screen.query(HunkView)
        await pilot.press("a")  # the first hunk has focus: accept it with a key
        await pilot.click(f"#{second.id} #reject")  # reject the second with the mouse
        assert (first.decision, second.decision) == (True, False)
        await pilot.press("m", *"Type add", "enter")  # m: edit the message; enter: commit
        await until(pilot, lambda: app.screen is app.main)
        await until(pilot, lambda: "committed" in chat_text(app))

        assert "reverted 1 hunk; committed" in chat_text(app)
        message = git(repo, "log", "-1", "--format=%B")
        assert message.startswith("Type add") and "Co-authored-by: v4" in message
        committed = (repo / "calc.py").read_text()
        assert "def add(a: int, b: int) -> int:" in committed and "def sub(a, b):" in committed
        assert git(repo, "status", "--porcelain") == ""

        await submit(pilot, "/undo")  # asks first: which commit, which files
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.press("y")
        await until(pilot, lambda: "Undid v4 commit" in chat_text(app))
        assert (repo / "calc.py").read_text() == CALC
        assert git(repo, "log", "-1", "--format=%s").strip() == "start"


async def test_escape_then_discard_leaves_review_without_changing_anything(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
        await pilot.press("x", "escape")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))  # a rejection is never dropped unasked
        await pilot.press("d")
        await until(pilot, lambda: app.screen is app.main)
        assert "def sub(a: int, b: int) -> int:" in (repo / "calc.py").read_text()
        assert git(repo, "log", "--format=%s").split() == ["start"]


async def test_edits_that_do_not_apply_show_the_error_and_each_reflection(make_app: MakeApp, repo: Path) -> None:
    app = make_app(MISSING, MISSING, MISSING, MISSING)  # the first answer and 3 reflections
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "type mul")
        shown = chat_text(app)
        assert shown.count("v4 told the model its edits did not apply") == 3
        assert "def mul(a, b):" in shown  # what the model was told: the SEARCH that matched nothing
        assert "The model's edits did not apply" in shown
        assert (repo / "calc.py").read_text() == CALC and app.main.pending_files == 0


async def test_a_reflection_that_fixes_the_edit_applies_it(make_app: MakeApp, repo: Path) -> None:
    app = make_app(MISSING, TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        shown = chat_text(app)
        assert shown.count("v4 told the model") == 1 and "Applied to calc.py" in shown
        assert "def add(a: int, b: int) -> int:" in (repo / "calc.py").read_text()


async def test_slash_commands(make_app: MakeApp, repo: Path) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        main = app.main

        async def slash(text: str, expect: str) -> None:
            await submit(pilot, text)
            await until(pilot, lambda: expect in chat_text(app) and not main.busy)

        await slash("/model", "Backend replay, model replay.json")
        await slash("/watch", "Watch mode on")
        assert main.watching is True
        await slash("/watch", "Watch mode off")
        assert main.watching is False
        await slash("/drop notes.md", "dropped notes.md from the context")
        assert {f.path: f.mode for f in main.context.files}["notes.md"] == "dropped"
        assert "==> notes.md" not in main.services.session.system.content
        await slash("/add notes.md", "added notes.md to the context in full")
        assert {f.path: f.forced for f in main.context.files}["notes.md"] == "added"
        assert "==> notes.md" in main.services.session.system.content
        await slash("/add nowhere.py", "nowhere.py is not a file of this repository")
        await slash("/bogus", "Unknown command /bogus")
        await slash("/revew", "Did you mean /review?")
        await slash("/add", "/add needs PATH")
        await slash("/undo", "Undo refused")
        await submit(pilot, "/review")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.pause()
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        await submit(pilot, "/help")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is main)
        await submit(pilot, "/clear")
        await pilot.pause()
        assert "Unknown command" not in chat_text(app) and main.services.session.history == []


async def test_context_panel_keys_add_and_drop_the_highlighted_file(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        table = app.main.query_one("#context-files", DataTable)
        table.focus()
        await pilot.pause()
        first = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        await pilot.press("d")
        await until(pilot, lambda: {f.path: f.mode for f in app.main.context.files}[first] == "dropped")
        await pilot.press("a")
        await until(pilot, lambda: {f.path: f.forced for f in app.main.context.files}[first] == "added")


async def test_help_screen_from_f1_and_question_mark(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        text = app.screen.text()
        assert "/add PATH" in text and "ctrl+r" in text and "ctrl+q, ctrl+c" in text
        await pilot.press("f1")  # f1 toggles
        assert app.screen is app.main
        app.main.query_one(ChatLog).focus()  # outside the prompt, ? is a key, not a character
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.main


async def test_command_palette_runs_actions(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"review")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))


async def test_resize_to_120x40_and_back(make_app: MakeApp) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert app.size == (120, 40)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.num_hunks == 2)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        await pilot.press("escape")
        await pilot.resize_terminal(40, 12)  # smaller than supported: nothing may crash
        await pilot.pause()
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert app.size == (80, 24) and app.screen is app.main


async def test_quit_with_pending_changes_keeps_them_and_says_so(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "add type hints")
        await pilot.press("ctrl+q")
    assert "calc.py" in app.return_value and "stay in the work tree" in app.return_value
    assert "def add(a: int, b: int) -> int:" in (repo / "calc.py").read_text()
    assert git(repo, "status", "--porcelain").strip() == "M calc.py"


async def test_ctrl_c_quits_and_says_nothing_without_pending_changes(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+c")
    assert app.return_value is None


async def test_a_backend_that_cannot_start_is_reported_and_the_app_stays_usable(repo: Path, tmp_path: Path) -> None:
    from v4.agent.options import BackendOptions
    from v4.agent.workspace import Workspace
    from v4.tui.app import V4App

    # Issue 24: typed requests vanished after a failed start; each stays in the chat, with why and how to fix it.
    app = V4App(repo, BackendOptions(replay=tmp_path / "missing.json"), Workspace(repo))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.main.startup_error is not None)
        assert app.focused is app.main.query_one("#prompt")  # typed keys go to the prompt, not nowhere
        for request in ("rename add", "type sub"):
            await pilot.press(*request, "enter")  # typed, as a user does
            await pilot.pause()
        lines = chat_text(app).splitlines()
        for request in ("rename add", "type sub"):
            answer = lines[lines.index(request) + 1]  # the request stays in the chat, answered
            assert answer.startswith("Asking needs the model, and v4 could not start: cannot read replay file")
            assert lines[lines.index(request) + 2].startswith("To fix: check the replay file")
        assert "not planned: v4 could not start" in str(app.main.query_one("#context-total", Label).content)
        await submit(pilot, "/review")  # what needs no model still works
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen))
        await pilot.press("ctrl+q")
