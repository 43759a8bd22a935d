"""Applying planned changes (agent/apply.py): path checks, all-or-nothing writes, modes and newlines."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import v4.agent.apply as apply_module
from v4.agent.apply import PathError, StaleChangeError, apply_changes, check_path, make_reader
from v4.agent.edits import FileChange, parse_edits, plan_changes


def tree(root: Path) -> dict[str, object]:
    """Every entry under `root`: file bytes and mode, directories, link targets (links not followed)."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", stat.S_IMODE(path.stat().st_mode))
        else:
            found[rel] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a = 1\n")
    (root / "pkg" / "b.py").write_text("b = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "win.txt").write_bytes(b"one\r\ntwo\r\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return root


# --- check_path --------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["pkg/a.py", "new/dir/file.py", "./pkg/a.py", "pkg/../run.sh", "pkg\\b.py",
                                 ".github/workflows/ci.yml", ".gitignore"])
def test_check_path_accepts_paths_in_the_repository(repo: Path, rel: str) -> None:
    target = check_path(repo, rel)
    assert target.is_absolute() and repo.resolve() in target.parents


@pytest.mark.parametrize("rel, reason", [
    ("../../etc/passwd", "leads outside the repository"),
    ("pkg/../../outside/secret.txt", "leads outside the repository"),
    ("..", "leads outside the repository"),
    ("/etc/passwd", "absolute paths are not allowed"),
    ("~/.bashrc", "absolute paths are not allowed"),
    ("C:\\Windows\\win.ini", "absolute paths are not allowed"),
    ("\\\\server\\share\\x", "absolute paths are not allowed"),
    (".git/config", "inside .git/"),
    (".git/hooks/pre-commit", "inside .git/"),
    ("vendor/sub/.git/HEAD", "inside .git/"),
    (".GIT/config", "inside .git/"),
    (".git", "inside .git/"),
    ("", "not a file path"),
    ("a\x00b", "not a file path"),
    (".", "the repository root"),
])
def test_check_path_refuses(repo: Path, rel: str, reason: str) -> None:
    with pytest.raises(PathError, match=reason.replace(".", r"\.")):
        check_path(repo, rel)


