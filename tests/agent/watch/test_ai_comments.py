"""AI comments (Aider's syntax): literal lines, the excerpt the agent sees, and when a change asks for a run.

Markers are written as "AI" + "!" in this file so that watching this repository never takes its
own tests for requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from v4.agent.watch.ai_comments import AICommentTracker, find_ai_comments

BANG, ASK = "AI" + "!", "AI" + "?"


@pytest.mark.parametrize(("line", "action"), [
    (f"x = 1  # make this a constant {BANG}", "!"),
    (f"# {BANG} make this a constant", "!"),
    (f"#{BANG}", "!"),
    (f"    // rename this {BANG.lower()}", "!"),
    (f"-- add an index {BANG}", "!"),
    (f";; simplify {BANG}", "!"),
    (f"# why is this slow {ASK}", "?"),
    (f"// {ASK.lower()} what does this return", "?"),
    ("# AI: this is the hot loop", None),
    ("# keep this fast, ai", None),
    (f"# make this faster {BANG}   ", "!"),
])
def test_an_ai_comment_and_what_it_asks(line: str, action: str | None) -> None:
    found = find_ai_comments("a.py", f"def f():\n{line}\n")
    assert len(found) == 1 and found[0].line == 2 and found[0].action == action
    assert found[0].text.startswith(("#", "//", "--", ";"))


@pytest.mark.parametrize("line", [
    "# said the maintainer",  # "ai" inside a word
    "# email the team",
    "x = 'AI'  # no marker at either end of this comment",
    "print('hello')",
    f"text = 'no comment marker here {BANG}'",
])
def test_not_an_ai_comment(line: str) -> None:
    assert find_ai_comments("a.py", line + "\n") == []


def test_the_agent_sees_each_comment_marked_with_its_code_and_enclosing_block(tmp_path: Path) -> None:
    body = "".join(f"        x{n} = {n}\n" for n in range(20))
    text = f"import os\n\n\nclass Box:\n    def fill(self):\n{body}        # use a loop {BANG}\n        return x0\n"
    (tmp_path / "box.py").write_text(text)
    tracker = AICommentTracker(tmp_path)
    request = tracker.observe(["box.py"])
    assert request is not None and request.action == "!" and request.files == ("box.py",)
    shown = request.instruction()
    assert "remove every one of these AI" in shown
    assert f"█        # use a loop {BANG}" in shown  # the comment, marked
    assert "│        x19 = 19" in shown and "│        return x0" in shown  # 3 lines of context each side
    assert "│class Box:" in shown and "│    def fill(self):" in shown  # the blocks it sits in
    assert "x5 = 5" not in shown and "⋮" in shown  # the rest left out
    assert "import os" not in shown


def test_a_question_asks_for_no_edits(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(f"def f():\n    return 1  # why one {ASK}\n")
    request = AICommentTracker(tmp_path).observe(["a.py"])
    assert request.action == "?" and request.kind == ASK
    assert "Do not change any file" in request.instruction()


def test_plain_ai_comments_wait_and_go_with_the_next_request(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    return 1  # AI: callers expect an int\n")
    (tmp_path / "b.py").write_text("x = 1\n")
    tracker = AICommentTracker(tmp_path)
    assert tracker.observe(["a.py"]) is None and tracker.files == {"a.py"}
    (tmp_path / "b.py").write_text(f"x = 1  # make x a float {BANG}\n")
    request = tracker.observe(["b.py"])
    assert request.action == "!" and request.files == ("a.py", "b.py") and len(request.comments) == 2


def test_a_change_wins_over_a_question(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(f"x = 1  # why {ASK}\ny = 2  # double it {BANG}\n")
    assert AICommentTracker(tmp_path).observe(["a.py"]).action == "!"


def test_the_agents_own_write_is_not_a_request(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(f"x = 1  # double it {BANG}\n")
    tracker = AICommentTracker(tmp_path)
    assert tracker.observe(["a.py"], own=["a.py"]) is None
    assert tracker.files == {"a.py"}  # still followed: the next user change asks again
    assert tracker.observe(["a.py"]).action == "!"


def test_files_whose_comments_are_gone_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1  # AI: note\n")
    tracker = AICommentTracker(tmp_path)
    tracker.observe(["a.py"])
    (tmp_path / "a.py").write_text("x = 1\n")
    tracker.observe(["a.py"])
    assert tracker.files == set()


def test_unreadable_and_binary_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe# " + BANG.encode())
    assert AICommentTracker(tmp_path).observe(["b.bin", "missing.py"]) is None
