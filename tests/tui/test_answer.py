"""Answers split into prose and edit blocks, as the chat draws them: one test per shape of reply."""

from __future__ import annotations

from v4.tui.controllers.answer import EditPart, Prose, diff_lines, split_answer

BLOCK = "app/util.py\n```python\n<<<<<<< SEARCH\ndef add(a, b):\n    return a + b\n=======\n" \
        "def add(a: int, b: int) -> int:\n    return a + b\n>>>>>>> REPLACE\n```\n"


def test_prose_around_a_block_stays_prose_and_the_markers_go() -> None:
    parts = split_answer("Here you go.\n\n" + BLOCK + "\nThat is all.", final=True)
    assert [type(p) for p in parts] == [Prose, EditPart, Prose]
    edit = parts[1]
    assert (edit.path, edit.kind, edit.complete, edit.error) == ("app/util.py", "replace", True, None)
    assert parts[0].text == "Here you go." and parts[2].text == "That is all."


def test_diff_of_a_replace_keeps_unchanged_lines_as_context() -> None:
    edit = split_answer(BLOCK, final=True)[0]
    assert diff_lines(edit) == ["-def add(a, b):", "+def add(a: int, b: int) -> int:", "     return a + b"]


def test_a_block_while_it_streams_is_a_sketch_then_the_parsed_edit() -> None:
    cut = BLOCK.index("=======") + len("=======\ndef add")
    streaming = split_answer(BLOCK[:cut])
    assert len(streaming) == 1 and not streaming[0].complete and streaming[0].path == "app/util.py"
    assert diff_lines(streaming[0])[:1] == ["-def add(a, b):"]
    assert split_answer(BLOCK)[0].complete


def test_a_half_written_marker_is_held_back_while_streaming() -> None:
    assert split_answer("Sure.\n<<<<") == [Prose("Sure.")]
    assert split_answer("Sure.\n<<<<", final=True) == [Prose("Sure.\n<<<<")]


def test_create_and_delete_blocks() -> None:
    text = "new.py\n```python\n<<<<<<< SEARCH\n=======\nVERSION = 1\n>>>>>>> REPLACE\n```\n\n<<<<<<< DELETE old.py\n"
    create, delete = split_answer(text, final=True)
    assert (create.kind, create.path, diff_lines(create)) == ("create", "new.py", ["+VERSION = 1"])
    assert (delete.kind, delete.path, diff_lines(delete)) == ("delete", "old.py", [])


def test_a_block_without_its_own_path_reuses_the_previous_one() -> None:
    second = "```python\n<<<<<<< SEARCH\n    return a + b\n=======\n    return b + a\n>>>>>>> REPLACE\n```\n"
    parts = split_answer(BLOCK + second, final=True)
    assert [p.path for p in parts] == ["app/util.py", "app/util.py"]


def test_a_block_the_parser_refuses_carries_its_reason() -> None:
    (part,) = split_answer("<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n", final=True)
    assert part.error is not None and "path" in part.error


def test_distant_changes_are_separated_by_a_gap() -> None:
    lines = [f"line {n}" for n in range(20)]
    search = "\n".join(lines) + "\n"
    replace = "\n".join(["LINE 0", *lines[1:19], "LINE 19"]) + "\n"
    part = EditPart("a.txt", "replace", search, replace, True)
    assert "⋯" in diff_lines(part)
