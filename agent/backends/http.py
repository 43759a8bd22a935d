"""The HTTP backend: an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, `v4 serve`,
a hosted V4), streamed as server-sent events; the endpoint keeps its own prefix cache.

The server's context comes from its model card in `/v1/models` (`max_model_len`, as vLLM, SGLang and
`v4 serve` give it); a server that does not say is assumed to hold ASSUMED_CONTEXT tokens, and
`context_note` says so. Whatever the server refuses, in its status line or in an error event in the
middle of a stream, becomes a BackendError carrying the server's own words (issue 24).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..chat_format import Message
from .openai_wire import ToolCallAssembler, request_body, usage_of
from .protocol import BackendError, Event, ReasoningDelta, TextDelta, Thinking, Tool, Usage, answer_text

# A server whose /v1/models gives no context (DeepSeek's API lists only ids): 128K, what DeepSeek's
# API documents for its chat models since V3.1. Too large would have every request refused; too small
# only plans less of the repository (--budget overrides it).
ASSUMED_CONTEXT = 131_072
CONTEXT_KEYS = ("max_model_len", "context_length", "context_window")  # vLLM and SGLang; OpenRouter; others
MODELS_TIMEOUT_S = 30.0
MAX_MESSAGE_CHARS = 500


def server_message(body: bytes | str) -> str:
    """The error text in a server's answer: OpenAI's `{"error": {"message"}}`, vLLM's and SGLang's
    `{"object": "error", "message"}`, FastAPI's `{"detail"}` or a plain-text (or HTML) body."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    found = _message_in(data) if isinstance(data, dict) else None
    if found is None:  # plain text, or an HTML error page from a proxy
        found = re.sub(r"<[^>]+>", " ", text)
    found = " ".join(found.split())
    if len(found) > MAX_MESSAGE_CHARS:
        found = found[:MAX_MESSAGE_CHARS] + "..."
    return found or "(no message)"


def _message_in(data: dict) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        return _message_in(error) or json.dumps(error)
    if isinstance(error, str) and error:
        return error
    if isinstance(data.get("message"), str):
        return data["message"]
    detail = data.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors: [{"loc": [...], "msg": "..."}]
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return None


