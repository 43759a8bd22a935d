"""The real `v4` entry point in a terminal: started under tmux, asked once, quit with ctrl+q."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tui.conftest import TYPED, git

V4 = Path(sys.executable).with_name("v4")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or not V4.exists(),
                                reason="needs tmux and the installed v4 script")


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], check=True, capture_output=True, text=True).stdout


def _wait_for(socket: str, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pane = _tmux(socket, "capture-pane", "-p", "-J", "-t", "v4")  # -J: wrapped lines joined
        if text in pane:
            return pane
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the pane shows:\n{pane}")


def test_v4_runs_under_tmux_and_quits_leaving_pending_changes(repo: Path, tmp_path: Path) -> None:
    script = tmp_path / "replay.json"
    script.write_text(json.dumps([TYPED]))
    socket = f"v4-test-{os.getpid()}"  # a private tmux server: nothing of the user's is touched
    command = f"'{V4}' --replay '{script}'; echo \"v4 exited with $?\"; sleep 60"
    _tmux(socket, "new-session", "-d", "-s", "v4", "-x", "100", "-y", "30", "-c", str(repo), command)
    try:
        _wait_for(socket, "Ready.")
        _tmux(socket, "send-keys", "-t", "v4", "add type hints", "Enter")
        _wait_for(socket, "Applied to calc.py")
        _tmux(socket, "send-keys", "-t", "v4", "C-q")
        pane = _wait_for(socket, "v4 exited with 0")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    assert "stay in the work tree (calc.py)" in pane
    assert git(repo, "status", "--porcelain").strip() == "M calc.py"
