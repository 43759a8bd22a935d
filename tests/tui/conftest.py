"""TUI fixtures: a temporary git repository, replay scripts, and an app over them driven by a pilot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from v4.agent.options import AgentOptions, BackendOptions
from v4.agent.workspace import Workspace
from v4.tui.app import V4App

FILLER = "".join(f"# line {n}\n" for n in range(12))  # keeps add() and sub() in separate hunks
CALC = f"def add(a, b):\n    return a + b\n\n{FILLER}\ndef sub(a, b):\n    return a - b\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def edit(path: str, search: str, replace: str) -> str:
    """One SEARCH/REPLACE block as a model writes it."""
    return f"{path}\n```python\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


TYPED = ("I will add type hints to both functions.\n\n"
         + edit("calc.py", "def add(a, b):\n", "def add(a: int, b: int) -> int:\n") + "\n"
         + edit("calc.py", "def sub(a, b):\n", "def sub(a: int, b: int) -> int:\n") + "\nDone.")
MISSING = "Here it is.\n\n" + edit("calc.py", "def mul(a, b):\n", "def mul(a: int, b: int) -> int:\n")


@pytest.fixture()
def anyio_backend() -> str:
    """Pilot tests are async: anyio's pytest plugin (anyio comes with fastapi) runs them on asyncio."""
    return "asyncio"


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Dev")
    git(root, "config", "user.email", "dev@example.com")
    (root / "calc.py").write_text(CALC)
    (root / "notes.md").write_text("# Notes\n\nNothing yet.\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "start")
    return root


MakeApp = Callable[..., V4App]


@pytest.fixture()
def make_app(repo: Path, tmp_path: Path) -> MakeApp:
    """`make_app("answer 1", {"reasoning": ..., "content": ...})`: the app on `repo`, replaying those
    answers in order; `agent=AgentOptions(...)` for thinking and tools, other keywords are BackendOptions."""

    def make(*responses: str | dict[str, object], agent: AgentOptions | None = None, **options: object) -> V4App:
        script = tmp_path / "replay.json"
        script.write_text(json.dumps(list(responses)))
        return V4App(repo, BackendOptions(replay=script, **options), Workspace(repo), agent=agent)

    return make


async def until(pilot: Pilot, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Let the app run until `condition` holds (workers are threads: poll, never sleep blindly)."""
    steps = int(timeout_s / 0.05)
    for _ in range(steps):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {condition}")


async def ready(pilot: Pilot) -> None:
    main = pilot.app.main
    await until(pilot, lambda: main.ready or main.startup_error is not None)
    assert main.startup_error is None


async def submit(pilot: Pilot, text: str, typed: bool = False) -> None:
    """Send `text` from the prompt: typed key by key, or (faster) pasted in and sent with enter."""
    prompt = pilot.app.main.query_one("#prompt")
    prompt.focus()
    if typed:
        await pilot.press(*text)
    else:
        prompt.value = text
    await pilot.press("enter")


async def ask(pilot: Pilot, text: str, typed: bool = False) -> None:
    """Send `text` and wait for the turn to end."""
    main = pilot.app.main
    await submit(pilot, text, typed)
    await until(pilot, lambda: not main.busy)
    await pilot.pause()


def chat_text(app: V4App) -> str:
    """What the chat shows, as text: notes, answers' prose, edit blocks' paths and diff lines."""
    from textual.widgets import Markdown

    from v4.tui.widgets.diff_text import DiffText
    from v4.tui.widgets.edit_block import EditBlockView
    from v4.tui.widgets.note import Note
    from v4.tui.widgets.thinking_view import ThinkingView

    parts = []
    for widget in app.main.query("#chat *"):
        if isinstance(widget, ThinkingView):
            parts.append(f"[{widget.label()}]")
        elif isinstance(widget, Note):
            parts.append(widget.text)
        elif isinstance(widget, Markdown):
            parts.append(widget.source)
        elif isinstance(widget, EditBlockView):
            parts.append(f"[edit {widget.part.path}]")
        elif isinstance(widget, DiffText):
            parts.append("\n".join(widget.lines))
    return "\n".join(parts)
