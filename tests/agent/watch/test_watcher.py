"""The watcher on real temporary git repositories with real file-system events (no mocked observer):
saves, editors' atomic saves, deletions, renames, bursts, ignored paths and new directories."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from v4.agent.watch.watcher import ChangeBatch, WatchConfig, Watcher
from v4.agent.watch.layout import watch_layout
from tests.conftest import git, make_repo

QUIET = WatchConfig(quiet_s=0.2, max_delay_s=10.0)  # a long cap: these tests check coalescing
SILENCE_S = 1.0  # how long "nothing happened" is waited for (five quiet periods)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {
        ".gitignore": "build/\n*.log\n",
        "src/app.py": "def main():\n    return 1\n",
        "src/util.py": "X = 1\n",
        "README.md": "# Demo\n",
    })


@pytest.fixture()
def watcher(repo: Path) -> Iterator[Watcher]:
    with Watcher(repo, QUIET) as running:
        yield running


def next_batch(watcher: Watcher, timeout: float = 10.0) -> ChangeBatch:
    batch = watcher.next_batch(timeout)
    assert batch is not None, f"no change reported within {timeout} s"
    return batch


def test_a_save_is_one_batch_with_that_path(repo: Path, watcher: Watcher) -> None:
    saved = time.monotonic()
    (repo / "src/app.py").write_text("def main():\n    return 2\n")
    batch = next_batch(watcher)
    assert batch.paths == ("src/app.py",) and batch.deleted == ()
    assert saved <= batch.first_event_s <= batch.last_event_s and not batch.rescan
    assert watcher.next_batch(SILENCE_S) is None


def test_an_atomic_save_reports_the_target_not_the_temp_file(repo: Path, watcher: Watcher) -> None:
    temp = repo / "src" / ".app.py.3f2a91"  # VS Code / JetBrains style: write a temp file, rename it over
    temp.write_text("def main():\n    return 3\n")
    os.replace(temp, repo / "src/app.py")
    assert next_batch(watcher).paths == ("src/app.py",)


def test_a_vim_save_reports_the_file_once(repo: Path, watcher: Watcher) -> None:
    target = repo / "src/app.py"
    (repo / "src/.app.py.swp").write_bytes(b"b0VIM 9.0\0")  # swap file
    os.rename(target, repo / "src/app.py~")  # backup by rename, then a new file, then the backup goes
    target.write_text("def main():\n    return 4\n")
    os.unlink(repo / "src/app.py~")
    (repo / "src/.app.py.swp").unlink()
    batch = next_batch(watcher)
    assert batch.paths == ("src/app.py",) and batch.deleted == ()


def test_a_deletion_and_a_rename(repo: Path, watcher: Watcher) -> None:
    (repo / "src/util.py").unlink()
    batch = next_batch(watcher)
    assert batch.paths == ("src/util.py",) and batch.deleted == ("src/util.py",)
    os.rename(repo / "src/app.py", repo / "src/main.py")
    batch = next_batch(watcher)
    assert batch.paths == ("src/app.py", "src/main.py") and batch.deleted == ("src/app.py",)


def test_a_burst_of_2000_files_is_one_batch(repo: Path, watcher: Watcher) -> None:
    (repo / "gen").mkdir()
    for n in range(2000):
        (repo / "gen" / f"m{n:04}.py").write_text(f"VALUE = {n}\n")
    batch = next_batch(watcher, 30)
    assert len(batch.paths) == 2000 and batch.paths[0] == "gen/m0000.py" and batch.num_events >= 2000
    assert watcher.next_batch(SILENCE_S) is None  # one batch, not thousands


def test_a_checkout_is_one_batch(repo: Path, watcher: Watcher) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    for n in range(300):
        (repo / "src" / f"gen{n}.py").write_text(f"N = {n}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "many")
    next_batch(watcher, 30)  # the files written above
    while watcher.next_batch(SILENCE_S) is not None:
        pass
    git(repo, "checkout", "-q", "main")  # deletes 300 files, touches .git/ throughout
    batch = next_batch(watcher, 30)
    assert len(batch.deleted) == 300 and all(p.startswith("src/gen") for p in batch.paths)
    assert watcher.next_batch(SILENCE_S) is None


def test_ignored_paths_and_git_internals_are_not_reported(repo: Path, watcher: Watcher) -> None:
    (repo / "build").mkdir()
    (repo / "build/out.py").write_text("x = 1\n")  # .gitignore'd directory
    (repo / "debug.log").write_text("noise\n")  # .gitignore'd file
    (repo / "node_modules/pkg").mkdir(parents=True)
    (repo / "node_modules/pkg/index.js").write_text("module.exports = 1\n")  # vendored
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n")  # binary
    (repo / ".env").write_text("KEY=1\n")  # secret
    git(repo, "add", "src/app.py")  # writes .git/index
    (repo / ".git/info/exclude").write_text("*.tmp\n")
    (repo / ".v4").mkdir(exist_ok=True)
    (repo / ".v4/pending.json").write_text("{}")
    assert watcher.next_batch(SILENCE_S) is None
    (repo / "src/app.py").write_text("changed = True\n")  # the watcher still works
    assert next_batch(watcher).paths == ("src/app.py",)


def test_ignored_directories_are_not_watched(repo: Path) -> None:
    (repo / "build/deep").mkdir(parents=True)
    (repo / "node_modules/a").mkdir(parents=True)
    (repo / "src/__pycache__").mkdir()
    layout, ignored = watch_layout(repo, True)
    assert layout == {"": False, "src": True}  # the root's own entries, and src/ recursively
    assert {".git", "build", "node_modules", "src/__pycache__"} <= ignored


def test_the_watch_budget_leaves_light_ignored_directories_inside_watches(repo: Path) -> None:
    for n in range(10):
        (repo / f"pkg{n}/build").mkdir(parents=True)
    layout, _ = watch_layout(repo, True, max_watches=5)
    assert layout[""] is False  # .git is never watched, whatever the budget
    assert len(layout) <= 12 and all(layout[f"pkg{n}"] is True for n in range(10))


def test_a_new_directory_and_its_files_are_reported(repo: Path, watcher: Watcher) -> None:
    (repo / "docs/api").mkdir(parents=True)  # in the root, which is watched for its own entries only
    (repo / "docs/api/index.md").write_text("# API\n")
    assert next_batch(watcher).paths == ("docs/api/index.md",)
    assert "docs" in watcher.watched
    (repo / "docs/api/more.md").write_text("# More\n")  # now under a watch of its own
    assert next_batch(watcher).paths == ("docs/api/more.md",)
    shutil.rmtree(repo / "docs")
    batch = next_batch(watcher)
    assert {"docs/api/index.md", "docs/api/more.md"} <= set(batch.deleted) and "docs" not in watcher.watched


def test_a_new_gitignore_rule_applies_from_then_on(repo: Path, watcher: Watcher) -> None:
    (repo / ".gitignore").write_text("build/\n*.log\nsrc/scratch/\n")
    assert next_batch(watcher).paths == (".gitignore",)
    (repo / "src/scratch").mkdir()
    (repo / "src/scratch/t.py").write_text("x = 1\n")
    assert watcher.next_batch(SILENCE_S) is None


def test_changes_wait_in_the_queue_while_nobody_reads(repo: Path, watcher: Watcher) -> None:
    (repo / "src/app.py").write_text("a = 1\n")
    time.sleep(0.6)  # the first batch is closed and queued
    (repo / "src/util.py").write_text("b = 2\n")
    (repo / "README.md").unlink()
    deadline = time.monotonic() + 10
    while watcher.queued < 2 and time.monotonic() < deadline:  # both closed, nobody reading
        time.sleep(0.05)
    batch = next_batch(watcher)  # everything waiting, as one
    assert batch.paths == ("README.md", "src/app.py", "src/util.py") and batch.deleted == ("README.md",)


def test_a_file_that_comes_and_goes_within_a_burst_is_not_reported(repo: Path, watcher: Watcher) -> None:
    scratch = repo / "src/scratch_output.py"
    scratch.write_text("x = 1\n")
    scratch.unlink()
    (repo / "src/util.py").write_text("Y = 2\n")
    assert next_batch(watcher).paths == ("src/util.py",)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="quiet_s"):
        WatchConfig(quiet_s=1.0, max_delay_s=0.5)
    with pytest.raises(NotADirectoryError):
        Watcher("/nonexistent/for/sure")
