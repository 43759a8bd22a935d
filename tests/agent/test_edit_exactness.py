"""Every edit lands exactly as the model meant it, or is refused (issue 20): one test per odd reply."""

from __future__ import annotations

import pytest

from tests.agent.test_edits import block, plan_error, planned
from v4.agent.edit_feedback import closest_window
from v4.agent.edits import parse_edits

WIKI = "def page_url(title):\n    return BASE + quote(title)\n\n\ndef other():\n    pass\n"
CLASS = "class Pages:\n    def page_url(self, title):\n        return BASE + title\n"


# --- the REPLACE's frame -----------------------------------------------------------------------


def test_search_indented_more_than_the_file_with_replace_at_the_files_indentation() -> None:
    response = block("wiki.py", "    def page_url(title):\n        return BASE + quote(title)\n",
                     "def page_url(title):\n    return BASE + quote(title, safe='')\n")
    assert planned({"wiki.py": WIKI}, response)["wiki.py"] == WIKI.replace("quote(title)", "quote(title, safe='')")


def test_search_at_column_0_with_replace_already_inside_the_class() -> None:
    response = block("pages.py", "def page_url(self, title):\n    return BASE + title\n",
                     "    def page_url(self, title: str) -> str:\n        return BASE + title\n")
    assert planned({"pages.py": CLASS}, response)["pages.py"] == CLASS.replace(
        "(self, title):", "(self, title: str) -> str:")


def test_search_and_replace_both_shifted_are_moved_together() -> None:
    response = block("pages.py", "def page_url(self, title):\n    return BASE + title\n",
                     "def page_url(self, title):\n    if not title:\n        return BASE\n    return BASE + title\n")
    assert planned({"pages.py": CLASS}, response)["pages.py"] == (
        "class Pages:\n    def page_url(self, title):\n        if not title:\n            return BASE\n"
        "        return BASE + title\n")


def test_no_shared_line_uses_the_first_line() -> None:
    search, replace = "def page_url(self, title):\n    return BASE + title\n", "def url(self):\n    return BASE\n"
    assert planned({"pages.py": CLASS}, block("pages.py", search, replace))["pages.py"] == (
        "class Pages:\n    def url(self):\n        return BASE\n")
    error = plan_error({"pages.py": CLASS}, block("pages.py", search, "        def url(self):\n            pass\n"))
    assert "indented like neither" in error.message


def test_conflicting_frame_evidence_is_refused() -> None:
    source = "class A:\n    def f(self):\n        a = 1\n        b = 2\n        c = 3\n"
    search = "def f(self):\n    a = 1\n    b = 2\n    c = 3\n"
    replace = "def f(self):\n    a = 1\n        b = 2\n        c = 4\n"  # `a` in SEARCH's frame, `b` in the file's
    assert "not consistently written either way" in plan_error({"a.py": source}, block("a.py", search, replace)).message


def test_a_line_that_would_go_below_column_0_is_refused() -> None:
    search = "    def page_url(title):\n        return BASE + quote(title)\n"
    replace = "    def page_url(title):\n  # a comment at column 2\n        return BASE + quote(title)\n"
    assert "below column 0" in plan_error({"wiki.py": WIKI}, block("wiki.py", search, replace)).message


def test_tab_indented_file_keeps_its_tabs() -> None:
    source = "func f() {\n\tif x {\n\t\treturn 1\n\t}\n}\n"
    response = block("f.go", "if x {\n\treturn 1\n}\n", "\tif x {\n\t\treturn 2\n\t}\n", "```go")
    assert planned({"f.go": source}, response)["f.go"] == source.replace("return 1", "return 2")


def test_spaces_for_tabs_are_read_as_tabs_and_written_as_tabs() -> None:
    source = "func f() {\n\tif x {\n\t\treturn 1\n\t}\n}\n"
    response = block("f.go", "    if x {\n        return 1\n    }\n", "    if x {\n        return 2\n    }\n", "```go")
    assert planned({"f.go": source}, response)["f.go"] == source.replace("return 1", "return 2")


def test_spaces_for_tabs_that_fit_two_widths_equally_are_refused() -> None:
    source = "a {\n\tb\n\t\tb\n}\n"
    response = block("f.go", "    b\n", "    c\n", "```go")  # one tab (4 spaces) or two (2 spaces)?
    assert "so which lines it means is unclear" in plan_error({"f.go": source}, response).message


# --- lines the edit does not change keep their bytes ------------------------------------------


