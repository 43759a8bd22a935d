"""Issue 25 end to end through `v4 refactor --json`, once per backend: the model thinks, calls a tool
(a real command through the sandbox, allowed by --allow-commands), gets its result back, and then
writes an edit that is applied. A denied command must not run.

- replay: the scripted answers carry reasoning and tool calls;
- endpoint: a loopback OpenAI-compatible stub streams `reasoning_content`, `tool_calls` deltas and
  usage with DeepSeek's `prompt_cache_hit_tokens`, and records what v4 sent back;
- embedded: the tiny checkpoint with the real tokenizer, V4's encoding (thinking, DSML tools), the
  prefill and the stream splitter; only the sampled text is scripted, since random weights never
  write a DSML call.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import git, make_repo, tiny_chat_checkpoint
from v4.cli.main import main

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
RENAME = ("calc.py\n```python\n<<<<<<< SEARCH\ndef sub(a, b):\n    return a - b\n=======\n"
          "def subtract(a, b):\n    return a - b\n>>>>>>> REPLACE\n```\n")
COMMAND = "grep -n def calc.py"


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = make_repo(tmp_path / "repo", {"calc.py": CALC})
    git(root, "config", "user.name", "Dev")
    git(root, "config", "user.email", "dev@example.com")
    return root


@pytest.fixture()
def sandbox_flags(repo: Path) -> list[str]:
    """Commands run in bubblewrap where it can start; elsewhere the test says --no-sandbox, as a user must."""
    from v4.agent.sandbox import BwrapSandbox, SandboxUnavailable

    try:
        BwrapSandbox(repo).probe()
    except SandboxUnavailable:
        return ["--no-sandbox"]
    return []


def _refactor(repo: Path, capsys: pytest.CaptureFixture[str], *backend: str) -> dict:
    code = main(["refactor", "rename sub to subtract", "--repo", str(repo), "--json", "--yes", *backend])
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    record = os.environ.get("V4_E2E_RECORD")  # a file to keep each run's --json and stderr in, for a report
    if record:
        with open(record, "a") as out:
            out.write(json.dumps({"argv": backend, "json": document, "stderr": captured.err}) + "\n")
    assert code == 0, document
    return document


def _check_run(repo: Path, document: dict, thought: str) -> None:
    assert thought in document["reasoning"]
    assert document["tool_calls"] == [{"name": "run_command", "arguments": {"command": COMMAND}, "allowed": True,
                                       "exit_code": 0}]
    assert document["applied"] and document["files"] == ["calc.py"]
    assert "def subtract(a, b):" in (repo / "calc.py").read_text()


def test_replay_thinks_runs_a_command_and_applies_an_edit(repo: Path, tmp_path: Path, capsys,
                                                          sandbox_flags: list[str]) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps([
        {"reasoning": "First see where sub is defined.", "content": "Let me look.",
         "tool_calls": [{"name": "run_command", "arguments": {"command": COMMAND}}]},
        {"reasoning": "Line 5 defines sub.", "content": "Renaming it.\n\n" + RENAME},
    ]))
    document = _refactor(repo, capsys, "--replay", str(script), "--allow-commands", "grep *", *sandbox_flags)
    _check_run(repo, document, "First see where sub is defined.")


def test_a_denied_command_does_not_run_and_the_model_is_told(repo: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps([
        {"content": "", "tool_calls": [{"name": "run_command", "arguments": {"command": "touch created.txt"}}]},
        "Fine.\n\n" + RENAME,
    ]))
    document = _refactor(repo, capsys, "--replay", str(script), "--allow-commands", "grep *")
    assert document["tool_calls"] == [{"name": "run_command", "arguments": {"command": "touch created.txt"},
                                       "allowed": False, "exit_code": None}]
    assert not (repo / "created.txt").exists()
    assert document["applied"]


def test_no_tools_offers_none(repo: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps(["Renaming.\n\n" + RENAME]))
    document = _refactor(repo, capsys, "--replay", str(script), "--no-tools", "--no-think")
    assert document["applied"] and document["tool_calls"] == [] and document["reasoning"] == ""


@pytest.fixture()
def endpoint() -> Iterator[tuple[str, list[dict]]]:
    """A loopback OpenAI-compatible server: the first answer thinks and calls run_command in streamed
    pieces, the second edits; every request body is recorded."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._send_json({"data": [{"id": "stub", "max_model_len": 65_536}]})

        def do_POST(self) -> None:  # noqa: N802
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            first = len(requests) == 1
            arguments = json.dumps({"command": COMMAND})
            deltas = ([{"reasoning_content": "See where "}, {"reasoning_content": "sub is."}, {"content": "Checking."},
                       {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                        "function": {"name": "run_command", "arguments": arguments[:9]}}]},
                       {"tool_calls": [{"index": 0, "function": {"arguments": arguments[9:]}}]}] if first else
                      [{"reasoning_content": "Now rename."}, {"content": "Done.\n\n" + RENAME}])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for delta in deltas:
                self.wfile.write(f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n".encode())
            usage = {"prompt_tokens": 900, "completion_tokens": 20, "prompt_cache_hit_tokens": 640}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())

        def _send_json(self, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_endpoint_thinks_calls_a_tool_and_applies_an_edit(repo: Path, capsys, endpoint,
                                                          sandbox_flags: list[str]) -> None:
    url, requests = endpoint
    document = _refactor(repo, capsys, "--endpoint", url, "--allow-commands", "grep *", *sandbox_flags)
    _check_run(repo, document, "See where sub is.")
    assert document["tokens"]["cached"] == 2 * 640  # DeepSeek's prompt_cache_hit_tokens
    first, second = requests
    assert [t["function"]["name"] for t in first["tools"]] == ["run_command", "read_file"]
    assert first["chat_template_kwargs"] == {"thinking": True}
    assistant, result = second["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == "call_a"
    assert assistant["reasoning_content"] == "See where sub is."  # DeepSeek's API wants it back for a tool turn
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"command": COMMAND}
    assert result["role"] == "tool" and result["tool_call_id"] == "call_a"
    assert "def sub(a, b):" in result["content"] and "exit code 0" in result["content"]


def test_embedded_renders_parses_and_runs_a_dsml_call(repo: Path, tmp_path: Path, capsys, monkeypatch,
                                                      sandbox_flags: list[str]) -> None:
    from v4.agent.dsml import ToolCall, render_tool_calls
    from v4.model.runner import Runner

    checkpoint = tiny_chat_checkpoint(tmp_path, seed=0)
    call = render_tool_calls([ToolCall("call_0", "run_command", {"command": COMMAND})])
    completions = iter(["Look first.</think>Checking.\n\n" + call + "<｜end▁of▁sentence｜>",
                        "Rename it.</think>Done.\n\n" + RENAME + "<｜end▁of▁sentence｜>"])
    prompts: list[list[int]] = []
    real_prefill = Runner.prefill

    def generate(self: Runner, ids: list[int], max_tokens: int, *args: object, **kwargs: object) -> Iterator[str]:
        prompts.append(list(ids))
        real_prefill(self, ids, kwargs.get("boundaries", ()))  # the engine really reads the prompt
        text = next(completions)
        for start in range(0, len(text), 7):  # pieces that split the markers
            yield text[start:start + 7]

    monkeypatch.setattr(Runner, "generate", generate)
    document = _refactor(repo, capsys, "--model", str(checkpoint), "--store-dir", str(tmp_path / "store"),
                         "--max-tokens", "64", "--allow-commands", "grep *", *sandbox_flags)
    _check_run(repo, document, "Look first.")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    second = tokenizer.decode(prompts[1], skip_special_tokens=False)
    assert "<｜DSML｜tool_calls>" in second and "run_command" in second  # the call, rendered back in V4's encoding
    assert "def sub(a, b):" in second.split("<｜DSML｜tool_calls>")[-1]  # and its result after it
    assert prompts[1][:len(prompts[0])] == prompts[0]  # the second prompt extends the first: its state is reused


def test_deepseeks_api_is_asked_for_thinking_its_own_way() -> None:
    """DeepSeek's API takes `thinking: {"type": ...}` and `reasoning_effort`; vLLM and SGLang take
    `chat_template_kwargs`; earlier turns' reasoning is sent back only for a turn that called tools."""
    from v4.agent.backends import Thinking
    from v4.agent.backends.openai_wire import request_body
    from v4.agent.chat_format import Message
    from v4.agent.dsml import ToolCall

    turns = [Message("user", "q"), Message("assistant", "a", reasoning="plain thought"),
             Message("user", "q2"), Message("assistant", "", reasoning="why I call",
                                             tool_calls=[ToolCall("c1", "run_command", {"command": "ls"})]),
             Message("tool", "out", tool_call_id="c1")]
    hosted = request_body("deepseek-v4-flash", turns, 100, 0.0, Thinking(True, "max"), (), "https://api.deepseek.com")
    assert hosted["thinking"] == {"type": "enabled"} and hosted["reasoning_effort"] == "max"
    assert "chat_template_kwargs" not in hosted
    assert "reasoning_content" not in hosted["messages"][1] and hosted["messages"][3]["reasoning_content"] == "why I call"
    local = request_body("v4", turns, 100, 0.0, None, (), "http://127.0.0.1:8000")
    assert local["chat_template_kwargs"] == {"thinking": False} and "thinking" not in local
