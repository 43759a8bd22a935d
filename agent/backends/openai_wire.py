"""The OpenAI chat-completions wire format, as the HTTP backend speaks it: the request body (messages
with tool calls and tool results, `tools`, thinking), the usage block (with DeepSeek's cache counters)
and streamed `tool_calls` deltas put back together into complete calls.

Thinking is asked for the way each server family reads it: DeepSeek's API takes
`thinking: {"type": "enabled" | "disabled"}` and `reasoning_effort` (its thinking-mode guide); vLLM and
SGLang pass `chat_template_kwargs: {"thinking": ...}` to DeepSeek's template. An assistant turn that
called tools is sent back with its `reasoning_content`: DeepSeek's API answers 400 without it in thinking
mode, and V4's encoding keeps reasoning whenever tools are given. Other turns' reasoning is not sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from ..chat_format import Message
from ..dsml import ToolCall
from .protocol import BackendError, Thinking, Tool, Usage

DEEPSEEK_API_HOSTS = ("api.deepseek.com",)


def request_body(model: str | None, messages: Sequence[Message], max_tokens: int, temperature: float,
                 thinking: Thinking | None, tools: Sequence[Tool], endpoint: str) -> dict[str, Any]:
    """The JSON body of one streamed chat completion."""
    body: dict[str, Any] = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": temperature,
                            "messages": [wire_message(m) for m in messages],
                            "stream_options": {"include_usage": True}}
    if tools:
        body["tools"] = [{"type": "function", "function": dict(tool)} for tool in tools]
    enabled = thinking is not None and thinking.enabled
    if any(host in endpoint for host in DEEPSEEK_API_HOSTS):
        body["thinking"] = {"type": "enabled" if enabled else "disabled"}
    else:
        body["chat_template_kwargs"] = {"thinking": enabled}
    if enabled and thinking.effort:
        body["reasoning_effort"] = thinking.effort
    return body


def wire_message(message: Message) -> dict[str, Any]:
    """One message as the API takes it (an assistant's reasoning only where it called tools)."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [{"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                              for c in message.tool_calls]
        if message.reasoning:
            wire["reasoning_content"] = message.reasoning
    return wire


def usage_of(usage: dict[str, Any]) -> Usage:
    """A usage block: cached prompt tokens from `prompt_tokens_details.cached_tokens` (OpenAI, vLLM,
    SGLang) or `prompt_cache_hit_tokens` (DeepSeek's API)."""
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0
    return Usage(usage.get("prompt_tokens", 0) or 0, cached, usage.get("completion_tokens", 0) or 0)


class ToolCallAssembler:
    """Streamed `tool_calls` deltas, by index: the first carries the id and the name, later ones more of
    the arguments' JSON text; `finish` yields the complete calls in index order."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", len(self._calls))
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        function = delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        call["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments or {})

    def finish(self) -> Iterator[ToolCall]:
        for index in sorted(self._calls):
            call = self._calls[index]
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError as exc:
                raise BackendError(f"the endpoint sent tool call {call['name']!r} with arguments that are not "
                                   f"JSON: {call['arguments'][:200]}") from exc
            if not isinstance(arguments, dict):
                raise BackendError(f"the endpoint sent tool call {call['name']!r} whose arguments are not an object")
            yield ToolCall(call["id"] or f"call_{index}", call["name"], arguments)
