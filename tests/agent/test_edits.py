"""The edit protocol (agent/edits.py): parsing, matching, planning, and the corpus of model responses."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

from v4.agent.apply import apply_changes, make_reader
from v4.agent.edits import EditBlock, EditError, parse_edits, plan_changes
from v4.agent.prompts import EDIT_FORMAT_PROMPT

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "edit_corpus"
MANIFEST = tomllib.loads((CORPUS / "manifest.toml").read_text())
CASES = {case["file"]: case for case in MANIFEST["case"]}
RESPONSES = sorted(path.name for path in (CORPUS / "responses").iterdir())


def block(path: str, search: str, replace: str, fence: str = "```python") -> str:
    """A well-formed replace block as a model writes it."""
    return f"{path}\n{fence}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n```\n"


def planned(files: dict[str, str], response: str) -> dict[str, str | None]:
    """The contents after applying `response` to `files` in memory: path -> after."""
    return {change.path: change.after for change in plan_changes(parse_edits(response), files.get)}


def plan_error(files: dict[str, str], response: str) -> EditError:
    with pytest.raises(EditError) as caught:
        plan_changes(parse_edits(response), files.get)
    return caught.value


# --- parsing -----------------------------------------------------------------------------------


def test_prompt_teaches_one_example_of_each_form() -> None:
    blocks = parse_edits(EDIT_FORMAT_PROMPT)
    assert [(b.kind, b.path) for b in blocks] == [
        ("replace", "app/util.py"), ("create", "app/version.py"), ("delete", "docs/old_notes.md")]
    files = {"app/util.py": "def add(a, b):\n    return a + b\n", "docs/old_notes.md": "old\n"}
    after = {c.path: c.after for c in plan_changes(blocks, files.get)}
    assert after == {"app/util.py": "def add(a: int, b: int) -> int:\n    return a + b\n",
                     "app/version.py": 'VERSION = "1.0.0"\n', "docs/old_notes.md": None}


@pytest.mark.parametrize("header", [
    "app/x.py\n```python\n",
    "app/x.py\n\n```python\n",
    "**app/x.py**\n```python\n",
    "`app/x.py`\n```\n",
    "`app/x.py`:\n```python\n",
    "**`app/x.py`**:\n```python\n",
    "### app/x.py\n```python\n",
    "File: app/x.py\n```python\n",
    "- app/x.py\n```python\n",
    "./app/x.py\n```python\n",
    "app/x.py (new file)\n```python\n",
    "```python app/x.py\n",
    "```python:app/x.py\n",
    "```app/x.py\n",
    '```python title="app/x.py"\n',
    "```python\napp/x.py\n",
    "app/x.py\n```python\n```\n```python\n",  # path in its own fence, then the block (seen from DeepSeek)
    "Now update `app/x.py`:\n```python\n",
    "app\\x.py\n```python\n",
])
def test_path_forms(header: str) -> None:
    response = f"Some reasoning.\n\n{header}<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```\n"
    assert parse_edits(response) == [EditBlock("app/x.py", "a\n", "b\n", "replace", 0)]


def test_markdown_escaped_underscore_in_path() -> None:
    assert parse_edits(block(r"pkg/\_\_init\_\_.py", "a\n", "b\n"))[0].path == "pkg/__init__.py"


def test_block_without_path_reuses_the_previous_path() -> None:
    response = ("app/x.py\n```python\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
                "<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n```\n")
    assert [(b.path, b.index) for b in parse_edits(response)] == [("app/x.py", 0), ("app/x.py", 1)]


def test_a_block_in_a_new_fence_needs_its_own_path() -> None:
    """Prose is not a path, and a block in a fence of its own never borrows the previous block's file."""
    response = "a.py\n```\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```\n\nThen this:\n" \
               "```python\n<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n```\n"
    with pytest.raises(EditError, match="Edit block 2 has no file path of its own") as caught:
        parse_edits(response)
    assert caught.value.block_index == 1


