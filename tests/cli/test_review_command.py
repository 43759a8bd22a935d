"""`v4 review --accept/--reject` says what it did (issue 24): each hunk it reverted, with its lines, each
it accepted, then what is still pending. Run as the real `v4` script, the way a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.test_workspace import NUMBERED, agent_edit, isolated_git, new_repo  # noqa: F401 (fixture)
from v4.agent.workspace import Workspace
from v4.cli.main import main

V4 = Path(sys.executable).with_name("v4")
EDITED = NUMBERED.replace("line 5\n", "line five\n").replace("line 12\n", "line twelve\n")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = new_repo(tmp_path / "repo", {"a.py": NUMBERED, "b.py": "b = 1\n"})
    agent_edit(Workspace(root), {"a.py": EDITED, "b.py": "b = 2\n"})
    return root


def hunk_ids(repo: Path) -> dict[str, str]:
    """The first changed line of each pending hunk -> its id."""
    return {next(line for line in h.lines if line[0] in "+-"): h.id for d in Workspace(repo).pending() for h in d.hunks}


@pytest.mark.skipif(not V4.exists(), reason="needs the installed v4 script")
def test_reject_prints_what_it_reverted_and_what_is_still_pending(repo: Path) -> None:
    ids = hunk_ids(repo)
    done = subprocess.run([str(V4), "review", "--repo", str(repo), "--reject", ids["-line 12"]],
                          capture_output=True, text=True, check=True)
    out = done.stdout
    assert "rejected 1 hunk (reverted in the work tree)" in out
    assert f"a.py  hunk {ids['-line 12']}  @@ -9,7 +9,7 @@" in out and "-line 12\n" in out and "+line twelve" in out
    pending = out[out.index("still pending:"):]
    assert ids["-line 5"] in pending and ids["-b = 1"] in pending and ids["-line 12"] not in pending
    assert "no pending changes" not in out
    assert (repo / "a.py").read_text() == NUMBERED.replace("line 5\n", "line five\n")


def test_rejecting_everything_names_each_hunk_then_says_nothing_is_left(repo: Path, capsys) -> None:
    assert main(["review", "--repo", str(repo), "--reject"]) == 0
    out = capsys.readouterr().out
    assert "rejected 3 hunks" in out and out.count("  hunk ") == 3
    assert "a.py" in out and "b.py" in out and "+b = 2" in out
    assert out.rstrip().endswith("v4: no pending changes left")
    assert (repo / "a.py").read_text() == NUMBERED and (repo / "b.py").read_text() == "b = 1\n"


def test_accept_and_reject_together(repo: Path, capsys) -> None:
    ids = hunk_ids(repo)
    assert main(["review", "--repo", str(repo), "--reject", ids["-b = 1"], "--accept", ids["-line 5"]]) == 0
    out = capsys.readouterr().out
    assert "rejected 1 hunk" in out and "b.py  hunk" in out
    accepted = out[out.index("accepted 1 hunk"):out.index("still pending:")]
    assert ids["-line 5"] in accepted and "`v4 commit`" in accepted
    assert ids["-line 12"] in out[out.index("still pending:"):]


def test_listing_without_decisions_prints_no_decision_lines(repo: Path, capsys) -> None:
    assert main(["review", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "rejected" not in out and "accepted" not in out and "still pending" not in out
    assert out.count("  hunk ") == 3
