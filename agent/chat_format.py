"""How a conversation (with its tool calls and results) becomes the model's prompt text.

DeepSeek V4 ships no Jinja template: its checkpoints carry a Python encoder, `encoding/encoding_dsv4.py`
in the deepseek-ai/DeepSeek-V4-Flash repository. `DeepSeekV4Format` reimplements the part of it that
system/user/assistant chats with tools use. The rules were read from copies of that file:
flagos-ai/DeepSeek-V4-FlagOS `encoding_dsv4.py` ("Copy from ... deepseek-ai/DeepSeek-V4-Flash"),
supermy/ds4rs `encoding/encoding_dsv4.py` and sgl-project/sglang
`python/sglang/srt/entrypoints/openai/encoding_dsv4.py` (they agree on all of the rules below):

  - The prompt starts with `<｜begin▁of▁sentence｜>`. A system message follows it as bare text: it has
    no role token.
  - A user turn is `<｜User｜>` + content. When an assistant turn follows it, or it is the last message,
    `<｜Assistant｜>` comes next, then `<think>` in thinking mode for the turn after the last user
    message, and `</think>` everywhere else (every turn in chat mode, and every earlier turn in
    thinking mode).
  - An assistant turn is its content + `<｜end▁of▁sentence｜>`. By default (`drop_thinking=True`), the
    reasoning of assistant turns before the last user message is dropped. Only an assistant turn after
    the last user message, in thinking mode, keeps it, as reasoning + `</think>`. The `<think>` that
    opens it was already written after `<｜Assistant｜>`. Chat mode never renders reasoning.
  - With `reasoning_effort="max"`, thinking mode puts a fixed "Reasoning Effort: Absolute maximum..."
    instruction (`REASONING_EFFORT_MAX`) straight after the BOS, before the first message. "high" and
    None add nothing.
    The later DeepSeek-V4-Flash-0731 encoder changed this: "high" gets that text and "max" gets a
    "Beyond maximum" one. See sfxnz/DeepSeek-V4-Flash-Vision-Exp-vLLM-2x-DGX-Spark
    `encoding/encoding_dsv4.py` and the amdpilot-org/sglang investigation of sglang PR #33140.
  - Tools (agent/dsml.py renders them): the tool list follows the system prompt behind "\\n\\n" (an
    empty system message is put first when there is none, as vLLM and SGLang do). An assistant's
    tool calls are a DSML block after its content, behind "\\n\\n". Tool results have no role of
    their own: the results after a call (in the order of the calls) and any user text after them
    become one user turn, each result as `<tool_result>...</tool_result>`, joined by "\\n\\n".
  - When tools are given, the encoder turns reasoning-dropping off for the whole conversation: every
    assistant turn keeps its reasoning (`<think>` opens every assistant turn in thinking mode, and
    each renders reasoning + `</think>`). Without this, the reasoning before a tool call would be
    dropped as soon as its result (a user turn) arrived. A side effect the agent relies on: with
    tools, each prompt is a prefix of the next one.
  - Not implemented: `<｜latest_reminder｜>`, the developer role, response_format and the internal
    task tokens (`<｜action｜>`, `<｜query｜>`, ...).

Example (thinking mode, history reasoning dropped), one string:
  `<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello!<｜end▁of▁sentence｜>`
  `<｜User｜>1+1=?<｜Assistant｜><think>`

A checkpoint whose tokenizer_config.json (or chat_template.jinja) has a chat template is rendered
with that template instead (`JinjaTemplateFormat`). The sandbox is set up the way transformers
renders `apply_chat_template`.

`split_reasoning` splits a finished completion into thinking and answer; agent/completion.py also
takes the DSML tool calls out, and does it as the completion streams.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .dsml import DSML, ToolCall, render_tool_calls, render_tool_result, render_tools, tool_schema

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
# The strings a V4 prompt is built from; a demo tokenizer gives each of them one id.
V4_SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, DSML)

# The text DeepSeek's encoder puts before the first message in thinking mode when reasoning_effort is "max".
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the "
    "root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)

Role = Literal["system", "user", "assistant", "tool"]
Effort = Literal["high", "max"]
# A tool as the prompt describes it: {"name", "description", "parameters": JSON schema}, bare or in
# OpenAI's {"type": "function", "function": {...}} wrapper.
ToolSpec = Mapping[str, Any]


class ChatFormatError(ValueError):
    """A conversation or chat template that cannot become a prompt."""


@dataclass(frozen=True)
class Message:
    """One turn. `reasoning` is an assistant's thinking text, kept apart from the answer; `tool_calls`
    are the calls an assistant made after its text; a "tool" message carries one call's output in
    `content` and that call's id in `tool_call_id`."""

    role: Role
    content: str
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tool_calls, tuple):  # a list is welcome; stored as a tuple so it stays frozen
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


