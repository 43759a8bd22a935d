"""DSML, the markup DeepSeek V4 writes tool calls in: the tool list for the prompt, an assistant's calls
as the model wrote them, and a parser for the calls in a completion.

The rules were read from DeepSeek's `encoding/encoding_dsv4.py` (the copies in sgl-project/sglang
`python/sglang/srt/entrypoints/openai/encoding_dsv4.py` and supermy/ds4rs agree):

  - The tool list goes after the system prompt, behind "\\n\\n": TOOLS_PROMPT, with one JSON line per
    tool schema ({"name", "description", "parameters"}) under "### Available Tool Schemas".
  - An assistant's calls follow its answer text, behind "\\n\\n", as one block:
        <｜DSML｜tool_calls>
        <｜DSML｜invoke name="NAME">
        <｜DSML｜parameter name="KEY" string="true">raw text</｜DSML｜parameter>
        <｜DSML｜parameter name="KEY" string="false">JSON</｜DSML｜parameter>
        </｜DSML｜invoke>
        </｜DSML｜tool_calls>
    A string argument is written as is (no escaping) with string="true"; anything else is JSON with
    string="false". Tags are separated by single newlines. Calls carry no ids.
  - A tool's output goes back inside the next user turn as `<tool_result>...</tool_result>`.

`｜DSML｜` (full-width bars, no angle brackets) is one token of DeepSeek's tokenizer; the tags are
`<` + that token + the tag name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DSML = "｜DSML｜"
TOOL_CALLS_START = f"<{DSML}tool_calls>"
TOOL_CALLS_END = f"</{DSML}tool_calls>"
INVOKE_START = f"<{DSML}invoke"
INVOKE_END = f"</{DSML}invoke>"
PARAMETER_START = f"<{DSML}parameter"
PARAMETER_END = f"</{DSML}parameter>"
TOOL_RESULT = "<tool_result>{content}</tool_result>"

# DeepSeek's text, word for word: the model was trained on it.
TOOLS_PROMPT = """## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a \
"<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, \
arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside \
<think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

{tool_schemas}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""

_INVOKE_ATTRS = re.compile(r'\s+name="([^"]*)"\s*>')
_PARAMETER_ATTRS = re.compile(r'\s+name="([^"]*)"\s+string="(true|false)"\s*>')


class DsmlError(ValueError):
    """A tool call block the parser cannot read; the message says where, for the model."""


@dataclass(frozen=True)
class ToolCall:
    """One call: `id` pairs it with its result message; `arguments` are the parsed values (str, int,
    float, bool, None, list or dict)."""

    id: str
    name: str
    arguments: dict[str, Any]


