"""/init: the model drafts AGENTS.md from the repository map in a turn that may edit only that file; the
draft is a pending change, never committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.conftest import CALC, MakeApp, ask, chat_text, git, ready, until
from v4.tui.screens.help import HelpScreen

pytestmark = pytest.mark.anyio

DRAFT = "# AGENTS.md\n\n## Layout\n- calc.py: add and sub.\n"


def create(path: str, text: str) -> str:
    """A create block as a model writes it."""
    return f"{path}\n```markdown\n<<<<<<< SEARCH\n=======\n{text}>>>>>>> REPLACE\n```\n"


async def test_init_drafts_agents_md_as_a_pending_change_and_edits_nothing_else(make_app: MakeApp,
                                                                                repo: Path) -> None:
    greedy = ("Here is the file, and a fix.\n\n" + create("AGENTS.md", DRAFT)
              + "\ncalc.py\n```python\n<<<<<<< SEARCH\ndef add(a, b):\n=======\ndef plus(a, b):\n>>>>>>> REPLACE\n```\n")
    app = make_app(greedy, "Only the file, then.\n\n" + create("AGENTS.md", DRAFT))
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        main = app.main
        await ask(pilot, "/init")
        text = chat_text(app)
        assert "Drafting AGENTS.md from the repository map. This turn may edit only AGENTS.md" in text
        assert "calc.py is not one of the files you may edit: AGENTS.md" in text  # the first answer, refused whole
        assert "Applied to AGENTS.md (in the work tree, not committed)" in text
        assert main.pending_files == 1
        assert main.services.session.options.editable is None  # restored after the turn
        request = main.services.chat.backend.inner.calls[0][-1].content
        assert "Create `AGENTS.md` at the repository root" in request and "# Repository map" in request
        assert "calc.py: add, sub" in request
    assert (repo / "AGENTS.md").read_text() == DRAFT
    assert (repo / "calc.py").read_text() == CALC
    assert git(repo, "status", "--porcelain").strip() == "?? AGENTS.md"
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"


async def test_init_improves_the_existing_file(make_app: MakeApp, repo: Path) -> None:
    (repo / "CLAUDE.md").write_text("Use tabs.\n")
    git(repo, "add", "CLAUDE.md")
    git(repo, "commit", "-q", "-m", "instructions")
    improved = ("CLAUDE.md\n```markdown\n<<<<<<< SEARCH\nUse tabs.\n=======\nUse tabs.\n\n## Layout\n"
                "- calc.py: add and sub.\n>>>>>>> REPLACE\n```\n")
    app = make_app(improved)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await ask(pilot, "/init")
        assert "Improving CLAUDE.md from the repository map" in chat_text(app)
        request = app.main.services.chat.backend.inner.calls[0][-1].content
        assert "already has `CLAUDE.md`" in request and "Use tabs." in request
    assert (repo / "CLAUDE.md").read_text() == "Use tabs.\n\n## Layout\n- calc.py: add and sub.\n"
    assert not (repo / "AGENTS.md").exists()
    assert git(repo, "status", "--porcelain").strip() == "M CLAUDE.md"


async def test_init_is_refused_while_a_turn_runs_and_listed_in_help(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        app.main.busy = True
        app.main.run_slash("/init")
        await until(pilot, lambda: "v4 is busy with the last request" in chat_text(app))
        assert "Drafting" not in chat_text(app)
        app.main.busy = False
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen) and "/init" in app.screen.text()


async def test_init_before_start_up_says_why(repo: Path, tmp_path: Path) -> None:
    from v4.agent.options import BackendOptions
    from v4.agent.workspace import Workspace
    from v4.tui.app import V4App

    app = V4App(repo, BackendOptions(replay=tmp_path / "missing.json"), Workspace(repo))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.main.startup_error is not None)
        app.main.run_slash("/init")
        await until(pilot, lambda: "/init needs the model, and v4 could not start" in chat_text(app))
    assert not (repo / "AGENTS.md").exists()