class ChatFormat(Protocol):
    """Renders conversations for one checkpoint and tells where an assistant turn ends.

    `thinking` asks the model to think first; `tools` are described to it; `effort` is the reasoning
    effort (None: the format's own default). The defaults render a plain chat prompt."""

    name: str
    stop_strings: tuple[str, ...]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, thinking: bool = False,
               tools: Sequence[ToolSpec] | None = None, effort: Effort | None = None) -> str: ...


def check_conversation(messages: Sequence[Message]) -> None:
    """Raise ChatFormatError unless the conversation is: an optional leading system message, then a user
    turn, and after it: an assistant turn after a user turn; a user turn after an assistant turn without
    tool calls; a tool message answering each call (by id) after an assistant turn with calls; and after
    tool messages, more of them, the assistant or the user."""
    if not messages:
        raise ChatFormatError("the conversation is empty")
    for index, message in enumerate(messages):
        _check_fields(index, message)
    start = 1 if messages[0].role == "system" else 0
    open_calls: set[str] = set()
    for index in range(start, len(messages)):
        message, previous = messages[index], messages[index - 1] if index > start else None
        if message.role == "system":
            raise ChatFormatError(f"message {index}: a system message may only come first")
        allowed = _allowed_after(previous)
        if message.role not in allowed:
            after = previous.role if previous is not None else "the start"
            wanted = {"user": "a user", "assistant": "an assistant", "tool": "a tool"}[allowed[0]]
            raise ChatFormatError(f"message {index}: expected {wanted} message after {after}, got {message.role}")
        if message.role == "assistant":
            open_calls = {call.id for call in message.tool_calls}
        elif message.role == "tool":
            if message.tool_call_id not in open_calls:
                raise ChatFormatError(f"message {index}: tool_call_id {message.tool_call_id!r} answers no "
                                      f"unanswered call of the assistant message before it")
            open_calls.discard(message.tool_call_id)


def _check_fields(index: int, message: Message) -> None:
    """The fields that only some roles may carry."""
    if message.role not in ("system", "user", "assistant", "tool"):
        raise ChatFormatError(f"message {index}: unknown role {message.role!r}")
    if message.reasoning is not None and message.role != "assistant":
        raise ChatFormatError(f"message {index}: only assistant messages carry reasoning")
    if message.tool_calls and message.role != "assistant":
        raise ChatFormatError(f"message {index}: only assistant messages carry tool calls")
    if (message.tool_call_id is not None) != (message.role == "tool"):
        raise ChatFormatError(f"message {index}: a tool message, and only a tool message, has a tool_call_id")
    ids = [call.id for call in message.tool_calls]
    if len(set(ids)) != len(ids):
        raise ChatFormatError(f"message {index}: two tool calls share an id ({ids})")


def _allowed_after(previous: Message | None) -> tuple[Role, ...]:
    """The roles that may follow `previous` (None: the start), the expected one first."""
    if previous is None or previous.role == "assistant" and not previous.tool_calls:
        return ("user",)
    if previous.role == "user":
        return ("assistant",)
    if previous.role == "assistant":
        return ("tool",)
    return ("tool", "assistant", "user")


