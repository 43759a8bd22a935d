"""Sessions in the TUI: a conversation is saved after each turn; `v4 --continue` (ConversationOptions)
shows it again and sends it with the next request; /sessions picks another one in the running app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tui.conftest import ask, chat_text, ready, until
from v4.agent.options import BackendOptions, ConversationOptions, EngineOptions
from v4.agent.sessions import SessionStore
from v4.agent.workspace import Workspace
from v4.tui.app import V4App
from v4.tui.screens.sessions import SessionsScreen
from v4.tui.widgets.status_bar import StatusBar

pytestmark = pytest.mark.anyio


def app_for(repo: Path, tmp_path: Path, *answers: str, conversation: ConversationOptions | None = None,
            name: str = "replay.json") -> V4App:
    script = tmp_path / name
    script.write_text(json.dumps(list(answers)))
    return V4App(repo, BackendOptions(replay=script), Workspace(repo), conversation=conversation)


async def test_continue_shows_the_last_conversation_and_sends_it_with_the_next_request(repo: Path,
                                                                                     tmp_path: Path) -> None:
    first = app_for(repo, tmp_path, "add returns a + b.", name="one.json")
    async with first.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "what does add return?")
        sent = first.main.services.chat.backend.inner.calls[0]
    record = SessionStore(repo).latest()
    assert record.title == "what does add return?" and record.turn_count == 1

    second = app_for(repo, tmp_path, "sub returns a - b.", conversation=ConversationOptions(continue_last=True),
                     name="two.json")
    async with second.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        text = chat_text(second)
        assert "what does add return?" in text and "add returns a + b." in text
        assert f"Continuing session {record.id} (1 turn(s)" in text
        await ask(pilot, "and sub?")
        call = second.main.services.chat.backend.inner.calls[0]
        assert call[0] == sent[0]  # the same system message: the repository prefix is the cached one
        assert [(m.role, m.content) for m in call[1:3]] == [("user", "what does add return?"),
                                                            ("assistant", "add returns a + b.")]
        assert call[-1].content == "and sub?"
    again = SessionStore(repo).load(record.id)
    assert again.turn_count == 2 and again.messages[-1].content == "sub returns a - b."
    assert len(SessionStore(repo).list()) == 1


async def test_resume_of_an_unknown_id_fails_start_up_and_says_which(repo: Path, tmp_path: Path) -> None:
    app = app_for(repo, tmp_path, "x", conversation=ConversationOptions(resume="nope"))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.main.startup_error is not None)
        assert "no saved session 'nope'" in app.main.startup_error


async def test_slash_sessions_continues_another_conversation_in_the_running_app(repo: Path, tmp_path: Path) -> None:
    earlier = app_for(repo, tmp_path, "It is a calculator.", name="earlier.json")
    async with earlier.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "what is calc.py?")
    saved = SessionStore(repo).latest()

    app = app_for(repo, tmp_path, "Hello.", "It adds.", name="now.json")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "hi")
        current = app.main.services.sessions.current()
        await ask(pilot, "/sessions")
        await until(pilot, lambda: isinstance(app.screen, SessionsScreen))
        rows = [str(app.screen.query_one("OptionList").get_option_at_index(i).prompt) for i in range(2)]
        assert any("▶" in row and current in row for row in rows)  # the one in this chat is marked
        index = next(i for i, row in enumerate(rows) if saved.id in row)
        option_list = app.screen.query_one("OptionList")
        option_list.highlighted = index
        await pilot.press("enter")
        await until(pilot, lambda: "Continuing session " + saved.id in chat_text(app) and not app.main.busy)
        text = chat_text(app)
        assert "what is calc.py?" in text and "It is a calculator." in text and "hi" not in text.split("Ready.")[-1]
        await ask(pilot, "and add?")
        call = app.main.services.chat.backend.inner.calls[-1]
        assert [m.content for m in call[1:3]] == ["what is calc.py?", "It is a calculator."]
    assert SessionStore(repo).load(saved.id).turn_count == 2
    assert SessionStore(repo).load(current).turn_count == 1  # the other conversation is kept as it was


async def test_clear_starts_a_new_saved_conversation(repo: Path, tmp_path: Path) -> None:
    app = app_for(repo, tmp_path, "One.", "Two.")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "first")
        before = app.main.services.sessions.current()
        await ask(pilot, "/clear")
        await ask(pilot, "second")
        assert app.main.services.sessions.current() != before
    titles = sorted(r.title for r in SessionStore(repo).list())
    assert titles == ["first", "second"]


async def test_the_status_bar_says_how_many_tokens_a_resume_reused(repo: Path, tmp_path: Path) -> None:
    app = app_for(repo, tmp_path, "x")
    async with app.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        assert "resumed" not in str(app.main.query_one(StatusBar).render())
        app.main.reused_tokens = 12345  # what _show_conversation sets from the resume's prefill
        await pilot.pause()
        assert "resumed: 12,345 tokens reused" in str(app.main.query_one(StatusBar).render())


async def test_on_the_embedded_engine_a_continued_conversation_comes_from_the_store(repo: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_chat_checkpoint

    checkpoint = tiny_chat_checkpoint(tmp_path / "ckpt", seed=0)
    options = BackendOptions(model=checkpoint, store_dir=tmp_path / "store", engine=EngineOptions(device="cpu"))
    first = V4App(repo, options, Workspace(repo))
    async with first.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "what does add return?")
        backend = first.main.services.chat.backend.inner
        session = first.main.services.session
        kept, _ = backend.conversation_ids(session.messages(), **dict(zip(("thinking", "tools"),
                                                                          session.prompt_style())))
    second = V4App(repo, options, Workspace(repo), conversation=ConversationOptions(continue_last=True))
    async with second.run_test(size=(160, 30)) as pilot:
        await ready(pilot)
        assert second.main.reused_tokens == len(kept) > 0  # the whole conversation, none of it computed
        assert f"resumed: {len(kept):,} tokens reused" in str(second.main.query_one(StatusBar).render())
        assert f"{len(kept):,} of {len(kept):,} tokens reused from the prefix-state store" in chat_text(second)


async def test_slash_compact_summarises_the_older_turns_without_streaming_the_summary(repo: Path,
                                                                                      tmp_path: Path) -> None:
    app = app_for(repo, tmp_path, "One.", "Two.", "Three.", "SUMMARY: the user asked three things.", "Four.")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await ask(pilot, "/compact")
        assert "Not compacted: nothing to compact yet" in chat_text(app)
        for request in ("first", "second", "third"):
            await ask(pilot, request)
        await ask(pilot, "/compact")
        await until(pilot, lambda: "Compacted the 1 oldest turn(s)" in chat_text(app))
        assert "SUMMARY: the user asked" not in chat_text(app)  # the summary call is not an answer
        await ask(pilot, "fourth")
        call = app.main.services.chat.backend.inner.calls[-1]
        assert call[1].content.startswith("Summary of the earlier conversation")
        assert "SUMMARY: the user asked three things." in call[1].content
        assert [m.content for m in call[3:7]] == ["second", "Two.", "third", "Three."]
    assert SessionStore(repo).latest().compactions == 1


async def test_a_file_changed_during_the_session_is_attached_not_replanned(repo: Path, tmp_path: Path) -> None:
    app = app_for(repo, tmp_path, "Noted.", "Still noted.")
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        system = app.main.services.session.system
        with open(repo / "calc.py", "a") as handle:
            handle.write("\n\ndef mul(a, b):\n    return a * b\n")  # the user's edit, after the plan
        await ask(pilot, "I added mul")
        assert "Attached in full after the repository context: calc.py (uncommitted changes)." in chat_text(app)
        panel = str(app.main.query_one("#context-attached").render())
        assert "attached after the repository:" in panel and "calc.py (uncommitted changes)" in panel
        request = app.main.services.chat.backend.inner.calls[0][-1].content
        assert "==> calc.py <== (uncommitted changes)" in request and "def mul(a, b):" in request
        await ask(pilot, "anything else?")
        assert app.main.services.chat.backend.inner.calls[1][-1].content == "anything else?"  # sent once
        assert app.main.services.session.system == system  # the cached prefix is untouched
