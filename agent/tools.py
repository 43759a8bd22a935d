"""The tools the model may call, and the one place their calls are executed.

`tool_specs()` describes them in the OpenAI shape (`name`, `description`, JSON-schema `parameters`);
the HTTP backend sends `ToolSpec.as_openai()`, the embedded engine renders the same specs in DSML.
`ToolRunner.run(name, arguments)` executes one call and always returns a `ToolResult`, never
raises for anything the model sent: an unknown tool, bad JSON or a wrong argument becomes an error
text the model can act on.

- `run_command` goes through the approval policy first (agent/approval.py) and, only if allowed,
  through the command runner (agent/sandbox.py): a refused command does not start at all.
- `read_file` reads a file inside the repository without asking, because it can only show what the
  plan could have shown: the path is checked as edits are (`apply.check_path`: no `..`, no absolute
  paths, no symbolic links out, nothing in `.git/`), and files git ignores, binary files and files that
  look like they hold credentials (repo_index's secret rules, as for the context plan) are refused;
  long files are cut at `max_read_bytes`, with a line saying so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from v4.repo_index.files import SNIFF_BYTES, decode_text, find_secret

from .apply import PathError, check_path
from .approval import ApprovalPolicy
from .sandbox import CommandRunner, SandboxUnavailable
from .workspace import Workspace, WorkspaceError

__all__ = ["MAX_READ_BYTES", "FileRead", "ToolResult", "ToolRunner", "ToolSpec", "read_repository_file", "tool_specs"]

MAX_READ_BYTES = 200_000
RUN_COMMAND = "run_command"
READ_FILE = "read_file"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def as_openai(self) -> dict[str, Any]:
        """The entry for an OpenAI-compatible request's `tools` list."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def tool_specs() -> list[ToolSpec]:
    """The tools, built fresh on each call (callers may serialise or amend them freely)."""
    return [
        ToolSpec(RUN_COMMAND,
                 "Run one shell command (bash) in the repository root and get its output (stdout and stderr "
                 "together, the middle cut when long) and exit code. Use it to run tests, linters and builds, "
                 "or to search the tree (grep, ls, git log). It may need the user's approval; the command is "
                 "sandboxed: only the repository is writable, .git is read-only and there is no network "
                 "unless the user allowed it.",
                 {"type": "object",
                  "properties": {"command": {"type": "string", "description": "The command line, run by bash -c."}},
                  "required": ["command"], "additionalProperties": False}),
        ToolSpec(READ_FILE,
                 "Read a text file of the repository, given its path relative to the repository root. Use it "
                 "for files the context shows only in outline or leaves out, before editing them.",
                 {"type": "object",
                  "properties": {"path": {"type": "string",
                                          "description": "The file's path relative to the repository root."}},
                  "required": ["path"], "additionalProperties": False}),
    ]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One executed (or refused) call: the text that goes back to the model, and the facts for --json."""

    name: str
    arguments: dict[str, Any]
    text: str
    allowed: bool  # False: refused (not approved, bad call, unsafe path); nothing ran
    exit_code: int | None = None  # run_command only; None when it did not run or did not exit by itself
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The entry `--json` lists under "tool_calls"."""
        return {"name": self.name, "arguments": self.arguments, "allowed": self.allowed,
                "exit_code": self.exit_code}


class ToolRunner:
    """Executes the model's tool calls against one workspace, through one policy and one runner."""

    def __init__(self, workspace: Workspace, runner: CommandRunner, policy: ApprovalPolicy, *,
                 max_read_bytes: int = MAX_READ_BYTES, include_secrets: bool = False) -> None:
        if max_read_bytes <= 0:
            raise ValueError(f"max_read_bytes must be positive, got {max_read_bytes}")
        if runner.root != workspace.root:
            raise ValueError(f"the command runner's root {runner.root} is not the workspace's {workspace.root}")
        self.workspace = workspace
        self.runner = runner
        self.policy = policy
        self.max_read_bytes = max_read_bytes
        self.include_secrets = include_secrets

    def specs(self) -> list[ToolSpec]:
        """The tools this runner executes."""
        return tool_specs()

    def run(self, name: str, arguments: Mapping[str, Any] | str | None) -> ToolResult:
        """Execute one call; `arguments` may be the JSON text an endpoint streams or the parsed object."""
        parsed, problem = _parse_arguments(arguments)
        if problem is not None:
            return self._refused(name, parsed, problem)
        if name == RUN_COMMAND:
            value, problem = _string_argument(parsed, "command", name)
            return self._refused(name, parsed, problem) if problem else self._run_command(parsed, value)
        if name == READ_FILE:
            value, problem = _string_argument(parsed, "path", name)
            return self._refused(name, parsed, problem) if problem else self._read_file(parsed, value)
        known = ", ".join(spec.name for spec in tool_specs())
        return self._refused(name, parsed, f"there is no tool named {name!r}; the tools are {known}")

    @staticmethod
    def _refused(name: str, arguments: dict[str, Any], problem: str) -> ToolResult:
        return ToolResult(name, arguments, f"error: {problem}", allowed=False)

    def _run_command(self, arguments: dict[str, Any], command: str) -> ToolResult:
        decision = self.policy.decide(command)
        if not decision.allowed:
            return ToolResult(RUN_COMMAND, arguments, f"not allowed: {decision.reason}. The command was not run.",
                              allowed=False, details={"reason": decision.reason})
        try:
            result = self.runner.run(command)
        except SandboxUnavailable as exc:
            return ToolResult(RUN_COMMAND, arguments, f"not run: {exc}", allowed=False, details={"reason": str(exc)})
        details = {"timed_out": result.timed_out, "signal": result.signal, "omitted_chars": result.omitted_chars}
        return ToolResult(RUN_COMMAND, arguments, result.for_model(), allowed=True, exit_code=result.exit_code,
                          details=details)

    def _read_file(self, arguments: dict[str, Any], path: str) -> ToolResult:
        read = read_repository_file(self.workspace, path, self.max_read_bytes, self.include_secrets)
        if read.text is None:
            return ToolResult(READ_FILE, arguments, f"error: {read.problem}", allowed=False)
        text = read.text
        if read.cut:
            text += (f"[... cut: showing the first {read.shown:,} of {read.size:,} bytes; use run_command "
                     f"(sed -n, grep) for the rest ...]\n")
        return ToolResult(READ_FILE, arguments, text, allowed=True, details={"bytes": read.size, "cut": read.cut})


