"""The TUI on `--parallel 2` (issue 28), on CPU with gloo: a pilot's question gets the answer one process
streams, and the real `v4 --parallel 2` under tmux starts, answers, quits with ctrl+q and leaves no worker
behind. (Textual's stderr has no file descriptor, which the first spawn's resource tracker wants:
V4App.on_load starts the tracker before Textual takes stderr.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_repo, tiny_chat_checkpoint
from tests.tui.conftest import ask, chat_text, ready
from tests.tui.test_entry_point import V4, _tmux, _wait_for
from v4.agent.options import AgentOptions, BackendOptions, ConversationOptions, EngineOptions
from v4.agent.workspace import Workspace
from v4.tui.app import V4App

CALC = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("parallel_tui"), seed=4)


@pytest.mark.anyio
async def test_a_question_on_two_ranks_streams_what_one_rank_streams(checkpoint: Path, tmp_path: Path) -> None:
    shown, tokens = [], []
    for ranks in (1, 2):
        repo = make_repo(tmp_path / str(ranks) / "repo", {"calc.py": CALC})  # one name: the same prompt
        options = BackendOptions(model=checkpoint, use_store=False,
                                 engine=EngineOptions(device="cpu", cpu_threads=1, parallel=ranks))
        app = V4App(repo, options, Workspace(repo), agent=AgentOptions(thinking=False, tools=False),
                    conversation=ConversationOptions(save=False))
        async with app.run_test(size=(120, 40)) as pilot:
            await ready(pilot)
            backend = app.main.services.chat.backend.inner
            assert getattr(backend.engine, "ranks", 1) == ranks
            await ask(pilot, "what does add return?")
            shown.append(chat_text(app))
            tokens.append(backend.last_usage.completion_tokens)
        backend.engine.close()  # the worker of 2 ranks would otherwise wait for the test process to exit
    assert "what does add return?" in shown[0] and tokens[0] > 0
    assert shown[1] == shown[0] and tokens[1] == tokens[0]


def _descendants(pid: int) -> list[tuple[int, bytes]]:
    """(pid, command line) of every process below `pid` (a child is listed under the thread that
    started it: the app starts the engine, and so its worker, from a thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                found.append((child, Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")))
            except OSError:
                continue
            found.extend(_descendants(child))
    return found


def _alive(pid: int) -> bool:
    """Running, or stopped: neither gone nor a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("tmux") is None or not V4.exists(), reason="needs tmux and the installed v4 script")
def test_v4_on_two_ranks_answers_and_quits_leaving_no_worker(checkpoint: Path, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"calc.py": CALC})
    socket = f"v4-test-{os.getpid()}"  # a private tmux server: nothing of the user's is touched
    command = (f"OMP_NUM_THREADS=1 '{V4}' --model '{checkpoint}' --device cpu --cpu-threads 1 --parallel 2 "
               "--no-store --no-think --no-tools; echo \"v4 exited with $?\"; sleep 60")
    _tmux(socket, "new-session", "-d", "-s", "v4", "-x", "120", "-y", "30", "-c", str(repo), command)
    try:
        _wait_for(socket, "Ready.", 90)
        shell = int(_tmux(socket, "display-message", "-p", "-t", "v4", "#{pane_pid}"))
        workers = [pid for pid, line in _descendants(shell) if b"spawn_main" in line]
        assert len(workers) == 1, _descendants(shell)
        _tmux(socket, "send-keys", "-t", "v4", "what does add return?", "Enter")
        _wait_for(socket, "No changes proposed", 90)
        _tmux(socket, "send-keys", "-t", "v4", "C-q")
        pane = _wait_for(socket, "v4 exited with 0", 60)
        assert not _alive(workers[0])  # ended by v4 on its way out, not by the tmux server's end below
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    assert "could not start" not in pane and "Traceback" not in pane
