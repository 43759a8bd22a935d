"""Tool calls end to end: the approval point before the sandbox, read_file's path rules, and error texts
(never exceptions) for whatever the model sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v4.agent.approval import AllowCommands, DenyAll
from v4.agent.sandbox import BwrapSandbox, CommandRunner, NoSandbox, SandboxConfig, SandboxUnavailable
from v4.agent.tools import ToolRunner, tool_specs
from v4.agent.workspace import Workspace
from tests.conftest import make_repo


def _runner_class() -> type[BwrapSandbox] | type[NoSandbox]:
    try:
        BwrapSandbox(Path.cwd()).probe()
    except SandboxUnavailable:
        return NoSandbox  # approval is what these tests check; the sandbox has its own tests
    return BwrapSandbox


RUNNER = _runner_class()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "outside.txt").write_text("outside\n")
    root = make_repo(tmp_path / "repo", {
        "src/a.py": "def a():\n    return 1\n",
        ".gitignore": "*.log\nbuild/\n",
        "data.bin": b"\x89PNG\x00\x01\x02",
        "latin1.txt": "caf\xe9\n".encode("latin-1"),
        "config/.env": "API_KEY=abcdef123456\n",
        "big.txt": "".join(f"line {i:06d}\n" for i in range(30_000)),
    })
    (root / "debug.log").write_text("ignored\n")
    (root / "build").mkdir()
    (root / "build" / "out.txt").write_text("ignored\n")
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    return root


def tools(root: Path, policy: object = None, runner: CommandRunner | None = None) -> ToolRunner:
    return ToolRunner(Workspace(root), runner or RUNNER(root), policy or DenyAll())  # type: ignore[arg-type]


def test_the_specs_are_openai_function_tools() -> None:
    specs = [spec.as_openai() for spec in tool_specs()]
    json.dumps(specs)
    assert [s["function"]["name"] for s in specs] == ["run_command", "read_file"]
    assert specs[0]["type"] == "function"
    assert specs[0]["function"]["parameters"]["required"] == ["command"]
    assert specs[1]["function"]["parameters"]["properties"]["path"]["type"] == "string"


def test_a_denied_command_does_not_run(repo: Path) -> None:
    result = tools(repo, DenyAll()).run("run_command", {"command": "touch created.txt"})
    assert not (repo / "created.txt").exists()
    assert (result.allowed, result.exit_code) == (False, None)
    assert result.text.startswith("not allowed: ") and result.text.endswith("The command was not run.")
    assert result.record() == {"name": "run_command", "arguments": {"command": "touch created.txt"},
                               "allowed": False, "exit_code": None}


def test_an_allowed_command_runs_in_the_repository_root(repo: Path) -> None:
    result = tools(repo, AllowCommands(["touch *", "pwd"])).run("run_command", '{"command": "touch created.txt; pwd"}')
    assert (repo / "created.txt").exists()
    assert (result.allowed, result.exit_code) == (True, 0)
    assert result.text == f"{repo.resolve()}\n[exit code 0]"


@pytest.mark.parametrize("command", ["echo hi; touch pwned", "echo hi && touch pwned", "echo hi | touch pwned",
                                     "echo $(touch pwned)", "echo `touch pwned`", "echo hi\ntouch pwned"])
def test_a_smuggled_command_does_not_run(repo: Path, command: str) -> None:
    result = tools(repo, AllowCommands(["echo *"])).run("run_command", {"command": command})
    assert not result.allowed and result.text.startswith("not allowed: ")
    assert not (repo / "pwned").exists()


def test_a_sandbox_that_cannot_start_runs_nothing(repo: Path) -> None:
    runner = BwrapSandbox(repo, SandboxConfig(bwrap=str(repo / "missing-bwrap")))
    result = tools(repo, AllowCommands(["*"]), runner).run("run_command", {"command": "touch created.txt"})
    assert not (repo / "created.txt").exists()
    assert not result.allowed and result.text.startswith("not run: ") and "--no-sandbox" in result.text


def test_a_failing_command_reports_its_exit_code(repo: Path) -> None:
    result = tools(repo, AllowCommands(["*"])).run("run_command", {"command": "ls missing-file"})
    assert result.allowed and result.exit_code == 2
    assert "missing-file" in result.text and result.text.endswith("[exit code 2]")


def test_read_file_reads_a_file_of_the_repository(repo: Path) -> None:
    result = tools(repo).run("read_file", {"path": "src/a.py"})
    assert (result.allowed, result.text) == (True, "def a():\n    return 1\n")
    assert tools(repo).run("read_file", {"path": "./src/../src/a.py"}).text == "def a():\n    return 1\n"


@pytest.mark.parametrize("path, why", [
    ("../outside.txt", "outside the repository"),
    ("/etc/passwd", "absolute paths are not allowed"),
    (".git/config", ".git"),
    ("src/../.git/HEAD", ".git"),
    ("escape.txt", "outside the repository"),
    ("debug.log", "git ignores it"),
    ("build/out.txt", "git ignores it"),
    ("data.bin", "binary"),
    ("latin1.txt", "not UTF-8"),
    ("config/.env", "credentials"),
    ("src", "directory"),
    ("nope.py", "no such file"),
])
def test_read_file_refuses(repo: Path, path: str, why: str) -> None:
    result = tools(repo).run("read_file", {"path": path})
    assert not result.allowed and result.text.startswith("error: ") and why in result.text
    assert "outside\n" != result.text and "API_KEY" not in result.text


def test_read_file_cuts_a_long_file_on_a_line(repo: Path) -> None:
    runner = ToolRunner(Workspace(repo), RUNNER(repo), DenyAll(), max_read_bytes=1000)
    result = runner.run("read_file", {"path": "big.txt"})
    assert result.text.startswith("line 000000\n")
    text, cut_line, _ = result.text.rsplit("\n", 2)
    assert cut_line.startswith("[... cut: showing the first 996 of 360,000 bytes")
    assert text.endswith("line 000082") and result.allowed
    default = tools(repo).run("read_file", {"path": "big.txt"})
    assert "of 360,000 bytes" in default.text and len(default.text) < 200_200


@pytest.mark.parametrize("name, arguments, why", [
    ("delete_everything", {}, "there is no tool named 'delete_everything'; the tools are run_command, read_file"),
    ("run_command", "{not json", "the arguments are not valid JSON"),
    ("run_command", "[1, 2]", "the arguments must be a JSON object, got list"),
    ("run_command", {}, "run_command needs 'command', a non-empty string"),
    ("run_command", {"command": 3}, "run_command needs 'command', a non-empty string"),
    ("run_command", {"command": "ls", "cwd": "/"}, "run_command takes only 'command'; unexpected 'cwd'"),
    ("read_file", {"file": "a.py"}, "read_file takes only 'path'; unexpected 'file'"),
    ("read_file", None, "read_file needs 'path', a non-empty string"),
])
def test_bad_calls_become_error_texts(repo: Path, name: str, arguments: object, why: str) -> None:
    result = tools(repo, AllowCommands(["*"])).run(name, arguments)  # type: ignore[arg-type]
    assert not result.allowed and result.text.startswith("error: ") and why in result.text


def test_the_runner_must_share_the_workspace_root(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not the workspace"):
        ToolRunner(Workspace(repo), NoSandbox(tmp_path), DenyAll())
