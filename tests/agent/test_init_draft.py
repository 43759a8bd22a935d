"""agent/init_draft.py: /init's repository map (its parts, its cap) and its request (create or improve)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from v4.agent.context import RepositoryContext
from v4.agent.init_draft import MAX_MAP_CHARS, InitError, init_request, instruction_target, repository_map

CI = """name: ci
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pip install -e .
      - run: |
          make test
          make lint
"""
FILES = {
    "Makefile": "PY := python\n.PHONY: test lint\ntest:\n\t@pytest -q\nlint:\n\truff check .\n%.o: %.c\n\tcc $<\n",
    "pyproject.toml": ('[project]\nname = "demo"\nrequires-python = ">=3.11"\n[project.scripts]\n'
                       'demo = "shop.cli:main"\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'
                       '[tool.ruff]\nline-length = 100\n'),
    "package.json": json.dumps({"name": "web", "scripts": {"build": "tsc", "test": "jest"}}),
    ".github/workflows/ci.yml": CI,
    "README.md": "# Shop\n\nA tiny shop.\n\n## Install\n\n```sh\n# not a heading\n```\n\n## Testing\n",
    "docs/design.md": "# Design\n",
    "shop/__init__.py": '"""The shop: carts, prices and the command line."""\n',
    "shop/cart.py": ("from .prices import price_of\n\n\nclass Cart:\n    def total_price(self):\n"
                     "        return sum(price_of(i) for i in self.items)\n\n\ndef _helper():\n    pass\n"),
    "shop/prices.py": ('"""Prices by item."""\nPRICES = {}\n\n\ndef price_of(item):\n    return PRICES[item]\n'),
    "shop/cli.py": "from .cart import Cart\n\n\ndef main():\n    return Cart()\n",
}


def _repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def _map(root: Path, **kwargs: int) -> str:
    context = RepositoryContext(root, None)
    context.scan()
    return repository_map(context, **kwargs)


def test_the_map_has_languages_layout_main_files_commands_and_docs(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {**FILES, ".env": "API_KEY=sk-live-0123456789abcdefghijklmnop\n"})
    text = _map(root)
    assert "## Languages (files)\npython 4" in text
    assert "- shop/: 4 files (python) — The shop: carts, prices and the command line." in text
    lines = text.splitlines()
    cart = next(line for line in lines if line.startswith("- shop/cart.py:"))
    assert "Cart" in cart and "_helper" not in cart and "total_price" not in cart  # public, top-level only
    assert "- shop/prices.py: price_of, PRICES — Prices by item." in text  # functions before constants
    ranked = [line.split(":")[0] for line in lines if line.startswith("- shop/")]
    assert ranked.index("- shop/prices.py") < ranked.index("- shop/cli.py")  # the most used file first
    for fact in ("make test: pytest -q", "make lint: ruff check .", "npm run build: tsc", "npm run test: jest",
                 "script demo = shop.cli:main", "pytest testpaths: tests", "tool settings: pytest, ruff",
                 ".github/workflows/ci.yml:\n  pip install -e .\n  make test\n  make lint"):
        assert fact in text
    assert "make PY" not in text and "make %" not in text and ".PHONY" not in text
    assert "README.md headings:\n  Shop\n    Install\n    Testing" in text and "not a heading" not in text
    assert "Other docs: docs/design.md" in text
    assert ".env" not in text and "sk-live" not in text  # the index left the secret out; so does the map


def test_the_map_keeps_to_its_cap(tmp_path: Path) -> None:
    many = {f"pkg/module_{n:03}.py": f"class Widget{n}:\n    pass\n\n\ndef build_{n}():\n    return Widget{n}()\n"
            for n in range(300)}
    root = _repo(tmp_path / "repo", {**FILES, **many})
    text = _map(root)
    assert len(text) <= MAX_MAP_CHARS and "make test: pytest -q" in text  # commands kept, files fill the rest
    assert "Widget" in text
    small = _map(root, max_chars=500)
    assert len(small) <= 500 and small.endswith("[map cut at 500 characters]")


def test_the_request_creates_agents_md_when_there_is_none() -> None:
    text = init_request("MAP", None)
    assert "Create `AGENTS.md` at the repository root" in text and "already has" not in text
    assert "may edit only `AGENTS.md`" in text and text.endswith("# Repository map\n\nMAP")
    for part in ("Overview", "Layout", "Build, test and lint", "Code style", "Conventions"):
        assert part in text


def test_the_request_improves_the_existing_file_in_place() -> None:
    existing = "# Notes\n\nRun ```make``` first.\n"
    text = init_request("MAP", existing, "CLAUDE.md")
    assert "already has `CLAUDE.md`" in text and "Improve it in place" in text and "Create `" not in text
    assert f"````markdown\n{existing}\n````" in text  # a fence longer than any run of backticks in the file
    assert "may edit only `CLAUDE.md`" in text
    assert "is empty: delete it and create it again" in init_request("MAP", "", "AGENTS.md")


def test_the_target_is_agents_md_else_claude_md(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    assert instruction_target(root) == ("AGENTS.md", None)
    (root / "CLAUDE.md").write_text("Use tabs.\n")
    assert instruction_target(root) == ("CLAUDE.md", "Use tabs.")
    (root / "AGENTS.md").write_text("")
    assert instruction_target(root) == ("AGENTS.md", "")


def test_an_instruction_file_linking_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.md").write_text("secret\n")
    os.symlink(tmp_path / "outside.md", root / "AGENTS.md")
    with pytest.raises(InitError, match="cannot improve AGENTS.md: AGENTS.md was not read: it points outside"):
        instruction_target(root)