def test_check_path_refuses_symlinks_leading_outside(repo: Path, tmp_path: Path) -> None:
    (repo / "out").symlink_to(tmp_path / "outside")
    (repo / "pkg" / "secret.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (repo / "dangling").symlink_to(tmp_path / "outside" / "missing")
    (repo / "gitlink").symlink_to(repo / ".git")
    with pytest.raises(PathError, match="out is a symbolic link to .*outside the repository"):
        check_path(repo, "out/secret.txt")
    with pytest.raises(PathError, match="out is a symbolic link"):
        check_path(repo, "out/new/file.py")
    with pytest.raises(PathError, match="pkg/secret.txt is a symbolic link"):
        check_path(repo, "pkg/secret.txt")
    with pytest.raises(PathError, match="dangling is a symbolic link"):
        check_path(repo, "dangling")
    with pytest.raises(PathError, match="into .git/"):
        check_path(repo, "gitlink/config")


def test_check_path_follows_symlinks_that_stay_inside(repo: Path) -> None:
    (repo / "alias").symlink_to(repo / "pkg")
    assert check_path(repo, "alias/a.py") == (repo / "pkg" / "a.py").resolve()


# --- apply_changes -----------------------------------------------------------------------------


def test_create_modify_delete(repo: Path) -> None:
    changes = [FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange("new/deep/n.py", None, "n = 1\n"),
               FileChange("pkg/b.py", "b = 1\n", None)]
    assert apply_changes(repo, changes) == ["pkg/a.py", "new/deep/n.py", "pkg/b.py"]
    assert (repo / "pkg" / "a.py").read_text() == "a = 2\n"
    assert (repo / "new" / "deep" / "n.py").read_text() == "n = 1\n"
    assert not (repo / "pkg" / "b.py").exists()
    assert not [p for p in repo.rglob("*") if ".v4-" in p.name]


def test_mode_is_kept_and_new_files_follow_the_umask(repo: Path) -> None:
    apply_changes(repo, [FileChange("run.sh", "#!/bin/sh\necho hi\n", "#!/bin/sh\necho bye\n"),
                         FileChange("fresh.txt", None, "x\n")])
    assert stat.S_IMODE((repo / "run.sh").stat().st_mode) == 0o755
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((repo / "fresh.txt").stat().st_mode) == 0o666 & ~umask


def test_crlf_file_stays_crlf(repo: Path) -> None:
    apply_changes(repo, [FileChange("win.txt", "one\r\ntwo\r\n", "one\ntwo\nthree\n")])
    assert (repo / "win.txt").read_bytes() == b"one\r\ntwo\r\nthree\r\n"


def test_parse_plan_apply_keeps_crlf_bytes(repo: Path) -> None:
    response = "win.txt\n```\n<<<<<<< SEARCH\ntwo\n=======\n2\n>>>>>>> REPLACE\n```\n"
    changes = plan_changes(parse_edits(response), make_reader(repo))
    assert apply_changes(repo, changes) == ["win.txt"]
    assert (repo / "win.txt").read_bytes() == b"one\r\n2\r\n"


def test_writes_through_a_symlink_inside_the_repository(repo: Path) -> None:
    (repo / "alias.py").symlink_to("pkg/a.py")
    apply_changes(repo, [FileChange("alias.py", "a = 1\n", "a = 3\n")])
    assert (repo / "alias.py").is_symlink() and (repo / "pkg" / "a.py").read_text() == "a = 3\n"


def test_no_op_changes_are_skipped(repo: Path) -> None:
    assert apply_changes(repo, [FileChange("pkg/a.py", "a = 1\n", "a = 1\n")]) == []


@pytest.mark.parametrize("changes, error, match", [
    ([FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange("../outside/secret.txt", "secret\n", "x\n")],
     PathError, "leads outside"),
    ([FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange(".git/config", "[core]\n", "")], PathError, ".git"),
    ([FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange("./pkg/a.py", "a = 1\n", "a = 3\n")],
     PathError, "another change already writes that file"),
    ([FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange("pkg/b.py", "b = 0\n", "b = 2\n")],
     StaleChangeError, "pkg/b.py changed on disk"),
    ([FileChange("new.py", None, "n\n"), FileChange("pkg/a.py", None, "a\n")], StaleChangeError, "pkg/a.py now exists"),
    ([FileChange("new.py", None, "n\n"), FileChange("gone.py", "g\n", None)], StaleChangeError, "gone.py is no longer"),
    ([FileChange("new.py", None, "n\n"), FileChange("pkg", "x\n", "y\n")], StaleChangeError, "pkg is no longer a file"),
])
def test_refused_or_stale_changes_write_nothing(repo: Path, changes: list[FileChange], error: type[Exception],
                                                match: str) -> None:
    before = tree(repo.parent)
    with pytest.raises(error, match=match):
        apply_changes(repo, changes)
    assert tree(repo.parent) == before


def test_every_refused_path_is_named(repo: Path) -> None:
    with pytest.raises(PathError) as caught:
        apply_changes(repo, [FileChange("/abs", None, "x"), FileChange("ok.py", None, "x"),
                             FileChange(".git/HEAD", "x", "y")])
    assert "'/abs'" in str(caught.value) and "'.git/HEAD'" in str(caught.value)


CHANGES = [
    FileChange("pkg/a.py", "a = 1\n", "a = 2\n"),
    FileChange("new/deep/n.py", None, "n = 1\n"),
    FileChange("pkg/b.py", "b = 1\n", None),
    FileChange("run.sh", "#!/bin/sh\necho hi\n", "#!/bin/sh\necho bye\n"),
    FileChange("win.txt", "one\r\ntwo\r\n", "one\r\n"),
]


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])
def test_failure_between_replaces_restores_the_tree(repo: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fail_at: int) -> None:
    """os.replace fails on its `fail_at`-th call: the files already moved in are put back."""
    before = tree(repo.parent)
    real_replace = os.replace
    calls = []

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device (injected)")
        real_replace(src, dst)

    monkeypatch.setattr(apply_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="injected"):
        apply_changes(repo, CHANGES)
    assert tree(repo.parent) == before  # byte-identical, same modes, no temp/backup files, no new dirs


