"""`--parallel 2` on the command line (issue 28), on CPU with gloo: `v4 generate` prints what
`--parallel 1` prints, and only once (the worker says nothing); `v4 serve --parallel 2` answers
concurrent requests with the completions of a one-process server, and when its worker is killed it
says which rank died and exits 1 instead of hanging; `v4 prefill --parallel 2` keeps its state for 2
ranks (the next 2-rank run loads it, a 1-rank run recomputes and says why); `v4 refactor` and `v4 watch`
give one process's answers, and the watcher's worker ends when Ctrl+C stops it (the TUI: tests/tui/)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli.test_openai_server import CHAT, KEY, _serve, call
from tests.conftest import tiny_chat_checkpoint
from v4.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
BODIES = [CHAT | {"max_tokens": 8}, CHAT | {"max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("parallel_cli"), seed=4)


def test_generate_on_two_ranks_prints_what_one_prints(checkpoint: Path, capfd: pytest.CaptureFixture) -> None:
    argv = ["generate", "def add(a, b):", "--model", str(checkpoint), "--device", "cpu", "--cpu-threads", "1",
            "--max-new-tokens", "12"]
    assert main([*argv, "--parallel", "1"]) == 0
    one = capfd.readouterr()
    assert main([*argv, "--parallel", "2"]) == 0
    two = capfd.readouterr()  # fd-level: the worker's output would land here too
    assert one.out.strip() and two.out == one.out
    assert two.err == one.err


def test_generate_on_two_ranks_keeps_fp8_weights_and_prints_what_one_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """A quantised checkpoint as a CUDA engine holds it (the default there, forced here): each rank keeps
    its FP8 slices and FP4 experts as stored, and the driver tells the worker so."""
    from tests.conftest import TOKENIZER_JSON
    from tests.model.test_parallel_quantized import ALIGNED
    from v4.model import engine, parallel_driver
    from v4.model.random_checkpoint import init_checkpoint

    quantised = init_checkpoint(tmp_path / "fp8", "tiny", seed=4, tokenizer_json=TOKENIZER_JSON, fp8=True,
                                overrides=ALIGNED)
    asked: list[str] = []

    def as_on_cuda(config: object, device: object) -> bool:
        asked.append(str(device))
        return True

    monkeypatch.setattr(engine, "default_quantized", as_on_cuda)
    monkeypatch.setattr(parallel_driver, "default_quantized", as_on_cuda)
    argv = ["generate", "def add(a, b):", "--model", str(quantised), "--device", "cpu", "--cpu-threads", "1",
            "--max-new-tokens", "8"]
    assert main([*argv, "--parallel", "1"]) == 0
    one = capfd.readouterr()
    assert main([*argv, "--parallel", "2"]) == 0
    two = capfd.readouterr()
    assert asked == ["cpu", "cpu"]  # one process, then the driver deciding for both ranks
    assert one.out.strip() and two.out == one.out and two.err == one.err


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _worker_of(pid: int) -> int:
    """The spawned worker among the server's children (multiprocessing may also run a resource tracker)."""
    for child in _children(pid):
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in command:
            return child
    raise AssertionError(f"no worker among the children of {pid}: {_children(pid)}")


def test_serve_on_two_ranks_answers_as_one_process_and_stops_when_a_worker_dies(checkpoint: Path) -> None:
    for url, _, _ in _serve(checkpoint, max_batch=8):  # the one-process server, in this process
        expected = [json.loads(call(f"{url}/v1/chat/completions", body)[1]) for body in BODIES]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "v4.cli.main", "serve", "--model", str(checkpoint),
                                "--port", str(port), "--api-key", KEY, "--device", "cpu", "--cpu-threads", "1",
                                "--max-model-len", "4096", "--parallel", "2"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline and process.poll() is None:
            try:
                if call(f"{url}/v1/models")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, process.communicate()[1]
        with ThreadPoolExecutor(len(BODIES)) as pool:  # at once: the scheduler's batched decoder, replicated
            answers = list(pool.map(lambda body: json.loads(call(f"{url}/v1/chat/completions", body)[1]), BODIES))
        for answer, alone in zip(answers, expected):
            assert answer["choices"][0]["message"] == alone["choices"][0]["message"]
            assert answer["usage"]["completion_tokens"] == alone["usage"]["completion_tokens"]

        os.kill(_worker_of(process.pid), signal.SIGKILL)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 1, err
    assert err.count("listening on") == 1 and "over 2 ranks" in err
    assert "the worker process of rank 1 of 2 (CPU) was killed by SIGKILL" in err and "stopping" in err
    assert not out