@pytest.mark.parametrize("head, divider, tail", [
    ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"),
    ("<<<<<<<<< SEARCH  ", "=========", ">>>>>>>>> REPLACE "),
    ("<<<<< SEARCH", "=====", ">>>>> REPLACE"),
    ("<<<<<<< ORIGINAL", "=======", ">>>>>>> UPDATED"),
    ("  <<<<<<< SEARCH", "  =======", "  >>>>>>> REPLACE"),
])
def test_marker_variants(head: str, divider: str, tail: str) -> None:
    response = f"a.py\n```\n{head}\nold\n{divider}\nnew\n{tail}\n```\n"
    assert parse_edits(response) == [EditBlock("a.py", "old\n", "new\n", "replace", 0)]


def test_create_and_delete_forms() -> None:
    response = ("new.py\n```python\n<<<<<<< SEARCH\n\n=======\nx = 1\n>>>>>>> REPLACE\n```\n"
                "<<<<<<< DELETE old.py\n"
                "```\n<<<<<<< DELETE **docs/b.md**\n```\n"
                "gone.txt\n```\n<<<<<<< DELETE\n```\n"
                "empty/__init__.py\n```python\n<<<<<<< SEARCH\n=======\n>>>>>>> REPLACE\n```\n")
    assert parse_edits(response) == [
        EditBlock("new.py", "", "x = 1\n", "create", 0),
        EditBlock("old.py", "", "", "delete", 1),
        EditBlock("docs/b.md", "", "", "delete", 2),
        EditBlock("gone.txt", "", "", "delete", 3),
        EditBlock("empty/__init__.py", "", "", "create", 4),
    ]


def test_an_empty_replace_is_not_a_delete() -> None:
    assert planned({"a.py": "x = 1\n"}, block("a.py", "x = 1\n", "")) == {"a.py": ""}


def test_delete_without_a_path_is_an_error() -> None:
    with pytest.raises(EditError, match="DELETE path/to/file"):
        parse_edits("Removing it:\n<<<<<<< DELETE\n")


def test_text_outside_blocks_is_never_an_edit() -> None:
    response = ("Title\n=======\n\n```python\nprint('<<<<<<< HEAD')\n```\n\n```bash\nrm -rf build\n```\n"
                "<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> main\n")
    assert parse_edits(response) == []


def test_response_with_crlf_newlines() -> None:
    response = block("a.py", "old\n", "new\n").replace("\n", "\r\n")
    assert parse_edits(response) == [EditBlock("a.py", "old\n", "new\n", "replace", 0)]


def test_block_content_may_hold_fences_and_markers_of_other_kinds() -> None:
    replace = "```sh\nmake\n```\n<<<<<<< HEAD\n"
    response = "README.md\n````markdown\n<<<<<<< SEARCH\nold\n=======\n" + replace + ">>>>>>> REPLACE\n````\n"
    assert parse_edits(response)[0].replace == replace


def test_truncation_anywhere_in_a_block_names_that_block() -> None:
    response = block("a.py", "one\n", "uno\n") + "\n" + block("web/b.js", "two\nthree\n", "dos\ntres\n")
    lines = response.splitlines(keepends=True)
    second = next(i for i, line in enumerate(lines) if line.startswith("web/b.js"))
    for cut in range(second + 3, len(lines) - 1):  # from inside SEARCH up to before >>>>>>> REPLACE
        with pytest.raises(EditError) as caught:
            parse_edits("".join(lines[:cut]))
        assert caught.value.block_index == 1 and caught.value.path == "web/b.js"
        assert "Edit block 2 (web/b.js) is not closed" in caught.value.message
        assert "cut off" in caught.value.message


