"""Shared fixtures: real git repositories built in tmp_path, and the default tokenizer."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

# Triton kernels run on CPU through Triton's interpreter when there is no GPU. Set before anything
# imports triton: `triton.jit` picks the interpreter when a kernel is decorated.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURES = Path(__file__).parent / "fixtures"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": os.devnull,
}


def git(root: Path, *args: str) -> str:
    """Run git in `root` with a fixed identity and date; return stdout."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout


def make_repo(root: Path, files: dict[str, str | bytes], commit: bool = True) -> Path:
    """Write `files` under `root`, `git init` it and commit them all (unless `commit` is False)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    git(root, "init", "-q", "-b", "main")
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "initial")
    return root


def touch_and_commit(root: Path, paths: Iterable[str], message: str) -> None:
    """Append a line to each path and commit: one more commit in each file's history."""
    for rel in paths:
        with open(root / rel, "a") as handle:
            handle.write("\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "repo_index" / "data" / "tokenizer.json"


def tiny_chat_checkpoint(directory: Path, seed: int) -> Path:
    """A tiny random V4 checkpoint with the bundled tokenizer and V4's prompt tokens, for the chat paths."""
    from v4.model.random_checkpoint import init_checkpoint

    return init_checkpoint(directory / "tiny", "tiny", seed=seed, tokenizer_json=TOKENIZER_JSON)


@pytest.fixture(scope="session")
def tokenizer():
    from v4.repo_index.tokens import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture
def order_repo(tmp_path: Path) -> Path:
    """tests/fixtures/order_repo as a git repository with a known history (see test_order.py)."""
    root = tmp_path / "order_repo"
    shutil.copytree(FIXTURES / "order_repo", root, ignore=shutil.ignore_patterns("todo.md"))
    make_repo(root, {})
    touch_and_commit(root, ["py/app/models.py", "web/src/util.ts"], "second")
    touch_and_commit(root, ["py/app/models.py"], "third")
    shutil.copy(FIXTURES / "order_repo" / "notes" / "todo.md", root / "notes" / "todo.md")
    return root