def test_prefill_on_two_ranks_is_kept_for_two_ranks(checkpoint: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from tests.conftest import make_repo

    repo = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    argv = ["prefill", str(repo), "--model", str(checkpoint), "--store-dir", str(tmp_path / "store"), "--json",
            "--device", "cpu", "--cpu-threads", "1"]
    assert main([*argv, "--parallel", "2"]) == 0  # the driver writes the store
    first = json.loads(capfd.readouterr().out)
    assert first["computed_tokens"] == first["tokens"] > 0
    assert main([*argv, "--parallel", "2"]) == 0
    assert json.loads(capfd.readouterr().out)["reused_tokens"] == first["tokens"]
    assert main([*argv, "--parallel", "1"]) == 0
    captured = capfd.readouterr()
    assert json.loads(captured.out)["reused_tokens"] == 0
    assert "prefilled on 2 ranks (--parallel 2); this run has 1" in captured.err


def test_refactor_on_two_ranks_answers_as_one_rank(checkpoint: Path, tmp_path: Path, capsys) -> None:
    """The agent's path (`v4 refactor`, as the TUI and `v4 watch` open it): the same streamed answer,
    token for token, whether the engine runs in one process or over two gloo ranks."""
    import re

    from tests.conftest import make_repo

    outputs = []
    for ranks in (1, 2):
        repo = make_repo(tmp_path / f"repo{ranks}", {"calc.py": "def add(a, b):\n    return a + b\n"})
        code = main(["refactor", "rename add to plus", "--repo", str(repo), "--model", str(checkpoint),
                     "--device", "cpu", "--cpu-threads", "1", "--max-tokens", "8", "--no-tools", "--no-think",
                     "--no-store", "--no-save", "--parallel", str(ranks), "--max-reflections", "0"])
        assert code == 1  # random weights propose no valid edit, on one rank or two
        err = capsys.readouterr().err
        outputs.append(re.sub(r"[\d.]+ s\b|\([\d.,]+ tokens/s\)", "", err))  # timings differ, nothing else
    assert "answer 1: 8 tokens" in outputs[0]
    assert outputs[1] == outputs[0]


def _watch_turn(checkpoint: Path, repo: Path, ranks: int, errors: Path) -> tuple[list[dict], list[int]]:
    """`v4 watch --json` on `repo` over `ranks` processes, one AI? comment answered, stopped with Ctrl+C:
    its JSON lines and the pids of the workers it spawned (asked for while they ran)."""
    from tests.agent.watch.test_loop import ASK, _reader, _until

    with open(errors, "w") as stderr:  # a file, not a pipe nobody reads: it cannot fill up
        process = subprocess.Popen([sys.executable, "-m", "v4.cli.main", "watch", "--repo", str(repo), "--model",
                                    str(checkpoint), "--device", "cpu", "--cpu-threads", "1", "--no-store",
                                    "--no-think", "--no-tools", "--max-tokens", "8", "--json", "--debounce", "0.2",
                                    "--parallel", str(ranks)],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env=os.environ | {"OMP_NUM_THREADS": "1"})
        try:
            lines, seen = _reader(process), []
            _until(lines, "ready", seen, 120)
            workers = [_worker_of(process.pid)] if ranks > 1 else []
            (repo / "calc.py").write_text(f"def add(a, b):\n    return a + b  # what does add return {ASK}\n")
            _until(lines, "agent", seen, 120)
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0, errors.read_text()
            _until(lines, "stopped", seen, 5)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return seen, workers


def test_watch_on_two_ranks_answers_an_ai_comment_as_one_rank(checkpoint: Path, tmp_path: Path) -> None:
    """`v4 watch --parallel 2` (the TUI's watch mode runs the same loop): an AI? comment gets the
    answer one process gives, the worker prints nothing, and Ctrl+C ends the worker too."""
    from tests.conftest import make_repo

    runs = {}
    for ranks in (1, 2):
        repo = make_repo(tmp_path / str(ranks) / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
        runs[ranks] = _watch_turn(checkpoint, repo, ranks, tmp_path / f"stderr{ranks}.txt")
    (one, _), (two, workers) = runs[1], runs[2]
    [answered] = [e for e in one if e["event"] == "agent"]
    assert answered["outcome"] == "answered" and answered["answer"].strip()
    agent_events = [[{k: v for k, v in e.items() if k != "seconds"} for e in run if e["event"].startswith("agent")]
                    for run in (one, two)]
    assert agent_events[1] == agent_events[0]  # the same question, answered token for token
    for run in (one, two):  # every line on stdout is the driver's JSON (a worker's print would break one)
        assert [e["event"] for e in run].count("ready") == 1 and run[-1] == {"event": "stopped"}
    assert (tmp_path / "stderr2.txt").read_text() == (tmp_path / "stderr1.txt").read_text()  # and on stderr
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)