@dataclass(frozen=True, slots=True)
class FileRead:
    """A repository file as the model may be shown it (`text`), or why not (`problem`)."""

    rel: str
    text: str | None
    problem: str = ""
    size: int = 0
    shown: int = 0  # bytes of it in `text`
    cut: bool = False


def read_repository_file(workspace: Workspace, path: str, max_bytes: int = MAX_READ_BYTES,
                         include_secrets: bool = False) -> FileRead:
    """Read `path` for the model under read_file's rules (the attachments of a request use them too):
    inside the repository, not ignored by git, not binary, UTF-8, no credentials; cut at `max_bytes`."""
    root = workspace.root

    def refuse(why: str, rel: str = path) -> FileRead:
        return FileRead(rel, None, f"cannot read {path!r}: {why}")

    try:
        target = check_path(root, path)
    except PathError as exc:
        return FileRead(path, None, str(exc))
    rel = target.relative_to(root).as_posix()
    if not target.exists():
        return refuse("no such file in the repository", rel)
    if target.is_dir():
        return refuse("it is a directory (use run_command with ls to list it)", rel)
    if not target.is_file():
        return refuse("it is not a regular file", rel)
    try:
        if workspace.ignored([rel]):
            return refuse("git ignores it (it is not part of the repository's sources)", rel)
    except WorkspaceError as exc:
        return refuse(str(exc), rel)
    try:
        size = target.stat().st_size
        with target.open("rb") as handle:
            data = handle.read(max_bytes)
    except OSError as exc:
        return refuse(exc.strerror or str(exc), rel)
    if b"\x00" in data[:SNIFF_BYTES]:
        return refuse("it is a binary file", rel)
    cut = size > len(data)
    if cut:  # end on a whole line, or at least a whole character
        end = data.rfind(b"\n") + 1
        data = data[:end] if end else data
    text = _decode(data, partial=cut)
    if text is None:
        return refuse("it is not UTF-8 text", rel)
    secret = None if include_secrets else find_secret(rel, text)
    if secret is not None:
        return refuse(f"it looks like it holds credentials ({secret.describe()}), which v4 does not send "
                      "to the model", rel)
    return FileRead(rel, text, size=size, shown=len(data), cut=cut)


def _decode(data: bytes, partial: bool) -> str | None:
    """UTF-8 text, or None; a `partial` read may end inside a character (up to 3 bytes are dropped)."""
    for drop in range(4 if partial else 1):
        try:
            return decode_text(data[:len(data) - drop])
        except UnicodeDecodeError:
            continue
    return None


def _parse_arguments(arguments: Mapping[str, Any] | str | None) -> tuple[dict[str, Any], str | None]:
    """The arguments object, and a message for the model when it is not one."""
    if arguments is None:
        return {}, None
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}, None
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return {"raw": arguments}, f"the arguments are not valid JSON ({exc.msg} at position {exc.pos})"
    if not isinstance(arguments, Mapping):
        return {"raw": arguments}, f"the arguments must be a JSON object, got {type(arguments).__name__}"
    return dict(arguments), None


def _string_argument(arguments: dict[str, Any], key: str, tool: str) -> tuple[str, str | None]:
    """`arguments[key]` when it is a non-empty string (and the only argument), else a message."""
    value = arguments.get(key)
    extra = sorted(set(arguments) - {key})
    if extra:
        return "", f"{tool} takes only {key!r}; unexpected {', '.join(map(repr, extra))}"
    if not isinstance(value, str) or not value.strip():
        return "", f"{tool} needs {key!r}, a non-empty string"
    return value, None
