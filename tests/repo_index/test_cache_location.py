"""Where the index cache lives (issue 21): in git's own directory, never read from a clone's work tree.

A repository can commit a `.v4/` (`git add -f`), so a clone would arrive with cache rows chosen by
someone else; `.v4` can also be a file or a link. None of that may change the plan or raise.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from v4.repo_index import IndexConfig, RepoIndex
from v4.repo_index.cache import CACHE_DIR, CACHE_VERSION, cache_dir
from tests.conftest import git, make_repo

SOURCE = "def main() -> int:\n    return helper()\n\n\ndef helper() -> int:\n    return 0\n"
CACHE_FILE = f"index-v{CACHE_VERSION}.sqlite"


def _plan_rows(root: Path, tokenizer, use_cache: bool = True) -> tuple[list, list[str]]:
    """(path, token ids) of every segment, and the warnings."""
    index = RepoIndex(root, tokenizer=tokenizer, config=IndexConfig(use_cache=use_cache))
    plan = index.plan()
    index.close()
    return [(s.path, list(s.token_ids)) for s in plan.segments], plan.warnings


def _poisoned_cache(tmp_path: Path, tokenizer) -> Path:
    """A `.v4/` written by indexing a plain copy, then edited: every token id and symbol is a lie."""
    plain = tmp_path / "poison"
    (plain / "app.py").parent.mkdir(parents=True)
    (plain / "app.py").write_text(SOURCE)
    RepoIndex(plain, tokenizer=tokenizer).plan()
    with sqlite3.connect(plain / CACHE_DIR / CACHE_FILE) as db:
        assert db.execute("SELECT count(*) FROM tokens").fetchone()[0] > 0
        db.execute("UPDATE tokens SET ids = x'07000000070000000700000007000000'")
        db.execute("""UPDATE symbols SET data = '{"definitions": [["planted", "function"]], "references": [],
                      "bare": [], "imports": [], "outline": [], "error": null}'""")
    return plain / CACHE_DIR


def test_inside_git_the_cache_lives_in_the_git_directory(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {"app.py": SOURCE})
    assert cache_dir(root) == root / ".git" / "v4" / "index-cache"
    _plan_rows(root, tokenizer)
    assert (cache_dir(root) / CACHE_FILE).is_file()
    assert not (root / CACHE_DIR).exists()
    assert git(root, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""


def test_a_subdirectory_and_a_worktree_share_the_common_git_directory(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {"sub/app.py": SOURCE})
    git(root, "worktree", "add", "-q", str(tmp_path / "wt"))
    assert cache_dir(root / "sub") == cache_dir(root) == root / ".git" / "v4" / "index-cache"
    assert cache_dir(tmp_path / "wt") == cache_dir(root)


def test_roots_sharing_one_cache_keep_their_own_history(tmp_path: Path, tokenizer) -> None:
    # b.py changed least, so it comes first under `sub`; counts stored for the top level (keyed
    # "sub/a.py") must not be taken for the sub-directory's.
    root = make_repo(tmp_path / "repo", {"sub/a.py": "A = 1\n", "sub/b.py": "B = 1\n"})
    for number in range(3):
        (root / "sub" / "a.py").write_text(f"A = {number + 2}\n")
        git(root, "commit", "-q", "-am", f"a {number}")
    _plan_rows(root, tokenizer)
    with_cache, _ = _plan_rows(root / "sub", tokenizer)
    without, _ = _plan_rows(root / "sub", tokenizer, use_cache=False)
    assert [p for p, _ in with_cache] == [p for p, _ in without] == ["b.py", "a.py"]


def test_a_planted_v4_cache_in_a_clone_is_ignored(tmp_path: Path, tokenizer) -> None:
    origin = make_repo(tmp_path / "origin", {"app.py": SOURCE})
    shutil.copytree(_poisoned_cache(tmp_path, tokenizer), origin / CACHE_DIR)
    git(origin, "add", "-f", CACHE_DIR)
    git(origin, "commit", "-q", "-m", "plant a cache")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    planted = (clone / CACHE_DIR / CACHE_FILE).read_bytes()

    reference, _ = _plan_rows(clone, tokenizer, use_cache=False)
    rows, warnings = _plan_rows(clone, tokenizer)
    assert rows == reference and warnings == []
    assert [p for p, _ in rows] == ["app.py"]  # the planted `.v4/` is not indexed either
    index = RepoIndex(clone, tokenizer=tokenizer)
    index.plan()
    assert "planted" not in {name for name, _ in index._entries["app.py"].summary.definitions}
    index.close()
    assert (clone / CACHE_DIR / CACHE_FILE).read_bytes() == planted  # neither read nor rewritten
    assert cache_dir(clone) == clone / ".git" / "v4" / "index-cache"


def test_outside_git_the_cache_lives_in_dot_v4_with_its_own_gitignore(tmp_path: Path, tokenizer) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "app.py").write_text(SOURCE)
    assert cache_dir(root) == root / CACHE_DIR
    rows, warnings = _plan_rows(root, tokenizer)
    assert (root / CACHE_DIR / CACHE_FILE).is_file()
    assert (root / CACHE_DIR / ".gitignore").read_text().splitlines()[-1] == "*"
    assert [p for p, _ in rows] == ["app.py"] and warnings == []


