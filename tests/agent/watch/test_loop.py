"""Watch mode end to end on real temporary git repositories with real file-system events: AI comments
producing edits (and answers) through the replay backend, changes arriving during a run, and the
`v4 watch` command as a subprocess stopped with Ctrl+C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from v4.agent.context import RepositoryContext
from v4.agent.backends import ReplayBackend
from v4.agent.session import Session, SessionOptions
from v4.agent.warm import ContextWarmer
from v4.agent.watch.watcher import ChangeBatch, WatchConfig, Watcher
from v4.agent.watch.loop import AgentFinished, AgentStarted, Changed, WatchLoop
from v4.agent.workspace import Workspace
from tests.conftest import git, make_repo

ROOT = Path(__file__).resolve().parents[2]
BANG, ASK = "AI" + "!", "AI" + "?"  # spelled apart: this file is no request to a watcher
CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
ASKED = f"def add(a, b):\n    # add type hints {BANG}\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TYPED = ("I will add the hints and remove the comment.\n\ncalc.py\n```python\n<<<<<<< SEARCH\n"
         f"def add(a, b):\n    # add type hints {BANG}\n    return a + b\n=======\n"
         "def add(a: int, b: int) -> int:\n    return a + b\n>>>>>>> REPLACE\n```\n")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"calc.py": CALC, "notes.md": "# Notes\n"})


class Harness:
    """A WatchLoop over `repo` with a replay backend, its watcher, and the events it emitted."""

    def __init__(self, repo: Path, backend: ReplayBackend) -> None:
        self.events: list[object] = []
        self.backend = backend
        self.context = RepositoryContext(repo, None)
        self.context.scan()
        self.context.plan(100_000)
        self.session = Session(repo, backend, self.context.repository_text(), SessionOptions(require_edits=True))
        self.warmer = ContextWarmer(self.session, backend)
        self.loop = WatchLoop(context=self.context, session=self.session, warmer=self.warmer, budget=100_000,
                              emit=self.events.append)
        self.warmer.on_report = self.loop.on_warmed
        self.watcher = Watcher(repo, WatchConfig(quiet_s=0.2, max_delay_s=5.0))

    def batch(self, timeout: float = 10.0) -> ChangeBatch:
        batch = self.watcher.next_batch(timeout)
        assert batch is not None, "no change reported"
        return batch


@pytest.fixture()
def harness(repo: Path) -> Iterator[Harness]:
    made = Harness(repo, ReplayBackend([TYPED, "It returns the sum of a and b."]))
    made.watcher.start()
    yield made
    made.watcher.stop()
    made.warmer.close()


def test_an_ai_change_comment_is_applied_for_review_and_its_marker_removed(repo: Path, harness: Harness) -> None:
    (repo / "calc.py").write_text(ASKED)
    request = harness.loop.apply(harness.batch())
    assert request is not None and request.kind == BANG and request.files == ("calc.py",)
    finished = harness.loop.run_request(request)
    assert finished.outcome == "applied" and finished.files == ("calc.py",)
    text = (repo / "calc.py").read_text()
    assert "def add(a: int, b: int) -> int:" in text and BANG not in text  # the edit, and no marker left
    assert git(repo, "status", "--porcelain").strip() == "M calc.py"  # in the work tree, not committed
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"
    asked = harness.backend.calls[0][-1].content
    assert f"█    # add type hints {BANG}" in asked and "│def add(a, b):" in asked and "remove every one" in asked
    assert "==> calc.py <==" in harness.backend.calls[0][0].content  # the repository, as it is now
    assert harness.loop.apply(harness.batch()) is None  # the agent's own write asks for nothing
    kinds = [type(e) for e in harness.events]
    assert kinds == [Changed, AgentStarted, AgentFinished, Changed]


def test_a_users_edits_around_the_comment_stay_theirs(repo: Path, harness: Harness) -> None:
    (repo / "calc.py").write_text(ASKED + "\n\ndef mul(a, b):\n    return a * b\n")  # uncommitted work
    harness.loop.run_request(harness.loop.apply(harness.batch()))
    assert "def mul(a, b):" in (repo / "calc.py").read_text()
    workspace = Workspace(repo)
    [diff] = workspace.pending()  # review shows v4's change against the user's text, not HEAD
    assert all("mul" not in line for hunk in diff.hunks for line in hunk.lines)
    workspace.review({hunk.id: False for hunk in diff.hunks})  # rejecting it gives the user's text back
    assert (repo / "calc.py").read_text() == ASKED + "\n\ndef mul(a, b):\n    return a * b\n"


def test_an_ai_question_is_answered_without_edits(repo: Path) -> None:
    harness = Harness(repo, ReplayBackend(["It returns the sum of a and b."]))
    harness.watcher.start()
    try:
        (repo / "calc.py").write_text(CALC.replace("return a + b", f"return a + b  # what does add return {ASK}"))
        before = (repo / "calc.py").read_text()
        finished = harness.loop.run_request(harness.loop.apply(harness.batch()))
        assert finished.outcome == "answered" and finished.answer == "It returns the sum of a and b."
        assert finished.files == () and (repo / "calc.py").read_text() == before
        assert "Do not change any file" in harness.backend.calls[0][-1].content
    finally:
        harness.watcher.stop()
        harness.warmer.close()


class GatedReplay(ReplayBackend):
    """A replay backend that holds its answer until `gate` opens: a run that takes a while."""

    def __init__(self, responses: list[str]) -> None:
        super().__init__(responses)
        self.gate = threading.Event()
        self.asked = threading.Event()

    def events(self, messages, max_tokens, temperature=0.0, **options):  # noqa: ANN001, ANN201 - the Backend protocol
        self.asked.set()
        assert self.gate.wait(30), "the test never opened the gate"
        yield from super().events(messages, max_tokens, temperature, **options)


def test_changes_during_a_run_are_queued_and_applied_after_it(repo: Path) -> None:
    harness = Harness(repo, GatedReplay([TYPED]))
    harness.watcher.start()
    try:
        (repo / "calc.py").write_text(ASKED)
        request = harness.loop.apply(harness.batch())
        run = threading.Thread(target=harness.loop.run_request, args=(request,))
        run.start()
        assert harness.backend.asked.wait(10)
        (repo / "notes.md").write_text("# Notes\n\nWritten while the agent ran.\n")
        (repo / "todo.py").write_text("TODO = []\n")
        time.sleep(0.8)  # the burst is closed and waits in the queue
        harness.backend.gate.set()
        run.join(30)
        assert isinstance(harness.events[-1], AgentFinished) and harness.events[-1].outcome == "applied"
        batch = harness.batch()
        while {"notes.md", "todo.py", "calc.py"} - set(batch.paths):  # the agent's write may come apart
            batch = batch.merged(harness.batch())
        assert harness.loop.apply(batch) is None
        assert harness.warmer.idle(10)
        assert "Written while the agent ran" in harness.session.system.content
        assert "==> todo.py <==" in harness.session.system.content
    finally:
        harness.watcher.stop()
        harness.warmer.close()


def _reader(process: subprocess.Popen) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _until(lines: queue.Queue, event: str, seen: list[dict], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            break
        seen.append(item)
        if item["event"] == event:
            return item
    raise AssertionError(f"no {event!r} event; saw {seen}")


def test_v4_watch_prints_one_json_object_per_event_and_stops_on_ctrl_c(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps([TYPED]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    errors = open(tmp_path / "stderr.txt", "w")  # a file, not a pipe nobody reads: it cannot fill up
    process = subprocess.Popen([sys.executable, "-m", "v4.cli.main", "watch", "--repo", str(repo), "--replay",
                                str(script), "--json", "--debounce", "0.2"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        lines, seen = _reader(process), []
        ready = _until(lines, "ready", seen)
        assert ready["files"] == 2 and ready["watched_dirs"] >= 1
        (repo / "calc.py").write_text(ASKED)
        change = _until(lines, "change", seen)
        assert change["paths"] == ["calc.py"] and change["index_s"] >= 0 and change["since_save_s"] >= 0
        started = _until(lines, "agent_start", seen)
        assert started["kind"] == BANG and started["files"] == ["calc.py"]
        finished = _until(lines, "agent", seen)
        assert finished["outcome"] == "applied" and finished["files"] == ["calc.py"]
        assert _until(lines, "change", seen)["paths"] == ["calc.py"]  # the agent's edit, indexed
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(60) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError("v4 watch did not stop; its stderr:\n" + (tmp_path / "stderr.txt").read_text())
        assert _until(lines, "stopped", seen, 5) == {"event": "stopped"}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        errors.close()
    assert BANG not in (repo / "calc.py").read_text()
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"  # never committed
