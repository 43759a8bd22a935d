"""Issue 21's findings, one test each: from any directory, under races and in hostile repositories,
the user's work is never lost or exposed, and nothing ends in a traceback."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from tests.agent.test_workspace import agent_edit, head, isolated_git, new_repo  # noqa: F401 (fixture)
from tests.conftest import git
from v4.agent.backends import ReplayBackend
from v4.agent.edits import FileChange
from v4.agent.session import Session, SessionOptions
from v4.agent.workspace import UndoError, Workspace, WorkspaceError

NUMBERED = "".join(f"line {i}\n" for i in range(1, 31))


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n```\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


def session(root: Path, *answers: str, **options: object) -> Session:
    return Session(root, ReplayBackend(list(answers)), "", SessionOptions(max_reflections=0, **options))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = new_repo(tmp_path / "repo", {"tracked.py": "x = 1\n", "pkg/mod.py": NUMBERED,
                                        ".gitignore": ".env\nlocal.cfg\n"})
    (root / "pkg" / "sub").mkdir()
    return root


# --- from a subdirectory ------------------------------------------------------------------------


def test_a_subdirectory_is_the_same_repository(repo: Path) -> None:
    (repo / "notes.py").write_text("only copy\n")  # untracked
    (repo / "tracked.py").write_text("x = 2  # the user's uncommitted edit\n")
    sub = repo / "pkg" / "sub"
    for answer in ("<<<<<<< DELETE notes.py\n", "<<<<<<< DELETE tracked.py\n"):
        result = session(sub, answer).run("delete it")
        assert result.refused and not result.applied, result.error
    assert (repo / "notes.py").read_text() == "only copy\n"
    assert (repo / "tracked.py").read_text().startswith("x = 2")
    result = session(sub, block("pkg/mod.py", "line 3\n", "line three\n")).run("edit")
    assert result.applied and result.files == ["pkg/mod.py"]
    [diff] = Workspace(sub).pending()  # review from anywhere sees v4's change
    assert diff.path == "pkg/mod.py"


# --- review rejects only v4's lines ----------------------------------------------------------------


def test_rejecting_a_hunk_keeps_the_users_later_lines(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"pkg/mod.py": NUMBERED.replace("line 5\n", "line five\n")})
    mod = repo / "pkg" / "mod.py"
    mod.write_text(mod.read_text().replace("line 25\n", "line 25\nthe user's line\n"))
    [diff] = ws.pending()
    assert [h.lines for h in diff.hunks][0].count("+line five") == 1 and len(diff.hunks) == 1  # only v4's
    assert ws.review({diff.hunks[0].id: False}) == []
    assert mod.read_text() == NUMBERED.replace("line 25\n", "line 25\nthe user's line\n")


def test_rejecting_a_hunk_the_user_edited_over_is_refused(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"pkg/mod.py": NUMBERED.replace("line 5\n", "line five\n")})
    mod = repo / "pkg" / "mod.py"
    mine = mod.read_text().replace("line five\n", "line FIVE (mine)\n")
    mod.write_text(mine)
    [diff] = ws.pending()
    with pytest.raises(WorkspaceError, match="your later edits to pkg/mod.py touch the lines"):
        ws.review({diff.hunks[0].id: False})
    assert mod.read_text() == mine


# --- records a clone cannot plant ----------------------------------------------------------------


def test_a_committed_v4_directory_is_never_read(repo: Path, tmp_path: Path) -> None:
    planted = {"version": 1, "files": {"../x": {"before": "pwned", "after_sha256": None},
                                       ".git/config": {"before": "[core]\n\tfsmonitor = touch /tmp/p\n"}}}
    (repo / ".v4").mkdir()
    (repo / ".v4" / "pending.json").write_text(json.dumps(planted))
    git(repo, "add", "-f", ".v4/pending.json")
    git(repo, "commit", "-q", "-m", "plant")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    ws = Workspace(clone)
    assert ws.pending() == [] and ws.review({}) == []
    assert not (tmp_path / "x").exists()
    assert "fsmonitor" not in (clone / ".git" / "config").read_text()


@pytest.mark.parametrize("entry", [
    {"../x": {"before": "a", "after": "b", "mode": None}},
    {"/etc/hosts": {"before": "a", "after": "b", "mode": None}},
    {".git/config": {"before": "a", "after": "b", "mode": None}},
    {"ok.py": {"before": 1, "after": "b", "mode": None}},
    "not json at all",
])
def test_a_tampered_record_is_refused_and_nothing_is_written(repo: Path, tmp_path: Path, entry: object) -> None:
    state = repo / ".git" / "v4"
    state.mkdir(parents=True, exist_ok=True)
    text = entry if isinstance(entry, str) else json.dumps({"version": 2, "files": entry})
    (state / "pending.json").write_text(text)
    before = (repo / ".git" / "config").read_text()
    ws = Workspace(repo)
    for action in (ws.pending, lambda: ws.review({}), ws.commit):
        with pytest.raises(WorkspaceError, match="is invalid"):
            action()
    assert (repo / ".git" / "config").read_text() == before and not (tmp_path / "x").exists()


# --- ignored files -------------------------------------------------------------------------------


def test_ignored_files_are_not_edited_or_deleted_unless_named(repo: Path) -> None:
    (repo / ".env").write_text("SECRET=1\n")
    (repo / "local.cfg").write_text("mine\n")
    for answer in (block(".env", "SECRET=1\n", "SECRET=2\n"), "<<<<<<< DELETE local.cfg\n"):
        result = session(repo, answer).run("touch it")
        assert not result.applied and "ignored by git" in (result.error or ""), result.error
    assert (repo / ".env").read_text() == "SECRET=1\n" and (repo / "local.cfg").read_text() == "mine\n"
    named = session(repo, block(".env", "SECRET=1\n", "SECRET=2\n"), editable=[".env"]).run("the user named it")
    assert named.applied


def test_commit_never_adds_an_ignored_file_or_claims_a_change_it_lacks(repo: Path) -> None:
    (repo / ".env").write_text("SECRET=1\n")
    ws = Workspace(repo)
    agent_edit(ws, {".env": "SECRET=2\n", "tracked.py": "x = 3\n"})
    assert ws.uncommittable() == [".env"]
    sha = ws.commit()
    assert git(repo, "show", "--name-only", "--format=%s", sha).split() == ["v4:", "edit", "tracked.py", "tracked.py"]
    assert ".env" not in git(repo, "ls-files")
    with pytest.raises(WorkspaceError, match="ignored by git"):
        ws.commit()


def test_commit_holds_what_v4_wrote_not_the_users_later_edits(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"tracked.py": "x = 3\n"})
    (repo / "tracked.py").write_text("x = 3\ny = 'the user, after v4'\n")
    sha = ws.commit()
    assert git(repo, "show", f"{sha}:tracked.py") == "x = 3\n"
    assert git(repo, "status", "--porcelain") == " M tracked.py\n"  # the user's line stays theirs


# --- symlinks, modes ---------------------------------------------------------------------------------


def test_an_edit_through_an_in_repo_symlink_is_committed_as_its_target(repo: Path) -> None:
    os.symlink("tracked.py", repo / "link.py")
    git(repo, "add", "link.py")
    git(repo, "commit", "-q", "-m", "link")
    result = session(repo, block("link.py", "x = 1\n", "x = 4\n")).run("edit through the link")
    assert result.applied, result.error
    sha = Workspace(repo).commit()
    assert git(repo, "show", "--name-only", "--format=", sha).split() == ["tracked.py"]
    assert os.readlink(repo / "link.py") == "tracked.py"


def test_rejecting_a_deletion_restores_the_executable_bit(repo: Path) -> None:
    script = repo / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    git(repo, "add", "run.sh")
    git(repo, "commit", "-q", "-m", "script")
    ws = Workspace(repo)
    agent_edit(ws, {"run.sh": None})
    [diff] = ws.pending()
    ws.review({diff.hunks[0].id: False})
    assert script.read_text() == "#!/bin/sh\necho hi\n" and script.stat().st_mode & 0o777 == 0o755


def test_a_symlink_loop_is_a_message_not_a_traceback(repo: Path) -> None:
    os.symlink("loop_b", repo / "loop_a")
    os.symlink("loop_a", repo / "loop_b")
    result = session(repo, block("loop_a/x.py", "a\n", "b\n")).run("edit")
    assert not result.applied and "loop of symbolic links" in (result.error or "")


def test_a_v4_file_in_the_work_tree_is_just_a_file(repo: Path) -> None:
    (repo / ".v4").write_text("not a directory\n")
    git(repo, "add", ".v4")
    git(repo, "commit", "-q", "-m", "odd")
    result = session(repo, block("tracked.py", "x = 1\n", "x = 5\n")).run("edit")
    assert result.applied, result.error
    assert Workspace(repo).pending()[0].path == "tracked.py"


# --- concurrent v4 processes ---------------------------------------------------------------------


def _record_many(root: str, worker: int) -> None:
    ws = Workspace(root)
    for n in range(8):
        ws.record_changes([FileChange(f"w{worker}_{n}.py", None, f"x = {n}\n")])


def test_two_processes_never_lose_each_others_records(repo: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(str(repo), w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    recorded = json.loads((repo / ".git" / "v4" / "pending.json").read_text())["files"]
    assert sorted(recorded) == sorted(f"w{w}_{n}.py" for w in range(4) for n in range(8))


# --- undo never rewrites shared history --------------------------------------------------------------


@pytest.mark.parametrize("share, says", [
    (["tag", "v1.0"], "is tagged (v1.0)"),
    (["branch", "feature"], "is also on branch (feature)"),
    (["config", "remote.backup.mirror", "true"], "mirror remote backup"),
])
def test_undo_refuses_a_commit_that_may_be_shared(repo: Path, share: list[str], says: str) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"tracked.py": "x = 9\n"})
    sha = ws.commit()
    git(repo, *share)
    with pytest.raises(UndoError, match=f"{says.replace('(', '[(]').replace(')', '[)]')}.*git revert"):
        ws.undo()
    assert head(repo) == sha


# --- a crash mid-apply ------------------------------------------------------------------------------


def _apply_and_die(root: str, answer: str) -> None:
    """Run an edit in this process and SIGKILL it at the third rename of the apply."""
    import signal

    from v4.agent import apply as apply_module

    real = os.replace
    calls = {"n": 0}

    def dying_replace(src: object, dst: object) -> None:
        if str(dst).endswith(".py"):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    apply_module.os.replace = dying_replace  # this child process only
    session(Path(root), answer).run("edit five files")


def test_a_killed_apply_is_rolled_back_when_the_next_workspace_opens(repo: Path) -> None:
    for n in range(5):
        (repo / f"m{n}.py").write_text(f"v = {n}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "five")
    answer = "".join(block(f"m{n}.py", f"v = {n}\n", f"v = {n * 10}\n") for n in range(5))
    child = multiprocessing.get_context("fork").Process(target=_apply_and_die, args=(str(repo), answer))
    child.start()
    child.join(60)
    assert child.exitcode == -9
    assert any((repo / f"m{n}.py").read_text() != f"v = {n}\n" for n in range(5))  # killed half-way
    ws = Workspace(repo)
    assert ws.recovered  # rolled back, and says so
    assert [(repo / f"m{n}.py").read_text() for n in range(5)] == [f"v = {n}\n" for n in range(5)]
    assert not [p.name for p in repo.iterdir() if ".v4-" in p.name]
    assert ws.pending() == [] and git(repo, "status", "--porcelain") == ""


def _edit_in_turns(root: str, worker: int) -> None:
    for n in range(4):
        name = f"c{worker}_{n}.py"
        result = session(Path(root), block(name, "v = 0\n", f"v = {worker}{n}\n")).run("edit")
        assert result.applied, result.error


def test_two_processes_applying_at_once_keep_every_edit_and_record(repo: Path) -> None:
    names = [f"c{w}_{n}.py" for w in range(2) for n in range(4)]
    for name in names:
        (repo / name).write_text("v = 0\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "files")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_edit_in_turns, args=(str(repo), w)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert sorted(d.path for d in Workspace(repo).pending()) == sorted(names)
    assert all((repo / name).read_text() != "v = 0\n" for name in names)


@pytest.mark.parametrize("command", [["review", "--reject"], ["commit"], ["undo"]])
def test_a_corrupt_record_is_a_message_from_every_command(repo: Path, command: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from v4.cli.main import main

    (repo / ".git" / "v4").mkdir(parents=True, exist_ok=True)
    (repo / ".git" / "v4" / "pending.json").write_text("{ corrupt")
    (repo / ".git" / "v4" / "commits.json").write_text("[]")
    assert main([*command, "--repo", str(repo / "pkg")]) == 1
    assert "is invalid" in capsys.readouterr().err


def test_files_named_from_a_subdirectory_are_repository_paths(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from v4.cli.refactor_command import _named

    monkeypatch.chdir(repo / "pkg")
    assert _named(repo.resolve(), ["mod.py", "../tracked.py"]) == ["pkg/mod.py", "tracked.py"]
