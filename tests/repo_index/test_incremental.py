"""Incremental updates: one changed file is parsed once; the disk cache serves a new process."""

from __future__ import annotations

from pathlib import Path

import pytest

import v4.repo_index.parse as parse_module
from v4.repo_index import IndexConfig, RepoIndex
from v4.repo_index.cache import CACHE_VERSION, cache_dir


@pytest.fixture
def parse_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    real_parse = parse_module.parse_source

    def counting(path: str, language: str, data: bytes):
        calls.append(path)
        return real_parse(path, language, data)

    monkeypatch.setattr(parse_module, "parse_source", counting)
    return calls


def test_a_one_file_change_reparses_one_file(order_repo: Path, tokenizer, parse_calls: list[str]) -> None:
    index = RepoIndex(order_repo, tokenizer=tokenizer)
    index.plan()
    parse_calls.clear()
    (order_repo / "py/app/store.py").write_text("from .models import User\n\n\ndef purge() -> None:\n    pass\n")
    index.update([order_repo / "py/app/store.py"])
    plan = index.plan()
    assert parse_calls == ["py/app/store.py"]
    store = next(s for s in plan.segments if s.path == "py/app/store.py")
    assert "def purge() -> None:" in store.text
    assert "def save" not in store.text


def test_added_and_deleted_files_are_picked_up_by_update(order_repo: Path, tokenizer, parse_calls: list[str]) -> None:
    index = RepoIndex(order_repo, tokenizer=tokenizer)
    before = [s.path for s in index.plan().segments]
    (order_repo / "py/app/cycle_b.py").unlink()
    (order_repo / "py/app/extra.py").write_text("from .store import save\n")
    parse_calls.clear()
    index.update(["py/app/cycle_b.py", "py/app/extra.py"])
    after = [s.path for s in index.plan().segments]
    assert parse_calls == ["py/app/extra.py"]
    assert "py/app/cycle_b.py" in before and "py/app/cycle_b.py" not in after
    assert after.index("py/app/extra.py") > after.index("py/app/store.py")  # it imports store


def test_update_of_a_file_that_becomes_binary_moves_it_to_skipped(order_repo: Path, tokenizer) -> None:
    index = RepoIndex(order_repo, tokenizer=tokenizer)
    index.plan()
    (order_repo / "docs/guide.md").write_bytes(b"\x00\x01binary now")
    index.update(["docs/guide.md"])
    plan = index.plan()
    assert "docs/guide.md" not in [s.path for s in plan.segments]
    assert {s.path: s.reason for s in plan.skipped}["docs/guide.md"] == "binary"


def test_paths_outside_the_root_are_ignored_by_update(order_repo: Path, tmp_path: Path, tokenizer) -> None:
    index = RepoIndex(order_repo, tokenizer=tokenizer)
    before = [s.path for s in index.plan().segments]
    index.update([tmp_path / "elsewhere.py", "../escape.py"])
    assert [s.path for s in index.plan().segments] == before


def test_a_new_process_reuses_the_disk_cache(order_repo: Path, tokenizer, parse_calls: list[str]) -> None:
    RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert parse_calls
    parse_calls.clear()
    RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert parse_calls == []
    assert (cache_dir(order_repo) / ".gitignore").read_text().strip().endswith("*")


def test_a_corrupt_cache_warns_and_is_rebuilt(order_repo: Path, tokenizer, parse_calls: list[str]) -> None:
    reference = RepoIndex(order_repo, tokenizer=tokenizer, config=IndexConfig(use_cache=False)).plan()
    cache_file = cache_dir(order_repo) / f"index-v{CACHE_VERSION}.sqlite"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(b"this is not a database" * 100)
    plan = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert [s.token_ids for s in plan.segments] == [s.token_ids for s in reference.segments]
    assert any("index cache" in w for w in plan.warnings)
    parse_calls.clear()
    again = RepoIndex(order_repo, tokenizer=tokenizer).plan()  # the rebuilt cache now works
    assert parse_calls == [] and again.warnings == []


def test_damaged_cache_rows_are_reparsed(order_repo: Path, tokenizer, parse_calls: list[str]) -> None:
    import sqlite3

    RepoIndex(order_repo, tokenizer=tokenizer).plan()
    cache_file = cache_dir(order_repo) / f"index-v{CACHE_VERSION}.sqlite"
    with sqlite3.connect(cache_file) as db:
        db.execute("UPDATE symbols SET data = '{\"tags\": 5}'")
        db.execute("UPDATE tokens SET ids = x'010203'")  # not a whole number of int32s
    parse_calls.clear()
    plan = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert len(parse_calls) == sum(1 for s in plan.segments if s.language in ("python", "c", "cpp", "go", "java", "rust", "typescript", "tsx"))
    store = next(s for s in plan.segments if s.path == "py/app/store.py")
    assert list(store.token_ids) == tokenizer.encode(store.text)


