"""Issue 22: `v4 refactor --endpoint` against a stub OpenAI-compatible server. Without --include-secrets
no file that looks like credentials is sent; with it, a warning naming them goes to stderr before the
first request."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import git
from v4.agent.bootstrap import secrets_warning
from v4.cli.main import main
from v4.repo_index.files import Skipped

AWS_KEY = "AKIA" + "J7Q2M4XK9WZT5R8B"  # assembled, so this file holds no key
RENAME = ("I will change calc.py.\n\ncalc.py\n```python\n<<<<<<< SEARCH\ndef sub(a, b):\n    return a - b\n"
          "=======\ndef subtract(a, b):\n    return a - b\n>>>>>>> REPLACE\n```\n")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Dev")
    git(root, "config", "user.email", "dev@example.com")
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n")
    (root / "config.py").write_text(f'REGION = "eu-west-1"\n\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n')
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "start")
    return root


class Events:
    """One ordered record of what the stub server received and what was written to stderr."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, text: str) -> None:
        with self.lock:
            self.items.append((kind, text))

    def of(self, kind: str) -> list[str]:
        return [text for k, text in self.items if k == kind]


class StderrRecorder:
    def __init__(self, events: Events) -> None:
        self.events = events

    def write(self, text: str) -> int:
        self.events.add("stderr", text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.fixture()
def stub():
    events = Events()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            events.add("request", body)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"choices": [{"delta": {"content": RENAME}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", events
    server.shutdown()
    server.server_close()


def _refactor(repo: Path, endpoint: str, *extra: str) -> int:
    return main(["refactor", "rename sub to subtract", "--repo", str(repo), "--endpoint", endpoint,
                 "--endpoint-model", "stub", "--yes", "--json", *extra])


def test_without_include_secrets_nothing_matched_is_sent_and_no_warning(repo: Path, stub, monkeypatch) -> None:
    endpoint, events = stub
    monkeypatch.setattr(sys, "stderr", StderrRecorder(events))  # here: pytest's capture resets it after set-up
    assert _refactor(repo, endpoint) == 0
    requests = events.of("request")
    assert requests and all(AWS_KEY not in body for body in requests)
    assert all("config.py" not in body for body in requests)
    assert not any("credentials" in text for text in events.of("stderr"))


def test_include_secrets_warns_on_stderr_before_the_first_request(repo: Path, stub, monkeypatch) -> None:
    endpoint, events = stub
    monkeypatch.setattr(sys, "stderr", StderrRecorder(events))
    assert _refactor(repo, endpoint, "--include-secrets") == 0
    kinds = [kind for kind, text in events.items if kind == "request" or "look like credentials" in text]
    assert kinds[0] == "stderr" and "request" in kinds
    warning = next(text for text in events.of("stderr") if "look like credentials" in text)
    assert f"sent to {endpoint}" in warning and "config.py (AWS access key on line 3)" in warning
    assert AWS_KEY not in warning
    assert AWS_KEY in events.of("request")[0]  # opted in: it is sent, and the user was told


def test_no_warning_for_a_local_backend_or_no_matches() -> None:
    found = [Skipped("config.py", "AWS access key on line 3")]
    assert secrets_warning(None, found) is None
    assert secrets_warning("http://remote", []) is None
    many = [Skipped(f"f{i}.py", "literal token on line 1") for i in range(12)]
    assert secrets_warning("http://remote", many).endswith("; and 2 more")
