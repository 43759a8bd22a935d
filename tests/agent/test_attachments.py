"""Files attached to a request in full after the repository prefix (`agent/attachments.py`): named
files the prefix does not show as they are, uncommitted changes, read_file's results; each once per
content, under read_file's rules and a token cap; and the system message never changes for them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from v4.agent.approval import DenyAll
from v4.agent.sandbox import NoSandbox
from v4.agent.tools import ToolRunner
from v4.agent.attachments import NAMED, READ, UNCOMMITTED, Attachments
from v4.agent.backends import ReplayBackend
from v4.agent.session import Session
from v4.agent.workspace import Workspace
from v4.cli.main import main
from tests.conftest import make_repo

CALC = "def add(a, b):\n    return a + b\n"


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"calc.py": CALC, "pkg/util.py": "def helper():\n    return 1\n",
                                         "a/conf.py": "x = 1\n", "b/conf.py": "y = 2\n",
                                         ".gitignore": "build/\n"})


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def held_in_full(*files: tuple[str, str]) -> object:
    shown = {(path, sha(text)) for path, text in files}
    return lambda path, digest: (path, digest) in shown


def known(repo: Path) -> object:
    return lambda: ["calc.py", "pkg/util.py", "a/conf.py", "b/conf.py"]


def test_a_named_file_the_prefix_outlines_is_attached_once_per_content(repo: Path) -> None:
    attachments = Attachments(Workspace(repo), known=known(repo))
    block = attachments.for_request("rename helper in pkg/util.py", 0)
    assert block.startswith("# Attached files") and "==> pkg/util.py <== (named in the request)\ndef helper()" in block
    assert attachments.for_request("and now pkg/util.py again", 1) == ""  # the conversation has it
    (repo / "pkg/util.py").write_text("def helper():\n    return 2\n")
    again = attachments.for_request("look at pkg/util.py", 2)
    assert "return 2" in again
    assert [(a.path, a.reason, a.turn) for a in attachments.report] == [("pkg/util.py", NAMED, 0),
                                                                         ("pkg/util.py", NAMED, 2)]


def test_a_file_the_prefix_holds_as_it_is_is_not_attached(repo: Path) -> None:
    attachments = Attachments(Workspace(repo), held=held_in_full(("calc.py", CALC)), known=known(repo))
    assert attachments.for_request("explain calc.py", 0) == ""
    (repo / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n")  # the user's uncommitted edit
    block = attachments.for_request("what changed?", 1)
    assert "==> calc.py <== (uncommitted changes)" in block and "def sub" in block


def test_bare_file_names_match_one_indexed_file_only(repo: Path) -> None:
    attachments = Attachments(Workspace(repo), known=known(repo))
    assert attachments.named_paths("fix calc.py, then conf.py and ./pkg/util.py; not ../x.py") == [
        "calc.py", "pkg/util.py"]  # conf.py is two files: ambiguous, not guessed


def test_ignored_binary_and_credential_files_are_never_attached(repo: Path) -> None:
    (repo / "build").mkdir()
    (repo / "build/out.py").write_text("x = 1\n")
    (repo / "blob.py").write_bytes(b"\x00\x01binary")
    planted = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEYq"  # built at run time: this file is scanned too
    (repo / "keys.py").write_text(f'AWS_SECRET_ACCESS_KEY = "{planted}"\n')
    attachments = Attachments(Workspace(repo), known=lambda: ["build/out.py", "blob.py", "keys.py"])
    block = attachments.for_request("see build/out.py blob.py keys.py", 0)
    assert "build/out.py" not in block and "blob.py" not in block and "keys.py" not in block


def test_what_does_not_fit_is_named_not_sent(repo: Path) -> None:
    (repo / "big.py").write_text("x = 1\n" * 4000)
    attachments = Attachments(Workspace(repo), known=lambda: ["big.py", "calc.py"], max_tokens=1000)
    block = attachments.for_request("compare big.py and calc.py", 0)
    assert "==> big.py <== (named in the request; " in block and "read it with read_file" in block
    assert "x = 1\nx = 1" not in block and "==> calc.py <== (named in the request)\ndef add" in block
    assert [(a.path, a.attached) for a in attachments.report] == [("big.py", False), ("calc.py", True)]


def test_the_session_attaches_after_the_prefix_and_the_system_message_never_changes(repo: Path) -> None:
    read = {"content": "", "tool_calls": [{"name": "read_file", "arguments": {"path": "pkg/util.py"}}]}
    backend = ReplayBackend([read, "It returns 1.", "Still 1."])
    session = Session(repo, backend, "==> calc.py <==\n" + CALC)
    session.attachments = Attachments(session.workspace, held=held_in_full(("calc.py", CALC)), known=known(repo))
    session.tools = ToolRunner(session.workspace, NoSandbox(session.root), DenyAll())  # read_file needs no approval
    first = session.run("what does helper return?")
    assert [(a["path"], a["reason"]) for a in first.attached] == [("pkg/util.py", READ)]
    second = session.run("and pkg/util.py's helper, again?")
    assert second.attached == []  # read_file showed it already, unchanged
    assert all(call[0] == backend.calls[0][0] for call in backend.calls)  # the cached prefix stays as it was
    assert json.loads(json.dumps(first.to_json()))["attached"][0]["reason"] == READ


def test_refactor_json_reports_what_it_attached(repo: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps(["No change needed."]))
    main(["refactor", "look at pkg/util.py and calc.py", "--repo", str(repo), "--replay", str(script), "--json",
          "--no-tools", "--budget", "12"])  # too small for the files in full: the plan outlines or omits them
    result = json.loads(capsys.readouterr().out)
    assert {(a["path"], a["reason"]) for a in result["attached"]} == {("pkg/util.py", NAMED), ("calc.py", NAMED)}
