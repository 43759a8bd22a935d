"""Issue 24: `v4 serve` says what it does and serves only its names. A child process (the model from
$V4_MODEL, port 0) prints "listening on URL (model NAME, context N tokens; ...)" once it accepts
connections, one access-log line per request with its tokens, and a line when it stops; a model name
it does not serve is a 404 `model_not_found`; and the one context length (`v4 model info`) is the
number it, `describe_backend` and `v4 refactor --json` report."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_openai_server import call
from tests.conftest import make_repo, tiny_chat_checkpoint
from v4.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 4, "temperature": 0}
ACCESS = re.compile(r'^127\.0\.0\.1:\d+ - "(\w+) (\S+) HTTP/1\.1" (\d+) ([A-Za-z ]+?)'
                    r"(?:, (\d+) prompt \+ (\d+) completion tokens)?, \d+ ms$")


class Served:
    """A `v4 serve` child: its URL, and its stderr lines as they come."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.listening = self.wait_for("v4 serve: listening on ")
        self.url = re.search(r"listening on (\S+)", self.listening).group(1)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, "\n".join(self.seen)
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} in:\n" + "\n".join(self.seen))

    def rest(self) -> list[str]:
        """Every line not read yet, once the process has closed its stderr."""
        self.reader.join(10)
        return [self.lines.get() for _ in range(self.lines.qsize())]

    def access(self) -> tuple[str, ...]:
        """The next access-log line, parsed: (method, path, status, phrase, prompt, completion)."""
        line = self.wait_for("127.0.0.1:")
        match = ACCESS.match(line)
        assert match, line
        return match.groups()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("serve_log"), seed=2)


def _spawn(checkpoint: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "v4.cli.main", "serve", "--port", "0", "--device", "cpu", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"V4_MODEL": str(checkpoint), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def served(checkpoint: Path) -> Iterator[Served]:
    process = _spawn(checkpoint, "--served-model-name", "tiny", "tiny-alias")  # --model from $V4_MODEL
    try:
        yield Served(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_it_says_where_it_listens_with_the_model_and_its_context(served: Served) -> None:
    assert re.fullmatch(r"v4 serve: listening on http://127\.0\.0\.1:\d+ \(model tiny; also as tiny-alias, "
                        r"context 65,536 tokens; this server uses 32,768\)", served.listening), served.listening


def test_models_lists_every_served_name_first_first_with_max_model_len(served: Served) -> None:
    status, body = call(f"{served.url}/v1/models", key=None)
    cards = json.loads(body)["data"]
    assert status == 200 and [c["id"] for c in cards] == ["tiny", "tiny-alias"]
    assert {c["max_model_len"] for c in cards} == {32_768}
    assert served.access() == ("GET", "/v1/models", "200", "OK", None, None)


def test_each_request_is_one_line_with_its_tokens(served: Served) -> None:
    status, body = call(f"{served.url}/v1/chat/completions", CHAT | {"model": "tiny-alias"}, key=None)
    answer = json.loads(body)
    assert status == 200 and answer["model"] == "tiny-alias"
    usage = answer["usage"]
    assert served.access() == ("POST", "/v1/chat/completions", "200", "OK", str(usage["prompt_tokens"]),
                               str(usage["completion_tokens"]))
    status, raw = call(f"{served.url}/v1/completions", {"prompt": "import os", "max_tokens": 3, "stream": True,
                                                        "stream_options": {"include_usage": True}}, key=None)
    usage = json.loads(raw.decode().split("data: ")[-2])["usage"]  # no model named: still served
    assert served.access() == ("POST", "/v1/completions", "200", "OK", str(usage["prompt_tokens"]),
                               str(usage["completion_tokens"]))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_model_it_does_not_serve_is_a_404_model_not_found(served: Served, path: str) -> None:
    body = CHAT | {"model": "gpt-4", "prompt": "x"}
    status, answer = call(f"{served.url}{path}", body, key=None)
    error = json.loads(answer)["error"]
    assert status == 404 and (error["code"], error["param"]) == ("model_not_found", "model")
    assert error["message"] == "The model `gpt-4` does not exist: this server serves tiny, tiny-alias"
    assert served.access() == ("POST", path, "404", "Not Found", None, None)


def test_the_context_is_one_number_everywhere(served: Served, checkpoint: Path, tmp_path: Path, capsys) -> None:
    from v4.agent.bootstrap import describe_backend, open_backend
    from v4.agent.options import BackendOptions, EngineOptions

    assert main(["model", "info", str(checkpoint)]) == 0
    assert "context            65,536 tokens" in capsys.readouterr().out
    options = BackendOptions(model=checkpoint, engine=EngineOptions(device="cpu"), use_store=False)
    info = describe_backend(open_backend(options), options)
    assert info.context_text() == "context 65,536 tokens; this session uses 24,576"  # the CPU budget's state
    remote = BackendOptions(endpoint=served.url)
    info = describe_backend(open_backend(remote), remote)
    assert (info.context_length, info.model, info.context_note) == (32_768, "tiny", None)  # what the server holds
    served.access()
    repo = tmp_path / "repo"
    make_repo(repo, {"calc.py": "def add(a, b):\n    return a + b\n"})
    assert main(["refactor", "say hi", "--repo", str(repo), "--model", str(checkpoint), "--device", "cpu",
                 "--no-store", "--max-tokens", "2", "--max-reflections", "0", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert (document["context_length"], document["session_length"]) == (65_536, 24_576)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_stopping_prints_a_last_line_and_no_traceback(checkpoint: Path, sig: signal.Signals) -> None:
    process = _spawn(checkpoint)
    try:
        served = Served(process)
        call(f"{served.url}/v1/models", key=None)
        served.access()
        process.send_signal(sig)
        assert served.wait_for("v4 serve: stopped") == "v4 serve: stopped after 1 request"
        code = process.wait(10)
        rest = served.rest()
        assert not any("Traceback" in line for line in rest), rest
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(("extra", "env", "message"), [
    (["--max-model-len", "100000"], {}, "v4 serve: --max-model-len 100,000 is over the model's context, 65,536 tokens"),
    ([], {"V4_MODEL": ""}, "v4 serve: needs --model DIR (or $V4_MODEL)"),
])
def test_bad_options_exit_2_naming_them(checkpoint: Path, extra: list[str], env: dict, message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "v4.cli.main", "serve", "--device", "cpu", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=os.environ | {"V4_MODEL": str(checkpoint)} | env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