def test_update_honours_gitignore_for_new_files(tmp_path: Path, tokenizer) -> None:
    from tests.conftest import make_repo

    root = make_repo(tmp_path / "repo", {"main.py": "X = 1\n", ".gitignore": "build/\n*.log\n"})
    index = RepoIndex(root, tokenizer=tokenizer)
    index.plan()
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("Y = 1\n")
    (root / "debug.log").write_text("log\n")
    (root / "new.py").write_text("Z = 1\n")
    index.update([root / "build" / "out.py", root / "debug.log", root / "new.py"])
    assert [s.path for s in index.plan().segments] == [".gitignore", "main.py", "new.py"]


def test_update_outside_git_honours_nested_gitignore(tmp_path: Path, tokenizer) -> None:
    root = tmp_path / "plain"
    (root / "sub").mkdir(parents=True)
    (root / ".gitignore").write_text("*.log\n")
    (root / "sub" / ".gitignore").write_text("tmp_*\n!tmp_keep.py\n")
    (root / "main.py").write_text("X = 1\n")
    index = RepoIndex(root, tokenizer=tokenizer)
    index.plan()
    for name in ("a.log", "tmp_x.py", "tmp_keep.py", "real.py"):
        (root / "sub" / name).write_text("Y = 1\n")
    index.update([root / "sub" / n for n in ("a.log", "tmp_x.py", "tmp_keep.py", "real.py")])
    assert {s.path for s in index.plan().segments} == {".gitignore", "main.py", "sub/.gitignore",
                                                         "sub/real.py", "sub/tmp_keep.py"}


def test_update_of_a_directory_adds_or_removes_the_files_under_it(order_repo: Path, tokenizer) -> None:
    import shutil

    index = RepoIndex(order_repo, tokenizer=tokenizer)
    index.plan()
    shutil.rmtree(order_repo / "java")
    index.update([order_repo / "java"])
    paths = [s.path for s in index.plan().segments]
    assert not any(p.startswith("java/") for p in paths)
    (order_repo / "lib" / "pkg").mkdir(parents=True)
    (order_repo / "lib" / "pkg" / "mod.py").write_text("VALUE = 1\n")
    index.update([order_repo / "lib"])
    assert "lib/pkg/mod.py" in [s.path for s in index.plan().segments]


def test_an_incremental_plan_equals_a_plan_from_scratch(order_repo: Path, tokenizer) -> None:
    index = RepoIndex(order_repo, tokenizer=tokenizer)
    index.plan(300)
    edits = {
        "py/app/models.py": "\n# a body edit\n",  # no name changes: order and ranks are reused
        "c/vec.c": "\nint vec_dot(struct vec a, struct vec b) { return 0; }\n",  # a new definition
        "py/app/store.py": "\nfrom .cycle_a import ping\n",  # a new import: the order moves
    }
    for rel, text in edits.items():
        with open(order_repo / rel, "a") as handle:
            handle.write(text)
        index.update([rel])
        for budget in (300, 1_000_000):
            fresh = RepoIndex(order_repo, tokenizer=tokenizer, config=IndexConfig(use_cache=False)).plan(budget)
            ours = index.plan(budget)
            assert [(s.path, s.mode, s.token_ids) for s in ours.segments] == \
                   [(s.path, s.mode, s.token_ids) for s in fresh.segments], (rel, budget)


def test_a_changed_gitignore_refreshes_the_file_list(tmp_path: Path, tokenizer, parse_calls: list[str]) -> None:
    from tests.conftest import make_repo

    root = make_repo(tmp_path / "repo", {"main.py": "X = 1\n"})
    (root / "gen").mkdir()
    (root / "gen" / "out.py").write_text("Y = 1\n")  # untracked: ignore rules apply to it
    index = RepoIndex(root, tokenizer=tokenizer)
    assert "gen/out.py" in [s.path for s in index.plan().segments]
    (root / ".gitignore").write_text("gen/\n")
    parse_calls.clear()
    index.update([root / ".gitignore"])
    assert [s.path for s in index.plan().segments] == ["main.py", ".gitignore"]  # untracked last
    assert parse_calls == []  # nothing changed content: the cache serves the refresh