@pytest.mark.parametrize("response, expected", [
    ("a.py\n<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n", "`=======` was expected"),
    ("a.py\n<<<<<<< SEARCH\nx\n<<<<<<< SEARCH\n", "`=======` was expected"),
    ("a.py\n<<<<<<< SEARCH\nx\n=======\ny\n<<<<<<< SEARCH\nz\n=======\n", "`>>>>>>> REPLACE` was expected"),
    ("Done.\n>>>>>>> REPLACE\n", "no `<<<<<<< SEARCH` before it"),
    ("```python\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n```\n", "has no file path"),
])
def test_malformed_blocks(response: str, expected: str) -> None:
    with pytest.raises(EditError, match=expected.replace("(", r"\(").replace("`", "`")):
        parse_edits(response)


# --- matching ----------------------------------------------------------------------------------

CODE = '''\
class Cart:
    def total(self):
        return sum(self.items)

    def clear(self):
        self.items = []
'''


def test_exact_match() -> None:
    after = planned({"cart.py": CODE}, block("cart.py", "        return sum(self.items)\n",
                                             "        return round(sum(self.items), 2)\n"))
    assert after["cart.py"] == CODE.replace("return sum(self.items)", "return round(sum(self.items), 2)")


def test_dropped_indentation_is_restored_in_the_replacement() -> None:
    response = block("cart.py", "def clear(self):\n    self.items = []\n",
                     "def clear(self):\n    self.items.clear()\n    self.count = 0\n")
    assert planned({"cart.py": CODE}, response)["cart.py"] == CODE.replace(
        "        self.items = []\n", "        self.items.clear()\n        self.count = 0\n")


def test_extra_indentation_is_removed_from_the_replacement() -> None:
    response = block("cart.py", "            def total(self):\n                return sum(self.items)\n",
                     "            def total(self) -> int:\n                return sum(self.items)\n")
    expected = CODE.replace("def total(self):", "def total(self) -> int:")
    assert planned({"cart.py": CODE}, response)["cart.py"] == expected


def test_tab_indentation_drift() -> None:
    source = "func f() {\n\tif x {\n\t\treturn 1\n\t}\n}\n"
    response = block("f.go", "if x {\n\treturn 1\n}\n", "if x {\n\treturn 2\n}\n")
    assert planned({"f.go": source}, response)["f.go"] == source.replace("return 1", "return 2")


def test_non_uniform_indentation_does_not_match() -> None:
    error = plan_error({"cart.py": CODE}, block("cart.py", "def total(self):\nreturn sum(self.items)\n", "x\n"))
    assert "SEARCH does not match" in error.message and "lines 2-3" in error.message


def test_trailing_whitespace_and_blank_lines_are_tolerated() -> None:
    response = block("cart.py", "\n        return sum(self.items)   \n    def clear(self):\n",
                     "\n        return 0\n\n    def clear(self):\n")
    assert planned({"cart.py": CODE}, response)["cart.py"] == CODE.replace("return sum(self.items)", "return 0")


def test_elision_keeps_the_lines_it_stands_for() -> None:
    source = "def f():\n    a = 1\n    b = 2\n    c = 3\n    return a + b + c\n\n\ndef g():\n    return 0\n"
    response = block("m.py", "def f():\n    ...\n    return a + b + c\n",
                     "def f(scale):\n    ...\n    return (a + b + c) * scale\n")
    assert planned({"m.py": source}, response)["m.py"] == source.replace("def f():", "def f(scale):").replace(
        "return a + b + c", "return (a + b + c) * scale")


def test_elision_with_several_markers_and_drifted_indentation() -> None:
    source = "class K:\n    def f(self):\n        a = 1\n        b = 2\n        c = 3\n        d = 4\n        e = 5\n"
    response = block("k.py", "def f(self):\n# ...\n    c = 3\n// ... existing code ...\n    e = 5\n",
                     "def f(self):\n# ...\n    c = 30\n// ... existing code ...\n    e = 50\n")
    assert planned({"k.py": source}, response)["k.py"] == source.replace("c = 3", "c = 30").replace("e = 5", "e = 50")


