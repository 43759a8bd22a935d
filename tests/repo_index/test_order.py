"""Context order: dependencies first, cycles together, ties by stability then path, deterministic."""

from __future__ import annotations

import shutil
from pathlib import Path

from v4.repo_index import IndexConfig, RepoIndex

# History of the fixture (conftest.order_repo): every file is in the first commit; models.py and
# util.ts are touched by a second commit, models.py by a third; notes/todo.md is untracked. So every
# file has 1 commit except util.ts (2) and models.py (3), and todo.md, untracked, sorts last.
# Dependencies: c/{main,vec}.c include vec.h; main.cpp includes shape.hpp; go/main.go imports the
# lib package through go.mod; Circle extends Shape (same package, a reference edge); api.py imports
# store and models; store imports models; cycle_a and cycle_b import each other; index.ts imports
# util; App.tsx imports util and index; lib.rs declares `mod geometry` and uses its Point.
EXPECTED_ORDER = [
    "README.md",
    "c/vec.h",
    "c/main.c",
    "c/vec.c",
    "cpp/shape.hpp",
    "cpp/main.cpp",
    "docs/guide.md",
    "go/go.mod",
    "go/lib/lib.go",
    "go/main.go",
    "java/com/acme/Shape.java",
    "java/com/acme/Circle.java",
    "py/app/__init__.py",
    "py/app/cycle_a.py",
    "py/app/cycle_b.py",
    "rust/src/geometry.rs",
    "rust/src/lib.rs",
    "web/src/util.ts",
    "web/src/index.ts",
    "web/src/App.tsx",
    "py/app/models.py",
    "py/app/store.py",
    "py/app/api.py",
    "notes/todo.md",
]


def test_fixture_repo_order_is_the_written_down_order(order_repo: Path, tokenizer) -> None:
    plan = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert [s.path for s in plan.segments] == EXPECTED_ORDER
    assert all(s.mode == "full" for s in plan.segments)


def test_order_is_the_same_with_and_without_the_cache(order_repo: Path, tokenizer) -> None:
    cold = RepoIndex(order_repo, tokenizer=tokenizer, config=IndexConfig(use_cache=False)).plan()
    first = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    warm = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    assert [s.path for s in cold.segments] == [s.path for s in first.segments] == [s.path for s in warm.segments]
    assert [s.token_ids for s in cold.segments] == [s.token_ids for s in warm.segments]


def test_order_is_deterministic_across_copies_of_the_tree(order_repo: Path, tmp_path: Path, tokenizer) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(order_repo, copy)
    assert [s.path for s in RepoIndex(copy, tokenizer=tokenizer).plan().segments] == EXPECTED_ORDER


def test_segments_are_headed_by_their_path_and_counted(order_repo: Path, tokenizer) -> None:
    plan = RepoIndex(order_repo, tokenizer=tokenizer).plan()
    segment = next(s for s in plan.segments if s.path == "py/app/store.py")
    assert segment.text.startswith("==> py/app/store.py <==\n")
    assert "def save(user: User) -> None:" in segment.text
    assert list(segment.token_ids) == tokenizer.encode(segment.text)
    assert plan.total_tokens == sum(len(s.token_ids) for s in plan.segments) == len(plan.token_ids())
    assert segment.language == "python"
    assert {s.language for s in plan.segments} >= {"c", "cpp", "go", "java", "python", "rust", "typescript", "tsx", "markdown"}


def test_outside_git_order_uses_dependencies_then_age(tmp_path: Path, tokenizer) -> None:
    import os

    root = tmp_path / "plain"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "base.py").write_text("class Base:\n    pass\n")
    (root / "pkg" / "child.py").write_text("from .base import Base\n\n\nclass Child(Base):\n    pass\n")
    (root / "zz_old.py").write_text("OLD = 1\n")
    (root / "pkg" / "new.py").write_text("NEW = 1\n")
    for age, rel in enumerate(["pkg/child.py", "pkg/base.py", "pkg/__init__.py", "pkg/new.py", "zz_old.py"]):
        stamp = 1_700_000_000 - age * 1000  # later in the list: older
        os.utime(root / rel, (stamp, stamp))
    plan = RepoIndex(root, tokenizer=tokenizer).plan()
    assert [s.path for s in plan.segments] == ["zz_old.py", "pkg/new.py", "pkg/__init__.py", "pkg/base.py", "pkg/child.py"]