def tool_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The {"name", "description", "parameters"} schema of a tool given either bare or in OpenAI's
    {"type": "function", "function": {...}} wrapper (DeepSeek's encoder unwraps the latter)."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping):
        tool = tool["function"]
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise ValueError(f"a tool needs a non-empty string 'name', got {dict(tool)!r}")
    return dict(tool)


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools section DeepSeek's encoder appends to the system prompt (after "\\n\\n")."""
    schemas = "\n".join(_to_json(tool_schema(tool)) for tool in tools)
    return TOOLS_PROMPT.replace("{tool_schemas}", schemas)


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """An assistant's calls as the model writes them, with the "\\n\\n" that separates them from its text."""
    invokes = []
    for call in calls:
        parameters = [_render_parameter(key, value) for key, value in call.arguments.items()]
        invokes.append(f'{INVOKE_START} name="{call.name}">\n' + "\n".join(parameters) + f"\n{INVOKE_END}")
    return f"\n\n{TOOL_CALLS_START}\n" + "\n".join(invokes) + f"\n{TOOL_CALLS_END}"


def render_tool_result(content: str) -> str:
    """One tool's output as the user turn that follows the calls holds it."""
    return TOOL_RESULT.format(content=content)


def _render_parameter(key: str, value: Any) -> str:
    is_string = isinstance(value, str)
    text = value if is_string else _to_json(value)
    return f'{PARAMETER_START} name="{key}" string="{"true" if is_string else "false"}">{text}{PARAMETER_END}'


def _to_json(value: Any) -> str:
    """JSON as DeepSeek's encoder writes it: non-ASCII kept, ", " and ": " separators."""
    return json.dumps(value, ensure_ascii=False)


def parse_tool_calls(block: str, id_prefix: str = "call_") -> list[ToolCall]:
    """The calls in `block`, which starts at `<｜DSML｜tool_calls>`; raises DsmlError naming what is wrong.

    Looser than DeepSeek's parser in one way: any whitespace may separate the tags (it wants exactly
    one newline). Stricter in none: a `string="false"` value must be JSON, a parameter may appear once,
    and nothing but whitespace may follow `</｜DSML｜tool_calls>`. Ids are `id_prefix` + the call's index.
    """
    if not block.startswith(TOOL_CALLS_START):
        raise DsmlError(f"a tool call block must start with {TOOL_CALLS_START}")
    pos = len(TOOL_CALLS_START)
    calls: list[ToolCall] = []
    while True:
        pos = _skip_space(block, pos)
        if block.startswith(TOOL_CALLS_END, pos):
            pos += len(TOOL_CALLS_END)
            break
        if block.startswith(INVOKE_START, pos):
            call, pos = _parse_invoke(block, pos, f"{id_prefix}{len(calls)}")
            calls.append(call)
            continue
        if pos >= len(block):
            raise DsmlError(f"the block ends before {TOOL_CALLS_END} (was the answer cut off?)")
        raise DsmlError(f"expected {INVOKE_START} name=\"...\"> or {TOOL_CALLS_END}, found {_excerpt(block, pos)}")
    if block[pos:].strip():
        raise DsmlError(f"text after {TOOL_CALLS_END}: {_excerpt(block, pos)}; end the answer with the block")
    if not calls:
        raise DsmlError(f"the {TOOL_CALLS_START} block holds no {INVOKE_START} name=\"...\">")
    return calls


def _parse_invoke(block: str, pos: int, call_id: str) -> tuple[ToolCall, int]:
    """One `<｜DSML｜invoke name="...">` ... `</｜DSML｜invoke>` starting at `pos` -> the call and the end."""
    attrs = _INVOKE_ATTRS.match(block, pos + len(INVOKE_START))
    if attrs is None:
        raise DsmlError(f'an invoke tag must be {INVOKE_START} name="TOOL">, found {_excerpt(block, pos)}')
    name, pos = attrs.group(1), attrs.end()
    if not name:
        raise DsmlError("an invoke tag has an empty tool name")
    arguments: dict[str, Any] = {}
    while True:
        pos = _skip_space(block, pos)
        if block.startswith(INVOKE_END, pos):
            return ToolCall(call_id, name, arguments), pos + len(INVOKE_END)
        if not block.startswith(PARAMETER_START, pos):
            if pos >= len(block):
                raise DsmlError(f"the call to {name} ends before {INVOKE_END} (was the answer cut off?)")
            raise DsmlError(f"in the call to {name}: expected {PARAMETER_START} or {INVOKE_END}, "
                            f"found {_excerpt(block, pos)}")
        attrs = _PARAMETER_ATTRS.match(block, pos + len(PARAMETER_START))
        if attrs is None:
            raise DsmlError(f'in the call to {name}: a parameter tag must be {PARAMETER_START} name="KEY" '
                            f'string="true|false">, found {_excerpt(block, pos)}')
        key, is_string = attrs.group(1), attrs.group(2) == "true"
        end = block.find(PARAMETER_END, attrs.end())
        if end < 0:
            raise DsmlError(f"in the call to {name}: parameter {key!r} has no {PARAMETER_END}")
        if key in arguments:
            raise DsmlError(f"in the call to {name}: parameter {key!r} is given twice")
        arguments[key] = _value(block[attrs.end():end], is_string, name, key)
        pos = end + len(PARAMETER_END)


def _value(text: str, is_string: bool, name: str, key: str) -> Any:
    """A parameter's value: the raw text for string="true", parsed JSON for string="false"."""
    if is_string:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DsmlError(f'in the call to {name}: parameter {key!r} has string="false" but its value is not '
                        f'JSON ({exc.msg}): {text[:80]!r}; write text with string="true"') from None


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _excerpt(text: str, pos: int) -> str:
    return repr(text[pos:pos + 60]) if pos < len(text) else "the end of the answer"


def tool_call_feedback(error: str) -> str:
    """What the model is told when its tool call block could not be read: why, that nothing ran, and
    the shape to write instead."""
    return (f"Your tool call could not be read: {error}. No tool was run. Write the calls as one block at "
            f"the end of your answer:\n{TOOL_CALLS_START}\n{INVOKE_START} name=\"TOOL\">\n"
            f"{PARAMETER_START} name=\"KEY\" string=\"true\">text as is{PARAMETER_END}\n"
            f"{PARAMETER_START} name=\"KEY\" string=\"false\">JSON value{PARAMETER_END}\n"
            f"{INVOKE_END}\n{TOOL_CALLS_END}")
