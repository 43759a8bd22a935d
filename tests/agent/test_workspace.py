"""The git workspace over real temporary repositories: user work is never lost, undo never clobbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v4.agent.edits import FileChange
from v4.agent.workspace import TRAILER, DirtyTreeError, UndoError, Workspace, WorkspaceError
from tests.conftest import git, make_repo

NUMBERED = "".join(f"line {i}\n" for i in range(1, 31))


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Workspace's own git calls see only the test repository's config, never the machine's."""
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                 "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def new_repo(root: Path, files: dict[str, str], commit: bool = True) -> Path:
    make_repo(root, files, commit=commit)
    git(root, "config", "user.name", "Ada User")
    git(root, "config", "user.email", "ada@example.com")
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return new_repo(tmp_path / "repo", {"a.py": NUMBERED, "b.py": "b = 1\n", "other.py": "x = 1\n"})


def agent_edit(ws: Workspace, files: dict[str, str | None]) -> None:
    """What the session does: record the change (before and after), then write it (None deletes)."""
    ws.record_changes([FileChange(rel, ws.read(rel), text) for rel, text in files.items()])
    for rel, text in files.items():
        path = ws.root / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode())


def files_in(ws: Workspace, sha: str) -> list[str]:
    return git(ws.root, "diff-tree", "-r", "--root", "--no-commit-id", "--name-only", sha).split()


def staged(root: Path) -> list[str]:
    return git(root, "diff", "--cached", "--name-only").split()


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


def state_of(root: Path) -> dict[str, bytes]:
    """Every work-tree file plus the index and refs, byte for byte."""
    found = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
             if p.is_file() and ".git" not in p.relative_to(root).parts[:1]}
    found["<index>"] = (root / ".git" / "index").read_bytes()
    found["<HEAD>"] = git(root, "rev-parse", "HEAD").encode()
    found["<refs>"] = git(root, "for-each-ref").encode()
    return found


def test_not_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="is not a git repository"):
        Workspace(tmp_path)


def test_dirty_paths_sees_staged_unstaged_and_untracked(repo: Path) -> None:
    (repo / "a.py").write_text("changed\n")
    (repo / "b.py").write_text("b = 2\n")
    git(repo, "add", "b.py")
    (repo / "new.py").write_text("new\n")
    ws = Workspace(repo)
    assert ws.dirty_paths(["a.py", "b.py", "new.py", "other.py", "absent.py"]) == ["a.py", "b.py", "new.py"]


def test_dirty_refusal_names_files_and_touches_nothing(repo: Path) -> None:
    (repo / "a.py").write_text("mine\n")
    (repo / "other.py").write_text("x = 2\n")
    git(repo, "add", "other.py")
    (repo / "untracked.py").write_text("u\n")
    before = state_of(repo)
    with pytest.raises(DirtyTreeError) as caught:
        Workspace(repo).prepare(["a.py", "b.py", "untracked.py"], dirty_commit=False)
    assert caught.value.paths == ["a.py", "untracked.py"]
    message = str(caught.value)
    assert "a.py" in message and "untracked.py" in message and "b.py" not in message
    assert "stash" in message and "--dirty-commit" in message
    assert state_of(repo) == before


def test_prepare_on_clean_paths_commits_nothing(repo: Path) -> None:
    old = head(repo)
    assert Workspace(repo).prepare(["a.py", "new.py"], dirty_commit=False) is None
    assert head(repo) == old


def test_dirty_commit_saves_only_the_targets_and_keeps_other_staged_changes(repo: Path) -> None:
    (repo / "other.py").write_text("x = 2\n")
    git(repo, "add", "other.py")
    (repo / "a.py").write_text("half staged\n")
    git(repo, "add", "a.py")
    (repo / "a.py").write_text("half staged\nand more\n")
    (repo / "b.py").write_text("b = 3  # not a target\n")
    (repo / "new.py").write_text("new\n")
    ws = Workspace(repo)
    sha = ws.prepare(["a.py", "new.py"], dirty_commit=True)
    assert sha == head(repo)
    assert sorted(files_in(ws, sha)) == ["a.py", "new.py"]
    assert git(repo, "show", f"{sha}:a.py") == "half staged\nand more\n"
    subject, author = git(repo, "log", "-1", "--format=%s%n%an <%ae>", sha).splitlines()
    assert subject == "v4: save your uncommitted changes to a.py, new.py before editing"
    assert author == "Ada User <ada@example.com>"
    assert staged(repo) == ["other.py"]
    assert git(repo, "diff", "--cached", "other.py").count("+x = 2") == 1
    assert git(repo, "status", "--porcelain", "--", "a.py", "new.py", "b.py") == " M b.py\n"
    assert ws.dirty_paths(["a.py", "new.py"]) == []


