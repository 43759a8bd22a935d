"""agent/instructions.py: project instructions (AGENTS.md, else CLAUDE.md) in the system message and,
for the directories of the files a turn names, in its user message (issue 26)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from v4.agent.backends import ReplayBackend
from v4.agent.bootstrap import ChosenBackend, open_session
from v4.agent.context import RepositoryContext
from v4.agent.instructions import MAX_INSTRUCTION_BYTES, nested_instructions, root_instructions
from v4.agent.prompts import system_message
from v4.agent.session import Session, SessionOptions


def _repo(root: Path, files: dict[str, str | bytes], track: bool = True) -> Path:
    root.mkdir()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    if track:
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


def _opened_system(root: Path) -> str:
    context = RepositoryContext(root, None)
    context.scan()
    opened = open_session(context, ChosenBackend(ReplayBackend([]), 4096, None), SessionOptions())
    return opened.session.system.content


def test_root_agents_md_is_in_the_system_message_before_the_repository(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"AGENTS.md": "Use tabs.\n", "CLAUDE.md": "Use spaces.\n", "a.py": "X = 1\n"})
    system = _opened_system(root)
    assert "# Project instructions\n\nUse tabs." in system
    assert "Use spaces." not in system.split("# Repository")[0]
    assert system.index("# Project instructions") < system.index("# Repository")


def test_claude_md_only_when_there_is_no_agents_md(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"CLAUDE.md": "Use spaces.\n", "a.py": "X = 1\n"})
    assert "# Project instructions\n\nUse spaces." in _opened_system(root)


def test_an_untracked_agents_md_is_read(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"a.py": "X = 1\n"})
    (root / "AGENTS.md").write_text("Untracked rules.\n")
    assert root_instructions(root).text == "Untracked rules."


def test_a_symlinked_agents_md_outside_the_repository_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not send\n")
    root = _repo(tmp_path / "repo", {"a.py": "X = 1\n"})
    (root / "AGENTS.md").symlink_to(secret)
    found = root_instructions(root)
    assert found.text == "" and "outside the repository" in (found.warning or "")
    assert "do not send" not in _opened_system(root)


def test_non_utf8_is_refused_with_a_warning_and_a_long_file_is_cut(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"AGENTS.md": b"\xff\xfe bad", "big/AGENTS.md": "x" * (MAX_INSTRUCTION_BYTES + 10)})
    found = root_instructions(root)
    assert found.text == "" and "not UTF-8" in (found.warning or "")
    nested = nested_instructions(root, ["big/a.py"])
    assert "only its first" in nested.text and nested.paths == ("big/AGENTS.md",)


def test_a_nested_agents_md_reaches_the_model_once_for_a_file_in_its_directory(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"AGENTS.md": "Root rules.\n", "pkg/AGENTS.md": "Pkg rules.\n",
                                     "pkg/mod.py": "X = 1\n", "other.py": "Y = 2\n"})
    backend = ReplayBackend(["no edits", "no edits", "no edits"])
    session = Session(root, backend, "", SessionOptions(), instructions=root_instructions(root).text)
    session.run("explain other.py", answer_only=True)
    assert "Pkg rules." not in backend.calls[0][-1].content
    session.run("tidy pkg/mod.py please", answer_only=True)
    asked = backend.calls[1][-1].content
    assert asked.startswith("# Project instructions for pkg/ (from pkg/AGENTS.md)\n\nPkg rules.")
    assert asked.endswith("# Request\n\ntidy pkg/mod.py please")
    assert "Root rules." in backend.calls[1][0].content
    session.run("and pkg/mod.py again", answer_only=True)  # already in the conversation: not repeated
    assert backend.calls[2][-1].content == "and pkg/mod.py again"


def test_editable_files_bring_their_directory_instructions(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", {"pkg/CLAUDE.md": "Claude pkg rules.\n", "pkg/mod.py": "X = 1\n"})
    backend = ReplayBackend(["no edits"])
    Session(root, backend, "", SessionOptions(editable=["pkg/mod.py"])).run("go", answer_only=True)
    assert "Claude pkg rules." in backend.calls[0][-1].content


@pytest.mark.parametrize("files", [{"a.py": "X = 1\n"}, {"a.py": "X = 1\n", "docs/README.md": "hi\n"}])
def test_no_instruction_file_changes_nothing(tmp_path: Path, files: dict[str, str]) -> None:
    root = _repo(tmp_path / "repo", files)
    context = RepositoryContext(root, None)
    context.scan()
    context.plan(4096)
    assert _opened_system(root) == system_message(context.repository_text()).content
    assert root_instructions(root).text == "" and root_instructions(root).warning is None