@dataclass(frozen=True)
class DeepSeekV4Format:
    """DeepSeek V4's own chat encoding (see the module docstring for the rules and their sources).

    `reasoning_effort`: the effort when `render` is given none: None or "high" (the same prompt) or
    "max" (thinking mode gets REASONING_EFFORT_MAX before the first message).
    """

    reasoning_effort: Effort | None = None
    name: str = "deepseek-v4"
    stop_strings: tuple[str, ...] = (EOS,)

    def __post_init__(self) -> None:
        _check_effort(self.reasoning_effort)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, thinking: bool = False,
               tools: Sequence[ToolSpec] | None = None, effort: Effort | None = None) -> str:
        """The prompt text. `add_generation_prompt=False` leaves out the `<｜Assistant｜>` opener after
        a final user turn (DeepSeek's encoder always writes it). After a final assistant turn, nothing
        follows its end-of-sentence either way."""
        check_conversation(messages)
        effort = _check_effort(effort if effort is not None else self.reasoning_effort)
        turns = _v4_turns(messages)
        if tools and turns[0].role != "system":
            turns.insert(0, Message("system", ""))
        keep_all_reasoning = bool(tools)  # the encoder's drop_thinking is off whenever tools are given
        last_user = max((i for i, m in enumerate(turns) if m.role == "user"), default=-1)
        parts = [BOS]
        if thinking and effort == "max":
            parts.append(REASONING_EFFORT_MAX)
        for index, turn in enumerate(turns):
            if turn.role == "system":
                parts.append(turn.content + ("\n\n" + _tools_text(tools) if tools and index == 0 else ""))
            elif turn.role == "user":
                parts.append(USER + turn.content)
                if index + 1 < len(turns) or add_generation_prompt:
                    think_now = thinking and (keep_all_reasoning or index == last_user)
                    parts.append(ASSISTANT + (THINK_START if think_now else THINK_END))
            else:
                keep = thinking and (keep_all_reasoning or index > last_user)
                parts.append(((turn.reasoning or "") + THINK_END if keep else "") + turn.content
                             + (render_tool_calls(turn.tool_calls) if turn.tool_calls else "") + EOS)
        return "".join(parts)


def _check_effort(effort: str | None) -> Effort | None:
    if effort not in (None, "high", "max"):
        raise ChatFormatError(f"reasoning_effort must be None, 'high' or 'max', got {effort!r}")
    return effort  # type: ignore[return-value]


def _tools_text(tools: Sequence[ToolSpec]) -> str:
    try:
        return render_tools(tools)
    except ValueError as exc:
        raise ChatFormatError(str(exc)) from exc


def _v4_turns(messages: Sequence[Message]) -> list[Message]:
    """The conversation as V4 turns: tool messages, and a user message right after them, merged into
    one user turn of `<tool_result>` blocks (sorted into the order of the calls) and text."""
    turns: list[Message] = []
    order: dict[str, int] = {}
    blocks: list[tuple[int, str]] = []  # (the call's position, or -1 for user text; the rendered block)
    for message in messages:
        if message.role == "tool":
            blocks.append((order[message.tool_call_id or ""], render_tool_result(message.content)))
            continue
        if message.role == "user" and blocks:
            blocks.append((-1, message.content))
            continue
        if blocks:
            turns.append(_results_turn(blocks))
            blocks = []
        if message.tool_calls:
            order = {call.id: position for position, call in enumerate(message.tool_calls)}
        turns.append(message)
    if blocks:
        turns.append(_results_turn(blocks))
    return turns


def _results_turn(blocks: list[tuple[int, str]]) -> Message:
    """One user turn from tool results and text: results in call order, text where it was."""
    results = iter(sorted(block for block in blocks if block[0] >= 0))
    texts = [text if position < 0 else next(results)[1] for position, text in blocks]
    return Message("user", "\n\n".join(texts))


