"""Undo asks first (issue 24): `undo_plan` says which commit and files `undo` would remove, by the same
checks, and `undo(expected=...)` removes only the commit the user confirmed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.test_workspace import NUMBERED, agent_edit, head, isolated_git, new_repo  # noqa: F401 (fixture)
from tests.conftest import git
from v4.agent.workspace import UndoError, UndoPlan, Workspace


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "repo", {"a.py": NUMBERED, "b.py": "b = 1\n"})


def test_the_plan_names_the_commit_and_its_files_and_changes_nothing(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "rewritten\n", "new.py": "n\n"})
    sha = ws.commit()
    assert ws.undo_plan() == UndoPlan(sha, "v4: edit a.py; add new.py", ("a.py", "new.py"))
    assert head(repo) == sha and (repo / "new.py").exists()
    assert ws.undo(expected=sha) == sha and not (repo / "new.py").exists()


def test_the_plan_refuses_as_undo_does(repo: Path) -> None:
    with pytest.raises(UndoError, match="not a commit v4 made"):
        Workspace(repo).undo_plan()


def test_undo_refuses_when_head_moved_since_the_user_confirmed(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "first\n"})
    confirmed = ws.undo_plan().sha if ws.commit() else None
    agent_edit(ws, {"b.py": "b = 2\n"})
    newer = ws.commit()
    with pytest.raises(UndoError, match="not .*the commit you confirmed; nothing was undone"):
        ws.undo(expected=confirmed)
    assert head(repo) == newer and git(repo, "status", "--porcelain") == ""
