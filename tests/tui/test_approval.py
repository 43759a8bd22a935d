"""The model's commands in the TUI: each put to the user (run once / always for its prefix / deny) from
the turn's worker thread, a line in the chat per call, and a worker that never hangs on a question."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from textual.widgets import Button

from tests.tui.conftest import MakeApp, chat_text, ready, submit, until
from v4.agent.approval import Answer
from v4.agent.options import AgentOptions
from v4.agent.sandbox import BwrapSandbox, SandboxConfig, SandboxUnavailable
from v4.agent.turn import ToolRan
from v4.tui import messages as m
from v4.tui.controllers.approval import ApprovalController, always_label, approval_question
from v4.tui.controllers.chat import tool_line
from v4.tui.screens.approval import ApprovalScreen

pytestmark = pytest.mark.anyio


def run(command: str) -> dict[str, object]:
    """A replayed answer that calls run_command."""
    return {"reasoning": "I will check.", "content": "", "tool_calls": [{"name": "run_command",
                                                                        "arguments": {"command": command}}]}


def agent(repo: Path) -> AgentOptions:
    """The sandbox where bubblewrap starts here; else the user's explicit --no-sandbox."""
    try:
        BwrapSandbox(repo, SandboxConfig()).probe()
    except SandboxUnavailable:
        return AgentOptions(sandbox=False)
    return AgentOptions()


async def asked(pilot, command: str) -> ApprovalScreen:  # noqa: ANN001
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, ApprovalScreen))
    await pilot.pause()
    assert command in str(app.screen.query_one("#choice-details").render())
    return app.screen


@pytest.mark.parametrize("keys", [["enter"], ["escape"], ["3"]], ids=["enter", "escape", "3"])
async def test_a_denied_command_does_not_run_and_the_model_is_told(make_app: MakeApp, repo: Path,
                                                                   keys: list[str]) -> None:
    app = make_app(run("touch created.txt"), "Fine, I will not.", agent=agent(repo))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "make a file")
        screen = await asked(pilot, "touch created.txt")
        assert screen.focused.id == "choice-deny"  # enter denies
        await pilot.press(*keys)
        await until(pilot, lambda: not app.main.busy)
        assert not (repo / "created.txt").exists()
        replay = app.main.services.chat.backend.inner
        sent = replay.calls[1][-1]
        assert sent.role == "tool" and sent.content.startswith("not allowed: the user denied it")
        shown = chat_text(app)
        assert "$ touch created.txt  ✗ not run: the user denied it" in shown
        assert "Fine, I will not." in shown and "edits did not apply" not in shown


async def test_run_once_runs_it_and_asks_again_next_time(make_app: MakeApp, repo: Path) -> None:
    app = make_app(run("touch created.txt"), run("touch again.txt"), "Done.", agent=agent(repo))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "make a file")
        await asked(pilot, "touch created.txt")
        await pilot.press("1")
        await asked(pilot, "touch again.txt")  # once is once: the same prefix is asked again
        await pilot.click("#choice-once")
        await until(pilot, lambda: not app.main.busy)
        assert (repo / "created.txt").exists() and (repo / "again.txt").exists()
        shown = chat_text(app)
        assert "$ touch created.txt  ✓ exit 0" in shown and "$ touch again.txt  ✓ exit 0" in shown
        assert "Done." in shown and "(no answer)" not in shown  # answers that only called tools leave no trace


async def test_always_remembers_the_prefix_for_the_session(make_app: MakeApp, repo: Path) -> None:
    app = make_app(run("touch one.txt"), run("touch two.txt"), "Done.", run("touch three.txt"), "Done again.",
                   agent=agent(repo))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "make files")
        screen = await asked(pilot, "touch one.txt")
        assert str(screen.query_one("#choice-always", Button).label) == "Always for `touch` this session (2)"
        await pilot.press("2")
        await until(pilot, lambda: not app.main.busy)  # the second call was not asked: nobody answers it
        await submit(pilot, "one more")
        await until(pilot, lambda: not app.main.busy)
        assert all((repo / name).exists() for name in ("one.txt", "two.txt", "three.txt"))
        assert app.main.services.session.tools.policy.remembered.prefixes == [("touch",)]