def test_failure_while_staging_restores_the_tree(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree(repo.parent)
    real_fsync = os.fsync
    calls = []

    def flaky_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(5, "I/O error (injected)")
        real_fsync(fd)

    monkeypatch.setattr(apply_module.os, "fsync", flaky_fsync)
    with pytest.raises(OSError, match="injected"):
        apply_changes(repo, CHANGES)
    assert tree(repo.parent) == before


def test_parent_that_is_a_file_fails_cleanly(repo: Path) -> None:
    before = tree(repo.parent)
    with pytest.raises(OSError):
        apply_changes(repo, [FileChange("brand/new.py", None, "x\n"), FileChange("run.sh/inner.py", None, "x\n")])
    assert tree(repo.parent) == before


def test_make_reader(repo: Path) -> None:
    read = make_reader(repo)
    assert read("win.txt") == "one\r\ntwo\r\n"
    assert read("missing.py") is None
    with pytest.raises(PathError, match="inside .git/"):
        read(".git/config")
    with pytest.raises(PathError, match="is a directory"):
        read("pkg")
    (repo / "blob.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        read("blob.bin")


# --- the user's own saves while v4 writes (issue 21) -------------------------------------------


def user_save(path: Path, how: str) -> None:
    """What an editor does on save: append in place, or write a new file and rename it over the old."""
    if how == "in place":
        with path.open("ab") as handle:
            handle.write(b"user line\n")
    else:
        old = path.read_bytes() if path.exists() else b""
        path.with_name("editor-swap").write_bytes(old + b"user line\n")
        os.rename(path.with_name("editor-swap"), path)


@pytest.mark.parametrize("journaled", [False, True])
@pytest.mark.parametrize("rel, how", [("win.txt", "in place"), ("win.txt", "atomic"), ("new/deep/n.py", "atomic")])
def test_a_save_while_v4_writes_is_kept(repo: Path, monkeypatch: pytest.MonkeyPatch, journaled: bool, rel: str,
                                        how: str) -> None:
    """The user saves a file v4 has not replaced yet: v4 stops, puts back what it had replaced, keeps the save."""
    expected = tree(repo.parent)
    old = expected.pop(f"repo/{rel}", (b"", 0o644))
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".git" not in Path(dst).parts:  # the first rename into the tree: pkg/a.py
            user_save(repo / rel, how)
            monkeypatch.setattr(apply_module.os, "replace", real_replace)
        real_replace(src, dst)

    monkeypatch.setattr(apply_module.os, "replace", replace)
    with pytest.raises(StaleChangeError, match=f"{rel} changed on disk while v4 was writing; nothing was changed"):
        apply_changes(repo, CHANGES, repo / ".git" / "v4" if journaled else None)
    after = {key: value for key, value in tree(repo.parent).items() if not key.startswith("repo/.git/v4")}
    assert after.pop(f"repo/{rel}")[0] == old[0] + b"user line\n"
    if rel.startswith("new/"):  # the user's save made these
        assert after.pop("repo/new")[0] == after.pop("repo/new/deep")[0] == "dir"
    assert after == expected
    assert not (repo / ".git" / "v4" / "apply-journal.json").exists()


def test_a_write_through_a_handle_opened_before_the_apply_is_kept(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write lands in the original file after v4 replaced it; v4 notices from its backup and undoes all."""
    expected = tree(repo.parent)
    expected["repo/pkg/a.py"] = (b"a = 1\nlate line\n", expected["repo/pkg/a.py"][1])
    real_replace = os.replace
    with (repo / "pkg" / "a.py").open("a") as handle:

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            real_replace(src, dst)
            if Path(dst).name == "a.py":  # v4's new a.py is in place; the handle still writes to the old one
                handle.write("late line\n")
                handle.flush()
                monkeypatch.setattr(apply_module.os, "replace", real_replace)

        monkeypatch.setattr(apply_module.os, "replace", replace)
        with pytest.raises(StaleChangeError, match="pkg/a.py changed on disk while v4 was writing"):
            apply_changes(repo, CHANGES, repo / ".git" / "v4")
    assert {key: value for key, value in tree(repo.parent).items() if not key.startswith("repo/.git/v4")} == expected
    assert not (repo / ".git" / "v4" / "apply-journal.json").exists()


def test_symlink_loop_is_a_path_error(repo: Path) -> None:
    (repo / "loop").symlink_to("loop")
    (repo / "ping").symlink_to("pong")
    (repo / "pong").symlink_to("ping")
    before = tree(repo.parent)
    for rel in ["loop", "loop/x.py", "ping", "pong/deeper/x.py"]:
        with pytest.raises(PathError, match=f"refusing '{rel}': .* cannot be resolved .*loop of symbolic links"):
            check_path(repo, rel)
    with pytest.raises(PathError, match="loop of symbolic links"):
        make_reader(repo)("ping")
    with pytest.raises(PathError, match="'loop/x.py'.*loop of symbolic links"):
        apply_changes(repo, [FileChange("pkg/a.py", "a = 1\n", "a = 2\n"), FileChange("loop/x.py", None, "x\n")])
    assert tree(repo.parent) == before