def test_literal_ellipsis_line_matches_as_code_first() -> None:
    source = "class P(Protocol):\n    def f(self) -> int:\n        ...\n"
    response = block("p.py", "    def f(self) -> int:\n        ...\n", "    def f(self) -> str:\n        ...\n")
    assert planned({"p.py": source}, response)["p.py"] == source.replace("-> int", "-> str")


def test_elision_must_be_paired_in_replace() -> None:
    source = "def f():\n    a = 1\n    return a\n"
    error = plan_error({"m.py": source}, block("m.py", "def f():\n...\n    return a\n", "def f():\n    return 2\n"))
    assert "SEARCH has 1 `...` line(s) but REPLACE has 0" in error.message


def test_lazy_comment_in_replace_is_refused() -> None:
    source = "def f():\n    a = 1\n    return a\n"
    error = plan_error({"m.py": source}, block("m.py", "def f():\n", "def g():\n    # ... rest unchanged\n"))
    assert "`# ... rest unchanged`" in error.message


def test_no_match_says_where_the_nearest_lines_are() -> None:
    search = "    def clear(self):\n        self.items = list()\n"
    error = plan_error({"cart.py": CODE}, block("cart.py", search, "x\n"))
    assert error.block_index == 0 and error.path == "cart.py"
    assert "Did you mean these lines (cart.py, lines 5-6)?\n```\n    def clear(self):\n        self.items = []\n```" \
        in error.message


def test_nearest_lines_ignore_blank_lines_and_typos_everywhere() -> None:
    source = "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(300))
    search = "".join(f"def functoin_{i}(val):\n    retrun val * {i}\n" for i in range(123, 126))
    error = plan_error({"big.py": source}, block("big.py", search, "x\n"))
    assert "Did you mean these lines (big.py, lines 370-377)?\n```\ndef function_123(value):" in error.message


def test_elided_search_points_at_the_piece_that_is_missing() -> None:
    source = "def f():\n    a = 1\n\n    return a\n"
    error = plan_error({"a.py": source},
                       block("a.py", "def f():\n...\n    return b\n", "def f():\n...\n    return 0\n"))
    assert "Did you mean these lines (a.py, line 4)?\n```\n    return a\n```" in error.message
    error = plan_error({"a.py": source},
                       block("a.py", "    return a\n...\ndef f():\n", "    return a\n...\ndef g():\n"))
    assert "is in the file, but not in this order" in error.message


def test_no_similar_lines_at_all() -> None:
    error = plan_error({"cart.py": CODE}, block("cart.py", "zzzz qqqq\n", "x\n"))
    assert "No similar lines were found" in error.message


def test_ambiguous_match_lists_the_places() -> None:
    source = "def a():\n    return None\n\n\ndef b():\n    return None\n"
    error = plan_error({"m.py": source}, block("m.py", "    return None\n", "    return 1\n"))
    assert "SEARCH matches 2 places (starting at lines 2, 6)" in error.message


def test_every_failing_block_is_reported_and_nothing_is_planned() -> None:
    files = {"a.py": "a = 1\n", "b.py": "b = 1\n"}
    response = (block("a.py", "a = 2\n", "a = 3\n") + block("b.py", "b = 1\n", "b = 2\n")
                + block("missing.py", "c\n", "d\n") + "<<<<<<< DELETE nothing.txt\n")
    error = plan_error(files, response)
    assert [(e.block_index, e.path) for e in error.errors] == [(0, "a.py"), (2, "missing.py"), (3, "nothing.txt")]
    assert (error.block_index, error.path) == (0, "a.py")
    assert error.message.startswith("3 of 4 edit blocks could not be applied, so no file was changed")


