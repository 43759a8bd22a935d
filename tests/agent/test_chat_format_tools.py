"""DeepSeek V4's encoding with tools, as exact strings: the tool list after the system prompt, DSML tool
calls after the answer, tool results as user turns, reasoning kept or dropped as encoding_dsv4 does, the
reasoning effort; Jinja templates get tools as transformers passes them; the demo tokenizer speaks DSML."""

from __future__ import annotations

from pathlib import Path

import pytest

from v4.agent.chat_format import (
    REASONING_EFFORT_MAX,
    ChatFormatError,
    DeepSeekV4Format,
    JinjaTemplateFormat,
    Message,
    check_conversation,
    chat_format_for,
)
from v4.agent.completion import parse_completion
from v4.agent.dsml import DSML, ToolCall

from tests.conftest import TOKENIZER_JSON, tiny_chat_checkpoint

V4 = DeepSeekV4Format()
RUN = {"name": "run_command", "description": "Run a shell command in the repository root.",
       "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}
# DeepSeek's tool prompt, word for word, with RUN's schema as its one JSON line.
TOOLS_SECTION = (
    "## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n...\n"
    "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types (numbers, "
    "booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside "
    "<think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n"
    '{"name": "run_command", "description": "Run a shell command in the repository root.", "parameters": '
    '{"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}\n\n'
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n")
LS = ToolCall("call_0", "run_command", {"command": "ls"})
LS_BLOCK = ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"run_command\">\n"
            "<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n"
            "</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
# A tool loop: the model runs ls, reads the result, answers; then the user asks again.
LOOP = [Message("system", "You edit code."), Message("user", "List the files."),
        Message("assistant", "", reasoning="I should run ls.", tool_calls=[LS]),
        Message("tool", "a.py\nb.py", tool_call_id="call_0"),
        Message("assistant", "There are two files.", reasoning="Two files."),
        Message("user", "Thanks. Count them.")]


def test_thinking_with_tools_keeps_every_turns_reasoning() -> None:
    """With tools DeepSeek's encoder never drops reasoning: `<think>` opens every assistant turn."""
    assert V4.render(LOOP, thinking=True, tools=[RUN]) == (
        "<｜begin▁of▁sentence｜>You edit code.\n\n" + TOOLS_SECTION
        + "<｜User｜>List the files.<｜Assistant｜><think>I should run ls.</think>" + LS_BLOCK
        + "<｜end▁of▁sentence｜><｜User｜><tool_result>a.py\nb.py</tool_result><｜Assistant｜><think>Two files."
        "</think>There are two files.<｜end▁of▁sentence｜><｜User｜>Thanks. Count them.<｜Assistant｜><think>")


def test_chat_mode_with_tools_renders_no_reasoning() -> None:
    assert V4.render(LOOP, tools=[RUN]) == (
        "<｜begin▁of▁sentence｜>You edit code.\n\n" + TOOLS_SECTION
        + "<｜User｜>List the files.<｜Assistant｜></think>" + LS_BLOCK
        + "<｜end▁of▁sentence｜><｜User｜><tool_result>a.py\nb.py</tool_result><｜Assistant｜></think>"
        "There are two files.<｜end▁of▁sentence｜><｜User｜>Thanks. Count them.<｜Assistant｜></think>")


def test_without_tools_a_later_turn_drops_earlier_reasoning() -> None:
    """The same history with no tools given: reasoning before the last user turn is dropped."""
    assert V4.render(LOOP, thinking=True) == (
        "<｜begin▁of▁sentence｜>You edit code.<｜User｜>List the files.<｜Assistant｜></think>" + LS_BLOCK
        + "<｜end▁of▁sentence｜><｜User｜><tool_result>a.py\nb.py</tool_result><｜Assistant｜></think>"
        "There are two files.<｜end▁of▁sentence｜><｜User｜>Thanks. Count them.<｜Assistant｜><think>")


def test_mid_loop_the_reasoning_before_a_call_survives_only_with_tools() -> None:
    """A tool result is a user turn to the encoder, so only its keep-everything rule for tools keeps the
    reasoning that led to the call."""
    mid = LOOP[:4]
    assert V4.render(mid, thinking=True, tools=[RUN]).endswith(
        "<｜Assistant｜><think>I should run ls.</think>" + LS_BLOCK
        + "<｜end▁of▁sentence｜><｜User｜><tool_result>a.py\nb.py</tool_result><｜Assistant｜><think>")
    assert V4.render(mid, thinking=True).endswith(
        "<｜Assistant｜></think>" + LS_BLOCK
        + "<｜end▁of▁sentence｜><｜User｜><tool_result>a.py\nb.py</tool_result><｜Assistant｜><think>")


def test_effort_max_and_tools_without_a_system_message() -> None:
    """No system message: an empty one carries the tools (as vLLM and SGLang do); "max" comes first."""
    one = [Message("user", "hi")]
    assert V4.render(one, thinking=True, tools=[RUN], effort="max") == (
        "<｜begin▁of▁sentence｜>" + REASONING_EFFORT_MAX + "\n\n" + TOOLS_SECTION + "<｜User｜>hi<｜Assistant｜><think>")
    assert V4.render(one, thinking=True, effort="high") == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>"
    assert V4.render(one, effort="max") == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>"
    assert DeepSeekV4Format("max").render(one, thinking=True, effort="high") == V4.render(one, thinking=True)
    assert V4.render(one, tools=[{"type": "function", "function": RUN}]) == V4.render(one, tools=[RUN])
    with pytest.raises(ChatFormatError, match="reasoning_effort"):
        V4.render(one, thinking=True, effort="low")  # type: ignore[arg-type]
    with pytest.raises(ChatFormatError, match="'name'"):
        V4.render(one, tools=[{"description": "no name"}])


def test_results_go_in_call_order_with_following_user_text() -> None:
    """Several calls: typed arguments, results sorted into the calls' order, user text in the same turn."""
    calls = [ToolCall("a", "read_file", {"path": "x.py", "limit": 10}), ToolCall("b", "run_command", {"command": "ls"})]
    messages = [Message("user", "go"), Message("assistant", "Looking.", tool_calls=calls),
                Message("tool", "B", tool_call_id="b"), Message("tool", "A", tool_call_id="a"),
                Message("user", "and hurry")]
    assert V4.render(messages) == (
        "<｜begin▁of▁sentence｜><｜User｜>go<｜Assistant｜></think>Looking.\n\n<｜DSML｜tool_calls>\n"
        "<｜DSML｜invoke name=\"read_file\">\n<｜DSML｜parameter name=\"path\" string=\"true\">x.py</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"limit\" string=\"false\">10</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
        "<｜DSML｜invoke name=\"run_command\">\n<｜DSML｜parameter name=\"command\" string=\"true\">ls</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"
        "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>\n\nand hurry<｜Assistant｜></think>")


def test_with_tools_each_prompt_is_a_prefix_of_the_next() -> None:
    """What lets the embedded engine reuse its decode state across a tool loop: the completion, parsed
    and put back as a message, renders exactly as the model wrote it."""
    first = V4.render(LOOP[:2], thinking=True, tools=[RUN])
    completion = parse_completion("I should run ls.</think>" + LS_BLOCK + "<｜end▁of▁sentence｜>", thinking=True)
    assert completion.tool_calls == (LS,)
    second = V4.render([*LOOP[:2], completion.message(), LOOP[3]], thinking=True, tools=[RUN])
    assert second.startswith(first + "I should run ls.</think>" + LS_BLOCK + "<｜end▁of▁sentence｜>")


@pytest.mark.parametrize(("messages", "error"), [
    ([Message("user", "a"), Message("assistant", "b", tool_calls=[LS]), Message("user", "c")],
     "message 2: expected a tool message after assistant, got user"),
    ([Message("user", "a"), Message("assistant", "b"), Message("tool", "c", tool_call_id="call_0")],
     "message 2: expected a user message after assistant, got tool"),
    ([Message("user", "a"), Message("assistant", "b", tool_calls=[LS]), Message("tool", "c", tool_call_id="x")],
     "tool_call_id 'x' answers no unanswered call"),
    ([Message("user", "a"), Message("assistant", "b", tool_calls=[LS]), Message("tool", "c", tool_call_id="call_0"),
      Message("tool", "d", tool_call_id="call_0")], "tool_call_id 'call_0' answers no unanswered call"),
    ([Message("user", "a"), Message("assistant", "b", tool_calls=[LS]), Message("tool", "c")], "has a tool_call_id"),
    ([Message("user", "a", tool_call_id="call_0")], "has a tool_call_id"),
    ([Message("user", "a", tool_calls=[LS])], "only assistant messages carry tool calls"),
    ([Message("user", "a"), Message("assistant", "b", tool_calls=[LS, LS])], "two tool calls share an id"),
])
def test_bad_tool_conversations_are_refused(messages: list[Message], error: str) -> None:
    with pytest.raises(ChatFormatError, match=error):
        check_conversation(messages)


def test_a_loop_may_continue_with_the_assistant_or_end_on_a_call() -> None:
    check_conversation(LOOP)
    check_conversation(LOOP[:3])
    assert Message("user", "x") == Message("user", "x", None, (), None)
    assert Message("assistant", "", tool_calls=[LS]).tool_calls == (LS,)


TOOL_TEMPLATE = ("{% for t in tools or [] %}[{{ t.type }}:{{ t.function.name }}]{% endfor %}"
                 "{% for m in messages %}{{ m.role }}={{ m.content }}"
                 "{% if m.reasoning_content %}({{ m.reasoning_content }}){% endif %}"
                 "{% for c in m.tool_calls or [] %}<{{ c.function.name }} {{ c.function.arguments | tojson }}>"
                 "{% endfor %}"
                 "{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %};{% endfor %}")


def test_jinja_templates_get_tools_and_tool_messages() -> None:
    rendered = JinjaTemplateFormat(TOOL_TEMPLATE).render(LOOP[1:4], tools=[RUN])
    assert rendered == ('[function:run_command]user=List the files.;assistant=(I should run ls.)'
                        '<run_command {"command": "ls"}>;tool=a.py\nb.py#call_0;')
    assert JinjaTemplateFormat(TOOL_TEMPLATE).render([Message("user", "q")]) == "user=q;"


def test_jinja_tools_match_transformers_apply_chat_template() -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(TOKENIZER_JSON)),
                                                     chat_template=TOOL_TEMPLATE)
    conversation = [{"role": "user", "content": "List the files."},
                    {"role": "assistant", "content": "", "reasoning_content": "I should run ls.",
                     "tool_calls": [{"id": "call_0", "type": "function",
                                     "function": {"name": "run_command", "arguments": {"command": "ls"}}}]},
                    {"role": "tool", "content": "a.py\nb.py", "tool_call_id": "call_0"}]
    expected = reference.apply_chat_template(conversation, tools=[{"type": "function", "function": RUN}],
                                             tokenize=False, add_generation_prompt=False)
    assert JinjaTemplateFormat(TOOL_TEMPLATE).render(LOOP[1:4], add_generation_prompt=False, tools=[RUN]) == expected


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("demo"), seed=0)


def test_demo_checkpoint_encodes_a_tool_prompt_with_dsml_as_one_token(demo_checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(demo_checkpoint / "tokenizer.json"))
    dsml_id = tokenizer.token_to_id(DSML)
    assert dsml_id is not None
    text = chat_format_for(demo_checkpoint).render(LOOP, thinking=True, tools=[RUN])
    encoded = tokenizer.encode(text, add_special_tokens=False).ids
    assert encoded.count(dsml_id) == text.count(DSML) > 0
    assert tokenizer.decode(encoded, skip_special_tokens=False) == text
    # A reply decoded as the backend decodes (special tokens skipped) still parses into its call.
    reply = tokenizer.encode("ok</think>" + LS_BLOCK + "<｜end▁of▁sentence｜>", add_special_tokens=False).ids
    completion = parse_completion(tokenizer.decode(reply), thinking=True)
    assert (completion.reasoning, completion.answer, completion.tool_calls) == ("ok", "", (LS,))
