"""Watch mode in the TUI (pilot, replay backend, real file-system events): the toggle, changes reaching
the context panel, and AI comments turning into turns whose edits wait for review."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.conftest import CALC, MakeApp, chat_text, git, ready, submit, until
from v4.tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.anyio
BANG, ASK = "AI" + "!", "AI" + "?"  # spelled apart: this file is no request to a watcher
ASKED = CALC.replace("def add(a, b):\n", f"def add(a, b):\n    # add type hints {BANG}\n")
TYPED = ("Adding the hints.\n\ncalc.py\n```python\n<<<<<<< SEARCH\n"
         f"def add(a, b):\n    # add type hints {BANG}\n=======\ndef add(a: int, b: int) -> int:\n>>>>>>> REPLACE\n```\n")


async def test_watch_mode_turns_an_ai_comment_into_an_edit_for_review(make_app: MakeApp, repo: Path) -> None:
    app = make_app(TYPED, "add returns a + b.")
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        main = app.main
        await pilot.press("f5")
        await until(pilot, lambda: "Watch mode on" in chat_text(app))
        assert main.watching and "watch on" in str(main.query_one(StatusBar).render())
        (repo / "notes.md").write_text("# Notes\n\nSomething new.\n")  # a plain change: the context follows
        await until(pilot, lambda: "watch: changed notes.md" in chat_text(app))
        # the context is rebuilt in a worker: it may land a moment after the chat line
        await until(pilot, lambda: "Something new" in main.services.session.system.content)
        assert main.changed == ("notes.md",)
        (repo / "calc.py").write_text(ASKED)
        await until(pilot, lambda: "Applied to calc.py" in chat_text(app), timeout_s=30)
        await until(pilot, lambda: not main.busy)
        text = (repo / "calc.py").read_text()
        assert "def add(a: int, b: int) -> int:" in text and BANG not in text
        assert "█    # add type hints" in chat_text(app)  # the request as sent, with its code
        assert git(repo, "status", "--porcelain").split() == ["M", "calc.py", "M", "notes.md"]  # not committed
        await until(pilot, lambda: main.pending_files == 1)  # calc.py waits for review; notes.md is the user's
        (repo / "calc.py").write_text(text.replace("    return a - b", f"    return a - b  # why {ASK}"))
        await until(pilot, lambda: "add returns a + b." in chat_text(app), timeout_s=30)
        await until(pilot, lambda: not main.busy)
        assert f"# why {ASK}" in (repo / "calc.py").read_text()  # a question edits nothing
        await submit(pilot, "/watch")
        await until(pilot, lambda: "Watch mode off" in chat_text(app) and not main.watching)
        (repo / "calc.py").write_text(ASKED)  # no longer watched: nothing asks the model
        await pilot.pause(1.0)
        assert chat_text(app).count("watch: AI") == 2