def test_review_accepts_and_rejects_hunks_within_one_file(repo: Path) -> None:
    ws = Workspace(repo)
    edited = NUMBERED.replace("line 2\n", "line two\n").replace("line 25\n", "line 25\nextra\n")
    agent_edit(ws, {"a.py": edited})
    [diff] = ws.pending()
    assert diff.path == "a.py" and diff.status == "modified" and len(diff.hunks) == 2
    first, second = diff.hunks
    assert first.header == "@@ -1,5 +1,5 @@" and "-line 2" in first.lines and "+line two" in first.lines
    assert second.header == "@@ -23,6 +23,7 @@" and "+extra" in second.lines
    assert diff.text.startswith("--- a/a.py\n+++ b/a.py\n@@ -1,5 +1,5 @@\n")
    remaining = ws.review({first.id: False, second.id: True})
    assert (repo / "a.py").read_text() == NUMBERED.replace("line 25\n", "line 25\nextra\n")
    assert [h.lines for h in remaining[0].hunks] == [second.lines]


def test_review_rejecting_a_new_file_deletes_it_and_a_delete_restores(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"pkg/new.py": "print('hi')", "b.py": None})
    diffs = {d.path: d for d in ws.pending()}
    assert diffs["pkg/new.py"].status == "added" and diffs["b.py"].status == "deleted"
    assert diffs["pkg/new.py"].hunks[0].lines == ("+print('hi')", "\\ No newline at end of file")
    assert ws.review({h.id: False for d in diffs.values() for h in d.hunks}) == []
    assert not (repo / "pkg" / "new.py").exists()
    assert (repo / "b.py").read_text() == "b = 1\n"
    assert git(repo, "status", "--porcelain") == ""


def test_review_restores_exact_bytes_and_refuses_unknown_ids(repo: Path) -> None:
    (repo / "crlf.txt").write_bytes(b"one\r\ntwo\r\nno newline")
    git(repo, "add", "crlf.txt")
    git(repo, "commit", "-q", "-m", "crlf")
    ws = Workspace(repo)
    agent_edit(ws, {"crlf.txt": "one\r\nTWO\r\nno newline"})
    with pytest.raises(WorkspaceError, match="no pending hunk"):
        ws.review({"crlf.txt#deadbeef": False})
    assert (repo / "crlf.txt").read_bytes() == b"one\r\nTWO\r\nno newline"
    ws.review({ws.pending()[0].hunks[0].id: False})
    assert (repo / "crlf.txt").read_bytes() == b"one\r\ntwo\r\nno newline"


def test_commit_has_trailer_and_only_accepted_files(repo: Path) -> None:
    (repo / "other.py").write_text("x = 2\n")
    git(repo, "add", "other.py")
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "rewritten\n", "b.py": "b = 2\n", "c.py": "c = 1\n"})
    b_hunk = next(d for d in ws.pending() if d.path == "b.py").hunks[0]
    ws.review({b_hunk.id: False})
    sha = ws.commit()
    assert sha == head(repo)
    assert sorted(files_in(ws, sha)) == ["a.py", "c.py"]
    message = git(repo, "log", "-1", "--format=%B", sha).rstrip("\n")
    assert message.startswith("v4: edit a.py; add c.py\n")
    assert message.endswith(f"\n\n{TRAILER}")
    assert git(repo, "log", "-1", "--format=%an", sha).strip() == "Ada User"
    assert staged(repo) == ["other.py"]
    assert git(repo, "status", "--porcelain", "--", "a.py", "b.py", "c.py") == ""
    assert ws.pending() == []
    commits = json.loads((repo / ".git" / "v4" / "commits.json").read_text())["commits"]
    assert [(c["sha"], c["kind"], c["paths"]) for c in commits] == [(sha, "agent", ["a.py", "c.py"])]


def test_commit_with_a_message_and_nothing_pending(repo: Path) -> None:
    ws = Workspace(repo)
    with pytest.raises(WorkspaceError, match="no pending"):
        ws.commit()
    agent_edit(ws, {"b.py": "b = 5\n"})
    sha = ws.commit(f"Bump b\n\n{TRAILER}")
    assert git(repo, "log", "-1", "--format=%B", sha).rstrip("\n") == f"Bump b\n\n{TRAILER}"