def test_blocks_for_one_file_apply_in_order() -> None:
    response = block("a.py", "x = 1\n", "x = 2\n") + block("a.py", "x = 2\n", "x = 3\ny = 4\n") \
        + block("a.py", "y = 4\n", "y = 5\n")
    assert planned({"a.py": "x = 1\n"}, response) == {"a.py": "x = 3\ny = 5\n"}


def test_a_failed_block_does_not_hide_failures_after_it() -> None:
    response = block("a.py", "nope\n", "x\n") + block("a.py", "also nope\n", "y\n") + block("a.py", "x = 1\n", "z\n")
    assert [e.block_index for e in plan_error({"a.py": "x = 1\n"}, response).errors] == [0, 1]


def test_create_delete_and_recreate() -> None:
    files = {"old.txt": "old\n"}
    response = "<<<<<<< DELETE old.txt\n" + block("old.txt", "", "new\n") + block("new/n.py", "", "n = 1\n")
    changes = plan_changes(parse_edits(response), files.get)
    assert [(c.path, c.before, c.after) for c in changes] == [("old.txt", "old\n", "new\n"),
                                                               ("new/n.py", None, "n = 1\n")]


def test_create_over_an_existing_file_is_refused() -> None:
    assert "the file already exists" in plan_error({"a.py": "x\n"}, block("a.py", "", "y\n")).message


def test_create_then_delete_leaves_nothing_to_do() -> None:
    assert planned({}, block("t.py", "", "t\n") + "<<<<<<< DELETE t.py\n") == {}


def test_no_op_edits_are_left_out() -> None:
    assert planned({"a.py": "x = 1\n"}, block("a.py", "x = 1\n", "x = 1\n")) == {}


def test_crlf_file_is_matched_on_lf_and_written_back_as_crlf() -> None:
    source = "a = 1\r\nb = 2\r\nc = 3\r\n"
    assert planned({"w.py": source}, block("w.py", "b = 2\n", "b = 20\nbb = 21\n")) == {
        "w.py": "a = 1\r\nb = 20\r\nbb = 21\r\nc = 3\r\n"}


def test_mixed_newlines_keep_the_untouched_lines_bytes() -> None:
    source = "a = 1\r\nb = 2\nc = 3\r\n"
    assert planned({"m.py": source}, block("m.py", "b = 2\n", "b = 20\n")) == {"m.py": "a = 1\r\nb = 20\nc = 3\r\n"}
    # a changed line keeps the ending of the line it replaces
    assert planned({"m.py": source}, block("m.py", "a = 1\n", "a = 10\n")) == {"m.py": "a = 10\r\nb = 2\nc = 3\r\n"}


def test_bom_and_missing_final_newline_are_kept() -> None:
    after = planned({"b.py": "\ufeffx = 1\ny = 2"}, block("b.py", "x = 1\n", "x = 10\n"))
    assert after == {"b.py": "\ufeffx = 10\ny = 2"}


def test_read_errors_fail_the_block() -> None:
    def read(path: str) -> str | None:
        raise ValueError(f"refusing {path!r}: no")

    with pytest.raises(EditError, match=r"Edit block 1 \(\.\./x\): cannot use this path: refusing '\.\./x': no"):
        plan_changes(parse_edits(block("../x", "", "y\n")), read)


def test_feedback_for_a_large_file_finds_the_nearest_lines() -> None:
    """7,500 lines; how the cost grows with the file is measured in benchmarks/bench_edit_feedback.py."""
    source = "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(2500))
    search = "def function_1234(value):\n    return value * 1243\n"
    error = plan_error({"big.py": source}, block("big.py", search, "x\n"))
    assert "def function_1234(value):" in error.message


# --- the corpus --------------------------------------------------------------------------------


