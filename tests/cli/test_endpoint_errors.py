"""Issue 24: `v4 refactor --endpoint` reports what the server said. A prompt over the server's context
used to come back as "Your answer contained no edit blocks" with 0 tokens; now the 400's message (or
the error event that ends a stream) is the result's error, in `--json` and on stderr, and the plan
is sized from the server's `max_model_len`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent import test_http_backend
from tests.agent.test_http_backend import OVER, Reply, card, sse
from tests.conftest import git
from v4.cli.main import main

stub = test_http_backend.stub  # the loopback OpenAI-compatible server, as a fixture here too


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Dev")
    git(root, "config", "user.email", "dev@example.com")
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "start")
    return root


def _refactor(repo: Path, endpoint: str, *extra: str) -> int:
    return main(["refactor", "rename sub to subtract", "--repo", str(repo), "--endpoint", endpoint, "--yes", *extra])


def test_a_400_over_the_context_is_the_json_error_not_no_edit_blocks(repo: Path, stub, capsys) -> None:
    url, routes = stub
    routes["/v1/models"] = card(max_model_len=2048)
    routes["/v1/chat/completions"] = Reply(400, json.dumps({"object": "error", "message": OVER,
                                                            "type": "BadRequestError", "code": 400}).encode())
    assert _refactor(repo, url, "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert document["error"] == f"{url}/v1/chat/completions answered 400 Bad Request: {OVER}"
    assert document["reflections"] == 0 and not document["applied"]
    assert (document["context_length"], document["session_length"], document["context_note"]) == (2048, 2048, None)
    assert document["budget"] == 1536  # the server's context less a quarter, not 1,044,480
    assert git(repo, "status", "--porcelain") == ""


def test_an_error_event_mid_stream_is_the_error_on_stderr(repo: Path, stub, capsys) -> None:
    url, routes = stub
    routes["/v1/models"] = card(max_model_len=4096)
    routes["/v1/chat/completions"] = Reply(events=sse({"choices": [{"delta": {"content": "I will"}}]},
                                                      {"error": {"message": "request aborted: out of memory"}},
                                                      "[DONE]"))
    assert _refactor(repo, url) == 1
    err = capsys.readouterr().err
    assert "v4 refactor: the endpoint stopped with an error: request aborted: out of memory" in err
    assert "no edit blocks" not in err


def test_an_unreachable_endpoint_is_a_usage_error_naming_it(repo: Path, capsys) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert _refactor(repo, url, "--json") == 2
    assert f"cannot reach {url}: connection refused (is the server running?)" in capsys.readouterr().err
