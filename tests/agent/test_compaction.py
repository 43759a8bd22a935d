"""Compaction (`agent/compaction.py`): a long replayed conversation near a small context is summarised
at the start of a turn, with the system message untouched, the newest turns kept verbatim, the turn
starts right, the pending edits listed, the saved record counting it; a failed summary changes nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from v4.agent import prompts
from v4.agent.approval import DenyAll
from v4.agent.backends import BackendError, Event, ReplayBackend, Thinking, Tool
from v4.agent.chat_format import Message, check_conversation
from v4.agent.compaction import CompactionPolicy, Compactor
from v4.agent.sandbox import NoSandbox
from v4.agent.session import Session, SessionOptions
from v4.agent.sessions import SessionRecorder, SessionStore
from v4.agent.tools import ToolRunner
from v4.agent.turn import Compacted, CompactionFailed, TurnEvent
from v4.agent.workspace_diff import file_diff
from v4.cli.progress import TurnProgress
from tests.conftest import make_repo

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
RENAME = ("Renamed.\n\ncalc.py\n```python\n<<<<<<< SEARCH\ndef sub(a, b):\n    return a - b\n=======\n"
          "def subtract(a, b):\n    return a - b\n>>>>>>> REPLACE\n```\n")
SUMMARY = "The user asked for small changes to calc.py; sub was renamed to subtract. They like short answers."
MARKER = "Summary of the earlier conversation (compacted by v4"
POLICY = CompactionPolicy(max_summary_tokens=200, max_pending_chars=2_000)
ANSWER_TOKENS = 200


@dataclass
class Scripted(ReplayBackend):
    """The replay backend, answering a summary request with `summary` (None: the call fails) wherever
    it comes, and recording how each call was asked."""

    summary: str | None = SUMMARY
    asked: list[dict[str, Any]] = field(default_factory=list)

    def events(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        is_summary = messages[-1].content.startswith(prompts.COMPACT_PROMPT[:80])
        self.asked.append({"summary": is_summary, "tools": list(tools), "thinking": thinking, "max_tokens": max_tokens})
        if is_summary:
            if self.summary is None:
                raise BackendError("the endpoint went away")
            self.responses.insert(len(self.calls), self.summary)
        return super().events(messages, max_tokens, temperature, thinking=thinking, tools=tools)


def request(number: int) -> str:
    return f"request {number}: " + "please look at the code again " * 12


def answer(number: int) -> str:
    return f"answer {number}: " + "the code is fine as it is " * 16


def responses(num_turns: int) -> list[str | dict[str, Any]]:
    """One answer per turn; the first renames sub (a pending edit), the fourth reads a file first."""
    script: list[str | dict[str, Any]] = [RENAME]
    for number in range(1, num_turns):
        if number == 3:
            script.append({"content": "", "tool_calls": [{"name": "read_file", "arguments": {"path": "calc.py"}}]})
        script.append(answer(number))
    return script


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"calc.py": CALC})


def session_for(repo: Path, backend: Scripted, room: int | None = 3_000) -> tuple[Session, list[TurnEvent]]:
    """A session with tools and a recorder; the context is the system message plus `room` tokens."""
    events: list[TurnEvent] = []
    options = SessionOptions(max_answer_tokens=ANSWER_TOKENS, compaction=POLICY)
    session = Session(repo, backend, f"==> calc.py <==\n{CALC}", options, on_event=events.append)
    session.tools = ToolRunner(session.workspace, NoSandbox(session.root), DenyAll())
    store = SessionStore(repo)
    session.recorder = SessionRecorder(store, store.create(backend={"kind": "replay"}))
    if room is not None:
        backend.context_length = Compactor(backend).tokens(session.system, []) + room
    return session, events


def test_a_long_conversation_is_compacted_and_every_prompt_fits(repo: Path) -> None:
    num_turns = 24
    backend = Scripted(responses(num_turns))
    session, events = session_for(repo, backend)
    seen: list[tuple[list[Message], list[int], list[Message], list[int]]] = []
    for number in range(num_turns):
        before, before_turns = list(session.history), list(session.turns)
        result = session.run(request(number))
        assert result.error is None and result.compaction_error is None
        if result.compacted is not None:
            assert result.compacted in events
            assert result.compacted.tokens_after < result.compacted.tokens_before
            seen.append((before, before_turns, session.history[:session.turns[-1]], session.turns[:-1]))
    compactions = [e for e in events if isinstance(e, Compacted)]
    assert len(compactions) >= 2 and len(seen) == len(compactions)

    counter = Compactor(backend)
    for call, asked in zip(backend.calls, backend.asked):
        assert call[0] == session.system  # the cached prefix, identical in every call
        assert counter.tokens(call[0], call[1:]) + asked["max_tokens"] <= backend.context_length
        check_conversation(call)
    summaries = [a for a in backend.asked if a["summary"]]
    assert len(summaries) == len(compactions)
    assert all(a["tools"] == [] and a["thinking"] is None and a["max_tokens"] == 200 for a in summaries)
    assert all(a["tools"] for a in backend.asked if not a["summary"])  # the turns themselves had tools

    for before, before_turns, after, after_turns in seen:  # the newest 2 turns kept verbatim, behind the summary
        assert after[0].role == "user" and after[0].content.startswith(MARKER) and SUMMARY in after[0].content
        assert after[1] == Message("assistant", prompts.COMPACT_ACK)
        assert after[2:] == before[before_turns[-2]:]
        assert after_turns == [2, 2 + before_turns[-1] - before_turns[-2]]
        assert "+def subtract(a, b):" in after[0].content and "calc.py" in after[0].content  # the pending edit
    assert all(session.history[t].content.endswith(request(n)) for t, n in
               zip(session.turns, range(num_turns - len(session.turns), num_turns)))
    check_conversation(session.messages())

    record = SessionStore(repo).load(session.recorder.record.id)
    assert record.compactions == len(compactions)
    assert record.messages == session.history and record.turns == session.turns


@pytest.mark.parametrize("summary", [None, "  "], ids=["call-fails", "empty-summary"])
def test_a_failed_summary_leaves_the_history_unchanged_and_says_so(repo: Path, summary: str | None) -> None:
    backend = Scripted(responses(12), summary=summary)
    session, events = session_for(repo, backend)
    failed = None
    for number in range(12):
        before, before_turns = list(session.history), list(session.turns)
        result = session.run(request(number))
        if result.compaction_error:
            failed = result.compaction_error
            assert session.history[:len(before)] == before and session.turns[:-1] == before_turns
            break
    assert failed is not None and "not compacted" in failed and "unchanged" in failed
    assert any(isinstance(e, CompactionFailed) and e.reason == failed for e in events)
    assert not any(isinstance(e, Compacted) for e in events)
    assert not any(m.content.startswith(MARKER) for m in session.history)
    assert session.recorder.record.compactions == 0


def test_a_conversation_below_the_threshold_is_never_compacted(repo: Path) -> None:
    backend = Scripted(responses(25))
    session, events = session_for(repo, backend, room=None)  # the replay's 1M-token context
    for number in range(25):
        assert session.run(request(number)).compacted is None
    assert not any(a["summary"] for a in backend.asked) and len(backend.calls) == 26  # 25 answers + a tool round
    assert session.turns[0] == 0 and len(session.turns) == 25 and session.recorder.record.compactions == 0
    assert not any(isinstance(e, (Compacted, CompactionFailed)) for e in events)


def test_compact_by_hand_keeps_the_newest_turns_and_needs_an_older_one(repo: Path) -> None:
    backend = Scripted(responses(3))
    session, events = session_for(repo, backend, room=None)
    session.run(request(0))
    session.run(request(1))
    assert session.compact() is None and len(backend.calls) == 2  # 2 turns: nothing older than the kept ones
    session.run(request(2))
    history = list(session.history)
    done = session.compact()
    assert done == Compacted(1, done.tokens_before, done.tokens_after) and events[-1] == done
    assert session.history[0].content.startswith(MARKER) and session.turns == [2, 4]
    assert session.history[2:] == history[2:]  # turn 0 (request, answer) became the summary pair


def test_pending_diffs_are_capped_and_the_cut_is_said() -> None:
    big = file_diff("big.py", "".join(f"line {i}\n" for i in range(200)), "".join(f"row {i}\n" for i in range(200)))[0]
    small = file_diff("small.py", None, "x = 1\n")[0]
    compactor = Compactor(ReplayBackend([]), CompactionPolicy(max_pending_chars=600))
    text = compactor.pending_text([small, big, small])
    assert "+x = 1" in text and "-line 0" in text and "line 199" not in text
    assert "cut at 600 characters. Not shown: the rest of big.py, small.py." in text
    assert compactor.pending_text([small]) == f"```diff\n{small.text}```"


def test_the_headless_progress_shows_a_compaction_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    progress = TurnProgress(shows_text=False, live=False)
    progress(Compacted(5, 12_000, 3_000))
    line = "v4: compacted the conversation: 5 older turns summarised, 12,000 -> 3,000 tokens\n"
    assert capsys.readouterr().err == line


def test_a_turn_cut_short_before_the_kept_ones_still_gives_a_valid_summary_request() -> None:
    history = [Message("user", "r0"), Message("assistant", "a0"), Message("user", "r1"),  # r1: its answer failed
               Message("user", "r2"), Message("assistant", "a2"), Message("user", "r3"), Message("assistant", "a3")]
    backend = Scripted([])
    system = Message("system", "rules and repository")
    done = Compactor(backend, POLICY).compact(system, history, [0, 2, 3, 5], [])
    assert done is not None and done.num_turns == 2 and done.history[2:] == history[3:] and done.turns == [2, 4]
    check_conversation(backend.calls[0])
    assert backend.calls[0][4] == Message("assistant", prompts.TURN_CUT_SHORT)
    assert "v4 has no pending (unreviewed) changes." in done.history[0].content