@pytest.mark.parametrize("in_git", [True, False], ids=["git", "plain"])
def test_dot_v4_as_a_file_never_fails_the_index(tmp_path: Path, tokenizer, in_git: bool) -> None:
    files = {"app.py": SOURCE, ".v4": "not a directory\n"}
    if in_git:
        root = make_repo(tmp_path / "repo", files)
    else:
        root = tmp_path / "plain"
        root.mkdir()
        for rel, text in files.items():
            (root / rel).write_text(text)
    reference, _ = _plan_rows(root, tokenizer, use_cache=False)
    for _ in range(2):  # and again: the file is still there
        rows, warnings = _plan_rows(root, tokenizer)
        assert rows == reference
        if in_git:
            assert warnings == []  # the cache is not under the work tree at all
        else:
            assert len(warnings) == 1 and "index cache" in warnings[0] and "memory" in warnings[0]
    assert (root / ".v4").read_text() == "not a directory\n"


def test_dot_v4_linking_elsewhere_is_not_written_through(tmp_path: Path, tokenizer) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "app.py").write_text(SOURCE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index-v1.sqlite").write_text("someone else's file\n")
    (root / CACHE_DIR).symlink_to(elsewhere, target_is_directory=True)
    rows, warnings = _plan_rows(root, tokenizer)
    assert [p for p, _ in rows] == ["app.py"]
    assert len(warnings) == 1 and "symbolic link" in warnings[0]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["index-v1.sqlite"]


def test_a_linked_cache_file_is_replaced_not_followed(tmp_path: Path, tokenizer) -> None:
    root = tmp_path / "plain"
    (root / CACHE_DIR).mkdir(parents=True)
    (root / "app.py").write_text(SOURCE)
    target = tmp_path / "target.txt"
    target.write_text("keep me\n")
    (root / CACHE_DIR / CACHE_FILE).symlink_to(target)
    rows, warnings = _plan_rows(root, tokenizer)
    assert [p for p, _ in rows] == ["app.py"] and warnings == []
    assert not (root / CACHE_DIR / CACHE_FILE).is_symlink()
    assert target.read_text() == "keep me\n"


def test_a_repository_git_cannot_read_gets_no_disk_cache(tmp_path: Path, tokenizer) -> None:
    # A `.git` that git rejects (here: empty) means we cannot find git's directory; `.v4` may then be
    # planted, so the cache stays in memory.
    root = tmp_path / "broken"
    (root / ".git").mkdir(parents=True)
    (root / "app.py").write_text(SOURCE)
    shutil.copytree(_poisoned_cache(tmp_path, tokenizer), root / CACHE_DIR)
    reference, _ = _plan_rows(root, tokenizer, use_cache=False)
    rows, warnings = _plan_rows(root, tokenizer)
    assert rows == reference
    assert len(warnings) == 1 and "index cache not used" in warnings[0]


def test_a_corrupt_cache_in_the_git_directory_warns_once_and_is_rebuilt(tmp_path: Path, tokenizer) -> None:
    root = make_repo(tmp_path / "repo", {"app.py": SOURCE})
    reference, _ = _plan_rows(root, tokenizer, use_cache=False)
    cache_dir(root).mkdir(parents=True)
    (cache_dir(root) / CACHE_FILE).write_bytes(b"\x00garbage" * 512)
    rows, warnings = _plan_rows(root, tokenizer)
    assert rows == reference and len(warnings) == 1 and "index cache" in warnings[0]
    assert _plan_rows(root, tokenizer) == (reference, [])