def test_context_lines_keep_their_cr_in_a_mixed_newline_file() -> None:
    source = "a = 1\r\nb = 2\nc = 3\r\nd = 4\n"
    after = planned({"m.py": source}, block("m.py", "a = 1\nb = 2\nc = 3\n", "a = 1\nb = 20\nc = 3\n"))
    assert after["m.py"] == "a = 1\r\nb = 20\nc = 3\r\nd = 4\n"


def test_markdown_hard_break_spaces_survive() -> None:
    source = "Roses are red,  \nviolets are blue.\n"
    after = planned({"p.md": source}, block("p.md", "Roses are red,\nviolets are blue.\n",
                                            "Roses are red,\nviolets are green.\n", "```markdown"))
    assert after["p.md"] == "Roses are red,  \nviolets are green.\n"


def test_blank_lines_a_loose_search_left_out_stay() -> None:
    source = "def a():\n    x = 1\n\n    y = 2\n\n    return x + y\n"
    after = planned({"a.py": source}, block("a.py", "    x = 1\n    y = 2\n    return x + y\n",
                                            "    x = 1\n    y = 3\n    return x + y\n"))
    assert after["a.py"] == source.replace("y = 2", "y = 3")


def test_lines_inserted_among_left_out_blank_lines_are_refused() -> None:
    source = "a = 1\n\nb = 2\n"
    error = plan_error({"a.py": source}, block("a.py", "a = 1\nb = 2\n", "a = 1\nc = 3\nb = 2\n"))
    assert "left out the blank line" in error.message.replace("leaves out", "left out")


# --- markers in the body ------------------------------------------------------------------------


def test_rst_underline_in_search_is_content() -> None:
    source = "Changes\n=======\n\n1.0\n---\n\n- first\n"
    response = block("CHANGES.rst", "Changes\n=======\n\n1.0\n", "Changes\n=======\n\n1.1\n---\n\n- second\n\n1.0\n",
                     "```rst")
    assert parse_edits(response)[0].readings  # two possible dividers: the file settles it
    assert planned({"CHANGES.rst": source}, response)["CHANGES.rst"] == (
        "Changes\n=======\n\n1.1\n---\n\n- second\n\n1.0\n---\n\n- first\n")


def test_rst_underline_in_replace_is_content() -> None:
    source = "Intro text.\n"
    response = block("README.rst", "Intro text.\n", "Intro\n=======\n\nIntro text.\n", "```rst")
    assert planned({"README.rst": source}, response)["README.rst"] == "Intro\n=======\n\nIntro text.\n"


def test_docstring_banner_is_content() -> None:
    source = 'def f():\n    """Doc.\n\n=======\nBanner\n"""\n    return 1\n'
    response = block("f.py", '    """Doc.\n\n=======\nBanner\n"""\n    return 1\n',
                     '    """Doc.\n\n=======\nBanner\n"""\n    return 2\n')
    assert planned({"f.py": source}, response)["f.py"] == source.replace("return 1", "return 2")


def test_resolving_a_conflict_carried_in_search() -> None:
    source = "x = 0\n<<<<<<< HEAD\nx = 1\n=======\nx = 2\n>>>>>>> feature\ny = 3\n"
    response = block("c.py", "<<<<<<< HEAD\nx = 1\n=======\nx = 2\n>>>>>>> feature\n", "x = 2\n")
    assert len(parse_edits(response)[0].readings) == 0  # the conflict's own `=======` is content
    assert planned({"c.py": source}, response)["c.py"] == "x = 0\nx = 2\ny = 3\n"


def test_the_file_settles_which_equals_line_divides() -> None:
    """SEARCH `A` is followed in the file by the very `=======` line taken as its divider, so that line is
    file content and the later one divides."""
    source = "A\n=======\nB\n"
    response = block("n.txt", "A\n", "B\n=======\nB\n", "```")
    assert planned({"n.txt": source}, response)["n.txt"] == "B\n"


def test_no_reading_matching_is_refused_with_the_first_readings_reason() -> None:
    response = block("n.txt", "C\n", "B\n=======\nB\n", "```")
    assert "with none of them does SEARCH match" in plan_error({"n.txt": "A\n"}, response).message


def test_longer_markers_settle_the_divider() -> None:
    source = "A\n=======\nB\n"
    response = "n.txt\n```\n<<<<<<<<< SEARCH\nA\n=========\nB\n=======\nB\n>>>>>>>>> REPLACE\n```\n"
    assert planned({"n.txt": source}, response)["n.txt"] == "B\n=======\nB\n=======\nB\n"


def test_indented_equals_line_is_never_a_divider() -> None:
    response = block("d.py", 'def f():\n    """\n    =======\n    """\n', 'def f():\n    """\n    -------\n    """\n')
    assert not parse_edits(response)[0].readings