def test_pending_survives_a_new_workspace_and_lives_in_the_git_dir(repo: Path) -> None:
    agent_edit(Workspace(repo), {"b.py": "b = 2\n"})
    assert not (repo / ".v4").exists()  # v4's records live in .git/v4/, where a clone cannot plant them
    assert (repo / ".git" / "v4" / "pending.json").is_file()
    (repo / "sub").mkdir()
    again = Workspace(repo / "sub")  # found from a subdirectory, paths stay repo-relative
    assert again.root == repo.resolve()
    [diff] = again.pending()
    assert diff.path == "b.py" and diff.hunks[0].lines == ("-b = 1", "+b = 2")
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == " M b.py\n"
    assert again.dirty_paths(["b.py"]) == []  # v4's own pending change is not the user's
    assert again.prepare(["b.py"], dirty_commit=False) is None
    (repo / "b.py").write_text("b = 3  # the user edited it after v4\n")
    assert again.dirty_paths(["b.py"]) == ["b.py"]


def test_undo_removes_a_clean_v4_commit(repo: Path) -> None:
    ws = Workspace(repo)
    parent = head(repo)
    agent_edit(ws, {"a.py": "rewritten\n", "b.py": None, "new.py": "n\n"})
    sha = ws.commit()
    assert ws.undo() == sha
    assert head(repo) == parent
    assert (repo / "a.py").read_text() == NUMBERED and (repo / "b.py").read_text() == "b = 1\n"
    assert not (repo / "new.py").exists()
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert sha in git(repo, "reflog", "--format=%H")
    with pytest.raises(UndoError, match="not a commit v4 made"):
        ws.undo()


def test_undo_refuses_when_the_user_committed_on_top(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "rewritten\n"})
    ws.commit()
    (repo / "b.py").write_text("b = 9\n")
    git(repo, "commit", "-q", "-am", "mine")
    old = head(repo)
    with pytest.raises(UndoError, match="not a commit v4 made"):
        ws.undo()
    assert head(repo) == old


def test_undo_refuses_a_dirty_tree(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "rewritten\n"})
    sha = ws.commit()
    (repo / "other.py").write_text("x = 2\n")
    with pytest.raises(UndoError, match="not clean.*other.py"):
        ws.undo()
    git(repo, "add", "other.py")
    with pytest.raises(UndoError, match="not clean"):
        ws.undo()
    assert head(repo) == sha and (repo / "a.py").read_text() == "rewritten\n"


def test_undo_refuses_to_overwrite_an_untracked_file(repo: Path) -> None:
    ws = Workspace(repo)
    agent_edit(ws, {"b.py": None})
    ws.commit()
    (repo / "b.py").write_text("the user's new b\n")
    with pytest.raises(UndoError, match="untracked files would be overwritten: b.py"):
        ws.undo()
    assert (repo / "b.py").read_text() == "the user's new b\n"


def test_undo_refuses_a_pushed_commit(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    ws = Workspace(repo)
    agent_edit(ws, {"a.py": "rewritten\n"})
    sha = ws.commit()
    git(repo, "push", "-q", "-u", "origin", "main")
    with pytest.raises(UndoError, match="already pushed.*origin/main"):
        ws.undo()
    assert head(repo) == sha


def test_undo_refuses_the_save_commit(repo: Path) -> None:
    (repo / "a.py").write_text("mine\n")
    ws = Workspace(repo)
    ws.prepare(["a.py"], dirty_commit=True)
    with pytest.raises(UndoError, match="your own changes"):
        ws.undo()
    assert (repo / "a.py").read_text() == "mine\n"


def test_repository_without_commits(tmp_path: Path) -> None:
    root = new_repo(tmp_path / "fresh", {"a.py": "a\n", "keep.py": "k\n"}, commit=False)
    git(root, "add", "keep.py")
    ws = Workspace(root)
    assert ws.dirty_paths(["a.py", "keep.py"]) == ["a.py", "keep.py"]
    with pytest.raises(DirtyTreeError):
        ws.prepare(["a.py"], dirty_commit=False)
    saved = ws.prepare(["a.py"], dirty_commit=True)
    assert files_in(ws, saved) == ["a.py"] and staged(root) == ["keep.py"]
    agent_edit(ws, {"a.py": "a2\n"})
    ws.commit()
    ws_first = Workspace(new_repo(tmp_path / "empty", {}, commit=False))
    agent_edit(ws_first, {"first.py": "1\n"})
    first = ws_first.commit()
    assert files_in(ws_first, first) == ["first.py"]
    with pytest.raises(UndoError, match="first commit"):
        ws_first.undo()