def prepare_repo(tmp_path: Path) -> Path:
    """A copy of the corpus repository, set up as the manifest's [setup] says."""
    setup = MANIFEST["setup"]
    repo = tmp_path / "repo"
    shutil.copytree(CORPUS / "repo", repo)
    for rel in setup["crlf"]:
        path = repo / rel
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    for base, files in ((repo, setup["files"]), (tmp_path / "outside", setup["outside"])):
        for rel, text in files.items():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_text(text)
    for rel, target in setup["links"].items():
        os.symlink(target, repo / rel)
    return repo


def snapshot(root: Path) -> dict[str, object]:
    """Every file (bytes and mode), directory and link under `root`, symlinks not followed."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = (path.read_bytes(), path.stat().st_mode)
    return found


def run_response(text: str, repo: Path) -> tuple[str, list[EditBlock] | None, EditError | None, list[str]]:
    """outcome, blocks, error, changed paths for one response."""
    try:
        blocks = parse_edits(text)
    except EditError as error:
        return "parse_error", None, error, []
    try:
        changes = plan_changes(blocks, make_reader(repo))
    except EditError as error:
        return "plan_error", blocks, error, []
    return "applied", blocks, None, apply_changes(repo, changes)


def test_corpus_is_large_and_fully_described() -> None:
    assert len(RESPONSES) >= 25
    assert sorted(CASES) == RESPONSES


@pytest.mark.parametrize("name", RESPONSES)
def test_corpus_response(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    repo = prepare_repo(tmp_path)
    before = snapshot(tmp_path)
    outcome, blocks, error, changed = run_response((CORPUS / "responses" / name).read_text(), repo)
    assert outcome == case["outcome"], error.message if error else f"expected {case['outcome']}"
    if "blocks" in case:
        assert blocks is not None and len(blocks) == case["blocks"]
    if "kinds" in case:
        assert [b.kind for b in blocks or []] == case["kinds"]
    if error is not None:
        for expected in case["message"]:
            assert expected in error.message
        if "failing" in case:
            assert [e.block_index for e in error.errors] == case["failing"]
        assert snapshot(tmp_path) == before, "an edit that failed wrote something"
        return
    assert changed == case["changed"]
    _check_applied(case, repo, before, snapshot(tmp_path))


def _check_applied(case: dict, repo: Path, before: dict[str, object], after: dict[str, object]) -> None:
    for rel, needles in case.get("contains", {}).items():
        text = (repo / rel).read_bytes().decode()
        for needle in needles:
            assert needle in text, f"{rel} lacks {needle!r}"
    for rel, needles in case.get("lacks", {}).items():
        text = (repo / rel).read_bytes().decode()
        assert not [needle for needle in needles if needle in text]
    for rel in case.get("deleted", []):
        assert not (repo / rel).exists()
    for rel in case.get("crlf", []):
        data = (repo / rel).read_bytes()
        assert data.count(b"\r\n") == data.count(b"\n") > 0
    touched = {f"repo/{rel}" for rel in case["changed"]}
    for key in set(before) | set(after):
        if key not in touched and not any(t.startswith(key + "/") for t in touched):
            assert before.get(key) == after.get(key), f"{key} changed"


def test_corpus_well_formed_edit_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Share of responses with edits whose every block parses and applies; must equal the manifest's."""
    outcomes = {}
    for name in RESPONSES:
        repo = prepare_repo(tmp_path / name)
        outcome, blocks, _, _ = run_response((CORPUS / "responses" / name).read_text(), repo)
        outcomes[name] = (outcome, len(blocks or []))
    with_edits = [name for name, (outcome, count) in outcomes.items() if outcome != "applied" or count]
    well_formed = [name for name in with_edits if outcomes[name][0] == "applied"]
    rate = len(well_formed) / len(with_edits)
    with capsys.disabled():
        print(f"\nedit corpus: {len(RESPONSES)} responses, {len(with_edits)} with edits; "
              f"well-formed-edit rate {len(well_formed)}/{len(with_edits)} = {rate:.1%}")
    expected = [name for name in with_edits if CASES[name]["outcome"] == "applied"]
    assert well_formed == expected