async def test_quitting_while_asked_denies_and_the_worker_ends(make_app: MakeApp, repo: Path) -> None:
    app = make_app(run("touch created.txt"), "Not run.", agent=agent(repo))
    async with app.run_test(size=(100, 40)) as pilot:
        await ready(pilot)
        await submit(pilot, "make a file")
        await asked(pilot, "touch created.txt")
        session = app.main.services.session
        await pilot.press("ctrl+q")
    for _ in range(200):  # the turn's worker was answered Deny: its turn ends and joins the history
        if session.history:
            break
        threading.Event().wait(0.05)
    assert [message.role for message in session.history] == ["user", "assistant", "tool"]
    assert session.history[-1].content.startswith("not allowed: the user denied it")
    assert not (repo / "created.txt").exists()


def test_approval_controller_blocks_until_answered_and_never_hangs() -> None:
    posted: list[m.ApprovalRequested] = []
    approvals = ApprovalController(post_message=posted.append)
    answers: list[Answer] = []
    worker = threading.Thread(target=lambda: answers.append(approvals.ask("pytest -q", ("pytest",))))
    worker.start()
    for _ in range(200):
        if posted:
            break
        threading.Event().wait(0.01)
    request = posted[0]
    assert (request.command, request.prefix) == ("pytest -q", ("pytest",)) and worker.is_alive()
    request.resolve("always")
    request.resolve(None)  # a late deny: the first answer stands
    worker.join(5)
    assert answers == [Answer.ALWAYS]

    worker = threading.Thread(target=lambda: answers.append(approvals.ask("ls", ("ls",))))
    worker.start()
    while len(posted) < 2:
        threading.Event().wait(0.01)
    approvals.stop()  # the user stopped the answer: this question and the next are denied
    worker.join(5)
    assert answers[1:] == [Answer.DENY] and approvals.ask("ls", ("ls",)) is Answer.DENY and len(posted) == 2
    approvals.begin_turn()
    approvals.close()  # the app closes: nothing is asked any more
    assert approvals.ask("ls", ("ls",)) is Answer.DENY and len(posted) == 2
    assert ApprovalController(post_message=lambda _message: False).ask("ls", ("ls",)) is Answer.DENY


def test_the_question_says_what_always_allows() -> None:
    question, details = approval_question("git status --short", ("git", "status"))
    assert details.startswith("$ git status --short") and "starts with `git status`" in details
    assert "run it once or deny it" in approval_question("ls; rm x", ())[1]
    assert always_label(("x" * 50,)).endswith("…` this session") and len(always_label(("x" * 50,))) < 70


@pytest.mark.parametrize(("event", "line"), [
    (ToolRan("run_command", {"command": "pytest -q"}, True, 1, "pytest -q: exit 1"),
     ("$ pytest -q  ✗ exit 1", "tool")),
    (ToolRan("read_file", {"path": "calc.py"}, True, None, "calc.py"), ("read calc.py  ✓", "tool")),
    (ToolRan("run_command", {"command": "rm -rf x"}, False, None,
             "rm -rf x: refused (not allowed: the user denied it. The command was not run.)",
             "not allowed: the user denied it. The command was not run."),
     ("$ rm -rf x  ✗ not run: the user denied it", "tool-refused")),
    (ToolRan("run_command", {"command": "sleep 999"}, True, None, "sleep 999"),
     ("$ sleep 999  ✗ stopped (timed out)", "tool")),
], ids=["exit-1", "read", "denied", "timeout"])
def test_tool_lines(event: ToolRan, line: tuple[str, str]) -> None:
    assert tool_line(event) == line