class JinjaTemplateFormat:
    """A checkpoint's own Jinja chat template, rendered in a sandbox the way transformers does."""

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "", name: str = "jinja") -> None:
        self.name = name
        self.template_source = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.stop_strings: tuple[str, ...] = (eos_token,) if eos_token else ()
        try:
            self._template = _sandbox().from_string(template)
        except TemplateError as exc:
            raise ChatFormatError(f"the chat template does not parse: {exc}") from exc

    @classmethod
    def from_tokenizer_config(cls, path: Path) -> JinjaTemplateFormat:
        """The template of a tokenizer_config.json (a string, or a list of {name, template} where
        "default" is used), with its bos/eos tokens."""
        config = _read_json(Path(path))
        template = _pick_template(config.get("chat_template"), Path(path))
        return cls(template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, thinking: bool = False,
               tools: Sequence[ToolSpec] | None = None, effort: Effort | None = None) -> str:
        """Messages go in as the dicts transformers passes (`_template_message`), tools as OpenAI's
        {"type": "function", "function": schema} list (None without tools, as transformers does).
        `thinking` is passed as `enable_thinking` (the Qwen convention) and `thinking` (DeepSeek
        V3.1's), `effort` as `reasoning_effort`, for templates that read them."""
        check_conversation(messages)
        try:
            schemas = None if not tools else [{"type": "function", "function": tool_schema(t)} for t in tools]
        except ValueError as exc:
            raise ChatFormatError(str(exc)) from exc
        try:
            return self._template.render(
                messages=[_template_message(m) for m in messages], tools=schemas,
                add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                eos_token=self.eos_token, enable_thinking=thinking, thinking=thinking, reasoning_effort=effort)
        except TemplateError as exc:
            raise ChatFormatError(f"the chat template failed: {exc}") from exc


def _template_message(message: Message) -> dict[str, Any]:
    """A message as chat templates read it: {role, content}, plus `reasoning_content` (the name Qwen's
    and DeepSeek's templates use), OpenAI-shaped `tool_calls` with `arguments` as a dict (what
    transformers documents) and a tool message's `tool_call_id`, each only when set."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.reasoning is not None:
        data["reasoning_content"] = message.reasoning
    if message.tool_calls:
        data["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                              for c in message.tool_calls]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


def _sandbox() -> ImmutableSandboxedEnvironment:
    """An immutable sandbox with what chat templates expect from transformers: trimmed blocks, loop
    controls, `raise_exception`, `strftime_now` and a `tojson` that keeps non-ASCII text."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise ChatFormatError(f"the chat template refused the conversation: {message}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ChatFormatError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ChatFormatError(f"{path} must hold a JSON object")
    return data


def _pick_template(value: object, path: Path) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ChatFormatError(f"{path}: chat_template has no 'default' entry (has {sorted(map(str, named))})")
    raise ChatFormatError(f"{path}: chat_template must be a string or a list of {{name, template}}")


def _token_text(value: object) -> str:
    """A tokenizer_config token: a string, an AddedToken dict {"content": ...}, or absent."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def chat_format_for(checkpoint_dir: Path | None) -> ChatFormat:
    """The checkpoint's own chat template when it has one (tokenizer_config.json's chat_template, else
    a chat_template.jinja file, which newer transformers save instead), else DeepSeek V4's encoding."""
    if checkpoint_dir is None:
        return DeepSeekV4Format()
    directory = Path(checkpoint_dir)
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    if config.get("chat_template") is not None:
        return JinjaTemplateFormat.from_tokenizer_config(config_path)
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        return JinjaTemplateFormat(template_file.read_text("utf-8"), _token_text(config.get("bos_token")),
                                   _token_text(config.get("eos_token")))
    return DeepSeekV4Format()


def split_reasoning(text: str, *, thinking: bool = False) -> tuple[str | None, str]:
    """A completion -> (its thinking text or None, the answer). Edits are parsed from the answer only,
    so anything that may be thinking stays out of it.

    Everything before the first `</think>` is thinking (a leading `<think>` removed). Without
    `</think>`, a `<think>` opens thinking that runs to the end, so the answer is the text before it.
    `thinking=True` says the prompt ended in `<think>`, so a completion that never closes it is all
    thinking. The answer stops at an end-of-sentence.
    """
    text = text.split(EOS, 1)[0]
    close = text.find(THINK_END)
    if close >= 0:
        head, answer = text[:close], text[close + len(THINK_END):]
    elif THINK_START in text:
        opened = text.find(THINK_START)
        head, answer = text[opened:], text[:opened]
    elif thinking:
        head, answer = text, ""
    else:
        return None, text
    stripped = head.lstrip()
    reasoning = stripped[len(THINK_START):] if stripped.startswith(THINK_START) else head
    return reasoning or None, answer
