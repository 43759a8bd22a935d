"""DSML tool calls parsed out of literal completions (one test per odd reply), and the streaming splitter
giving the same reasoning, answer and calls fed one character at a time as fed the whole text."""

from __future__ import annotations

import re

import pytest

from v4.agent.chat_format import Message
from v4.agent.completion import Completion, CompletionSplitter, parse_completion
from v4.agent.dsml import DsmlError, ToolCall, parse_tool_calls, render_tool_calls, tool_call_feedback

EOS = "<｜end▁of▁sentence｜>"


def block(*invokes: str) -> str:
    return "<｜DSML｜tool_calls>\n" + "\n".join(invokes) + "\n</｜DSML｜tool_calls>"


def invoke(name: str, *parameters: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n' + "\n".join(parameters) + "\n</｜DSML｜invoke>"


def param(key: str, value: str, string: str = "true") -> str:
    return f'<｜DSML｜parameter name="{key}" string="{string}">{value}</｜DSML｜parameter>'


def test_string_parameters_are_kept_as_written() -> None:
    text = "\n\n" + block(invoke("run_command", param("command", "grep -n '<x>' a.py\n  && echo \"ok\""))) + EOS
    assert parse_completion(text) == Completion(
        None, "", (ToolCall("call_0", "run_command", {"command": "grep -n '<x>' a.py\n  && echo \"ok\""}),),
        block(invoke("run_command", param("command", "grep -n '<x>' a.py\n  && echo \"ok\""))))


def test_non_string_parameters_are_json() -> None:
    parameters = [param("n", "3", "false"), param("x", "1.5", "false"), param("on", "true", "false"),
                  param("none", "null", "false"), param("list", '[1, "a"]', "false"),
                  param("obj", '{"k": {"v": "ü"}}', "false"), param("quoted", '"text"', "false"),
                  param("digits", "42")]
    (call,) = parse_completion(block(invoke("t", *parameters))).tool_calls
    assert call.arguments == {"n": 3, "x": 1.5, "on": True, "none": None, "list": [1, "a"],
                              "obj": {"k": {"v": "ü"}}, "quoted": "text", "digits": "42"}
    assert [type(v) for v in call.arguments.values()] == [int, float, bool, type(None), list, dict, str, str]


def test_several_calls_in_one_answer() -> None:
    text = "\n\n" + block(invoke("read_file", param("path", "a.py")), invoke("run_command", param("command", "ls")),
                          invoke("no_arguments"))
    assert parse_completion(text).tool_calls == (ToolCall("call_0", "read_file", {"path": "a.py"}),
                                                 ToolCall("call_1", "run_command", {"command": "ls"}),
                                                 ToolCall("call_2", "no_arguments", {}))
    assert [c.id for c in parse_completion(text, id_prefix="t3_").tool_calls] == ["t3_0", "t3_1", "t3_2"]


def test_text_before_a_call_is_the_answer() -> None:
    call = block(invoke("run_command", param("command", "pytest")))
    completion = parse_completion("Let me look at the tests.\n\n" + call + EOS)
    assert completion.answer == "Let me look at the tests."
    assert completion.tool_calls == (ToolCall("call_0", "run_command", {"command": "pytest"}),)
    assert completion.message() == Message("assistant", "Let me look at the tests.",
                                           tool_calls=(ToolCall("call_0", "run_command", {"command": "pytest"}),))


def test_thinking_then_a_call_without_the_blank_line() -> None:
    completion = parse_completion("I need the file.</think>" + block(invoke("read_file", param("path", "b.py"))),
                                  thinking=True)
    assert (completion.reasoning, completion.answer) == ("I need the file.", "")
    assert completion.tool_calls == (ToolCall("call_0", "read_file", {"path": "b.py"}),)


def test_a_call_inside_unclosed_thinking_still_counts() -> None:
    """DeepSeek's parser also stops reasoning at the block (then refuses it); we run the call."""
    completion = parse_completion("hmm\n\n" + block(invoke("read_file", param("path", "c.py"))), thinking=True)
    assert (completion.reasoning, completion.answer, len(completion.tool_calls)) == ("hmm", "", 1)


def test_whitespace_between_tags_is_accepted() -> None:
    text = '<｜DSML｜tool_calls>  <｜DSML｜invoke  name="t" >\n\n' + param("a", "1", "false") + "\n\n</｜DSML｜invoke>" \
           "</｜DSML｜tool_calls>\n"
    assert parse_tool_calls(text) == [ToolCall("call_0", "t", {"a": 1})]


@pytest.mark.parametrize(("text", "error"), [
    (block(invoke("t", '<｜DSML｜parameter name="a">x</｜DSML｜parameter>')), 'must be <｜DSML｜parameter name="KEY"'),
    (block(invoke("t", param("n", "three", "false"))), "parameter 'n' has string=\"false\" but its value is not JSON"),
    (block(invoke("t", param("a", "1"), param("a", "2"))), "parameter 'a' is given twice"),
    ("<｜DSML｜tool_calls>\n" + invoke("t", param("a", "1")),
     "ends before </｜DSML｜tool_calls> (was the answer cut off?)"),
    ('<｜DSML｜tool_calls>\n<｜DSML｜invoke name="t">\n<｜DSML｜parameter name="a" string="true">long',
     "no </｜DSML｜parameter>"),
    ('<｜DSML｜tool_calls>\n<｜DSML｜invoke name="t">\n', "the call to t ends before </｜DSML｜invoke>"),
    (block(invoke("t")) + "\nDone!", "text after </｜DSML｜tool_calls>: '\\nDone!'"),
    (block(""), "holds no <｜DSML｜invoke"),
    (block("call run_command now"), "expected <｜DSML｜invoke name=\"...\"> or </｜DSML｜tool_calls>, found 'call run"),
    (block('<｜DSML｜invoke tool="t">\n</｜DSML｜invoke>'), 'an invoke tag must be <｜DSML｜invoke name="TOOL">'),
    (block('<｜DSML｜invoke name="">\n</｜DSML｜invoke>'), "empty tool name"),
    (block(invoke("t", "oops")), "in the call to t: expected <｜DSML｜parameter or </｜DSML｜invoke>, found 'oops"),
])
def test_malformed_blocks_become_feedback_not_exceptions(text: str, error: str) -> None:
    with pytest.raises(DsmlError, match=re.escape(error)):
        parse_tool_calls(text)
    completion = parse_completion("Trying.\n\n" + text + EOS)
    assert completion.tool_calls == () and error in (completion.tool_error or "")
    assert completion.answer == "Trying." and completion.tool_text == text
    assert completion.feedback() == tool_call_feedback(completion.tool_error or "")
    assert completion.message() == Message("assistant", "Trying.\n\n" + text)


def test_feedback_says_why_that_nothing_ran_and_the_shape() -> None:
    assert tool_call_feedback("parameter 'a' is given twice") == (
        "Your tool call could not be read: parameter 'a' is given twice. No tool was run. Write the calls as one "
        "block at the end of your answer:\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"TOOL\">\n"
        "<｜DSML｜parameter name=\"KEY\" string=\"true\">text as is</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"KEY\" string=\"false\">JSON value</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
    assert parse_completion("plain answer").feedback() is None


def test_rendered_calls_parse_back() -> None:
    calls = [ToolCall("call_0", "edit", {"path": "ü.py", "lines": [1, 2], "dry": False, "note": ""}),
             ToolCall("call_1", "run_command", {"command": "a\n</b>"})]
    rendered = render_tool_calls(calls)
    assert rendered.startswith("\n\n<｜DSML｜tool_calls>\n")
    assert parse_completion("x" + rendered).tool_calls == tuple(calls)


STREAMS = [
    ("plain answer", False),
    ("reasoning</think>answer", True),
    ("<think>reasoning</think>answer" + EOS + "ignored", False),
    ("\n<think>r</think>\n\nb", False),
    ("<think>r\n\nmore", False),
    ("answer<think>second thoughts</think>back", False),
    ("stray </think> end tag", False),
    ("<think>again<think> thinking</think>x", True),
    ("r</think>Looking.\n\n" + block(invoke("read_file", param("path", "a.py"))) + EOS + "junk", True),
    ("Look\n\n\n" + block(invoke("t", param("n", "[1,", "false"))), False),
    ("a < b and </thi nk> and <｜DSML｜tool but no block\n\n", False),
    ("ends in a partial marker </thi", True),
    ("ends mid end-of-sentence <｜end▁of", False),
    ("   ", False),
    ("", True),
]


@pytest.mark.parametrize(("text", "thinking"), STREAMS)
def test_streaming_one_character_at_a_time_matches_the_whole_text(text: str, thinking: bool) -> None:
    whole = parse_completion(text, thinking=thinking)
    splitter = CompletionSplitter(thinking)
    chunks = [chunk for character in text for chunk in splitter.feed(character)] + splitter.finish()
    assert splitter.result() == whole
    assert "".join(t for kind, t in chunks if kind == "reasoning") == (whole.reasoning or "")
    assert "".join(t for kind, t in chunks if kind == "answer") == whole.answer
    markers = ("<think>", "</think>", "<｜DSML｜tool_calls>", EOS)
    assert all(t and not any(marker in t for marker in markers) for _, t in chunks)


@pytest.mark.parametrize(("text", "thinking"), STREAMS[1:10])
def test_streaming_split_anywhere_in_two_matches_the_whole_text(text: str, thinking: bool) -> None:
    whole = parse_completion(text, thinking=thinking)
    for cut in range(len(text) + 1):
        splitter = CompletionSplitter(thinking)
        splitter.feed(text[:cut])
        splitter.feed(text[cut:])
        splitter.finish()
        assert splitter.result() == whole, cut


def test_split_examples() -> None:
    assert parse_completion("\n<think>r</think>\n\nb") == Completion("r", "\n\nb")
    assert parse_completion("answer<think>second thoughts</think>back") == Completion("second thoughts", "answerback")
    assert parse_completion("still thinking", thinking=True) == Completion("still thinking", "")
    assert parse_completion("stray </think> end tag") == Completion(None, "stray  end tag")
    assert parse_completion("a</think>b", thinking=True).message() == Message("assistant", "b", reasoning="a")


def test_the_splitter_holds_a_block_back_and_says_so() -> None:
    splitter = CompletionSplitter(thinking=True)
    assert splitter.feed("plan</th") == [("reasoning", "plan")]
    assert splitter.feed("ink>Sure.\n") == [("answer", "Sure.")]
    assert splitter.feed("\n<｜DSML｜tool_calls>\n") == [] and splitter.in_tool_calls
    assert splitter.feed(invoke("t") + "\n</｜DSML｜tool_calls>" + EOS) == []
    assert splitter.finish() == [] and splitter.ended
    assert splitter.result().tool_calls == (ToolCall("call_0", "t", {}),)
    with pytest.raises(RuntimeError):
        splitter.feed("more")
    with pytest.raises(RuntimeError):
        CompletionSplitter().result()
