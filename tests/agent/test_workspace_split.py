"""Issue 24: each change v4 made is a hunk of its own (as `git add -p`'s split gives), so two edits a
few lines apart can be kept and rejected apart, with the user's later lines as safe as before."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.agent.test_workspace import NUMBERED, agent_edit, isolated_git, new_repo  # noqa: F401 (fixture)
from v4.agent.workspace import Workspace, WorkspaceError
from v4.agent.workspace_diff import FileDiff, file_diff, split_changes

SIX_APART = NUMBERED.replace("line 5\n", "line five\n").replace("line 12\n", "line twelve\n")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "repo", {"a.py": NUMBERED})


def test_two_edits_six_lines_apart_are_two_hunks() -> None:
    diff, owner = file_diff("a.py", NUMBERED, SIX_APART)
    first, second = diff.hunks
    assert first.header == "@@ -2,7 +2,7 @@" and second.header == "@@ -9,7 +9,7 @@"
    assert [line for line in first.lines if line[0] in "+-"] == ["-line 5", "+line five"]
    assert [line for line in second.lines if line[0] in "+-"] == ["-line 12", "+line twelve"]
    assert sorted(owner.values()) == [0, 1]


def test_changes_one_line_apart_share_their_context_line() -> None:
    edited = NUMBERED.replace("line 5\n", "five\n").replace("line 7\n", "seven\n")
    first, second = file_diff("a.py", NUMBERED, edited)[0].hunks
    assert first.lines == (" line 2", " line 3", " line 4", "-line 5", "+five", " line 6")
    assert second.lines == (" line 6", "-line 7", "+seven", " line 8", " line 9", " line 10")


def test_split_changes_keeps_at_most_context_lines_and_none_at_the_edges() -> None:
    opcodes = [("replace", 0, 1, 0, 1), ("equal", 1, 9, 1, 9), ("insert", 9, 9, 9, 10)]
    assert split_changes(opcodes, 3) == [[("replace", 0, 1, 0, 1), ("equal", 1, 4, 1, 4)],
                                         [("equal", 6, 9, 6, 9), ("insert", 9, 9, 9, 10)]]


@pytest.mark.parametrize("edited", [
    SIX_APART,
    "".join(f"line {i}\n" if i % 2 else f"LINE {i}\n" for i in range(1, 31)),  # every other line
    "new first\n" + NUMBERED.replace("line 2\n", "").replace("line 30\n", "line 30\nnew last"),
])
def test_every_split_hunk_applies_alone_with_git_apply(tmp_path: Path, edited: str) -> None:
    """The headers and context are right: each hunk, alone, is a patch git accepts on the original."""
    diff = file_diff("a.py", NUMBERED, edited)[0]
    assert len({h.id for h in diff.hunks}) == len(diff.hunks) > 1
    (tmp_path / "a.py").write_text(NUMBERED)
    for hunk in diff.hunks:
        patch = FileDiff("a.py", "modified", (hunk,)).text
        done = subprocess.run(["git", "apply", "--check", "-"], cwd=tmp_path, input=patch, text=True,
                              capture_output=True)
        assert done.returncode == 0, f"{hunk.header}: {done.stderr}\n{patch}"


def test_ids_are_stable_across_reads(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": SIX_APART})
    assert [h.id for h in ws.pending()[0].hunks] == [h.id for h in Workspace(repo).pending()[0].hunks]


@pytest.mark.parametrize("reject", [0, 1])
def test_one_of_two_close_edits_is_rejected_and_the_other_kept(repo: Path, reject: int) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": SIX_APART})
    hunks = ws.pending()[0].hunks
    remaining = ws.review({hunks[reject].id: False, hunks[1 - reject].id: True})
    kept = ("line 5\n", "line five\n") if reject == 1 else ("line 12\n", "line twelve\n")
    assert (repo / "a.py").read_text() == NUMBERED.replace(*kept)
    [left] = remaining[0].hunks
    assert [line for line in left.lines if line[0] in "+-"] == ["-" + kept[0].strip(), "+" + kept[1].strip()]


def test_rejecting_one_split_hunk_keeps_the_users_later_lines(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": SIX_APART})
    mine = SIX_APART.replace("line 25\n", "line 25\nthe user's line\n")
    (repo / "a.py").write_text(mine)
    first, second = ws.pending()[0].hunks  # v4's hunks only: the user's line is not one
    assert ws.review({second.id: False})[0].hunks == (first,)
    assert (repo / "a.py").read_text() == mine.replace("line twelve\n", "line 12\n")


def test_rejecting_a_split_hunk_the_user_edited_over_is_refused(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": SIX_APART})
    mine = SIX_APART.replace("line twelve\n", "line 12 (mine)\n")
    (repo / "a.py").write_text(mine)
    first, second = ws.pending()[0].hunks
    with pytest.raises(WorkspaceError, match="your later edits to a.py touch the lines"):
        ws.review({second.id: False})
    assert (repo / "a.py").read_text() == mine
    ws.review({first.id: False})  # the other hunk's lines are the user's to keep: it still reverts
    assert (repo / "a.py").read_text() == mine.replace("line five\n", "line 5\n")
