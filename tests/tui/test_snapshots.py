"""Snapshots of the main screens at 80x24 and 120x40 (pytest-textual-snapshot).

Values that change from run to run (the replay's timings) are pinned before the picture is taken,
and the prompt's cursor does not blink. So is what the host decides: the pictures show a machine whose
command sandbox starts (without bubblewrap the start-up log adds its warning; tests/agent test that).
Update with `--snapshot-update` only after looking at the report of what changed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.tui.conftest import TYPED, MakeApp, ask, ready, submit, until
from v4.agent.options import AgentOptions
from v4.agent.sandbox import BwrapSandbox
from v4.tui.screens.approval import ApprovalScreen
from v4.tui.screens.review import ReviewScreen
from v4.tui.widgets.thinking_view import ThinkingView

SIZES = [(80, 24), (120, 40)]
SnapCompare = Callable[..., bool]


@pytest.fixture(autouse=True)
def _sandbox_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pictures on a host with or without bubblewrap."""
    monkeypatch.setattr(BwrapSandbox, "_probe", lambda self: None)


def _steady(pilot: Pilot) -> None:
    main = pilot.app.main
    main.query_one("#prompt", Input).cursor_blink = False
    main.ttft_s, main.tokens_per_s = 0.25, 42.0
    for view in main.query(ThinkingView):
        view.seconds = 2.0  # how long it thought varies from run to run
        view.title = view.label()


async def _started(pilot: Pilot) -> None:
    await ready(pilot)
    _steady(pilot)


async def _answered(pilot: Pilot) -> None:
    await ready(pilot)
    await ask(pilot, "add type hints")
    _steady(pilot)


async def _reviewing(pilot: Pilot) -> None:
    await _answered(pilot)
    await pilot.press("ctrl+r")
    await until(pilot, lambda: isinstance(pilot.app.screen, ReviewScreen) and pilot.app.screen.num_hunks == 2)
    await pilot.press("a", "down", "x")


async def _asked(pilot: Pilot) -> None:
    await ready(pilot)
    await submit(pilot, "what changed?")
    await until(pilot, lambda: isinstance(pilot.app.screen, ApprovalScreen))
    _steady(pilot)


async def _thought(pilot: Pilot) -> None:
    await _asked(pilot)
    await pilot.press("1")
    await until(pilot, lambda: not pilot.app.main.busy)
    _steady(pilot)
    pilot.app.main.query(ThinkingView).first().collapsed = False


THINKING_TURN = ({"reasoning": "The user asks what changed. Let me look at the work tree first.",
                  "tool_calls": [{"name": "run_command", "arguments": {"command": "git status --short"}}]},
                 {"reasoning": "Nothing is modified.", "content": "Nothing changed: the work tree is clean."})


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_ready(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_started)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_with_an_applied_edit(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(TYPED), terminal_size=size, run_before=_answered)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_review_screen(snap_compare: SnapCompare, make_app: MakeApp, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(TYPED), terminal_size=size, run_before=_reviewing)


def test_help_screen(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=_started, press=["f1"])


def test_approval_prompt(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    app = make_app(*THINKING_TURN, agent=AgentOptions(sandbox=False))  # nothing runs before the snapshot
    assert snap_compare(app, terminal_size=(80, 24), run_before=_asked)


def test_thinking_and_a_tool_line(snap_compare: SnapCompare, make_app: MakeApp) -> None:
    app = make_app(*THINKING_TURN, agent=AgentOptions(sandbox=False))  # `git status` reads; no sandbox line
    assert snap_compare(app, terminal_size=(80, 24), run_before=_thought)