# --- elision --------------------------------------------------------------------------------------


FUNCS = "def a():\n    x = 1\n    y = 2\n    return x\n\n\ndef b():\n    z = 3\n    return z\n"


def test_elision_inside_one_function_applies() -> None:
    response = block("f.py", "def a():\n    ...\n    return x\n", "def a():\n    ...\n    return y\n")
    assert planned({"f.py": FUNCS}, response)["f.py"] == FUNCS.replace("return x", "return y")


def test_elision_running_into_the_next_function_is_refused() -> None:
    response = block("f.py", "def a():\n    ...\n    return z\n", "def a():\n    ...\n    return 0\n")
    assert "past the end of the function" in plan_error({"f.py": FUNCS}, response).message


def test_elision_without_a_grammar_follows_indentation() -> None:
    source = "a:\n  b: 1\n  c: 2\nd:\n  e: 3\n"
    inside = block("c.yaml", "a:\n  ...\n  c: 2\n", "a:\n  ...\n  c: 20\n", "```yaml")
    assert planned({"c.yaml": source}, inside)["c.yaml"] == source.replace("c: 2", "c: 20")
    across = block("c.yaml", "a:\n  ...\n  e: 3\n", "a:\n  ...\n  e: 30\n", "```yaml")
    assert "inside one unit" in plan_error({"c.yaml": source}, across).message


def test_bare_ellipsis_in_replace_is_refused() -> None:
    response = block("f.py", "def a():\n    x = 1\n    y = 2\n    return x\n", "def a():\n    ...\n    return y\n")
    assert "written literally" in plan_error({"f.py": FUNCS}, response).message


def test_a_new_python_stub_body_is_code() -> None:
    response = block("f.py", "def b():\n", "def a2() -> int:\n    ...\n\n\ndef b():\n")
    assert planned({"f.py": FUNCS}, response)["f.py"] == FUNCS.replace("def b():", "def a2() -> int:\n    ...\n\n\ndef b():")


def test_a_bare_ellipsis_in_place_of_lines_is_refused_even_where_it_would_be_valid_python() -> None:
    source = "if x:\n    a()\n    b()\nelse:\n    c()\n"
    response = block("f.py", source, "if x:\n    ...\nelse:\n    d()\n")
    error = plan_error({"f.py": source}, response)
    assert "written literally" in error.message and "on the `def` line" in error.message


# --- the result must still parse ---------------------------------------------------------------


def test_a_block_that_breaks_the_syntax_is_refused_naming_the_line() -> None:
    response = block("f.py", "    y = 2\n", "    y = (2\n")
    error = plan_error({"f.py": FUNCS}, response)
    assert "no longer parses as python" in error.message and "line" in error.message


def test_a_file_that_did_not_parse_before_is_not_held_to_it() -> None:
    source = "def broken(:\n    pass\nx = 1\n"
    assert planned({"b.py": source}, block("b.py", "x = 1\n", "x = 2\n"))["b.py"] == source.replace("x = 1", "x = 2")


def test_only_the_end_result_must_parse() -> None:
    response = block("f.py", "    x = 1\n", "    x = (1\n") + block("f.py", "    y = 2\n", "    + 1)\n    y = 2\n")
    assert "x = (1\n    + 1)\n" in planned({"f.py": FUNCS}, response)["f.py"]


# --- paths ----------------------------------------------------------------------------------------


def test_blocks_in_one_fence_share_its_path_but_a_new_fence_does_not() -> None:
    two_in_one = ("a.py\n```python\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n\n"
                  "<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n```\n")
    assert [b.path for b in parse_edits(two_in_one)] == ["a.py", "a.py"]
    new_fence = two_in_one.replace("REPLACE\n\n<<<", "REPLACE\n```\n```python\n<<<")
    with pytest.raises(Exception, match="no file path of its own"):
        parse_edits(new_fence)


# --- "did you mean" is linear ----------------------------------------------------------------------


@pytest.mark.parametrize("width", [20_000, 60_000])
def test_nearest_lines_for_a_file_with_one_very_long_line(width: int) -> None:
    line = "x = [" + ", ".join(str(i % 97) for i in range(width // 4)) + "]"
    lines = ["import os", line[:width], "print(x)"]
    assert closest_window(lines, ["import sys", line[:width // 2] + "0]", "print(x)"]) == (0, 3)
    error = plan_error({"big.py": "\n".join(lines) + "\n"}, block("big.py", "y = [1, 2]\n", "y = []\n"))
    assert "SEARCH does not match" in error.message