@dataclass
class HttpBackend:
    """An OpenAI-compatible `/v1/chat/completions` endpoint, streamed (server-sent events)."""

    endpoint: str
    model: str | None = None  # None: the first model the server lists
    api_key: str | None = None
    timeout_s: float = 600.0  # the longest wait for the server to start answering, or to send more
    name: str = "http"
    last_usage: Usage = field(default_factory=Usage)
    max_model_len: int | None = None  # the server's context for the model (None: read from /v1/models)
    context_note: str | None = None  # what was assumed about the context, when the server does not say

    @property
    def context_length(self) -> int:
        """Tokens the server holds for the model (prompt + answer): its `max_model_len` in /v1/models,
        read once; ASSUMED_CONTEXT when it does not say. BackendError when it cannot be reached."""
        if self.max_model_len is None:
            self._read_models()
        return self.max_model_len

    def _url(self, path: str) -> str:
        base = self.endpoint.rstrip("/")
        return base + path if base.endswith("/v1") else base + "/v1" + path

    def _request(self, path: str, body: dict | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self._url(path), data=data, headers=headers, method="POST" if data else "GET")

    def _read_models(self) -> None:
        """The model's name (when none was given) and its context, from the server's model cards."""
        url = self._url("/models")
        try:
            with urllib.request.urlopen(self._request("/models"), timeout=MODELS_TIMEOUT_S) as response:
                cards = json.load(response)["data"]
            if not isinstance(cards, list) or not all(isinstance(c, dict) for c in cards):
                raise ValueError("`data` is not a list of model cards")
        except urllib.error.HTTPError as exc:
            self._assume(f"{url} answered {_status(exc)}: {server_message(exc.read())}")
            return
        except OSError as exc:
            raise BackendError(self._unreachable(exc, MODELS_TIMEOUT_S)) from exc
        except (ValueError, KeyError, TypeError) as exc:
            self._assume(f"{url} sent no model list ({exc})")
            return
        if self.model is None:
            if not cards:
                raise BackendError(f"{url} lists no models; pass the model's name (--endpoint-model)")
            self.model = str(cards[0].get("id"))
        card = next((c for c in cards if c.get("id") == self.model), None)
        if card is None:
            self._assume(f"{url} does not list {self.model}")
            return
        length = next((card[k] for k in CONTEXT_KEYS if isinstance(card.get(k), int) and card[k] > 0), None)
        if length is None:
            self._assume(f"{url} does not give {self.model}'s context (no max_model_len)")
            return
        self.max_model_len = length

    def _assume(self, reason: str) -> None:
        """No context from the server: plan for ASSUMED_CONTEXT and say so (BackendError when the
        model's name was not given either, since nothing can be sent without it)."""
        if self.model is None:
            raise BackendError(f"{reason}; pass the model's name (--endpoint-model)")
        self.max_model_len = ASSUMED_CONTEXT
        self.context_note = f"assumed {ASSUMED_CONTEXT:,} tokens: {reason}"

    def _unreachable(self, exc: OSError, timeout_s: float) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"{self.endpoint} did not answer within {timeout_s:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot reach {self.endpoint}: connection refused (is the server running?)"
        return f"cannot reach {self.endpoint}: {getattr(reason, 'strerror', None) or reason}"

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The answer's text only (no thinking asked for, no tools)."""
        return answer_text(self.events(messages, max_tokens, temperature))

    def events(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0, *,
               thinking: Thinking | None = None, tools: Sequence[Tool] = ()) -> Iterator[Event]:
        """The endpoint's turn as its events arrive: `reasoning_content` deltas (DeepSeek's API, vLLM and
        SGLang with a reasoning parser) as thinking, `content` as the answer, streamed `tool_calls`
        assembled into complete calls at the end; usage from the final usage event. BackendError with
        the server's words when it refuses the request or ends the stream with an error."""
        if self.model is None:
            self._read_models()
        body = request_body(self.model, messages, max_tokens, temperature, thinking, tools, self.endpoint)
        started = time.perf_counter()
        self.last_usage = Usage()
        url = self._url("/chat/completions")
        try:
            response = urllib.request.urlopen(self._request("/chat/completions", body), timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise BackendError(f"{url} answered {_status(exc)}: {server_message(exc.read())}") from exc
        except OSError as exc:
            raise BackendError(self._unreachable(exc, self.timeout_s)) from exc
        calls = ToolCallAssembler()
        with response:
            try:
                if "text/event-stream" in (response.headers.get("Content-Type") or "text/event-stream"):
                    yield from self._events(response, calls)
                else:  # a server that answers whole although asked to stream
                    yield from self._whole(response.read(), calls)
            except (OSError, http.client.HTTPException) as exc:  # a read that timed out, a dropped connection
                if isinstance(exc, TimeoutError) or "timed out" in str(exc):
                    raise BackendError(f"{self.endpoint} stopped sending: nothing for {self.timeout_s:g} s") from exc
                raise BackendError(f"{self.endpoint} broke off the answer: {exc or type(exc).__name__}") from exc
        yield from calls.finish()
        self.last_usage.seconds = time.perf_counter() - started

    def _events(self, response: http.client.HTTPResponse, calls: ToolCallAssembler) -> Iterator[Event]:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[len("data:"):].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except ValueError as exc:
                raise BackendError(f"the endpoint sent a malformed event: {payload[:200]}") from exc
            yield from self._chunk(chunk, "delta", calls)

    def _whole(self, body: bytes, calls: ToolCallAssembler) -> Iterator[Event]:
        try:
            chunk = json.loads(body)
        except ValueError as exc:
            raise BackendError(f"the endpoint answered without events: {server_message(body)}") from exc
        yield from self._chunk(chunk, "message", calls)

    def _chunk(self, chunk: object, key: str, calls: ToolCallAssembler) -> Iterator[Event]:
        """The thinking, text and tool-call pieces of one event (`delta`) or answer (`message`); its
        usage, when it has one."""
        if not isinstance(chunk, dict):
            raise BackendError(f"the endpoint sent an event that is not an object: {json.dumps(chunk)[:200]}")
        if chunk.get("error") or chunk.get("object") == "error":  # vLLM, SGLang and v4 serve end a stream so
            raise BackendError(f"the endpoint stopped with an error: {server_message(json.dumps(chunk))}")
        if chunk.get("usage"):
            self.last_usage = usage_of(chunk["usage"])
        for choice in chunk.get("choices") or []:
            part = choice.get(key) or {}
            reasoning = part.get("reasoning_content") or part.get("reasoning")  # vLLM >= 0.10 says "reasoning"
            if reasoning:
                yield ReasoningDelta(reasoning)
            if part.get("content"):
                yield TextDelta(part["content"])
            for call in part.get("tool_calls") or []:
                calls.add(call)

    def count_tokens(self, text: str) -> int | None:
        return None


def _status(exc: urllib.error.HTTPError) -> str:
    return f"{exc.code} {exc.reason}".strip() if isinstance(exc.reason, str) else str(exc.code)
